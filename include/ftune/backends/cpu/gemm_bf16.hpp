// CPU GEMM in bfloat16 with fp32 accumulation (AVX512-BF16's vdpbf16ps), for mixed-precision
// training and bf16 inference: fp32 operands in, fp32 C out, the operands rounded to bf16 (to
// nearest, ties to even) as they are packed (an operand a training step keeps in bf16 already,
// an attention probability or the FFN activation, has its words copied instead, or a row-major
// A read in place). The structure is gemm.hpp's (packed B panels, MR-row
// tiles of A, an MR x NR register tile), with one change that the instruction dictates:
// vdpbf16ps multiplies *pairs* of bf16 values along K and adds both products to one fp32 lane,
// so both operands are packed as 32-bit words that hold the values of k = 2p (bits 0-15) and
// k = 2p + 1 (bits 16-31):
//
//   A tile t, pair p, row i:      apack[t][p * MR + i]  = (op(A)(i, 2p), op(A)(i, 2p+1))
//   (a row-major A: row i's pairs in a row, apack[i][p], read in place by the kernel)
//   B panel, pair p, column j:    bpanel[p * NR + j]    = (op(B)(2p, j), op(B)(2p+1, j))
//   per pair: 3 loads of B (48 columns), 8 broadcasts of A, 24 vdpbf16ps (64 flops each)
//
// A product of two bf16 values is exact in fp32 (8-bit significands), so each element's error is
// that of rounding the operands to bf16 plus the fp32 rounding of the sums (the pair sum, then
// the accumulation along K). The whole op(A) is converted once per call (in inference most of
// the work splits B's columns among the threads, which would otherwise each convert A again);
// a weight is converted once and packed (packed_b_bf16), so a training step converts each weight
// once per layout it is read in. The kernels are compiled for avx512f + avx512bf16 through a
// function attribute and chosen at run time: bf16_supported() says whether this CPU runs them;
// on other CPUs the entry points throw errc::unsupported (AVX-512 without BF16 is also refused:
// the fp32 kernels are faster there than an emulation would be). On a CPU with AMX-BF16 tiles
// the same packed operands run on the tiles instead (gemm_amx.hpp; amx_enabled()): 16-row tiles
// of op(A) in rows of pairs (a transposed A too), amx_rows in place of the register kernel.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "ftune/backends/common.hpp"
#include "ftune/backends/cpu/cpu_info.hpp"
#include "ftune/backends/cpu/detail.hpp"
#include "ftune/backends/cpu/gemm_amx.hpp"
#include "ftune/backends/cpu/gemm_schedule.hpp"
#include "ftune/core/error.hpp"

// FTUNE_NO_BF16_KERNELS leaves the kernels out (a compiler without AVX512-BF16 intrinsics:
// GCC before 10, Clang before 9); bf16 requests then fail with errc::unsupported.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && \
    !defined(FTUNE_NO_BF16_KERNELS)
#include <immintrin.h>
/// 1 when this compiler builds the AVX512-BF16 kernels (GCC or Clang on x86-64).
#define FTUNE_HAS_BF16_KERNELS 1
/// The function attribute that compiles one kernel for AVX512-BF16 whatever -march says.
#define FTUNE_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
#else
#define FTUNE_HAS_BF16_KERNELS 0
#define FTUNE_BF16_TARGET
#endif

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu {

/// Whether this build and this CPU run the bf16 kernels (avx512_bf16 in `ftune info --system`).
inline bool bf16_supported() noexcept {
    return FTUNE_HAS_BF16_KERNELS && this_cpu().avx512f && this_cpu().avx512_bf16;
}

namespace bf16_detail {

/// The bits of f rounded to bfloat16 (to nearest, ties to even; a NaN stays a quiet NaN), in the
/// upper half of a float's bits (the lower half zero): the value vcvtneps2bf16 gives, except
/// that fp32 subnormals are kept (they round to bf16 subnormals instead of to zero).
inline std::uint32_t round_bits(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u | 0x00400000u) & 0xffff0000u;  // NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

/// f rounded to bfloat16, as a float.
inline float round(float f) noexcept {
    return std::bit_cast<float>(round_bits(f));
}

/// The 32-bit word vdpbf16ps reads as one pair: lo (k even) in bits 0-15, hi in bits 16-31.
inline std::uint32_t pair(float lo, float hi) noexcept {
    return (round_bits(lo) >> 16) | round_bits(hi);
}

inline constexpr std::size_t MR = 8;       ///< rows of the register tile
inline constexpr std::size_t W = 16;       ///< fp32 lanes of a 512-bit vector
inline constexpr std::size_t NV = 3;       ///< vectors per row of the tile
inline constexpr std::size_t NR = NV * W;  ///< columns of the register tile (48)

/// Pairs of K rounded up: ⌈K / 2⌉.
inline constexpr std::size_t pairs(std::size_t k) noexcept {
    return (k + 1) / 2;
}

/// Cache blocking in values of K (even, so that no pair straddles two blocks) and columns: a B
/// panel (kc x NR bf16) is 1/8 of L2, as gemm.hpp's fp32 panels, which makes kc twice theirs.
struct blocking {
    std::size_t kc;  ///< max depth of a block (even)
    std::size_t mc;  ///< rows of an A block
    std::size_t nc;  ///< columns of a B block (whole panels)
};

/// The blocking on this CPU, computed once.
inline const blocking& runtime_blocking() {
    static const blocking b = [] {
        const cpu_info& c = this_cpu();
        auto down = [](std::size_t v, std::size_t m) { return v / m * m; };
        const std::size_t kc = std::clamp<std::size_t>(down(c.l2 / (8 * NR * 2), 32), 256, 768);
        const std::size_t mc =
            std::clamp<std::size_t>(down(c.l2 * 2 / 5 / (kc * 2), MR), 4 * MR, 1024);
        const std::size_t l3_core = c.l3 / std::max<std::size_t>(1, c.l3_sharing);
        const std::size_t nc =
            std::clamp<std::size_t>(down(l3_core / 2 / (kc * 2), NR), 4 * NR, down(4096, NR));
        return blocking{kc, mc, nc};
    }();
    return b;
}

#if FTUNE_HAS_BF16_KERNELS
/// round_bits on 16 lanes.
FTUNE_BF16_TARGET inline __m512i round16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v), upper = _mm512_set1_epi32(int(0xffff0000u));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_and_si512(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), upper);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_and_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)), upper);
}

/// The lanes of v that hold a subnormal (exponent 0, not zero): the one input on which
/// vcvtne2ps2bf16, which flushes it to zero, and round_bits, which keeps it as PyTorch does,
/// differ (both round to nearest even, keep infinities and make NaNs quiet alike).
FTUNE_BF16_TARGET inline __mmask16 subnormal_lanes(__m512 v) {
    // |x| - 1 < 0x7fffff (unsigned) exactly when |x|'s bits are 1 .. 0x7fffff
    const __m512i magnitude =
        _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
    return _mm512_cmplt_epu32_mask(_mm512_sub_epi32(magnitude, _mm512_set1_epi32(1)),
                                   _mm512_set1_epi32(0x007fffff));
}

/// The 32 values of a then b rounded to bf16, in that order (a's in the low 256 bits): one
/// vcvtne2ps2bf16, or round16 where a lane is subnormal (the same bits as round_bits' either
/// way; rounding a 2,048 × 384 matrix out of L3 took 0.10 ms instead of 0.15 on one Zen 4
/// thread, 2026-12-04).
FTUNE_BF16_TARGET inline __m512i round32(__m512 a, __m512 b) {
    if (__builtin_expect((subnormal_lanes(a) | subnormal_lanes(b)) != 0, 0)) {
        const __m512i upper = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39,
                                               37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13,
                                               11, 9, 7, 5, 3, 1);  // the upper halves in order
        return _mm512_permutex2var_epi16(round16(a), upper, round16(b));
    }
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

/// pair(lo[i], hi[i]) on 16 lanes.
FTUNE_BF16_TARGET inline __m512i pairs16(__m512 lo, __m512 hi) {
    const __m512i interleave =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);  // lo[i], hi[i] side by side
    return _mm512_permutexvar_epi16(interleave, round32(lo, hi));
}

/// dst[i] = pair(r0[i], r1[i]) for i < n (r1 null: pair(r0[i], 0)): two rows of op(B), or of
/// a transposed A, interleaved.
FTUNE_BF16_TARGET inline void pair_rows(std::uint32_t* dst, const float* r0, const float* r1,
                                        std::size_t n) {
    std::size_t i = 0;
    for (; i + W <= n; i += W)
        _mm512_storeu_si512(dst + i, pairs16(_mm512_loadu_ps(r0 + i),
                                             r1 ? _mm512_loadu_ps(r1 + i) : _mm512_setzero_ps()));
    if (i < n) {
        const __mmask16 k = __mmask16((1u << (n - i)) - 1);
        const __m512 hi = r1 ? _mm512_maskz_loadu_ps(k, r1 + i) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + i, k, pairs16(_mm512_maskz_loadu_ps(k, r0 + i), hi));
    }
}

/// The 16 bf16 values at r, each in the low half of a word (a lambda would lose the target).
FTUNE_BF16_TARGET inline __m512i widen16(const bf16* r) {
    static_assert(sizeof(bf16) == 2);
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r)));
}

/// widen16 of the first lanes of k only (the others zero; nothing past them is read).
FTUNE_BF16_TARGET inline __m512i widen16(const bf16* r, __mmask16 k) {
    return _mm512_cvtepu16_epi32(_mm512_castsi512_si256(_mm512_maskz_loadu_epi16(__mmask32(k), r)));
}

/// pair_rows for rows already in bf16 (a linear layer's input kept in bf16): the same words,
/// copied instead of rounded, 16 per step.
FTUNE_BF16_TARGET inline void pair_rows(std::uint32_t* dst, const bf16* r0, const bf16* r1,
                                        std::size_t n) {
    std::size_t i = 0;
    for (; i + W <= n; i += W)
        _mm512_storeu_si512(
            dst + i, r1 ? _mm512_or_si512(widen16(r0 + i), _mm512_slli_epi32(widen16(r1 + i), 16))
                        : widen16(r0 + i));
    for (; i < n; ++i)
        dst[i] = std::uint32_t{r0[i].bits} | (r1 ? std::uint32_t{r1[i].bits} << 16 : 0u);
}

/// dst[p] = pair(r[2p], r[2p + 1]) for the ⌈K/2⌉ pairs of a row (the odd K's last high half 0):
/// 32 values to 16 words per step (the row's bf16 values in order).
FTUNE_BF16_TARGET inline void pair_adjacent(std::uint32_t* dst, const float* r, std::size_t K) {
    std::size_t k = 0;
    for (; k + 2 * W <= K; k += 2 * W)
        _mm512_storeu_si512(dst + k / 2,
                            round32(_mm512_loadu_ps(r + k), _mm512_loadu_ps(r + k + W)));
    for (; k + 1 < K; k += 2) dst[k / 2] = pair(r[k], r[k + 1]);
    if (k < K) dst[k / 2] = pair(r[k], 0.0f);
}

/// round_to with vcvtne2ps2bf16 (round32): 32 values at a time, then the rest under masks.
FTUNE_BF16_TARGET inline void round_to_bf16_kernel(bf16* dst, const float* src, std::size_t n) {
    std::size_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W)
        _mm512_storeu_si512(dst + i,
                            round32(_mm512_loadu_ps(src + i), _mm512_loadu_ps(src + i + W)));
    if (const std::size_t r = n - i; r > 0) {  // the last r < 32 values, under masks
        const __mmask16 k0 = r >= W ? __mmask16(0xffff) : __mmask16((1u << r) - 1);
        const __mmask16 k1 = r > W ? __mmask16((1u << (r - W)) - 1) : __mmask16(0);
        _mm512_mask_storeu_epi16(
            dst + i, __mmask32((1u << r) - 1),
            round32(_mm512_maskz_loadu_ps(k0, src + i), _mm512_maskz_loadu_ps(k1, src + i + W)));
    }
}

/// s[0:16] (the lanes of k) += r0, then += r1, ...: column sums taken one row after another.
template <class... R>
FTUNE_BF16_TARGET inline void add_rows(float* s, __mmask16 k, R... rows) {
    __m512 v = _mm512_maskz_loadu_ps(k, s);
    ((v = _mm512_add_ps(v, rows)), ...);
    _mm512_mask_storeu_ps(s, k, v);
}

/// The whole tiles [t0, t1) of a transposed A (op(A)(i, k) = A[k * lda + i]) in pack_a's
/// layout: two pairs of 16 rows (two tiles) at a time, so that each store fills a 64-byte line
/// of one tile (stores of one pair's 32 bytes took 1.3-1.9x the time: the lines of 8 and more
/// tiles were each written in halves), then any last pair of an odd count of pairs alone. With
/// sums, sums[i] += op(A)(i, k) for the tiles' rows i, k = 0, 1, ... in order (bias_backward's
/// order: the same bits).
FTUNE_BF16_TARGET inline void pack_a_transposed(std::uint32_t* dst, const float* A, std::size_t lda,
                                                std::size_t K, std::size_t t0, std::size_t t1,
                                                float* sums = nullptr) {
    const std::size_t KP = pairs(K);
    std::size_t p0 = 0;
    for (; 2 * p0 + 4 <= K; p0 += 2) {  // pairs p0, p0 + 1: rows 2 p0 .. 2 p0 + 3, all present
        const float* r = A + 2 * p0 * lda;
        std::size_t t = t0;
        for (; t + 2 <= t1; t += 2) {
            const __m512 a0 = _mm512_loadu_ps(r + t * MR), a1 = _mm512_loadu_ps(r + lda + t * MR),
                         a2 = _mm512_loadu_ps(r + 2 * lda + t * MR),
                         a3 = _mm512_loadu_ps(r + 3 * lda + t * MR);
            const __m512i w01 = pairs16(a0, a1);  // pair p0 of tiles t, t + 1
            const __m512i w23 = pairs16(a2, a3);  // pair p0 + 1
            _mm512_storeu_si512(dst + t * KP * MR + p0 * MR, _mm512_shuffle_i64x2(w01, w23, 0x44));
            _mm512_storeu_si512(dst + (t + 1) * KP * MR + p0 * MR,
                                _mm512_shuffle_i64x2(w01, w23, 0xee));
            if (sums) add_rows(sums + t * MR, 0xffff, a0, a1, a2, a3);
        }
        if (t < t1) {  // one tile left: 8 rows
            const __mmask16 k = 0xff;
            const __m512 a0 = _mm512_maskz_loadu_ps(k, r + t * MR),
                         a1 = _mm512_maskz_loadu_ps(k, r + lda + t * MR),
                         a2 = _mm512_maskz_loadu_ps(k, r + 2 * lda + t * MR),
                         a3 = _mm512_maskz_loadu_ps(k, r + 3 * lda + t * MR);
            const __m512i w01 = pairs16(a0, a1), w23 = pairs16(a2, a3);
            _mm512_storeu_si512(dst + t * KP * MR + p0 * MR, _mm512_shuffle_i64x2(w01, w23, 0x44));
            if (sums) add_rows(sums + t * MR, k, a0, a1, a2, a3);
        }
    }
    for (std::size_t p = p0; p < KP; ++p) {
        const float* r0 = A + 2 * p * lda;
        const float* r1 = 2 * p + 1 < K ? r0 + lda : nullptr;
        std::size_t t = t0;
        for (; t + 2 <= t1; t += 2) {
            const __m512 lo = _mm512_loadu_ps(r0 + t * MR);
            const __m512 hi = r1 ? _mm512_loadu_ps(r1 + t * MR) : _mm512_setzero_ps();
            const __m512i w = pairs16(lo, hi);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + t * KP * MR + p * MR),
                                _mm512_castsi512_si256(w));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (t + 1) * KP * MR + p * MR),
                                _mm512_extracti64x4_epi64(w, 1));
            if (sums)
                r1 ? add_rows(sums + t * MR, 0xffff, lo, hi) : add_rows(sums + t * MR, 0xffff, lo);
        }
        if (t < t1) {
            const __mmask16 k = 0xff;
            const __m512 lo = _mm512_maskz_loadu_ps(k, r0 + t * MR);
            const __m512 hi = r1 ? _mm512_maskz_loadu_ps(k, r1 + t * MR) : _mm512_setzero_ps();
            const __m512i w = pairs16(lo, hi);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + t * KP * MR + p * MR),
                                _mm512_castsi512_si256(w));
            if (sums) r1 ? add_rows(sums + t * MR, k, lo, hi) : add_rows(sums + t * MR, k, lo);
        }
    }
}
#else
// The same conversions in scalar code, for builds without the kernels (nothing multiplies the
// packed words there, but packing a weight in bf16 still works).
inline void pair_rows(std::uint32_t* dst, const float* r0, const float* r1, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = pair(r0[i], r1 ? r1[i] : 0.0f);
}
inline void pair_rows(std::uint32_t* dst, const bf16* r0, const bf16* r1, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        dst[i] = std::uint32_t{r0[i].bits} | (r1 ? std::uint32_t{r1[i].bits} << 16 : 0u);
}
inline void pair_adjacent(std::uint32_t* dst, const float* r, std::size_t K) {
    for (std::size_t k = 0; k < K; k += 2) dst[k / 2] = pair(r[k], k + 1 < K ? r[k + 1] : 0.0f);
}
#endif

/// dst[i] = src[i] rounded to bf16 for i < n (round_bits' values), for the bf16 activations a
/// training step keeps: 32 at a time where this CPU has AVX512-BF16 (a value at a time, the
/// rounding was most of dropout's and the softmax backward's time when they write bf16), else
/// one by one (ops that write bf16 run on any CPU).
inline void round_to(bf16* dst, const float* src, std::size_t n) {
#if FTUNE_HAS_BF16_KERNELS
    if (bf16_supported()) return round_to_bf16_kernel(dst, src, n);
#endif
    for (std::size_t i = 0; i < n; ++i) dst[i].bits = std::uint16_t(round_bits(src[i]) >> 16);
}
#if !FTUNE_HAS_BF16_KERNELS
inline void pack_a_transposed(std::uint32_t* dst, const float* A, std::size_t lda, std::size_t K,
                              std::size_t t0, std::size_t t1, float* sums = nullptr) {
    const std::size_t KP = pairs(K);
    if (sums)
        for (std::size_t t = t0; t < t1; ++t)
            for (std::size_t k = 0; k < K; ++k)
                for (std::size_t i = 0; i < MR; ++i) sums[t * MR + i] += A[k * lda + t * MR + i];
    for (std::size_t t = t0; t < t1; ++t)
        for (std::size_t p = 0; p < KP; ++p)
            pair_rows(dst + t * KP * MR + p * MR, A + 2 * p * lda + t * MR,
                      2 * p + 1 < K ? A + (2 * p + 1) * lda + t * MR : nullptr, MR);
}
#endif

/// Converts op(A) (M x K, row stride lda) into pairs. A transposed A (op(A)(i, k) = A[k * lda +
/// i], the weight gradient's dyᵀ) goes into MR-row tiles: tile t holds, for each of the ⌈K/2⌉
/// pairs p, MR words (rows past M and the odd K's last high half are zero) and starts at dst +
/// t * ⌈K/2⌉ * MR. A row-major A goes into rows of ⌈K/2⌉ words (row i at dst + i * ⌈K/2⌉),
/// which the kernel reads in place, as gemm.hpp reads a row-major A. Runs on the team when
/// called outside a parallel region. A transposed A's pass also adds, with sums, each row of
/// op(A) summed over k = 0, 1, ... in order to sums (M): a weight gradient's dyᵀ gives its bias's
/// gradient on the way (bias_backward's values, bit for bit).
inline void pack_a(std::uint32_t* dst, const float* A, std::size_t lda, transpose ta, std::size_t M,
                   std::size_t K, float* sums = nullptr) {
    const std::size_t KP = pairs(K), whole = M / MR;
    if (ta == transpose::no) {
        if (sums) throw error(errc::invalid_argument, "bf16 pack_a", "row sums need op(A) = Aᵀ");
        detail::parallel_for(M, std::max<std::size_t>(1, 8192 / std::max<std::size_t>(K, 1)),
                             [&](std::size_t i0, std::size_t i1) {
                                 for (std::size_t i = i0; i < i1; ++i)
                                     pair_adjacent(dst + i * KP, A + i * lda, K);
                             });
        return;
    }
    // op(A)(i, k) = A[k * lda + i]: rows k and k + 1 give each tile's pairs
    detail::parallel_for(
        whole, std::max<std::size_t>(1, 4096 / std::max<std::size_t>(KP, 1)),
        [&](std::size_t t0, std::size_t t1) { pack_a_transposed(dst, A, lda, K, t0, t1, sums); });
    if (const std::size_t mr = M - whole * MR; mr > 0) {  // the last, short tile: zero rows
        std::uint32_t* d = dst + whole * KP * MR;
        for (std::size_t p = 0; p < KP; ++p) {
            const float* r0 = A + 2 * p * lda + whole * MR;
            const float* r1 = 2 * p + 1 < K ? r0 + lda : nullptr;
            pair_rows(d + p * MR, r0, r1, mr);
            std::fill(d + p * MR + mr, d + (p + 1) * MR, 0u);
            if (sums)
                for (std::size_t i = 0; i < mr; ++i) {
                    float& s = sums[whole * MR + i];
                    s += r0[i];
                    if (r1) s += r1[i];
                }
        }
    }
}

#if FTUNE_HAS_BF16_KERNELS
/// Transposes the 16 x 16 words of r in registers: r[i] holds row i before, column i after.
FTUNE_BF16_TARGET inline void transpose16(__m512i (&r)[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {  // within each 128-bit lane: rows 2i, 2i + 1 interleaved
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // lane l of r[4g + k]: rows 4g .. 4g + 3 of column 4l + k
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int k = 0; k < 4; ++k) {  // column 4l + k gathers lane l of r[k], r[4 + k], ...
        const __m512i v0 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x44);
        const __m512i v1 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xee);
        const __m512i v2 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x44);
        const __m512i v3 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xee);
        t[k] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        t[4 + k] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
        t[8 + k] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        t[12 + k] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

/// pack_b_panel for op(B)(k, j) = B[j * ldb + k] (P a multiple of 16): 16 columns x 16 pairs
/// at a time, each column's 32 values rounded (round32) into one register of its pairs, the 16
/// registers transposed, and each pair's 16 words stored at once (column by column, with the
/// words stored one by one P apart, the packing of attention's Kᵀ took a third of the time of
/// its 128 x 128 x 32 product, 2026-12-05).
template <std::size_t P>
FTUNE_BF16_TARGET void pack_columns(std::uint32_t* dst, const float* B, std::size_t ldb,
                                    std::size_t k0, std::size_t kc, std::size_t j0,
                                    std::size_t nr) {
    const std::size_t kp = pairs(kc);
    for (std::size_t g = 0; g < P; g += W)            // columns g .. g + 15 (zeros past nr)
        for (std::size_t p0 = 0; p0 < kp; p0 += W) {  // their pairs p0 .. p0 + 15
            const std::size_t n = std::min<std::size_t>(2 * W, kc - 2 * p0);  // values of each
            const auto mask = [](std::size_t m) {
                return m >= W ? __mmask16(0xffff) : __mmask16((1u << m) - 1);
            };
            const __mmask16 m0 = mask(n), m1 = n > W ? mask(n - W) : __mmask16(0);
            __m512i r[W];
            for (std::size_t i = 0; i < W; ++i) {
                r[i] = _mm512_setzero_si512();
                if (g + i >= nr) continue;
                const float* col = B + (j0 + g + i) * ldb + k0 + 2 * p0;
                r[i] = round32(_mm512_maskz_loadu_ps(m0, col), _mm512_maskz_loadu_ps(m1, col + W));
            }
            transpose16(r);
            for (std::size_t p = 0; p < std::min(W, kp - p0); ++p)
                _mm512_storeu_si512(dst + (p0 + p) * P + g, r[p]);
        }
}
#endif

#if FTUNE_HAS_AMX_KERNELS
/// Rows [i0, i1) of a transposed A (op(A)(i, k) = A[k * lda + i], float or kept in bf16) as
/// rows of pairs, row i at dst + i ⌈K/2⌉ (the layout of a row-major A, which AMX tiles read):
/// 16 rows x 16 pairs at a time, each pair's 16 words made from two rows of A (pairs16 or the
/// bf16 words), then transposed in registers (transpose16). With sums (float A), sums[i] +=
/// op(A)(i, k) for k = 0, 1, ... in order: pack_a_transposed's values, bit for bit.
template <class TA>
FTUNE_BF16_TARGET void pack_a_transposed_rows(std::uint32_t* dst, const TA* A, std::size_t lda,
                                              std::size_t K, std::size_t i0, std::size_t i1,
                                              float* sums) {
    const std::size_t KP = pairs(K);
    for (std::size_t g = i0; g < i1; g += W) {  // rows g .. g + n of op(A): 16 columns of A
        const std::size_t n = std::min(W, i1 - g);
        const __mmask16 k = n == W ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
        __m512 s = sums ? _mm512_maskz_loadu_ps(k, sums + g) : _mm512_setzero_ps();
        for (std::size_t p0 = 0; p0 < KP; p0 += W) {
            const std::size_t np = std::min(W, KP - p0);
            __m512i r[W];
            for (std::size_t p = 0; p < W; ++p) {
                r[p] = _mm512_setzero_si512();
                if (p >= np) continue;
                const std::size_t k0 = 2 * (p0 + p);  // rows k0 and k0 + 1 of A
                const bool has_hi = k0 + 1 < K;
                if constexpr (std::is_same_v<TA, float>) {
                    const __m512 lo = _mm512_maskz_loadu_ps(k, A + k0 * lda + g);
                    const __m512 hi = has_hi ? _mm512_maskz_loadu_ps(k, A + (k0 + 1) * lda + g)
                                             : _mm512_setzero_ps();
                    if (sums) {
                        s = _mm512_add_ps(s, lo);
                        if (has_hi) s = _mm512_add_ps(s, hi);
                    }
                    r[p] = pairs16(lo, hi);
                } else {
                    const __m512i lo = widen16(A + k0 * lda + g, k);
                    r[p] = has_hi ? _mm512_or_si512(lo, _mm512_slli_epi32(
                                                            widen16(A + (k0 + 1) * lda + g, k), 16))
                                  : lo;
                }
            }
            transpose16(r);  // r[i]: pairs p0 .. p0 + 15 of row g + i
            const __mmask16 kp = np == W ? __mmask16(0xffff) : __mmask16((1u << np) - 1);
            for (std::size_t i = 0; i < n; ++i)
                _mm512_mask_storeu_epi32(dst + (g + i) * KP + p0, kp, r[i]);
        }
        if (sums) _mm512_mask_storeu_ps(sums + g, k, s);
    }
}
#endif

/// Packs the P-column panel (P = NR, or the narrower panels of attention's outputs) of
/// op(B)[k0:k0+kc, j0:j0+nr] (k0 even) as ⌈kc/2⌉ pairs of P words (columns past nr and the odd
/// kc's last high half are zero). B may be kept in bf16 already (TB = bf16: its words copied).
template <std::size_t P = NR, class TB = float>
void pack_b_panel(std::uint32_t* dst, const TB* B, std::size_t ldb, transpose tb, std::size_t k0,
                  std::size_t kc, std::size_t j0, std::size_t nr) {
    const std::size_t kp = pairs(kc);
    if (tb == transpose::no) {  // op(B)(k, j) = B[k * ldb + j]: rows contiguous along j
        // rows ldb apart, which the hardware prefetchers follow late: the rows of the pair
        // `ahead` pairs on are asked for while this one is packed
        constexpr std::size_t ahead = 8;
        for (std::size_t p = 0; p < kp; ++p) {
            const TB* r0 = B + (k0 + 2 * p) * ldb + j0;
            if (2 * (p + ahead) + 1 < kc)
                for (std::size_t l = 0; l < nr; l += 64 / sizeof(TB)) {  // a line at a time
                    __builtin_prefetch(r0 + 2 * ahead * ldb + l, 0, 3);
                    __builtin_prefetch(r0 + (2 * ahead + 1) * ldb + l, 0, 3);
                }
            std::uint32_t* d = dst + p * P;
            pair_rows(d, r0, 2 * p + 1 < kc ? r0 + ldb : nullptr, nr);
            std::fill(d + nr, d + P, 0u);
        }
    } else if constexpr (std::is_same_v<TB, bf16>) {  // op(B)(k, j) = B[j * ldb + k], copied
        for (std::size_t p = 0; p < kp; ++p)
            for (std::size_t j = 0; j < P; ++j) {
                const bf16* c = B + (j0 + j) * ldb + k0 + 2 * p;
                dst[p * P + j] = j >= nr
                                     ? 0u
                                     : std::uint32_t{c[0].bits} |
                                           (2 * p + 1 < kc ? std::uint32_t{c[1].bits} << 16 : 0u);
            }
    } else {  // op(B)(k, j) = B[j * ldb + k] (x Wᵀ, W stored [out, in]): a column's pairs adjacent
#if FTUNE_HAS_BF16_KERNELS
        if constexpr (P % W == 0) return pack_columns<P>(dst, B, ldb, k0, kc, j0, nr);
#endif
        // each column's pairs rounded 32 values at a time (pair_adjacent), then stored P words
        // apart: the rounding in scalar code took ~3 ns a pair, a training step's weights
        // (packed in this layout every step) and attention's Kᵀ ~2% of their time
        constexpr std::size_t chunk = 256;  // pairs per pass
        std::uint32_t words[chunk];
        for (std::size_t j = 0; j < P; ++j) {
            if (j >= nr) {
                for (std::size_t p = 0; p < kp; ++p) dst[p * P + j] = 0;
                continue;
            }
            const float* r = B + (j0 + j) * ldb + k0;
            for (std::size_t p0 = 0; p0 < kp; p0 += chunk) {
                const std::size_t n = std::min(chunk, kp - p0);
                pair_adjacent(words, r + 2 * p0, std::min(2 * n, kc - 2 * p0));
                for (std::size_t p = 0; p < n; ++p) dst[(p0 + p) * P + j] = words[p];
            }
        }
    }
}

/// Where the packed B of a product lives and how it is blocked (packed_b_bf16's layout).
/// Words before the packed (jc, pc) block of op(B) (K rows) whose column block has `panels`
/// panels: pack_b writes and b_layout::block reads the blocks there.
inline std::size_t block_offset(std::size_t K, std::size_t jc, std::size_t pc,
                                std::size_t panels) noexcept {
    return jc * pairs(K) + panels * NR * (pc / 2);
}

struct b_layout {
    const std::uint32_t* data;  ///< the packed words
    std::size_t K, N, kc, nc;   ///< depth, columns, depth of the K blocks, columns of a block
    /// The packed (jc, pc) block of a column block with `panels` panels.
    const std::uint32_t* block(std::size_t jc, std::size_t pc, std::size_t panels) const noexcept {
        return data + block_offset(K, jc, pc, panels);
    }
};

/// Number of words of op(B) (K x N) packed: whole panels of ⌈K/2⌉ pairs.
inline std::size_t b_words(std::size_t K, std::size_t N) noexcept {
    return (N + NR - 1) / NR * NR * pairs(K);
}

/// Packs op(B) (K x N) into dst in the b_layout of depth blocks kc (even) and column blocks nc.
/// B may be kept in bf16 already (TB = bf16: the same words, copied instead of rounded).
template <class TB>
void pack_b(std::uint32_t* dst, const TB* B, std::size_t ldb, transpose tb, std::size_t K,
            std::size_t N, std::size_t kc, std::size_t nc) {
    if (tb == transpose::no) {
        // op(B) = B (a weight gradient's activations): each pair of rows is read once, whole
        // and in order, and its words go to every panel; panel by panel, the rows were read in
        // 192-byte pieces ldb apart, which the hardware prefetchers followed late
        const std::size_t KP = pairs(K);
        detail::parallel_for(
            KP, std::max<std::size_t>(1, 4096 / std::max<std::size_t>(N, 1)),
            [&](std::size_t p0, std::size_t p1) {
                for (std::size_t p = p0; p < p1; ++p) {
                    const std::size_t pc = 2 * p / kc * kc, kp = pairs(std::min(kc, K - pc));
                    const TB* r0 = B + 2 * p * ldb;
                    const TB* r1 = 2 * p + 1 < K ? r0 + ldb : nullptr;
                    for (std::size_t jc = 0; jc < N; jc += nc) {
                        const std::size_t ncur = std::min(nc, N - jc),
                                          panels = (ncur + NR - 1) / NR;
                        std::uint32_t* blk = dst + block_offset(K, jc, pc, panels);
                        for (std::size_t q = 0; q < panels; ++q) {
                            const std::size_t j = jc + q * NR, nr = std::min(NR, N - j);
                            std::uint32_t* d = blk + q * kp * NR + (p - pc / 2) * NR;
                            pair_rows(d, r0 + j, r1 ? r1 + j : nullptr, nr);
                            std::fill(d + nr, d + NR, 0u);
                        }
                    }
                }
            });
        return;
    }
    detail::parallel_for((N + NR - 1) / NR, 4, [&](std::size_t q0, std::size_t q1) {
        for (std::size_t q = q0; q < q1; ++q) {
            const std::size_t j = q * NR, jc = j / nc * nc, ncur = std::min(nc, N - jc);
            const std::size_t panels = (ncur + NR - 1) / NR, p = (j - jc) / NR;
            for (std::size_t pc = 0; pc < K; pc += kc) {
                const std::size_t kcur = std::min(kc, K - pc);
                std::uint32_t* blk = dst + block_offset(K, jc, pc, panels);
                pack_b_panel(blk + p * pairs(kcur) * NR, B, ldb, tb, pc, kcur, j,
                             std::min(NR, N - j));
            }
        }
    });
}

#if FTUNE_HAS_BF16_KERNELS
/// d[i] = (r0[i], r1[i]) for the MR = 8 values of two rows of bf16 values (r1 null: high halves
/// zero): one tile's pair of a transposed A kept in bf16, from two 16-byte loads (word by word,
/// the copy of attention's Pᵀ and dSᵀ took about a fifth of their products' time).
FTUNE_BF16_TARGET inline void interleave_tile(std::uint32_t* d, const bf16* r0, const bf16* r1) {
    static_assert(MR == 8 && sizeof(bf16) == 2);
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0));
    const __m128i hi =
        r1 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1)) : _mm_setzero_si128();
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_unpacklo_epi16(lo, hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 4), _mm_unpackhi_epi16(lo, hi));
}
#else
inline void interleave_tile(std::uint32_t*, const bf16*, const bf16*) {}  // never called
#endif

/// pack_a for an A already in bf16 (the attention activations a bf16 training step keeps): the
/// same words, copied instead of rounded. Row-major with K and lda even needs no copy at all
/// (gemm_bf16 reads it in place); this covers the other cases.
inline void pack_a(std::uint32_t* dst, const bf16* A, std::size_t lda, transpose ta, std::size_t M,
                   std::size_t K) {
    const std::size_t KP = pairs(K);
    auto word = [&](std::size_t i, std::size_t k) -> std::uint32_t {  // op(A)(i, k), k < K
        return ta == transpose::no ? A[i * lda + k].bits : A[k * lda + i].bits;
    };
    if (ta == transpose::no) {
        detail::parallel_for(M, std::max<std::size_t>(1, 16384 / std::max<std::size_t>(K, 1)),
                             [&](std::size_t i0, std::size_t i1) {
                                 for (std::size_t i = i0; i < i1; ++i)
                                     for (std::size_t p = 0; p < KP; ++p)
                                         dst[i * KP + p] =
                                             word(i, 2 * p) |
                                             (2 * p + 1 < K ? word(i, 2 * p + 1) << 16 : 0u);
                             });
        return;
    }
    const std::size_t tiles = (M + MR - 1) / MR;  // rows k and k + 1 interleaved into tiles
    detail::parallel_for(tiles, std::max<std::size_t>(1, 8192 / std::max<std::size_t>(KP, 1)),
                         [&](std::size_t t0, std::size_t t1) {
                             for (std::size_t t = t0; t < t1; ++t)
                                 for (std::size_t p = 0; p < KP; ++p) {
                                     std::uint32_t* d = dst + t * KP * MR + p * MR;
                                     const bf16* r0 = A + 2 * p * lda + t * MR;
                                     const bf16* r1 = 2 * p + 1 < K ? r0 + lda : nullptr;
                                     const std::size_t n = std::min(MR, M - t * MR);
                                     if (n == MR && FTUNE_HAS_BF16_KERNELS) {
                                         interleave_tile(d, r0, r1);
                                         continue;
                                     }
                                     for (std::size_t i = 0; i < n; ++i)
                                         d[i] = std::uint32_t{r0[i].bits} |
                                                (r1 ? std::uint32_t{r1[i].bits} << 16 : 0u);
                                     for (std::size_t i = n; i < MR; ++i) d[i] = 0;
                                 }
                         });
}

#if FTUNE_HAS_BF16_KERNELS
/// c[0:16] = va * sum + (first ? vb * c (when beta != 0) : c) + bias + res under the mask k of
/// valid lanes (bias and res may be null): how kernel stores one vector of its tile.
FTUNE_BF16_TARGET inline void store_sum(__m512 sum, float* c, const float* bias, const float* res,
                                        __mmask16 k, __m512 va, __m512 vb, float beta, bool first) {
    __m512 r = _mm512_mul_ps(sum, va);
    if (!first)
        r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, c));
    else if (beta != 0.0f)
        r = _mm512_add_ps(r, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k, c)));
    if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, bias));
    if (res) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, res));
    _mm512_mask_storeu_ps(c, k, r);
}

/// The register tile: acc = Σ_p a(:, p) · b[p] over kp pairs for R <= MR rows and a panel of
/// NV vectors (NR columns; 2 for attention's outputs, whose 32 or 64 columns would leave a third
/// of 3-vector panels zero; each element's arithmetic is the same either way), then C[0:m, 0:n]
/// = alpha * acc + (first ? beta * C : C), + bias[0:n] when given, + the residual (rows ldr
/// apart) when given: gemm.hpp's micro_kernel contract. With first && beta == 0, C is not read.
/// A is a tile of pack_a's layout (ld 0: word (i, p) at a[p * MR + i]) or, ld > 0, rows ld
/// words apart read in place (word (i, p) at a[i * ld + p]; rows past m repeat row m - 1).
/// Meanwhile the pf_lines 64-byte cache lines from pf on are prefetched, spread evenly over the
/// kp steps (gemm.hpp's micro_kernel does the same for the fp32 products).
/// InPlace is ld > 0 (a packed tile is read through one pointer, which leaves the registers
/// that eight row pointers would take to the loop).
template <std::size_t R, bool InPlace, std::size_t NV = bf16_detail::NV>
FTUNE_BF16_TARGET void kernel(std::size_t kp, const std::uint32_t* a, std::size_t ld,
                              const std::uint32_t* b, float* C, std::size_t ldc, std::size_t m,
                              std::size_t n, float alpha, float beta, bool first, const float* bias,
                              const float* residual, std::size_t ldr, const char* pf,
                              std::size_t pf_lines) {
    constexpr std::size_t P = NV * W;  // the panel's columns
    __m512 c[R][NV];
#pragma GCC unroll 8
    for (std::size_t i = 0; i < R; ++i)
#pragma GCC unroll 3
        for (std::size_t v = 0; v < NV; ++v) c[i][v] = _mm512_setzero_ps();
    // the address of word (i, p) is rows[i] + p in place, a + p * MR + i packed
    const std::uint32_t* rows[R];
    if constexpr (InPlace)
        for (std::size_t i = 0; i < R; ++i) rows[i] = a + std::min(i, m - 1) * ld;
    // the C tile comes into the cache while the sums run, whether it is read after them (a
    // gradient accumulated into, a later block of K) or only written (each store would wait on
    // its line otherwise): its rows are ldc apart, which no hardware prefetcher follows
    for (std::size_t i = 0; i < std::min(m, R); ++i)
        for (std::size_t j = 0; j < n; j += W) _mm_prefetch(C + i * ldc + j, _MM_HINT_T0);
    if (residual)
        for (std::size_t i = 0; i < std::min(m, R); ++i)
            for (std::size_t j = 0; j < n; j += W)
                _mm_prefetch(residual + i * ldr + j, _MM_HINT_T0);
    // `per` lines before each run of `gap` steps (the prefetch's counters stay out of the inner
    // loop, whose registers the row pointers need)
    const std::size_t gap = pf_lines ? std::max<std::size_t>(1, kp / pf_lines) : kp;
    const std::size_t per = pf_lines && kp ? (pf_lines + kp - 1) / kp : 0;
    std::size_t pf_left = pf_lines;
    for (std::size_t p0 = 0; p0 < kp; p0 += gap) {
        for (std::size_t l = 0; l < per && pf_left; ++l, --pf_left, pf += 64)
            _mm_prefetch(pf, _MM_HINT_T0);
        const std::size_t p1 = std::min(kp, p0 + gap);
        for (std::size_t p = p0; p < p1; ++p, b += P) {
            __m512bh bv[NV];
#pragma GCC unroll 3
            for (std::size_t v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_load_si512(b + v * W);
#pragma GCC unroll 8
            for (std::size_t i = 0; i < R; ++i) {
                std::uint32_t word;  // memcpy: the words may be bf16 values stored in place
                std::memcpy(&word, InPlace ? rows[i] + p : a + p * MR + i, sizeof word);
                const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(word));
#pragma GCC unroll 3
                for (std::size_t v = 0; v < NV; ++v) c[i][v] = _mm512_dpbf16_ps(c[i][v], ai, bv[v]);
            }
        }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    // Every index into c is a constant once unrolled, so the accumulators stay in registers
    // (an index bounded by m or n at run time kept them on the stack: 24 stores to zero them,
    // 24 after the loop and 24 loads, ~5% of a 384-deep tile, more of attention's short ones).
    // (store_sum is a function of its own: a lambda would not inherit this function's ISA.)
    if (m == R && n == P) {
#pragma GCC unroll 8
        for (std::size_t i = 0; i < R; ++i)
#pragma GCC unroll 3
            for (std::size_t v = 0; v < NV; ++v)
                store_sum(c[i][v], C + i * ldc + v * W, bias ? bias + v * W : nullptr,
                          residual ? residual + i * ldr + v * W : nullptr, __mmask16(0xffff), va,
                          vb, beta, first);
        return;
    }
    alignas(64) float sums[R][P];  // a partial tile goes through memory
#pragma GCC unroll 8
    for (std::size_t i = 0; i < R; ++i)
#pragma GCC unroll 3
        for (std::size_t v = 0; v < NV; ++v) _mm512_store_ps(&sums[i][v * W], c[i][v]);
    for (std::size_t i = 0; i < std::min(m, R); ++i)
        for (std::size_t j = 0; j < n; j += W)
            store_sum(_mm512_load_ps(&sums[i][j]), C + i * ldc + j, bias ? bias + j : nullptr,
                      residual ? residual + i * ldr + j : nullptr,
                      n - j >= W ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1), va, vb, beta,
                      first);
}

/// kernel with the fewest rows (a multiple of two, or MR) that cover m, on panels of NV vectors.
template <std::size_t NV = bf16_detail::NV>
void kernel_rows(std::size_t kp, const std::uint32_t* a, std::size_t ld, const std::uint32_t* b,
                 float* C, std::size_t ldc, std::size_t m, std::size_t n, float alpha, float beta,
                 bool first, const float* bias, const float* residual, std::size_t ldr,
                 const char* pf, std::size_t pf_lines) {
    auto call = [&]<std::size_t R>() {
        if (ld)
            kernel<R, true, NV>(kp, a, ld, b, C, ldc, m, n, alpha, beta, first, bias, residual, ldr,
                                pf, pf_lines);
        else
            kernel<R, false, NV>(kp, a, ld, b, C, ldc, m, n, alpha, beta, first, bias, residual,
                                 ldr, pf, pf_lines);
    };
    if (m <= 2)
        call.template operator()<2>();
    else if (m <= 4)
        call.template operator()<4>();
    else if (m <= 6)
        call.template operator()<6>();
    else
        call.template operator()<8>();
}
#endif

#if FTUNE_HAS_AMX_KERNELS
/// kernel_rows' contract on AMX tiles for m <= 16 rows of op(A) in rows of pairs (a_ld words
/// apart, a_ld > 0) and n <= P columns of a packed panel of P = NR (or NR2) columns:
/// amx_detail::tile_product's sums, through a buffer, stored by store_sum as the register kernel
/// stores its own.
template <std::size_t P = NR>
FTUNE_AMX_TARGET void amx_rows(std::size_t kp, const std::uint32_t* a, std::size_t a_ld,
                               const std::uint32_t* b, float* C, std::size_t ldc, std::size_t m,
                               std::size_t n, float alpha, float beta, bool first,
                               const float* bias, const float* residual, std::size_t ldr,
                               const char* pf, std::size_t pf_lines) {
    static_assert(amx_detail::PANEL == NR && (P == NR || P == 2 * W));  // (m <= 16, n <= P)
    for (std::size_t i = 0; i < m; ++i)  // C's rows are ldc apart: no prefetcher follows them
        for (std::size_t j = 0; j < n; j += W) _mm_prefetch(C + i * ldc + j, _MM_HINT_T0);
    alignas(64) float acc[amx_detail::TR * P];
    if (n <= W)
        amx_detail::tile_product<1, P>(kp, a, a_ld, m, b, acc, pf, pf_lines);
    else if (P == 2 * W || n <= 2 * W)
        amx_detail::tile_product<2, P>(kp, a, a_ld, m, b, acc, pf, pf_lines);
    else if constexpr (P == NR)
        amx_detail::tile_product<3, P>(kp, a, a_ld, m, b, acc, pf, pf_lines);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; j += W)
            store_sum(_mm512_load_ps(acc + i * P + j), C + i * ldc + j, bias ? bias + j : nullptr,
                      residual ? residual + i * ldr + j : nullptr,
                      n - j >= W ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1), va, vb, beta,
                      first);
}
#endif

/// The error of a bf16 product on a CPU without AVX512-BF16, or in a build without the kernels.
inline error unsupported(const char* where) {
    if (!FTUNE_HAS_BF16_KERNELS && this_cpu().avx512_bf16)
        return error(errc::unsupported, where,
                     "this build has no bf16 kernels (FTUNE_NO_BF16_KERNELS, or a compiler "
                     "without AVX512-BF16 intrinsics: GCC 10 or Clang 9 and later have them); "
                     "use fp32 (--precision fp32) or rebuild");
    return error(errc::unsupported, where,
                 ftune::detail::cat("bf16 products need a CPU with AVX512-BF16 (Intel Cooper Lake "
                                    "or Sapphire Rapids and later, AMD Zen 4 and later); this one "
                                    "reports ",
                                    this_cpu().summary(),
                                    " (ftune info --system). Use fp32 (--precision fp32)"));
}

/// C(M, N) = alpha * Apack * B + beta * C (+ bias, then the epilogue) over A in pack_a's
/// layout (a_ld > 0: rows a_ld words apart; 0: MR-row tiles) and B packed in layout Bl, on nt
/// threads (1: the calling thread), in gemm_schedule.hpp's order (with the rows split, about 4
/// units per thread: A is packed whole beforehand, so a unit may take part of a row block's
/// panels). On AMX tiles (amx: A in rows, a_ld > 0), row tiles of 16 (amx_rows); else the
/// register kernel's MR rows. The arithmetic of each element does not depend on the split.
template <class Epilogue>
void run(std::size_t M, std::size_t N, std::size_t K, float alpha, const std::uint32_t* apack,
         std::size_t a_ld, const b_layout& Bl, float beta, float* C, std::size_t ldc,
         const float* bias, const Epilogue& epilogue, int nt, bool amx = false) {
#if FTUNE_HAS_BF16_KERNELS
    constexpr bool fused_residual = std::is_same_v<Epilogue, add_residual<float>>;
    const std::size_t NC = Bl.nc;
    // (a build without the tile kernels never takes their row tiles, whatever it is told)
    amx = amx && FTUNE_HAS_AMX_KERNELS;
    if (amx && a_ld == 0)
        throw error(errc::invalid_argument, "gemm_bf16", "AMX tiles read op(A) in rows of pairs");
    const std::size_t rows = amx ? amx_detail::TR : MR;  // the row tile
    const std::size_t mc = (runtime_blocking().mc + rows - 1) / rows * rows;
    const schedule_detail::plan plan =
        schedule_detail::make_plan(M, N, K, rows, NR, mc, Bl.kc, nt, 4);
    // the packed panel q of depth block pc: its first byte and its length in bytes
    auto panel = [&](std::size_t pc, std::size_t q) {
        const std::size_t jc = q * NR / NC * NC, nc = std::min(NC, N - jc);
        const std::size_t kp = pairs(std::min(Bl.kc, K - pc));
        return std::pair{reinterpret_cast<const char*>(Bl.block(jc, pc, (nc + NR - 1) / NR) +
                                                       (q * NR - jc) / NR * kp * NR),
                         kp * NR * sizeof(std::uint32_t)};
    };
    auto block = [](std::size_t, std::size_t, std::size_t, std::size_t) {};  // A is packed
    [[maybe_unused]] const std::uint64_t run_id = amx ? amx_detail::next_run_id() : 0;
    schedule_detail::run(plan, nt, panel, block, [&](const schedule_detail::tile& t) {
        const std::size_t row = t.ic + t.ir;
        float* c = C + row * ldc + t.q * NR;
        const std::uint32_t* a =
            a_ld ? apack + row * a_ld + t.pc / 2 : apack + row / MR * pairs(K) * MR + t.pc / 2 * MR;
        const float* res = nullptr;
        std::size_t ldr = 0;
        if constexpr (fused_residual)
            if (t.last) res = epilogue.r + row * epilogue.ldr + t.q * NR, ldr = epilogue.ldr;
        const auto* b = reinterpret_cast<const std::uint32_t*>(t.b);
        const float* bias_q = bias && t.last ? bias + t.q * NR : nullptr;
#if FTUNE_HAS_AMX_KERNELS
        if (amx) {
            amx_detail::configure_for(run_id);
            amx_rows(pairs(t.kc), a, a_ld, b, c, ldc, t.mr, t.nr, alpha, beta, t.first, bias_q, res,
                     ldr, t.pf, t.pf_lines);
        } else
#endif
            kernel_rows(pairs(t.kc), a, a_ld, b, c, ldc, t.mr, t.nr, alpha, beta, t.first, bias_q,
                        res, ldr, t.pf, t.pf_lines);
        if constexpr (!fused_residual)
            if (t.last) epilogue(c, ldc, row, t.mr, t.q * NR, t.nr);
    });
#else
    (void)M, (void)N, (void)K, (void)alpha, (void)apack, (void)a_ld, (void)Bl, (void)beta, (void)C,
        (void)ldc, (void)bias, (void)epilogue, (void)nt, (void)amx;
    throw unsupported("gemm_bf16");
#endif
}

/// Threads for a bf16 product of 2 M N K flops (B: N x K bf16 values): gemm_packed's rule.
inline int threads_for(std::size_t M, std::size_t N, std::size_t K) {
    return schedule_detail::threads_for(M, N, K, 2);
}

/// No element-wise work after a product (the default epilogue).
struct none {
    /// Does nothing.
    void operator()(float*, std::size_t, std::size_t, std::size_t, std::size_t,
                    std::size_t) const noexcept {}
};

/// C = beta * C (+ bias) and the epilogue, for products with nothing to sum (K == 0).
template <class Epilogue>
void no_product(std::size_t M, std::size_t N, float beta, float* C, std::size_t ldc,
                const float* bias, const Epilogue& epilogue) {
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = 0; j < N; ++j) {
            float& c = C[i * ldc + j];
            c = (beta == 0.0f ? 0.0f : beta * c) + (bias ? bias[j] : 0.0f);
        }
    epilogue(C, ldc, 0, M, 0, N);
}

/// Columns of the narrow panels: two vectors, the width of attention's outputs.
inline constexpr std::size_t NR2 = 2 * W;

/// Whether N columns pad to fewer in panels of NR2 than of NR: 32 and 64 (a head's values), 128
/// (the keys of a 128-token sequence: 144 in panels of 48), 5, ...; never a multiple of 48.
inline constexpr bool narrow_panels(std::size_t N) noexcept {
    return (N + NR2 - 1) / NR2 * NR2 < (N + NR - 1) / NR * NR;
}

/// op(B) (K x N) as ⌈N / NR2⌉ panels of NR2 columns, one depth block: panel q holds ⌈K/2⌉
/// pairs of NR2 words from dst + q ⌈K/2⌉ NR2 (fewer words than b_words(K, N) when
/// narrow_panels(N)).
template <class TB>  // float, or bf16 (B kept in bf16: its words copied)
void pack_narrow(std::uint32_t* dst, const TB* B, std::size_t ldb, transpose tb, std::size_t K,
                 std::size_t N) {
    for (std::size_t q = 0, j = 0; j < N; ++q, j += NR2)
        pack_b_panel<NR2>(dst + q * pairs(K) * NR2, B, ldb, tb, 0, K, j, std::min(NR2, N - j));
}

/// C(M, N) = alpha * Apack * B + beta * C on the calling thread, B packed by pack_narrow: each
/// MR-row tile against each panel with the two-vector kernel (each element's arithmetic is
/// run()'s: one depth block, the same pairs in the same order). On attention's heads of 32
/// values (the 128 x 32 x 128 products of 16 sequences x 12 heads, two threads) it took half the
/// time of 48-wide panels, a third of whose columns were zeros, and the blocked schedule
/// (2026-12-05).
inline void run_narrow(std::size_t M, std::size_t N, std::size_t K, float alpha,
                       const std::uint32_t* apack, std::size_t a_ld, const std::uint32_t* bpack,
                       float beta, float* C, std::size_t ldc) {
#if FTUNE_HAS_BF16_KERNELS
    const std::size_t kp = pairs(K);
    for (std::size_t i = 0; i < M; i += MR) {
        const std::uint32_t* a = a_ld ? apack + i * a_ld : apack + i / MR * kp * MR;
        for (std::size_t q = 0, j = 0; j < N; ++q, j += NR2)
            kernel_rows<2>(kp, a, a_ld, bpack + q * kp * NR2, C + i * ldc + j, ldc,
                           std::min(MR, M - i), std::min(NR2, N - j), alpha, beta, true, nullptr,
                           nullptr, 0, nullptr, 0);
    }
#else
    (void)M, (void)N, (void)K, (void)alpha, (void)apack, (void)a_ld, (void)bpack, (void)beta,
        (void)C, (void)ldc;
    throw unsupported("gemm_bf16");
#endif
}

}  // namespace bf16_detail

/// op(B) (K, N) rounded to bf16 and packed once in pairs (bf16_detail::b_layout), for products
/// that reuse it: the weights of a model in bf16 inference, or in a bf16 training step (packed
/// once per optimizer step). Copies share the packed words (read-only once packed); pack() on a
/// copy that shares them packs into new storage.
class packed_b_bf16 {
  public:
    /// Nothing packed.
    packed_b_bf16() = default;

    /// Packs op(B) (K rows, N columns) from B with row stride ldb; grows the storage only.
    /// errc::unsupported on a CPU without AVX512-BF16 in a build with the kernels (the packing
    /// rounds with its instructions; a build without them packs in scalar code, and its products
    /// refuse to run).
    void pack(const float* B, std::size_t ldb, transpose tb, std::size_t K, std::size_t N) {
        if (FTUNE_HAS_BF16_KERNELS && !bf16_supported())
            throw bf16_detail::unsupported("packed_b_bf16::pack");
        const bf16_detail::blocking& bl = bf16_detail::runtime_blocking();
        const std::size_t n = bf16_detail::b_words(K, N);
        if (n > cap_ || data_.use_count() > 1) {
            data_ = detail::packed_storage<std::uint32_t>(n);
            cap_ = n;
        }
        K_ = K, N_ = N, nc_ = bl.nc;
        const std::size_t blocks = (K + bl.kc - 1) / std::max<std::size_t>(bl.kc, 1);
        kc_ = K == 0 ? 0 : ((K + blocks - 1) / blocks + 1) / 2 * 2;  // even, split evenly
        bf16_detail::pack_b(data_.get(), B, ldb, tb, K, N, std::max<std::size_t>(kc_, 2), nc_);
    }
    /// Rows of op(B).
    std::size_t rows() const noexcept { return K_; }
    /// Columns of op(B).
    std::size_t cols() const noexcept { return N_; }
    /// Bytes of packed storage in use.
    std::size_t bytes() const noexcept { return bf16_detail::b_words(K_, N_) * 4; }
    /// The layout gemm_packed_bf16 reads.
    bf16_detail::b_layout layout() const noexcept {
        return {data_.get(), K_, N_, std::max<std::size_t>(kc_, 2), nc_};
    }

  private:
    std::shared_ptr<std::uint32_t[]> data_;  // shared by copies; written only when not shared
    std::size_t cap_ = 0, K_ = 0, N_ = 0, kc_ = 0, nc_ = 0;
};

namespace bf16_detail {
/// An operand type of the bf16 products: float (rounded as packed), or bf16 (kept so already).
template <class T>
concept operand = std::is_same_v<T, float> || std::is_same_v<T, bf16>;

/// op(A) (M x K) as run() reads it: {words, a_ld}. A row-major A kept in bf16 with K and lda even
/// is read in place (a_ld = lda / 2); any other A is packed by pack_a into scratch 0 (a_ld ⌈K/2⌉
/// for a row-major A, 0 for tiles), adding op(A)'s row sums to sums when given (float A only).
/// With rows (the AMX kernels), a transposed A goes into rows of pairs as well (a_ld ⌈K/2⌉).
template <class TA>
std::pair<const std::uint32_t*, std::size_t> a_words(const TA* A, std::size_t lda, transpose ta,
                                                     std::size_t M, std::size_t K,
                                                     float* sums = nullptr, bool rows = false) {
    if constexpr (std::is_same_v<TA, bf16>)
        if (ta == transpose::no && K % 2 == 0 && lda % 2 == 0)
            return {reinterpret_cast<const std::uint32_t*>(A), lda / 2};
    std::uint32_t* dst =
        detail::scratch<std::uint32_t, 0>((M + MR - 1) / MR * MR * pairs(K));  // whole tiles
#if FTUNE_HAS_AMX_KERNELS
    if (rows && ta == transpose::yes) {  // rows of pairs for AMX tiles, 16 rows per task
        const std::size_t KP = pairs(K);
        detail::parallel_for(
            (M + W - 1) / W, std::max<std::size_t>(1, 2048 / std::max<std::size_t>(KP, 1)),
            [&](std::size_t g0, std::size_t g1) {
                pack_a_transposed_rows(dst, A, lda, K, g0 * W, std::min(M, g1 * W), sums);
            });
        return {dst, KP};
    }
#endif
    (void)rows;
    if constexpr (std::is_same_v<TA, float>)
        pack_a(dst, A, lda, ta, M, K, sums);
    else
        pack_a(dst, A, lda, ta, M, K);
    return {dst, ta == transpose::no ? pairs(K) : 0};
}
}  // namespace bf16_detail

/// C(M,N) = alpha * op(A)(M,K) * Bp + beta * C (+ bias(N) on every row), then epilogue(c, ldc,
/// row0, rows, col0, cols) on each finished tile (gemm_packed's contract), with op(A) rounded to
/// bf16 and Bp packed by packed_b_bf16; fp32 sums. A may be kept in bf16 already (TA = bf16: a
/// linear layer's input in a bf16 training step), which gives the same result as its values as
/// floats; a row-major one with K and lda even is read in place. Throws errc::unsupported where
/// bf16_supported() is false.
template <class Epilogue = bf16_detail::none, bf16_detail::operand TA = float>
void gemm_packed_bf16(transpose ta, std::size_t M, std::size_t N, std::size_t K, float alpha,
                      const TA* A, std::size_t lda, const packed_b_bf16& Bp, float beta, float* C,
                      std::size_t ldc, const float* bias = nullptr, Epilogue epilogue = {}) {
    if (!bf16_supported()) throw bf16_detail::unsupported("gemm_packed_bf16");
    if (Bp.rows() != K || Bp.cols() != N)
        throw error(errc::shape_mismatch, "gemm_packed_bf16",
                    ftune::detail::cat("B was packed as ", Bp.rows(), " x ", Bp.cols(),
                                       " but the product needs ", K, " x ", N,
                                       "; pack it again after resizing"));
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0f) return bf16_detail::no_product(M, N, beta, C, ldc, bias, epilogue);
    const bool amx = amx_enabled();
    const auto [apack, a_ld] = bf16_detail::a_words(A, lda, ta, M, K, nullptr, amx);
    bf16_detail::run(M, N, K, alpha, apack, a_ld, Bp.layout(), beta, C, ldc, bias, epilogue,
                     bf16_detail::threads_for(M, N, K), amx);
}

/// C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C with both operands rounded to bf16 and
/// fp32 sums (BLAS's contract otherwise: beta == 0 ignores C's previous content). Both operands
/// are converted per call (the products of activations: a weight's gradient, attention). Either
/// may be kept in bf16 already (TA, TB = bf16: the activations a bf16 training step keeps in
/// bf16), which gives the same result as its values as floats; a row-major A with K and lda
/// even is read in place. With a_sums (op(A) = Aᵀ, A in float) the pass that packs A also adds
/// each row of op(A) summed over k = 0, 1, ... in order to a_sums (M): a weight's gradient dyᵀ x
/// and its bias's Σ dy from one read of dy (bias_backward's values, bit for bit).
template <bf16_detail::operand TA, bf16_detail::operand TB = float>
void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
               const TA* A, std::size_t lda, const TB* B, std::size_t ldb, float beta, float* C,
               std::size_t ldc, float* a_sums = nullptr) {
    if (!bf16_supported()) throw bf16_detail::unsupported("gemm_bf16");
    if (a_sums && (ta == transpose::no || !std::is_same_v<TA, float>))
        throw error(errc::invalid_argument, "gemm_bf16",
                    "row sums of op(A) are taken for op(A) = Aᵀ of a float A only");
    if (M == 0) return;
    if (N == 0 || K == 0 || alpha == 0.0f) {  // nothing multiplied; the row sums still add up
        if constexpr (std::is_same_v<TA, float>)
            if (a_sums)
                for (std::size_t k = 0; k < K; ++k)
                    for (std::size_t i = 0; i < M; ++i) a_sums[i] += A[k * lda + i];
        if (N == 0) return;
        return bf16_detail::no_product(M, N, beta, C, ldc, nullptr, bf16_detail::none{});
    }
    const bf16_detail::blocking& bl = bf16_detail::runtime_blocking();
    const int nt = bf16_detail::threads_for(M, N, K);
    const bool amx = amx_enabled();
    // one thread and one depth block, with fewer columns padded in 32-wide panels (attention's
    // heads and keys): packed and multiplied without the blocked schedule (AMX tiles skip the
    // zero columns of a 48-wide panel)
    const bool narrow = !amx && nt == 1 && K <= bl.kc && bf16_detail::narrow_panels(N);
    const std::size_t blocks = (K + bl.kc - 1) / bl.kc;
    const std::size_t kc = ((K + blocks - 1) / blocks + 1) / 2 * 2;
    std::uint32_t* bpack = detail::scratch<std::uint32_t, 1>(bf16_detail::b_words(K, N));
    if (narrow)
        bf16_detail::pack_narrow(bpack, B, ldb, tb, K, N);
    else
        bf16_detail::pack_b(bpack, B, ldb, tb, K, N, kc, bl.nc);
    const auto [apack, a_ld] = bf16_detail::a_words(A, lda, ta, M, K, a_sums, amx);
    if (narrow) return bf16_detail::run_narrow(M, N, K, alpha, apack, a_ld, bpack, beta, C, ldc);
    bf16_detail::run(M, N, K, alpha, apack, a_ld, bf16_detail::b_layout{bpack, K, N, kc, bl.nc},
                     beta, C, ldc, nullptr, bf16_detail::none{}, nt, amx);
}

/// `batch` independent gemm_bf16 products whose operands start stride_* elements apart
/// (attention's per-head products). Batches run in parallel, each product on one thread.
template <class TA>  // float, or bf16 (A kept in bf16)
void gemm_strided_batched_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, float alpha, const TA* A, std::size_t lda,
                               std::size_t stride_a, const float* B, std::size_t ldb,
                               std::size_t stride_b, float beta, float* C, std::size_t ldc,
                               std::size_t stride_c, std::size_t batch) {
    if (!bf16_supported()) throw bf16_detail::unsupported("gemm_strided_batched_bf16");
    detail::parallel_for(batch, 1, [&](std::size_t b0, std::size_t b1) {
        for (std::size_t b = b0; b < b1; ++b)
            gemm_bf16(ta, tb, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
                      C + b * stride_c, ldc);
    });
}

}  // namespace backends::cpu
FTUNE_NAMESPACE_END
