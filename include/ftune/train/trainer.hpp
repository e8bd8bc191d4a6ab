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
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/dist/group.hpp"
#include "ftune/io/safetensors.hpp"
#include "ftune/loss.hpp"
#include "ftune/bert/tasks.hpp"
#include "ftune/optim.hpp"
#include "ftune/train/batching.hpp"
#include "ftune/train/callbacks.hpp"
#include "ftune/train/evaluation.hpp"
#include "ftune/metrics/scores.hpp"
#include "ftune/train/device_run.hpp"

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
    /// The processes training this model together (data parallelism, dist/group.hpp; nullptr:
    /// this one alone). Each computes its rows of every batch, the gradients are summed over
    /// the ranks in rank order, every rank takes the same steps and evaluates its share of the
    /// batches; rank 0 alone shows progress and writes the log and checkpoints.
    dist::group* group = nullptr;
    /// One process computing what an N-rank run computes (each rank's rows of every batch, the
    /// rank's gradients summed in rank order): the same weights, bit for bit, as `group` with N
    /// ranks. 0 or 1: off.
    std::size_t virtual_ranks = 0;
    /// Where the steps and evaluations run: the CPU, a CUDA GPU (a build with FTUNE_WITH_CUDA),
    /// or the reference backend (slow: tests), for the heads with a device form (sequence and
    /// token classification, question answering). There the model's twin trains and the model
    /// given to the trainer is the record: updated at checkpoints, best-weight snapshots and the
    /// end of fit() (train/device_run.hpp; not with a group or virtual ranks).
    device_spec device{};
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
        std::size_t best_step = 0;    ///< the step that reached it
        std::size_t steps = 0;        ///< optimizer steps taken
        bool stopped_early = false;   ///< whether early stopping ended the run
        bool interrupted = false;     ///< options.stop_after ended it before its last step: as a
                                      ///< kill would (best weights not restored; resume from the
                                      ///< last checkpoint)
        double seconds = 0;           ///< wall time
        double sum_wait_seconds = 0;  ///< with a group: time spent waiting for the gradient
                                      ///< sums after backward (the part not overlapped)
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
        const ranks_plan rk = plan_ranks();
        auto cbs = built_in_callbacks(rk.rank == 0);
        for (auto& c : callbacks) cbs.push_back(c.get());
        context ctx{.mode = mode::train,
                    .rng = generator(options.seed),
                    .pack_frozen_weights = options.pack_frozen_weights,
                    .precision = options.precision};
        if (options.device.cpu()) ops::require(options.precision, "trainer (precision bf16)");
        std::vector<T> best_values;
        std::size_t since = 0, first_epoch = 0, first_batch = 0;
        double loss_sum = 0, sum_wait = 0;
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
        check_same_weights(params);                    // every rank starts from the same weights
        start_device(rk.group || rk.count > 1, &opt);  // a GPU: the model's twin there
        const device_scope device_ends{this};          // (also when the run throws)
        // the sums of the gradients over the ranks (trainable ones, in the order backward
        // finishes them: the reverse of the visit)
        std::optional<dist::gradient_reducer> reducer;
        std::unordered_map<const void*, std::size_t> reduced;  // gradient -> its place there
        if (rk.group) {
            auto grads = gradient_spans(params);
            for (std::size_t i = 0; i < grads.size(); ++i) reduced[grads[i].data()] = i;
            reducer.emplace(*rk.group, std::move(grads));
        }
        std::vector<std::vector<T>> summed;  // virtual ranks: the sum so far
        // the word-embedding table's gradient, when only the rows of the step's ids can be
        // nonzero (no head reads the table): those rows alone are summed
        auto& table = model.backbone.input_embeddings();  // (V, C)
        const auto table_at = reduced.find(table.grad.data());
        const bool rows_only = reducer && table_at != reduced.end() && table_read_by_ids_only();
        std::vector<char> used;  // rows_only: whether the step's batches use each id
        auto checkpoint = [&](std::size_t epoch, std::size_t next_batch) {
            if (options.checkpoint_dir.empty() || rk.rank != 0) return;
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
            device_to_host(&opt);  // (on a GPU: the weights and the optimizer's state)
            save_checkpoint(options.checkpoint_dir, st, opt, best_values);
        };
        // an evaluation on valid: the best metric and weights, a record, the callbacks (which
        // may stop the run)
        auto evaluate_now = [&](control& c) {
            if (valid.empty()) return;
            const auto e = evaluate(valid);
            if (std::isnan(s.best_metric) || e.metric > s.best_metric + options.min_delta) {
                s.best_metric = e.metric, s.best_step = s.step;
                if (options.patience) device_to_host(nullptr), best_values = snapshot();
            }
            history.push_back({s.step, double(s.step) / double(s.steps_per_epoch), 0,
                               sched.lr_at(s.step ? s.step - 1 : 0), e.metric, e.loss});
            // (a stop asked before, as --stop-after's, is an interruption, not early stopping)
            const bool asked = std::exchange(c.should_stop, false);
            for (auto* cb : cbs) cb->on_evaluate(s, e, c);
            agree(c);
            s.stopped_early |= c.should_stop;
            c.should_stop |= asked;
        };
        for (auto* c : cbs) c->on_train_begin(s);
        for (std::size_t epoch = first_epoch; epoch < options.epochs && !s.stopped_early; ++epoch) {
            s.epoch = epoch;
            const auto order = batch_order(train_set, options.batch_size, true,
                                           options.bucket_by_length, options.seed, epoch);
            // one optimizer step: batches [b0, b1) (grad_accum of them, fewer at the end)
            for (std::size_t b0 = epoch == first_epoch ? first_batch : 0, b1 = 0; b0 < order.size();
                 b0 = b1) {
                b1 = std::min(order.size(), b0 + options.grad_accum);
                // where a divergence stops the run (checkpoints written before it are kept)
                std::size_t bi = b1 - 1;
                auto at = [&] {
                    return ftune::detail::cat("training step ", s.step + 1, " (epoch ", epoch + 1,
                                              ", batch ", bi + 1, ")");
                };
                // each batch's loss: this process's ranks' shares of its mean
                std::vector<double> losses(b1 - b0, 0.0);
                for (std::size_t r = rk.first; r < rk.first + rk.count; ++r) {
                    if (r > rk.first) model.zero_grad();
                    for (bi = b0; bi < b1; ++bi) {
                        collate_into(batch_, train_set, order[bi], pad_id(),
                                     Head::labels_per_token);
                        if constexpr (Head::masked_inputs)  // new masks each epoch
                            masks.apply(batch_, random_stream(options.seed ^ 0x6d6c6dULL,
                                                              epoch * batches_per_epoch + bi));
                        s.examples_seen += r == rk.first ? batch_.B : 0;
                        if (rows_only) {
                            mark_ids(used, batch_);
                            if (bi + 1 == b1)  // before backward starts the table's bucket
                                reducer->only_rows(table_at->second, take_rows(used),
                                                   table.value.extent(1));
                        }
                        // rank r's rows, keyed by their place in the whole batch (dropout)
                        const std::size_t n = rk.size, r0 = batch_.B * r / n,
                                          r1 = batch_.B * (r + 1) / n;
                        ctx.rng.set_position((epoch * batches_per_epoch + bi) << 16);
                        ctx.dropout_examples = r1 - r0, ctx.first_example = r0;
                        if (r0 == r1) continue;  // fewer rows than ranks: none here
                        // the step's last batch: each gradient's sum starts when it is final
                        if (reducer && bi + 1 == b1)
                            ctx.gradient_ready = [&](const void* g) {
                                if (const auto it = reduced.find(g); it != reduced.end())
                                    reducer->ready(it->second);
                            };
                        const batch* part = &batch_;
                        if (n > 1) slice_rows(slice_, batch_, r0, r1), part = &slice_;
                        // the share of the slice in the batch's mean loss
                        const double share = n == 1 ? 1.0 : loss_share(*part, batch_);
                        losses[bi - b0] +=
                            train_batch(ctx, *part, 1.0 / double(options.grad_accum) * share) *
                            share;
                    }
                    if (rk.count > 1) add_gradients(summed, params, r == rk.first);
                }
                if (rk.count > 1) put_gradients(summed, params);
                if (reducer) {  // the gradients and losses summed over the ranks in rank order
                    ctx.gradient_ready = nullptr;
                    const auto w0 = std::chrono::steady_clock::now();
                    reducer->finish();  // (those not final during backward start now)
                    sum_wait += seconds_since(w0);
                    const auto all = rk.group->all_gather(losses);
                    for (std::size_t k = 0; k < losses.size(); ++k) {
                        losses[k] = all[k];
                        for (std::size_t q = 1; q < rk.size; ++q)
                            losses[k] += all[q * losses.size() + k];
                    }
                }
                for (bi = b0; bi < b1; ++bi) {
                    if (!std::isfinite(losses[bi - b0]))
                        throw error(errc::invalid_argument, at(),
                                    "the loss is not finite (diverged: lower the learning rate; "
                                    "checkpoints written before this step are kept)");
                    loss_sum += losses[bi - b0], ++since;
                }
                bi = b1 - 1;
                // one optimizer step: clip, rate from the schedule, optimizer, clear
                s.lr = sched.lr_at(s.step);
                try {
                    if (on_device()) {
                        device_->step(options.max_grad_norm, s.lr);
                    } else {
                        // the clipping factor applied as the optimizer reads each gradient
                        const std::span<const parameter_ref<T>> ps(params);
                        const double scale =
                            options.max_grad_norm > 0
                                ? optim::clip_scale(ps, options.max_grad_norm).scale
                                : 1.0;
                        opt.set_lr(s.lr);
                        opt.step(ps, scale);
                        model.zero_grad();
                    }
                } catch (const error& e) {  // a non-finite gradient: say which step
                    throw error(e.id(), at() + " " + e.context(), e.message());
                }
                ++s.step;
                s.seconds = seconds_since(t0);
                s.loss = loss_sum / double(since);  // mean since the last record
                control c;
                for (auto* cb : cbs) cb->on_step_end(s, c);
                agree(c);
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
                agree(c);
                if (c.should_evaluate) evaluate_now(c);
            }
            if (!s.stopped_early && c.should_save) checkpoint(epoch + 1, 0);
        }
        device_to_host(nullptr), stop_device();  // the trained weights in the model given
        if (!s.interrupted && !best_values.empty()) restore(best_values);
        s.seconds = seconds_since(t0);
        for (auto* c : cbs) c->on_train_end(s);
        return {s.best_metric, s.best_step, s.step,  s.stopped_early,
                s.interrupted, s.seconds,   sum_wait};
    }

    /// Loss and scores on examples (eval mode, batches by length), as the head reports them.
    /// With a group of N ranks, a collective: rank r scores batches r, r + N, ..., and every
    /// rank gets the whole report, equal to one process's.
    evaluation evaluate(const std::vector<example>& xs) {
        // outside fit() with options.device a GPU: the model's current weights go there for it
        const bool own = !options.device.cpu() && !on_device();
        if (own) start_device(options.group && options.group->size() > 1, nullptr);
        const device_scope device_ends{own ? this : nullptr};
        evaluation e;
        context ctx;  // eval mode
        ctx.precision = options.precision;
        const auto order = batch_order(xs, options.batch_size, false, true, 0, 0);
        const mlm_masking masks = mlm_masks();
        dist::group* g = options.group && options.group->size() > 1 ? options.group : nullptr;
        const std::size_t n = g ? g->size() : 1, rank = g ? g->rank() : 0;
        std::vector<evaluation> mine;  // with a group: this rank's batches, one report each
        for (std::size_t j = rank; j < order.size(); j += n) {
            batch b = collate(xs, order[j], pad_id(), Head::labels_per_token);
            if constexpr (Head::masked_inputs)  // the same masks every time
                masks.apply(b, random_stream(0x6576616cULL, j + 1));
            model.head.score(forward(ctx, b), b, g ? mine.emplace_back() : e, label_names);
        }
        if (g) {  // every rank's reports, merged in batch order (the sums in one process's order)
            std::vector<std::vector<evaluation>> all(n);
            for (std::size_t q = 0; q < n; ++q) {
                std::vector<char> bytes;
                if (q == rank) {
                    const std::string j = to_json(mine).dump();
                    bytes.assign(j.begin(), j.end());
                }
                g->broadcast(bytes, q);
                all[q] = q == rank ? mine : from_json(bytes);
            }
            for (std::size_t j = 0; j < order.size(); ++j) merge_into(e, all[j % n].at(j / n));
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
    // the callbacks options asks for, owned by this run: flow, early stopping, and on the
    // first rank progress and log
    std::vector<callback*> built_in_callbacks(bool first_rank) {
        own_.clear();
        own_.push_back(std::make_unique<flow>(options.log_every, options.eval_every,
                                              options.checkpoint_every, options.stop_after));
        if (options.patience)
            own_.push_back(std::make_unique<early_stopping>(options.patience, options.min_delta));
        if (options.progress && first_rank)
            own_.push_back(std::make_unique<progress>(*options.progress, options.log_every));
        if (!options.log_path.empty() && first_rank)
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

    // the outputs for batch b (on another device: computed there, copied to the host)
    typename Model::output_view forward(context& ctx, const batch& b) {
        if (device_) return device_->forward(ctx, b);
        return model.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T},
                             {b.types.data(), b.B, b.T});
    }

    // Whether the steps run on another device now (inside fit, or evaluate, with
    // options.device not the CPU).
    bool on_device() const noexcept { return device_ != nullptr; }
    // options.device not the CPU: builds the model's twin there with opt's form (nullptr: for
    // an evaluation) and uploads the weights and opt's state; a clear error where that cannot be
    // (parallel: a group or virtual ranks).
    void start_device(bool parallel, optim::any_optimizer<T>* opt) {
        if (options.device.cpu()) return;
        if (parallel)
            throw error(errc::unsupported, "train::options::device " + options.device.str(),
                        "data-parallel training (a group or virtual ranks) runs on the CPU");
        if (opt)
            device_ = make_device_run(model, options.device, *opt);
        else  // an evaluation: no optimizer steps
            device_ = make_device_run(model, options.device,
                                      optim::any_optimizer<T>(optim::adamw<T>(), "adamw"));
        device_->upload(opt);
    }
    // On a device: copies the weights (and opt's state, when given) into the model (and opt).
    void device_to_host(optim::any_optimizer<T>* opt) {
        if (device_) device_->download(opt);
    }
    // Ends the device run (its memory goes back to the device's cache).
    void stop_device() noexcept { device_.reset(); }
    // Ends t's device run when it goes out of scope (nullptr: nothing).
    struct device_scope {
        trainer* t;  // whose run
        ~device_scope() {
            if (t) t->stop_device();
        }
    };
    // the device run of fit() or evaluate() (nullptr: on the CPU)
    std::unique_ptr<device_steps<Model>> device_;

    // forward, loss and backward of one batch (gradients accumulate); returns the batch loss
    // (a head that takes its loss from the hidden states: without its outputs, Model's
    // loss_backward)
    double train_batch(context& ctx, const batch& b, double scale_) {
        const T scale = T(scale_);
        double l = 0;
        if (device_) return device_->train_batch(ctx, b, scale);
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

    // With a group and callbacks of the user's (the built-in ones decide the same on every
    // rank): each flag of c set where any rank's callbacks set it, so the ranks take the same
    // path (a rank that alone evaluates or stops would leave the others waiting).
    void agree(control& c) {
        if (!options.group || options.group->size() < 2 || callbacks.empty()) return;
        const double mine[4] = {double(c.should_log), double(c.should_evaluate),
                                double(c.should_save), double(c.should_stop)};
        const auto all = options.group->all_gather(mine);
        for (std::size_t r = 0; r < options.group->size(); ++r)
            c.should_log |= all[4 * r] != 0, c.should_evaluate |= all[4 * r + 1] != 0,
                c.should_save |= all[4 * r + 2] != 0, c.should_stop |= all[4 * r + 3] != 0;
    }

    // Evaluation reports as JSON (what ranks send each other) and back; doubles travel as
    // their bits (exact, and NaN survives).
    static std::vector<std::uint64_t> bits_of(const std::vector<double>& v) {
        std::vector<std::uint64_t> b(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) std::memcpy(&b[i], &v[i], sizeof(double));
        return b;
    }
    static std::vector<double> doubles_of(const nlohmann::json& j) {
        const auto b = j.get<std::vector<std::uint64_t>>();
        std::vector<double> v(b.size());
        for (std::size_t i = 0; i < v.size(); ++i) std::memcpy(&v[i], &b[i], sizeof(double));
        return v;
    }
    static nlohmann::json to_json(const std::vector<evaluation>& es) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& e : es) {
            const auto& r = e.running;
            a.push_back({{"gold", e.gold},
                         {"predicted", e.predicted},
                         {"gold_tags", e.gold_tags},
                         {"predicted_tags", e.predicted_tags},
                         {"gold_sets", e.gold_sets},
                         {"predicted_sets", e.predicted_sets},
                         {"targets", bits_of(e.targets)},
                         {"outputs", bits_of(e.outputs)},
                         {"sums", bits_of({r.loss, r.weight, r.correct, r.squared})}});
        }
        return a;
    }
    static std::vector<evaluation> from_json(const std::vector<char>& bytes) {
        std::vector<evaluation> es;
        for (const auto& j : nlohmann::json::parse(bytes.begin(), bytes.end())) {
            auto& e = es.emplace_back();
            j.at("gold").get_to(e.gold), j.at("predicted").get_to(e.predicted);
            j.at("gold_tags").get_to(e.gold_tags), j.at("predicted_tags").get_to(e.predicted_tags);
            j.at("gold_sets").get_to(e.gold_sets), j.at("predicted_sets").get_to(e.predicted_sets);
            e.targets = doubles_of(j.at("targets")), e.outputs = doubles_of(j.at("outputs"));
            const auto r = doubles_of(j.at("sums"));
            e.running = {r.at(0), r.at(1), r.at(2), r.at(3)};
        }
        return es;
    }
    // Adds the report of one batch to e, as if its batch had been scored into e.
    static void merge_into(evaluation& e, const evaluation& b) {
        auto append = [](auto& to, const auto& from) {
            to.insert(to.end(), from.begin(), from.end());
        };
        append(e.gold, b.gold), append(e.predicted, b.predicted);
        append(e.gold_tags, b.gold_tags), append(e.predicted_tags, b.predicted_tags);
        append(e.gold_sets, b.gold_sets), append(e.predicted_sets, b.predicted_sets);
        append(e.targets, b.targets), append(e.outputs, b.outputs);
        e.running.loss += b.running.loss, e.running.weight += b.running.weight;
        e.running.correct += b.running.correct, e.running.squared += b.running.squared;
    }

    // Whether the input embedding table's gradient is nonzero only at the ids of the batch: no
    // head reads the table (a masked-LM decoder and a tied causal-LM head do).
    bool table_read_by_ids_only() const {
        if constexpr (Head::masked_inputs)
            return false;
        else if constexpr (requires { model.head.tied; })
            return !model.head.tied;
        else
            return true;
    }
    // Marks the ids of b in used (one flag per row of the table; ids outside it are left to
    // the embedding's own error).
    void mark_ids(std::vector<char>& used, const batch& b) {
        used.resize(model.backbone.input_embeddings().value.extent(0), 0);
        for (const token_id id : b.ids)
            if (id >= 0 && std::size_t(id) < used.size()) used[std::size_t(id)] = 1;
    }
    // The marked rows in order, the marks cleared.
    static std::vector<std::size_t> take_rows(std::vector<char>& used) {
        std::vector<std::size_t> rows;
        for (std::size_t v = 0; v < used.size(); ++v)
            if (used[v]) rows.push_back(v), used[v] = 0;
        return rows;
    }

    // The share of slice `part` in the mean loss over `whole` (the head's loss_weight).
    double loss_share(const batch& part, const batch& whole) const {
        if constexpr (requires { model.head.loss_weight(whole); }) {
            const double w = model.head.loss_weight(whole);
            return w == 0 ? 1.0 : model.head.loss_weight(part) / w;
        } else {
            throw error(errc::unsupported, "data-parallel training",
                        "the head has no loss_weight(batch), the denominator of its mean loss, "
                        "which weighs each rank's slice of a batch: add it (docs/extending.md)");
        }
    }

    // Who computes which rows: `size` ranks in all, this process computing ranks [first,
    // first + count) of them (a real rank: itself; virtual ranks: all), `group` summing over
    // real ones (nullptr: one process).
    struct ranks_plan {
        std::size_t size = 1, rank = 0, first = 0, count = 1;
        dist::group* group = nullptr;
    };
    ranks_plan plan_ranks() const {
        dist::group* g = options.group && options.group->size() > 1 ? options.group : nullptr;
        if (g && options.virtual_ranks > 1)
            throw error(errc::invalid_argument, "train::options",
                        "virtual_ranks computes an N-rank run in one process: not with a group of "
                        "several processes");
        if (g && !std::is_same_v<T, float>)
            throw error(errc::unsupported, "train::options::group",
                        "data-parallel training sums float gradients: use a float model");
        if (g) return {g->size(), g->rank(), g->rank(), 1, g};
        const std::size_t n = std::max<std::size_t>(1, options.virtual_ranks);
        return {n, 0, 0, n, nullptr};
    }
    // The gradients of the trainable parameters, in the order backward completes them (the
    // reverse of the visit), for the reducer.
    std::vector<std::span<float>> gradient_spans(const std::vector<parameter_ref<T>>& params) {
        std::vector<std::span<float>> v;
        if constexpr (std::is_same_v<T, float>)
            for (auto p = params.rbegin(); p != params.rend(); ++p)
                if (p->trainable && !p->grad.empty()) v.push_back(p->grad);
        return v;
    }
    // Virtual ranks: sum = the first rank's gradients (a copy: -0 stays -0), then += each next
    // rank's, in rank order (dist::ordered_sum's order).
    static void add_gradients(std::vector<std::vector<T>>& sum,
                              const std::vector<parameter_ref<T>>& params, bool first) {
        sum.resize(params.size());
        for (std::size_t i = 0; i < params.size(); ++i) {
            const auto g = params[i].grad;
            if (!params[i].trainable || g.empty()) continue;
            if (first)
                sum[i].assign(g.begin(), g.end());
            else
                for (std::size_t k = 0; k < g.size(); ++k) sum[i][k] += g[k];
        }
    }
    // Virtual ranks: the sums into the gradients.
    static void put_gradients(const std::vector<std::vector<T>>& sum,
                              const std::vector<parameter_ref<T>>& params) {
        for (std::size_t i = 0; i < params.size(); ++i)
            if (params[i].trainable && !params[i].grad.empty())
                std::copy(sum[i].begin(), sum[i].end(), params[i].grad.begin());
    }
    // Throws, naming the ranks, unless every rank of the group holds the same weights (another
    // model file, or kernels of another CPU, would make the ranks drift apart).
    void check_same_weights(const std::vector<parameter_ref<T>>& params) {
        if (!options.group || options.group->size() < 2) return;
        std::uint64_t h = 1469598103934665603ULL;  // FNV-1a over the values' bytes
        for (const auto& p : params)
            for (const auto& v : p.value) {
                std::uint64_t bits = 0;
                std::memcpy(&bits, &v, sizeof v);
                h = (h ^ bits) * 1099511628211ULL;
            }
        const double mine[2] = {double(h >> 32), double(h & 0xffffffffULL)};
        const auto all = options.group->all_gather(mine);
        for (std::size_t r = 1; r < options.group->size(); ++r)
            if (all[2 * r] != all[0] || all[2 * r + 1] != all[1])
                throw error(errc::invalid_argument, "data-parallel training",
                            ftune::detail::cat("rank ", r,
                                               " starts from other weights than rank "
                                               "0: give every rank the same model and "
                                               "checkpoint files"));
    }

    std::vector<T> d_;                            // d outputs
    batch batch_;                                 // the training batch, its storage reused
    batch slice_;                                 // this rank's rows of it
    std::vector<std::unique_ptr<callback>> own_;  // the built-in callbacks of the run
};

}  // namespace train
FTUNE_NAMESPACE_END
