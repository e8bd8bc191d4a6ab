// ROUGE-N and ROUGE-L of a generated text against its reference, as Google's rouge-score package
// computes them (rouge_scorer.RougeScorer without stemming): lowercase, every run of characters
// other than a-z and 0-9 is a separator, n-gram overlap (ROUGE-N) or the longest common
// subsequence of tokens (ROUGE-L) as precision, recall and F-measure; against several
// references, rouge_best picks the best per metric as RougeScorer.score_multi does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace metrics {

/// One ROUGE score of a prediction against its reference.
struct rouge_score {
    double precision = 0;  ///< matched / prediction tokens (or n-grams)
    double recall = 0;     ///< matched / reference tokens (or n-grams)
    double fmeasure = 0;   ///< 2 P R / (P + R), 0 when both are 0
};

/// rouge-score's default tokens of text: Python's lower(), then the runs of a-z and 0-9 (every
/// other character separates; Unicode letters vanish, except the two whose lowercase is ASCII:
/// U+0130 gives "i" and U+212A KELVIN SIGN "k", as str.lower() makes them).
inline std::vector<std::string> rouge_tokens(std::string_view text) {
    std::vector<std::string> tokens;
    std::string cur;
    auto cut = [&] {
        if (!cur.empty()) tokens.push_back(std::move(cur)), cur.clear();
    };
    for (std::size_t i = 0; i < text.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c >= 'A' && c <= 'Z') {
            cur += char(c - 'A' + 'a');
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            cur += char(c);
        } else if (c == 0xC4 && i + 1 < text.size() &&
                   static_cast<unsigned char>(text[i + 1]) == 0xB0) {  // U+0130 -> i + U+0307
            cur += 'i';
            cut();  // the combining dot that follows separates
            ++i;
        } else if (c == 0xE2 && i + 2 < text.size() &&
                   static_cast<unsigned char>(text[i + 1]) == 0x84 &&
                   static_cast<unsigned char>(text[i + 2]) == 0xAA) {  // U+212A -> k
            cur += 'k';
            i += 2;
        } else {
            cut();
        }
    }
    cut();
    return tokens;
}

namespace detail {
/// F-measure of precision p and recall r (rouge-score's scoring.fmeasure).
inline rouge_score rouge_of(double p, double r) {
    return {p, r, p + r > 0 ? 2 * p * r / (p + r) : 0.0};
}
}  // namespace detail

/// ROUGE-N (n >= 1) of prediction against reference: the clipped count of shared n-grams over
/// the prediction's (precision) and the reference's (recall) n-gram counts.
inline rouge_score rouge_n(std::string_view reference, std::string_view prediction, std::size_t n) {
    if (n == 0) throw error(errc::invalid_argument, "rouge_n", "n must be at least 1");
    const auto ref = rouge_tokens(reference), pred = rouge_tokens(prediction);
    auto grams = [n](const std::vector<std::string>& t) {
        std::map<std::vector<std::string>, std::size_t> counts;
        for (std::size_t i = 0; i + n <= t.size(); ++i)
            ++counts[std::vector<std::string>(t.begin() + std::ptrdiff_t(i),
                                              t.begin() + std::ptrdiff_t(i + n))];
        return counts;
    };
    const auto r = grams(ref), p = grams(pred);
    std::size_t shared = 0, rn = 0, pn = 0;
    for (const auto& [g, k] : r) {
        rn += k;
        if (const auto it = p.find(g); it != p.end()) shared += std::min(k, it->second);
    }
    for (const auto& [g, k] : p) pn += k;
    return detail::rouge_of(double(shared) / double(std::max<std::size_t>(pn, 1)),
                            double(shared) / double(std::max<std::size_t>(rn, 1)));
}

/// ROUGE-L of prediction against reference: the longest common subsequence of their tokens over
/// the prediction's length (precision) and the reference's (recall); 0 when either is empty.
inline rouge_score rouge_l(std::string_view reference, std::string_view prediction) {
    const auto ref = rouge_tokens(reference), pred = rouge_tokens(prediction);
    if (ref.empty() || pred.empty()) return {};
    std::vector<std::size_t> row(pred.size() + 1, 0), prev(pred.size() + 1, 0);
    for (std::size_t i = 1; i <= ref.size(); ++i) {
        std::swap(row, prev);
        for (std::size_t j = 1; j <= pred.size(); ++j)
            row[j] = ref[i - 1] == pred[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], row[j - 1]);
    }
    const double lcs = double(row[pred.size()]);
    return detail::rouge_of(lcs / double(pred.size()), lcs / double(ref.size()));
}

/// The ROUGE-1, ROUGE-2 and ROUGE-L scores of one prediction.
struct rouge_scores {
    rouge_score rouge1;   ///< unigram overlap
    rouge_score rouge2;   ///< bigram overlap
    rouge_score rouge_l;  ///< longest common subsequence
};

/// ROUGE-1, ROUGE-2 and ROUGE-L of prediction against one reference.
inline rouge_scores rouge(std::string_view reference, std::string_view prediction) {
    return {rouge_n(reference, prediction, 1), rouge_n(reference, prediction, 2),
            rouge_l(reference, prediction)};
}

/// Per metric, the score with the highest F-measure among one prediction's scores against
/// several references (the first of equals): RougeScorer.score_multi's choice. At least one.
inline rouge_scores best_of(const std::vector<rouge_scores>& scores) {
    if (scores.empty())
        throw error(errc::invalid_argument, "rouge_best", "needs at least one reference");
    rouge_scores best = scores.front();
    for (const auto& s : scores) {
        if (s.rouge1.fmeasure > best.rouge1.fmeasure) best.rouge1 = s.rouge1;
        if (s.rouge2.fmeasure > best.rouge2.fmeasure) best.rouge2 = s.rouge2;
        if (s.rouge_l.fmeasure > best.rouge_l.fmeasure) best.rouge_l = s.rouge_l;
    }
    return best;
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of prediction against several references as rouge-score's
/// RougeScorer.score_multi gives them: per metric, the score against the reference with the
/// highest F-measure (the first of equals). At least one reference.
inline rouge_scores rouge_best(const std::vector<std::string>& references,
                               std::string_view prediction) {
    std::vector<rouge_scores> scores;
    for (const auto& r : references) scores.push_back(rouge(r, prediction));
    return best_of(scores);
}

}  // namespace metrics
FTUNE_NAMESPACE_END
