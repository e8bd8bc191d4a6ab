// A caching allocator for device memory, as PyTorch's: a freed block goes back to a free list of
// its size class and the next request of that class on the same stream takes it, so a training
// loop whose shapes repeat asks the device for memory only in its first steps. The raw allocation
// is a policy (cudaMalloc for the CUDA backend, plain malloc in the tests), so the bookkeeping is
// tested on every machine, with or without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN

namespace cuda {

/// What a caching allocator holds and has asked its source for.
struct allocator_statistics {
    std::size_t source_allocations = 0;  ///< raw allocations made (cudaMalloc calls)
    std::size_t source_frees = 0;        ///< raw frees made (cudaFree calls)
    std::size_t blocks_in_use = 0;       ///< blocks handed out and not yet returned
    std::size_t bytes_in_use = 0;        ///< bytes of those blocks (rounded to their size class)
    std::size_t bytes_cached = 0;        ///< bytes of free blocks kept for reuse
    std::size_t peak_bytes_in_use = 0;   ///< the most bytes_in_use has been
};

/// The size class of a request of `bytes`: a multiple of 512 bytes below 1 MiB, of 2 MiB above
/// (at most 1/512 or 2 MiB of padding, and few classes for the large tensors of a model).
constexpr std::size_t size_class(std::size_t bytes) noexcept {
    constexpr std::size_t small = 512, large = std::size_t{2} << 20, split = std::size_t{1} << 20;
    if (bytes == 0) return small;
    if (bytes < split) return (bytes + small - 1) / small * small;
    return (bytes + large - 1) / large * large;
}

/// Device memory by size class and stream, reused without returning it to the device. Source
/// provides `static void* allocate(std::size_t)` (throws on failure) and `static void
/// release(void*) noexcept`. Thread-safe. A block freed on one stream is reused only by requests
/// on that stream, whose work is ordered after the free (as PyTorch's allocator without
/// record_stream).
template <class Source>
class caching_allocator {
  public:
    /// An empty cache.
    caching_allocator() = default;
    caching_allocator(const caching_allocator&) = delete;
    caching_allocator& operator=(const caching_allocator&) = delete;
    /// Returns every cached block to the source (blocks still in use are the owners' to free).
    ~caching_allocator() { release_cached(); }

    /// A block of at least `bytes` for work on `stream`: a cached one of the same size class and
    /// stream when there is one, else a new one from the source (after releasing the cache and
    /// trying again once, when the source runs out).
    void* allocate(std::size_t bytes, const void* stream = nullptr) {
        const std::size_t cls = size_class(bytes);
        std::lock_guard lock(mutex_);
        void* p = nullptr;
        if (auto it = free_.find({cls, stream}); it != free_.end() && !it->second.empty()) {
            p = it->second.back();
            it->second.pop_back();
            stats_.bytes_cached -= cls;
        } else {
            try {
                p = Source::allocate(cls);
            } catch (...) {
                release_cached_locked();
                p = Source::allocate(cls);  // throws again when even that is not enough
            }
            ++stats_.source_allocations;
        }
        live_.emplace(p, block{cls, stream});
        ++stats_.blocks_in_use;
        stats_.bytes_in_use += cls;
        if (stats_.bytes_in_use > stats_.peak_bytes_in_use)
            stats_.peak_bytes_in_use = stats_.bytes_in_use;
        return p;
    }
    /// Returns a block from allocate() to the cache (null is ignored; a pointer this allocator
    /// did not hand out is left alone: false).
    bool deallocate(void* p) noexcept {
        if (!p) return true;
        std::lock_guard lock(mutex_);
        const auto it = live_.find(p);
        if (it == live_.end()) return false;
        const block b = it->second;
        live_.erase(it);
        --stats_.blocks_in_use;
        stats_.bytes_in_use -= b.bytes;
        try {
            free_[{b.bytes, b.stream}].push_back(p);
            stats_.bytes_cached += b.bytes;
        } catch (...) {  // no memory for the free list: give the block back instead
            Source::release(p);
            ++stats_.source_frees;
        }
        return true;
    }
    /// Gives every cached (free) block back to the source (as torch.cuda.empty_cache()).
    void release_cached() noexcept {
        std::lock_guard lock(mutex_);
        release_cached_locked();
    }
    /// The counters.
    allocator_statistics statistics() const {
        std::lock_guard lock(mutex_);
        return stats_;
    }

  private:
    struct block {
        std::size_t bytes;   // the size class
        const void* stream;  // the stream it was allocated for
    };
    void release_cached_locked() noexcept {
        for (auto& [key, list] : free_)
            for (void* p : list) {
                Source::release(p);
                ++stats_.source_frees;
                stats_.bytes_cached -= key.first;
            }
        free_.clear();
    }

    mutable std::mutex mutex_;
    std::unordered_map<void*, block> live_;
    std::map<std::pair<std::size_t, const void*>, std::vector<void*>> free_;
    allocator_statistics stats_;
};

}  // namespace cuda

FTUNE_NAMESPACE_END
