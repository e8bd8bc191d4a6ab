// Device tags: where a tensor's memory lives and which backend runs the primitives on it.
#pragma once

#include <concepts>
#include <string>
#include <type_traits>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"

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
/// predictions, finding marker tokens, a packed batch's positions) is instantiated for a device
/// whose memory is not the host's, instead of letting it read device pointers at run time.
template <class D>
constexpr void require_host_memory() {
    static_assert(D::host,
                  "ftune: this function reads tensor memory in host loops; on device::cuda it is "
                  "not available yet (docs/cuda.md lists what runs on the device): copy the "
                  "tensor to the host (cuda::to_host) or run this part on device::cpu");
}

/// Whether model (or layer) type M has a form with its tensors on device D: a member alias
/// `template <device_tag D> using on_device = ...` naming the same architecture on D (a
/// task_model has one when its backbone and its head have).
template <class M, class D>
concept has_device_form = requires {
    typename M::template on_device<D>;
};
/// M's form on device D (the type a trainer builds to run M there).
template <class M, class D>
using on_device_t = typename M::template on_device<D>;

/// Where a run computes, chosen at run time (the CLI's --device): the CPU, CUDA device `index`
/// (device::cuda; needs a build with FTUNE_WITH_CUDA), or the reference backend
/// (device::reference: plain loops, slow; what tests use to run the device path anywhere).
struct device_spec {
    enum class kind { cpu, cuda, reference } what = kind::cpu;  ///< the backend
    int index = 0;                                              ///< kind::cuda: the GPU's number

    /// "cpu", "cuda" (GPU 0), "cuda:N" or "reference".
    static device_spec parse(const std::string& s) {
        if (s == "cpu") return {};
        if (s == "reference") return {kind::reference, 0};
        if (s == "cuda") return {kind::cuda, 0};
        if (s.starts_with("cuda:") && s.size() > 5 && s.size() < 9 &&
            s.find_first_not_of("0123456789", 5) == std::string::npos)
            return {kind::cuda, std::stoi(s.substr(5))};
        throw error(errc::invalid_argument, "--device " + s,
                    "expected cpu, cuda, cuda:N or reference");
    }
    /// "cpu", "cuda:N" or "reference".
    std::string str() const {
        return what == kind::cpu         ? "cpu"
               : what == kind::reference ? "reference"
                                         : "cuda:" + std::to_string(index);
    }
    /// Whether this is the CPU.
    bool cpu() const noexcept { return what == kind::cpu; }
};

FTUNE_NAMESPACE_END
