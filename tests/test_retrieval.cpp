// Retrieval metrics (metrics/retrieval.hpp) against sentence-transformers'
// InformationRetrievalEvaluator: accuracy@k, precision@k, recall@k, MRR@10, nDCG@10 and MAP@100
// on random score matrices full of ties, with queries that have no relevant document
// (tests/reference/retrieval_metrics.py); the ranking's tie order and cut; bad shapes. The
// losses of embedding fine-tuning (MultipleNegativesRankingLoss, CosineSimilarityLoss) and their
// gradients against sentence-transformers' (tests/reference/embedding_losses.py).
#include <ftune/loss.hpp>
#include <ftune/metrics/retrieval.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

TEST_CASE("retrieval metrics equal sentence-transformers' InformationRetrievalEvaluator",
          "[parity][metrics]") {
    std::ifstream in(std::filesystem::path(FTUNE_REFERENCE_DIR) / "retrieval_metrics.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 3);
    std::size_t left_out = 0;
    for (const auto& c : cases) {
        const std::size_t Q = c["queries"], D = c["documents"];
        INFO(Q << " queries x " << D << " documents");
        const auto scores = c["scores"].get<std::vector<float>>();
        const auto relevant = c["relevant"].get<std::vector<std::vector<std::size_t>>>();
        const ftune::metrics::retrieval_cutoffs ks;
        const auto ranked = ftune::metrics::rank_corpus(scores, Q, D, ks.largest());
        const auto m = ftune::metrics::retrieval_metrics(ranked, relevant, ks);
        const auto& want = c["metrics"];
        auto check = [&](const std::map<std::size_t, double>& got, const std::string& name) {
            REQUIRE(got.size() == want[name].size());
            for (const auto& [k, v] : got) {
                INFO(name << " " << k);
                CHECK(std::abs(v - want[name][std::to_string(k)].get<double>()) <= 1e-12);
            }
        };
        check(m.accuracy, "accuracy@k");
        check(m.precision, "precision@k");
        check(m.recall, "recall@k");
        check(m.mrr, "mrr@k");
        check(m.ndcg, "ndcg@k");
        check(m.map, "map@k");
        std::size_t with = 0;
        for (const auto& r : relevant) with += !r.empty();
        CHECK(m.queries == with);
        left_out += Q - with;
    }
    CHECK(left_out > 0);  // the fixture has queries the evaluator leaves out
}

TEST_CASE("rank_corpus: best first, ties in corpus order, cut at keep; bad shapes are errors",
          "[unit][metrics]") {
    const std::vector<float> s{0.5f, 0.9f, 0.5f, -1.0f, 0.9f,   // query 0
                               0.0f, 0.0f, 0.0f, 0.0f,  0.0f};  // query 1: all tied
    const auto r = ftune::metrics::rank_corpus(s, 2, 5, 4);
    CHECK(r[0] == std::vector<std::size_t>{1, 4, 0, 2});
    CHECK(r[1] == std::vector<std::size_t>{0, 1, 2, 3});
    CHECK(ftune::metrics::rank_corpus(s, 2, 5, 9)[0].size() == 5);
    CHECK_THROWS_WITH(ftune::metrics::rank_corpus(s, 3, 5, 4), Catch::Contains("10 scores"));
    CHECK_THROWS_WITH(ftune::metrics::retrieval_metrics(r, {{1}}), Catch::Contains("2 rankings"));
    const auto m = ftune::metrics::retrieval_metrics(r, {{4}, {}});  // query 1 left out
    CHECK(m.queries == 1);
    CHECK(m.mrr.at(10) == 0.5);
    CHECK(ftune::metrics::retrieval_report(m).find("Accuracy@1: 0.00%\nAccuracy@3: 100.00%") == 0);
}

namespace {
// A JSON list of rows as one row-major vector of T.
template <class T>
std::vector<T> flat(const nlohmann::json& rows) {
    std::vector<T> v;
    for (const auto& r : rows)
        for (const auto& x : r) v.push_back(T(x.get<double>()));
    return v;
}
// The largest |a - b|.
template <class T>
double most_apart(const std::vector<T>& a, const nlohmann::json& rows) {
    const auto b = flat<double>(rows);
    REQUIRE(a.size() == b.size());
    double d = 0;
    for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
    return d;
}
const nlohmann::json& embedding_losses() {
    static const nlohmann::json j = nlohmann::json::parse(
        std::ifstream(std::filesystem::path(FTUNE_REFERENCE_DIR) / "embedding_losses.json"));
    return j;
}
}  // namespace

TEMPLATE_TEST_CASE("MultipleNegativesRankingLoss: sentence-transformers' loss and gradients",
                   "[parity][loss]", double, float) {
    using T = TestType;
    const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-6;
    const auto& cases = embedding_losses()["mnrl"];
    REQUIRE(cases.size() == 3);
    for (const auto& c : cases) {
        const auto a = flat<T>(c["anchors"]), k = flat<T>(c["candidates"]);
        const std::size_t B = c["anchors"].size(), D = c["anchors"][0].size(),
                          M = c["candidates"].size();
        INFO(B << " anchors, " << M << " candidates, scale " << c["scale"]);
        ftune::loss::multiple_negatives_ranking<T> loss(c["scale"].get<double>());
        const double l = double(loss.forward({a.data(), B, D}, {k.data(), M, D}));
        CHECK(std::abs(l - c["loss"].get<double>()) <= tol * std::max(1.0, l));
        std::vector<T> da(a.size(), T(0)), dk(k.size(), T(0));
        loss.backward({da.data(), B, D}, {dk.data(), M, D});
        CHECK(most_apart(da, c["d_anchors"]) <= tol);
        CHECK(most_apart(dk, c["d_candidates"]) <= tol);
    }
    ftune::loss::multiple_negatives_ranking<T> loss;
    std::vector<T> x(12, T(1));
    CHECK_THROWS_WITH(loss.forward({x.data(), 2, 3}, {x.data(), 3, 3}),
                      Catch::Contains("2 anchors of 3 values and 3 candidates"));
}

TEMPLATE_TEST_CASE("CosineSimilarityLoss: sentence-transformers' loss and gradients",
                   "[parity][loss]", double, float) {
    using T = TestType;
    const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-6;
    const auto& cases = embedding_losses()["cosine"];
    REQUIRE(cases.size() == 2);
    for (const auto& c : cases) {
        const auto u = flat<T>(c["u"]), v = flat<T>(c["v"]);
        const std::size_t B = c["u"].size(), D = c["u"][0].size();
        std::vector<float> y;
        for (const auto& s : c["labels"]) y.push_back(s.get<float>());
        ftune::loss::cosine_similarity_mse<T> loss;
        // (the scores travel as float: compare with the reference at float's precision)
        const double l = double(loss.forward({u.data(), B, D}, {v.data(), B, D}, y));
        CHECK(std::abs(l - c["loss"].get<double>()) <= 1e-6);
        std::vector<T> du(u.size(), T(0)), dv(v.size(), T(0));
        loss.backward({du.data(), B, D}, {dv.data(), B, D});
        CHECK(most_apart(du, c["d_u"]) <= 1e-6);
        CHECK(most_apart(dv, c["d_v"]) <= 1e-6);
    }
}
