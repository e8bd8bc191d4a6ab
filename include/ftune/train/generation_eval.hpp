// Evaluating a decoder by what it writes: each evaluation conversation's prompt (the messages
// before its last reply, rendered by the chat template with the generation prompt) is answered
// greedily, and the replies are scored against the references: exact match, ROUGE-1/2/L as the
// rouge-score package computes them (with several references per case, as DialogSum's test set
// has, also averaged over the references and the best one per metric), and, when the references
// are labels (intent names, sentiments), scikit-learn's classification report over them.
#pragma once

#include <algorithm>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/data/conversations.hpp"
#include "ftune/generation.hpp"
#include "ftune/metrics/rouge.hpp"
#include "ftune/metrics/scores.hpp"
#include "ftune/text/chat_template.hpp"
#include "ftune/train/lm_batching.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// A prompt a decoder answers and the reply it should give.
struct generation_case {
    std::vector<token_id> prompt;               ///< the prompt's ids, ending where the reply starts
    std::string reference;                      ///< the expected reply
    std::size_t line = 0;                       ///< 1-based line in the data file
    std::vector<std::string> other_references;  ///< further acceptable replies (may be empty)
};

/// The generation cases of a decoder's data set: for a conversation, the messages before its
/// last assistant message rendered with the generation prompt (reference: that message); for a
/// prompt and completion, bos (when the tokenizer adds one) and the prompt (reference: the
/// completion). A prompt longer than max_length keeps its last max_length tokens; rows without
/// an assistant message to answer are left out.
inline std::vector<generation_case> generation_cases(const text::bpe_tokenizer& tok,
                                                     const data::lm_dataset& d,
                                                     const text::chat_template* tmpl,
                                                     const lm_encoding_options& o = {}) {
    std::vector<generation_case> cases;
    const auto vars = detail::template_variables(tok);
    for (const auto& e : d.rows) {
        generation_case c;
        c.line = e.line;
        if (e.messages.empty()) {  // a prompt and its completion as strings
            const auto& s = tok.settings();
            if (s.add_bos_token)
                if (const auto bos = tok.id_of(s.bos_token); bos >= 0) c.prompt.push_back(bos);
            for (const auto id : tok.encode(e.prompt)) c.prompt.push_back(id);
            c.reference = e.completion;
        } else {
            std::size_t last = e.messages.size();
            while (last > 0 && e.messages[last - 1].role != "assistant") --last;
            if (last == 0 || last - 1 < e.first_trained) continue;
            if (!tmpl)
                throw error(errc::invalid_argument, ftune::detail::cat(d.path, ":", e.line),
                            "a conversation needs the model's chat template");
            const std::vector<text::chat_message> before(
                e.messages.begin(), e.messages.begin() + std::ptrdiff_t(last - 1));
            for (const auto id : tok.encode(tmpl->render(before, true, vars).text))
                c.prompt.push_back(id);
            c.reference = e.messages[last - 1].content;
        }
        c.other_references = e.other_references;
        if (c.prompt.size() > o.max_length)
            c.prompt.erase(c.prompt.begin(), c.prompt.end() - std::ptrdiff_t(o.max_length));
        if (!c.prompt.empty()) cases.push_back(std::move(c));
    }
    return cases;
}

/// At most n cases spread evenly over all of them (every case when n is 0 or covers them): a
/// sample of a file sorted by label still holds every label.
inline std::vector<generation_case> spread_sample(const std::vector<generation_case>& cases,
                                                  std::size_t n) {
    if (n == 0 || n >= cases.size()) return cases;
    std::vector<generation_case> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) out.push_back(cases[i * cases.size() / n]);
    return out;
}

/// How replies are generated for scoring.
struct generation_eval_options {
    std::size_t max_new_tokens = 0;  ///< 0: the longest first reference's tokens + 8, at most 256
    std::size_t batch_size = 8;      ///< prompts generated together
};

/// Greedy replies scored against their references.
struct generation_report {
    std::vector<std::string> references;   ///< the expected replies, whitespace trimmed
    std::vector<std::string> predictions;  ///< the replies, whitespace trimmed
    std::size_t max_new_tokens = 0;        ///< the limit the replies had
    double exact_match = 0;                ///< share of replies equal to a reference
    /// Mean F-measures of ROUGE-1/2/L against each case's `reference` (rouge-score's, no stemming).
    double rouge1 = 0, rouge2 = 0, rouge_l = 0;
    /// Mean F-measures of ROUGE-1, ROUGE-2 and ROUGE-L over cases.
    struct rouge_means {
        double rouge1 = 0, rouge2 = 0, rouge_l = 0;  ///< mean F-measures
    };
    std::size_t most_references = 1;  ///< the most references a case has (1: only `reference`)
    /// Each case's ROUGE against each of its references, averaged over them, then over cases.
    rouge_means mean_over_references;
    /// Per case and metric the best of its references (rouge-score's score_multi), averaged over
    /// cases.
    rouge_means best_of_references;
    /// The distinct references, sorted, when they are labels (a single line each, and at most
    /// half as many distinct ones as cases); empty otherwise.
    std::vector<std::string> labels;

    /// The report: the counts and scores, then, for labels, scikit-learn's classification_report
    /// with every reply that is no label counted as "(other)".
    std::string text() const {
        std::string t = ftune::detail::cat(
            "generation on ", predictions.size(), " cases (greedy, at most ", max_new_tokens,
            " new tokens): exact match ", exact_match, ", ROUGE-1 ", rouge1, ", ROUGE-2 ", rouge2,
            ", ROUGE-L ", rouge_l, "\n");
        if (most_references > 1)
            t += ftune::detail::cat(
                "against up to ", most_references, " references a case: mean over them ROUGE-1 ",
                mean_over_references.rouge1, ", ROUGE-2 ", mean_over_references.rouge2,
                ", ROUGE-L ", mean_over_references.rouge_l, "; best of them ROUGE-1 ",
                best_of_references.rouge1, ", ROUGE-2 ", best_of_references.rouge2, ", ROUGE-L ",
                best_of_references.rouge_l, "\n");
        if (labels.empty()) return t;
        std::vector<std::string> names = labels;
        std::vector<int> gold, pred;
        for (std::size_t i = 0; i < predictions.size(); ++i) {
            auto id = [&](const std::string& s) {
                const auto it = std::lower_bound(labels.begin(), labels.end(), s);
                return it != labels.end() && *it == s ? int(it - labels.begin())
                                                      : int(labels.size());
            };
            gold.push_back(id(references[i]));
            pred.push_back(id(predictions[i]));
        }
        if (std::count(pred.begin(), pred.end(), int(labels.size()))) names.push_back("(other)");
        return t + metrics::classification_report(gold, pred, names);
    }
};

namespace detail {
/// s without leading and trailing whitespace.
inline std::string trimmed(std::string_view s) {
    const auto space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; };
    while (!s.empty() && space(s.front())) s.remove_prefix(1);
    while (!s.empty() && space(s.back())) s.remove_suffix(1);
    return std::string(s);
}
}  // namespace detail

/// Generates a greedy reply for every case with model (a causal LM; packed for inference here)
/// and scores it against the reference (both trimmed). Model's weights are not changed.
template <class Model>
generation_report evaluate_generation(Model& model, const text::bpe_tokenizer& tok,
                                      const std::vector<generation_case>& cases,
                                      const generation_eval_options& o = {}) {
    generation_report r;
    r.max_new_tokens = o.max_new_tokens;
    if (r.max_new_tokens == 0) {
        std::size_t longest = 0;
        for (const auto& c : cases) longest = std::max(longest, tok.encode(c.reference).size());
        r.max_new_tokens = std::min<std::size_t>(longest + 8, 256);
    }
    generation::generator<Model> gen(model, tok);
    generation::options g{.max_new_tokens = r.max_new_tokens, .temperature = 0};
    // prompts of similar length together: less left padding
    std::vector<std::size_t> order(cases.size());
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return cases[a].prompt.size() < cases[b].prompt.size();
    });
    r.predictions.resize(cases.size());
    const std::size_t batch = std::max<std::size_t>(o.batch_size, 1);
    for (std::size_t i = 0; i < order.size(); i += batch) {
        std::vector<std::vector<token_id>> prompts;
        for (std::size_t k = i; k < std::min(order.size(), i + batch); ++k)
            prompts.push_back(cases[order[k]].prompt);
        const auto out = gen.generate(prompts, g);
        for (std::size_t k = 0; k < out.size(); ++k)
            r.predictions[order[i + k]] = detail::trimmed(out[k].text);
    }
    std::size_t same = 0;
    bool single_lines = true;
    auto& mean = r.mean_over_references;
    auto& best = r.best_of_references;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        r.references.push_back(detail::trimmed(cases[i].reference));
        const auto& ref = r.references.back();
        const auto& pred = r.predictions[i];
        std::vector<std::string> all{ref};  // every reference of the case, trimmed
        for (const auto& o : cases[i].other_references) all.push_back(detail::trimmed(o));
        r.most_references = std::max(r.most_references, all.size());
        same += std::find(all.begin(), all.end(), pred) != all.end();
        std::vector<metrics::rouge_scores> each;  // against each reference, the first first
        for (const auto& a : all) {
            each.push_back(metrics::rouge(a, pred));
            mean.rouge1 += each.back().rouge1.fmeasure / double(all.size());
            mean.rouge2 += each.back().rouge2.fmeasure / double(all.size());
            mean.rouge_l += each.back().rouge_l.fmeasure / double(all.size());
        }
        r.rouge1 += each.front().rouge1.fmeasure;
        r.rouge2 += each.front().rouge2.fmeasure;
        r.rouge_l += each.front().rouge_l.fmeasure;
        const auto b = metrics::best_of(each);
        best.rouge1 += b.rouge1.fmeasure;
        best.rouge2 += b.rouge2.fmeasure;
        best.rouge_l += b.rouge_l.fmeasure;
        single_lines &= ref.find('\n') == std::string::npos && all.size() == 1;
    }
    const double n = double(std::max<std::size_t>(cases.size(), 1));
    r.exact_match = double(same) / n;
    r.rouge1 /= n, r.rouge2 /= n, r.rouge_l /= n;
    mean.rouge1 /= n, mean.rouge2 /= n, mean.rouge_l /= n;
    best.rouge1 /= n, best.rouge2 /= n, best.rouge_l /= n;
    std::vector<std::string> distinct = r.references;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    if (single_lines && !cases.empty() && 2 * distinct.size() <= cases.size())
        r.labels = std::move(distinct);
    return r;
}

}  // namespace train
FTUNE_NAMESPACE_END
