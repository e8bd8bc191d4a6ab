// A model's parameters between the host and the device: load or initialize a model on the host
// (Hugging Face loaders, GGUF, random init), then copy its values into the same architecture on
// device::cuda; copy values or gradients back to compare or to save.
//
//   auto cpu = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir);
//   ftune::bert::sequence_classifier<GpuEncoder> gpu(cpu.config);
//   ftune::cuda::upload_parameters(cpu.model, gpu);
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "ftune/cuda/copy.hpp"
#include "ftune/core/parameter.hpp"

FTUNE_NAMESPACE_BEGIN

namespace cuda {

namespace detail {
/// Collects a host model's parameter references (a keeps_values visit: prepared weights stay).
template <class T>
struct collect_refs : keeps_values {
    std::vector<parameter_ref<T>>* out;  ///< where they go
    /// Keeps p.
    void operator()(parameter_ref<T> p) const { out->push_back(std::move(p)); }
};

/// Throws unless the device parameter p (the i-th visited) matches the host one h.
template <class T, class D>
void check_twin(const device_parameter_ref<T, D>& p, const parameter_ref<T>& h, std::size_t i,
                const char* what) {
    if (p.name != h.name || p.value.size() != h.value.size())
        throw error(errc::shape_mismatch, what,
                    ftune::detail::cat("parameter ", i, " is \"", p.name, "\" ", p.shape_string(),
                                       " on the device but \"", h.name, "\" ", h.shape_string(),
                                       " on the host: the two models must have the same "
                                       "architecture and configuration"));
}
}  // namespace detail

/// Every parameter of a device model (a visit with prefix ""), frozen ones included: what
/// optim::adamw<T, device::cuda>, optim::sgd<T, device::cuda> and optim::clip_grad_norm take.
template <class Model>
std::vector<device_parameter_ref<typename Model::value_type, ftune::device::cuda>> parameters_of(
    Model& model) {
    std::vector<device_parameter_ref<typename Model::value_type, ftune::device::cuda>> v;
    model.visit_parameters("", [&](auto p) { v.push_back(std::move(p)); });
    return v;
}

/// Copies the value of every parameter of host model `host` into device model `device` (the same
/// architecture; parameters matched in visit order by name and size, else shape_mismatch). The
/// device model's prepared inference state is dropped (its weights changed); gradients untouched.
template <class Host, class Device>
void upload_parameters(Host& host, Device& device) {
    using T = typename Device::value_type;
    std::vector<parameter_ref<T>> refs;
    host.visit_parameters("", detail::collect_refs<T>{{}, &refs});
    std::size_t i = 0;
    device.visit_parameters("", [&](auto p) {
        if (i >= refs.size())
            throw error(errc::shape_mismatch, "cuda::upload_parameters",
                        ftune::detail::cat("the device model has more than the host model's ",
                                           refs.size(), " parameters"));
        detail::check_twin(p, refs[i], i, "cuda::upload_parameters");
        copy_to_device(p.value.data(), refs[i].value.data(), p.value.size());
        ++i;
    });
    if (i != refs.size())
        throw error(errc::shape_mismatch, "cuda::upload_parameters",
                    ftune::detail::cat("the device model has ", i, " parameters, the host model ",
                                       refs.size()));
}

/// Copies the values (gradients = false) or the gradients (true) of device model `device` into
/// host model `host` (matched as upload_parameters matches them). A gradient the device freed
/// (a frozen parameter) leaves the host's alone.
template <class Device, class Host>
void download_parameters(Device& device, Host& host, bool gradients = false) {
    using T = typename Device::value_type;
    std::vector<parameter_ref<T>> refs;
    if (gradients)
        host.visit_parameters("", detail::collect_refs<T>{{}, &refs});
    else  // the host's values change: a plain visit, which drops its prepared weights
        host.visit_parameters("", [&](parameter_ref<T> p) { refs.push_back(std::move(p)); });
    std::size_t i = 0;
    struct reader : keeps_values {  // reads the device model: its prepared weights stay
        std::vector<parameter_ref<T>>* refs;
        std::size_t* i;
        bool gradients;
        void operator()(const device_parameter_ref<T, ftune::device::cuda>& p) const {
            if (*i >= refs->size())
                throw error(errc::shape_mismatch, "cuda::download_parameters",
                            ftune::detail::cat("the device model has more than the host model's ",
                                               refs->size(), " parameters"));
            const auto& h = (*refs)[*i];
            detail::check_twin(p, h, *i, "cuda::download_parameters");
            if (!gradients)
                copy_to_host(h.value.data(), p.value.data(), p.value.size());
            else if (p.grad.size() && h.grad.size() == p.grad.size())
                copy_to_host(h.grad.data(), p.grad.data(), p.grad.size());
            ++*i;
        }
    };
    device.visit_parameters("", reader{{}, &refs, &i, gradients});
    if (i != refs.size())
        throw error(errc::shape_mismatch, "cuda::download_parameters",
                    ftune::detail::cat("the device model has ", i, " parameters, the host model ",
                                       refs.size()));
}

}  // namespace cuda

FTUNE_NAMESPACE_END
