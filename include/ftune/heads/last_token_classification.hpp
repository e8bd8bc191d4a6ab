// heads::last_token_classification: a decoder's sequence classifier, as Transformers'
// LlamaForSequenceClassification / GPT2ForSequenceClassification: a linear "score" layer
// without a bias over the hidden state of each sequence's last token (the only one that has
// seen the whole text under causal attention). The task (single-label, multi-label, regression:
// loss, report, decoding) is sequence_task's, as for the encoder's [CLS] head.
//
// "Last token" is the last position the attention mask marks as a token, whichever side the
// padding is on. Transformers takes the rightmost id that is not pad_token_id, which is the
// same position unless the text itself ends with the pad token (SmolLM2 pads with
// <|im_end|>, GPT-2 has no pad token at all and then accepts batches of one only).
#pragma once

#include <string_view>
#include <vector>

#include "ftune/heads/sequence_task.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// Logits (B, L) = score(h[b, last token of b]) from the hidden states h (B, T, C) and the
/// attention mask; "score" is (L, C) without a bias.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class last_token_classification : public sequence_task<T, D> {
  public:
    using value_type = T;                                                ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;    ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic>, D>;       ///< logits (B, L)
    using mask_view = view<const token_id, shape<dynamic, dynamic>, D>;  ///< (B, T) 1: token
    static constexpr std::string_view architecture_suffix =
        "ForSequenceClassification";                 ///< after the family's name in config.json
    static constexpr bool first_token_only = false;  ///< reads the last token, wherever it is
    static constexpr bool labels_per_token = false;  ///< one label (or target row) per sequence
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    /// The same head on device D2 (what a trainer builds to run on a GPU: train/device_run.hpp).
    template <device_tag D2>
    using on_device = last_token_classification<T, C, D2>;

    layers::linear<T, C, dynamic, D, false> classifier;  ///< "score" (L, C), no bias

    /// A zero-initialized head for configuration c (hidden_size, num_labels, problem_type).
    template <class Config>
    explicit last_token_classification(const Config& c)
        : sequence_task<T, D>(problem_from_hf(c.problem_type, c.num_labels), c.num_labels),
          classifier(c.hidden_size, c.num_labels) {}

    /// Logits (B, L) from the hidden states h (B, T, C): row b is read at the last position
    /// attention_mask (B, T) marks with 1 (empty mask: position T - 1; no token: position 0, as
    /// Transformers).
    template <class Backbone>
    output_view forward(context& ctx, Backbone&, hidden_view h, mask_view attention_mask) {
        const std::size_t B = h.extent(0), Tn = h.extent(1), Cn = h.extent(2);
        if (!attention_mask.empty() &&
            (attention_mask.extent(0) != B || attention_mask.extent(1) != Tn))
            throw error(errc::shape_mismatch, "last_token_classification",
                        ftune::detail::cat("attention mask ", attention_mask.shape().to_string(),
                                           " for hidden states ", h.shape().to_string()));
        T_ = Tn;
        last_.resize(B);
        pooled_.resize(shape<dynamic, C>(B, Cn));  // (B, C)
        // the mask on the host (a device model's: copied, B T values) for the last-token search
        const token_id* mask = attention_mask.data();
        if constexpr (!D::host) {
            mask_host_.resize(attention_mask.size());
            device_to_host<D>(mask_host_.data(), mask, mask_host_.size());
            mask = mask_host_.data();
        }
        for (std::size_t b = 0; b < B; ++b) {
            std::size_t t = attention_mask.empty() ? Tn - 1 : 0;
            if (!attention_mask.empty())
                for (std::size_t s = Tn; s-- > 0;)
                    if (mask[b * Tn + s] != 0) {
                        t = s;
                        break;
                    }
            last_[b] = t;
            ops::copy(view<T, shape<dynamic>, D>(pooled_.data() + b * Cn, Cn),
                      view<const T, shape<dynamic>, D>(h.data() + (b * Tn + t) * Cn, Cn));
        }
        const auto y = classifier.forward(ctx, pooled_.view());  // (B, L)
        return {y.data(), y.extent(0), y.extent(1)};
    }

    /// Accumulates the classifier's gradient from d logits (B, L); returns d hidden (B, T, C), zero
    /// but at each row's last token.
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t B = d_logits.extent(0), Cn = backbone.hidden_size();
        d_pooled_.resize(shape<dynamic, C>(B, Cn));
        d_pooled_.fill(T(0));
        classifier.backward(ctx, {d_logits.data(), B, d_logits.extent(1)}, d_pooled_.view());
        d_hidden_.resize(shape<dynamic, dynamic, C>(B, T_, Cn));
        d_hidden_.fill(T(0));
        for (std::size_t b = 0; b < B; ++b)
            ops::copy(view<T, shape<dynamic>, D>(d_hidden_.data() + (b * T_ + last_[b]) * Cn, Cn),
                      view<const T, shape<dynamic>, D>(d_pooled_.data() + b * Cn, Cn));
        return d_hidden_.view();
    }

    /// Packs the classifier's weight for inference.
    void prepare_inference(precision p = precision::fp32) { classifier.prepare_inference(p); }
    /// Sets the classifier's gradient to zero.
    void zero_grad() { classifier.zero_grad(); }
    /// Visits "score.weight" under prefix.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        classifier.visit_parameters(join_name(prefix, "score"), f);
    }

  private:
    std::size_t T_ = 0;                                  // the last forward's length
    std::vector<std::size_t> last_;                      // (B) each row's last token
    std::vector<token_id> mask_host_;                    // (B, T) a device mask, copied
    buffer<T, shape<dynamic, C>, D> pooled_, d_pooled_;  // (B, C)
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
};

}  // namespace heads
FTUNE_NAMESPACE_END
