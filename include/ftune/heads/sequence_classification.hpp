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

#include "ftune/heads/sequence_task.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/layers/pooler.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// Logits (B, L) of each sequence from hidden states (B, T, C): pooler (tanh dense over
/// position 0, "<backbone>.pooler"), dropout, classifier ("classifier", (L, C)). With L = 1 and no
/// problem type it is a regression head.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class sequence_classification : public sequence_task<T, D> {
  public:
    /// The same head on device D2 (train::trainer's twin of a model on a GPU).
    template <device_tag D2>
    using on_device = sequence_classification<T, C, D2>;
    using value_type = T;                                              ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic>, D>;     ///< logits (B, L)
    static constexpr std::string_view architecture_suffix =
        "ForSequenceClassification";                 ///< after the family's name in config.json
    static constexpr bool first_token_only = true;   ///< reads position 0 of the last layer only
    static constexpr bool labels_per_token = false;  ///< one label (or target row) per sequence
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    layers::pooler<T, C, D> pooler;               ///< "<backbone>.pooler"
    layers::dropout<T, C, D> dropout;             ///< classifier dropout
    layers::linear<T, C, dynamic, D> classifier;  ///< "classifier" (L, C)

    /// A zero-initialized head for configuration c (hidden_size, num_labels, problem_type, the
    /// classifier dropout).
    template <class Config>
    explicit sequence_classification(const Config& c)
        : sequence_task<T, D>(problem_from_hf(c.problem_type, c.num_labels), c.num_labels),
          pooler(c.hidden_size),
          dropout(T(classifier_dropout(c))),
          classifier(c.hidden_size, c.num_labels) {}

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
    void prepare_inference(precision p = precision::fp32) {
        pooler.prepare_inference(p), classifier.prepare_inference(p);
    }
    /// Sets the head's gradients to zero.
    void zero_grad() { pooler.zero_grad(), classifier.zero_grad(); }
    /// Visits "<backbone>.pooler.dense.*" and "classifier.*" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view backbone, Fn&& f) {
        pooler.visit_parameters(join_name(join_name(prefix, backbone), "pooler"), f);
        classifier.visit_parameters(join_name(prefix, "classifier"), f);
    }

  private:
    std::size_t T_ = 0;                                  // the last forward's length
    buffer<T, shape<dynamic, C>, D> d_drop_, d_pooled_;  // (B, C)
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
};

}  // namespace heads
FTUNE_NAMESPACE_END
