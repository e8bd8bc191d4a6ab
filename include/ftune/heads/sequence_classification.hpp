// heads::sequence_classification: one output row per sequence from its first token ([CLS]):
// pooler -> dropout -> classifier, as Transformers' BertForSequenceClassification. The problem
// type (single-label, multi-label, regression) picks the loss, the decoding and the report at run
// time, as Transformers' config.problem_type does.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/heads/common.hpp"
#include "ftune/heads/detail.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/layers/pooler.hpp"
#include "ftune/loss.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/train/evaluation.hpp"
#include "ftune/metrics/scores.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// What a sequence classifier predicts for one sequence.
struct class_prediction {
    std::size_t label = 0;       ///< the most likely class (the largest logit; regression: 0)
    double score = 0;            ///< its probability (or sigmoid); regression: the first value
    std::vector<double> scores;  ///< per label: softmax (single-label), sigmoid (multi-label) or
                                 ///< the value (regression)
    std::vector<std::size_t> chosen;  ///< multi-label: the labels whose sigmoid is over 0.5
};

/// Logits (B, L) of each sequence from hidden states (B, T, C): pooler (tanh dense over
/// position 0, "<backbone>.pooler"), dropout, classifier ("classifier", (L, C)). With L = 1 and no
/// problem type it is a regression head.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class sequence_classification {
  public:
    using value_type = T;                                              ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic>, D>;     ///< logits (B, L)
    using prediction_type = class_prediction;  ///< what decode() gives for one sequence
    static constexpr std::string_view architecture_suffix =
        "ForSequenceClassification";                 ///< after the family's name in config.json
    static constexpr bool first_token_only = true;   ///< reads position 0 of the last layer only
    static constexpr bool labels_per_token = false;  ///< one label (or target row) per sequence
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    layers::pooler<T, C, D> pooler;               ///< "<backbone>.pooler"
    layers::dropout<T, C, D> dropout;             ///< classifier dropout
    layers::linear<T, C, dynamic, D> classifier;  ///< "classifier" (L, C)
    heads::problem problem;  ///< the outputs' meaning and loss (config.json problem_type)

    /// A zero-initialized head for configuration c (hidden_size, num_labels, problem_type, the
    /// classifier dropout).
    template <class Config>
    explicit sequence_classification(const Config& c)
        : pooler(c.hidden_size),
          dropout(T(classifier_dropout(c))),
          classifier(c.hidden_size, c.num_labels),
          problem(problem_from_hf(c.problem_type, c.num_labels)) {}

    /// Number of labels L.
    std::size_t num_labels() const noexcept { return classifier.out_features(); }

    /// Logits (B, L) from the hidden states h (B, T, C); only position 0 is read.
    template <class Backbone>
    output_view forward(context& ctx, Backbone&, hidden_view h) {
        T_ = h.extent(1);
        const auto y = classifier.forward(ctx, dropout.forward(ctx, pooler.forward(ctx, h)));
        return {y.data(), y.extent(0), y.extent(1)};
    }

    /// Accumulates the head's gradients from d logits (B, L); returns d hidden (B, T, C).
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t B = d_logits.extent(0), Cn = backbone.hidden_size();
        d_drop_.resize(shape<dynamic, C>(B, Cn));
        d_pooled_.resize(shape<dynamic, C>(B, Cn));
        d_hidden_.resize(shape<dynamic, dynamic, C>(B, T_, Cn));
        d_drop_.fill(T(0)), d_pooled_.fill(T(0)), d_hidden_.fill(T(0));
        classifier.backward(ctx, {d_logits.data(), B, d_logits.extent(1)}, d_drop_.view());
        dropout.backward(ctx, d_drop_.view(), d_pooled_.view());
        pooler.backward(ctx, d_pooled_.view(), d_hidden_.view());
        return d_hidden_.view();
    }

    /// Packs the dense weights for inference.
    void prepare_inference() { pooler.prepare_inference(), classifier.prepare_inference(); }
    /// Sets the head's gradients to zero.
    void zero_grad() noexcept { pooler.zero_grad(), classifier.zero_grad(); }
    /// Visits "<backbone>.pooler.dense.*" and "classifier.*" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view backbone, Fn&& f) {
        pooler.visit_parameters(join_name(join_name(prefix, backbone), "pooler"), f);
        classifier.visit_parameters(join_name(prefix, "classifier"), f);
    }

    // --- the task: loss, evaluation, decoding -------------------------------------------------

    /// Options of the single-label training loss (label smoothing, class weights).
    void set_loss_options(const loss::cross_entropy_options& o) { ce_.options = o; }

    /// The training loss of a batch's logits y (B, L); d (B, L) += scale * its gradient.
    double loss(output_view y, const train::batch& b, T* d, T scale) {
        const std::size_t B = b.B, L = y.extent(1);
        if (problem == problem::single_label_classification) {
            const double l = double(ce_.forward({y.data(), B, L}, {b.labels.data(), B}));
            ce_.backward({d, B, L}, scale);
            return l;
        }
        targets_.assign(b.targets.begin(), b.targets.end());
        if (problem == problem::multi_label_classification) {
            const double l = double(bce_.forward({y.data(), B, L}, {targets_.data(), B, L}));
            bce_.backward({d, B, L}, scale);
            return l;
        }
        const double l = double(mse_.forward({y.data(), B, L}, {targets_.data(), B, L}));
        mse_.backward({d, B, L}, scale);
        return l;
    }

    /// Adds a batch's evaluation loss (no smoothing or weights) and predictions to e.
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>&) {
        const std::size_t B = b.B, L = y.extent(1);
        auto& s = e.running;
        if (problem == problem::single_label_classification) {
            loss::cross_entropy<T> ce;
            s.loss += double(ce.forward({y.data(), B, L}, {b.labels.data(), B})) * double(B);
            s.weight += double(B);
            for (std::size_t r = 0; r < B; ++r) {
                const T* z = y.data() + r * L;
                e.gold.push_back(b.labels[r]);
                e.predicted.push_back(int(std::max_element(z, z + L) - z));
            }
        } else if (problem == problem::multi_label_classification) {
            loss::bce_with_logits<T> bce;
            std::vector<T> tg(b.targets.begin(), b.targets.end());
            s.loss += double(bce.forward({y.data(), B, L}, {tg.data(), B, L})) * double(B);
            s.weight += double(B);
            for (std::size_t r = 0; r < B; ++r) {
                bool all = true;
                auto& g = e.gold_sets.emplace_back(L);
                auto& p = e.predicted_sets.emplace_back(L);
                for (std::size_t j = 0; j < L; ++j) {
                    g[j] = b.targets[r * L + j] > 0.5f, p[j] = y.data()[r * L + j] > 0;
                    all &= g[j] == p[j];
                }
                s.correct += all;
            }
        } else {
            for (std::size_t r = 0; r < B; ++r) {
                const double dv = double(y.data()[r]) - double(b.targets[r]);
                s.squared += dv * dv;
                e.outputs.push_back(double(y.data()[r]));
                e.targets.push_back(double(b.targets[r]));
            }
            s.weight += double(B);
        }
    }

    /// Turns the running sums into the report: accuracy and macro F1 (single-label), subset
    /// accuracy (multi-label), MSE as the loss (regression).
    void finish(train::evaluation& e) const {
        const auto& s = e.running;
        if (problem == problem::single_label_classification) {
            e.loss = s.loss / s.weight;
            e.accuracy = metrics::accuracy(e.gold, e.predicted);
            e.f1 = metrics::macro_f1(e.gold, e.predicted, num_labels());
            e.metric = e.accuracy;
        } else if (problem == problem::multi_label_classification) {
            e.loss = s.loss / s.weight;
            e.accuracy = s.correct / s.weight;
            e.metric = e.accuracy;
        } else {
            e.loss = s.squared / s.weight;
            e.metric = -e.loss;
        }
    }

    /// The name of the selection metric.
    std::string metric_name() const {
        return problem == problem::single_label_classification  ? "accuracy"
               : problem == problem::multi_label_classification ? "subset accuracy"
                                                                : "-mse";
    }

    /// The evaluation report: scikit-learn's classification_report and the confusion matrix
    /// (single-label; the matrix while it fits a screen, 20 labels), per-label scores and subset
    /// accuracy (multi-label), MSE with Pearson and Spearman correlations (regression).
    std::string report(const train::evaluation& e, const std::vector<std::string>& names) const {
        if (problem == problem::single_label_classification) {
            auto text = metrics::classification_report(e.gold, e.predicted, names);
            if (names.size() <= 20)
                text +=
                    "\n" + metrics::confusion_matrix_text(
                               metrics::confusion_matrix(e.gold, e.predicted, names.size()), names);
            return text;
        }
        if (problem == problem::multi_label_classification)
            return metrics::multilabel_report(e.gold_sets, e.predicted_sets, names) +
                   ftune::detail::cat("\nsubset accuracy ", e.accuracy, ", loss ", e.loss, "\n");
        return ftune::detail::cat("mse ", e.loss, "\npearson ",
                                  metrics::pearson(e.outputs, e.targets), "\nspearman ",
                                  metrics::spearman(e.outputs, e.targets), "\n");
    }

    /// The prediction for one row of L logits: softmax and argmax (single-label), sigmoids and
    /// the labels over 0.5 (multi-label), the values (regression). Computed in double.
    prediction_type decode(const T* logits) const {
        const std::size_t L = num_labels();
        class_prediction p;
        p.scores.resize(L);
        if (problem == problem::regression) {
            for (std::size_t j = 0; j < L; ++j) p.scores[j] = double(logits[j]);
            p.score = L ? p.scores[0] : 0;
            return p;
        }
        if (problem == problem::multi_label_classification) {
            for (std::size_t j = 0; j < L; ++j) {
                p.scores[j] = 1 / (1 + std::exp(-double(logits[j])));
                if (p.scores[j] > 0.5) p.chosen.push_back(j);
                if (p.scores[j] > p.scores[p.label]) p.label = j;
            }
            p.score = L ? p.scores[p.label] : 0;
            return p;
        }
        detail::softmax(logits, L, p.scores);
        p.label =
            std::size_t(std::max_element(p.scores.begin(), p.scores.end()) - p.scores.begin());
        p.score = p.scores[p.label];
        return p;
    }

  private:
    std::size_t T_ = 0;                                  // the last forward's length
    buffer<T, shape<dynamic, C>, D> d_drop_, d_pooled_;  // (B, C)
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    loss::cross_entropy<T> ce_;                          // single-label training loss
    loss::bce_with_logits<T> bce_;                       // multi-label training loss
    loss::mse<T> mse_;                                   // regression training loss
    std::vector<T> targets_;                             // float targets as T
};

}  // namespace heads
FTUNE_NAMESPACE_END
