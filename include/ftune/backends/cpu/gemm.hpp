// CPU GEMM: a packed, cache-blocked matrix product with an xsimd register-tile micro-kernel, in
// the structure of BLIS/GotoBLAS (van Zee & van de Geijn, "BLIS: a framework for rapidly
// instantiating BLAS functionality", 2015):
//
//   for jc in N step NC:                 B block (KC x NC) lives in L3
//     for pc in K step KC:
//       pack op(B)[pc:pc+KC, jc:jc+NC] into NR-wide column panels       (threads share it)
//       for ic in M step MC:             A block (MC x KC) lives in L2 (one per thread)
//         pack op(A)[ic:ic+MC, pc:pc+KC] into MR-high row panels
//         for jr in NC step NR: for ir in MC step MR:
//           micro-kernel: C[ir:ir+MR, jr:jr+NR] (+)= A panel x B panel   (MR x NR in registers)
//
// Transposes are absorbed by the packing, so all four op(A)/op(B) combinations run the same
// kernel. The micro-kernel holds an MR x NR tile of C in registers: 6 x (2 SIMD widths) with
// AVX2 (12 of 16 registers: each k step loads 2 vectors of B, broadcasts 6 values of A, issues 12
// FMAs), 8 x (3 widths) with AVX-512 (24 of 32 registers, 24 FMAs per 11 loads). KC, MC and NC
// come from the caches of the CPU found at run time (cpu_info.hpp). Eigen 3.4's kernel
// (gemm_eigen.hpp) reaches ~55-60% of the FMA peak at BERT shapes on this project's machines; this
// one is measured beside it in bench/.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>

#include "ftune/backends/cpu/cpu_info.hpp"
#include "ftune/backends/cpu/detail.hpp"
#include "ftune/backends/cpu/gemm_bf16.hpp"
#include "ftune/backends/cpu/gemm_schedule.hpp"
#include "ftune/core/tensor.hpp"
FTUNE_NAMESPACE_BEGIN
namespace backends::cpu {

namespace gemm_detail {

/// The register tile for scalar type T, fixed by the vector width the code is compiled for:
/// with 512-bit vectors (32 registers) an 8 x 3-vector tile (24 accumulators, 8 x 48 floats),
/// otherwise 6 x 2 vectors (12 of 16 registers, 6 x 16 floats with AVX2). Measured on a Zen 5
/// core with the projections of MiniLM-L12 at batch 1 (`docs/design-notes.md`): 8 x 48 ran
/// M = 32 at 199 GFLOP/s against 168 for 6 x 32 and M = 128 at 240 against 226; 6 x 64 and
/// 10 x 48 were within the noise of 8 x 48, which divides 32- and 128-token inputs evenly.
template <class T>
struct blocking {
    static constexpr std::size_t W = detail::width<T>;  ///< SIMD lanes
    static constexpr bool wide = W * sizeof(T) >= 64;   ///< 512-bit vectors
    static constexpr std::size_t MR = wide ? 8 : 6;     ///< rows of the register tile
    static constexpr std::size_t NV = wide ? 3 : 2;     ///< vectors per row of the tile
    static constexpr std::size_t NR = NV * W;           ///< columns of the register tile
};

/// Cache blocking, taken from the caches of the CPU found at run time (runtime_blocking<T>).
struct cache_blocking {
    std::size_t kc;  ///< max depth of a block: a B panel (kc x NR) is 1/8 of L2 (kc >= 128)
    std::size_t mc;  ///< rows of an A block: mc x kc is 2/5 of L2
    std::size_t nc;  ///< columns of a B block: kc x nc is half the L3 share of a logical CPU
};

/// The blocking of T on this CPU, computed once. KC is 384 wherever the L2 holds eight B panels
/// of that depth (384 beat 128-768 on Zen 3 and Zen 5); MC fills 2/5 of the L2 (Zen 3's 512 KiB
/// gives 132 rows, measured best near 144); NC half the last-level cache one logical CPU can
/// count on (the L3 divided by the CPUs sysfs says share it).
template <class T>
const cache_blocking& runtime_blocking() {
    static const cache_blocking b = [] {
        constexpr std::size_t MR = blocking<T>::MR, NR = blocking<T>::NR;
        const cpu_info& c = this_cpu();
        auto down = [](std::size_t v, std::size_t m) { return v / m * m; };
        const std::size_t kc =
            std::clamp<std::size_t>(down(c.l2 / (8 * NR * sizeof(T)), 32), 128, 384);
        const std::size_t mc =
            std::clamp<std::size_t>(down(c.l2 * 2 / 5 / (kc * sizeof(T)), MR), 4 * MR, 1024);
        const std::size_t l3_core = c.l3 / std::max<std::size_t>(1, c.l3_sharing);
        const std::size_t nc = std::clamp<std::size_t>(down(l3_core / 2 / (kc * sizeof(T)), NR),
                                                       4 * NR, down(4096, NR));
        return cache_blocking{kc, mc, nc};
    }();
    return b;
}

using detail::scratch;  // (the GEMMs' and the primitives' scratch arrays)

/// Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row panels: panel p holds, for each k, MR values
/// (rows past mc are zero).
template <class T>
void pack_a(T* dst, const T* A, std::size_t lda, transpose ta, std::size_t i0, std::size_t mc,
            std::size_t k0, std::size_t kc) {
    constexpr std::size_t MR = blocking<T>::MR;
    for (std::size_t ir = 0; ir < mc; ir += MR, dst += kc * MR) {
        const std::size_t mr = std::min(MR, mc - ir);
        if (ta == transpose::no) {  // op(A)(i, k) = A[i * lda + k]
            const T* rows[MR];
            for (std::size_t i = 0; i < MR; ++i)
                rows[i] = A + (i0 + ir + std::min(i, mr - 1)) * lda + k0;
            for (std::size_t k = 0; k < kc; ++k)
                for (std::size_t i = 0; i < MR; ++i) dst[k * MR + i] = i < mr ? rows[i][k] : T(0);
        } else {  // op(A)(i, k) = A[k * lda + i]
            for (std::size_t k = 0; k < kc; ++k) {
                const T* src = A + (k0 + k) * lda + i0 + ir;
                for (std::size_t i = 0; i < MR; ++i) dst[k * MR + i] = i < mr ? src[i] : T(0);
            }
        }
    }
}

/// Packs the NR-column panel of op(B)[k0:k0+kc, j0:j0+nr]: for each k, NR values (zero padded).
template <class T, std::size_t NR = blocking<T>::NR>
void pack_b_panel(T* dst, const T* B, std::size_t ldb, transpose tb, std::size_t k0, std::size_t kc,
                  std::size_t j0, std::size_t nr) {
    if (tb == transpose::no) {  // op(B)(k, j) = B[k * ldb + j]: rows are contiguous
        for (std::size_t k = 0; k < kc; ++k) {
            const T* src = B + (k0 + k) * ldb + j0;
            T* d = dst + k * NR;
            if (nr == NR) {
                std::copy_n(src, NR, d);
            } else {
                std::copy_n(src, nr, d);
                std::fill(d + nr, d + NR, T(0));
            }
        }
    } else {  // op(B)(k, j) = B[j * ldb + k] (x Wᵀ with W stored [out, in]): columns are contiguous
        for (std::size_t j = 0; j < NR; ++j) {
            if (j < nr) {
                const T* src = B + (j0 + j) * ldb + k0;
                for (std::size_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
            } else {
                for (std::size_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
            }
        }
    }
}

/// The A operand of the micro-kernel as packed by pack_a: MR values per k step.
template <class T>
struct packed_rows {
    const T* a;  ///< the MR-row panel
    /// Value (i, k).
    T operator()(std::size_t i, std::size_t k) const noexcept { return a[k * blocking<T>::MR + i]; }
};
/// The A operand read in place from MR row-major rows (rows past the tile repeat the last one).
template <class T>
struct strided_rows {
    const T* rows[blocking<T>::MR];  ///< the start of each row at the block's first k
    /// Value (i, k).
    T operator()(std::size_t i, std::size_t k) const noexcept { return rows[i][k]; }
};

/// One step of micro_kernel: c(R, NV vectors) += a(:, k) ⊗ b (the NR values of step k).
template <class T, std::size_t R, std::size_t NV, class A>
[[gnu::always_inline]] inline void kernel_step(detail::batch<T> (&c)[R][NV], const A& a,
                                               std::size_t k, const T* b) noexcept {
    using B = detail::batch<T>;
    B bv[NV];
#pragma GCC unroll 4
    for (std::size_t v = 0; v < NV; ++v) bv[v] = B::load_aligned(b + v * blocking<T>::W);
#pragma GCC unroll 16
    for (std::size_t i = 0; i < R; ++i) {
        const B ai(a(i, k));
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NV; ++v) c[i][v] = xsimd::fma(ai, bv[v], c[i][v]);
    }
}

/// The register-tile kernel: acc = Σ_k a(:, k) ⊗ b[k] over kc steps for R <= MR rows and NV
/// vectors of columns, then C[0:m, 0:n] = alpha * acc + (first ? beta * C : C), + bias[0:n] when
/// bias is given (after the sum). With first && beta == 0, C is not read. The arithmetic of each
/// element depends neither on how A is read nor on R or NV (a short tile at the bottom of a
/// matrix runs with R = 6, 4 or 2 instead of computing rows it throws away). Then, when given,
/// the residual tile (rows ldr apart) is added: C = (product + bias) + residual, the value
/// residual_add gives after the product. Meanwhile the prefetch_lines 64-byte cache lines from
/// `prefetch` on are prefetched, spread over the kc steps a few at a time (a burst would fill
/// the core's miss buffers and stall the kernel's own loads).
template <class T, std::size_t R = blocking<T>::MR, class A = packed_rows<T>,
          std::size_t NV = blocking<T>::NV>
inline void micro_kernel(std::size_t kc, A a, const T* __restrict b, T* C, std::size_t ldc,
                         std::size_t m, std::size_t n, T alpha, T beta, bool first,
                         const T* prefetch = nullptr, std::size_t prefetch_lines = 0,
                         const T* bias = nullptr, const T* residual = nullptr,
                         std::size_t ldr = 0) {
    using B = detail::batch<T>;
    constexpr std::size_t W = blocking<T>::W, NR = NV * W;
    static_assert(R >= 1 && R <= blocking<T>::MR && NV >= 1);
    B c[R][NV];
#pragma GCC unroll 16
    for (std::size_t i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NV; ++v) c[i][v] = B(T(0));
    // the C tile (and the residual) come into the cache while the sums run: their rows are ldc
    // apart, which no hardware prefetcher follows, and each store would wait on its line
    for (std::size_t i = 0; i < std::min(m, R); ++i)
        for (std::size_t j = 0; j < n; j += 64 / sizeof(T)) {
            __builtin_prefetch(C + i * ldc + j, 0, 3);
            if (residual) __builtin_prefetch(residual + i * ldr + j, 0, 3);
        }
    // U steps per pass, the software prefetch's lines (gemm_packed) spread evenly over the
    // passes: with one step per pass the loop's counter, compare and branch (and the prefetch's)
    // took issue slots from the FMAs where integer ALUs share the FMA ports (an Intel Xeon: the
    // batch-1 forward's products at 0.71 of the FMA peak, 0.77 with U = 4; 2026-12-05)
    constexpr std::size_t U = 4;
    const char* pf = reinterpret_cast<const char*>(prefetch);
    const std::size_t passes = kc / U;
    const std::size_t per_pass = passes ? (prefetch_lines + passes - 1) / passes : 0;
    std::size_t pf_left = prefetch_lines, k = 0;
    for (; k + U <= kc; k += U, b += U * NR) {
        for (std::size_t l = 0; l < per_pass && pf_left; ++l, --pf_left, pf += 64)
            __builtin_prefetch(pf, 0, 3);
#pragma GCC unroll 4
        for (std::size_t u = 0; u < U; ++u) kernel_step<T, R, NV>(c, a, k + u, b + u * NR);
    }
    for (; pf_left; --pf_left, pf += 64) __builtin_prefetch(pf, 0, 3);  // kc < U: no pass
    for (; k < kc; ++k, b += NR) kernel_step<T, R, NV>(c, a, k, b);
    const B va(alpha), vb(beta);
    // C = alpha * acc (+ C, or + beta * C) (+ bias) (+ residual) for vector v of row i
    auto combine = [&](const B& acc, const T* cr, std::size_t i, std::size_t v) {
        B r = alpha == T(1) ? acc : detail::rounded<T>(acc * va);
        if (!first)
            r += B::load_unaligned(cr);
        else if (beta != T(0))
            r = xsimd::fma(vb, B::load_unaligned(cr), r);
        if (bias) r += B::load_unaligned(bias + v * W);  // after the sum: C + bias, as bias_add
        if (residual) r += B::load_unaligned(residual + i * ldr + v * W);
        return r;
    };
    if (m == R && n == NR) {
#pragma GCC unroll 16
        for (std::size_t i = 0; i < R; ++i)
#pragma GCC unroll 4
            for (std::size_t v = 0; v < NV; ++v)
                combine(c[i][v], C + i * ldc + v * W, i, v).store_unaligned(C + i * ldc + v * W);
        return;
    }
    // A partial tile goes through memory: indexing c by the run-time m and n would keep every
    // accumulator on the stack (GCC: zeroed there, stored after the loop, reloaded), in the full
    // tiles too; with constant indices only they stay in registers.
    alignas(64) T sums[R][NR];
#pragma GCC unroll 16
    for (std::size_t i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NV; ++v) c[i][v].store_aligned(&sums[i][v * W]);
    // whole vectors where the columns allow, element by element past them
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t v = 0; v < NV && v * W < n; ++v) {
            T* cr = C + i * ldc + v * W;
            const B acc = B::load_aligned(&sums[i][v * W]);
            if ((v + 1) * W <= n) {
                combine(acc, cr, i, v).store_unaligned(cr);
                continue;
            }
            alignas(64) T tile[W];
            (alpha == T(1) ? acc : detail::rounded<T>(acc * va)).store_aligned(tile);
            for (std::size_t j = 0; j < n - v * W; ++j) {
                cr[j] = !first ? cr[j] + tile[j]
                               : (beta != T(0) ? std::fma(beta, cr[j], tile[j]) : tile[j]);
                if (bias) cr[j] += bias[v * W + j];
                if (residual) cr[j] += residual[i * ldr + v * W + j];
            }
        }
}

/// micro_kernel with the fewest rows (MR, or an even count) that cover m.
template <class T, class A, std::size_t NV = blocking<T>::NV>
inline void micro_kernel_rows(std::size_t kc, A a, const T* b, T* C, std::size_t ldc, std::size_t m,
                              std::size_t n, T alpha, T beta, bool first, const T* prefetch,
                              std::size_t prefetch_lines, const T* bias = nullptr,
                              const T* residual = nullptr, std::size_t ldr = 0) {
    constexpr std::size_t MR = blocking<T>::MR;
    if (m == 1)  // one row (a generated token): no duplicated row's FMAs
        micro_kernel<T, 1, A, NV>(kc, a, b, C, ldc, m, n, alpha, beta, first, prefetch,
                                  prefetch_lines, bias, residual, ldr);
    else if (m > MR - 2 || MR <= 4)
        micro_kernel<T, MR, A, NV>(kc, a, b, C, ldc, m, n, alpha, beta, first, prefetch,
                                   prefetch_lines, bias, residual, ldr);
    else if (m > 4 && MR > 6)
        micro_kernel<T, 6, A, NV>(kc, a, b, C, ldc, m, n, alpha, beta, first, prefetch,
                                  prefetch_lines, bias, residual, ldr);
    else if (m > 2)
        micro_kernel<T, 4, A, NV>(kc, a, b, C, ldc, m, n, alpha, beta, first, prefetch,
                                  prefetch_lines, bias, residual, ldr);
    else
        micro_kernel<T, 2, A, NV>(kc, a, b, C, ldc, m, n, alpha, beta, first, prefetch,
                                  prefetch_lines, bias, residual, ldr);
}

/// C(R, N) = alpha * A(R, K) * op(B)(K, N) + beta * C for a row-major A of R <= MR rows, B read
/// in place (no packing, one thread): the products of attention for one new token (a decode
/// step's query heads that share a key/value head) are too small to repay packing the cache.
/// op(B) = Bᵀ takes dot products along K; op(B) = B accumulates rows of B along N. (Its sums are
/// not in gemm()'s order: attention_decode's, not gemm()'s.)
template <std::size_t R, class T>
void few_rows(transpose tb, std::size_t N, std::size_t K, T alpha, const T* A, std::size_t lda,
              const T* B, std::size_t ldb, T beta, T* C, std::size_t ldc) {
    using V = detail::batch<T>;
    constexpr std::size_t W = blocking<T>::W;
    auto store = [&](std::size_t i, std::size_t j, T sum) {
        T& c = C[i * ldc + j];
        c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
    };
    if (tb == transpose::yes) {  // C(i, j) = A_i . B_j
        const std::size_t kv = K / W * W;
        for (std::size_t j = 0; j < N; ++j) {
            const T* bj = B + j * ldb;
            V acc[R];
#pragma GCC unroll 8
            for (std::size_t i = 0; i < R; ++i) acc[i] = V(T(0));
            for (std::size_t k = 0; k < kv; k += W) {
                const V bv = V::load_unaligned(bj + k);
#pragma GCC unroll 8
                for (std::size_t i = 0; i < R; ++i)
                    acc[i] = xsimd::fma(V::load_unaligned(A + i * lda + k), bv, acc[i]);
            }
            for (std::size_t i = 0; i < R; ++i) {
                T sum = detail::reduce_add(acc[i]);
                for (std::size_t k = kv; k < K; ++k) sum += A[i * lda + k] * bj[k];
                store(i, j, sum);
            }
        }
        return;
    }
    constexpr std::size_t NV = 2;  // C(i, j0 : j0 + NV W) = Σ_k A(i, k) B_k
    std::size_t j0 = 0;
    for (; j0 + NV * W <= N; j0 += NV * W) {
        V acc[R][NV];
#pragma GCC unroll 8
        for (std::size_t i = 0; i < R; ++i)
            for (std::size_t v = 0; v < NV; ++v) acc[i][v] = V(T(0));
        for (std::size_t k = 0; k < K; ++k) {
            const T* bk = B + k * ldb + j0;
            V bv[NV];
            for (std::size_t v = 0; v < NV; ++v) bv[v] = V::load_unaligned(bk + v * W);
#pragma GCC unroll 8
            for (std::size_t i = 0; i < R; ++i) {
                const V a(A[i * lda + k]);
                for (std::size_t v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(a, bv[v], acc[i][v]);
            }
        }
        for (std::size_t i = 0; i < R; ++i)
            for (std::size_t v = 0; v < NV; ++v) {
                alignas(64) T tile[W];
                acc[i][v].store_aligned(tile);
                for (std::size_t j = 0; j < W; ++j) store(i, j0 + v * W + j, tile[j]);
            }
    }
    for (std::size_t i = 0; i < R; ++i)  // the columns past the last whole tile
        for (std::size_t j = j0; j < N; ++j) {
            T sum = T(0);
            for (std::size_t k = 0; k < K; ++k) sum += A[i * lda + k] * B[k * ldb + j];
            store(i, j, sum);
        }
}

/// few_rows for m <= MR rows, the row count made a template argument.
template <class T, std::size_t R = blocking<T>::MR>
void few_rows_n(std::size_t m, transpose tb, std::size_t N, std::size_t K, T alpha, const T* A,
                std::size_t lda, const T* B, std::size_t ldb, T beta, T* C, std::size_t ldc) {
    if constexpr (R > 1)
        if (m < R) return few_rows_n<T, R - 1>(m, tb, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    few_rows<R>(tb, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/// C *= beta (beta == 0 sets C to zero without reading it).
template <class T>
void scale_c(T* C, std::size_t ldc, std::size_t M, std::size_t N, T beta) {
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = 0; j < N; ++j)
            C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
}

}  // namespace gemm_detail

/// How often weights were packed: inference with prepared weights must pack nothing per call
/// (tests/test_allocations.cpp, `ftune bench --mode forward`). Relaxed counters, process-wide.
struct pack_counters {
    std::atomic<std::uint64_t> per_call{0};   ///< gemm() calls: each packs op(B) for itself
    std::atomic<std::uint64_t> prepacked{0};  ///< packed_b::pack() calls (prepare_inference)
};
/// The process's pack_counters.
inline pack_counters& packing_stats() noexcept {
    static pack_counters c;
    return c;
}

/// C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C, row-major with row strides lda/ldb/ldc.
/// beta == 0 ignores C's previous content (even NaN), as BLAS does. Runs on ftune::num_threads()
/// threads for large products (one when called inside a parallel region).
template <scalar T>
void gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
          const T* A, std::size_t lda, const T* B, std::size_t ldb, T beta, T* C, std::size_t ldc) {
    using blk = gemm_detail::blocking<T>;
    constexpr std::size_t MR = blk::MR, NR = blk::NR;
    const gemm_detail::cache_blocking& cb = gemm_detail::runtime_blocking<T>();
    const std::size_t KC = cb.kc, NC = cb.nc, MC = cb.mc;
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == T(0)) {
        gemm_detail::scale_c(C, ldc, M, N, beta);
        return;
    }
    packing_stats().per_call.fetch_add(1, std::memory_order_relaxed);
    int nt = 1;
#if defined(_OPENMP)
    if (!omp_in_parallel() && 2.0 * double(M) * double(N) * double(K) >= 4e6)
        nt = omp_get_max_threads();
#endif
    // Rows per A block: at most MC, and enough blocks that every thread gets the same number.
    const std::size_t blocks =
        (M + MC * std::size_t(nt) - 1) / (MC * std::size_t(nt)) * std::size_t(nt);
    const std::size_t mc = std::max(MR, ((M + blocks - 1) / blocks + MR - 1) / MR * MR);
    const std::size_t ic_blocks = (M + mc - 1) / mc;
    // Depth of the K blocks: at most KC, split evenly (K = 400 runs as 2 x 200, not 384 + 16).
    const std::size_t kc_max = (K + (K + KC - 1) / KC - 1) / ((K + KC - 1) / KC);
    const std::size_t nc_max = std::min(NC, (N + NR - 1) / NR * NR);
    T* bpack = gemm_detail::scratch<T, 0>(kc_max * nc_max);  // shared by the team

    // Thread `tid` of `nthr` packs its share of B's panels, waits for the others, then runs its
    // share of the A blocks; a barrier ends each (jc, pc) step before B is packed again.
    auto body = [&](std::size_t tid, std::size_t nthr) {
        auto share = [&](std::size_t n) { return std::pair{tid * n / nthr, (tid + 1) * n / nthr}; };
        auto barrier = [nthr] {
            if (nthr > 1) {
                FTUNE_PRAGMA_OMP(barrier)
            }
        };
        for (std::size_t jc = 0; jc < N; jc += NC) {
            const std::size_t nc = std::min(NC, N - jc), panels = (nc + NR - 1) / NR;
            for (std::size_t pc = 0; pc < K; pc += kc_max) {
                const std::size_t kc = std::min(kc_max, K - pc);
                const bool first = pc == 0;
                const auto [p0, p1] = share(panels);
                for (std::size_t p = p0; p < p1; ++p)
                    gemm_detail::pack_b_panel(bpack + p * kc * NR, B, ldb, tb, pc, kc, jc + p * NR,
                                              std::min(NR, nc - p * NR));
                barrier();
                const auto [b0, b1] = share(ic_blocks);
                for (std::size_t bi = b0; bi < b1; ++bi) {
                    const std::size_t ic = bi * mc, mcur = std::min(mc, M - ic);
                    if (ta == transpose::no) {  // rows of A read in place, as gemm_packed does
                        for (std::size_t jr = 0; jr < nc; jr += NR)
                            for (std::size_t ir = 0; ir < mcur; ir += MR) {
                                const std::size_t mr = std::min(MR, mcur - ir);
                                gemm_detail::strided_rows<T> a;
                                for (std::size_t i = 0; i < MR; ++i)
                                    a.rows[i] = A + (ic + ir + std::min(i, mr - 1)) * lda + pc;
                                gemm_detail::micro_kernel_rows(
                                    kc, a, bpack + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc, mr,
                                    std::min(NR, nc - jr), alpha, beta, first,
                                    static_cast<const T*>(nullptr), 0);
                            }
                        continue;
                    }
                    T* apack = gemm_detail::scratch<T, 1>(mc * kc_max);  // Aᵀ packed in MR rows
                    gemm_detail::pack_a(apack, A, lda, ta, ic, mcur, pc, kc);
                    for (std::size_t jr = 0; jr < nc; jr += NR)
                        for (std::size_t ir = 0; ir < mcur; ir += MR)
                            gemm_detail::micro_kernel(
                                kc, gemm_detail::packed_rows<T>{apack + ir * kc}, bpack + jr * kc,
                                C + (ic + ir) * ldc + jc + jr, ldc, std::min(MR, mcur - ir),
                                std::min(NR, nc - jr), alpha, beta, first);
                }
                barrier();
            }
        }
    };
#if defined(_OPENMP)
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        body(std::size_t(omp_get_thread_num()), std::size_t(omp_get_num_threads()));
        return;
    }
#endif
    body(0, 1);
}

/// op(B) (K, N) packed once, in the panel layout gemm() packs per call, for products that reuse
/// B many times (the weights of a model at inference): gemm_packed() then skips the packing and
/// the barriers it needs. Layout: NC-column blocks (offset jc * K), each of K/kc depth blocks
/// (offset panels * NR * pc), each of NR-wide panels (offset p * kc * NR).
/// Copies share the packed data (it is read-only once packed); pack() on a copy that shares it
/// packs into new storage, so copying a model for inference does not copy its packed weights.
/// Packed in precision::bf16 (float only), it holds packed_b_bf16's words instead, and
/// gemm_packed runs gemm_packed_bf16.
template <scalar T>
class packed_b {
  public:
    /// Nothing packed.
    packed_b() = default;

    /// Packs op(B) (K rows, N columns) from B with row stride ldb, in precision p; grows the
    /// storage only.
    void pack(const T* B, std::size_t ldb, transpose tb, std::size_t K, std::size_t N,
              ftune::precision p = ftune::precision::fp32) {
        if (p == ftune::precision::bf16) {
            if constexpr (std::is_same_v<T, float>) {
                bf16_.pack(B, ldb, tb, K, N);
                precision_ = p;
                return;
            } else {
                throw error(errc::unsupported, "packed_b",
                            "bf16 products take float operands; this model's scalar type is not "
                            "float");
            }
        }
        precision_ = ftune::precision::fp32;
        bf16_ = {};
        using blk = gemm_detail::blocking<T>;
        constexpr std::size_t NR = blk::NR;
        const gemm_detail::cache_blocking& cb = gemm_detail::runtime_blocking<T>();
        const std::size_t NC = cb.nc, KC = cb.kc;
        packing_stats().prepacked.fetch_add(1, std::memory_order_relaxed);
        const std::size_t n = (N + NR - 1) / NR * NR * K;
        if (n > cap_ || data_.use_count() > 1) {  // too small, or shared with a copy
            data_ = detail::packed_storage<T>(n);
            cap_ = n;
        }
        K_ = K, N_ = N, nc_ = NC;  // after the allocation, which may throw
        kc_ = K == 0 ? 0 : (K + (K + KC - 1) / KC - 1) / ((K + KC - 1) / KC);
        const std::size_t panels_all = (N + NR - 1) / NR;
        detail::parallel_for(panels_all, 8, [&](std::size_t q0, std::size_t q1) {
            for (std::size_t q = q0; q < q1; ++q) {
                const std::size_t j = q * NR, jc = j / NC * NC, nc = std::min(NC, N - jc);
                const std::size_t panels = (nc + NR - 1) / NR, p = (j - jc) / NR;
                for (std::size_t pc = 0; pc < K; pc += kc_) {
                    const std::size_t kc = std::min(kc_, K - pc);
                    gemm_detail::pack_b_panel(block(jc, pc, panels) + p * kc * NR, B, ldb, tb, pc,
                                              kc, j, std::min(NR, N - j));
                }
            }
        });
    }
    /// Number of packed elements (columns padded to whole panels).
    std::size_t size() const noexcept {
        constexpr std::size_t NR = gemm_detail::blocking<T>::NR;
        return precision_ == ftune::precision::bf16 ? 0 : (N_ + NR - 1) / NR * NR * K_;
    }
    /// Bytes of packed storage in use.
    std::size_t bytes() const noexcept {
        return precision_ == ftune::precision::bf16 ? bf16_.bytes() : size() * sizeof(T);
    }
    /// Rows of op(B).
    std::size_t rows() const noexcept {
        return precision_ == ftune::precision::bf16 ? bf16_.rows() : K_;
    }
    /// Columns of op(B).
    std::size_t cols() const noexcept {
        return precision_ == ftune::precision::bf16 ? bf16_.cols() : N_;
    }
    /// The precision it was packed in.
    ftune::precision precision() const noexcept { return precision_; }
    /// The bf16 packing (when precision() is bf16).
    const packed_b_bf16& bf16() const noexcept { return bf16_; }
    /// Depth of the K blocks.
    std::size_t kc() const noexcept { return kc_; }
    /// Columns of the B blocks.
    std::size_t nc() const noexcept { return nc_; }
    /// The packed (jc, pc) block of a column block with `panels` panels.
    const T* block(std::size_t jc, std::size_t pc, std::size_t panels) const noexcept {
        return data_.get() + jc * K_ + panels * gemm_detail::blocking<T>::NR * pc;
    }

  private:
    T* block(std::size_t jc, std::size_t pc, std::size_t panels) noexcept {
        return data_.get() + jc * K_ + panels * gemm_detail::blocking<T>::NR * pc;
    }
    std::shared_ptr<T[]> data_;  // shared by copies; written only by pack() when not shared
    std::size_t cap_ = 0, K_ = 0, N_ = 0, kc_ = 0, nc_ = 0;
    ftune::precision precision_ = ftune::precision::fp32;  // of the last pack()
    packed_b_bf16 bf16_;                                   // the bf16 packing (precision bf16)
};

/// No epilogue: gemm_packed leaves C as the product.
struct no_epilogue {
    /// Does nothing.
    template <class T>
    void operator()(T*, std::size_t, std::size_t, std::size_t, std::size_t,
                    std::size_t) const noexcept {}
};

/// The epilogue C += R (a residual connection): gemm_packed adds it inside the micro-kernel as
/// the tile is stored, instead of reloading the stored tile.
using backends::add_residual;

/// C(M,N) = alpha * op(A)(M,K) * Bp + beta * C (+ bias(N) on every row, when given) with Bp =
/// op(B) packed by packed_b: the same result as gemm() followed by bias_add, bit for bit (the
/// bias is added to the finished sum as the register tile is stored). Then epilogue(c, ldc, row0,
/// rows, col0, cols) runs on each finished tile while it is in L1 (c points at C(row0, col0)):
/// element-wise work such as an activation or a residual, whose result equals running it over C
/// afterwards (add_residual runs inside the micro-kernel). Small M (one A block) splits B's
/// panels among the threads, so each weight is read once; larger M splits the rows. Units of
/// work are taken dynamically; no barrier (B is read-only): gemm_schedule.hpp. The arithmetic
/// of each element does not depend on the split.
template <scalar T, class Epilogue = no_epilogue>
void gemm_packed(transpose ta, std::size_t M, std::size_t N, std::size_t K, T alpha, const T* A,
                 std::size_t lda, const packed_b<T>& Bp, T beta, T* C, std::size_t ldc,
                 const T* bias = nullptr, Epilogue epilogue = {}) {
    if constexpr (std::is_same_v<T, float>)
        if (Bp.precision() == ftune::precision::bf16)
            return gemm_packed_bf16(ta, M, N, K, alpha, A, lda, Bp.bf16(), beta, C, ldc, bias,
                                    epilogue);
    using blk = gemm_detail::blocking<T>;
    constexpr std::size_t MR = blk::MR, NR = blk::NR;
    const std::size_t NC = Bp.nc(), MC = gemm_detail::runtime_blocking<T>().mc;
    if (Bp.rows() != K || Bp.cols() != N)
        throw error(errc::shape_mismatch, "gemm_packed",
                    ftune::detail::cat("B was packed as ", Bp.rows(), " x ", Bp.cols(),
                                       " but the product needs ", K, " x ", N,
                                       "; pack it again after resizing"));
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == T(0)) {  // no product: beta * C, then the bias and the epilogue
        gemm_detail::scale_c(C, ldc, M, N, beta);
        if (bias)
            for (std::size_t i = 0; i < M; ++i)
                for (std::size_t j = 0; j < N; ++j) C[i * ldc + j] += bias[j];
        epilogue(C, ldc, 0, M, 0, N);
        return;
    }
    const int nt = schedule_detail::threads_for(M, N, K, sizeof(T));
    constexpr bool fused_residual = std::is_same_v<Epilogue, add_residual<T>>;
    // with the rows split, each unit is a whole row block: a transposed A is packed per unit
    // and depth block, and shorter units would pack it again for each
    const schedule_detail::plan plan =
        schedule_detail::make_plan(M, N, K, MR, NR, MC, Bp.kc(), nt, 0);
    // the packed panel q of depth block pc: its first byte and its length in bytes
    auto panel = [&](std::size_t pc, std::size_t q) {
        const std::size_t jc = q * NR / NC * NC, nc = std::min(NC, N - jc);
        const std::size_t kc = std::min(Bp.kc(), K - pc);
        return std::pair{reinterpret_cast<const char*>(Bp.block(jc, pc, (nc + NR - 1) / NR) +
                                                       (q * NR - jc) / NR * kc * NR),
                         kc * NR * sizeof(T)};
    };
    // op(A) = A (row-major) is read in place; a transposed A is packed, by the thread that runs
    // the unit, in MR-row tiles of its row block and depth block
    const std::size_t apack_size = (plan.mc + MR - 1) / MR * MR * Bp.kc();
    auto block = [&](std::size_t ic, std::size_t rows, std::size_t pc, std::size_t kc) {
        if (ta != transpose::no)
            gemm_detail::pack_a(gemm_detail::scratch<T, 1>(apack_size), A, lda, ta, ic, rows, pc,
                                kc);
    };
    schedule_detail::run(plan, nt, panel, block, [&](const schedule_detail::tile& t) {
        const std::size_t row = t.ic + t.ir;
        T* c = C + row * ldc + t.q * NR;
        const T* b = reinterpret_cast<const T*>(t.b);
        const T* pf = reinterpret_cast<const T*>(t.pf);
        const T* bias_q = bias && t.last ? bias + t.q * NR : nullptr;
        const T* res = nullptr;
        std::size_t ldr = 0;
        if constexpr (fused_residual)
            if (t.last) res = epilogue.r + row * epilogue.ldr + t.q * NR, ldr = epilogue.ldr;
        if (ta != transpose::no) {
            const T* apack = gemm_detail::scratch<T, 1>(apack_size);
            gemm_detail::micro_kernel_rows(t.kc, gemm_detail::packed_rows<T>{apack + t.ir * t.kc},
                                           b, c, ldc, t.mr, t.nr, alpha, beta, t.first, pf,
                                           t.pf_lines, bias_q, res, ldr);
        } else {
            gemm_detail::strided_rows<T> a;
            for (std::size_t i = 0; i < MR; ++i)
                a.rows[i] = A + (row + std::min(i, t.mr - 1)) * lda + t.pc;
            gemm_detail::micro_kernel_rows(t.kc, a, b, c, ldc, t.mr, t.nr, alpha, beta, t.first, pf,
                                           t.pf_lines, bias_q, res, ldr);
        }
        if (t.last && !fused_residual) epilogue(c, ldc, row, t.mr, t.q * NR, t.nr);
    });
}

/// gemm_packed for an A kept in bf16 (a linear layer's input in a bf16 training step): the same
/// result as its values as floats, with Bp packed in precision::bf16 (gemm_packed_bf16).
template <class Epilogue = no_epilogue>
void gemm_packed(transpose ta, std::size_t M, std::size_t N, std::size_t K, float alpha,
                 const bf16* A, std::size_t lda, const packed_b<float>& Bp, float beta, float* C,
                 std::size_t ldc, const float* bias = nullptr, Epilogue epilogue = {}) {
    if (Bp.precision() != ftune::precision::bf16)
        throw error(errc::invalid_argument, "gemm_packed",
                    "an A kept in bf16 multiplies a weight prepared in precision::bf16 only; "
                    "prepare the weight in bf16");
    gemm_packed_bf16(ta, M, N, K, alpha, A, lda, Bp.bf16(), beta, C, ldc, bias, epilogue);
}

/// `batch` independent GEMMs whose operands start stride_* elements apart (attention's per-head
/// products). Batches run in parallel, each GEMM on one thread.
template <scalar T>
void gemm_strided_batched(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                          T alpha, const T* A, std::size_t lda, std::size_t stride_a, const T* B,
                          std::size_t ldb, std::size_t stride_b, T beta, T* C, std::size_t ldc,
                          std::size_t stride_c, std::size_t batch) {
    detail::parallel_for(batch, 1, [&](std::size_t b0, std::size_t b1) {
        for (std::size_t b = b0; b < b1; ++b)
            gemm(ta, tb, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
                 C + b * stride_c, ldc);
    });
}

/// Attention's products for every head h of every sequence s in precision p (matrix (s, h) of
/// operand X starts s x_seq + h x_head elements in; A may be kept in bf16, with p bf16): all
/// sequences' heads in one parallel pass, each product on one thread, as gemm_strided_batched
/// (gemm_bf16) takes them; a strided batch per sequence opened one OpenMP region of H products
/// per sequence, whose threads waited at its end for the slowest (2026-12-05).
template <class TA, scalar T>
void gemm_heads(ftune::precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                std::size_t K, T alpha, const TA* A, std::size_t lda, std::size_t a_seq,
                std::size_t a_head, const T* B, std::size_t ldb, std::size_t b_seq,
                std::size_t b_head, T beta, T* C, std::size_t ldc, std::size_t c_seq,
                std::size_t c_head, std::size_t sequences, std::size_t heads) {
    static_assert(std::is_same_v<TA, T> || (std::is_same_v<TA, bf16> && std::is_same_v<T, float>),
                  "gemm_heads: A is T, or bf16 with float products");
    const bool in_bf16 = p == ftune::precision::bf16;
    if (in_bf16 && !std::is_same_v<T, float>)
        throw error(errc::invalid_argument, "gemm_heads", "bf16 products are taken in float");
    if (!in_bf16 && std::is_same_v<TA, bf16>)
        throw error(errc::invalid_argument, "gemm_heads",
                    "an operand kept in bf16 is multiplied in precision::bf16 only");
    if (in_bf16 && !bf16_supported()) throw bf16_detail::unsupported("gemm_heads");
    detail::parallel_for(sequences * heads, 1, [&](std::size_t u0, std::size_t u1) {
        for (std::size_t u = u0; u < u1; ++u) {
            const std::size_t s = u / heads, h = u % heads;
            const TA* a = A + s * a_seq + h * a_head;
            const T* b = B + s * b_seq + h * b_head;
            T* c = C + s * c_seq + h * c_head;
            if constexpr (std::is_same_v<T, float>)
                if (in_bf16) {
                    gemm_bf16(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
                    continue;
                }
            if constexpr (std::is_same_v<TA, T>)
                gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    });
}

namespace gemm_detail {

/// The widest small dimension gemm_thin handles itself (wider products go to gemm).
inline constexpr std::size_t thin_max = 16;

/// Rows I (large dimension) and columns J (small dimension, J <= 8) of a thin product in dot
/// form: C(i, j) = alpha Σ_k P(i, k) Q(j, k) + beta C(i, j) for i in [i, i + I), with P and Q
/// contiguous along k (row strides ldp, ldq) and C(i, j) at C[i * sci + j * scj]. Each element is
/// one vector sum along k, reduced, plus the scalar tail: the same arithmetic whatever I is.
template <std::size_t I, std::size_t J, class T>
void thin_dot_tile(std::size_t i, std::size_t K, T alpha, const T* P, std::size_t ldp, const T* Q,
                   std::size_t ldq, T beta, T* C, std::size_t sci, std::size_t scj) {
    using V = detail::batch<T>;
    constexpr std::size_t W = blocking<T>::W;
    const std::size_t kv = K / W * W;
    V acc[I][J];
#pragma GCC unroll 16
    for (std::size_t r = 0; r < I; ++r)
        for (std::size_t j = 0; j < J; ++j) acc[r][j] = V(T(0));
    for (std::size_t k = 0; k < kv; k += W) {
        V p[I];
#pragma GCC unroll 4
        for (std::size_t r = 0; r < I; ++r) p[r] = V::load_unaligned(P + (i + r) * ldp + k);
#pragma GCC unroll 8
        for (std::size_t j = 0; j < J; ++j) {
            const V q = V::load_unaligned(Q + j * ldq + k);
#pragma GCC unroll 4
            for (std::size_t r = 0; r < I; ++r) acc[r][j] = xsimd::fma(p[r], q, acc[r][j]);
        }
    }
    for (std::size_t r = 0; r < I; ++r)
        for (std::size_t j = 0; j < J; ++j) {
            T sum = detail::reduce_add(acc[r][j]);
            for (std::size_t k = kv; k < K; ++k) sum += P[(i + r) * ldp + k] * Q[j * ldq + k];
            T& c = C[(i + r) * sci + j * scj];
            c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
        }
}

/// thin_dot_tile over the rows [i0, i1), two at a time, for the n <= J columns (J a template
/// argument only up to 8: counts below run as their own instantiation).
template <class T, std::size_t J = 8>
void thin_dot(std::size_t n, std::size_t i0, std::size_t i1, std::size_t K, T alpha, const T* P,
              std::size_t ldp, const T* Q, std::size_t ldq, T beta, T* C, std::size_t sci,
              std::size_t scj) {
    if constexpr (J > 1)
        if (n < J)
            return thin_dot<T, J - 1>(n, i0, i1, K, alpha, P, ldp, Q, ldq, beta, C, sci, scj);
    std::size_t i = i0;
    for (; i + 2 <= i1; i += 2) thin_dot_tile<2, J>(i, K, alpha, P, ldp, Q, ldq, beta, C, sci, scj);
    if (i < i1) thin_dot_tile<1, J>(i, K, alpha, P, ldp, Q, ldq, beta, C, sci, scj);
}

/// NV vectors of columns from j of a thin product in axpy form, for its I small rows (I <= 8):
/// C(i, j) = alpha Σ_k P(i, k) Q(k, j) + beta C(i, j), with Q contiguous along j (row stride
/// ldq), P(i, k) at P[i * spi + k * spk] and C(i, j) at C[i * sci + j * scj].
template <std::size_t I, std::size_t NV, class T>
void thin_axpy_tile(std::size_t j, std::size_t K, T alpha, const T* P, std::size_t spi,
                    std::size_t spk, const T* Q, std::size_t ldq, T beta, T* C, std::size_t sci,
                    std::size_t scj) {
    using V = detail::batch<T>;
    constexpr std::size_t W = blocking<T>::W;
    V acc[I][NV];
#pragma GCC unroll 16
    for (std::size_t r = 0; r < I; ++r)
        for (std::size_t v = 0; v < NV; ++v) acc[r][v] = V(T(0));
    for (std::size_t k = 0; k < K; ++k) {
        V q[NV];
        for (std::size_t v = 0; v < NV; ++v) q[v] = V::load_unaligned(Q + k * ldq + j + v * W);
#pragma GCC unroll 8
        for (std::size_t r = 0; r < I; ++r) {
            const V a(P[r * spi + k * spk]);
            for (std::size_t v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, q[v], acc[r][v]);
        }
    }
    for (std::size_t r = 0; r < I; ++r)
        for (std::size_t v = 0; v < NV; ++v) {
            alignas(64) T tile[W];
            acc[r][v].store_aligned(tile);
            for (std::size_t w = 0; w < W; ++w) {
                T& c = C[r * sci + (j + v * W + w) * scj];
                c = beta == T(0) ? alpha * tile[w] : alpha * tile[w] + beta * c;
            }
        }
}

/// thin_axpy_tile over the columns [j0, j1) for the m <= I small rows: two vectors at a time,
/// then one, then single columns (only past the last whole vector of the product, when j0 and
/// j1 split it at multiples of two vectors: then no element's arithmetic depends on the split).
template <class T, std::size_t I = 8>
void thin_axpy(std::size_t m, std::size_t j0, std::size_t j1, std::size_t K, T alpha, const T* P,
               std::size_t spi, std::size_t spk, const T* Q, std::size_t ldq, T beta, T* C,
               std::size_t sci, std::size_t scj) {
    if constexpr (I > 1)
        if (m < I)
            return thin_axpy<T, I - 1>(m, j0, j1, K, alpha, P, spi, spk, Q, ldq, beta, C, sci, scj);
    constexpr std::size_t W = blocking<T>::W;
    std::size_t j = j0;
    for (; j + 2 * W <= j1; j += 2 * W)
        thin_axpy_tile<I, 2>(j, K, alpha, P, spi, spk, Q, ldq, beta, C, sci, scj);
    if (j + W <= j1)
        thin_axpy_tile<I, 1>(j, K, alpha, P, spi, spk, Q, ldq, beta, C, sci, scj), j += W;
    for (; j < j1; ++j)
        for (std::size_t r = 0; r < I; ++r) {
            T sum = T(0);
            for (std::size_t k = 0; k < K; ++k) sum += P[r * spi + k * spk] * Q[k * ldq + j];
            T& c = C[r * sci + j * scj];
            c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
        }
}

/// Threads for a product of 2 M N K flops: all of them from 4 MFLOP on (as gemm), else one.
inline std::size_t thin_threads(std::size_t M, std::size_t N, std::size_t K) {
#if defined(_OPENMP)
    if (!omp_in_parallel() && 2.0 * double(M) * double(N) * double(K) >= 4e6)
        return std::size_t(omp_get_max_threads());
#endif
    (void)M, (void)N, (void)K;
    return 1;
}

}  // namespace gemm_detail

/// gemm() for thin products, where M or N is at most gemm_detail::thin_max (the products of a
/// low-rank adapter: x Aᵀ, dyᵀ u, dy B and duᵀ x at rank r): the large operand is read in place
/// once, without packing and without padding the small dimension to a register tile, and only
/// the large dimension is split among the threads (the result does not depend on their number).
/// Other shapes run as gemm(). Sums are in this kernel's order, not gemm()'s.
template <scalar T>
void gemm_thin(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
               const T* A, std::size_t lda, const T* B, std::size_t ldb, T beta, T* C,
               std::size_t ldc) {
    using gemm_detail::thin_max;
    constexpr std::size_t W = gemm_detail::blocking<T>::W;
    const bool thin_n = N <= thin_max && M >= N, thin_m = M <= thin_max && N > M;
    if (M == 0 || N == 0 || K == 0 || alpha == T(0) || K < W || (!thin_n && !thin_m))
        return gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    const std::size_t nt = gemm_detail::thin_threads(M, N, K);
    const std::size_t big = thin_n ? M : N, small = thin_n ? N : M;
    // The small operand with k contiguous, copied when it is not (dot form), or the strides of
    // its elements (axpy form).
    auto transposed = [&](const T* X, std::size_t ldx,
                          std::size_t rows) {  // X (K, rows) -> (rows, K)
        T* t = gemm_detail::scratch<T, 6>(rows * K);
        for (std::size_t k = 0; k < K; ++k)
            for (std::size_t r = 0; r < rows; ++r) t[r * K + k] = X[k * ldx + r];
        return t;
    };
    // Dot form: C(i, j) = Σ_k P(i, k) Q(j, k), i over the large dimension, both contiguous in k.
    auto dot = [&](const T* P, std::size_t ldp, const T* Q, std::size_t ldq, std::size_t sci,
                   std::size_t scj) {
        const std::size_t grain = (big + nt - 1) / nt;
        detail::parallel_for(big, grain, [&](std::size_t i0, std::size_t i1) {
            for (std::size_t j = 0; j < small; j += 8)
                gemm_detail::thin_dot(std::min<std::size_t>(8, small - j), i0, i1, K, alpha, P, ldp,
                                      Q + j * ldq, ldq, beta, C + j * scj, sci, scj);
        });
    };
    // Axpy form: C(i, j) = Σ_k P(i, k) Q(k, j), j over the large dimension, Q contiguous in j.
    auto axpy = [&](const T* P, std::size_t spi, std::size_t spk, const T* Q, std::size_t ldq,
                    std::size_t sci, std::size_t scj) {
        const std::size_t blocks = (big + 2 * W - 1) / (2 * W);
        detail::parallel_for(blocks, (blocks + nt - 1) / nt, [&](std::size_t b0, std::size_t b1) {
            for (std::size_t i = 0; i < small; i += 8)
                gemm_detail::thin_axpy(std::min<std::size_t>(8, small - i), b0 * 2 * W,
                                       std::min(big, b1 * 2 * W), K, alpha, P + i * spi, spi, spk,
                                       Q, ldq, beta, C + i * sci, sci, scj);
        });
    };
    const bool an = ta == transpose::no, bn = tb == transpose::no;
    if (thin_n) {  // C (M large, N small)
        if (an)    // rows of A are contiguous in k: dot form with Q = op(B)ᵀ (N, K)
            return bn ? dot(A, lda, transposed(B, ldb, N), K, ldc, 1) : dot(A, lda, B, ldb, ldc, 1);
        // op(A) = Aᵀ, A (K, M): Cᵀ (N, M) = op(B)ᵀ A in axpy form, the small rows from op(B)
        return bn ? axpy(B, 1, ldb, A, lda, 1, ldc) : axpy(B, ldb, 1, A, lda, 1, ldc);
    }
    // C (M small, N large)
    if (bn)  // B (K, N) contiguous in n: axpy form with P = op(A)
        return an ? axpy(A, lda, 1, B, ldb, ldc, 1) : axpy(A, 1, lda, B, ldb, ldc, 1);
    // op(B) = Bᵀ, B (N, K) contiguous in k: Cᵀ (N, M) = B op(A)ᵀ in dot form
    return an ? dot(B, ldb, A, lda, 1, ldc) : dot(B, ldb, transposed(A, lda, M), K, 1, ldc);
}

}  // namespace backends::cpu
FTUNE_NAMESPACE_END
