// GPT-2 checkpoints in Hugging Face layout: random tiny GPT2LMHeadModel models saved by
// Transformers (tests/reference/gpt2_heads.py; LM head tied and untied; Conv1D weights (in, out),
// q, k and v fused in c_attn) load into gpt2::lm_head_model, whose logits and every gradient then
// match Transformers' float32 ones (c_attn's gradient cut into q, k and v as the checkpoint slots
// place them); save_hf writes a directory that loads back to the same logits (and that
// Transformers loads: gpt2_heads.py --roundtrip build/tests/hf_gpt2_roundtrip); the KV cache and
// greedy generation equal Transformers' generate (learned positions counted per row under left
// padding).
#include <ftune/generation.hpp>
#include <ftune/io/hf.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "util.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
using Model = ftune::gpt2::lm_head_model<>;
const fs::path fixtures = fs::path(FTUNE_REFERENCE_DIR) / "hf_gpt2";

}  // namespace

TEST_CASE(
    "GPT-2 checkpoints: logits and every gradient as Transformers', tied and untied head; "
    "save_hf round trip",
    "[parity][io]") {
    const ftune::io::safetensors_file want(fixtures / "expected.safetensors");
    const auto ids = test::read_ids(want, "input_ids"),
               mask = test::read_ids(want, "attention_mask");
    const std::size_t B = 2, T = 8;
    for (const std::string name : {"tied", "untied"}) {
        INFO(name);
        auto m = ftune::io::load_hf<Model>(fixtures / name);
        CHECK(m.report.missing.empty());
        CHECK(m.report.unexpected.empty());
        CHECK(m.model.head.tied == (name == "tied"));
        CHECK(Model::architecture == "GPT2LMHeadModel");
        CHECK(m.config.model.intermediate_size == 128);  // n_inner null: 4 n_embd
        ftune::context ctx;
        const auto y = m.model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
        const auto logits = want.read<float>(want.at(name + ".logits"));
        REQUIRE(y.size() == logits.size());
        const std::vector<float> got(y.data(), y.data() + y.size());
        CHECK(test::relative_error(got, logits) < 1e-5);
        const auto r = want.read<float>(want.at(name + ".r"));
        m.model.zero_grad();
        m.model.backward(ctx, Model::output_view(r.data(), y.shape()));
        std::size_t compared = 0;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            INFO(p.name);
            // Transformers' gradient of the tensor holding p, cut and transposed as p sits in it
            const auto slot = ftune::io::checkpoint_slots<ftune::gpt2::config>(p.name).at(0);
            const auto g = want.read<float>(want.at(name + ".grad." + slot.name));
            std::vector<float> mine(p.value.size());
            ftune::io::detail::for_each_slot_element(
                p.extents.data(), p.rank, slot,
                [&](std::size_t i, std::size_t j) { mine[i] = g.at(j); });
            if (p.name.ends_with("k_proj.bias")) {
                // the key bias adds q·b to all of a query's scores alike: softmax ignores it, its
                // gradient is zero up to rounding in both
                for (std::size_t i = 0; i < mine.size(); ++i)
                    CHECK((std::abs(p.grad[i]) < 1e-6 && std::abs(mine[i]) < 1e-6));
            } else {
                CHECK(test::relative_error(p.grad, mine) < 1e-4);
            }
            ++compared;
        });
        CHECK(compared == (name == "tied" ? 36u : 37u));  // c_attn as q, k, v (+ lm_head)

        const fs::path dir = fs::path("hf_gpt2_roundtrip") / name;
        ftune::io::save_hf(m, dir);
        const ftune::io::safetensors_file saved(dir / "model.safetensors");
        CHECK(saved.find("transformer.h.0.attn.c_attn.weight") != nullptr);
        CHECK(saved.find("transformer.h.0.attn.c_attn.weight")->shape ==
              std::vector<std::size_t>{32, 96});  // Conv1D: (in, out), q k v side by side
        auto back = ftune::io::load_hf<Model>(dir);
        CHECK(back.config.model.tie_word_embeddings == (name == "tied"));
        const auto y2 = back.model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
        CHECK(std::equal(y2.data(), y2.data() + y2.size(), got.begin()));
    }
}

TEST_CASE("GPT-2: the KV cache gives the full forward's logits step by step", "[generation]") {
    for (const std::string name : {"tied", "untied"}) {
        INFO(name);
        auto m = ftune::io::load_hf<Model>(fixtures / name);
        const std::size_t V = m.config.model.vocab_size;
        const std::vector<ftune::token_id> seq{1, 17, 8, 25, 3, 39, 12, 40, 7, 22, 5, 31};
        ftune::context ctx;
        const auto y = m.model.forward(ctx, {seq.data(), 1, seq.size()});
        const std::vector<float> full(y.data(), y.data() + y.size());
        m.model.prepare_inference();
        const auto& a = m.model.backbone.layer[0].self_attn.sizes();
        ftune::layers::kv_cache<float> cache;
        cache.reset(m.model.backbone.layer.size(), 1, 16, a.heads, a.kv_heads * a.head_dim);
        double err = 0;
        auto compare = [&](auto got, std::size_t position) {
            double e = 0;
            for (std::size_t v = 0; v < V; ++v)
                e = std::max(e, double(std::abs(got.data()[v] - full[position * V + v])));
            UNSCOPED_INFO("position " << position << ": " << e);
            err = std::max(err, e);
        };
        compare(m.model.forward_cached(ctx, {seq.data(), 1, 5}, cache), 4);
        for (std::size_t t = 5; t < seq.size(); ++t)
            compare(m.model.forward_cached(ctx, {seq.data() + t, 1, 1}, cache), t);
        CHECK(err < 2e-5);
    }
}

TEST_CASE(
    "GPT-2: greedy generation equals Transformers' generate (alone, left-padded batch, "
    "repetition penalty)",
    "[generation][parity]") {
    const auto want = nlohmann::json::parse(std::ifstream(fixtures / "generate.json"));
    const std::vector<std::vector<ftune::token_id>> prompts{{1, 17, 8, 25, 3, 39, 12, 40},
                                                            {1, 9, 30}};
    for (const std::string name : {"tied", "untied"}) {
        INFO(name);
        auto m = ftune::io::load_hf<Model>(fixtures / name);
        ftune::generation::generator gen(m.model, m.config.model.max_position_embeddings);
        ftune::generation::options o;
        o.temperature = 0;
        o.max_new_tokens = want["max_new_tokens"].get<std::size_t>();
        o.stop_tokens = {2};
        const auto& w = want[name];
        // the prefill in one pass and in passes of 3 and 1 columns (learned positions per pass)
        for (const std::size_t per_pass : {0, 6, 2}) {
            INFO("prefill_tokens " << per_pass);
            o.prefill_tokens = per_pass;
            for (std::size_t i = 0; i < 2; ++i)
                CHECK(gen.generate(prompts[i], o).tokens ==
                      w["alone"][i].get<std::vector<ftune::token_id>>());
            const auto batch = gen.generate(prompts, o);
            for (std::size_t i = 0; i < 2; ++i)
                CHECK(batch[i].tokens == w["batch"][i].get<std::vector<ftune::token_id>>());
        }
        o.repetition_penalty = 1.5;
        CHECK(gen.generate(prompts[0], o).tokens ==
              w["penalty"].get<std::vector<ftune::token_id>>());
    }
}

TEST_CASE("GPT-2: options ftune does not run are refused by name", "[io]") {
    const std::string base = R"({"model_type": "gpt2", "vocab_size": 48, "n_embd": 32,
        "n_layer": 2, "n_head": 4)";
    auto parse = [&](const std::string& extra) {
        return ftune::io::parse_hf_config<ftune::gpt2::config>(base + extra + "}", "c.json");
    };
    CHECK(parse("").model.intermediate_size == 128);
    CHECK(parse(R"(, "n_inner": 100)").model.intermediate_size == 100);
    CHECK_THROWS_WITH(parse(R"(, "add_cross_attention": true)"),
                      Catch::Contains("add_cross_attention"));
    CHECK_THROWS_WITH(parse(R"(, "scale_attn_by_inverse_layer_idx": true)"),
                      Catch::Contains("scale_attn_by_inverse_layer_idx"));
    CHECK_THROWS_WITH(parse(R"(, "activation_function": "quick_gelu")"),
                      Catch::Contains("activation_function"));
    CHECK_THROWS_WITH(parse(R"(, "n_head": 5)"), Catch::Contains("n_head"));
}
