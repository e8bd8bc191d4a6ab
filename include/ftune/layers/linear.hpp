// layers::linear: y = x Wᵀ + b over the rows of x, as Hugging Face's nn.Linear (W stored [out,
// in]).
#pragma once

#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/layers/absent.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// A fully connected layer over the last axis: (N, In) -> (N, Out). In and Out may be dynamic.
template <scalar T, std::size_t In = dynamic, std::size_t Out = dynamic, device_tag D = device::cpu,
          bool Bias = true>
class linear {
    using bias_type = std::conditional_t<Bias, parameter<T, shape<Out>, D>, absent>;

  public:
    using value_type = T;                                       ///< scalar type
    using input_view = view<const T, shape<dynamic, In>, D>;    ///< x: (N, In)
    using output_view = view<const T, shape<dynamic, Out>, D>;  ///< y: (N, Out)
    using d_input_view = view<T, shape<dynamic, In>, D>;        ///< dx: (N, In), accumulated into
    using bf16_input_view = view<const bf16, shape<dynamic, In>, D>;  ///< x kept in bf16: (N, In)

    static constexpr bool has_bias = Bias;   ///< false: y = x Wᵀ (Llama's projections)
    parameter<T, shape<Out, In>, D> weight;  ///< W (Out, In), Hugging Face's layout
    [[no_unique_address]] bias_type bias;    ///< b (Out), no weight decay (or absent)

    /// A zero-initialized layer of the given sizes (the defaults are the static extents).
    explicit linear(std::size_t in = In, std::size_t out = Out)
        : weight("weight", shape<Out, In>(out, in)), bias("bias", shape<Out>(out), false) {}

    /// Number of input features.
    std::size_t in_features() const noexcept { return weight.value.extent(1); }
    /// Number of output features.
    std::size_t out_features() const noexcept { return weight.value.extent(0); }

    /// y = x Wᵀ + b. Keeps a view of x for backward: x must stay alive and unchanged until then.
    /// In training, a frozen W (weight.trainable false) is packed once and its packed copies
    /// serve every step's forward and d input (context::pack_frozen_weights; same values, bit
    /// for bit). In ctx.precision bf16 (not prepared for inference), W is rounded to bf16 and
    /// packed at each forward (so once per optimizer step), and backward's products run in
    /// bf16 too (dx with W packed once more, dW from dy and x rounded); the sums stay fp32.
    output_view forward(context& ctx, input_view x) {
        x_ = x;
        input_bf16_ = false;
        y_.resize(shape<dynamic, Out>(x.extent(0), out_features()));  // (N, Out)
        precision_ = forward_precision(ctx);
        if (ctx.training()) prepared_ = false;  // training changes the weights: back to per-call
        frozen_packed_ = ctx.training() && ctx.pack_frozen_weights && !weight.trainable;
        // W packed at each forward that packs it, unless packed once (prepare_inference, or
        // frozen in training): the optimizer, or a direct write, may have changed it (an fp32
        // eval-mode forward packs nothing: a frozen W's copies stay for the next training step)
        if (!prepared_ && !frozen_packed_ && (ctx.training() || precision_ == precision::bf16))
            weight_changed();
        if (prepared_ || frozen_packed_ || precision_ == precision::bf16) {
            packed_product(x, ops::no_epilogue{});
        } else {
            ops::matmul<transpose::no, transpose::yes>(x, weight.value, y_);
            if constexpr (Bias) ops::bias_add(y_, bias.value);
        }
        return y_.view();
    }

    /// y = x Wᵀ + b for an x kept in bf16 (an activation that only bf16 products read: the FFN's
    /// in a bf16 training step), in precision bf16 (ctx.precision, or prepared in bf16) on the
    /// CPU: forward()'s values for x as floats, bit for bit, with x's words read in place instead
    /// of rounded, and kept for backward's dW (whose product rounds x so anyway).
    output_view forward(context& ctx, bf16_input_view x) requires std::is_same_v<T, float> &&
        std::is_same_v<D, device::cpu> {
        const precision p = forward_precision(ctx);
        if (ctx.training()) prepared_ = false;
        if (p != precision::bf16)
            throw error(errc::invalid_argument, "linear::forward",
                        "an input kept in bf16 is multiplied in precision::bf16 only; pass it as "
                        "floats, or run in bf16");
        xb_ = x;
        input_bf16_ = true;
        y_.resize(shape<dynamic, Out>(x.extent(0), out_features()));  // (N, Out)
        precision_ = p;
        frozen_packed_ = ctx.training() && ctx.pack_frozen_weights && !weight.trainable;
        if (!prepared_ && !frozen_packed_) weight_changed();  // packed once per forward, as above
        packed_product(x, ops::no_epilogue{});
        return y_.view();
    }

    /// Whether forward takes an input kept in bf16 (always: lora_linear's may not).
    bool takes_bf16_input() const noexcept { return true; }

    /// Prepared inference with element-wise work fused into the product: y = x Wᵀ + b, then the
    /// epilogue (ops::add_residual: + r, a residual connection; ops::apply_activation: f(y)) as
    /// each tile of y is stored.
    /// Needs prepare_inference() and eval mode; keeps nothing for backward.
    template <class Epilogue>
    output_view forward_fused(context& ctx, input_view x, Epilogue epilogue) {
        if (ctx.training() || !prepared_)
            throw error(errc::invalid_argument, "linear::forward_fused",
                        "runs on a layer prepared for inference (prepare_inference()), in eval "
                        "mode");
        x_ = x;
        input_bf16_ = false;
        y_.resize(shape<dynamic, Out>(x.extent(0), out_features()));  // (N, Out)
        precision_ = packed_.precision();
        packed_product(x, epilogue);
        return y_.view();
    }

    /// forward_fused for an x kept in bf16 (on a layer prepared in bf16, on the CPU): the values
    /// for x as floats, bit for bit, with x's words read in place instead of rounded.
    template <class Epilogue>
    output_view forward_fused(context& ctx, bf16_input_view x, Epilogue epilogue) requires
        std::is_same_v<T, float> && std::is_same_v<D, device::cpu> {
        if (ctx.training() || !prepared_ || packed_.precision() != precision::bf16)
            throw error(errc::invalid_argument, "linear::forward_fused",
                        "an input kept in bf16 runs on a layer prepared for inference in bf16 "
                        "(prepare_inference(precision::bf16)), in eval mode");
        xb_ = x;
        input_bf16_ = true;
        y_.resize(shape<dynamic, Out>(x.extent(0), out_features()));  // (N, Out)
        precision_ = precision::bf16;
        packed_product(x, epilogue);
        return y_.view();
    }

    /// The precision of a forward's product in ctx: prepare_inference()'s in eval mode after it,
    /// else ctx.precision.
    precision forward_precision(const context& ctx) const noexcept {
        return !ctx.training() && prepared_ ? packed_.precision() : ctx.precision;
    }

    /// Packs W once for inference: from now on eval-mode forwards skip the per-call packing of
    /// the weights (same results, bit for bit) and add the bias as the product's tiles are
    /// stored. A visit_parameters() that may change the weights (any visitor not derived from
    /// keeps_values) marks the packed copy stale and the next eval-mode forward packs W again; a
    /// train-mode forward ends the prepared mode. Writes that bypass a visit are not seen: after
    /// writing weight.value directly, or through parameter references kept from an earlier visit
    /// once an eval-mode forward has run since, call prepare_inference() again.
    /// In precision p, W is rounded to bf16 once here: eval-mode products then round x and sum
    /// in fp32.
    void prepare_inference(precision p = precision::fp32) {
        weight_changed();  // W may have been written directly: pack again (the d input copy too)
        ops::prepare_weight(packed_, weight.value, p);
        prepared_ = packed_current_ = true;
    }

    /// dW += dyᵀ x, db += Σ dy (trainable parameters only), and dx += dy W unless dx is empty
    /// (with W's packed copy when the forward found it frozen, or ran in bf16), in the
    /// forward's precision (x as the forward took it: floats, or kept in bf16);
    /// grad_write::overwrite: dx = dy W, its old content not read.
    void backward(context&, output_view dy, d_input_view dx,
                  grad_write w = grad_write::accumulate) {
        if constexpr (std::is_same_v<D, device::cpu> && std::is_same_v<T, float>)
            if (input_bf16_)
                parameter_gradients(dy, xb_);
            else
                parameter_gradients(dy, x_);
        else
            parameter_gradients(dy, x_);
        if (dx.empty()) return;
        if (!frozen_packed_ && precision_ == precision::fp32)
            return ops::matmul(dy, weight.value, dx, T(1),
                               w == grad_write::overwrite ? T(0) : T(1));
        if (!packed_d_current_ || packed_d_.precision() != precision_) {  // W as dx = dy W's B
            ops::prepare_weight_for_input_gradient(packed_d_, weight.value, precision_);
            packed_d_current_ = true;
        }
        ops::matmul_prepared_add(dy, packed_d_, dx, w);
    }

    /// Sets the parameter gradients to zero.
    void zero_grad() {
        weight.zero_grad();
        if constexpr (Bias) bias.zero_grad();
    }
    /// Whether any parameter trains (false: frozen).
    bool trainable() const noexcept {
        if constexpr (Bias)
            return weight.trainable || bias.trainable;
        else
            return weight.trainable;
    }

    /// Whether eval-mode forwards use the weights packed by prepare_inference().
    bool inference_prepared() const noexcept { return prepared_; }
    /// Whether the packed copy is current (false after a visit that may have changed W: the
    /// next eval-mode forward packs again).
    bool inference_packed() const noexcept { return prepared_ && packed_current_; }

    /// Calls f(parameter_ref<T>) for weight then bias, named "<prefix>.weight", "<prefix>.bias".
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        if constexpr (!keeps_values_v<F>) weight_changed();  // f may change the weights
        f(weight.ref(prefix));
        if constexpr (Bias) f(bias.ref(prefix));
    }

  protected:
    // dW += dyᵀ x and db += Σ dy for the parameters that train, in precision_
    template <class X>
    void parameter_gradients(output_view dy, const X& x) {
        bool bias_done = false;  // summed in the weight gradient's pass over dy
        if constexpr (Bias)
            if (weight.trainable && bias.trainable) {
                ops::weight_and_bias_gradients(dy, x, weight.gradient(), bias.gradient(),
                                               precision_);
                bias_done = true;
            }
        if (weight.trainable && !bias_done)
            ops::matmul<transpose::yes, transpose::no>(dy, x, weight.gradient(), T(1), T(1),
                                                       precision_);
        if constexpr (Bias)
            if (bias.trainable && !bias_done) ops::bias_backward(bias.gradient(), dy);
    }

    // Marks the packed copies of W stale: the next use packs W again.
    void weight_changed() noexcept { packed_current_ = packed_d_current_ = false; }

    // y_ = epilogue(x Wᵀ + b) with the packed W (packed again first when a visit made it stale)
    template <class X, class Epilogue>  // X: input_view, or bf16_input_view
    void packed_product(X x, Epilogue epilogue) {
        if (x.extent(1) != in_features())
            throw error(errc::shape_mismatch, "linear",
                        ftune::detail::cat("input has ", x.extent(1),
                                           " features but the layer takes ", in_features()));
        if (!packed_current_ || packed_.precision() != precision_) {  // (false if it throws)
            ops::prepare_weight(packed_, weight.value, precision_);
            packed_current_ = true;
        }
        if constexpr (Bias)
            ops::matmul_prepared(x, packed_, y_, bias.value, epilogue);
        else
            ops::matmul_prepared(x, packed_, y_, view<const T, shape<dynamic>, D>(), epilogue);
    }

    ops::prepared_weight<T, D> packed_;      // W prepared for matmul_prepared (prepare_inference)
    ops::prepared_weight<T, D> packed_d_;    // W prepared for dx += dy W (frozen, in training)
    bool prepared_ = false;                  // eval-mode forwards use packed_ (prepare_inference)
    bool packed_current_ = false;            // packed_ holds the current W (no visit since)
    bool packed_d_current_ = false;          // packed_d_ holds the current W
    bool frozen_packed_ = false;             // the last forward: training with W frozen and packed
    precision precision_ = precision::fp32;  // the last forward's (and backward's)
    input_view x_;                           // the last forward's input (as floats)
    bf16_input_view xb_;                     // the last forward's input, when kept in bf16
    bool input_bf16_ = false;                // the last forward took xb_ instead of x_
    buffer<T, shape<dynamic, Out>, D> y_;    // (N, Out) output workspace
};

/// linear without a bias as a template of the two sizes, for layers that take their projection
/// type as a template: linear_no_bias<T, D>::type<In, Out> (Llama's projections).
template <scalar T, device_tag D = device::cpu>
struct linear_no_bias {
    /// (N, In) -> (N, Out), y = x Wᵀ
    template <std::size_t In, std::size_t Out>
    using type = linear<T, In, Out, D, false>;
};

}  // namespace layers
FTUNE_NAMESPACE_END
