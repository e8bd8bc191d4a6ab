// A fine-tuning run on another device (train::options::device) checked against the same run on
// the CPU: the loss of every logged step, the trained weights, the evaluation, and checkpoints
// resumed across the two devices. test_train runs it on device::reference (every machine),
// test_cuda on a GPU. Include after Catch2.
#pragma once

#include <ftune/bert/tasks.hpp>
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

/// The small BERT classifier these runs train.
using device_model = ftune::bert::sequence_classifier<>;

/// A device_model with reproducible weights around their usual scale.
inline std::unique_ptr<device_model> fresh_device_model() {
    const ftune::bert::config c{.vocab_size = 60,
                                .hidden_size = 32,
                                .num_hidden_layers = 2,
                                .num_attention_heads = 4,
                                .intermediate_size = 48,
                                .max_position_embeddings = 32,
                                .num_labels = 3};
    auto m = std::make_unique<device_model>(c);
    std::uint64_t seed = 3;
    m->visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const ftune::random_stream s(seed++, 0);
        const bool norm = p.name.find("LayerNorm") != std::string::npos;
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] =
                (norm && p.name.ends_with("weight") ? 1.0f : 0.0f) + 0.2f * (s.uniform(i) - 0.5f);
    });
    return m;
}

/// Every value of a model, in visit order.
inline std::vector<float> all_values(device_model& m) {
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

/// Trains the same model on the CPU and on `device`: the logged losses, the trained weights and
/// the evaluations agree within 1e-4 (relative; the backends sum in other orders); a run on one
/// device interrupted at step 3 and resumed on the other ends where the CPU's run did; the
/// host model is the record (updated at the end) and the trainer's evaluate() runs on the
/// device too.
inline void check_training_on_device(const std::string& device) {
    using trainer = ftune::train::trainer<device_model>;
    const auto train = marker_examples(48, 1), valid = marker_examples(16, 2);
    auto cpu = fresh_device_model(), dev = fresh_device_model();
    const auto start = all_values(*dev);
    trainer tc(*cpu, device_options("cpu")), td(*dev, device_options(device));
    const auto rc = tc.fit(train, valid), rd = td.fit(train, valid);
    REQUIRE(rd.steps == rc.steps);
    REQUIRE(td.history.size() == tc.history.size());
    for (std::size_t i = 0; i < tc.history.size(); ++i) {
        INFO("record " << i << " (step " << tc.history[i].step << ")");
        const auto &want = tc.history[i], &got = td.history[i];
        CHECK(std::abs(got.loss - want.loss) <= 1e-4 * std::max(1.0, std::abs(want.loss)));
        REQUIRE(got.metric.has_value() == want.metric.has_value());
        if (!want.metric) continue;  // an evaluation: the same accuracy, close losses
        CHECK(*got.metric == *want.metric);
        CHECK(std::abs(*got.eval_loss - *want.eval_loss) <= 1e-4 * std::max(1.0, *want.eval_loss));
    }
    CHECK(all_values(*dev) != start);  // the host model got the trained weights
    test::require_close<float>(all_values(*dev), all_values(*cpu), 1e-4,
                               "trained weights, " + device + " against the CPU");
    const auto ed = td.evaluate(valid), ec = tc.evaluate(valid);
    CHECK(std::abs(ed.loss - ec.loss) <= 1e-4 * std::max(1.0, ec.loss));
    CHECK(ed.accuracy == ec.accuracy);

    const auto dir = std::filesystem::temp_directory_path() / ("ftune_device_ckpt_" + device);
    for (const auto& [first, second] :
         {std::pair<std::string, std::string>{device, "cpu"}, {"cpu", device}}) {
        INFO(first << ", interrupted, then resumed on " << second);
        std::filesystem::remove_all(dir);
        auto m = fresh_device_model();
        auto o1 = device_options(first);
        o1.checkpoint_dir = dir, o1.checkpoint_every = 1, o1.stop_after = 3;
        trainer t1(*m, o1);
        CHECK(t1.fit(train, valid).interrupted);
        auto resumed = fresh_device_model();
        auto o2 = device_options(second);
        o2.resume_from = dir;
        trainer t2(*resumed, o2);
        CHECK(t2.fit(train, valid).steps == rc.steps);
        test::require_close<float>(all_values(*resumed), all_values(*cpu), 1e-4,
                                   "resumed across devices");
    }
    std::filesystem::remove_all(dir);
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
