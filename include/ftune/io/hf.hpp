// io: Hugging Face checkpoints — config.json and loading model.safetensors into ftune's models by
// parameter name, every shape validated and every problem reported at once.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/io/safetensors.hpp"
#include "ftune/models/bert.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// A BERT config.json: the sizes ftune builds from and what Hugging Face records beside them.
struct hf_config {
    bert::config model;                      ///< sizes, dropout, layer_norm_eps, pad_token_id
    std::string hidden_act = "gelu";         ///< "gelu", "gelu_new" or "relu"
    std::vector<std::string> architectures;  ///< e.g. "BertForSequenceClassification"
    std::vector<std::string> id2label;       ///< label names by id (empty: none recorded)
    std::string problem_type;                ///< "single_label_classification", ...
    double initializer_range = 0.02;         ///< std of new weights (heads missing from a file)
};

/// Reads config.json; a missing or malformed field is an ftune::error naming the file and it.
inline hf_config read_hf_config(const std::filesystem::path& path) {
    const std::string where = path.string();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(errc::io, where, "cannot open config.json");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where, ftune::detail::cat("malformed JSON: ", e.what()));
    }
    if (!j.is_object()) throw error(errc::parse, where, "config.json is not a JSON object");
    auto size = [&](const char* key, std::size_t& out, bool required) {
        if (!j.contains(key)) {
            if (required)
                throw error(errc::parse, where + ": " + key,
                            "missing; a BERT config.json gives it");
            return;
        }
        if (!j[key].is_number_unsigned() || j[key].get<std::uint64_t>() == 0)
            throw error(errc::parse, where + ": " + key, "must be a positive integer");
        out = j[key].get<std::size_t>();
    };
    auto real = [&](const char* key, double& out) {
        if (!j.contains(key) || j[key].is_null()) return;
        if (!j[key].is_number()) throw error(errc::parse, where + ": " + key, "must be a number");
        out = j[key].get<double>();
    };
    hf_config c;
    size("vocab_size", c.model.vocab_size, true);
    size("hidden_size", c.model.hidden_size, true);
    size("num_hidden_layers", c.model.num_hidden_layers, true);
    size("num_attention_heads", c.model.num_attention_heads, true);
    size("intermediate_size", c.model.intermediate_size, true);
    size("max_position_embeddings", c.model.max_position_embeddings, false);
    size("type_vocab_size", c.model.type_vocab_size, false);
    real("hidden_dropout_prob", c.model.hidden_dropout_prob);
    real("attention_probs_dropout_prob", c.model.attention_probs_dropout_prob);
    real("layer_norm_eps", c.model.layer_norm_eps);
    real("initializer_range", c.initializer_range);
    if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer())
        c.model.pad_token_id = j["pad_token_id"].get<token_id>();
    if (c.model.hidden_size % c.model.num_attention_heads != 0)
        throw error(errc::parse, where + ": num_attention_heads",
                    ftune::detail::cat(c.model.num_attention_heads, " heads do not divide ",
                                       "hidden_size ", c.model.hidden_size));
    if (j.contains("hidden_act")) {
        if (!j["hidden_act"].is_string())
            throw error(errc::parse, where + ": hidden_act", "must be a string");
        c.hidden_act = j["hidden_act"].get<std::string>();
        if (c.hidden_act != "gelu" && c.hidden_act != "gelu_new" && c.hidden_act != "relu")
            throw error(errc::unsupported, where + ": hidden_act",
                        "\"" + c.hidden_act + "\": ftune runs gelu, gelu_new and relu");
    }
    if (j.contains("architectures") && j["architectures"].is_array())
        for (const auto& a : j["architectures"])
            if (a.is_string()) c.architectures.push_back(a.get<std::string>());
    if (j.contains("problem_type") && j["problem_type"].is_string())
        c.problem_type = j["problem_type"].get<std::string>();
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
    return c;
}

/// What load_parameters did: file names it read, parameters it did not find, tensors it did not
/// use.
struct load_report {
    std::vector<std::string> loaded;      ///< parameters read (their names in the model)
    std::vector<std::string> missing;     ///< model parameters absent from the file
    std::vector<std::string> unexpected;  ///< file tensors no parameter asked for
};

/// The file's name for model parameter `name`: the name itself, with a "bert." prefix
/// (Bert*For* checkpoints), and with the legacy LayerNorm names gamma/beta; nullptr if absent.
inline const tensor_info* find_hf_tensor(const safetensors_file& f, const std::string& name) {
    std::vector<std::string> candidates{name, "bert." + name};
    auto legacy = [](std::string n) {
        if (n.ends_with("LayerNorm.weight")) return n.substr(0, n.size() - 6) + "gamma";
        if (n.ends_with("LayerNorm.bias")) return n.substr(0, n.size() - 4) + "beta";
        return std::string();
    };
    if (auto l = legacy(name); !l.empty()) {
        candidates.push_back(l);
        candidates.push_back("bert." + l);
    }
    for (const auto& c : candidates)
        if (const auto* t = f.find(c)) return t;
    return nullptr;
}

/// Reads every parameter model.visit_parameters(prefix, ...) names from f (converting F16/BF16/F64
/// to T). Every shape is checked; all mismatches, and (unless allow_missing) all missing
/// parameters, are reported in one ftune::error. Buffers Hugging Face saves that are not
/// parameters (position_ids) are not "unexpected".
template <class Model>
load_report load_parameters(Model& model, std::string_view prefix, const safetensors_file& f,
                            bool allow_missing = false) {
    using T = typename Model::value_type;
    load_report r;
    std::vector<std::string> problems;
    std::vector<const tensor_info*> used;
    model.visit_parameters(prefix, [&](parameter_ref<T> p) {
        const tensor_info* t = find_hf_tensor(f, p.name);
        if (!t) {
            r.missing.push_back(p.name);
            return;
        }
        used.push_back(t);
        bool same = t->shape.size() == p.rank;
        for (std::size_t i = 0; same && i < p.rank; ++i) same = t->shape[i] == p.extents[i];
        if (!same) {
            problems.push_back(ftune::detail::cat(t->name, ": the file holds ", t->shape_string(),
                                                  ", the model needs ", p.shape_string()));
            return;
        }
        f.read(*t, p.value);
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
/// (float32, Hugging Face's names and shapes), atomically; "format": "pt" metadata as Transformers
/// writes.
template <class Model>
void save_parameters(Model& model, std::string_view prefix, const std::filesystem::path& path) {
    using T = typename Model::value_type;
    std::vector<std::vector<float>> copies;  // float32 values (T may be double)
    std::vector<tensor_to_write> tensors;
    model.visit_parameters(prefix, [&](parameter_ref<T> p) {
        copies.emplace_back(p.value.begin(), p.value.end());
        tensors.push_back(
            {p.name, std::vector<std::size_t>(p.extents.begin(), p.extents.begin() + p.rank), {}});
    });
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].values = copies[i];
    write_safetensors(path, tensors, {{"format", "pt"}});
}

}  // namespace io
FTUNE_NAMESPACE_END
