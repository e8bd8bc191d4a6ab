// The reference backend: every primitive as a plain scalar loop, written to be read, never
// optimized.
//
// It is the oracle the CPU and CUDA backends are tested against. All tensors are row-major and
// contiguous unless a leading dimension (ld*) or a batch stride says otherwise. Backward
// primitives ACCUMULATE (`+=`) into their gradient outputs, as every layer does.
#pragma once

#include <cmath>
#include <cstddef>
#include <bit>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "ftune/backends/common.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/rng.hpp"

FTUNE_NAMESPACE_BEGIN
namespace backends::reference {

// ---------------------------------------------------------------------------------------------
// GEMM

/// C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C; lda/ldb/ldc are row strides. As in BLAS,
/// beta == 0 ignores C's previous content (even NaN) and alpha == 0 does not read A or B.
template <scalar T>
void gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
          const T* A, std::size_t lda, const T* B, std::size_t ldb, T beta, T* C, std::size_t ldc) {
    if (alpha == T(0)) {  // BLAS: A and B are not read (an inf in them does not make NaN)
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t j = 0; j < N; ++j)
                C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
        return;
    }
    for (std::size_t i = 0; i < M; ++i) {
        for (std::size_t j = 0; j < N; ++j) {
            T acc = 0;
            for (std::size_t k = 0; k < K; ++k) {
                const T a = ta == transpose::no ? A[i * lda + k] : A[k * lda + i];
                const T b = tb == transpose::no ? B[k * ldb + j] : B[j * ldb + k];
                acc += a * b;
            }
            T& c = C[i * ldc + j];
            c = beta == T(0) ? alpha * acc : alpha * acc + beta * c;
        }
    }
}

/// `batch` independent GEMMs whose operands start `stride_*` elements apart.
template <scalar T>
void gemm_strided_batched(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                          T alpha, const T* A, std::size_t lda, std::size_t stride_a, const T* B,
                          std::size_t ldb, std::size_t stride_b, T beta, T* C, std::size_t ldc,
                          std::size_t stride_c, std::size_t batch) {
    for (std::size_t b = 0; b < batch; ++b)
        gemm(ta, tb, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
             C + b * stride_c, ldc);
}

/// x rounded to bfloat16 (8 significant bits, to nearest, ties to even; bf16 keeps fp32's
/// exponent range, subnormals included), computed with frexp/nearbyint: independent of the CPU
/// backend's bit manipulation, which the tests check against it.
inline float bf16_round(float x) {
    if (!std::isfinite(x) || x == 0.0f) return x;
    const double v = x;
    if (std::fabs(v) < 0x1p-126)  // subnormal: a fixed spacing of 2^-133
        return float(std::nearbyint(std::ldexp(v, 133)) * 0x1p-133);
    int e = 0;
    const double m = std::frexp(v, &e);  // v = m 2^e, |m| in [0.5, 1)
    return float(std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8));  // (inf past the range)
}

/// x rounded to bf16 (bf16_round), as its bits.
inline bf16 to_bf16(float x) {
    const float r = bf16_round(x);
    if (std::isnan(r))
        return bf16{std::uint16_t((std::bit_cast<std::uint32_t>(r) | 0x00400000u) >> 16)};
    return bf16{std::uint16_t(std::bit_cast<std::uint32_t>(r) >> 16)};
}

/// gemm with both operands rounded to bf16 first and the sums in T: the mixed-precision product
/// (backends::cpu::gemm_bf16) emulated.
template <scalar T>
void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
               const T* A, std::size_t lda, const T* B, std::size_t ldb, T beta, T* C,
               std::size_t ldc) {
    std::vector<T> a(M * K), b(K * N);  // op(A), op(B) rounded, row-major
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t k = 0; k < K; ++k)
            a[i * K + k] =
                T(bf16_round(float(ta == transpose::no ? A[i * lda + k] : A[k * lda + i])));
    for (std::size_t k = 0; k < K; ++k)
        for (std::size_t j = 0; j < N; ++j)
            b[k * N + j] =
                T(bf16_round(float(tb == transpose::no ? B[k * ldb + j] : B[j * ldb + k])));
    gemm(transpose::no, transpose::no, M, N, K, alpha, a.data(), K, b.data(), N, beta, C, ldc);
}

/// gemm_bf16 with A already in bf16: A's values as floats (exact), B rounded.
template <scalar T>
void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
               const bf16* A, std::size_t lda, const T* B, std::size_t ldb, T beta, T* C,
               std::size_t ldc) {
    const std::size_t rows = ta == transpose::no ? M : K, cols = ta == transpose::no ? K : M;
    std::vector<T> a(rows * cols);  // A as stored, compact (ld cols)
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) a[r * cols + c] = T(A[r * lda + c].to_float());
    gemm_bf16(ta, tb, M, N, K, alpha, a.data(), cols, B, ldb, beta, C, ldc);
}

/// `batch` independent gemm_bf16 products whose operands start `stride_*` elements apart.
template <scalar T, class TA>  // TA: T, or bf16
void gemm_strided_batched_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, T alpha, const TA* A, std::size_t lda,
                               std::size_t stride_a, const T* B, std::size_t ldb,
                               std::size_t stride_b, T beta, T* C, std::size_t ldc,
                               std::size_t stride_c, std::size_t batch) {
    for (std::size_t b = 0; b < batch; ++b)
        gemm_bf16(ta, tb, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
                  C + b * stride_c, ldc);
}

// ---------------------------------------------------------------------------------------------
// Bias and residual

/// y(rows, cols) += bias(cols) on every row.
template <scalar T>
void bias_add(T* y, const T* bias, std::size_t rows, std::size_t cols) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) y[r * cols + c] += bias[c];
}

/// dbias(cols) += sum over rows of dy(rows, cols).
template <scalar T>
void bias_backward(T* dbias, const T* dy, std::size_t rows, std::size_t cols) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) dbias[c] += dy[r * cols + c];
}

/// out(n) = a(n) + b(n); out may alias a or b.
template <scalar T>
void residual_add(T* out, const T* a, const T* b, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// ---------------------------------------------------------------------------------------------
// Activations

/// y = x * Φ(x) = 0.5 x (1 + erf(x / √2)): BERT's "gelu".
template <scalar T>
void gelu_forward(T* y, const T* x, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] / std::sqrt(T(2))));
}

/// dx += dy * (Φ(x) + x φ(x)).
template <scalar T>
void gelu_backward(T* dx, const T* x, const T* dy, std::size_t n) {
    const T inv_sqrt_2pi = T(1) / std::sqrt(T(2) * T(3.14159265358979323846));
    for (std::size_t i = 0; i < n; ++i) {
        const T cdf = T(0.5) * (T(1) + std::erf(x[i] / std::sqrt(T(2))));
        const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x[i] * x[i]);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
    }
}

/// y = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))): "gelu_new" / tanh approximation.
template <scalar T>
void gelu_tanh_forward(T* y, const T* x, std::size_t n) {
    const T k = std::sqrt(T(2) / T(3.14159265358979323846));
    for (std::size_t i = 0; i < n; ++i) {
        const T u = k * (x[i] + T(0.044715) * x[i] * x[i] * x[i]);
        y[i] = T(0.5) * x[i] * (T(1) + std::tanh(u));
    }
}

/// dx += dy * d/dx[gelu_tanh(x)].
template <scalar T>
void gelu_tanh_backward(T* dx, const T* x, const T* dy, std::size_t n) {
    const T k = std::sqrt(T(2) / T(3.14159265358979323846));
    for (std::size_t i = 0; i < n; ++i) {
        const T u = k * (x[i] + T(0.044715) * x[i] * x[i] * x[i]);
        const T t = std::tanh(u);
        const T du = k * (T(1) + T(3) * T(0.044715) * x[i] * x[i]);
        dx[i] += dy[i] * (T(0.5) * (T(1) + t) + T(0.5) * x[i] * (T(1) - t * t) * du);
    }
}

/// y = tanh(x).
template <scalar T>
void tanh_forward(T* y, const T* x, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

/// dx += dy * (1 - y²), from the forward OUTPUT y.
template <scalar T>
void tanh_backward(T* dx, const T* y, const T* dy, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) dx[i] += dy[i] * (T(1) - y[i] * y[i]);
}

/// y = max(x, 0).
template <scalar T>
void relu_forward(T* y, const T* x, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

/// dx += dy where x > 0 (the derivative at 0 is taken as 0, as PyTorch does).
template <scalar T>
void relu_backward(T* dx, const T* x, const T* dy, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        if (x[i] > T(0)) dx[i] += dy[i];
}

/// y = x sigmoid(x) (SiLU, "swish"; Llama's hidden_act "silu").
template <scalar T>
void silu_forward(T* y, const T* x, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) y[i] = x[i] / (T(1) + std::exp(-x[i]));
}

/// dx += dy sigmoid(x) (1 + x (1 - sigmoid(x))).
template <scalar T>
void silu_backward(T* dx, const T* x, const T* dy, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const T s = T(1) / (T(1) + std::exp(-x[i]));
        dx[i] += dy[i] * s * (T(1) + x[i] * (T(1) - s));
    }
}

/// out = a b element-wise (out may alias a or b): the gate of a gated MLP.
template <scalar T>
void multiply(T* out, const T* a, const T* b, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

/// da += dout b and db += dout a (either may be null: not needed), for multiply.
template <scalar T>
void multiply_backward(T* da, T* db, const T* a, const T* b, const T* dout, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        if (da) da[i] += dout[i] * b[i];
        if (db) db[i] += dout[i] * a[i];
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last axis

/// out(rows, C) = (x - mean) * rstd * weight + bias per row; saves mean(rows) and rstd(rows)
/// (rstd = 1 / sqrt(biased variance + eps), as PyTorch).
template <scalar T>
void layer_norm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                        std::size_t rows, std::size_t C, T eps) {
    for (std::size_t r = 0; r < rows; ++r) {
        const T* xr = x + r * C;
        T m = 0;
        for (std::size_t c = 0; c < C; ++c) m += xr[c];
        m /= T(C);
        T v = 0;
        for (std::size_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
        v /= T(C);
        const T s = T(1) / std::sqrt(v + eps);
        for (std::size_t c = 0; c < C; ++c) out[r * C + c] = (xr[c] - m) * s * weight[c] + bias[c];
        mean[r] = m;
        rstd[r] = s;
    }
}

/// dx += ..., dweight += ..., dbias += ... for layer_norm_forward (using its saved mean, rstd).
template <scalar T>
void layer_norm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight,
                         const T* mean, const T* rstd, std::size_t rows, std::size_t C) {
    for (std::size_t r = 0; r < rows; ++r) {
        const T* xr = x + r * C;
        const T* gr = dout + r * C;
        T mean_g = 0, mean_gn = 0;  // mean of (w * dout) and of (w * dout * norm)
        for (std::size_t c = 0; c < C; ++c) {
            const T norm = (xr[c] - mean[r]) * rstd[r];
            mean_g += weight[c] * gr[c];
            mean_gn += weight[c] * gr[c] * norm;
        }
        mean_g /= T(C);
        mean_gn /= T(C);
        for (std::size_t c = 0; c < C; ++c) {
            const T norm = (xr[c] - mean[r]) * rstd[r];
            dbias[c] += gr[c];
            dweight[c] += norm * gr[c];
            dx[r * C + c] += (weight[c] * gr[c] - mean_g - norm * mean_gn) * rstd[r];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (Llama): y = x / sqrt(mean(x²) + eps) ⊙ weight, no centering, no bias

/// out(r, :) = x(r, :) * rstd(r) * weight with rstd(r) = 1 / sqrt(mean(x(r, :)²) + eps), saved.
template <scalar T>
void rms_norm_forward(T* out, T* rstd, const T* x, const T* weight, std::size_t rows, std::size_t C,
                      T eps) {
    for (std::size_t r = 0; r < rows; ++r) {
        const T* xr = x + r * C;
        T ms = 0;
        for (std::size_t c = 0; c < C; ++c) ms += xr[c] * xr[c];
        const T s = T(1) / std::sqrt(ms / T(C) + eps);
        for (std::size_t c = 0; c < C; ++c) out[r * C + c] = xr[c] * s * weight[c];
        rstd[r] = s;
    }
}

/// dx += rstd (w dout - x̂ mean(w dout x̂)) and dweight += dout x̂, with x̂ = x rstd, for
/// rms_norm_forward (using its saved rstd).
template <scalar T>
void rms_norm_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd,
                       std::size_t rows, std::size_t C) {
    for (std::size_t r = 0; r < rows; ++r) {
        const T* xr = x + r * C;
        const T* gr = dout + r * C;
        T mean_gn = 0;  // mean of w * dout * x̂
        for (std::size_t c = 0; c < C; ++c) mean_gn += weight[c] * gr[c] * xr[c] * rstd[r];
        mean_gn /= T(C);
        for (std::size_t c = 0; c < C; ++c) {
            const T norm = xr[c] * rstd[r];
            dweight[c] += norm * gr[c];
            dx[r * C + c] += (weight[c] * gr[c] - norm * mean_gn) * rstd[r];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary position embeddings (RoPE, as Transformers' Llama applies them: rotate_half)

/// cos(r, i), sin(r, i) (rows, half) of the angles positions[r] * inv_freq(i), with
/// inv_freq(i) = 1 / theta^(2i / (2 half)), computed in T: for float, the same float32 operations
/// as Transformers (which also computes them in float32 for a float64 model; ftune's float64
/// models get float64 angles).
template <scalar T>
void rope_table(T* cos, T* sin, const token_id* positions, std::size_t rows, std::size_t half,
                double theta) {
    for (std::size_t i = 0; i < half; ++i) {
        const T inv = T(1) / std::pow(T(theta), T(T(2 * i) / T(2 * half)));
        for (std::size_t r = 0; r < rows; ++r) {
            const T a = T(positions[r]) * inv;
            cos[r * half + i] = std::cos(a);
            sin[r * half + i] = std::sin(a);
        }
    }
}

/// Rotates x (rows, heads, 2 half), rows ld apart, in place by the angles of cos/sin (rows, half):
/// (x_i, x_{i+half}) <- (x_i c - x_{i+half} s, x_{i+half} c + x_i s) in every head; inverse
/// rotates by the opposite angles (the backward: the transpose of a rotation).
template <scalar T>
void rope_apply(T* x, std::size_t ld, const T* cos, const T* sin, std::size_t rows,
                std::size_t heads, std::size_t half, bool inverse) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t h = 0; h < heads; ++h) {
            T* v = x + r * ld + h * 2 * half;
            for (std::size_t i = 0; i < half; ++i) {
                const T c = cos[r * half + i], s = inverse ? -sin[r * half + i] : sin[r * half + i];
                const T a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
}

// ---------------------------------------------------------------------------------------------
// Grouped-query attention: key/value heads shared by groups of query heads

/// out(r, (j group + g) d + i) = in(r, j d + i): each of the kv_heads heads of d values repeated
/// `group` times (Transformers' repeat_kv), for `rows` rows.
template <scalar T>
void repeat_heads(T* out, const T* in, std::size_t rows, std::size_t kv_heads, std::size_t group,
                  std::size_t d) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < kv_heads; ++j)
            for (std::size_t g = 0; g < group; ++g)
                for (std::size_t i = 0; i < d; ++i)
                    out[(r * kv_heads * group + j * group + g) * d + i] =
                        in[(r * kv_heads + j) * d + i];
}

/// din(r, j d + i) += Σ_g dout(r, (j group + g) d + i): the backward of repeat_heads.
template <scalar T>
void repeat_heads_backward(T* din, const T* dout, std::size_t rows, std::size_t kv_heads,
                           std::size_t group, std::size_t d) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < kv_heads; ++j)
            for (std::size_t g = 0; g < group; ++g)
                for (std::size_t i = 0; i < d; ++i)
                    din[(r * kv_heads + j) * d + i] +=
                        dout[(r * kv_heads * group + j * group + g) * d + i];
}

// ---------------------------------------------------------------------------------------------
// Attention softmax

/// probs(B,H,Tq,Tk) = softmax over k of (scale * scores + key_mask(B,Tk)); key_mask is additive
/// (0 keeps a key, -inf or a large negative number drops it) and may be null. causal also drops
/// the keys after the query (k > q + Tk - Tq). A row whose keys are all dropped gets all-zero
/// probabilities instead of NaN.
template <scalar T>
void softmax_forward(T* probs, const T* scores, const T* key_mask, T scale, std::size_t B,
                     std::size_t H, std::size_t Tq, std::size_t Tk, bool causal = false) {
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t row = 0; row < H * Tq; ++row) {
            const std::size_t off = (b * H * Tq + row) * Tk;
            const std::size_t q = row % Tq;
            T mx = -std::numeric_limits<T>::infinity();
            for (std::size_t k = 0; k < Tk; ++k) {
                if (causal && k + Tq > q + Tk) continue;
                const T z = scale * scores[off + k] + (key_mask ? key_mask[b * Tk + k] : T(0));
                if (z > mx) mx = z;
            }
            if (mx == -std::numeric_limits<T>::infinity()) {
                for (std::size_t k = 0; k < Tk; ++k) probs[off + k] = T(0);
                continue;
            }
            T sum = 0;
            for (std::size_t k = 0; k < Tk; ++k) {
                const T z = scale * scores[off + k] + (key_mask ? key_mask[b * Tk + k] : T(0));
                probs[off + k] = causal && k + Tq > q + Tk ? T(0) : std::exp(z - mx);
                sum += probs[off + k];
            }
            for (std::size_t k = 0; k < Tk; ++k) probs[off + k] /= sum;
        }
}

/// dscores(rows, Tk) (+)= scale * p * (g - Σ_k p g), rows = B*H*Tq, with g = dp, or g = dp *
/// keep * keep_scale when a dropout mask `keep` is given (the dropout's backward first);
/// accumulate = false overwrites dscores; Out = bf16 (from float, not accumulated) stores the
/// values rounded to bf16.
template <scalar T, class Out = T>
void softmax_backward(Out* dscores, const T* probs, const T* dprobs, T scale, std::size_t rows,
                      std::size_t Tk, const std::uint8_t* keep = nullptr, T keep_scale = T(1),
                      bool accumulate = true) {
    static_assert(std::is_same_v<Out, T> || (std::is_same_v<Out, bf16> && std::is_same_v<T, float>),
                  "softmax_backward writes T, or bf16 from float");
    if (std::is_same_v<Out, bf16> && accumulate)
        throw error(errc::invalid_argument, "softmax_backward",
                    "a bf16 dscores is written, not accumulated (accumulate = false)");
    std::vector<T> g(Tk);
    for (std::size_t r = 0; r < rows; ++r) {
        const T* p = probs + r * Tk;
        for (std::size_t k = 0; k < Tk; ++k) {
            const std::size_t i = r * Tk + k;
            g[k] = keep ? dprobs[i] * (keep[i] ? keep_scale : T(0)) : dprobs[i];
        }
        T dot = 0;
        for (std::size_t k = 0; k < Tk; ++k) dot += p[k] * g[k];
        for (std::size_t k = 0; k < Tk; ++k) {
            const T v = scale * p[k] * (g[k] - dot);
            if constexpr (std::is_same_v<Out, bf16>)
                dscores[r * Tk + k] = to_bf16(v);
            else
                dscores[r * Tk + k] = accumulate ? dscores[r * Tk + k] + v : v;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout

/// The keep threshold: element i is kept iff stream.bits(i) >= dropout_threshold(p).
inline std::uint32_t dropout_threshold(double p) {
    if (!(p >= 0.0 && p <= 1.0))
        throw error(errc::invalid_argument, "dropout",
                    ftune::detail::cat("probability ", p, " is not in [0, 1]"));
    const double t = std::ceil(p * 4294967296.0);
    return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(t);
}

/// y = x * keep / (1 - p) with keep(i) = [s.bits(i) >= threshold]; writes keep into mask (0/1).
/// p == 1 drops everything (y = 0 * x, as PyTorch's x * mask * scale). Out = bf16 (from float)
/// stores y rounded to bf16.
template <scalar T, class Out = T>
void dropout_forward(Out* y, std::uint8_t* mask, const T* x, T p, std::size_t n,
                     const random_stream& s) {
    static_assert(std::is_same_v<Out, T> || (std::is_same_v<Out, bf16> && std::is_same_v<T, float>),
                  "dropout_forward writes T, or bf16 from float");
    const std::uint32_t thr = dropout_threshold(double(p));
    const T inv_keep = p < T(1) ? T(1) / (T(1) - p) : T(0);
    for (std::size_t i = 0; i < n; ++i) {
        mask[i] = p < T(1) && s.bits(i) >= thr ? 1 : 0;
        const T v = x[i] * (mask[i] ? inv_keep : T(0));
        if constexpr (std::is_same_v<Out, bf16>)
            y[i] = to_bf16(v);
        else
            y[i] = v;
    }
}

/// dx += dy * mask / (1 - p).
template <scalar T>
void dropout_backward(T* dx, const std::uint8_t* mask, const T* dy, T p, std::size_t n) {
    const T inv_keep = p < T(1) ? T(1) / (T(1) - p) : T(0);
    for (std::size_t i = 0; i < n; ++i) dx[i] += dy[i] * (mask[i] ? inv_keep : T(0));
}

// ---------------------------------------------------------------------------------------------
// Index and mask preparation (what the layers once did in host loops)

/// mask(i) = 0 where attention(i) != 0, the lowest T where it is 0 (padding), for n entries;
/// attention == nullptr: every entry is a token. The additive key mask of attention.
template <scalar T>
void key_mask(T* mask, const token_id* attention, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        mask[i] = !attention || attention[i] != 0 ? T(0) : std::numeric_limits<T>::lowest();
}

/// ids(i) = start + i % t for n = rows * t ids: the positions of each row of t tokens.
inline void position_ids(token_id* ids, std::size_t n, std::size_t t, std::size_t start) {
    for (std::size_t i = 0; i < n; ++i) ids[i] = token_id(start + i % t);
}

/// out(i) = in(i), or 0 when in == nullptr (no token types given: all type 0), for n ids.
inline void copy_ids(token_id* out, const token_id* in, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) out[i] = in ? in[i] : 0;
}

/// out(i) = in(i) for n values.
template <scalar T>
void copy(T* out, const T* in, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) out[i] = in[i];
}

/// out(r, :) = x(r * stride, :) for `rows` rows of C values: the first token's row of each
/// sequence when x is (B, T, C) and stride = T.
template <scalar T>
void gather_rows(T* out, const T* x, std::size_t rows, std::size_t C, std::size_t stride) {
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < C; ++c) out[r * C + c] = x[r * stride * C + c];
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// Throws out_of_range unless every id is in [0, vocab).
inline void check_ids(const token_id* ids, std::size_t n, std::size_t vocab, const char* what) {
    for (std::size_t i = 0; i < n; ++i)
        if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= vocab)
            throw error(
                errc::out_of_range, what,
                ftune::detail::cat("id ", ids[i], " at position ", i, " is outside [0, ", vocab,
                                   "); check that the tokenizer's vocabulary matches the model"));
}

/// out(n, C) = table(ids[i], :) for each i; ids outside [0, vocab) throw out_of_range.
template <scalar T>
void embedding_forward(T* out, const token_id* ids, const T* table, std::size_t n, std::size_t C,
                       std::size_t vocab) {
    check_ids(ids, n, vocab, "embedding_forward");
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t c = 0; c < C; ++c) out[i * C + c] = table[std::size_t(ids[i]) * C + c];
}

/// dtable(ids[i], :) += dout(i, :) for each i (repeated ids add up) whose id is not padding_idx.
template <scalar T>
void embedding_backward(T* dtable, const token_id* ids, const T* dout, std::size_t n, std::size_t C,
                        std::size_t vocab, token_id padding_idx = -1) {
    check_ids(ids, n, vocab, "embedding_backward");
    for (std::size_t i = 0; i < n; ++i)
        if (ids[i] != padding_idx)
            for (std::size_t c = 0; c < C; ++c)
                dtable[std::size_t(ids[i]) * C + c] += dout[i * C + c];
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy with logits

/// Throws out_of_range unless every target is in [0, V) or equals ignore_index.
inline void check_targets(const token_id* targets, std::size_t rows, std::size_t V,
                          token_id ignore_index) {
    for (std::size_t r = 0; r < rows; ++r)
        if (targets[r] != ignore_index && (targets[r] < 0 || std::size_t(targets[r]) >= V))
            throw error(errc::out_of_range, "cross_entropy",
                        ftune::detail::cat("target ", targets[r], " of row ", r, " is outside [0, ",
                                           V, ") and is not the ignore index ", ignore_index));
}

/// losses(rows) = logsumexp(logits(r,:)) - logits(r, target) (0 where target == ignore_index);
/// returns how many rows were counted.
template <scalar T>
std::size_t cross_entropy_forward(T* losses, const T* logits, const token_id* targets,
                                  std::size_t rows, std::size_t V, token_id ignore_index = -100) {
    check_targets(targets, rows, V, ignore_index);
    std::size_t count = 0;
    for (std::size_t r = 0; r < rows; ++r) {
        if (targets[r] == ignore_index) {
            losses[r] = T(0);
            continue;
        }
        const T* z = logits + r * V;
        T mx = z[0];
        for (std::size_t v = 1; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
        T sum = 0;
        for (std::size_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
        losses[r] = std::log(sum) + mx - z[targets[r]];
        ++count;
    }
    return count;
}

/// dlogits(r,:) += dlosses[r] * (softmax(logits(r,:)) - onehot(target)); ignored rows get nothing.
template <scalar T>
void cross_entropy_backward(T* dlogits, const T* logits, const token_id* targets, const T* dlosses,
                            std::size_t rows, std::size_t V, token_id ignore_index = -100) {
    check_targets(targets, rows, V, ignore_index);
    for (std::size_t r = 0; r < rows; ++r) {
        if (targets[r] == ignore_index) continue;
        const T* z = logits + r * V;
        T mx = z[0];
        for (std::size_t v = 1; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
        T sum = 0;
        for (std::size_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
        for (std::size_t v = 0; v < V; ++v) {
            const T p = std::exp(z[v] - mx) / sum;
            dlogits[r * V + v] += dlosses[r] * (p - (v == std::size_t(targets[r]) ? T(1) : T(0)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions

/// Σ x (accumulated in double).
template <scalar T>
double sum(const T* x, std::size_t n) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += x[i];
    return s;
}

/// Σ x² (accumulated in double).
template <scalar T>
double sum_squares(const T* x, std::size_t n) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
    return s;
}

/// √(Σ over tensors of Σ x²): the global norm that gradient clipping uses.
template <scalar T>
double global_l2_norm(std::span<const std::span<const T>> tensors) {
    double s = 0;
    for (auto t : tensors) s += sum_squares(t.data(), t.size());
    return std::sqrt(s);
}

/// x *= alpha.
template <scalar T>
void scale(T* x, T alpha, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) x[i] *= alpha;
}

// ---------------------------------------------------------------------------------------------
// Optimizer updates (PyTorch's formulas operation for operation)

/// One AdamW step (torch.optim.AdamW, single-tensor path):
/// θ ← θ(1 − ηλ); m ← m + (1−β1)(g − m); v ← β2 v + (1−β2) g²;

/// g * scale as scale() leaves it in the gradient: rounded to T, never fused into the update's
/// later multiply-adds (GCC contracts a * b + c by default, and at -O3 did so in sgd_update,
/// changing up to 1% of the values in a throwaway check); g itself when scale is 1, the
/// expression the update had before.
template <scalar T>
inline T scaled_gradient(T g, double scale) noexcept {
    if (scale == 1) return g;
    T r = g * T(scale);
#if defined(__GNUC__) && defined(__x86_64__)
    __asm__("" : "+x"(r));  // the product leaves the compiler's view as it is
#endif
    return r;
}
/// θ ← θ − (η / (1−β1ᵗ)) m / (√v / √(1−β2ᵗ) + ε).
template <scalar T>
void adamw_update(T* param, const T* grad, T* m, T* v, std::size_t n, const adamw_params& h) {
    const double t = double(h.step);
    const T decay = T(1.0 - h.lr * h.weight_decay);
    const T w1 = T(1.0 - h.beta1), b2 = T(h.beta2), w2 = T(1.0 - h.beta2), eps = T(h.eps);
    const T step_size = T(h.lr / (1.0 - std::pow(h.beta1, t)));
    const T bc2_sqrt = T(std::sqrt(1.0 - std::pow(h.beta2, t)));
    for (std::size_t i = 0; i < n; ++i) {
        const T g = scaled_gradient(grad[i], h.grad_scale);
        param[i] *= decay;
        m[i] += w1 * (g - m[i]);
        v[i] = v[i] * b2 + w2 * g * g;
        const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
        param[i] += -step_size * (m[i] / denom);
    }
}

/// One SGD step (torch.optim.SGD): g ← g + λθ; with momentum μ: buf ← g on the first step, else
/// buf ← μ buf + (1 − dampening) g; g ← g + μ buf (Nesterov) or buf; θ ← θ − η g.
/// `buf` may be null when momentum is 0.
template <scalar T>
void sgd_update(T* param, const T* grad, T* buf, std::size_t n, const sgd_params& h) {
    const T wd = T(h.weight_decay), mu = T(h.momentum), damp = T(1.0 - h.dampening), lr = T(h.lr);
    for (std::size_t i = 0; i < n; ++i) {
        const T gi = scaled_gradient(grad[i], h.grad_scale);
        T g = h.weight_decay != 0 ? gi + wd * param[i] : gi;
        if (h.momentum != 0) {
            buf[i] = h.first_step ? g : buf[i] * mu + damp * g;
            g = h.nesterov ? g + mu * buf[i] : buf[i];
        }
        param[i] += -lr * g;
    }
}

// ---------------------------------------------------------------------------------------------
// Inference: prepared weights and fused attention

/// A weight prepared for inference products: op(B) (K rows, N columns) copied row-major. The
/// reference backend has no panel layout; this is its own prepared-weight type (the CPU's is
/// backends::cpu::packed_b).
template <scalar T>
class prepared_b {
  public:
    /// Copies op(B) (K rows, N columns) from B with row stride ldb (rounded to bf16 in
    /// precision::bf16: gemm_packed then rounds A too).
    void pack(const T* B, std::size_t ldb, transpose tb, std::size_t K, std::size_t N,
              ftune::precision p = ftune::precision::fp32) {
        data_.resize(K * N);
        for (std::size_t k = 0; k < K; ++k)
            for (std::size_t j = 0; j < N; ++j) {
                const T b = tb == transpose::no ? B[k * ldb + j] : B[j * ldb + k];
                data_[k * N + j] = p == ftune::precision::bf16 ? T(bf16_round(float(b))) : b;
            }
        K_ = K, N_ = N, precision_ = p;
    }
    /// The precision it was prepared in.
    ftune::precision precision() const noexcept { return precision_; }
    /// Rows of op(B).
    std::size_t rows() const noexcept { return K_; }
    /// Columns of op(B).
    std::size_t cols() const noexcept { return N_; }
    /// op(B), (K, N) row-major.
    const T* data() const noexcept { return data_.data(); }

  private:
    std::vector<T> data_;
    std::size_t K_ = 0, N_ = 0;
    ftune::precision precision_ = ftune::precision::fp32;
};

/// C(M,N) = alpha * op(A)(M,K) * Bp + beta * C, then + bias(N) on every row (when given), then
/// epilogue(C, ldc, 0, M, 0, N) (when given: backends::add_residual adds a residual).
template <scalar T, class Epilogue = std::nullptr_t>
void gemm_packed(transpose ta, std::size_t M, std::size_t N, std::size_t K, T alpha, const T* A,
                 std::size_t lda, const prepared_b<T>& Bp, T beta, T* C, std::size_t ldc,
                 const T* bias = nullptr, Epilogue epilogue = {}) {
    if (Bp.rows() != K || Bp.cols() != N)
        throw error(errc::shape_mismatch, "gemm_packed",
                    ftune::detail::cat("B was prepared as ", Bp.rows(), " x ", Bp.cols(),
                                       " but the product needs ", K, " x ", N));
    if (Bp.precision() == ftune::precision::bf16) {  // A rounded too
        std::vector<T> a(M * K);
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t k = 0; k < K; ++k)
                a[i * K + k] =
                    T(bf16_round(float(ta == transpose::no ? A[i * lda + k] : A[k * lda + i])));
        gemm(transpose::no, transpose::no, M, N, K, alpha, a.data(), K, Bp.data(), N, beta, C, ldc);
    } else {
        gemm(ta, transpose::no, M, N, K, alpha, A, lda, Bp.data(), N, beta, C, ldc);
    }
    if (bias)
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t j = 0; j < N; ++j) C[i * ldc + j] += bias[j];
    if constexpr (!std::is_same_v<Epilogue, std::nullptr_t>) epilogue(C, ldc, 0, M, 0, N);
}

namespace detail {
/// One query's attention: out(d) = Σ_j p_j v_j with p = softmax_j(scale q · k_j + mask_j) over
/// `keys` keys, key j's rows at k + j ld and v + j ld (mask may be null); zeros when every key
/// is dropped (-inf). p is scratch of `keys` values. With bf16, q, k, v and the normalized
/// probabilities are rounded to bf16 before they multiply (the mixed-precision products).
template <class T>
void attend(T* out, const T* q, const T* k, const T* v, std::size_t ld, const T* mask, T scale,
            std::size_t keys, std::size_t d, std::vector<T>& p, bool bf16 = false) {
    auto r = [bf16](T x) { return bf16 ? T(bf16_round(float(x))) : x; };
    T mx = -std::numeric_limits<T>::infinity();
    for (std::size_t j = 0; j < keys; ++j) {
        T dot = 0;
        for (std::size_t c = 0; c < d; ++c) dot += r(q[c]) * r(k[j * ld + c]);
        p[j] = scale * dot + (mask ? mask[j] : T(0));
        if (p[j] > mx) mx = p[j];
    }
    T sum = 0;
    for (std::size_t j = 0; j < keys; ++j) {
        p[j] = mx == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(p[j] - mx);
        sum += p[j];
    }
    if (bf16) {  // P rounded after the softmax, then P V
        for (std::size_t j = 0; j < keys; ++j) p[j] = sum > T(0) ? r(p[j] / sum) : T(0);
        for (std::size_t c = 0; c < d; ++c) {
            T acc = 0;
            for (std::size_t j = 0; j < keys; ++j) acc += p[j] * r(v[j * ld + c]);
            out[c] = acc;
        }
        return;
    }
    for (std::size_t c = 0; c < d; ++c) {
        T acc = 0;
        for (std::size_t j = 0; j < keys; ++j) acc += p[j] * v[j * ld + c];
        out[c] = sum > T(0) ? acc / sum : T(0);
    }
}
}  // namespace detail

namespace detail {
/// attention_inference's loops, the products rounded to bf16 when bf16 is set.
template <scalar T>
void attention_heads(T* out, std::size_t ldo, const T* q, std::size_t ldq, const T* k, const T* v,
                     std::size_t ld, const T* key_mask, T scale, std::size_t Bn, std::size_t H,
                     std::size_t Tq, std::size_t Tn, std::size_t d, bool causal, bool bf16) {
    if (Tq > Tn)
        throw error(errc::shape_mismatch, "attention_inference",
                    ftune::detail::cat(Tq, " queries per sequence but only ", Tn, " keys"));
    std::vector<T> p(Tn);
    for (std::size_t b = 0; b < Bn; ++b)
        for (std::size_t h = 0; h < H; ++h)
            for (std::size_t i = 0; i < Tq; ++i) {
                const std::size_t at = b * Tn * ld + h * d;  // the sequence's first key of head h
                attend(out + (b * Tq + i) * ldo + h * d, q + (b * Tq + i) * ldq + h * d, k + at,
                       v + at, ld, key_mask ? key_mask + b * Tn : nullptr, scale,
                       causal ? i + 1 : Tn, d, p, bf16);
            }
}
}  // namespace detail

/// Multi-head attention for inference: for every batch b, head h and query i < Tq (the first Tq
/// positions of the sequence), p = softmax_j(scale * q_i · k_j + key_mask(b, j)) over the keys
/// j < Tn (causal: j <= i) and out_i = Σ_j p_j v_j, on head h's columns h*d .. h*d+d of q
/// ((B*Tq, ldq) rows), k and v ((B*T, ld) rows) and out ((B*Tq, ldo) rows). A query whose keys
/// are all masked gets zeros.
template <scalar T>
void attention_inference(T* out, std::size_t ldo, const T* q, std::size_t ldq, const T* k,
                         const T* v, std::size_t ld, const T* key_mask, T scale, std::size_t Bn,
                         std::size_t H, std::size_t Tq, std::size_t Tn, std::size_t d,
                         bool causal = false) {
    detail::attention_heads(out, ldo, q, ldq, k, v, ld, key_mask, scale, Bn, H, Tq, Tn, d, causal,
                            false);
}

/// attention_inference with bf16 products (backends::cpu::attention_inference_bf16) emulated:
/// q, k, v and the probabilities rounded to bf16, the sums in T.
template <scalar T>
void attention_inference_bf16(T* out, std::size_t ldo, const T* q, std::size_t ldq, const T* k,
                              const T* v, std::size_t ld, const T* key_mask, T scale,
                              std::size_t Bn, std::size_t H, std::size_t Tq, std::size_t Tn,
                              std::size_t d, bool causal = false) {
    detail::attention_heads(out, ldo, q, ldq, k, v, ld, key_mask, scale, Bn, H, Tq, Tn, d, causal,
                            true);
}

/// Attention of one new query per sequence to its key/value cache (a decode step): for batch b
/// and query head h, p = softmax_j(scale q_bh · k_bj + key_mask(b, j)) over the S cached
/// positions and out_bh = Σ_j p_j v_bj, with key/value head h / (H / Hkv). q, out (B, H d);
/// k, v (B, cap, Hkv d); key_mask (B, S) additive or null. All keys masked: zeros.
template <scalar T>
void attention_decode(T* out, const T* q, const T* k, const T* v, std::size_t cap,
                      const T* key_mask, T scale, std::size_t Bn, std::size_t H, std::size_t Hkv,
                      std::size_t S, std::size_t d) {
    if (Hkv == 0 || H % Hkv != 0 || S > cap)
        throw error(errc::shape_mismatch, "attention_decode",
                    ftune::detail::cat(Hkv, " key/value heads must divide ", H, " query heads; ", S,
                                       " positions of a cache of ", cap));
    const std::size_t group = H == 0 ? 1 : H / Hkv, Ckv = Hkv * d;
    std::vector<T> p(S);
    for (std::size_t b = 0; b < Bn; ++b)
        for (std::size_t h = 0; h < H; ++h) {
            const std::size_t at = b * cap * Ckv + h / group * d;  // key/value head h / group
            detail::attend(out + (b * H + h) * d, q + (b * H + h) * d, k + at, v + at, Ckv,
                           key_mask ? key_mask + b * S : nullptr, scale, S, d, p);
        }
}

}  // namespace backends::reference
FTUNE_NAMESPACE_END
