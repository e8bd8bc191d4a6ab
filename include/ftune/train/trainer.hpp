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
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/io/safetensors.hpp"
#include "ftune/losses.hpp"
#include "ftune/models/bert_tasks.hpp"
#include "ftune/optim.hpp"
#include "ftune/train/batching.hpp"
#include "ftune/train/evaluation.hpp"
#include "ftune/train/metrics.hpp"

#if __has_include(<unistd.h>)
#include <unistd.h>
#define FTUNE_HAVE_ISATTY 1
#endif

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
    /// Whether the parameter called `name` is frozen.
    bool frozen(const std::string& name) const {
        std::string_view n(name);
        if (n.starts_with("bert.")) n.remove_prefix(5);
        switch (what) {
            case kind::none:
                return false;
            case kind::embeddings:
                return n.starts_with("embeddings.");
            case kind::encoder:
                return n.starts_with("embeddings.") || n.starts_with("encoder.") ||
                       n.starts_with("pooler.");
            case kind::layers: {
                if (n.starts_with("embeddings.")) return true;
                if (!n.starts_with("encoder.layer.")) return false;
                n.remove_prefix(14);
                std::size_t i = 0;
                while (!n.empty() && n.front() >= '0' && n.front() <= '9')
                    i = 10 * i + std::size_t(n.front() - '0'), n.remove_prefix(1);
                return i < layers;
            }
        }
        return false;
    }
};

/// Sets trainable = false on the parameters f freezes (true on the others); returns how many
/// values stay fixed.
template <class Model>
std::size_t apply_freeze(Model& model, const freeze& f) {
    std::size_t n = 0;
    model.visit_parameters("", [&](parameter_ref<typename Model::value_type> p) {
        const bool frozen = f.frozen(p.name);
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
    std::string schedule = "linear";         ///< linear, cosine, constant or polynomial
    double max_grad_norm = 1.0;              ///< global-norm clipping (0: off)
    double label_smoothing = 0.0;            ///< classify / ner: cross-entropy label smoothing
    std::vector<double> class_weights{};     ///< classify / ner: weight per label (empty: all 1)
    std::size_t grad_accum = 1;              ///< batches per optimizer step
    std::uint64_t seed = 42;                 ///< shuffling, dropout, new heads
    std::size_t eval_every = 0;              ///< evaluate every N optimizer steps (0: each epoch)
    std::size_t patience = 0;                ///< early stopping: evaluations without improvement
    double min_delta = 0.0;                  ///< early stopping: the smallest improvement
    bool bucket_by_length = true;            ///< length-bucketed batches (less padding)
    std::size_t log_every = 50;              ///< plain progress lines every N steps
    std::ostream* progress = &std::cerr;     ///< where progress goes (nullptr: nowhere)
    std::filesystem::path log_path{};        ///< JSON-lines log ("": none)
    std::filesystem::path checkpoint_dir{};  ///< where checkpoints go ("": none)
    std::size_t checkpoint_every = 0;        ///< steps between checkpoints (0: each epoch's end)
    std::filesystem::path resume_from{};     ///< a checkpoint directory to continue from
    std::size_t stop_after = 0;  ///< end after this many steps, as an interruption would (0: no;
                                 ///< reaching the run's last step ends it normally)
};

/// One point of the training history.
struct record {
    std::size_t step = 0;             ///< optimizer step
    double epoch = 0;                 ///< fractional epoch
    double loss = 0;                  ///< mean training loss since the previous record
    double lr = 0;                    ///< learning rate of the step
    std::optional<double> metric;     ///< validation metric, at evaluation records
    std::optional<double> eval_loss;  ///< validation loss, at evaluation records
};

/// Trains a task model (task_model<Backbone, Head>) on encoded examples. The head decides the
/// loss, the evaluation report and the selection metric (a sequence classifier by its problem
/// type: single-label, multi-label or regression).
template <class Model>
class trainer {
  public:
    using T = typename Model::value_type;    ///< scalar type
    using Head = typename Model::head_type;  ///< the task head (loss, report)
    Model& model;                            ///< the model trained in place
    train::options options;                  ///< hyper-parameters
    std::vector<record> history;             ///< training and evaluation records
    std::vector<std::string> label_names;    ///< tag names (ner evaluation)
    mlm_masking masking;  ///< mlm: how batches are masked (set mask_id and special from the
                          ///< tokenizer: mlm_masking_for)

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

    /// Trains on `train_set`, evaluating on `valid` (may be empty) every options.eval_every steps
    /// or each epoch; with patience, stops early and restores the best weights.
    result fit(const std::vector<example>& train_set, const std::vector<example>& valid) {
        if (train_set.empty()) throw error(errc::invalid_argument, "fit", "no training examples");
        const auto t0 = std::chrono::steady_clock::now();
        shown_loss_ = 0, last_draw_ = -1, bar_open_ = false;
        auto params = optim::parameters_of(model);
        optim::adamw<T> opt({.lr = options.lr, .weight_decay = options.weight_decay});
        const std::size_t batches_per_epoch =
            (train_set.size() + options.batch_size - 1) / options.batch_size;
        const std::size_t steps_per_epoch =
            (batches_per_epoch + options.grad_accum - 1) / options.grad_accum;
        const std::size_t total = steps_per_epoch * options.epochs;
        const std::size_t warmup = schedule::warmup_steps(options.warmup_ratio, total);
        auto lr_at = [&](std::size_t s) {
            if (options.schedule == "linear")
                return schedule::linear{options.lr, warmup, total}.lr_at(s);
            if (options.schedule == "cosine")
                return schedule::cosine{options.lr, warmup, total}.lr_at(s);
            if (options.schedule == "constant")
                return schedule::constant{options.lr, warmup}.lr_at(s);
            if (options.schedule == "polynomial")
                return schedule::polynomial{options.lr, warmup, total}.lr_at(s);
            throw error(errc::invalid_argument, "schedule " + options.schedule,
                        "expected linear, cosine, constant or polynomial");
        };
        (void)lr_at(0);  // an unknown schedule fails before training
        std::ofstream log;
        if (!options.log_path.empty()) {
            log.open(options.log_path,
                     options.resume_from.empty() ? std::ios::trunc : std::ios::app);
            if (!log) throw error(errc::io, options.log_path.string(), "cannot write the log");
        }
        context ctx{.mode = mode::train, .rng = generator(options.seed)};
        result res;
        std::vector<T> best_values;
        std::size_t bad_evals = 0, step = 0, batch_in_step = 0, since = 0, seen = 0;
        std::size_t first_epoch = 0, first_batch = 0;
        double loss_sum = 0;
        const bool tty = is_terminal();
        const mlm_masking masks = mlm_masks();
        model.zero_grad();
        const nlohmann::json setup = {{"examples", train_set.size()},
                                      {"batch_size", options.batch_size},
                                      {"grad_accum", options.grad_accum},
                                      {"epochs", options.epochs},
                                      {"seed", options.seed},
                                      {"lr", options.lr},
                                      {"schedule", options.schedule}};
        if (!options.resume_from.empty()) {  // model, optimizer, schedule, RNG, data position
            const nlohmann::json st =
                load_checkpoint(options.resume_from, setup, params, opt, best_values);
            step = st.at("step").get<std::size_t>();
            first_epoch = st.at("epoch").get<std::size_t>();
            first_batch = st.at("next_batch").get<std::size_t>();
            ctx.rng.set_position(st.at("rng_position").get<std::uint64_t>());
            bad_evals = st.at("bad_evals").get<std::size_t>();
            res.best_step = st.at("best_step").get<std::size_t>();
            if (!st.at("best_metric").is_null())
                res.best_metric = st.at("best_metric").get<double>();
            if (options.progress)
                *options.progress << "resumed from " << options.resume_from.string() << " at step "
                                  << step << "\n";
        }
        auto checkpoint = [&](std::size_t epoch, std::size_t next_batch) {
            if (options.checkpoint_dir.empty()) return;
            nlohmann::json st = {{"step", step},
                                 {"epoch", epoch},
                                 {"next_batch", next_batch},
                                 {"rng_position", ctx.rng.position()},
                                 {"bad_evals", bad_evals},
                                 {"best_step", res.best_step},
                                 {"setup", setup}};
            st["best_metric"] = std::isnan(res.best_metric) ? nlohmann::json(nullptr)
                                                            : nlohmann::json(res.best_metric);
            save_checkpoint(options.checkpoint_dir, st, opt, best_values);
        };
        auto evaluate_now = [&] {
            if (valid.empty()) return false;
            const auto e = evaluate(valid);
            record r{step,     double(step) / double(steps_per_epoch),
                     0,        lr_at(step ? step - 1 : 0),
                     e.metric, e.loss};
            history.push_back(r);
            if (log)
                log << nlohmann::json{{"step", step},
                                      {"epoch", r.epoch},
                                      {"eval_loss", e.loss},
                                      {"eval_metric", e.metric},
                                      {"eval_accuracy", e.accuracy},
                                      {"eval_f1", e.f1}}
                           .dump()
                    << "\n"
                    << std::flush;
            bar_open_ = false;
            if (options.progress)
                *options.progress << (tty ? "\r\033[K" : "") << "step " << step << ": eval loss "
                                  << fmt(e.loss) << ", " << metric_name() << " " << fmt(e.metric)
                                  << "\n";
            if (std::isnan(res.best_metric) || e.metric > res.best_metric + options.min_delta) {
                res.best_metric = e.metric, res.best_step = step, bad_evals = 0;
                if (options.patience) best_values = snapshot();
            } else {
                ++bad_evals;
            }
            return options.patience && bad_evals >= options.patience;
        };
        bool interrupted = false;
        for (std::size_t epoch = first_epoch; epoch < options.epochs && !res.stopped_early;
             ++epoch) {
            const auto order = batch_order(train_set, options.batch_size, true,
                                           options.bucket_by_length, options.seed, epoch);
            for (std::size_t bi = epoch == first_epoch ? first_batch : 0; bi < order.size(); ++bi) {
                collate_into(batch_, train_set, order[bi], pad_id(), Head::labels_per_token);
                if constexpr (Head::masked_inputs)  // new masks each epoch
                    masks.apply(batch_, random_stream(options.seed ^ 0x6d6c6dULL,
                                                      epoch * batches_per_epoch + bi));
                const batch& b = batch_;
                loss_sum += train_batch(ctx, b);
                seen += b.B, ++since;
                if (++batch_in_step < options.grad_accum && bi + 1 < order.size()) continue;
                batch_in_step = 0;
                // one optimizer step: clip, rate from the schedule, AdamW, clear
                if (options.max_grad_norm > 0)
                    optim::clip_grad_norm(std::span<const parameter_ref<T>>(params),
                                          options.max_grad_norm);
                opt.set_lr(lr_at(step));
                opt.step(std::span<const parameter_ref<T>>(params));
                model.zero_grad();
                ++step;
                const double secs = seconds_since(t0);
                shown_loss_ = loss_sum / double(since);  // mean since the last logged step
                if (step % options.log_every == 0 || step == total) {
                    record r{step,
                             double(step) / double(steps_per_epoch),
                             loss_sum / double(since),
                             lr_at(step - 1),
                             std::nullopt,
                             std::nullopt};
                    history.push_back(r);
                    if (log)
                        log << nlohmann::json{{"step", step},
                                              {"epoch", r.epoch},
                                              {"loss", r.loss},
                                              {"lr", r.lr},
                                              {"examples_per_s", double(seen) / secs}}
                                   .dump()
                            << "\n"
                            << std::flush;
                    loss_sum = 0, since = 0;
                }
                if (options.progress)
                    report(step, total, epoch, secs, double(seen) / secs, lr_at(step - 1), tty);
                if (options.eval_every && step % options.eval_every == 0 && evaluate_now()) {
                    res.stopped_early = true;
                    break;
                }
                if (options.checkpoint_every && step % options.checkpoint_every == 0 &&
                    bi + 1 < order.size())
                    checkpoint(epoch, bi + 1);
                if (options.stop_after && step >= options.stop_after && step < total) {
                    interrupted = true;
                    break;
                }
            }
            if (interrupted) break;
            if (!options.eval_every && !res.stopped_early && evaluate_now())
                res.stopped_early = true;
            if (!res.stopped_early) checkpoint(epoch + 1, 0);
        }
        if (options.progress && bar_open_) *options.progress << "\n";
        if (interrupted) {  // as if killed: no restoring of the best weights
            res.interrupted = true;
            res.steps = step;
            res.seconds = seconds_since(t0);
            return res;
        }
        if (!best_values.empty()) restore(best_values);
        res.steps = step;
        res.seconds = seconds_since(t0);
        return res;
    }

    /// Loss and scores on examples (eval mode, batches by length), as the head reports them.
    evaluation evaluate(const std::vector<example>& xs) {
        evaluation e;
        context ctx;  // eval mode
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

    /// Writes an SVG plot of the training loss (left axis) and the validation metric (right
    /// axis) against the step.
    void write_plot(const std::filesystem::path& path) const {
        std::vector<std::pair<double, double>> loss, metric;
        for (const auto& r : history) {
            if (r.metric)
                metric.emplace_back(double(r.step), *r.metric);
            else
                loss.emplace_back(double(r.step), r.loss);
        }
        const double W = 640, H = 360, L = 60, R = 60, Tp = 30, Bt = 40;
        double xmax = 1, lmax = 0, lmin = 0, mmin = 0, mmax = 1;
        for (auto [x, y] : loss) xmax = std::max(xmax, x), lmax = std::max(lmax, y);
        if (!metric.empty()) {
            mmin = mmax = metric[0].second;
            for (auto [x, y] : metric)
                xmax = std::max(xmax, x), mmin = std::min(mmin, y), mmax = std::max(mmax, y);
            if (mmax - mmin < 1e-9) mmin -= 0.5, mmax += 0.5;
        }
        if (lmax <= lmin) lmax = lmin + 1;
        auto px = [&](double x) { return L + (W - L - R) * x / xmax; };
        auto py = [&](double y, double lo, double hi) {
            return Tp + (H - Tp - Bt) * (1 - (y - lo) / (hi - lo));
        };
        std::string s = ftune::detail::cat(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", W, "\" height=\"", H,
            "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
            "fill=\"white\"/>\n",
            "<line x1=\"", L, "\" y1=\"", H - Bt, "\" x2=\"", W - R, "\" y2=\"", H - Bt,
            "\" stroke=\"black\"/>\n", "<line x1=\"", L, "\" y1=\"", Tp, "\" x2=\"", L, "\" y2=\"",
            H - Bt, "\" stroke=\"black\"/>\n", "<text x=\"", W / 2, "\" y=\"", H - 8,
            "\" text-anchor=\"middle\">step (0 to ", xmax, ")</text>\n", "<text x=\"", L,
            "\" y=\"18\" fill=\"#1f77b4\">training loss (0 to ", fmt(lmax), ")</text>\n");
        auto polyline = [&](const std::vector<std::pair<double, double>>& pts, double lo, double hi,
                            const char* color) {
            s += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"";
            s += color;
            s += "\" points=\"";
            for (auto [x, y] : pts) s += ftune::detail::cat(px(x), ",", py(y, lo, hi), " ");
            s += "\"/>\n";
        };
        polyline(loss, lmin, lmax, "#1f77b4");
        if (!metric.empty()) {
            polyline(metric, mmin, mmax, "#d62728");
            for (auto [x, y] : metric)
                s += ftune::detail::cat("<circle cx=\"", px(x), "\" cy=\"", py(y, mmin, mmax),
                                        "\" r=\"3\" fill=\"#d62728\"/>\n");
            s += ftune::detail::cat(
                "<text x=\"", W - R, "\" y=\"18\" text-anchor=\"end\" fill=\"#d62728\">validation ",
                metric_name(), " (", fmt(mmin), " to ", fmt(mmax), ")</text>\n");
        }
        s += "</svg>\n";
        io::write_text_atomic(path, s);
    }

  private:
    static std::string fmt(double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.4g", v);
        return buf;
    }
    static double seconds_since(std::chrono::steady_clock::time_point t0) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    bool is_terminal() const {
#ifdef FTUNE_HAVE_ISATTY
        return options.progress == &std::cerr && ::isatty(2);
#else
        return false;
#endif
    }
    // masking, with random replacements inside both the tokenizer's and the model's vocabulary
    mlm_masking mlm_masks() const {
        mlm_masking m = masking;
        if constexpr (requires { model.head.vocab_size(); })
            m.vocab_size = std::min(m.vocab_size, model.head.vocab_size());
        return m;
    }
    token_id pad_id() const {
        return model.backbone.pad_token_id();
    }

    auto forward(context& ctx, const batch& b) {
        return model.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T},
                             {b.types.data(), b.B, b.T});
    }

    // forward, loss and backward of one batch (gradients accumulate); returns the batch loss
    double train_batch(context& ctx, const batch& b) {
        const auto y = forward(ctx, b);
        d_.assign(y.size(), T(0));
        const double l = model.head.loss(y, b, d_.data(), T(1.0 / double(options.grad_accum)));
        model.backward(ctx, typename Model::output_view(d_.data(), y.shape()));
        if (!std::isfinite(l))
            throw error(errc::invalid_argument, "training loss",
                        "the loss is not finite (diverged: lower the learning rate)");
        return l;
    }

    void report(std::size_t step, std::size_t total, std::size_t epoch, double secs, double ex_s,
                double lr, bool tty) {
        const double loss = shown_loss_;
        if (tty && step != total && secs - last_draw_ < 0.1) return;  // redraw at most 10 times/s
        last_draw_ = secs;
        const double eta = step ? secs / double(step) * double(total - step) : 0;
        const std::string line =
            ftune::detail::cat("epoch ", epoch + 1, "/", options.epochs, " step ", step, "/", total,
                               " loss ", fmt(loss), " lr ", fmt(lr), " ", fmt(ex_s), " ex/s ETA ",
                               int(eta) / 60, ":", (int(eta) % 60 < 10 ? "0" : ""), int(eta) % 60);
        if (tty) {
            const std::size_t width = 24, done = total ? width * step / total : width;
            *options.progress << "\r\033[K[" << std::string(done, '#')
                              << std::string(width - done, '.') << "] " << line << std::flush;
            bar_open_ = true;
        } else if (step % options.log_every == 0 || step == total) {
            *options.progress << line << "\n";
        }
    }
    // Writes a checkpoint directory atomically (io::write_directory_atomic: a crash leaves the
    // previous checkpoint or this one, whole):
    // model.safetensors (every parameter), optimizer.safetensors (AdamW's moments),
    // best.safetensors (the best weights, when kept) and trainer_state.json.
    void save_checkpoint(const std::filesystem::path& dir, const nlohmann::json& state,
                         optim::adamw<T>& opt, const std::vector<T>& best) {
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
                                   std::vector<parameter_ref<T>>& params, optim::adamw<T>& opt,
                                   std::vector<T>& best) {
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
        for (const auto& [k, v] : setup.items())
            if (!st.contains("setup") || st["setup"][k] != v)
                throw error(errc::invalid_argument, state_path.string(),
                            "the checkpoint was made with " + k + " = " +
                                (st.contains("setup") ? st["setup"][k].dump() : "?") +
                                ", this run has " + v.dump() + "; resume with the same settings");
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
        }
        return st;
    }

    std::vector<T> snapshot() {
        std::vector<T> v;
        model.visit_parameters(
            "", [&](parameter_ref<T> p) { v.insert(v.end(), p.value.begin(), p.value.end()); });
        return v;
    }
    void restore(const std::vector<T>& v) {
        std::size_t at = 0;
        model.visit_parameters("", [&](parameter_ref<T> p) {
            std::copy_n(v.begin() + std::ptrdiff_t(at), p.value.size(), p.value.begin());
            at += p.value.size();
        });
    }

    std::vector<T> d_;       // d outputs
    batch batch_;            // the training batch, its storage reused
    double shown_loss_ = 0;  // the loss the progress shows: mean since the last log line
    double last_draw_ = -1;  // when the progress bar was last drawn (seconds into fit)
    bool bar_open_ = false;  // the progress bar is on the terminal's last line, unended
};

}  // namespace train
FTUNE_NAMESPACE_END
