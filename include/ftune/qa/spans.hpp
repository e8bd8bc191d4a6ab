// Extractive question answering around bert::question_answering: encoding a question and a long
// context as overlapping windows, and decoding start/end logits into the n best answer spans.
//
// Decoding follows Transformers' question-answering pipeline (select_starts_ends / decode_spans):
// per window, softmax of the start and of the end logits over the context tokens and [CLS];
// [CLS] then excluded; a span (i, j) of context tokens with i <= j < i + max_answer_length
// scores p_start[i] * p_end[j]; answers of all windows are ranked by score. With
// handle_impossible_answer, the empty answer competes with score min over windows of
// p_start[CLS] * p_end[CLS].
//
//   auto windows = ftune::qa::encode_windows(tok, question, context, {.max_length = 384});
//   ... forward each window's ids / type ids -> logits (B, T, 2)
//   auto answers = ftune::qa::best_answers(logits, windows, context, {.top_k = 3});
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/types.hpp"
#include "ftune/config.hpp"
#include "ftune/core/context.hpp"
#include "ftune/text/bert.hpp"
#include "ftune/core/context.hpp"
#include "ftune/core/error.hpp"
#include "ftune/text/bert.hpp"

FTUNE_NAMESPACE_BEGIN
namespace qa {

/// How a question and its context become model inputs.
struct window_options {
    std::size_t max_length = 384;  ///< tokens per window (the pipeline's max_seq_len)
    std::size_t doc_stride = 128;  ///< context tokens shared by neighbouring windows
    std::size_t max_question =
        std::numeric_limits<std::size_t>::max();  ///< question tokens
                                                  ///< kept (default all, as the fast tokenizer's
                                                  ///< only_second)
};

/// How logits become answers.
struct decode_options {
    std::size_t top_k = 1;                  ///< answers returned (n-best)
    std::size_t max_answer_length = 15;     ///< longest answer, in tokens
    bool handle_impossible_answer = false;  ///< the empty answer may win (SQuAD 2.0)
};

/// One answer: its text in the context, where it is, and its score.
struct answer {
    std::string text;              ///< the context's bytes [byte_begin, byte_end)
    double score = 0;              ///< p_start * p_end within its window
    std::uint32_t char_begin = 0;  ///< first code point in the context
    std::uint32_t char_end = 0;    ///< one past the last code point
    std::uint32_t byte_begin = 0;  ///< first byte in the context
    std::uint32_t byte_end = 0;    ///< one past the last byte
    std::size_t window = 0;        ///< the window it came from
    std::size_t start_token = 0;   ///< its first token in that window
    std::size_t end_token = 0;     ///< its last token in that window
};

/// [CLS] question [SEP] context-part [SEP] for each overlapping part of the context (type ids
/// 0 then 1; offsets of the context tokens point into the context). A context that fits makes
/// one window. Windows are not padded.
inline std::vector<text::encoding> encode_windows(const text::bert_tokenizer& tok,
                                                  std::string_view question,
                                                  std::string_view context,
                                                  const window_options& o = {}) {
    std::vector<text::token_info> q, c;
    tok.tokenize(question, q);
    tok.tokenize(context, c);
    if (q.size() > o.max_question) q.resize(o.max_question);
    if (o.max_length < q.size() + 4)
        throw error(errc::invalid_argument, "question answering",
                    ftune::detail::cat("max_length ", o.max_length, " leaves no room for the ",
                                       "context after a question of ", q.size(),
                                       " tokens; raise it or shorten max_question"));
    const std::size_t room = o.max_length - q.size() - 3;  // context tokens per window
    if (o.doc_stride >= room)
        throw error(errc::invalid_argument, "question answering",
                    ftune::detail::cat("doc_stride ", o.doc_stride, " must be below the ", room,
                                       " context tokens of a window"));
    const text::token_info cls{tok.cls_id(), 0, 0, 0, 0, -1}, sep{tok.sep_id(), 0, 0, 0, 0, -1};
    std::vector<text::encoding> out;
    for (std::size_t begin = 0;; begin += room - o.doc_stride) {
        const std::size_t end = std::min(c.size(), begin + room);
        text::encoding e;
        auto push = [&](const text::token_info& t, std::int32_t type) {
            e.ids.push_back(t.id), e.type_ids.push_back(type), e.attention_mask.push_back(1);
            e.tokens.push_back(t);
        };
        push(cls, 0);
        for (const auto& t : q) push(t, 0);
        push(sep, 0);
        for (std::size_t i = begin; i < end; ++i) push(c[i], 1);
        push(sep, 1);
        out.push_back(std::move(e));
        if (end == c.size()) break;
    }
    return out;
}

/// The start/end logits (B, T, 2) of a question-answering model on windows, padded to the
/// longest, in eval mode (the view points into the model: valid until its next forward).
template <class Model>
auto forward_windows(Model& model, const text::bert_tokenizer& tok,
                     const std::vector<text::encoding>& windows) {
    std::size_t T = 0;
    for (const auto& w : windows) T = std::max(T, w.ids.size());
    const std::size_t B = windows.size();
    std::vector<token_id> ids, mask, types;  // (B, T)
    for (auto w : windows) {
        tok.pad(w, T);
        ids.insert(ids.end(), w.ids.begin(), w.ids.end());
        mask.insert(mask.end(), w.attention_mask.begin(), w.attention_mask.end());
        types.insert(types.end(), w.type_ids.begin(), w.type_ids.end());
    }
    context eval;  // no dropout
    return model.forward(eval, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T});
}

namespace detail {
/// Whether position i of a window is a context token (not the question, [SEP] or padding).
inline bool in_context(const text::encoding& e, std::size_t i) {
    return e.type_ids[i] == 1 && e.attention_mask[i] == 1 &&
           e.tokens[i].byte_end > e.tokens[i].byte_begin;
}

/// Softmax over the context positions and [CLS] (others get 0), in double.
template <class T>
std::vector<double> context_softmax(const T* logits, std::size_t stride, std::size_t n,
                                    const text::encoding& e) {
    std::vector<double> p(n, 0.0);
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (std::size_t i = 0; i < n; ++i)
        if (i == 0 || in_context(e, i)) mx = std::max(mx, double(logits[i * stride]));
    for (std::size_t i = 0; i < n; ++i)
        if (i == 0 || in_context(e, i)) sum += p[i] = std::exp(double(logits[i * stride]) - mx);
    for (auto& v : p) v /= sum;
    return p;
}
}  // namespace detail

/// The top_k answers of a question from the logits (B, T, 2) of its windows (B windows padded
/// to T, start logit then end logit per position), best first. `context` is the text the
/// windows were encoded from.
template <class LogitsView>
std::vector<answer> best_answers(const LogitsView& logits,
                                 const std::vector<text::encoding>& windows,
                                 std::string_view context, const decode_options& o = {}) {
    if (logits.extent(0) != windows.size())
        throw error(errc::shape_mismatch, "question answering logits",
                    ftune::detail::cat(logits.extent(0), " rows for ", windows.size(), " windows"));
    const std::size_t T = logits.extent(1);
    std::vector<answer> out;
    double null_score = std::numeric_limits<double>::infinity();
    for (std::size_t w = 0; w < windows.size(); ++w) {
        const auto& e = windows[w];
        const std::size_t n = std::min(T, e.ids.size());
        const auto* row = &logits(w, 0, 0);
        auto ps = detail::context_softmax(row, 2, n, e);      // (T,)
        auto pe = detail::context_softmax(row + 1, 2, n, e);  // (T,)
        null_score = std::min(null_score, ps[0] * pe[0]);
        ps[0] = pe[0] = 0;  // [CLS] is no answer span
        for (std::size_t i = 1; i < n; ++i) {
            if (!detail::in_context(e, i)) continue;
            for (std::size_t j = i; j < n && j < i + o.max_answer_length; ++j) {
                if (!detail::in_context(e, j)) continue;
                answer a;
                a.score = ps[i] * pe[j];
                a.window = w, a.start_token = i, a.end_token = j;
                a.char_begin = e.tokens[i].char_begin, a.char_end = e.tokens[j].char_end;
                a.byte_begin = e.tokens[i].byte_begin, a.byte_end = e.tokens[j].byte_end;
                out.push_back(std::move(a));
            }
        }
    }
    const std::size_t k = std::min(o.top_k, out.size());
    std::partial_sort(out.begin(), out.begin() + std::ptrdiff_t(k), out.end(),
                      [](const answer& a, const answer& b) { return a.score > b.score; });
    out.resize(k);
    if (o.handle_impossible_answer && !windows.empty()) {
        answer none;
        none.score = null_score;
        const auto at = std::find_if(out.begin(), out.end(),
                                     [&](const answer& a) { return a.score < null_score; });
        out.insert(at, none);
        if (out.size() > o.top_k) out.pop_back();
    }
    for (auto& a : out)
        if (a.byte_end > a.byte_begin)
            a.text = std::string(context.substr(a.byte_begin, a.byte_end - a.byte_begin));
    return out;
}

}  // namespace qa
FTUNE_NAMESPACE_END
