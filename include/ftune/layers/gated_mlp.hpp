// layers::gated_mlp: the gated feed-forward of Llama-family blocks (LlamaMLP):
// down(act(gate(x)) ⊙ up(x)), with SiLU as the gate's activation ("SwiGLU").
#pragma once

#include <string_view>

#include "ftune/layers/activation.hpp"
#include "ftune/layers/gradients.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// (N, C) -> (N, F) twice -> (N, C): y = down(act(gate(x)) ⊙ up(x)). Hugging Face's names
/// gate_proj, up_proj, down_proj; Proj<In, Out> is the projection type (Llama's have no bias;
/// a LoRA linear goes here), Act the gate's activation (Llama: hidden_act "silu").
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic, device_tag D = device::cpu,
          class GateUp = linear<T, C, F, D, false>, class Down = linear<T, F, C, D, false>,
          class Act = hidden_activation<T, F, D>>
class gated_mlp {
  public:
    using value_type = T;                                    ///< scalar type
    using input_view = view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                          ///< y: (N, C)
    using d_input_view = view<T, shape<dynamic, C>, D>;      ///< dx: (N, C), accumulated into

    GateUp gate_proj;  ///< "gate_proj" (C -> F)
    GateUp up_proj;    ///< "up_proj" (C -> F)
    Down down_proj;    ///< "down_proj" (F -> C)
    Act act;           ///< the gate's activation

    /// A zero-initialized MLP C -> F -> C with the gate activated by f.
    gated_mlp(std::size_t features, std::size_t hidden, ops::activation f = ops::activation::silu)
        : gate_proj(features, hidden),
          up_proj(features, hidden),
          down_proj(hidden, features),
          act(f) {}

    /// y = down(act(gate(x)) ⊙ up(x)); keeps views for backward.
    output_view forward(context& ctx, input_view x) {
        const auto g = gate_proj.forward(ctx, x);  // (N, F)
        const auto u = up_proj.forward(ctx, x);    // (N, F)
        a_ = act.forward(ctx, g);                  // (N, F)
        u_ = u;
        h_.resize(u.shape());  // (N, F) act(gate) ⊙ up
        ops::multiply(h_, a_, u_);
        return down_proj.forward(ctx, h_.view());
    }

    /// Accumulates the projections' gradients and, unless empty, dx (grad_write::overwrite: dx
    /// written, its old content not read).
    void backward(context& ctx, output_view dy, d_input_view dx,
                  grad_write write = grad_write::accumulate) {
        auto& w = ctx.workspace.get<backward_scratch>();  // shared by the run's MLPs
        w.dh.resize(h_.shape());
        w.da.resize(h_.shape());
        w.du.resize(h_.shape());
        w.dg.resize(h_.shape());
        w.da.fill(T(0));  // multiply_backward adds
        w.du.fill(T(0));
        backward_into(down_proj, ctx, dy, w.dh.view());           // d (act ⊙ up)
        ops::multiply_backward(w.da, w.du, a_, u_, w.dh.view());  // d act, d up
        backward_into(act, ctx, w.da.view(), w.dg.view());        // d gate
        backward_into(gate_proj, ctx, w.dg.view(), dx, write);
        up_proj.backward(ctx, w.du.view(), dx);
    }

    /// Whether any projection trains (false: frozen).
    bool trainable() const noexcept {
        return gate_proj.trainable() || up_proj.trainable() || down_proj.trainable();
    }
    /// Sets every gradient to zero.
    void zero_grad() {
        gate_proj.zero_grad();
        up_proj.zero_grad();
        down_proj.zero_grad();
    }
    /// Packs the projections for inference.
    void prepare_inference(precision p = precision::fp32) {
        gate_proj.prepare_inference(p);
        up_proj.prepare_inference(p);
        down_proj.prepare_inference(p);
    }

    /// Visits gate_proj, up_proj, down_proj (Transformers' order).
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        gate_proj.visit_parameters(join_name(prefix, "gate_proj"), f);
        up_proj.visit_parameters(join_name(prefix, "up_proj"), f);
        down_proj.visit_parameters(join_name(prefix, "down_proj"), f);
    }

  private:
    typename Act::output_view a_;                        // (N, F) act(gate(x)) (the layer's buffer)
    typename GateUp::output_view u_;                     // (N, F) up(x) (the projection's buffer)
    buffer<T, shape<dynamic, F>, D> h_;                  // (N, F) act ⊙ up
    struct backward_scratch {                            // one set per run (ctx.workspace)
        buffer<T, shape<dynamic, F>, D> dh, da, du, dg;  // (N, F) gradients
    };
};

}  // namespace layers
FTUNE_NAMESPACE_END
