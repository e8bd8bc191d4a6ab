// The CUDA backend against the reference backend: every primitive on awkward sizes (fp32, and
// bf16 where the mixed-precision step uses it), the same dropout masks as the CPU for the same
// seed, errors for bad ids, run-to-run determinism, buffers and views on device::cuda through
// ftune::ops, and no cudaMalloc in a steady state. Built with FTUNE_WITH_CUDA; registered with
// the label `cuda`; without a usable GPU it prints why and exits 77, which CTest reports as
// skipped.
#include <ftune/ftune.hpp>  // the training path, no tokenizer: no utf8proc
#include <ftune/train/trainer.hpp>

#include <filesystem>

#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#if !defined(FTUNE_CATCH2_V2) && __has_include(<catch2/catch_session.hpp>)  // tests/catch.hpp
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif
#include "device_training.hpp"
#include "util.hpp"

namespace ref = ftune::backends::reference;
namespace gpu = ftune::backends::cuda;
using ftune::bf16;
using ftune::token_id;
using ftune::transpose;

namespace {

/// A device vector (a rank-1 buffer on device::cuda).
template <class T>
using dvec = ftune::buffer<T, ftune::shape<ftune::dynamic>, ftune::device::cuda>;

/// A device copy of v.
template <class T>
dvec<T> up(const std::vector<T>& v) {
    dvec<T> d(v.size());
    ftune::cuda::copy_to_device(d.data(), v.data(), v.size());
    return d;
}
/// A host copy of d.
template <class T>
std::vector<T> down(const dvec<T>& d) {
    std::vector<T> v(d.size());
    ftune::cuda::copy_to_host(v.data(), d.data(), d.size());
    return v;
}
/// bf16 values as floats.
std::vector<float> floats(const std::vector<bf16>& v) {
    std::vector<float> f(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) f[i] = v[i].to_float();
    return f;
}
/// Random floats (normal, times scale).
std::vector<float> rnd(std::size_t n, std::uint64_t seed, double scale = 1.0) {
    return test::randn<float>(n, seed, scale);
}
/// |got - want| <= rtol max(1, |want|) element-wise.
void close(const std::vector<float>& got, const std::vector<float>& want, double rtol,
           const std::string& what) {
    test::require_close(got, want, rtol, what);
}

// fp32 on the device differs from the reference by the order of sums and by the device's
// erf/exp/tanh (within 2 ulp): a few hundred float epsilons of slack.
constexpr double fp32_tol = 2e-5;

}  // namespace

TEST_CASE("cuda gemm: every transpose, awkward sizes, row strides, alpha and beta, batched",
          "[cuda][gemm]") {
    for (auto [M, N, K] : {std::array<std::size_t, 3>{1, 1, 1},
                           {37, 53, 29},
                           {128, 384, 96},
                           {5, 1000, 3},
                           {4, 6, 0}}) {  // K = 0: C = beta C
        for (transpose ta : {transpose::no, transpose::yes})
            for (transpose tb : {transpose::no, transpose::yes}) {
                const std::size_t ar = ta == transpose::no ? M : K,
                                  ac = ta == transpose::no ? K : M;
                const std::size_t br = tb == transpose::no ? K : N,
                                  bc = tb == transpose::no ? N : K;
                const std::size_t lda = ac + 3, ldb = bc + 1, ldc = N + 2;
                const auto A = rnd(ar * lda, 1), B = rnd(br * ldb, 2), C0 = rnd(M * ldc, 3);
                auto want = C0;
                ref::gemm(ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, 0.5f, want.data(),
                          ldc);
                auto dA = up(A), dB = up(B), dC = up(C0);
                gpu::gemm(ta, tb, M, N, K, 0.75f, dA.data(), lda, dB.data(), ldb, 0.5f, dC.data(),
                          ldc);
                close(down(dC), want, fp32_tol * double(K + 1), "gemm");
                // beta = 0 ignores C, even NaN
                std::vector<float> nan(M * ldc, std::nanf(""));
                auto dN = up(nan);
                auto want0 = nan;
                ref::gemm(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, want0.data(),
                          ldc);
                gpu::gemm(ta, tb, M, N, K, 1.0f, dA.data(), lda, dB.data(), ldb, 0.0f, dN.data(),
                          ldc);
                auto got0 = down(dN);
                for (std::size_t r = 0; r < M; ++r)  // the padding between rows stays NaN
                    for (std::size_t c = N; c < ldc; ++c) {
                        got0[r * ldc + c] = 0;
                        want0[r * ldc + c] = 0;
                    }
                close(got0, want0, fp32_tol * double(K + 1), "gemm beta 0");
            }
    }
    // strided batched: attention's per-head products
    const std::size_t M = 17, N = 23, K = 8, batch = 6;
    const auto A = rnd(batch * M * K, 4), B = rnd(batch * N * K, 5);
    std::vector<float> want(batch * M * N);
    ref::gemm_strided_batched(transpose::no, transpose::yes, M, N, K, 0.125f, A.data(), K, M * K,
                              B.data(), K, N * K, 0.0f, want.data(), N, M * N, batch);
    auto dA = up(A), dB = up(B);
    dvec<float> dC(batch * M * N);
    gpu::gemm_strided_batched(transpose::no, transpose::yes, M, N, K, 0.125f, dA.data(), K, M * K,
                              dB.data(), K, N * K, 0.0f, dC.data(), N, M * N, batch);
    close(down(dC), want, fp32_tol * double(K), "gemm_strided_batched");
}

TEST_CASE("cuda gemm_bf16: operands rounded to bf16 as the reference, fp32 sums", "[cuda][bf16]") {
    const std::size_t M = 33, N = 70, K = 300;
    for (transpose ta : {transpose::no, transpose::yes})
        for (transpose tb : {transpose::no, transpose::yes}) {
            const auto A = rnd(M * K, 6), B = rnd(K * N, 7);
            const std::size_t lda = ta == transpose::no ? K : M, ldb = tb == transpose::no ? N : K;
            std::vector<float> want(M * N);
            ref::gemm_bf16(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, want.data(),
                           N);
            auto dA = up(A), dB = up(B);
            dvec<float> dC(M * N);
            gpu::gemm_bf16(ta, tb, M, N, K, 1.0f, dA.data(), lda, dB.data(), ldb, 0.0f, dC.data(),
                           N);
            // the products are exact in fp32; only the order of the K sums differs
            close(down(dC), want, 1e-5 * double(K), "gemm_bf16");
            // A given in bf16
            std::vector<bf16> A16(A.size());
            for (std::size_t i = 0; i < A.size(); ++i) A16[i] = ref::to_bf16(A[i]);
            auto dA16 = up(A16);
            dvec<float> dC2(M * N);
            gpu::gemm_bf16(ta, tb, M, N, K, 1.0f, dA16.data(), lda, dB.data(), ldb, 0.0f,
                           dC2.data(), N);
            close(down(dC2), want, 1e-5 * double(K), "gemm_bf16 (A in bf16)");
        }
    const std::size_t batch = 3;
    const auto A = rnd(batch * M * K, 8), B = rnd(batch * K * N, 9);
    std::vector<float> want(batch * M * N);
    ref::gemm_strided_batched_bf16(transpose::no, transpose::no, M, N, K, 1.0f, A.data(), K, M * K,
                                   B.data(), N, K * N, 0.0f, want.data(), N, M * N, batch);
    auto dA = up(A), dB = up(B);
    dvec<float> dC(batch * M * N);
    gpu::gemm_strided_batched_bf16(transpose::no, transpose::no, M, N, K, 1.0f, dA.data(), K, M * K,
                                   dB.data(), N, K * N, 0.0f, dC.data(), N, M * N, batch);
    close(down(dC), want, 1e-5 * double(K), "gemm_strided_batched_bf16");
}

TEST_CASE(
    "cuda gemm_heads: every head of every sequence in one call, as the reference's strided batch "
    "per sequence (head-matrix layouts, transposes, beta, fp32 and bf16, A in bf16)",
    "[cuda][bf16]") {
    // attention's layouts: S sequences of T rows of a (S*T, C) head matrix, H heads of d columns,
    // and (S, H, T, T) score tensors; awkward sizes
    const std::size_t S = 3, H = 5, T = 7, d = 6, C = H * d;
    const auto q = rnd(S * T * C, 20), k = rnd(S * T * C, 21), p = rnd(S * H * T * T, 22);
    auto dq = up(q), dk = up(k), dp = up(p);
    for (auto prec : {ftune::precision::fp32, ftune::precision::bf16}) {
        const double tol = prec == ftune::precision::bf16 ? 1e-5 * double(T) : fp32_tol * double(T);
        auto reference = [&](transpose ta, transpose tb, std::size_t M, std::size_t N,
                             std::size_t K, const float* A, std::size_t lda, std::size_t a_seq,
                             std::size_t a_head, const float* B, std::size_t ldb, std::size_t b_seq,
                             std::size_t b_head, float beta, float* Cm, std::size_t ldc,
                             std::size_t c_seq, std::size_t c_head) {
            for (std::size_t s = 0; s < S; ++s)
                if (prec == ftune::precision::bf16)
                    ref::gemm_strided_batched_bf16(ta, tb, M, N, K, 1.0f, A + s * a_seq, lda,
                                                   a_head, B + s * b_seq, ldb, b_head, beta,
                                                   Cm + s * c_seq, ldc, c_head, H);
                else
                    ref::gemm_strided_batched(ta, tb, M, N, K, 1.0f, A + s * a_seq, lda, a_head,
                                              B + s * b_seq, ldb, b_head, beta, Cm + s * c_seq, ldc,
                                              c_head, H);
        };
        // scores (S, H, T, T) = Q Kᵀ per head (beta 0 over a non-zero C)
        std::vector<float> want(S * H * T * T, 3.0f);
        reference(transpose::no, transpose::yes, T, T, d, q.data(), C, T * C, d, k.data(), C, T * C,
                  d, 0.0f, want.data(), T, H * T * T, T * T);
        auto got = up(std::vector<float>(S * H * T * T, 3.0f));
        gpu::gemm_heads(prec, transpose::no, transpose::yes, T, T, d, 1.0f, dq.data(), C, T * C, d,
                        dk.data(), C, T * C, d, 0.0f, got.data(), T, H * T * T, T * T, S, H);
        close(down(got), want, tol, "gemm_heads Q K^T");
        // context (S*T, C) = Pᵀ K per head, into head columns, accumulating (beta 1)
        std::vector<float> want2 = q;
        reference(transpose::yes, transpose::no, T, d, T, p.data(), T, H * T * T, T * T, k.data(),
                  C, T * C, d, 1.0f, want2.data(), C, T * C, d);
        auto got2 = up(q);
        gpu::gemm_heads(prec, transpose::yes, transpose::no, T, d, T, 1.0f, dp.data(), T, H * T * T,
                        T * T, dk.data(), C, T * C, d, 1.0f, got2.data(), C, T * C, d, S, H);
        close(down(got2), want2, tol, "gemm_heads P^T K");
    }
    // P kept in bf16: read as it is
    std::vector<bf16> p16(p.size());
    std::vector<float> p16f(p.size());
    for (std::size_t i = 0; i < p.size(); ++i)
        p16[i] = ref::to_bf16(p[i]), p16f[i] = p16[i].to_float();
    std::vector<float> want(S * T * C);
    for (std::size_t s = 0; s < S; ++s)
        ref::gemm_strided_batched_bf16(transpose::no, transpose::no, T, d, T, 1.0f,
                                       p16f.data() + s * H * T * T, T, T * T, k.data() + s * T * C,
                                       C, d, 0.0f, want.data() + s * T * C, C, d, H);
    auto dp16 = up(p16);
    dvec<float> got(S * T * C);
    gpu::gemm_heads(ftune::precision::bf16, transpose::no, transpose::no, T, d, T, 1.0f,
                    dp16.data(), T, H * T * T, T * T, dk.data(), C, T * C, d, 0.0f, got.data(), C,
                    T * C, d, S, H);
    close(down(got), want, 1e-5 * double(T), "gemm_heads (P in bf16)");
    CHECK_THROWS_AS(gpu::gemm_heads(ftune::precision::fp32, transpose::no, transpose::no, T, d, T,
                                    1.0f, dp16.data(), T, H * T * T, T * T, dk.data(), C, T * C, d,
                                    0.0f, got.data(), C, T * C, d, S, H),
                    ftune::error);
}

TEST_CASE("cuda element-wise primitives: bias, residual, activations and their gradients",
          "[cuda]") {
    for (std::size_t n : test::awkward_sizes()) {
        const auto x = rnd(n, 10, 2.0), y0 = rnd(n, 11), dy = rnd(n, 12), b = rnd(n, 13);
        auto dx_ = up(x), db_ = up(b), ddy = up(dy);
        // forward activations: y = f(x)
        using fwd_ref = void (*)(float*, const float*, std::size_t);
        using fwd_gpu = void (*)(float*, const float*, std::size_t);
        const std::vector<std::tuple<const char*, fwd_ref, fwd_gpu>> fwd{
            {"gelu", ref::gelu_forward<float>, gpu::gelu_forward},
            {"gelu_tanh", ref::gelu_tanh_forward<float>, gpu::gelu_tanh_forward},
            {"tanh", ref::tanh_forward<float>, gpu::tanh_forward},
            {"relu", ref::relu_forward<float>, gpu::relu_forward},
            {"silu", ref::silu_forward<float>, gpu::silu_forward}};
        for (auto [name, r, g] : fwd) {
            std::vector<float> want(n);
            r(want.data(), x.data(), n);
            dvec<float> out(n);
            g(out.data(), dx_.data(), n);
            close(down(out), want, fp32_tol, std::string(name) + " forward");
        }
        // backward: dx += dy f'(x) (tanh's from its output)
        using bwd = void (*)(float*, const float*, const float*, std::size_t);
        const std::vector<std::tuple<const char*, bwd, bwd>> back{
            {"gelu", ref::gelu_backward<float>, gpu::gelu_backward},
            {"gelu_tanh", ref::gelu_tanh_backward<float>, gpu::gelu_tanh_backward},
            {"tanh", ref::tanh_backward<float>, gpu::tanh_backward},
            {"relu", ref::relu_backward<float>, gpu::relu_backward},
            {"silu", ref::silu_backward<float>, gpu::silu_backward}};
        for (auto [name, r, g] : back) {
            auto want = y0;
            r(want.data(), x.data(), dy.data(), n);
            auto d = up(y0);
            g(d.data(), dx_.data(), ddy.data(), n);
            close(down(d), want, fp32_tol, std::string(name) + " backward");
        }
        // residual, multiply and its backward, scale, copy
        std::vector<float> want(n);
        ref::residual_add(want.data(), x.data(), b.data(), n);
        dvec<float> out(n);
        gpu::residual_add(out.data(), dx_.data(), db_.data(), n);
        close(down(out), want, 0, "residual_add");
        ref::multiply(want.data(), x.data(), b.data(), n);
        gpu::multiply(out.data(), dx_.data(), db_.data(), n);
        close(down(out), want, 0, "multiply");
        auto da_want = y0, db_want = dy;
        ref::multiply_backward(da_want.data(), db_want.data(), x.data(), b.data(), dy.data(), n);
        auto da = up(y0), dbb = up(dy);
        gpu::multiply_backward(da.data(), dbb.data(), dx_.data(), db_.data(), ddy.data(), n);
        close(down(da), da_want, fp32_tol, "multiply_backward da");
        close(down(dbb), db_want, fp32_tol, "multiply_backward db");
        auto s_want = x;
        ref::scale(s_want.data(), -0.3f, n);
        auto s = up(x);
        gpu::scale(s.data(), -0.3f, n);
        close(down(s), s_want, 0, "scale");
        dvec<float> c(n);
        gpu::copy(c.data(), dx_.data(), n);
        close(down(c), x, 0, "copy");
    }
    // bias over rows, and its gradient summed over rows
    const std::size_t rows = 300, cols = 77;
    const auto y = rnd(rows * cols, 14), bias = rnd(cols, 15), db0 = rnd(cols, 16);
    auto want = y;
    ref::bias_add(want.data(), bias.data(), rows, cols);
    auto dy_ = up(y), dbias = up(bias);
    gpu::bias_add(dy_.data(), dbias.data(), rows, cols);
    close(down(dy_), want, 0, "bias_add");
    auto gb_want = db0;
    ref::bias_backward(gb_want.data(), y.data(), rows, cols);
    auto gb = up(db0), yy = up(y);
    gpu::bias_backward(gb.data(), yy.data(), rows, cols);
    close(down(gb), gb_want, fp32_tol * 10, "bias_backward");
}

TEST_CASE("cuda LayerNorm and RMSNorm, forward and backward", "[cuda]") {
    for (auto [rows, C] :
         {std::pair<std::size_t, std::size_t>{1, 1}, {67, 100}, {130, 384}, {3, 1500}}) {
        const auto x = rnd(rows * C, 20, 3.0), w = rnd(C, 21), b = rnd(C, 22),
                   g = rnd(rows * C, 23);
        std::vector<float> out(rows * C), mean(rows), rstd(rows);
        ref::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                                rows, C, 1e-12f);
        auto dx_ = up(x), dw = up(w), dbv = up(b), dg = up(g);
        dvec<float> dout(rows * C), dmean(rows), drstd(rows);
        gpu::layer_norm_forward(dout.data(), dmean.data(), drstd.data(), dx_.data(), dw.data(),
                                dbv.data(), rows, C, 1e-12f);
        close(down(dout), out, fp32_tol, "layer_norm_forward out");
        close(down(dmean), mean, fp32_tol, "layer_norm_forward mean");
        close(down(drstd), rstd, fp32_tol, "layer_norm_forward rstd");
        const auto dx0 = rnd(rows * C, 24), dw0 = rnd(C, 25), db0 = rnd(C, 26);
        auto dx = dx0, dwt = dw0, dbt = db0;
        ref::layer_norm_backward(dx.data(), dwt.data(), dbt.data(), g.data(), x.data(), w.data(),
                                 mean.data(), rstd.data(), rows, C);
        auto gdx = up(dx0), gdw = up(dw0), gdb = up(db0);
        gpu::layer_norm_backward(gdx.data(), gdw.data(), gdb.data(), dg.data(), dx_.data(),
                                 dw.data(), dmean.data(), drstd.data(), rows, C);
        close(down(gdx), dx, fp32_tol * 10, "layer_norm_backward dx");
        close(down(gdw), dwt, fp32_tol * 10, "layer_norm_backward dweight");
        close(down(gdb), dbt, fp32_tol * 10, "layer_norm_backward dbias");

        std::vector<float> rout(rows * C), rr(rows);
        ref::rms_norm_forward(rout.data(), rr.data(), x.data(), w.data(), rows, C, 1e-6f);
        dvec<float> grout(rows * C), grr(rows);
        gpu::rms_norm_forward(grout.data(), grr.data(), dx_.data(), dw.data(), rows, C, 1e-6f);
        close(down(grout), rout, fp32_tol, "rms_norm_forward out");
        close(down(grr), rr, fp32_tol, "rms_norm_forward rstd");
        auto rdx = dx0, rdw = dw0;
        ref::rms_norm_backward(rdx.data(), rdw.data(), g.data(), x.data(), w.data(), rr.data(),
                               rows, C);
        auto grdx = up(dx0), grdw = up(dw0);
        gpu::rms_norm_backward(grdx.data(), grdw.data(), dg.data(), dx_.data(), dw.data(),
                               grr.data(), rows, C);
        close(down(grdx), rdx, fp32_tol * 10, "rms_norm_backward dx");
        close(down(grdw), rdw, fp32_tol * 10, "rms_norm_backward dweight");
    }
}

TEST_CASE("cuda rotary embeddings and grouped-query heads", "[cuda]") {
    const std::size_t rows = 19, heads = 3, half = 8, ld = heads * 2 * half + 5;
    std::vector<token_id> pos(rows);
    for (std::size_t r = 0; r < rows; ++r) pos[r] = token_id(3 * r + 1);
    std::vector<float> cos(rows * half), sin(rows * half);
    ref::rope_table(cos.data(), sin.data(), pos.data(), rows, half, 10000.0);
    auto dpos = up(pos);
    dvec<float> dcos(rows * half), dsin(rows * half);
    gpu::rope_table(dcos.data(), dsin.data(), dpos.data(), rows, half, 10000.0);
    // angles up to 55 rad: powf may differ by 2 ulp on the device, a few 1e-6 of the angle
    close(down(dcos), cos, 5e-5, "rope_table cos");
    close(down(dsin), sin, 5e-5, "rope_table sin");
    const auto x = rnd(rows * ld, 30);
    for (bool inverse : {false, true}) {
        auto want = x;
        ref::rope_apply(want.data(), ld, cos.data(), sin.data(), rows, heads, half, inverse);
        auto dx_ = up(x), c_ = up(cos), s_ = up(sin);
        gpu::rope_apply(dx_.data(), ld, c_.data(), s_.data(), rows, heads, half, inverse);
        close(down(dx_), want, fp32_tol, "rope_apply");
    }
    const std::size_t kv = 2, group = 3, d = 5;
    const auto in = rnd(rows * kv * d, 31), dout = rnd(rows * kv * group * d, 32),
               din0 = rnd(rows * kv * d, 33);
    std::vector<float> out(rows * kv * group * d);
    ref::repeat_heads(out.data(), in.data(), rows, kv, group, d);
    auto din_ = up(in);
    dvec<float> gout(out.size());
    gpu::repeat_heads(gout.data(), din_.data(), rows, kv, group, d);
    close(down(gout), out, 0, "repeat_heads");
    auto din = din0;
    ref::repeat_heads_backward(din.data(), dout.data(), rows, kv, group, d);
    auto gdin = up(din0), gdout = up(dout);
    gpu::repeat_heads_backward(gdin.data(), gdout.data(), rows, kv, group, d);
    close(down(gdin), din, fp32_tol, "repeat_heads_backward");
}

TEST_CASE(
    "cuda attention softmax: key mask, causal, all-masked rows, backward with dropout "
    "and in bf16",
    "[cuda]") {
    for (auto [B, H, Tq, Tk] :
         {std::array<std::size_t, 4>{2, 3, 5, 45}, {1, 2, 7, 7}, {3, 1, 1, 130}}) {
        const auto s = rnd(B * H * Tq * Tk, 40, 3.0);
        std::vector<float> mask(B * Tk, 0.0f);
        for (std::size_t k = 0; k < Tk; k += 3) mask[k] = std::numeric_limits<float>::lowest();
        for (std::size_t k = 0; k < Tk; ++k)  // batch 1: every key masked with -inf
            if (B > 1) mask[Tk + k] = -INFINITY;
        for (bool causal : {false, true})
            for (bool with_mask : {false, true}) {
                std::vector<float> p(s.size());
                ref::softmax_forward(p.data(), s.data(),
                                     with_mask ? mask.data() : static_cast<const float*>(nullptr),
                                     0.3f, B, H, Tq, Tk, causal);
                auto ds = up(s), dm = up(mask);
                dvec<float> dp(s.size());
                gpu::softmax_forward(dp.data(), ds.data(), with_mask ? dm.data() : nullptr, 0.3f, B,
                                     H, Tq, Tk, causal);
                close(down(dp), p, fp32_tol, "softmax_forward");
            }
        std::vector<float> p(s.size());
        ref::softmax_forward(p.data(), s.data(), static_cast<const float*>(nullptr), 1.0f, B, H, Tq,
                             Tk, false);
        const auto dp = rnd(s.size(), 41), d0 = rnd(s.size(), 42);
        std::vector<std::uint8_t> keep(s.size());
        for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = (i * 7 % 5) != 0;
        auto gp = up(p), gdp = up(dp);
        auto gkeep = up(keep);
        const std::size_t rows = B * H * Tq;
        auto want = d0;
        ref::softmax_backward(want.data(), p.data(), dp.data(), 0.3f, rows, Tk);
        auto got = up(d0);
        gpu::softmax_backward(got.data(), gp.data(), gdp.data(), 0.3f, rows, Tk);
        close(down(got), want, fp32_tol, "softmax_backward");
        auto want_k = d0;
        ref::softmax_backward(want_k.data(), p.data(), dp.data(), 0.3f, rows, Tk, keep.data(),
                              1.25f, false);
        auto got_k = up(d0);
        gpu::softmax_backward(got_k.data(), gp.data(), gdp.data(), 0.3f, rows, Tk, gkeep.data(),
                              1.25f, false);
        close(down(got_k), want_k, fp32_tol, "softmax_backward with dropout");
        std::vector<bf16> want16(s.size());
        ref::softmax_backward(want16.data(), p.data(), dp.data(), 0.3f, rows, Tk, keep.data(),
                              1.25f, false);
        dvec<bf16> got16(s.size());
        gpu::softmax_backward(got16.data(), gp.data(), gdp.data(), 0.3f, rows, Tk, gkeep.data(),
                              1.25f, false);
        // a sum in another order may round to the neighbouring bf16: one bf16 ulp (2^-8)
        close(floats(down(got16)), floats(want16), 1.0 / 128, "softmax_backward to bf16");
    }
}

TEST_CASE("cuda dropout: the CPU's masks for the same stream, bf16 output, backward", "[cuda]") {
    for (std::size_t n : {std::size_t(1), std::size_t(31), std::size_t(1000), std::size_t(65537)})
        for (float p : {0.0f, 0.1f, 0.5f, 1.0f}) {
            const auto x = rnd(n, 50);
            const ftune::random_stream s = ftune::generator(1234).next().derive(7);
            std::vector<float> y(n);
            std::vector<std::uint8_t> mask(n);
            ref::dropout_forward(y.data(), mask.data(), x.data(), p, n, s);
            auto dx_ = up(x);
            dvec<float> gy(n);
            dvec<std::uint8_t> gm(n);
            gpu::dropout_forward(gy.data(), gm.data(), dx_.data(), p, n, s);
            CHECK(down(gm) == mask);  // bit for bit the same mask
            close(down(gy), y, 0, "dropout_forward");
            std::vector<bf16> y16(n);
            ref::dropout_forward(y16.data(), mask.data(), x.data(), p, n, s);
            dvec<bf16> gy16(n);
            gpu::dropout_forward(gy16.data(), gm.data(), dx_.data(), p, n, s);
            close(floats(down(gy16)), floats(y16), 0, "dropout_forward to bf16");
            const auto dy = rnd(n, 51), d0 = rnd(n, 52);
            auto want = d0;
            ref::dropout_backward(want.data(), mask.data(), dy.data(), p, n);
            auto got = up(d0), gdy = up(dy);
            gpu::dropout_backward(got.data(), gm.data(), gdy.data(), p, n);
            close(down(got), want, fp32_tol, "dropout_backward");
        }
    dvec<float> a(4), b(4);
    dvec<std::uint8_t> m(4);
    CHECK_THROWS_AS(
        gpu::dropout_forward(a.data(), m.data(), b.data(), 1.5f, 4, ftune::random_stream(0, 0)),
        ftune::error);
}

TEST_CASE("cuda ids, masks, copies and row gathers", "[cuda]") {
    const std::size_t n = 77;
    std::vector<token_id> att(n);
    for (std::size_t i = 0; i < n; ++i) att[i] = i % 4 != 3;
    std::vector<float> km(n);
    ref::key_mask(km.data(), att.data(), n);
    auto datt = up(att);
    dvec<float> gkm(n);
    gpu::key_mask(gkm.data(), datt.data(), n);
    close(down(gkm), km, 0, "key_mask");
    gpu::key_mask(gkm.data(), nullptr, n);
    close(down(gkm), std::vector<float>(n, 0.0f), 0, "key_mask without attention");
    std::vector<token_id> pos(n);
    ref::position_ids(pos.data(), n, 11, 5);
    dvec<token_id> gpos(n);
    gpu::position_ids(gpos.data(), n, 11, 5);
    CHECK(down(gpos) == pos);
    dvec<token_id> ids(n);
    gpu::copy_ids(ids.data(), datt.data(), n);
    CHECK(down(ids) == att);
    gpu::copy_ids(ids.data(), nullptr, n);
    CHECK(down(ids) == std::vector<token_id>(n, 0));
    const std::size_t rows = 4, T = 9, C = 13;
    const auto x = rnd(rows * T * C, 60);
    std::vector<float> out(rows * C);
    ref::gather_rows(out.data(), x.data(), rows, C, T);
    auto gx = up(x);
    dvec<float> gout(rows * C);
    gpu::gather_rows(gout.data(), gx.data(), rows, C, T);
    close(down(gout), out, 0, "gather_rows");
}

TEST_CASE(
    "cuda embedding and cross-entropy; out-of-range ids and targets are errors that name "
    "them",
    "[cuda]") {
    const std::size_t vocab = 50, C = 37, n = 300;
    std::vector<token_id> ids(n);
    for (std::size_t i = 0; i < n; ++i) ids[i] = token_id(i * i % vocab);  // repeats
    const auto table = rnd(vocab * C, 70), dout = rnd(n * C, 71), dt0 = rnd(vocab * C, 72);
    std::vector<float> out(n * C);
    ref::embedding_forward(out.data(), ids.data(), table.data(), n, C, vocab);
    auto gids = up(ids);
    auto gtable = up(table), gdout = up(dout);
    dvec<float> gout(n * C);
    gpu::embedding_forward(gout.data(), gids.data(), gtable.data(), n, C, vocab);
    close(down(gout), out, 0, "embedding_forward");
    for (token_id pad : {token_id(-1), token_id(4)}) {
        auto want = dt0;
        ref::embedding_backward(want.data(), ids.data(), dout.data(), n, C, vocab, pad);
        auto got = up(dt0);
        gpu::embedding_backward(got.data(), gids.data(), gdout.data(), n, C, vocab, pad);
        close(down(got), want, 0, "embedding_backward");  // the same order of sums
    }
    auto bad = ids;
    bad[123] = token_id(vocab);
    bad[200] = -3;
    auto gbad = up(bad);
    try {
        gpu::embedding_forward(gout.data(), gbad.data(), gtable.data(), n, C, vocab);
        FAIL("no error for an id outside the vocabulary");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::out_of_range);
        CHECK(std::string(e.what()).find("id 50 at position 123") != std::string::npos);
    }

    const std::size_t rows = 41, V = 1003;
    const auto logits = rnd(rows * V, 73, 4.0), dl = rnd(rows, 74), dz0 = rnd(rows * V, 75);
    std::vector<token_id> t(rows);
    for (std::size_t r = 0; r < rows; ++r) t[r] = r % 6 == 5 ? -100 : token_id(r * 37 % V);
    std::vector<float> losses(rows);
    const std::size_t counted =
        ref::cross_entropy_forward(losses.data(), logits.data(), t.data(), rows, V);
    auto gz = up(logits), gdl = up(dl);
    auto gt = up(t);
    dvec<float> gl(rows);
    CHECK(gpu::cross_entropy_forward(gl.data(), gz.data(), gt.data(), rows, V) == counted);
    close(down(gl), losses, fp32_tol * 10, "cross_entropy_forward");
    auto dz = dz0;
    ref::cross_entropy_backward(dz.data(), logits.data(), t.data(), dl.data(), rows, V);
    auto gdz = up(dz0);
    gpu::cross_entropy_backward(gdz.data(), gz.data(), gt.data(), gdl.data(), rows, V);
    close(down(gdz), dz, fp32_tol, "cross_entropy_backward");
    auto tb = t;
    tb[7] = token_id(V);
    auto gtb = up(tb);
    try {
        gpu::cross_entropy_forward(gl.data(), gz.data(), gtb.data(), rows, V);
        FAIL("no error for a target outside the classes");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::out_of_range);
        CHECK(std::string(e.what()).find("target 1003 at position 7") != std::string::npos);
    }
}

TEST_CASE("cuda reductions (one tensor, a list) and optimizer steps; the same bits on every run",
          "[cuda]") {
    for (std::size_t n :
         {std::size_t(0), std::size_t(1), std::size_t(1000), std::size_t(3'000'001)}) {
        const auto x = rnd(n, 80);
        const double want = ref::sum_squares(x.data(), n);
        auto gx = up(x);
        const double got = gpu::sum_squares(gx.data(), n);
        CHECK(std::abs(got - want) <= 1e-12 * std::max(1.0, want));
        CHECK(gpu::sum_squares(gx.data(), n) == got);  // deterministic
    }
    {  // a list (the gradient norm): the host loop's value, bit for bit, empty tensors included
        std::vector<dvec<float>> xs;
        std::vector<const float*> ptrs;
        std::vector<std::size_t> sizes;
        double loop = 0;
        for (std::size_t n : {std::size_t(1000), std::size_t(0), std::size_t(3'000'001),
                              std::size_t(7), std::size_t(65'537)}) {
            xs.push_back(up(rnd(n, 85 + n)));
            ptrs.push_back(xs.back().data()), sizes.push_back(n);
            loop += gpu::sum_squares(xs.back().data(), n);
        }
        CHECK(gpu::sum_squares_list(ptrs.data(), sizes.data(), ptrs.size()) == loop);
        CHECK(gpu::sum_squares_list(ptrs.data(), sizes.data(), 0) == 0.0);
    }
    const std::size_t n = 10'001;
    const auto p0 = rnd(n, 81), g = rnd(n, 82), m0 = rnd(n, 83, 0.1);
    auto v0 = rnd(n, 84, 0.1);
    for (auto& v : v0) v = v * v;
    ftune::adamw_params h{.lr = 1e-3, .weight_decay = 0.01, .step = 3};
    auto p = p0, m = m0, v = v0;
    ref::adamw_update(p.data(), g.data(), m.data(), v.data(), n, h);
    auto gp = up(p0), gg = up(g), gm = up(m0), gv = up(v0);
    gpu::adamw_update(gp.data(), gg.data(), gm.data(), gv.data(), n, h);
    close(down(gp), p, 1e-6, "adamw param");
    close(down(gm), m, 1e-6, "adamw m");
    close(down(gv), v, 1e-6, "adamw v");
    for (bool nesterov : {false, true})
        for (bool first : {true, false}) {
            ftune::sgd_params s{.lr = 0.1,
                                .momentum = 0.9,
                                .dampening = 0.1,
                                .weight_decay = 1e-4,
                                .nesterov = nesterov,
                                .first_step = first};
            auto sp = p0, sb = m0;
            ref::sgd_update(sp.data(), g.data(), sb.data(), n, s);
            auto gsp = up(p0), gsb = up(m0);
            gpu::sgd_update(gsp.data(), gg.data(), gsb.data(), n, s);
            close(down(gsp), sp, 1e-6, "sgd param");
            close(down(gsb), sb, 1e-6, "sgd momentum");
        }
    // LayerNorm's backward sums over rows in a fixed order: equal bits twice
    const std::size_t rows = 1000, C = 64;
    const auto x = rnd(rows * C, 85), w = rnd(C, 86), b = rnd(C, 87), dy = rnd(rows * C, 88);
    auto gx2 = up(x), gw = up(w), gb = up(b), gdy = up(dy);
    dvec<float> out(rows * C), mean(rows), rstd(rows);
    gpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), gx2.data(), gw.data(), gb.data(),
                            rows, C, 1e-5f);
    std::vector<std::vector<float>> runs;
    for (int run = 0; run < 2; ++run) {
        dvec<float> dx(rows * C), dw(C), db(C);
        gpu::layer_norm_backward(dx.data(), dw.data(), db.data(), gdy.data(), gx2.data(), gw.data(),
                                 mean.data(), rstd.data(), rows, C);
        auto a = down(dx), c = down(dw), e = down(db);
        a.insert(a.end(), c.begin(), c.end());
        a.insert(a.end(), e.begin(), e.end());
        runs.push_back(a);
    }
    CHECK(runs[0] == runs[1]);
}

TEST_CASE(
    "cuda inference primitives: prepared weights with bias and residual (fp32 and bf16), "
    "attention (masks, causal, first-token queries, bf16) and decode attention (grouped "
    "heads)",
    "[cuda][inference]") {
    const std::size_t M = 19, N = 45, K = 70, ldc = N + 3;
    for (auto p : {ftune::precision::fp32, ftune::precision::bf16})
        for (transpose ta : {transpose::no, transpose::yes}) {
            const auto A = rnd(M * K, 100), W = rnd(N * K, 101), bias = rnd(N, 102),
                       R = rnd(M * N, 103), C0 = rnd(M * ldc, 104);
            const std::size_t lda = ta == transpose::no ? K : M;
            ref::prepared_b<float> rp;
            rp.pack(W.data(), K, transpose::yes, K, N, p);  // W (N, K) as a linear layer's
            auto want = C0;
            ref::gemm_packed(ta, M, N, K, 1.0f, A.data(), lda, rp, 0.0f, want.data(), ldc,
                             bias.data(), ftune::backends::add_residual<float>{R.data(), N});
            auto gA = up(A), gW = up(W), gbias = up(bias), gR = up(R), gC = up(C0);
            gpu::prepared_b<float> gp;
            gp.pack(gW.data(), K, transpose::yes, K, N, p);
            CHECK(gp.precision() == p);
            gpu::gemm_packed(ta, M, N, K, 1.0f, gA.data(), lda, gp, 0.0f, gC.data(), ldc,
                             gbias.data(), ftune::backends::add_residual<float>{gR.data(), N});
            close(down(gC), want, 1e-5 * double(K), "gemm_packed");
        }
    // attention over a fused (B*T, 3C) q|k|v tensor, as ops::attention_inference passes it
    const std::size_t B = 2, T = 37, H = 3, d = 16, C = H * d, ld = 3 * C;
    const auto qkv = rnd(B * T * ld, 105);
    std::vector<float> mask(B * T, 0.0f);
    for (std::size_t j = 30; j < T; ++j) mask[T + j] = std::numeric_limits<float>::lowest();
    auto gqkv = up(qkv), gmask = up(mask);
    for (bool bf : {false, true})
        for (bool causal : {false, true})
            for (std::size_t Tq : {T, std::size_t(1)}) {  // every query, or [CLS] only
                const std::size_t ldq = Tq == T ? ld : T * ld;
                std::vector<float> want(B * Tq * C);
                (bf ? ref::attention_inference_bf16<float>
                    : ref::attention_inference<float>)(want.data(), C, qkv.data(), ldq,
                                                       qkv.data() + C, qkv.data() + 2 * C, ld,
                                                       mask.data(), 0.25f, B, H, Tq, T, d, causal);
                dvec<float> got(B * Tq * C);
                (bf ? gpu::attention_inference_bf16 : gpu::attention_inference)(
                    got.data(), C, gqkv.data(), ldq, gqkv.data() + C, gqkv.data() + 2 * C, ld,
                    gmask.data(), 0.25f, B, H, Tq, T, d, causal);
                // bf16: a probability may round to the neighbouring bf16 (sums in another order)
                close(down(got), want, bf ? 1e-2 : fp32_tol * double(T), "attention_inference");
            }
    // decode: 4 query heads on 2 key/value heads, a cache of 40 holding 29 positions
    const std::size_t Hq = 4, Hkv = 2, cap = 40, S = 29;
    const auto q = rnd(B * Hq * d, 106), kc = rnd(B * cap * Hkv * d, 107),
               vc = rnd(B * cap * Hkv * d, 108);
    std::vector<float> dmask(B * S, 0.0f);
    dmask[3] = -INFINITY;
    std::vector<float> want(B * Hq * d);
    ref::attention_decode(want.data(), q.data(), kc.data(), vc.data(), cap, dmask.data(), 0.25f, B,
                          Hq, Hkv, S, d);
    auto gq = up(q), gk = up(kc), gv = up(vc), gdm = up(dmask);
    dvec<float> got(B * Hq * d);
    gpu::attention_decode(got.data(), gq.data(), gk.data(), gv.data(), cap, gdm.data(), 0.25f, B,
                          Hq, Hkv, S, d);
    close(down(got), want, fp32_tol * double(S), "attention_decode");
}

TEST_CASE(
    "cuda buffers and ops: views on device::cuda run the CUDA backend; a steady state "
    "makes no cudaMalloc",
    "[cuda][ops]") {
    using ftune::dynamic;
    using ftune::shape;
    const std::size_t rows = 24, in = 40, out = 56;
    ftune::buffer<float, shape<dynamic, dynamic>> x(rows, in), w(out, in), bias(1, out);
    auto xs = rnd(rows * in, 90), ws = rnd(out * in, 91), bs = rnd(out, 92);
    std::copy(xs.begin(), xs.end(), x.span().begin());
    std::copy(ws.begin(), ws.end(), w.span().begin());
    std::copy(bs.begin(), bs.end(), bias.span().begin());
    ftune::buffer<float, shape<dynamic, dynamic>> y(rows, out);
    ftune::ops::matmul<transpose::no, transpose::yes>(x.view(), w.view(), y.view());
    ftune::ops::activate(ftune::ops::activation::gelu, y.view(), y.view());

    auto gx = ftune::cuda::to_device(x.view()), gw = ftune::cuda::to_device(w.view());
    ftune::buffer<float, shape<dynamic, dynamic>, ftune::device::cuda> gy(rows, out);
    ftune::ops::matmul<transpose::no, transpose::yes>(gx.view(), gw.view(), gy.view());
    ftune::ops::activate(ftune::ops::activation::gelu, gy.view(), gy.view());
    const auto back = ftune::cuda::to_host(gy.view());
    test::require_close<float>(back.span(), y.span(), fp32_tol * in, "ops on device::cuda");

    // buffers: zero-filled, fill(), deep copies on the device
    ftune::buffer<float, shape<dynamic>, ftune::device::cuda> z(1000);
    CHECK(down(z) == std::vector<float>(1000, 0.0f));
    z.fill(2.5f);
    auto z2 = z;
    CHECK(down(z2) == std::vector<float>(1000, 2.5f));

    // a training-like loop: the same buffers made and dropped every step
    auto step = [&] {
        dvec<float> a(rows * out), b(rows * in), c(12345);
        gpu::gemm(transpose::no, transpose::yes, rows, out, in, 1.0f, gx.data(), in, gw.data(), in,
                  0.0f, a.data(), out);
        (void)gpu::sum_squares(a.data(), a.size());
    };
    step();
    const auto before = ftune::cuda::memory_statistics().source_allocations;
    for (int i = 0; i < 5; ++i) step();
    CHECK(ftune::cuda::memory_statistics().source_allocations == before);
}

namespace {
/// Sets every parameter of a host model to reproducible values around its usual scale.
template <class Model>
void randomize(Model& m, std::uint64_t seed) {
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const ftune::random_stream s(seed++, 0);
        const bool norm = p.name.find("norm") != std::string::npos ||
                          p.name.find("LayerNorm") != std::string::npos;
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] =
                (norm && p.name.ends_with("weight") ? 1.0f : 0.0f) + 0.2f * (s.uniform(i) - 0.5f);
    });
}
/// Every value (gradients = false) or gradient of a host model, in visit order.
template <class Model>
std::vector<float> flat(Model& m, bool gradients) {
    std::vector<float> v;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const auto s = gradients ? p.grad : p.value;
        v.insert(v.end(), s.begin(), s.end());
    });
    return v;
}

/// Runs a host model and its device twin (weights uploaded) through a training forward (the
/// same dropout masks), a backward from the same d hidden, and prepared inference; checks that
/// outputs and every gradient agree.
template <class HostModel, class DeviceModel, class Config>
void check_twins(const Config& cfg, const std::vector<token_id>& ids,
                 const std::vector<token_id>& mask, std::size_t B, std::size_t T, double tol,
                 const std::string& what) {
    HostModel cpu(cfg), back(cfg);
    randomize(cpu, 11);
    DeviceModel gpu(cfg);
    ftune::cuda::upload_parameters(cpu, gpu);
    ftune::cuda::download_parameters(gpu, back);
    CHECK(flat(back, false) == flat(cpu, false));  // the round trip is exact

    auto gids = up(ids), gmask = up(mask);
    ftune::context c1{.mode = ftune::mode::train, .rng = ftune::generator(5)};
    ftune::context c2{.mode = ftune::mode::train, .rng = ftune::generator(5)};
    const auto h = cpu.forward(c1, {ids.data(), B, T}, {mask.data(), B, T});
    const auto gh = gpu.forward(c2, {gids.data(), B, T}, {gmask.data(), B, T});
    std::vector<float> want(h.data(), h.data() + h.size()), got(gh.size());
    ftune::cuda::copy_to_host(got.data(), gh.data(), gh.size());
    close(got, want, tol, what + ": training forward (dropout on)");

    const auto dh = rnd(h.size(), 12, 0.1);
    auto gdh = up(dh);
    cpu.backward(c1, {dh.data(), h.extent(0), h.extent(1), h.extent(2)});
    gpu.backward(c2, {gdh.data(), h.extent(0), h.extent(1), h.extent(2)});
    ftune::cuda::download_parameters(gpu, back, true);
    close(flat(back, true), flat(cpu, true), tol, what + ": every parameter's gradient");

    // clipping and one AdamW step, then one SGD step with momentum, on both
    auto hp = ftune::optim::parameters_of(cpu);
    auto dp = ftune::cuda::parameters_of(gpu);
    const std::span<const ftune::parameter_ref<float>> hs(hp);
    const std::span<const ftune::device_parameter_ref<float, ftune::device::cuda>> ds(dp);
    const double norm = ftune::optim::clip_grad_norm(hs, 0.05);
    CHECK(std::abs(ftune::optim::clip_grad_norm(ds, 0.05) - norm) <= 1e-5 * norm);
    ftune::optim::adamw<float> ha({.lr = 1e-2, .weight_decay = 0.01});
    ftune::optim::adamw<float, ftune::device::cuda> ga({.lr = 1e-2, .weight_decay = 0.01});
    ha.step(hs);
    ga.step(ds);
    ftune::optim::sgd<float> hsgd({.lr = 0.1, .momentum = 0.9});
    ftune::optim::sgd<float, ftune::device::cuda> gsgd({.lr = 0.1, .momentum = 0.9});
    hsgd.step(hs);
    gsgd.step(ds);
    CHECK(ga.step_count() == 1);
    ftune::cuda::download_parameters(gpu, back);
    close(flat(back, false), flat(cpu, false), tol, what + ": clipping, AdamW and SGD steps");

    cpu.prepare_inference();
    gpu.prepare_inference();
    ftune::context e1{}, e2{};
    const auto p = cpu.forward(e1, {ids.data(), B, T}, {mask.data(), B, T});
    const auto gp = gpu.forward(e2, {gids.data(), B, T}, {gmask.data(), B, T});
    std::vector<float> pw(p.data(), p.data() + p.size()), pg(gp.size());
    ftune::cuda::copy_to_host(pg.data(), gp.data(), gp.size());
    close(pg, pw, tol, what + ": prepared inference");
}
}  // namespace

TEST_CASE(
    "cuda models: a BERT encoder and a Llama decoder on device::cuda match the CPU's "
    "outputs and gradients (training with dropout, backward, prepared inference)",
    "[cuda][models]") {
    const std::size_t B = 2, T = 7;
    std::vector<token_id> ids(B * T), mask(B * T, 1);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = token_id((i * 7 + 3) % 50);
    mask[T + 5] = mask[T + 6] = 0;  // the second sequence is padded
    using cpu_encoder = ftune::bert::encoder<float>;
    using gpu_encoder =
        ftune::bert::encoder<float, ftune::dynamic, ftune::dynamic, ftune::blocks::post_norm,
                             ftune::blocks::bert_parts<float, ftune::device::cuda>>;
    const ftune::bert::config bc{.vocab_size = 50,
                                 .hidden_size = 32,
                                 .num_hidden_layers = 2,
                                 .num_attention_heads = 4,
                                 .intermediate_size = 48,
                                 .max_position_embeddings = 16};
    check_twins<cpu_encoder, gpu_encoder>(bc, ids, mask, B, T, 1e-4, "BERT encoder");

    using cpu_decoder = ftune::llama::decoder<float>;
    using gpu_decoder =
        ftune::llama::decoder<float, ftune::dynamic, ftune::dynamic,
                              ftune::blocks::llama_parts<float, ftune::device::cuda>>;
    const ftune::llama::config lc{.vocab_size = 50,
                                  .hidden_size = 32,
                                  .intermediate_size = 40,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 4,
                                  .num_key_value_heads = 2,
                                  .max_position_embeddings = 16};
    check_twins<cpu_decoder, gpu_decoder>(lc, ids, mask, B, T, 1e-4, "Llama decoder");
}

TEST_CASE(
    "cuda trainer: fine-tuning with --device cuda follows the CPU's run (losses, weights, "
    "evaluation) for the BERT classifier and masked LM and the Llama and GPT-2 causal LMs and "
    "classifiers; checkpoints move between the GPU and the CPU; bf16 mixed precision there",
    "[cuda][train]") {
    test::check_training_on_device("cuda:0");
    test::check_bf16_training_on_device("cuda:0");
    // a device that is not there: a clear error naming it
    test::check_device_error("cuda:99", "cuda:99");
}

TEST_CASE(
    "cuda generation: a decoder's twin on the GPU generates the CPU's tokens (greedy and sampled, "
    "left-padded batches, prefill in passes; Llama untied and tied, GPT-2)",
    "[cuda][generation]") {
    test::check_generation_on_device<ftune::device::cuda>();
}

int main(int argc, char* argv[]) {
    if (!ftune::cuda::available()) {
        std::printf("test_cuda: skipped: no usable CUDA device (%s)\n",
                    ftune::cuda::unavailable_reason().c_str());
        return 77;  // CTest's SKIP_RETURN_CODE
    }
    const auto p = ftune::cuda::properties();
    std::printf("test_cuda: %s, compute capability %d.%d, %zu MiB, %d SMs\n", p.name.c_str(),
                p.major, p.minor, p.memory >> 20, p.multiprocessors);
    return Catch::Session().run(argc, argv);
}
