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
    copy_parameters(host, device, parameter_copy::values_to_twin, "cuda::upload_parameters");
}

/// Copies the values (gradients = false) or the gradients (true) of device model `device` into
/// host model `host` (matched as upload_parameters matches them). A gradient the device freed
/// (a frozen parameter) leaves the host's alone.
template <class Device, class Host>
void download_parameters(Device& device, Host& host, bool gradients = false) {
    copy_parameters(host, device,
                    gradients ? parameter_copy::gradients_to_host : parameter_copy::values_to_host,
                    "cuda::download_parameters");
}

}  // namespace cuda

FTUNE_NAMESPACE_END
