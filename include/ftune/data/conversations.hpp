// Data for fine-tuning decoders, in the JSON-lines formats Transformers' and TRL's chat
// fine-tuning read, one example per line (blank lines skipped):
//
//   {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
//       a conversation; the assistant's messages carry the loss
//   {"prompt": "...", "completion": "..."}
//       a prompt and its completion; the completion carries the loss
//   {"prompt": [messages], "completion": [messages]}
//       the same as a conversation (TRL's conversational prompt-completion): the completion's
//       messages carry the loss
//
// Every line of a file has the same format. Malformed input (not JSON, a missing or mistyped
// field, an empty conversation, a conversation with nothing to learn) is an ftune::error naming
// file:line. Plain text for continued pretraining: data::read_lines.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/data/readers.hpp"
#include "ftune/text/chat_template.hpp"

FTUNE_NAMESPACE_BEGIN
namespace data {

/// How the examples of a decoder's data set are written.
enum class lm_format {
    messages,           ///< {"messages": [...]}
    prompt_completion,  ///< {"prompt": "...", "completion": "..."}
};

/// One example for a decoder: a conversation whose messages from `first_trained` on that are the
/// assistant's carry the loss, or a prompt and its completion.
struct lm_example {
    std::vector<text::chat_message> messages;  ///< the conversation (empty: prompt, completion)
    std::size_t first_trained = 0;             ///< the assistant's messages from here on train
    std::string prompt;                        ///< the prompt (prompt_completion)
    std::string completion;                    ///< what the model learns to write after it
    std::size_t line = 0;                      ///< 1-based line in the file
    /// Further acceptable last replies, for evaluation only (e.g. DialogSum's second and third
    /// reference summaries); training learns the conversation's own reply.
    std::vector<std::string> other_references;
};

/// A decoder's examples read from a JSON-lines file.
struct lm_dataset {
    std::vector<lm_example> rows;            ///< the examples, in file order
    lm_format format = lm_format::messages;  ///< how they were written (every line alike)
    std::string path;                        ///< where they came from
};

namespace detail {
/// The messages of JSON array a (each {"role": string, "content": string}); throws naming
/// `where` and the message's index.
inline std::vector<text::chat_message> messages_of(const nlohmann::json& a,
                                                   const std::string& where,
                                                   std::string_view field) {
    if (!a.is_array() || a.empty())
        throw error(errc::parse, where,
                    ftune::detail::cat("\"", field, "\" must be a non-empty list of messages"));
    std::vector<text::chat_message> out;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto& m = a[i];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
            !m.contains("content") || !m["content"].is_string())
            throw error(errc::parse, where,
                        ftune::detail::cat("message ", i, " of \"", field,
                                           "\" must be {\"role\": string, \"content\": string}"));
        out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    return out;
}
}  // namespace detail

/// Parses the contents of a JSON-lines file of conversations or of prompts with completions (see
/// the file comment); throws naming file:line (`file` names it).
inline lm_dataset parse_jsonl(std::string_view contents, const std::string& file) {
    lm_dataset d;
    d.path = file;
    bool format_known = false;
    detail::for_each_nonblank_line(contents, [&](std::string_view l, std::size_t line) {
        const std::string where = ftune::detail::cat(file, ":", line);
        const auto j = nlohmann::json::parse(l, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object())
            throw error(errc::parse, where, "not a JSON object (one example per line)");
        lm_example e;
        e.line = line;
        lm_format f;
        if (j.contains("messages")) {
            f = lm_format::messages;
            e.messages = detail::messages_of(j["messages"], where, "messages");
        } else if (j.contains("prompt") && j.contains("completion")) {
            const auto &p = j["prompt"], &c = j["completion"];
            if (p.is_string() && c.is_string()) {
                f = lm_format::prompt_completion;
                e.prompt = p.get<std::string>(), e.completion = c.get<std::string>();
            } else if (p.is_array() && c.is_array()) {  // conversational: a conversation
                f = lm_format::messages;
                e.messages = detail::messages_of(p, where, "prompt");
                e.first_trained = e.messages.size();
                for (auto& m : detail::messages_of(c, where, "completion"))
                    e.messages.push_back(std::move(m));
            } else {
                throw error(errc::parse, where,
                            "\"prompt\" and \"completion\" must both be strings or both lists of "
                            "messages");
            }
        } else {
            throw error(errc::parse, where,
                        "needs \"messages\" (a conversation) or \"prompt\" and \"completion\"");
        }
        if (format_known && f != d.format)
            throw error(errc::parse, where,
                        "mixes formats: earlier lines are " +
                            std::string(d.format == lm_format::messages
                                            ? "conversations"
                                            : "prompts with string completions"));
        d.format = f, format_known = true;
        if (f == lm_format::messages) {
            bool trained = false;
            for (std::size_t i = e.first_trained; i < e.messages.size(); ++i)
                trained = trained || e.messages[i].role == "assistant";
            if (!trained)
                throw error(errc::parse, where,
                            "no assistant message to learn from (the loss is taken on the "
                            "assistant's messages)");
        }
        d.rows.push_back(std::move(e));
    });
    if (d.rows.empty()) throw error(errc::parse, d.path, "no examples (an empty file?)");
    return d;
}

/// Reads a JSON-lines file of conversations or of prompts with completions (parse_jsonl on its
/// contents).
inline lm_dataset read_jsonl(const std::filesystem::path& path) {
    return parse_jsonl(detail::read_all(path), path.string());
}

}  // namespace data
FTUNE_NAMESPACE_END
