// layers::layer_norm: LayerNorm over the last axis with a learned scale and shift (nn.LayerNorm).
#pragma once

#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// y = (x - mean) / sqrt(var + eps) * weight + bias per row: (N, C) -> (N, C).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class layer_norm {
  public:
    using value_type = T;                                    ///< scalar type
    using input_view = view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                          ///< y: (N, C)
    using d_input_view = view<T, shape<dynamic, C>, D>;      ///< dx: (N, C), accumulated into

    parameter<T, shape<C>, D>
        weight;  ///< scale (C), Hugging Face "weight" (legacy "gamma"); no decay
    parameter<T, shape<C>, D> bias;  ///< shift (C), Hugging Face "bias" (legacy "beta"); no decay
    T eps;                           ///< added to the variance (BERT: 1e-12)

    /// A layer over `features` columns with weight 1 and bias 0.
    explicit layer_norm(std::size_t features = C, T eps_ = T(1e-12))
        : weight("weight", shape<C>(features), false),
          bias("bias", shape<C>(features), false),
          eps(eps_) {
        weight.value.fill(T(1));
    }

    /// y = LayerNorm(x); saves x (a view: keep it alive until backward), mean and rstd.
    output_view forward(context&, input_view x) {
        const std::size_t rows = x.extent(0);
        x_ = x;
        y_.resize(shape<dynamic, C>(rows, weight.value.extent(0)));  // (N, C)
        mean_.resize(shape<dynamic>(rows));                          // (N)
        rstd_.resize(shape<dynamic>(rows));                          // (N)
        ops::layer_norm(y_, mean_, rstd_, x, weight.value, bias.value, eps);
        return y_.view();
    }

    /// dweight, dbias (when trainable) and dx (unless empty) accumulate their gradients
    /// (grad_write::overwrite: dx is written, its old content not read).
    void backward(context&, output_view dy, d_input_view dx,
                  grad_write w = grad_write::accumulate) {
        // the primitive computes all three; gradients of frozen or unwanted outputs go to scratch
        T* dw = weight.trainable ? weight.gradient().data() : nullptr;
        T* db = bias.trainable ? bias.gradient().data() : nullptr;
        const std::size_t rows = dy.extent(0), cols = dy.extent(1);
        if (!weight.trainable || !bias.trainable) {
            scratch_.resize(shape<dynamic>(2 * cols));
            scratch_.fill(T(0));
            if (!weight.trainable) dw = scratch_.data();
            if (!bias.trainable) db = scratch_.data() + cols;
        }
        T* dxp = dx.data();
        if (dx.empty()) {  // written over, never read
            dx_scratch_.resize(shape<dynamic, C>(rows, cols));
            dxp = dx_scratch_.data();
            w = grad_write::overwrite;
        } else {
            check_same_shape(dx.shape(), dy.shape(), "layer_norm backward (dx vs dy)");
        }
        check_same_shape(dy.shape(), x_.shape(), "layer_norm backward (dy vs x)");
        ops::layer_norm_backward(view<T, shape<dynamic, C>, D>(dxp, rows, cols),
                                 view<T, shape<C>, D>(dw, cols), view<T, shape<C>, D>(db, cols), dy,
                                 x_, weight.value, mean_, rstd_, w);
    }

    /// Whether any parameter trains (false: frozen).
    bool trainable() const noexcept { return weight.trainable || bias.trainable; }
    /// Sets the parameter gradients to zero.
    void zero_grad() {
        weight.zero_grad();
        bias.zero_grad();
    }

    /// Calls f(parameter_ref<T>) for weight then bias ("<prefix>.weight", "<prefix>.bias").
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        f(weight.ref(prefix));
        f(bias.ref(prefix));
    }

  private:
    input_view x_;                                // the last forward's input
    buffer<T, shape<dynamic, C>, D> y_;           // (N, C) output
    buffer<T, shape<dynamic>, D> mean_, rstd_;    // (N) saved statistics
    buffer<T, shape<dynamic>, D> scratch_;        // (2C) gradients of frozen parameters
    buffer<T, shape<dynamic, C>, D> dx_scratch_;  // (N, C) dx when the caller does not want it
};

}  // namespace layers
FTUNE_NAMESPACE_END
