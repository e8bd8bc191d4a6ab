// How a sentence-transformers model directory (all-MiniLM-L6-v2...) turns hidden states into one
// vector per text: modules.json lists the modules (Transformer, Pooling, Normalize),
// 1_Pooling/config.json the pooling modes (sentence-transformers 3-5's pooling_mode_*_tokens
// flags or 6's pooling_mode name or list), sentence_bert_config.json the longest input. A
// directory without modules.json is pooled by the mean, without normalization. Modules ftune
// does not run (Dense, LayerNorm...), and do_lower_case, are errors naming the file.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/core/error.hpp"
#include "ftune/heads/pooling.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// What sentence-transformers' modules after the encoder do.
struct sentence_config {
    std::vector<heads::pooling> pooling{heads::pooling::mean};  ///< concatenated in this order
    bool normalize = false;          ///< a Normalize module follows the pooling
    std::size_t max_seq_length = 0;  ///< tokens per input (0: the model's maximum)
    std::size_t dimension = 0;       ///< the Pooling module's input width (0: not given)
    bool from_modules = false;       ///< read from modules.json (false: the defaults)
};

/// The pooling modes of a Pooling module's config.json contents (`where` names it in errors):
/// "pooling_mode" (a name or a list) or the older pooling_mode_*_tokens flags (in
/// sentence-transformers' order: cls, max, mean, mean_sqrt_len, weightedmean, lasttoken; none
/// set means the mean). Sets the dimension from embedding_dimension / word_embedding_dimension.
inline void parse_pooling_config(std::string_view contents, const std::string& where,
                                 sentence_config& c) {
    const auto j = nlohmann::json::parse(contents, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
        throw error(errc::parse, where, "not a JSON object (a Pooling module's config.json)");
    c.pooling.clear();
    auto name = [&](const nlohmann::json& v) {
        if (!v.is_string()) throw error(errc::parse, where + ": pooling_mode", "not a mode name");
        return heads::pooling_from_name(v.get<std::string>(), where + ": pooling_mode");
    };
    if (j.contains("pooling_mode")) {
        const auto& m = j["pooling_mode"];
        if (m.is_array())
            for (const auto& e : m) c.pooling.push_back(name(e));
        else
            c.pooling.push_back(name(m));
        if (c.pooling.empty()) throw error(errc::parse, where + ": pooling_mode", "an empty list");
    } else {
        using heads::pooling;
        const std::pair<const char*, pooling> flags[] = {
            {"pooling_mode_cls_token", pooling::cls},
            {"pooling_mode_max_tokens", pooling::max},
            {"pooling_mode_mean_tokens", pooling::mean},
            {"pooling_mode_mean_sqrt_len_tokens", pooling::mean_sqrt_len},
            {"pooling_mode_weightedmean_tokens", pooling::weighted_mean},
            {"pooling_mode_lasttoken", pooling::last_token}};
        for (const auto& [key, mode] : flags)
            if (j.contains(key)) {
                if (!j[key].is_boolean())
                    throw error(errc::parse, where + ": " + key, "not true or false");
                if (j[key].get<bool>()) c.pooling.push_back(mode);
            }
        if (c.pooling.empty()) c.pooling.push_back(pooling::mean);
    }
    for (const char* key : {"embedding_dimension", "word_embedding_dimension"})
        if (j.contains(key)) {
            if (!j[key].is_number_unsigned() || j[key].get<std::size_t>() == 0)
                throw error(errc::parse, where + ": " + key, "not a positive integer");
            c.dimension = j[key].get<std::size_t>();
        }
}

namespace detail {
// The contents of a file; throws naming it.
inline std::string file_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(errc::io, path.string(), "cannot open the file");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace detail

/// The sentence-transformers configuration of model directory `dir` (see the file comment).
inline sentence_config read_sentence_config(const std::filesystem::path& dir) {
    sentence_config c;
    const auto modules_path = dir / "modules.json";
    if (!std::filesystem::exists(modules_path)) return c;
    const std::string where = modules_path.string();
    const auto modules =
        nlohmann::json::parse(detail::file_text(modules_path), nullptr, /*allow_exceptions=*/false);
    if (modules.is_discarded() || !modules.is_array())
        throw error(errc::parse, where, "not a JSON list of modules");
    c.from_modules = true;
    bool encoder = false, pooled = false;
    for (std::size_t i = 0; i < modules.size(); ++i) {
        const auto& m = modules[i];
        const std::string at = ftune::detail::cat(where, ": module ", i);
        if (!m.is_object() || !m.contains("type") || !m["type"].is_string())
            throw error(errc::parse, at, "needs a \"type\"");
        const std::string type = m["type"].get<std::string>();
        const std::string path =
            m.contains("path") && m["path"].is_string() ? m["path"].get<std::string>() : "";
        const std::string kind = type.substr(type.rfind('.') + 1);  // models.Pooling -> Pooling
        if (kind == "Transformer" && !encoder && !pooled) {
            if (!path.empty())
                throw error(errc::unsupported, at,
                            "the Transformer module is in \"" + path +
                                "\": ftune reads the encoder from the directory itself");
            encoder = true;
        } else if (kind == "Pooling" && encoder && !pooled) {
            parse_pooling_config(detail::file_text(dir / path / "config.json"),
                                 (dir / path / "config.json").string(), c);
            pooled = true;
        } else if (kind == "Normalize" && pooled && !c.normalize) {
            c.normalize = true;
        } else {
            throw error(errc::unsupported, at,
                        type +
                            ": ftune runs a Transformer, a Pooling and an optional Normalize "
                            "module, in that order");
        }
    }
    if (!pooled) throw error(errc::unsupported, where, "no Pooling module after the Transformer");
    const auto bert_config = dir / "sentence_bert_config.json";
    if (std::filesystem::exists(bert_config)) {
        const auto j = nlohmann::json::parse(detail::file_text(bert_config), nullptr, false);
        if (j.is_discarded() || !j.is_object())
            throw error(errc::parse, bert_config.string(), "not a JSON object");
        if (j.contains("max_seq_length") && !j["max_seq_length"].is_null()) {
            if (!j["max_seq_length"].is_number_unsigned() || j["max_seq_length"] == 0)
                throw error(errc::parse, bert_config.string() + ": max_seq_length",
                            "not a positive integer");
            c.max_seq_length = j["max_seq_length"].get<std::size_t>();
        }
        if (j.contains("do_lower_case") && j["do_lower_case"] == true)
            throw error(errc::unsupported, bert_config.string() + ": do_lower_case",
                        "true: ftune lowercases through the tokenizer's own setting only");
    }
    return c;
}

}  // namespace io
FTUNE_NAMESPACE_END
