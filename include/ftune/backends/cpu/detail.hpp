// Helpers of the CPU backend: SIMD batches with tails, and OpenMP loops over chunks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>

#include "ftune/core/intrinsics.hpp"  // first: silences GCC 12's intrinsic headers
#include <xsimd/xsimd.hpp>

#include "ftune/backends/common.hpp"
#include "ftune/core/tensor.hpp"

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu::detail {

/// The SIMD batch of T for the architecture this translation unit is compiled for.
template <class T>
using batch = xsimd::batch<T, xsimd::default_arch>;

/// Number of T lanes in a batch.
template <class T>
inline constexpr std::size_t width = batch<T>::size;

/// b, rounded: the compiler may not fuse the multiplication that produced b into a later
/// addition. GCC contracts a * b + c into one FMA by default (-ffp-contract=fast), and may do it
/// in one inlined copy of a kernel and not in another; results that must be equal bit for bit
/// (gemm() and gemm_packed()) pass their scaled products through here.
template <class T>
inline batch<T> rounded(batch<T> b) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__("" : "+v"(b.data));
#endif
    return b;
}

/// A batch count known at compile time: for_each_batch passes full_t<T> for full batches, so
/// their loads and stores compile to plain vector moves with no tail handling.
template <class T>
using full_t = std::integral_constant<std::size_t, width<T>>;

/// Loads a full batch.
template <class T>
inline batch<T> load(const T* p, full_t<T>, T = T(0)) noexcept {
    return batch<T>::load_unaligned(p);
}

/// Loads `count` (< width) elements, padding with `fill`.
template <class T>
inline batch<T> load(const T* p, std::size_t count, T fill = T(0)) noexcept {
    alignas(64) T tmp[width<T>];
    std::fill_n(tmp, width<T>, fill);
    std::copy_n(p, count, tmp);
    return batch<T>::load_aligned(tmp);
}

/// Stores a full batch.
template <class T>
inline void store(T* p, const batch<T>& b, full_t<T>) noexcept {
    b.store_unaligned(p);
}

/// Stores the first `count` (< width) lanes of b.
template <class T>
inline void store(T* p, const batch<T>& b, std::size_t count) noexcept {
    alignas(64) T tmp[width<T>];
    b.store_aligned(tmp);
    std::copy_n(tmp, count, p);
}

/// Calls f(i, count) for i = 0, W, 2W, ... < n: count is full_t<T>{} for full batches and the
/// remaining element count (a std::size_t below W) for the tail. f takes `auto count`.
template <class T, class F>
inline void for_each_batch(std::size_t n, F&& f) {
    std::size_t i = 0;
    for (; i + width<T> <= n; i += width<T>) f(i, full_t<T>{});
    if (i < n) f(i, n - i);
}

/// Σ over a row of n elements of f(i, count) (a batch), with 4 independent accumulators so the
/// additions do not wait on each other; f takes (std::size_t i, auto count) like for_each_batch.
template <class T, class F>
inline batch<T> row_sum(std::size_t n, F&& f) {
    constexpr std::size_t W = width<T>;
    const full_t<T> full{};
    batch<T> a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    std::size_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        a0 += f(i, full);
        a1 += f(i + W, full);
        a2 += f(i + 2 * W, full);
        a3 += f(i + 3 * W, full);
    }
    for (; i + W <= n; i += W) a0 += f(i, full);
    if (i < n) a1 += f(i, n - i);
    return (a0 + a1) + (a2 + a3);
}

/// Sum of a batch's lanes (xsimd 8 calls it hadd, later versions reduce_add).
template <class T>
inline T reduce_add(const batch<T>& b) noexcept {
#if XSIMD_VERSION_MAJOR >= 10
    return xsimd::reduce_add(b);
#else
    return xsimd::hadd(b);
#endif
}

/// Maximum of a batch's lanes.
template <class T>
inline T reduce_max(const batch<T>& b) noexcept {
    alignas(64) T tmp[width<T>];
    b.store_aligned(tmp);
    return *std::max_element(tmp, tmp + width<T>);
}

/// Calls f(begin, end) over [0, n) cut in chunks of `grain`, in parallel when OpenMP is on and
/// there is more than one chunk. Chunk boundaries depend only on n and grain, never on the
/// thread count, so results are the same on any number of threads.
template <class F>
inline void parallel_for(std::size_t n, std::size_t grain, F&& f) {
    grain = std::max<std::size_t>(grain, 1);
    const std::size_t chunks = (n + grain - 1) / grain;
#if defined(_OPENMP)
    if (chunks > 1 && !omp_in_parallel() && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
        for (std::ptrdiff_t c = 0; c < static_cast<std::ptrdiff_t>(chunks); ++c)
            f(std::size_t(c) * grain, std::min(n, (std::size_t(c) + 1) * grain));
        return;
    }
#endif
    for (std::size_t c = 0; c < chunks; ++c) f(c * grain, std::min(n, (c + 1) * grain));
}

/// A growable 64-byte aligned scratch array, one per thread, type and tag (allocates only to
/// grow): the packed operands of the GEMMs and the partial sums of reductions.
template <class T, int Tag>
T* scratch(std::size_t n) {
    thread_local std::unique_ptr<T[], ftune::detail::aligned_delete> buf;
    thread_local std::size_t cap = 0;
    if (n > cap) {
        buf = ftune::detail::aligned_alloc_array<T>(n);
        cap = n;
    }
    return buf.get();
}

/// Storage for n packed values of a weight (packed_b, packed_b_bf16): zero-filled, 64-byte
/// aligned, with a count of its own (use_count() tells whether a copy shares it). A forward at
/// batch 1 reads every weight from memory once, so where huge pages are wanted, arrays under
/// 2 MiB (most weights: too small for a huge page of their own) are cut one after another from
/// 8 MiB chunks aligned to and backed by huge pages; a chunk is freed with its last array (the
/// arena keeps only a weak reference to the chunk it fills). Larger arrays, and all where huge
/// pages are not wanted, are allocated alone (aligned_alloc_array: whole 2 MiB pages huge).
template <class T>
std::shared_ptr<T[]> packed_storage(std::size_t n) {
    static_assert(std::is_trivially_copyable_v<T>, "packed values are trivially copyable");
    const std::size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    if (n == 0) return {};
    if (bytes >= ftune::detail::huge_page_bytes || !ftune::detail::huge_pages_wanted())
        return std::shared_ptr<T[]>(ftune::detail::aligned_alloc_array<T>(n));
    constexpr std::size_t chunk_bytes = 4 * ftune::detail::huge_page_bytes;
    struct arena {
        std::mutex m;
        std::weak_ptr<std::byte[]> chunk;  // the chunk being filled (freed with its last array)
        std::size_t used = 0;              // its bytes handed out
    };
    static arena a;  // (one per T: packed floats, doubles and bf16 pairs fill their own chunks)
    std::shared_ptr<std::byte[]> chunk;
    std::byte* p = nullptr;
    {
        const std::lock_guard<std::mutex> lock(a.m);
        chunk = a.chunk.lock();
        if (!chunk || a.used + bytes > chunk_bytes) {
            // not zero-filled: only the pages handed out are touched (and become resident)
            chunk = std::shared_ptr<std::byte[]>(
                static_cast<std::byte*>(::operator new[](
                    chunk_bytes, std::align_val_t{ftune::detail::huge_page_bytes})),
                ftune::detail::aligned_delete{true, ftune::detail::huge_page_bytes});
            ftune::detail::advise_huge_pages(chunk.get(), chunk_bytes);
            a.chunk = chunk, a.used = 0;
        }
        p = chunk.get() + a.used;
        a.used += bytes;
    }
    std::memset(p, 0, n * sizeof(T));
    // the array's own count; its deleter holds the chunk
    return std::shared_ptr<T[]>(reinterpret_cast<T*>(p), [chunk = std::move(chunk)](T*) {});
}

/// Elements per parallel chunk for streaming element-wise kernels (64 KiB of floats).
inline constexpr std::size_t elementwise_grain = 16384;

/// Rows per parallel chunk so a chunk holds about `elementwise_grain` elements.
inline std::size_t row_grain(std::size_t cols) {
    return std::max<std::size_t>(1, elementwise_grain / std::max<std::size_t>(cols, 1));
}

}  // namespace backends::cpu::detail
FTUNE_NAMESPACE_END
