// Device tags: where a tensor's memory lives and which backend runs the primitives on it.
#pragma once

#include <type_traits>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN

namespace device {
/// Host memory; primitives run on the CPU backend (Eigen + xsimd + OpenMP).
struct cpu {
    static constexpr const char* name = "cpu";
};
/// NVIDIA GPU memory; reserved for the CUDA backend (FTUNE_WITH_CUDA).
struct cuda {
    static constexpr const char* name = "cuda";
};
}  // namespace device

/// A type usable as a device tag.
template <class D>
concept device_tag = std::is_same_v<D, device::cpu> || std::is_same_v<D, device::cuda>;

FTUNE_NAMESPACE_END
