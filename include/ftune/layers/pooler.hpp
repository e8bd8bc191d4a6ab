// layers::pooler: BERT's pooler, tanh(dense(hidden state of the first token)).
#pragma once

#include <algorithm>
#include <string_view>

#include "ftune/layers/activation.hpp"
#include "ftune/layers/lora_linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// (B, T, C) hidden states -> (B, C) pooled output of the first token ([CLS]).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class pooler {
  public:
    using value_type = T;                                             ///< scalar type
    using input_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< hidden: (B, T, C)
    using output_view = view<const T, shape<dynamic, C>, D>;          ///< pooled: (B, C)
    using d_input_view = view<T, shape<dynamic, dynamic, C>, D>;  ///< d hidden, accumulated into

    lora_linear<T, C, C, D> dense;  ///< "dense" (a LoRA target, as in PEFT)
    tanh<T, C, D> activation;       ///< tanh

    /// A zero-initialized pooler of width `features`.
    explicit pooler(std::size_t features = C) : dense(features, features) {}

    /// pooled = tanh(hidden[:, 0] Wᵀ + b).
    output_view forward(context& ctx, input_view hidden) {
        const std::size_t B = hidden.extent(0), Cn = hidden.extent(2);
        first_.resize(shape<dynamic, C>(B, Cn));  // (B, C) the first token of each sequence
        ops::first_tokens(first_, hidden);
        return activation.forward(ctx, dense.forward(ctx, first_.view()));
    }

    /// Accumulates dense's gradients and, unless empty, d hidden (first-token rows only).
    void backward(context& ctx, output_view dout, d_input_view dhidden) {
        const std::size_t B = dout.extent(0), Cn = dout.extent(1);
        d_dense_.resize(shape<dynamic, C>(B, Cn));
        d_first_.resize(shape<dynamic, C>(B, Cn));
        d_dense_.fill(T(0));
        d_first_.fill(T(0));
        activation.backward(ctx, dout, d_dense_.view());
        dense.backward(ctx, d_dense_.view(), d_first_.view());
        if (!dhidden.empty()) ops::add_first_tokens(dhidden, d_first_);  // d hidden[b, 0] += ...
    }

    /// Packs dense's weight for inference (lora_linear::prepare_inference).
    void prepare_inference(precision p = precision::fp32) { dense.prepare_inference(p); }

    /// Sets the gradients to zero.
    void zero_grad() { dense.zero_grad(); }

    /// Visits "<prefix>.dense.weight" and "<prefix>.dense.bias".
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        dense.visit_parameters(join_name(prefix, "dense"), f);
    }

  private:
    buffer<T, shape<dynamic, C>, D> first_, d_dense_, d_first_;  // (B, C)
};

}  // namespace layers
FTUNE_NAMESPACE_END
