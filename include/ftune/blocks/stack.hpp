// blocks::stack: a transformer backbone as a composition: an input layer, a run-time number of
// blocks, and an optional final norm (pre-norm models end with one: GPT-2's ln_f, Llama's norm;
// BERT has none). A family's backbone is a stack of its pieces plus a constructor from its
// config (bert::encoder); the forward, the freezing-aware backward, the [CLS]-only inference
// path and the parameter names are written once, here.
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ftune/blocks/encoder_block.hpp"
#include "ftune/layers/input_embeddings.hpp"

FTUNE_NAMESPACE_BEGIN
namespace blocks {

/// BERT's names in a stack: "embeddings.*", "encoder.layer.N.*", no final norm. Another family
/// writes its own (GPT-2: "", "h", "ln_f"; Llama: "", "layers", "norm"); an empty embeddings
/// name puts the input layer's pieces directly under the stack's prefix.
struct bert_stack_names {
    static constexpr std::string_view embeddings = "embeddings";  ///< the input layer
    static constexpr std::string_view layers = "encoder.layer";   ///< block i is "<layers>.i"
    static constexpr std::string_view final_norm = "";            ///< the final norm, if any
};

/// Embeddings -> Block x L -> FinalNorm (layers::absent: none): ids (B, T) -> hidden states
/// (B, T, C), Names giving the checkpoint names. The blocks are added by the family's
/// constructor (layer.emplace_back).
template <class Embeddings, class Block, class FinalNorm, class Names>
class stack {
    using T = typename Block::value_type;
    using D = typename Block::device_type;

  public:
    using value_type = T;                             ///< scalar type
    using device_type = D;                            ///< where the tensors live
    using embeddings_type = Embeddings;               ///< the input layer
    using block_type = Block;                         ///< one layer
    using final_norm_type = FinalNorm;                ///< the final norm (or absent)
    using ids_view = typename Embeddings::ids_view;   ///< (B, T)
    using output_view = typename Block::output_view;  ///< (B, T, C)
    static constexpr bool has_final_norm = !layers::is_absent<FinalNorm>;  ///< pre-norm models

    Embeddings embeddings;                       ///< "<Names::embeddings>"
    std::vector<Block> layer;                    ///< "<Names::layers>.N"
    [[no_unique_address]] FinalNorm final_norm;  ///< "<Names::final_norm>" (or absent)

    /// An input layer and a final norm; no blocks yet.
    stack(Embeddings e, FinalNorm n) : embeddings(std::move(e)), final_norm(std::move(n)) {}

    /// Hidden states of ids; attention_mask (B, T) holds 1 for tokens and 0 for padding (empty:
    /// all tokens), token_types may be empty (all 0).
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        set_key_mask(ids, attention_mask);
        output_view h = embeddings.forward(ctx, ids, token_types);
        input_shape_ = h.shape();
        for (auto& block : layer) h = block.forward(ctx, h, mask_.view());
        return normed(ctx, h);
    }

    /// forward_first_tokens over a ragged batch: ids (1, N) and token_types (1, N, or empty)
    /// hold S sequences one after another without padding, sequence s at offsets[s] ..
    /// offsets[s + 1] (S + 1 values from 0 to N), each with positions from 0. Returns (S, 1, C):
    /// each sequence's position 0 after the last layer, as forward_first_tokens gives it for
    /// that sequence alone (up to the order of float sums), with no padded position computed.
    /// Needs prepare_inference(); eval mode.
    output_view forward_first_tokens_packed(context& ctx, ids_view ids, ids_view token_types,
                                            std::span<const std::size_t> offsets) {
        require_host_memory<device_type>();  // positions written on the host
        if (ctx.training() || !inference_prepared() || ids.extent(0) != 1)
            throw error(errc::invalid_argument, "forward_first_tokens_packed",
                        "runs on a backbone prepared for inference (prepare_inference()), in "
                        "eval mode, on ids (1, N)");
        const std::size_t N = ids.extent(1);
        Block::attention_type::check_offsets(offsets, N);
        positions_.resize(shape<dynamic>(N));  // each sequence's own positions, from 0
        std::size_t longest = 0;
        for (std::size_t s = 0; s + 1 < offsets.size(); ++s) {
            longest = std::max(longest, offsets[s + 1] - offsets[s]);
            for (std::size_t i = offsets[s]; i < offsets[s + 1]; ++i)
                positions_.data()[i] = token_id(i - offsets[s]);
        }
        output_view h =
            embeddings.forward_packed(ctx, ids, token_types, positions_.view(), longest);
        for (std::size_t i = 0; i + 1 < layer.size(); ++i)
            h = layer[i].forward_packed(ctx, h, offsets);
        h = layer.back().forward_packed(ctx, h, offsets, true);          // (1, S, C)
        const output_view first(h.data(), h.extent(1), 1, h.extent(2));  // (S, 1, C)
        return normed(ctx, first);
    }

    /// Hidden states of the first token of each sequence, (B, 1, C): the rows forward() gives
    /// at position 0, with the last layer computed for those rows only (its keys and values still
    /// cover every position). What a [CLS] classifier reads; about 1/L of the work less. On a
    /// backbone prepared for inference, in eval mode: equal bit for bit, nothing kept for
    /// backward. Otherwise (training) equal up to the order of float sums; backward then takes
    /// d hidden (B, 1, C).
    output_view forward_first_tokens(context& ctx, ids_view ids, ids_view attention_mask = {},
                                     ids_view token_types = {}) {
        if (layer.empty())
            throw error(errc::invalid_argument, "forward_first_tokens",
                        "the backbone has no layers; run forward()");
        set_key_mask(ids, attention_mask);
        output_view h = embeddings.forward(ctx, ids, token_types);
        input_shape_ = h.shape();
        for (std::size_t i = 0; i + 1 < layer.size(); ++i)
            h = layer[i].forward(ctx, h, mask_.view());
        return normed(ctx, layer.back().forward_first(ctx, h, mask_.view()));
    }

    /// Generation (decoders): hidden states (B, steps, C) of the step's new tokens ids (B,
    /// steps), each attending to itself, the earlier new tokens and the positions in cache;
    /// attention_mask (B, steps) marks padding (0; empty: all tokens). Appends the step to the
    /// cache (reset() for this model and batch first). Eval mode; keeps nothing for backward.
    template <class Cache>
    requires requires(Block& b, context& c, output_view x, Cache& k) {
        b.forward_cached(c, x, k, std::size_t(0));
    }
    output_view forward_cached(context& ctx, ids_view ids, Cache& cache,
                               ids_view attention_mask = {}) {
        if (ctx.training())
            throw error(errc::invalid_argument, "forward_cached",
                        "generation runs in eval mode (context's mode is train)");
        if (cache.layers() != layer.size() || cache.batch() != ids.extent(0))
            throw error(
                errc::shape_mismatch, "forward_cached",
                ftune::detail::cat("the cache holds ", cache.layers(), " layers of ", cache.batch(),
                                   " sequences; the model has ", layer.size(), " layers and ids ",
                                   ids.shape().to_string()));
        cache.begin_step(attention_mask.empty() ? nullptr : attention_mask.data(), ids.extent(1));
        // learned positions: each row's own (left padding), as the cache counts them
        output_view h = [&] {
            if constexpr (!layers::is_absent<typename Embeddings::positions_type>)
                return embeddings.forward_at(ctx, ids, cache.positions(),
                                             cache.length() + ids.extent(1));
            else
                return embeddings.forward(ctx, ids, {});
        }();
        for (std::size_t i = 0; i < layer.size(); ++i)
            h = layer[i].forward_cached(ctx, h, cache, i);
        cache.end_step();
        return normed(ctx, h);
    }

    /// Whether the last forward ran the prepared inference path (backward would throw).
    bool kept_nothing_for_backward() const noexcept {
        return !layer.empty() && layer.back().kept_nothing_for_backward();
    }

    /// Whether eval-mode forwards use packed weights (prepare_inference(), not since ended by a
    /// train-mode forward).
    bool inference_prepared() const noexcept {
        return !layer.empty() && layer.back().inference_prepared();
    }

    /// Hidden size C.
    std::size_t hidden_size() const noexcept { return embeddings.token.weight.value.extent(1); }

    /// The input embedding table (V, C) (a tied LM head's decoder is this table).
    auto& input_embeddings() noexcept { return embeddings.token.weight; }
    /// The id that pads sequences: the token table's padding_idx (0 when it has none).
    token_id pad_token_id() const noexcept {
        return embeddings.token.padding_idx < 0 ? 0 : embeddings.token.padding_idx;
    }

    /// Accumulates every trainable parameter's gradient from d loss / d hidden states (B, T, C),
    /// or (B, 1, C) after a kept forward_first_tokens. Below the lowest layer that trains (frozen
    /// embeddings and lower layers) nothing is computed.
    void backward(context& ctx, output_view dout) {
        d_[0].resize(input_shape_);  // (B, T, C) between the blocks
        d_[1].resize(input_shape_);
        output_view d = dout;
        if constexpr (has_final_norm) {  // d h = norm backward (dout)
            const std::size_t N = dout.extent(0) * dout.extent(1), Cn = dout.extent(2);
            d_final_.resize(dout.shape());
            layers::backward_into(final_norm, ctx,
                                  typename FinalNorm::output_view{dout.data(), N, Cn},
                                  typename FinalNorm::d_input_view{d_final_.data(), N, Cn});
            gradients_final(ctx, [&](auto f) { final_norm.visit_parameters("", f); });
            d = d_final_.view();
        }
        const bool emb = embeddings.trainable();
        std::size_t lowest = 0;  // the lowest layer whose parameters (or those below) train
        if (!emb) {
            lowest = layer.size();
            for (std::size_t i = 0; i < layer.size(); ++i)
                if (layer[i].trainable()) {
                    lowest = i;
                    break;
                }
        }
        for (std::size_t i = layer.size(); i-- > lowest;) {
            if (i == lowest && !emb) {  // no one below needs d input
                layer[i].backward(ctx, d, {});
                gradients_final(ctx, [&](auto f) { layer[i].visit_parameters("", f); });
                return;
            }
            auto& next = d_[i % 2];
            layers::backward_into(layer[i], ctx, d, next.view());  // written, not added to
            gradients_final(ctx, [&](auto f) { layer[i].visit_parameters("", f); });
            d = next.view();
        }
        if (emb) {
            embeddings.backward(ctx, d);
            gradients_final(ctx, [&](auto f) { embeddings.visit_parameters("", f); });
        }
    }

    /// Packs every block's weights for low-latency inference (linear::prepare_inference): eval-mode
    /// forwards then skip the per-call packing and run the fused attention. Visits that may change
    /// the weights make the next eval-mode forward pack again; a train-mode forward ends the
    /// prepared mode; call it again after writing parameters directly.
    void prepare_inference(precision p = precision::fp32) {
        for (auto& block : layer) block.prepare_inference(p);
    }

    /// Sets every gradient to zero.
    void zero_grad() {
        embeddings.zero_grad();
        for (auto& block : layer) block.zero_grad();
        if constexpr (has_final_norm) final_norm.zero_grad();
    }

    /// Visits every parameter with the family's names (BERT: "embeddings.word_embeddings.weight",
    /// "encoder.layer.0.attention.self.query.weight", ...), prefixed by `prefix`.
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        embeddings.visit_parameters(join_name(prefix, Names::embeddings), f);
        const std::string blocks = join_name(prefix, Names::layers);
        for (std::size_t i = 0; i < layer.size(); ++i)
            layer[i].visit_parameters(join_name(blocks, std::to_string(i)), f);
        if constexpr (has_final_norm)
            final_norm.visit_parameters(join_name(prefix, Names::final_norm), f);
    }

  private:
    // h itself without a final norm; the final norm of h's rows otherwise
    output_view normed(context& ctx, output_view h) {
        if constexpr (!has_final_norm) {
            return h;
        } else {
            const std::size_t B = h.extent(0), Tn = h.extent(1), Cn = h.extent(2);
            const auto y = final_norm.forward(ctx, {h.data(), B * Tn, Cn});  // (B*T, C)
            return {y.data(), B, Tn, Cn};
        }
    }

    // mask_ (B, T) = 0 for tokens, the lowest T for padding (additive, as Hugging Face)
    void set_key_mask(ids_view ids, ids_view attention_mask) {
        mask_.resize(shape<dynamic, dynamic>(ids.extent(0), ids.extent(1)));
        ops::key_mask(mask_, attention_mask);
    }

    buffer<T, shape<dynamic, dynamic>, D> mask_;     // (B, T) additive key mask
    buffer<token_id, shape<dynamic>, D> positions_;  // (N) positions of a ragged batch
    typename output_view::shape_type input_shape_;   // (B, T, C) the blocks' input, last forward
    buffer<T, typename output_view::shape_type, D> d_[2],
        d_final_;  // (B, T, C) gradients between blocks; (B, T or 1, C) before the final norm
};

}  // namespace blocks
FTUNE_NAMESPACE_END
