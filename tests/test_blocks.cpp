// The encoder block: gradients of every parameter and of the input, for both norm placements,
// with a padding mask (rows of different lengths), with dropout off and under a fixed seed.
#include <ftune/blocks.hpp>
#include <ftune/gpt2/decoder.hpp>
#include <ftune/bert/encoder.hpp>
#include <ftune/bert/tasks.hpp>
#include <ftune/testing/check_gradients.hpp>

#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "layer_util.hpp"

using ftune::dynamic;
using ftune::shape;

namespace {
// An encoder block of width 8 (2 heads, FFN 12) with dropout p on the hidden states and the
// probabilities.
template <class Block>
Block small_block(double p) {
    return Block({.hidden = 8,
                  .heads = 2,
                  .ffn = 12,
                  .hidden_dropout = p,
                  .attention_dropout = p,
                  .layer_norm_eps = 1e-5});
}
// The values of a view as a vector (host memory on either device).
template <class V>
std::vector<double> values_of(const V& v) {
    return std::vector<double>(v.data(), v.data() + v.size());
}
// The largest |a - b| / (1 + |b|) over two equally long vectors.
double max_relative_gap(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(a[i] - b[i]) / (1.0 + std::abs(b[i])));
    return worst;
}
}  // namespace

TEMPLATE_TEST_CASE("encoder block: gradients, both norm placements, padding mask, dropout",
                   "[gradcheck][blocks]", ftune::blocks::post_norm, ftune::blocks::pre_norm) {
    using Block = ftune::blocks::encoder_block<double, dynamic, dynamic, TestType>;
    const std::size_t B = 2, T = 4, C = 8;
    auto block = small_block<Block>(0.1);
    test::randomize(block, 50);
    auto xs = test::randn<double>(B * T * C, 51);
    const ftune::view<double, shape<dynamic, dynamic, dynamic>> x(xs.data(), B, T, C);
    std::vector<double> mask(B * T, 0.0);
    mask[1 * T + 3] = -10000.0;  // the second sequence has 3 tokens
    test::masked<Block> m{block, {mask.data(), B, T}};
    ftune::context eval;
    {
        const auto res = ftune::testing::check_layer_gradients(m, eval, x);
        INFO(res.report);
        REQUIRE(res.ok);
        CHECK(res.checked > 100);
    }
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(9)};
    {
        const auto res = ftune::testing::check_layer_gradients(m, train, x);
        INFO(res.report);
        REQUIRE(res.ok);
    }
    std::vector<std::string> names;
    block.visit_parameters("encoder.layer.3",
                           [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    REQUIRE(names.size() == 16);
    CHECK(names[0] == "encoder.layer.3.attention.self.query.weight");
    CHECK(names[6] == "encoder.layer.3.attention.output.dense.weight");
    CHECK(names[8] == "encoder.layer.3.attention.output.LayerNorm.weight");
    CHECK(names[10] == "encoder.layer.3.intermediate.dense.weight");
    CHECK(names[12] == "encoder.layer.3.output.dense.weight");
    CHECK(names[15] == "encoder.layer.3.output.LayerNorm.bias");
}

namespace {
// Binds the attention mask and token types so check_layer_gradients can call forward(ctx, ids).
template <class Encoder>
struct bound_encoder {
    using value_type = double;
    using input_view = typename Encoder::ids_view;
    using output_view = typename Encoder::output_view;
    Encoder& e;
    input_view mask, types;
    output_view forward(ftune::context& ctx, input_view x) {
        return e.forward(ctx, x, mask, types);
    }
    void backward(ftune::context& ctx, output_view dy) { e.backward(ctx, dy); }
    void zero_grad() { e.zero_grad(); }
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        e.visit_parameters(prefix, f);
    }
};
}  // namespace

namespace {
// Binds a key mask to a block's forward_first (B, T, C) -> (B, 1, C), for check_layer_gradients.
template <class L>
struct first_only : test::masked<L> {
    typename L::output_view forward(ftune::context& ctx, typename L::input_view x) {
        return this->layer.forward_first(ctx, x, this->mask);
    }
};
}  // namespace

TEMPLATE_TEST_CASE(
    "encoder block: forward_first in training, gradients of the first rows into every position",
    "[gradcheck][blocks]", ftune::blocks::post_norm, ftune::blocks::pre_norm) {
    using Block = ftune::blocks::encoder_block<double, dynamic, dynamic, TestType>;
    const std::size_t B = 3, T = 4, C = 8;
    auto block = small_block<Block>(0.1);
    test::randomize(block, 52);
    auto xs = test::randn<double>(B * T * C, 53);
    const ftune::view<double, shape<dynamic, dynamic, dynamic>> x(xs.data(), B, T, C);
    std::vector<double> mask(B * T, 0.0);
    mask[1 * T + 3] = mask[2 * T + 2] = mask[2 * T + 3] = -10000.0;  // 4, 3 and 2 tokens
    first_only<Block> m{{block, {mask.data(), B, T}}};
    for (auto mode : {ftune::mode::eval, ftune::mode::train}) {
        ftune::context ctx{.mode = mode, .rng = ftune::generator(10)};
        const auto res = ftune::testing::check_layer_gradients(m, ctx, x);
        INFO((mode == ftune::mode::train ? "train: " : "eval: ") << res.report);
        REQUIRE(res.ok);
        CHECK(res.checked > 100);
    }
    // without dropout: row 0 of forward(), and forward()'s gradients for a dy on row 0 alone
    Block plain({.hidden = C,
                 .heads = 2,
                 .ffn = 12,
                 .hidden_dropout = 0,
                 .attention_dropout = 0,
                 .layer_norm_eps = 1e-5});
    test::randomize(plain, 52);
    ftune::context train{.mode = ftune::mode::train};
    const auto dy1 = test::randn<double>(B * C, 54);
    std::vector<double> dy(B * T * C, 0.0);
    for (std::size_t b = 0; b < B; ++b)
        std::copy(dy1.begin() + b * C, dy1.begin() + (b + 1) * C, dy.begin() + b * T * C);
    auto run = [&](bool first) {
        std::vector<double> out, dx(B * T * C, 0.0);
        plain.zero_grad();
        if (first) {
            const auto y = plain.forward_first(train, x, {mask.data(), B, T});
            REQUIRE(y.extent(1) == 1);
            out.assign(y.data(), y.data() + y.size());
            plain.backward(train, {dy1.data(), B, 1, C}, {dx.data(), B, T, C});
        } else {
            const auto y = plain.forward(train, x, {mask.data(), B, T});
            for (std::size_t b = 0; b < B; ++b)
                out.insert(out.end(), y.data() + b * T * C, y.data() + b * T * C + C);
            plain.backward(train, {dy.data(), B, T, C}, {dx.data(), B, T, C});
        }
        std::vector<double> all = out;
        all.insert(all.end(), dx.begin(), dx.end());
        plain.visit_parameters("", [&](ftune::parameter_ref<double> p) {
            all.insert(all.end(), p.grad.begin(), p.grad.end());
        });
        return all;
    };
    CHECK(max_relative_gap(run(true), run(false)) < 1e-12);
    // a dy that is not (B, 1, C) after forward_first is refused, naming the shapes
    plain.forward_first(train, x, {mask.data(), B, T});
    std::vector<double> dx(B * T * C, 0.0);
    CHECK_THROWS_AS(plain.backward(train, {dy.data(), B, T, C}, {dx.data(), B, T, C}),
                    ftune::error);
}

TEST_CASE("BERT encoder: gradients of every parameter with a padding mask, eval and dropout",
          "[gradcheck][blocks]") {
    using Encoder = ftune::bert::encoder<double>;
    Encoder enc({.vocab_size = 11,
                 .hidden_size = 8,
                 .num_hidden_layers = 2,
                 .num_attention_heads = 2,
                 .intermediate_size = 12,
                 .max_position_embeddings = 6,
                 .type_vocab_size = 2,
                 .layer_norm_eps = 1e-5,
                 .pad_token_id = -1});  // the exact gradient of every row (no padding_idx)
    test::randomize(enc, 60);
    const std::size_t B = 2, T = 5;
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        types{0, 0, 0, 1, 1, 0, 0, 1, 0, 0},
        attention{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};  // the second row has 3 tokens, then padding
    bound_encoder<Encoder> m{enc, {attention.data(), B, T}, {types.data(), B, T}};
    const Encoder::ids_view x(ids.data(), B, T);
    for (auto mode : {ftune::mode::eval, ftune::mode::train}) {
        ftune::context ctx{.mode = mode, .rng = ftune::generator(3)};
        const auto res = ftune::testing::check_layer_gradients(m, ctx, x);
        INFO(res.report);
        REQUIRE(res.ok);
        CHECK(res.checked > 500);
    }
    std::vector<std::string> names;
    enc.visit_parameters("bert", [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names.front() == "bert.embeddings.word_embeddings.weight");
    CHECK(names[4] == "bert.embeddings.LayerNorm.bias");
    CHECK(names.back() == "bert.encoder.layer.1.output.LayerNorm.bias");
    CHECK(names.size() == 5 + 2 * 16);
}

TEST_CASE("BERT encoder: the pad_token_id row learns nothing, as Hugging Face's padding_idx",
          "[blocks]") {
    ftune::bert::encoder<double> enc({.vocab_size = 6,
                                      .hidden_size = 4,
                                      .num_hidden_layers = 1,
                                      .num_attention_heads = 1,
                                      .intermediate_size = 4,
                                      .max_position_embeddings = 4,
                                      .pad_token_id = 3});
    test::randomize(enc, 61);
    std::vector<ftune::token_id> ids{1, 3, 3, 2}, attention{1, 1, 1, 1};  // pad attended to
    ftune::context ctx;
    const auto h = enc.forward(ctx, {ids.data(), 1, 4}, {attention.data(), 1, 4});
    const std::vector<double> dh(h.size(), 1.0);
    enc.zero_grad();
    enc.backward(ctx, {dh.data(), 1, 4, 4});
    const auto& g = enc.embeddings.token.weight.grad;
    double row1 = 0, row3 = 0;
    for (std::size_t c = 0; c < 4; ++c) row1 += std::abs(g(1, c)), row3 += std::abs(g(3, c));
    CHECK(row1 > 0);
    CHECK(row3 == 0);
}

namespace {
// GPT-2's input layer: token and learned position tables only ("wte", "wpe").
struct positions_only_pieces {
    template <ftune::scalar T, std::size_t C, class D>
    using positions = ftune::layers::embedding<T, C, D>;
    template <ftune::scalar T, std::size_t C, class D>
    using token_types = ftune::layers::absent;
    template <ftune::scalar T, std::size_t C, class D>
    using norm = ftune::layers::absent;
    static constexpr std::string_view token_name = "wte", position_name = "wpe", type_name = "",
                                      norm_name = "";
};
// Llama's: the token table alone ("embed_tokens"); positions are rotary, in attention.
struct tokens_only_pieces : positions_only_pieces {
    template <ftune::scalar T, std::size_t C, class D>
    using positions = ftune::layers::absent;
    static constexpr std::string_view token_name = "embed_tokens";
};
// Llama's stack names: the table under the prefix, blocks "layers.N", final norm "norm".
struct llama_names {
    static constexpr std::string_view embeddings = "", layers = "layers", final_norm = "norm";
};
// A pre-norm stack's names: tables under the prefix, blocks "h.N", final norm "ln_f".
struct final_norm_names {
    static constexpr std::string_view embeddings = "", layers = "h", final_norm = "ln_f";
};
}  // namespace

TEST_CASE("input_embeddings: pieces left out, positions continued from a start", "[blocks]") {
    using ftune::layers::embedding_sizes;
    using Gpt2 =
        ftune::layers::input_embeddings<double, dynamic, ftune::device::cpu, positions_only_pieces>;
    using Llama =
        ftune::layers::input_embeddings<double, dynamic, ftune::device::cpu, tokens_only_pieces>;
    static_assert(sizeof(Llama) < sizeof(Gpt2) &&
                  sizeof(Gpt2) < sizeof(ftune::layers::bert_embeddings<double>));
    Gpt2 g({.vocab = 9, .features = 4, .max_positions = 6});
    test::randomize(g, 70);
    const std::vector<ftune::token_id> ids{3, 8, 1, 0, 5};
    ftune::context ctx;
    const auto full = g.forward(ctx, {ids.data(), 1, 5});  // (1, 5, 4)
    for (std::size_t t = 0; t < 5; ++t)
        for (std::size_t c = 0; c < 4; ++c)
            CHECK(full(0, t, c) == g.token.weight.value(ids[t], c) + g.position.weight.value(t, c));
    const std::vector<double> expected(full.data() + 3 * 4, full.data() + 5 * 4);
    const auto tail = g.forward(ctx, {ids.data() + 3, 1, 2}, {}, /*start=*/3);  // positions 3, 4
    CHECK(std::vector<double>(tail.data(), tail.data() + 8) == expected);
    CHECK_THROWS_AS(g.forward(ctx, {ids.data(), 1, 5}, {}, /*start=*/2), ftune::error);
    std::vector<std::string> names;
    g.visit_parameters("transformer",
                       [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names == std::vector<std::string>{"transformer.wte.weight", "transformer.wpe.weight"});

    Llama l({.vocab = 9, .features = 4});
    test::randomize(l, 71);
    const auto y = l.forward(ctx, {ids.data(), 1, 5});
    for (std::size_t t = 0; t < 5; ++t)
        for (std::size_t c = 0; c < 4; ++c) CHECK(y(0, t, c) == l.token.weight.value(ids[t], c));
}

TEST_CASE("blocks::stack with a final norm: gradients of every parameter, names",
          "[gradcheck][blocks]") {
    using Block = ftune::blocks::encoder_block<double, dynamic, dynamic, ftune::blocks::pre_norm>;
    using Stack = ftune::blocks::stack<
        ftune::layers::input_embeddings<double, dynamic, ftune::device::cpu, positions_only_pieces>,
        Block, ftune::layers::layer_norm<double>, final_norm_names>;
    static_assert(Stack::has_final_norm);
    Stack s(Stack::embeddings_type({.vocab = 11, .features = 8, .max_positions = 6}),
            ftune::layers::layer_norm<double>(8, 1e-5));
    for (int i = 0; i < 2; ++i)
        s.layer.emplace_back(ftune::blocks::block_sizes{.hidden = 8,
                                                        .heads = 2,
                                                        .ffn = 12,
                                                        .hidden_dropout = 0,
                                                        .attention_dropout = 0,
                                                        .layer_norm_eps = 1e-5});
    test::randomize(s, 72);
    const std::size_t B = 2, T = 5;
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        attention{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    bound_encoder<Stack> m{s, {attention.data(), B, T}, {}};
    ftune::context ctx;
    const auto res =
        ftune::testing::check_layer_gradients(m, ctx, Stack::ids_view(ids.data(), B, T));
    INFO(res.report);
    REQUIRE(res.ok);
    CHECK(res.checked > 500);
    // the output is the final norm's: with weight 1 and bias 0 every row has mean 0, variance 1
    s.final_norm.weight.value.fill(1.0);
    s.final_norm.bias.value.fill(0.0);
    const auto h = s.forward(ctx, {ids.data(), B, T});
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t t = 0; t < T; ++t) {
            double mean = 0, var = 0;
            for (std::size_t c = 0; c < 8; ++c) mean += h(b, t, c) / 8;
            for (std::size_t c = 0; c < 8; ++c)
                var += (h(b, t, c) - mean) * (h(b, t, c) - mean) / 8;
            CHECK(std::abs(mean) < 1e-12);
            CHECK(std::abs(var - 1.0) < 1e-3);
        }
    std::vector<std::string> names;
    s.visit_parameters("transformer",
                       [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names.front() == "transformer.wte.weight");
    CHECK(names[2] == "transformer.h.0.attention.self.query.weight");
    CHECK(names[names.size() - 2] == "transformer.ln_f.weight");
    CHECK(names.size() == 2 + 2 * 16 + 2);
}

TEST_CASE("decoder stack (Llama's composition): gradients of every parameter, causal, names",
          "[gradcheck][blocks]") {
    using Block = ftune::blocks::decoder_block<double>;
    using Stack = ftune::blocks::stack<
        ftune::layers::input_embeddings<double, dynamic, ftune::device::cpu, tokens_only_pieces>,
        Block, ftune::layers::rms_norm<double>, llama_names>;
    Stack s(Stack::embeddings_type({.vocab = 11, .features = 8}),
            ftune::layers::rms_norm<double>(8, 1e-5));
    for (int i = 0; i < 2; ++i)
        s.layer.emplace_back(ftune::blocks::decoder_sizes{.hidden = 8,
                                                          .heads = 4,
                                                          .kv_heads = 2,
                                                          .head_dim = 2,
                                                          .ffn = 12,
                                                          .rope_theta = 100.0,
                                                          .norm_eps = 1e-5});
    test::randomize(s, 73);
    const std::size_t B = 2, T = 5;
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        attention{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    bound_encoder<Stack> m{s, {attention.data(), B, T}, {}};
    ftune::context ctx;
    const auto res =
        ftune::testing::check_layer_gradients(m, ctx, Stack::ids_view(ids.data(), B, T));
    INFO(res.report);
    REQUIRE(res.ok);
    CHECK(res.checked > 500);
    // causal: a later token changes no earlier hidden state
    const auto h = s.forward(ctx, {ids.data(), B, T});
    const std::vector<double> before(h.data(), h.data() + h.size());
    ids[4] = 10;
    const auto h2 = s.forward(ctx, {ids.data(), B, T});
    for (std::size_t i = 0; i < 4 * 8; ++i) CHECK(h2.data()[i] == before[i]);
    CHECK(h2.data()[4 * 8] != before[4 * 8]);
    std::vector<std::string> names;
    s.visit_parameters("model", [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names.front() == "model.embed_tokens.weight");
    CHECK(names[1] == "model.layers.0.input_layernorm.weight");
    CHECK(names[2] == "model.layers.0.self_attn.q_proj.weight");
    CHECK(names[6] == "model.layers.0.post_attention_layernorm.weight");
    CHECK(names[7] == "model.layers.0.mlp.gate_proj.weight");
    CHECK(names.back() == "model.norm.weight");
    CHECK(names.size() == 1 + 2 * 9 + 1);
}

TEST_CASE("bert::Encoder<dims>: static sizes checked against the configuration", "[blocks]") {
    using MiniLM = ftune::bert::Encoder<ftune::bert::dims{.hidden = 16, .heads = 4, .ffn = 32}>;
    static_assert(
        ftune::bert::valid_dims<ftune::bert::dims{.hidden = 384, .heads = 12, .ffn = 1536}>);
    static_assert(
        !ftune::bert::valid_dims<ftune::bert::dims{.hidden = 384, .heads = 5, .ffn = 1536}>);
    const ftune::bert::config ok{.vocab_size = 20,
                                 .hidden_size = 16,
                                 .num_hidden_layers = 1,
                                 .num_attention_heads = 4,
                                 .intermediate_size = 32,
                                 .max_position_embeddings = 8};
    MiniLM enc(ok);
    std::vector<ftune::token_id> ids{1, 2, 3};
    ftune::context ctx;
    const auto h = enc.forward(ctx, {ids.data(), 1, 3});
    CHECK(h.extent(2) == 16);
    static_assert(decltype(h)::shape_type::static_extents[2] == 16);
    auto bad = ok;
    bad.intermediate_size = 64;
    try {
        MiniLM wrong(bad);
        FAIL("no throw");
    } catch (const ftune::error& e) {
        CHECK(e.context() == "intermediate_size");
        CHECK(std::string(e.what()).find("fixes 32 but the configuration says 64") !=
              std::string::npos);
    }
    ftune::bert::Encoder<ftune::bert::dims{}, double> any(bad);  // fully dynamic: any sizes
    CHECK(any.layer.size() == 1);
}

TEST_CASE(
    "prepare_inference: the same outputs bit for bit; repacked after visits, ended by "
    "training",
    "[blocks]") {
    const ftune::bert::config cfg{.vocab_size = 20,
                                  .hidden_size = 16,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 4,
                                  .intermediate_size = 24,
                                  .max_position_embeddings = 8};
    ftune::bert::encoder<float> plain(cfg), packed(cfg);
    auto init = [](auto& enc, float shift) {
        std::uint64_t seed = 70;
        enc.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            const auto v = test::randn<float>(p.value.size(), seed++, 0.3);
            for (std::size_t i = 0; i < v.size(); ++i) p.value[i] = v[i] + shift;
        });
    };
    init(plain, 0.0f);
    init(packed, 0.0f);
    packed.prepare_inference();
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        mask{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    const std::size_t B = 2, T = 5;
    auto run = [&](auto& enc, ftune::mode m) {
        ftune::context ctx{.mode = m, .rng = ftune::generator(4)};
        const auto h = enc.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
        return std::vector<float>(h.data(), h.data() + h.size());
    };
    CHECK(run(packed, ftune::mode::eval) == run(plain, ftune::mode::eval));
    // new weights through visit_parameters: the model stays prepared, its packed copies are
    // stale until the next eval-mode forward packs them again (never used stale)
    init(plain, 0.05f);
    init(packed, 0.05f);
    CHECK(packed.inference_prepared());
    CHECK_FALSE(packed.layer[0].intermediate.inference_packed());
    CHECK_FALSE(packed.layer[1].attention.inference_packed());
    CHECK(run(packed, ftune::mode::eval) == run(plain, ftune::mode::eval));
    CHECK(packed.layer[0].intermediate.inference_packed());
    CHECK(packed.layer[1].attention.inference_packed());
    // a fused forward keeps nothing for backward: a clear error, not wrong gradients
    packed.prepare_inference();
    run(packed, ftune::mode::eval);
    const std::vector<float> dh(B * T * 16, 1.0f);
    ftune::context eval;
    CHECK_THROWS_AS(packed.backward(eval, {dh.data(), B, T, 16}), ftune::error);
    // training ends the prepared mode; a later eval forward uses the current weights
    CHECK(run(packed, ftune::mode::train) == run(plain, ftune::mode::train));
    CHECK_FALSE(packed.inference_prepared());
    packed.layer[0].intermediate.weight.value(0, 0) += 1.0f;  // a direct write after training
    plain.layer[0].intermediate.weight.value(0, 0) += 1.0f;
    CHECK(run(packed, ftune::mode::eval) == run(plain, ftune::mode::eval));
}

TEMPLATE_TEST_CASE(
    "prepared classifier: the last layer for [CLS] only, the same logits bit for bit", "[blocks]",
    ftune::blocks::post_norm, ftune::blocks::pre_norm) {
    using E = ftune::bert::encoder<float, dynamic, dynamic, TestType>;
    const ftune::bert::config cfg{.vocab_size = 30,
                                  .hidden_size = 24,
                                  .num_hidden_layers = 3,
                                  .num_attention_heads = 3,
                                  .intermediate_size = 40,
                                  .max_position_embeddings = 16,
                                  .num_labels = 3};
    ftune::bert::sequence_classifier<E> plain(cfg), packed(cfg);
    test::randomize(plain, 90);
    test::randomize(packed, 90);
    packed.prepare_inference();
    const std::size_t B = 3, T = 9;
    std::vector<ftune::token_id> ids(B * T), mask(B * T, 1);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = ftune::token_id((i * 7 + 3) % 30);
    for (std::size_t j = 6; j < T; ++j) mask[T + j] = 0;  // the second sequence is padded
    for (std::size_t j = 2; j < T; ++j) mask[2 * T + j] = 0;
    ftune::context eval;
    const auto want = plain.forward(eval, {ids.data(), B, T}, {mask.data(), B, T});
    const std::vector<float> w(want.data(), want.data() + want.size());
    const auto got = packed.forward(eval, {ids.data(), B, T}, {mask.data(), B, T});
    CHECK(std::vector<float>(got.data(), got.data() + got.size()) == w);
    // the encoder's first-token states are row 0 of its full output
    const auto full = plain.backbone.forward(eval, {ids.data(), B, T}, {mask.data(), B, T});
    std::vector<float> rows0;
    for (std::size_t b = 0; b < B; ++b)
        rows0.insert(rows0.end(), full.data() + b * T * 24, full.data() + b * T * 24 + 24);
    const auto first =
        packed.backbone.forward_first_tokens(eval, {ids.data(), B, T}, {mask.data(), B, T});
    CHECK(first.extent(1) == 1);
    CHECK(std::vector<float>(first.data(), first.data() + first.size()) == rows0);
    // a forward that kept nothing for backward refuses backward; unprepared models and training
    // forwards are the only way to gradients
    const std::vector<float> d(B * 3, 1.0f);
    packed.zero_grad();
    CHECK_THROWS_AS(packed.backward(eval, {d.data(), B, 3}), ftune::error);
    std::size_t touched = 0;  // refused before any gradient was accumulated
    packed.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        for (float g : p.grad) touched += g != 0.0f;
    });
    CHECK(touched == 0);
    // unprepared, the first-token path keeps what backward needs and gives the same rows
    const auto kept =
        plain.backbone.forward_first_tokens(eval, {ids.data(), B, T}, {mask.data(), B, T});
    CHECK(std::vector<float>(kept.data(), kept.data() + kept.size()) == rows0);
}

TEST_CASE("prepared causal self-attention equals the unprepared one bit for bit", "[blocks]") {
    ftune::layers::self_attention<float> plain(16, 4, 0.1f, true), packed(16, 4, 0.1f, true);
    test::randomize(plain, 95);
    test::randomize(packed, 95);
    packed.prepare_inference();
    const std::size_t B = 2, T = 11;
    const auto xs = test::randn<float>(B * T * 16, 96);
    std::vector<float> mask(B * T, 0.0f);
    mask[T + 10] = mask[T + 9] = std::numeric_limits<float>::lowest();
    ftune::context eval;
    const auto want = plain.forward(eval, {xs.data(), B, T, 16}, {mask.data(), B, T});
    const std::vector<float> w(want.data(), want.data() + want.size());
    const auto got = packed.forward(eval, {xs.data(), B, T, 16}, {mask.data(), B, T});
    CHECK(std::vector<float>(got.data(), got.data() + got.size()) == w);
}

namespace {
// A small double-precision task model with random weights, checked in eval and training mode
// (dropout under a fixed seed) with a padding mask and two segments.
template <class Model>
void check_task_model(ftune::ops::activation act, std::size_t min_checked) {
    ftune::bert::config cfg{.vocab_size = 11,
                            .hidden_size = 8,
                            .num_hidden_layers = 1,
                            .num_attention_heads = 2,
                            .intermediate_size = 12,
                            .max_position_embeddings = 6,
                            .type_vocab_size = 2,
                            .layer_norm_eps = 1e-5,
                            .pad_token_id = -1,
                            .hidden_act = act,
                            .num_labels = 3};
    Model model(cfg);
    test::randomize(model, 80);
    const std::size_t B = 2, T = 5;
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        types{0, 0, 0, 1, 1, 0, 0, 1, 0, 0}, attention{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    bound_encoder<Model> m{model, {attention.data(), B, T}, {types.data(), B, T}};
    const typename Model::ids_view x(ids.data(), B, T);
    for (auto mode : {ftune::mode::eval, ftune::mode::train}) {
        ftune::context ctx{.mode = mode, .rng = ftune::generator(3)};
        const auto res = ftune::testing::check_layer_gradients(m, ctx, x);
        INFO(Model::architecture << " " << res.report);
        REQUIRE(res.ok);
        CHECK(res.checked > min_checked);
    }
}
}  // namespace

TEST_CASE("BERT task models: gradients of every parameter through each head", "[gradcheck]") {
    using E = ftune::bert::encoder<double>;
    using ftune::ops::activation;
    check_task_model<ftune::bert::model<E>>(activation::gelu, 400);
    check_task_model<ftune::bert::sequence_classifier<E>>(activation::gelu_tanh, 400);
    check_task_model<ftune::bert::token_classifier<E>>(activation::relu, 400);
    check_task_model<ftune::bert::question_answering<E>>(activation::gelu, 400);
    // the tied decoder: the word-embedding table gets the decoder's gradient too
    check_task_model<ftune::bert::masked_lm<E>>(activation::gelu, 400);
}

TEST_CASE(
    "training a [CLS] classifier: the last layer for [CLS] only, the same logits and "
    "gradients as the full last layer, frozen lower layers too",
    "[blocks]") {
    using E = ftune::bert::encoder<double>;
    const ftune::bert::config cfg{.vocab_size = 30,
                                  .hidden_size = 24,
                                  .num_hidden_layers = 3,
                                  .num_attention_heads = 3,
                                  .intermediate_size = 40,
                                  .max_position_embeddings = 16,
                                  .hidden_dropout_prob = 0,
                                  .attention_probs_dropout_prob = 0,
                                  .num_labels = 3};
    ftune::bert::sequence_classifier<E> model(cfg);
    test::randomize(model, 91);
    const std::size_t B = 3, T = 9;
    std::vector<ftune::token_id> ids(B * T), mask(B * T, 1);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = ftune::token_id((i * 5 + 2) % 30);
    for (std::size_t j = 5; j < T; ++j) mask[T + j] = 0;
    const decltype(model)::ids_view x(ids.data(), B, T), m(mask.data(), B, T);
    const auto dlogits = test::randn<double>(B * 3, 92);
    for (const bool frozen : {false, true}) {
        // frozen: embeddings and every layer but the last (its backward gets no dx)
        model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
            p.set_trainable(!frozen || p.name.find("layer.2.") != std::string::npos ||
                            p.name.find("layer.") == std::string::npos &&
                                p.name.find("embeddings") == std::string::npos);
        });
        auto gradients = [&] {
            std::vector<double> g;
            model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
                if (p.trainable) g.insert(g.end(), p.grad.begin(), p.grad.end());
            });
            return g;
        };
        ftune::context train{.mode = ftune::mode::train};
        // the full last layer, as before: the head over every position's hidden states
        model.zero_grad();
        const auto full =
            model.head.forward(train, model.backbone, model.backbone.forward(train, x, m));
        const auto want = values_of(full);
        REQUIRE(full.extent(0) == B);
        model.backbone.backward(train,
                                model.head.backward(train, model.backbone, {dlogits.data(), B, 3}));
        const auto want_grads = gradients();
        // task_model::forward in training: the last layer for [CLS] alone
        model.zero_grad();
        const auto got = values_of(model.forward(train, x, m));
        model.backward(train, {dlogits.data(), B, 3});
        const auto got_grads = gradients();
        INFO((frozen ? "lower layers frozen" : "all trainable"));
        CHECK(max_relative_gap(got, want) < 1e-12);
        REQUIRE(got_grads.size() == want_grads.size());
        CHECK(max_relative_gap(got_grads, want_grads) < 1e-12);
        // the last layer did run for [CLS] alone: it refuses a gradient of every position
        const std::vector<double> dh(B * T * 24, 1.0);
        CHECK_THROWS_AS(model.backbone.layer.back().backward(train, {dh.data(), B, T, 24}, {}),
                        ftune::error);
    }
}

TEMPLATE_TEST_CASE(
    "the whole encoder on the reference backend, selected by type, matches the CPU backend",
    "[blocks][backends]", ftune::blocks::post_norm, ftune::blocks::pre_norm) {
    using cpu_encoder = ftune::bert::encoder<double, dynamic, dynamic, TestType>;
    using ref_encoder =
        ftune::bert::encoder<double, dynamic, dynamic, TestType,
                             ftune::blocks::bert_parts<double, ftune::device::reference>>;
    static_assert(std::is_same_v<typename ref_encoder::device_type, ftune::device::reference>);
    static_assert(
        std::is_same_v<typename ref_encoder::output_view::device_type, ftune::device::reference>);
    const ftune::bert::config cfg{.vocab_size = 23,
                                  .hidden_size = 12,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 3,
                                  .intermediate_size = 20,
                                  .max_position_embeddings = 9,
                                  .type_vocab_size = 2,
                                  .layer_norm_eps = 1e-5,
                                  .pad_token_id = 0,
                                  .hidden_act = ftune::ops::activation::gelu_tanh};
    cpu_encoder cpu(cfg);
    ref_encoder ref(cfg);
    test::randomize(cpu, 120);
    test::randomize(ref, 120);
    const std::size_t B = 2, T = 7, C = 12;
    std::vector<ftune::token_id> ids{3, 9, 14, 2, 21, 7, 5, 3, 11, 4, 16, 0, 0, 0},
        types{0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0},
        mask{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
    auto& gemm_calls = ftune::backends::cpu::packing_stats().per_call;
    const double tol = 1e-12;

    // training mode: dropout from the same counter-based streams, so the same masks on both
    for (const auto m : {ftune::mode::train, ftune::mode::eval}) {
        ftune::context c1{.mode = m, .rng = ftune::generator(8)};
        ftune::context c2{.mode = m, .rng = ftune::generator(8)};
        const auto want = values_of(
            cpu.forward(c1, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T}));
        const auto calls_before = gemm_calls.load();
        const auto got = values_of(
            ref.forward(c2, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T}));
        INFO((m == ftune::mode::train ? "train" : "eval"));
        CHECK(max_relative_gap(got, want) < tol);
        CHECK(gemm_calls.load() == calls_before);  // the reference model never ran a CPU GEMM
        // backward: every parameter's gradient
        const auto dh = test::randn<double>(B * T * C, 121);
        cpu.zero_grad(), ref.zero_grad();
        cpu.backward(c1, {dh.data(), B, T, C});
        const auto calls_cpu = gemm_calls.load();
        CHECK(calls_cpu > calls_before);  // the counter does count the CPU model's products
        ref.backward(c2, {dh.data(), B, T, C});
        CHECK(gemm_calls.load() == calls_cpu);
        std::vector<std::vector<double>> grads;
        std::vector<std::string> names;
        cpu.visit_parameters("", [&](ftune::parameter_ref<double> p) {
            grads.emplace_back(p.grad.begin(), p.grad.end());
            names.push_back(p.name);
        });
        std::size_t i = 0;
        ref.visit_parameters("", [&](ftune::parameter_ref<double> p) {
            INFO(p.name);
            REQUIRE(p.name == names[i]);
            CHECK(max_relative_gap({p.grad.begin(), p.grad.end()}, grads[i]) < tol);
            ++i;
        });
        CHECK(i == names.size());
    }

    // prepared inference: each backend's own prepared weights and fused attention
    cpu.prepare_inference(), ref.prepare_inference();
    ftune::context eval;
    const auto calls_before = gemm_calls.load();
    const auto want = values_of(cpu.forward(eval, {ids.data(), B, T}, {mask.data(), B, T}));
    const auto got = values_of(ref.forward(eval, {ids.data(), B, T}, {mask.data(), B, T}));
    CHECK(max_relative_gap(got, want) < tol);
    const auto want0 =
        values_of(cpu.forward_first_tokens(eval, {ids.data(), B, T}, {mask.data(), B, T}));
    const auto got0 =
        values_of(ref.forward_first_tokens(eval, {ids.data(), B, T}, {mask.data(), B, T}));
    CHECK(max_relative_gap(got0, want0) < tol);
    CHECK(gemm_calls.load() == calls_before);  // prepared products: no per-call GEMM anywhere
}

TEST_CASE(
    "GPT-2's decoder in training with resid_pdrop, embd_pdrop and attn_pdrop: gradients under "
    "fixed masks, "
    "eval mode as without dropout",
    "[gradcheck][blocks]") {
    ftune::gpt2::config c;
    c.vocab_size = 11, c.hidden_size = 8, c.intermediate_size = 12, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.max_position_embeddings = 9;
    c.resid_pdrop = 0.25, c.embd_pdrop = 0.25, c.attn_pdrop = 0.25;
    ftune::gpt2::decoder<double> s(c);
    test::randomize(s, 92);
    auto plain_config = c;
    plain_config.resid_pdrop = plain_config.embd_pdrop = plain_config.attn_pdrop = 0;
    ftune::gpt2::decoder<double> plain(plain_config);
    test::randomize(plain, 92);
    const std::size_t B = 2, T = 5;
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        attention{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    const ftune::gpt2::decoder<double>::ids_view idv(ids.data(), B, T), mv(attention.data(), B, T);
    ftune::context eval;
    const auto e = s.forward(eval, idv, mv);
    const std::vector<double> with(e.data(), e.data() + e.size());
    const auto p = plain.forward(eval, idv, mv);
    CHECK(with == std::vector<double>(p.data(), p.data() + p.size()));
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(5)};
    const auto t = s.forward(train, idv, mv);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < t.size(); ++i) differ += t.data()[i] != with[i];
    CHECK(differ > t.size() / 2);  // every position sees dropped inputs
    bound_encoder<ftune::gpt2::decoder<double>> m{s, mv, {}};
    const auto res = ftune::testing::check_layer_gradients(m, train, idv);
    INFO(res.report);
    REQUIRE(res.ok);
    CHECK(res.checked > 500);
}

TEST_CASE(
    "GPT-2's decoder (learned positions, LayerNorm, biased attention, gelu_new MLP): "
    "gradients of every parameter, causal, names",
    "[gradcheck][blocks]") {
    ftune::gpt2::config c;
    c.vocab_size = 11;
    c.hidden_size = 8;
    c.intermediate_size = 12;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.max_position_embeddings = 9;
    ftune::gpt2::decoder<double> s(c);
    test::randomize(s, 91);
    const std::size_t B = 2, T = 5;
    std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 1, 4, 3, 0, 0},
        attention{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    bound_encoder<ftune::gpt2::decoder<double>> m{s, {attention.data(), B, T}, {}};
    ftune::context ctx;
    const auto res = ftune::testing::check_layer_gradients(
        m, ctx, ftune::gpt2::decoder<double>::ids_view(ids.data(), B, T));
    INFO(res.report);
    REQUIRE(res.ok);
    CHECK(res.checked > 500);
    // causal: a later token changes no earlier hidden state
    const auto h = s.forward(ctx, {ids.data(), B, T});
    const std::vector<double> before(h.data(), h.data() + h.size());
    ids[4] = 10;
    const auto h2 = s.forward(ctx, {ids.data(), B, T});
    for (std::size_t i = 0; i < 4 * 8; ++i) CHECK(h2.data()[i] == before[i]);
    CHECK(h2.data()[4 * 8] != before[4 * 8]);
    std::vector<std::string> names;
    s.visit_parameters("transformer",
                       [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names[0] == "transformer.wte.weight");
    CHECK(names[1] == "transformer.wpe.weight");
    CHECK(names[2] == "transformer.h.0.ln_1.weight");
    CHECK(names[4] == "transformer.h.0.attn.q_proj.weight");
    CHECK(names[12] == "transformer.h.0.ln_2.weight");
    CHECK(names[14] == "transformer.h.0.mlp.c_fc.weight");
    CHECK(names.back() == "transformer.ln_f.bias");
    CHECK(names.size() == 2 + 2 * 16 + 2);
}
