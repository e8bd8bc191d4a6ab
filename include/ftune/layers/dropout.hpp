// layers::dropout: inverted dropout in training mode, identity in evaluation mode.
#pragma once

#include <cstdint>
#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// y = x * keep / (1 - p) in training (keep drawn from ctx.rng's next stream), y = x in eval.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class dropout {
  public:
    using value_type = T;                                    ///< scalar type
    using input_view = view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                          ///< y: (N, C)
    using d_input_view = view<T, shape<dynamic, C>, D>;      ///< dx: (N, C), accumulated into

    T p;  ///< probability of dropping an element (BERT: 0.1)

    /// A dropout layer with drop probability p_.
    explicit dropout(T p_ = T(0.1)) : p(p_) {}

    /// Training: draws a mask from ctx.rng.next() and scales; eval (or p = 0): returns x itself.
    output_view forward(context& ctx, input_view x) {
        active_ = ctx.training() && p > T(0);
        if (!active_) return x;
        y_.resize(x.shape());
        mask_.resize(x.shape());
        ops::dropout(y_, mask_, x, p, ctx.rng.next(), ctx.dropout_examples, ctx.first_example);
        return y_.view();
    }

    /// dx += dy * mask / (1 - p) in training, dx += dy in eval (grad_write::overwrite: dx =;
    /// nothing when dx is empty).
    void backward(context&, output_view dy, d_input_view dx,
                  grad_write w = grad_write::accumulate) {
        if (dx.empty()) return;
        if (active_)
            ops::dropout_backward(dx, mask_, dy, p, w);
        else if (w == grad_write::overwrite)
            ops::copy(dx, dy);
        else
            ops::residual_add(dx, dx, dy);
    }

    /// Whether the last forward dropped (training with p > 0); otherwise it passed x through.
    bool active() const noexcept { return active_; }
    /// No parameters: nothing to clear.
    void zero_grad() {}
    /// No parameters: f is never called.
    template <class Fn>
    void visit_parameters(std::string_view, Fn&&) {}

  private:
    bool active_ = false;                              // whether the last forward dropped
    buffer<T, shape<dynamic, C>, D> y_;                // (N, C) output in training
    buffer<std::uint8_t, shape<dynamic, C>, D> mask_;  // (N, C) keep mask
};

}  // namespace layers
FTUNE_NAMESPACE_END
