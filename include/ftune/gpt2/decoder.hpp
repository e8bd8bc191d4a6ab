// ftune::gpt2: the GPT-2 family's backbone (GPT2Model) as a composition: token and learned
// position tables ("wte", "wpe"), pre-norm decoder blocks (LayerNorm, causal multi-head attention
// with biased projections, the gelu_new MLP), a final LayerNorm ("ln_f"). Its configuration
// carries ftune's field names; config.json's (n_embd, n_layer, ...) are read by io::hf_family.
// Checkpoints store the attention's q, k and v fused in one Conv1D ("c_attn", (in, out)): the
// family's checkpoint slots cut them apart and transpose them on load, and fuse them back on save.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

#include "ftune/blocks.hpp"
#include "ftune/layers/mlp.hpp"

FTUNE_NAMESPACE_BEGIN
namespace gpt2 {

/// The sizes of a GPT-2 model (Hugging Face GPT2Config names in the comments).
struct config {
    std::size_t vocab_size = 50257;              ///< vocab_size
    std::size_t hidden_size = 768;               ///< n_embd
    std::size_t intermediate_size = 3072;        ///< n_inner (null: 4 n_embd)
    std::size_t num_hidden_layers = 12;          ///< n_layer
    std::size_t num_attention_heads = 12;        ///< n_head
    std::size_t max_position_embeddings = 1024;  ///< n_positions
    double layer_norm_eps = 1e-5;                ///< layer_norm_epsilon
    bool tie_word_embeddings = true;             ///< tie_word_embeddings (LM head = wte)
    ops::activation hidden_act = ops::activation::gelu_tanh;  ///< activation_function (gelu_new)
    token_id pad_token_id = -1;                               ///< pad_token_id (-1: none)
    token_id bos_token_id = 50256;                            ///< bos_token_id
    token_id eos_token_id = 50256;                            ///< eos_token_id
    std::size_t num_labels = 2;  ///< num_labels (a classification head's outputs)
    std::string problem_type;    ///< problem_type of a sequence classifier ("": from num_labels)
    double initializer_range = 0.02;  ///< initializer_range
    double resid_pdrop = 0.1;         ///< resid_pdrop: dropout of attention and MLP outputs
    double embd_pdrop = 0.1;          ///< embd_pdrop: dropout of the summed embeddings
    double attn_pdrop = 0.1;          ///< attn_pdrop: dropout of the attention probabilities

    /// The size of one attention head.
    std::size_t head_size() const noexcept { return hidden_size / num_attention_heads; }
};

/// The input layer's pieces: the token table "wte" and the learned position table "wpe".
struct embedding_pieces {
    template <scalar T, std::size_t C, device_tag D>
    using positions = layers::embedding<T, C, D>;  ///< learned positions
    template <scalar T, std::size_t C, device_tag D>
    using token_types = layers::absent;  ///< none
    template <scalar T, std::size_t C, device_tag D>
    using norm = layers::absent;                              ///< none (the blocks' norms)
    static constexpr std::string_view token_name = "wte";     ///< token table
    static constexpr std::string_view position_name = "wpe";  ///< position table
    static constexpr std::string_view type_name = "";         ///< unused
    static constexpr std::string_view norm_name = "";         ///< unused
};

/// GPT-2's layer types on device D and their names: LayerNorm ("ln_1", "ln_2"), causal
/// multi-head attention ("attn": q, k, v and the output projection with biases, no rotation),
/// the MLP ("mlp": c_fc, gelu_new, c_proj).
template <scalar T, device_tag D = device::cpu>
struct parts {
    using value_type = T;   ///< scalar type
    using device_type = D;  ///< where the block's tensors live
    /// The same parts on device D2.
    template <device_tag D2>
    using on_device = parts<T, D2>;
    static constexpr std::string_view norm1_name = "ln_1";      ///< first norm
    static constexpr std::string_view attention_name = "attn";  ///< attention
    static constexpr std::string_view norm2_name = "ln_2";      ///< second norm
    static constexpr std::string_view mlp_name = "mlp";         ///< feed-forward
    /// the two norms: (N, C) -> (N, C)
    template <std::size_t C>
    using norm = layers::layer_norm<T, C, D>;
    /// the attention with its output projection: (B, T, C) -> (B, T, C)
    template <std::size_t C>
    using attention =
        layers::rotary_attention<T, C, D, layers::lora_projection<T, D, true>::template type>;
    /// the feed-forward: (N, C) -> (N, C)
    template <std::size_t C, std::size_t F>
    using mlp =
        layers::mlp<T, C, F, D, layers::lora_linear<T, C, F, D>, layers::lora_linear<T, F, C, D>>;
};

/// Where ftune's GPT-2 module `name` sits among Hugging Face's (the names its checkpoints, PEFT's
/// target_modules and adapter files use): "….attn.q_proj" is part 0 of the 3 of "….attn.c_attn"
/// (k_proj 1, v_proj 2), "….attn.o_proj" is "….attn.c_proj"; the MLP's c_fc and c_proj, and
/// every other module, keep their names.
inline module_slot hf_module(std::string_view name) {
    static constexpr std::string_view qkv[] = {"attn.q_proj", "attn.k_proj", "attn.v_proj"};
    const std::string stem(name.substr(0, name.size() - std::min<std::size_t>(name.size(), 6)));
    for (std::size_t i = 0; i < 3; ++i)
        if (module_ends_with(name, qkv[i])) return {stem + "c_attn", i, 3};
    if (module_ends_with(name, "attn.o_proj")) return {stem + "c_proj", 0, 1};
    return {std::string(name), 0, 1};
}

/// GPT2Model's names: "wte", "wpe", "h.N", "ln_f".
struct stack_names {
    static constexpr std::string_view embeddings = "";      ///< the tables under the prefix
    static constexpr std::string_view layers = "h";         ///< block i is "h.i"
    static constexpr std::string_view final_norm = "ln_f";  ///< the final LayerNorm
};

/// GPT2Model: ids (B, T) -> hidden states (B, T, C) after the final norm. C and F may be static.
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic, class Parts = gpt2::parts<T>>
class decoder
    : public blocks::stack<
          layers::input_embeddings<T, C, typename Parts::device_type, embedding_pieces>,
          blocks::decoder_block<T, C, F, Parts>, typename Parts::template norm<C>, stack_names> {
    using base =
        blocks::stack<layers::input_embeddings<T, C, typename Parts::device_type, embedding_pieces>,
                      blocks::decoder_block<T, C, F, Parts>, typename Parts::template norm<C>,
                      stack_names>;

  public:
    using config_type = gpt2::config;  ///< what it is built from
    /// The same decoder on device D2 (its parts' form there).
    template <device_tag D2>
    using on_device = decoder<T, C, F, typename Parts::template on_device<D2>>;
    static constexpr std::size_t hidden_extent = C;                       ///< C (or dynamic)
    static constexpr std::string_view architecture_prefix = "GPT2";       ///< "GPT2For..."
    static constexpr std::string_view base_model_prefix = "transformer";  ///< "transformer.h..."
    /// Heads whose Transformers class is not prefix + suffix (no `value`: prefix + suffix).
    template <class Head>
    struct head_architecture {};
    /// The causal LM head's: GPT2LMHeadModel.
    template <class Head>
    requires(Head::architecture_suffix ==
             std::string_view("ForCausalLM")) struct head_architecture<Head> {
        static constexpr std::string_view value = "GPT2LMHeadModel";  ///< Transformers' class
    };

    /// Where module `name` sits among Hugging Face's modules (gpt2::hf_module).
    static module_slot hf_module_of(std::string_view name) { return gpt2::hf_module(name); }

    /// A zero-initialized decoder of the given configuration (norm weights 1). Every token row
    /// learns (GPT2Model's wte has no padding_idx, whatever pad_token_id says).
    explicit decoder(const config& c)
        : base(typename base::embeddings_type(
                   layers::embedding_sizes{.vocab = c.vocab_size,
                                           .features = c.hidden_size,
                                           .max_positions = c.max_position_embeddings,
                                           .dropout = c.embd_pdrop}),
               typename Parts::template norm<C>(c.hidden_size, T(c.layer_norm_eps))) {
        this->layer.reserve(c.num_hidden_layers);
        for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
            this->layer.emplace_back(
                blocks::decoder_sizes{c.hidden_size, c.num_attention_heads, c.num_attention_heads,
                                      c.head_size(), c.intermediate_size, /*rope_theta=*/0,
                                      c.layer_norm_eps, c.hidden_act, c.resid_pdrop, c.attn_pdrop});
    }
};

}  // namespace gpt2
FTUNE_NAMESPACE_END
