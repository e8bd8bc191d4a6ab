// The thread schedule of a product whose B is packed once (a weight): gemm_packed (gemm.hpp, fp32
// and double) and the bf16 products (gemm_bf16.hpp) run their register kernels in this order.
// C (M, N) is cut into units, (a row block of A) x (a run of B's NR-wide panels), which the
// threads take dynamically (a thread slowed down by the machine's other load holds the others up
// for one short unit only); no barrier, since B is read-only. Small M (one row block) splits the
// panels among the threads, so each weight is read from memory once; larger M splits the rows.
// Within a unit: each depth block of B, each panel, each MR-row tile. Each panel's successor in
// the thread's order (the unit's next panel, the first of its next depth block, or the first of
// the thread's next unit, claimed one ahead for this) streams in from memory while the panel is
// used, spread over the panel's row tiles: no hardware prefetcher follows that order.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <utility>

#include "ftune/backends/common.hpp"
#include "ftune/core/tensor.hpp"  // <omp.h> where OpenMP is on

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu::schedule_detail {

/// Threads for a product of 2 M N K flops whose B holds N x K values of value_bytes each: all of
/// them above 4 MFLOP, or (a product of few rows: generation's) when B is 256 KiB or more, so
/// that streaming it from memory is the cost; one inside a parallel region.
inline int threads_for(std::size_t M, std::size_t N, std::size_t K, std::size_t value_bytes) {
#if defined(_OPENMP)
    if (!omp_in_parallel() && (2.0 * double(M) * double(N) * double(K) >= 4e6 ||
                               double(N) * double(K) * double(value_bytes) >= 262144.0))
        return omp_get_max_threads();
#endif
    (void)M, (void)N, (void)K, (void)value_bytes;
    return 1;
}

/// How a product C (M, N) = op(A) (M, K) B (K, N) is cut into units for nt threads.
struct plan {
    std::size_t M, N, K;  ///< the product's shape
    std::size_t MR, NR;   ///< the register tile
    std::size_t kc;       ///< depth of B's blocks (the last may be shorter)
    std::size_t mc;       ///< rows of a row block (a multiple of MR, or M)
    std::size_t panels;   ///< B's NR-wide panels
    std::size_t run;      ///< panels per unit
    std::size_t runs;     ///< units per row block
    std::size_t units;    ///< units in all
    bool split_columns;   ///< one row block: the threads share B's panels
    bool ahead;           ///< a thread claims its next unit when it starts one
};

/// The plan for nt threads with row blocks of at most MC rows. With the columns split, about 8
/// units per thread; with the rows split, row_units units per thread (0: every panel of a row
/// block in one unit, for a caller that packs A per unit and depth block); one thread takes every
/// panel of a row block in one unit. Claiming one ahead costs no balance with one thread or 8
/// units per thread; the rows' split keeps its units to itself.
inline plan make_plan(std::size_t M, std::size_t N, std::size_t K, std::size_t MR, std::size_t NR,
                      std::size_t MC, std::size_t kc, int nt, std::size_t row_units) {
    plan p{};
    p.M = M, p.N = N, p.K = K, p.MR = MR, p.NR = NR, p.kc = kc;
    const auto t = std::size_t(nt);
    p.split_columns = M <= MC;
    // rows per block: at most MC, and enough blocks that every thread gets the same number
    const std::size_t blocks = p.split_columns ? 1 : (M + MC * t - 1) / (MC * t) * t;
    p.mc = p.split_columns ? M : std::max(MR, ((M + blocks - 1) / blocks + MR - 1) / MR * MR);
    const std::size_t row_blocks = (M + p.mc - 1) / p.mc;
    p.panels = (N + NR - 1) / NR;
    p.run = t == 1            ? p.panels
            : p.split_columns ? std::max<std::size_t>(1, p.panels / (8 * t))
            : row_units == 0
                ? p.panels
                : std::clamp<std::size_t>(p.panels * row_blocks / (row_units * t), 1, p.panels);
    p.runs = (p.panels + p.run - 1) / p.run;
    p.units = row_blocks * p.runs;
    p.ahead = t == 1 || p.split_columns;
    return p;
}

/// One register tile of work, as run() hands it to its tile callback.
struct tile {
    std::size_t ic;        ///< first row of the unit's row block
    std::size_t ir;        ///< the tile's first row within that block (C's row ic + ir)
    std::size_t mr;        ///< rows of the tile (<= MR)
    std::size_t q;         ///< B's panel: C's columns q NR .. q NR + nr
    std::size_t nr;        ///< columns of the tile (<= NR)
    std::size_t pc, kc;    ///< the depth block: K's rows pc .. pc + kc
    bool first, last;      ///< the first (C starts from beta C) / last (the epilogue) depth block
    const char* b;         ///< the packed panel
    const char* pf;        ///< the first 64-byte line to prefetch meanwhile
    std::size_t pf_lines;  ///< how many lines
};

/// Runs plan p on nt threads (1: the calling thread). panel(pc, q) gives B's packed panel q of
/// the depth block at pc as {its first byte, its length in bytes}; block(ic, rows, pc, kc) is
/// called by the thread that runs a unit before each of its depth blocks (where A is packed
/// per block); tile(const tile&) runs one register kernel.
template <class Panel, class Block, class Tile>
void run(const plan& p, int nt, const Panel& panel, const Block& block, const Tile& tile_fn) {
    std::atomic<std::size_t> next{0};
    auto body = [&] {
        for (std::size_t u = next.fetch_add(1), u_next; u < p.units;
             u = p.ahead ? u_next : next.fetch_add(1)) {
            u_next = p.ahead ? next.fetch_add(1) : p.units;
            const std::size_t ic = u / p.runs * p.mc, rows = std::min(p.mc, p.M - ic);
            const std::size_t q0 = u % p.runs * p.run, q1 = std::min(p.panels, q0 + p.run);
            for (std::size_t pc = 0; pc < p.K; pc += p.kc) {
                const std::size_t kc = std::min(p.kc, p.K - pc);
                block(ic, rows, pc, kc);
                for (std::size_t q = q0; q < q1; ++q) {
                    const char* b = panel(pc, q).first;
                    const auto [nb, nb_bytes] = q + 1 < q1      ? panel(pc, q + 1)
                                                : pc + kc < p.K ? panel(pc + kc, q0)
                                                : u_next < p.units
                                                    ? panel(0, u_next % p.runs * p.run)
                                                    : std::pair<const char*, std::size_t>{b, 0};
                    const std::size_t tiles = (rows + p.MR - 1) / p.MR;
                    const std::size_t lines = (nb_bytes + 63) / 64;
                    for (std::size_t ir = 0, t = 0; ir < rows; ir += p.MR, ++t) {
                        const std::size_t l0 = t * lines / tiles, l1 = (t + 1) * lines / tiles;
                        tile_fn(tile{ic, ir, std::min(p.MR, rows - ir), q,
                                     std::min(p.NR, p.N - q * p.NR), pc, kc, pc == 0,
                                     pc + kc == p.K, b, nb + l0 * 64, l1 - l0});
                    }
                }
            }
        }
    };
#if defined(_OPENMP)
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        body();
        return;
    }
#endif
    body();
}

}  // namespace backends::cpu::schedule_detail
FTUNE_NAMESPACE_END
