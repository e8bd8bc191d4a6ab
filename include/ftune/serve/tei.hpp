// serve::parse_predict_request: the body of Text Embeddings Inference's POST /predict, as
// `ftune serve` reads it. TEI's forms: {"inputs": "text"}; {"inputs": ["text", "pair"]} (two
// strings: one pair); {"inputs": [input, ...]} (a batch), each input a text, [text] or
// [text, pair]. serve::parse_embed_request: the body of POST /embed, {"inputs": "text"} or
// {"inputs": ["text", ...]} with "normalize" (default true). Anything else is an ftune::error
// saying which form is expected.
#pragma once

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
};

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

}  // namespace serve
FTUNE_NAMESPACE_END
