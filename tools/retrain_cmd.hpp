// `ftune retrain` (periodic re-fine-tuning behind a promotion gate) and `ftune rollback`, on a
// model repository (serve::repository: versions/<name>/, `current`, history.tsv).
//
// retrain: the version in service (the champion) is fine-tuned again on the new data plus a
// replay sample of the old data, as a new version (the challenger); both are evaluated on the
// same held-out file; the challenger is promoted only when it beats the champion by the margin
// on the chosen metric. Sequence classifiers (single-label, multi-label, regression; encoders
// and decoders) read TSV/CSV rows, token classifiers (NER) CoNLL sentences. The report (both
// evaluations side by side) goes to reports/<version>.md and stdout, the decision to history.tsv. A
// crash at any point leaves a servable model: the challenger is trained in .retrain/<version>/ and
// moved into versions/ by one rename once complete, before anything switches, and the switch is
// promote()'s atomic rename (tests/cli/faults.sh kills retrain at many moments).
#pragma once

#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <ftune/core/rng.hpp>
#include <ftune/io/atomic.hpp>
#include <ftune/serve/repository.hpp>

#include "predict_cmd.hpp"
#include "train_cmd.hpp"

namespace cli {

// Options of `ftune retrain`.
struct retrain_args {
    std::filesystem::path repo;      // --model: the model repository
    std::filesystem::path fresh;     // --new: the new labelled data (TSV/CSV; CoNLL for ner)
    std::filesystem::path replay;    // --replay: the old data to sample from (optional)
    std::filesystem::path holdout;   // --holdout: where champion and challenger are compared
    double replay_ratio = 1.0;       // replayed old rows per new row
    double margin = 0.0;             // how much better the challenger must be
    std::string metric = "auto";     // auto (the task's), accuracy, f1 or loss
    std::optional<cli::task> task;   // --task (default: the champion's, task_of)
    std::string version;             // the challenger's name (default: a UTC time stamp)
    std::uint64_t seed = 42;         // of the replay sample and of the training
    std::vector<std::string> train;  // the other options, given to ftune train
};

// The positions of the old examples to replay: `ratio` per new example (of `fresh`), at most
// all `old`, chosen without replacement by a shuffle seeded with `seed`.
inline std::vector<std::size_t> replay_sample(std::size_t old, std::size_t fresh, double ratio,
                                              std::uint64_t seed) {
    std::vector<std::size_t> idx(old);
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    ftune::shuffle(std::span<std::size_t>(idx), ftune::generator(seed).next());
    idx.resize(std::min(old, std::size_t(std::llround(ratio * double(fresh)))));
    return idx;
}

// The training file: every new example, then the replay sample of the old ones; TSV rows
// (tabs and line breaks in a text become spaces) or, for ner, CoNLL sentences. Returns the
// number of replayed examples.
inline std::size_t write_retrain_data(const retrain_args& r, cli::task task,
                                      const std::filesystem::path& out) {
    std::ofstream f(out);
    std::size_t replayed = 0;
    if (task == task::ner) {  // sentences: "token tag" lines, a blank line after each
        const auto fresh = ftune::data::read_conll(r.fresh);
        const auto old = r.replay.empty() ? std::vector<ftune::data::tagged_sentence>{}
                                          : ftune::data::read_conll(r.replay);
        auto write = [&](const ftune::data::tagged_sentence& x) {
            for (std::size_t i = 0; i < x.tokens.size(); ++i)
                f << x.tokens[i] << ' ' << x.tags[i] << '\n';
            f << '\n';
        };
        for (const auto& x : fresh) write(x);
        const auto idx = replay_sample(old.size(), fresh.size(), r.replay_ratio, r.seed);
        for (const std::size_t i : idx) write(old[i]);
        replayed = idx.size();
    } else {
        const auto fresh = ftune::data::read_table(r.fresh);
        ftune::data::text_dataset old;
        if (!r.replay.empty()) {
            old = ftune::data::read_table(r.replay);
            if (old.pairs != fresh.pairs)
                throw ftune::error(ftune::errc::invalid_argument, r.replay.string(),
                                   "has " + std::string(old.pairs ? "pairs" : "single texts") +
                                       " but --new has " +
                                       (fresh.pairs ? "pairs" : "single texts"));
        }
        auto clean = [](std::string s) {
            for (char& c : s)
                if (c == '\t' || c == '\n' || c == '\r') c = ' ';
            return s;
        };
        auto write = [&](const ftune::data::text_example& x) {
            f << clean(x.text) << '\t';
            if (fresh.pairs) f << clean(x.text_pair) << '\t';
            f << clean(x.label) << '\n';
        };
        f << (fresh.pairs ? "sentence1\tsentence2\tlabel\n" : "sentence\tlabel\n");
        for (const auto& x : fresh.rows) write(x);
        const auto idx = replay_sample(old.rows.size(), fresh.rows.size(), r.replay_ratio, r.seed);
        for (const std::size_t i : idx) write(old.rows[i]);
        replayed = idx.size();
    }
    f.close();
    if (!f) throw ftune::error(ftune::errc::io, out.string(), "cannot write (disk full?)");
    return replayed;
}

// The evaluation of the model at `dir` for `task` on the held-out file, and its report (what
// `ftune eval` prints).
inline std::pair<ftune::train::evaluation, std::string> evaluate_version(
    const std::filesystem::path& dir, cli::task task, const std::filesystem::path& holdout) {
    train_args a;
    a.model = dir;
    a.data = holdout;
    a.opt.progress = nullptr;
    return evaluate_classifier(a, task);
}

// The gate's metric of an evaluation, on a higher-is-better scale (loss: its negative), and
// its name and value as reported.
struct gate_metric {
    std::string name;  // "accuracy", "macro F1", "entity F1", "MSE", ...
    double score;      // higher is better
    double shown;      // as reported (a loss as it is)
};

// The metric `--metric` names for the task (auto: the task's own selection metric).
inline gate_metric gate_value(const std::string& metric, cli::task task,
                              const ftune::train::evaluation& e) {
    const bool ner = task == task::ner;
    std::string m = metric;
    if (m == "auto") m = task == task::regression ? "loss" : ner ? "f1" : "accuracy";
    if (m == "f1") return {ner ? "entity F1" : "macro F1", e.f1, e.f1};
    if (m == "loss") return {task == task::regression ? "MSE" : "loss", -e.loss, e.loss};
    return {task == task::multilabel ? "subset accuracy"
            : ner                    ? "token accuracy"
                                     : "accuracy",
            e.accuracy, e.accuracy};
}

// The table rows of the report for the task: its metrics, champion and challenger side by side.
inline std::string report_rows(cli::task task, const ftune::train::evaluation& a,
                               const ftune::train::evaluation& b) {
    std::ostringstream o;
    auto row = [&](const char* name, double x, double y) {
        o << "| " << name << " | " << num(x) << " | " << num(y) << " |\n";
    };
    switch (task) {
        case task::ner:
            row("token accuracy", a.accuracy, b.accuracy);
            row("entity F1 (seqeval)", a.f1, b.f1);
            row("loss", a.loss, b.loss);
            break;
        case task::multilabel:
            row("subset accuracy", a.accuracy, b.accuracy);
            row("loss", a.loss, b.loss);
            break;
        case task::regression:
            row("MSE", a.loss, b.loss);
            break;
        default:
            row("accuracy", a.accuracy, b.accuracy);
            row("macro F1", a.f1, b.f1);
            row("loss", a.loss, b.loss);
    }
    return o.str();
}

// Runs `ftune retrain` with argv[2..]; returns the exit status (0 whether or not promoted).
inline int run_retrain(int argc, char** argv) {
    if (ftune::dist::launched_by_mpi())
        throw ftune::error(ftune::errc::unsupported, "ftune retrain",
                           "runs in one process (it promotes a version): not under mpirun");
    retrain_args r;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) throw ftune::error(ftune::errc::invalid_argument, a, "expects a value");
        const std::string v = argv[++i];
        auto number = [&] {
            std::size_t pos = 0;
            double x = NAN;
            try {
                x = std::stod(v, &pos);
            } catch (const std::exception&) {
            }
            if (pos != v.size() || !std::isfinite(x))
                throw ftune::error(ftune::errc::invalid_argument, a + " " + v, "expects a number");
            return x;
        };
        if (a == "--model")
            r.repo = v;
        else if (a == "--new")
            r.fresh = v;
        else if (a == "--replay")
            r.replay = v;
        else if (a == "--holdout")
            r.holdout = v;
        else if (a == "--replay-ratio") {
            r.replay_ratio = number();
            if (r.replay_ratio < 0)
                throw ftune::error(ftune::errc::invalid_argument, a + " " + v, "is at least 0");
        } else if (a == "--margin")
            r.margin = number();
        else if (a == "--metric") {
            if (v != "auto" && v != "accuracy" && v != "f1" && v != "loss")
                throw ftune::error(ftune::errc::invalid_argument, a + " " + v,
                                   "expected auto (the task's metric), accuracy, f1 (macro F1; "
                                   "ner: entity F1) or loss (lower is better; regression: MSE)");
            r.metric = v;
        } else if (a == "--task")
            r.task = parse_task(v);
        else if (a == "--version")
            r.version = v;
        else if (a == "--seed") {
            const double x = number();
            if (x < 0 || x != std::floor(x) || x > 9.0e15)
                throw ftune::error(ftune::errc::invalid_argument, a + " " + v,
                                   "a seed is a whole number from 0");
            r.seed = std::uint64_t(x);
            r.train.insert(r.train.end(), {a, v});
        } else if (a == "--peft" || a.starts_with("--lora-") || a == "--stop-after")
            throw ftune::error(ftune::errc::invalid_argument, a,
                               "not for ftune retrain: a challenger is a whole model that "
                               "replaces the one in service (an adapter or a run stopped "
                               "early is not); train adapters with ftune train --peft and "
                               "serve them with ftune serve --adapter");
        else if (a == "--out" || a == "--train" || a == "--valid")
            throw ftune::error(ftune::errc::invalid_argument, a,
                               "ftune retrain chooses it: the challenger goes to "
                               "versions/<version>, trained on --new and --replay");
        else
            r.train.insert(r.train.end(), {a, v});  // an option of ftune train
    }
    if (r.repo.empty() || r.fresh.empty() || r.holdout.empty())
        throw ftune::error(ftune::errc::invalid_argument, "ftune retrain",
                           "--model REPOSITORY, --new FILE and --holdout FILE are required");
    const ftune::serve::repository repo(r.repo);
    if (!repo.versioned())
        throw ftune::error(ftune::errc::invalid_argument, r.repo.string(),
                           "is not a model repository: put the model in versions/<name>/ and "
                           "run ftune promote --model DIR --version <name>");
    const std::string champion = repo.promoted();
    const cli::task task = r.task ? *r.task : task_of(repo.promoted_path());
    if (task != task::classify && task != task::multilabel && task != task::regression &&
        task != task::ner)
        throw ftune::error(ftune::errc::unsupported, repo.promoted_path().string(),
                           "is a model for --task " + task_name(task) +
                               ": ftune retrain gates classifiers (classify, multilabel, "
                               "regression) and token classifiers (ner); train others with "
                               "ftune train and put them in service with ftune promote");
    if (r.metric == "f1" && (task == task::multilabel || task == task::regression))
        throw ftune::error(
            ftune::errc::invalid_argument, "--metric f1",
            "is for classify and ner; a " + task_name(task) + " model is gated on " +
                (task == task::multilabel ? "accuracy (subset) or loss" : "loss (MSE)"));
    if (r.metric == "accuracy" && task == task::regression)
        throw ftune::error(ftune::errc::invalid_argument, "--metric accuracy",
                           "a regression model is gated on loss (MSE)");
    if (r.version.empty()) {
        const std::time_t now = std::time(nullptr);
        char stamp[32];
        std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::gmtime(&now));
        r.version = stamp;
    }
    const auto challenger_dir = r.repo / "versions" / r.version;
    if (std::filesystem::exists(challenger_dir))
        throw ftune::error(ftune::errc::invalid_argument, challenger_dir.string(),
                           "exists already: choose another --version");
    // the training data, beside the versions (removed after)
    const auto work = r.repo / ".retrain" / r.version;
    std::filesystem::create_directories(work);
    const auto data = work / (task == task::ner ? "train.conll" : "train.tsv");
    const std::size_t replayed = write_retrain_data(r, task, data);
    const char* unit = task == task::ner ? " replayed sentences" : " replayed rows";
    std::cerr << "ftune retrain: champion " << champion << " (" << task_name(task)
              << "); challenger " << r.version << " trained on " << r.fresh.string() << " + "
              << replayed << unit << "\n";
    // the challenger: ftune train from the champion
    // trained in the work directory (its log and checkpoints beside the model), then moved to
    // versions/ in one rename: a version directory is always a complete model
    const auto trained = work / "model";
    std::vector<std::string> args{
        "ftune",   "train",        "--model", repo.promoted_path().string(),
        "--train", data.string(),  "--out",   trained.string(),
        "--task",  task_name(task)};
    args.insert(args.end(), r.train.begin(), r.train.end());
    std::vector<char*> argv2;
    for (auto& s : args) argv2.push_back(s.data());
    if (const int status = run_train(int(argv2.size()), argv2.data()); status != 0) return status;
    ftune::io::detail::crash_point("retrain-trained");
    std::filesystem::rename(trained, challenger_dir);
    ftune::io::detail::sync_file(challenger_dir.parent_path());
    ftune::io::detail::crash_point("retrain-saved");
    std::filesystem::remove_all(work);
    // the gate: both on the same held-out file
    const auto [champ, champ_report] = evaluate_version(repo.promoted_path(), task, r.holdout);
    const auto [chall, chall_report] = evaluate_version(challenger_dir, task, r.holdout);
    const auto before = gate_value(r.metric, task, champ),
               after = gate_value(r.metric, task, chall);
    const bool promote = after.score - before.score >= r.margin;
    const std::string change = before.name + " " + num(before.shown) + " -> " + num(after.shown);
    std::ostringstream rep;
    rep << "# Retraining " << r.version << "\n\n"
        << "champion " << champion << ", challenger " << r.version << "; trained on "
        << r.fresh.string() << " and " << replayed << unit << " from "
        << (r.replay.empty() ? std::string("nothing") : r.replay.string()) << "; both evaluated on "
        << r.holdout.string() << "\n\n"
        << "| | champion (" << champion << ") | challenger (" << r.version << ") |\n"
        << "|---|---:|---:|\n"
        << report_rows(task, champ, chall) << "\n"
        << "decision: " << (promote ? "promoted" : "kept out of service") << " (" << change
        << ", margin " << num(r.margin) << ")\n\n"
        << "## champion (" << champion << ")\n\n```\n"
        << champ_report << "```\n\n## challenger (" << r.version << ")\n\n```\n"
        << chall_report << "```\n";
    std::filesystem::create_directories(r.repo / "reports");
    ftune::io::write_text_atomic(r.repo / "reports" / (r.version + ".md"), rep.str());
    ftune::io::detail::crash_point("retrain-reported");
    if (promote) repo.promote(r.version);
    ftune::io::detail::crash_point("retrain-promoted");
    repo.record(promote ? "retrain-promoted" : "retrain-kept", r.version, champion, change);
    std::cout << rep.str();
    return 0;
}

// Runs `ftune rollback --model REPOSITORY [--to VERSION]`: the version in service before the
// current one (history.tsv), or the one named, back in service.
inline int run_rollback(int argc, char** argv) {
    std::filesystem::path dir;
    std::string to;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) throw ftune::error(ftune::errc::invalid_argument, a, "expects a value");
        const std::string v = argv[++i];
        if (a == "--model")
            dir = v;
        else if (a == "--to")
            to = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, a,
                               "unknown option of ftune rollback");
    }
    if (dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "ftune rollback",
                           "--model REPOSITORY is required");
    const ftune::serve::repository repo(dir);
    const std::string now = repo.promoted();
    if (to.empty()) to = repo.previous();
    if (to.empty())
        throw ftune::error(ftune::errc::invalid_argument, (dir / "history.tsv").string(),
                           "names no version in service before " + now +
                               ": give one with --to VERSION (ftune promote --model DIR lists "
                               "them)");
    repo.promote(to);
    repo.record("rollback", to, now);
    std::cout << "rolled back from " << now << " to " << to << "\n";
    return 0;
}

}  // namespace cli
