// heads::token_classification: one row of label logits per token (dropout -> classifier), as
// Transformers' BertForTokenClassification; trained on the first piece of each word, evaluated
// with seqeval's entity F1, decoded to one tag per input word.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/heads/common.hpp"
#include "ftune/heads/detail.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/loss.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/train/evaluation.hpp"
#include "ftune/metrics/scores.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// The tag predicted for one word.
struct word_prediction {
    std::size_t label = 0;  ///< the tag of the word's first piece (softmax argmax)
    double score = -1;      ///< its probability; < 0: no piece of the word was seen (truncated)
};

/// Logits (B, T, L) of every token from hidden states (B, T, C): dropout, classifier
/// ("classifier", (L, C)). No pooler (a base checkpoint's pooler weights are unexpected, as in
/// Transformers).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class token_classification {
  public:
    /// The same head on device D2 (train::trainer's twin of a model on a GPU).
    template <device_tag D2>
    using on_device = token_classification<T, C, D2>;
    using value_type = T;                                                    ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;        ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic, dynamic>, D>;  ///< logits (B, T, L)
    static constexpr std::string_view architecture_suffix =
        "ForTokenClassification";                    ///< after the family's name in config.json
    static constexpr bool first_token_only = false;  ///< reads every position
    static constexpr bool labels_per_token = true;   ///< a label (or -100) per position
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    layers::dropout<T, C, D> dropout;             ///< classifier dropout
    layers::linear<T, C, dynamic, D> classifier;  ///< "classifier" (L, C)

    /// A zero-initialized head for configuration c (hidden_size, num_labels, the classifier
    /// dropout).
    template <class Config>
    explicit token_classification(const Config& c)
        : dropout(T(classifier_dropout(c))), classifier(c.hidden_size, c.num_labels) {}

    /// Number of labels L.
    std::size_t num_labels() const noexcept { return classifier.out_features(); }

    /// Logits (B, T, L) from the hidden states h (B, T, C).
    template <class Backbone>
    output_view forward(context& ctx, Backbone&, hidden_view h) {
        B_ = h.extent(0), T_ = h.extent(1);
        const view<const T, shape<dynamic, C>, D> rows(h.data(), B_ * T_, h.extent(2));
        const auto y = classifier.forward(ctx, dropout.forward(ctx, rows));  // (N, L)
        return {y.data(), B_, T_, y.extent(1)};
    }

    /// Accumulates the head's gradients from d logits (B, T, L); returns d hidden (B, T, C).
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t N = B_ * T_, Cn = backbone.hidden_size();
        d_drop_.resize(shape<dynamic, C>(N, Cn));
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_drop_.fill(T(0)), d_hidden_.fill(T(0));
        classifier.backward(ctx, {d_logits.data(), N, d_logits.extent(2)}, d_drop_.view());
        dropout.backward(ctx, d_drop_.view(), {d_hidden_.data(), N, Cn});
        return d_hidden_.view();
    }

    /// Packs the classifier's weight for inference.
    void prepare_inference(precision p = precision::fp32) { classifier.prepare_inference(p); }
    /// Sets the head's gradients to zero.
    void zero_grad() { classifier.zero_grad(); }
    /// Visits "classifier.*" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        classifier.visit_parameters(join_name(prefix, "classifier"), f);
    }

    // --- the task: loss, evaluation, decoding -------------------------------------------------

    /// Options of the training loss (label smoothing, class weights).
    void set_loss_options(const loss::cross_entropy_options& o) { ce_.options = o; }

    /// The denominator of the batch's mean loss: Σ class weight of its labelled positions.
    double loss_weight(const train::batch& b) const {
        return detail::label_weight(ce_, std::span<const token_id>(b.labels));
    }

    /// The training loss of a batch's logits y (B, T, L) over the labelled positions (labels
    /// -100 count for nothing); d (B, T, L) += scale * its gradient.
    double loss(output_view y, const train::batch& b, T* d, T scale) {
        require_host_memory<D>();  // reads tensor memory on the host (a device model's
                                   // trainer runs its host twin's loss: train/device_run.hpp)
        return detail::per_position_loss(ce_, y.data(), y.extent(2), b, d, scale);
    }

    /// Adds a batch's loss per labelled token and its tags (names: the label names) to e.
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>& names) {
        require_host_memory<D>();  // reads tensor memory on the host
        const std::size_t L = y.extent(2);
        loss::cross_entropy<T> ce;  // plain: no smoothing or weights in evaluation
        const double l =
            detail::per_position_loss(ce, y.data(), L, b, static_cast<T*>(nullptr), T(0));
        std::size_t counted = 0;
        for (auto v : b.labels) counted += v != -100;
        e.running.loss += l * double(counted), e.running.weight += double(counted);
        for (std::size_t r = 0; r < b.B; ++r) {
            std::vector<std::string> g, p;
            for (std::size_t t = 0; t < b.T; ++t) {
                const token_id gold = b.labels[r * b.T + t];
                if (gold == -100) continue;
                const T* z = y.data() + (r * b.T + t) * L;
                const int best = int(std::max_element(z, z + L) - z);
                e.gold.push_back(gold), e.predicted.push_back(best);
                g.push_back(label_name(names, std::size_t(gold)));
                p.push_back(label_name(names, std::size_t(best)));
            }
            e.gold_tags.push_back(std::move(g)), e.predicted_tags.push_back(std::move(p));
        }
    }

    /// Turns the running sums into the report: token accuracy and entity F1 (the metric).
    void finish(train::evaluation& e) const {
        e.loss = e.running.weight ? e.running.loss / e.running.weight : 0;
        e.accuracy = metrics::accuracy(e.gold, e.predicted);
        e.f1 = metrics::entity_f1(e.gold_tags, e.predicted_tags).f1;
        e.metric = e.f1;
    }

    /// The name of the selection metric.
    std::string metric_name() const { return "entity f1"; }

    /// The evaluation report: seqeval's, per entity type then micro, macro and weighted averages.
    std::string report(const train::evaluation& e, const std::vector<std::string>&) const {
        return metrics::entity_report(e.gold_tags, e.predicted_tags);
    }

    /// One tag per word (as training labels them): the softmax argmax of each word's first
    /// piece, from the logits (T, L) of one sequence whose first n positions are tokens (tokens:
    /// the tokenizer's token_info, whose `word` is the word index, -1 for [CLS], [SEP] and
    /// padding). Words none of whose pieces were seen keep score < 0.
    template <class Token>
    std::vector<word_prediction> decode_words(const T* logits, std::span<const Token> tokens,
                                              std::size_t n, std::size_t words) const {
        const std::size_t L = num_labels();
        std::vector<word_prediction> w(words);
        std::vector<double> p;
        for (std::size_t t = 0; t < n && t < tokens.size(); ++t) {
            const auto& ti = tokens[t];
            if (ti.word < 0 || std::size_t(ti.word) >= words || w[std::size_t(ti.word)].score >= 0)
                continue;
            detail::softmax(logits + t * L, L, p);
            const auto best = std::size_t(std::max_element(p.begin(), p.end()) - p.begin());
            w[std::size_t(ti.word)] = {best, p[best]};
        }
        return w;
    }

  private:
    std::size_t B_ = 0, T_ = 0;                          // the last forward's batch, length
    buffer<T, shape<dynamic, C>, D> d_drop_;             // (N, C)
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    loss::cross_entropy<T> ce_;                          // the training loss
};

}  // namespace heads
FTUNE_NAMESPACE_END
