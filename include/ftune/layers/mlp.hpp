// layers::mlp: the feed-forward of GPT-2's blocks (GPT2MLP): c_proj(act(c_fc(x))), both
// projections with a bias, the activation "gelu_new" (GELU's tanh approximation).
#pragma once

#include <string_view>

#include "ftune/layers/activation.hpp"
#include "ftune/layers/gradients.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// (N, C) -> (N, F) -> (N, C): y = c_proj(act(c_fc(x))), Hugging Face GPT-2's names. In and Out
/// are the projection types (a LoRA linear goes here), Act the activation.
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic, device_tag D = device::cpu,
          class In = linear<T, C, F, D>, class Out = linear<T, F, C, D>,
          class Act = hidden_activation<T, F, D>>
class mlp {
  public:
    using value_type = T;                                    ///< scalar type
    using input_view = view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                          ///< y: (N, C)
    using d_input_view = view<T, shape<dynamic, C>, D>;      ///< dx: (N, C), accumulated into

    In c_fc;     ///< "c_fc" (C -> F)
    Act act;     ///< the activation
    Out c_proj;  ///< "c_proj" (F -> C)

    /// A zero-initialized MLP C -> F -> C activated by f.
    mlp(std::size_t features, std::size_t hidden, ops::activation f = ops::activation::gelu_tanh)
        : c_fc(features, hidden), act(f), c_proj(hidden, features) {}

    /// y = c_proj(act(c_fc(x))); keeps views for backward.
    output_view forward(context& ctx, input_view x) {
        return c_proj.forward(ctx, act.forward(ctx, c_fc.forward(ctx, x)));  // (N, C)
    }

    /// Accumulates the projections' gradients and, unless empty, dx (grad_write::overwrite: dx
    /// written, its old content not read).
    void backward(context& ctx, output_view dy, d_input_view dx,
                  grad_write write = grad_write::accumulate) {
        auto& w = ctx.workspace.get<backward_scratch>();  // shared by the run's MLPs
        const std::size_t N = dy.extent(0), Fn = c_fc.out_features();
        w.dh.resize(shape<dynamic, F>(N, Fn));
        w.dg.resize(w.dh.shape());
        backward_into(c_proj, ctx, dy, w.dh.view());        // d act
        backward_into(act, ctx, w.dh.view(), w.dg.view());  // d c_fc's output
        backward_into(c_fc, ctx, w.dg.view(), dx, write);
    }

    /// Whether any projection trains (false: frozen).
    bool trainable() const noexcept { return c_fc.trainable() || c_proj.trainable(); }
    /// Sets every gradient to zero.
    void zero_grad() {
        c_fc.zero_grad();
        c_proj.zero_grad();
    }
    /// Packs the projections for inference.
    void prepare_inference(precision p = precision::fp32) {
        c_fc.prepare_inference(p);
        c_proj.prepare_inference(p);
    }

    /// Visits c_fc, c_proj (Transformers' order).
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        c_fc.visit_parameters(join_name(prefix, "c_fc"), f);
        c_proj.visit_parameters(join_name(prefix, "c_proj"), f);
    }

  private:
    struct backward_scratch {                    // one set per run (ctx.workspace)
        buffer<T, shape<dynamic, F>, D> dh, dg;  // (N, F) gradients
    };
};

}  // namespace layers
FTUNE_NAMESPACE_END
