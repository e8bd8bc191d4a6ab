// Buffers in device memory: device_memory<device::cuda>, which ftune::buffer uses for
// device::cuda (allocation from the caching allocator, zeroing, copies, fills on the current
// stream). Copies between the host and the device: cuda/copy.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ftune/cuda/runtime.hpp"
#include "ftune/core/tensor.hpp"

FTUNE_NAMESPACE_BEGIN

namespace backends::cuda {
/// Sets n elements of elem_bytes (1, 2, 4 or 8) each at p to the low bytes of `pattern`, on the
/// current stream (defined with the kernels, backends/cuda/implementation.cu).
void fill_pattern(void* p, std::size_t n, std::size_t elem_bytes, std::uint64_t pattern);
}  // namespace backends::cuda

/// Device memory on device::cuda: the caching allocator, operations on the current stream.
template <>
struct device_memory<device::cuda> {
    /// `bytes` of zeroed device memory.
    static void* allocate(std::size_t bytes) {
        void* p = cuda::allocator().allocate(bytes, cuda::current_stream());
        try {
            cuda::check(cudaMemsetAsync(p, 0, bytes, cuda::current_stream()), "cudaMemsetAsync");
        } catch (...) {
            cuda::allocator().deallocate(p);
            throw;
        }
        return p;
    }
    /// Returns p to the caching allocator.
    static void deallocate(void* p) noexcept { cuda::allocator().deallocate(p); }
    /// Copies `bytes` from device memory src to device memory dst.
    static void copy(void* dst, const void* src, std::size_t bytes) {
        cuda::check(
            cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::current_stream()),
            "cudaMemcpyAsync (device to device)");
    }
    /// Copies `bytes` from host memory src to device memory dst (returns when src may be reused).
    static void from_host(void* dst, const void* src, std::size_t bytes) {
        cuda::check(
            cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda::current_stream()),
            "cudaMemcpyAsync (host to device)");
        cuda::check(cudaStreamSynchronize(cuda::current_stream()),
                    "cudaMemcpyAsync (host to device)");
    }
    /// Copies `bytes` from device memory src to host memory dst, after the work queued before it.
    static void to_host(void* dst, const void* src, std::size_t bytes) {
        cuda::check(
            cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda::current_stream()),
            "cudaMemcpyAsync (device to host)");
        cuda::check(cudaStreamSynchronize(cuda::current_stream()),
                    "cudaMemcpyAsync (device to host)");
    }
    /// Sets the n elements at p to v.
    template <class T>
    static void fill(T* p, std::size_t n, T v) {
        static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8,
                      "ftune: device buffers fill elements of 1, 2, 4 or 8 bytes");
        std::uint64_t pattern = 0;
        std::memcpy(&pattern, &v, sizeof(T));
        backends::cuda::fill_pattern(p, n, sizeof(T), pattern);
    }
};

FTUNE_NAMESPACE_END
