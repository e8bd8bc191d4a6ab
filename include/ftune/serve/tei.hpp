// serve::parse_predict_request: the body of Text Embeddings Inference's POST /predict, as
// `ftune serve` reads it. TEI's forms: {"inputs": "text"}; {"inputs": ["text", "pair"]} (two
// strings: one pair); {"inputs": [input, ...]} (a batch), each input a text, [text] or
// [text, pair]. serve::parse_embed_request: the body of POST /embed, {"inputs": "text"} or
// {"inputs": ["text", ...]} with "normalize" (default true). ftune's extensions in TEI's style:
// POST /token-classification (parse_token_request) and POST /question-answering
// (parse_qa_request). Anything else is an ftune::error saying which form is expected.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// One input of a classifier: a text, or a pair of texts (premise and hypothesis...).
struct text_input {
    std::string text;                 ///< the (first) text
    std::optional<std::string> pair;  ///< the second text of a pair, or none
};

/// A parsed POST /predict body.
struct predict_request {
    std::vector<text_input> inputs;  ///< in order
    bool batched = false;            ///< a list of inputs (answer: a list of answers)
    bool raw_scores = false;         ///< TEI's raw_scores (logits instead of probabilities)
    std::optional<bool> truncate;    ///< TEI's truncate: cut over-long inputs (none: the server's)
    std::string adapter;             ///< ftune's "adapter": the task of a server with adapters
};

namespace detail {
/// TEI's "truncate" of a request body j, when given (true or false); inputs are cut on the
/// right only: TEI's "truncation_direction" "left" is refused.
inline std::optional<bool> truncate_of(const nlohmann::json& j) {
    if (const auto d = j.find("truncation_direction"); d != j.end() && !d->is_null())
        if (!d->is_string() || (*d != "right" && *d != "Right"))
            throw error(errc::invalid_argument, "truncation_direction",
                        "only \"right\" is taken (inputs are cut at their end)");
    const auto it = j.find("truncate");
    if (it == j.end() || it->is_null()) return std::nullopt;
    if (!it->is_boolean()) throw error(errc::invalid_argument, "truncate", "is true or false");
    return it->get<bool>();
}
}  // namespace detail

/// Parses a POST /predict body (see the file comment). Throws errc::parse for a body that is not
/// JSON and errc::invalid_argument for JSON of another shape.
inline predict_request parse_predict_request(std::string_view body) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, "request body", std::string("not JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("inputs"))
        throw error(errc::invalid_argument, "inputs",
                    "the body is a JSON object with \"inputs\": a text, a pair [text, text], or "
                    "a list of them");
    auto one = [](const nlohmann::json& v) -> text_input {
        if (v.is_string()) return {v.get<std::string>(), std::nullopt};
        if (v.is_array() && v.size() == 1 && v[0].is_string())
            return {v[0].get<std::string>(), std::nullopt};
        if (v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string())
            return {v[0].get<std::string>(), v[1].get<std::string>()};
        throw error(errc::invalid_argument, "inputs",
                    "each input is a text, [text] or a pair [text, text]");
    };
    predict_request r;
    if (const auto it = j.find("raw_scores"); it != j.end()) {
        if (!it->is_boolean())
            throw error(errc::invalid_argument, "raw_scores", "is true or false");
        r.raw_scores = it->get<bool>();
    }
    r.truncate = detail::truncate_of(j);
    if (const auto it = j.find("adapter"); it != j.end()) {
        if (!it->is_string() || it->get<std::string>().empty())
            throw error(errc::invalid_argument, "adapter", "is the name of a loaded adapter");
        r.adapter = it->get<std::string>();
    }
    const auto& in = j["inputs"];
    if (in.is_string() || (in.is_array() && in.size() == 2 && in[0].is_string() &&
                           in[1].is_string())) {  // one text, or one pair
        r.inputs.push_back(one(in));
        return r;
    }
    if (!in.is_array())
        throw error(errc::invalid_argument, "inputs",
                    "expected a text, a pair [text, text], or a list of them");
    r.batched = true;
    for (const auto& v : in) r.inputs.push_back(one(v));
    return r;
}

/// A parsed POST /embed body.
struct embed_request {
    std::vector<std::string> inputs;  ///< the texts, in order
    bool normalize = true;            ///< TEI's normalize: unit vectors (L2)
    std::optional<bool> truncate;     ///< TEI's truncate: cut over-long inputs (none: the server's)
};

/// Parses a POST /embed body (see the file comment): a text or a list of texts (the answer is
/// always a list of vectors, as TEI's). Throws errc::parse for a body that is not JSON and
/// errc::invalid_argument for JSON of another shape.
inline embed_request parse_embed_request(std::string_view body) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, "request body", std::string("not JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("inputs"))
        throw error(errc::invalid_argument, "inputs",
                    "the body is a JSON object with \"inputs\": a text or a list of texts");
    embed_request r;
    if (const auto it = j.find("normalize"); it != j.end()) {
        if (!it->is_boolean()) throw error(errc::invalid_argument, "normalize", "is true or false");
        r.normalize = it->get<bool>();
    }
    r.truncate = detail::truncate_of(j);
    const auto& in = j["inputs"];
    if (in.is_string()) {
        r.inputs.push_back(in.get<std::string>());
        return r;
    }
    if (!in.is_array())
        throw error(errc::invalid_argument, "inputs", "expected a text or a list of texts");
    for (const auto& v : in) {
        if (!v.is_string())
            throw error(errc::invalid_argument, "inputs",
                        "each input of /embed is a text (token ids are not taken)");
        r.inputs.push_back(v.get<std::string>());
    }
    return r;
}

/// A parsed POST /token-classification body: {"inputs": "text" | ["text", ...],
/// "aggregation_strategy": "first" | "none"} (ftune's extension in TEI's style; the names of
/// Transformers' token-classification pipeline).
struct token_request {
    std::vector<std::string> inputs;  ///< the texts, in order
    bool batched = false;             ///< a list of texts (answer: a list of answers)
    bool aggregate = true;            ///< "first": entities; "none": every word not tagged O
};

/// A question about a context.
struct qa_input {
    std::string question;                ///< the question
    std::string context;                 ///< the text the answer is taken from
    std::size_t top_k = 1;               ///< answers wanted
    std::size_t max_answer_length = 15;  ///< longest answer, in tokens
};

/// A parsed POST /question-answering body: {"inputs": {"question", "context"} | [...],
/// "top_k": 1, "max_answer_length": 15} (the Hugging Face Inference API's form).
struct qa_request {
    std::vector<qa_input> inputs;  ///< in order
    bool batched = false;          ///< a list of questions (answer: a list of answers)
};

namespace detail {
// The JSON body of a request: throws errc::parse when it is not JSON, errc::invalid_argument
// when it is not an object with "inputs".
inline nlohmann::json request_json(std::string_view body) {
    try {
        auto j = nlohmann::json::parse(body);
        if (!j.is_object() || !j.contains("inputs"))
            throw error(errc::invalid_argument, "inputs",
                        "the body is a JSON object with \"inputs\"");
        return j;
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, "request body", std::string("not JSON: ") + e.what());
    }
}
// A positive integer field of j (or `fallback` when absent), at most `most`.
inline std::size_t count_field(const nlohmann::json& j, const char* name, std::size_t fallback,
                               std::size_t most) {
    const auto it = j.find(name);
    if (it == j.end()) return fallback;
    if (!it->is_number_unsigned() || it->get<std::size_t>() == 0 || it->get<std::size_t>() > most)
        throw error(errc::invalid_argument, name,
                    ftune::detail::cat("is a whole number from 1 to ", most));
    return it->get<std::size_t>();
}
}  // namespace detail

/// Parses a POST /token-classification body (see token_request). Throws errc::parse for a body
/// that is not JSON and errc::invalid_argument for JSON of another shape.
inline token_request parse_token_request(std::string_view body) {
    const auto j = detail::request_json(body);
    token_request r;
    if (const auto it = j.find("aggregation_strategy"); it != j.end()) {
        if (*it != "first" && *it != "none")
            throw error(errc::invalid_argument, "aggregation_strategy",
                        "is \"first\" (entities of whole words) or \"none\" (every word)");
        r.aggregate = *it == "first";
    }
    const auto& in = j["inputs"];
    if (in.is_string()) {
        r.inputs.push_back(in.get<std::string>());
        return r;
    }
    if (!in.is_array())
        throw error(errc::invalid_argument, "inputs", "expected a text or a list of texts");
    r.batched = true;
    for (const auto& v : in) {
        if (!v.is_string()) throw error(errc::invalid_argument, "inputs", "each input is a text");
        r.inputs.push_back(v.get<std::string>());
    }
    return r;
}

/// Parses a POST /question-answering body (see qa_request). Throws errc::parse for a body that
/// is not JSON and errc::invalid_argument for JSON of another shape.
inline qa_request parse_qa_request(std::string_view body) {
    const auto j = detail::request_json(body);
    const std::size_t top_k = detail::count_field(j, "top_k", 1, 100);
    const std::size_t longest = detail::count_field(j, "max_answer_length", 15, 512);
    auto one = [&](const nlohmann::json& v) -> qa_input {
        if (!v.is_object() || !v.contains("question") || !v["question"].is_string() ||
            !v.contains("context") || !v["context"].is_string())
            throw error(errc::invalid_argument, "inputs",
                        "each input is {\"question\": text, \"context\": text}");
        return {v["question"].get<std::string>(), v["context"].get<std::string>(), top_k, longest};
    };
    qa_request r;
    const auto& in = j["inputs"];
    if (in.is_object()) {
        r.inputs.push_back(one(in));
        return r;
    }
    if (!in.is_array())
        throw error(errc::invalid_argument, "inputs",
                    "expected {\"question\", \"context\"} or a list of them");
    r.batched = true;
    for (const auto& v : in) r.inputs.push_back(one(v));
    return r;
}

}  // namespace serve
FTUNE_NAMESPACE_END
