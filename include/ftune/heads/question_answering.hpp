// heads::question_answering: a start and an end logit per token (qa_outputs), as Transformers'
// BertForQuestionAnswering; trained with the mean of the start and end cross-entropies, decoded
// to answer spans over overlapping windows (qa/spans.hpp: qa::best_answers).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ftune/heads/common.hpp"
#include "ftune/heads/detail.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/loss.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/train/evaluation.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// Start and end logits (B, T, 2) of every token from hidden states (B, T, C): qa_outputs
/// ("qa_outputs", (2, C)); [..., 0] is the start logit, [..., 1] the end logit. No pooler.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class question_answering {
  public:
    /// The same head on device D2 (train::trainer's twin of a model on a GPU).
    template <device_tag D2>
    using on_device = question_answering<T, C, D2>;
    using value_type = T;                                              ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic, 2>, D>;  ///< logits (B, T, 2)
    static constexpr std::string_view architecture_suffix =
        "ForQuestionAnswering";                      ///< after the family's name in config.json
    static constexpr bool first_token_only = false;  ///< reads every position
    static constexpr bool labels_per_token = false;  ///< labels {start, end} per window
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    layers::linear<T, C, 2, D> qa_outputs;  ///< "qa_outputs" (2, C)

    /// A zero-initialized head for configuration c (num_labels is ignored: always 2).
    template <class Config>
    explicit question_answering(const Config& c) : qa_outputs(c.hidden_size, 2) {}

    /// Start and end logits (B, T, 2) from the hidden states h (B, T, C).
    template <class Backbone>
    output_view forward(context& ctx, Backbone&, hidden_view h) {
        B_ = h.extent(0), T_ = h.extent(1);
        const auto y = qa_outputs.forward(ctx, {h.data(), B_ * T_, h.extent(2)});  // (N, 2)
        return {y.data(), B_, T_, 2};
    }

    /// Accumulates the head's gradients from d logits (B, T, 2); returns d hidden (B, T, C).
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t N = B_ * T_, Cn = backbone.hidden_size();
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_hidden_.fill(T(0));
        qa_outputs.backward(ctx, {d_logits.data(), N, 2}, {d_hidden_.data(), N, Cn});
        return d_hidden_.view();
    }

    /// Packs qa_outputs' weight for inference.
    void prepare_inference(precision p = precision::fp32) { qa_outputs.prepare_inference(p); }
    /// Sets the head's gradients to zero.
    void zero_grad() { qa_outputs.zero_grad(); }
    /// Visits "qa_outputs.*" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        qa_outputs.visit_parameters(join_name(prefix, "qa_outputs"), f);
    }

    // --- the task: loss and evaluation (decoding: qa::best_answers) ---------------------------

    /// Options of the training loss (label smoothing, class weights over positions).
    void set_loss_options(const loss::cross_entropy_options& o) { ce_.options = o; }

    /// The denominator of the batch's mean loss: the windows whose start counts (start and end
    /// are both positions of the window, so both means have it).
    double loss_weight(const train::batch& b) const {
        double n = 0;
        for (std::size_t r = 0; 2 * r < b.labels.size() && r < b.B; ++r)
            n += b.labels[2 * r] != ce_.options.ignore_index;
        return n;
    }

    /// The training loss of a batch's logits y (B, T, 2), labels {start, end} per row; d (B, T,
    /// 2) += scale * its gradient.
    double loss(output_view y, const train::batch& b, T* d, T scale) {
        require_host_memory<D>();  // reads tensor memory on the host (a device model's
                                   // trainer runs its host twin's loss: train/device_run.hpp)
        return span_loss(ce_, y, b, d, scale);
    }

    /// Adds a batch's loss per window and the windows with both ends right to e.
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>&) {
        require_host_memory<D>();   // reads tensor memory on the host
        loss::cross_entropy<T> ce;  // plain: no smoothing or weights in evaluation
        const double l = span_loss(ce, y, b, nullptr, T(0));
        e.running.loss += l * double(b.B), e.running.weight += double(b.B);
        for (std::size_t r = 0; r < b.B; ++r) {  // both ends right
            std::size_t s = 0, en = 0;
            for (std::size_t t = 1; t < b.T; ++t) {
                if (y(r, t, 0) > y(r, s, 0)) s = t;
                if (y(r, t, 1) > y(r, en, 1)) en = t;
            }
            e.running.correct +=
                double(token_id(s) == b.labels[2 * r] && token_id(en) == b.labels[2 * r + 1]);
        }
    }

    /// Turns the running sums into the report: loss per window, span accuracy; the metric is
    /// −loss (SQuAD exact match and F1 come from train::evaluate_squad).
    void finish(train::evaluation& e) const { detail::finish_by_loss(e); }

    /// The name of the selection metric.
    std::string metric_name() const { return "-loss"; }

    /// The evaluation report of windows: the metric and the loss (SQuAD exact match and F1 over
    /// questions: train::evaluate_squad).
    std::string report(const train::evaluation& e, const std::vector<std::string>&) const {
        return ftune::detail::cat(metric_name(), " ", e.metric, ", loss ", e.loss, "\n");
    }

  private:
    // The mean of the start and end cross-entropies over every position (padding included, as
    // BertForQuestionAnswering); with d, d (B, T, 2) += scale * its gradient.
    double span_loss(loss::cross_entropy<T>& ce, output_view y, const train::batch& b, T* d,
                     T scale) {
        const std::size_t B = b.B, L = b.T;
        z_.resize(2 * B * L), y_.resize(2 * B), dz_.assign(2 * B * L, T(0));
        for (std::size_t r = 0; r < B; ++r) {
            for (std::size_t t = 0; t < L; ++t)  // (2, B, T): start logits, then end logits
                z_[r * L + t] = y(r, t, 0), z_[(B + r) * L + t] = y(r, t, 1);
            y_[r] = b.labels[2 * r], y_[B + r] = b.labels[2 * r + 1];
        }
        double total = 0;
        for (std::size_t k = 0; k < 2; ++k) {
            total += double(ce.forward({z_.data() + k * B * L, B, L}, {y_.data() + k * B, B}));
            if (d) ce.backward({dz_.data() + k * B * L, B, L}, T(0.5) * scale);
        }
        if (d)
            for (std::size_t r = 0; r < B; ++r)
                for (std::size_t t = 0; t < L; ++t)
                    d[(r * L + t) * 2] += dz_[r * L + t],
                        d[(r * L + t) * 2 + 1] += dz_[(B + r) * L + t];
        return total / 2;
    }

    std::size_t B_ = 0, T_ = 0;                          // the last forward's batch, length
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    loss::cross_entropy<T> ce_;                          // the training loss
    std::vector<T> z_, dz_;    // start and end logits (2, B, T) and their gradient
    std::vector<token_id> y_;  // start and end labels (2, B)
};

}  // namespace heads
FTUNE_NAMESPACE_END
