// ftune::bert: the BERT encoder, a stack of BERT embeddings and a run-time number of encoder
// blocks, and its configuration.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ftune/blocks.hpp"

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
    ops::activation hidden_act =
        ops::activation::gelu;        ///< hidden_act (gelu, gelu_new, relu, silu)
    std::size_t num_labels = 2;       ///< num_labels: outputs of a classification head
    double classifier_dropout = -1;   ///< classifier_dropout (< 0: hidden_dropout_prob)
    double initializer_range = 0.02;  ///< initializer_range: std of newly initialized weights
    std::string problem_type;  ///< problem_type of a sequence classifier ("": from num_labels;
                               ///< single_label_classification, multi_label_classification,
                               ///< regression)
};

/// The FFN activation Hugging Face names hidden_act ("gelu", "gelu_new", "relu", "silu"); throws
/// ftune::error for others.
inline ops::activation activation_from_hf(std::string_view name) {
    if (name == "gelu") return ops::activation::gelu;
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return ops::activation::gelu_tanh;
    if (name == "relu") return ops::activation::relu;
    if (name == "silu" || name == "swish") return ops::activation::silu;
    throw error(errc::unsupported, "hidden_act",
                "\"" + std::string(name) + "\": ftune runs gelu, gelu_new, relu and silu");
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
        case ops::activation::silu:
            return "silu";
        case ops::activation::tanh:
            break;
    }
    throw error(errc::unsupported, "hidden_act", "tanh is not a BERT FFN activation");
}

/// BertModel without the pooler: ids (B, T) -> hidden states (B, T, C), as a blocks::stack of
/// BERT's input layer (word + position + type embeddings, LayerNorm) and post-norm encoder blocks,
/// without a final norm. C and F may be static; Parts gives the blocks' layer types and the device
/// (blocks::bert_parts<T>: on the CPU, FFN activation chosen by config::hidden_act;
/// bert_parts<T, device::reference> runs the same model on the reference backend).
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic,
          class Norm = blocks::post_norm, class Parts = blocks::bert_parts<T>>
class encoder : public blocks::stack<layers::bert_embeddings<T, C, typename Parts::device_type>,
                                     blocks::encoder_block<T, C, F, Norm, Parts>, layers::absent,
                                     blocks::bert_stack_names> {
    using base = blocks::stack<layers::bert_embeddings<T, C, typename Parts::device_type>,
                               blocks::encoder_block<T, C, F, Norm, Parts>, layers::absent,
                               blocks::bert_stack_names>;

  public:
    using config_type = bert::config;  ///< what it is built from
    /// The same encoder on device D2 (its parts' form there).
    template <device_tag D2>
    using on_device = encoder<T, C, F, Norm, typename Parts::template on_device<D2>>;
    static constexpr std::size_t hidden_extent = C;                  ///< C (or dynamic)
    static constexpr std::string_view architecture_prefix = "Bert";  ///< "BertFor..."
    static constexpr std::string_view base_model_prefix = "bert";    ///< "bert.embeddings..."

    /// A zero-initialized encoder of the given configuration.
    explicit encoder(const config& c)
        : base(typename base::embeddings_type(
                   layers::embedding_sizes{.vocab = c.vocab_size,
                                           .features = c.hidden_size,
                                           .max_positions = c.max_position_embeddings,
                                           .type_vocab = c.type_vocab_size,
                                           .norm_eps = c.layer_norm_eps,
                                           .dropout = c.hidden_dropout_prob,
                                           .pad_id = c.pad_token_id}),
               layers::absent{}) {
        this->layer.reserve(c.num_hidden_layers);
        for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
            this->layer.emplace_back(blocks::block_sizes{
                c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_dropout_prob,
                c.attention_probs_dropout_prob, c.layer_norm_eps, c.hidden_act});
    }
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
