// Extractive question-answering data in SQuAD's JSON layout (v1.1 and v2.0):
//   {"data": [{"title": ..., "paragraphs": [{"context": "...",
//     "qas": [{"id": "...", "question": "...", "answers": [{"text": "...", "answer_start": 42}],
//              "is_impossible": false}]}]}]}
// answer_start counts characters (Unicode code points, as Python's str indices). Malformed input
// is an ftune::error naming the file and the JSON path of the bad entry.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/core/error.hpp"
#include "ftune/data/readers.hpp"

FTUNE_NAMESPACE_BEGIN
namespace data {

/// One gold answer: its text and where it starts in the context.
struct qa_answer {
    std::string text;            ///< the answer as written
    std::size_t char_start = 0;  ///< first code point in the context
};

/// One question about one context.
struct qa_example {
    std::string id;                  ///< SQuAD's id
    std::string question;            ///< the question
    std::string context;             ///< the paragraph the answer is in
    std::vector<qa_answer> answers;  ///< gold answers (empty: unanswerable, SQuAD 2.0)
};

/// Code points of UTF-8 text (bytes that are not continuation bytes).
inline std::size_t code_points(std::string_view s) {
    std::size_t n = 0;
    for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    return n;
}

/// Parses the contents of a SQuAD-layout JSON file (see the file comment); `where` names it in
/// errors.
inline std::vector<qa_example> parse_squad(std::string_view contents, const std::string& where) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(contents);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where, std::string("not valid JSON: ") + e.what());
    }
    auto bad = [&](const std::string& at, const std::string& what) {
        return error(errc::parse, where + ": " + at,
                     what +
                         " (SQuAD layout: data[].paragraphs[]"
                         ".qas[] with question and answers)");
    };
    if (!j.is_object() || !j.contains("data") || !j["data"].is_array())
        throw bad("data", "expected an object with a \"data\" array");
    std::vector<qa_example> out;
    for (std::size_t a = 0; a < j["data"].size(); ++a) {
        const auto& article = j["data"][a];
        const std::string at_a = "data[" + std::to_string(a) + "]";
        if (!article.contains("paragraphs") || !article["paragraphs"].is_array())
            throw bad(at_a, "no \"paragraphs\" array");
        for (std::size_t p = 0; p < article["paragraphs"].size(); ++p) {
            const auto& para = article["paragraphs"][p];
            const std::string at_p = at_a + ".paragraphs[" + std::to_string(p) + "]";
            if (!para.contains("context") || !para["context"].is_string() ||
                !para.contains("qas") || !para["qas"].is_array())
                throw bad(at_p, "needs a \"context\" string and a \"qas\" array");
            const std::string context = para["context"];
            const std::size_t length = code_points(context);
            for (std::size_t q = 0; q < para["qas"].size(); ++q) {
                const auto& qa = para["qas"][q];
                const std::string at_q = at_p + ".qas[" + std::to_string(q) + "]";
                if (!qa.contains("question") || !qa["question"].is_string())
                    throw bad(at_q, "no \"question\" string");
                qa_example x;
                x.id =
                    qa.contains("id") && qa["id"].is_string() ? qa["id"].get<std::string>() : at_q;
                x.question = qa["question"];
                x.context = context;
                if (qa.contains("answers")) {
                    if (!qa["answers"].is_array()) throw bad(at_q, "\"answers\" is not an array");
                    for (const auto& an : qa["answers"]) {
                        if (!an.contains("text") || !an["text"].is_string() ||
                            !an.contains("answer_start") ||
                            !an["answer_start"].is_number_unsigned())
                            throw bad(at_q,
                                      "an answer needs \"text\" and a non-negative "
                                      "\"answer_start\"");
                        qa_answer ans{an["text"], an["answer_start"]};
                        if (ans.char_start > length ||
                            code_points(ans.text) > length - ans.char_start)
                            throw bad(at_q, ftune::detail::cat("answer_start ", ans.char_start,
                                                               " + the answer's length is past "
                                                               "the context's ",
                                                               length, " characters"));
                        x.answers.push_back(std::move(ans));
                    }
                }
                const bool impossible = qa.value("is_impossible", false);
                if (x.answers.empty() && !impossible)
                    throw bad(at_q, "no answers (mark unanswerable questions \"is_impossible\")");
                if (impossible) x.answers.clear();
                out.push_back(std::move(x));
            }
        }
    }
    return out;
}

/// Reads a SQuAD-layout JSON file (parse_squad on its contents).
inline std::vector<qa_example> read_squad(const std::filesystem::path& path) {
    return parse_squad(detail::read_all(path), path.string());
}

}  // namespace data
FTUNE_NAMESPACE_END
