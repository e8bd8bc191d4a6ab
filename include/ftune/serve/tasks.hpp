// Serving token classification and extractive question answering from many threads, as
// Transformers' pipelines answer them:
//
//   serve::token_tagger      the pipeline "token-classification" with aggregation_strategy
//                            "first": the words of the tokenizer's pre-tokenization (split at
//                            spaces and punctuation), each with its first piece's label and
//                            probability; neighbouring words of one type (B-X then I-X...)
//                            joined into an entity scored by their mean; "O" left out.
//   serve::question_answerer the pipeline "question-answering": the context cut into
//                            overlapping windows, the best spans over all windows
//                            (qa::best_answers) with their character offsets.
//
// Both are const and thread-safe (serve::replica_pool); offsets count code points, as Python's.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/bert/tasks.hpp"
#include "ftune/io/hf.hpp"
#include "ftune/qa/spans.hpp"
#include "ftune/serve/replicas.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// One word of a text with its label (the pipeline's aggregation "none"-like view, by word).
struct word_tag {
    std::string word;                          ///< the text's bytes of the word
    std::string label;                         ///< its label (id2label), e.g. "B-PER"
    double score = 0;                          ///< its probability (the first piece's softmax)
    std::size_t start = 0;                     ///< first code point in the text
    std::size_t end = 0;                       ///< one past its last code point
    std::size_t byte_begin = 0, byte_end = 0;  ///< the same in bytes
};

/// One entity: neighbouring words of one type.
struct entity {
    std::string entity_group;  ///< the type ("PER" of B-PER / I-PER)
    double score = 0;          ///< the mean of its words' probabilities
    std::string word;          ///< the text from its first word's start to its last word's end
    std::size_t start = 0;     ///< first code point in the text
    std::size_t end = 0;       ///< one past its last code point
};

/// Entities of tagged words, as the pipeline's group_entities: a word continues the running
/// entity when its type is the same and its tag does not start with "B-"; words of type "O"
/// (and untagged words) end entities and are left out.
inline std::vector<entity> group_entities(const std::vector<word_tag>& words,
                                          std::string_view text) {
    auto split = [](const std::string& label) -> std::pair<char, std::string> {
        if (label.starts_with("B-") || label.starts_with("I-")) return {label[0], label.substr(2)};
        return {'I', label};
    };
    std::vector<entity> out;
    std::vector<const word_tag*> run;
    auto flush = [&] {
        if (run.empty()) return;
        const auto type = split(run.front()->label).second;
        if (type != "O") {
            double sum = 0;
            for (const auto* w : run) sum += w->score;
            const std::size_t b = run.front()->byte_begin, e = run.back()->byte_end;
            out.push_back({type, sum / double(run.size()), std::string(text.substr(b, e - b)),
                           run.front()->start, run.back()->end});
        }
        run.clear();
    };
    for (const auto& w : words) {
        if (!run.empty()) {
            const auto [bi, type] = split(w.label);
            if (type != split(run.back()->label).second || bi == 'B') flush();
        }
        run.push_back(&w);
    }
    flush();
    return out;
}

/// Thread-safe, const token classification (see the file comment).
template <class Model = bert::token_classifier<>>
class token_tagger {
  public:
    /// Takes a loaded model (it needs its tokenizer); texts are cut to max_length tokens (0: the
    /// model's maximum; words past the cut are left out); products in precision p.
    explicit token_tagger(io::hf_model<Model>&& m, std::size_t max_length = 0,
                          precision p = precision::fp32)
        : tok_(take_tokenizer(m)),
          labels_(std::move(m.config.id2label)),
          pool_(std::move(m.model), p) {
        max_length_ = max_length ? std::min(max_length, m.model_max_length) : m.model_max_length;
        for (std::size_t i = labels_.size(); i < pool_.model().num_labels(); ++i)
            labels_.push_back("LABEL_" + std::to_string(i));
    }

    /// The words of each text with their labels, from one padded forward.
    std::vector<std::vector<word_tag>> tag_batch(std::span<const std::string_view> texts) const {
        const std::size_t B = texts.size();
        if (B == 0) return {};
        std::vector<text::encoding> enc;
        std::size_t T = 0;
        for (const auto t : texts) {
            enc.push_back(tok_.encode(t, std::nullopt, max_length_));
            T = std::max(T, enc.back().ids.size());
        }
        std::vector<std::int32_t> ids(B * T), mask(B * T), types(B * T);  // (B, T)
        std::vector<std::size_t> lengths(B);
        for (std::size_t b = 0; b < B; ++b) {
            lengths[b] = enc[b].ids.size();
            tok_.pad(enc[b], T);
            std::copy(enc[b].ids.begin(), enc[b].ids.end(), ids.begin() + b * T);
            std::copy(enc[b].attention_mask.begin(), enc[b].attention_mask.end(),
                      mask.begin() + b * T);
            std::copy(enc[b].type_ids.begin(), enc[b].type_ids.end(), types.begin() + b * T);
        }
        return pool_.run([&](Model& model, context& ctx) {
            const auto logits = model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T},
                                              {types.data(), B, T});  // (B, T, L)
            const std::size_t L = logits.extent(2);
            std::vector<std::vector<word_tag>> out(B);
            for (std::size_t b = 0; b < B; ++b) {
                const auto& e = enc[b];
                std::int32_t words = 0;
                for (const auto& t : e.tokens) words = std::max(words, t.word + 1);
                const auto tags = model.head.decode_words(
                    logits.data() + b * T * L, std::span(e.tokens), lengths[b], std::size_t(words));
                std::vector<word_tag> w(static_cast<std::size_t>(words));
                std::vector<bool> seen(w.size(), false);
                for (std::size_t t = 0; t < lengths[b]; ++t) {  // spans from every piece
                    const auto& ti = e.tokens[t];
                    if (ti.word < 0) continue;
                    auto& x = w[std::size_t(ti.word)];
                    if (!seen[std::size_t(ti.word)])
                        x.start = ti.char_begin, x.byte_begin = ti.byte_begin;
                    x.end = ti.char_end, x.byte_end = ti.byte_end;
                    seen[std::size_t(ti.word)] = true;
                }
                for (std::size_t k = 0; k < w.size(); ++k) {
                    if (!seen[k] || tags[k].score < 0) continue;  // cut by max_length
                    w[k].label = labels_[tags[k].label];
                    w[k].score = tags[k].score;
                    w[k].word = std::string(
                        texts[b].substr(w[k].byte_begin, w[k].byte_end - w[k].byte_begin));
                    out[b].push_back(std::move(w[k]));
                }
            }
            return out;
        });
    }
    /// The entities of a text (tag_batch of one, grouped).
    std::vector<entity> entities(std::string_view text) const {
        return group_entities(tag_batch(std::span<const std::string_view>(&text, 1))[0], text);
    }
    /// Label names, by id.
    const std::vector<std::string>& labels() const noexcept { return labels_; }
    /// Most tokens of a text (longer ones are cut).
    std::size_t max_length() const noexcept { return max_length_; }

  private:
    static text::bert_tokenizer take_tokenizer(io::hf_model<Model>& m) {
        if (!m.tokenizer)
            throw error(errc::invalid_argument, "serve::token_tagger",
                        "the model directory has no vocab.txt or tokenizer.json");
        return std::move(*m.tokenizer);
    }

    text::bert_tokenizer tok_;         // shared, const
    std::vector<std::string> labels_;  // id2label
    std::size_t max_length_ = 0;       // tokens per text
    replica_pool<Model> pool_;         // the weights and the replicas running them
};

/// Thread-safe, const extractive question answering (see the file comment).
template <class Model = bert::question_answering<>>
class question_answerer {
  public:
    /// Takes a loaded model (it needs its tokenizer); windows of max_length tokens (0: 384 or
    /// the model's maximum, whichever is smaller, as the pipeline's max_seq_len) sharing
    /// doc_stride context tokens (0: 128 or half a window's context, whichever is smaller);
    /// products in precision p.
    explicit question_answerer(io::hf_model<Model>&& m, std::size_t max_length = 0,
                               std::size_t doc_stride = 0, precision p = precision::fp32)
        : tok_(take_tokenizer(m)), doc_stride_(doc_stride), pool_(std::move(m.model), p) {
        max_length_ = std::min<std::size_t>(max_length ? max_length : 384, m.model_max_length);
    }

    /// The top_k best answers to a question about a context (the empty list when the context
    /// has no span of at most max_answer_length tokens). A question over half a window is cut.
    std::vector<qa::answer> answer(std::string_view question, std::string_view context,
                                   std::size_t top_k = 1,
                                   std::size_t max_answer_length = 15) const {
        qa::window_options wo{.max_length = max_length_, .doc_stride = doc_stride_};
        wo.max_question = max_length_ / 2;
        std::vector<text::token_info> q;
        tok_.tokenize(question, q);
        const std::size_t room = max_length_ - std::min(q.size(), wo.max_question) - 3;
        if (doc_stride_ == 0) wo.doc_stride = std::min<std::size_t>(128, room / 2);
        const auto windows = qa::encode_windows(tok_, question, context, wo);
        return pool_.run([&](Model& model, context_type& ctx) {
            (void)ctx;  // forward_windows runs in eval mode on its own context
            const auto logits = qa::forward_windows(model, tok_, windows);  // (B, T, 2)
            return qa::best_answers(logits, windows, context,
                                    {.top_k = top_k, .max_answer_length = max_answer_length});
        });
    }
    /// Tokens per window.
    std::size_t max_length() const noexcept { return max_length_; }

  private:
    using context_type = ftune::context;
    static text::bert_tokenizer take_tokenizer(io::hf_model<Model>& m) {
        if (!m.tokenizer)
            throw error(errc::invalid_argument, "serve::question_answerer",
                        "the model directory has no vocab.txt or tokenizer.json");
        return std::move(*m.tokenizer);
    }

    text::bert_tokenizer tok_;    // shared, const
    std::size_t max_length_ = 0;  // tokens per window
    std::size_t doc_stride_ = 0;  // context tokens shared by neighbouring windows (0: auto)
    replica_pool<Model> pool_;    // the weights and the replicas running them
};

}  // namespace serve
FTUNE_NAMESPACE_END
