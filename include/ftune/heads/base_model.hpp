// heads::base_model: no task, the backbone's hidden states plus the pooled first token, as
// Transformers' BertModel (the architecture a base checkpoint names).
#pragma once

#include <algorithm>
#include <string_view>

#include "ftune/layers/pooler.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// The hidden states (B, T, C) as they are, and the pooled output (B, C) of position 0
/// ("pooler", unprefixed like every parameter of a base model: "embeddings.*", "encoder.*").
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class base_model {
  public:
    using value_type = T;                                              ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)
    using output_view = hidden_view;                                   ///< hidden states
    using pooled_view = view<const T, shape<dynamic, C>, D>;           ///< (B, C)
    static constexpr std::string_view architecture_suffix = "Model";   ///< "BertModel"
    static constexpr bool first_token_only = false;                    ///< returns every position
    static constexpr bool prefixes_backbone = false;  ///< the backbone's names are unprefixed

    layers::pooler<T, C, D> pooler;  ///< "pooler"

    /// A zero-initialized pooler for configuration c.
    template <class Config>
    explicit base_model(const Config& c) : pooler(c.hidden_size) {}

    /// The hidden states h themselves; computes the pooled output.
    template <class Backbone>
    output_view forward(context& ctx, Backbone&, hidden_view h) {
        pooled_ = pooler.forward(ctx, h);
        return h;
    }

    /// The pooled output (B, C) of the last forward.
    pooled_view pooled() const { return pooled_; }

    /// Returns d hidden (B, T, C) = d_hidden + the pooler's gradient from d_pooled (B, C)
    /// (empty: none), accumulating the pooler's gradients.
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone&, output_view d_hidden, pooled_view d_pooled = {}) {
        d_.resize(d_hidden.shape());
        ops::copy(d_, d_hidden);
        if (!d_pooled.empty()) pooler.backward(ctx, d_pooled, d_.view());
        return d_.view();
    }

    /// Packs the pooler's weight for inference.
    void prepare_inference(precision p = precision::fp32) { pooler.prepare_inference(p); }
    /// Sets the pooler's gradients to zero.
    void zero_grad() { pooler.zero_grad(); }
    /// Visits "pooler.dense.*" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        pooler.visit_parameters(join_name(prefix, "pooler"), f);
    }

  private:
    pooled_view pooled_;                          // (B, C)
    buffer<T, shape<dynamic, dynamic, C>, D> d_;  // (B, T, C)
};

}  // namespace heads
FTUNE_NAMESPACE_END
