// io: GPT-2 models from GGUF files (llama.cpp's "gpt2" architecture): the configuration from the
// "gpt2.*" metadata and the weights by llama.cpp's tensor names, dequantized. llama.cpp stores
// GPT-2's Conv1D weights transposed to (out, in), as ftune's linear layers hold them, keeps the
// attention's q, k and v fused ("attn_qkv", cut apart here), and writes the tied LM head as
// "output.weight", a copy of the token table (tied again here when the bytes are the same).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "ftune/gpt2/tasks.hpp"
#include "ftune/io/gguf_llama.hpp"
#include "ftune/io/hf.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// The gpt2::config of a GGUF whose general.architecture is "gpt2", from the "gpt2.*" and
/// "tokenizer.ggml.*" metadata; the positions are position_embd.weight's rows, the LM head is
/// tied unless output.weight differs from token_embd.weight. Throws naming the file and field.
inline gpt2::config gpt2_config_from_gguf(const gguf_file& f) {
    const std::string arch = gguf_architecture(f);
    if (arch != "gpt2")
        throw error(errc::unsupported, f.path(),
                    "general.architecture is \"" + arch +
                        "\": a GPT-2 model needs \"gpt2\" (ftune also reads \"llama\")");
    gpt2::config c;
    c.hidden_size = detail::gguf_size(f, "gpt2.embedding_length", true);
    c.num_hidden_layers = detail::gguf_size(f, "gpt2.block_count", true);
    c.num_attention_heads = detail::gguf_size(f, "gpt2.attention.head_count", true);
    c.intermediate_size =
        detail::gguf_size(f, "gpt2.feed_forward_length", false, 4 * c.hidden_size);
    if (c.hidden_size % c.num_attention_heads != 0)
        throw error(errc::parse, f.path() + ": gpt2.attention.head_count",
                    ftune::detail::cat(c.num_attention_heads, " heads do not divide the width ",
                                       c.hidden_size));
    c.layer_norm_eps =
        detail::gguf_real(f, "gpt2.attention.layer_norm_epsilon", c.layer_norm_eps, 1);
    auto table = [&](const char* name) -> const gguf_tensor& {
        const auto& t = f.at(name);
        if (t.shape.size() != 2 || t.shape[1] != c.hidden_size)
            throw error(errc::shape_mismatch, f.path() + ": " + name,
                        ftune::detail::cat("must be (rows, ", c.hidden_size, ")"));
        return t;
    };
    const auto& tokens = table("token_embd.weight");
    c.vocab_size = tokens.shape[0];
    c.max_position_embeddings = table("position_embd.weight").shape[0];
    const gguf_tensor* out = f.find("output.weight");
    c.tie_word_embeddings =
        out == nullptr || (out->type == tokens.type && out->shape == tokens.shape &&
                           std::ranges::equal(f.bytes(*out), f.bytes(tokens)));
    c.hidden_act = ops::activation::gelu_tanh;  // llama.cpp's GPT-2 graph: gelu (tanh form)
    const auto& m = f.metadata();
    auto id = [&](const char* key, token_id otherwise) {
        return m.contains(key) && m[key].is_number_integer() ? m[key].get<token_id>() : otherwise;
    };
    c.bos_token_id = id("tokenizer.ggml.bos_token_id", c.bos_token_id);
    c.eos_token_id = id("tokenizer.ggml.eos_token_id", c.eos_token_id);
    c.pad_token_id = id("tokenizer.ggml.padding_token_id", -1);
    return c;
}

/// Where a GPT-2 parameter lives in a GGUF file: llama.cpp's tensor and, for the attention's
/// q, k and v, which of the fused tensor's three row blocks.
struct gguf_slot {
    std::string name;       ///< llama.cpp's tensor name ("" when it has none)
    std::size_t part = 0;   ///< the row block (q 0, k 1, v 2)
    std::size_t parts = 1;  ///< row blocks in the tensor (3 for attn_qkv)
};

/// llama.cpp's slot of a GPT2Model / GPT2LMHeadModel parameter ("transformer.h.3.attn.k_proj.
/// weight" -> block 1 of "blk.3.attn_qkv.weight"; "h.0.mlp.c_fc.bias" -> "blk.0.ffn_up.bias").
inline gguf_slot gpt2_gguf_slot(std::string_view name) {
    if (name.starts_with("transformer.")) name.remove_prefix(12);
    if (name == "wte.weight") return {"token_embd.weight"};
    if (name == "wpe.weight") return {"position_embd.weight"};
    if (name == "ln_f.weight") return {"output_norm.weight"};
    if (name == "ln_f.bias") return {"output_norm.bias"};
    if (name == "lm_head.weight") return {"output.weight"};
    if (!name.starts_with("h.")) return {};
    name.remove_prefix(2);
    const std::size_t dot = name.find('.');
    if (dot == std::string_view::npos) return {};
    const std::string block = "blk." + std::string(name.substr(0, dot)) + ".";
    std::string_view rest = name.substr(dot + 1);
    const std::size_t last = rest.rfind('.');
    if (last == std::string_view::npos) return {};
    const std::string kind(rest.substr(last));  // ".weight" or ".bias"
    rest = rest.substr(0, last);
    static constexpr std::pair<std::string_view, std::string_view> map[] = {
        {"ln_1", "attn_norm"},  {"attn.o_proj", "attn_output"}, {"ln_2", "ffn_norm"},
        {"mlp.c_fc", "ffn_up"}, {"mlp.c_proj", "ffn_down"},
    };
    for (const auto& [hf, gg] : map)
        if (rest == hf) return {block + std::string(gg) + kind};
    static constexpr std::string_view qkv[] = {"attn.q_proj", "attn.k_proj", "attn.v_proj"};
    for (std::size_t i = 0; i < 3; ++i)
        if (rest == qkv[i]) return {block + "attn_qkv" + kind, i, 3};
    return {};
}

/// Reads every parameter of a GPT-2 model (gpt2::decoder, or a task model on it) from a GGUF
/// file: dequantized, shapes checked, q, k and v cut from attn_qkv (rows q, then k, then v, as
/// ftune's projections). Every missing tensor and wrong shape is reported in one error. Returns
/// the task head's parameters GGUF has no name for (a classifier's "score.weight"), left unread.
template <class Model>
std::vector<std::string> load_gpt2_gguf(Model& model, const gguf_file& f, const gpt2::config&) {
    using T = typename Model::value_type;
    std::vector<std::string> problems, unnamed;
    std::string fused_name;  // the fused tensor read last (q, k and v come one after another)
    std::vector<T> fused;
    model.visit_parameters("", [&](parameter_ref<T> p) {
        const gguf_slot s = gpt2_gguf_slot(p.name);
        if (s.name.empty() && !hf_family<gpt2::config>::is_backbone_parameter(p.name))
            return unnamed.push_back(p.name);
        const gguf_tensor* t = s.name.empty() ? nullptr : f.find(s.name);
        if (!t) {
            problems.push_back(p.name + ": no tensor " + (s.name.empty() ? "for it" : s.name));
            return;
        }
        std::vector<std::size_t> want(p.extents.begin(), p.extents.begin() + p.rank);
        if (!want.empty()) want[0] *= s.parts;
        if (t->shape != want) {
            tensor_info w, g;
            w.shape = want;
            g.shape = t->shape;
            problems.push_back(ftune::detail::cat(s.name, ": the file holds ", g.shape_string(),
                                                  ", ", p.name, " needs ", w.shape_string()));
            return;
        }
        if (s.parts == 1) return f.read(*t, p.value);
        if (fused_name != s.name) fused = f.read<T>(*t), fused_name = s.name;
        const std::size_t n = p.value.size();
        std::copy_n(fused.data() + s.part * n, n, p.value.data());
    });
    if (!problems.empty()) {
        std::string msg =
            ftune::detail::cat(problems.size(), " problem(s) reading the GPT-2 weights:");
        for (const auto& p : problems) msg += "\n  " + p;
        throw error(errc::shape_mismatch, f.path(), msg);
    }
    return unnamed;
}

}  // namespace io
FTUNE_NAMESPACE_END
