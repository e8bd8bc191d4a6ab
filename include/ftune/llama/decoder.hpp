// ftune::llama: the Llama family's backbone (LlamaModel: SmolLM2, Llama 2/3, TinyLlama, ...) as a
// composition: a token table, pre-norm decoder blocks (RMSNorm, rotary grouped-query attention,
// gated SiLU MLP), a final RMSNorm. Its configuration carries config.json's names.
#pragma once

#include <string>
#include <string_view>

#include "ftune/blocks.hpp"

FTUNE_NAMESPACE_BEGIN
namespace llama {

/// The sizes of a Llama model (Hugging Face config.json names in the comments).
struct config {
    std::size_t vocab_size = 32000;              ///< vocab_size
    std::size_t hidden_size = 4096;              ///< hidden_size
    std::size_t intermediate_size = 11008;       ///< intermediate_size
    std::size_t num_hidden_layers = 32;          ///< num_hidden_layers
    std::size_t num_attention_heads = 32;        ///< num_attention_heads
    std::size_t num_key_value_heads = 32;        ///< num_key_value_heads (grouped-query attention)
    std::size_t head_dim = 0;                    ///< head_dim (0: hidden_size / heads)
    std::size_t max_position_embeddings = 2048;  ///< max_position_embeddings
    double rms_norm_eps = 1e-6;                  ///< rms_norm_eps
    double rope_theta = 10000.0;                 ///< rope_theta
    bool tie_word_embeddings = false;            ///< tie_word_embeddings (LM head = token table)
    ops::activation hidden_act = ops::activation::silu;  ///< hidden_act
    token_id pad_token_id = -1;                          ///< pad_token_id (-1: none)
    token_id bos_token_id = 1;                           ///< bos_token_id
    token_id eos_token_id = 2;                           ///< eos_token_id
    std::size_t num_labels = 2;  ///< num_labels (a classification head's outputs)
    std::string problem_type;    ///< problem_type of a sequence classifier ("": from num_labels)
    double initializer_range = 0.02;  ///< initializer_range

    /// The size of one attention head.
    std::size_t head_size() const noexcept {
        return head_dim != 0 ? head_dim : hidden_size / num_attention_heads;
    }
};

/// The input layer's pieces: the token table alone ("embed_tokens"); positions are rotary.
struct embedding_pieces {
    template <scalar T, std::size_t C, device_tag D>
    using positions = layers::absent;  ///< none: rotary, inside attention
    template <scalar T, std::size_t C, device_tag D>
    using token_types = layers::absent;  ///< none
    template <scalar T, std::size_t C, device_tag D>
    using norm = layers::absent;                                    ///< none
    static constexpr std::string_view token_name = "embed_tokens";  ///< token table
    static constexpr std::string_view position_name = "";           ///< unused
    static constexpr std::string_view type_name = "";               ///< unused
    static constexpr std::string_view norm_name = "";               ///< unused
};

/// LlamaModel's names: "embed_tokens", "layers.N", "norm".
struct stack_names {
    static constexpr std::string_view embeddings = "";      ///< the table under the prefix
    static constexpr std::string_view layers = "layers";    ///< block i is "layers.i"
    static constexpr std::string_view final_norm = "norm";  ///< the final RMSNorm
};

/// LlamaModel: ids (B, T) -> hidden states (B, T, C) after the final norm. C and F may be
/// static; Parts gives the blocks' layer types and the device (blocks::llama_parts<T>).
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic,
          class Parts = blocks::llama_parts<T>>
class decoder
    : public blocks::stack<
          layers::input_embeddings<T, C, typename Parts::device_type, embedding_pieces>,
          blocks::decoder_block<T, C, F, Parts>, typename Parts::template norm<C>, stack_names> {
    using base =
        blocks::stack<layers::input_embeddings<T, C, typename Parts::device_type, embedding_pieces>,
                      blocks::decoder_block<T, C, F, Parts>, typename Parts::template norm<C>,
                      stack_names>;

  public:
    using config_type = llama::config;  ///< what it is built from
    /// The same decoder on device D2 (its parts' form there).
    template <device_tag D2>
    using on_device = decoder<T, C, F, typename Parts::template on_device<D2>>;
    static constexpr std::size_t hidden_extent = C;                   ///< C (or dynamic)
    static constexpr std::string_view architecture_prefix = "Llama";  ///< "LlamaFor..."
    static constexpr std::string_view base_model_prefix = "model";    ///< "model.layers..."

    /// A zero-initialized decoder of the given configuration (norm weights 1).
    explicit decoder(const config& c)
        : base(typename base::embeddings_type(layers::embedding_sizes{
                   .vocab = c.vocab_size, .features = c.hidden_size, .pad_id = c.pad_token_id}),
               typename Parts::template norm<C>(c.hidden_size, T(c.rms_norm_eps))) {
        this->layer.reserve(c.num_hidden_layers);
        for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
            this->layer.emplace_back(blocks::decoder_sizes{
                c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_size(),
                c.intermediate_size, c.rope_theta, c.rms_norm_eps, c.hidden_act});
    }
};

}  // namespace llama
FTUNE_NAMESPACE_END
