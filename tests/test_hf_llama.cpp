// Llama checkpoints in Hugging Face layout: random tiny LlamaForCausalLM models saved by
// Transformers (tests/reference/llama_heads.py; grouped-query attention, LM head tied and
// untied) load into llama::causal_lm, whose logits and every gradient then match Transformers'
// float32 ones; save_hf writes a directory that loads back to the same logits (and that
// Transformers loads: llama_heads.py --roundtrip build/tests/hf_llama_roundtrip).
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
const fs::path fixtures = fs::path(FTUNE_REFERENCE_DIR) / "hf_llama";

}  // namespace

TEST_CASE(
    "Llama checkpoints: logits and every gradient as Transformers', tied and untied head; "
    "save_hf round trip",
    "[parity][io]") {
    const ftune::io::safetensors_file want(fixtures / "expected.safetensors");
    const auto ids = test::read_ids(want, "input_ids"),
               mask = test::read_ids(want, "attention_mask");
    const std::size_t B = 2, T = 8;
    using Model = ftune::llama::causal_lm<>;
    for (const std::string name : {"tied", "untied"}) {
        INFO(name);
        auto m = ftune::io::load_hf<Model>(fixtures / name);
        CHECK(m.report.missing.empty());
        CHECK(m.report.unexpected.empty());
        CHECK(m.model.head.tied == (name == "tied"));
        CHECK(m.config.model.num_key_value_heads == 2);
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
            const auto g = want.read<float>(want.at(name + ".grad." + p.name));
            CHECK(test::relative_error(p.grad, g) < 1e-4);
            ++compared;
        });
        CHECK(compared == (name == "tied" ? 20u : 21u));

        // save_hf, load again: the same logits; Transformers loads the directory too (by hand:
        // llama_heads.py --roundtrip build/tests/hf_llama_roundtrip)
        const fs::path dir = fs::path("hf_llama_roundtrip") / name;
        ftune::io::save_hf(m, dir);
        auto back = ftune::io::load_hf<Model>(dir);
        CHECK(back.config.model.tie_word_embeddings == (name == "tied"));
        const auto y2 = back.model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
        CHECK(std::equal(y2.data(), y2.data() + y2.size(), got.begin()));
    }
}

TEST_CASE(
    "Llama checkpoints: the byte-level BPE tokenizer.json loads with tokenizer_config.json's "
    "special tokens and chat template (chat_template.jinja first)",
    "[io]") {
    const fs::path dir = "hf_llama_with_tokenizer";
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const char* f : {"config.json", "model.safetensors"})
        fs::copy_file(fixtures / "tied" / f, dir / f);
    std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE",
        "vocab": {"a": 3, "b": 4, "ab": 5}, "merges": ["a b"]},
        "added_tokens": [{"id": 0, "content": "<pad>"}, {"id": 1, "content": "<s>"},
                         {"id": 2, "content": "</s>"}]})";
    std::ofstream(dir / "tokenizer_config.json") << R"({"model_max_length": 8192,
        "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false},
        "pad_token": "<pad>", "add_bos_token": true, "chat_template": "{{ old }}"})";
    {
        const auto m = ftune::io::load_hf<ftune::llama::causal_lm<>>(dir);
        REQUIRE(m.tokenizer.has_value());
        CHECK(m.tokenizer->encode("<s>abba</s>") == std::vector<ftune::token_id>{1, 5, 4, 3, 2});
        const auto& s = m.tokenizer->settings();
        CHECK(s.bos_token == "<s>");
        CHECK(s.eos_token == "</s>");
        CHECK(s.pad_token == "<pad>");
        CHECK(s.add_bos_token);
        CHECK(s.chat_template == "{{ old }}");
        CHECK(m.model_max_length == 64);  // max_position_embeddings bounds it
        CHECK(m.report.loaded.size() == 20);
    }
    {  // save_hf writes tokenizer.json and tokenizer_config.json that load back the same
        auto m = ftune::io::load_hf<ftune::llama::causal_lm<>>(dir);
        const fs::path saved = "hf_llama_tokenizer_saved";  // llama_heads.py --tokenizer reads it
        fs::remove_all(saved);
        ftune::io::save_hf(m, saved);
        const auto back = ftune::io::load_hf<ftune::llama::causal_lm<>>(saved);
        REQUIRE(back.tokenizer.has_value());
        CHECK(back.tokenizer->encode("<s>abba</s>ab") ==
              std::vector<ftune::token_id>{1, 5, 4, 3, 2, 5});
        const auto& s = back.tokenizer->settings();
        CHECK((s.bos_token == "<s>" && s.eos_token == "</s>" && s.pad_token == "<pad>"));
        CHECK(s.add_bos_token);
        CHECK(s.chat_template == "{{ old }}");
    }
    std::ofstream(dir / "chat_template.jinja") << "{{ new }}";
    CHECK(ftune::io::load_hf<ftune::llama::causal_lm<>>(dir).tokenizer->settings().chat_template ==
          "{{ new }}");
    // a vocabulary larger than the model's is another model's tokenizer
    std::ofstream(dir / "tokenizer.json")
        << R"({"model": {"type": "BPE", "vocab": {"a": 3, "b": 99}, "merges": []}})";
    CHECK_THROWS_WITH(ftune::io::load_hf<ftune::llama::causal_lm<>>(dir),
                      Catch::Contains("tokenizer.json") && Catch::Contains("does not belong"));
}

TEST_CASE("Llama checkpoints: options ftune does not run are refused by name", "[io]") {
    const std::string base = R"({"model_type": "llama", "vocab_size": 48, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4)";
    auto parse = [&](const std::string& extra) {
        return ftune::io::parse_hf_config<ftune::llama::config>(base + extra + "}", "c.json");
    };
    CHECK(parse("").model.num_key_value_heads == 4);
    CHECK(parse(R"(, "rope_theta": 500000.0)").model.rope_theta == 500000.0);
    CHECK(parse(R"(, "rope_parameters": {"rope_theta": 7.0, "rope_type": "default"})")
              .model.rope_theta == 7.0);
    CHECK_THROWS_WITH(parse(R"(, "rope_scaling": {"type": "linear", "factor": 2.0})"),
                      Catch::Contains("rope_scaling"));
    CHECK_THROWS_WITH(parse(R"(, "attention_bias": true)"), Catch::Contains("attention_bias"));
    CHECK_THROWS_WITH(parse(R"(, "hidden_act": "gelu")"), Catch::Contains("silu"));
    CHECK_THROWS_WITH(parse(R"(, "num_key_value_heads": 3)"), Catch::Contains("key/value heads"));
    CHECK_THROWS_WITH(ftune::io::parse_hf_config<ftune::llama::config>(
                          R"({"model_type": "bert", "vocab_size": 4})", "c.json"),
                      Catch::Contains("\"llama\""));
}
