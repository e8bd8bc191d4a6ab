// Sentence embeddings (tests/reference/sentence_embeddings.py): a sentence-transformers model
// directory (modules.json, 1_Pooling, 2_Normalize) read by io::read_sentence_config and embedded
// by serve::text_embedder equals sentence-transformers' encode(); every pooling mode alone and
// concatenated equals its Pooling module; the older config formats and bad directories.
#include <ftune/io/sentence_transformers.hpp>
#include <ftune/serve.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
using ftune::heads::pooling;
const fs::path fixture = fs::path(FTUNE_REFERENCE_DIR) / "sentence";

std::vector<std::string> texts() {
    std::ifstream in(fixture / "texts.json");
    const auto j = nlohmann::json::parse(in);
    std::vector<std::string> out;
    for (const auto& t : j["texts"]) out.push_back(t);
    return out;
}
// The rows of expected tensor `name` (N, D).
std::vector<std::vector<float>> expected(const std::string& name) {
    const ftune::io::safetensors_file f(fixture / "expected.safetensors");
    const auto& t = f.at(name);
    const std::size_t n = t.shape.at(0), d = t.shape.at(1);
    std::vector<float> flat(n * d);
    std::memcpy(flat.data(), f.bytes(t).data(), flat.size() * sizeof(float));
    std::vector<std::vector<float>> rows(n);
    for (std::size_t i = 0; i < n; ++i)
        rows[i].assign(flat.begin() + i * d, flat.begin() + (i + 1) * d);
    return rows;
}
double max_diff(const std::vector<std::vector<float>>& a,
                const std::vector<std::vector<float>>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(a[i].size() == b[i].size());
        for (std::size_t j = 0; j < a[i].size(); ++j)
            worst = std::max(worst, double(std::abs(a[i][j] - b[i][j])));
    }
    return worst;
}
ftune::serve::text_embedder<> embedder(ftune::io::sentence_config c) {
    return ftune::serve::text_embedder<>(
        ftune::io::load_hf<ftune::bert::model<>>(fixture / "model"), std::move(c));
}
}  // namespace

TEST_CASE("text_embedder: a sentence-transformers directory embeds as its encode()",
          "[parity][embeddings]") {
    const auto c = ftune::io::read_sentence_config(fixture / "model");
    CHECK(c.from_modules);
    CHECK(c.pooling == std::vector<pooling>{pooling::mean});
    CHECK(c.normalize);
    CHECK(c.dimension == 32);
    const auto e = embedder(c);
    CHECK(e.dimension() == 32);
    CHECK(e.max_length() == 12);  // sentence-transformers 6 keeps max_seq_length there
    const auto t = texts();
    const std::vector<std::string_view> views(t.begin(), t.end());
    const auto got = e.embed_batch(views);
    const double d = max_diff(got, expected("encode"));
    INFO("max |ftune - sentence-transformers| " << d);
    CHECK(d < 1e-5);
    for (const auto& v : got) {  // unit vectors
        double sq = 0;
        for (const float x : v) sq += double(x) * x;
        CHECK(std::abs(std::sqrt(sq) - 1) < 1e-6);
    }
    // one at a time gives the batch's rows (its own padding, the same positions)
    for (std::size_t i = 0; i < views.size(); ++i)
        CHECK(max_diff({e.embed(views[i])}, {got[i]}) < 1e-6);
}

TEST_CASE("text_embedder: every pooling mode of sentence-transformers, alone and concatenated",
          "[parity][embeddings]") {
    const auto t = texts();
    const std::vector<std::string_view> views(t.begin(), t.end());
    const std::vector<std::pair<std::string, std::vector<pooling>>> cases = {
        {"cls", {pooling::cls}},
        {"max", {pooling::max}},
        {"mean", {pooling::mean}},
        {"mean_sqrt_len_tokens", {pooling::mean_sqrt_len}},
        {"weightedmean", {pooling::weighted_mean}},
        {"lasttoken", {pooling::last_token}},
        {"cls+mean", {pooling::cls, pooling::mean}},
    };
    for (const auto& [name, modes] : cases) {
        ftune::io::sentence_config c;
        c.pooling = modes;
        const auto e = embedder(c);
        CHECK(e.dimension() == 32 * modes.size());
        const double d = max_diff(e.embed_batch(views, false), expected(name));
        INFO(name << ": max |ftune - sentence-transformers| " << d);
        CHECK(d < 1e-5);
    }
}

TEST_CASE("read_sentence_config: older formats, defaults and errors naming the file",
          "[unit][embeddings]") {
    using ftune::io::parse_pooling_config;
    ftune::io::sentence_config c;
    // sentence-transformers 2-5 (all-MiniLM-L6-v2's 1_Pooling/config.json)
    parse_pooling_config(R"({"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false})",
                         "p.json", c);
    CHECK(c.pooling == std::vector<pooling>{pooling::mean});
    CHECK(c.dimension == 384);
    // several flags: sentence-transformers' order, whatever the file's
    parse_pooling_config(R"({"pooling_mode_lasttoken": true, "pooling_mode_cls_token": true})",
                         "p.json", c);
    CHECK(c.pooling == std::vector<pooling>{pooling::cls, pooling::last_token});
    parse_pooling_config(R"({"pooling_mode_cls_token": false})", "p.json", c);  // none: mean
    CHECK(c.pooling == std::vector<pooling>{pooling::mean});
    parse_pooling_config(R"({"pooling_mode": ["max", "cls"]})", "p.json", c);
    CHECK(c.pooling == std::vector<pooling>{pooling::max, pooling::cls});
    CHECK_THROWS_WITH(parse_pooling_config(R"({"pooling_mode": "sum"})", "p.json", c),
                      Catch::Contains("p.json: pooling_mode") && Catch::Contains("\"sum\""));
    CHECK_THROWS_WITH(parse_pooling_config("[1]", "p.json", c), Catch::Contains("p.json"));
    // a directory without modules.json: the mean, not normalized
    const auto plain =
        ftune::io::read_sentence_config(fs::path(FTUNE_REFERENCE_DIR) / "hf_tiny_bert");
    CHECK(!plain.from_modules);
    CHECK(plain.pooling == std::vector<pooling>{pooling::mean});
    CHECK(!plain.normalize);
    // a module ftune does not run
    const fs::path dir = fs::temp_directory_path() / "ftune_test_embeddings_dense";
    fs::remove_all(dir);
    fs::create_directories(dir / "1_Pooling");
    std::ofstream(dir / "1_Pooling" / "config.json") << R"({"pooling_mode": "mean"})";
    std::ofstream(dir / "modules.json")
        << R"([{"path": "", "type": "sentence_transformers.models.Transformer"},
              {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])";
    CHECK_THROWS_WITH(ftune::io::read_sentence_config(dir),
                      Catch::Contains("modules.json: module 2") && Catch::Contains("Dense"));
    // a Pooling module whose width is not the encoder's
    c = {};
    c.dimension = 384;
    CHECK_THROWS_WITH(embedder(c), Catch::Contains("takes 384 features but the encoder gives 32"));
    fs::remove_all(dir);
}
