// bf16 mixed precision: the rounding against PyTorch's, the AVX512-BF16 GEMMs against the
// reference backend's emulation (operands rounded to bf16, sums in double) and against fp32,
// and a whole encoder in bf16 on the CPU against the same encoder on the reference backend.
// The CPU kernels' tests say so and pass without checking where the CPU lacks AVX512-BF16 (the
// reference emulation's are checked everywhere).
#include <ftune/backends/cpu/gemm.hpp>
#include <ftune/backends/reference/primitives.hpp>
#include <ftune/bert/encoder.hpp>
#include <ftune/io/safetensors.hpp>
#include <ftune/ops.hpp>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "layer_util.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

using ftune::transpose;
namespace cpu = ftune::backends::cpu;
namespace ref = ftune::backends::reference;

namespace {

// Whether the CPU kernels can run here; says why not when they cannot.
bool kernels_here() {
    if (cpu::bf16_supported()) return true;
    WARN("not checked: this CPU has no AVX512-BF16 (" << cpu::this_cpu().summary() << ")");
    return false;
}

std::vector<float> randn(std::size_t n, std::uint32_t seed) {
    std::mt19937 g(seed);
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

// One product's operands: op(A) (M, K), op(B) (K, N), C (M, N), stored with the transposes.
struct product {
    std::size_t M, N, K;
    transpose ta, tb;
    std::vector<float> A, B, C;
    std::size_t lda() const { return ta == transpose::no ? K : M; }
    std::size_t ldb() const { return tb == transpose::no ? N : K; }
    float a(std::size_t i, std::size_t k) const {
        return ta == transpose::no ? A[i * lda() + k] : A[k * lda() + i];
    }
    float b(std::size_t k, std::size_t j) const {
        return tb == transpose::no ? B[k * ldb() + j] : B[j * ldb() + k];
    }
    // Σ_k |a(i,k) b(k,j)| in double: the scale of an element's rounding error
    double magnitude(std::size_t i, std::size_t j) const {
        double s = 0;
        for (std::size_t k = 0; k < K; ++k) s += std::abs(double(a(i, k)) * double(b(k, j)));
        return s;
    }
};

product make(std::size_t M, std::size_t N, std::size_t K, transpose ta, transpose tb,
             std::uint32_t seed) {
    return {M, N, K, ta, tb, randn(M * K, seed), randn(K * N, seed + 1), randn(M * N, seed + 2)};
}

// The root mean square of a - b.
double rms_gap(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i] - b[i]) * double(a[i] - b[i]);
    return std::sqrt(s / double(std::max<std::size_t>(a.size(), 1)));
}

// Shapes with every kind of edge: odd K (a half pair), tiles and panels cut short, K longer than
// one depth block, the shapes of a BERT training step's products, and attention's (heads of 32
// values, 128 keys), which gemm_bf16 takes in 32-wide panels on one thread (narrow_panels).
const std::size_t shapes[][3] = {{1, 1, 1},     {3, 5, 7},      {8, 48, 2},     {9, 49, 3},
                                 {17, 100, 33}, {130, 97, 385}, {33, 7, 1537},  {64, 384, 128},
                                 {128, 64, 32}, {2, 300, 64},   {128, 32, 128}, {100, 128, 32}};

}  // namespace

TEST_CASE("bf16 rounding equals PyTorch's (to nearest, ties to even, subnormals kept)", "[bf16]") {
    const ftune::io::safetensors_file f(std::string(FTUNE_REFERENCE_DIR) +
                                        "/bf16/rounding.safetensors");
    const auto& in = f.at("input");
    const auto& out = f.at("rounded");
    REQUIRE(in.type == ftune::io::dtype::i32);
    REQUIRE(out.type == ftune::io::dtype::i16);
    REQUIRE(in.numel() == out.numel());
    REQUIRE(in.numel() > 4000);
    std::vector<std::uint32_t> x(in.numel());
    std::vector<std::uint16_t> want(out.numel());
    std::memcpy(x.data(), f.bytes(in).data(), x.size() * 4);
    std::memcpy(want.data(), f.bytes(out).data(), want.size() * 2);
    std::size_t nans = 0, subnormals = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const float v = std::bit_cast<float>(x[i]);
        INFO("input bits 0x" << std::hex << x[i]);
        const std::uint32_t got = cpu::bf16_detail::round_bits(v);
        const float got_ref = ref::bf16_round(v);
        const float expect = std::bit_cast<float>(std::uint32_t(want[i]) << 16);
        if (std::isnan(expect)) {  // PyTorch gives its canonical NaN; any NaN will do
            ++nans;
            CHECK(std::isnan(std::bit_cast<float>(got)));
            CHECK(std::isnan(got_ref));
            continue;
        }
        subnormals += std::fpclassify(v) == FP_SUBNORMAL;
        CHECK((got & 0xffffu) == 0);
        CHECK((got >> 16) == want[i]);
        CHECK(std::bit_cast<std::uint32_t>(got_ref) == std::uint32_t(want[i]) << 16);
    }
    CHECK(nans >= 4);
    CHECK(subnormals >= 5);
}

TEST_CASE("the operand packings round every value as PyTorch does (subnormals, NaN, infinities)",
          "[bf16]") {
    // PyTorch's roundings of the fixture's values, laid out as matrices whose rows hold odd and
    // even counts of values, so that every value passes through the vector paths of each packing
    // (vcvtne2ps2bf16, which flushes subnormals, with the software rounding where one occurs);
    // the packings use it where the build has the kernels (a build without them packs in scalar
    // code, checked here on any CPU)
    if (FTUNE_HAS_BF16_KERNELS && !kernels_here()) return;
    const ftune::io::safetensors_file f(std::string(FTUNE_REFERENCE_DIR) +
                                        "/bf16/rounding.safetensors");
    const auto& in = f.at("input");
    const auto& out = f.at("rounded");
    const std::size_t n = in.numel();
    std::vector<float> x(n);
    std::vector<std::uint16_t> want(n);
    std::memcpy(x.data(), f.bytes(in).data(), n * 4);
    std::memcpy(want.data(), f.bytes(out).data(), n * 2);
    std::size_t checked = 0;
    // whether the bf16 half h is PyTorch's rounding of x[i % n]
    auto same = [&](std::uint32_t h, std::size_t i) {
        ++checked;
        const std::uint16_t w = want[i % n];
        const bool nan_w = (w & 0x7f80u) == 0x7f80u && (w & 0x7fu) != 0;
        const bool nan_h = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0;
        return nan_w ? nan_h : h == w;
    };
    namespace bd = cpu::bf16_detail;
    for (const std::size_t K : {std::size_t(63), std::size_t(64), std::size_t(97)}) {
        const std::size_t M = (n + K - 1) / K + 3, KP = bd::pairs(K);  // every value, and more
        std::vector<float> A(M * K);
        for (std::size_t i = 0; i < A.size(); ++i) A[i] = x[i % n];
        // row-major: row i's pairs (i, 2p), (i, 2p + 1), each row rounded in place
        std::vector<std::uint32_t> rows(M * KP);
        bd::pack_a(rows.data(), A.data(), K, transpose::no, M, K);
        std::size_t bad = 0;
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t k = 0; k < K; ++k)
                bad += !same(rows[i * KP + k / 2] >> (k % 2 * 16) & 0xffffu, i * K + k);
        // transposed (A read as op(A) = Aᵀ, K' = M rows of length K): MR-row tiles of pairs
        const std::size_t Mt = K, Kt = M, KPt = bd::pairs(Kt);
        std::vector<std::uint32_t> tiles((Mt + bd::MR - 1) / bd::MR * bd::MR * KPt);
        bd::pack_a(tiles.data(), A.data(), K, transpose::yes, Mt, Kt);
        for (std::size_t i = 0; i < Mt; ++i)  // op(A)(i, k) = A[k * K + i]
            for (std::size_t k = 0; k < Kt; ++k)
                bad += !same(
                    tiles[i / bd::MR * KPt * bd::MR + k / 2 * bd::MR + i % bd::MR] >> (k % 2 * 16) &
                        0xffffu,
                    k * K + i);
        // a B panel from rows ldb apart (op(B) = B, K' = M rows): rows 2p and 2p + 1 paired
        for (std::size_t j0 = 0; j0 < K; j0 += bd::NR) {
            const std::size_t nr = std::min(bd::NR, K - j0);
            std::vector<std::uint32_t> panel(KPt * bd::NR);
            bd::pack_b_panel(panel.data(), A.data(), K, transpose::no, 0, Kt, j0, nr);
            for (std::size_t k = 0; k < Kt; ++k)
                for (std::size_t j = 0; j < nr; ++j)
                    bad +=
                        !same(panel[k / 2 * bd::NR + j] >> (k % 2 * 16) & 0xffffu, k * K + j0 + j);
        }
        // B panels from rows of op(B)ᵀ (op(B)(k, j) = A[j * K + k], K values each: x Wᵀ and
        // attention's Kᵀ), 48 and 32 columns wide, 16 columns x 16 pairs transposed at a time:
        // the last panel short, K odd or not a multiple of 32
        auto transposed_panels = [&]<std::size_t P>() {
            for (std::size_t j0 = 0; j0 < M; j0 += P) {
                const std::size_t nr = std::min(P, M - j0);
                std::vector<std::uint32_t> panel(KP * P, 0xdeadbeefu);
                bd::pack_b_panel<P>(panel.data(), A.data(), K, transpose::yes, 0, K, j0, nr);
                for (std::size_t p = 0; p < KP; ++p)
                    for (std::size_t j = 0; j < P; ++j) {
                        const std::uint32_t w = panel[p * P + j];
                        if (j >= nr || 2 * p + 1 == K) {  // zeros: past the columns, past K
                            bad += j >= nr ? w != 0 : w >> 16 != 0;
                            if (j >= nr) continue;
                        }
                        bad += !same(w & 0xffffu, (j0 + j) * K + 2 * p);
                        if (2 * p + 1 < K) bad += !same(w >> 16, (j0 + j) * K + 2 * p + 1);
                    }
            }
        };
        transposed_panels.template operator()<bd::NR>();
        transposed_panels.template operator()<bd::NR2>();
        // a row of values kept in bf16 (dropout's, the softmax backward's): 32 at a time, then
        // the rest under masks
        for (const std::size_t len : {K, A.size() - 5}) {
            std::vector<ftune::bf16> kept(len + 3);
            for (auto& v : kept) v.bits = 0x1234;
            bd::round_to(kept.data(), A.data(), len);
            for (std::size_t i = 0; i < len; ++i) bad += !same(kept[i].bits, i);
            for (std::size_t i = len; i < len + 3; ++i) bad += kept[i].bits != 0x1234;  // untouched
        }
        INFO("K " << K);
        CHECK(bad == 0);
    }
    CHECK(checked > 12 * n);
}

TEST_CASE("gemm_bf16 equals the reference emulation up to fp32 sums, for every transpose",
          "[bf16]") {
    if (!kernels_here()) return;
    std::uint32_t seed = 1;
    for (const auto& s : shapes)
        for (const auto ta : {transpose::no, transpose::yes})
            for (const auto tb : {transpose::no, transpose::yes})
                for (const float beta : {0.0f, 0.75f}) {
                    auto p = make(s[0], s[1], s[2], ta, tb, seed += 3);
                    std::vector<double> A(p.A.begin(), p.A.end()), B(p.B.begin(), p.B.end()),
                        want(p.C.begin(), p.C.end());
                    ref::gemm_bf16<double>(ta, tb, p.M, p.N, p.K, 0.5, A.data(), p.lda(), B.data(),
                                           p.ldb(), beta, want.data(), p.N);
                    auto got = p.C;
                    cpu::gemm_bf16(ta, tb, p.M, p.N, p.K, 0.5f, p.A.data(), p.lda(), p.B.data(),
                                   p.ldb(), beta, got.data(), p.N);
                    double worst = 0;
                    for (std::size_t i = 0; i < p.M; ++i)
                        for (std::size_t j = 0; j < p.N; ++j) {
                            const double scale =
                                0.5 * p.magnitude(i, j) + beta * std::abs(p.C[i * p.N + j]);
                            worst = std::max(worst, std::abs(got[i * p.N + j] - want[i * p.N + j]) /
                                                        (scale + 1e-30));
                        }
                    INFO("M " << p.M << " N " << p.N << " K " << p.K << " ta " << int(ta) << " tb "
                              << int(tb) << " beta " << beta);
                    // fp32 sums of exact products: a few float epsilons of Σ|a b|
                    CHECK(worst < 1e-6);
                }
}

TEST_CASE("bf16 products are within bf16 rounding of the fp32 product", "[bf16]") {
    if (!kernels_here()) return;
    // Rounding to 8 significant bits moves each operand by at most u = 2^-8 relatively, so each
    // product term by 2u + u^2: |bf16 - fp32| <= (2^-7 + 2^-16) Σ|a b| (plus fp32 sums).
    std::uint32_t seed = 100;
    for (const auto& s : shapes) {
        auto p = make(s[0], s[1], s[2], transpose::no, transpose::yes, seed += 3);
        std::vector<float> c16(p.M * p.N), c32(p.M * p.N);
        cpu::gemm_bf16(p.ta, p.tb, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), p.B.data(), p.ldb(),
                       0.0f, c16.data(), p.N);
        cpu::gemm(p.ta, p.tb, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), p.B.data(), p.ldb(), 0.0f,
                  c32.data(), p.N);
        double worst = 0;
        for (std::size_t i = 0; i < p.M; ++i)
            for (std::size_t j = 0; j < p.N; ++j)
                worst = std::max(worst, std::abs(double(c16[i * p.N + j]) - c32[i * p.N + j]) /
                                            p.magnitude(i, j));
        INFO("M " << p.M << " N " << p.N << " K " << p.K);
        CHECK(worst <= std::ldexp(1.0, -7) * 1.01);
        CHECK(worst > 0);  // the operands were rounded: not an fp32 product
    }
}

TEST_CASE("a bf16-packed weight gives gemm_bf16's values, bias and residual, bit for bit",
          "[bf16]") {
    // gemm_packed runs the blocked schedule on 48-wide panels; gemm_bf16 runs a small product
    // whose columns pad to fewer in 32-wide panels on one thread, without the schedule (32 and
    // 64: a head's values; 128: its keys): the same arithmetic, so the same bits
    namespace bd = cpu::bf16_detail;
    CHECK((bd::narrow_panels(32) && bd::narrow_panels(64) && bd::narrow_panels(128) &&
           bd::narrow_panels(5)));
    CHECK_FALSE((bd::narrow_panels(48) || bd::narrow_panels(96) || bd::narrow_panels(384) ||
                 bd::narrow_panels(1536)));
    if (!kernels_here()) return;
    std::uint32_t seed = 200;
    for (const auto& s : shapes)
        for (const auto ta : {transpose::no, transpose::yes}) {
            auto p = make(s[0], s[1], s[2], ta, transpose::yes, seed += 4);
            const auto bias = randn(p.N, seed + 3), res = randn(p.M * p.N, seed + 5);
            cpu::packed_b<float> packed;
            packed.pack(p.B.data(), p.ldb(), p.tb, p.K, p.N, ftune::precision::bf16);
            REQUIRE(packed.precision() == ftune::precision::bf16);
            REQUIRE(packed.rows() == p.K);
            REQUIRE(packed.cols() == p.N);
            std::vector<float> got(p.M * p.N, std::nanf("")), want(p.M * p.N);
            cpu::gemm_packed(ta, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), packed, 0.0f, got.data(),
                             p.N, bias.data(),
                             ftune::backends::add_residual<float>{res.data(), p.N});
            cpu::gemm_bf16(ta, p.tb, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), p.B.data(), p.ldb(),
                           0.0f, want.data(), p.N);
            for (std::size_t i = 0; i < p.M; ++i)
                for (std::size_t j = 0; j < p.N; ++j)
                    want[i * p.N + j] = (want[i * p.N + j] + bias[j]) + res[i * p.N + j];
            INFO("M " << p.M << " N " << p.N << " K " << p.K << " ta " << int(ta));
            CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
        }
}

TEST_CASE("a weight gradient's product adds its bias's sums in the pass over dy, bit for bit",
          "[bf16]") {
    // dW += dyᵀ x with db += Σ dy on the way: gemm_bf16's a_sums must give bias_backward's bits
    // (every column summed over the rows in order) and leave the product as it was, for odd K,
    // short tiles and any thread count
    if (!kernels_here()) return;
    std::uint32_t seed = 300;
    for (const auto& s : shapes)
        for (const auto tb : {transpose::no, transpose::yes}) {
            auto p = make(s[0], s[1], s[2], transpose::yes, tb, seed += 4);  // A: dy (K x M)
            const auto start = randn(p.M, seed + 1);  // db holds earlier gradients
            std::vector<float> got_db = start, want_db = start, got_dw = p.C, want_dw = p.C;
            cpu::gemm_bf16(transpose::yes, tb, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), p.B.data(),
                           p.ldb(), 1.0f, got_dw.data(), p.N, got_db.data());
            cpu::gemm_bf16(transpose::yes, tb, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), p.B.data(),
                           p.ldb(), 1.0f, want_dw.data(), p.N);
            cpu::bias_backward(want_db.data(), p.A.data(), p.K, p.M);
            INFO("M " << p.M << " N " << p.N << " K " << p.K << " tb " << int(tb));
            CHECK(std::memcmp(got_dw.data(), want_dw.data(), got_dw.size() * 4) == 0);
            CHECK(std::memcmp(got_db.data(), want_db.data(), got_db.size() * 4) == 0);
        }
    std::vector<float> a(6, 1.0f), b(6, 1.0f), c(4), sums(2);
    CHECK_THROWS_AS(cpu::gemm_bf16(transpose::no, transpose::no, 2, 2, 3, 1.0f, a.data(), 3,
                                   b.data(), 2, 0.0f, c.data(), 2, sums.data()),
                    ftune::error);
}

TEST_CASE("strided batched bf16 products (attention's) equal the reference emulation", "[bf16]") {
    if (!kernels_here()) return;
    const std::size_t batch = 5, M = 19, N = 23, K = 9;
    for (const auto tb : {transpose::no, transpose::yes}) {
        const auto A = randn(batch * M * K, 7), B = randn(batch * K * N, 8);
        std::vector<float> got(batch * M * N);
        std::vector<double> want(batch * M * N), Ad(A.begin(), A.end()), Bd(B.begin(), B.end());
        const std::size_t ldb = tb == transpose::no ? N : K;
        cpu::gemm_strided_batched_bf16(transpose::no, tb, M, N, K, 1.0f, A.data(), K, M * K,
                                       B.data(), ldb, K * N, 0.0f, got.data(), N, M * N, batch);
        ref::gemm_strided_batched_bf16<double>(transpose::no, tb, M, N, K, 1.0, Ad.data(), K, M * K,
                                               Bd.data(), ldb, K * N, 0.0, want.data(), N, M * N,
                                               batch);
        for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-5));
    }
}

TEST_CASE("ops in bf16 on a double model, or a packed double weight, say that bf16 needs float",
          "[bf16]") {
    using matrix = ftune::buffer<double, ftune::shape<ftune::dynamic, ftune::dynamic>>;
    using dims = ftune::shape<ftune::dynamic, ftune::dynamic>;
    matrix a(dims(2, 3)), b(dims(3, 4)), c(dims(2, 4));
    CHECK_THROWS_WITH(ftune::ops::matmul(a.view(), b.view(), c, 1.0, 0.0, ftune::precision::bf16),
                      Catch::Contains("float"));
    cpu::packed_b<double> packed;
    CHECK_THROWS_WITH(packed.pack(b.data(), 4, transpose::no, 3, 4, ftune::precision::bf16),
                      Catch::Contains("float"));
}

TEST_CASE("a whole encoder in bf16: the CPU backend's kernels against the reference emulation",
          "[bf16]") {
    if (!kernels_here()) return;
    using cpu_encoder = ftune::bert::encoder<float>;
    using ref_encoder =
        ftune::bert::encoder<float, ftune::dynamic, ftune::dynamic, ftune::blocks::post_norm,
                             ftune::blocks::bert_parts<float, ftune::device::reference>>;
    const ftune::bert::config cfg{.vocab_size = 23,
                                  .hidden_size = 48,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 4,
                                  .intermediate_size = 96,
                                  .max_position_embeddings = 16,
                                  .type_vocab_size = 2,
                                  .hidden_dropout_prob = 0.1,
                                  .attention_probs_dropout_prob = 0.1,
                                  .layer_norm_eps = 1e-5,
                                  .pad_token_id = 0,
                                  .hidden_act = ftune::ops::activation::gelu};
    cpu_encoder c(cfg);
    ref_encoder r(cfg);
    test::randomize(c, 300);
    test::randomize(r, 300);
    const std::size_t B = 2, T = 11, C = 48;
    std::vector<ftune::token_id> ids(B * T), types(B * T, 0), mask(B * T, 1);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = ftune::token_id(1 + (i * 7) % 22);
    for (std::size_t t = 8; t < T; ++t) mask[T + t] = 0, ids[T + t] = 0;  // padding
    for (const auto m : {ftune::mode::train, ftune::mode::eval}) {
        ftune::context c1{.mode = m, .rng = ftune::generator(4)};
        ftune::context c2{.mode = m, .rng = ftune::generator(4)};
        ftune::context c3{.mode = m, .rng = ftune::generator(4)};
        c1.precision = c2.precision = ftune::precision::bf16;
        const auto h1 =
            c.forward(c1, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T});
        const std::vector<float> got(h1.data(), h1.data() + h1.size());
        const auto h2 =
            r.forward(c2, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T});
        const std::vector<float> want(h2.data(), h2.data() + h2.size());
        std::vector<float> fp32;
        {
            ref_encoder r32(cfg);  // the same weights in fp32: the size of bf16's own effect
            test::randomize(r32, 300);
            const auto h3 =
                r32.forward(c3, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T});
            fp32.assign(h3.data(), h3.data() + h3.size());
        }
        // Not element by element: the two bf16 runs round the same operands, but their fp32
        // sums differ in order, so now and then an operand lands on the other side of a bf16
        // rounding boundary (a 2^-8 change), and attention spreads such a flip over the whole
        // sequence in the next layer. So the root-mean-square gap between the backends must be
        // a small fraction of the gap bf16 itself makes (fp32 backends agree to 1e-5).
        const double gap = rms_gap(got, want), gap32 = rms_gap(want, fp32);
        INFO((m == ftune::mode::train ? "train" : "eval")
             << ": rms |CPU bf16 - reference bf16| " << gap << ", rms |bf16 - fp32| " << gap32);
        CHECK(gap < 0.15 * gap32);
        CHECK(gap32 > 1e-3);  // bf16 did act
        CHECK(gap32 < 0.05);  // and stays within bf16's tolerance of fp32
        // backward: every gradient tensor's rms gap against its rms value (floored at 1e-3 of the
        // largest: the key projections' bias has an exact gradient of 0, rounding noise here)
        const auto dh = randn(B * T * C, 9);
        c.zero_grad(), r.zero_grad();
        c.backward(c1, {dh.data(), B, T, C});
        r.backward(c2, {dh.data(), B, T, C});
        std::vector<std::vector<float>> grads;
        double global = 0;
        c.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            grads.emplace_back(p.grad.begin(), p.grad.end());
            global = std::max(global, rms_gap(grads.back(), std::vector<float>(p.grad.size())));
        });
        std::size_t k = 0;
        double worst = 0;
        r.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            REQUIRE(k < grads.size());
            const std::vector<float> want_g(p.grad.begin(), p.grad.end());
            const double scale =
                std::max(rms_gap(want_g, std::vector<float>(want_g.size())), 1e-3 * global);
            const double rel = rms_gap(grads[k++], want_g) / scale;
            INFO(p.name << ": rms gap " << rel << " of the gradient's rms");
            // the key projections' bias has an exact gradient of 0 (softmax ignores a shift
            // shared by all scores): both backends hold rounding noise there, not comparable
            if (p.name.ends_with("key.bias")) return;
            worst = std::max(worst, rel);
            CHECK(rel < 0.05);
        });
        CHECK(k == grads.size());
        WARN((m == ftune::mode::train ? "train" : "eval")
             << ": hidden states rms gap " << gap << " (bf16's own effect " << gap32
             << "); worst gradient rms gap " << worst);
    }
}

TEST_CASE(
    "attention activations kept in bf16: dropout and the softmax backward store what the "
    "products would round them to, and the products read them as they are",
    "[bf16]") {
    using ftune::bf16;
    const auto bits_of = [](float v) {  // v rounded to bf16, by the CPU backend's rounding
        return std::uint16_t(cpu::bf16_detail::round_bits(v) >> 16);
    };
    // dropout: y kept in bf16 is y in fp32 rounded, bit for bit, on both backends; the same mask
    for (const std::size_t n :
         {std::size_t{1}, std::size_t{63}, std::size_t{1000}, std::size_t{70000}}) {
        INFO("n " << n);
        const auto x = randn(n, 40);
        const ftune::random_stream s(3, 4);
        std::vector<float> y32(n);
        std::vector<bf16> y16(n), r16(n);
        std::vector<std::uint8_t> m32(n), m16(n), mr(n);
        cpu::dropout_forward(y32.data(), m32.data(), x.data(), 0.3f, n, s);
        cpu::dropout_forward(y16.data(), m16.data(), x.data(), 0.3f, n, s);
        ref::dropout_forward(r16.data(), mr.data(), x.data(), 0.3f, n, s);
        CHECK(m16 == m32);
        CHECK(mr == m32);
        for (std::size_t i = 0; i < n; ++i) {
            REQUIRE(y16[i].bits == bits_of(y32[i]));
            REQUIRE(r16[i].bits == y16[i].bits);  // the reference's own rounding agrees
        }
    }
    // softmax backward through a dropout mask, written: the same, bit for bit
    {
        const std::size_t rows = 37, Tk = 45, n = rows * Tk;
        auto p = randn(n, 41), dp = randn(n, 42);
        for (auto& v : p) v = std::abs(v) / 8;
        std::vector<std::uint8_t> keep(n);
        for (std::size_t i = 0; i < n; ++i) keep[i] = i % 5 != 2;
        std::vector<float> ds32(n);
        std::vector<bf16> ds16(n), r16(n);
        cpu::softmax_backward(ds32.data(), p.data(), dp.data(), 0.125f, rows, Tk, keep.data(),
                              1.25f, false);
        cpu::softmax_backward(ds16.data(), p.data(), dp.data(), 0.125f, rows, Tk, keep.data(),
                              1.25f, false);
        ref::softmax_backward(r16.data(), p.data(), dp.data(), 0.125f, rows, Tk, keep.data(), 1.25f,
                              false);
        for (std::size_t i = 0; i < n; ++i) {
            REQUIRE(ds16[i].bits == bits_of(ds32[i]));
            // the reference sums in another order: one bf16 step apart at most
            REQUIRE(std::abs(int(r16[i].bits) - int(ds16[i].bits)) <= 1);
        }
        CHECK_THROWS_AS(cpu::softmax_backward(ds16.data(), p.data(), dp.data(), 0.125f, rows, Tk),
                        ftune::error);  // a bf16 dscores cannot be accumulated into
        CHECK_THROWS_AS(ref::softmax_backward(r16.data(), p.data(), dp.data(), 0.125f, rows, Tk),
                        ftune::error);
    }
    // a product whose A is kept in bf16 equals the product of the same values as floats, bit for
    // bit: in place (row-major, K and lda even), copied (odd K or lda), and transposed
    if (!kernels_here()) return;
    for (const auto& sh : shapes)
        for (const auto ta : {transpose::no, transpose::yes})
            for (const auto tb : {transpose::no, transpose::yes})
                for (const std::size_t pad : {std::size_t{0}, std::size_t{1}, std::size_t{2}}) {
                    const std::size_t M = sh[0], N = sh[1], K = sh[2];
                    const std::size_t lda = (ta == transpose::no ? K : M) + pad;
                    const std::size_t rows = ta == transpose::no ? M : K;
                    auto A = randn(rows * lda, 43);
                    std::vector<bf16> A16(A.size());
                    for (std::size_t i = 0; i < A.size(); ++i) {
                        A16[i].bits = bits_of(A[i]);
                        A[i] = A16[i].to_float();
                    }
                    const auto B = randn(K * N, 44);
                    const std::size_t ldb = tb == transpose::no ? N : K;
                    std::vector<float> got = randn(M * N, 45), want = got;
                    cpu::gemm_bf16(ta, tb, M, N, K, 0.5f, A16.data(), lda, B.data(), ldb, 0.25f,
                                   got.data(), N);
                    cpu::gemm_bf16(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 0.25f,
                                   want.data(), N);
                    INFO("M " << M << " N " << N << " K " << K << " ta " << int(ta) << " tb "
                              << int(tb) << " lda " << lda);
                    REQUIRE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
                    std::vector<float> rgot = randn(M * N, 45), rwant = rgot;
                    ref::gemm_bf16(ta, tb, M, N, K, 0.5f, A16.data(), lda, B.data(), ldb, 0.25f,
                                   rgot.data(), N);
                    ref::gemm_bf16(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 0.25f,
                                   rwant.data(), N);
                    REQUIRE(rgot == rwant);
                }
    // through ops: a bf16 operand in an fp32 product is refused
    using ftune::dynamic;
    ftune::buffer<bf16, ftune::dynamic_shape<4>> p16(ftune::dynamic_shape<4>(1, 2, 3, 3));
    ftune::buffer<float, ftune::shape<dynamic, dynamic>> v(ftune::shape<dynamic, dynamic>(3, 4)),
        out(ftune::shape<dynamic, dynamic>(3, 4));
    CHECK_THROWS_WITH(ftune::ops::head_context(out, p16.view(), v.view(), ftune::precision::fp32),
                      Catch::Contains("bf16"));
}

TEST_CASE(
    "bf16 inference attention: the unprepared bf16 path's values bit for bit, and the "
    "reference emulation's within bf16 rounding",
    "[bf16]") {
    if (!kernels_here()) return;
    using ftune::dynamic;
    using mat = ftune::buffer<float, ftune::shape<dynamic, dynamic>>;
    for (const std::size_t d : {std::size_t{32}, std::size_t{20}, std::size_t{9}})
        for (const bool causal : {false, true})
            for (const std::size_t Tn : {std::size_t{37}, std::size_t{8}}) {
                const std::size_t Bn = 2, H = 3, C = H * d;
                INFO("d " << d << " causal " << causal << " T " << Tn);
                const auto qkv = randn(Bn * Tn * 3 * C, 50);
                std::vector<float> mask(Bn * Tn, 0.0f);
                mask[Tn + 2] = -1e9f, mask[Tn - 1] = -INFINITY;  // dropped keys in both sequences
                const float scale = 1.0f / std::sqrt(float(d));
                std::vector<float> got(Bn * Tn * C);
                cpu::attention_inference_bf16(got.data(), C, qkv.data(), 3 * C, qkv.data() + C,
                                              qkv.data() + 2 * C, 3 * C, mask.data(), scale, Bn, H,
                                              Tn, Tn, d, causal);
                // the unprepared path: head_scores, masked_softmax, head_context in bf16
                mat q(ftune::shape<dynamic, dynamic>(Bn * Tn, C)), k(q.shape()), v(q.shape()),
                    out(q.shape());
                for (std::size_t r = 0; r < Bn * Tn; ++r)
                    for (std::size_t c = 0; c < C; ++c) {
                        q.data()[r * C + c] = qkv[r * 3 * C + c];
                        k.data()[r * C + c] = qkv[r * 3 * C + C + c];
                        v.data()[r * C + c] = qkv[r * 3 * C + 2 * C + c];
                    }
                ftune::buffer<float, ftune::dynamic_shape<4>> s(
                    ftune::dynamic_shape<4>(Bn, H, Tn, Tn)),
                    p(s.shape());
                const ftune::view<const float, ftune::shape<dynamic, dynamic>> m(mask.data(), Bn,
                                                                                 Tn);
                ftune::ops::head_scores(s, q.view(), k.view(), ftune::precision::bf16);
                ftune::ops::masked_softmax(p, s, m, scale, causal);
                ftune::ops::head_context(out, p.view(), v.view(), ftune::precision::bf16);
                REQUIRE(std::memcmp(got.data(), out.data(), got.size() * sizeof(float)) == 0);
                // the reference emulation (probabilities in double, then rounded): a probability
                // may round to the neighbouring bf16 value, 2^-8 of it, times |v| <= 5
                std::vector<double> want(got.size()), qd(qkv.begin(), qkv.end()),
                    md(mask.begin(), mask.end());
                ref::attention_inference_bf16<double>(
                    want.data(), C, qd.data(), 3 * C, qd.data() + C, qd.data() + 2 * C, 3 * C,
                    md.data(), double(scale), Bn, H, Tn, Tn, d, causal);
                for (std::size_t i = 0; i < got.size(); ++i)
                    REQUIRE(got[i] == Approx(want[i]).margin(2e-2));
                // and within bf16 rounding of fp32 attention
                std::vector<float> f32(got.size());
                cpu::attention_inference(f32.data(), C, qkv.data(), 3 * C, qkv.data() + C,
                                         qkv.data() + 2 * C, 3 * C, mask.data(), scale, Bn, H, Tn,
                                         Tn, d, causal);
                for (std::size_t i = 0; i < got.size(); ++i)
                    REQUIRE(got[i] == Approx(f32[i]).margin(5e-2));
                // the first query only (a classifier's [CLS]): the same rows
                if (!causal) {
                    std::vector<float> first(Bn * C);
                    cpu::attention_inference_bf16(first.data(), C, qkv.data(), Tn * 3 * C,
                                                  qkv.data() + C, qkv.data() + 2 * C, 3 * C,
                                                  mask.data(), scale, Bn, H, 1, Tn, d, false);
                    for (std::size_t b = 0; b < Bn; ++b)
                        REQUIRE(std::memcmp(first.data() + b * C, got.data() + b * Tn * C,
                                            C * sizeof(float)) == 0);
                }
            }
}

TEST_CASE("operands kept in bf16 give the products of their values as floats, bit for bit",
          "[bf16]") {
    // a linear layer's input kept in bf16 (the FFN's activation in a bf16 training step) is read
    // in place as A (row-major, K even) or packed from its words (odd K, transposed), and as B of
    // the weight gradient copied instead of rounded: the same words, so the same sums
    if (!kernels_here()) return;
    auto rounded = [](const std::vector<float>& v) {
        std::vector<ftune::bf16> r(v.size());
        cpu::bf16_detail::round_to(r.data(), v.data(), v.size());
        return r;
    };
    std::uint32_t seed = 700;
    for (const auto& s : shapes)
        for (const auto ta : {transpose::no, transpose::yes})
            for (const auto tb : {transpose::no, transpose::yes}) {
                const auto p = make(s[0], s[1], s[2], ta, tb, seed += 4);
                const auto ab = rounded(p.A), bb = rounded(p.B);
                INFO("M " << p.M << " N " << p.N << " K " << p.K << " ta " << int(ta) << " tb "
                          << int(tb));
                std::vector<float> want = p.C;
                cpu::gemm_bf16(ta, tb, p.M, p.N, p.K, 0.5f, p.A.data(), p.lda(), p.B.data(),
                               p.ldb(), 1.0f, want.data(), p.N);
                auto check = [&](const auto* A, const auto* B) {
                    std::vector<float> got = p.C;
                    cpu::gemm_bf16(ta, tb, p.M, p.N, p.K, 0.5f, A, p.lda(), B, p.ldb(), 1.0f,
                                   got.data(), p.N);
                    CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
                };
                check(ab.data(), p.B.data());
                check(p.A.data(), bb.data());
                check(ab.data(), bb.data());
                // A kept in bf16 against a weight packed in bf16 (a linear layer's forward)
                cpu::packed_b<float> packed;
                packed.pack(p.B.data(), p.ldb(), p.tb, p.K, p.N, ftune::precision::bf16);
                std::vector<float> pf(p.M * p.N, std::nanf("")), pb = pf;
                cpu::gemm_packed(ta, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda(), packed, 0.0f,
                                 pf.data(), p.N);
                cpu::gemm_packed(ta, p.M, p.N, p.K, 1.0f, ab.data(), p.lda(), packed, 0.0f,
                                 pb.data(), p.N);
                CHECK(std::memcmp(pf.data(), pb.data(), pf.size() * sizeof(float)) == 0);
            }
    // the activation's rounding (round_to) gives the packings' words, NaN payloads included: the
    // fixture's values (subnormals, ties, NaN, infinities) rounded both ways, bit for bit
    {
        const ftune::io::safetensors_file f(std::string(FTUNE_REFERENCE_DIR) +
                                            "/bf16/rounding.safetensors");
        const auto& in = f.at("input");
        const std::size_t n = in.numel(), K = 64, M = (n + K - 1) / K;
        std::vector<float> x(M * K, 0.0f);
        std::memcpy(x.data(), f.bytes(in).data(), n * 4);
        const auto r = rounded(x);
        std::vector<std::uint32_t> rows(M * K / 2), paired(M * K / 2);
        cpu::bf16_detail::pack_a(rows.data(), x.data(), K, transpose::no, M, K);  // row-major A
        for (std::size_t i = 0; i + 1 < M; i += 2)  // B's rows paired (the weight gradient's x)
            cpu::bf16_detail::pair_rows(paired.data() + i * K / 2, x.data() + i * K,
                                        x.data() + (i + 1) * K, K);
        std::size_t bad = 0;
        for (std::size_t i = 0; i < M * K; ++i)
            bad += (rows[i / 2] >> (i % 2 * 16) & 0xffffu) != r[i].bits;
        for (std::size_t i = 0; i + 1 < M; i += 2)
            for (std::size_t k = 0; k < K; ++k) {
                const std::uint32_t w = paired[i * K / 2 + k];
                bad += (w & 0xffffu) != r[i * K + k].bits;
                bad += (w >> 16) != r[(i + 1) * K + k].bits;
            }
        CHECK(bad == 0);
    }
    // a row-major A kept in bf16 with K even but its rows an odd count of values apart is
    // packed (not read in place): the same values
    {
        const std::size_t M = 5, N = 7, K = 6, lda = 7;
        const auto A = randn(M * lda, 91), B = randn(K * N, 92);
        const auto ab = rounded(A);
        std::vector<float> want(M * N), got(M * N);
        cpu::gemm_bf16(transpose::no, transpose::no, M, N, K, 1.0f, A.data(), lda, B.data(), N,
                       0.0f, want.data(), N);
        cpu::gemm_bf16(transpose::no, transpose::no, M, N, K, 1.0f, ab.data(), lda, B.data(), N,
                       0.0f, got.data(), N);
        CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
    }
    // a weight packed in fp32 does not multiply a bf16 A
    const std::vector<float> w(6, 1.0f);
    const std::vector<ftune::bf16> a(6);
    std::vector<float> c(4);
    cpu::packed_b<float> packed32;
    packed32.pack(w.data(), 3, transpose::yes, 3, 2);
    CHECK_THROWS_AS(
        cpu::gemm_packed(transpose::no, 2, 2, 3, 1.0f, a.data(), 3, packed32, 0.0f, c.data(), 2),
        ftune::error);
}

TEST_CASE("an activation written in bf16 is the float activation rounded to nearest even",
          "[bf16]") {
    // ops::activate into a bf16 y: chunks computed in fp32 and rounded (short and long runs, a
    // partial last chunk, NaN and infinities through the rounding as round_to takes them)
    using ftune::dynamic;
    using ftune::ops::activation;
    for (const std::size_t n :
         {std::size_t{1}, std::size_t{37}, std::size_t{4096}, std::size_t{10000}}) {
        auto x = randn(n, std::uint32_t(n));
        for (auto& v : x) v *= 3.0f;
        if (n > 3) x[0] = INFINITY, x[1] = -INFINITY, x[2] = std::nanf("");
        const ftune::view<const float, ftune::shape<dynamic>> xv(x.data(), n);
        for (const auto f : {activation::gelu, activation::gelu_tanh, activation::relu,
                             activation::silu, activation::tanh}) {
            ftune::buffer<float, ftune::shape<dynamic>> y32{ftune::shape<dynamic>(n)};
            ftune::buffer<ftune::bf16, ftune::shape<dynamic>> y16{ftune::shape<dynamic>(n)};
            ftune::ops::activate(f, y32, xv);
            ftune::ops::activate(f, y16, xv);
            std::vector<ftune::bf16> want(n);
            cpu::bf16_detail::round_to(want.data(), y32.data(), n);
            INFO("n " << n << " function " << int(f));
            CHECK(std::memcmp(y16.data(), want.data(), n * sizeof(ftune::bf16)) == 0);
        }
    }
}

namespace {
// The FFN activation without forward_bf16: the encoder block then keeps it in fp32 (the path
// before activations were kept in bf16), for the comparison below.
template <class T, std::size_t F, class D>
struct activation_kept_in_fp32 : ftune::layers::hidden_activation<T, F, D> {
    using base = ftune::layers::hidden_activation<T, F, D>;
    using base::base;
    void forward_bf16(ftune::context&, typename base::input_view) = delete;
};
}  // namespace

TEST_CASE(
    "bf16 training and inference keep the FFN's activation in bf16 alone, with the same "
    "values and gradients bit for bit",
    "[bf16]") {
    if (!kernels_here()) return;
    using ftune::dynamic;
    const ftune::bert::config cfg{.vocab_size = 23,
                                  .hidden_size = 48,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 4,
                                  .intermediate_size = 98,  // odd pairs per row: 49
                                  .max_position_embeddings = 16,
                                  .type_vocab_size = 2,
                                  .hidden_dropout_prob = 0.1,
                                  .attention_probs_dropout_prob = 0.1,
                                  .layer_norm_eps = 1e-5,
                                  .pad_token_id = 0,
                                  .hidden_act = ftune::ops::activation::gelu};
    // m train, eval, or eval after prepare_inference(bf16) (prepared: the fused inference path)
    auto run = [&]<class Norm, template <class, std::size_t, class> class Act>(ftune::mode m,
                                                                               bool prepared) {
        ftune::bert::encoder<float, dynamic, dynamic, Norm,
                             ftune::blocks::bert_parts<float, ftune::device::cpu, Act>>
            e(cfg);
        test::randomize(e, 310);
        if (prepared) e.prepare_inference(ftune::precision::bf16);
        const std::size_t B = 2, T = 11, C = 48;
        std::vector<ftune::token_id> ids(B * T), types(B * T, 0), mask(B * T, 1);
        for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = ftune::token_id(1 + (i * 5) % 22);
        for (std::size_t t = 8; t < T; ++t) mask[T + t] = 0, ids[T + t] = 0;  // padding
        ftune::context ctx{.mode = m, .rng = ftune::generator(6)};
        ctx.precision = ftune::precision::bf16;
        const auto h =
            e.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T});
        std::vector<float> out(h.data(), h.data() + h.size());
        if (!prepared) {
            const auto dh = randn(B * T * C, 11);
            e.zero_grad();
            e.backward(ctx, {dh.data(), B, T, C});
            e.visit_parameters("", [&](ftune::parameter_ref<float> p) {
                out.insert(out.end(), p.grad.begin(), p.grad.end());
            });
        }
        for (const auto& block : e.layer)  // which path ran
            CHECK(block.activation.output_in_bf16() ==
                  std::is_same_v<
                      Act<float, dynamic, ftune::device::cpu>,
                      ftune::layers::hidden_activation<float, dynamic, ftune::device::cpu>>);
        return out;
    };
    using post = ftune::blocks::post_norm;
    using pre = ftune::blocks::pre_norm;
    using ftune::layers::hidden_activation;
    for (const int k : {0, 1, 2}) {
        const auto m = k == 0 ? ftune::mode::train : ftune::mode::eval;
        const bool prepared = k == 2;
        INFO((k == 0 ? "train" : k == 1 ? "eval" : "prepared inference"));
        const auto got = run.template operator()<post, hidden_activation>(m, prepared);
        const auto want = run.template operator()<post, activation_kept_in_fp32>(m, prepared);
        REQUIRE(got.size() == want.size());
        CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
        const auto got_pre = run.template operator()<pre, hidden_activation>(m, prepared);
        const auto want_pre = run.template operator()<pre, activation_kept_in_fp32>(m, prepared);
        CHECK(std::memcmp(got_pre.data(), want_pre.data(), got_pre.size() * sizeof(float)) == 0);
    }
}

TEST_CASE(
    "AMX tiles: the reference emulation's values up to fp32 sums, the same bits on any "
    "thread count, and the AVX512-BF16 kernel's values up to fp32 sums",
    "[bf16][amx]") {
    if (!kernels_here()) return;
    if (!cpu::amx_available()) {
        WARN("not checked: no AMX-BF16 tiles here (" << cpu::this_cpu().summary() << ")");
        return;
    }
    struct restore {  // the kernel and thread count of the other cases, however this one ends
        bool amx = cpu::use_amx(true);
        int threads = ftune::num_threads();
        ~restore() {
            cpu::use_amx(amx);
            ftune::set_num_threads(threads);
        }
    } restore_after;
    std::uint32_t seed = 500;
    // each operand kind: A float or kept in bf16 (a transposed one packed into rows of pairs)
    auto check = [&]<class TA>(const product& p, float beta) {
        std::vector<TA> A(p.A.size());
        for (std::size_t i = 0; i < A.size(); ++i)
            if constexpr (std::is_same_v<TA, float>)
                A[i] = p.A[i];
            else
                A[i].bits = std::uint16_t(cpu::bf16_detail::round_bits(p.A[i]) >> 16);
        auto product_on = [&](bool amx, int nt) {
            cpu::use_amx(amx);
            ftune::set_num_threads(nt);
            auto c = p.C;
            cpu::gemm_bf16(p.ta, p.tb, p.M, p.N, p.K, 0.5f, A.data(), p.lda(), p.B.data(), p.ldb(),
                           beta, c.data(), p.N);
            return c;
        };
        const auto one = product_on(true, 1), two = product_on(true, 2), avx = product_on(false, 2);
        std::vector<double> Ad(A.size()), Bd(p.B.begin(), p.B.end()), want(p.C.begin(), p.C.end());
        for (std::size_t i = 0; i < A.size(); ++i)
            Ad[i] = double(ftune::backends::cpu::bf16_detail::round(p.A[i]));
        ref::gemm_bf16<double>(p.ta, p.tb, p.M, p.N, p.K, 0.5, Ad.data(), p.lda(), Bd.data(),
                               p.ldb(), beta, want.data(), p.N);
        double worst = 0, worst_avx = 0;
        for (std::size_t i = 0; i < p.M; ++i)
            for (std::size_t j = 0; j < p.N; ++j) {
                const std::size_t e = i * p.N + j;
                const double scale = 0.5 * p.magnitude(i, j) + beta * std::abs(p.C[e]) + 1e-30;
                worst = std::max(worst, std::abs(one[e] - want[e]) / scale);
                worst_avx = std::max(worst_avx, std::abs(double(one[e]) - avx[e]) / scale);
            }
        INFO("M " << p.M << " N " << p.N << " K " << p.K << " ta " << int(p.ta) << " tb "
                  << int(p.tb) << " beta " << beta
                  << (std::is_same_v<TA, float> ? "" : " A in bf16"));
        CHECK(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)) == 0);
        CHECK(worst < 1e-6);
        CHECK(worst_avx < 2e-6);
    };
    for (const auto& s : shapes)
        for (const auto ta : {transpose::no, transpose::yes})
            for (const auto tb : {transpose::no, transpose::yes}) {
                const auto p = make(s[0], s[1], s[2], ta, tb, seed += 3);
                check.template operator()<float>(p, 0.0f);
                check.template operator()<float>(p, 0.75f);
                check.template operator()<ftune::bf16>(p, 0.0f);
            }
    // tiles cut short every way: rows (M % 16), pairs (K/2 % 16), column groups (N % 48); a
    // sequence's projection (128 x 384 x 384); more rows than a row block, so that two threads
    // split the rows rather than the columns
    for (const auto& s : std::vector<std::array<std::size_t, 3>>{{16, 48, 32},
                                                                 {15, 16, 30},
                                                                 {31, 33, 62},
                                                                 {47, 95, 1601},
                                                                 {128, 384, 384},
                                                                 {1100, 100, 64}})
        check.template operator()<float>(
            make(s[0], s[1], s[2], transpose::no, transpose::yes, seed += 3), 0.0f);
}
