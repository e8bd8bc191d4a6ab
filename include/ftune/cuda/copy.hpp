// Copies between host and device memory, on the current stream, returning when the data may be
// used (cudaMemcpyAsync, then a wait for the stream).
//
//   auto x = ftune::cuda::to_device(host.view());   // buffer<float, S, device::cuda>
//   auto back = ftune::cuda::to_host(x.view());     // buffer<float, S, device::cpu>
#pragma once

#include <cstddef>
#include <type_traits>

#include "ftune/backends/cuda/memory.hpp"
#include "ftune/core/tensor.hpp"
#include "ftune/cuda/runtime.hpp"

FTUNE_NAMESPACE_BEGIN

namespace cuda {

/// Copies n elements from host memory to device memory (returns when src may be reused).
template <class T>
void copy_to_device(T* dst, const T* src, std::size_t n) {
    host_to_device<device::cuda>(dst, src, n);
}
/// Copies n elements from device memory to host memory, after the work queued before it.
template <class T>
void copy_to_host(T* dst, const T* src, std::size_t n) {
    device_to_host<device::cuda>(dst, src, n);
}
/// A device buffer holding a copy of a host view.
template <class T, class S, host_device D>
buffer<std::remove_const_t<T>, S, device::cuda> to_device(const view<T, S, D>& host) {
    buffer<std::remove_const_t<T>, S, device::cuda> out(host.shape());
    copy_to_device(out.data(), host.data(), host.size());
    return out;
}

/// A host buffer holding a copy of a device view.
template <class T, class S>
buffer<std::remove_const_t<T>, S, device::cpu> to_host(const view<T, S, device::cuda>& dev) {
    buffer<std::remove_const_t<T>, S, device::cpu> out(dev.shape());
    copy_to_host(out.data(), dev.data(), dev.size());
    return out;
}

}  // namespace cuda

FTUNE_NAMESPACE_END
