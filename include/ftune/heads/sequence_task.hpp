// heads::sequence_task: what a sequence classifier does with its logits (B, L), whatever computed
// them: the loss, the evaluation report and the decoding of its problem type (single-label,
// multi-label, regression), chosen at run time as Transformers' config.problem_type. The
// encoder's [CLS] head and the decoders' last-token head derive from it.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ftune/heads/common.hpp"
#include "ftune/heads/detail.hpp"
#include "ftune/loss.hpp"
#include "ftune/metrics/scores.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/train/evaluation.hpp"

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

/// The task of L logits per sequence: loss, evaluation and decoding by problem type.
template <scalar T, device_tag D = device::cpu>
class sequence_task {
  public:
    using output_view = view<const T, shape<dynamic, dynamic>, D>;  ///< logits (B, L)
    using prediction_type = class_prediction;  ///< what decode() gives for one sequence
    heads::problem problem;  ///< the outputs' meaning and loss (config.json problem_type)

    /// The task of L outputs for problem p.
    sequence_task(heads::problem p, std::size_t L) : problem(p), labels_(L) {}

    /// Number of labels L.
    std::size_t num_labels() const noexcept { return labels_; }

    /// Options of the single-label training loss (label smoothing, class weights).
    void set_loss_options(const loss::cross_entropy_options& o) { ce_.options = o; }

    /// The denominator of the batch's mean loss: Σ class weight of its labels (single label),
    /// B L (multi-label, regression); the trainer weighs a slice of a batch by it.
    double loss_weight(const train::batch& b) const {
        if (problem == problem::single_label_classification)
            return detail::label_weight(ce_, std::span<const token_id>(b.labels));
        return double(b.B) * double(labels_);
    }

    /// The training loss of a batch's logits y (B, L); d (B, L) += scale * its gradient.
    double loss(output_view y, const train::batch& b, T* d, T scale) {
        require_host_memory<D>();  // reads tensor memory on the host (a device model's
                                   // trainer runs its host twin's loss: train/device_run.hpp)
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
        require_host_memory<D>();  // reads tensor memory on the host
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
        require_host_memory<D>();  // reads tensor memory on the host
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
    std::size_t labels_;            // L
    loss::cross_entropy<T> ce_;     // single-label training loss
    loss::bce_with_logits<T> bce_;  // multi-label training loss
    loss::mse<T> mse_;              // regression training loss
    std::vector<T> targets_;        // float targets as T
};

}  // namespace heads
FTUNE_NAMESPACE_END
