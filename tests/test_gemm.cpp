// CPU GEMMs (ftune's packed kernel and Eigen's) against the reference: every transpose
// combination, alpha/beta, leading dimensions wider than the matrix, empty and one-row cases,
// several cache blocks, strided batches; float and double.
#include <ftune/backends/cpu/gemm.hpp>
#include <ftune/backends/cpu/gemm_eigen.hpp>
#include <ftune/backends/cpu/primitives.hpp>
#include <ftune/backends/reference/primitives.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "util.hpp"

namespace ref = ftune::backends::reference;
namespace cpu = ftune::backends::cpu;
using ftune::transpose;

namespace {
enum class kernel { ftune, eigen, thin };  // cpu::gemm, cpu::gemm_eigen, cpu::gemm_thin

template <class T>
void check_gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
                T beta, std::size_t pad, std::uint64_t seed, bool use_eigen = false,
                kernel which = kernel::ftune) {
    if (use_eigen) which = kernel::eigen;
    // stored shapes: A (M,K) or (K,M); B (K,N) or (N,K); row strides are widened by `pad`
    const std::size_t a_rows = ta == transpose::no ? M : K, a_cols = ta == transpose::no ? K : M;
    const std::size_t b_rows = tb == transpose::no ? K : N, b_cols = tb == transpose::no ? N : K;
    const std::size_t lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    auto A = test::randn<T>(a_rows * lda, seed);
    auto B = test::randn<T>(b_rows * ldb, seed + 1);
    auto C0 = test::randn<T>(M * ldc, seed + 2);
    if (beta == T(0)) std::fill(C0.begin(), C0.end(), std::numeric_limits<T>::quiet_NaN());
    auto want = C0, got = C0;
    ref::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
    if (which == kernel::eigen)
        cpu::gemm_eigen(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(),
                        ldc);
    else if (which == kernel::thin)
        cpu::gemm_thin(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
    else
        cpu::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
    // padding columns of C must be untouched
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = N; j < ldc; ++j) {
            const T g = got[i * ldc + j], c = C0[i * ldc + j];
            REQUIRE(((g == c) || (std::isnan(g) && std::isnan(c))));
        }
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = N; j < ldc; ++j) got[i * ldc + j] = want[i * ldc + j] = 0;
    INFO((which == kernel::eigen  ? "eigen "
          : which == kernel::thin ? "thin "
                                  : "ftune ")
         << "ta=" << int(ta) << " tb=" << int(tb) << " M=" << M << " N=" << N << " K=" << K
         << " alpha=" << alpha << " beta=" << beta << " pad=" << pad);
    test::require_close(got, want, test::tol<T>(16.0 * (K + 4)), "gemm");
}
}  // namespace

TEMPLATE_TEST_CASE("gemm matches the reference on random shapes", "[primitives][gemm]", float,
                   double) {
    using T = TestType;
    const transpose ts[] = {transpose::no, transpose::yes};
    std::uint64_t seed = 1;
    for (auto ta : ts)
        for (auto tb : ts) {
            // edge cases: empty, one row/column, K = 0, sizes off the SIMD width
            for (auto [M, N, K] : {std::tuple<std::size_t, std::size_t, std::size_t>{0, 5, 3},
                                   {5, 0, 3},
                                   {4, 5, 0},
                                   {1, 1, 1},
                                   {1, 17, 9},
                                   {17, 1, 9},
                                   {3, 5, 7},
                                   {16, 16, 16},
                                   {33, 65, 31}})
                for (bool eigen : {false, true})
                    check_gemm<T>(ta, tb, M, N, K, T(1), T(0), 0, seed++, eigen);
            // random shapes with alpha, beta and padded leading dimensions
            for (int r = 0; r < 12; ++r) {
                const std::size_t M = test::rand_int(seed, 0, 1, 80),
                                  N = test::rand_int(seed, 1, 1, 80),
                                  K = test::rand_int(seed, 2, 1, 130),
                                  pad = test::rand_int(seed, 3, 0, 5);
                const T alpha = r % 3 == 0 ? T(1) : T(-0.75),
                        beta = r % 4 == 0 ? T(0) : T(r % 2 ? 1.0 : 0.5);
                for (bool eigen : {false, true})
                    check_gemm<T>(ta, tb, M, N, K, alpha, beta, pad, seed++, eigen);
            }
        }
    // a BERT-like shape: (256, 384) x (384, 1536)^T-stored weights
    check_gemm<T>(transpose::no, transpose::yes, 256, 1536 / 4, 384, T(1), T(0), 0, 99);
}

TEMPLATE_TEST_CASE("gemm over several cache blocks in M, N and K, on 1 and 2 threads",
                   "[primitives][gemm]", float, double) {
    using T = TestType;
    // M > MC (144), N > NC (4080), K > KC (384, three K blocks with beta != 0), none a multiple of
    // the register tile
    const int threads = ftune::num_threads();
    for (int t : {1, 2}) {
        ftune::set_num_threads(t);
        check_gemm<T>(transpose::no, transpose::yes, 151, 4099, 301, T(1), T(0.5), 1, 200 + t);
        check_gemm<T>(transpose::yes, transpose::no, 299, 67, 530, T(-1), T(0), 0, 210 + t);
        check_gemm<T>(transpose::no, transpose::no, 70, 50, 1000, T(0.5), T(-1.5), 2, 220 + t);
    }
    ftune::set_num_threads(threads);
}

TEMPLATE_TEST_CASE(
    "gemm_thin (a LoRA adapter's products) matches the reference, on 1 and 2 threads",
    "[primitives][gemm]", float, double) {
    using T = TestType;
    const transpose ts[] = {transpose::no, transpose::yes};
    const int threads = ftune::num_threads();
    std::uint64_t seed = 300;
    for (int t : {1, 2}) {
        ftune::set_num_threads(t);
        for (auto ta : ts)
            for (auto tb : ts)
                // the small side 1..17 (one past thin_max runs as gemm) against a large side cut
                // off the vector width, K below, at and off it
                for (std::size_t small : {1, 2, 7, 8, 9, 16, 17})
                    for (std::size_t large : {small, std::size_t(40), std::size_t(301)})
                        for (std::size_t K : {3, 16, 37, 530}) {
                            const T alpha = K % 2 ? T(-0.75) : T(1);
                            const T beta = small % 2 ? T(0) : T(0.5);
                            const std::size_t pad = seed % 3;
                            check_gemm<T>(ta, tb, large, small, K, alpha, beta, pad, seed++, false,
                                          kernel::thin);
                            check_gemm<T>(ta, tb, small, large, K, alpha, beta, pad, seed++, false,
                                          kernel::thin);
                        }
    }
    ftune::set_num_threads(threads);
}

TEMPLATE_TEST_CASE("gemm_thin's result does not depend on the number of threads",
                   "[primitives][gemm]", float) {
    using T = TestType;
    const int threads = ftune::num_threads();
    const transpose ts[] = {transpose::no, transpose::yes};
    std::uint64_t seed = 900;
    for (auto ta : ts)
        for (auto tb : ts)
            for (auto [M, N] : {std::pair<std::size_t, std::size_t>{2053, 8}, {8, 2053}}) {
                const std::size_t K = 389;  // 2 M N K over gemm's threshold for threads
                const auto A = test::randn<T>(M * K, seed++), B = test::randn<T>(K * N, seed++);
                std::vector<T> C[2];
                for (int t : {1, 2}) {
                    ftune::set_num_threads(t);
                    C[t - 1].assign(M * N, T(0));
                    cpu::gemm_thin(ta, tb, M, N, K, T(1), A.data(), ta == transpose::no ? K : M,
                                   B.data(), tb == transpose::no ? N : K, T(0), C[t - 1].data(), N);
                }
                REQUIRE(C[0] == C[1]);
            }
    ftune::set_num_threads(threads);
}

TEMPLATE_TEST_CASE("gemm_packed (B packed once) equals gemm bit for bit, on 1 and 2 threads",
                   "[primitives][gemm]", float, double) {
    using T = TestType;
    const int threads = ftune::num_threads();
    std::uint64_t seed = 300;
    cpu::packed_b<T> packed;  // reused: packing again into a larger or smaller B
#ifdef FTUNE_TEST_SANITIZED
    // the N > NC case with fewer rows: at 151 rows it took 60% of test_sanitized's time (-O1,
    // SSE2, AddressSanitizer); the other shapes and test_gemm keep the rows shared by threads
    constexpr std::size_t rows_beyond_nc = 13;
#else
    constexpr std::size_t rows_beyond_nc = 151;
#endif
    for (auto tb : {transpose::yes, transpose::no})
        for (auto ta : {transpose::no, transpose::yes})
            // small M (threads share B's panels), large M (threads share rows), N > NC, K > KC
            for (auto [M, N, K] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 5, 3},
                                   {7, 33, 17},
                                   {32, 1152, 384},
                                   {128, 400, 530},
                                   {rows_beyond_nc, 4099, 301},
                                   {300, 67, 1000},
                                   {0, 9, 4},
                                   {5, 7, 0}})
                for (int t : {1, 2}) {
                    ftune::set_num_threads(t);
                    const std::size_t pad = seed % 3, lda = (ta == transpose::no ? K : M) + pad,
                                      ldb = (tb == transpose::no ? N : K) + pad, ldc = N + pad;
                    const auto A = test::randn<T>((ta == transpose::no ? M : K) * lda, seed);
                    const auto B = test::randn<T>((tb == transpose::no ? K : N) * ldb, seed + 1);
                    auto want = test::randn<T>(M * ldc, seed + 2), got = want;
                    const T alpha = T(0.75), beta = seed % 2 ? T(0) : T(0.5);
                    seed += 3;
                    INFO("ta=" << int(ta) << " tb=" << int(tb) << " M=" << M << " N=" << N
                               << " K=" << K << " threads=" << t);
                    cpu::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta,
                              want.data(), ldc);
                    packed.pack(B.data(), ldb, tb, K, N);
                    cpu::gemm_packed(ta, M, N, K, alpha, A.data(), lda, packed, beta, got.data(),
                                     ldc);
                    REQUIRE(got == want);
                }
    ftune::set_num_threads(threads);
    CHECK_THROWS_AS(cpu::gemm_packed(transpose::no, 2, 4, 4, T(1), static_cast<const T*>(nullptr),
                                     4, packed, T(0), static_cast<T*>(nullptr), 4),
                    ftune::error);
}

TEMPLATE_TEST_CASE("strided batched gemm matches the reference", "[primitives][gemm]", float,
                   double) {
    using T = TestType;
    // attention-like: (B*H) batches of Q (T, d) x K^T (d, T) or P (T, S) x V (S, d), with
    // interleaved heads; up to 8 rows (a decode step's) take the unpacked path, on one thread
    // under 1 MFLOP and on several above; K and N not multiples of the vector width
    for (auto [batch, M, N, K] :
         {std::tuple<std::size_t, std::size_t, std::size_t, std::size_t>{0, 4, 4, 4},
          {1, 3, 5, 2},
          {6, 13, 13, 8},
          {24, 7, 9, 16},
          {3, 1, 37, 70},
          {2, 8, 64, 33},
          {16, 3, 200, 64}})
        for (transpose tb : {transpose::yes, transpose::no})
            for (T beta : {T(1), T(0)}) {
                const std::size_t sa = M * K + 3, sb = N * K + 1, sc = M * N + 2;  // gaps
                const std::size_t ldb = tb == transpose::yes ? K : N;
                auto A = test::randn<T>(batch * sa + 1, 5), B = test::randn<T>(batch * sb + 1, 6);
                auto want = test::randn<T>(batch * sc + 1, 7);
                if (beta == T(0))  // beta = 0 ignores C, even NaN
                    for (std::size_t b = 0; b < batch; ++b)
                        want[b * sc] = std::numeric_limits<T>::quiet_NaN();
                auto got = want;
                ref::gemm_strided_batched(transpose::no, tb, M, N, K, T(0.5), A.data(), K, sa,
                                          B.data(), ldb, sb, beta, want.data(), N, sc, batch);
                cpu::gemm_strided_batched(transpose::no, tb, M, N, K, T(0.5), A.data(), K, sa,
                                          B.data(), ldb, sb, beta, got.data(), N, sc, batch);
                INFO("batch=" << batch << " M=" << M << " N=" << N << " K=" << K
                              << " tb=" << (tb == transpose::yes) << " beta=" << beta);
                test::require_close(got, want, test::tol<T>(16.0 * (K + 4)),
                                    "gemm_strided_batched");
            }
}

TEST_CASE("gemm with alpha = 0 reads neither A nor B (BLAS semantics)", "[primitives][gemm]") {
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> A(6, inf), B(6, inf), want{1, 2, 3, 4}, got = want;
    ref::gemm(transpose::no, transpose::no, 2, 2, 3, 0.0f, A.data(), 3, B.data(), 2, 2.0f,
              want.data(), 2);
    cpu::gemm(transpose::no, transpose::no, 2, 2, 3, 0.0f, A.data(), 3, B.data(), 2, 2.0f,
              got.data(), 2);
    CHECK(want == std::vector<float>{2, 4, 6, 8});
    CHECK(got == want);
}

TEMPLATE_TEST_CASE("gemm_packed's bias and epilogue equal gemm, bias_add and the epilogue after",
                   "[primitives][gemm]", float, double) {
    using T = TestType;
    const int threads = ftune::num_threads();
    std::uint64_t seed = 900;
    cpu::packed_b<T> packed;
    for (auto [M, N, K] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 5, 3},
                           {32, 100, 384},
                           {128, 49, 900},
                           {300, 4099, 70}})
        for (int t : {1, 2}) {
            ftune::set_num_threads(t);
            const auto A = test::randn<T>(M * K, seed), B = test::randn<T>(N * K, seed + 1),
                       bias = test::randn<T>(N, seed + 2), res = test::randn<T>(M * N, seed + 3);
            seed += 4;
            std::vector<T> want(M * N), got(M * N, std::numeric_limits<T>::quiet_NaN());
            cpu::gemm(transpose::no, transpose::yes, M, N, K, T(1), A.data(), K, B.data(), K, T(0),
                      want.data(), N);
            ref::bias_add(want.data(), bias.data(), M, N);
            for (std::size_t i = 0; i < M * N; ++i) want[i] = std::max(want[i] + res[i], T(0));
            // each element goes through the epilogue once, at the pointer its position gives
            // (the epilogue runs on the worker threads: no Catch2 assertion inside it)
            std::vector<std::atomic<int>> seen(M * N);
            std::atomic<int> wrong_pointer{0};
            packed.pack(B.data(), K, transpose::yes, K, N);
            cpu::gemm_packed(transpose::no, M, N, K, T(1), A.data(), K, packed, T(0), got.data(), N,
                             bias.data(),
                             [&](T* c, std::size_t ldc, std::size_t row0, std::size_t rows,
                                 std::size_t col0, std::size_t cols) {
                                 if (c != got.data() + row0 * N + col0) ++wrong_pointer;
                                 for (std::size_t i = 0; i < rows; ++i)
                                     for (std::size_t j = 0; j < cols; ++j) {
                                         const std::size_t e = (row0 + i) * N + col0 + j;
                                         c[i * ldc + j] = std::max(c[i * ldc + j] + res[e], T(0));
                                         ++seen[e];
                                     }
                             });
            INFO("M=" << M << " N=" << N << " K=" << K << " threads=" << t);
            REQUIRE(wrong_pointer.load() == 0);
            REQUIRE(got == want);  // bit for bit
            REQUIRE(std::count_if(seen.begin(), seen.end(), [](const auto& v) { return v == 1; }) ==
                    std::ptrdiff_t(M * N));
        }
    ftune::set_num_threads(threads);
    // K = 0: no product, yet the bias and the epilogue still apply (y = b, then the epilogue)
    const std::vector<T> bias{T(1), T(-2), T(3)};
    std::vector<T> c(2 * 3, std::numeric_limits<T>::quiet_NaN());
    packed.pack(static_cast<const T*>(nullptr), 3, transpose::yes, 0, 3);
    cpu::gemm_packed(
        transpose::no, 2, 3, 0, T(1), static_cast<const T*>(nullptr), 0, packed, T(0), c.data(), 3,
        bias.data(),
        [](T* p, std::size_t ld, std::size_t, std::size_t rows, std::size_t, std::size_t cols) {
            for (std::size_t i = 0; i < rows; ++i)
                for (std::size_t j = 0; j < cols; ++j) p[i * ld + j] *= T(2);
        });
    CHECK(c == std::vector<T>{T(2), T(-4), T(6), T(2), T(-4), T(6)});
}

TEMPLATE_TEST_CASE("gemm_packed with add_residual equals gemm, bias_add and residual_add after",
                   "[primitives][gemm]", float, double) {
    using T = TestType;
    const int threads = ftune::num_threads();
    std::uint64_t seed = 1700;
    cpu::packed_b<T> packed;
    // full and partial register tiles, K in one and several blocks, a strided residual
    for (auto [M, N, K] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 5, 3},
                           {13, 50, 384},
                           {128, 384, 1536},
                           {300, 97, 70}})
        for (bool with_bias : {true, false})
            for (int t : {1, 2}) {
                ftune::set_num_threads(t);
                const std::size_t ldr = N + 3;
                const auto A = test::randn<T>(M * K, seed), B = test::randn<T>(N * K, seed + 1),
                           bias = test::randn<T>(N, seed + 2),
                           res = test::randn<T>(M * ldr, seed + 3);
                seed += 4;
                std::vector<T> want(M * N), got(M * N, std::numeric_limits<T>::quiet_NaN());
                cpu::gemm(transpose::no, transpose::yes, M, N, K, T(1), A.data(), K, B.data(), K,
                          T(0), want.data(), N);
                if (with_bias) cpu::bias_add(want.data(), bias.data(), M, N);
                for (std::size_t i = 0; i < M; ++i)
                    cpu::residual_add(want.data() + i * N, want.data() + i * N,
                                      res.data() + i * ldr, N);
                packed.pack(B.data(), K, transpose::yes, K, N);
                cpu::gemm_packed(transpose::no, M, N, K, T(1), A.data(), K, packed, T(0),
                                 got.data(), N, with_bias ? bias.data() : nullptr,
                                 cpu::add_residual<T>{res.data(), ldr});
                INFO("M=" << M << " N=" << N << " K=" << K << " bias=" << with_bias
                          << " threads=" << t);
                REQUIRE(got == want);  // bit for bit
            }
    ftune::set_num_threads(threads);
    // K = 0: C = bias + R through the epilogue's own loop
    const std::vector<T> bias{T(1), T(-2), T(3)},
        r{T(10), T(20), T(30), T(0), T(40), T(50), T(60), T(0)};
    std::vector<T> c(2 * 3, std::numeric_limits<T>::quiet_NaN());
    packed.pack(static_cast<const T*>(nullptr), 3, transpose::yes, 0, 3);
    cpu::gemm_packed(transpose::no, 2, 3, 0, T(1), static_cast<const T*>(nullptr), 0, packed, T(0),
                     c.data(), 3, bias.data(), cpu::add_residual<T>{r.data(), 4});
    CHECK(c == std::vector<T>{T(11), T(18), T(33), T(41), T(48), T(63)});
}

TEST_CASE("packing counters: gemm() packs per call, packed_b::pack once", "[primitives][gemm]") {
    auto& c = cpu::packing_stats();
    const std::vector<float> A(4 * 6, 1.0f), B(6 * 5, 2.0f);
    std::vector<float> C(4 * 5);
    const auto per_call = c.per_call.load(), prepacked = c.prepacked.load();
    cpu::gemm(transpose::no, transpose::no, 4, 5, 6, 1.0f, A.data(), 6, B.data(), 5, 0.0f, C.data(),
              5);
    CHECK(c.per_call.load() - per_call == 1);
    cpu::packed_b<float> p;
    p.pack(B.data(), 5, transpose::no, 6, 5);
    for (int i = 0; i < 3; ++i)
        cpu::gemm_packed(transpose::no, 4, 5, 6, 1.0f, A.data(), 6, p, 0.0f, C.data(), 5);
    CHECK(c.per_call.load() - per_call == 1);
    CHECK(c.prepacked.load() - prepacked == 1);
    CHECK(C[0] == 12.0f);
}

namespace {
// The VmFlags line of /proc/self/smaps for the mapping that holds p ("" where there is none):
// "hg" in it is the kernel's record of madvise(MADV_HUGEPAGE).
std::string vm_flags_of(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        std::uintptr_t lo = 0, hi = 0;
        char dash = 0;
        if (std::istringstream head(line); line.find('-') < line.find(' ') &&
                                           (head >> std::hex >> lo >> dash >> hi) && dash == '-')
            inside = lo <= a && a < hi;
        else if (inside && line.rfind("VmFlags:", 0) == 0)
            return line;
    }
    return "";
}
bool has_flag(const std::string& flags, const char* flag) {
    std::istringstream words(flags);
    for (std::string w; words >> w;)
        if (w == flag) return true;
    return false;
}
}  // namespace

TEST_CASE("packed weights: zero-filled, each its own count, small ones cut from huge-page chunks",
          "[primitives][gemm]") {
    const bool huge = ftune::detail::huge_pages_wanted();
    auto a = cpu::detail::packed_storage<float>(1000), b = cpu::detail::packed_storage<float>(1000);
    for (const auto* p : {a.get(), b.get()}) {
        CHECK(reinterpret_cast<std::uintptr_t>(p) % 64 == 0);
        CHECK(std::all_of(p, p + 1000, [](float v) { return v == 0.0f; }));
    }
    CHECK(a.use_count() == 1);  // packed_b's "shared with a copy" test reads it
    const auto copy = a;
    CHECK(a.use_count() == 2);
    CHECK(b.use_count() == 1);
    const auto chunk_start = [](const void* p) {
        return reinterpret_cast<std::uintptr_t>(p) % ftune::detail::huge_page_bytes == 0;
    };
    if (huge) {
        // one after the other in a chunk (1000 floats take 4,032 bytes), unless b opened the next
        CHECK((b.get() == a.get() + 1008 || chunk_start(b.get())));
        // 2 MiB and more: allocated alone, on a huge-page boundary
        auto big = cpu::detail::packed_storage<float>(6 << 18);
        CHECK(chunk_start(big.get()));
        CHECK(big[(6 << 18) - 1] == 0.0f);
        // the kernel recorded the advice for the chunk and the large array
        const std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
        if (thp.good()) {
            INFO(vm_flags_of(a.get()));
            CHECK(has_flag(vm_flags_of(a.get()), "hg"));
            CHECK(has_flag(vm_flags_of(big.get()), "hg"));
        }
    } else {
        WARN("huge pages not wanted here (not Linux, or FTUNE_HUGE_PAGES=0): arrays alone");
    }
    // an aligned_alloc_array of 2 MiB and more starts on a huge-page boundary where they are
    // wanted, and is freed with its own alignment (the sanitizer build checks the pairing)
    auto large = ftune::detail::aligned_alloc_array<double>(3 << 17);  // 3 MiB
    CHECK(large.get_deleter().alignment == (huge ? ftune::detail::huge_page_bytes : 64));
    CHECK(reinterpret_cast<std::uintptr_t>(large.get()) % large.get_deleter().alignment == 0);
    CHECK(ftune::detail::aligned_alloc_array<float>(100).get_deleter().alignment == 64);
}

TEST_CASE("cache blocking comes from the CPU found at run time", "[primitives][gemm]") {
    const auto& cpu_info = cpu::this_cpu();
    INFO(cpu_info.summary());
    CHECK(cpu_info.l1d >= 8 * 1024);
    CHECK(cpu_info.l2 >= cpu_info.l1d);
    CHECK(cpu_info.summary().find("L2 ") != std::string::npos);
    using blk = cpu::gemm_detail::blocking<float>;
    const auto& b = cpu::gemm_detail::runtime_blocking<float>();
    CHECK(b.kc >= 128);
    CHECK(b.kc <= 384);
    CHECK(b.kc * blk::NR * sizeof(float) <=
          std::max<std::size_t>(cpu_info.l2 / 8, 128 * blk::NR * 4));
    CHECK(b.mc % blk::MR == 0);
    CHECK(b.mc >= 4 * blk::MR);
    CHECK(b.nc % blk::NR == 0);
    // the same numbers on every call (computed once)
    CHECK(&cpu::gemm_detail::runtime_blocking<float>() == &b);
}

TEMPLATE_TEST_CASE("attention_decode (a generated token against its cache) matches the reference",
                   "[primitives][gemm]", float, double) {
    using T = TestType;
    const int threads = ftune::num_threads();
    std::uint64_t seed = 1400;
    // (batch, query heads, key/value heads, cached positions, head size): groups of 1, 3 and 12
    // (more than a register tile's rows), head sizes off the vector width, and a step large
    // enough to run on several threads
    for (auto [B, H, Hkv, S, d] :
         {std::tuple<std::size_t, std::size_t, std::size_t, std::size_t, std::size_t>{1, 1, 1, 1,
                                                                                      4},
          {2, 9, 3, 37, 64},
          {3, 12, 1, 20, 24},
          {2, 4, 4, 70, 33},
          {4, 16, 2, 300, 64}})
        for (int t : {1, 2}) {
            ftune::set_num_threads(t);
            const std::size_t cap = S + 3, Ckv = Hkv * d;  // cache rows past S are never read
            const auto q = test::randn<T>(B * H * d, seed++);
            auto k = test::randn<T>(B * cap * Ckv, seed++),
                 v = test::randn<T>(B * cap * Ckv, seed++);
            for (std::size_t b = 0; b < B; ++b)
                for (std::size_t i = S * Ckv; i < cap * Ckv; ++i)
                    k[b * cap * Ckv + i] = v[b * cap * Ckv + i] =
                        std::numeric_limits<T>::quiet_NaN();
            std::vector<T> mask(B * S, T(0));
            for (std::size_t b = 1; b < B; ++b)  // left padding of later sequences
                for (std::size_t j = 0; j < std::min(S - 1, b * 3); ++j)
                    mask[b * S + j] = std::numeric_limits<T>::lowest();
            if (B > 2)  // a sequence whose keys are all dropped (-inf): zeros
                for (std::size_t j = 0; j < S; ++j)
                    mask[2 * S + j] = -std::numeric_limits<T>::infinity();
            const T scale = T(1) / std::sqrt(T(d));
            std::vector<T> want(B * H * d), got(B * H * d, std::numeric_limits<T>::quiet_NaN());
            ref::attention_decode(want.data(), q.data(), k.data(), v.data(), cap, mask.data(),
                                  scale, B, H, Hkv, S, d);
            cpu::attention_decode(got.data(), q.data(), k.data(), v.data(), cap, mask.data(), scale,
                                  B, H, Hkv, S, d);
            INFO("B=" << B << " H=" << H << " Hkv=" << Hkv << " S=" << S << " d=" << d
                      << " threads=" << t);
            test::require_close(got, want, test::tol<T>(64.0 * (S + d)), "attention_decode");
            if (B > 2)
                for (std::size_t i = 2 * H * d; i < 3 * H * d; ++i) REQUIRE(got[i] == T(0));
        }
    ftune::set_num_threads(threads);
    std::vector<float> buf(64);
    CHECK_THROWS_AS(cpu::attention_decode(buf.data(), buf.data(), buf.data(), buf.data(), 4,
                                          static_cast<const float*>(nullptr), 1.0f, 1, 3, 2, 2, 2),
                    ftune::error);  // 2 key/value heads do not divide 3 query heads
    CHECK_THROWS_AS(cpu::attention_decode(buf.data(), buf.data(), buf.data(), buf.data(), 4,
                                          static_cast<const float*>(nullptr), 1.0f, 1, 2, 2, 5, 2),
                    ftune::error);  // 5 positions in a cache of 4
}

TEMPLATE_TEST_CASE("attention_inference matches the reference softmax(Q Kᵀ) V, masks and causal",
                   "[primitives][gemm]", float, double) {
    using T = TestType;
    const int threads = ftune::num_threads();
    std::uint64_t seed = 1300;
    // (batch, heads, T, d, first-token only)
    for (auto [B, H, Tn, d, first] :
         {std::tuple<std::size_t, std::size_t, std::size_t, std::size_t, bool>{1, 1, 1, 4, false},
          {2, 3, 37, 24, false},
          {1, 12, 128, 32, false},
          {2, 2, 50, 64, true},
          {1, 2, 450, 16, false}})
        for (bool causal : {false, true})
            for (int t : {1, 2}) {
                ftune::set_num_threads(t);
                const std::size_t C = H * d, ld = 3 * C + 5;  // q, k, v side by side, padded rows
                const auto qkv = test::randn<T>(B * Tn * ld, seed++);
                std::vector<T> mask(B * Tn, T(0));
                for (std::size_t b = 1; b < B; ++b)  // padding at the end of later sequences
                    for (std::size_t j = Tn - Tn / 3; j < Tn; ++j)
                        mask[b * Tn + j] = std::numeric_limits<T>::lowest();
                const T scale = T(1) / std::sqrt(T(d));
                const std::size_t Tq = first ? 1 : Tn;
                // reference: per (b, h) scores, softmax, P V with the reference primitives
                std::vector<T> want(B * Tq * C), s(Tn * Tn), p(Tn * Tn);
                for (std::size_t b = 0; b < B; ++b)
                    for (std::size_t h = 0; h < H; ++h) {
                        const T* base = qkv.data() + b * Tn * ld + h * d;
                        ref::gemm(transpose::no, transpose::yes, Tn, Tn, d, T(1), base, ld,
                                  base + C, ld, T(0), s.data(), Tn);
                        ref::softmax_forward(p.data(), s.data(), mask.data() + b * Tn, scale,
                                             std::size_t(1), std::size_t(1), Tn, Tn, causal);
                        ref::gemm(transpose::no, transpose::no, Tq, d, Tn, T(1), p.data(), Tn,
                                  base + 2 * C, ld, T(0), want.data() + b * Tq * C + h * d, C);
                    }
                std::vector<T> got(B * Tq * C, std::numeric_limits<T>::quiet_NaN());
                const T* q = qkv.data();
                cpu::attention_inference(got.data(), C, q, first ? Tn * ld : ld, q + C, q + 2 * C,
                                         ld, mask.data(), scale, B, H, Tq, Tn, d, causal);
                INFO("B=" << B << " H=" << H << " T=" << Tn << " d=" << d << " first=" << first
                          << " causal=" << causal << " threads=" << t);
                test::require_close(got, want, test::tol<T>(64.0 * (Tn + d)),
                                    "attention_inference");
            }
    ftune::set_num_threads(threads);
    std::vector<float> out(4);
    CHECK_THROWS_AS(
        cpu::attention_inference(out.data(), 2, out.data(), 2, out.data(), out.data(), 2,
                                 static_cast<const float*>(nullptr), 1.0f, 1, 1, 3, 2, 2),
        ftune::error);
}
