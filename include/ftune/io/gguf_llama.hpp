// io: Llama-family models from GGUF files (llama.cpp's names and layouts): the configuration from
// the "llama.*" metadata, the byte-level BPE tokenizer from the "tokenizer.ggml.*" metadata, the
// weights by llama.cpp's tensor names, dequantized, with the query and key rows put back from
// llama.cpp's rotary layout into Transformers' (the inverse of the permutation
// convert_hf_to_gguf.py applies).
#pragma once

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ftune/io/gguf.hpp"
#include "ftune/io/hf.hpp"
#include "ftune/text/bpe.hpp"
#include "ftune/llama/decoder.hpp"
#include "ftune/llama/tasks.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

namespace detail {
/// The metadata value `key` of f as an unsigned size; throws naming the file and key when it is
/// missing (and required) or not a positive integer below 2^26.
inline std::size_t gguf_size(const gguf_file& f, const std::string& key, bool required,
                             std::size_t otherwise = 0) {
    const auto& m = f.metadata();
    if (!m.contains(key)) {
        if (required)
            throw error(errc::parse, f.path() + ": " + key,
                        "missing; a GGUF file of this architecture gives it (is "
                        "general.architecture right?)");
        return otherwise;
    }
    const auto& v = m[key];
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() == 0 ||
        v.get<std::uint64_t>() > (std::uint64_t(1) << 26))
        throw error(errc::parse, f.path() + ": " + key,
                    "must be a positive integer below 2^26, not " + v.dump());
    return v.get<std::size_t>();
}
/// The metadata number `key` of f (otherwise when absent); throws naming the file and key when
/// it is not a finite number in (0, hi).
inline double gguf_real(const gguf_file& f, const std::string& key, double otherwise, double hi) {
    const auto& m = f.metadata();
    if (!m.contains(key)) return otherwise;
    const auto& v = m[key];
    const double x = v.is_number() ? v.get<double>() : -1.0;
    if (!(x > 0 && x < hi))  // NaN and non-numbers fail too
        throw error(errc::parse, f.path() + ": " + key,
                    ftune::detail::cat("must be a number in (0, ", hi, "), not ", v.dump()));
    return x;
}
}  // namespace detail

/// general.architecture of a GGUF file ("llama", "gpt2", ...; "" when absent).
inline std::string gguf_architecture(const gguf_file& f) {
    const auto& m = f.metadata();
    return m.contains("general.architecture") && m["general.architecture"].is_string()
               ? m["general.architecture"].get<std::string>()
               : std::string();
}

/// The llama::config of a GGUF whose general.architecture is "llama" (SmolLM2, Llama 2/3,
/// TinyLlama, ...), from the "llama.*" and "tokenizer.ggml.*" metadata. The LM head is tied
/// when the file has no output.weight. Throws naming the file and the field otherwise.
inline llama::config llama_config_from_gguf(const gguf_file& f) {
    const auto& m = f.metadata();
    const std::string arch = gguf_architecture(f);
    if (arch != "llama")
        throw error(errc::unsupported, f.path(),
                    "general.architecture is \"" + arch +
                        "\": a Llama-family model needs \"llama\" (ftune also reads \"gpt2\")");
    llama::config c;
    c.hidden_size = detail::gguf_size(f, "llama.embedding_length", true);
    c.intermediate_size = detail::gguf_size(f, "llama.feed_forward_length", true);
    c.num_hidden_layers = detail::gguf_size(f, "llama.block_count", true);
    c.num_attention_heads = detail::gguf_size(f, "llama.attention.head_count", true);
    c.num_key_value_heads =
        detail::gguf_size(f, "llama.attention.head_count_kv", false, c.num_attention_heads);
    c.max_position_embeddings = detail::gguf_size(f, "llama.context_length", false, 2048);
    const std::size_t rot = detail::gguf_size(f, "llama.rope.dimension_count", false, 0);
    c.head_dim = rot;  // llama.cpp writes the rotary dimension, the head size for Llama
    if (c.head_size() == 0 || c.num_attention_heads % c.num_key_value_heads != 0)
        throw error(errc::parse, f.path() + ": llama.attention.head_count_kv",
                    ftune::detail::cat(c.num_key_value_heads, " key/value heads must divide the ",
                                       c.num_attention_heads, " query heads"));
    c.rms_norm_eps =
        detail::gguf_real(f, "llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps, 1);
    c.rope_theta = detail::gguf_real(f, "llama.rope.freq_base", c.rope_theta, 1e12);
    const auto& tokens = f.at("token_embd.weight");
    if (tokens.shape.size() != 2 || tokens.shape[1] != c.hidden_size)
        throw error(errc::shape_mismatch, f.path() + ": token_embd.weight",
                    ftune::detail::cat("must be (vocabulary, ", c.hidden_size, ")"));
    c.vocab_size = tokens.shape[0];
    c.tie_word_embeddings = f.find("output.weight") == nullptr;
    auto id = [&](const char* key, token_id otherwise) {
        return m.contains(key) && m[key].is_number_integer() ? m[key].get<token_id>() : otherwise;
    };
    c.bos_token_id = id("tokenizer.ggml.bos_token_id", 1);
    c.eos_token_id = id("tokenizer.ggml.eos_token_id", 2);
    c.pad_token_id = id("tokenizer.ggml.padding_token_id", -1);
    return c;
}

/// The byte-level BPE tokenizer a GGUF carries (tokenizer.ggml.model "gpt2": GPT-2, Llama 3,
/// SmolLM2): tokenizer.ggml.tokens (id = position), .merges ("a b"), .token_type (3 control
/// and 4 user-defined tokens are matched whole in the text, as added tokens), and .pre, the
/// pre-tokenizer: "gpt-2" (llama.cpp's name), "gpt2" or "default" (GPT-2's pattern) or "smollm"
/// (each digit alone first, as SmolLM2's tokenizer.json). Other models and pre-tokenizers throw
/// naming the field.
inline text::bpe_tokenizer bpe_tokenizer_from_gguf(const gguf_file& f) {
    const auto& m = f.metadata();
    auto bad = [&](const std::string& key, const std::string& what) {
        return error(errc::unsupported, f.path() + ": " + key, what);
    };
    auto string_of = [&](const char* key) {
        return m.contains(key) && m[key].is_string() ? m[key].get<std::string>() : std::string();
    };
    const std::string model = string_of("tokenizer.ggml.model");
    if (model != "gpt2")
        throw bad("tokenizer.ggml.model",
                  "\"" + model + "\": ftune reads byte-level BPE (\"gpt2\") tokenizers");
    const std::string pre = string_of("tokenizer.ggml.pre");
    text::bpe_options o;
    if (pre == "smollm")
        o.individual_digits = true;
    else if (!pre.empty() && pre != "gpt-2" && pre != "gpt2" && pre != "default")
        throw bad("tokenizer.ggml.pre",
                  "\"" + pre + "\": ftune runs the gpt-2 and smollm pre-tokenizers");
    const auto& tokens =
        m.contains("tokenizer.ggml.tokens") ? m["tokenizer.ggml.tokens"] : nlohmann::json();
    if (!tokens.is_array() || tokens.empty())
        throw bad("tokenizer.ggml.tokens", "missing or not an array of strings");
    const auto& types = m.contains("tokenizer.ggml.token_type") ? m["tokenizer.ggml.token_type"]
                                                                : nlohmann::json::array();
    std::unordered_map<std::string, std::int32_t> vocab;
    std::vector<std::pair<std::string, std::int32_t>> specials;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (!tokens[i].is_string()) throw bad("tokenizer.ggml.tokens", "an entry is not a string");
        const std::string t = tokens[i].get<std::string>();
        const int type = i < types.size() && types[i].is_number_integer() ? types[i].get<int>() : 1;
        if (type == 3 || type == 4)  // control, user-defined: matched whole
            specials.emplace_back(t, std::int32_t(i));
        else
            vocab.emplace(t, std::int32_t(i));
    }
    std::vector<std::pair<std::string, std::string>> merges;
    if (m.contains("tokenizer.ggml.merges") && m["tokenizer.ggml.merges"].is_array())
        for (const auto& e : m["tokenizer.ggml.merges"]) {
            const std::string s = e.is_string() ? e.get<std::string>() : std::string();
            const std::size_t sp = s.find(' ');
            if (sp == std::string::npos)
                throw bad("tokenizer.ggml.merges", "\"" + s + "\" is not a pair \"a b\"");
            merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        }
    text::bpe_tokenizer tok(std::move(vocab), merges, std::move(specials), o);
    // the special tokens' roles (ids) and the chat template
    text::lm_tokenizer_settings s;
    auto token_of = [&](const char* key) -> std::string {
        if (!m.contains(key)) return {};
        const auto& v = m[key];
        if (!v.is_number_unsigned() || v.get<std::uint64_t>() >= tokens.size())
            throw bad(key, "is not the id of a token of tokenizer.ggml.tokens: " + v.dump());
        return tokens[v.get<std::size_t>()].get<std::string>();
    };
    s.bos_token = token_of("tokenizer.ggml.bos_token_id");
    s.eos_token = token_of("tokenizer.ggml.eos_token_id");
    s.pad_token = token_of("tokenizer.ggml.padding_token_id");
    s.add_bos_token = m.contains("tokenizer.ggml.add_bos_token") &&
                      m["tokenizer.ggml.add_bos_token"].is_boolean() &&
                      m["tokenizer.ggml.add_bos_token"].get<bool>();
    s.chat_template = string_of("tokenizer.chat_template");
    tok.set_settings(std::move(s));
    return tok;
}

/// llama.cpp's tensor name of a LlamaModel parameter ("layers.3.self_attn.q_proj.weight" ->
/// "blk.3.attn_q.weight"), prefixed as the model visits it (the backbone's "model." or none);
/// "" for a name llama.cpp has no tensor for.
inline std::string llama_gguf_name(std::string_view name) {
    if (name.starts_with("model.")) name.remove_prefix(6);
    if (name == "embed_tokens.weight") return "token_embd.weight";
    if (name == "norm.weight") return "output_norm.weight";
    if (name == "lm_head.weight") return "output.weight";
    if (!name.starts_with("layers.")) return "";
    name.remove_prefix(7);
    const std::size_t dot = name.find('.');
    if (dot == std::string_view::npos) return "";
    const std::string block = "blk." + std::string(name.substr(0, dot)) + ".";
    const std::string_view rest = name.substr(dot + 1);
    static constexpr std::pair<std::string_view, std::string_view> map[] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
    };
    for (const auto& [hf, gg] : map)
        if (rest == hf) return block + std::string(gg);
    return "";
}

/// Reads every parameter of a Llama model (llama::decoder, or a task model on it) from a GGUF
/// file: dequantized, shapes checked, q_proj and k_proj rows put back into Transformers' rotary
/// layout (heads of d rows: llama.cpp stores row 2i + j of a head where Transformers has row
/// j d/2 + i). Every missing tensor and wrong shape is reported in one error. Returns the task
/// head's parameters GGUF has no name for (a classifier's "score.weight"), left unread.
template <class Model>
std::vector<std::string> load_llama_gguf(Model& model, const gguf_file& f, const llama::config& c) {
    using T = typename Model::value_type;
    std::vector<std::string> problems, unnamed;
    const std::size_t d = c.head_size();
    model.visit_parameters("", [&](parameter_ref<T> p) {
        const std::string name = llama_gguf_name(p.name);
        if (name.empty() && !hf_family<llama::config>::is_backbone_parameter(p.name))
            return unnamed.push_back(p.name);
        const gguf_tensor* t = name.empty() ? nullptr : f.find(name);
        if (!t) {
            problems.push_back(p.name + ": no tensor " + (name.empty() ? "for it" : name));
            return;
        }
        const std::vector<std::size_t> want(p.extents.begin(), p.extents.begin() + p.rank);
        if (t->shape != want) {
            tensor_info w, g;
            w.shape = want;
            g.shape = t->shape;
            problems.push_back(ftune::detail::cat(name, ": the file holds ", g.shape_string(), ", ",
                                                  p.name, " needs ", w.shape_string()));
            return;
        }
        f.read(*t, p.value);
        const bool q = p.name.ends_with("self_attn.q_proj.weight"),
                   k = p.name.ends_with("self_attn.k_proj.weight");
        if (!q && !k) return;
        // rows of each head: file row 2i + j holds Transformers' row j d/2 + i
        const std::size_t cols = want[1], heads = want[0] / d;
        std::vector<T> head(d * cols);
        for (std::size_t h = 0; h < heads; ++h) {
            T* rows = p.value.data() + h * d * cols;
            std::copy_n(rows, d * cols, head.data());
            for (std::size_t i = 0; i < d / 2; ++i)
                for (std::size_t j = 0; j < 2; ++j)
                    std::copy_n(head.data() + (2 * i + j) * cols, cols,
                                rows + (j * (d / 2) + i) * cols);
        }
    });
    if (!problems.empty()) {
        std::string msg =
            ftune::detail::cat(problems.size(), " problem(s) reading the Llama weights:");
        for (const auto& p : problems) msg += "\n  " + p;
        throw error(errc::shape_mismatch, f.path(), msg);
    }
    return unnamed;
}

}  // namespace io
FTUNE_NAMESPACE_END
