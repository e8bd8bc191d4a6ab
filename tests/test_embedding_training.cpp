// Fine-tuning sentence embeddings (train/embeddings.hpp) against sentence-transformers on its
// small random model (tests/reference/embedding_training.py): the loss and the gradient of every
// encoder weight for a batch of pairs and of triplets under MultipleNegativesRankingLoss and of
// scored pairs under CosineSimilarityLoss; the backward of every pooling mode against finite
// differences; a few steps of training raise the retrieval metrics of the training pairs.
#include <ftune/io/hf.hpp>
#include <ftune/io/safetensors.hpp>
#include <ftune/train/embeddings.hpp>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

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
