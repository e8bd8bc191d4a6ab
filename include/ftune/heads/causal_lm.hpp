// heads::causal_lm: vocabulary logits for every position of a decoder, as Transformers'
// LlamaForCausalLM / GPT2LMHeadModel: an LM head without a bias, or the input embedding table
// itself when the model ties them (tie_word_embeddings).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
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

    /// The same head on device D2 (what a trainer builds to run on a GPU: train/device_run.hpp).
    template <device_tag D2>
    using on_device = causal_lm<T, C, D2>;

    bool tied;                                        ///< W is the input embedding table
    layers::linear<T, C, dynamic, D, false> lm_head;  ///< "lm_head" (V, C) when not tied
    /// The denominator of the batch's mean loss: Σ class weight of the labels shifted one
    /// position left (position t predicts label t + 1 of its row).
    double loss_weight(const train::batch& b) const {
        double sum = 0;
        const auto& w = ce_.options.class_weights;
        if (b.labels.size() != b.B * b.T) return 0;  // (the loss throws, saying what is wrong)
        for (std::size_t r = 0; r < b.B; ++r)
            for (std::size_t t = 1; t < b.T; ++t)
                if (const token_id y = b.labels[r * b.T + t]; y != -100)
                    sum += w.empty()                             ? 1.0
                           : y >= 0 && std::size_t(y) < w.size() ? w[std::size_t(y)]
                                                                 : 0;
        return sum;
    }

    /// Rows of vocabulary logits the training loss (loss_backward) computes at a time; 0: as
    /// many as fill 2^24 elements (341 rows of SmolLM2's 49,152-token vocabulary, 64 MB).
    std::size_t loss_chunk_rows = 0;

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
        precision_ = ctx.precision;
        const auto& E = backbone.input_embeddings().value;              // (V, C)
        logits_.resize(shape<dynamic, dynamic>(B_ * T_, E.extent(0)));  // (N, V)
        ops::matmul<transpose::no, transpose::yes>(rows, E, logits_, T(1), T(0), precision_);
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
        if (!packed_current_) prepare_inference(backbone, packed_.precision());
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
                ops::matmul<transpose::yes, transpose::no>(dl, h_, E.gradient(), T(1), T(1),
                                                           precision_);  // dE
            ops::matmul(dl, E.value, dh, T(1), T(1), precision_);        // dh = dl E
        }
        return d_hidden_.view();
    }

    /// Training without the (B, T, V) logits (what Transformers computes, and most of a
    /// step's memory beyond the activations): the causal-LM loss of batch b from the hidden
    /// states h (B, T, C), loss_chunk_rows counted positions at a time. Only the positions whose
    /// next token carries a label get logits at all (chat fine-tuning skips every prompt
    /// token); each chunk's logits (rows, V) turn into their loss and d logits, which add
    /// scale * the head's gradient (a tied head's into the embedding table) and give the
    /// chunk's d hidden. Equal to forward, loss and backward up to the order of sums. Returns
    /// the loss and d hidden (B, T, C).
    template <class Backbone>
    std::pair<double, hidden_view> loss_backward(context& ctx, Backbone& backbone, hidden_view h,
                                                 const train::batch& b, T scale) {
        B_ = h.extent(0), T_ = h.extent(1);
        const std::size_t N = B_ * T_, Cn = h.extent(2);
        auto& W = tied ? backbone.input_embeddings() : lm_head.weight;  // (V, C)
        const std::size_t V = W.value.extent(0);
        shift_labels(b, N, V);
        // the cross-entropy primitive (on any device) unless smoothing or weights ask for the
        // loss class's host loops
        const auto& w = ce_.options.class_weights;
        const bool plain = w.empty() && ce_.options.label_smoothing == 0;
        if (!plain && !D::host)
            throw error(errc::unsupported, ftune::detail::cat("causal_lm on ", D::name),
                        "label smoothing and class weights in the causal-LM loss are computed "
                        "on the CPU only: train without them on this device, or on the CPU");
        if (!w.empty() && w.size() != V)
            throw error(errc::shape_mismatch, "causal_lm::loss_backward: class_weights",
                        ftune::detail::cat(w.size(), " weights for a vocabulary of ", V,
                                           ": give one per token or none"));
        // the counted positions, their targets and the mean's denominator Σ w_y (the count)
        rows_.clear(), targets_.clear();
        double denom = 0;
        for (std::size_t i = 0; i < N; ++i) {
            const token_id y = shifted_[i];
            if (y == -100) continue;
            if (y < 0 || std::size_t(y) >= V)
                throw error(errc::out_of_range, "causal_lm::loss_backward",
                            ftune::detail::cat("label ", y, " of row ", i / T_, " position ",
                                               i % T_ + 1, " is outside the vocabulary [0, ", V,
                                               ") and is not -100 (no loss)"));
            rows_.push_back(token_id(i)), targets_.push_back(y);
            denom += w.empty() ? 1.0 : w[std::size_t(y)];
        }
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_hidden_.fill(T(0));
        const std::size_t M = rows_.size();
        if (M == 0 || denom == 0) return {0.0, d_hidden_.view()};
        // the counted rows of h, gathered: (M, C); their targets, on the model's device
        rows_d_.resize(shape<dynamic>(M)), targets_d_.resize(shape<dynamic>(M));
        host_to_device<D>(rows_d_.data(), rows_.data(), M);
        host_to_device<D>(targets_d_.data(), targets_.data(), M);
        hc_.resize(shape<dynamic, C>(M, Cn));
        dhc_.resize(shape<dynamic, C>(M, Cn));
        dhc_.fill(T(0));
        ops::embedding(hc_, rows_d_, view<const T, shape<dynamic, C>, D>(h.data(), N, Cn));
        const std::size_t R = std::min(
            M, loss_chunk_rows ? loss_chunk_rows : std::max<std::size_t>(1, (1u << 24) / V));
        // in bf16, W rounded and packed once for all chunks, in both products' layouts
        const precision prec = ctx.precision;
        if (prec == precision::bf16) {
            ops::prepare_weight(w_logits_, W.value, prec);
            ops::prepare_weight_for_input_gradient(w_dh_, W.value, prec);
        }
        z_.resize(shape<dynamic, dynamic>(R, V));   // (R, V) a chunk's logits
        dz_.resize(shape<dynamic, dynamic>(R, V));  // (R, V) and their gradient
        losses_.resize(shape<dynamic>(R)), dlosses_.resize(shape<dynamic>(R));  // (R)
        if (plain) dlosses_.fill(T(double(scale) / denom));
        double total = 0;
        for (std::size_t k0 = 0; k0 < M; k0 += R) {
            const std::size_t r = std::min(R, M - k0);
            const view<const T, shape<dynamic, C>, D> hk(hc_.data() + k0 * Cn, r, Cn);  // (r, C)
            const view<T, shape<dynamic, C>, D> dhk(dhc_.data() + k0 * Cn, r, Cn);      // (r, C)
            const view<T, shape<dynamic, dynamic>, D> z(z_.data(), r, V), dz(dz_.data(), r, V);
            if (prec == precision::bf16)  // logits = h Wᵀ
                ops::matmul_prepared(hk, w_logits_, z, view<const T, shape<dynamic>, D>());
            else
                ops::matmul<transpose::no, transpose::yes>(hk, W.value, z);
            dz_.fill(T(0));
            if (plain) {  // Σ of the rows' losses; d z += scale / denom (softmax - onehot)
                const view<const token_id, shape<dynamic>, D> tk(targets_d_.data() + k0, r);
                const view<T, shape<dynamic>, D> lk(losses_.data(), r);
                ops::cross_entropy(lk, z, tk, -100);
                loss_host_.resize(r);
                device_to_host<D>(loss_host_.data(), lk.data(), r);
                for (const T l : loss_host_) total += double(l);
                ops::cross_entropy_backward(
                    dz, z, tk, view<const T, shape<dynamic>, D>(dlosses_.data(), r), -100);
            } else if constexpr (D::host) {  // the loss class: smoothing, class weights
                double part = 0;             // the chunk's share of the denominator
                for (std::size_t k = k0; k < k0 + r; ++k)
                    part += w.empty() ? 1.0 : w[std::size_t(targets_[k])];
                total += double(ce_.forward({z.data(), r, V}, {targets_.data() + k0, r})) * part;
                ce_.backward({dz.data(), r, V}, T(double(scale) * part / denom));
            }
            if (W.trainable)
                ops::matmul<transpose::yes, transpose::no>(dz, hk, W.gradient(), T(1), T(1),
                                                           prec);  // dW
            if (prec == precision::bf16)                           // d h = d logits W
                ops::matmul_prepared_add(dz, w_dh_, dhk);
            else
                ops::matmul(dz, W.value, dhk);
        }
        // scattered back to their positions (each row once: the sum is the copy)
        ops::embedding_backward(view<T, shape<dynamic, C>, D>(d_hidden_.data(), N, Cn), rows_d_,
                                dhc_);
        return {total / denom, d_hidden_.view()};
    }

    /// Packs the LM head's weight for inference: its own, or (tied) the backbone's table.
    template <class Backbone>
    void prepare_inference(Backbone& backbone, precision p = precision::fp32) {
        if (!tied) return lm_head.prepare_inference(p);
        packed_current_ = false;  // until the packing below has succeeded
        ops::prepare_weight(packed_, backbone.input_embeddings().value, p);
        packed_current_ = true;
    }
    /// Sets the head's gradient to zero.
    void zero_grad() { lm_head.zero_grad(); }

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
        require_host_memory<D>();  // reads tensor memory on the host (a device model's
                                   // trainer runs its host twin's loss: train/device_run.hpp)
        return next_token_loss(ce_, y, b, d, scale);
    }

    /// Adds a batch's loss and right next-token predictions over its counted tokens to e.
    void score(output_view y, const train::batch& b, train::evaluation& e,
               const std::vector<std::string>&) {
        require_host_memory<D>();   // reads tensor memory on the host
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
        if (y.extent(0) * y.extent(1) != n)
            throw error(errc::shape_mismatch, "causal_lm::loss",
                        ftune::detail::cat("a batch of ", b.B, " x ", b.T, " positions, logits ",
                                           y.shape().to_string()));
        shift_labels(b, n, V);
        const double l = double(ce.forward({y.data(), n, V}, {shifted_.data(), n}));
        if (d) ce.backward({d, n, V}, scale);
        return l;
    }

    // shifted_ (n) = the labels shifted one position left, the last of each row -100; checks
    // that b has one label per position of the n computed
    void shift_labels(const train::batch& b, std::size_t n, std::size_t V) {
        if (b.labels.size() != n || b.B * b.T != n)
            throw error(errc::shape_mismatch, "causal_lm::loss",
                        ftune::detail::cat("labels for ", b.labels.size(), " positions of a ", b.B,
                                           " x ", b.T, " batch, ", n, " positions of ", V,
                                           " logits computed: give one label per input "
                                           "position (-100: no loss)"));
        shifted_.resize(n);
        for (std::size_t r = 0; r < b.B; ++r)
            for (std::size_t t = 0; t < b.T; ++t)
                shifted_[r * b.T + t] = t + 1 < b.T ? b.labels[r * b.T + t + 1] : token_id(-100);
    }

    std::size_t B_ = 0, T_ = 0;                          // the last forward's batch and length
    view<const T, shape<dynamic, C>, D> h_;              // (N, C) the last hidden states (tied)
    buffer<T, shape<dynamic, dynamic>, D> logits_;       // (N, V) tied logits
    buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    buffer<T, shape<dynamic, C>, D> last_;               // (B, C) last positions (generation)
    ops::prepared_weight<T, D> packed_;                  // the tied table, packed
    ops::prepared_weight<T, D> w_logits_, w_dh_;         // W in bf16 for loss_backward's chunks
    precision precision_ = precision::fp32;              // the last forward's
    std::vector<token_id> shifted_;                      // (B T) the next token's label
    std::vector<token_id> rows_;                         // (M) positions with a label (fused)
    std::vector<token_id> targets_;                      // (M) their labels
    buffer<token_id, shape<dynamic>, D> rows_d_;         // (M) rows_ on the model's device
    buffer<token_id, shape<dynamic>, D> targets_d_;      // (M) targets_ there
    buffer<T, shape<dynamic, C>, D> hc_, dhc_;           // (M, C) their hidden states, d
    buffer<T, shape<dynamic, dynamic>, D> z_, dz_;       // (R, V) a chunk's logits, d logits
    buffer<T, shape<dynamic>, D> losses_, dlosses_;      // (R) a chunk's row losses, d losses
    std::vector<T> loss_host_;                           // (R) the row losses on the host
    loss::cross_entropy<T> ce_;                          // the training loss
    bool packed_current_ = false;                        // packed_ holds the current table
};

}  // namespace heads
FTUNE_NAMESPACE_END
