// layers::rms_norm: RMSNorm over the last axis with a learned scale (Llama's LlamaRMSNorm).
#pragma once

#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// y = x / sqrt(mean(x²) + eps) * weight per row (Zhang & Sennrich 2019): (N, C) -> (N, C). No
/// centering and no bias, as Llama-family models normalize.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class rms_norm {
  public:
    using value_type = T;                                    ///< scalar type
    using input_view = view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                          ///< y: (N, C)
    using d_input_view = view<T, shape<dynamic, C>, D>;      ///< dx: (N, C), accumulated into

    parameter<T, shape<C>, D> weight;  ///< scale (C), Hugging Face "weight"; no decay
    T eps;                             ///< added to the mean square (Llama: rms_norm_eps)

    /// A layer over `features` columns with weight 1.
    explicit rms_norm(std::size_t features = C, T eps_ = T(1e-6))
        : weight("weight", shape<C>(features), false), eps(eps_) {
        weight.value.fill(T(1));
    }

    /// y = RMSNorm(x); saves x (a view: keep it alive until backward) and 1 / rms per row.
    output_view forward(context&, input_view x) {
        const std::size_t rows = x.extent(0);
        x_ = x;
        y_.resize(shape<dynamic, C>(rows, weight.value.extent(0)));  // (N, C)
        rstd_.resize(shape<dynamic>(rows));                          // (N)
        ops::rms_norm(y_, rstd_, x, weight.value, eps);
        return y_.view();
    }

    /// dweight (when trainable) and dx (unless empty) accumulate their gradients.
    void backward(context&, output_view dy, d_input_view dx) {
        const std::size_t rows = dy.extent(0), cols = dy.extent(1);
        T* dw = weight.trainable ? weight.gradient().data() : nullptr;
        if (!weight.trainable) {  // the primitive computes both; a frozen weight's goes to scratch
            scratch_.resize(shape<dynamic>(cols));
            scratch_.fill(T(0));
            dw = scratch_.data();
        }
        T* dxp = dx.data();
        if (dx.empty()) {
            dx_scratch_.resize(shape<dynamic, C>(rows, cols));
            dx_scratch_.fill(T(0));
            dxp = dx_scratch_.data();
        }
        check_same_shape(dy.shape(), x_.shape(), "rms_norm backward (dy vs x)");
        ops::rms_norm_backward(view<T, shape<dynamic, C>, D>(dxp, rows, cols),
                               view<T, shape<C>, D>(dw, cols), dy, x_, weight.value, rstd_);
    }

    /// Whether the weight trains (false: frozen).
    bool trainable() const noexcept { return weight.trainable; }
    /// Sets the weight's gradient to zero.
    void zero_grad() { weight.zero_grad(); }

    /// Calls f(parameter_ref<T>) for the weight ("<prefix>.weight").
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        f(weight.ref(prefix));
    }

  private:
    input_view x_;                                    // the last forward's input
    buffer<T, shape<dynamic, C>, D> y_, dx_scratch_;  // (N, C)
    buffer<T, shape<dynamic>, D> rstd_, scratch_;     // (N) 1 / rms per row; (C) frozen dw
};

}  // namespace layers
FTUNE_NAMESPACE_END
