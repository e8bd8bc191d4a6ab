// What every head shares: the problem types of a sequence classifier (Hugging Face's
// problem_type) and the classifier dropout of a configuration.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// What a sequence classifier's outputs mean and which loss trains them (Hugging Face's
/// config.json problem_type).
enum class problem {
    single_label_classification,  ///< one class per text: softmax, cross-entropy
    multi_label_classification,   ///< any subset of labels: sigmoids, binary cross-entropy
    regression,                   ///< one or more real values: mean squared error
};

/// The problem of a problem_type string; "" follows Transformers: regression for one label,
/// single-label classification otherwise. Throws for other names.
inline problem problem_from_hf(std::string_view name, std::size_t num_labels) {
    if (name.empty())
        return num_labels == 1 ? problem::regression : problem::single_label_classification;
    if (name == "single_label_classification") return problem::single_label_classification;
    if (name == "multi_label_classification") return problem::multi_label_classification;
    if (name == "regression") return problem::regression;
    throw error(errc::unsupported, "problem_type",
                "\"" + std::string(name) +
                    "\": expected single_label_classification, multi_label_classification or "
                    "regression");
}

/// Hugging Face's problem_type name of a problem.
inline std::string_view to_hf(problem p) {
    switch (p) {
        case problem::single_label_classification:
            return "single_label_classification";
        case problem::multi_label_classification:
            return "multi_label_classification";
        case problem::regression:
            break;
    }
    return "regression";
}

/// The dropout before a classifier: config.classifier_dropout, or hidden_dropout_prob when unset
/// (negative), as Transformers.
template <class Config>
double classifier_dropout(const Config& c) {
    return c.classifier_dropout >= 0 ? c.classifier_dropout : c.hidden_dropout_prob;
}

/// The name of label i: id2label's, or "LABEL_i" as Transformers names unnamed labels.
inline std::string label_name(const std::vector<std::string>& names, std::size_t i) {
    return i < names.size() && !names[i].empty() ? names[i] : "LABEL_" + std::to_string(i);
}

/// Whether H is an instance of the head template Of (tools that treat heads differently ask it:
/// is_a<typename Model::head_type, sequence_classification>).
template <class H, template <class, std::size_t, class> class Of>
inline constexpr bool is_a = false;
/// An instance of Of.
template <template <class, std::size_t, class> class Of, class T, std::size_t C, class D>
inline constexpr bool is_a<Of<T, C, D>, Of> = true;

}  // namespace heads
FTUNE_NAMESPACE_END
