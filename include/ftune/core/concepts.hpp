// The contracts of ftune's composable pieces, written out (as dlib's *_abstract.h files do).
//
// Each concept checks the syntax; the comment above it states the semantics every model of the
// concept must also honour. The gradient checker (ftune::testing::check_gradients) tests them.
#pragma once

#include <concepts>
#include <cstddef>
#include <span>
#include <string_view>
#include <type_traits>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"

FTUNE_NAMESPACE_BEGIN

/// The scalar types ftune computes in.
template <class T>
concept scalar = std::is_same_v<T, float> || std::is_same_v<T, double>;

/// A callable that receives every parameter of a module as a parameter_ref<T>.
template <class F, class T>
concept parameter_visitor = std::invocable<F&, parameter_ref<T>>;

namespace detail {
/// A visitor that accepts any parameter (used only to check the concepts below).
template <class T>
struct any_parameter_visitor {
    void operator()(parameter_ref<T>) const noexcept {}
};
}  // namespace detail

/// LAYER: a differentiable function with parameters and saved state.
///
/// - `forward(ctx, in) -> out` computes the output, and in training mode saves in the layer what
///   backward needs (LayerNorm mean/rstd, attention probabilities, dropout masks). It may return a
///   view into the layer's own workspace, valid until the next forward.
/// - `backward(ctx, d_out, d_in)` must follow the forward it differentiates. It ACCUMULATES
///   (`+=`) into every trainable parameter's gradient and into d_in (d loss / d in; skipped when
///   d_in is an empty view; absent for inputs that are token ids). Gradients are cleared only by
///   `zero_grad()`; accumulating gives gradient accumulation over micro-batches, and residual
///   branches, for free. Frozen parameters (trainable == false) cost no gradient work.
/// - `visit_parameters(prefix, f)` calls `f(parameter_ref<T>)` once per parameter, in a fixed
///   order, with Hugging Face names prefixed by `prefix`
///   ("encoder.layer.3.attention.self.query.weight").
/// - In eval mode forward is deterministic; in train mode it is a pure function of (inputs,
///   parameters, ctx.rng's seed and position), whatever the thread count.
/// - The steady-state forward + backward at a (batch, sequence) already seen allocates nothing.
/// - Optionally, `backward(ctx, d_out, d_in, grad_write::overwrite)` WRITES d_in instead (its
///   old content is not read; the parameter gradients still accumulate): a container whose
///   d_in buffer holds nothing yet calls it through layers::backward_into and skips zeroing it.
template <class L, class T = typename L::value_type>
concept layer = scalar<T> && requires(L& l, std::string_view prefix) {
    typename L::value_type;
    {l.zero_grad()};
    {l.visit_parameters(prefix, detail::any_parameter_visitor<T>{})};
};

/// A layer whose forward/backward accept `In`, `DOut` and `DIn` (checked where the types are
/// known).
template <class L, class In, class DOut, class DIn>
concept layer_for = layer<L> &&
    requires(L& l, context& ctx, const In& in, const DOut& d_out, const DIn& d_in) {
    l.forward(ctx, in);
    l.backward(ctx, d_out, d_in);
};

/// LOSS: a scalar objective of a model output and targets.
///
/// - `forward(logits, targets) -> value` returns the mean loss over the counted examples
///   (targets equal to an ignore index are not counted) and saves what backward needs.
/// - `backward(d_logits, scale)` ACCUMULATES `scale * d loss / d logits` into d_logits.
template <class L, class T = typename L::value_type>
concept loss_function = scalar<T> &&
    requires(L& l, matrix_view<const T> logits, typename L::target_view targets,
             matrix_view<T> d_logits, T scale) {
    { l.forward(logits, targets) } -> std::convertible_to<T>;
    l.backward(d_logits, scale);
};

/// SCHEDULE: the learning rate as a function of the optimizer step.
///
/// - `lr_at(step)` is pure: the same step gives the same rate, so a resumed run continues
///   exactly.
/// - step counts from 0 (the first update uses lr_at(0); with a warmup that is 0, as Hugging
///   Face's schedules).
template <class S>
concept lr_schedule = requires(const S& s, std::size_t step) {
    { s.lr_at(step) } -> std::convertible_to<double>;
};

/// OPTIMIZER: updates parameters from their gradients.
///
/// - `step(params)` updates every trainable parameter from its gradient, in place; frozen
///   parameters (trainable == false) are skipped and own no state.
/// - It applies weight decay only to parameters whose decay flag is set; AdamW's decay is
///   decoupled (θ ← θ − η∇… − ηλθ).
/// - It does not clear gradients (zero_grad is the caller's, after clipping and stepping).
/// - Its state (moments, step count) can be saved and restored for exact resumption.
/// - D is the parameters' device (a device model's: device_parameter_ref<T, D>).
template <class O, class T, class D = device::cpu>
concept optimizer = scalar<T> && requires(O& o, std::span<const parameter_ref_on<T, D>> params) {
    o.step(params);
    { o.step_count() } -> std::convertible_to<std::size_t>;
};

/// HEAD: the task-specific top of a task_model<Backbone, Head> (heads/*.hpp).
///
/// - `forward(ctx, backbone, hidden)` maps the backbone's hidden states (B, T, C) to the task's
///   outputs; `backward(ctx, backbone, d_outputs)` accumulates the head's gradients and returns
///   d hidden (B, T, C), a view into the head valid until its next backward.
/// - `visit_parameters(prefix, backbone_prefix, f)` names its parameters as Transformers does
///   ("classifier.weight"; "bert.pooler.dense.weight" under the backbone's prefix).
/// - `architecture_suffix` completes the family's architecture name ("ForTokenClassification");
///   `first_token_only` says it reads position 0 only (the backbone may then compute the last
///   layer for that position alone).
/// - `prepare_inference()` packs its weights for inference; a head that packs the backbone's
///   (a tied LM head) has `prepare_inference(backbone)` instead.
/// - A head with a task (what train::trainer needs) also has its loss (`loss(y, batch, d,
///   scale)`, `set_loss_options`), its evaluation (`score`, `finish`, `metric_name`, `report`)
///   and the decoding its tools use.
///
/// CALLBACK: training callbacks derive from train::callback (train/callbacks.hpp): a base class
/// with no-op hooks, since the trainer holds a run-time list of them.
template <class H>
concept head = requires(H& h) {
    typename H::value_type;
    typename H::output_view;
    typename H::hidden_view;
    { H::architecture_suffix } -> std::convertible_to<std::string_view>;
    { H::first_token_only } -> std::convertible_to<bool>;
    h.zero_grad();
};

FTUNE_NAMESPACE_END
