// Generation with the random tiny LlamaForCausalLM models of tests/reference/llama_heads.py
// (tied and untied LM head, grouped-query attention): the key/value cache gives the full
// forward's logits step by step and under left padding; greedy generation is Transformers'
// generate token for token (tests/reference/llama_generate.py: alone, a left-padded batch, a
// repetition penalty); sampling draws from softmax(logits / temperature) restricted by top-k and
// top-p, reproducibly per seed; streaming and stop strings; a model's twin on another device
// (device::reference here, a GPU in test_cuda) generates the CPU's tokens.
#include <ftune/generation.hpp>
#include <ftune/io/hf.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "catch.hpp"
#include "device_training.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
using ftune::token_id;
using Model = ftune::llama::causal_lm<>;
const fs::path fixtures = fs::path(FTUNE_REFERENCE_DIR) / "hf_llama";
const std::vector<token_id> prompt_a{1, 17, 8, 25, 3, 39, 12, 40}, prompt_b{1, 9, 30};

// the full (uncached) forward's logits (T, V) of one sequence
std::vector<float> full_logits(Model& m, const std::vector<token_id>& ids) {
    ftune::context ctx;
    const auto y = m.forward(ctx, {ids.data(), 1, ids.size()});
    return {y.data(), y.data() + y.size()};
}

nlohmann::json expected() {
    return nlohmann::json::parse(std::ifstream(fixtures / "generate.json"));
}
}  // namespace

TEST_CASE(
    "KV cache: a prefill and then one token per step give the full forward's logits; a "
    "left-padded row gives its own logits",
    "[generation]") {
    for (const std::string name : {"tied", "untied"}) {
        INFO(name);
        auto m = ftune::io::load_hf<Model>(fixtures / name);
        const std::size_t V = m.config.model.vocab_size;
        const std::vector<token_id> seq{1, 17, 8, 25, 3, 39, 12, 40, 7, 22, 5, 31};
        const auto full = full_logits(m.model, seq);  // (12, V)
        m.model.prepare_inference();
        const auto& a = m.model.backbone.layer[0].self_attn.sizes();
        ftune::layers::kv_cache<float> cache;
        cache.reset(m.model.backbone.layer.size(), 1, 16, a.heads, a.kv_heads * a.head_dim);
        ftune::context ctx;
        double err = 0;
        auto compare =
            [&](ftune::view<const float, ftune::shape<ftune::dynamic, ftune::dynamic>> got,
                std::size_t position) {
                for (std::size_t v = 0; v < V; ++v)
                    err = std::max(err, double(std::abs(got.data()[v] - full[position * V + v])));
            };
        compare(m.model.forward_cached(ctx, {seq.data(), 1, 5}, cache), 4);  // prefill of 5
        for (std::size_t t = 5; t < seq.size(); ++t)
            compare(m.model.forward_cached(ctx, {seq.data() + t, 1, 1}, cache), t);
        CHECK(cache.length() == seq.size());
        CHECK(err < 2e-5);
        // the cache refuses a step past its capacity
        cache.reset(m.model.backbone.layer.size(), 1, 4, a.heads, a.kv_heads * a.head_dim);
        CHECK_THROWS_AS(m.model.forward_cached(ctx, {seq.data(), 1, 5}, cache), ftune::error);

        // two prompts of different lengths, the shorter left-padded: each row's logits are
        // those it has alone, at the prefill and at the next steps
        const std::size_t L = prompt_a.size(), pad = L - prompt_b.size();
        std::vector<token_id> ids(prompt_a), mask(2 * L, 1);
        ids.insert(ids.end(), pad, 0);
        ids.insert(ids.end(), prompt_b.begin(), prompt_b.end());
        std::fill(mask.begin() + std::ptrdiff_t(L), mask.begin() + std::ptrdiff_t(L + pad), 0);
        cache.reset(m.model.backbone.layer.size(), 2, L + 3, a.heads, a.kv_heads * a.head_dim);
        auto seq_a = prompt_a, seq_b = prompt_b;
        auto cached = m.model.forward_cached(ctx, {ids.data(), 2, L}, cache, {mask.data(), 2, L});
        err = 0;
        for (int step = 0; step < 3; ++step) {
            // the logits live in the head until its next forward: kept before the full ones
            const std::vector<float> y(cached.data(), cached.data() + 2 * V);
            const auto fa = full_logits(m.model, seq_a), fb = full_logits(m.model, seq_b);
            for (std::size_t v = 0; v < V; ++v) {
                err = std::max(err, double(std::abs(y[v] - fa[fa.size() - V + v])));
                err = std::max(err, double(std::abs(y[V + v] - fb[fb.size() - V + v])));
            }
            const std::vector<token_id> next{token_id(7 + step), token_id(20 + step)};
            seq_a.push_back(next[0]);
            seq_b.push_back(next[1]);
            m.model.prepare_inference();  // the full forwards above ran unprepared
            cached = m.model.forward_cached(ctx, {next.data(), 2, 1}, cache);
        }
        CHECK(err < 2e-5);
    }
}

TEST_CASE(
    "greedy generation equals Transformers' generate: alone, in a left-padded batch, with a "
    "repetition penalty",
    "[generation][parity]") {
    const auto want = expected();
    for (const std::string name : {"tied", "untied"}) {
        INFO(name);
        auto m = ftune::io::load_hf<Model>(fixtures / name);
        ftune::generation::generator gen(m.model, m.config.model.max_position_embeddings);
        ftune::generation::options o;
        o.temperature = 0;
        o.max_new_tokens = want["max_new_tokens"].get<std::size_t>();
        o.stop_tokens = {2};
        const auto& w = want[name];
        const std::vector<std::vector<token_id>> prompts{prompt_a, prompt_b};
        // the prefill in one pass (0), and in passes of 3 and of 1 columns (the batch of two
        // with 6 and 2 positions a pass: the padding of prompt_b spans passes, a pass mixes
        // padding and tokens)
        for (const std::size_t per_pass : {0, 512, 6, 2}) {
            INFO("prefill_tokens " << per_pass);
            o.prefill_tokens = per_pass;
            for (std::size_t i = 0; i < 2; ++i) {
                const auto r = gen.generate(prompts[i], o);
                CHECK(r.tokens == w["alone"][i].get<std::vector<token_id>>());
                CHECK((r.reason == ftune::generation::finish::stop_token) ==
                      (r.tokens.size() < o.max_new_tokens));
            }
            const auto batch = gen.generate(prompts, o);
            REQUIRE(batch.size() == 2);
            for (std::size_t i = 0; i < 2; ++i)
                CHECK(batch[i].tokens == w["batch"][i].get<std::vector<token_id>>());
        }
        o.prefill_tokens = 3;
        o.repetition_penalty = 1.5;
        CHECK(gen.generate(prompt_a, o).tokens == w["penalty"].get<std::vector<token_id>>());
    }
}

TEST_CASE(
    "sampling draws from softmax(logits / temperature), only among the top-k and top-p tokens, "
    "the same for the same seed",
    "[generation]") {
    auto m = ftune::io::load_hf<Model>(fixtures / "untied");
    const std::size_t V = m.config.model.vocab_size;
    const auto full = full_logits(m.model, prompt_a);
    const double temperature = 1.5;
    std::vector<double> p(V);  // the first new token's distribution
    double top = -1e30, sum = 0;
    for (std::size_t v = 0; v < V; ++v) top = std::max(top, double(full[full.size() - V + v]));
    for (std::size_t v = 0; v < V; ++v)
        sum += p[v] = std::exp((double(full[full.size() - V + v]) - top) / temperature);
    for (auto& x : p) x /= sum;
    std::vector<std::size_t> rank(V);
    for (std::size_t v = 0; v < V; ++v) rank[v] = v;
    std::sort(rank.begin(), rank.end(), [&](auto a, auto b) { return p[a] > p[b]; });

    ftune::generation::generator gen(m.model);
    ftune::generation::options o;
    o.temperature = temperature;
    o.top_k = 0;
    o.top_p = 1;
    o.max_new_tokens = 1;
    const int n = 3000;
    std::vector<int> count(V);
    for (int s = 0; s < n; ++s) {
        o.seed = std::uint64_t(s);
        ++count[std::size_t(gen.generate(prompt_a, o).tokens.at(0))];
    }
    double worst = 0;  // the largest deviation in standard errors
    for (std::size_t v = 0; v < V; ++v) {
        const double se = std::sqrt(p[v] * (1 - p[v]) / n) + 1e-4;
        worst = std::max(worst, std::abs(count[v] / double(n) - p[v]) / se);
    }
    CHECK(worst < 4.5);
    // top-k 3: only the 3 most likely tokens, each about in proportion
    o.top_k = 3;
    std::map<token_id, int> seen;
    for (int s = 0; s < 600; ++s) {
        o.seed = std::uint64_t(s);
        ++seen[gen.generate(prompt_a, o).tokens.at(0)];
    }
    CHECK(seen.size() == 3);
    for (const auto& [id, c] : seen)
        CHECK(std::find(rank.begin(), rank.begin() + 3, std::size_t(id)) != rank.begin() + 3);
    // top-p: the fewest most likely tokens whose probability reaches it
    o.top_k = 0;
    o.top_p = p[rank[0]] + p[rank[1]] * 0.5;  // needs the top two
    seen.clear();
    for (int s = 0; s < 400; ++s) {
        o.seed = std::uint64_t(s);
        ++seen[gen.generate(prompt_a, o).tokens.at(0)];
    }
    CHECK(seen.size() == 2);
    CHECK(seen.count(token_id(rank[0])) == 1);
    CHECK(seen.count(token_id(rank[1])) == 1);
    // a seed gives the same sequence again; another seed another one
    o = {};
    o.max_new_tokens = 12;
    o.temperature = 1.2;
    o.seed = 7;
    const auto a = gen.generate(prompt_a, o).tokens;
    CHECK(gen.generate(prompt_a, o).tokens == a);
    std::size_t differ = 0;
    for (std::uint64_t s = 100; s < 110; ++s) {
        o.seed = s;
        differ += gen.generate(prompt_a, o).tokens != a;
    }
    CHECK(differ >= 8);
    // bad options are refused
    o.temperature = -1;
    CHECK_THROWS_AS(gen.generate(prompt_a, o), ftune::error);
    o.temperature = 1;
    CHECK_THROWS_AS(gen.generate(std::vector<token_id>{}, o), ftune::error);
    CHECK_THROWS_AS(gen.generate(std::vector<token_id>{1, 99}, o), ftune::error);
}

TEST_CASE("streaming gives the text piece by piece, whole characters only; a stop string ends it",
          "[generation]") {
    auto m = ftune::io::load_hf<Model>(fixtures / "untied");
    const auto greedy = expected()["untied"]["alone"][0].get<std::vector<token_id>>();
    // a byte-level tokenizer for the model's 48 ids: one character each, except 26 and 10,
    // the two bytes of "é" (C3 A9: "Ã" and "©" in the byte alphabet), and 2 = eos
    std::unordered_map<std::string, token_id> vocab;
    const std::string chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv";
    for (token_id i = 0; i < 48; ++i) vocab[std::string(1, chars[std::size_t(i)])] = i;
    vocab.erase("C");
    vocab.erase("a");
    vocab.erase("K");
    vocab["Ã"] = 26;
    vocab["©"] = 10;
    ftune::text::bpe_tokenizer tok(vocab, {}, {{"</s>", 2}});
    ftune::text::lm_tokenizer_settings s;
    s.eos_token = "</s>";
    tok.set_settings(s);
    ftune::generation::generator gen(m.model, tok);
    ftune::generation::options o;
    o.temperature = 0;
    o.max_new_tokens = 20;
    std::vector<std::string> pieces;
    const auto r = gen.generate(prompt_a, o, [&](std::size_t row, std::string_view piece) {
        CHECK(row == 0);
        pieces.emplace_back(piece);
    });
    CHECK(r.tokens == greedy);  // eos (2) stopped it, as Transformers
    CHECK(r.reason == ftune::generation::finish::stop_token);
    CHECK(r.text == tok.decode(greedy));
    std::string joined;
    for (const auto& piece : pieces) {
        joined += piece;
        CHECK(static_cast<unsigned char>(piece.back()) != 0xC3);  // never half of "é"
    }
    CHECK(joined == r.text);
    CHECK(r.text.find("\xC3\xA9") != std::string::npos);
    // a stop string: the text ends before it, and none of it was streamed
    const std::string stop = r.text.substr(4, 3);
    o.stop_strings = {stop};
    pieces.clear();
    const auto cut = gen.generate(
        prompt_a, o, [&](std::size_t, std::string_view piece) { pieces.emplace_back(piece); });
    CHECK(cut.reason == ftune::generation::finish::stop_string);
    CHECK(cut.text == r.text.substr(0, 4));
    joined.clear();
    for (const auto& piece : pieces) joined += piece;
    CHECK(joined == cut.text);
}

TEST_CASE(
    "generation on another device (device::reference here): a decoder's twin generates the "
    "CPU's tokens, greedy and sampled, left-padded, prefilled in passes",
    "[generation]") {
    test::check_generation_on_device<ftune::device::reference>();
}
