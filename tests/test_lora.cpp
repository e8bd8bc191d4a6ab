// LoRA: layers::lora_linear's gradients (A, B and the input; the frozen W and b get none) with
// and without its dropout, its output against the formula computed by hand, merge and unmerge
// (plain and prepared forwards), an adapter-free lora_linear equal to linear; adapters made by
// Hugging Face PEFT (tests/reference/peft_lora.py) giving PEFT's logits, saved back and loaded
// again; apply_lora's targets, freezing and summary.
#include <ftune/io/hf.hpp>
#include <ftune/layers/lora_linear.hpp>
#include <ftune/optim.hpp>
#include <ftune/peft/adapter_io.hpp>
#include <ftune/peft/bitfit.hpp>
#include <ftune/serve/adapters.hpp>
#include <ftune/testing/check_gradients.hpp>

#include <filesystem>
#include <atomic>
#include <map>
#include <thread>

#include <cmath>
#include <vector>

#include "layer_util.hpp"

using ftune::dynamic;
using ftune::shape;
namespace layers = ftune::layers;

static_assert(ftune::layer<layers::lora_linear<double>>);
static_assert(ftune::layer<layers::lora_linear<float, 8, 4, ftune::device::cpu, false>>);

namespace {
// Gives lora_B (zero after add_adapter, as PEFT) random values, so that A gets a gradient.
template <class L>
void randomize_b(L& l, std::uint64_t seed) {
    const auto v = test::randn<double>(l.lora_B.size(), seed, 0.4);
    for (std::size_t i = 0; i < v.size(); ++i)
        l.lora_B.value.data()[i] = typename L::value_type(v[i]);
}
template <class V>
std::vector<float> copy_of(const V& y) {
    return std::vector<float>(y.data(), y.data() + y.size());
}
}  // namespace

TEMPLATE_TEST_CASE_SIG(
    "lora_linear: gradients of A, B and the input, none for the frozen W and b; with and "
    "without the adapter's dropout",
    "[gradcheck][lora]", ((bool Bias), Bias), true, false) {
    for (const double p : {0.0, 0.3}) {
        INFO("dropout " << p);
        layers::lora_linear<double, dynamic, dynamic, ftune::device::cpu, Bias> l(7, 5);
        test::randomize(l, 1);
        l.add_adapter({.r = 3, .alpha = 6, .dropout = p}, ftune::random_stream(4, 0));
        CHECK(!l.weight.trainable);
        randomize_b(l, 9);
        ftune::context ctx{.mode = ftune::mode::train, .rng = ftune::generator(3)};
        auto xs = test::randn<double>(4 * 7, 2);
        const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 4, 7);
        const auto res = ftune::testing::check_layer_gradients(l, ctx, x);
        INFO(res.report);
        REQUIRE(res.ok);
        CHECK(res.checked == 3 * 7 + 5 * 3 + 4 * 7);                  // A, B and the input
        for (const double g : l.weight.grad.span()) CHECK(g == 0.0);  // backward left W's
        if constexpr (Bias)
            for (const double g : l.bias.grad.span()) CHECK(g == 0.0);
        l.zero_grad();  // frees the frozen W's and b's gradient storage
        CHECK(l.weight.grad.data() == nullptr);
        if constexpr (Bias) CHECK(l.bias.grad.data() == nullptr);
    }
}

TEST_CASE(
    "lora_linear: y = x Wᵀ + b + (α / r) x Aᵀ Bᵀ (rsLoRA: α / √r), A as PEFT initializes it, "
    "unchanged output until B trains, no adapter = linear",
    "[lora]") {
    const std::size_t N = 3, In = 6, Out = 4;
    layers::linear<float> plain(In, Out);
    layers::lora_linear<float> l(In, Out);
    test::randomize(plain, 5);
    test::randomize(l, 5);
    auto xs = test::randn<float>(N * In, 6);
    const ftune::view<const float, shape<dynamic, dynamic>> x(xs.data(), N, In);
    ftune::context ctx;
    const auto y0 = copy_of(plain.forward(ctx, x));
    CHECK(copy_of(l.forward(ctx, x)) == y0);  // no adapter: linear, bit for bit
    l.add_adapter({.r = 2, .alpha = 8}, ftune::random_stream(1, 2));
    for (const float a : l.lora_A.value.span()) CHECK(std::abs(a) <= 1 / std::sqrt(float(In)));
    CHECK(copy_of(l.forward(ctx, x)) == y0);  // B = 0
    for (const bool rs : {false, true}) {
        l.add_adapter({.r = 2, .alpha = 8, .rslora = rs}, ftune::random_stream(1, 2));
        randomize_b(l, 7);
        const double s = rs ? 8 / std::sqrt(2.0) : 8 / 2.0;
        const auto y = copy_of(l.forward(ctx, x));
        for (std::size_t n = 0; n < N; ++n)
            for (std::size_t o = 0; o < Out; ++o) {
                double delta = 0;  // s Σ_k B(o, k) Σ_i A(k, i) x(n, i)
                for (std::size_t k = 0; k < 2; ++k) {
                    double u = 0;
                    for (std::size_t i = 0; i < In; ++i)
                        u += double(l.lora_A.value.data()[k * In + i]) * double(xs[n * In + i]);
                    delta += double(l.lora_B.value.data()[o * 2 + k]) * u;
                }
                CHECK(y[n * Out + o] == Approx(y0[n * Out + o] + s * delta).epsilon(1e-5));
            }
    }
}

TEST_CASE("lora_linear: merged and unmerged forwards agree, plain and prepared; unmerge restores W",
          "[lora]") {
    const std::size_t N = 5, In = 16, Out = 12;
    layers::lora_linear<float> l(In, Out);
    test::randomize(l, 11);
    l.add_adapter({.r = 4, .alpha = 8}, ftune::random_stream(2, 0));
    randomize_b(l, 12);
    const std::vector<float> w(l.weight.value.span().begin(), l.weight.value.span().end());
    auto xs = test::randn<float>(N * In, 13);
    const ftune::view<const float, shape<dynamic, dynamic>> x(xs.data(), N, In);
    ftune::context ctx;
    const auto unmerged = copy_of(l.forward(ctx, x));
    l.merge();
    CHECK(l.merged());
    CHECK(test::relative_error(copy_of(l.forward(ctx, x)), unmerged) < 1e-5);
    l.prepare_inference();  // packs the merged W
    CHECK(test::relative_error(copy_of(l.forward(ctx, x)), unmerged) < 1e-5);
    l.unmerge();  // the packed copy is stale: packed again, without the adapter
    CHECK(test::relative_error(copy_of(l.forward(ctx, x)), unmerged) < 1e-6);
    CHECK(test::relative_error(
              std::vector<float>(l.weight.value.span().begin(), l.weight.value.span().end()), w) <
          1e-6);
    l.remove_adapter();
    CHECK(l.rank() == 0);
    std::size_t visited = 0;
    l.visit_parameters("q", [&](ftune::parameter_ref<float>) { ++visited; });
    CHECK(visited == 2);  // weight and bias only
    CHECK_THROWS_WITH(l.add_adapter({.r = 0}, ftune::random_stream(1, 1)),
                      Catch::Contains("give r > 0"));
}

TEST_CASE(
    "a frozen weight packed once in training gives per-call packing's values, and sees W "
    "change through a visit, a merge and a spell of training",
    "[lora]") {
    const std::size_t N = 37, In = 40, Out = 56;  // off the register tile in every direction
    layers::lora_linear<float> l(In, Out);
    test::randomize(l, 21);
    l.add_adapter({.r = 4, .alpha = 8}, ftune::random_stream(3, 0));
    randomize_b(l, 22);
    auto xs = test::randn<float>(N * In, 23), dys = test::randn<float>(N * Out, 24);
    const ftune::view<const float, shape<dynamic, dynamic>> x(xs.data(), N, In),
        dy(dys.data(), N, Out);
    // y, dx, dA and dB of one training step on ctx
    auto step = [&](bool packed) {
        ftune::context ctx{.mode = ftune::mode::train, .pack_frozen_weights = packed};
        l.zero_grad();
        auto out = copy_of(l.forward(ctx, x));
        std::vector<float> dx(N * In, 0.0f);
        l.backward(ctx, dy, {dx.data(), N, In});
        out.insert(out.end(), dx.begin(), dx.end());
        for (const auto* p : {&l.lora_A, &l.lora_B})
            out.insert(out.end(), p->grad.data(), p->grad.data() + p->grad.size());
        return out;
    };
    CHECK(step(true) == step(false));  // bit for bit
    // a visit that may change W: the packed copies follow
    l.visit_parameters("q", [](ftune::parameter_ref<float> p) {
        if (p.name == "q.weight") p.value[3] += 0.5f;
    });
    CHECK(step(true) == step(false));
    l.merge();  // W += s B A
    CHECK(step(true) == step(false));
    l.unmerge();
    l.weight.trainable = true;  // trains a while: each forward marks the packed copies stale
    const auto trained = step(true);
    l.weight.value.data()[5] -= 0.25f;  // an optimizer's write, no visit
    l.weight.trainable = false;
    const auto refrozen = step(true);
    CHECK(refrozen == step(false));
    CHECK(refrozen != trained);
}

namespace {
namespace fs = std::filesystem;
const fs::path fixtures(FTUNE_REFERENCE_DIR);

// The logits of m on the batch (ids, mask, types may be empty), copied.
template <class M>
std::vector<float> logits_of(M& m, const std::vector<ftune::token_id>& ids,
                             const std::vector<ftune::token_id>& mask,
                             const std::vector<ftune::token_id>& types, std::size_t B) {
    ftune::context ctx;
    const std::size_t T = ids.size() / B;
    return copy_of(m.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T},
                             {types.empty() ? nullptr : types.data(), B, T}));
}

// Loads PEFT's adapter `name` on the base in `base`, compares the logits with PEFT's (plain,
// prepared, merged), saves the adapter to FTUNE_ROUNDTRIP_DIR/name (for peft_lora.py
// --roundtrip) and loads that on a fresh base; returns the number of adapted modules.
template <class Model>
std::size_t check_peft_adapter(const std::string& name, const fs::path& base,
                               const std::string& key, const std::string& task,
                               const std::vector<ftune::token_id>& ids,
                               const std::vector<ftune::token_id>& mask,
                               const std::vector<ftune::token_id>& types, std::size_t B) {
    INFO(name);
    const ftune::io::safetensors_file want(fixtures / "peft" / "expected.safetensors");
    const auto expected = want.read<float>(want.at(key));
    auto m = ftune::io::load_hf<Model>(base);
    const auto base_logits = logits_of(m.model, ids, mask, types, B);
    const auto s = ftune::peft::load_adapter(m.model, fixtures / "peft" / name);
    const auto got = logits_of(m.model, ids, mask, types, B);
    CHECK(test::relative_error(got, expected) < 1e-5);
    CHECK(test::relative_error(base_logits, expected) > 1e-2);  // the adapter changes them
    m.model.prepare_inference();  // packed weights, the adapters' terms added
    CHECK(test::relative_error(logits_of(m.model, ids, mask, types, B), expected) < 1e-5);
    ftune::peft::merge_adapters(m.model);
    CHECK(test::relative_error(logits_of(m.model, ids, mask, types, B), expected) < 1e-5);
    ftune::peft::unmerge_adapters(m.model);
    const fs::path out = fs::path(FTUNE_ROUNDTRIP_DIR) / name;
    ftune::peft::save_adapter(m.model, ftune::peft::read_adapter_config(fixtures / "peft" / name),
                              out, {.task_type = task});
    auto again = ftune::io::load_hf<Model>(base);
    const auto reloaded = ftune::peft::load_adapter(again.model, out);
    CHECK(reloaded.targets == s.targets);
    CHECK(reloaded.trainable == s.trainable);  // GPT-2's block-diagonal c_attn: rank r again
    CHECK(test::relative_error(logits_of(again.model, ids, mask, types, B), expected) < 1e-5);
    return s.targets.size();
}
}  // namespace

TEST_CASE(
    "LoRA adapters made by PEFT give PEFT's logits in ftune (BERT classifier: lora_only biases, "
    "the classifier saved; Llama LM: rsLoRA, regex targets; GPT-2 LM: Conv1D, fused c_attn), "
    "prepared and merged too; saved back by ftune, they load again",
    "[parity][lora]") {
    const ftune::io::safetensors_file heads(fixtures / "hf_heads" / "expected.safetensors");
    CHECK(check_peft_adapter<ftune::bert::sequence_classifier<>>(
              "bert_seq", fixtures / "hf_heads" / "seq", "bert_logits", "SEQ_CLS",
              test::read_ids(heads, "single_input_ids"),
              test::read_ids(heads, "single_attention_mask"),
              test::read_ids(heads, "single_token_type_ids"), 3) == 2 * 3);
    const ftune::io::safetensors_file lm(fixtures / "causal_lm_loss.safetensors");
    CHECK(check_peft_adapter<ftune::llama::causal_lm<>>(
              "llama_lm", fixtures / "hf_llama" / "untied", "llama_logits", "CAUSAL_LM",
              test::read_ids(lm, "input_ids"), test::read_ids(lm, "attention_mask"), {},
              2) == 2 * 4);
    // GPT-2: Conv1D layers (fan_in_fan_out), q, k and v fused in c_attn (one A, one B of 3
    // slices) with its fused bias: ftune's q_proj, k_proj and v_proj each get A and their rows
    const ftune::io::safetensors_file g(fixtures / "hf_gpt2" / "expected.safetensors");
    CHECK(check_peft_adapter<ftune::gpt2::lm_head_model<>>(
              "gpt2_lm", fixtures / "hf_gpt2" / "tied", "gpt2_logits", "CAUSAL_LM",
              test::read_ids(g, "input_ids"), test::read_ids(g, "attention_mask"), {}, 2) == 2 * 6);
}

TEST_CASE(
    "GPT-2 with adapters on q and v only: saved as one c_attn adapter (k's block zero), loaded "
    "back with the same logits, k given an adapter of the same rank, ranks stable over saves",
    "[lora]") {
    const ftune::io::safetensors_file g(fixtures / "hf_gpt2" / "expected.safetensors");
    const auto ids = test::read_ids(g, "input_ids"), mask = test::read_ids(g, "attention_mask");
    using Model = ftune::gpt2::lm_head_model<>;
    auto m = ftune::io::load_hf<Model>(fixtures / "hf_gpt2" / "tied");
    const ftune::peft::lora_config c{.r = 2, .alpha = 4, .target_modules = {"q_proj", "v_proj"}};
    const auto s = ftune::peft::apply_lora(m.model, c);
    CHECK(s.targets.size() == 4);
    std::uint64_t seed = 40;
    m.model.visit_parameters("", ftune::layers::lora_visitor{[&](std::string_view, auto& l) {
                                 if (l.has_adapter()) randomize_b(l, seed++);
                             }});
    const auto want = logits_of(m.model, ids, mask, {}, 2);
    const fs::path dir = fs::path(FTUNE_ROUNDTRIP_DIR) / "gpt2_qv";
    ftune::peft::save_adapter(m.model, c, dir);
    std::size_t trainable = 0;
    for (int round = 0; round < 2; ++round) {  // load, save again, load again
        auto again = ftune::io::load_hf<Model>(fixtures / "hf_gpt2" / "tied");
        const auto r = ftune::peft::load_adapter(again.model, dir);
        CHECK(r.targets.size() == 6);  // k_proj too: PEFT adapts c_attn whole
        CHECK(test::relative_error(logits_of(again.model, ids, mask, {}, 2), want) < 1e-6);
        again.model.visit_parameters("",
                                     ftune::layers::lora_visitor{[&](std::string_view, auto& l) {
                                         if (l.has_adapter()) CHECK(l.rank() == 2);
                                     }});
        if (round == 0) trainable = r.trainable;
        CHECK(r.trainable == trainable);
        CHECK(trainable == s.trainable + 2 * (2 * 32 + 32 * 2));  // k's adapter in 2 layers
        ftune::peft::save_adapter(again.model, ftune::peft::read_adapter_config(dir), dir);
    }
}

TEST_CASE(
    "BERT with adapters on the FFN's projections: prepared inference (the activation applied to "
    "the intermediate product's tiles) adds the adapter's term before the activation",
    "[lora]") {
    const std::vector<ftune::token_id> ids{2, 5, 9, 14, 3, 2, 7, 11, 3, 0},  // two sequences
        mask{1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
    using Model = ftune::bert::sequence_classifier<>;
    auto m = ftune::io::load_hf<Model>(fixtures / "hf_heads" / "seq");
    const auto base = logits_of(m.model, ids, mask, {}, 2);
    ftune::peft::apply_lora(m.model,
                            {.r = 2, .alpha = 4, .target_modules = {"intermediate.dense"}});
    std::uint64_t seed = 60;
    m.model.visit_parameters("", ftune::layers::lora_visitor{[&](std::string_view, auto& l) {
                                 if (l.has_adapter()) randomize_b(l, seed++);
                             }});
    const auto want = logits_of(m.model, ids, mask, {}, 2);  // per-call products, then GELU
    CHECK(test::relative_error(want, base) > 1e-3);          // the adapters change the logits
    m.model.prepare_inference();
    CHECK(test::relative_error(logits_of(m.model, ids, mask, {}, 2), want) < 1e-6);
    ftune::peft::merge_adapters(m.model);  // W + s B A: the plain fused path
    CHECK(test::relative_error(logits_of(m.model, ids, mask, {}, 2), want) < 1e-5);
}

TEST_CASE(
    "apply_lora: targets by name suffix or regex, everything else frozen but modules_to_save "
    "and the biases `bias` names; PEFT's summary line; no match is an error",
    "[lora]") {
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(fixtures / "hf_heads" / "seq");
    const auto s = ftune::peft::apply_lora(m.model, {.r = 2,
                                                     .alpha = 4,
                                                     .target_modules = {"query", "value"},
                                                     .modules_to_save = {"classifier"},
                                                     .bias = ftune::peft::lora_bias::lora_only});
    std::size_t total = 0, trainable = 0;
    m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        INFO(p.name);
        const bool want = ftune::peft::is_adapter_parameter(p.name) ||
                          p.name.starts_with("classifier.") || p.name.ends_with("query.bias") ||
                          p.name.ends_with("value.bias");
        CHECK(p.trainable == want);
        total += p.value.size();
        trainable += want ? p.value.size() : 0;
    });
    CHECK(s.total == total);
    CHECK(s.trainable == trainable);
    CHECK(s.targets.size() == 2 * 2);  // 2 layers
    CHECK_THAT(s.text(), Catch::Matches("trainable params: [0-9,]+ \\|\\| all params: [0-9,]+ "
                                        "\\|\\| trainable%: [0-9]+\\.[0-9]{4}\n"));
    CHECK(ftune::peft::trainable_summary{{}, 98, 5140}.text() ==
          "trainable params: 98 || all params: 5,140 || trainable%: 1.9066\n");
    CHECK_THROWS_WITH(ftune::peft::apply_lora(m.model, {.target_modules = {"q_proj"}}),
                      Catch::Contains("no module of the model matches"));
    CHECK_THROWS_WITH(ftune::peft::apply_lora(m.model, {.target_regex = "("}),
                      Catch::Contains("is not a regex"));
}

TEST_CASE("parse_adapter_config: a bad adapter_config.json names the file and the field",
          "[unit][peft]") {
    using ftune::peft::parse_adapter_config;
    const std::string ok =
        R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"]})";
    CHECK(parse_adapter_config(ok, "a.json").r == 4);
    auto with = [&](const std::string& field) {  // ok with one more field
        return ok.substr(0, ok.size() - 1) + ", " + field + "}";
    };
    CHECK_THROWS_WITH(parse_adapter_config("{", "a.json"),
                      Catch::Contains("a.json: malformed JSON"));
    CHECK_THROWS_WITH(parse_adapter_config(R"({"peft_type": 3})", "a.json"),
                      Catch::Contains("a.json: peft_type"));
    CHECK_THROWS_WITH(parse_adapter_config(R"({"peft_type": "LORA", "r": 0, "lora_alpha": 8,
                                               "target_modules": "q"})",
                                           "a.json"),
                      Catch::Contains("a.json: r: 0: the rank must be at least 1"));
    for (const char* r : {"-1", "1e30", "2.5", "\"8\""})  // not a rank (no wrap, no cast)
        CHECK_THROWS_WITH(parse_adapter_config(R"({"peft_type": "LORA", "lora_alpha": 8,
                                                   "target_modules": "q", "r": )" +
                                                   std::string(r) + "}",
                                               "a.json"),
                          Catch::Contains("a.json: r"));
    CHECK_THROWS_WITH(parse_adapter_config(with(R"("lora_dropout": 1.5)"), "a.json"),
                      Catch::Contains("a.json: lora_dropout"));
    CHECK_THROWS_WITH(parse_adapter_config(with(R"("use_dora": true)"), "a.json"),
                      Catch::Contains("a.json: use_dora"));
    CHECK_THROWS_WITH(parse_adapter_config(with(R"("rank_pattern": {"q": "x"})"), "a.json"),
                      Catch::Contains("a.json: rank_pattern: \"x\": a rank is a whole number"));
    CHECK_THROWS_WITH(parse_adapter_config(with(R"("alpha_pattern": {"q": "x"})"), "a.json"),
                      Catch::Contains("a.json: a LoRA field is missing or has the wrong type"));
}

TEST_CASE(
    "BitFit trains the biases and the head, head-only the head; the frozen rest keeps no "
    "gradient after zero_grad and no optimizer state; nothing to train is an error",
    "[lora]") {
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(fixtures / "hf_heads" / "seq");
    const auto head = ftune::peft::head_modules(m.model);
    REQUIRE(head == std::vector<std::string>{"classifier"});
    auto counts = [&](auto want) {  // (total, trainable) by the rule want(name)
        std::size_t total = 0, trainable = 0;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            INFO(p.name);
            CHECK(p.trainable == want(p.name));
            total += p.value.size();
            trainable += want(p.name) ? p.value.size() : 0;
        });
        return std::pair{total, trainable};
    };
    const auto b = ftune::peft::apply_bitfit(m.model, head);
    const auto [total, biases] = counts(
        [](const std::string& n) { return n.ends_with(".bias") || n.starts_with("classifier."); });
    CHECK(b.total == total);
    CHECK(b.trainable == biases);
    CHECK(ftune::peft::summarize(m.model).trainable == biases);
    // a training step: only what trains has a gradient and optimizer state
    m.model.zero_grad();
    std::size_t kept = 0, freed = 0;
    m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        (p.trainable ? kept : freed) += p.grad.data() != nullptr;
        if (!p.trainable) CHECK(p.grad.data() == nullptr);
    });
    CHECK(kept > 0);
    ftune::optim::adamw<float> opt({.lr = 1e-3});
    auto params = ftune::optim::parameters_of(m.model);
    opt.init_state(std::span<const ftune::parameter_ref<float>>(params));
    std::size_t state = 0;
    opt.visit_state([&](const std::string&, std::span<float> v) { state += v.size(); });
    CHECK(state == 2 * biases);  // AdamW's two moments of the trainable values only
    const auto h = ftune::peft::apply_head_only(m.model, head);
    CHECK(h.trainable ==
          counts([](const std::string& n) { return n.starts_with("classifier."); }).second);
    // unfrozen again, every parameter gets its gradient storage back (zero)
    m.model.visit_parameters("", [](ftune::parameter_ref<float> p) { p.set_trainable(true); });
    m.model.zero_grad();
    m.model.visit_parameters("", [](ftune::parameter_ref<float> p) {
        INFO(p.name);
        REQUIRE(p.grad.data() != nullptr);
        CHECK(std::all_of(p.grad.begin(), p.grad.end(), [](float g) { return g == 0; }));
    });
    CHECK_THROWS_WITH(ftune::peft::apply_head_only(m.model, {"no_such_module"}),
                      Catch::Contains("no parameter of the model would train"));
}

TEST_CASE(
    "serve::adapter_classifier: tasks on one base answer as the base with each adapter loaded "
    "would; a task holds only its A, B and head; concurrent calls on two tasks agree; an "
    "adapter with trained base biases is refused",
    "[lora][serve]") {
    using Model = ftune::bert::sequence_classifier<>;
    const fs::path base = fixtures / "hf_heads" / "seq";
    const fs::path root = fs::path(FTUNE_ROUNDTRIP_DIR).parent_path() / "serve_adapters";
    // two tasks: 3 labels with adapters on query and value, 2 labels on every projection; B and
    // the head random so that each task's answers differ from the base's and each other's
    struct spec {
        std::string name;
        std::vector<std::string> labels, targets;
    };
    const std::vector<spec> specs{{"three", {"a", "b", "c"}, {"query", "value"}},
                                  {"two", {"no", "yes"}, {"query", "key", "value", "dense"}}};
    std::uint64_t seed = 1;
    for (const auto& sp : specs) {
        auto m = ftune::io::load_hf<Model>(base, {.labels = sp.labels, .seed = seed});
        const ftune::peft::lora_config c{.r = 2,
                                         .alpha = 4,
                                         .target_modules = sp.targets,
                                         .modules_to_save = {"classifier"},
                                         .seed = seed};
        ftune::peft::apply_lora(m.model, c);
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            if (!p.name.ends_with("lora_B.weight") && !p.name.starts_with("classifier.")) return;
            const auto v = test::randn<double>(p.value.size(), ++seed, 0.5);
            for (std::size_t i = 0; i < v.size(); ++i) p.value[i] = float(v[i]);
        });
        ftune::peft::save_adapter(m.model, c, root / sp.name);
    }
    const std::vector<std::string> texts{"John lives in Paris.", "Hello worlds!", "a b c d e f"};
    // expected: the base loaded with each adapter, prepared, one text at a time
    std::map<std::string, std::vector<std::vector<double>>> want;
    for (const auto& sp : specs) {
        auto m = ftune::io::load_hf<Model>(base, {.labels = sp.labels});
        ftune::peft::load_adapter(m.model, root / sp.name);
        m.model.prepare_inference();
        for (const auto& text : texts) {
            const auto e = m.tokenizer->encode(text, std::nullopt, 64);
            const std::size_t T = e.ids.size();
            ftune::context ctx;
            const auto y =
                m.model.forward(ctx, {e.ids.data(), 1, T}, {e.attention_mask.data(), 1, T},
                                {e.type_ids.data(), 1, T});
            want[sp.name].push_back(m.model.head.decode(y.data()).scores);
        }
    }
    CHECK(want["three"][0].size() == 3);
    CHECK(want["two"][0].size() == 2);

    ftune::serve::adapter_classifier<Model> srv(ftune::io::load_hf<Model>(base), 64);
    for (const auto& sp : specs) srv.add_adapter(sp.name, root / sp.name, sp.labels);
    CHECK(srv.tasks() == std::vector<std::string>{"three", "two"});
    for (const auto& sp : specs)
        for (std::size_t i = 0; i < texts.size(); ++i) {
            INFO(sp.name << ": " << texts[i]);
            const auto p = srv.predict(sp.name, texts[i]);
            REQUIRE(p.probabilities.size() == want[sp.name][i].size());
            for (std::size_t j = 0; j < p.probabilities.size(); ++j)
                CHECK(std::abs(p.probabilities[j] - want[sp.name][i][j]) < 1e-6);
            CHECK(p.name == sp.labels[p.label]);
        }
    // each task holds exactly the values its file holds (A, B, the classifier); the rest,
    // BERT's pooler included, is the base's
    const auto mem = srv.memory();
    REQUIRE(mem.tasks.size() == 2);
    std::size_t base_values = 0;
    auto m = ftune::io::load_hf<Model>(base);
    m.model.visit_parameters("",
                             [&](ftune::parameter_ref<float> p) { base_values += p.value.size(); });
    CHECK(mem.base_bytes == 4 * base_values);
    for (std::size_t k = 0; k < specs.size(); ++k) {
        const ftune::io::safetensors_file f(root / specs[k].name / "adapter_model.safetensors");
        std::size_t n = 0;
        for (const auto& t : f.tensors()) n += t.numel();
        CHECK(mem.tasks[k].second == 4 * n);
    }
    CHECK_THAT(mem.text(),
               Catch::Matches("base [0-9.]+ MB; three \\+[0-9.]+ MB; two \\+[0-9.]+ MB"));
    // 4 threads, both tasks interleaved: the same answers
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int w = 0; w < 4; ++w)
        threads.emplace_back([&, w] {
            for (int i = 0; i < 30; ++i) {
                const auto& sp = specs[std::size_t(i + w) % 2];
                const std::size_t k = std::size_t(i) % texts.size();
                const auto p = srv.predict(sp.name, texts[k]);
                for (std::size_t j = 0; j < p.probabilities.size(); ++j)
                    if (std::abs(p.probabilities[j] - want[sp.name][k][j]) >= 1e-6) ++wrong;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(wrong == 0);
    CHECK_THROWS_WITH(srv.predict("nope", "x"), Catch::Contains("no such task"));
    CHECK_THROWS_WITH(srv.add_adapter("biased", fixtures / "peft" / "bert_seq"),
                      Catch::Contains("cannot be shared"));
}
