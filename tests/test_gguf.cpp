// GGUF: a file written by llama.cpp's gguf-py with one tensor of every type ftune reads
// (tests/reference/gguf_fixture.py) parses, its metadata of every value type reads back, and
// every tensor dequantizes to exactly the values gguf-py's dequantize gives; malformed files
// (truncated, bad offsets, unknown types, absurd counts) are errors naming the problem. Tiny
// Llama and GPT-2 files in llama.cpp's layouts give Transformers' outputs.
#include <ftune/io/gguf.hpp>
#include <ftune/io/gguf_gpt2.hpp>
#include <ftune/io/gguf_llama.hpp>
#include <ftune/io/gguf_model.hpp>
#include <ftune/text/tokenizer_json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "catch.hpp"
#include "util.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
const std::filesystem::path fixtures = std::filesystem::path(FTUNE_REFERENCE_DIR) / "gguf";

std::vector<unsigned char> file_bytes(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}
}  // namespace

TEST_CASE("GGUF: metadata of every value type, tensors of every type equal to gguf-py's",
          "[io][parity]") {
    const ftune::io::gguf_file f(fixtures / "types.gguf");
    const ftune::io::safetensors_file want(fixtures / "types_expected.safetensors");
    CHECK(f.version() == 3);
    const auto& m = f.metadata();
    CHECK(m.at("general.architecture") == "llama");
    CHECK(m.at("test.u8") == 200);
    CHECK(m.at("test.i8") == -5);
    CHECK(m.at("test.u16") == 60000);
    CHECK(m.at("test.i16") == -30000);
    CHECK(m.at("test.u32") == 4000000000u);
    CHECK(m.at("test.i32") == -2000000000);
    CHECK(m.at("test.u64") == (std::uint64_t(1) << 40) + 3);
    CHECK(m.at("test.i64") == -(std::int64_t(1) << 40) - 3);
    CHECK(m.at("test.f32") == 0.25);
    CHECK(m.at("test.f64") == -1.5);
    CHECK(m.at("test.bool") == true);
    CHECK(m.at("test.string") == "h\xc3\xa9llo \xe2\x9c\x93");
    CHECK(m.at("test.strings") == nlohmann::json::array({"a", "", "\xc4\xa0The"}));
    CHECK(m.at("test.ints") == nlohmann::json::array({1, -2, 3}));

    REQUIRE(f.tensors().size() == want.tensors().size());
    for (const auto& e : want.tensors()) {
        INFO(e.name);
        const auto& t = f.at(e.name);
        CHECK(t.shape == e.shape);  // PyTorch's order: outermost first
        const auto got = f.read<float>(t);
        const auto expected = want.read<float>(e);
        REQUIRE(got.size() == expected.size());
        std::size_t differ = 0;
        for (std::size_t i = 0; i < got.size(); ++i) differ += got[i] != expected[i];
        CHECK(differ == 0);  // bit for bit: the same float operations as ggml's
        const auto as_double = f.read<double>(t);
        CHECK(std::equal(as_double.begin(), as_double.end(), expected.begin()));
    }
    CHECK(f.at("t.q4_k").type == ftune::io::ggml_type::q4_k);
    CHECK(f.at("t.q6_k").bytes == 2 * 2 * 210);  // 2 rows of 2 super-blocks
    CHECK_THROWS_WITH(f.at("nope"), Catch::Contains("no tensor named \"nope\""));
}

TEST_CASE("GGUF: malformed files are errors naming the problem, never a crash", "[io]") {
    const auto good = file_bytes(fixtures / "types.gguf");
    REQUIRE(good.size() > 1000);
    auto parse = [](std::vector<unsigned char> b) {
        const ftune::io::gguf_file f(std::span<const unsigned char>(b), "bad.gguf");
        return f.tensors().size();
    };
    CHECK(parse(good) == 12);
    // every truncation
    for (std::size_t n : {std::size_t(0), std::size_t(3), std::size_t(10), std::size_t(30),
                          good.size() / 2, good.size() - 1}) {
        INFO(n);
        CHECK_THROWS_AS(parse(std::vector<unsigned char>(good.begin(), good.begin() + n)),
                        ftune::error);
    }
    CHECK_THROWS_WITH(parse({'G', 'G', 'U', 'X', 3, 0, 0, 0}), Catch::Contains("not a GGUF file"));
    auto with = [&](std::size_t at, std::vector<unsigned char> bytes) {
        auto b = good;
        std::copy(bytes.begin(), bytes.end(), b.begin() + at);
        return b;
    };
    CHECK_THROWS_WITH(parse(with(4, {1, 0, 0, 0})), Catch::Contains("version 1"));
    // absurd counts: 2^40 tensors, 2^40 metadata entries
    CHECK_THROWS_WITH(parse(with(8, {0, 0, 0, 0, 0, 1, 0, 0})), Catch::Contains("cannot fit"));
    CHECK_THROWS_WITH(parse(with(16, {0, 0, 0, 0, 0, 1, 0, 0})), Catch::Contains("cannot fit"));
    // the first tensor info: find its name and damage its type and offset
    // the first tensor info (its name with its u64 length before it): damage its fields
    auto info_of = [&](const std::string& name) {
        std::vector<unsigned char> key{
            static_cast<unsigned char>(name.size()), 0, 0, 0, 0, 0, 0, 0};
        key.insert(key.end(), name.begin(), name.end());
        const auto it = std::search(good.begin(), good.end(), key.begin(), key.end());
        REQUIRE(it != good.end());
        return std::size_t(it - good.begin()) + key.size();  // at n_dims
    };
    const std::size_t info = info_of("t.f32");
    // n_dims (u32) = 2, dims 512 and 2 (u64), type (u32), offset (u64)
    CHECK_THROWS_WITH(parse(with(info, {9, 0, 0, 0})), Catch::Contains("9 dimensions"));
    CHECK_THROWS_WITH(parse(with(info + 4 + 16, {10, 0, 0, 0})),
                      Catch::Contains("Q2_K") && Catch::Contains("re-quantize"));
    CHECK_THROWS_WITH(parse(with(info + 4 + 16, {77, 0, 0, 0})), Catch::Contains("type 77"));
    CHECK_THROWS_WITH(parse(with(info + 4 + 16 + 4, {1, 0, 0, 0, 0, 0, 0, 0})),
                      Catch::Contains("not a multiple of the alignment"));
    CHECK_THROWS_WITH(parse(with(info + 4 + 16 + 4, {0, 0, 0, 0, 0, 1, 0, 0})),
                      Catch::Contains("run past the end"));
    CHECK_THROWS_WITH(parse(with(info + 4, {0, 0, 0, 0, 0, 0, 0, 0})), Catch::Contains("is zero"));
    // a row that is not whole blocks: the q4_0 tensor's rows (512) changed to 500
    CHECK_THROWS_WITH(parse(with(info_of("t.q4_0") + 4, {244, 1})),
                      Catch::Contains("not whole Q4_0 blocks"));
}

TEST_CASE(
    "GGUF Llama: a Q8_0 file in llama.cpp's layout gives Transformers' hidden states and "
    "logits",
    "[io][parity]") {
    // fixture: tests/reference/llama_gguf.py (Transformers read the same file back)
    const ftune::io::gguf_file f(fixtures / "tiny_llama.gguf");
    const auto cfg = ftune::io::llama_config_from_gguf(f);
    CHECK(cfg.hidden_size == 64);
    CHECK(cfg.num_hidden_layers == 2);
    CHECK(cfg.num_attention_heads == 4);
    CHECK(cfg.num_key_value_heads == 2);
    CHECK(cfg.head_size() == 16);
    CHECK(cfg.vocab_size == 64);
    CHECK(cfg.tie_word_embeddings);
    CHECK(cfg.rms_norm_eps == Approx(1e-5));
    ftune::llama::decoder<float> model(cfg);
    ftune::io::load_llama_gguf(model, f, cfg);
    const ftune::io::safetensors_file want(fixtures / "tiny_llama_expected.safetensors");
    const auto ids = test::read_ids(want, "input_ids"),
               mask = test::read_ids(want, "attention_mask");
    const std::size_t B = 2, T = 8, C = 64, V = 64;
    ftune::context ctx;
    const auto h = model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
    const auto hidden = want.read<float>(want.at("hidden"));
    const auto logits = want.read<float>(want.at("logits"));
    double worst_h = 0, worst_l = 0;
    const auto& E = model.input_embeddings().value;  // tied LM head
    for (std::size_t r = 0; r < B * T; ++r) {
        for (std::size_t c = 0; c < C; ++c)
            worst_h = std::max(worst_h, double(std::abs(h.data()[r * C + c] - hidden[r * C + c])));
        for (std::size_t v = 0; v < V; ++v) {
            double z = 0;
            for (std::size_t c = 0; c < C; ++c) z += double(h.data()[r * C + c]) * E(v, c);
            worst_l = std::max(worst_l, std::abs(z - double(logits[r * V + v])));
        }
    }
    CHECK(worst_h < 1e-5);
    CHECK(worst_l < 1e-4);
    // a file of another family is refused with its name
    CHECK_THROWS_WITH(
        ftune::io::llama_config_from_gguf(ftune::io::gguf_file(fixtures / "types.gguf")),
        Catch::Contains("llama.embedding_length") && Catch::Contains("missing"));
}

TEST_CASE(
    "GGUF GPT-2: a Q8_0 file in llama.cpp's layout (fused attn_qkv, copied output.weight) gives "
    "Transformers' logits; its tokenizer is the one it was written from",
    "[io][parity]") {
    // fixture: tests/reference/gpt2_gguf.py (Transformers read the same file back)
    const ftune::io::gguf_file f(fixtures / "tiny_gpt2.gguf");
    CHECK(ftune::io::gguf_architecture(f) == "gpt2");
    const auto cfg = ftune::io::gpt2_config_from_gguf(f);
    CHECK(cfg.hidden_size == 32);
    CHECK(cfg.num_hidden_layers == 2);
    CHECK(cfg.num_attention_heads == 4);
    CHECK(cfg.intermediate_size == 128);
    CHECK(cfg.vocab_size == 1200);
    CHECK(cfg.max_position_embeddings == 1024);
    CHECK(cfg.tie_word_embeddings);  // output.weight is token_embd's copy
    CHECK(cfg.eos_token_id == 0);
    ftune::gpt2::lm_head_model<> model(cfg);
    ftune::io::load_gpt2_gguf(model, f, cfg);
    const ftune::io::safetensors_file want(fixtures / "tiny_gpt2_expected.safetensors");
    const auto ids = test::read_ids(want, "input_ids"),
               mask = test::read_ids(want, "attention_mask");
    const std::size_t B = 2, T = 8, V = 1200;
    ftune::context ctx;
    const auto logits = model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
    const auto expected = want.read<float>(want.at("logits"));
    REQUIRE(logits.size() == B * T * V);
    double worst = 0;
    for (std::size_t i = 0; i < expected.size(); ++i)
        worst = std::max(worst, double(std::abs(logits.data()[i] - expected[i])));
    CHECK(worst < 1e-5);
    // the tokenizer in the metadata: the BPE fixture's vocabulary and merges
    const auto tok = ftune::io::bpe_tokenizer_from_gguf(f);
    const auto json = ftune::text::load_bpe_tokenizer_json(
        std::filesystem::path(FTUNE_REFERENCE_DIR) / "bpe" / "gpt2.json");
    for (const char* text : {"a gripping , funny movie", "<|endoftext|>it 's 1999 !"})
        CHECK(tok.encode(text) == json.encode(text));
    // a file of the other family is refused with both names
    CHECK_THROWS_WITH(
        ftune::io::gpt2_config_from_gguf(ftune::io::gguf_file(fixtures / "tiny_llama.gguf")),
        Catch::Contains("\"llama\"") && Catch::Contains("\"gpt2\""));
    CHECK_THROWS_WITH(ftune::io::llama_config_from_gguf(f),
                      Catch::Contains("\"gpt2\"") && Catch::Contains("\"llama\""));
    // a tensor of the wrong shape: every problem named
    ftune::gpt2::config wide = cfg;
    wide.hidden_size = 64;
    ftune::gpt2::lm_head_model<> big(wide);
    CHECK_THROWS_WITH(ftune::io::load_gpt2_gguf(big, f, wide),
                      Catch::Contains("blk.0.attn_qkv.weight") && Catch::Contains("problem"));
}

TEST_CASE(
    "GGUF as a Hugging Face model: load_gguf gives load_hf's result (config, tokenizer, weights); "
    "save_hf writes a directory that loads back to the same logits",
    "[io]") {
    using Model = ftune::gpt2::lm_head_model<>;
    auto m = ftune::io::load_gguf<Model>(fixtures / "tiny_gpt2.gguf");
    REQUIRE(m.tokenizer);
    CHECK(m.tokenizer->settings().eos_token == "<|endoftext|>");
    CHECK(m.config.architectures == std::vector<std::string>{"GPT2LMHeadModel"});
    const std::vector<ftune::token_id> ids{0, 5, 9, 33, 60, 200};
    ftune::context ctx{.mode = ftune::mode::eval};
    const auto y = m.model.forward(ctx, {ids.data(), 1, ids.size()});
    const std::vector<float> want(y.data(), y.data() + y.size());
    const std::filesystem::path dir = "gguf_saved_gpt2";
    ftune::io::save_hf(m, dir);
    auto back = ftune::io::load_hf<Model>(dir);
    CHECK(back.report.missing.empty());
    REQUIRE(back.tokenizer);
    CHECK(back.tokenizer->encode("a gripping movie") == m.tokenizer->encode("a gripping movie"));
    const auto y2 = back.model.forward(ctx, {ids.data(), 1, ids.size()});
    CHECK(std::equal(y2.data(), y2.data() + y2.size(), want.begin()));
    // a file of the other family is refused by name
    CHECK_THROWS_WITH(ftune::io::load_gguf<ftune::llama::causal_lm<>>(fixtures / "tiny_gpt2.gguf"),
                      Catch::Contains("\"gpt2\""));
}
