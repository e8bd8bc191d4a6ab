// layers::activation: element-wise GELU (erf), GELU (tanh), ReLU, tanh or SiLU, chosen at compile
// time (activation<T, F>) or when the model is built (hidden_activation, read from a config).
#pragma once

#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// y = f(x) element-wise over (N, C) with f chosen when the layer is built (from a config's
/// hidden_act); one switch per call. activation<T, F> is this layer with f fixed by the type.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class hidden_activation {
  public:
    using value_type = T;                                    ///< scalar type
    using input_view = view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                          ///< y: (N, C)
    using d_input_view = view<T, shape<dynamic, C>, D>;      ///< dx: (N, C), accumulated into

    ops::activation kind;  ///< the function (BERT: gelu)

    /// A layer applying f.
    explicit hidden_activation(ops::activation f = ops::activation::gelu) : kind(f) {}

    /// y = f(x); saves x (a view: keep it alive until backward) and y.
    output_view forward(context&, input_view x) {
        x_ = x;
        y_.resize(x.shape());
        ops::activate(kind, y_, x);
        output_bf16_ = false;
        return y_.view();
    }

    /// y = f(x) rounded to bf16 and kept only so (CPU; f other than tanh, whose backward reads
    /// y): for an output that only bf16 products read, which round it so anyway (the FFN's
    /// activation in a bf16 training step: half the bytes written and read). Saves x; backward
    /// is forward()'s.
    view<const bf16, shape<dynamic, C>, D> forward_bf16(context&, input_view x) requires
        std::is_same_v<T, float> && std::is_same_v<D, device::cpu> {
        if (!keeps_input_only())
            throw error(errc::invalid_argument, "hidden_activation::forward_bf16",
                        "tanh's backward reads its output: use forward()");
        x_ = x;
        yb_.resize(x.shape());
        ops::activate(kind, yb_, x);
        output_bf16_ = true;
        return yb_.view();
    }

    /// Whether the last forward kept its output in bf16 alone (forward_bf16).
    bool output_in_bf16() const noexcept { return output_bf16_; }

    /// Whether backward reads the input alone (every function but tanh): forward_bf16 applies.
    bool keeps_input_only() const noexcept { return kind != ops::activation::tanh; }

    /// dx += f'(x) dy (grad_write::overwrite: dx =; nothing when dx is empty).
    void backward(context&, output_view dy, d_input_view dx,
                  grad_write w = grad_write::accumulate) {
        if (dx.empty()) return;
        if (kind == ops::activation::tanh)
            ops::activate_backward(kind, dx, y_, dy, w);
        else
            ops::activate_backward(kind, dx, x_, dy, w);
    }

    /// No parameters: nothing to clear.
    void zero_grad() {}
    /// No parameters: f is never called.
    template <class Fn>
    void visit_parameters(std::string_view, Fn&&) {}

  private:
    input_view x_;                           // the last forward's input
    buffer<T, shape<dynamic, C>, D> y_;      // (N, C) output
    buffer<bf16, shape<dynamic, C>, D> yb_;  // (N, C) output in bf16 (forward_bf16)
    bool output_bf16_ = false;               // the last forward wrote yb_ instead of y_
};

/// y = f(x) element-wise over (N, C) with f fixed by the type: F is ops::activation::gelu
/// ("gelu"), gelu_tanh ("gelu_new"), relu ("relu"), silu ("silu") or tanh (the pooler's).
template <scalar T, ops::activation F, std::size_t C = dynamic, device_tag D = device::cpu>
class activation : public hidden_activation<T, C, D> {
  public:
    static constexpr ops::activation fixed_kind = F;  ///< the function, fixed by the type

    /// A layer applying F.
    activation() : hidden_activation<T, C, D>(F) {}
};

/// Exact-erf GELU, BERT's "gelu".
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
using gelu = activation<T, ops::activation::gelu, C, D>;
/// tanh-approximated GELU, Hugging Face's "gelu_new".
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
using gelu_tanh = activation<T, ops::activation::gelu_tanh, C, D>;
/// tanh (the pooler's activation).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
using tanh = activation<T, ops::activation::tanh, C, D>;
/// max(x, 0), Hugging Face's "relu".
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
using relu = activation<T, ops::activation::relu, C, D>;
/// x sigmoid(x), Hugging Face's "silu" (Llama's MLP gate).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
using silu = activation<T, ops::activation::silu, C, D>;

}  // namespace layers
FTUNE_NAMESPACE_END
