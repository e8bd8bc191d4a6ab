// heads::entity_relation: the relation between two marked entities of a sentence, as relation
// extraction models built on BERT do (R-BERT, Wu & He 2019; "matching the blanks", Baldini
// Soares et al. 2019, its ENTITY START variant with [CLS] added): the text carries marker tokens
// around the entities ("The <e1>author</e1> of a keygen uses a <e2>disassembler</e2> ..."), and
// the classifier reads the final hidden states of [CLS] and of the two markers that open the
// entities:
//
//   logits (B, L) = classifier(dropout([h[b, 0]; h[b, <e1>]; h[b, <e2>]]))   classifier (L, 3C)
//
// The markers are special tokens added to the tokenizer (their embeddings new rows of the token
// table, trained with the rest): io::add_entity_markers does both and tells the head their ids.
// The task is single-label classification (sequence_task's loss and decoding); evaluation adds
// SemEval-2010 Task 8's official score (metrics::score_relations: macro-F1 over the relation
// types, direction counted, "Other" left out), which is also the selection metric.
#pragma once

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/heads/sequence_task.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/metrics/relations.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// Logits (B, L) over [CLS] and the two entity-start markers of each sequence (see the file
/// comment); parameters "classifier.weight" (L, 3C) and "classifier.bias".
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class entity_relation : public sequence_task<T, D> {
    static constexpr std::size_t C3 = C == dynamic ? dynamic : 3 * C;  // the features' width

  public:
    using value_type = T;                                               ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;   ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic>, D>;      ///< logits (B, L)
    using ids_view = view<const token_id, shape<dynamic, dynamic>, D>;  ///< (B, T) token ids
    static constexpr std::string_view architecture_suffix =
        "ForRelationClassification";                 ///< after the family's name in config.json
    static constexpr bool first_token_only = false;  ///< reads the marker positions too
    static constexpr bool labels_per_token = false;  ///< one relation per sequence
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    layers::dropout<T, C3, D> dropout;             ///< over the joined features
    layers::linear<T, C3, dynamic, D> classifier;  ///< "classifier" (L, 3C)
    /// Token ids of the markers that open entity 1 and entity 2 ("<e1>", "<e2>"); -1: not set
    /// (io::add_entity_markers sets them).
    std::array<token_id, 2> entity_starts{-1, -1};
    /// The label names (id2label) the relation score reads types and directions from: set by
    /// io::add_entity_markers from the checkpoint's labels, and by each score() call.
    std::vector<std::string> label_names;

    /// A zero-initialized head for configuration c (hidden_size, num_labels, the classifier
    /// dropout).
    template <class Config>
    explicit entity_relation(const Config& c)
        : sequence_task<T, D>(problem::single_label_classification, c.num_labels),
          dropout(T(classifier_dropout(c))),
          classifier(3 * c.hidden_size, c.num_labels) {}

    /// Logits (B, L) from the hidden states h (B, T, C) of token ids (B, T). Throws ftune::error
    /// naming the row when a sequence lacks a marker (cut off by truncation, or never written).
    template <class Backbone>
    output_view forward(context& ctx, Backbone&, hidden_view h, ids_view, ids_view ids) {
        require_host_memory<D>();  // reads tensor memory on the host
        const std::size_t B = h.extent(0), Tn = h.extent(1), Cn = h.extent(2);
        if (entity_starts[0] < 0 || entity_starts[1] < 0)
            throw error(errc::invalid_argument, "entity_relation",
                        "the entity marker ids are not set; call io::add_entity_markers");
        if (ids.extent(0) != B || ids.extent(1) != Tn)
            throw error(errc::shape_mismatch, "entity_relation",
                        ftune::detail::cat("token ids ", ids.shape().to_string(),
                                           " for hidden states ", h.shape().to_string()));
        T_ = Tn;
        at_.resize(3 * B);
        features_.resize(shape<dynamic, C3>(B, 3 * Cn));  // (B, 3C)
        for (std::size_t b = 0; b < B; ++b) {
            const token_id* row = ids.data() + b * Tn;
            at_[3 * b] = 0;  // [CLS]
            for (std::size_t k = 0; k < 2; ++k) {
                const auto* p = std::find(row, row + Tn, entity_starts[k]);
                if (p == row + Tn)
                    throw error(errc::invalid_argument, "entity_relation",
                                ftune::detail::cat("sequence ", b, " of the batch has no <e", k + 1,
                                                   "> marker (token id ", entity_starts[k],
                                                   "): mark both entities, and keep the markers "
                                                   "within the maximum length"));
                at_[3 * b + 1 + k] = std::size_t(p - row);
            }
            for (std::size_t k = 0; k < 3; ++k)
                ops::copy(view<T, shape<dynamic>, D>(features_.data() + (3 * b + k) * Cn, Cn),
                          view<const T, shape<dynamic>, D>(
                              h.data() + (b * Tn + at_[3 * b + k]) * Cn, Cn));
        }
        const auto y = classifier.forward(ctx, dropout.forward(ctx, features_.view()));
        return {y.data(), y.extent(0), y.extent(1)};
    }

    /// Accumulates the classifier's gradient from d logits (B, L); returns d hidden (B, T, C):
    /// zero except at [CLS] and the two markers of each row.
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t B = d_logits.extent(0), Cn = backbone.hidden_size();
        d_drop_.resize(shape<dynamic, C3>(B, 3 * Cn));
        d_features_.resize(shape<dynamic, C3>(B, 3 * Cn));
        d_drop_.fill(T(0)), d_features_.fill(T(0));
        classifier.backward(ctx, {d_logits.data(), B, d_logits.extent(1)}, d_drop_.view());
        dropout.backward(ctx, d_drop_.view(), d_features_.view());
        d_hidden_.resize(shape<dynamic, dynamic, C>(B, T_, Cn));
        d_hidden_.fill(T(0));
        for (std::size_t b = 0; b < B; ++b)
            for (std::size_t k = 0; k < 3; ++k) {  // += : positions may coincide
                T* dst = d_hidden_.data() + (b * T_ + at_[3 * b + k]) * Cn;
                const T* src = d_features_.data() + (3 * b + k) * Cn;
                for (std::size_t c = 0; c < Cn; ++c) dst[c] += src[c];
            }
        return d_hidden_.view();
    }

    /// Adds a batch's loss and predictions to e (sequence_task's), keeping the label names for
    /// finish().
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>& names) {
        require_host_memory<D>();  // reads tensor memory on the host
        if (!names.empty()) label_names = names;
        sequence_task<T, D>::score(y, b, e, names);
    }

    /// The report's numbers: loss, accuracy, and as f1 and the selection metric the official
    /// macro-F1 (metrics::score_relations over the label names; plain macro F1 without names).
    void finish(train::evaluation& e) const {
        sequence_task<T, D>::finish(e);
        if (label_names.size() < this->num_labels()) return;
        e.f1 = scores(e).macro_f1;
        e.metric = e.f1;
    }

    /// The name of the selection metric.
    std::string metric_name() const { return "relation macro-F1"; }

    /// The official scorer's table (per relation type, direction counted, micro and macro
    /// averages), then scikit-learn's classification report over every directed label.
    std::string report(const train::evaluation& e, const std::vector<std::string>& names) const {
        return metrics::relation_report(metrics::score_relations(label_strings(e.gold, names),
                                                                 label_strings(e.predicted, names),
                                                                 other_label(names))) +
               "\n" + metrics::classification_report(e.gold, e.predicted, names);
    }

    /// Packs the classifier's weight for inference.
    void prepare_inference(precision p = precision::fp32) { classifier.prepare_inference(p); }
    /// Sets the classifier's gradient to zero.
    void zero_grad() { classifier.zero_grad(); }
    /// Visits "classifier.*" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        classifier.visit_parameters(join_name(prefix, "classifier"), f);
    }

    /// The label of "no relation" among names: "Other" (SemEval-2010 Task 8) or "no_relation"
    /// (TACRED); "" when there is neither (every label is then a relation).
    static std::string other_label(const std::vector<std::string>& names) {
        for (const char* o : {"Other", "no_relation"})
            if (std::find(names.begin(), names.end(), o) != names.end()) return o;
        return {};
    }

  private:
    static std::vector<std::string> label_strings(const std::vector<int>& ids,
                                                  const std::vector<std::string>& names) {
        std::vector<std::string> s;
        s.reserve(ids.size());
        for (int i : ids) s.push_back(label_name(names, std::size_t(i)));
        return s;
    }
    metrics::relation_scores scores(const train::evaluation& e) const {
        return metrics::score_relations(label_strings(e.gold, label_names),
                                        label_strings(e.predicted, label_names),
                                        other_label(label_names));
    }

    std::size_t T_ = 0;            // the last forward's length
    std::vector<std::size_t> at_;  // (B, 3) [CLS], <e1>, <e2> positions
    buffer<T, shape<dynamic, C3>, D> features_, d_drop_, d_features_;  // (B, 3C)
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;                // (B, T, C)
};

}  // namespace heads
FTUNE_NAMESPACE_END
