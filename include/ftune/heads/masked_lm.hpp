// heads::masked_lm: vocabulary logits per token through a transform and a decoder tied to the
// backbone's input embeddings, as Transformers' BertForMaskedLM; trained on masked inputs
// (train::mlm_masking), evaluated by loss and accuracy on the masked tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/heads/common.hpp"
#include "ftune/heads/detail.hpp"
#include "ftune/layers/activation.hpp"
#include "ftune/layers/layer_norm.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/loss.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/train/evaluation.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// Logits (B, T, V) = LN(act(dense(h))) Eᵀ + bias, where E (V, C) is the backbone's input
/// embedding table (backbone.input_embeddings()): the decoder is tied to it, as in Transformers,
/// and its gradient adds into E's. Parameters "cls.predictions.transform.{dense,LayerNorm}.*" and
/// "cls.predictions.bias"; a checkpoint's decoder copies are not unexpected.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class masked_lm {
  public:
    using value_type = T;                                                    ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;        ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic, dynamic>, D>;  ///< logits (B, T, V)
    static constexpr std::string_view architecture_suffix =
        "ForMaskedLM";                                   ///< after the family's name in config.json
    static constexpr bool first_token_only = false;      ///< reads every position
    static constexpr bool labels_per_token = true;       ///< the original id at masked positions
    static constexpr bool masked_inputs = true;          ///< trains on inputs masked per batch
    static constexpr bool ties_input_embeddings = true;  ///< its decoder is the input table

    /// The same head on device D2 (a trainer there copies the (B, T, V) logits to the host for
    /// the loss each step: train/device_run.hpp).
    template <device_tag D2>
    using on_device = masked_lm<T, C, D2>;

    layers::linear<T, C, C, D> transform_dense;        ///< "cls.predictions.transform.dense"
    layers::hidden_activation<T, C, D> transform_act;  ///< hidden_act
    layers::layer_norm<T, C, D> transform_norm;        ///< "cls.predictions.transform.LayerNorm"
    parameter<T, shape<dynamic>, D> bias;              ///< "cls.predictions.bias" (V), no decay

    /// A zero-initialized head for configuration c (hidden_size, hidden_act, layer_norm_eps,
    /// vocab_size).
    template <class Config>
    explicit masked_lm(const Config& c)
        : transform_dense(c.hidden_size, c.hidden_size),
          transform_act(c.hidden_act),
          transform_norm(c.hidden_size, T(c.layer_norm_eps)),
          bias("bias", shape<dynamic>(c.vocab_size), false) {}

    /// Vocabulary size V (the ids masking may draw as random replacements).
    std::size_t vocab_size() const noexcept { return bias.value.size(); }

    /// Vocabulary logits (B, T, V) from the hidden states h (B, T, C).
    template <class Backbone>
    output_view forward(context& ctx, Backbone& backbone, hidden_view h) {
        B_ = h.extent(0), T_ = h.extent(1);
        const view<const T, shape<dynamic, C>, D> rows(h.data(), B_ * T_, h.extent(2));
        t_ = transform_norm.forward(ctx,
                                    transform_act.forward(ctx, transform_dense.forward(ctx, rows)));
        const auto& E = backbone.input_embeddings().value;              // (V, C)
        logits_.resize(shape<dynamic, dynamic>(B_ * T_, E.extent(0)));  // (N, V)
        precision_ = ctx.precision;
        ops::matmul<transpose::no, transpose::yes>(t_, E, logits_, T(1), T(0), precision_);
        ops::bias_add(logits_, bias.value);
        return {logits_.data(), B_, T_, E.extent(0)};
    }

    /// Accumulates the head's gradients from d logits (B, T, V) (the decoder's into the tied
    /// embedding table); returns d hidden (B, T, C).
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t N = B_ * T_, Cn = backbone.hidden_size();
        auto& E = backbone.input_embeddings();
        const view<const T, shape<dynamic, dynamic>, D> dl(d_logits.data(), N,
                                                           d_logits.extent(2));  // (N, V)
        if (bias.trainable) ops::bias_backward(bias.gradient(), dl);
        if (E.trainable)
            ops::matmul<transpose::yes, transpose::no>(dl, t_, E.gradient(), T(1), T(1),
                                                       precision_);  // dE += dlᵀ t
        zeroed(d_t_, N, Cn), zeroed(d_a_, N, Cn), zeroed(d_d_, N, Cn);
        ops::matmul(dl, E.value, d_t_, T(1), T(1), precision_);  // dt = dl E
        transform_norm.backward(ctx, d_t_.view(), d_a_.view());
        transform_act.backward(ctx, d_a_.view(), d_d_.view());
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_hidden_.fill(T(0));
        transform_dense.backward(ctx, d_d_.view(), {d_hidden_.data(), N, Cn});
        return d_hidden_.view();
    }

    /// Packs the transform's weight for inference.
    void prepare_inference(precision p = precision::fp32) { transform_dense.prepare_inference(p); }
    /// Sets the head's gradients to zero.
    void zero_grad() {
        transform_dense.zero_grad(), transform_norm.zero_grad();
        bias.zero_grad();
    }
    /// Visits "cls.predictions.transform.{dense,LayerNorm}.*" and "cls.predictions.bias" under
    /// prefix; the tied decoder is the backbone's table, visited once there.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        const std::string p = join_name(prefix, "cls.predictions");
        transform_dense.visit_parameters(join_name(p, "transform.dense"), f);
        transform_norm.visit_parameters(join_name(p, "transform.LayerNorm"), f);
        f(bias.ref(p));
    }

    // --- the task: loss and evaluation --------------------------------------------------------

    /// Options of the training loss (label smoothing, class weights).
    void set_loss_options(const loss::cross_entropy_options& o) { ce_.options = o; }

    /// The denominator of the batch's mean loss: Σ class weight of its labelled positions.
    double loss_weight(const train::batch& b) const {
        return detail::label_weight(ce_, std::span<const token_id>(b.labels));
    }

    /// The training loss of a batch's logits y (B, T, V) over the masked positions (labels -100
    /// count for nothing); d (B, T, V) += scale * its gradient.
    double loss(output_view y, const train::batch& b, T* d, T scale) {
        require_host_memory<D>();  // reads tensor memory on the host (a device model's
                                   // trainer runs its host twin's loss: train/device_run.hpp)
        return detail::per_position_loss(ce_, y.data(), y.extent(2), b, d, scale);
    }

    /// Adds a batch's loss and right predictions over its masked tokens to e.
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>&) {
        require_host_memory<D>();  // reads tensor memory on the host
        const std::size_t n = b.B * b.T, L = y.extent(2);
        loss::cross_entropy<T> ce;  // plain: no smoothing or weights in evaluation
        const double l =
            detail::per_position_loss(ce, y.data(), L, b, static_cast<T*>(nullptr), T(0));
        std::size_t counted = 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (b.labels[i] == -100) continue;
            const T* z = y.data() + i * L;
            ++counted;
            e.running.correct += double(int(std::max_element(z, z + L) - z) == b.labels[i]);
        }
        e.running.loss += l * double(counted), e.running.weight += double(counted);
    }

    /// Turns the running sums into the report: loss and accuracy per masked token; the metric
    /// is −loss (perplexity: exp(loss)).
    void finish(train::evaluation& e) const { detail::finish_by_loss(e); }

    /// The name of the selection metric.
    std::string metric_name() const { return "-loss"; }

    /// The evaluation report: perplexity, loss and accuracy per masked token.
    std::string report(const train::evaluation& e, const std::vector<std::string>&) const {
        return ftune::detail::cat("perplexity ", std::exp(e.loss), " (loss ", e.loss,
                                  " per masked token, accuracy ", e.accuracy, ")\n");
    }

  private:
    precision precision_ = precision::fp32;  // the last forward's products
    static void zeroed(buffer<T, shape<dynamic, C>, D>& b, std::size_t rows, std::size_t cols) {
        b.resize(shape<dynamic, C>(rows, cols));
        b.fill(T(0));
    }
    std::size_t B_ = 0, T_ = 0;                          // the last forward's batch, length
    view<const T, shape<dynamic, C>, D> t_;              // (N, C) transformed states
    buffer<T, shape<dynamic, dynamic>, D> logits_;       // (N, V)
    buffer<T, shape<dynamic, C>, D> d_t_, d_a_, d_d_;    // (N, C) gradients in the head
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    loss::cross_entropy<T> ce_;                          // the training loss
};

}  // namespace heads
FTUNE_NAMESPACE_END
