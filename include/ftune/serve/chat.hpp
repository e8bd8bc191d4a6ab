// Chat completions as OpenAI's API has them (POST /v1/chat/completions), for `ftune serve` with a
// decoder language model:
//
//   serve::parse_chat_request   the request body: messages, max_tokens (or
//                               max_completion_tokens), temperature, top_p, stop, seed, stream
//   serve::chat_generator<M>    a causal LM, its tokenizer and chat template: the conversation
//                               rendered by the template (with the generation prompt), then
//                               generation::generator's continuation, streamed piece by piece
//
// OpenAI's defaults: temperature 1, top_p 1 (no top-k); n must be 1; presence and frequency
// penalties, logit_bias, tools and response_format are not implemented and are refused when set.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/core/error.hpp"
#include "ftune/generation.hpp"
#include "ftune/text/bpe.hpp"
#include "ftune/text/chat_template.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// A parsed POST /v1/chat/completions body.
struct chat_request {
    std::vector<text::chat_message> messages;  ///< the conversation so far
    std::optional<std::size_t> max_tokens;     ///< most new tokens (none: the server's default)
    double temperature = 1.0;                  ///< 0: greedy
    double top_p = 1.0;                        ///< nucleus sampling
    std::vector<std::string> stop;             ///< stop strings (up to 4)
    std::optional<std::uint64_t> seed;         ///< the draws' seed (none: a fresh one)
    bool stream = false;                       ///< answer with server-sent events
    std::string model;                         ///< the client's model name (echoed)
};

/// Parses a POST /v1/chat/completions body (see the file comment). Throws errc::parse for a
/// body that is not JSON and errc::invalid_argument (naming the field) for anything else wrong.
inline chat_request parse_chat_request(std::string_view body) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, "request body", std::string("not JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array() ||
        j["messages"].empty())
        throw error(errc::invalid_argument, "messages",
                    "the body is a JSON object with a non-empty \"messages\" list");
    chat_request r;
    for (std::size_t i = 0; i < j["messages"].size(); ++i) {
        const auto& m = j["messages"][i];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
            !m.contains("content") || !m["content"].is_string())
            throw error(errc::invalid_argument, ftune::detail::cat("messages[", i, "]"),
                        "is {\"role\": text, \"content\": text} (content parts are not taken)");
        r.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    auto number = [&](const char* name, double lo, double hi) -> std::optional<double> {
        const auto it = j.find(name);
        if (it == j.end() || it->is_null()) return std::nullopt;
        if (!it->is_number() || it->get<double>() < lo || it->get<double>() > hi)
            throw error(errc::invalid_argument, name,
                        ftune::detail::cat("is a number from ", lo, " to ", hi));
        return it->get<double>();
    };
    for (const char* name : {"max_tokens", "max_completion_tokens"})
        if (const auto n = number(name, 1, 1 << 20)) {
            if (!j[name].is_number_unsigned())
                throw error(errc::invalid_argument, name, "is a whole number");
            r.max_tokens = j[name].get<std::size_t>();
        }
    if (const auto t = number("temperature", 0, 2)) r.temperature = *t;
    if (const auto p = number("top_p", 0, 1)) {
        if (*p <= 0) throw error(errc::invalid_argument, "top_p", "must be above 0");
        r.top_p = *p;
    }
    if (const auto n = number("n", 1, 128); n && *n != 1)
        throw error(errc::invalid_argument, "n", "ftune serve gives one choice (n: 1)");
    for (const char* name : {"presence_penalty", "frequency_penalty"})
        if (const auto v = number(name, -2, 2); v && *v != 0)
            throw error(errc::invalid_argument, name, "is not implemented (0 only)");
    for (const char* name : {"logit_bias", "tools", "tool_choice", "response_format", "logprobs"})
        if (const auto it = j.find(name);
            it != j.end() && !it->is_null() && !(it->is_boolean() && !it->get<bool>()))
            throw error(errc::invalid_argument, name, "is not implemented");
    if (const auto it = j.find("stop"); it != j.end() && !it->is_null()) {
        if (it->is_string()) {
            r.stop.push_back(it->get<std::string>());
        } else if (it->is_array() && it->size() <= 4) {
            for (const auto& s : *it) {
                if (!s.is_string()) throw error(errc::invalid_argument, "stop", "holds texts");
                r.stop.push_back(s.get<std::string>());
            }
        } else {
            throw error(errc::invalid_argument, "stop", "is a text or a list of up to 4");
        }
        for (const auto& s : r.stop)
            if (s.empty()) throw error(errc::invalid_argument, "stop", "an empty stop text");
    }
    if (const auto it = j.find("seed"); it != j.end() && !it->is_null()) {
        if (!it->is_number_integer()) throw error(errc::invalid_argument, "seed", "is an integer");
        r.seed = std::uint64_t(it->get<std::int64_t>());
    }
    if (const auto it = j.find("stream"); it != j.end() && !it->is_null()) {
        if (!it->is_boolean()) throw error(errc::invalid_argument, "stream", "is true or false");
        r.stream = it->get<bool>();
    }
    if (const auto it = j.find("model"); it != j.end() && it->is_string()) r.model = *it;
    return r;
}

/// A chat completion: the generation and the prompt's length in tokens.
struct completion {
    generation::result result;      ///< the new tokens, their text, why they stopped
    std::size_t prompt_tokens = 0;  ///< tokens of the rendered conversation
};

/// A causal LM answering conversations, one at a time (a mutex; see the file comment).
template <class Model>
class chat_generator {
  public:
    /// Takes the model and its tokenizer, which must have a chat template; contexts up to
    /// max_positions tokens; products in precision p.
    chat_generator(Model&& model, text::bpe_tokenizer tokenizer, std::size_t max_positions,
                   precision p = precision::fp32)
        : model_(std::move(model)),
          tok_(std::move(tokenizer)),
          template_(checked_template(tok_)),
          gen_(model_, tok_, max_positions, p),
          max_positions_(max_positions) {}
    chat_generator(const chat_generator&) = delete;
    chat_generator& operator=(const chat_generator&) = delete;

    /// The assistant's reply to messages; stream(0, piece) gets its text as it is made.
    completion complete(const std::vector<text::chat_message>& messages,
                        const generation::options& o, const generation::stream_fn& stream = {}) {
        const nlohmann::ordered_json vars = {{"bos_token", tok_.settings().bos_token},
                                             {"eos_token", tok_.settings().eos_token},
                                             {"pad_token", tok_.settings().pad_token}};
        // Transformers' apply_chat_template: the text tokenized without added special tokens
        const auto ids = tok_.encode(template_.render(messages, true, vars).text);
        if (max_positions_ && ids.size() >= max_positions_)
            throw error(errc::invalid_argument, "messages",
                        ftune::detail::cat("the conversation is ", ids.size(),
                                           " tokens; the model takes at most ", max_positions_));
        std::lock_guard lock(mu_);
        return {gen_.generate(ids, o, stream), ids.size()};
    }
    /// Most tokens of a conversation and its reply (0: no limit).
    std::size_t max_positions() const noexcept { return max_positions_; }

  private:
    static text::chat_template checked_template(const text::bpe_tokenizer& tok) {
        if (tok.settings().chat_template.empty())
            throw error(errc::unsupported, "chat_generator",
                        "the model has no chat template (tokenizer_config.json chat_template)");
        return text::chat_template(tok.settings().chat_template, "chat template");
    }

    Model model_;                       // the weights (packed by the generator)
    text::bpe_tokenizer tok_;           // its tokenizer
    text::chat_template template_;      // renders conversations
    generation::generator<Model> gen_;  // holds model_ and tok_
    std::size_t max_positions_ = 0;     // the model's context
    std::mutex mu_;                     // one generation at a time
};

}  // namespace serve
FTUNE_NAMESPACE_END
