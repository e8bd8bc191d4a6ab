// A fine-tuning run on another device (train::options::device) checked against the same run on
// the CPU: the loss of every logged step, the trained weights, the evaluation, and checkpoints
// resumed across the two devices; and generation there against the CPU's. test_train and
// test_generation run them on device::reference (every machine), test_cuda on a GPU. Include
// after Catch2.
#pragma once

#include <ftune/bert/tasks.hpp>
#include <ftune/generation.hpp>
#include <ftune/gpt2/tasks.hpp>
#include <ftune/llama/tasks.hpp>
#include <ftune/peft/lora.hpp>
#include <ftune/train/trainer.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "util.hpp"

namespace test {

/// A toy task for a 3-label classifier over a 60-token vocabulary: the label is the most
/// frequent of three marker tokens (ids 5, 6, 7) in a random sequence of 5 to 16 tokens.
inline std::vector<ftune::train::example> marker_examples(std::size_t n, std::uint64_t seed) {
    std::vector<ftune::train::example> xs;
    const ftune::random_stream s(seed, 0);
    std::size_t k = 0;
    for (std::size_t i = 0; i < n; ++i) {
        ftune::train::example x;
        const std::size_t len = 5 + s.below(k++, 12);
        std::size_t count[3] = {0, 0, 0};
        x.ids.push_back(1);  // [CLS]
        for (std::size_t t = 0; t < len; ++t) {
            const auto id = ftune::token_id(5 + s.below(k++, 55));
            if (id < 8) ++count[id - 5];
            x.ids.push_back(id);
        }
        x.ids.push_back(2);  // [SEP]
        x.types.assign(x.ids.size(), 0);
        x.labels = {ftune::token_id(std::max_element(count, count + 3) - count)};
        xs.push_back(std::move(x));
    }
    return xs;
}

/// A toy language: sequences of 6 to 16 tokens of a 40-token vocabulary, each next token the
/// previous plus 3 (mod 37, ids 3 to 39) with 1 in 5 drawn at random; the labels are the ids
/// (a causal LM's) with the first `prompt` positions -100 (no loss).
inline std::vector<ftune::train::example> lm_examples(std::size_t n, std::uint64_t seed,
                                                      std::size_t prompt = 2) {
    std::vector<ftune::train::example> xs;
    const ftune::random_stream s(seed, 0);
    std::size_t k = 0;
    for (std::size_t i = 0; i < n; ++i) {
        ftune::train::example x;
        const std::size_t len = 6 + s.below(k++, 11);
        auto id = ftune::token_id(3 + s.below(k++, 37));
        for (std::size_t t = 0; t < len; ++t) {
            x.ids.push_back(id);
            id = s.below(k++, 5) == 0 ? ftune::token_id(3 + s.below(k++, 37))
                                      : ftune::token_id(3 + (id - 3 + 3) % 37);
        }
        x.types.assign(x.ids.size(), 0);
        x.labels = x.ids;
        for (std::size_t t = 0; t < prompt && t < len; ++t) x.labels[t] = -100;
        xs.push_back(std::move(x));
    }
    return xs;
}

/// The small BERT classifier these runs train first.
using device_model = ftune::bert::sequence_classifier<>;

/// Gives m reproducible weights around their usual scale (norm weights near 1).
template <class Model>
void init_device_model(Model& m) {
    std::uint64_t seed = 3;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const ftune::random_stream s(seed++, 0);
        const bool norm = p.name.find("LayerNorm") != std::string::npos ||
                          p.name.find("layernorm") != std::string::npos ||
                          p.name.find("norm.") != std::string::npos ||
                          p.name.find("ln_") != std::string::npos;
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] =
                (norm && p.name.ends_with("weight") ? 1.0f : 0.0f) + 0.2f * (s.uniform(i) - 0.5f);
    });
}

/// A device_model (BERT, 3 labels, 60 tokens) with init_device_model's weights.
inline std::unique_ptr<device_model> fresh_device_model() {
    const ftune::bert::config c{.vocab_size = 60,
                                .hidden_size = 32,
                                .num_hidden_layers = 2,
                                .num_attention_heads = 4,
                                .intermediate_size = 48,
                                .max_position_embeddings = 32,
                                .num_labels = 3};
    auto m = std::make_unique<device_model>(c);
    init_device_model(*m);
    return m;
}

/// A small Llama (grouped-query attention, 60 tokens, 3 labels for a classifier; tied or not)
/// of type Model with init_device_model's weights.
template <class Model>
std::unique_ptr<Model> fresh_llama(bool tied = false) {
    ftune::llama::config c;
    c.vocab_size = 60, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 32;
    c.tie_word_embeddings = tied, c.pad_token_id = 0, c.num_labels = 3;
    auto m = std::make_unique<Model>(c);
    init_device_model(*m);
    return m;
}

/// A small GPT-2 of type Model (tied LM head, dropout on, 3 labels for a classifier) with
/// init_device_model's weights.
template <class Model>
std::unique_ptr<Model> fresh_gpt2() {
    ftune::gpt2::config c;
    c.vocab_size = 60, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.max_position_embeddings = 32, c.pad_token_id = 0, c.num_labels = 3;
    auto m = std::make_unique<Model>(c);
    init_device_model(*m);
    return m;
}

/// A small BERT masked LM (60 tokens) with init_device_model's weights.
inline std::unique_ptr<ftune::bert::masked_lm<>> fresh_bert_mlm() {
    const ftune::bert::config c{.vocab_size = 60,
                                .hidden_size = 32,
                                .num_hidden_layers = 2,
                                .num_attention_heads = 4,
                                .intermediate_size = 48,
                                .max_position_embeddings = 32};
    auto m = std::make_unique<ftune::bert::masked_lm<>>(c);
    init_device_model(*m);
    return m;
}

/// Every value of a model, in visit order.
template <class Model>
std::vector<float> all_values(Model& m) {
    std::vector<float> v;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        v.insert(v.end(), p.value.begin(), p.value.end());
    });
    return v;
}

/// The options of these runs on `device` (dropout on, AdamW with decay, warmup, clipping).
inline ftune::train::options device_options(const std::string& device) {
    return {.epochs = 2,
            .batch_size = 8,
            .lr = 1e-3,
            .weight_decay = 0.01,
            .warmup_ratio = 0.1,
            .seed = 7,
            .progress = nullptr,
            .device = ftune::device_spec::parse(device)};
}

/// |got - want| <= 1e-4 max(1, |want|).
inline bool close_1e4(double got, double want) {
    return std::abs(got - want) <= 1e-4 * std::max(1.0, std::abs(want));
}

/// Trains models made by make() on the CPU and on `device` (the trainer set up by setup, e.g.
/// its masking): the logged losses, the evaluation records, the trained weights and the
/// trainer's evaluate() (run on the device) agree within 1e-4 (relative; the backends sum in
/// other orders); with `resume`, a run on one device interrupted at step 3 and resumed on the
/// other ends where the CPU's run did, both ways. The host model is the record (updated at the
/// end).
template <class Make, class Setup>
void check_run_on_device(const std::string& device, const std::string& what, Make make,
                         const std::vector<ftune::train::example>& train,
                         const std::vector<ftune::train::example>& valid, bool resume,
                         Setup setup) {
    using Model = typename decltype(make())::element_type;
    using trainer = ftune::train::trainer<Model>;
    INFO(what << " on " << device);
    auto cpu = make(), dev = make();
    const auto start = all_values(*dev);
    trainer tc(*cpu, device_options("cpu")), td(*dev, device_options(device));
    setup(tc), setup(td);
    const auto rc = tc.fit(train, valid), rd = td.fit(train, valid);
    REQUIRE(rd.steps == rc.steps);
    REQUIRE(td.history.size() == tc.history.size());
    for (std::size_t i = 0; i < tc.history.size(); ++i) {
        INFO("record " << i << " (step " << tc.history[i].step << ")");
        const auto &want = tc.history[i], &got = td.history[i];
        CHECK(close_1e4(got.loss, want.loss));
        REQUIRE(got.metric.has_value() == want.metric.has_value());
        if (!want.metric) continue;  // an evaluation: close metrics and losses
        CHECK(close_1e4(*got.metric, *want.metric));
        CHECK(close_1e4(*got.eval_loss, *want.eval_loss));
    }
    CHECK(all_values(*dev) != start);  // the host model got the trained weights
    test::require_close<float>(all_values(*dev), all_values(*cpu), 1e-4,
                               "trained weights, " + device + " against the CPU");
    const auto ed = td.evaluate(valid), ec = tc.evaluate(valid);
    CHECK(close_1e4(ed.loss, ec.loss));
    CHECK(ed.accuracy == ec.accuracy);
    if (!resume) return;

    const auto dir = std::filesystem::temp_directory_path() / ("ftune_device_ckpt_" + device);
    for (const auto& [first, second] :
         {std::pair<std::string, std::string>{device, "cpu"}, {"cpu", device}}) {
        INFO(first << ", interrupted, then resumed on " << second);
        std::filesystem::remove_all(dir);
        auto m = make();
        auto o1 = device_options(first);
        o1.checkpoint_dir = dir, o1.checkpoint_every = 1, o1.stop_after = 3;
        trainer t1(*m, o1);
        setup(t1);
        CHECK(t1.fit(train, valid).interrupted);
        auto resumed = make();
        auto o2 = device_options(second);
        o2.resume_from = dir;
        trainer t2(*resumed, o2);
        setup(t2);
        CHECK(t2.fit(train, valid).steps == rc.steps);
        test::require_close<float>(all_values(*resumed), all_values(*cpu), 1e-4,
                                   "resumed across devices");
    }
    std::filesystem::remove_all(dir);
}

/// A causal LM's twin takes its loss from the hidden states on its own device (labels up, the
/// loss back), not through (B, T, V) logits copied to the host.
using reference_lm = ftune::on_device_t<ftune::llama::causal_lm<>, ftune::device::reference>;
static_assert(requires(reference_lm & m, ftune::context& c, reference_lm::ids_view v,
                       const ftune::train::batch& b) { m.loss_backward(c, v, v, v, b, 1.0f); });

/// check_run_on_device for every head with a device form: the BERT classifier (with resumes
/// across devices), a Llama causal LM (untied, with resumes; then tied), a Llama and a GPT-2
/// sequence classifier (last token), a GPT-2 causal LM (tied, dropout on everywhere), a BERT
/// masked LM (its masking drawn per batch on the host), and LoRA adapters on the BERT classifier
/// (with dropout, resumed across devices) and on the Llama causal LM.
inline void check_training_on_device(const std::string& device) {
    const auto none = [](auto&) {};
    check_run_on_device(device, "BERT sequence classifier", fresh_device_model,
                        marker_examples(48, 1), marker_examples(16, 2), true, none);
    const auto lm_train = lm_examples(32, 3), lm_valid = lm_examples(12, 4);
    check_run_on_device(
        device, "Llama causal LM (untied)",
        [] { return fresh_llama<ftune::llama::causal_lm<>>(false); }, lm_train, lm_valid, true,
        none);
    check_run_on_device(
        device, "Llama causal LM (tied)",
        [] { return fresh_llama<ftune::llama::causal_lm<>>(true); }, lm_train, lm_valid, false,
        none);
    check_run_on_device(
        device, "Llama sequence classifier",
        [] { return fresh_llama<ftune::llama::sequence_classifier<>>(); }, marker_examples(32, 5),
        marker_examples(12, 6), false, none);
    check_run_on_device(
        device, "GPT-2 causal LM", [] { return fresh_gpt2<ftune::gpt2::lm_head_model<>>(); },
        lm_train, lm_valid, false, none);
    check_run_on_device(
        device, "GPT-2 sequence classifier",
        [] { return fresh_gpt2<ftune::gpt2::sequence_classifier<>>(); }, marker_examples(32, 5),
        marker_examples(12, 6), false, none);
    auto mlm_setup = [](auto& t) {
        t.masking.mask_id = 4, t.masking.vocab_size = 60, t.masking.special = {0, 1, 2};
    };
    check_run_on_device(device, "BERT masked LM", fresh_bert_mlm, lm_examples(32, 7, 0),
                        lm_examples(12, 8, 0), false, mlm_setup);
    // LoRA: the adapters (with their dropout) and the modules to save train on the device, the
    // base stays frozen there too; resumed across devices
    check_run_on_device(
        device, "BERT classifier with LoRA",
        [] {
            auto m = fresh_device_model();
            ftune::peft::apply_lora(*m, {.r = 4,
                                         .alpha = 8,
                                         .dropout = 0.1,
                                         .target_modules = {"query", "value"},
                                         .modules_to_save = {"classifier"},
                                         .seed = 5});
            return m;
        },
        marker_examples(48, 1), marker_examples(16, 2), true, none);
    check_run_on_device(
        device, "Llama causal LM with LoRA",
        [] {
            auto m = fresh_llama<ftune::llama::causal_lm<>>(false);
            ftune::peft::apply_lora(*m,
                                    {.r = 4, .alpha = 8, .target_modules = {"q_proj", "v_proj"}});
            return m;
        },
        lm_train, lm_valid, false, none);
}

/// Mixed precision on `device` (bf16 products, fp32 master weights and sums): the BERT classifier
/// and the Llama causal LM trained there in bf16 follow the CPU's fp32 run within bf16's
/// tolerance (the loss of every step and the evaluation losses within 2e-3 relative, the trained
/// weights within 1e-2 of values about 0.1; on the reference backend the largest loss
/// differences were 1.1e-4 and 2.1e-4, weights 3.4e-3 apart), and the bf16 run differs from the
/// device's own fp32 run (the bf16 products ran).
inline void check_bf16_training_on_device(const std::string& device) {
    auto run = [&](auto make, const auto& train, const auto& valid, const char* what) {
        using Model = typename decltype(make())::element_type;
        INFO(what << " in bf16 on " << device);
        auto cpu = make(), d32 = make(), d16 = make();
        auto o32 = device_options("cpu"), o16 = device_options(device);
        o32.log_every = o16.log_every = 1;
        o16.precision = ftune::precision::bf16;
        auto od = o32;
        od.device = o16.device;
        ftune::train::trainer<Model> tc(*cpu, o32), t32(*d32, od), t16(*d16, o16);
        tc.fit(train, valid), t32.fit(train, valid), t16.fit(train, valid);
        REQUIRE(t16.history.size() == tc.history.size());
        double worst = 0;
        auto compare = [&](double got, double want) {
            worst = std::max(worst, std::abs(got - want) / std::max(1.0, std::abs(want)));
        };
        for (std::size_t i = 0; i < tc.history.size(); ++i) {
            compare(t16.history[i].loss, tc.history[i].loss);
            if (tc.history[i].eval_loss)
                compare(*t16.history[i].eval_loss, *tc.history[i].eval_loss);
        }
        INFO(tc.history.size() << " records; largest relative loss difference " << worst);
        CHECK(worst <= 2e-3);
        test::require_close<float>(all_values(*d16), all_values(*cpu), 1e-2,
                                   "bf16 weights against fp32");
        CHECK(all_values(*d16) != all_values(*d32));
    };
    run(fresh_device_model, marker_examples(48, 1), marker_examples(16, 2), "BERT classifier");
    run([] { return fresh_llama<ftune::llama::causal_lm<>>(false); }, lm_examples(32, 3),
        lm_examples(12, 4), "Llama causal LM");
}

/// Generation on device D (generation::generator over the model's twin, its weights copied
/// from the host model): a left-padded batch of three prompts, greedy and sampled, prefilled in
/// one pass and in passes of 2 positions, gives the host model's tokens, for the Llama causal
/// LM (untied and tied) and GPT-2's LM (learned positions).
template <class D>
void check_generation_on_device() {
    auto run = [](auto make, const char* what) {
        auto host = make();
        using Model = typename decltype(host)::element_type;
        using Twin = ftune::on_device_t<Model, D>;
        INFO(what << " generating on " << D::name);
        Twin twin(host->config());
        ftune::copy_parameters(*host, twin, ftune::parameter_copy::values_to_twin, "test twin");
        ftune::generation::generator<Model> on_host(*host);
        ftune::generation::generator<Twin> on_device(twin);
        const std::vector<std::vector<ftune::token_id>> prompts{
            {5, 9, 13, 17, 21}, {30, 33}, {7, 11, 40, 3}};
        for (const double temperature : {0.0, 0.9})
            for (const std::size_t prefill : {std::size_t(0), std::size_t(6)}) {
                INFO("temperature " << temperature << ", prefill passes of " << prefill);
                const ftune::generation::options o{.max_new_tokens = 9,
                                                   .temperature = temperature,
                                                   .seed = 3,
                                                   .prefill_tokens = prefill};
                const auto want = on_host.generate(prompts, o),
                           got = on_device.generate(prompts, o);
                REQUIRE(got.size() == want.size());
                for (std::size_t b = 0; b < want.size(); ++b) {
                    CHECK(want[b].tokens.size() == 9);
                    CHECK(got[b].tokens == want[b].tokens);
                }
            }
    };
    run([] { return fresh_llama<ftune::llama::causal_lm<>>(false); }, "Llama causal LM (untied)");
    run([] { return fresh_llama<ftune::llama::causal_lm<>>(true); }, "Llama causal LM (tied)");
    run([] { return fresh_gpt2<ftune::gpt2::lm_head_model<>>(); }, "GPT-2 LM");
}

/// A run on `device` fails before its first step with an ftune::error whose text holds `says`.
inline void check_device_error(const std::string& device, const std::string& says) {
    auto m = fresh_device_model();
    const auto before = all_values(*m);
    ftune::train::trainer<device_model> t(*m, device_options(device));
    std::string message;
    try {
        t.fit(marker_examples(8, 1), {});
    } catch (const ftune::error& e) {
        message = e.what();
    }
    INFO(message);
    CHECK(message.find(says) != std::string::npos);
    CHECK(all_values(*m) == before);
}

}  // namespace test
