// Fine-tuning extractive question answering: SQuAD examples as training windows labelled with
// the answer's start and end tokens, and the SQuAD evaluation (exact match, F1) of a model.
//
// As Transformers' run_qa: each question/context pair becomes overlapping windows; a window that
// holds the whole (first) answer is labelled with the answer's first and last context tokens,
// any other window (and an unanswerable question) with [CLS] (position 0). The loss of a window
// is the mean of the cross-entropies of the start and the end logits over its positions.
//
//   auto squad = ftune::data::read_squad("train.json");
//   auto xs = ftune::train::encode_qa(*m.tokenizer, squad, {.max_length = 384});
//   trainer<bert::question_answering<>> t(m.model, {.epochs = 2});
//   t.fit(xs, {});
//   auto s = ftune::train::evaluate_squad(m.model, *m.tokenizer, dev, {.max_length = 384});
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "ftune/core/context.hpp"
#include "ftune/data/squad.hpp"
#include "ftune/qa/spans.hpp"
#include "ftune/train/batching.hpp"
#include "ftune/metrics/scores.hpp"
#include "ftune/metrics/squad.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// The training windows of SQuAD examples: labels {start token, end token} per window.
inline std::vector<example> encode_qa(const text::bert_tokenizer& tok,
                                      const std::vector<data::qa_example>& xs,
                                      const qa::window_options& o = {}) {
    std::vector<example> out;
    for (const auto& x : xs) {
        const auto windows = qa::encode_windows(tok, x.question, x.context, o);
        std::size_t s = 0, e = 0;  // the answer's code points [s, e)
        if (!x.answers.empty()) {
            s = x.answers.front().char_start;
            e = s + data::code_points(x.answers.front().text);
        }
        for (const auto& w : windows) {
            token_id start = 0, end = 0;                 // [CLS]: no answer in this window
            std::size_t first = w.ids.size(), last = 0;  // the window's context tokens
            for (std::size_t i = 0; i < w.ids.size(); ++i)
                if (w.type_ids[i] == 1 && w.tokens[i].char_end > w.tokens[i].char_begin)
                    first = std::min(first, i), last = std::max(last, i);
            if (!x.answers.empty() && first <= last && w.tokens[first].char_begin <= s &&
                w.tokens[last].char_end >= e) {
                std::size_t i = first, j = last;
                while (i + 1 <= last && w.tokens[i + 1].char_begin <= s) ++i;  // last start <= s
                while (j > first && w.tokens[j - 1].char_end >= e) --j;        // first end >= e
                start = token_id(i), end = token_id(std::max(i, j));
            }
            example ex;
            ex.ids = w.ids;
            ex.types = w.type_ids;
            ex.labels = {start, end};
            out.push_back(std::move(ex));
        }
    }
    return out;
}

/// SQuAD scores of a model: mean exact match and F1 (SQuAD's normalization) of its best answer
/// per question over all gold answers, and how many questions there were.
struct squad_scores {
    double exact_match = 0;  ///< share of questions answered exactly
    double f1 = 0;           ///< mean token F1
    std::size_t count = 0;   ///< questions
};

/// Answers every question with the model (eval mode; windows as encode_qa's; the best span by
/// qa::best_answers) and scores the answers.
template <class Model>
squad_scores evaluate_squad(Model& model, const text::bert_tokenizer& tok,
                            const std::vector<data::qa_example>& xs,
                            const qa::window_options& o = {}, const qa::decode_options& d = {}) {
    squad_scores r;
    for (const auto& x : xs) {
        const auto windows = qa::encode_windows(tok, x.question, x.context, o);
        const auto logits = qa::forward_windows(model, tok, windows);  // (B, T, 2)
        const auto best = qa::best_answers(logits, windows, x.context, d);
        const std::string answer = best.empty() ? std::string() : best.front().text;
        std::vector<std::string> golds;
        for (const auto& a : x.answers) golds.push_back(a.text);
        if (golds.empty()) golds.push_back("");
        r.exact_match += metrics::squad_exact_match(answer, golds);
        r.f1 += metrics::squad_f1(answer, golds);
        ++r.count;
    }
    if (r.count) r.exact_match /= double(r.count), r.f1 /= double(r.count);
    return r;
}

}  // namespace train
FTUNE_NAMESPACE_END
