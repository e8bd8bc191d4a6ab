// The CUDA runtime as ftune uses it: errors as ftune::error, the devices present, the stream
// this thread's primitives run on, and the caching allocator bound to cudaMalloc. Host code:
// compiles with any C++20 compiler given the CUDA toolkit's headers (FTUNE_WITH_CUDA builds).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "ftune/cuda/allocator.hpp"
#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN

namespace cuda {

/// Throws an ftune::error about `what` (the CUDA call) unless status is cudaSuccess: unsupported
/// when there is no usable device or driver or no memory left, internal otherwise.
inline void check(cudaError_t status, const char* what) {
    if (status == cudaSuccess) return;
    const std::string message =
        std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    switch (status) {
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInvalidDevice:
            throw error(errc::unsupported, what,
                        message +
                            " (no usable CUDA device: check nvidia-smi, or run on "
                            "device::cpu)");
        case cudaErrorMemoryAllocation:
            throw error(errc::unsupported, what,
                        message +
                            " (the device is out of memory: lower the batch size or the "
                            "sequence length, or call cuda::release_cached_memory())");
        default:
            throw error(errc::internal, what, message);
    }
}

/// Number of CUDA devices this process can use (0 without a driver or a GPU; never throws).
inline int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky error of the failed query
        return 0;
    }
    return n;
}

/// Whether a CUDA device is present for ftune's primitives.
inline bool available() noexcept {
    return device_count() > 0;
}

/// Why no CUDA device can be used, in CUDA's words (empty when one can).
inline std::string unavailable_reason() {
    int n = 0;
    const cudaError_t status = cudaGetDeviceCount(&n);
    if (status != cudaSuccess) {
        (void)cudaGetLastError();
        return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    }
    return n > 0 ? std::string() : std::string("cudaGetDeviceCount found no device");
}

/// What `ftune info` and the benchmarks report about a device.
struct device_properties {
    std::string name;         ///< e.g. "NVIDIA H200"
    int major = 0;            ///< compute capability, major
    int minor = 0;            ///< compute capability, minor
    std::size_t memory = 0;   ///< global memory in bytes
    int multiprocessors = 0;  ///< number of SMs
};

/// The properties of device `index`.
inline device_properties properties(int index = 0) {
    cudaDeviceProp p{};
    check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
    return {p.name, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount};
}

/// Selects device `index` for this thread's later work (cudaSetDevice).
inline void set_device(int index) {
    check(cudaSetDevice(index), "cudaSetDevice");
}

/// The stream this thread's primitives run on: the default (legacy) stream unless a
/// stream_scope chose another.
inline cudaStream_t& current_stream() noexcept {
    thread_local cudaStream_t stream = nullptr;
    return stream;
}

/// Makes `s` this thread's current stream until the scope ends (then the previous one again).
class stream_scope {
  public:
    /// Runs the primitives of this thread on s from now on.
    explicit stream_scope(cudaStream_t s) noexcept : previous_(current_stream()) {
        current_stream() = s;
    }
    stream_scope(const stream_scope&) = delete;
    stream_scope& operator=(const stream_scope&) = delete;
    /// Restores the previous stream.
    ~stream_scope() { current_stream() = previous_; }

  private:
    cudaStream_t previous_;
};

/// Waits for the current stream's work; throws what a kernel reported (an asynchronous error).
inline void synchronize() {
    check(cudaStreamSynchronize(current_stream()), "cudaStreamSynchronize");
}

namespace detail {
/// cudaMalloc / cudaFree as the caching allocator's source.
struct runtime_source {
    /// `bytes` of device memory; throws on failure.
    static void* allocate(std::size_t bytes) {
        void* p = nullptr;
        check(cudaMalloc(&p, bytes), "cudaMalloc");
        return p;
    }
    /// Frees p (errors at exit are ignored: the context may be gone).
    static void release(void* p) noexcept { (void)cudaFree(p); }
};
}  // namespace detail

/// The process's caching allocator of device memory (buffers on device::cuda and the backend's
/// scratch come from it). Never destroyed: blocks may be returned during static destruction.
inline caching_allocator<detail::runtime_source>& allocator() {
    static auto* a = new caching_allocator<detail::runtime_source>();
    return *a;
}

/// The device allocator's counters (source_allocations: cudaMalloc calls so far).
inline allocator_statistics memory_statistics() {
    return allocator().statistics();
}

/// Gives the cached free blocks back to the device (torch.cuda.empty_cache()).
inline void release_cached_memory() noexcept {
    allocator().release_cached();
}

}  // namespace cuda

FTUNE_NAMESPACE_END
