// Decoder examples as token ids and labels for causal-LM fine-tuning (heads::causal_lm's loss):
// the labels are the ids where the loss is taken and -100 elsewhere, so that only the
// assistant's turns of a conversation, or a prompt's completion, are learned, as TRL's
// SFTTrainer does (assistant_only_loss, completion_only_loss). Batches: train::collate_into
// (padding to the longest, labels -100), train::batch_order (bucketing by length).
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "ftune/data/conversations.hpp"
#include "ftune/text/bpe.hpp"
#include "ftune/text/chat_template.hpp"
#include "ftune/train/batch.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// How decoder examples become ids and labels.
struct lm_encoding_options {
    std::size_t max_length = 1024;  ///< longer examples lose their end (as TRL's truncation)
};

namespace detail {
/// The variables Transformers passes a chat template from the tokenizer (its special tokens).
inline nlohmann::ordered_json template_variables(const text::bpe_tokenizer& tok) {
    const auto& s = tok.settings();
    return {{"bos_token", s.bos_token}, {"eos_token", s.eos_token}, {"pad_token", s.pad_token}};
}

/// The byte spans of a rendered conversation that carry the loss: the template's {% generation
/// %} blocks when it has them (Transformers' assistant mask; those of the messages before
/// first_trained left out), otherwise, for each trained
/// assistant message i, the text the conversation up to i adds to the conversation before it
/// with the generation prompt (the reply and its end-of-turn marker, trailing whitespace left
/// out). Throws naming the template when its renderings are not prefixes of one another.
inline std::vector<std::pair<std::size_t, std::size_t>> trained_spans(
    const text::chat_template& tmpl, const data::lm_example& e, const text::chat_rendering& full,
    const nlohmann::ordered_json& vars, const std::string& where) {
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    if (!full.generation.empty()) {  // those after the prompt's messages (TRL's completion)
        const std::size_t from =
            e.first_trained == 0
                ? 0
                : tmpl.render({e.messages.begin(),
                               e.messages.begin() + std::ptrdiff_t(e.first_trained)},
                              false, vars)
                      .text.size();
        for (const auto& g : full.generation)
            if (g.first >= from) spans.push_back(g);
        return spans;
    }
    std::vector<text::chat_message> upto;
    for (std::size_t i = 0; i < e.messages.size(); ++i) {
        if (i < e.first_trained || e.messages[i].role != "assistant") {
            upto.push_back(e.messages[i]);
            continue;
        }
        const std::string before = tmpl.render(upto, true, vars).text;
        upto.push_back(e.messages[i]);
        std::string after = tmpl.render(upto, false, vars).text;
        if (!after.starts_with(before) || !full.text.starts_with(after))
            throw error(errc::unsupported, where,
                        "the chat template does not render a conversation as the growing prefix "
                        "of the next one, so the assistant's turns cannot be located; give it "
                        "{% generation %} blocks around them");
        std::size_t end = after.size();
        while (end > before.size() && (after[end - 1] == '\n' || after[end - 1] == ' ')) --end;
        spans.emplace_back(before.size(), end);
    }
    return spans;
}
}  // namespace detail

/// A conversation as ids and labels: the conversation rendered by the chat template, then
/// tokenized (no bos added: the template writes its own); a token carries the loss when it
/// starts inside one of the assistant's trained turns (detail::trained_spans).
inline example encode_conversation(const text::bpe_tokenizer& tok, const text::chat_template& tmpl,
                                   const data::lm_example& e, const lm_encoding_options& o = {},
                                   const std::string& where = "conversation") {
    const auto vars = detail::template_variables(tok);
    const auto full = tmpl.render(e.messages, false, vars);
    const auto spans = detail::trained_spans(tmpl, e, full, vars, where);
    example x;
    for (const auto& t : tok.encode_with_offsets(full.text)) {
        if (x.ids.size() == o.max_length) break;
        const bool trained = std::any_of(spans.begin(), spans.end(), [&](const auto& s) {
            return t.byte_begin >= s.first && t.byte_begin < s.second;
        });
        x.ids.push_back(t.id);
        x.labels.push_back(trained ? t.id : token_id(-100));
    }
    return x;
}

/// A prompt and its completion as ids and labels, as TRL tokenizes them: bos (when the
/// tokenizer adds one), then prompt + completion + eos tokenized as one text; the tokens past
/// those of the prompt alone carry the loss.
inline example encode_prompt_completion(const text::bpe_tokenizer& tok, const data::lm_example& e,
                                        const lm_encoding_options& o = {}) {
    const auto& s = tok.settings();
    std::vector<token_id> lead;
    if (s.add_bos_token)
        if (const auto bos = tok.id_of(s.bos_token); bos >= 0) lead.push_back(bos);
    std::string text = e.prompt + e.completion;
    if (!s.eos_token.empty() && !text.ends_with(s.eos_token)) text += s.eos_token;
    const std::size_t prompt = lead.size() + tok.encode(e.prompt).size();
    example x;
    x.ids = lead;
    for (const auto id : tok.encode(text)) x.ids.push_back(id);
    if (x.ids.size() > o.max_length) x.ids.resize(o.max_length);
    x.labels = x.ids;
    std::fill_n(x.labels.begin(), std::min(prompt, x.labels.size()), token_id(-100));
    return x;
}

/// Plain text for continued pretraining: bos (when the tokenizer adds one), the text, eos;
/// every token carries the loss.
inline example encode_text(const text::bpe_tokenizer& tok, std::string_view text,
                           const lm_encoding_options& o = {}) {
    const auto& s = tok.settings();
    example x;
    if (s.add_bos_token)
        if (const auto bos = tok.id_of(s.bos_token); bos >= 0) x.ids.push_back(bos);
    for (const auto id : tok.encode(text)) x.ids.push_back(id);
    if (const auto eos = tok.id_of(s.eos_token); eos >= 0) x.ids.push_back(eos);
    if (x.ids.size() > o.max_length) x.ids.resize(o.max_length);
    x.labels = x.ids;
    return x;
}

/// Every example of a decoder's data set as ids and labels (conversations need the chat
/// template); errors name file:line.
inline std::vector<example> encode(const text::bpe_tokenizer& tok, const data::lm_dataset& d,
                                   const text::chat_template* tmpl,
                                   const lm_encoding_options& o = {}) {
    std::vector<example> xs;
    xs.reserve(d.rows.size());
    bool learns = false;
    for (const auto& e : d.rows) {
        const std::string where = ftune::detail::cat(d.path, ":", e.line);
        if (e.messages.empty()) {  // a prompt and its completion as strings
            xs.push_back(encode_prompt_completion(tok, e, o));
        } else {
            if (!tmpl)
                throw error(errc::unsupported, where,
                            "a conversation needs the model's chat template, and it has none");
            xs.push_back(encode_conversation(tok, *tmpl, e, o, where));
        }
        learns |= std::any_of(xs.back().labels.begin(), xs.back().labels.end(),
                              [](token_id l) { return l != -100; });
    }
    if (!d.rows.empty() && !learns)
        throw error(errc::invalid_argument, d.path,
                    "no example has a token to learn (no assistant reply after the prompt, or "
                    "every one cut by max_length)");
    return xs;
}

}  // namespace train
FTUNE_NAMESPACE_END
