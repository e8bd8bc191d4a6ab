// ftune::bert: the BERT encoder, embeddings + a run-time number of encoder blocks (+ pooler).
#pragma once

#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/blocks.hpp"
#include "ftune/layers/bert_embeddings.hpp"

FTUNE_NAMESPACE_BEGIN
namespace bert {

/// The sizes of a BERT model (Hugging Face config.json names in the comments).
struct config {
    std::size_t vocab_size = 30522;             ///< vocab_size
    std::size_t hidden_size = 768;              ///< hidden_size
    std::size_t num_hidden_layers = 12;         ///< num_hidden_layers
    std::size_t num_attention_heads = 12;       ///< num_attention_heads
    std::size_t intermediate_size = 3072;       ///< intermediate_size
    std::size_t max_position_embeddings = 512;  ///< max_position_embeddings
    std::size_t type_vocab_size = 2;            ///< type_vocab_size
    double hidden_dropout_prob = 0.1;           ///< hidden_dropout_prob
    double attention_probs_dropout_prob = 0.1;  ///< attention_probs_dropout_prob
    double layer_norm_eps = 1e-12;              ///< layer_norm_eps
    token_id pad_token_id = 0;  ///< pad_token_id: its word embedding gets no gradient
    ops::activation hidden_act = ops::activation::gelu;  ///< hidden_act (gelu, gelu_new, relu)
    std::size_t num_labels = 2;       ///< num_labels: outputs of a classification head
    double classifier_dropout = -1;   ///< classifier_dropout (< 0: hidden_dropout_prob)
    double initializer_range = 0.02;  ///< initializer_range: std of newly initialized weights
    std::string problem_type;  ///< problem_type of a sequence classifier ("": from num_labels;
                               ///< single_label_classification, multi_label_classification,
                               ///< regression)
};

/// The FFN activation Hugging Face names hidden_act ("gelu", "gelu_new", "relu"); throws
/// ftune::error for others.
inline ops::activation activation_from_hf(std::string_view name) {
    if (name == "gelu") return ops::activation::gelu;
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return ops::activation::gelu_tanh;
    if (name == "relu") return ops::activation::relu;
    throw error(errc::unsupported, "hidden_act",
                "\"" + std::string(name) + "\": ftune runs gelu, gelu_new and relu");
}

/// Hugging Face's hidden_act name of an FFN activation.
inline std::string_view activation_to_hf(ops::activation a) {
    switch (a) {
        case ops::activation::gelu:
            return "gelu";
        case ops::activation::gelu_tanh:
            return "gelu_new";
        case ops::activation::relu:
            return "relu";
        case ops::activation::tanh:
            break;
    }
    throw error(errc::unsupported, "hidden_act", "tanh is not a BERT FFN activation");
}

/// BertModel without the pooler: ids (B, T) -> hidden states (B, T, C). C and F may be static;
/// Parts gives the blocks' layer types and the device (blocks::bert_parts<T>: on the CPU, FFN
/// activation chosen by config::hidden_act; bert_parts<T, device::reference> runs the same model
/// on the reference backend).
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic,
          class Norm = blocks::post_norm, class Parts = blocks::bert_parts<T>>
class encoder {
    using D = typename Parts::device_type;

  public:
    using value_type = T;                                               ///< scalar type
    using device_type = D;                                              ///< where the tensors live
    using config_type = bert::config;                                   ///< what it is built from
    static constexpr std::size_t hidden_extent = C;                     ///< C (or dynamic)
    static constexpr std::string_view architecture_prefix = "Bert";     ///< "BertFor..."
    static constexpr std::string_view base_model_prefix = "bert";       ///< "bert.embeddings..."
    using block_type = blocks::encoder_block<T, C, F, Norm, Parts>;     ///< one layer
    using ids_view = view<const token_id, shape<dynamic, dynamic>, D>;  ///< (B, T)
    using output_view = view<const T, shape<dynamic, dynamic, C>, D>;   ///< (B, T, C)

    layers::bert_embeddings<T, C, D> embeddings;  ///< "embeddings"
    std::vector<block_type> layer;                ///< "encoder.layer.N"

    /// A zero-initialized encoder of the given configuration.
    explicit encoder(const config& c)
        : embeddings(c.vocab_size, c.max_position_embeddings, c.type_vocab_size, c.hidden_size,
                     T(c.layer_norm_eps), T(c.hidden_dropout_prob), c.pad_token_id) {
        layer.reserve(c.num_hidden_layers);
        for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
            layer.emplace_back(blocks::block_sizes{
                c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_dropout_prob,
                c.attention_probs_dropout_prob, c.layer_norm_eps, c.hidden_act});
    }

    /// Hidden states of ids; attention_mask (B, T) holds 1 for tokens and 0 for padding (empty:
    /// all tokens), token_types may be empty (all 0).
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        set_key_mask(ids, attention_mask);
        output_view h = embeddings.forward(ctx, ids, token_types);
        for (auto& block : layer) h = block.forward(ctx, h, mask_.view());
        return h;
    }

    /// Eval-mode hidden states of the first token of each sequence, (B, 1, C): the rows
    /// forward() gives at position 0, bit for bit, with the last layer computed for those rows
    /// only (its keys and values still cover every position). What a [CLS] classifier reads;
    /// about 1/L of the work less. Needs prepare_inference(); keeps nothing for backward.
    output_view forward_first_tokens(context& ctx, ids_view ids, ids_view attention_mask = {},
                                     ids_view token_types = {}) {
        if (ctx.training() || !inference_prepared())
            throw error(errc::invalid_argument, "encoder::forward_first_tokens",
                        "runs on an encoder prepared for inference (prepare_inference()), in "
                        "eval mode");
        set_key_mask(ids, attention_mask);
        output_view h = embeddings.forward(ctx, ids, token_types);
        for (std::size_t i = 0; i + 1 < layer.size(); ++i)
            h = layer[i].forward(ctx, h, mask_.view());
        return layer.back().forward_first(ctx, h, mask_.view());
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
    std::size_t hidden_size() const noexcept { return embeddings.norm.weight.value.extent(0); }

    /// The input embedding table (V, C) (a masked-LM head's decoder is tied to it).
    auto& input_embeddings() noexcept { return embeddings.word_embeddings.weight; }
    /// The id that pads sequences: the word table's padding_idx (0 when it has none).
    token_id pad_token_id() const noexcept {
        return embeddings.word_embeddings.padding_idx < 0 ? 0
                                                          : embeddings.word_embeddings.padding_idx;
    }

    /// Accumulates every trainable parameter's gradient from d loss / d hidden states. Below the
    /// lowest layer that trains (frozen embeddings and lower layers) nothing is computed.
    void backward(context& ctx, output_view dout) {
        d_[0].resize(dout.shape());
        d_[1].resize(dout.shape());
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
        output_view d = dout;
        for (std::size_t i = layer.size(); i-- > lowest;) {
            if (i == lowest && !emb) {  // no one below needs d input
                layer[i].backward(ctx, d, {});
                return;
            }
            auto& next = d_[i % 2];
            next.fill(T(0));
            layer[i].backward(ctx, d, next.view());
            d = next.view();
        }
        if (emb) embeddings.backward(ctx, d);
    }

    /// Packs every block's weights for low-latency inference (linear::prepare_inference): eval-mode
    /// forwards then skip the per-call packing and run the fused attention. Visits that may change
    /// the weights make the next eval-mode forward pack again; a train-mode forward ends the
    /// prepared mode; call it again after writing parameters directly.
    void prepare_inference() {
        for (auto& block : layer) block.prepare_inference();
    }

    /// Sets every gradient to zero.
    void zero_grad() noexcept {
        embeddings.zero_grad();
        for (auto& block : layer) block.zero_grad();
    }

    /// Visits every parameter with Hugging Face's BertModel names
    /// ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight", ...),
    /// prefixed by `prefix`.
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        embeddings.visit_parameters(join_name(prefix, "embeddings"), f);
        const std::string enc = join_name(prefix, "encoder.layer");
        for (std::size_t i = 0; i < layer.size(); ++i)
            layer[i].visit_parameters(join_name(enc, std::to_string(i)), f);
    }

  private:
    // mask_ (B, T) = 0 for tokens, the lowest T for padding (additive, as Hugging Face)
    void set_key_mask(ids_view ids, ids_view attention_mask) {
        const std::size_t B = ids.extent(0), Tn = ids.extent(1);
        mask_.resize(shape<dynamic, dynamic>(B, Tn));
        for (std::size_t i = 0; i < B * Tn; ++i)
            mask_.data()[i] = attention_mask.empty() || attention_mask.data()[i] != 0
                                  ? T(0)
                                  : std::numeric_limits<T>::lowest();
    }

    buffer<T, shape<dynamic, dynamic>, D> mask_;     // (B, T) additive key mask
    buffer<T, shape<dynamic, dynamic, C>, D> d_[2];  // (B, T, C) gradients between blocks
};

/// Compile-time sizes of a BERT encoder; use ftune::dynamic for sizes known at run time.
struct dims {
    std::size_t hidden = dynamic;  ///< hidden_size
    std::size_t heads = dynamic;   ///< num_attention_heads
    std::size_t ffn = dynamic;     ///< intermediate_size
};

/// True when the static sizes fit together (the head count divides the hidden size).
template <dims D>
inline constexpr bool valid_dims = D.hidden == dynamic || D.heads == dynamic ||
                                   (D.heads > 0 && D.hidden % D.heads == 0);

/// The BERT encoder with sizes fixed by D, e.g. Encoder<dims{.hidden = 384, .heads = 12, .ffn =
/// 1536}> for MiniLM-L12-H384; Encoder<dims{}> is fully dynamic (sizes from the config at run
/// time).
template <dims Dims, scalar T = float, class Norm = blocks::post_norm,
          class Parts = blocks::bert_parts<T>>
requires(valid_dims<Dims>) class Encoder : public encoder<T, Dims.hidden, Dims.ffn, Norm, Parts> {
  public:
    /// An encoder whose config must agree with D (throws shape_mismatch naming the field
    /// otherwise).
    explicit Encoder(const config& c)
        : encoder<T, Dims.hidden, Dims.ffn, Norm, Parts>(checked(c)) {}

  private:
    static const config& checked(const config& c) {
        auto check = [](std::size_t want, std::size_t got, const char* field) {
            if (want != dynamic && want != got)
                throw error(errc::shape_mismatch, field,
                            ftune::detail::cat("the model type fixes ", want,
                                               " but the configuration says ", got,
                                               "; use the matching bert::dims or ftune::dynamic"));
        };
        check(Dims.hidden, c.hidden_size, "hidden_size");
        check(Dims.heads, c.num_attention_heads, "num_attention_heads");
        check(Dims.ffn, c.intermediate_size, "intermediate_size");
        return c;
    }
};

}  // namespace bert
FTUNE_NAMESPACE_END
