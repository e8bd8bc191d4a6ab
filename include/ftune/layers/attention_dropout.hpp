// layers::attention_dropout: the dropout on attention probabilities that both attention layers
// (self_attention, rotary_attention) apply in training, and the way back through it and the
// softmax. In bf16 training the dropped probabilities and the scores' gradient are kept in bf16,
// rounded as the products that alone read them would round them (docs/precision.md).
#pragma once

#include <cstdint>
#include <type_traits>

#include "ftune/core/context.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// Dropout on (B, H, Tq, Tk) attention probabilities in training, kept for backward.
template <scalar T, device_tag D = device::cpu>
class attention_dropout {
  public:
    using probs_buffer = buffer<T, dynamic_shape<4>, D>;    ///< (B, H, Tq, Tk), fp32
    using probs_bf16 = buffer<bf16, dynamic_shape<4>, D>;   ///< (B, H, Tq, Tk), bf16
    using probs_view = view<const T, dynamic_shape<4>, D>;  ///< the probabilities read

    /// In training with p > 0, drops probs with probability p (a fresh stream of ctx.rng) for
    /// products in precision prec; otherwise the products read probs as they are.
    void forward(context& ctx, probs_view probs, T p, precision prec) {
        on_ = ctx.training() && p > T(0);
        p_ = p, precision_ = prec;
        if (!on_) return;
        keep_.resize(probs.shape());
        if (in_bf16()) {
            if constexpr (std::is_same_v<T, float>) {
                dropped_bf16_.resize(probs.shape());
                ops::dropout(dropped_bf16_, keep_, probs, p, ctx.rng.next(), ctx.dropout_examples,
                             ctx.first_example);
            }
        } else {
            dropped_.resize(probs.shape());
            ops::dropout(dropped_, keep_, probs, p, ctx.rng.next(), ctx.dropout_examples,
                         ctx.first_example);
        }
    }

    /// Forgets the last forward's dropout (an inference forward ran since).
    void clear() noexcept { on_ = false; }

    /// Calls f(the probabilities the context product reads): after dropout (in bf16 for bf16
    /// products), or probs as the softmax gave them.
    template <class F>
    void read(probs_view probs, F&& f) const {
        if (!on_) return f(probs);
        if constexpr (std::is_same_v<T, float>)
            if (in_bf16()) return f(dropped_bf16_.view());
        f(dropped_.view());
    }

    /// dS = the gradient of the (unscaled) scores from dp, the gradient of the probabilities
    /// read(): back through the dropout and the softmax (probs: its output, scale: its factor) in
    /// one pass, written into ds, or into ds_bf16 for bf16 products; then f(dS).
    template <class F>
    void scores_backward(probs_buffer& ds, probs_bf16& ds_bf16, probs_view probs, probs_view dp,
                         T scale, F&& f) const {
        auto through = [&](auto& dscores) {
            dscores.resize(probs.shape());
            if (on_)
                ops::masked_softmax_dropout_backward(dscores, probs, dp, keep_.view(), p_, scale);
            else
                ops::masked_softmax_backward(dscores, probs, dp, scale, false);
            f(dscores.view());
        };
        if constexpr (std::is_same_v<T, float>)
            if (in_bf16()) return through(ds_bf16);
        through(ds);
    }

  private:
    bool in_bf16() const noexcept {
        return std::is_same_v<T, float> && precision_ == precision::bf16;
    }

    bool on_ = false;                                 // the last forward dropped
    T p_ = T(0);                                      // its probability
    precision precision_ = precision::fp32;           // its products' precision
    probs_buffer dropped_;                            // after dropout, for fp32 products
    probs_bf16 dropped_bf16_;                         // after dropout, for bf16 products
    buffer<std::uint8_t, dynamic_shape<4>, D> keep_;  // the keep mask (0/1)
};

}  // namespace layers
FTUNE_NAMESPACE_END
