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
/// NVIDIA GPU memory; reserved for a CUDA backend (planned, optional; none yet).
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

FTUNE_NAMESPACE_END
