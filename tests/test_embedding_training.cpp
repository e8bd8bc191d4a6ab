// Sentence embeddings against sentence-transformers: fine-tuning (train/embeddings.hpp) on its
// small random model (tests/reference/embedding_training.py): the loss and the gradient of every
// encoder weight for a batch of pairs and of triplets under MultipleNegativesRankingLoss and of
// scored pairs under CosineSimilarityLoss; the backward of every pooling mode against finite
// differences; a few steps of training raise the retrieval metrics of the training pairs. The
// losses alone on given embeddings (tests/reference/embedding_losses.py), and the retrieval
// metrics (metrics/retrieval.hpp) against InformationRetrievalEvaluator: accuracy@k,
// precision@k, recall@k, MRR@10, nDCG@10 and MAP@100 on random score matrices full of ties, with
// queries that have no relevant document (tests/reference/retrieval_metrics.py); the ranking's
// tie order and cut; bad shapes.
#include <ftune/io/hf.hpp>
#include <ftune/io/safetensors.hpp>
#include <ftune/train/embeddings.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
using Model = ftune::bert::model<>;
const fs::path dir = fs::path(FTUNE_REFERENCE_DIR) / "sentence" / "model";

// tests/reference/embedding_training.py's texts
const std::vector<std::string> anchors{
    "the cat sat on the mat", "a dog runs", "john lives in berlin",
    "where is the river ?",   "great film", "the plot is thin and the jokes fall flat"};
const std::vector<std::string> positives{"a cat on a mat",        "the dog is running",
                                         "john's home is berlin", "find the river",
                                         "a great movie",         "thin plot , flat jokes"};
const std::vector<std::string> negatives{"the mat",           "a cat runs", "berlin is big",
                                         "the river is cold", "a bad film", "the jokes were great"};
const std::vector<float> scores{0.9f, 0.2f, 0.7f, 0.0f, 1.0f, 0.4f};

// The loss and gradients of `pairs` against the fixture's case `name`: every weight's gradient
// within 1e-5 of the largest of its tensor (and 1e-6 absolute).
void compare(const std::string& name, const std::vector<ftune::train::text_pair>& pairs,
             ftune::train::embedding_loss loss) {
    INFO(name);
    auto m = ftune::io::load_hf<Model>(dir);
    ftune::train::embedding_trainer<Model> t(
        m.model, *m.tokenizer, ftune::io::read_sentence_config(dir), {.progress = nullptr});
    t.loss = loss;
    m.model.zero_grad();
    const double l = t.gradients(pairs, false);
    const ftune::io::safetensors_file want(fs::path(FTUNE_REFERENCE_DIR) /
                                           "embedding_training.safetensors");
    CHECK(std::abs(l - double(want.read<float>(want.at(name + ".loss"))[0])) <= 1e-5);
    std::size_t compared = 0;
    m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        if (p.name.find("pooler.") != std::string::npos) {
            CHECK_FALSE(p.trainable);  // left out, as sentence-transformers leaves it unused
            return;
        }
        const auto g = want.read<float>(want.at(name + "." + p.name));
        REQUIRE(g.size() == p.grad.size());
        double d = 0, top = 0;
        for (std::size_t i = 0; i < g.size(); ++i)
            d = std::max(d, double(std::abs(g[i] - p.grad[i]))),
            top = std::max(top, double(std::abs(g[i])));
        INFO(p.name << ": max |difference| " << d << " of " << top);
        CHECK(d <= std::max(1e-5 * top, 1e-6));
        ++compared;
    });
    CHECK(compared == 37);  // every encoder weight
}
}  // namespace

TEST_CASE("embedding fine-tuning: sentence-transformers' loss and gradients", "[parity][train]") {
    using ftune::train::embedding_loss;
    std::vector<ftune::train::text_pair> pairs, triplets, scored;
    for (std::size_t i = 0; i < anchors.size(); ++i) {
        pairs.push_back({anchors[i], positives[i]});
        scored.push_back({anchors[i], positives[i], "", scores[i]});
        if (i < 4) triplets.push_back({anchors[i], positives[i], negatives[i]});
    }
    compare("pairs", pairs, embedding_loss::multiple_negatives_ranking);
    compare("triplets", triplets, embedding_loss::multiple_negatives_ranking);
    compare("scored", scored, embedding_loss::cosine_similarity);
}

TEST_CASE("sentence_pool_backward: every pooling mode against finite differences",
          "[gradcheck][train]") {
    using ftune::heads::pooling;
    const std::size_t B = 2, T = 4, C = 3;
    std::vector<double> h(B * T * C);
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = std::sin(1.7 * double(i) + 0.3);
    const std::vector<std::size_t> lengths{3, 4};
    const std::vector<pooling> modes{pooling::cls,           pooling::max,
                                     pooling::mean,          pooling::mean_sqrt_len,
                                     pooling::weighted_mean, pooling::last_token};
    const std::size_t D = modes.size() * C;
    std::vector<float> w(B * D);  // the loss is Σ w · pooled
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(std::cos(0.9 * double(i)));
    auto loss = [&](const std::vector<double>& x) {
        std::vector<float> out(B * D);
        ftune::heads::sentence_pool(
            ftune::view<const double, ftune::shape<ftune::dynamic, ftune::dynamic, ftune::dynamic>>(
                x.data(), B, T, C),
            lengths, modes, out);
        double s = 0;
        for (std::size_t i = 0; i < out.size(); ++i) s += double(w[i]) * double(out[i]);
        return s;
    };
    std::vector<double> dh(h.size(), 0.0);
    ftune::heads::sentence_pool_backward(
        ftune::view<const double, ftune::shape<ftune::dynamic, ftune::dynamic, ftune::dynamic>>(
            h.data(), B, T, C),
        lengths, modes, w,
        ftune::view<double, ftune::shape<ftune::dynamic, ftune::dynamic, ftune::dynamic>>(dh.data(),
                                                                                          B, T, C));
    for (std::size_t i = 0; i < h.size(); ++i) {
        auto up = h, down = h;
        up[i] += 1e-3, down[i] -= 1e-3;
        const double numeric = (loss(up) - loss(down)) / 2e-3;
        INFO("element " << i);
        CHECK(std::abs(numeric - dh[i]) <= 1e-4);  // (the pooled values pass through float)
    }
    CHECK(dh[3 * C] == 0.0);  // padding of the first input gets nothing
}

TEST_CASE("embedding fine-tuning: training on pairs raises their retrieval scores",
          "[unit][train]") {
    auto m = ftune::io::load_hf<Model>(dir);
    ftune::train::embedding_trainer<Model> t(
        m.model, *m.tokenizer, ftune::io::read_sentence_config(dir),
        {.epochs = 30, .batch_size = 6, .lr = 3e-3, .progress = nullptr});
    std::vector<ftune::train::text_pair> pairs;
    std::vector<std::vector<std::size_t>> relevant;
    for (std::size_t i = 0; i < anchors.size(); ++i)
        pairs.push_back({anchors[i], positives[i]}), relevant.push_back({i});
    const auto before = t.evaluate(anchors, positives, relevant);
    const auto r = t.fit(pairs);
    const auto after = t.evaluate(anchors, positives, relevant);
    INFO("MRR@10 " << before.mrr.at(10) << " -> " << after.mrr.at(10) << ", loss " << r.loss);
    CHECK(r.steps == 30);
    CHECK(after.mrr.at(10) > before.mrr.at(10));
    CHECK(after.accuracy.at(1) > before.accuracy.at(1));
    CHECK(t.embed({"a b"}, true).size() == t.dimension());
}

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
