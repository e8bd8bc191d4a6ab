// text::load_tokenizer_json / load_bpe_tokenizer_json: tokenizers from a Hugging Face
// tokenizer.json (the fast tokenizer's file): BERT's WordPiece vocabulary and BertNormalizer
// options, or a byte-level BPE's vocabulary, merges, added tokens and pre-tokenizer. Needs
// nlohmann_json besides utf8proc.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/text/bert.hpp"
#include "ftune/text/bpe.hpp"

FTUNE_NAMESPACE_BEGIN
namespace text {

namespace detail {
/// The parsed tokenizer.json at path; an unreadable file or malformed JSON is an ftune::error
/// naming it.
inline nlohmann::json read_tokenizer_json(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(errc::io, path.string(), "cannot open tokenizer.json");
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, path.string(), ftune::detail::cat("malformed JSON: ", e.what()));
    }
}
}  // namespace detail

namespace detail {
/// Runs f(), turning a JSON type or range error (a field of an unexpected type that the checks
/// did not catch) into an ftune::error naming `where`.
template <class F>
auto json_guarded(const std::string& where, F&& f) {
    try {
        return f();
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where,
                    ftune::detail::cat("a field of an unexpected type: ", e.what()));
    }
}
}  // namespace detail

/// A WordPiece tokenizer from a parsed tokenizer.json (model.type "WordPiece", normalizer
/// "BertNormalizer"); throws ftune::error naming `where` and the field for anything else.
inline bert_tokenizer tokenizer_from_json(const nlohmann::json& j, const std::string& where) {
    return detail::json_guarded(where, [&] {
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
        if (m.value("ignore_merges", false))
            throw bad("model.ignore_merges",
                      "true (Llama 3's): ftune applies the merges to every word");
        if (m.contains("byte_fallback") && m["byte_fallback"].is_boolean() &&
            m["byte_fallback"].get<bool>())
            throw bad("model.byte_fallback",
                      "true (a SentencePiece-style BPE): ftune reads byte-level BPE");
        // tokens ordered by id; ids must be 0 .. n-1
        std::vector<std::string> tokens(m["vocab"].size());
        std::vector<bool> seen(tokens.size(), false);
        for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
            if (!it->is_number_integer())
                throw bad("model.vocab." + it.key(), "id is not an integer");
            const auto id = it->get<long long>();
            if (id < 0 || std::size_t(id) >= tokens.size() || seen[std::size_t(id)])
                throw bad("model.vocab." + it.key(),
                          ftune::detail::cat("id ", id, " is not a unique id in [0, ",
                                             tokens.size(), ")"));
            tokens[std::size_t(id)] = it.key();
            seen[std::size_t(id)] = true;
        }
        vocabulary v;
        for (auto& t : tokens) v.add(std::move(t));
        bert_options opt;
        opt.unk = m.value("unk_token", std::string("[UNK]"));
        if (m.contains("max_input_chars_per_word")) {
            const auto& x = m["max_input_chars_per_word"];
            if (!x.is_number_unsigned())
                throw bad("model.max_input_chars_per_word", "not a whole number");
            opt.max_input_chars_per_word = x.get<std::size_t>();
        }
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
        // added tokens (the specials, and any added since: entity markers) are matched whole;
        // one outside model.vocab must take the next id
        if (j.contains("added_tokens") && j["added_tokens"].is_array())
            for (const auto& t : j["added_tokens"]) {
                if (!t.is_object() || !t.contains("content") || !t["content"].is_string() ||
                    !t.contains("id") || !t["id"].is_number_integer())
                    throw bad("added_tokens", "an entry without a string content and an id");
                const auto content = t["content"].get<std::string>();
                const auto id = t["id"].get<long long>();
                if (const auto known = v.find(content)) {
                    if (*known != id)
                        throw bad(
                            "added_tokens." + content,
                            ftune::detail::cat("id ", id, " but the vocabulary has ", *known));
                } else if (id != static_cast<long long>(v.size())) {
                    throw bad("added_tokens." + content,
                              ftune::detail::cat("id ", id, " is not the next id ", v.size()));
                }
                if (t.value("single_word", false) || t.value("lstrip", false) ||
                    t.value("rstrip", false))
                    throw bad("added_tokens." + content,
                              "single_word, lstrip and rstrip are not supported");
                if (!t.value("special", false) && t.value("normalized", true))
                    throw bad("added_tokens." + content,
                              "a normalized added token that is not special is not supported");
                if (content != opt.unk && content != opt.cls && content != opt.sep &&
                    content != opt.pad && content != opt.mask) {
                    if (!v.find(content)) v.add(content);
                    opt.extra_special_tokens.push_back(content);
                }
            }
        return bert_tokenizer(std::move(v), std::move(opt));
    });
}

/// Reads tokenizer.json (model.type "WordPiece", normalizer "BertNormalizer"); throws
/// ftune::error naming the file and the field for anything else.
inline bert_tokenizer load_tokenizer_json(const std::filesystem::path& path) {
    return tokenizer_from_json(detail::read_tokenizer_json(path), path.string());
}

/// A byte-level BPE tokenizer from a Hugging Face tokenizer.json: model.type "BPE" (vocab,
/// merges as "a b" strings or [a, b] pairs), added tokens, and a pre_tokenizer that is ByteLevel
/// or a Sequence of Digits(individual_digits) and ByteLevel (add_prefix_space false). Anything
/// else throws ftune::error naming the file and the field.
inline bpe_tokenizer bpe_tokenizer_from_json(const nlohmann::json& j, const std::string& where) {
    return detail::json_guarded(where, [&] {
        auto bad = [&](const std::string& field, const std::string& what) {
            return error(errc::unsupported, where + ": " + field, what);
        };
        if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
            throw bad("model", "missing");
        const auto& m = j["model"];
        if (m.value("type", "") != "BPE")
            throw bad("model.type", "\"" + m.value("type", "") + "\": this reader takes BPE");
        if (!m.contains("vocab") || !m["vocab"].is_object()) throw bad("model.vocab", "missing");
        if (m.value("ignore_merges", false))
            throw bad("model.ignore_merges",
                      "true (Llama 3's): ftune applies the merges to every word");
        if (m.contains("byte_fallback") && m["byte_fallback"].is_boolean() &&
            m["byte_fallback"].get<bool>())
            throw bad("model.byte_fallback",
                      "true (a SentencePiece-style BPE): ftune reads byte-level BPE");
        std::unordered_map<std::string, std::int32_t> vocab;
        for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
            if (!it->is_number_integer() || it->get<std::int64_t>() < 0 ||
                it->get<std::int64_t>() > (std::int64_t(1) << 26))
                throw bad("model.vocab", "\"" + it.key() + "\" has no valid id");
            vocab.emplace(it.key(), it->get<std::int32_t>());
        }
        std::vector<std::pair<std::string, std::string>> merges;
        if (m.contains("merges") && m["merges"].is_array())
            for (const auto& e : m["merges"]) {
                if (e.is_string()) {
                    const std::string s = e.get<std::string>();
                    const std::size_t sp = s.find(' ');
                    if (sp == std::string::npos)
                        throw bad("model.merges", "\"" + s + "\" is not a pair");
                    merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
                } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
                    merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
                } else {
                    throw bad("model.merges", "an entry is neither \"a b\" nor [a, b]");
                }
            }
        std::vector<std::pair<std::string, std::int32_t>> specials;
        if (j.contains("added_tokens") && j["added_tokens"].is_array())
            for (const auto& t : j["added_tokens"])
                if (t.is_object() && t.contains("content") && t["content"].is_string() &&
                    t.contains("id") && t["id"].is_number_integer())
                    specials.emplace_back(t["content"].get<std::string>(),
                                          t["id"].get<std::int32_t>());
        bpe_options o;
        const auto check_byte_level = [&](const nlohmann::json& p) {
            if (p.value("add_prefix_space", false))
                throw bad("pre_tokenizer.add_prefix_space", "true: ftune reads false");
            if (!p.value("use_regex", true))
                throw bad("pre_tokenizer.use_regex", "false: ftune runs GPT-2's pattern");
        };
        if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object()) {
            const auto& p = j["pre_tokenizer"];
            const std::string type = p.value("type", "");
            if (type == "ByteLevel") {
                check_byte_level(p);
            } else if (type == "Sequence" && p.contains("pretokenizers") &&
                       p["pretokenizers"].is_array()) {
                bool byte_level = false;
                for (const auto& q : p["pretokenizers"]) {
                    const std::string t = q.value("type", "");
                    if (t == "Digits" && !byte_level)
                        o.individual_digits = q.value("individual_digits", false);
                    else if (t == "ByteLevel")
                        check_byte_level(q), byte_level = true;
                    else
                        throw bad("pre_tokenizer", "\"" + t +
                                                       "\" in a Sequence: ftune runs Digits "
                                                       "then ByteLevel");
                }
                if (!byte_level) throw bad("pre_tokenizer", "a Sequence without ByteLevel");
                if (!o.individual_digits)
                    throw bad("pre_tokenizer", "Digits without individual_digits is not supported");
            } else {
                throw bad("pre_tokenizer.type", "\"" + type + "\": ftune runs ByteLevel (GPT-2's)");
            }
        }
        // the post-processor: TemplateProcessing (what it adds, ftune's callers add themselves) or
        // ByteLevel, whose trim_offsets changes the offsets
        if (j.contains("post_processor") && j["post_processor"].is_object()) {
            const auto& p = j["post_processor"];
            const std::string type = p.value("type", "");
            if (type == "ByteLevel") {
                o.trim_offsets = p.value("trim_offsets", false);
                o.trim_keeps_first_space = p.value("add_prefix_space", false);
            } else if (type != "TemplateProcessing") {
                throw bad("post_processor.type",
                          "\"" + type + "\": ftune reads ByteLevel and TemplateProcessing");
            }
        }
        return bpe_tokenizer(std::move(vocab), merges, std::move(specials), o);
    });
}

/// Reads a byte-level BPE tokenizer from tokenizer.json (bpe_tokenizer_from_json on it).
inline bpe_tokenizer load_bpe_tokenizer_json(const std::filesystem::path& path) {
    return bpe_tokenizer_from_json(detail::read_tokenizer_json(path), path.string());
}

/// The tokenizer.json of a byte-level BPE tokenizer, as Hugging Face `tokenizers` writes it:
/// load_bpe_tokenizer_json and `tokenizers` read it back to the same tokenizer (the vocabulary
/// and merges, the special tokens as added tokens, the pre-tokenizer, the ByteLevel decoder and
/// a trimming post-processor where there was one).
inline nlohmann::ordered_json bpe_tokenizer_json(const bpe_tokenizer& t) {
    using json = nlohmann::ordered_json;
    const auto byte_level = [](bool prefix) {
        return json{{"type", "ByteLevel"},
                    {"add_prefix_space", prefix},
                    {"trim_offsets", true},
                    {"use_regex", true}};
    };
    json j = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
    auto specials = t.specials();
    std::sort(specials.begin(), specials.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    json added = json::array();
    for (const auto& [content, id] : specials)
        added.push_back({{"id", id},
                         {"content", content},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", false},
                         {"special", true}});
    j["added_tokens"] = added;
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] =
        t.options().individual_digits
            ? json{{"type", "Sequence"},
                   {"pretokenizers",
                    json::array({json{{"type", "Digits"}, {"individual_digits", true}},
                                 byte_level(false)})}}
            : byte_level(false);
    j["post_processor"] = t.options().trim_offsets
                              ? json{{"type", "ByteLevel"},
                                     {"add_prefix_space", t.options().trim_keeps_first_space},
                                     {"trim_offsets", true},
                                     {"use_regex", true}}
                              : json(nullptr);
    j["decoder"] = byte_level(true);
    // the model's vocabulary holds the special tokens too (tokenizers gives an added token that
    // is not in it a new id after the vocabulary)
    std::vector<std::pair<std::int32_t, std::string>> by_id;
    for (const auto& [token, id] : t.vocab()) by_id.emplace_back(id, token);
    for (const auto& [content, id] : specials)
        if (!t.vocab().contains(content)) by_id.emplace_back(id, content);
    std::sort(by_id.begin(), by_id.end());
    json vocab = json::object();
    for (const auto& [id, token] : by_id) vocab[token] = id;
    json merges = json::array();
    for (const auto& [a, b] : t.merges()) merges.push_back(json::array({a, b}));
    j["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", false},
                  {"vocab", vocab},
                  {"merges", merges}};
    return j;
}

}  // namespace text
FTUNE_NAMESPACE_END
