// heads::causal_lm: vocabulary logits for every position of a decoder, as Transformers'
// LlamaForCausalLM / GPT2LMHeadModel: an LM head without a bias, or the input embedding table
// itself when the model ties them (tie_word_embeddings).
#pragma once

#include <algorithm>
#include <cmath>
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

/// Logits (B, T, V) = h Wᵀ with W (V, C) the head's own "lm_head.weight" or, when tied, the
/// backbone's input embedding table (backbone.input_embeddings()), whose gradient then takes
/// the head's. Position t's logits predict token t + 1.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class causal_lm {
  public:
    using value_type = T;                                                    ///< scalar type
    using hidden_view = view<const T, shape<dynamic, dynamic, C>, D>;        ///< (B, T, C)
    using output_view = view<const T, shape<dynamic, dynamic, dynamic>, D>;  ///< logits (B, T, V)
    static constexpr std::string_view architecture_suffix =
        "ForCausalLM";                               ///< after the family's name in config.json
    static constexpr bool first_token_only = false;  ///< reads every position
    static constexpr bool labels_per_token = true;   ///< a label (or -100) per position
    static constexpr bool masked_inputs = false;     ///< trains on the inputs as given

    bool tied;                                        ///< W is the input embedding table
    layers::linear<T, C, dynamic, D, false> lm_head;  ///< "lm_head" (V, C) when not tied

    /// A zero-initialized head for configuration c (hidden_size, vocab_size,
    /// tie_word_embeddings); a tied head has no weight of its own.
    template <class Config>
    explicit causal_lm(const Config& c)
        : tied(c.tie_word_embeddings),
          lm_head(c.hidden_size, c.tie_word_embeddings ? 0 : c.vocab_size) {}

    /// Vocabulary logits (B, T, V) from the hidden states h (B, T, C).
    template <class Backbone>
    output_view forward(context& ctx, Backbone& backbone, hidden_view h) {
        B_ = h.extent(0), T_ = h.extent(1);
        const view<const T, shape<dynamic, C>, D> rows(h.data(), B_ * T_, h.extent(2));  // (N, C)
        if (!tied) {
            const auto y = lm_head.forward(ctx, rows);
            return {y.data(), B_, T_, y.extent(1)};
        }
        h_ = rows;
        const auto& E = backbone.input_embeddings().value;              // (V, C)
        logits_.resize(shape<dynamic, dynamic>(B_ * T_, E.extent(0)));  // (N, V)
        ops::matmul<transpose::no, transpose::yes>(rows, E, logits_);
        return {logits_.data(), B_, T_, E.extent(0)};
    }

    /// Generation: the logits (B, V) of the last position of each sequence of h (B, T, C), with
    /// the weights packed by prepare_inference (packed again first when a visit of the model
    /// may have changed them).
    template <class Backbone>
    view<const T, shape<dynamic, dynamic>, D> forward_last(context& ctx, Backbone& backbone,
                                                           hidden_view h) {
        const std::size_t B = h.extent(0), Tn = h.extent(1), Cn = h.extent(2);
        last_.resize(shape<dynamic, C>(B, Cn));  // (B, C)
        for (std::size_t b = 0; b < B; ++b)
            ops::copy(view<T, shape<dynamic>, D>(last_.data() + b * Cn, Cn),
                      view<const T, shape<dynamic>, D>(h.data() + (b * Tn + Tn - 1) * Cn, Cn));
        if (!tied) return lm_head.forward(ctx, last_.view());
        if (!packed_current_) prepare_inference(backbone);
        const auto& E = backbone.input_embeddings().value;  // (V, C)
        logits_.resize(shape<dynamic, dynamic>(B, E.extent(0)));
        ops::matmul_prepared(last_.view(), packed_, logits_, view<const T, shape<dynamic>, D>());
        return logits_.view();
    }

    /// Accumulates the head's gradient (a tied head's into the embedding table) from d logits
    /// (B, T, V); returns d hidden (B, T, C).
    template <class Backbone>
    hidden_view backward(context& ctx, Backbone& backbone, output_view d_logits) {
        const std::size_t N = B_ * T_, Cn = backbone.hidden_size();
        const view<const T, shape<dynamic, dynamic>, D> dl(d_logits.data(), N,
                                                           d_logits.extent(2));  // (N, V)
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_hidden_.fill(T(0));
        const view<T, shape<dynamic, C>, D> dh(d_hidden_.data(), N, Cn);
        if (!tied) {
            lm_head.backward(ctx, dl, dh);
        } else {
            auto& E = backbone.input_embeddings();
            if (E.trainable)
                ops::matmul<transpose::yes, transpose::no>(dl, h_, E.grad, T(1), T(1));  // dE
            ops::matmul(dl, E.value, dh, T(1), T(1));  // dh = dl E
        }
        return d_hidden_.view();
    }

    /// Packs the LM head's weight for inference: its own, or (tied) the backbone's table.
    template <class Backbone>
    void prepare_inference(Backbone& backbone) {
        if (!tied) return lm_head.prepare_inference();
        packed_current_ = false;  // until the packing below has succeeded
        ops::prepare_weight(packed_, backbone.input_embeddings().value);
        packed_current_ = true;
    }
    /// Sets the head's gradient to zero.
    void zero_grad() noexcept { lm_head.zero_grad(); }

    /// Visits "lm_head.weight" unless tied (the tied table is the backbone's, visited there).
    /// A visit that may change weights (any visitor not derived from keeps_values; the model
    /// visits the tied table with the same visitor) makes the packed table stale.
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        if constexpr (!keeps_values_v<std::remove_cvref_t<Fn>>) packed_current_ = false;
        if (!tied) lm_head.visit_parameters(join_name(prefix, "lm_head"), f);
    }

    // --- the task: loss, evaluation --------------------------------------------------------
    /// Options of the training loss (label smoothing; the ignore index stays -100).
    void set_loss_options(const loss::cross_entropy_options& o) {
        ce_.options = o;
        ce_.options.ignore_index = -100;  // the shift marks each row's last position with it
    }

    /// The causal-LM loss of a batch's logits y (B, T, V), as Transformers' ForCausalLMLoss:
    /// position t predicts label t + 1 of its row (the labels are the input ids, -100 where no
    /// loss is taken: the prompt, the padding), the cross-entropy averaged over the counted
    /// tokens; d (B, T, V) += scale * its gradient.
    double loss(output_view y, const train::batch& b, T* d, T scale) {
        return next_token_loss(ce_, y, b, d, scale);
    }

    /// Adds a batch's loss and right next-token predictions over its counted tokens to e.
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>&) {
        loss::cross_entropy<T> ce;  // plain: no smoothing in evaluation
        const double l = next_token_loss(ce, y, b, static_cast<T*>(nullptr), T(0));
        const std::size_t V = y.extent(2);
        std::size_t counted = 0;
        for (std::size_t i = 0; i < shifted_.size(); ++i) {
            if (shifted_[i] == -100) continue;
            const T* z = y.data() + i * V;
            ++counted;
            e.running.correct += double(int(std::max_element(z, z + V) - z) == shifted_[i]);
        }
        e.running.loss += l * double(counted), e.running.weight += double(counted);
    }

    /// Turns the running sums into the report: loss and accuracy per token, metric -loss.
    void finish(train::evaluation& e) const { detail::finish_by_loss(e); }

    /// The name of the selection metric.
    std::string metric_name() const { return "-loss"; }

    /// The evaluation report: perplexity, loss and next-token accuracy per counted token.
    std::string report(const train::evaluation& e, const std::vector<std::string>&) const {
        return ftune::detail::cat("perplexity ", std::exp(e.loss), " (loss ", e.loss,
                                  " per token, next-token accuracy ", e.accuracy, ")\n");
    }

  private:
    // the loss of ce over the labels shifted one position left (the last of each row: -100)
    double next_token_loss(loss::cross_entropy<T>& ce, output_view y, const train::batch& b, T* d,
                           T scale) {
        const std::size_t n = b.B * b.T, V = y.extent(2);
        if (b.labels.size() != n || y.extent(0) * y.extent(1) != n)
            throw error(errc::shape_mismatch, "causal_lm::loss",
                        ftune::detail::cat("labels for ", b.labels.size(), " positions, logits ",
                                           y.shape().to_string(),
                                           ": give one label per input "
                                           "position (-100: no loss)"));
        shifted_.resize(n);
        for (std::size_t r = 0; r < b.B; ++r)
            for (std::size_t t = 0; t < b.T; ++t)
                shifted_[r * b.T + t] = t + 1 < b.T ? b.labels[r * b.T + t + 1] : token_id(-100);
        const double l = double(ce.forward({y.data(), n, V}, {shifted_.data(), n}));
        if (d) ce.backward({d, n, V}, scale);
        return l;
    }

    std::size_t B_ = 0, T_ = 0;                          // the last forward's batch and length
    view<const T, shape<dynamic, C>, D> h_;              // (N, C) the last hidden states (tied)
    buffer<T, shape<dynamic, dynamic>, D> logits_;       // (N, V) tied logits
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    buffer<T, shape<dynamic, C>, D> last_;               // (B, C) last positions (generation)
    ops::prepared_weight<T, D> packed_;                  // the tied table, packed
    std::vector<token_id> shifted_;                      // (B T) the next token's label
    loss::cross_entropy<T> ce_;                          // the training loss
    bool packed_current_ = false;                        // packed_ holds the current table
};

}  // namespace heads
FTUNE_NAMESPACE_END
