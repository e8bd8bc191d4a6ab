// `ftune retrain` (periodic re-fine-tuning behind a promotion gate) and `ftune rollback`, on a
// model repository (serve::repository: versions/<name>/, `current`, history.tsv).
//
// retrain: the version in service (the champion) is fine-tuned again on the new data plus a
// replay sample of the old data, as a new version (the challenger); both are evaluated on the
// same held-out file; the challenger is promoted only when it beats the champion by the margin
// on the chosen metric. The report (both evaluations side by side) goes to
// reports/<version>.md and stdout, the decision to history.tsv. A crash at any point leaves a
// servable model: the challenger is trained in .retrain/<version>/ and moved into versions/ by
// one rename once complete, before anything switches, and the switch is promote()'s atomic
// rename (tests/cli/faults.sh kills retrain at many moments).
#pragma once

#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
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
    std::filesystem::path repo;       // --model: the model repository
    std::filesystem::path fresh;      // --new: the new labelled data (TSV/CSV)
    std::filesystem::path replay;     // --replay: the old data to sample from (optional)
    std::filesystem::path holdout;    // --holdout: where champion and challenger are compared
    double replay_ratio = 1.0;        // replayed old rows per new row
    double margin = 0.0;              // how much better the challenger must be
    std::string metric = "accuracy";  // accuracy or f1 (macro)
    std::string version;              // the challenger's name (default: a UTC time stamp)
    std::uint64_t seed = 42;          // of the replay sample and of the training
    std::vector<std::string> train;   // the other options, given to ftune train
};

// The rows of the training file: every new row, then `ratio` replayed old rows per new row
// (sampled without replacement by a seeded shuffle), written as TSV (tabs and line breaks in a
// text become spaces). Returns the number of replayed rows.
inline std::size_t write_retrain_data(const retrain_args& r, const std::filesystem::path& out) {
    const auto fresh = ftune::data::read_table(r.fresh);
    std::vector<const ftune::data::text_example*> rows;
    for (const auto& x : fresh.rows) rows.push_back(&x);
    ftune::data::text_dataset old;
    std::size_t replayed = 0;
    if (!r.replay.empty()) {
        old = ftune::data::read_table(r.replay);
        if (old.pairs != fresh.pairs)
            throw ftune::error(ftune::errc::invalid_argument, r.replay.string(),
                               "has " + std::string(old.pairs ? "pairs" : "single texts") +
                                   " but --new has " + (fresh.pairs ? "pairs" : "single texts"));
        std::vector<std::size_t> idx(old.rows.size());
        for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
        ftune::shuffle(std::span<std::size_t>(idx), ftune::generator(r.seed).next());
        replayed = std::min(idx.size(),
                            std::size_t(std::llround(r.replay_ratio * double(fresh.rows.size()))));
        for (std::size_t i = 0; i < replayed; ++i) rows.push_back(&old.rows[idx[i]]);
    }
    auto clean = [](std::string s) {
        for (char& c : s)
            if (c == '\t' || c == '\n' || c == '\r') c = ' ';
        return s;
    };
    std::ofstream f(out);
    f << (fresh.pairs ? "sentence1\tsentence2\tlabel\n" : "sentence\tlabel\n");
    for (const auto* x : rows) {
        f << clean(x->text) << '\t';
        if (fresh.pairs) f << clean(x->text_pair) << '\t';
        f << clean(x->label) << '\n';
    }
    f.close();
    if (!f) throw ftune::error(ftune::errc::io, out.string(), "cannot write (disk full?)");
    return replayed;
}

// The evaluation of the sequence classifier at `dir` on the held-out file, and its report.
inline std::pair<ftune::train::evaluation, std::string> evaluate_version(
    const std::filesystem::path& dir, const std::filesystem::path& holdout) {
    train_args a;
    a.model = dir;
    a.data = holdout;
    a.opt.progress = nullptr;
    return evaluate_with<ftune::bert::sequence_classifier<ftune::bert::encoder<float>>>(
        a, task_of(dir));
}

// Runs `ftune retrain` with argv[2..]; returns the exit status (0 whether or not promoted).
inline int run_retrain(int argc, char** argv) {
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
            if (v != "accuracy" && v != "f1")
                throw ftune::error(ftune::errc::invalid_argument, a + " " + v,
                                   "expected accuracy or f1 (macro F1)");
            r.metric = v;
        } else if (a == "--version")
            r.version = v;
        else if (a == "--seed") {
            r.seed = std::uint64_t(number());
            r.train.insert(r.train.end(), {a, v});
        } else if (a == "--out" || a == "--train" || a == "--valid")
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
    const auto data = work / "train.tsv";
    const std::size_t replayed = write_retrain_data(r, data);
    std::cerr << "ftune retrain: champion " << champion << "; challenger " << r.version
              << " trained on " << r.fresh.string() << " + " << replayed << " replayed rows\n";
    // the challenger: ftune train from the champion
    // trained in the work directory (its log and checkpoints beside the model), then moved to
    // versions/ in one rename: a version directory is always a complete model
    const auto trained = work / "model";
    std::vector<std::string> args{
        "ftune",   "train",       "--model", repo.promoted_path().string(),
        "--train", data.string(), "--out",   trained.string()};
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
    const auto [champ, champ_report] = evaluate_version(repo.promoted_path(), r.holdout);
    const auto [chall, chall_report] = evaluate_version(challenger_dir, r.holdout);
    auto value = [&](const ftune::train::evaluation& e) {
        return r.metric == "f1" ? e.f1 : e.accuracy;
    };
    const double before = value(champ), after = value(chall);
    const bool promote = after - before >= r.margin;
    std::ostringstream rep;
    rep << "# Retraining " << r.version << "\n\n"
        << "champion " << champion << ", challenger " << r.version << "; trained on "
        << r.fresh.string() << " and " << replayed << " rows replayed from "
        << (r.replay.empty() ? std::string("nothing") : r.replay.string()) << "; both evaluated on "
        << r.holdout.string() << "\n\n"
        << "| | champion (" << champion << ") | challenger (" << r.version << ") |\n"
        << "|---|---:|---:|\n"
        << "| accuracy | " << num(champ.accuracy) << " | " << num(chall.accuracy) << " |\n"
        << "| macro F1 | " << num(champ.f1) << " | " << num(chall.f1) << " |\n"
        << "| loss | " << num(champ.loss) << " | " << num(chall.loss) << " |\n\n"
        << "decision: " << (promote ? "promoted" : "kept out of service") << " (" << r.metric << " "
        << num(before) << " -> " << num(after) << ", margin " << num(r.margin) << ")\n\n"
        << "## champion (" << champion << ")\n\n```\n"
        << champ_report << "```\n\n## challenger (" << r.version << ")\n\n```\n"
        << chall_report << "```\n";
    std::filesystem::create_directories(r.repo / "reports");
    ftune::io::write_text_atomic(r.repo / "reports" / (r.version + ".md"), rep.str());
    ftune::io::detail::crash_point("retrain-reported");
    if (promote) repo.promote(r.version);
    ftune::io::detail::crash_point("retrain-promoted");
    repo.record(promote ? "retrain-promoted" : "retrain-kept", r.version, champion,
                r.metric + " " + num(before) + " -> " + num(after));
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
