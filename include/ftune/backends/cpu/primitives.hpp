// The CPU backend: xsimd kernels written once over batch<T, Arch>, OpenMP across rows or chunks.
//
// Same signatures and semantics as backends::reference (see there for the exact formulas); the
// tests compare the two on random shapes. Reductions over rows that feed a shared gradient (bias,
// LayerNorm weights, embedding table) are split by columns, not rows, so the result does not
// depend on the number of threads.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numbers>
#include <span>
#include <type_traits>
#include <utility>

#include "ftune/backends/cpu/detail.hpp"
#include "ftune/backends/cpu/gemm.hpp"
#include "ftune/backends/cpu/gemm_bf16.hpp"
#include "ftune/backends/reference/primitives.hpp"
#include "ftune/core/rng.hpp"

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu {

using reference::check_ids;
using reference::check_targets;
using reference::copy;
using reference::copy_ids;
using reference::dropout_threshold;
using reference::gather_rows;
using reference::key_mask;
using reference::multiply;
using reference::multiply_backward;
using reference::position_ids;
using reference::repeat_heads;
using reference::repeat_heads_backward;
using reference::rope_apply;
using reference::rope_table;

// ---------------------------------------------------------------------------------------------
// Bias and residual

/// y(rows, cols) += bias(cols) on every row.
template <scalar T>
void bias_add(T* y, const T* bias, std::size_t rows, std::size_t cols) {
    using namespace detail;
    parallel_for(rows, row_grain(cols), [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
            for_each_batch<T>(cols, [&](std::size_t c, auto n) {
                store(y + r * cols + c, load(y + r * cols + c, n) + load(bias + c, n), n);
            });
    });
}

namespace detail {
/// Columns per thread for reductions over rows (whole blocks of 4 batches). Every column is
/// summed over the rows in ascending order however the columns are split, so the result does
/// not depend on the thread count.
template <class T>
inline std::size_t column_chunk(std::size_t cols) {
    const std::size_t blk = 4 * width<T>, nt = std::size_t(std::max(1, ftune::num_threads()));
    return std::max(blk, ((cols + nt - 1) / nt + blk - 1) / blk * blk);
}

/// dst(c) += Σ_r f(r, c, count) for the columns [c0, c1), where f returns the batch of row r at
/// columns c .. c+count. Rows are streamed in order (dst's slice stays in L1), so each column
/// is summed over r = 0, 1, ... whatever the column split.
template <class T, class F>
inline void accumulate_columns(T* dst, std::size_t c0, std::size_t c1, std::size_t rows, F f) {
    for (std::size_t r = 0; r < rows; ++r)
        for_each_batch<T>(c1 - c0, [&](std::size_t j, auto n) {
            T* d = dst + c0 + j;
            store(d, load(d, n) + f(r, c0 + j, n), n);
        });
}
}  // namespace detail

/// dbias(cols) += sum over rows of dy(rows, cols).
template <scalar T>
void bias_backward(T* dbias, const T* dy, std::size_t rows, std::size_t cols) {
    using namespace detail;
    parallel_for(cols, column_chunk<T>(cols), [&](std::size_t c0, std::size_t c1) {
        accumulate_columns(dbias, c0, c1, rows, [&](std::size_t r, std::size_t c, auto n) {
            return load(dy + r * cols + c, n);
        });
    });
}

/// out(n) = a(n) + b(n); out may alias a or b.
template <scalar T>
void residual_add(T* out, const T* a, const T* b, std::size_t n) {
    using namespace detail;
    parallel_for(n, elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        for_each_batch<T>(i1 - i0, [&](std::size_t i, auto k) {
            store(out + i0 + i, load(a + i0 + i, k) + load(b + i0 + i, k), k);
        });
    });
}

namespace detail {
/// Applies y = f(x) batch-wise over n elements, in parallel chunks.
template <class T, class F>
inline void map_unary(T* y, const T* x, std::size_t n, F f) {
    parallel_for(n, elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        for_each_batch<T>(
            i1 - i0, [&](std::size_t i, auto k) { store(y + i0 + i, f(load(x + i0 + i, k)), k); });
    });
}
/// Applies dx += f(x, dy) (overwrite: dx = f(x, dy), dx not read) batch-wise over n elements,
/// in parallel chunks.
template <class T, class F>
inline void map_backward(T* dx, const T* x, const T* dy, std::size_t n, bool overwrite, F f) {
    parallel_for(n, elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        for_each_batch<T>(i1 - i0, [&](std::size_t i, auto k) {
            const std::size_t j = i0 + i;
            const auto g = f(load(x + j, k), load(dy + j, k));
            store(dx + j, overwrite ? g : load(dx + j, k) + g, k);
        });
    });
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Activations

namespace detail {
/// e^x for x <= 0 (or NaN), inlined: the algorithm of xsimd 8's float exp (x = k ln 2 + r with
/// ln 2 in two parts, a degree-5 polynomial in r, times 2^k; 0 below the smallest normal
/// result) without its call and its overflow branch, which softmax's x - max and GELU's -x²
/// never need. Other types use xsimd::exp.
template <class T>
[[gnu::always_inline]] inline batch<T> exp_nonpositive(const batch<T>& x) noexcept {
    if constexpr (std::is_same_v<T, float>) {
        using B = batch<float>;
        using I = xsimd::batch<std::int32_t, typename B::arch_type>;
        const B k = xsimd::nearbyint(B(1.442695040888963407359924681001892137426645954152986f) * x);
        B r = xsimd::fnma(k, xsimd::bitwise_cast<B>(I(0x3f318000)), x);  // ln 2, high bits
        r = xsimd::fnma(k, xsimd::bitwise_cast<B>(I(std::int32_t(0xb95e8083))), r);  // low bits
        B y = xsimd::fma(r, B(1.3997796e-03f), B(8.3955629e-03f));
        y = xsimd::fma(y, r, B(4.1665401e-02f));
        y = xsimd::fma(y, r, B(1.6666277e-01f));
        y = xsimd::fma(y, r, B(5.0000000e-01f));
        y = xsimd::fma(y, r * r, r) + B(1.0f);
        const B two_k = xsimd::bitwise_cast<B>((xsimd::to_int(k) + I(127)) << 23);  // 2^k
        return xsimd::select(x <= B(-88.3762626647949f), B(0.0f), y * two_k);
    } else {
        return xsimd::exp(x);
    }
}

/// Φ(x) = 0.5 (1 + erf(x / √2)) and e = exp(-x² / 2), sharing one exp. For float, erf uses
/// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, float's resolution near 1; the formula
/// PyTorch's vectorized CPU erf uses); double keeps xsimd's full-precision erf.
template <class T>
inline std::pair<batch<T>, batch<T>> normal_cdf_and_exp(batch<T> x) {
    using B = batch<T>;
    const B half(T(0.5)), z = x * B(T(1) / std::numbers::sqrt2_v<T>);
    if constexpr (std::is_same_v<T, float>) {
        const B az = xsimd::abs(z), e = exp_nonpositive<float>(-(az * az));
        const B t = B(1.0f) / xsimd::fma(B(0.3275911f), az, B(1.0f));
        B poly = xsimd::fma(B(1.061405429f), t, B(-1.453152027f));
        poly = xsimd::fma(poly, t, B(1.421413741f));
        poly = xsimd::fma(poly, t, B(-0.284496736f));
        poly = xsimd::fma(poly, t, B(0.254829592f));
        const B erf_abs = B(1.0f) - poly * t * e;  // erf(|z|)
        return {xsimd::fma(half, xsimd::copysign(erf_abs, z), half), e};
    } else {
        return {xsimd::fma(half, xsimd::erf(z), half), xsimd::exp(-(z * z))};
    }
}

/// Φ(x) = 0.5 + x P(x²) / Q(x²) for float on [-5.6, 5.6], and exactly 0 or 1 beyond (where Φ is
/// within 1.1e-8 of them); P and Q of degree 5 fitted by scripts/fit_normal_cdf.py (|error| <
/// 1e-8 in exact arithmetic, < 2.5e-7 evaluated in float: 4 ulp of 1). Ten multiply-adds, a product
/// and a division, without the exp of normal_cdf_and_exp: GELU's forward in about 0.6 the time.
/// Other types: normal_cdf_and_exp's.
template <class T>
[[gnu::always_inline]] inline batch<T> normal_cdf(const batch<T>& x) noexcept {
    if constexpr (std::is_same_v<T, float>) {
        using B = batch<float>;
        const B s = x * x;  // beyond +-5.6 (even inf / inf) the selects below replace it
        B p = xsimd::fma(B(2.214441776e-08f), s, B(6.357108407e-06f));
        p = xsimd::fma(p, s, B(1.738924548e-04f));
        p = xsimd::fma(p, s, B(4.707528521e-03f));
        p = xsimd::fma(p, s, B(3.437987180e-02f));
        p = xsimd::fma(p, s, B(3.989422218e-01f));
        B q = xsimd::fma(B(1.180227185e-06f), s, B(7.511663820e-05f));
        q = xsimd::fma(q, s, B(1.913219431e-03f));
        q = xsimd::fma(q, s, B(2.894233672e-02f));
        q = xsimd::fma(q, s, B(2.528432727e-01f));
        q = xsimd::fma(q, s, B(1.0f));
        const B phi = xsimd::select(x > B(5.6f), B(1.0f), xsimd::fma(x, p / q, B(0.5f)));
        return xsimd::select(x < B(-5.6f), B(0.0f), phi);  // exact: x Φ(x) = x or -0 there
    } else {
        return normal_cdf_and_exp<T>(x).first;
    }
}
}  // namespace detail

/// y = x Φ(x) = 0.5 x (1 + erf(x / √2)).
template <scalar T>
void gelu_forward(T* y, const T* x, std::size_t n) {
    using B = detail::batch<T>;
    detail::map_unary(y, x, n, [](B v) { return v * detail::normal_cdf<T>(v); });
}

/// dx += dy * (Φ(x) + x φ(x)) (overwrite: dx =, the same for every backward below).
template <scalar T>
void gelu_backward(T* dx, const T* x, const T* dy, std::size_t n, bool overwrite = false) {
    using B = detail::batch<T>;
    const T inv_sqrt_2pi = T(0.5) * std::numbers::inv_sqrtpi_v<T> * std::numbers::sqrt2_v<T>;
    detail::map_backward(dx, x, dy, n, overwrite, [=](B v, B g) {
        const auto [cdf, e] = detail::normal_cdf_and_exp(v);
        return g * xsimd::fma(v * B(inv_sqrt_2pi), e, cdf);
    });
}

/// y = 0.5 x (1 + tanh(u)), u = √(2/π) (x + 0.044715 x³), computed as x σ(2u) = x / (1 + e^(-2u))
/// (the same function; one exp, no cancellation).
template <scalar T>
void gelu_tanh_forward(T* y, const T* x, std::size_t n) {
    using B = detail::batch<T>;
    const T k2 = -2 * std::sqrt(T(2) / std::numbers::pi_v<T>);
    detail::map_unary(y, x, n, [=](B v) {
        const B u2 = B(k2) * xsimd::fma(B(T(0.044715)) * v * v, v, v);  // -2u
        return v / (B(T(1)) + xsimd::exp(u2));
    });
}

/// dx += dy * d/dx[gelu_tanh(x)] = dy * (s + 2 x s (1 - s) u'), s = σ(2u).
template <scalar T>
void gelu_tanh_backward(T* dx, const T* x, const T* dy, std::size_t n, bool overwrite = false) {
    using B = detail::batch<T>;
    const T k = std::sqrt(T(2) / std::numbers::pi_v<T>);
    detail::map_backward(dx, x, dy, n, overwrite, [=](B v, B g) {
        const B v2 = v * v;
        const B s =
            B(T(1)) / (B(T(1)) + xsimd::exp(B(-2 * k) * xsimd::fma(B(T(0.044715)) * v2, v, v)));
        const B du = B(k) * xsimd::fma(B(T(3 * 0.044715)), v2, B(T(1)));
        return g * xsimd::fma(B(T(2)) * v * s * (B(T(1)) - s), du, s);
    });
}

/// y = tanh(x).
template <scalar T>
void tanh_forward(T* y, const T* x, std::size_t n) {
    detail::map_unary(y, x, n, [](detail::batch<T> v) { return xsimd::tanh(v); });
}

/// dx += dy * (1 - y²), from the forward output y.
template <scalar T>
void tanh_backward(T* dx, const T* y, const T* dy, std::size_t n, bool overwrite = false) {
    using B = detail::batch<T>;
    detail::map_backward(dx, y, dy, n, overwrite, [](B v, B g) { return g * (B(T(1)) - v * v); });
}

/// y = x sigmoid(x) (SiLU).
template <scalar T>
void silu_forward(T* y, const T* x, std::size_t n) {
    using B = detail::batch<T>;
    detail::map_unary(y, x, n, [](B v) { return v / (B(T(1)) + xsimd::exp(-v)); });
}

/// dx += dy sigmoid(x) (1 + x (1 - sigmoid(x))).
template <scalar T>
void silu_backward(T* dx, const T* x, const T* dy, std::size_t n, bool overwrite = false) {
    using B = detail::batch<T>;
    detail::map_backward(dx, x, dy, n, overwrite, [](B v, B g) {
        const B s = B(T(1)) / (B(T(1)) + xsimd::exp(-v));
        return g * s * (B(T(1)) + v * (B(T(1)) - s));
    });
}

/// y = max(x, 0).
template <scalar T>
void relu_forward(T* y, const T* x, std::size_t n) {
    using B = detail::batch<T>;
    detail::map_unary(y, x, n, [](B v) { return xsimd::select(v > B(T(0)), v, B(T(0))); });
}

/// y = f(x) rounded to bf16 (round_to: to nearest even) over n floats, f(out, in, m) writing m
/// values of the activation in fp32: each chunk into a per-thread scratch (in L1), then rounded.
/// For an activation whose only readers are bf16 products, which round it so anyway.
template <class F>
void map_to_bf16(bf16* y, const float* x, std::size_t n, F f) {
    constexpr std::size_t chunk = 4096;  // under elementwise_grain: f runs on the calling thread
    static_assert(chunk <= detail::elementwise_grain);
    detail::parallel_for(n, chunk, [&](std::size_t i0, std::size_t i1) {
        float* t = detail::scratch<float, 18>(chunk);
        f(t, x + i0, i1 - i0);
        bf16_detail::round_to(y + i0, t, i1 - i0);
    });
}

/// dx += dy where x > 0 (0 at x = 0, as PyTorch).
template <scalar T>
void relu_backward(T* dx, const T* x, const T* dy, std::size_t n, bool overwrite = false) {
    using B = detail::batch<T>;
    detail::map_backward(dx, x, dy, n, overwrite,
                         [](B v, B g) { return xsimd::select(v > B(T(0)), g, B(T(0))); });
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// out = (x - mean) * rstd * weight + bias per row of C; saves mean and rstd per row.
template <scalar T>
void layer_norm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                        std::size_t rows, std::size_t C, T eps) {
    using namespace detail;
    using B = batch<T>;
    parallel_for(rows, row_grain(C), [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const T* xr = x + r * C;
            const T m =
                reduce_add(row_sum<T>(C, [&](std::size_t c, auto n) { return load(xr + c, n); })) /
                T(C);
            const B var = row_sum<T>(C, [&](std::size_t c, auto n) {
                // padded lanes would add m² each: load m as their fill value so they add 0
                const B d = load(xr + c, n, m) - B(m);
                return d * d;
            });
            const T s = T(1) / std::sqrt(reduce_add(var) / T(C) + eps);
            for_each_batch<T>(C, [&](std::size_t c, auto n) {
                const B norm = (load(xr + c, n) - B(m)) * B(s);
                store(out + r * C + c, xsimd::fma(norm, load(weight + c, n), load(bias + c, n)), n);
            });
            mean[r] = m;
            rstd[r] = s;
        }
    });
}

/// dx += ... (overwrite: dx = ..., dx not read), dweight += ..., dbias += ... for
/// layer_norm_forward (using its saved mean, rstd).
/// One pass over x and dout: blocks of 32 rows run in parallel, each computing dx and its own
/// partial sums of dweight and dbias; the partials are then added in block order, so the result
/// does not depend on the thread count.
template <scalar T>
void layer_norm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight,
                         const T* mean, const T* rstd, std::size_t rows, std::size_t C,
                         bool overwrite = false) {
    using namespace detail;
    using B = batch<T>;
    constexpr std::size_t block_rows = 32;
    const std::size_t blocks = (rows + block_rows - 1) / block_rows;
    T* partial = gemm_detail::scratch<T, 2>(blocks * 2 * C);  // (blocks, 2, C): dbias, dweight
    parallel_for(rows, block_rows, [&](std::size_t r0, std::size_t r1) {
        T* pb = partial + (r0 / block_rows) * 2 * C;  // this block's dbias partial
        T* pw = pb + C;                               // and dweight partial
        std::fill_n(pb, 2 * C, T(0));
        for (std::size_t r = r0; r < r1; ++r) {
            const T* xr = x + r * C;
            const T* gr = dout + r * C;
            const B m(mean[r]), s(rstd[r]);
            const B sg = row_sum<T>(
                C, [&](std::size_t c, auto n) { return load(weight + c, n) * load(gr + c, n); });
            const B sgn = row_sum<T>(C, [&](std::size_t c, auto n) {
                return load(weight + c, n) * load(gr + c, n) * ((load(xr + c, n) - m) * s);
            });
            const B mean_g(reduce_add(sg) / T(C)), mean_gn(reduce_add(sgn) / T(C));
            for_each_batch<T>(C, [&](std::size_t c, auto n) {
                const B norm = (load(xr + c, n) - m) * s;
                const B g = load(gr + c, n);
                const B wg = load(weight + c, n) * g;
                T* d = dx + r * C + c;
                const B v = wg - mean_g - norm * mean_gn;
                store(d, overwrite ? v * s : xsimd::fma(v, s, load(d, n)), n);
                store(pb + c, load(pb + c, n) + g, n);
                store(pw + c, xsimd::fma(norm, g, load(pw + c, n)), n);
            });
        }
    });
    parallel_for(C, column_chunk<T>(C), [&](std::size_t c0, std::size_t c1) {
        accumulate_columns(dbias, c0, c1, blocks, [&](std::size_t k, std::size_t c, auto n) {
            return load(partial + k * 2 * C + c, n);
        });
        accumulate_columns(dweight, c0, c1, blocks, [&](std::size_t k, std::size_t c, auto n) {
            return load(partial + k * 2 * C + C + c, n);
        });
    });
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// out(r, :) = x(r, :) * rstd(r) * weight, rstd(r) = 1 / sqrt(mean(x(r, :)²) + eps) (saved).
template <scalar T>
void rms_norm_forward(T* out, T* rstd, const T* x, const T* weight, std::size_t rows, std::size_t C,
                      T eps) {
    using namespace detail;
    using B = batch<T>;
    parallel_for(rows, row_grain(C), [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const T* xr = x + r * C;
            const B ms = row_sum<T>(C, [&](std::size_t c, auto n) {
                const B v = load(xr + c, n);
                return v * v;
            });
            const T s = T(1) / std::sqrt(reduce_add(ms) / T(C) + eps);
            for_each_batch<T>(C, [&](std::size_t c, auto n) {
                store(out + r * C + c, load(xr + c, n) * B(s) * load(weight + c, n), n);
            });
            rstd[r] = s;
        }
    });
}

/// dx += rstd (w dout - x̂ mean(w dout x̂)), dweight += dout x̂ (x̂ = x rstd) for rms_norm_forward.
/// Blocks of 32 rows in parallel with their own dweight partials, added in block order (the
/// result does not depend on the thread count), as layer_norm_backward.
template <scalar T>
void rms_norm_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd,
                       std::size_t rows, std::size_t C) {
    using namespace detail;
    using B = batch<T>;
    constexpr std::size_t block_rows = 32;
    const std::size_t blocks = (rows + block_rows - 1) / block_rows;
    T* partial = gemm_detail::scratch<T, 2>(blocks * C);  // (blocks, C): dweight
    parallel_for(rows, block_rows, [&](std::size_t r0, std::size_t r1) {
        T* pw = partial + (r0 / block_rows) * C;
        std::fill_n(pw, C, T(0));
        for (std::size_t r = r0; r < r1; ++r) {
            const T* xr = x + r * C;
            const T* gr = dout + r * C;
            const B s(rstd[r]);
            const B sgn = row_sum<T>(C, [&](std::size_t c, auto n) {
                return load(weight + c, n) * load(gr + c, n) * (load(xr + c, n) * s);
            });
            const B mean_gn(reduce_add(sgn) / T(C));
            for_each_batch<T>(C, [&](std::size_t c, auto n) {
                const B norm = load(xr + c, n) * s;
                const B g = load(gr + c, n);
                T* d = dx + r * C + c;
                store(d, xsimd::fma(load(weight + c, n) * g - norm * mean_gn, s, load(d, n)), n);
                store(pw + c, xsimd::fma(norm, g, load(pw + c, n)), n);
            });
        }
    });
    parallel_for(C, column_chunk<T>(C), [&](std::size_t c0, std::size_t c1) {
        accumulate_columns(dweight, c0, c1, blocks, [&](std::size_t k, std::size_t c, auto n) {
            return load(partial + k * C + c, n);
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Attention softmax

/// The number of keys query q sees under a causal mask: those with k <= q + Tk - Tq.
inline std::size_t causal_keys(std::size_t q, std::size_t Tq, std::size_t Tk) {
    return q + Tk + 1 <= Tq ? 0 : std::min(Tk, q + Tk + 1 - Tq);
}

namespace detail {
/// R rows of softmax_forward at once, all with the same L: row r of p (row stride ldp) =
/// softmax over the first L keys of scale * s_r + mask (s row stride lds; mask may be null),
/// zeros past L and for a row with every key dropped. p may be s. The rows are independent
/// work interleaved key block by key block, so one row's reductions (max, sum) overlap the
/// others' instead of stalling on their latency; every element's arithmetic is the same for
/// any R.
template <std::size_t R, class T>
inline void softmax_rows(T* p, std::size_t ldp, const T* s, std::size_t lds, const T* mask, T scale,
                         std::size_t L, std::size_t Tk) {
    using B = batch<T>;
    constexpr T ninf = -std::numeric_limits<T>::infinity();
    if (L < Tk)
        for (std::size_t r = 0; r < R; ++r) std::fill(p + r * ldp + L, p + r * ldp + Tk, T(0));
    if (L == 0) return;
    // pass 1: z = scale * s + mask (one rounding) into p, and each row's max
    B mx[R];
    T tail_max[R];
#pragma GCC unroll 16
    for (std::size_t r = 0; r < R; ++r) mx[r] = B(ninf), tail_max[r] = ninf;
    const B vs(scale);
    for_each_batch<T>(L, [&](std::size_t k, auto n) {
        const B mk = mask ? load(mask + k, n) : B(T(0));
#pragma GCC unroll 16
        for (std::size_t r = 0; r < R; ++r) {
            const B sv = load(s + r * lds + k, n);
            const B z = mask ? xsimd::fma(vs, sv, mk) : vs * sv;
            store(p + r * ldp + k, z, n);
            // max as the reference takes it (z > mx): a NaN score never becomes the maximum
            if (n == width<T>)
                mx[r] = xsimd::select(z > mx[r], z, mx[r]);
            else
                for (std::size_t j = k; j < k + n; ++j)
                    if (p[r * ldp + j] > tail_max[r]) tail_max[r] = p[r * ldp + j];
        }
    });
    T ms[R];
    B m[R], sum[R];
#pragma GCC unroll 16
    for (std::size_t r = 0; r < R; ++r) {
        ms[r] = std::max(reduce_max(mx[r]), tail_max[r]);  // both NaN-free
        m[r] = B(ms[r]), sum[r] = B(T(0));
    }
    // pass 2: exp and sum (exp(-inf) = 0 in padding lanes)
    for_each_batch<T>(L, [&](std::size_t k, auto n) {
#pragma GCC unroll 16
        for (std::size_t r = 0; r < R; ++r) {
            const B e = exp_nonpositive<T>(load(p + r * ldp + k, n, ninf) - m[r]);
            store(p + r * ldp + k, e, n);
            sum[r] += e;
        }
    });
    // pass 3: normalize; a row whose keys are all dropped (max -inf) gets zeros
    B inv[R];
    for (std::size_t r = 0; r < R; ++r) {
        if (ms[r] == ninf) {
            std::fill_n(p + r * ldp, L, T(0));
            inv[r] = B(T(0));
        } else {
            inv[r] = B(T(1) / reduce_add(sum[r]));
        }
    }
    for_each_batch<T>(L, [&](std::size_t k, auto n) {
#pragma GCC unroll 16
        for (std::size_t r = 0; r < R; ++r)
            store(p + r * ldp + k, load(p + r * ldp + k, n) * inv[r], n);
    });
}

/// One row of softmax_forward: p(Tk) = softmax over the first L keys of scale * s + mask (mask
/// may be null), zeros past L and for a row with every key dropped. p may be s.
template <class T>
inline void softmax_row(T* p, const T* s, const T* mask, T scale, std::size_t L, std::size_t Tk) {
    softmax_rows<1>(p, Tk, s, Tk, mask, scale, L, Tk);
}
}  // namespace detail

/// probs(B,H,Tq,Tk) = softmax over k of (scale * scores + key_mask(B,Tk)); key_mask may be null.
/// causal also drops the keys after the query (k > q + Tk - Tq). A row whose keys are all
/// dropped gets zeros.
template <scalar T>
void softmax_forward(T* probs, const T* scores, const T* key_mask, T scale, std::size_t Bn,
                     std::size_t H, std::size_t Tq, std::size_t Tk, bool causal = false) {
    using namespace detail;
    const std::size_t rows = Bn * H * Tq;
    parallel_for(rows, row_grain(Tk), [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            // causal: only the first L keys are visible; the rest get probability 0
            const std::size_t L = causal ? causal_keys(r % Tq, Tq, Tk) : Tk;
            detail::softmax_row(probs + r * Tk, scores + r * Tk,
                                key_mask ? key_mask + (r / (H * Tq)) * Tk : nullptr, scale, L, Tk);
        }
    });
}

/// dscores(rows, Tk) (+)= scale * p * (g - Σ_k p g) with g = dp, or, when `keep` is given (the
/// mask of a dropout applied to the probabilities), g = dp * keep * keep_scale: the backward of
/// the softmax and of that dropout in one pass over the rows. accumulate = false overwrites
/// dscores (no zeroing pass before it). Out = bf16 (T = float, accumulate false) keeps dscores in
/// bf16, rounded to nearest even: the bf16 products that read it round it so anyway.
template <scalar T, class Out = T>
void softmax_backward(Out* dscores, const T* probs, const T* dprobs, T scale, std::size_t rows,
                      std::size_t Tk, const std::uint8_t* keep = nullptr, T keep_scale = T(1),
                      bool accumulate = true) {
    using namespace detail;
    using B = batch<T>;
    constexpr bool to_bf16 = std::is_same_v<Out, bf16>;
    static_assert(std::is_same_v<Out, T> || (to_bf16 && std::is_same_v<T, float>),
                  "softmax_backward writes T, or bf16 from float");
    if (to_bf16 && accumulate)
        throw error(errc::invalid_argument, "softmax_backward",
                    "a bf16 dscores is written, not accumulated (accumulate = false)");
    parallel_for(rows, row_grain(Tk), [&](std::size_t r0, std::size_t r1) {
        // g of one row, through the dropout mask, in a per-thread scratch row (stays in L1)
        T* __restrict g_row = keep ? scratch<T, 7>(Tk) : nullptr;
        const T ks = keep_scale;  // a local: a captured reference could alias dscores
        for (std::size_t r = r0; r < r1; ++r) {
            const T* p = probs + r * Tk;
            const T* dp = dprobs + r * Tk;
            if (keep) {
                const std::uint8_t* __restrict m = keep + r * Tk;
                for (std::size_t k = 0; k < Tk; ++k) g_row[k] = dp[k] * (m[k] ? ks : T(0));
                dp = g_row;
            }
            const B dot = row_sum<T>(
                Tk, [&](std::size_t k, auto n) { return load(p + k, n) * load(dp + k, n); });
            const B d(reduce_add(dot));
            if constexpr (to_bf16) {  // the row in fp32 (scratch), then rounded
                T* __restrict f = scratch<T, 8>(Tk);
                for_each_batch<T>(Tk, [&](std::size_t k, auto n) {
                    store(f + k, B(scale) * load(p + k, n) * (load(dp + k, n) - d), n);
                });
                bf16_detail::round_to(dscores + r * Tk, f, Tk);
            } else {
                T* ds = dscores + r * Tk;
                if (accumulate)
                    for_each_batch<T>(Tk, [&](std::size_t k, auto n) {
                        store(ds + k,
                              xsimd::fma(B(scale) * load(p + k, n), load(dp + k, n) - d,
                                         load(ds + k, n)),
                              n);
                    });
                else
                    for_each_batch<T>(Tk, [&](std::size_t k, auto n) {
                        store(ds + k, B(scale) * load(p + k, n) * (load(dp + k, n) - d), n);
                    });
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Dropout

/// y = x * keep / (1 - p), keep(i) = [s.bits(i) >= dropout_threshold(p)]; mask gets keep (0/1).
/// The mask is a function of (stream, i) only: identical to the reference on any thread count.
/// Out = bf16 (T = float) keeps y in bf16, rounded to nearest even (the attention probabilities
/// of a bf16 training step, which only bf16 products read).
template <scalar T, class Out = T>
void dropout_forward(Out* y, std::uint8_t* mask, const T* x, T p, std::size_t n,
                     const random_stream& s) {
    static_assert(std::is_same_v<Out, T> || (std::is_same_v<Out, bf16> && std::is_same_v<T, float>),
                  "dropout_forward writes T, or bf16 from float");
    const std::uint32_t thr = dropout_threshold(double(p));
    const bool all_drop = !(p < T(1));
    const T inv_keep = all_drop ? T(0) : T(1) / (T(1) - p);
    detail::parallel_for(n, detail::elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        // local copies and a restrict mask: byte stores to the mask could otherwise alias
        // anything the loops read, which stops vectorization
        const random_stream st = s;
        const std::uint32_t threshold = thr;
        const bool drop_all = all_drop;
        const T inv = inv_keep;
        Out* yl = y;  // may be x (in-place dropout)
        auto put = [](Out& o, T v) {
            if constexpr (std::is_same_v<Out, T>)
                o = v;
            else
                o.bits = std::uint16_t(bf16_detail::round_bits(v) >> 16);
        };
        std::uint8_t* __restrict ml = mask;
        const T* xl = x;
        // i0 is a multiple of 64 (the grain is): one values64() call serves 64 elements
        std::size_t i = i0;
#if defined(__AVX512F__)
        // 16 elements per step on 512-bit registers (the loop below stays scalar there, the
        // bf16 rounding above all: 3 times the time): the same values, masks and bits
        if constexpr (std::is_same_v<T, float>) {
            const __m512i vthr = _mm512_set1_epi32(static_cast<int>(threshold));
            const __m512 vinv = _mm512_set1_ps(inv);
            for (; i + 64 <= i1; i += 64) {
                alignas(64) std::uint32_t w[2][4][8];
                alignas(64) float yv[64];  // bf16 output: rounded 64 at a time
                st.values64(i >> 6, w);
                for (std::size_t c = 0; c < 64; c += 16) {
                    const __mmask16 keep = drop_all ? __mmask16(0)
                                                    : _mm512_cmpge_epu32_mask(
                                                          _mm512_load_si512(&w[0][0][0] + c), vthr);
                    const __m512 v =
                        _mm512_mul_ps(_mm512_loadu_ps(xl + i + c),
                                      _mm512_maskz_mov_ps(keep, vinv));  // x * 0 dropped
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(ml + i + c),
                                     _mm512_cvtepi32_epi8(_mm512_maskz_set1_epi32(keep, 1)));
                    if constexpr (std::is_same_v<Out, T>)
                        _mm512_storeu_ps(yl + i + c, v);
                    else
                        _mm512_store_ps(yv + c, v);
                }
                if constexpr (!std::is_same_v<Out, T>) bf16_detail::round_to(yl + i, yv, 64);
            }
        }
#endif
        for (; i + 64 <= i1; i += 64) {
            std::uint32_t w[2][4][8];
            st.values64(i >> 6, w);
            const std::uint32_t* bits = &w[0][0][0];
            for (std::size_t k = 0; k < 64; ++k) {
                const bool keep = !drop_all && bits[k] >= threshold;
                ml[i + k] = keep;
                put(yl[i + k], xl[i + k] * (keep ? inv : T(0)));
            }
        }
        for (; i < i1; ++i) {
            ml[i] = !drop_all && st.bits(i) >= threshold;
            put(yl[i], xl[i] * (ml[i] ? inv : T(0)));
        }
    });
}

/// dx += dy * mask / (1 - p) (overwrite: dx =, dx not read).
template <scalar T>
void dropout_backward(T* dx, const std::uint8_t* mask, const T* dy, T p, std::size_t n,
                      bool overwrite = false) {
    const T inv_keep = p < T(1) ? T(1) / (T(1) - p) : T(0);
    detail::parallel_for(n, detail::elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        T* dxl = dx;
        const T* dyl = dy;
        const std::uint8_t* __restrict ml = mask;
        const T inv = inv_keep;  // a local: a float captured by reference could alias dx
        if (overwrite)
            for (std::size_t i = i0; i < i1; ++i) dxl[i] = dyl[i] * (ml[i] ? inv : T(0));
        else
            for (std::size_t i = i0; i < i1; ++i) dxl[i] += dyl[i] * (ml[i] ? inv : T(0));
    });
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// out(n, C) = table(ids[i], :); ids outside [0, vocab) throw out_of_range before any write.
template <scalar T>
void embedding_forward(T* out, const token_id* ids, const T* table, std::size_t n, std::size_t C,
                       std::size_t vocab) {
    check_ids(ids, n, vocab, "embedding_forward");
    detail::parallel_for(n, detail::row_grain(C), [&](std::size_t i0, std::size_t i1) {
        for (std::size_t i = i0; i < i1; ++i)
            std::copy_n(table + std::size_t(ids[i]) * C, C, out + i * C);
    });
}

/// dtable(ids[i], :) += dout(i, :) except for ids equal to padding_idx (PyTorch's padding_idx:
/// that row gets no gradient); split by columns, so repeated ids never race.
template <scalar T>
void embedding_backward(T* dtable, const token_id* ids, const T* dout, std::size_t n, std::size_t C,
                        std::size_t vocab, token_id padding_idx = -1) {
    using namespace detail;
    check_ids(ids, n, vocab, "embedding_backward");
    parallel_for(C, column_chunk<T>(C), [&](std::size_t c0, std::size_t c1) {
        for (std::size_t i = 0; i < n; ++i) {
            if (ids[i] == padding_idx) continue;
            T* d = dtable + std::size_t(ids[i]) * C + c0;
            const T* g = dout + i * C + c0;
            for_each_batch<T>(c1 - c0, [&](std::size_t c, auto k) {
                store(d + c, load(d + c, k) + load(g + c, k), k);
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy with logits

namespace detail {
/// max and Σ exp(z - max) of one row of V logits.
template <class T>
inline std::pair<T, T> row_logsumexp_parts(const T* z, std::size_t V) {
    using B = batch<T>;
    constexpr T ninf = -std::numeric_limits<T>::infinity();
    B mx(ninf);
    for_each_batch<T>(V, [&](std::size_t v, auto n) { mx = xsimd::max(mx, load(z + v, n, ninf)); });
    const T m = reduce_max(mx);
    B sum(T(0));
    for_each_batch<T>(
        V, [&](std::size_t v, auto n) { sum += xsimd::exp(load(z + v, n, ninf) - B(m)); });
    return {m, reduce_add(sum)};
}
}  // namespace detail

/// losses(rows) = logsumexp(logits(r,:)) - logits(r, target), 0 where ignored; returns the count.
template <scalar T>
std::size_t cross_entropy_forward(T* losses, const T* logits, const token_id* targets,
                                  std::size_t rows, std::size_t V, token_id ignore_index = -100) {
    check_targets(targets, rows, V, ignore_index);
    detail::parallel_for(rows, detail::row_grain(V), [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            if (targets[r] == ignore_index) {
                losses[r] = T(0);
                continue;
            }
            const T* z = logits + r * V;
            const auto [m, s] = detail::row_logsumexp_parts(z, V);
            losses[r] = std::log(s) + m - z[targets[r]];
        }
    });
    std::size_t count = 0;
    for (std::size_t r = 0; r < rows; ++r) count += targets[r] != ignore_index;
    return count;
}

/// dlogits(r,:) += dlosses[r] * (softmax(logits(r,:)) - onehot(target)); ignored rows untouched.
template <scalar T>
void cross_entropy_backward(T* dlogits, const T* logits, const token_id* targets, const T* dlosses,
                            std::size_t rows, std::size_t V, token_id ignore_index = -100) {
    using namespace detail;
    using B = batch<T>;
    check_targets(targets, rows, V, ignore_index);
    parallel_for(rows, row_grain(V), [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            if (targets[r] == ignore_index) continue;
            const T* z = logits + r * V;
            const auto parts = row_logsumexp_parts(z, V);  // (max, sum of exp): no structured
            const T m = std::get<0>(parts), s = std::get<1>(parts);  // binding, for Clang 14
            const B scale(dlosses[r] / s);
            T* d = dlogits + r * V;
            for_each_batch<T>(V, [&](std::size_t v, auto n) {
                store(d + v, xsimd::fma(xsimd::exp(load(z + v, n) - B(m)), scale, load(d + v, n)),
                      n);
            });
            d[targets[r]] -= dlosses[r];
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Reductions

namespace detail {
/// Σ f(x_i) over [0, n): SIMD partial sums over blocks of 1024 added in double, 64 fixed chunks
/// in parallel, chunk sums added in order (deterministic on any thread count). A block whose
/// partial sum overflows T is summed again in double with f_double.
template <class T, class F, class G>
inline double reduce_sum(const T* x, std::size_t n, F f, G f_double) {
    constexpr std::size_t max_chunks = 64, block = 1024;
    const std::size_t grain =
        std::max<std::size_t>(elementwise_grain, (n + max_chunks - 1) / max_chunks);
    double partial[max_chunks] = {};
    parallel_for(n, grain, [&](std::size_t i0, std::size_t i1) {
        double total = 0;
        for (std::size_t b0 = i0; b0 < i1; b0 += block) {
            const std::size_t b1 = std::min(i1, b0 + block);
            batch<T> acc0(T(0)), acc1(T(0));
            std::size_t i = b0;
            for (; i + 2 * width<T> <= b1; i += 2 * width<T>) {
                acc0 += f(batch<T>::load_unaligned(x + i));
                acc1 += f(batch<T>::load_unaligned(x + i + width<T>));
            }
            for_each_batch<T>(b1 - i,
                              [&](std::size_t j, auto k) { acc0 += f(load(x + i + j, k)); });
            double t = double(reduce_add(acc0 + acc1));
            if (!std::isfinite(t)) {  // overflowed T (e.g. float squares > 3e38): redo in double
                t = 0;
                for (std::size_t j = b0; j < b1; ++j) t += f_double(double(x[j]));
            }
            total += t;
        }
        partial[i0 / grain] = total;
    });
    double s = 0;
    for (std::size_t c = 0; c < max_chunks; ++c) s += partial[c];
    return s;
}
}  // namespace detail

/// Σ x.
template <scalar T>
double sum(const T* x, std::size_t n) {
    return detail::reduce_sum(
        x, n, [](detail::batch<T> v) { return v; }, [](double v) { return v; });
}

/// Σ x².
template <scalar T>
double sum_squares(const T* x, std::size_t n) {
    return detail::reduce_sum(
        x, n, [](detail::batch<T> v) { return v * v; }, [](double v) { return v * v; });
}

/// √(Σ over tensors of Σ x²): the global norm of gradient clipping.
template <scalar T>
double global_l2_norm(std::span<const std::span<const T>> tensors) {
    double s = 0;
    for (auto t : tensors) s += sum_squares(t.data(), t.size());
    return std::sqrt(s);
}

/// x *= alpha.
template <scalar T>
void scale(T* x, T alpha, std::size_t n) {
    detail::map_unary(x, x, n, [=](detail::batch<T> v) { return v * detail::batch<T>(alpha); });
}

// ---------------------------------------------------------------------------------------------
// Optimizer updates (same operation order as PyTorch, see backends::reference)

/// One AdamW step (torch.optim.AdamW semantics, decoupled weight decay, bias correction).
template <scalar T>
void adamw_update(T* param, const T* grad, T* m, T* v, std::size_t n, const adamw_params& h) {
    using namespace detail;
    using B = batch<T>;
    const double t = double(h.step);
    const B decay(T(1.0 - h.lr * h.weight_decay)), w1(T(1.0 - h.beta1)), b2(T(h.beta2)),
        w2(T(1.0 - h.beta2)), eps(T(h.eps));
    const B neg_step(-T(h.lr / (1.0 - std::pow(h.beta1, t))));
    const B bc2_sqrt(T(std::sqrt(1.0 - std::pow(h.beta2, t))));
    const B gs(T(h.grad_scale));  // scale's product (rounded: not fused into what uses it)
    parallel_for(n, elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        for_each_batch<T>(i1 - i0, [&](std::size_t i, auto k) {
            const std::size_t j = i0 + i;
            const B g = rounded(load(grad + j, k) * gs);
            B mj = load(m + j, k), vj = load(v + j, k);
            mj += w1 * (g - mj);
            vj = vj * b2 + w2 * g * g;
            const B denom = xsimd::sqrt(vj) / bc2_sqrt + eps;
            store(param + j, load(param + j, k) * decay + neg_step * (mj / denom), k);
            store(m + j, mj, k);
            store(v + j, vj, k);
        });
    });
}

/// One SGD step (torch.optim.SGD semantics: coupled weight decay, momentum, dampening, Nesterov).
template <scalar T>
void sgd_update(T* param, const T* grad, T* buf, std::size_t n, const sgd_params& h) {
    using namespace detail;
    using B = batch<T>;
    const B wd(T(h.weight_decay)), mu(T(h.momentum)), damp(T(1.0 - h.dampening)), neg_lr(-T(h.lr));
    const B gs(T(h.grad_scale));
    parallel_for(n, elementwise_grain, [&](std::size_t i0, std::size_t i1) {
        for_each_batch<T>(i1 - i0, [&](std::size_t i, auto k) {
            const std::size_t j = i0 + i;
            const B p = load(param + j, k);
            B g = rounded(load(grad + j, k) * gs);
            if (h.weight_decay != 0) g = g + wd * p;
            if (h.momentum != 0) {
                const B b = h.first_step ? g : load(buf + j, k) * mu + damp * g;
                store(buf + j, b, k);
                g = h.nesterov ? g + mu * b : b;
            }
            store(param + j, p + neg_lr * g, k);
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Attention for inference

/// Multi-head attention for inference, keeping nothing for backward: for every batch b and head
/// h, P = softmax(scale * Q_h K_hᵀ + key_mask(b) [causal]) and out_h = P V_h, where K_h, V_h are
/// the (T, d) column blocks h*d .. h*d+d of k, v ((B*T, ld) rows), Q_h the same block of the
/// first Tq rows of each sequence in q ((B*Tq, ldq) rows: Tq = T for every position, Tq = 1 for
/// the first token only) and out_h that block of out ((B*Tq, ldo) rows). Causal: query i sees
/// keys 0 .. i. One (b, h) pair per unit of work: its K_hᵀ and V_h are packed once into
/// the GEMM's panels (in L1/L2), then MR queries at a time get their scores, softmax and output
/// while the score rows stay in L1. No (B, H, T, T) buffer, no per-call weight packing, one
/// parallel region. With Tq = T the arithmetic of every element is that of gemm() +
/// softmax_forward() + gemm() (same micro-kernel, same K blocks, same row softmax), so the
/// results equal the training-mode path's bit for bit; with Tq < T the queries are the first
/// positions (softmax_forward's causal mask would align them to the last ones instead).
template <scalar T>
void attention_inference(T* out, std::size_t ldo, const T* q, std::size_t ldq, const T* k,
                         const T* v, std::size_t ld, const T* key_mask, T scale, std::size_t Bn,
                         std::size_t H, std::size_t Tq, std::size_t Tn, std::size_t d,
                         bool causal = false) {
    using blk = gemm_detail::blocking<T>;
    // scores: the GEMM's panels (NR keys); outputs: panels of two vectors (a head of 32 or 64
    // columns fills them, where 3-vector panels would compute a third of zeros)
    constexpr std::size_t MR = blk::MR, NR = blk::NR, NV_O = 2, NR_O = NV_O * blk::W;
    if (Bn == 0 || H == 0 || Tn == 0 || d == 0 || Tq == 0) return;
    if (Tq > Tn)
        throw error(errc::shape_mismatch, "attention_inference",
                    ftune::detail::cat(Tq, " queries per sequence but only ", Tn, " keys"));
    const std::size_t KC = gemm_detail::runtime_blocking<T>().kc;
    auto depth = [KC](std::size_t K) {  // gemm()'s K blocks: at most KC, split evenly
        const std::size_t n = (K + KC - 1) / KC;
        return (K + n - 1) / n;
    };
    const std::size_t kc_s = depth(d), kc_o = depth(Tn);
    const std::size_t panels_t = (Tn + NR - 1) / NR, panels_d = (d + NR_O - 1) / NR_O;
    const std::size_t ld_s = panels_t * NR;  // row stride of the score tile
    detail::parallel_for(Bn * H, 1, [&](std::size_t u0, std::size_t u1) {
        T* kt = gemm_detail::scratch<T, 3>(panels_t * NR * d);     // K_hᵀ (d, T) in panels
        T* vp = gemm_detail::scratch<T, 4>(panels_d * NR_O * Tn);  // V_h (T, d) in panels
        T* st = gemm_detail::scratch<T, 5>(MR * ld_s);             // (MR, T) scores, then probs
        for (std::size_t u = u0; u < u1; ++u) {
            const std::size_t b = u / H, h = u % H;
            const T* qh = q + b * Tq * ldq + h * d;
            const T* kh = k + b * Tn * ld + h * d;
            const T* vh = v + b * Tn * ld + h * d;
            const T* mask = key_mask ? key_mask + b * Tn : nullptr;
            for (std::size_t pc = 0; pc < d; pc += kc_s) {
                const std::size_t kc = std::min(kc_s, d - pc);
                for (std::size_t p = 0; p < panels_t; ++p)
                    gemm_detail::pack_b_panel(kt + pc * ld_s + p * kc * NR, kh, ld, transpose::yes,
                                              pc, kc, p * NR, std::min(NR, Tn - p * NR));
            }
            for (std::size_t pc = 0; pc < Tn; pc += kc_o) {
                const std::size_t kc = std::min(kc_o, Tn - pc);
                for (std::size_t p = 0; p < panels_d; ++p)
                    gemm_detail::pack_b_panel<T, NR_O>(vp + pc * panels_d * NR_O + p * kc * NR_O,
                                                       vh, ld, transpose::no, pc, kc, p * NR_O,
                                                       std::min(NR_O, d - p * NR_O));
            }
            for (std::size_t i0 = 0; i0 < Tq; i0 += MR) {
                const std::size_t mr = std::min(MR, Tq - i0);
                // S = Q_h Kᵀ for queries i0 .. i0+mr: (mr, T)
                for (std::size_t pc = 0; pc < d; pc += kc_s) {
                    const std::size_t kc = std::min(kc_s, d - pc);
                    gemm_detail::strided_rows<T> a;
                    for (std::size_t i = 0; i < MR; ++i)
                        a.rows[i] = qh + (i0 + std::min(i, mr - 1)) * ldq + pc;
                    for (std::size_t p = 0; p < panels_t; ++p)
                        gemm_detail::micro_kernel_rows(
                            kc, a, kt + pc * ld_s + p * kc * NR, st + p * NR, ld_s, mr,
                            std::min(NR, Tn - p * NR), T(1), T(0), pc == 0,
                            static_cast<const T*>(nullptr), std::size_t(0));
                }
                if (!causal && mr == MR)  // MR rows at once, their reductions overlapping
                    detail::softmax_rows<MR>(st, ld_s, st, ld_s, mask, scale, Tn, Tn);
                else
                    for (std::size_t i = 0; i < mr; ++i)
                        detail::softmax_rows<1>(st + i * ld_s, ld_s, st + i * ld_s, ld_s, mask,
                                                scale, causal ? std::min(Tn, i0 + i + 1) : Tn, Tn);
                // out_h = P V_h for these queries: (mr, d)
                for (std::size_t pc = 0; pc < Tn; pc += kc_o) {
                    const std::size_t kc = std::min(kc_o, Tn - pc);
                    gemm_detail::strided_rows<T> a;
                    for (std::size_t i = 0; i < MR; ++i)
                        a.rows[i] = st + std::min(i, mr - 1) * ld_s + pc;
                    for (std::size_t p = 0; p < panels_d; ++p)
                        gemm_detail::micro_kernel_rows<T, gemm_detail::strided_rows<T>, NV_O>(
                            kc, a, vp + pc * panels_d * NR_O + p * kc * NR_O,
                            out + (b * Tq + i0) * ldo + h * d + p * NR_O, ldo, mr,
                            std::min(NR_O, d - p * NR_O), T(1), T(0), pc == 0, nullptr, 0);
                }
            }
        }
    });
}

/// attention_inference with bf16 products (prepared bf16 inference): Q_h, K_h, the
/// probabilities and V_h rounded to bf16, the sums in fp32 by gemm_bf16's kernel, the softmax in
/// fp32. Per (b, h) unit, K_hᵀ and V_h packed once; MR queries at a time (16 on AMX tiles):
/// their rounded rows, scores, softmax, rounded probabilities and output, as in the fp32 version.
/// Each product is one block of K (the kernel's sums over all of d, then all of T), which is what
/// gemm_bf16 does for K up to its depth block (256 to 768 by the L2's size): the results then equal
/// the unprepared bf16 path's (head_scores, masked_softmax, head_context) bit for bit.
/// errc::unsupported without AVX512-BF16.
inline void attention_inference_bf16(float* out, std::size_t ldo, const float* q, std::size_t ldq,
                                     const float* k, const float* v, std::size_t ld,
                                     const float* key_mask, float scale, std::size_t Bn,
                                     std::size_t H, std::size_t Tq, std::size_t Tn, std::size_t d,
                                     bool causal = false) {
    if (!bf16_supported()) throw bf16_detail::unsupported("attention_inference (bf16)");
    if (Bn == 0 || H == 0 || Tn == 0 || d == 0 || Tq == 0) return;
    if (Tq > Tn)
        throw error(errc::shape_mismatch, "attention_inference",
                    ftune::detail::cat(Tq, " queries per sequence but only ", Tn, " keys"));
#if FTUNE_HAS_BF16_KERNELS
    using namespace bf16_detail;
    // on AMX tiles (as gemm_bf16 then runs the unprepared path's products), 16 queries at a time
    const bool amx = amx_enabled() && FTUNE_HAS_AMX_KERNELS;
    const std::size_t QR = amx ? amx_detail::TR : MR;  // queries per block
    constexpr std::size_t PV = NR2;                    // V_h's panels
    // scores: the GEMM's panels (NR keys); outputs: panels of two vectors, as the fp32 version
    const std::size_t kp_s = pairs(d), kp_o = pairs(Tn);  // pairs along d, along the keys
    const std::size_t panels_t = (Tn + NR - 1) / NR, panels_d = (d + PV - 1) / PV;
    const std::size_t ld_s = panels_t * NR;  // row stride of the score tile
    [[maybe_unused]] const std::uint64_t run_id = amx ? amx_detail::next_run_id() : 0;
    detail::parallel_for(Bn * H, 1, [&](std::size_t u0, std::size_t u1) {
        std::uint32_t* kt = detail::scratch<std::uint32_t, 13>(panels_t * NR * kp_s);  // K_hᵀ
        std::uint32_t* vp = detail::scratch<std::uint32_t, 14>(panels_d * PV * kp_o);  // V_h
        std::uint32_t* aq = detail::scratch<std::uint32_t, 15>(QR * kp_s);             // QR queries
        std::uint32_t* ap = detail::scratch<std::uint32_t, 16>(QR * kp_o);  // their probs
        float* st = detail::scratch<float, 17>(QR * ld_s);  // (QR, T) scores, then probs
#if FTUNE_HAS_AMX_KERNELS
        if (amx) amx_detail::configure_for(run_id);
#endif
        for (std::size_t u = u0; u < u1; ++u) {
            const std::size_t b = u / H, h = u % H;
            const float* qh = q + b * Tq * ldq + h * d;
            const float* kh = k + b * Tn * ld + h * d;
            const float* vh = v + b * Tn * ld + h * d;
            const float* mask = key_mask ? key_mask + b * Tn : nullptr;
            for (std::size_t p = 0; p < panels_t; ++p)  // op(B)(c, j) = K_h[j][c]
                pack_b_panel(kt + p * kp_s * NR, kh, ld, transpose::yes, 0, d, p * NR,
                             std::min(NR, Tn - p * NR));
            for (std::size_t p = 0; p < panels_d; ++p)  // op(B)(j, c) = V_h[j][c]
                pack_b_panel<PV>(vp + p * kp_o * PV, vh, ld, transpose::no, 0, Tn, p * PV,
                                 std::min(PV, d - p * PV));
            for (std::size_t i0 = 0; i0 < Tq; i0 += QR) {
                const std::size_t mr = std::min(QR, Tq - i0);
                for (std::size_t i = 0; i < mr; ++i)
                    pair_adjacent(aq + i * kp_s, qh + (i0 + i) * ldq, d);
                // S = Q_h Kᵀ for queries i0 .. i0+mr: (mr, T)
                for (std::size_t p = 0; p < panels_t; ++p) {
                    const std::size_t n = std::min(NR, Tn - p * NR);
#if FTUNE_HAS_AMX_KERNELS
                    if (amx) {
                        amx_rows(kp_s, aq, kp_s, kt + p * kp_s * NR, st + p * NR, ld_s, mr, n, 1.0f,
                                 0.0f, true, nullptr, nullptr, 0, nullptr, 0);
                        continue;
                    }
#endif
                    kernel_rows(kp_s, aq, kp_s, kt + p * kp_s * NR, st + p * NR, ld_s, mr, n, 1.0f,
                                0.0f, true, nullptr, nullptr, 0, nullptr, 0);
                }
                for (std::size_t r0 = 0; r0 < mr; r0 += MR) {  // MR rows of the softmax at a time
                    float* sr = st + r0 * ld_s;
                    const std::size_t rows = std::min(MR, mr - r0);
                    if (!causal && rows == MR)
                        detail::softmax_rows<MR>(sr, ld_s, sr, ld_s, mask, scale, Tn, Tn);
                    else
                        for (std::size_t i = 0; i < rows; ++i)
                            detail::softmax_rows<1>(
                                sr + i * ld_s, ld_s, sr + i * ld_s, ld_s, mask, scale,
                                causal ? std::min(Tn, i0 + r0 + i + 1) : Tn, Tn);
                }
                for (std::size_t i = 0; i < mr; ++i)
                    pair_adjacent(ap + i * kp_o, st + i * ld_s, Tn);
                // out_h = P V_h for these queries: (mr, d)
                for (std::size_t p = 0; p < panels_d; ++p) {
                    float* o = out + (b * Tq + i0) * ldo + h * d + p * PV;
                    const std::size_t n = std::min(PV, d - p * PV);
#if FTUNE_HAS_AMX_KERNELS
                    if (amx) {
                        amx_rows<PV>(kp_o, ap, kp_o, vp + p * kp_o * PV, o, ldo, mr, n, 1.0f, 0.0f,
                                     true, nullptr, nullptr, 0, nullptr, 0);
                        continue;
                    }
#endif
                    kernel_rows<2>(kp_o, ap, kp_o, vp + p * kp_o * PV, o, ldo, mr, n, 1.0f, 0.0f,
                                   true, nullptr, nullptr, 0, nullptr, 0);
                }
            }
        }
    });
#else
    (void)out, (void)ldo, (void)q, (void)ldq, (void)k, (void)v, (void)ld, (void)key_mask,
        (void)scale, (void)causal;
#endif
}

/// Attention of one new query per sequence to its key/value cache (a decode step): for batch b
/// and query head h, p = softmax_j(scale q_bh · k_bj + key_mask(b, j)) over the S cached
/// positions j (the query is the last of them: causality holds) and out_bh = Σ_j p_j v_bj, where
/// k and v are key/value head h / (H / Hkv), the one h shares. q and out (B, H d); the caches k
/// and v (B, cap, Hkv d); key_mask (B, S) additive (may be null). The H / Hkv query heads of a
/// key/value head are the rows of one product each way, B read in place; one thread unless the
/// step is large (a batch of long sequences). A query whose keys are all masked gets zeros.
template <scalar T>
void attention_decode(T* out, const T* q, const T* k, const T* v, std::size_t cap,
                      const T* key_mask, T scale, std::size_t Bn, std::size_t H, std::size_t Hkv,
                      std::size_t S, std::size_t d) {
    if (Bn == 0 || H == 0 || S == 0 || d == 0) return;
    if (Hkv == 0 || H % Hkv != 0 || S > cap)
        throw error(errc::shape_mismatch, "attention_decode",
                    ftune::detail::cat(Hkv, " key/value heads must divide ", H, " query heads; ", S,
                                       " positions of a cache of ", cap));
    constexpr std::size_t MR = gemm_detail::blocking<T>::MR;
    const std::size_t group = H / Hkv, HD = H * d, Ckv = Hkv * d;
    auto units = [&](std::size_t u0, std::size_t u1) {
        T* sc = gemm_detail::scratch<T, 5>(MR * S);  // (rows, S) scores, then probs
        for (std::size_t u = u0; u < u1; ++u) {
            const std::size_t b = u / Hkv, j = u % Hkv;
            const T* kb = k + b * cap * Ckv + j * d;
            const T* vb = v + b * cap * Ckv + j * d;
            for (std::size_t g0 = 0; g0 < group; g0 += MR) {  // the group's query rows, d apart
                const std::size_t rows = std::min(MR, group - g0), h0 = j * group + g0;
                gemm_detail::few_rows_n<T>(rows, transpose::yes, S, d, T(1), q + b * HD + h0 * d, d,
                                           kb, Ckv, T(0), sc, S);
                for (std::size_t g = 0; g < rows; ++g)
                    detail::softmax_row(sc + g * S, sc + g * S,
                                        key_mask ? key_mask + b * S : nullptr, scale, S, S);
                gemm_detail::few_rows_n<T>(rows, transpose::no, d, S, T(1), sc, S, vb, Ckv, T(0),
                                           out + b * HD + h0 * d, d);
            }
        }
    };
    // a fork and join costs more than a step of one short sequence (SmolLM2: 9 heads, S < 1000)
    if (4.0 * double(Bn * H) * double(S) * double(d) < 2e6)
        units(0, Bn * Hkv);
    else
        detail::parallel_for(Bn * Hkv, 1, units);
}

}  // namespace backends::cpu
FTUNE_NAMESPACE_END
