// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A random value is a pure function of (seed, stream, index): no state is carried from one draw to
// the next, so dropout masks and shuffles are the same whatever the number of threads and whatever
// order the elements are visited in. A `generator` hands out fresh streams, one per use.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <span>
#include <type_traits>
#include <utility>

#include "ftune/core/intrinsics.hpp"

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN

/// Philox4x32 with 10 rounds: maps a 128-bit counter and a 64-bit key to 128 random bits.
struct philox4x32 {
    using counter_type = std::array<std::uint32_t, 4>;                  ///< the 128-bit counter
    using key_type = std::array<std::uint32_t, 2>;                      ///< the 64-bit key
    static constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;  ///< round multipliers
    static constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;  ///< Weyl key increments

    /// The 4 random words for counter `c` under key `k`.
    static constexpr counter_type generate(counter_type c, key_type k) noexcept {
        for (int r = 0; r < 10; ++r) {
            const std::uint64_t p0 = std::uint64_t{m0} * c[0];
            const std::uint64_t p1 = std::uint64_t{m1} * c[2];
            c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<std::uint32_t>(p1),
                 static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k[1],
                 static_cast<std::uint32_t>(p0)};
            k[0] += w0;
            k[1] += w1;
        }
        return c;
    }

    /// generate() for 8 counters at once, in structure-of-arrays form (c[word][lane]); same
    /// results as 8 generate() calls. With AVX2 it runs on 256-bit registers (the 32 x 32 ->
    /// 64-bit products on even and odd lanes, recombined with blends); elsewhere it is written
    /// so compilers can vectorize it.
    static constexpr void generate8(std::uint32_t (&c)[4][8], key_type k) noexcept {
#if defined(__AVX2__)
        if (!std::is_constant_evaluated()) {
            generate8_avx2(c, k);
            return;
        }
#endif
        for (int r = 0; r < 10; ++r) {
            for (int i = 0; i < 8; ++i) {
                const std::uint64_t p0 = std::uint64_t{m0} * c[0][i];
                const std::uint64_t p1 = std::uint64_t{m1} * c[2][i];
                const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c[1][i] ^ k[0];
                const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c[3][i] ^ k[1];
                c[0][i] = n0;
                c[1][i] = static_cast<std::uint32_t>(p1);
                c[2][i] = n2;
                c[3][i] = static_cast<std::uint32_t>(p0);
            }
            k[0] += w0;
            k[1] += w1;
        }
    }

#if defined(__AVX2__)
    /// generate8 on AVX2 registers: lane i of vector j is c[j][i].
    static void generate8_avx2(std::uint32_t (&c)[4][8], key_type k) noexcept {
        __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c[0]));
        __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c[1]));
        __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c[2]));
        __m256i x3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c[3]));
        const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(m0)),
                      mul1 = _mm256_set1_epi32(static_cast<int>(m1));
        // (hi, lo) 32-bit halves of x * m per lane: _mm256_mul_epu32 multiplies even lanes
        auto mulhilo = [](__m256i x, __m256i m, __m256i& hi, __m256i& lo) {
            const __m256i even = _mm256_mul_epu32(x, m);
            const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
            lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
            hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
        };
        for (int r = 0; r < 10; ++r) {
            __m256i hi0, lo0, hi1, lo1;
            mulhilo(x0, mul0, hi0, lo0);
            mulhilo(x2, mul1, hi1, lo1);
            const __m256i k0 = _mm256_set1_epi32(static_cast<int>(k[0])),
                          k1 = _mm256_set1_epi32(static_cast<int>(k[1]));
            x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), k0);
            x1 = lo1;
            x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), k1);
            x3 = lo0;
            k[0] += w0;
            k[1] += w1;
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c[0]), x0);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c[1]), x1);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c[2]), x2);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c[3]), x3);
    }
#endif

#if defined(__AVX512F__)
    /// generate8 for two sets of 8 counters at once on 512-bit registers: c[s] is set s, in
    /// generate8's layout; same results as two generate8 calls.
    static void generate16_avx512(std::uint32_t (&c)[2][4][8], key_type k) noexcept {
        __m512i x[4];
        for (int j = 0; j < 4; ++j)  // lanes 0-7: set 0, lanes 8-15: set 1
            x[j] = _mm512_inserti64x4(
                _mm512_castsi256_si512(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c[0][j]))),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c[1][j])), 1);
        rounds16(x, k);
        for (int j = 0; j < 4; ++j) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(c[0][j]), _mm512_castsi512_si256(x[j]));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(c[1][j]),
                                _mm512_extracti64x4_epi64(x[j], 1));
        }
    }

    /// The 10 rounds on 16 counters held in registers: lane i of x[j] is word j of counter i,
    /// before and after.
    static void rounds16(__m512i (&x)[4], key_type k) noexcept {
        const __m512i mul0 = _mm512_set1_epi32(static_cast<int>(m0)),
                      mul1 = _mm512_set1_epi32(static_cast<int>(m1));
        // (hi, lo) 32-bit halves of x * m per lane: _mm512_mul_epu32 multiplies even lanes
        auto mulhilo = [](__m512i v, __m512i m, __m512i& hi, __m512i& lo) {
            const __m512i even = _mm512_mul_epu32(v, m);
            const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(v, 32), m);
            lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
            hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
        };
        for (int r = 0; r < 10; ++r) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo(x[0], mul0, hi0, lo0);
            mulhilo(x[2], mul1, hi1, lo1);
            const __m512i k0 = _mm512_set1_epi32(static_cast<int>(k[0])),
                          k1 = _mm512_set1_epi32(static_cast<int>(k[1]));
            x[0] = _mm512_xor_si512(_mm512_xor_si512(hi1, x[1]), k0);
            x[1] = lo1;
            x[2] = _mm512_xor_si512(_mm512_xor_si512(hi0, x[3]), k1);
            x[3] = lo0;
            k[0] += w0;
            k[1] += w1;
        }
    }
#endif
};

/// One reproducible stream of random numbers: value i depends only on (seed, stream id, i).
class random_stream {
  public:
    /// The stream `id` of seed `seed`.
    constexpr random_stream(std::uint64_t seed, std::uint64_t id) noexcept
        : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
          id_{static_cast<std::uint32_t>(id), static_cast<std::uint32_t>(id >> 32)} {}

    /// The 4 random 32-bit words of Philox block `b` (which values of the stream they are: see
    /// bits()).
    constexpr std::array<std::uint32_t, 4> block(std::uint64_t b) const noexcept {
        return philox4x32::generate(
            {static_cast<std::uint32_t>(b), static_cast<std::uint32_t>(b >> 32), id_[0], id_[1]},
            key_);
    }
    /// Values 32 g .. 32 g + 31 at once, in order when w is read as a flat array: w[j][b] is
    /// word j of block 8 g + b, which is bits(32 g + 8 j + b).
    constexpr void values32(std::uint64_t g, std::uint32_t (&w)[4][8]) const noexcept {
        const std::uint64_t b0 = g << 3;
        for (int i = 0; i < 8; ++i) {
            const std::uint64_t b = b0 + std::uint64_t(i);
            w[0][i] = static_cast<std::uint32_t>(b);
            w[1][i] = static_cast<std::uint32_t>(b >> 32);
            w[2][i] = id_[0];
            w[3][i] = id_[1];
        }
        philox4x32::generate8(w, key_);
    }
    /// Values 64 h .. 64 h + 63 at once, in order when w is read as a flat array: w[s] holds
    /// what values32(2 h + s) gives. One pass on 512-bit registers where the CPU has AVX-512.
    void values64(std::uint64_t h, std::uint32_t (&w)[2][4][8]) const noexcept {
#if defined(__AVX512F__)
        // block 16 h + l in lane l (w[s][j][i] is word j of block 16 h + 8 s + i), built in
        // registers, and the words stored 64 bytes at a time in w's order: counters written
        // word by word and words stored in halves, each read back whole, stalled on store
        // forwarding for a third of dropout's time (2026-12-05)
        const std::uint64_t b0 = h << 4;  // low words 16 h + l: no carry into the high word
        __m512i x[4] = {
            _mm512_add_epi32(
                _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(b0))),
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
            _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(b0 >> 32))),
            _mm512_set1_epi32(static_cast<int>(id_[0])),
            _mm512_set1_epi32(static_cast<int>(id_[1]))};
        philox4x32::rounds16(x, key_);
        _mm512_storeu_si512(&w[0][0][0], _mm512_shuffle_i64x2(x[0], x[1], 0x44));
        _mm512_storeu_si512(&w[0][2][0], _mm512_shuffle_i64x2(x[2], x[3], 0x44));
        _mm512_storeu_si512(&w[1][0][0], _mm512_shuffle_i64x2(x[0], x[1], 0xee));
        _mm512_storeu_si512(&w[1][2][0], _mm512_shuffle_i64x2(x[2], x[3], 0xee));
#else
        values32(2 * h, w[0]);
        values32(2 * h + 1, w[1]);
#endif
    }
    /// The i-th random 32-bit word. Words are numbered so that 32 consecutive values come from
    /// one values32() call in its natural order: value 32 g + 8 j + b is word j of block 8 g + b.
    constexpr std::uint32_t bits(std::uint64_t i) const noexcept {
        return block(((i >> 5) << 3) | (i & 7))[(i >> 3) & 3];
    }
    /// The i-th value, uniform in [0, 1) with 24 random bits (exactly representable in float).
    constexpr float uniform(std::uint64_t i) const noexcept {
        return static_cast<float>(bits(i) >> 8) * 0x1p-24f;
    }
    /// The i-th value of a standard normal distribution (Box-Muller on words 2(i % 2), 2(i % 2) + 1
    /// of block i / 2; a sequence of its own, not derived from bits()).
    double normal(std::uint64_t i) const noexcept {
        const auto w = block(i >> 1);
        const std::size_t o = (i & 1) * 2;
        // u1 in (0, 1], u2 in [0, 1), 32 bits each
        const double u1 = (static_cast<double>(w[o]) + 1.0) * 0x1p-32;
        const double u2 = static_cast<double>(w[o + 1]) * 0x1p-32;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
    }
    /// The i-th value uniform over the integers [0, n), n >= 1 (Lemire's multiply-shift; bias <
    /// n/2^32).
    constexpr std::uint32_t below(std::uint64_t i, std::uint32_t n) const noexcept {
        return static_cast<std::uint32_t>((std::uint64_t{bits(i)} * n) >> 32);
    }
    /// Stream k of this stream: another stream of the same seed whose id is a hash (one Philox
    /// block under a changed key) of this one's id and k; what gives each example of a batch its
    /// own dropout mask (context::dropout_examples).
    constexpr random_stream derive(std::uint64_t k) const noexcept {
        const auto w = philox4x32::generate(
            {static_cast<std::uint32_t>(k), static_cast<std::uint32_t>(k >> 32), id_[0], id_[1]},
            {key_[0] ^ 0x9E3779B9u, key_[1] ^ 0xBB67AE85u});
        return {std::uint64_t{key_[0]} | std::uint64_t{key_[1]} << 32,
                std::uint64_t{w[0]} | std::uint64_t{w[1]} << 32};
    }

  private:
    std::array<std::uint32_t, 2> key_;
    std::array<std::uint32_t, 2> id_;
};

/// Hands out fresh random streams from a seed; its whole state is (seed, next stream id).
class generator {
  public:
    /// A generator for `seed`.
    explicit constexpr generator(std::uint64_t seed = 0) noexcept : seed_(seed) {}
    /// The next unused stream (use one per dropout call, per shuffle...).
    constexpr random_stream next() noexcept { return {seed_, counter_++}; }
    /// The seed.
    constexpr std::uint64_t seed() const noexcept { return seed_; }
    /// How many streams were handed out (save it with a checkpoint to resume exactly).
    constexpr std::uint64_t position() const noexcept { return counter_; }
    /// Restores a position saved by position().
    constexpr void set_position(std::uint64_t p) noexcept { counter_ = p; }

  private:
    std::uint64_t seed_;
    std::uint64_t counter_ = 0;
};

/// Shuffles `items` with the Fisher-Yates algorithm driven by `s` (same result on every thread
/// count).
template <class T>
void shuffle(std::span<T> items, const random_stream& s) {
    for (std::size_t i = items.size(); i > 1; --i) {
        const std::size_t j = s.below(i, static_cast<std::uint32_t>(i));
        std::swap(items[i - 1], items[j]);
    }
}

FTUNE_NAMESPACE_END
