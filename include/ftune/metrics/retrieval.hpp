// Retrieval metrics as sentence-transformers' InformationRetrievalEvaluator computes them: for
// each query the corpus ranked by score (ties by corpus order), then accuracy@k (a relevant
// document in the top k), precision@k and recall@k, MRR@k, nDCG@k (binary relevance, log2
// discount) and MAP@k (the sum of precisions at the relevant hits over min(k, relevant)),
// averaged over the queries that have a relevant document. Checked against the evaluator by
// tests/test_retrieval.cpp (fixtures from tests/reference/retrieval_metrics.py).
//
//   auto ranked = ftune::metrics::rank_corpus(scores, queries, documents, 100);
//   auto m = ftune::metrics::retrieval_metrics(ranked, relevant);
//   std::cout << ftune::metrics::retrieval_report(m);   // Accuracy@1: 71.40% ... MAP@100: 0.53
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace metrics {

/// The cut-offs of each metric (sentence-transformers' defaults).
struct retrieval_cutoffs {
    std::vector<std::size_t> accuracy{1, 3, 5, 10};          ///< accuracy@k
    std::vector<std::size_t> precision_recall{1, 3, 5, 10};  ///< precision@k and recall@k
    std::vector<std::size_t> mrr{10};                        ///< MRR@k
    std::vector<std::size_t> ndcg{10};                       ///< nDCG@k
    std::vector<std::size_t> map{100};                       ///< MAP@k
    /// The largest k: how much of each ranking the metrics read.
    std::size_t largest() const {
        std::size_t k = 0;
        for (const auto* v : {&accuracy, &precision_recall, &mrr, &ndcg, &map})
            for (const std::size_t x : *v) k = std::max(k, x);
        return k;
    }
};

/// Each metric by its k, averaged over the queries that have a relevant document.
struct retrieval_scores {
    std::map<std::size_t, double> accuracy, precision, recall, mrr, ndcg, map;  ///< by k
    std::size_t queries = 0;  ///< queries scored (those with a relevant document)
};

/// The documents of each query best first: scores (queries, documents) row-major, higher is
/// better, ties in document order; at most `keep` of them per query.
inline std::vector<std::vector<std::size_t>> rank_corpus(std::span<const float> scores,
                                                         std::size_t queries, std::size_t documents,
                                                         std::size_t keep) {
    if (scores.size() != queries * documents)
        throw error(errc::shape_mismatch, "metrics::rank_corpus",
                    ftune::detail::cat(scores.size(), " scores for ", queries, " queries x ",
                                       documents, " documents"));
    std::vector<std::vector<std::size_t>> ranked(queries);
    for (std::size_t q = 0; q < queries; ++q) {
        const float* s = scores.data() + q * documents;
        auto& r = ranked[q];
        r.resize(documents);
        std::iota(r.begin(), r.end(), std::size_t(0));
        const auto better = [&](std::size_t a, std::size_t b) {
            return s[a] > s[b] || (s[a] == s[b] && a < b);
        };
        const std::size_t n = std::min(keep, documents);
        std::partial_sort(r.begin(), r.begin() + std::ptrdiff_t(n), r.end(), better);
        r.resize(n);
    }
    return ranked;
}

/// The metrics of rankings (`ranked[q]`: query q's documents best first, at least the largest
/// k of them where the corpus has as many) against the relevant documents of each query
/// (`relevant[q]`; a query without any is left out, as the evaluator does).
inline retrieval_scores retrieval_metrics(const std::vector<std::vector<std::size_t>>& ranked,
                                          const std::vector<std::vector<std::size_t>>& relevant,
                                          const retrieval_cutoffs& ks = {}) {
    if (ranked.size() != relevant.size())
        throw error(errc::shape_mismatch, "metrics::retrieval_metrics",
                    ftune::detail::cat(ranked.size(), " rankings for ", relevant.size(),
                                       " queries' relevant documents"));
    retrieval_scores out;
    std::map<std::size_t, std::vector<double>> precision, recall, ndcg, map;
    for (const std::size_t k : ks.accuracy) out.accuracy[k] = 0;
    for (const std::size_t k : ks.mrr) out.mrr[k] = 0;
    for (std::size_t q = 0; q < ranked.size(); ++q) {
        const auto& rel = relevant[q];
        if (rel.empty()) continue;
        ++out.queries;
        const auto& top = ranked[q];
        auto hit = [&](std::size_t i) {  // whether the i-th ranked document is relevant
            return std::find(rel.begin(), rel.end(), top[i]) != rel.end();
        };
        auto upto = [&](std::size_t k) { return std::min(k, top.size()); };
        for (const std::size_t k : ks.accuracy)
            for (std::size_t i = 0; i < upto(k); ++i)
                if (hit(i)) {
                    out.accuracy[k] += 1;
                    break;
                }
        for (const std::size_t k : ks.precision_recall) {
            double correct = 0;
            for (std::size_t i = 0; i < upto(k); ++i) correct += hit(i);
            precision[k].push_back(correct / double(k));
            recall[k].push_back(correct / double(rel.size()));
        }
        for (const std::size_t k : ks.mrr)
            for (std::size_t i = 0; i < upto(k); ++i)
                if (hit(i)) {
                    out.mrr[k] += 1.0 / double(i + 1);
                    break;
                }
        for (const std::size_t k : ks.ndcg) {
            double dcg = 0, ideal = 0;
            for (std::size_t i = 0; i < upto(k); ++i)
                if (hit(i)) dcg += 1.0 / std::log2(double(i) + 2);
            for (std::size_t i = 0; i < std::min(k, rel.size()); ++i)
                ideal += 1.0 / std::log2(double(i) + 2);
            ndcg[k].push_back(dcg / ideal);
        }
        for (const std::size_t k : ks.map) {
            double correct = 0, sum = 0;
            for (std::size_t i = 0; i < upto(k); ++i)
                if (hit(i)) sum += ++correct / double(i + 1);
            map[k].push_back(sum / double(std::min(k, rel.size())));
        }
    }
    const double n = double(out.queries);
    auto mean = [&](const std::vector<double>& v) {
        return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
    };
    for (auto& [k, v] : out.accuracy) v = n ? v / n : 0;
    for (auto& [k, v] : out.mrr) v = n ? v / n : 0;
    for (const std::size_t k : ks.precision_recall)
        out.precision[k] = mean(precision[k]), out.recall[k] = mean(recall[k]);
    for (const std::size_t k : ks.ndcg) out.ndcg[k] = mean(ndcg[k]);
    for (const std::size_t k : ks.map) out.map[k] = mean(map[k]);
    return out;
}

/// The metrics as the evaluator logs them ("Accuracy@1: 71.40%", ..., "MRR@10: 0.7712",
/// "NDCG@10: 0.7601", "MAP@100: 0.5312"), one per line.
inline std::string retrieval_report(const retrieval_scores& s) {
    std::string out;
    auto line = [&](const char* name, std::size_t k, double v, bool percent) {
        char buf[96];
        if (percent)
            std::snprintf(buf, sizeof buf, "%s@%zu: %.2f%%\n", name, k, v * 100);
        else
            std::snprintf(buf, sizeof buf, "%s@%zu: %.4f\n", name, k, v);
        out += buf;
    };
    for (const auto& [k, v] : s.accuracy) line("Accuracy", k, v, true);
    for (const auto& [k, v] : s.precision) line("Precision", k, v, true);
    for (const auto& [k, v] : s.recall) line("Recall", k, v, true);
    for (const auto& [k, v] : s.mrr) line("MRR", k, v, false);
    for (const auto& [k, v] : s.ndcg) line("NDCG", k, v, false);
    for (const auto& [k, v] : s.map) line("MAP", k, v, false);
    return out;
}

}  // namespace metrics
FTUNE_NAMESPACE_END
