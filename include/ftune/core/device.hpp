// Device tags: where a tensor's memory lives and which backend runs the primitives on it.
#pragma once

#include <concepts>
#include <type_traits>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN

namespace device {
/// Host memory; primitives run on the CPU backend (xsimd + OpenMP, ftune's packed GEMM).
struct cpu {
    static constexpr const char* name = "cpu";  ///< the name in messages
    static constexpr bool host = true;          ///< whether the memory is the host's
};
/// Host memory; primitives run on the reference backend (plain loops in PyTorch's operation
/// order, the tests' oracle): a model on this device is the slow, obviously right twin of one on
/// device::cpu.
struct reference {
    static constexpr const char* name = "reference";  ///< the name in messages
    static constexpr bool host = true;                ///< whether the memory is the host's
};
/// NVIDIA GPU memory; primitives run on the CUDA backend (optional: FTUNE_WITH_CUDA builds,
/// backends/cuda/, docs/cuda.md).
struct cuda {
    static constexpr const char* name = "cuda";  ///< the name in messages
    static constexpr bool host = false;          ///< whether the memory is the host's
};
}  // namespace device

/// A type usable as a device tag: a name for messages and whether its memory is the host's.
/// ftune's are above; a new one needs a backend (ops::backend_of, docs/extending.md).
template <class D>
concept device_tag = requires {
    { D::name } -> std::convertible_to<const char*>;
    { D::host } -> std::convertible_to<bool>;
};

/// A device whose memory is the host's (ftune::buffer allocates it).
template <class D>
concept host_device = device_tag<D> && D::host;

/// Fails the build where a function that reads or writes tensor memory in host loops (decoding
/// predictions, finding marker tokens, a cache's bookkeeping) is instantiated for a device whose
/// memory is not the host's, instead of letting it read device pointers at run time.
template <class D>
constexpr void require_host_memory() {
    static_assert(D::host,
                  "ftune: this function reads tensor memory in host loops; on device::cuda it is "
                  "not available yet (docs/cuda.md lists what runs on the device): copy the "
                  "tensor to the host (cuda::to_host) or run this part on device::cpu");
}

FTUNE_NAMESPACE_END
