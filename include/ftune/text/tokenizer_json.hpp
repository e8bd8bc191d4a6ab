// text::load_tokenizer_json: a BERT tokenizer from a Hugging Face tokenizer.json (the fast
// tokenizer's file): the WordPiece vocabulary and the BertNormalizer options. Needs nlohmann_json
// besides utf8proc.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/text/bert.hpp"

FTUNE_NAMESPACE_BEGIN
namespace text {

/// Reads tokenizer.json (model.type "WordPiece", normalizer "BertNormalizer"); throws
/// ftune::error naming the file and the field for anything else.
inline bert_tokenizer load_tokenizer_json(const std::filesystem::path& path) {
    const std::string where = path.string();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(errc::io, where, "cannot open tokenizer.json");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where, ftune::detail::cat("malformed JSON: ", e.what()));
    }
    auto bad = [&](const std::string& field, const std::string& what) {
        return error(errc::unsupported, where + ": " + field, what);
    };
    if (!j.contains("model") || !j["model"].is_object()) throw bad("model", "missing");
    const auto& m = j["model"];
    if (m.value("type", "") != "WordPiece")
        throw bad("model.type", "\"" + m.value("type", "") +
                                    "\": only WordPiece (BERT) tokenizers are supported");
    if (m.value("continuing_subword_prefix", "##") != "##")
        throw bad("model.continuing_subword_prefix", "only \"##\" is supported");
    if (!m.contains("vocab") || !m["vocab"].is_object()) throw bad("model.vocab", "missing");
    // tokens ordered by id; ids must be 0 .. n-1
    std::vector<std::string> tokens(m["vocab"].size());
    std::vector<bool> seen(tokens.size(), false);
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
        if (!it->is_number_integer()) throw bad("model.vocab." + it.key(), "id is not an integer");
        const auto id = it->get<long long>();
        if (id < 0 || std::size_t(id) >= tokens.size() || seen[std::size_t(id)])
            throw bad(
                "model.vocab." + it.key(),
                ftune::detail::cat("id ", id, " is not a unique id in [0, ", tokens.size(), ")"));
        tokens[std::size_t(id)] = it.key();
        seen[std::size_t(id)] = true;
    }
    vocabulary v;
    for (auto& t : tokens) v.add(std::move(t));
    bert_options opt;
    opt.unk = m.value("unk_token", std::string("[UNK]"));
    opt.max_input_chars_per_word = m.value("max_input_chars_per_word", std::size_t(100));
    if (j.contains("normalizer") && j["normalizer"].is_object()) {
        const auto& n = j["normalizer"];
        if (n.value("type", "") != "BertNormalizer")
            throw bad("normalizer.type",
                      "\"" + n.value("type", "") + "\": only BertNormalizer is supported");
        if (!n.value("clean_text", true))
            throw bad("normalizer.clean_text", "false is not supported");
        opt.lowercase = n.value("lowercase", true);
        opt.chinese_chars = n.value("handle_chinese_chars", true);
        if (n.contains("strip_accents") && n["strip_accents"].is_boolean())
            opt.strip_accents = n["strip_accents"].get<bool>();
    }
    return bert_tokenizer(std::move(v), std::move(opt));
}

}  // namespace text
FTUNE_NAMESPACE_END
