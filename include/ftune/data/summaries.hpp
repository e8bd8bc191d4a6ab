// Summarization data in the JSON-lines layouts DialogSum and SAMSum publish, one text per line
// (blank lines skipped):
//
//   {"fname": "train_0", "dialogue": "#Person1#: Hi ...", "summary": "...", "topic": "..."}
//   {"fname": "test_0", "dialogue": "...", "summary1": "...", "summary2": "...", "summary3": "..."}
//   {"id": "13818513", "dialogue": "Amanda: I baked cookies ...", "summary": "..."}
//
// The text is "dialogue" (or "document", "text"); its reference summaries are "summary" or
// "summary1", "summary2", ... (DialogSum's test set has three by different annotators); the id is
// "fname" or "id" (a string or a number), the topic "topic" or "topic1". A malformed line is an
// ftune::error naming file:line. summary_chats turns the texts into conversations for a decoder's
// chat fine-tuning (train/lm_batching.hpp) and its evaluation (train/generation_eval.hpp);
// read_chat_data takes a file of either kind, as `ftune train --task chat` does.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/data/conversations.hpp"
#include "ftune/data/readers.hpp"

FTUNE_NAMESPACE_BEGIN
namespace data {

/// One text to summarize with its reference summaries.
struct summary_example {
    std::string id;                      ///< "fname" or "id" ("" when the line has neither)
    std::string text;                    ///< the dialogue or document
    std::vector<std::string> summaries;  ///< the references, at least one, in file order
    std::string topic;                   ///< "topic" or "topic1" ("" when absent)
    std::size_t line = 0;                ///< 1-based line in the file
};

/// A summarization data set read from a JSON-lines file.
struct summary_dataset {
    std::vector<summary_example> rows;  ///< the examples, in file order
    std::string path;                   ///< where they came from
};

namespace detail {
/// The string field `key` of JSON object j ("" when absent; an integer too when `integer_ok`,
/// as ids may be); another type is an error at where.
inline std::string string_field(const nlohmann::json& j, const char* key, const std::string& where,
                                bool integer_ok = false) {
    const auto it = j.find(key);
    if (it == j.end()) return "";
    if (it->is_string()) return it->get<std::string>();
    if (integer_ok && it->is_number_integer()) return it->dump();
    throw error(
        errc::parse, where,
        ftune::detail::cat("\"", key, "\" must be a string", integer_ok ? " or an integer" : ""));
}
}  // namespace detail

/// Parses JSON-lines summarization data (contents of file `where`): every line an object with a
/// text and at least one non-empty reference summary.
inline summary_dataset parse_summaries(std::string_view contents, const std::string& where) {
    summary_dataset d;
    d.path = where;
    detail::for_each_nonblank_line(contents, [&](std::string_view l, std::size_t line) {
        const std::string at = ftune::detail::cat(where, ":", line);
        const auto j = nlohmann::json::parse(l, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object())
            throw error(errc::parse, at, "not a JSON object (one text and its summaries a line)");
        summary_example e;
        e.line = line;
        for (const char* key : {"dialogue", "document", "text"})
            if (j.contains(key)) {
                e.text = detail::string_field(j, key, at);
                break;
            }
        if (e.text.find_first_not_of(" \t\r\n") == std::string::npos)
            throw error(errc::parse, at,
                        "needs the text to summarize as a non-empty \"dialogue\", \"document\" "
                        "or \"text\"");
        if (j.contains("summary")) {
            e.summaries.push_back(detail::string_field(j, "summary", at));
        } else {
            for (std::size_t k = 1; j.contains("summary" + std::to_string(k)); ++k)
                e.summaries.push_back(
                    detail::string_field(j, ("summary" + std::to_string(k)).c_str(), at));
        }
        if (e.summaries.empty())
            throw error(
                errc::parse, at,
                "needs a reference summary: \"summary\", or \"summary1\", \"summary2\", ...");
        for (std::size_t k = 0; k < e.summaries.size(); ++k)
            if (e.summaries[k].find_first_not_of(" \t\r\n") == std::string::npos)
                throw error(errc::parse, at,
                            ftune::detail::cat("reference summary ", k + 1, " is empty"));
        e.id = detail::string_field(j, j.contains("fname") ? "fname" : "id", at, true);
        e.topic = detail::string_field(j, j.contains("topic") ? "topic" : "topic1", at);
        d.rows.push_back(std::move(e));
    });
    if (d.rows.empty()) throw error(errc::parse, where, "no examples (an empty file?)");
    return d;
}

/// Reads a JSON-lines summarization file (parse_summaries on its contents).
inline summary_dataset read_summaries(const std::filesystem::path& path) {
    return parse_summaries(detail::read_all(path), path.string());
}

/// The instruction summary_chats puts before each text.
inline constexpr std::string_view default_summary_instruction =
    "Summarize the following dialogue in one or two sentences.";

/// n examples of d spread evenly over it (row i * rows / n; all when n is 0 or covers them) as
/// chats for a decoder: the user's message is the instruction, a blank line and the text; the
/// assistant's reply, which carries the loss, is the first reference summary, and the others are
/// kept as further references for evaluation (lm_example::other_references).
inline lm_dataset summary_chats(const summary_dataset& d, std::size_t n = 0,
                                std::string_view instruction = default_summary_instruction) {
    lm_dataset out;
    out.path = d.path;
    const std::size_t rows = d.rows.size();
    if (n == 0 || n > rows) n = rows;
    for (std::size_t i = 0; i < n; ++i) {
        const auto& r = d.rows[i * rows / n];
        lm_example e{.messages = {{"user", ftune::detail::cat(instruction, "\n\n", r.text)},
                                  {"assistant", r.summaries.front()}},
                     .first_trained = 1,
                     .line = r.line};
        e.other_references.assign(r.summaries.begin() + 1, r.summaries.end());
        out.rows.push_back(std::move(e));
    }
    return out;
}

/// Whether JSON-lines contents hold summarization data: the first non-blank line is an object
/// with a text and a summary (as parse_summaries reads them) and neither "messages" nor "prompt".
inline bool looks_like_summaries(std::string_view contents) {
    bool found = false, first = true;
    detail::for_each_nonblank_line(contents, [&](std::string_view l, std::size_t) {
        if (!first) return;
        first = false;
        const auto j = nlohmann::json::parse(l, nullptr, /*allow_exceptions=*/false);
        found = j.is_object() && !j.contains("messages") && !j.contains("prompt") &&
                (j.contains("dialogue") || j.contains("document") || j.contains("text")) &&
                (j.contains("summary") || j.contains("summary1"));
    });
    return found;
}

/// A decoder's chat data from a JSON-lines file of any layout ftune reads: conversations or
/// prompts with completions (parse_jsonl), or summarization data (summary_chats of every row,
/// with the default instruction).
inline lm_dataset read_chat_data(const std::filesystem::path& path) {
    const std::string contents = detail::read_all(path);
    if (looks_like_summaries(contents))
        return summary_chats(parse_summaries(contents, path.string()));
    return parse_jsonl(contents, path.string());
}

}  // namespace data
FTUNE_NAMESPACE_END
