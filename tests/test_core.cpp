// Core types: shapes with static/dynamic extents, views, buffers, errors, the Philox RNG.
#include <ftune/ftune.hpp>

#include <numeric>
#include <set>
#include <string>

#include "util.hpp"

using ftune::dynamic;
using ftune::shape;

TEST_CASE("shape: static and dynamic extents", "[core]") {
    shape<2, dynamic> s(2, 5);
    CHECK(s.rank == 2);
    CHECK(s.rank_dynamic == 1);
    CHECK(s.extent(0) == 2);
    CHECK(s.extent(1) == 5);
    CHECK(s.size() == 10);
    CHECK(s.to_string() == "[2, 5]");
    shape<3, 4> st;
    CHECK(st.size() == 12);
    shape<> scalar;
    CHECK(scalar.size() == 1);
    // static -> dynamic is implicit; dynamic -> static is explicit and checked at run time
    ftune::dynamic_shape<2> d = st;
    CHECK(d == st);
    CHECK(shape<3, dynamic>(d).extent(1) == 4);
    CHECK_THROWS_AS((shape<5, dynamic>(d)), ftune::error);
}

TEST_CASE("shape: a value contradicting a static extent throws shape_mismatch naming both",
          "[core]") {
    try {
        shape<384, dynamic> s(768, 2);
        FAIL("no throw");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::shape_mismatch);
        const std::string w = e.what();
        CHECK(w ==
              "ftune: shape: expected [384, *], got [768, 2] (axis 0 is fixed at compile time to "
              "384)");
    }
}

TEST_CASE("check_same_shape names both shapes", "[core]") {
    ftune::dynamic_shape<2> a(2, 3), b(3, 2);
    try {
        ftune::check_same_shape(a, b, "residual");
        FAIL("no throw");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::shape_mismatch);
        CHECK(e.context() == "residual");
        CHECK(std::string(e.what()) == "ftune: residual: shapes differ: [2, 3] vs [3, 2]");
    }
    CHECK_NOTHROW(ftune::check_same_shape(a, ftune::dynamic_shape<2>(2, 3), "same"));
}

TEST_CASE("buffer: aligned, zero-filled, row-major, no reallocation when shrinking", "[core]") {
    ftune::buffer<float, shape<dynamic, 7>> b(3, 7);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % ftune::buffer_alignment == 0);
    for (float v : b.span()) CHECK(v == 0.0f);
    b(1, 2) = 5.0f;
    CHECK(b.data()[1 * 7 + 2] == 5.0f);
    auto v = b.view();
    CHECK(v(1, 2) == 5.0f);
    ftune::view<const float, ftune::dynamic_shape<2>> cv = v;  // const and less static
    CHECK(cv(1, 2) == 5.0f);
    const float* p = b.data();
    b.resize(shape<dynamic, 7>(2, 7));
    CHECK(b.data() == p);
    CHECK(b.capacity() == 21);
    b.resize(shape<dynamic, 7>(4, 7));
    CHECK(b.capacity() == 28);
    ftune::buffer<float, shape<dynamic, 7>> c = b;  // deep copy
    CHECK(c.data() != b.data());
    CHECK(c.shape() == b.shape());
    CHECK_THROWS_AS((ftune::buffer<float, shape<dynamic, 7>>(2, 8)), ftune::error);
}

TEST_CASE("buffer: a moved-from buffer is empty and can be assigned again", "[core]") {
    using V = ftune::buffer<float, ftune::dynamic_shape<1>>;
    V a(10), src(4);
    src.fill(3.0f);
    V b = std::move(a);
    CHECK(b.size() == 10);
    CHECK(a.size() == 0);
    CHECK(a.capacity() == 0);
    a = src;
    CHECK(a.size() == 4);
    CHECK(a(3) == 3.0f);
    V c;
    c = std::move(b);
    CHECK(c.size() == 10);
    CHECK(b.size() == 0);
    ftune::buffer<float, shape<2, 3>> s1, s2;
    s1.fill(1.0f);
    s2 = std::move(s1);
    CHECK(s2(1, 2) == 1.0f);
    s1 = s2;  // reallocates: the moved-from capacity is 0
    CHECK(s1(1, 2) == 1.0f);
}

TEST_CASE("buffer: borrowed and released storage (inference replicas)", "[core]") {
    using V = ftune::buffer<float, ftune::dynamic_shape<1>>;
    V owner(6);
    owner.fill(2.0f);
    V alias(6);
    alias.borrow(owner.data());  // frees its own storage, aliases owner's
    CHECK(alias.data() == owner.data());
    CHECK_FALSE(alias.owns_storage());
    CHECK(owner.owns_storage());
    V copy = alias;  // a copy of an alias aliases too
    CHECK(copy.data() == owner.data());
    CHECK_FALSE(copy.owns_storage());
    V other(6);
    other.fill(5.0f);
    copy = other;  // assigning to an alias never writes the aliased elements
    CHECK(copy.owns_storage());
    CHECK(copy.data() != owner.data());
    CHECK(copy(5) == 5.0f);
    CHECK(owner(5) == 2.0f);
    copy = alias;  // an owner assigned an alias becomes one
    CHECK(copy.data() == owner.data());
    alias.resize(ftune::dynamic_shape<1>(12));  // growing allocates its own storage
    CHECK(alias.owns_storage());
    CHECK(alias.data() != owner.data());
    CHECK(owner(0) == 2.0f);

    V grad(6);
    grad.release();
    CHECK(grad.data() == nullptr);
    CHECK(grad.size() == 6);  // the shape stays
    CHECK(grad.capacity() == 0);
    const V released_copy = grad;  // no storage either
    CHECK(released_copy.data() == nullptr);
    grad.resize(ftune::dynamic_shape<1>(6));  // allocates again, zero-filled
    REQUIRE(grad.data() != nullptr);
    CHECK(grad(5) == 0.0f);
}

TEST_CASE("view: reshape checks the element count", "[core]") {
    std::vector<double> data(12);
    std::iota(data.begin(), data.end(), 0.0);
    ftune::view<double, shape<3, 4>> v(data.data(), 3, 4);
    auto r = v.reshape(shape<2, 6>{});
    CHECK(r(1, 0) == 6.0);
    CHECK_THROWS_AS(v.reshape(ftune::dynamic_shape<2>(5, 2)), ftune::error);
}

TEST_CASE("error: id, context and message", "[core]") {
    ftune::error e(ftune::errc::parse, "data/train.tsv:12", "expected 2 columns, got 3");
    CHECK(std::string(e.what()) == "ftune: data/train.tsv:12: expected 2 columns, got 3");
    CHECK(ftune::to_string(e.id()) == "parse");
}

TEST_CASE("philox4x32-10 matches Random123's known-answer vectors", "[core][rng]") {
    // tests/kat_vectors of the Random123 distribution (D. E. Shaw Research), "philox4x32 10" lines.
    using P = ftune::philox4x32;
    CHECK(P::generate({0, 0, 0, 0}, {0, 0}) ==
          P::counter_type{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
    CHECK(P::generate({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}) ==
          P::counter_type{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
    CHECK(P::generate({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}) ==
          P::counter_type{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
}

TEST_CASE("philox generate8 (SIMD) equals eight scalar generate calls", "[core][rng]") {
    using P = ftune::philox4x32;
    ftune::random_stream src(77, 1);
    for (std::uint64_t t = 0; t < 200; ++t) {
        std::uint32_t c[4][8];
        P::counter_type want[8];
        for (int i = 0; i < 8; ++i) {
            for (int j = 0; j < 4; ++j)
                c[j][i] = src.bits(t * 64 + std::uint64_t(i) * 4 + std::uint64_t(j));
            want[i] = {c[0][i], c[1][i], c[2][i], c[3][i]};
        }
        const P::key_type key{src.bits(t * 64 + 40), src.bits(t * 64 + 41)};
        P::generate8(c, key);
        for (int i = 0; i < 8; ++i) {
            want[i] = P::generate(want[i], key);
            for (int j = 0; j < 4; ++j) REQUIRE(c[j][i] == want[i][std::size_t(j)]);
        }
    }
    // values32 serves bits(32 g + k) in order
    ftune::random_stream s(5, 6);
    std::uint32_t w[4][8];
    s.values32(3, w);
    for (std::uint64_t k = 0; k < 32; ++k) CHECK(w[k / 8][k % 8] == s.bits(96 + k));
    // values64 (512-bit registers where the CPU has AVX-512) serves bits(64 h + k) in order,
    // with block counters past 2^32 too (the high counter word)
    for (const std::uint64_t h : {std::uint64_t{0}, std::uint64_t{5}, (std::uint64_t{1} << 28) - 1,
                                  std::uint64_t{1} << 30}) {
        std::uint32_t w2[2][4][8];
        s.values64(h, w2);
        for (std::uint64_t k = 0; k < 64; ++k)
            REQUIRE(w2[k / 32][(k / 8) % 4][k % 8] == s.bits(64 * h + k));
    }
}

TEST_CASE("random streams: reproducible, independent, well distributed", "[core][rng]") {
    ftune::generator g(42);
    auto s0 = g.next(), s1 = g.next();
    CHECK(g.position() == 2);
    CHECK(s0.bits(10) == ftune::random_stream(42, 0).bits(10));
    CHECK(s0.bits(10) != s1.bits(10));
    // uniform: mean 1/2, variance 1/12 over 100k draws (5 sigma bounds)
    double sum = 0, sq = 0;
    const int n = 100000;
    for (int i = 0; i < n; ++i) {
        const double u = s0.uniform(std::uint64_t(i));
        REQUIRE(u >= 0.0);
        REQUIRE(u < 1.0);
        sum += u;
        sq += u * u;
    }
    CHECK(std::abs(sum / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
    CHECK(std::abs(sq / n - sum * sum / n / n - 1.0 / 12) < 0.002);
    // normal: mean 0, variance 1
    double ns = 0, nq = 0;
    for (int i = 0; i < n; ++i) {
        const double z = s1.normal(std::uint64_t(i));
        ns += z;
        nq += z * z;
    }
    CHECK(std::abs(ns / n) < 5 / std::sqrt(double(n)));
    CHECK(std::abs(nq / n - 1.0) < 0.02);
}

TEST_CASE("shuffle is a permutation fixed by the stream", "[core][rng]") {
    std::vector<int> a(1000), b;
    std::iota(a.begin(), a.end(), 0);
    b = a;
    ftune::shuffle(std::span<int>(a), ftune::random_stream(7, 3));
    ftune::shuffle(std::span<int>(b), ftune::random_stream(7, 3));
    CHECK(a == b);
    CHECK(std::set<int>(a.begin(), a.end()).size() == 1000);
    int fixed = 0;
    for (int i = 0; i < 1000; ++i) fixed += a[i] == i;
    CHECK(fixed < 10);  // a random permutation has ~1 fixed point
}

TEST_CASE("parameter: value, grad, flags, names", "[core]") {
    ftune::parameter<float, shape<dynamic, 4>> p("weight", shape<dynamic, 4>(3, 4), true);
    CHECK(p.size() == 12);
    p.grad.fill(2.0f);
    p.zero_grad();
    for (float g : p.grad.span()) CHECK(g == 0.0f);
    p.trainable = false;  // frozen: zero_grad frees the gradient's storage
    p.zero_grad();
    CHECK(p.grad.data() == nullptr);
    CHECK(p.grad.size() == 12);  // the shape stays
    p.trainable = true;          // training again: the storage comes back, zero
    p.gradient()(2, 3) += 1.0f;
    CHECK(p.grad.data() != nullptr);
    CHECK(p.grad(2, 3) == 1.0f);
    CHECK(p.grad(0, 0) == 0.0f);
    p.trainable = false;
    p.zero_grad();
    p.trainable = true;
    CHECK(p.ref("layer").grad.data() != nullptr);  // a visit gives it back too
    CHECK(ftune::join_name("encoder.layer.3.attention.self.query", "weight") ==
          "encoder.layer.3.attention.self.query.weight");
    CHECK(ftune::join_name("", "bias") == "bias");
}

TEST_CASE("parameter: inference_only frees the gradient, freezes, and may alias a value",
          "[core]") {
    using P = ftune::parameter<float, shape<dynamic, 4>>;
    P a("weight", shape<dynamic, 4>(3, 4)), b("weight", shape<dynamic, 4>(3, 4));
    a.value.fill(1.5f);
    auto ref = b.ref("layer");  // through the reference, as visitors do
    ref.inference_only(a.value.data());
    CHECK(b.value.data() == a.value.data());
    CHECK(b.value(2, 3) == 1.5f);
    CHECK(b.grad.data() == nullptr);
    CHECK_FALSE(b.trainable);
    a.inference_only();  // no value: only the gradient goes
    CHECK(a.value.owns_storage());
    CHECK(a.grad.data() == nullptr);
    ftune::parameter_ref<float> detached;
    CHECK_THROWS_AS(detached.inference_only(), ftune::error);
}

TEST_CASE("ops: runtime shape mismatches throw ftune::error naming both shapes", "[core][ops]") {
    using M = ftune::buffer<float, ftune::dynamic_shape<2>>;
    M a(4, 3), b(5, 2), c(4, 2);
    try {
        ftune::ops::matmul(a, b, c);
        FAIL("no throw");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::shape_mismatch);
        const std::string w = e.what();
        INFO(w);
        CHECK(w.find("[4, 3]") != std::string::npos);
        CHECK(w.find("[5, 2]") != std::string::npos);
    }
    ftune::buffer<float, ftune::dynamic_shape<1>> bias(3);
    try {
        ftune::ops::bias_add(c, bias);
        FAIL("no throw");
    } catch (const ftune::error& e) {
        const std::string w = e.what();
        INFO(w);
        CHECK(w.find("[4, 2]") != std::string::npos);
        CHECK(w.find("[3]") != std::string::npos);
    }
    CHECK_THROWS_AS(ftune::ops::residual_add(c, c, a), ftune::error);
    // and the matching call works: (4,3) x (3,2)
    M b2(3, 2);
    CHECK_NOTHROW(ftune::ops::matmul(a, b2, c));
}

TEST_CASE("ops: token ids outside the table throw out_of_range", "[core][ops]") {
    ftune::buffer<float, ftune::dynamic_shape<2>> table(10, 4), out(2, 4);
    ftune::buffer<ftune::token_id, ftune::dynamic_shape<1>> ids(2);
    ids(0) = 3;
    ids(1) = 10;
    try {
        ftune::ops::embedding(out, ids, table);
        FAIL("no throw");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::out_of_range);
        CHECK(std::string(e.what()).find("id 10 at position 1") != std::string::npos);
    }
}

TEST_CASE("context workspace: one object of each type per run, kept; copies start empty",
          "[unit]") {
    struct scratch_a {
        std::vector<int> v;
    };
    struct scratch_b {
        int n = 7;
    };
    ftune::context ctx;
    auto& a = ctx.workspace.get<scratch_a>();
    a.v.assign(100, 1);
    CHECK(&ctx.workspace.get<scratch_a>() == &a);  // the same object on every call
    CHECK(ctx.workspace.get<scratch_a>().v.size() == 100);
    CHECK(ctx.workspace.get<scratch_b>().n == 7);  // another type: another object
    CHECK(ctx.workspace.size() == 2);
    ftune::context copy = ctx;  // a copy never shares scratch with the original
    CHECK(copy.workspace.size() == 0);
    CHECK(&copy.workspace.get<scratch_a>() != &a);
    CHECK(copy.workspace.get<scratch_a>().v.empty());
    ftune::context moved = std::move(ctx);  // a move takes it along
    CHECK(&moved.workspace.get<scratch_a>() == &a);
}

// The CUDA backend's caching allocator, on a counting host source: its bookkeeping is tested on
// every machine (on a GPU, test_cuda checks the same with cudaMalloc).
#include <ftune/cuda/allocator.hpp>

namespace {
struct counting_source {
    static inline std::size_t live = 0;        // blocks from malloc not yet freed
    static inline std::size_t fail_above = 0;  // 0: never fail; else throw for bigger requests
    static void* allocate(std::size_t bytes) {
        if (fail_above && bytes > fail_above) throw std::bad_alloc();
        ++live;
        return ::operator new(bytes);
    }
    static void release(void* p) noexcept {
        --live;
        ::operator delete(p);
    }
};
}  // namespace

TEST_CASE(
    "cuda::caching_allocator: size classes, reuse per stream, no source calls in a steady "
    "state, cache released",
    "[core][cuda]") {
    using ftune::cuda::size_class;
    CHECK(size_class(0) == 512);
    CHECK(size_class(1) == 512);
    CHECK(size_class(513) == 1024);
    CHECK(size_class((1u << 20) - 1) == (1u << 20));
    CHECK(size_class((1u << 20) + 1) == (2u << 20));
    CHECK(size_class(5u << 20) == (6u << 20));
    {
        ftune::cuda::caching_allocator<counting_source> a;
        const int s1 = 0, s2 = 0;  // two "streams" (their addresses)
        // a training step's pattern: the same sizes requested and freed every step
        const std::vector<std::size_t> sizes{100, 4096, 3 << 20, 100, 70000};
        for (int step = 0; step < 5; ++step) {
            std::vector<void*> blocks;
            for (auto n : sizes) blocks.push_back(a.allocate(n, &s1));
            std::set<void*> distinct(blocks.begin(), blocks.end());
            CHECK(distinct.size() == blocks.size());  // live blocks never shared
            for (void* p : blocks) CHECK(a.deallocate(p));
            CHECK(a.statistics().source_allocations == sizes.size());  // only the first step
        }
        const auto st = a.statistics();
        CHECK(st.blocks_in_use == 0);
        CHECK(st.bytes_in_use == 0);
        CHECK(st.bytes_cached == 2 * 512 + 4096 + (4u << 20) + 70144);
        CHECK(st.peak_bytes_in_use == st.bytes_cached);
        // another stream does not take the first one's blocks
        void* other = a.allocate(100, &s2);
        CHECK(a.statistics().source_allocations == sizes.size() + 1);
        CHECK_FALSE(a.deallocate(reinterpret_cast<void*>(std::uintptr_t{64})));  // not ours
        CHECK(a.deallocate(other));
        CHECK(a.deallocate(nullptr));
        // a source that runs out gets the cache back first, then the request again
        counting_source::fail_above = 0;
        a.release_cached();
        CHECK(a.statistics().bytes_cached == 0);
        CHECK(counting_source::live == 0);
        void* big = a.allocate(1 << 22, &s1);
        CHECK(a.deallocate(big));
        CHECK(counting_source::live == 1);  // cached
        counting_source::fail_above = 1 << 22;
        CHECK_THROWS_AS(a.allocate(1 << 23, &s1), std::bad_alloc);  // released, still too big
        CHECK(counting_source::live == 0);
        counting_source::fail_above = 0;
        void* again = a.allocate(1 << 23, &s1);
        CHECK(counting_source::live == 1);
        CHECK(a.deallocate(again));
    }
    CHECK(counting_source::live == 0);  // the destructor returned the cache
}

TEST_CASE("isa check: names the compiled-for extensions a CPU lacks, and this CPU lacks none",
          "[core][isa]") {
#if FTUNE_HAS_ISA_CHECK
    namespace isa = ftune::isa_detail;
    // a table as -mavx512f -mavx512bw would give: AVX-512's OS state after its extension
    const isa::feature table[] = {{"avx2", isa::leaf7_ebx, 1u << 5},
                                  {"avx512f", isa::leaf7_ebx, 1u << 16},
                                  {"the OS's saving of AVX-512 registers", isa::os_state, 0xe6u},
                                  {"avx512bw", isa::leaf7_ebx, 1u << 30},
                                  {nullptr, 0, 0}};
    std::uint32_t w[isa::words] = {};
    char out[256];
    SECTION("an AVX2 CPU: AVX-512 missing, its OS state not named twice") {
        w[isa::leaf7_ebx] = 1u << 5, w[isa::os_state] = 0x6u;
        CHECK(isa::missing(out, sizeof out, table, w) == 2);
        CHECK(std::string(out) == "avx512f, avx512bw");
    }
    SECTION("AVX-512 in the CPU but not saved by the OS") {
        w[isa::leaf7_ebx] = (1u << 5) | (1u << 16) | (1u << 30), w[isa::os_state] = 0x6u;
        CHECK(isa::missing(out, sizeof out, table, w) == 1);
        CHECK(std::string(out) == "the OS's saving of AVX-512 registers");
    }
    SECTION("everything there: nothing named") {
        w[isa::leaf7_ebx] = (1u << 5) | (1u << 16) | (1u << 30), w[isa::os_state] = 0xe7u;
        CHECK(isa::missing(out, sizeof out, table, w) == 0);
        CHECK(std::string(out).empty());
    }
    SECTION("a short buffer: truncated, terminated, every missing one counted") {
        CHECK(isa::missing(out, 10, table, w) == 3);
        CHECK(std::string(out) == "avx2, avx");
    }
    // this test runs where it was built: every extension its flags allowed is here
    CHECK(ftune::missing_isa().empty());
#ifdef __AVX2__
    CHECK(ftune::compiled_isa().find("avx2") != std::string::npos);
#endif
#ifdef __AVX512F__
    CHECK(ftune::compiled_isa().find("avx512f") != std::string::npos);
#endif
#else
    CHECK(ftune::compiled_isa().empty());
    CHECK(ftune::missing_isa().empty());
#endif
}
