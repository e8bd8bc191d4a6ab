// The bf16 products on AMX-BF16 tiles (Intel Sapphire Rapids and later): one 16-row block of
// op(A) times one packed panel of B (48 columns; attention's outputs: 32), summed over a depth
// block into fp32, which gemm_bf16.hpp's schedules (and prepared inference's fused attention)
// call in place of their AVX512-BF16 register kernel where the CPU has the tiles. The operands are
// gemm_bf16.hpp's pairs as they are: tdpbf16ps reads an A tile as 16 rows of 16 pairs (op(A)'s
// rows of pairs, 64 bytes each) and a B tile as 16 pairs of 16 columns (one 64-byte part of each
// pair's row of a packed panel), so no new layout is packed, only a transposed A goes into rows
// of pairs instead of 8-row tiles (gemm_bf16.hpp, pack_a_transposed_rows through a_words).
//
//   tiles 0-2: C, 16 rows x 16 fp32 columns each (the panel's three column groups)
//   tile 3:    A, 16 rows x 16 pairs        tiles 4-6: B, 16 pairs x 16 columns each
//   per 16 pairs: 1 + 3 tile loads, 3 tdpbf16ps (16 x 16 x 32 multiply-adds each)
//
// Each element of C is its pairs' products summed in K's order within a depth block (the
// instruction's own order: both products of a pair, then the next pair), from zero; the blocks
// are then added as the AVX512 kernel adds them. The split among threads and the row tiles do not
// change any element's arithmetic, so results are the same on any thread count; they differ from
// the AVX512-BF16 kernel's in the last bits (the two instructions do not sum a pair alike: Intel
// documents its two products added in opposite orders), so one machine uses one kernel:
// amx_enabled() says which (FTUNE_AMX=0 in the environment, or use_amx(false), keeps the AVX512
// kernel). Linux hands a process the tiles' 8 KiB of register state only when asked
// (arch_prctl(ARCH_REQ_XCOMP_PERM)); amx_available() asks once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "ftune/backends/common.hpp"
#include "ftune/backends/cpu/cpu_info.hpp"

#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 ||                  \
     defined(__clang__) && __clang_major__ >= 12) &&                                \
    defined(__x86_64__) && defined(__linux__) && !defined(FTUNE_NO_BF16_KERNELS) && \
    !defined(FTUNE_NO_AMX_KERNELS)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
/// 1 when this build has the AMX-BF16 kernels (GCC 11 or Clang 12 and later, x86-64 Linux).
#define FTUNE_HAS_AMX_KERNELS 1
/// The function attribute that compiles a kernel for AMX-BF16 (and AVX512-BF16, for its
/// epilogue) whatever -march says.
#define FTUNE_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))
#else
#define FTUNE_HAS_AMX_KERNELS 0
#define FTUNE_AMX_TARGET
#endif

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu {

/// Whether this build, this CPU and the OS let the bf16 products use AMX-BF16 tiles (the CPU
/// reports amx_bf16 and AVX512-BF16, and Linux granted this process the tiles' state).
inline bool amx_available() noexcept {
#if FTUNE_HAS_AMX_KERNELS
    static const bool ok = [] {
        const cpu_info& c = this_cpu();
        if (!c.amx_bf16 || !c.avx512_bf16) return false;
        constexpr long req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;  // <asm/prctl.h>
        return syscall(SYS_arch_prctl, req_xcomp_perm, xfeature_xtiledata) == 0;
    }();
    return ok;
#else
    return false;
#endif
}

namespace amx_detail {
/// Whether FTUNE_AMX=0 is in the environment (read once): the tiles are then not even asked for,
/// so Linux's larger minimum for alternate signal stacks does not apply to the process.
inline bool off_by_environment() noexcept {
    static const bool off = [] {
        const char* e = std::getenv("FTUNE_AMX");
        return e && std::strcmp(e, "0") == 0;
    }();
    return off;
}

/// The setting amx_enabled() reads: on where available, unless FTUNE_AMX=0 in the environment.
inline std::atomic<bool>& setting() noexcept {
    static std::atomic<bool> on{!off_by_environment() && amx_available()};
    return on;
}
}  // namespace amx_detail

/// Whether the bf16 products run on AMX tiles now (else on the AVX512-BF16 kernel).
inline bool amx_enabled() noexcept {
    return amx_detail::setting().load(std::memory_order_relaxed);
}

/// Turns the AMX kernels on or off (on only where amx_available()); returns the previous setting.
/// For comparisons and tests: the two kernels' results differ in the last bits, so change it
/// only between runs, never while products run or while a model packed for one is trained.
inline bool use_amx(bool on) noexcept {
    return amx_detail::setting().exchange(on && amx_available());
}

namespace amx_detail {

/// Rows of an A tile (and of C's tiles): the row tile of the AMX schedule.
inline constexpr std::size_t TR = 16;
/// Pairs of K per tile step (64 bytes of an A row).
inline constexpr std::size_t TP = 16;
/// Columns of a packed panel (bf16_detail::NR): three tiles of 16.
inline constexpr std::size_t PANEL = 48;

/// LDTILECFG's 64 bytes (palette 1): every tile used is 16 rows of 64 bytes.
struct alignas(64) tile_config {
    std::uint8_t palette = 1;        ///< palette 1: 8 tiles of up to 16 x 64 bytes
    std::uint8_t start_row = 0;      ///< restart row of an interrupted load (0)
    std::uint8_t reserved[14] = {};  ///< zero
    std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64};  ///< bytes per row of tiles 0-6
    std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16};    ///< rows of tiles 0-6
};
static_assert(sizeof(tile_config) == 64);

/// A number for each product that runs on tiles: a thread checks its tile configuration once per
/// product (configure_for: the product's number differs from the last one it checked).
inline std::uint64_t next_run_id() noexcept {
    static std::atomic<std::uint64_t> n{0};
    return n.fetch_add(1, std::memory_order_relaxed) + 1;
}

#if FTUNE_HAS_AMX_KERNELS
/// Makes the compiler finish every store before this point and read memory again after it, with
/// p's memory counted as used: GCC's AMX intrinsics are asm statements that do not say which
/// memory a tile load reads or a tile store writes (a zero-padded buffer's stores were dropped as
/// dead, and the configuration STTILECFG writes is 8 bytes to GCC).
inline void memory_barrier(const void* p) noexcept {
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/// Loads the kernels' tile configuration on this thread unless it is loaded already: STTILECFG
/// and a compare (about 9 ns on a Xeon, against 93 for LDTILECFG), so other code on the thread
/// that configured the tiles its own way is noticed.
FTUNE_AMX_TARGET inline void configure() noexcept {
    static const tile_config want{};
    alignas(64) unsigned char now[64];
    _tile_storeconfig(now);
    memory_barrier(now);
    if (std::memcmp(now, &want, sizeof want) != 0) _tile_loadconfig(&want);
}

/// configure() once per product on each thread: id is the product's next_run_id().
inline void configure_for(std::uint64_t id) noexcept {
    thread_local std::uint64_t checked = 0;
    if (checked != id) configure(), checked = id;
}

/// One step of 16 pairs: tile 3 = A's 16 rows of 16 pairs at a (rows a_bytes apart), tiles 4..
/// = B's NT groups of 16 columns at b (P words per pair), and C's tiles 0.. += their products.
template <int NT, std::size_t P>
FTUNE_AMX_TARGET inline void tile_step(const std::uint32_t* a, std::size_t a_bytes,
                                       const std::uint32_t* b) {
    _tile_loadd(3, a, a_bytes);
    _tile_loadd(4, b, P * sizeof(std::uint32_t));
    _tile_dpbf16ps(0, 3, 4);
    if constexpr (NT > 1) {
        _tile_loadd(5, b + TP, P * sizeof(std::uint32_t));
        _tile_dpbf16ps(1, 3, 5);
    }
    if constexpr (NT > 2) {
        _tile_loadd(6, b + 2 * TP, P * sizeof(std::uint32_t));
        _tile_dpbf16ps(2, 3, 6);
    }
}

/// acc (16 rows of P floats) = Σ_p A(i, p) · B(p, j) over kp pairs for the NT 16-column groups
/// j < 16 NT (the others untouched): A's rows of pairs a_ld words apart (the first m <= 16 read;
/// rows past m count as zero), B a packed panel of P words per pair (48, or attention's 32). Whole
/// steps of 16 pairs read A and B where they are (A through a zero-padded copy when m < 16); the
/// last kp % 16 pairs go through zero-padded copies of both, so no tile reads past the operands.
/// The 64-byte lines from pf on (pf_lines of them: the schedule's next panel) are prefetched,
/// spread over the steps.
template <int NT, std::size_t P = PANEL>
FTUNE_AMX_TARGET void tile_product(std::size_t kp, const std::uint32_t* a, std::size_t a_ld,
                                   std::size_t m, const std::uint32_t* b, float* acc,
                                   const char* pf, std::size_t pf_lines) {
    static_assert(NT >= 1 && std::size_t(NT) * 16 <= P && P % 16 == 0);
    alignas(64) std::uint32_t ab[TR * TP];  // a block of A whose rows or pairs are short
    if (m < TR) std::memset(ab + m * TP, 0, (TR - m) * TP * sizeof(std::uint32_t));
    memory_barrier(ab);  // the operands' stores (packing, the caller's) come first
    _tile_zero(0);
    if constexpr (NT > 1) _tile_zero(1);
    if constexpr (NT > 2) _tile_zero(2);
    const std::size_t whole = kp / TP * TP, steps = kp / TP;
    const std::size_t per = steps && pf_lines ? (pf_lines + steps - 1) / steps : 0;
    for (std::size_t p = 0; p < whole; p += TP, b += TP * P) {
        for (std::size_t l = 0; l < per && pf_lines; ++l, --pf_lines, pf += 64)
            _mm_prefetch(pf, _MM_HINT_T0);
        if (m == TR) {
            tile_step<NT, P>(a + p, a_ld * sizeof(std::uint32_t), b);
            continue;
        }
        memory_barrier(ab);  // the last step's tile load of ab comes before these stores
        for (std::size_t i = 0; i < m; ++i)
            std::memcpy(ab + i * TP, a + i * a_ld + p, TP * sizeof(std::uint32_t));
        memory_barrier(ab);
        tile_step<NT, P>(ab, TP * sizeof(std::uint32_t), b);
    }
    for (; pf_lines; --pf_lines, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
    if (const std::size_t r = kp - whole; r > 0) {  // the last r < 16 pairs, zero-padded
        alignas(64) std::uint32_t bb[TP * P] = {};
        std::memcpy(bb, b, r * P * sizeof(std::uint32_t));
        memory_barrier(ab);  // the loop's tile loads of ab come before these stores
        std::memset(ab, 0, sizeof ab);
        for (std::size_t i = 0; i < m; ++i)
            std::memcpy(ab + i * TP, a + i * a_ld + whole, r * sizeof(std::uint32_t));
        memory_barrier(ab);
        memory_barrier(bb);
        tile_step<NT, P>(ab, TP * sizeof(std::uint32_t), bb);
    }
    _tile_stored(0, acc, P * sizeof(float));
    if constexpr (NT > 1) _tile_stored(1, acc + TP, P * sizeof(float));
    if constexpr (NT > 2) _tile_stored(2, acc + 2 * TP, P * sizeof(float));
    memory_barrier(acc);  // acc is read after this
}
#endif

}  // namespace amx_detail
}  // namespace backends::cpu
FTUNE_NAMESPACE_END
