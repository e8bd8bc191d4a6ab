// train::device_run: the trainer's steps on another device (train::options::device): a CUDA GPU
// (FTUNE_WITH_CUDA builds, docs/cuda.md), or the reference backend (plain loops: slow, the
// tests' way to run this code on any machine).
//
// The host model stays the record. Its twin on device D (Model::on_device<D>, the same
// architecture built from model.config()) gets the weights once and runs forward, backward,
// clipping and the optimizer (the host optimizer's form on D, its state in D's memory). Per
// batch, the ids, mask and token types go to D; the head's outputs come back for the host head's
// loss and evaluation, and d outputs go to D. That is cheap for sequence and token
// classification and question answering ((B, L), (B, T, L) and (B, T, 2) values). A causal-LM
// head computes its loss on D from the hidden states (heads::causal_lm::loss_backward: the
// labels go up, the loss comes back); a masked-LM head's (B, T, V) logits come to the host each
// step (correct, not fast), as do a causal LM's in evaluation. Weights and the optimizer's state
// come back for checkpoints, best-weight snapshots and at the end of the run, so checkpoints
// keep the CPU's format: a GPU run resumes on the CPU and back.
//
//   train::device_run<Model, device::cuda> run(model, 0, opt.on_device<device::cuda>());
//   run.upload(&opt);                          // weights and optimizer state
//   double l = run.train_batch(ctx, b, 1.0f);  // forward, loss, backward on the device
//   run.step(1.0, lr);                         // clip, update, clear the gradients
//   run.download(&opt);                        // back into the host model and optimizer
#pragma once

#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/device.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/layers/lora_linear.hpp"
#include "ftune/optim.hpp"
#include "ftune/train/batch.hpp"
#if FTUNE_WITH_CUDA
#include "ftune/cuda/parameters.hpp"
#include "ftune/cuda/runtime.hpp"
#endif

FTUNE_NAMESPACE_BEGIN
namespace train {

/// What the trainer asks of a run on another device (device_run<Model, D> for each D).
template <class Model>
class device_steps {
  public:
    using T = typename Model::value_type;             ///< scalar type
    using host_output = typename Model::output_view;  ///< the head's outputs on the host

    virtual ~device_steps() = default;
    /// The outputs for batch b computed on the device, copied to the host (valid until the next
    /// call).
    virtual host_output forward(context& ctx, const batch& b) = 0;
    /// Forward, the host head's loss, backward on the device (gradients accumulate there);
    /// returns the batch loss.
    virtual double train_batch(context& ctx, const batch& b, T scale) = 0;
    /// Clip to max_norm (0: not), set the rate, update, clear the gradients, on the device.
    virtual void step(double max_norm, double lr) = 0;
    /// The device's weights into the host model (and its optimizer state into opt, if given).
    virtual void download(optim::any_optimizer<T>* opt) = 0;
    /// The host model's weights to the device (and opt's state, if given).
    virtual void upload(optim::any_optimizer<T>* opt) = 0;
};

#if FTUNE_WITH_CUDA
/// Makes CUDA device `index` this thread's; a clear error when there is no such device.
inline void use_cuda_device(int index) {
    const std::string what = "--device cuda:" + std::to_string(index);
    const int n = cuda::device_count();
    if (n == 0)
        throw error(errc::unsupported, what,
                    "no usable CUDA device (" + cuda::unavailable_reason() +
                        "); train on the CPU (--device cpu)");
    if (index < 0 || index >= n)
        throw error(
            errc::out_of_range, what,
            ftune::detail::cat("this machine has ", n, " CUDA device(s), numbered 0 to ", n - 1));
    cuda::set_device(index);
}
#endif

namespace detail {
/// Makes device D's unit `index` current (CUDA: cudaSetDevice, checked); returns index.
template <class D>
int select_device(int index) {
#if FTUNE_WITH_CUDA
    if constexpr (std::is_same_v<D, device::cuda>) use_cuda_device(index);
#endif
    return index;
}
}  // namespace detail

/// A model's training steps on device D, unit `index`: its twin there, the twin's optimizer,
/// and the per-batch copies (see the file's comment).
template <class Model, device_tag D>
requires has_device_form<Model, D>
class device_run final : public device_steps<Model> {
  public:
    using T = typename Model::value_type;                             ///< scalar type
    using twin_type = on_device_t<Model, D>;                          ///< the model on D
    using host_output = typename Model::output_view;                  ///< outputs on the host
    using device_output = typename twin_type::output_view;            ///< outputs on D
    using param_type = parameter_ref_on<T, D>;                        ///< the twin's parameters
    using ids_buffer = buffer<token_id, shape<dynamic, dynamic>, D>;  ///< (B, T) on D

    /// The twin of `host` on unit `index` of D (the host's LoRA adapters attached to the same
    /// layers, every weight copied there, the trainable flags mirrored) with optimizer `opt` (a
    /// host optimizer's on_device<D>()). Throws when the host model has parameters the twin
    /// cannot take (a merged adapter; other parameters added after loading).
    device_run(Model& host, int index, optim::any_optimizer<T, D> opt)
        : host_(host),
          twin_((detail::select_device<D>(index), host.config())),
          opt_(std::move(opt)) {
        try {
            mirror_adapters();
            copy_weights(true);
        } catch (const error& e) {
            throw error(e.id(),
                        ftune::detail::cat("training on ", D::name, ":", index, ": ", e.context()),
                        e.message() +
                            " (parameters added after loading other than LoRA adapters are not "
                            "carried to the device: train this model on the CPU)");
        }
        mirror_trainable();
        twin_.zero_grad();  // (frees a frozen parameter's gradient, as on the host)
        twin_.visit_parameters("", [&](param_type p) { params_.push_back(std::move(p)); });
    }

    host_output forward(context& ctx, const batch& b) override {
        up(ids_, b.ids, b), up(mask_, b.mask, b), up(types_, b.types, b);
        const device_output y = twin_.forward(ctx, ids_.view(), mask_.view(), types_.view());
        y_host_.resize(y.size());
        device_to_host<D>(y_host_.data(), y.data(), y.size());
        return host_output(y_host_.data(), y.shape());
    }

    double train_batch(context& ctx, const batch& b, T scale) override {
        if constexpr (requires {
                          twin_.loss_backward(ctx, ids_.view(), ids_.view(), ids_.view(), b, scale);
                      }) {
            // a head that takes its loss from the hidden states (causal LM): all on the device
            up(ids_, b.ids, b), up(mask_, b.mask, b), up(types_, b.types, b);
            return twin_.loss_backward(ctx, ids_.view(), mask_.view(), types_.view(), b, scale);
        }
        const host_output y = forward(ctx, b);
        d_host_.assign(y.size(), T(0));
        const double l = host_.head.loss(y, b, d_host_.data(), scale);  // the host's options
        d_.resize(shape<dynamic>(y.size()));
        host_to_device<D>(d_.data(), d_host_.data(), y.size());
        twin_.backward(ctx, device_output(d_.data(), y.shape()));
        return l;
    }

    void step(double max_norm, double lr) override {
        const std::span<const param_type> ps(params_);
        if (max_norm > 0) optim::clip_grad_norm(ps, max_norm);
        opt_.set_lr(lr);
        opt_.step(ps);
        twin_.zero_grad();
    }

    /// Also the optimizer's state (step count and tensors, by name: opt gets the state the
    /// first step would allocate, then the device's values) when opt is given.
    void download(optim::any_optimizer<T>* opt) override {
        copy_weights(false);
        if (!opt) return;
        const auto hp = optim::parameters_of(host_);
        opt->init_state(std::span<const parameter_ref<T>>(hp));
        opt->set_step_count(opt_.step_count());
        const auto dev = device_state();
        opt->visit_state([&](const std::string& name, std::span<T> v) {
            const auto it = dev.find(name);
            if (it == dev.end() || it->second.size() == 0) return;  // none yet: zero, as a start
            check_state(name, it->second.size(), v.size());
            device_to_host<D>(v.data(), it->second.data(), v.size());
        });
    }

    /// (A fresh opt, no step taken, leaves the device's optimizer fresh too: SGD's first step
    /// then starts its momentum from the gradient, as on the CPU.)
    void upload(optim::any_optimizer<T>* opt) override {
        copy_weights(true);
        if (!opt || opt->step_count() == 0) return;
        opt_.init_state(std::span<const param_type>(params_));
        opt_.set_step_count(opt->step_count());
        const auto dev = device_state();
        opt->visit_state([&](const std::string& name, std::span<T> v) {
            const auto it = dev.find(name);
            if (it == dev.end() || v.empty()) return;
            check_state(name, it->second.size(), v.size());
            host_to_device<D>(it->second.data(), v.data(), v.size());
        });
    }

    /// The model on D.
    twin_type& twin() noexcept { return twin_; }

  private:
    using state_view = typename optim::any_optimizer<T, D>::state_view;

    // dst (B, T) = src on D (src: B T values, or none: zeros)
    static void up(ids_buffer& dst, const std::vector<token_id>& src, const batch& b) {
        dst.resize(shape<dynamic, dynamic>(b.B, b.T));
        if (src.size() == b.B * b.T)
            host_to_device<D>(dst.data(), src.data(), src.size());
        else
            dst.fill(token_id(0));
    }
    // the host model's values to the twin (to_twin) or back, matched by name and size
    void copy_weights(bool to_twin) {
        copy_parameters(host_, twin_,
                        to_twin ? parameter_copy::values_to_twin : parameter_copy::values_to_host,
                        "the model's twin");
    }
    // collects a host model's parameter references (a keeps_values visit)
    struct collect : keeps_values {
        std::vector<parameter_ref<T>>* out;  // where they go
        void operator()(parameter_ref<T> p) const { out->push_back(std::move(p)); }
    };
    // the host's LoRA adapters attached to the twin's layers of the same names (their values
    // come with copy_weights; a merged adapter is refused: its product is in W)
    void mirror_adapters() {
        std::map<std::string, layers::lora_options> adapters;
        host_.visit_parameters("", layers::lora_visitor{[&](std::string_view name, auto& layer) {
                                   if (!layer.has_adapter()) return;
                                   if (layer.merged())
                                       throw error(errc::unsupported,
                                                   "LoRA adapter " + std::string(name),
                                                   "is merged into its weight: "
                                                   "unmerge_adapters() before training");
                                   adapters.emplace(name, layer.adapter_options());
                               }});
        if (adapters.empty()) return;
        twin_.visit_parameters("", layers::lora_visitor{[&](std::string_view name, auto& layer) {
                                   if (const auto it = adapters.find(std::string(name));
                                       it != adapters.end())
                                       layer.add_adapter(it->second, random_stream(0, 0));
                               }});  // (A's draw is overwritten: the values are the host's)
    }
    // the host model's trainable flags on the twin's parameters (matched in visit order)
    void mirror_trainable() {
        std::vector<parameter_ref<T>> hp;
        host_.visit_parameters("", collect{{}, &hp});
        std::size_t i = 0;
        twin_.visit_parameters("", [&](param_type p) { p.set_trainable(hp.at(i++).trainable); });
    }
    // the device optimizer's state tensors by name
    std::map<std::string, state_view> device_state() {
        std::map<std::string, state_view> m;
        opt_.visit_state([&](const std::string& name, state_view v) { m.emplace(name, v); });
        return m;
    }
    static void check_state(const std::string& name, std::size_t device, std::size_t host) {
        if (device != host)
            throw error(errc::shape_mismatch, "optimizer state " + name,
                        ftune::detail::cat(device, " values on the device but ", host,
                                           " on the host: the same parameters must train on "
                                           "both"));
    }

    Model& host_;                     // the record: checkpoints, the result
    twin_type twin_;                  // the model on D
    optim::any_optimizer<T, D> opt_;  // its optimizer
    std::vector<param_type> params_;  // its parameters, in visit order
    ids_buffer ids_, mask_, types_;   // (B, T) the batch on D
    std::vector<T> y_host_, d_host_;  // outputs and d outputs on the host
    buffer<T, shape<dynamic>, D> d_;  // d outputs on D
};

/// The run of `model` on options' device `spec` with optimizer `opt`'s form there: a
/// device_run, or a clear error (no CUDA backend in this build, no such GPU, a head without a
/// device form).
template <class Model>
std::unique_ptr<device_steps<Model>> make_device_run(
    Model& model, const device_spec& spec,
    const optim::any_optimizer<typename Model::value_type>& opt) {
    const std::string what = "train::options::device " + spec.str();
    auto run = [&]<class D>(D) -> std::unique_ptr<device_steps<Model>> {
        if constexpr (has_device_form<Model, D>) {
            return std::make_unique<device_run<Model, D>>(model, spec.index,
                                                          opt.template on_device<D>());
        } else {
            throw error(errc::unsupported, what,
                        std::string(Model::architecture) +
                            " has no form on another device yet (heads there: sequence and "
                            "token classification, question answering and masked LM on BERT; "
                            "causal LM and sequence classification on Llama and GPT-2); train "
                            "it on the CPU");
        }
    };
    switch (spec.what) {
        case device_spec::kind::reference:
            return run(device::reference{});
        case device_spec::kind::cuda:
#if FTUNE_WITH_CUDA
            return run(device::cuda{});
#else
            throw error(errc::unsupported, what,
                        "this program was built without the CUDA backend: rebuild with "
                        "-DFTUNE_WITH_CUDA=ON (docs/cuda.md), or train on the CPU");
#endif
        case device_spec::kind::cpu:
            break;
    }
    return nullptr;
}

}  // namespace train
FTUNE_NAMESPACE_END
