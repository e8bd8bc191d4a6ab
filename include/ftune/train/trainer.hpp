// The fine-tuning loop: a task model, a loss chosen by the task, AdamW with Hugging Face's
// parameter groups, a schedule, gradient clipping and accumulation, freezing, periodic
// evaluation with early stopping that restores the best weights, progress on a terminal or as
// plain lines, a JSON-lines log and an SVG plot of the curves.
//
//   train::trainer<bert::sequence_classifier<>> t(model, {.epochs = 3, .lr = 2e-5});
//   auto result = t.fit(train_examples, valid_examples);
//   auto scores = t.evaluate(test_examples);
#pragma once

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/io/safetensors.hpp"
#include "ftune/loss.hpp"
#include "ftune/bert/tasks.hpp"
#include "ftune/optim.hpp"
#include "ftune/train/batching.hpp"
#include "ftune/train/callbacks.hpp"
#include "ftune/train/evaluation.hpp"
#include "ftune/metrics/scores.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// Which parameters stay fixed during training.
struct freeze {
    enum class kind { none, embeddings, layers, encoder } what = kind::none;  ///< the choice
    std::size_t layers = 0;  ///< kind::layers: the embeddings and the lowest `layers` layers

    /// "none", "embeddings", "layers:N" or "encoder" (everything but the head).
    static freeze parse(const std::string& s) {
        if (s == "none") return {};
        if (s == "embeddings") return {kind::embeddings, 0};
        if (s == "encoder") return {kind::encoder, 0};
        if (s.starts_with("layers:")) {
            std::size_t n = 0, pos = 0;
            try {
                n = std::stoul(s.substr(7), &pos);
            } catch (const std::exception&) {
                pos = 0;
            }
            if (pos + 7 == s.size() && pos > 0) return {kind::layers, n};
        }
        throw error(errc::invalid_argument, "--freeze " + s,
                    "expected none, embeddings, layers:N or encoder");
    }
};

/// Sets trainable = false on the parameters f freezes (true on the others); returns how many
/// values stay fixed. They are found by the model's structure, so this holds for every family:
/// the backbone's input layer (embeddings), its lowest `layers` blocks (layers:N, with the input
/// layer), or the whole backbone with everything named under its base_model_prefix, such as
/// BERT's pooler (encoder: all but the head).
template <class Model>
std::size_t apply_freeze(Model& model, const freeze& f) {
    using T = typename Model::value_type;
    using kind = freeze::kind;
    std::vector<const T*> fixed;  // the values of the parameters to freeze
    const auto collect = [&](parameter_ref<T> p) { fixed.push_back(p.value.data()); };
    auto& b = model.backbone;
    if (f.what == kind::embeddings || f.what == kind::layers)
        b.embeddings.visit_parameters("", collect);
    if (f.what == kind::layers)
        for (std::size_t i = 0; i < std::min(f.layers, b.layer.size()); ++i)
            b.layer[i].visit_parameters("", collect);
    if (f.what == kind::encoder) b.visit_parameters("", collect);
    const std::string base = std::string(Model::backbone_type::base_model_prefix) + ".";
    std::size_t n = 0;
    model.visit_parameters("", [&](parameter_ref<T> p) {
        const bool frozen = std::find(fixed.begin(), fixed.end(), p.value.data()) != fixed.end() ||
                            (f.what == kind::encoder && p.name.starts_with(base));
        p.set_trainable(!frozen);
        if (frozen) n += p.value.size();
    });
    return n;
}

/// Hyper-parameters of a fine-tuning run (defaults: Hugging Face's Trainer, except where noted).
struct options {
    std::size_t epochs = 3;       ///< passes over the training data
    std::size_t batch_size = 16;  ///< examples per optimizer step (before accumulation): 16
                                  ///< rather than Hugging Face's 8, the usual BERT fine-tuning
                                  ///< setting (Devlin et al.) and twice the GEMM efficiency on CPU
    double lr = 5e-5;             ///< peak learning rate
    double weight_decay = 0.0;    ///< AdamW decoupled decay (not biases/LayerNorm)
    double warmup_ratio = 0.0;    ///< fraction of the steps spent warming up
    std::string schedule = "linear";      ///< linear, cosine, constant or polynomial
    double max_grad_norm = 1.0;           ///< global-norm clipping (0: off)
    double label_smoothing = 0.0;         ///< classify / ner: cross-entropy label smoothing
    std::vector<double> class_weights{};  ///< classify / ner: weight per label (empty: all 1)
    std::size_t grad_accum = 1;           ///< batches per optimizer step
    std::uint64_t seed = 42;              ///< shuffling, dropout, new heads
    std::size_t eval_every = 0;           ///< evaluate every N optimizer steps (0: each epoch)
    std::size_t patience = 0;             ///< early stopping: evaluations without improvement
    double min_delta = 0.0;               ///< early stopping: the smallest improvement
    bool bucket_by_length = true;         ///< length-bucketed batches (less padding)
    bool pack_frozen_weights = true;  ///< frozen weights packed once (faster, more memory; context)
    /// Matrix products in fp32, or in bf16 with fp32 sums (mixed precision: weights, gradients
    /// and optimizer state stay fp32; needs AVX512-BF16, checked at the start). Evaluation runs
    /// in it too.
    ftune::precision precision = ftune::precision::fp32;
    std::size_t log_every = 50;              ///< progress records every N steps (0: last only)
    std::ostream* progress = &std::cerr;     ///< where progress goes (nullptr: nowhere)
    std::filesystem::path log_path{};        ///< JSON-lines log ("": none)
    std::filesystem::path checkpoint_dir{};  ///< where checkpoints go ("": none)
    std::size_t checkpoint_every = 0;        ///< steps between checkpoints (0: each epoch's end)
    std::filesystem::path resume_from{};     ///< a checkpoint directory to continue from
    std::size_t stop_after = 0;  ///< end after this many steps, as an interruption would (0: no;
                                 ///< reaching the run's last step ends it normally)
};

/// Trains a task model (task_model<Backbone, Head>) on encoded examples. The head decides the
/// loss, the evaluation report and the selection metric (a sequence classifier by its problem
/// type: single-label, multi-label or regression). fit() is the core loop: batches, gradient
/// accumulation, clipping, the optimizer and schedule objects, evaluations, the best weights and
/// checkpoints; when to log, evaluate, save and stop, and what is shown or written, are
/// callbacks (train/callbacks.hpp): those options asks for, then `callbacks`.
template <class Model>
class trainer {
  public:
    using T = typename Model::value_type;    ///< scalar type
    using Head = typename Model::head_type;  ///< the task head (loss, report)
    Model& model;                            ///< the model trained in place
    train::options options;                  ///< hyper-parameters
    std::vector<record> history;             ///< training and evaluation records
    std::vector<std::string> label_names;    ///< label names (the NER report's tags)
    mlm_masking masking;  ///< mlm: how batches are masked (set mask_id and special from the
                          ///< tokenizer: mlm_masking_for)
    /// The optimizer fit() runs (unset: AdamW with options.lr and options.weight_decay).
    std::optional<optim::any_optimizer<T>> optimizer;
    /// The learning-rate schedule fit() runs (unset: options.schedule with options.lr and
    /// options.warmup_ratio over the run's steps, total_steps()).
    std::optional<schedule::any_schedule> lr_schedule;
    /// Callbacks run after the built-in ones options asks for (flow, early stopping, progress,
    /// JSON-lines log).
    std::vector<std::unique_ptr<callback>> callbacks;

    /// A trainer of `m`.
    trainer(Model& m, train::options o, std::vector<std::string> labels = {})
        : model(m), options(std::move(o)), label_names(std::move(labels)) {
        static_assert(
            requires(Head & h, typename Model::output_view y, const batch& b) {
                h.loss(y, b, static_cast<T*>(nullptr), T(1));
            },
            "ftune: train::trainer needs a head with a task (a loss): not the base model");
        // the training loss only (evaluation reports the plain loss)
        model.head.set_loss_options(
            {.label_smoothing = options.label_smoothing, .class_weights = options.class_weights});
    }

    /// The result of fit.
    struct result {
        double best_metric = std::numeric_limits<double>::quiet_NaN();  ///< best validation metric
        std::size_t best_step = 0;   ///< the step that reached it
        std::size_t steps = 0;       ///< optimizer steps taken
        bool stopped_early = false;  ///< whether early stopping ended the run
        bool interrupted = false;    ///< options.stop_after ended it before its last step: as a
                                     ///< kill would (best weights not restored; resume from the
                                     ///< last checkpoint)
        double seconds = 0;          ///< wall time
    };

    /// Optimizer steps per epoch for `examples` training examples (batches, then accumulation).
    std::size_t steps_per_epoch(std::size_t examples) const {
        const std::size_t batches = (examples + options.batch_size - 1) / options.batch_size;
        return (batches + options.grad_accum - 1) / options.grad_accum;
    }
    /// Optimizer steps of a run over `examples` training examples.
    std::size_t total_steps(std::size_t examples) const {
        return steps_per_epoch(examples) * options.epochs;
    }

    /// Trains on `train_set`, evaluating on `valid` (may be empty) every options.eval_every steps
    /// or each epoch; with patience, stops early and restores the best weights.
    result fit(const std::vector<example>& train_set, const std::vector<example>& valid) {
        if (train_set.empty()) throw error(errc::invalid_argument, "fit", "no training examples");
        const auto t0 = std::chrono::steady_clock::now();
        auto params = optim::parameters_of(model);
        optim::any_optimizer<T> opt =
            optimizer
                ? std::move(*optimizer)
                : optim::any_optimizer<T>(  // AdamW alone: make_optimizer would compile SGD too
                      optim::adamw<T>({.lr = options.lr, .weight_decay = options.weight_decay}),
                      "adamw");
        optimizer.reset();  // moved into the run (set it again for another fit)
        const std::size_t batches_per_epoch =
            (train_set.size() + options.batch_size - 1) / options.batch_size;
        state s;
        s.steps_per_epoch = steps_per_epoch(train_set.size());
        s.total_steps = total_steps(train_set.size());
        s.epochs = options.epochs;
        s.metric_name = metric_name();
        const schedule::any_schedule sched =
            lr_schedule
                ? *lr_schedule
                : schedule::make(options.schedule, options.lr,
                                 schedule::warmup_steps(options.warmup_ratio, s.total_steps),
                                 s.total_steps);
        auto cbs = built_in_callbacks();
        for (auto& c : callbacks) cbs.push_back(c.get());
        context ctx{.mode = mode::train,
                    .rng = generator(options.seed),
                    .pack_frozen_weights = options.pack_frozen_weights,
                    .precision = options.precision};
        ops::require(options.precision, "trainer (precision bf16)");
        std::vector<T> best_values;
        std::size_t batch_in_step = 0, since = 0, first_epoch = 0, first_batch = 0;
        double loss_sum = 0;
        const mlm_masking masks = mlm_masks();
        model.zero_grad();
        const nlohmann::json setup = {{"examples", train_set.size()},
                                      {"batch_size", options.batch_size},
                                      {"grad_accum", options.grad_accum},
                                      {"epochs", options.epochs},
                                      {"seed", options.seed},
                                      {"lr", options.lr},
                                      {"optimizer", opt.name()},
                                      {"schedule", sched.name()},
                                      {"precision", to_string(options.precision)}};
        if (!options.resume_from.empty()) {  // model, optimizer, schedule, RNG, data position
            const nlohmann::json st =
                load_checkpoint(options.resume_from, setup, params, opt, best_values);
            s.step = st.at("step").get<std::size_t>();
            first_epoch = st.at("epoch").get<std::size_t>();
            first_batch = st.at("next_batch").get<std::size_t>();
            ctx.rng.set_position(st.at("rng_position").get<std::uint64_t>());
            s.best_step = st.at("best_step").get<std::size_t>();
            if (!st.at("best_metric").is_null()) s.best_metric = st.at("best_metric").get<double>();
            for (auto* c : cbs)
                if (const auto n = c->name(); !n.empty() && st.at("callbacks").contains(n))
                    c->load_state(st["callbacks"][n]);
            s.resumed = s.step, s.resumed_from = options.resume_from;
        }
        auto checkpoint = [&](std::size_t epoch, std::size_t next_batch) {
            if (options.checkpoint_dir.empty()) return;
            nlohmann::json st = {{"step", s.step},
                                 {"epoch", epoch},
                                 {"next_batch", next_batch},
                                 {"rng_position", ctx.rng.position()},
                                 {"best_step", s.best_step},
                                 {"setup", setup},
                                 {"callbacks", nlohmann::json::object()}};
            st["best_metric"] =
                std::isnan(s.best_metric) ? nlohmann::json(nullptr) : nlohmann::json(s.best_metric);
            for (const auto* c : cbs)
                if (const auto n = c->name(); !n.empty()) st["callbacks"][n] = c->save_state();
            save_checkpoint(options.checkpoint_dir, st, opt, best_values);
        };
        // an evaluation on valid: the best metric and weights, a record, the callbacks (which
        // may stop the run)
        auto evaluate_now = [&](control& c) {
            if (valid.empty()) return;
            const auto e = evaluate(valid);
            if (std::isnan(s.best_metric) || e.metric > s.best_metric + options.min_delta) {
                s.best_metric = e.metric, s.best_step = s.step;
                if (options.patience) best_values = snapshot();
            }
            history.push_back({s.step, double(s.step) / double(s.steps_per_epoch), 0,
                               sched.lr_at(s.step ? s.step - 1 : 0), e.metric, e.loss});
            for (auto* cb : cbs) cb->on_evaluate(s, e, c);
            s.stopped_early |= c.should_stop;
        };
        for (auto* c : cbs) c->on_train_begin(s);
        for (std::size_t epoch = first_epoch; epoch < options.epochs && !s.stopped_early; ++epoch) {
            s.epoch = epoch;
            const auto order = batch_order(train_set, options.batch_size, true,
                                           options.bucket_by_length, options.seed, epoch);
            for (std::size_t bi = epoch == first_epoch ? first_batch : 0; bi < order.size(); ++bi) {
                collate_into(batch_, train_set, order[bi], pad_id(), Head::labels_per_token);
                if constexpr (Head::masked_inputs)  // new masks each epoch
                    masks.apply(batch_, random_stream(options.seed ^ 0x6d6c6dULL,
                                                      epoch * batches_per_epoch + bi));
                // where a divergence stops the run (checkpoints written before it are kept)
                auto at = [&] {
                    return ftune::detail::cat("training step ", s.step + 1, " (epoch ", epoch + 1,
                                              ", batch ", bi + 1, ")");
                };
                const double l = train_batch(ctx, batch_);
                if (!std::isfinite(l))
                    throw error(errc::invalid_argument, at(),
                                "the loss is not finite (diverged: lower the learning rate; "
                                "checkpoints written before this step are kept)");
                loss_sum += l;
                s.examples_seen += batch_.B, ++since;
                if (++batch_in_step < options.grad_accum && bi + 1 < order.size()) continue;
                batch_in_step = 0;
                // one optimizer step: clip, rate from the schedule, optimizer, clear
                if (options.max_grad_norm > 0) try {
                        optim::clip_grad_norm(std::span<const parameter_ref<T>>(params),
                                              options.max_grad_norm);
                    } catch (const error& e) {  // a non-finite gradient: say which step
                        throw error(e.id(), at() + " " + e.context(), e.message());
                    }
                s.lr = sched.lr_at(s.step);
                opt.set_lr(s.lr);
                opt.step(std::span<const parameter_ref<T>>(params));
                model.zero_grad();
                ++s.step;
                s.seconds = seconds_since(t0);
                s.loss = loss_sum / double(since);  // mean since the last record
                control c;
                for (auto* cb : cbs) cb->on_step_end(s, c);
                if (c.should_log) {
                    history.push_back(
                        {s.step, double(s.step) / double(s.steps_per_epoch), s.loss, s.lr, {}, {}});
                    for (auto* cb : cbs) cb->on_log(s, history.back());
                    loss_sum = 0, since = 0;
                }
                if (c.should_evaluate) evaluate_now(c);
                if (s.stopped_early) break;
                if (c.should_save && bi + 1 < order.size()) checkpoint(epoch, bi + 1);
                if (c.should_stop) {
                    s.interrupted = true;
                    break;
                }
            }
            if (s.interrupted) break;
            control c;
            if (!s.stopped_early) {
                for (auto* cb : cbs) cb->on_epoch_end(s, c);
                if (c.should_evaluate) evaluate_now(c);
            }
            if (!s.stopped_early && c.should_save) checkpoint(epoch + 1, 0);
        }
        if (!s.interrupted && !best_values.empty()) restore(best_values);
        s.seconds = seconds_since(t0);
        for (auto* c : cbs) c->on_train_end(s);
        return {s.best_metric, s.best_step, s.step, s.stopped_early, s.interrupted, s.seconds};
    }

    /// Loss and scores on examples (eval mode, batches by length), as the head reports them.
    evaluation evaluate(const std::vector<example>& xs) {
        evaluation e;
        context ctx;  // eval mode
        ctx.precision = options.precision;
        const auto order = batch_order(xs, options.batch_size, false, true, 0, 0);
        std::uint64_t eval_batch = 0;
        const mlm_masking masks = mlm_masks();
        for (const auto& idx : order) {
            batch b = collate(xs, idx, pad_id(), Head::labels_per_token);
            if constexpr (Head::masked_inputs)  // the same masks every time
                masks.apply(b, random_stream(0x6576616cULL, ++eval_batch));
            model.head.score(forward(ctx, b), b, e, label_names);
        }
        model.head.finish(e);
        return e;
    }

    /// The name of the selection metric (the head's).
    std::string metric_name() const { return model.head.metric_name(); }

    /// Writes an SVG plot of the training loss and the validation metric against the step
    /// (write_curve_svg of the history).
    void write_plot(const std::filesystem::path& path) const {
        write_curve_svg(history, metric_name(), path);
    }

  private:
    static double seconds_since(std::chrono::steady_clock::time_point t0) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    // the callbacks options asks for, owned by this run: flow, early stopping, progress, log
    std::vector<callback*> built_in_callbacks() {
        own_.clear();
        own_.push_back(std::make_unique<flow>(options.log_every, options.eval_every,
                                              options.checkpoint_every, options.stop_after));
        if (options.patience)
            own_.push_back(std::make_unique<early_stopping>(options.patience, options.min_delta));
        if (options.progress)
            own_.push_back(std::make_unique<progress>(*options.progress, options.log_every));
        if (!options.log_path.empty())
            own_.push_back(std::make_unique<jsonl_log>(options.log_path));
        std::vector<callback*> v;
        for (auto& c : own_) v.push_back(c.get());
        return v;
    }
    // masking, with random replacements inside both the tokenizer's and the model's vocabulary
    mlm_masking mlm_masks() const {
        mlm_masking m = masking;
        if constexpr (requires { model.head.vocab_size(); })
            m.vocab_size = std::min(m.vocab_size, model.head.vocab_size());
        return m;
    }
    token_id pad_id() const { return model.backbone.pad_token_id(); }

    auto forward(context& ctx, const batch& b) {
        return model.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T},
                             {b.types.data(), b.B, b.T});
    }

    // forward, loss and backward of one batch (gradients accumulate); returns the batch loss
    // (a head that takes its loss from the hidden states: without its outputs, Model's
    // loss_backward)
    double train_batch(context& ctx, const batch& b) {
        const T scale = T(1.0 / double(options.grad_accum));
        double l = 0;
        if constexpr (requires { model.loss_backward(ctx, b, scale); }) {
            l = model.loss_backward(ctx, b, scale);
        } else {
            const auto y = forward(ctx, b);
            d_.assign(y.size(), T(0));
            l = model.head.loss(y, b, d_.data(), scale);
            model.backward(ctx, typename Model::output_view(d_.data(), y.shape()));
        }
        return l;  // (the caller stops on a non-finite loss, naming the step)
    }

    // Writes a checkpoint directory atomically (io::write_directory_atomic: a crash leaves the
    // previous checkpoint or this one, whole):
    // model.safetensors (every parameter), optimizer.safetensors (AdamW's moments),
    // best.safetensors (the best values of the parameters that train, when kept) and
    // trainer_state.json.
    void save_checkpoint(const std::filesystem::path& dir, const nlohmann::json& state,
                         optim::any_optimizer<T>& opt, const std::vector<T>& best) {
        io::write_directory_atomic(dir, [&](const std::filesystem::path& tmp) {
            std::vector<std::vector<float>> copies;
            std::vector<io::tensor_to_write> tensors;
            auto add = [&](const std::string& name, std::span<const T> v) {
                copies.emplace_back(v.begin(), v.end());
                tensors.push_back({name, {v.size()}, {}});
            };
            model.visit_parameters("", [&](parameter_ref<T> p) { add(p.name, p.value); });
            for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].values = copies[i];
            io::write_safetensors(tmp / "model.safetensors", tensors);
            copies.clear(), tensors.clear();
            opt.visit_state([&](const std::string& name, std::span<T> v) { add(name, v); });
            for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].values = copies[i];
            io::write_safetensors(tmp / "optimizer.safetensors", tensors);
            if (!best.empty()) {
                copies.clear(), tensors.clear();
                add("best", best);
                tensors[0].values = copies[0];
                io::write_safetensors(tmp / "best.safetensors", tensors);
            }
            nlohmann::json st = state;
            st["optimizer_steps"] = opt.step_count();
            io::write_text_atomic(tmp / "trainer_state.json", st.dump(1) + "\n");
        });
    }

    // Reads a checkpoint written by save_checkpoint into the model, the optimizer and the best
    // weights; returns trainer_state.json. A checkpoint of another setup is an error naming the
    // difference.
    nlohmann::json load_checkpoint(const std::filesystem::path& dir, const nlohmann::json& setup,
                                   std::vector<parameter_ref<T>>& params,
                                   optim::any_optimizer<T>& opt, std::vector<T>& best) {
        const auto state_path = dir / "trainer_state.json";
        std::ifstream in(state_path);
        if (!in)
            throw error(errc::io, state_path.string(),
                        "cannot open: is this a checkpoint directory written by ftune train?");
        nlohmann::json st;
        try {
            st = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            throw error(errc::parse, state_path.string(), e.what());
        }
        for (const auto& [k, v] : setup.items()) {
            // (checkpoints from before mixed precision are fp32 ones)
            const nlohmann::json had = !st.contains("setup")     ? nlohmann::json("?")
                                       : st["setup"].contains(k) ? st["setup"][k]
                                       : k == "precision"        ? nlohmann::json("fp32")
                                                                 : nlohmann::json();
            if (had != v)
                throw error(errc::invalid_argument, state_path.string(),
                            "the checkpoint was made with " + k + " = " + had.dump() +
                                ", this run has " + v.dump() + "; resume with the same settings");
        }
        const io::safetensors_file m(dir / "model.safetensors");
        for (auto& p : params) m.read(m.at(p.name), p.value);
        const io::safetensors_file o(dir / "optimizer.safetensors");
        opt.init_state(std::span<const parameter_ref<T>>(params));
        opt.visit_state([&](const std::string& name, std::span<T> v) {
            if (!v.empty()) o.read(o.at(name), v);
        });
        opt.set_step_count(st.at("optimizer_steps").get<std::size_t>());
        if (std::filesystem::exists(dir / "best.safetensors")) {
            const io::safetensors_file b(dir / "best.safetensors");
            best = b.read<T>(b.at("best"));
            check_snapshot(best, b.path());
        }
        return st;
    }

    // The values of the parameters that train, one after another (the best weights of early
    // stopping: frozen ones cannot change, so a LoRA run keeps a copy of its adapters only).
    std::vector<T> snapshot() {
        std::vector<T> v;
        model.visit_parameters("", [&](parameter_ref<T> p) {
            if (p.trainable) v.insert(v.end(), p.value.begin(), p.value.end());
        });
        return v;
    }
    // Throws, naming where, unless v holds a value for each trainable one (a snapshot()).
    void check_snapshot(const std::vector<T>& v, const std::string& where) {
        std::size_t n = 0;
        model.visit_parameters("",
                               [&](parameter_ref<T> p) { n += p.trainable ? p.value.size() : 0; });
        if (n != v.size())
            throw error(errc::shape_mismatch, where,
                        ftune::detail::cat(v.size(), " best values for ", n,
                                           " trainable ones: the checkpoint was made with other "
                                           "parameters training (freezing, LoRA)"));
    }
    // Puts a snapshot() back.
    void restore(const std::vector<T>& v) {
        check_snapshot(v, "best weights");
        std::size_t at = 0;
        model.visit_parameters("", [&](parameter_ref<T> p) {
            if (!p.trainable) return;
            std::copy_n(v.begin() + std::ptrdiff_t(at), p.value.size(), p.value.begin());
            at += p.value.size();
        });
    }

    std::vector<T> d_;                            // d outputs
    batch batch_;                                 // the training batch, its storage reused
    std::vector<std::unique_ptr<callback>> own_;  // the built-in callbacks of the run
};

}  // namespace train
FTUNE_NAMESPACE_END
