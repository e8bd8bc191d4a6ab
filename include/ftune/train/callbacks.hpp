// Training callbacks: what the trainer's core loop tells the outside world, and how the outside
// world steers it, as Transformers' TrainerCallback / TrainerControl. The loop runs the steps,
// the evaluations and the checkpoints; callbacks decide when (flow), show progress, write the
// JSON-lines log and the SVG curve, and stop early.
//
//   struct print_lr : train::callback {
//       void on_log(const train::state& s, const train::record& r) override {
//           std::printf("step %zu lr %g\n", s.step, r.lr);
//       }
//   };
//   trainer.callbacks.push_back(std::make_unique<print_lr>());
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
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/core/error.hpp"
#include "ftune/io/atomic.hpp"
#include "ftune/train/evaluation.hpp"

#if __has_include(<unistd.h>)
#include <unistd.h>
#define FTUNE_HAVE_ISATTY 1
#endif

FTUNE_NAMESPACE_BEGIN
namespace train {

/// One point of the training history.
struct record {
    std::size_t step = 0;             ///< optimizer step
    double epoch = 0;                 ///< fractional epoch
    double loss = 0;                  ///< mean training loss since the previous record
    double lr = 0;                    ///< learning rate of the step
    std::optional<double> metric;     ///< validation metric, at evaluation records
    std::optional<double> eval_loss;  ///< validation loss, at evaluation records
};

/// Where the loop is, as callbacks see it.
struct state {
    std::size_t step = 0;             ///< optimizer steps taken
    std::size_t total_steps = 0;      ///< optimizer steps of the whole run
    std::size_t steps_per_epoch = 0;  ///< optimizer steps per epoch
    std::size_t epoch = 0;            ///< the current epoch (0-based)
    std::size_t epochs = 0;           ///< epochs of the run
    std::size_t examples_seen = 0;    ///< training examples since fit() began (this process)
    double seconds = 0;               ///< since fit() began
    double loss = 0;                  ///< mean training loss since the last log record
    double lr = 0;                    ///< learning rate of the last step
    double best_metric = std::numeric_limits<double>::quiet_NaN();  ///< best validation metric
    std::size_t best_step = 0;                                      ///< the step that reached it
    std::string metric_name;             ///< the selection metric's name (the head's)
    std::optional<std::size_t> resumed;  ///< the step a resumed run continued from
    std::filesystem::path resumed_from;  ///< the checkpoint it continued from
    bool interrupted = false;            ///< stop_after ended the run before its last step
    bool stopped_early = false;          ///< a callback stopped the run after an evaluation
};

/// What callbacks ask of the loop after a step or an epoch (Transformers' TrainerControl).
struct control {
    bool should_log = false;       ///< make a history record (on_log follows)
    bool should_evaluate = false;  ///< evaluate on the validation set (on_evaluate follows)
    bool should_save = false;      ///< write a checkpoint
    bool should_stop = false;      ///< end the run (interrupted unless set in on_evaluate)
};

/// A training callback: any subset of the hooks. Callbacks observe, and steer through control;
/// they never change gradients or parameters. One with state that a resumed run needs (early
/// stopping's count) saves it in checkpoints under its name().
class callback {
  public:
    virtual ~callback() = default;
    /// The key of its state in checkpoints (callbacks without state need none).
    virtual std::string name() const { return {}; }
    /// Before the first step (after a resume has restored the loop).
    virtual void on_train_begin(const state&) {}
    /// After each optimizer step.
    virtual void on_step_end(const state&, control&) {}
    /// After each history record (training loss).
    virtual void on_log(const state&, const record&) {}
    /// After each evaluation; setting control.should_stop stops the run early.
    virtual void on_evaluate(const state&, const evaluation&, control&) {}
    /// After each epoch's last step.
    virtual void on_epoch_end(const state&, control&) {}
    /// When fit() returns (also after an interruption: state.interrupted).
    virtual void on_train_end(const state&) {}
    /// State a resumed run needs (null: none).
    virtual nlohmann::json save_state() const { return nullptr; }
    /// Restores what save_state gave.
    virtual void load_state(const nlohmann::json&) {}
};

/// When to log, evaluate, save and stop (Transformers' DefaultFlowCallback): a record every
/// log_every steps and at the last step; an evaluation every eval_every steps, or at each epoch's
/// end when 0; a checkpoint every checkpoint_every steps (not at an epoch's last batch) and at
/// each epoch's end; an interruption after stop_after steps, before the run's last step.
class flow : public callback {
  public:
    std::size_t log_every = 50;        ///< steps between records (0: the last step only)
    std::size_t eval_every = 0;        ///< steps between evaluations (0: each epoch)
    std::size_t checkpoint_every = 0;  ///< steps between checkpoints (0: each epoch)
    std::size_t stop_after = 0;        ///< end after this many steps (0: never)

    /// A flow with the given intervals.
    flow(std::size_t log, std::size_t eval, std::size_t checkpoint, std::size_t stop)
        : log_every(log), eval_every(eval), checkpoint_every(checkpoint), stop_after(stop) {}

    void on_step_end(const state& s, control& c) override {
        c.should_log |= (log_every && s.step % log_every == 0) || s.step == s.total_steps;
        c.should_evaluate |= eval_every && s.step % eval_every == 0;
        c.should_save |= checkpoint_every && s.step % checkpoint_every == 0;
        c.should_stop |= stop_after && s.step >= stop_after && s.step < s.total_steps;
    }
    void on_epoch_end(const state&, control& c) override {
        c.should_evaluate |= eval_every == 0;
        c.should_save = true;
    }
};

/// Stops the run when the validation metric has not improved by more than min_delta for
/// `patience` evaluations (Transformers' EarlyStoppingCallback). The trainer restores the best
/// weights at the end when it kept them (options.patience).
class early_stopping : public callback {
  public:
    std::size_t patience;  ///< evaluations without improvement before stopping
    double min_delta;      ///< the smallest improvement that counts

    /// Early stopping after `patience` evaluations without an improvement over min_delta.
    explicit early_stopping(std::size_t patience_, double min_delta_ = 0)
        : patience(patience_), min_delta(min_delta_) {}

    std::string name() const override { return "early_stopping"; }
    void on_evaluate(const state& s, const evaluation&, control& c) override {
        if (s.best_step == s.step && s.step != last_best_) {  // this evaluation was the best
            last_best_ = s.step, bad_evals_ = 0;
        } else {
            ++bad_evals_;
        }
        c.should_stop |= patience && bad_evals_ >= patience;
    }
    nlohmann::json save_state() const override {
        return {{"bad_evals", bad_evals_}, {"last_best", last_best_}};
    }
    void load_state(const nlohmann::json& j) override {
        bad_evals_ = j.at("bad_evals").get<std::size_t>();
        last_best_ = j.at("last_best").get<std::size_t>();
    }

  private:
    std::size_t bad_evals_ = 0;                // evaluations since the best
    std::size_t last_best_ = ~std::size_t(0);  // the step of the best evaluation seen
};

/// Progress on a stream: on a terminal, one bar redrawn at most 10 times a second; otherwise a
/// plain line every log_every steps. Evaluations get a line each.
class progress : public callback {
  public:
    std::ostream* out;      ///< where it goes
    std::size_t log_every;  ///< plain lines every N steps (not on a terminal)

    /// Progress on `o` (std::cerr: a bar when it is a terminal).
    explicit progress(std::ostream& o = std::cerr, std::size_t log_every_ = 50)
        : out(&o), log_every(log_every_) {}

    void on_train_begin(const state& s) override {
        tty_ = is_terminal(), bar_open_ = false, last_draw_ = -1, shown_ = 0;
        if (s.resumed)
            *out << "resumed from " << s.resumed_from.string() << " at step " << *s.resumed << "\n";
    }
    void on_step_end(const state& s, control&) override {
        shown_ = s.loss;
        if (tty_ && s.step != s.total_steps && s.seconds - last_draw_ < 0.1) return;
        last_draw_ = s.seconds;
        const double eta = s.step ? s.seconds / double(s.step) * double(s.total_steps - s.step) : 0;
        const double ex_s = s.seconds > 0 ? double(s.examples_seen) / s.seconds : 0;
        const std::string line = ftune::detail::cat(
            "epoch ", s.epoch + 1, "/", s.epochs, " step ", s.step, "/", s.total_steps, " loss ",
            fmt(shown_), " lr ", fmt(s.lr), " ", fmt(ex_s), " ex/s ETA ", int(eta) / 60, ":",
            (int(eta) % 60 < 10 ? "0" : ""), int(eta) % 60);
        if (tty_) {
            const std::size_t width = 24,
                              done = s.total_steps ? width * s.step / s.total_steps : width;
            *out << "\r\033[K[" << std::string(done, '#') << std::string(width - done, '.') << "] "
                 << line << std::flush;
            bar_open_ = true;
        } else if ((log_every && s.step % log_every == 0) || s.step == s.total_steps) {
            *out << line << "\n";
        }
    }
    void on_evaluate(const state& s, const evaluation& e, control&) override {
        bar_open_ = false;
        *out << (tty_ ? "\r\033[K" : "") << "step " << s.step << ": eval loss " << fmt(e.loss)
             << ", " << s.metric_name << " " << fmt(e.metric) << "\n";
    }
    void on_train_end(const state&) override {
        if (bar_open_) *out << "\n";
        bar_open_ = false;
    }

    /// A number as printf's %.4g.
    static std::string fmt(double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.4g", v);
        return buf;
    }

  private:
    bool is_terminal() const {
#ifdef FTUNE_HAVE_ISATTY
        return out == &std::cerr && ::isatty(2);
#else
        return false;
#endif
    }
    bool tty_ = false, bar_open_ = false;
    double last_draw_ = -1, shown_ = 0;
};

/// A JSON-lines log: one object per history record ({"step", "epoch", "loss", "lr",
/// "examples_per_s"}) and per evaluation ({"step", "epoch", "eval_loss", "eval_metric",
/// "eval_accuracy", "eval_f1"}). A resumed run appends.
class jsonl_log : public callback {
  public:
    std::filesystem::path path;  ///< the file

    /// A log written to p.
    explicit jsonl_log(std::filesystem::path p) : path(std::move(p)) {}

    void on_train_begin(const state& s) override {
        out_.open(path, s.resumed ? std::ios::app : std::ios::trunc);
        if (!out_) throw error(errc::io, path.string(), "cannot write the log");
    }
    void on_log(const state& s, const record& r) override {
        out_ << nlohmann::json{{"step", r.step},
                               {"epoch", r.epoch},
                               {"loss", r.loss},
                               {"lr", r.lr},
                               {"examples_per_s", double(s.examples_seen) / s.seconds}}
                    .dump()
             << "\n"
             << std::flush;
    }
    void on_evaluate(const state& s, const evaluation& e, control&) override {
        out_ << nlohmann::json{{"step", s.step},
                               {"epoch", double(s.step) / double(s.steps_per_epoch)},
                               {"eval_loss", e.loss},
                               {"eval_metric", e.metric},
                               {"eval_accuracy", e.accuracy},
                               {"eval_f1", e.f1}}
                    .dump()
             << "\n"
             << std::flush;
    }
    void on_train_end(const state&) override { out_.close(); }

  private:
    std::ofstream out_;
};

/// Writes an SVG plot of the training loss (left axis) and the validation metric (right axis)
/// against the step, atomically.
inline void write_curve_svg(const std::vector<record>& history, const std::string& metric_name,
                            const std::filesystem::path& path) {
    std::vector<std::pair<double, double>> loss, metric;
    for (const auto& r : history) {
        if (r.metric)
            metric.emplace_back(double(r.step), *r.metric);
        else
            loss.emplace_back(double(r.step), r.loss);
    }
    const auto fmt = progress::fmt;
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
        s += ftune::detail::cat("<text x=\"", W - R,
                                "\" y=\"18\" text-anchor=\"end\" fill=\"#d62728\">validation ",
                                metric_name, " (", fmt(mmin), " to ", fmt(mmax), ")</text>\n");
    }
    s += "</svg>\n";
    io::write_text_atomic(path, s);
}

/// Writes the SVG curve of the run (write_curve_svg) when it ends, unless it was interrupted (a
/// resumed run writes the whole curve).
class svg_curve : public callback {
  public:
    std::filesystem::path path;          ///< the file
    const std::vector<record>* history;  ///< the trainer's history

    /// A curve of `h` written to p.
    svg_curve(std::filesystem::path p, const std::vector<record>& h)
        : path(std::move(p)), history(&h) {}

    void on_train_end(const state& s) override {
        if (!s.interrupted) write_curve_svg(*history, s.metric_name, path);
    }
};

}  // namespace train
FTUNE_NAMESPACE_END
