// io: Hugging Face model directories — config.json, model.safetensors, vocab.txt and
// tokenizer_config.json. Loading matches parameters by name with every shape validated and every
// problem reported at once (load_parameters, load_hf); saving writes a directory Transformers'
// from_pretrained loads, atomically (save_hf).
#pragma once

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/data/relations.hpp"
#include "ftune/io/safetensors.hpp"
#include "ftune/bert/tasks.hpp"
#include "ftune/gpt2/tasks.hpp"
#include "ftune/llama/tasks.hpp"
#include "ftune/text/bert.hpp"
#include "ftune/text/tokenizer_json.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// Where a parameter lives in a checkpoint and how the file's layout differs from ftune's: the
/// tensor's name, a transpose (GPT-2's Conv1D stores (in, out); ftune's linear keeps (out, in)),
/// and a slice (GPT-2's c_attn fuses q, k and v: each is part i of 3 along the output axis).
/// Loading cuts a parameter out of the file's tensor; saving fuses the parts back.
struct checkpoint_slot {
    std::string name;         ///< the tensor's name in the file
    bool transposed = false;  ///< the file holds the (2-D) parameter transposed
    std::size_t part = 0;     ///< which of `parts` equal slices of the file's tensor it is
    std::size_t parts = 1;    ///< how many parameters share the tensor (1: it is the whole tensor)
    std::size_t axis = 0;     ///< the file tensor's axis the slices follow one another along
};

namespace detail {
/// Reads config.json field `key` of j into out: a positive integer below 2^26 (no product of
/// sizes overflows); `where` names the file in errors. A missing field throws when required and
/// leaves out unchanged otherwise.
inline void config_size(const nlohmann::json& j, const std::string& where, const char* key,
                        std::size_t& out, bool required) {
    if (!j.contains(key) || j[key].is_null()) {
        if (required)
            throw error(errc::parse, where + ": " + key,
                        "missing; the model's config.json gives it");
        return;
    }
    if (!j[key].is_number_unsigned() || j[key].get<std::uint64_t>() == 0)
        throw error(errc::parse, where + ": " + key, "must be a positive integer");
    if (j[key].get<std::uint64_t>() > (std::uint64_t(1) << 26))
        throw error(errc::parse, where + ": " + key,
                    ftune::detail::cat(j[key].get<std::uint64_t>(),
                                       " is beyond any real model (at most 2^26)"));
    out = j[key].get<std::size_t>();
}
/// Reads config.json field `key` of j into out when present: a number in [lo, hi).
inline void config_real(const nlohmann::json& j, const std::string& where, const char* key,
                        double& out, double lo, double hi) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number()) throw error(errc::parse, where + ": " + key, "must be a number");
    out = j[key].get<double>();
    if (!(out >= lo && out < hi))  // NaN fails too
        throw error(errc::parse, where + ": " + key,
                    ftune::detail::cat(out, " is outside [", lo, ", ", hi, ")"));
}
/// Reads config.json field `key` of j (when present) as an activation's name into `name` and
/// the activation into `out`; `where` names the file in errors (not a string, or an activation
/// ftune does not run).
inline void config_activation(const nlohmann::json& j, const std::string& where, const char* key,
                              std::string& name, ops::activation& out) {
    if (j.contains(key)) {
        if (!j[key].is_string()) throw error(errc::parse, where + ": " + key, "must be a string");
        name = j[key].get<std::string>();
    } else if (name.empty()) {
        return;
    }
    try {
        out = bert::activation_from_hf(name);
    } catch (const error& e) {
        throw error(errc::unsupported, where + ": " + key, e.message());
    }
}
/// Reads a decoder's tie_word_embeddings and pad/bos/eos token ids of j into c (those present).
template <class Config>
void config_decoder_tokens(const nlohmann::json& j, Config& c) {
    if (j.contains("tie_word_embeddings") && j["tie_word_embeddings"].is_boolean())
        c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
    auto id = [&](const char* key, token_id& out) {
        if (j.contains(key) && j[key].is_number_integer()) out = j[key].get<token_id>();
    };
    id("pad_token_id", c.pad_token_id);
    id("bos_token_id", c.bos_token_id);
    id("eos_token_id", c.eos_token_id);
}
/// Writes a decoder's tie_word_embeddings and token ids into j (no padding token: null).
template <class Config>
void write_decoder_tokens(const Config& c, nlohmann::json& j) {
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    if (c.pad_token_id >= 0)
        j["pad_token_id"] = c.pad_token_id;
    else
        j["pad_token_id"] = nullptr;
    j["bos_token_id"] = c.bos_token_id;
    j["eos_token_id"] = c.eos_token_id;
}
}  // namespace detail

/// How a model family's config.json and checkpoints read into ftune and back: one
/// specialization per family, keyed by the family's config type (BERT's below). load_hf and
/// save_hf use the model's (Model::config_type); a directory's family is the one its config.json's
/// model_type names (with_family).
template <class Config>
struct hf_family;

/// BERT (model_type "bert"): config.json's fields as Transformers' BertConfig; parameter names as
/// BertModel's, with or without the task models' "bert." prefix, and the legacy LayerNorm names
/// gamma/beta of old checkpoints. Weights are stored as ftune keeps them (no transpose, split or
/// fused tensor: checkpoint_names gives plain names; a family whose files differ in layout gives
/// checkpoint_slots instead, see io::checkpoint_slot).
template <>
struct hf_family<bert::config> {
    static constexpr std::string_view model_type = "bert";  ///< config.json's model_type
    using tokenizer_type = text::bert_tokenizer;            ///< WordPiece (vocab.txt)
    /// The family's backbone computing in T (the task models put a head on it).
    template <scalar T>
    using backbone = bert::encoder<T>;

    /// Reads BertConfig's fields of j into c (hidden_act also as written); `where` names the file
    /// in errors. Every size is a positive integer below 2^26; rates are in [0, 1).
    static void read_config(const nlohmann::json& j, const std::string& where, bert::config& c,
                            std::string& hidden_act) {
        auto size = [&](const char* key, std::size_t& out, bool required) {
            detail::config_size(j, where, key, out, required);
        };
        auto real = [&](const char* key, double& out, double lo, double hi) {
            detail::config_real(j, where, key, out, lo, hi);
        };
        size("vocab_size", c.vocab_size, true);
        size("hidden_size", c.hidden_size, true);
        size("num_hidden_layers", c.num_hidden_layers, true);
        size("num_attention_heads", c.num_attention_heads, true);
        size("intermediate_size", c.intermediate_size, true);
        size("max_position_embeddings", c.max_position_embeddings, false);
        size("type_vocab_size", c.type_vocab_size, false);
        real("hidden_dropout_prob", c.hidden_dropout_prob, 0, 1);
        real("attention_probs_dropout_prob", c.attention_probs_dropout_prob, 0, 1);
        real("layer_norm_eps", c.layer_norm_eps, 0, 1);
        real("initializer_range", c.initializer_range, 0, 1e3);
        real("classifier_dropout", c.classifier_dropout, 0, 1);
        if (j.contains("position_embedding_type") && j["position_embedding_type"] != "absolute")
            throw error(errc::unsupported, where + ": position_embedding_type",
                        j["position_embedding_type"].dump() +
                            ": ftune runs absolute position embeddings only");
        if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer())
            c.pad_token_id = j["pad_token_id"].get<token_id>();
        if (c.hidden_size % c.num_attention_heads != 0)
            throw error(errc::parse, where + ": num_attention_heads",
                        ftune::detail::cat(c.num_attention_heads, " heads do not divide ",
                                           "hidden_size ", c.hidden_size));
        if (j.contains("hidden_act"))
            detail::config_activation(j, where, "hidden_act", hidden_act, c.hidden_act);
    }

    /// Writes c into j as BertConfig's fields.
    static void write_config(const bert::config& c, nlohmann::json& j) {
        j["vocab_size"] = c.vocab_size;
        j["hidden_size"] = c.hidden_size;
        j["num_hidden_layers"] = c.num_hidden_layers;
        j["num_attention_heads"] = c.num_attention_heads;
        j["intermediate_size"] = c.intermediate_size;
        j["hidden_act"] = std::string(bert::activation_to_hf(c.hidden_act));
        j["hidden_dropout_prob"] = c.hidden_dropout_prob;
        j["attention_probs_dropout_prob"] = c.attention_probs_dropout_prob;
        j["max_position_embeddings"] = c.max_position_embeddings;
        j["type_vocab_size"] = c.type_vocab_size;
        j["layer_norm_eps"] = c.layer_norm_eps;
        j["initializer_range"] = c.initializer_range;
        j["pad_token_id"] = c.pad_token_id;
        j["position_embedding_type"] = "absolute";
        if (c.classifier_dropout >= 0)
            j["classifier_dropout"] = c.classifier_dropout;
        else
            j["classifier_dropout"] = nullptr;
    }

    /// The names a checkpoint may store parameter `name` under, tried in order: the name, with
    /// or without "bert.", and the legacy gamma/beta of a LayerNorm.
    static std::vector<std::string> checkpoint_names(const std::string& name) {
        std::vector<std::string> candidates{
            name, name.starts_with("bert.") ? name.substr(5) : "bert." + name};
        std::string legacy;
        if (name.ends_with("LayerNorm.weight")) legacy = name.substr(0, name.size() - 6) + "gamma";
        if (name.ends_with("LayerNorm.bias")) legacy = name.substr(0, name.size() - 4) + "beta";
        if (!legacy.empty()) {
            candidates.push_back(legacy);
            candidates.push_back(legacy.starts_with("bert.") ? legacy.substr(5) : "bert." + legacy);
        }
        return candidates;
    }

    /// Whether `name` is the backbone's (embeddings, encoder layers, pooler), not a task head's.
    static bool is_backbone_parameter(std::string_view name) {
        if (name.starts_with("bert.")) name.remove_prefix(5);
        return name.starts_with("embeddings.") || name.starts_with("encoder.") ||
               name.starts_with("pooler.");
    }
    /// Backbone parameters a checkpoint may lack, made new as Transformers does: the pooler.
    static bool may_be_missing(std::string_view name) {
        return name.starts_with("pooler.") || name.starts_with("bert.pooler.");
    }

    /// About how many weights c describes (a config far larger than its weights file is refused
    /// before anything is allocated).
    static double approximate_size(const bert::config& k) {
        return double(k.vocab_size + k.max_position_embeddings + k.type_vocab_size) *
                   double(k.hidden_size) +
               double(k.num_hidden_layers) *
                   (4.0 * double(k.hidden_size) * double(k.hidden_size) +
                    2.0 * double(k.hidden_size) * double(k.intermediate_size));
    }
};

/// Llama (model_type "llama": SmolLM2, Llama 2/3, TinyLlama): config.json's fields as
/// Transformers' LlamaConfig; parameter names as LlamaModel's, with or without the task models'
/// "model." prefix; the checkpoint stores ftune's layout. Options ftune does not run
/// (rope_scaling, attention or MLP biases, another activation than SiLU) are refused by name.
template <>
struct hf_family<llama::config> {
    static constexpr std::string_view model_type = "llama";  ///< config.json's model_type
    using tokenizer_type = text::bpe_tokenizer;              ///< byte-level BPE
    /// The family's backbone computing in T.
    template <scalar T>
    using backbone = llama::decoder<T>;

    /// Reads LlamaConfig's fields of j into c (hidden_act also as written); `where` names the
    /// file in errors.
    static void read_config(const nlohmann::json& j, const std::string& where, llama::config& c,
                            std::string& hidden_act) {
        detail::config_size(j, where, "vocab_size", c.vocab_size, true);
        detail::config_size(j, where, "hidden_size", c.hidden_size, true);
        detail::config_size(j, where, "intermediate_size", c.intermediate_size, true);
        detail::config_size(j, where, "num_hidden_layers", c.num_hidden_layers, true);
        detail::config_size(j, where, "num_attention_heads", c.num_attention_heads, true);
        c.num_key_value_heads = c.num_attention_heads;
        detail::config_size(j, where, "num_key_value_heads", c.num_key_value_heads, false);
        detail::config_size(j, where, "head_dim", c.head_dim, false);
        detail::config_size(j, where, "max_position_embeddings", c.max_position_embeddings, false);
        detail::config_real(j, where, "rms_norm_eps", c.rms_norm_eps, 0, 1);
        detail::config_real(j, where, "initializer_range", c.initializer_range, 0, 1e3);
        // rope_theta: top level (Transformers 4) or in rope_parameters (Transformers 5)
        detail::config_real(j, where, "rope_theta", c.rope_theta, 1, 1e12);
        if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
            const auto& r = j["rope_parameters"];
            detail::config_real(r, where + ": rope_parameters", "rope_theta", c.rope_theta, 1,
                                1e12);
            if (r.contains("rope_type") && r["rope_type"] != "default")
                throw error(errc::unsupported, where + ": rope_parameters.rope_type",
                            r["rope_type"].dump() + ": ftune runs the default rotary embedding");
        }
        if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
            throw error(errc::unsupported, where + ": rope_scaling",
                        j["rope_scaling"].dump() + ": ftune runs unscaled rotary embeddings");
        for (const char* key : {"attention_bias", "mlp_bias"})
            if (j.contains(key) && j[key] == true)
                throw error(errc::unsupported, where + ": " + key,
                            "true: ftune's Llama projections have no bias");
        detail::config_decoder_tokens(j, c);
        if (c.num_attention_heads % c.num_key_value_heads != 0 ||
            (c.head_dim == 0 && c.hidden_size % c.num_attention_heads != 0) ||
            c.head_size() % 2 != 0)
            throw error(errc::parse, where + ": num_key_value_heads",
                        ftune::detail::cat(c.num_key_value_heads, " key/value heads, ",
                                           c.num_attention_heads, " heads and hidden_size ",
                                           c.hidden_size, " do not make whole even-sized heads"));
        if (j.contains("hidden_act")) {
            if (!j["hidden_act"].is_string())
                throw error(errc::parse, where + ": hidden_act", "must be a string");
            hidden_act = j["hidden_act"].get<std::string>();
            if (hidden_act != "silu")
                throw error(errc::unsupported, where + ": hidden_act",
                            "\"" + hidden_act + "\": ftune's Llama runs silu");
        } else {
            hidden_act = "silu";
        }
    }

    /// Writes c into j as LlamaConfig's fields (rope_theta both at the top level and in
    /// rope_parameters, as Transformers 4 and 5 read it).
    static void write_config(const llama::config& c, nlohmann::json& j) {
        j["vocab_size"] = c.vocab_size;
        j["hidden_size"] = c.hidden_size;
        j["intermediate_size"] = c.intermediate_size;
        j["num_hidden_layers"] = c.num_hidden_layers;
        j["num_attention_heads"] = c.num_attention_heads;
        j["num_key_value_heads"] = c.num_key_value_heads;
        j["head_dim"] = c.head_size();
        j["max_position_embeddings"] = c.max_position_embeddings;
        j["rms_norm_eps"] = c.rms_norm_eps;
        j["rope_theta"] = c.rope_theta;
        j["rope_parameters"] = {{"rope_theta", c.rope_theta}, {"rope_type", "default"}};
        j["hidden_act"] = "silu";
        j["attention_bias"] = false;
        j["mlp_bias"] = false;
        j["initializer_range"] = c.initializer_range;
        detail::write_decoder_tokens(c, j);
    }

    /// The names a checkpoint may store parameter `name` under: the name, with or without
    /// "model.".
    static std::vector<std::string> checkpoint_names(const std::string& name) {
        return {name, name.starts_with("model.") ? name.substr(6) : "model." + name};
    }
    /// Whether `name` is the backbone's (embed_tokens, layers, norm), not a head's (lm_head).
    static bool is_backbone_parameter(std::string_view name) {
        if (name.starts_with("model.")) name.remove_prefix(6);
        return name.starts_with("embed_tokens.") || name.starts_with("layers.") ||
               name.starts_with("norm.");
    }
    /// Backbone parameters a checkpoint may lack: none.
    static bool may_be_missing(std::string_view) { return false; }

    /// About how many weights c describes.
    static double approximate_size(const llama::config& k) {
        const double C = double(k.hidden_size), d = double(k.head_size());
        return double(k.vocab_size) * C * (k.tie_word_embeddings ? 1 : 2) +
               double(k.num_hidden_layers) *
                   (C * d * double(2 * k.num_attention_heads + 2 * k.num_key_value_heads) +
                    3.0 * C * double(k.intermediate_size));
    }
};

/// GPT-2 (model_type "gpt2"): config.json's fields as Transformers' GPT2Config (n_embd, n_layer,
/// n_head, n_inner, n_positions, layer_norm_epsilon, activation_function); parameter names as
/// GPT2Model's, with or without GPT2LMHeadModel's "transformer." prefix. The file's Conv1D
/// weights are (in, out) and c_attn holds q, k and v side by side: checkpoint_slots transposes
/// and cuts them (ftune's attention keeps q_proj, k_proj, v_proj and o_proj, linear (out, in)).
/// Options ftune does not run (cross-attention, attention scaled by the layer index or not at
/// all) are refused by name.
template <>
struct hf_family<gpt2::config> {
    static constexpr std::string_view model_type = "gpt2";  ///< config.json's model_type
    using tokenizer_type = text::bpe_tokenizer;             ///< byte-level BPE
    /// The family's backbone computing in T.
    template <scalar T>
    using backbone = gpt2::decoder<T>;

    /// Reads GPT2Config's fields of j into c (activation_function also as written); `where`
    /// names the file in errors.
    static void read_config(const nlohmann::json& j, const std::string& where, gpt2::config& c,
                            std::string& hidden_act) {
        detail::config_size(j, where, "vocab_size", c.vocab_size, true);
        detail::config_size(j, where, "n_embd", c.hidden_size, true);
        detail::config_size(j, where, "n_layer", c.num_hidden_layers, true);
        detail::config_size(j, where, "n_head", c.num_attention_heads, true);
        detail::config_size(j, where, "n_positions", c.max_position_embeddings, false);
        c.intermediate_size = 4 * c.hidden_size;  // n_inner null: 4 n_embd
        detail::config_size(j, where, "n_inner", c.intermediate_size, false);
        detail::config_real(j, where, "layer_norm_epsilon", c.layer_norm_eps, 0, 1);
        detail::config_real(j, where, "initializer_range", c.initializer_range, 0, 1e3);
        detail::config_real(j, where, "resid_pdrop", c.resid_pdrop, 0, 1);
        detail::config_real(j, where, "embd_pdrop", c.embd_pdrop, 0, 1);
        detail::config_real(j, where, "attn_pdrop", c.attn_pdrop, 0, 1);
        if (c.hidden_size % c.num_attention_heads != 0)
            throw error(errc::parse, where + ": n_head",
                        ftune::detail::cat(c.num_attention_heads, " heads do not divide n_embd ",
                                           c.hidden_size));
        for (const char* key : {"add_cross_attention", "scale_attn_by_inverse_layer_idx"})
            if (j.contains(key) && j[key] == true)
                throw error(errc::unsupported, where + ": " + key,
                            "true: ftune runs GPT2LMHeadModel's self-attention scaled by "
                            "1/sqrt(head size)");
        if (j.contains("scale_attn_weights") && j["scale_attn_weights"] == false)
            throw error(errc::unsupported, where + ": scale_attn_weights",
                        "false: ftune scales the attention scores by 1/sqrt(head size)");
        detail::config_decoder_tokens(j, c);
        hidden_act = "gelu_new";  // GPT2Config's default
        detail::config_activation(j, where, "activation_function", hidden_act, c.hidden_act);
    }

    /// Writes c into j as GPT2Config's fields.
    static void write_config(const gpt2::config& c, nlohmann::json& j) {
        j["vocab_size"] = c.vocab_size;
        j["n_embd"] = c.hidden_size;
        j["n_layer"] = c.num_hidden_layers;
        j["n_head"] = c.num_attention_heads;
        j["n_inner"] = c.intermediate_size;
        j["n_positions"] = c.max_position_embeddings;
        j["layer_norm_epsilon"] = c.layer_norm_eps;
        j["activation_function"] = std::string(bert::activation_to_hf(c.hidden_act));
        j["initializer_range"] = c.initializer_range;
        j["resid_pdrop"] = c.resid_pdrop;
        j["embd_pdrop"] = c.embd_pdrop;
        j["attn_pdrop"] = c.attn_pdrop;
        j["scale_attn_weights"] = true;
        detail::write_decoder_tokens(c, j);
    }

    /// Where parameter `name` is stored: "h.N.attn.q_proj.weight" is part 0 of 3 of the
    /// transposed "h.N.attn.c_attn.weight" (k 1, v 2; the biases likewise, untransposed),
    /// "attn.o_proj" is "attn.c_proj", the MLP's weights are transposed; each with and without
    /// "transformer.".
    static std::vector<checkpoint_slot> checkpoint_slots(const std::string& name) {
        const bool prefixed = name.starts_with("transformer.");
        const std::string bare = prefixed ? name.substr(12) : name;
        checkpoint_slot s{bare};
        const bool weight = bare.ends_with(".weight");
        if (const std::size_t dot = bare.rfind('.'); dot != std::string::npos) {
            // the module's place among GPT-2's (q, k, v fused in c_attn along the outputs: the
            // Conv1D weight's columns, the bias's entries), then the parameter's own name
            const module_slot m = gpt2::hf_module(std::string_view(bare).substr(0, dot));
            s = {m.name + bare.substr(dot), false, m.part, m.parts,
                 std::size_t(weight && m.parts > 1 ? 1 : 0)};
            // Conv1D weights are (in, out): the attention's and the MLP's
            s.transposed = weight && (module_ends_with(m.name, "attn.c_attn") ||
                                      module_ends_with(m.name, "attn.c_proj") ||
                                      module_ends_with(m.name, "mlp.c_fc") ||
                                      module_ends_with(m.name, "mlp.c_proj"));
        }
        checkpoint_slot other = s;  // the same place with (or without) the prefix
        const bool backbone = is_backbone_parameter(bare);
        if (backbone) other.name = "transformer." + s.name;
        if (prefixed && backbone) std::swap(s, other);
        if (!backbone) return {s};
        return {s, other};
    }
    /// Whether `name` is the backbone's (wte, wpe, h, ln_f), not a head's (lm_head).
    static bool is_backbone_parameter(std::string_view name) {
        if (name.starts_with("transformer.")) name.remove_prefix(12);
        return name.starts_with("wte.") || name.starts_with("wpe.") || name.starts_with("h.") ||
               name.starts_with("ln_f.");
    }
    /// Backbone parameters a checkpoint may lack: none.
    static bool may_be_missing(std::string_view) { return false; }

    /// About how many weights c describes.
    static double approximate_size(const gpt2::config& k) {
        const double C = double(k.hidden_size);
        return (double(k.vocab_size) * (k.tie_word_embeddings ? 1 : 2) +
                double(k.max_position_embeddings)) *
                   C +
               double(k.num_hidden_layers) * (4.0 * C * C + 2.0 * C * double(k.intermediate_size));
    }
};

/// The model_type values ftune reads, one per family.
inline constexpr std::array<std::string_view, 3> known_model_types{"bert", "llama", "gpt2"};

/// Calls f(std::type_identity<Config>{}) with the config type of the family that a config.json's
/// model_type names ("" when absent: BERT, as old BERT checkpoints omit it); throws naming the
/// known families otherwise.
template <class F>
decltype(auto) with_family(std::string_view model_type, F&& f) {
    if (model_type.empty() || model_type == hf_family<bert::config>::model_type)
        return f(std::type_identity<bert::config>{});
    if (model_type == hf_family<llama::config>::model_type)
        return f(std::type_identity<llama::config>{});
    if (model_type == hf_family<gpt2::config>::model_type)
        return f(std::type_identity<gpt2::config>{});
    std::string msg = "\"";
    msg.append(model_type).append("\": ftune reads the families");
    for (std::size_t i = 0; i < known_model_types.size(); ++i)
        msg.append(i ? ", \"" : " \"").append(known_model_types[i]).append("\"");
    msg.append("; other types name and place weights differently");
    throw error(errc::unsupported, "model_type", msg);
}

/// A config.json of family Config: the family's sizes and settings ftune builds from, and what
/// Hugging Face records beside them.
template <class Config = bert::config>
struct basic_hf_config {
    Config model;  ///< the family's config: sizes, activation, dropout, num_labels, problem_type
    std::string hidden_act = "gelu";                 ///< the activation's name, as written
    std::vector<std::string> architectures;          ///< e.g. "BertForSequenceClassification"
    std::vector<std::string> id2label;               ///< label names by id (empty: none recorded)
    nlohmann::json json = nlohmann::json::object();  ///< the whole file (save_hf keeps the rest)
};
/// A BERT config.json.
using hf_config = basic_hf_config<bert::config>;

/// The family config type of a model: Model::config_type (BERT's for a bare layer or encoder
/// part without one).
template <class Model>
struct family_config {
    using type = bert::config;  ///< the default family
};
/// A model that names its config type.
template <class Model>
requires requires {
    typename Model::config_type;
}
struct family_config<Model> {
    using type = typename Model::config_type;  ///< its family's config
};
/// family_config's type.
template <class Model>
using family_config_t = typename family_config<Model>::type;

/// Parses the text of a config.json of family Config; `where` (the file) names it in errors. A
/// missing or malformed field, or another family's model_type, is an ftune::error naming the file
/// and the field.
template <class Config = bert::config>
basic_hf_config<Config> parse_hf_config(std::string_view text, const std::string& where) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where, ftune::detail::cat("malformed JSON: ", e.what()));
    }
    if (!j.is_object()) throw error(errc::parse, where, "config.json is not a JSON object");
    using family = hf_family<Config>;
    if (j.contains("model_type") && j["model_type"] != family::model_type)
        throw error(errc::unsupported, where + ": model_type",
                    ftune::detail::cat(j["model_type"].dump(), ": this model type reads \"",
                                       family::model_type,
                                       "\" checkpoints; other types name and place weights "
                                       "differently"));
    basic_hf_config<Config> c;
    family::read_config(j, where, c.model, c.hidden_act);
    if (j.contains("architectures") && j["architectures"].is_array())
        for (const auto& a : j["architectures"])
            if (a.is_string()) c.architectures.push_back(a.get<std::string>());
    if (j.contains("problem_type") && j["problem_type"].is_string()) {
        c.model.problem_type = j["problem_type"].get<std::string>();
        try {
            heads::problem_from_hf(c.model.problem_type, c.model.num_labels);
        } catch (const error& e) {
            throw error(errc::unsupported, where + ": problem_type", e.message());
        }
    }
    if (j.contains("id2label") && j["id2label"].is_object()) {
        const auto& m = j["id2label"];
        c.id2label.assign(m.size(), "");
        for (auto it = m.begin(); it != m.end(); ++it) {
            std::size_t id = 0;
            try {
                id = std::stoul(it.key());
            } catch (const std::exception&) {
                throw error(errc::parse, where + ": id2label",
                            "key \"" + it.key() + "\" is not a label id");
            }
            if (id >= c.id2label.size() || !it->is_string())
                throw error(errc::parse, where + ": id2label",
                            ftune::detail::cat("ids must be 0 .. ", m.size() - 1,
                                               " with string names; got \"", it.key(), "\""));
            c.id2label[id] = it->get<std::string>();
        }
    }
    if (!c.id2label.empty()) c.model.num_labels = c.id2label.size();
    if (j.contains("num_labels")) {  // an explicit count wins
        if (!j["num_labels"].is_number_unsigned() || j["num_labels"].get<std::uint64_t>() == 0 ||
            j["num_labels"].get<std::uint64_t>() > (std::uint64_t(1) << 26))
            throw error(errc::parse, where + ": num_labels", "must be a positive integer");
        c.model.num_labels = j["num_labels"].get<std::size_t>();
    }
    if (!c.id2label.empty() && c.id2label.size() != c.model.num_labels)
        throw error(errc::parse, where + ": num_labels",
                    ftune::detail::cat(c.model.num_labels, " labels but id2label names ",
                                       c.id2label.size()));
    c.json = std::move(j);
    return c;
}

/// A string field of a config.json ("" when absent or not a string; for an array, its first
/// element: architectures), whatever the family: what picks the family and the head before the
/// whole file is read. A missing file or malformed JSON is an ftune::error naming the file.
inline std::string read_config_string(const std::filesystem::path& path, const char* key) {
    std::ifstream in(path, std::ios::binary);
    if (!in || !std::filesystem::is_regular_file(path))
        throw error(errc::io, path.string(),
                    "cannot open config.json (missing or not a readable file)");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, path.string(), ftune::detail::cat("malformed JSON: ", e.what()));
    }
    if (!j.is_object() || !j.contains(key)) return {};
    const auto& v = j[key].is_array() && !j[key].empty() ? j[key][0] : j[key];
    return v.is_string() ? v.get<std::string>() : std::string();
}

/// Reads config.json of family Config; a missing or malformed field is an ftune::error naming
/// the file and it.
template <class Config = bert::config>
basic_hf_config<Config> read_hf_config(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in || !std::filesystem::is_regular_file(path))
        throw error(errc::io, path.string(),
                    "cannot open config.json (missing or not a readable file)");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse_hf_config<Config>(text, path.string());
}

/// Settings of a tokenizer read from a model directory's tokenizer_config.json.
struct hf_tokenizer_config {
    text::bert_options options;        ///< do_lower_case, strip_accents, tokenize_chinese_chars
    std::size_t model_max_length = 0;  ///< model_max_length (0: not given)
    text::lm_tokenizer_settings lm;    ///< a decoder's: bos/eos/pad, add_bos_token, chat_template
};

/// Parses the text of a tokenizer_config.json; `where` names it in errors.
inline hf_tokenizer_config parse_hf_tokenizer_config(std::string_view text,
                                                     const std::string& where) {
    hf_tokenizer_config c;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where, ftune::detail::cat("malformed JSON: ", e.what()));
    }
    if (!j.is_object()) throw error(errc::parse, where, "not a JSON object");
    auto flag = [&](const char* key) -> std::optional<bool> {
        if (j.contains(key) && j[key].is_boolean()) return j[key].get<bool>();
        return std::nullopt;
    };
    if (auto v = flag("do_lower_case")) c.options.lowercase = *v;
    if (auto v = flag("strip_accents")) c.options.strip_accents = *v;
    if (auto v = flag("tokenize_chinese_chars")) c.options.chinese_chars = *v;
    for (auto [key, field] :
         {std::pair{"unk_token", &c.options.unk}, std::pair{"cls_token", &c.options.cls},
          std::pair{"sep_token", &c.options.sep}, std::pair{"pad_token", &c.options.pad},
          std::pair{"mask_token", &c.options.mask}})
        if (j.contains(key) && j[key].is_string()) *field = j[key].get<std::string>();
    // added special tokens: extra_special_tokens (Transformers 5) or additional_special_tokens,
    // as strings or {"content": ...}
    for (const char* key : {"extra_special_tokens", "additional_special_tokens"})
        if (j.contains(key) && j[key].is_array() && c.options.extra_special_tokens.empty())
            for (const auto& t : j[key]) {
                if (t.is_string())
                    c.options.extra_special_tokens.push_back(t.get<std::string>());
                else if (t.is_object() && t.contains("content") && t["content"].is_string())
                    c.options.extra_special_tokens.push_back(t["content"].get<std::string>());
                else
                    throw error(errc::parse, where + ": " + key,
                                "an entry that is neither a string nor {\"content\": ...}");
            }
    // a decoder's special tokens (strings or {"content": ...}) and chat template (a string, or
    // named templates of which "default" is used)
    auto token = [&](const char* key) -> std::string {
        if (!j.contains(key)) return {};
        const auto& v = j[key];
        if (v.is_string()) return v.get<std::string>();
        if (v.is_object() && v.contains("content") && v["content"].is_string())
            return v["content"].get<std::string>();
        return {};
    };
    c.lm.bos_token = token("bos_token");
    c.lm.eos_token = token("eos_token");
    c.lm.pad_token = token("pad_token");
    c.lm.add_bos_token = flag("add_bos_token").value_or(false);
    if (j.contains("chat_template")) {
        const auto& t = j["chat_template"];
        if (t.is_string()) c.lm.chat_template = t.get<std::string>();
        if (t.is_array())
            for (const auto& e : t)
                if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
                    e["template"].is_string())
                    c.lm.chat_template = e["template"].get<std::string>();
    }
    // Hugging Face writes 1e30 for "no limit": keep only real limits
    if (j.contains("model_max_length") && j["model_max_length"].is_number() &&
        j["model_max_length"].get<double>() >= 1 && j["model_max_length"].get<double>() < 1e9)
        c.model_max_length = std::size_t(j["model_max_length"].get<double>());
    return c;
}

/// Reads tokenizer_config.json (absent: Hugging Face's defaults); malformed JSON is an
/// ftune::error naming the file.
inline hf_tokenizer_config read_hf_tokenizer_config(const std::filesystem::path& path) {
    if (!std::filesystem::exists(path)) return {};
    std::ifstream in(path, std::ios::binary);
    if (!in || !std::filesystem::is_regular_file(path))
        throw error(errc::io, path.string(), "cannot open tokenizer_config.json");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse_hf_tokenizer_config(text, path.string());
}

/// The tokenizer of a model directory: vocab.txt with tokenizer_config.json's settings, or
/// tokenizer.json when there is no vocab.txt; std::nullopt when there is neither.
inline std::optional<text::bert_tokenizer> load_hf_tokenizer(const std::filesystem::path& dir) {
    if (std::filesystem::exists(dir / "vocab.txt"))
        return text::bert_tokenizer::from_vocab(
            dir / "vocab.txt", read_hf_tokenizer_config(dir / "tokenizer_config.json").options);
    if (std::filesystem::exists(dir / "tokenizer.json"))
        return text::load_tokenizer_json(dir / "tokenizer.json");
    return std::nullopt;
}

/// A decoder's tokenizer from a model directory: tokenizer.json (byte-level BPE) with
/// tokenizer_config.json's special tokens and chat template (chat_template.jinja, where
/// Transformers 5 writes it, comes first); std::nullopt when there is no tokenizer.json.
inline std::optional<text::bpe_tokenizer> load_hf_bpe_tokenizer(const std::filesystem::path& dir) {
    if (!std::filesystem::exists(dir / "tokenizer.json")) return std::nullopt;
    auto tok = text::load_bpe_tokenizer_json(dir / "tokenizer.json");
    auto lm = read_hf_tokenizer_config(dir / "tokenizer_config.json").lm;
    if (std::filesystem::exists(dir / "chat_template.jinja")) {
        std::ifstream in(dir / "chat_template.jinja", std::ios::binary);
        if (!in) throw error(errc::io, (dir / "chat_template.jinja").string(), "cannot open it");
        lm.chat_template.assign(std::istreambuf_iterator<char>(in),
                                std::istreambuf_iterator<char>());
    }
    tok.set_settings(std::move(lm));
    return tok;
}

/// What load_parameters did: file names it read, parameters it did not find, tensors it did not
/// use.
struct load_report {
    std::vector<std::string> loaded;       ///< parameters read (their names in the model)
    std::vector<std::string> missing;      ///< model parameters absent from the file
    std::vector<std::string> unexpected;   ///< file tensors no parameter asked for
    std::vector<std::string> mismatched;   ///< head parameters of another shape, not read
    std::vector<std::string> initialized;  ///< parameters load_hf initialized (new head weights)
};

/// The places parameter `name` may be stored at under family Config's mapping, tried in order:
/// hf_family::checkpoint_slots when the family has one, else its checkpoint_names as whole
/// tensors in ftune's layout. The first is where save_hf writes it.
template <class Config = bert::config>
std::vector<checkpoint_slot> checkpoint_slots(const std::string& name) {
    if constexpr (requires { hf_family<Config>::checkpoint_slots(name); }) {
        return hf_family<Config>::checkpoint_slots(name);
    } else {
        std::vector<checkpoint_slot> slots;
        for (auto& n : hf_family<Config>::checkpoint_names(name)) slots.push_back({std::move(n)});
        return slots;
    }
}

/// A file tensor found for a parameter, and how the parameter sits in it.
struct found_slot {
    const tensor_info* tensor = nullptr;  ///< the file's tensor (nullptr: none of the slots)
    checkpoint_slot slot;                 ///< where in that tensor
};

/// The file's tensor for model parameter `name` under family Config's mapping
/// (checkpoint_slots); tensor == nullptr if absent.
template <class Config = bert::config>
found_slot find_hf_slot(const safetensors_file& f, const std::string& name) {
    for (auto& s : checkpoint_slots<Config>(name))
        if (const auto* t = f.find(s.name)) return {t, std::move(s)};
    return {};
}

namespace detail {
/// The shape the whole file tensor has when a parameter of `extents` (rank `rank`) sits in slot s;
/// throws for a slot that cannot hold it (a family mapping's bug).
inline std::vector<std::size_t> slot_tensor_shape(const std::size_t* extents, std::size_t rank,
                                                  const checkpoint_slot& s,
                                                  std::string_view parameter) {
    std::vector<std::size_t> e(extents, extents + rank);
    if ((s.transposed && rank != 2) || s.parts == 0 || s.part >= s.parts ||
        (s.parts > 1 && (s.axis >= rank || rank > 2)))
        throw error(errc::invalid_argument, std::string(parameter),
                    "the family's checkpoint slot " + s.name +
                        " does not fit the parameter (a transpose needs 2 axes, a slice 1 or 2, "
                        "part < parts, axis < rank)");
    if (s.transposed) std::swap(e[0], e[1]);
    e[s.axis] *= s.parts;
    return e;
}

/// Calls f(parameter element index, file element index) for every element of a parameter of
/// `extents` (rank 1 or 2) placed in slot s of the file tensor.
template <class F>
void for_each_slot_element(const std::size_t* extents, std::size_t rank, const checkpoint_slot& s,
                           F&& f) {
    const std::size_t rows = rank == 2 ? extents[0] : 1, cols = rank == 2 ? extents[1] : extents[0];
    // the file's view of the parameter before the split: (fr, fc)
    const std::size_t fr = s.transposed ? cols : rows, fc = s.transposed ? rows : cols;
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < cols; ++j) {
            std::size_t a = s.transposed ? j : i, b = s.transposed ? i : j;
            if (rank == 1) a = 0, b = j;
            std::size_t at;
            if (rank == 1 || s.axis == 0)  // parts stacked along rows (or the one axis)
                at = (s.part * fr + a) * fc + b;
            else  // along columns
                at = a * (s.parts * fc) + s.part * fc + b;
            f(i * cols + j, at);
        }
}
}  // namespace detail

/// True for the parameters of a task head (not the backbone's), which a checkpoint of another
/// task may lack or hold in another shape.
template <class Config = bert::config>
bool is_head_parameter(std::string_view name) {
    return !hf_family<Config>::is_backbone_parameter(name);
}

/// Reads every parameter model.visit_parameters(prefix, ...) names from f (converting F16/BF16/F64
/// to T). Every shape is checked; all mismatches, and (unless allow_missing) all missing
/// parameters, are reported in one ftune::error. With skip_mismatched_head, head parameters of
/// another shape (a classifier with other labels) are listed in `mismatched` and left unread.
/// Buffers Hugging Face saves that are not parameters (position_ids) are not "unexpected".
template <class Model>
load_report load_parameters(Model& model, std::string_view prefix, const safetensors_file& f,
                            bool allow_missing = false, bool skip_mismatched_head = false) {
    using T = typename Model::value_type;
    load_report r;
    std::vector<std::string> problems;
    std::vector<const tensor_info*> used;
    using Config = family_config_t<Model>;
    model.visit_parameters(prefix, [&](parameter_ref<T> p) {
        const auto [t, slot] = find_hf_slot<Config>(f, p.name);
        if (!t) {
            r.missing.push_back(p.name);
            return;
        }
        used.push_back(t);
        const auto want = detail::slot_tensor_shape(p.extents.data(), p.rank, slot, p.name);
        if (t->shape != want && skip_mismatched_head && is_head_parameter<Config>(p.name)) {
            r.mismatched.push_back(p.name);
            return;
        }
        if (t->shape != want) {
            tensor_info w;
            w.shape = want;
            problems.push_back(ftune::detail::cat(t->name, ": the file holds ", t->shape_string(),
                                                  ", the model needs ", w.shape_string()));
            return;
        }
        if (!slot.transposed && slot.parts == 1) {  // ftune's layout: read in place
            f.read(*t, p.value);
        } else {  // cut the parameter out of the file's tensor
            const auto whole = f.template read<T>(*t);
            detail::for_each_slot_element(
                p.extents.data(), p.rank, slot,
                [&](std::size_t to, std::size_t from) { p.value[to] = whole[from]; });
        }
        r.loaded.push_back(p.name);
    });
    for (const auto& t : f.tensors())
        if (std::find(used.begin(), used.end(), &t) == used.end() &&
            !t.name.ends_with("position_ids"))
            r.unexpected.push_back(t.name);
    if (!allow_missing)
        for (const auto& m : r.missing)
            problems.push_back(m + ": missing from the file (does it hold this model type?)");
    if (!problems.empty()) {
        std::string msg =
            ftune::detail::cat(problems.size(), " problem(s) loading the checkpoint:");
        for (const auto& p : problems) msg += "\n  " + p;
        throw error(errc::shape_mismatch, f.path(), msg);
    }
    return r;
}

/// Writes every parameter model.visit_parameters(prefix, ...) names to a safetensors file
/// (float32), atomically, at its family's first checkpoint slot: Hugging Face's names, shapes and
/// layouts (transposed, fused tensors assembled from their parts); "format": "pt" metadata as
/// Transformers writes.
template <class Model>
void save_parameters(Model& model, std::string_view prefix, const std::filesystem::path& path) {
    using T = typename Model::value_type;
    using Config = family_config_t<Model>;
    std::vector<tensor_to_write> tensors;
    std::vector<std::vector<float>> values;  // float32 values (T may be double), by tensor
    std::vector<std::size_t> filled, parts;  // parts written and expected, by tensor
    model.visit_parameters(prefix, [&](parameter_ref<T> p) {
        const auto slots = checkpoint_slots<Config>(p.name);
        const checkpoint_slot& s = slots.front();
        const auto shape = detail::slot_tensor_shape(p.extents.data(), p.rank, s, p.name);
        std::size_t k = 0;
        while (k < tensors.size() && tensors[k].name != s.name) ++k;
        if (k == tensors.size()) {
            tensors.push_back({s.name, shape, {}});
            values.emplace_back(p.value.size() * s.parts);
            filled.push_back(0);
            parts.push_back(s.parts);
        } else if (tensors[k].shape != shape) {
            throw error(errc::shape_mismatch, p.name,
                        "shares tensor " + s.name + " with parameters of another shape");
        }
        ++filled[k];
        if (!s.transposed && s.parts == 1)  // ftune's layout
            std::copy(p.value.begin(), p.value.end(), values[k].begin());
        else
            detail::for_each_slot_element(
                p.extents.data(), p.rank, s,
                [&](std::size_t from, std::size_t to) { values[k][to] = float(p.value[from]); });
    });
    for (std::size_t k = 0; k < tensors.size(); ++k) {
        if (filled[k] != parts[k])  // a fused tensor with a part no parameter wrote
            throw error(
                errc::invalid_argument, tensors[k].name,
                ftune::detail::cat("the family maps ", filled[k], " parameters into it but ",
                                   "says it has ", parts[k], " parts"));
        tensors[k].values = values[k];
    }
    write_safetensors(path, tensors, {{"format", "pt"}});
}

/// How load_hf builds a model from a checkpoint.
struct load_options {
    /// Labels of the task head (sequence or token classification). Empty: the checkpoint's
    /// (config.json id2label / num_labels). When they differ from the checkpoint's, the head is
    /// new: its weights are initialized (listed in report.mismatched and report.initialized).
    std::vector<std::string> labels;
    /// Whether head weights (and a pooler) absent from the file may be initialized, as
    /// Transformers does for a task head on a base checkpoint. false: they are an error.
    bool allow_new_head = true;
    /// Seed of the initialized weights.
    std::uint64_t seed = 0;
};

/// A model loaded from a Hugging Face directory with what came with it.
template <class Model>
struct hf_model {
    basic_hf_config<family_config_t<Model>>
        config;  ///< config.json (labels updated by load_options)
    /// The family's tokenizer (vocab.txt / tokenizer.json), if the directory has one.
    std::optional<typename hf_family<family_config_t<Model>>::tokenizer_type> tokenizer;
    std::size_t model_max_length = 0;  ///< the longest input, in tokens (tokenizer and positions)
    Model model;                       ///< the model, weights loaded
    load_report report;                ///< what was loaded, initialized, left unused
};

/// Initializes a parameter the way Transformers' BertPreTrainedModel._init_weights does: LayerNorm
/// weights 1, biases 0, other weights normal(0, std) drawn from stream `stream` of `seed`.
template <scalar T>
void init_hf_parameter(parameter_ref<T>& p, double std, std::uint64_t seed, std::uint64_t stream) {
    if (p.name.ends_with("LayerNorm.weight") || p.name.ends_with("gamma")) {
        std::fill(p.value.begin(), p.value.end(), T(1));
    } else if (p.name.ends_with("bias") || p.name.ends_with("beta")) {
        std::fill(p.value.begin(), p.value.end(), T(0));
    } else {
        const random_stream s(seed, stream);
        for (std::size_t i = 0; i < p.value.size(); ++i) p.value[i] = T(std * s.normal(i));
    }
}

/// Grows the token table of model's backbone to `rows` rows (nothing when it has as many):
/// each new row is the mean of the old rows, as Transformers' resize_token_embeddings
/// (mean_resizing draws them from a normal around that mean with 1e-9 times the rows'
/// covariance, a negligible spread). Returns the number of rows added. The model's own
/// config() records the new vocabulary size (a loaded hf_model's config is not touched:
/// add_entity_markers updates it); heads with vocabulary-sized outputs (masked or causal LM) are
/// not resized and are refused.
template <class Model>
std::size_t resize_token_embeddings(Model& model, std::size_t rows) {
    using T = typename Model::value_type;
    if constexpr (
        requires { Model::head_type::ties_input_embeddings; } ||
        requires { model.head.vocab_size(); })
        throw error(errc::unsupported, "resize_token_embeddings",
                    "the head's outputs are vocabulary-sized; resize a classifier model");
    auto& w = model.backbone.input_embeddings();  // (V, C)
    const std::size_t V = w.value.extent(0), Cn = w.value.extent(1);
    if (rows <= V) return 0;
    if (V == 0)
        throw error(errc::invalid_argument, "resize_token_embeddings",
                    "the token table is empty: load the weights first");
    std::vector<T> old(w.value.data(), w.value.data() + V * Cn);
    std::vector<double> mean(Cn, 0.0);
    for (std::size_t v = 0; v < V; ++v)
        for (std::size_t c = 0; c < Cn; ++c) mean[c] += double(old[v * Cn + c]);
    w.value.resize(shape<dynamic, Model::backbone_type::hidden_extent>(rows, Cn));
    std::copy(old.begin(), old.end(), w.value.data());
    for (std::size_t v = V; v < rows; ++v)
        for (std::size_t c = 0; c < Cn; ++c) w.value.data()[v * Cn + c] = T(mean[c] / double(V));
    if (w.grad.data()) {
        w.grad.resize(w.value.shape());
        w.grad.fill(T(0));
    }
    if constexpr (requires { model.config().vocab_size = rows; }) model.config().vocab_size = rows;
    return rows - V;
}

/// Readies a model with an entity-relation head (bert::relation_classifier): the four markers
/// (open and close entity 1, open and close entity 2) become special tokens of the tokenizer, the
/// token table gets a row for each new one (resize_token_embeddings), config.json records
/// vocab_size and "entity_markers", and the head learns the ids of the two opening markers
/// and the label names.
/// load_hf calls it for such models (with config.json's "entity_markers", or the defaults), so
/// a saved relation model loads ready; calling it again changes nothing.
template <class Model>
void add_entity_markers(hf_model<Model>& m,
                        const std::vector<std::string>& markers = data::default_entity_markers()) {
    if (markers.size() != 4)
        throw error(errc::invalid_argument, "entity_markers",
                    ftune::detail::cat(markers.size(),
                                       " markers; give 4: open and close entity 1, "
                                       "open and close entity 2"));
    if (!m.tokenizer)
        throw error(errc::invalid_argument, "add_entity_markers",
                    "the model has no tokenizer to add the entity markers to");
    m.tokenizer->add_special_tokens(markers);
    const std::size_t rows = m.tokenizer->vocab().size();
    resize_token_embeddings(m.model, rows);
    m.config.model.vocab_size = std::max(m.config.model.vocab_size, rows);
    m.config.json["entity_markers"] = markers;
    if constexpr (requires { m.model.head.entity_starts; }) {
        m.model.head.entity_starts = {*m.tokenizer->vocab().find(markers[0]),
                                      *m.tokenizer->vocab().find(markers[2])};
        m.model.head.label_names = m.config.id2label;  // the same on every rank
    }
}

/// Loads a Hugging Face model directory (config.json, model.safetensors, vocab.txt or
/// tokenizer.json, tokenizer_config.json) into Model, e.g. bert::sequence_classifier<> or
/// bert::token_classifier<bert::Encoder<dims{384, 12, 1536}>>. Every weight's shape is checked
/// against the model and all problems are reported in one ftune::error naming the file; head
/// weights (and a pooler) missing from a base checkpoint are initialized and listed in
/// report.initialized, tensors not used in report.unexpected, as Transformers does.
template <class Model>
hf_model<Model> load_hf(const std::filesystem::path& dir, const load_options& options = {}) {
    using T = typename Model::value_type;
    if (!std::filesystem::is_directory(dir))
        throw error(errc::io, dir.string(),
                    "not a directory; give a Hugging Face model directory (config.json, "
                    "model.safetensors, vocab.txt)");
    const auto weights_path = dir / "model.safetensors";
    if (!std::filesystem::exists(weights_path)) {
        const bool torch = std::filesystem::exists(dir / "pytorch_model.bin");
        throw error(errc::io, weights_path.string(),
                    torch ? "missing; this directory has only pytorch_model.bin (pickle), which "
                            "ftune does not read: save it with "
                            "save_pretrained(dir, safe_serialization=True)"
                          : "missing; ftune reads weights from model.safetensors");
    }
    using Config = family_config_t<Model>;
    using family = hf_family<Config>;
    auto cfg = read_hf_config<Config>(dir / "config.json");
    const std::size_t file_labels = cfg.model.num_labels;
    const std::vector<std::string> file_names = cfg.id2label;
    if (!options.labels.empty()) {
        cfg.id2label = options.labels;
        cfg.model.num_labels = options.labels.size();
    }
    // the family's tokenizer: BERT's WordPiece, a decoder's byte-level BPE
    std::optional<typename family::tokenizer_type> tokenizer;
    std::size_t tokens = 0;
    if constexpr (std::is_same_v<typename family::tokenizer_type, text::bert_tokenizer>) {
        tokenizer = load_hf_tokenizer(dir);
        if (tokenizer) tokens = tokenizer->vocab().size();
    } else {
        tokenizer = load_hf_bpe_tokenizer(dir);
        if (tokenizer) tokens = tokenizer->size();
    }
    if (tokens > cfg.model.vocab_size)
        throw error(
            errc::shape_mismatch,
            (dir / (std::filesystem::exists(dir / "vocab.txt") ? "vocab.txt" : "tokenizer.json"))
                .string(),
            ftune::detail::cat("the vocabulary has ", tokens,
                               " tokens but config.json's vocab_size is ", cfg.model.vocab_size,
                               "; the tokenizer does not belong to these weights"));
    const auto tok = read_hf_tokenizer_config(dir / "tokenizer_config.json");
    std::size_t max_len = cfg.model.max_position_embeddings;
    if (tok.model_max_length) max_len = std::min(max_len, tok.model_max_length);
    const safetensors_file f(weights_path);
    {  // a config describing a far larger model than the file holds is not allocated
        const double want = family::approximate_size(cfg.model);
        double have = 0;
        for (const auto& t : f.tensors()) have += double(t.numel());
        if (want > 2 * have + 1e6)
            throw error(errc::shape_mismatch, (dir / "config.json").string(),
                        ftune::detail::cat("describes a model of about ", want,
                                           " weights but model.safetensors holds ", have,
                                           "; the config does not belong to these weights"));
    }
    hf_model<Model> m{cfg, std::move(tokenizer), max_len, Model(cfg.model), {}};

    // other labels make a new head: another count, or other names than the checkpoint's
    // (Transformers' default names LABEL_i say nothing)
    bool named = false;
    for (std::size_t i = 0; i < file_names.size(); ++i)
        named |= file_names[i] != "LABEL_" + std::to_string(i);
    const bool new_labels = cfg.model.num_labels != file_labels ||
                            (named && !options.labels.empty() && options.labels != file_names);
    m.report = load_parameters(m.model, "", f, /*allow_missing=*/true, new_labels);
    if constexpr (requires { m.model.num_labels(); })
        if (new_labels)  // a head of the same shape for other labels: new too
            std::erase_if(m.report.loaded, [&](const std::string& n) {
                if (!is_head_parameter<Config>(n)) return false;
                m.report.mismatched.push_back(n);
                return true;
            });
    if constexpr (requires { Model::head_type::ties_input_embeddings; })  // decoder = embeddings
        std::erase_if(m.report.unexpected, [](const std::string& n) {
            return n == "cls.predictions.decoder.weight" || n == "cls.predictions.decoder.bias";
        });
    std::vector<std::string> problems;
    for (const auto& name : m.report.missing)
        if (!is_head_parameter<Config>(name) && !family::may_be_missing(name))
            problems.push_back(name + ": missing from the file");
        else if (!options.allow_new_head)
            problems.push_back(name + ": missing from the file (allow_new_head is off)");
    if (!problems.empty()) {
        std::string msg = ftune::detail::cat(
            problems.size(), " weight(s) missing; is this checkpoint a BERT model of this size?");
        for (const auto& p : problems) msg += "\n  " + p;
        throw error(errc::shape_mismatch, weights_path.string(), msg);
    }
    std::vector<std::string> fresh = m.report.missing;
    fresh.insert(fresh.end(), m.report.mismatched.begin(), m.report.mismatched.end());
    std::uint64_t stream = 0;
    m.model.visit_parameters("", [&](parameter_ref<T> p) {
        ++stream;
        if (std::find(fresh.begin(), fresh.end(), p.name) == fresh.end()) return;
        init_hf_parameter(p, cfg.model.initializer_range, options.seed, stream);
        m.report.initialized.push_back(p.name);
    });
    if constexpr (requires { m.model.head.entity_starts; })  // a relation head: its markers
        if (m.tokenizer) {
            auto markers = data::default_entity_markers();
            if (const auto& j = m.config.json; j.contains("entity_markers")) {
                const auto& e = j["entity_markers"];
                if (!e.is_array() || e.size() != 4 ||
                    !std::all_of(e.begin(), e.end(), [](const auto& x) { return x.is_string(); }))
                    throw error(errc::parse, (dir / "config.json").string() + ": entity_markers",
                                "expected 4 strings (open and close entity 1, then entity 2)");
                markers = e.template get<std::vector<std::string>>();
            }
            add_entity_markers(m, markers);
        }
    return m;
}

namespace detail {
/// The tokenizer files of a BERT model directory: vocab.txt and tokenizer_config.json.
inline std::vector<std::pair<std::string, std::string>> tokenizer_files(
    const text::bert_tokenizer& tokenizer, std::size_t model_max_length) {
    const auto& o = tokenizer.options();
    std::string vocab;
    for (std::size_t i = 0; i < tokenizer.vocab().size(); ++i)
        vocab += tokenizer.vocab().token(std::int32_t(i)) + "\n";
    nlohmann::json t = {{"tokenizer_class", "BertTokenizer"},
                        {"do_lower_case", o.lowercase},
                        {"tokenize_chinese_chars", o.chinese_chars},
                        {"unk_token", o.unk},
                        {"sep_token", o.sep},
                        {"pad_token", o.pad},
                        {"cls_token", o.cls},
                        {"mask_token", o.mask},
                        {"clean_up_tokenization_spaces", true}};
    t["strip_accents"] = o.strip_accents ? nlohmann::json(*o.strip_accents) : nullptr;
    t["model_max_length"] = model_max_length;
    if (!o.extra_special_tokens.empty()) t["additional_special_tokens"] = o.extra_special_tokens;
    return {{"vocab.txt", vocab}, {"tokenizer_config.json", t.dump(2) + "\n"}};
}
/// The tokenizer files of a decoder's directory: tokenizer.json (text::bpe_tokenizer_json) and
/// tokenizer_config.json with the special tokens and the chat template.
inline std::vector<std::pair<std::string, std::string>> tokenizer_files(
    const text::bpe_tokenizer& tokenizer, std::size_t model_max_length) {
    const auto& s = tokenizer.settings();
    nlohmann::ordered_json t = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                                {"add_bos_token", s.add_bos_token},
                                {"clean_up_tokenization_spaces", false},
                                {"model_max_length", model_max_length}};
    for (const auto& [key, token] :
         {std::pair{"bos_token", &s.bos_token}, std::pair{"eos_token", &s.eos_token},
          std::pair{"pad_token", &s.pad_token}})
        t[key] = token->empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(*token);
    if (!s.chat_template.empty()) t["chat_template"] = s.chat_template;
    return {{"tokenizer.json", text::bpe_tokenizer_json(tokenizer).dump(2) + "\n"},
            {"tokenizer_config.json", t.dump(2) + "\n"}};
}
}  // namespace detail

/// Writes a Hugging Face model directory that Transformers' from_pretrained (and load_hf) loads:
/// config.json (config's fields, Model's architecture, the head's id2label / label2id),
/// model.safetensors (float32), and with a tokenizer its files (BERT: vocab.txt and
/// tokenizer_config.json; a decoder's byte-level BPE: tokenizer.json and tokenizer_config.json
/// with the chat template). The files are written into a temporary directory beside `dir`,
/// so a crash never leaves a half-written model: a new directory appears whole; an existing one
/// is swapped for the new one in one step (Linux renameat2) after its other files were linked
/// into it, its subdirectories (a training checkpoint) moved across right after the swap;
/// without that call the finished files are renamed into place one by one. A stale
/// tokenizer.json, which Transformers would prefer to a new vocab.txt, and a stale
/// chat_template.jinja, which it would prefer to the new template, are left out.
template <class Model, class Tokenizer = text::bert_tokenizer>
void save_hf(Model& model, const basic_hf_config<family_config_t<Model>>& config,
             const Tokenizer* tokenizer, const std::filesystem::path& dir,
             std::size_t model_max_length = 0) {
    namespace fs = std::filesystem;
    using family = hf_family<family_config_t<Model>>;
    nlohmann::json j = config.json.is_object() ? config.json : nlohmann::json::object();
    j["architectures"] = {std::string(Model::architecture)};
    j["model_type"] = std::string(family::model_type);
    family::write_config(config.model, j);
    if constexpr (requires { model.num_labels(); }) {  // a classification head's label names
        nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
        for (std::size_t i = 0; i < model.num_labels(); ++i) {
            const std::string name = i < config.id2label.size() && !config.id2label[i].empty()
                                         ? config.id2label[i]
                                         : "LABEL_" + std::to_string(i);
            id2label[std::to_string(i)] = name;
            label2id[name] = i;
        }
        j["id2label"] = id2label;
        j["label2id"] = label2id;
        j.erase("num_labels");  // implied by id2label, as Transformers writes it
    }
    if constexpr (requires { model.head.problem; })  // what the outputs mean, as the head has it
        j["problem_type"] = std::string(heads::to_hf(model.head.problem));
    if (!j.contains("dtype") && !j.contains("torch_dtype")) j["dtype"] = "float32";

    if (fs::exists(dir) && !fs::is_directory(dir))
        throw error(errc::io, dir.string(), "exists and is not a directory");
    const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
    std::error_code ec;
    fs::create_directories(parent, ec);
    // the files are written into a temporary directory beside dir: a new dir appears whole; an
    // existing one (which may hold other files of the user's) gets each file renamed in
    const fs::path tmp = detail::temporary_beside(dir);
    if (!fs::create_directory(tmp, ec))
        throw error(errc::io, dir.string(),
                    "cannot create the temporary directory " + tmp.string() + ": " + ec.message());
    std::vector<std::string> files{"config.json", "model.safetensors"};
    try {
        write_text_atomic(tmp / "config.json", j.dump(2) + "\n");
        save_parameters(model, "", tmp / "model.safetensors");
        if (tokenizer)
            for (const auto& [name, text] : detail::tokenizer_files(
                     *tokenizer,
                     model_max_length ? model_max_length : config.model.max_position_embeddings)) {
                write_text_atomic(tmp / name, text);
                files.push_back(name);
            }
        detail::crash_point("save_hf-written");
        if (!fs::exists(dir)) {
            fs::rename(tmp, dir);  // the whole directory appears at once
            return;
        }
        std::vector<std::string> stale;  // files Transformers would read in place of the new ones
        if (tokenizer) {
            if constexpr (std::is_same_v<Tokenizer, text::bert_tokenizer>)
                stale.push_back("tokenizer.json");
            stale.push_back("chat_template.jinja");
        }
        auto listed = [](const std::vector<std::string>& v, const std::string& name) {
            return std::find(v.begin(), v.end(), name) != v.end();
        };
        // the user's other files and folders (a checkpoint, 1_Pooling/...) come along as hard
        // links (copies where the file system has none), then the new directory takes the old
        // one's place in one step: a crash leaves the previous directory or the new one, whole
        auto link_tree = [&](auto& self, const fs::path& from, const fs::path& to) -> void {
            for (const auto& e : fs::directory_iterator(from)) {
                const fs::path target = to / e.path().filename();
                if (e.is_symlink()) {
                    fs::copy_symlink(e.path(), target);
                } else if (e.is_directory()) {
                    fs::create_directory(target);
                    self(self, e.path(), target);
                } else {
                    std::error_code link_ec;
                    fs::create_hard_link(e.path(), target, link_ec);
                    if (link_ec) fs::copy_file(e.path(), target);
                }
            }
        };
        for (const auto& e : fs::directory_iterator(dir)) {
            const std::string name = e.path().filename().string();
            if (listed(files, name) || listed(stale, name)) continue;
            if (e.is_directory() && !e.is_symlink()) {
                fs::create_directory(tmp / name);
                link_tree(link_tree, e.path(), tmp / name);
            } else if (e.is_symlink()) {
                fs::copy_symlink(e.path(), tmp / name);
            } else {
                fs::create_hard_link(e.path(), tmp / name, ec);
                if (ec) fs::copy_file(e.path(), tmp / name);
            }
        }
        detail::sync_file(tmp);
        if (detail::exchange(tmp, dir)) {  // tmp now holds the previous directory
            detail::crash_point("save_hf-swapped");
            fs::remove_all(tmp, ec);  // (a leftover is only the previous model's links)
            return;
        }
        // no one-step swap on this system: each finished file is renamed into place
        for (const auto& name : stale) fs::remove(dir / name);
        for (const auto& name : files) fs::rename(tmp / name, dir / name);
        fs::remove_all(tmp);
    } catch (const fs::filesystem_error& e) {
        fs::remove_all(tmp, ec);
        throw error(errc::io, dir.string(), std::string("cannot write the model: ") + e.what());
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
}

/// save_hf for a model loaded by load_hf (its configuration and tokenizer).
template <class Model>
void save_hf(hf_model<Model>& m, const std::filesystem::path& dir) {
    save_hf(m.model, m.config, m.tokenizer ? &*m.tokenizer : nullptr, dir, m.model_max_length);
}

}  // namespace io
FTUNE_NAMESPACE_END
