// `ftune train` (fine-tune a Hugging Face checkpoint on a TSV/CSV or CoNLL file and save a
// Hugging Face model directory) and `ftune eval` (the evaluation report of a model on a file).
#pragma once

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <ftune/data/readers.hpp>
#include <ftune/train/relations.hpp>
#include <ftune/data/conversations.hpp>
#include <ftune/data/squad.hpp>
#include <ftune/data/summaries.hpp>
#include <ftune/io/gguf_model.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/train/generation_eval.hpp>
#include <ftune/train/lm_batching.hpp>
#include <ftune/train/qa.hpp>
#include <ftune/train/trainer.hpp>
#if FTUNE_WITH_MPI
#include <ftune/dist/mpi.hpp>
#endif

#include "peft_cmd.hpp"

namespace cli {

// What `--task` names: a head, and for sequence classifiers the problem type.
enum class task { classify, multilabel, regression, ner, mlm, qa, causal_lm, chat, relation };

// Options of `ftune train` / `ftune eval`.
struct train_args {
    std::filesystem::path model, train, valid, out, data;
    std::optional<cli::task> task;
    ftune::train::options opt;
    std::size_t max_length = 128;   // Hugging Face's run_glue / run_ner default
    bool max_length_given = false;  // --max-length given (decoders default to TRL's 1024)
    std::string freeze = "none";
    std::size_t max_train = 0;        // use only the first N training examples (0: all), as
                                      // run_glue's --max_train_samples
    std::string optimizer = "adamw";  // --optimizer adamw|sgd
    double momentum = 0;              // --momentum (sgd)
    std::size_t eval_generate = 100;  // --eval-generate N: chat replies generated and scored
                                      // (N validation cases spread over the file; 0: none)
    std::size_t max_new_tokens = 0;   // --max-new-tokens (0: longest reference + 8)
    cli::peft_args peft;              // --peft and the --lora-* options (train)
    std::filesystem::path adapter;    // --adapter DIR: a LoRA adapter on --model (eval)
    double dist_timeout = 600;        // --dist-timeout S: longest wait for another rank
    int threads = 0;                  // --threads N (0: OMP_NUM_THREADS; under mpirun, 1)
};

// The optimizer and the learning-rate schedule objects the options name, for a run over
// `examples` training examples (the trainer runs what it is given).
template <class Trainer>
void choose_optimization(Trainer& t, const train_args& a, std::size_t examples) {
    using T = typename Trainer::T;
    const std::size_t total = t.total_steps(examples);
    t.optimizer =
        ftune::optim::make_optimizer<T>(a.optimizer, a.opt.lr, a.opt.weight_decay, a.momentum);
    t.lr_schedule = ftune::schedule::make(
        a.opt.schedule, a.opt.lr, ftune::schedule::warmup_steps(a.opt.warmup_ratio, total), total);
}

// The task named on the command line.
inline cli::task parse_task(const std::string& v) {
    if (v == "classify") return task::classify;
    if (v == "multilabel") return task::multilabel;
    if (v == "regression") return task::regression;
    if (v == "ner") return task::ner;
    if (v == "mlm") return task::mlm;
    if (v == "qa") return task::qa;
    if (v == "causal-lm") return task::causal_lm;
    if (v == "chat") return task::chat;
    if (v == "relation") return task::relation;
    throw ftune::error(ftune::errc::invalid_argument, "--task " + v,
                       "expected classify, multilabel, regression, ner, mlm, qa, causal-lm, chat "
                       "or relation");
}

// The name of a task on the command line (parse_task's inverse).
inline std::string task_name(cli::task t) {
    static const char* names[] = {"classify", "multilabel", "regression", "ner",     "mlm",
                                  "qa",       "causal-lm",  "chat",       "relation"};
    return names[static_cast<int>(t)];
}

// Parses the options shared by train and eval from argv[2..].
inline train_args parse_train_args(int argc, char** argv, bool eval) {
    train_args a;
    std::string lora_given;  // a --lora-* option seen (it needs --peft lora)
    for (int i = 2; i < argc; ++i) {
        const std::string k = argv[i];
        if (i + 1 >= argc) throw ftune::error(ftune::errc::invalid_argument, k, "expects a value");
        const std::string v = argv[++i];
        auto number = [&]() -> double {
            std::size_t pos = 0;
            double d = 0;
            try {
                d = std::stod(v, &pos);
            } catch (const std::exception&) {
                pos = 0;
            }
            if (pos != v.size() || !(d >= 0))
                throw ftune::error(ftune::errc::invalid_argument, k + " " + v,
                                   "expects a non-negative number");
            return d;
        };
        auto count = [&]() -> std::size_t {
            const double d = number();
            if (d != std::floor(d) || d < 1)
                throw ftune::error(ftune::errc::invalid_argument, k + " " + v,
                                   "expects a positive integer");
            return std::size_t(d);
        };
        if (k == "--model")
            a.model = v;
        else if (k == "--task")
            a.task = parse_task(v);
        else if (k == "--batch-size")
            a.opt.batch_size = count();
        else if (k == "--max-length")
            a.max_length = count(), a.max_length_given = true;
        else if (k == "--eval-generate")
            a.eval_generate = number() == 0 ? 0 : count();
        else if (k == "--max-new-tokens")
            a.max_new_tokens = count();
        else if (eval && k == "--data")
            a.data = v;
        else if (eval && k == "--adapter")
            a.adapter = v;
        else if (!eval && k == "--peft") {
            if (v != "none" && v != "lora" && v != "bitfit" && v != "head")
                throw ftune::error(ftune::errc::invalid_argument, "--peft " + v,
                                   "expected none, lora, bitfit or head");
            a.peft.method = v;
        } else if (!eval && k == "--lora-r")
            a.peft.lora.r = count(), lora_given = k;
        else if (!eval && k == "--lora-alpha")
            a.peft.lora.alpha = number(), lora_given = k;
        else if (!eval && k == "--lora-dropout") {
            a.peft.lora.dropout = number(), lora_given = k;
            if (a.peft.lora.dropout >= 1)
                throw ftune::error(ftune::errc::invalid_argument, k + " " + v,
                                   "expects a probability below 1");
        } else if (!eval && k == "--lora-targets")
            a.peft.lora.target_modules = split_list(v), a.peft.targets_given = true, lora_given = k;
        else if (!eval && k == "--lora-modules-to-save")
            a.peft.lora.modules_to_save = v == "none" ? std::vector<std::string>{} : split_list(v),
            a.peft.modules_given = true;
        else if (!eval && k == "--lora-bias") {
            if (v == "none")
                a.peft.lora.bias = ftune::peft::lora_bias::none;
            else if (v == "all")
                a.peft.lora.bias = ftune::peft::lora_bias::all;
            else if (v == "lora_only")
                a.peft.lora.bias = ftune::peft::lora_bias::lora_only;
            else
                throw ftune::error(ftune::errc::invalid_argument, k + " " + v,
                                   "expected none, all or lora_only (PEFT's bias)");
            lora_given = k;
        } else if (!eval && k == "--train")
            a.train = v;
        else if (!eval && k == "--valid")
            a.valid = v;
        else if (!eval && k == "--out")
            a.out = v;
        else if (!eval && k == "--epochs")
            a.opt.epochs = count();
        else if (!eval && k == "--lr")
            a.opt.lr = number();
        else if (!eval && k == "--seed")
            a.opt.seed = std::uint64_t(number());
        else if (k == "--precision")
            a.opt.precision = parse_precision(k, v);
        else if (k == "--device")
            a.opt.device = ftune::device_spec::parse(v);
        else if (!eval && k == "--pack-frozen") {
            if (v != "on" && v != "off")
                throw ftune::error(ftune::errc::invalid_argument, k + " " + v,
                                   "expected on or off");
            a.opt.pack_frozen_weights = v == "on";
        } else if (!eval && k == "--warmup-ratio")
            a.opt.warmup_ratio = number();
        else if (!eval && k == "--weight-decay")
            a.opt.weight_decay = number();
        else if (!eval && k == "--freeze")
            a.freeze = v;
        else if (!eval && k == "--early-stopping")
            a.opt.patience = count();
        else if (!eval && k == "--eval-every")
            a.opt.eval_every = count();
        else if (!eval && k == "--grad-accum")
            a.opt.grad_accum = count();
        else if (!eval && k == "--schedule")
            a.opt.schedule = v;
        else if (!eval && k == "--optimizer")
            a.optimizer = v;
        else if (!eval && k == "--momentum")
            a.momentum = number();
        else if (!eval && k == "--resume")
            a.opt.resume_from = v;
        else if (!eval && k == "--checkpoint-every")
            a.opt.checkpoint_every = count();
        else if (!eval && k == "--stop-after")
            a.opt.stop_after = count();
        else if (!eval && k == "--max-train-examples")
            a.max_train = count();
        else if (!eval && k == "--virtual-ranks")
            a.opt.virtual_ranks = count();
        else if (!eval && k == "--dist-timeout") {
            a.dist_timeout = number();
            if (!(a.dist_timeout > 0))
                throw ftune::error(ftune::errc::invalid_argument, k + " " + v,
                                   "expects a positive number of seconds");
        } else if (k == "--threads")
            a.threads = int(count());
        else
            throw ftune::error(
                ftune::errc::invalid_argument, k,
                eval ? "unknown option of ftune eval" : "unknown option of ftune train");
    }
    if (!lora_given.empty() && a.peft.method != "lora")
        throw ftune::error(ftune::errc::invalid_argument, lora_given,
                           "is an option of LoRA: give --peft lora");
    if (a.peft.method != "none" && a.freeze != "none")
        throw ftune::error(ftune::errc::invalid_argument, "--freeze " + a.freeze,
                           "--peft " + a.peft.method + " chooses what trains: drop --freeze");
    if (a.model.empty() && !a.adapter.empty()) a.model = adapter_base(a.adapter);
    if (a.model.empty())
        throw ftune::error(ftune::errc::invalid_argument, eval ? "ftune eval" : "ftune train",
                           "--model DIR is required (a Hugging Face model directory)");
    if (eval && a.data.empty())
        throw ftune::error(ftune::errc::invalid_argument, "ftune eval", "--data FILE is required");
    if (!eval && (a.train.empty() || a.out.empty()))
        throw ftune::error(ftune::errc::invalid_argument, "ftune train",
                           "--train FILE and --out DIR are required");
    return a;
}

// The problem type of a sequence-classification task.
inline ftune::heads::problem problem_of(cli::task t) {
    switch (t) {
        case task::multilabel:
            return ftune::heads::problem::multi_label_classification;
        case task::regression:
            return ftune::heads::problem::regression;
        default:
            return ftune::heads::problem::single_label_classification;
    }
}

// The evaluation report of a trained or loaded model, as its head writes it (scikit-learn's
// classification_report, seqeval's entity scores, perplexity...).
template <class Model>
std::string report(ftune::train::trainer<Model>& t, const std::vector<ftune::train::example>& xs,
                   const std::vector<std::string>& names) {
    return t.model.head.report(t.evaluate(xs), names);
}

// A labelled file of a sequence task: TSV/CSV; for relation, also SemEval-2010 Task 8's release
// format (.TXT), and the rows' entity markers checked.
inline ftune::data::text_dataset read_labelled(const std::filesystem::path& path, cli::task t) {
    if (t != task::relation) return ftune::data::read_table(path);
    auto ext = path.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    auto d = ext == ".txt" ? ftune::data::read_semeval2010(path) : ftune::data::read_table(path);
    ftune::data::check_entity_markers(d);
    return d;
}

// The encoded examples of a sequence task's file: a relation's keep their entity markers
// (train::encode_relations), the others are cut at max_length (train::encode).
template <class Tokenizer>
std::vector<ftune::train::example> encode_labelled(const Tokenizer& tok,
                                                   const ftune::data::text_dataset& d, cli::task t,
                                                   const std::vector<std::string>& names,
                                                   std::size_t max_len) {
    if constexpr (std::is_same_v<Tokenizer, ftune::text::bert_tokenizer>)
        if (t == task::relation) return ftune::train::encode_relations(tok, d, names, max_len);
    return ftune::train::encode(tok, d, problem_of(t), names, max_len);
}

// Labels seen in a file, for a task (multilabel labels split at commas).
inline std::vector<std::string> labels_in(const ftune::data::text_dataset& d, cli::task t) {
    std::vector<std::string> seen;
    for (const auto& r : d.rows) {
        if (t != task::multilabel) {
            seen.push_back(r.label);
            continue;
        }
        std::size_t a = 0;
        while (a <= r.label.size()) {
            std::size_t b = r.label.find(',', a);
            if (b == std::string::npos) b = r.label.size();
            if (b > a) seen.push_back(r.label.substr(a, b - a));
            a = b + 1;
        }
    }
    return seen;
}

// Before fit: freezes what --freeze names (returns how many weights), applies --peft and prints
// the trainable parameters, creates --out and points the training log and checkpoints into it.
template <class Model>
std::size_t prepare_run(train_args& a, Model& model) {
    const std::size_t frozen =
        ftune::train::apply_freeze(model, ftune::train::freeze::parse(a.freeze));
    apply_peft(a.peft, model, a.opt.seed);
    std::filesystem::create_directories(a.out);
    a.opt.log_path = a.out / "train_log.jsonl";
    a.opt.checkpoint_dir = a.out / "checkpoint";
    return frozen;
}

// After fit: when --stop-after ended the run before its last step, says how to resume and
// returns false (nothing saved); otherwise saves the model (a LoRA run: its adapter as PEFT
// saves it, with ftune_task.json) and its training curve, removes the checkpoints and returns
// true.
template <class Trainer, class Result, class HfModel>
bool save_trained(const train_args& a, Trainer& t, const Result& r, HfModel& m) {
    if (r.interrupted) {
        std::cerr << "ftune: stopped after " << r.steps << " steps; continue with --resume "
                  << a.opt.checkpoint_dir.string() << "\n";
        return false;
    }
    if (a.opt.group && a.opt.group->rank() != 0) return true;  // rank 0 writes the files
    if (a.peft.method == "lora") {
        const std::string task = task_name(a.task.value_or(task::classify));
        ftune::peft::save_adapter(
            m.model, a.peft.lora, a.out,
            {.task_type = peft_task_type(task),
             .base_model_name_or_path = std::filesystem::absolute(a.model).string()});
        write_task_file(a.out, task, m.config.id2label);
    } else {
        ftune::io::save_hf(m, a.out);
    }
    std::filesystem::remove_all(a.opt.checkpoint_dir);  // finished: the model is saved
    t.write_plot(a.out / "training_curve.svg");
    return true;
}

// Whether Model is a decoder (byte-level BPE tokenizer, GGUF files) rather than an encoder.
template <class Model>
inline constexpr bool is_decoder = !std::is_same_v<
    typename ftune::io::hf_family<ftune::io::family_config_t<Model>>::tokenizer_type,
    ftune::text::bert_tokenizer>;

// A model from --model: a Hugging Face directory, or (decoders) a GGUF file; with an adapter
// directory, its LoRA adapter loaded on top (the head's labels from the adapter).
template <class Model>
ftune::io::hf_model<Model> load_model(const std::filesystem::path& path,
                                      ftune::io::load_options o = {},
                                      const std::filesystem::path& adapter = {}) {
    if (!adapter.empty() && o.labels.empty()) o.labels = adapter_labels(adapter);
    auto m = [&] {
        if constexpr (is_decoder<Model>)
            if (std::filesystem::is_regular_file(path)) return ftune::io::load_gguf<Model>(path, o);
        return ftune::io::load_hf<Model>(path, o);
    }();
    if (!adapter.empty()) attach_adapter(m, adapter);
    return m;
}

// The label names a checkpoint records (config.json id2label; none in a GGUF file).
template <class Model>
std::vector<std::string> recorded_labels(const std::filesystem::path& path) {
    if (std::filesystem::is_regular_file(path)) return {};
    return ftune::io::read_hf_config<ftune::io::family_config_t<Model>>(path / "config.json")
        .id2label;
}

// Fine-tunes with a model type; returns the exit status.
template <class Model>
int train_with(train_args& a, cli::task task) {
    if constexpr (is_decoder<Model>)
        if (task == task::mlm || task == task::ner)
            throw ftune::error(ftune::errc::unsupported, a.model.string(),
                               "--task mlm and ner run encoders (BERT); a decoder takes classify, "
                               "multilabel, regression, causal-lm or chat");
    // data and label names (the checkpoint's names when they cover the data)
    std::optional<ftune::data::text_dataset> tr, va;
    std::vector<std::vector<ftune::data::tagged_sentence>> conll(2);
    std::vector<std::string> seen;
    if (task == task::mlm) {  // plain text, one example per line
        tr = ftune::data::read_lines(a.train);
        if (a.max_train && tr->rows.size() > a.max_train) tr->rows.resize(a.max_train);
        if (!a.valid.empty()) va = ftune::data::read_lines(a.valid);
    } else if (task == task::ner) {
        conll[0] = ftune::data::read_conll(a.train);
        if (a.max_train && conll[0].size() > a.max_train) conll[0].resize(a.max_train);
        if (!a.valid.empty()) conll[1] = ftune::data::read_conll(a.valid);
        for (const auto& c : conll)
            for (const auto& s : c) seen.insert(seen.end(), s.tags.begin(), s.tags.end());
    } else {
        tr = read_labelled(a.train, task);
        if (a.max_train && tr->rows.size() > a.max_train) tr->rows.resize(a.max_train);
        if (!a.valid.empty()) va = read_labelled(a.valid, task);
        seen = labels_in(*tr, task);
        if (va) {
            const auto v = labels_in(*va, task);
            seen.insert(seen.end(), v.begin(), v.end());
        }
    }
    std::vector<std::string> names =
        task == task::regression ? std::vector<std::string>{"score"}
        : task == task::mlm      ? std::vector<std::string>{}
                                 : ftune::train::label_names(seen, recorded_labels<Model>(a.model));
    auto m = load_model<Model>(a.model, {.labels = names, .seed = a.opt.seed});
    if (!m.tokenizer)
        throw ftune::error(ftune::errc::io, a.model.string(),
                           "no vocab.txt or tokenizer.json: training needs the tokenizer");
    if (!m.report.initialized.empty())
        std::cerr << "ftune: new weights (not in the checkpoint): " << m.report.initialized.size()
                  << " tensors, e.g. " << m.report.initialized.front() << "\n";
    if constexpr (requires { m.model.head.problem; }) m.model.head.problem = problem_of(task);
    const std::size_t max_len = std::min(a.max_length, m.config.model.max_position_embeddings);
    std::vector<ftune::train::example> train_x, valid_x;
    if constexpr (!is_decoder<Model>) {
        if (task == task::mlm) {
            train_x = ftune::train::encode_texts(*m.tokenizer, *tr, max_len);
            if (va) valid_x = ftune::train::encode_texts(*m.tokenizer, *va, max_len);
        } else if (task == task::ner) {
            train_x =
                ftune::train::encode(*m.tokenizer, conll[0], names, max_len, a.train.string());
            valid_x =
                ftune::train::encode(*m.tokenizer, conll[1], names, max_len, a.valid.string());
        }
    }
    if (task != task::mlm && task != task::ner) {
        train_x = encode_labelled(*m.tokenizer, *tr, task, names, max_len);
        if (va) valid_x = encode_labelled(*m.tokenizer, *va, task, names, max_len);
    }
    const std::size_t frozen = prepare_run(a, m.model);
    std::cerr << "ftune: " << train_x.size() << " training and " << valid_x.size()
              << " validation examples, "
              << (task == task::mlm ? "masked-LM" : std::to_string(names.size()) + " labels")
              << ", " << a.opt.epochs << " epochs of batch " << a.opt.batch_size;
    if (frozen) std::cerr << ", " << frozen << " weights frozen";
    if (!a.opt.device.cpu()) std::cerr << ", on " << a.opt.device.str();
    std::cerr << "\n";
    ftune::train::trainer<Model> t(m.model, a.opt, names);
    if constexpr (!is_decoder<Model>) t.masking = ftune::train::mlm_masking_for(*m.tokenizer);
    choose_optimization(t, a, train_x.size());
    if constexpr (is_decoder<Model>)  // a new head: the report before says what training added
        if (!valid_x.empty()) std::cout << "before:\n" << report(t, valid_x, names);
    const auto r = t.fit(train_x, valid_x);
    if (!save_trained(a, t, r, m)) return 0;  // stopped by --stop-after
    std::cerr << "ftune: " << r.steps << " steps in " << r.seconds << " s";
    if (a.opt.group)
        std::cerr << " on " << a.opt.group->size() << " ranks (" << r.sum_wait_seconds
                  << " s waiting for gradient sums)";
    if (!std::isnan(r.best_metric))
        std::cerr << "; best validation " << t.metric_name() << " " << r.best_metric << " at step "
                  << r.best_step << (r.stopped_early ? " (stopped early)" : "");
    std::cerr << "; saved " << a.out.string() << "\n";
    if (!valid_x.empty())
        std::cout << (is_decoder<Model> ? "after:\n" : "") << report(t, valid_x, names);
    return 0;
}

// QA windows for a model: max_length tokens (at most the positions), a question up to half of
// them, a stride of 128 tokens or a quarter of the window, whichever is smaller.
inline ftune::qa::window_options qa_windows(std::size_t max_length, std::size_t positions) {
    const std::size_t n = std::min(max_length, positions);
    return {
        .max_length = n, .doc_stride = std::min<std::size_t>(128, n / 4), .max_question = n / 2};
}

// `ftune train --task qa`: SQuAD-layout JSON files; prints SQuAD exact match and F1 on --valid.
inline int train_qa(train_args& a) {
    using Model = ftune::bert::question_answering<ftune::bert::encoder<float>>;
    auto train = ftune::data::read_squad(a.train);
    if (a.max_train && train.size() > a.max_train) train.resize(a.max_train);
    std::vector<ftune::data::qa_example> valid;
    if (!a.valid.empty()) valid = ftune::data::read_squad(a.valid);
    auto m = ftune::io::load_hf<Model>(a.model, {.seed = a.opt.seed});
    if (!m.tokenizer)
        throw ftune::error(ftune::errc::io, a.model.string(),
                           "no vocab.txt or tokenizer.json: training needs the tokenizer");
    if (!m.report.initialized.empty())
        std::cerr << "ftune: new weights (not in the checkpoint): " << m.report.initialized.size()
                  << " tensors, e.g. " << m.report.initialized.front() << "\n";
    const auto wo = qa_windows(a.max_length, m.config.model.max_position_embeddings);
    const auto train_x = ftune::train::encode_qa(*m.tokenizer, train, wo);
    const auto valid_x = ftune::train::encode_qa(*m.tokenizer, valid, wo);
    const std::size_t frozen = prepare_run(a, m.model);
    std::cerr << "ftune: " << train.size() << " questions (" << train_x.size()
              << " windows) for training, " << valid.size() << " for validation, " << a.opt.epochs
              << " epochs of batch " << a.opt.batch_size;
    if (frozen) std::cerr << ", " << frozen << " weights frozen";
    std::cerr << "\n";
    ftune::train::trainer<Model> t(m.model, a.opt);
    choose_optimization(t, a, train_x.size());
    const auto r = t.fit(train_x, valid_x);
    if (!save_trained(a, t, r, m)) return 0;  // stopped by --stop-after
    std::cerr << "ftune: " << r.steps << " steps in " << r.seconds << " s; saved " << a.out.string()
              << "\n";
    if (!valid.empty()) {
        m.model.prepare_inference(a.opt.precision);
        const auto s = ftune::train::evaluate_squad(m.model, *m.tokenizer, valid, wo);
        std::cout << "exact_match " << s.exact_match << "\nf1 " << s.f1 << "\nquestions " << s.count
                  << "\n";
    }
    return 0;
}

// The evaluation of a model type on --data and its report (what `ftune eval` prints).
template <class Model>
std::pair<ftune::train::evaluation, std::string> evaluate_with(train_args& a, cli::task task) {
    auto m = load_model<Model>(a.model, {}, a.adapter);
    if (!m.tokenizer)
        throw ftune::error(ftune::errc::io, a.model.string(), "no vocab.txt or tokenizer.json");
    warn_initialized(m.report, a.model);
    std::vector<std::string> names = m.config.id2label;
    if constexpr (requires { m.model.num_labels(); })
        for (std::size_t i = names.size(); i < m.model.num_labels(); ++i)
            names.push_back("LABEL_" + std::to_string(i));
    const std::size_t max_len = std::min(a.max_length, m.config.model.max_position_embeddings);
    std::vector<ftune::train::example> xs;
    if constexpr (!is_decoder<Model>) {
        if (task == task::mlm)
            xs = ftune::train::encode_texts(*m.tokenizer, ftune::data::read_lines(a.data), max_len);
        else if (task == task::ner)
            xs = ftune::train::encode(*m.tokenizer, ftune::data::read_conll(a.data), names, max_len,
                                      a.data.string());
    }
    if (task != task::mlm && task != task::ner)
        xs = encode_labelled(*m.tokenizer, read_labelled(a.data, task), task, names, max_len);
    if constexpr (requires { m.model.head.problem; }) m.model.head.problem = problem_of(task);
    a.opt.progress = nullptr;
    if (!a.adapter.empty()) ftune::peft::merge_adapters(m.model);  // inference at W's cost
    m.model.prepare_inference(a.opt.precision);
    ftune::train::trainer<Model> t(m.model, a.opt, names);
    if constexpr (!is_decoder<Model>) t.masking = ftune::train::mlm_masking_for(*m.tokenizer);
    const auto e = t.evaluate(xs);
    return {e, t.model.head.report(e, names)};
}

// Runs `ftune eval` for a model of type Model: prints evaluate_with's report.
template <class Model>
int eval_with(train_args& a, cli::task task) {
    std::cout << evaluate_with<Model>(a, task).second;
    return 0;
}

// The task of a model when --task is not given: a GGUF file's is causal-lm; a directory's
// follows config.json's architecture (and a sequence classifier's problem_type).
inline cli::task task_of(const std::filesystem::path& model) {
    if (std::filesystem::is_regular_file(model)) return task::causal_lm;
    const auto config = model / "config.json";
    const std::string arch = ftune::io::read_config_string(config, "architectures");
    if (arch == "BertForTokenClassification") return task::ner;
    if (arch == "BertForMaskedLM") return task::mlm;
    if (arch == "BertForQuestionAnswering") return task::qa;
    if (arch == "BertForRelationClassification") return task::relation;
    if (arch.ends_with("ForCausalLM") || arch.ends_with("LMHeadModel")) return task::causal_lm;
    const std::string type = ftune::io::read_config_string(config, "model_type");
    const auto problem = [&](const auto& c) {
        return ftune::heads::problem_from_hf(c.model.problem_type, c.model.num_labels);
    };
    const auto p =
        type == "llama"  ? problem(ftune::io::read_hf_config<ftune::llama::config>(config))
        : type == "gpt2" ? problem(ftune::io::read_hf_config<ftune::gpt2::config>(config))
                         : problem(ftune::io::read_hf_config(config));
    switch (p) {
        case ftune::heads::problem::multi_label_classification:
            return task::multilabel;
        case ftune::heads::problem::regression:
            return task::regression;
        case ftune::heads::problem::single_label_classification:
            break;
    }
    return task::classify;
}

// A decoder's example length: --max-length, or TRL's 1024, at most the model's positions.
inline std::size_t lm_max_length(const train_args& a, std::size_t positions) {
    return std::min(a.max_length_given ? a.max_length : std::size_t(1024), positions);
}

// A decoder's data file read once: its examples (JSON lines for chat: conversations, prompts
// with completions, or summarization data as DialogSum writes it; plain text lines for
// causal-lm, every token learned) and, for chat, reply cases spread over it.
struct lm_file {
    std::vector<ftune::train::example> examples;       // ids and labels
    std::vector<ftune::train::generation_case> cases;  // prompts to answer, with references
};

// Reads a decoder's data file at path for the model m (its tokenizer and chat template), with
// up to `cases` reply cases (chat only).
template <class Loaded>
lm_file read_lm_file(const Loaded& m, const train_args& a, const std::filesystem::path& path,
                     cli::task task, std::size_t max_length, std::size_t cases = 0) {
    const ftune::train::lm_encoding_options o{.max_length = max_length};
    lm_file f;
    if (task == task::causal_lm) {
        for (const auto& r : ftune::data::read_lines(path).rows)
            f.examples.push_back(ftune::train::encode_text(*m.tokenizer, r.text, o));
        return f;
    }
    std::optional<ftune::text::chat_template> tmpl;
    if (!m.tokenizer->settings().chat_template.empty())
        tmpl.emplace(m.tokenizer->settings().chat_template, a.model.string() + " (chat template)");
    const auto data = ftune::data::read_chat_data(path);  // summarization data too
    f.examples = ftune::train::encode(*m.tokenizer, data, tmpl ? &*tmpl : nullptr, o);
    if (cases)
        f.cases = ftune::train::spread_sample(
            ftune::train::generation_cases(*m.tokenizer, data, tmpl ? &*tmpl : nullptr, o), cases);
    return f;
}

// The report on a decoder's evaluation data: perplexity and next-token accuracy per learned
// token, then the greedy replies to `cases` scored (exact match, ROUGE, labels' report).
template <class Trainer, class Loaded>
std::string lm_report(Trainer& t, Loaded& m, const std::vector<ftune::train::example>& xs,
                      const std::vector<ftune::train::generation_case>& cases,
                      const train_args& a) {
    std::string text = report(t, xs, {});
    if (!cases.empty())
        text += ftune::train::evaluate_generation(
                    m.model, *m.tokenizer, cases,
                    {.max_new_tokens = a.max_new_tokens, .batch_size = a.opt.batch_size})
                    .text();
    return text;
}

// `ftune train --task causal-lm|chat`: a decoder fine-tuned on its data's learned tokens; the
// report (perplexity and next-token accuracy per learned token; for chat, the replies to
// --eval-generate validation prompts scored) on --valid before and after.
template <class Model>
int train_lm_with(train_args& a, cli::task task) {
    auto m = load_model<Model>(a.model, {.seed = a.opt.seed});
    if (!m.tokenizer)
        throw ftune::error(ftune::errc::io, a.model.string(),
                           "no tokenizer.json: training a decoder needs its tokenizer");
    const std::size_t max_len = lm_max_length(a, m.config.model.max_position_embeddings);
    auto train_x = read_lm_file(m, a, a.train, task, max_len).examples;
    if (a.max_train && train_x.size() > a.max_train) train_x.resize(a.max_train);
    lm_file valid;
    if (!a.valid.empty()) valid = read_lm_file(m, a, a.valid, task, max_len, a.eval_generate);
    const auto& valid_x = valid.examples;
    const auto& cases = valid.cases;
    const std::size_t frozen = prepare_run(a, m.model);
    std::cerr << "ftune: " << train_x.size() << " training and " << valid_x.size()
              << " validation examples (" << (task == task::chat ? "chat" : "causal-lm") << "), "
              << a.opt.epochs << " epochs of batch " << a.opt.batch_size;
    if (frozen) std::cerr << ", " << frozen << " weights frozen";
    if (!a.opt.device.cpu()) std::cerr << ", on " << a.opt.device.str();
    std::cerr << "\n";
    ftune::train::trainer<Model> t(m.model, a.opt);
    choose_optimization(t, a, train_x.size());
    if (!valid_x.empty()) std::cout << "before: " << lm_report(t, m, valid_x, cases, a);
    const auto r = t.fit(train_x, valid_x);
    if (!save_trained(a, t, r, m)) return 0;  // stopped by --stop-after
    std::cerr << "ftune: " << r.steps << " steps in " << r.seconds << " s; saved " << a.out.string()
              << "\n";
    if (!valid_x.empty()) std::cout << "after:  " << lm_report(t, m, valid_x, cases, a);
    return 0;
}

// `ftune eval --task causal-lm|chat`: the report on --data's learned tokens.
template <class Model>
int eval_lm_with(train_args& a, cli::task task) {
    auto m = load_model<Model>(a.model, {}, a.adapter);
    if (!m.tokenizer) throw ftune::error(ftune::errc::io, a.model.string(), "no tokenizer.json");
    const std::size_t max_len = lm_max_length(a, m.config.model.max_position_embeddings);
    const auto data = read_lm_file(m, a, a.data, task, max_len, a.eval_generate);
    ftune::train::trainer<Model> t(m.model, a.opt);
    std::cout << lm_report(t, m, data.examples, data.cases, a);
    return 0;
}

// Task model H on decoder D (llama::decoder<float>, gpt2::decoder<float>).
template <template <class, std::size_t, class> class H, class D>
using on_decoder =
    ftune::task_model<D, H<typename D::value_type, D::hidden_extent, typename D::device_type>>;

// The model type --model holds: a GGUF file's general.architecture, or a directory's
// config.json model_type ("bert", "llama", "gpt2").
inline std::string model_type_of(const train_args& a) {
    return std::filesystem::is_regular_file(a.model)
               ? ftune::io::gguf_architecture(ftune::io::gguf_file(a.model))
               : ftune::io::read_config_string(a.model / "config.json", "model_type");
}

// Calls f(type tag) with the decoder (llama::decoder<float>, gpt2::decoder<float>) of the
// family --model holds; other families are an error for the decoder-only tasks.
template <class F>
int with_decoder(const train_args& a, cli::task task, F&& f) {
    const std::string type = model_type_of(a);
    if (type == "llama") return f(std::type_identity<ftune::llama::decoder<float>>{});
    if (type == "gpt2") return f(std::type_identity<ftune::gpt2::decoder<float>>{});
    throw ftune::error(
        ftune::errc::unsupported,
        std::filesystem::is_regular_file(a.model) ? a.model.string()
                                                  : (a.model / "config.json").string(),
        "model type \"" + type + "\": --task " + (task == task::chat ? "chat" : "causal-lm") +
            " runs decoder language models (llama, gpt2)");
}

// Whether --model holds a decoder (a GGUF file, or a llama or gpt2 directory).
inline bool holds_decoder(const train_args& a) {
    const std::string type = model_type_of(a);
    return type == "llama" || type == "gpt2";
}

// Runs `ftune train` with parsed arguments.
inline int train(train_args& a) {
    const auto t = a.task.value_or(task::classify);
    a.task = t;
    using E = ftune::bert::encoder<float>;
    if (t == task::ner) return train_with<ftune::bert::token_classifier<E>>(a, t);
    if (t == task::mlm) return train_with<ftune::bert::masked_lm<E>>(a, t);
    if (t == task::qa) return train_qa(a);
    if (t == task::relation) {
        if (holds_decoder(a))
            throw ftune::error(ftune::errc::unsupported, a.model.string(),
                               "--task relation runs encoders (BERT): it reads [CLS] and the "
                               "entity markers' hidden states");
        return train_with<ftune::bert::relation_classifier<E>>(a, t);
    }
    if (t == task::causal_lm || t == task::chat)
        return with_decoder(a, t, [&](auto d) {
            return train_lm_with<on_decoder<ftune::heads::causal_lm, typename decltype(d)::type>>(
                a, t);
        });
    if (holds_decoder(a))  // classify, multilabel, regression from the last token
        return with_decoder(a, t, [&](auto d) {
            using D = typename decltype(d)::type;
            return train_with<on_decoder<ftune::heads::last_token_classification, D>>(a, t);
        });
    return train_with<ftune::bert::sequence_classifier<E>>(a, t);
}

// Runs `ftune train`; started by an MPI launcher (`mpirun -np N ftune train ...`), one rank of
// a data-parallel run: one thread per rank unless --threads or OMP_NUM_THREADS says otherwise,
// rank 0 alone printing, an error on any rank printed with its rank and stopping the whole job.
inline int run_train(int argc, char** argv) {
    auto a = parse_train_args(argc, argv, false);
    if (a.threads) ftune::set_num_threads(a.threads);
    if (!ftune::dist::launched_by_mpi()) return train(a);
#if FTUNE_WITH_MPI
    if (a.opt.virtual_ranks > 1)
        throw ftune::error(ftune::errc::invalid_argument, "--virtual-ranks",
                           "computes an N-rank run in one process: not under mpirun");
    ftune::dist::mpi_session session(argc, argv);
    ftune::dist::mpi_group group;
    group.set_timeout(std::chrono::milliseconds(std::int64_t(a.dist_timeout * 1000)));
    a.opt.group = &group;
    if (!a.threads && !std::getenv("OMP_NUM_THREADS")) ftune::set_num_threads(1);
    std::ostringstream quiet;  // the other ranks' output (rank 0 prints)
    auto *out = std::cout.rdbuf(), *err = std::cerr.rdbuf();
    if (group.rank() != 0) std::cout.rdbuf(quiet.rdbuf()), std::cerr.rdbuf(quiet.rdbuf());
    try {
        const int status = train(a);
        std::cout.rdbuf(out), std::cerr.rdbuf(err);
        return status;
    } catch (const std::exception& e) {  // the others may wait for this rank: stop them all
        std::cout.rdbuf(out), std::cerr.rdbuf(err);
        std::cerr << (dynamic_cast<const ftune::error*>(&e) ? "" : "ftune train: ") << e.what()
                  << " (rank " << group.rank() << " of " << group.size() << ")\n";
        group.abort(1);
    }
#else
    throw ftune::error(ftune::errc::unsupported, "ftune train",
                       "started by an MPI launcher, but this ftune was built without MPI: "
                       "install libopenmpi-dev and openmpi-bin, then rebuild (FTUNE_WITH_MPI)");
#endif
}

// The task of --adapter (ftune_task.json, or PEFT's task_type) when it says one, else
// task_of(--model).
inline cli::task task_of_adapter_or_model(const train_args& a) {
    if (!a.adapter.empty())
        if (const std::string t = adapter_task(a.adapter); !t.empty()) return parse_task(t);
    return task_of(a.model);
}

// The evaluation and report of a classifier on --data: a token classifier (ner), or a sequence
// classifier (classify, multilabel, regression) on an encoder or a decoder's last token; what
// `ftune eval` prints for these tasks and what `ftune retrain` gates on.
inline std::pair<ftune::train::evaluation, std::string> evaluate_classifier(train_args& a,
                                                                            cli::task t) {
    using E = ftune::bert::encoder<float>;
    if (t == task::ner) return evaluate_with<ftune::bert::token_classifier<E>>(a, t);
    if (t == task::relation) return evaluate_with<ftune::bert::relation_classifier<E>>(a, t);
    if (holds_decoder(a)) {
        std::pair<ftune::train::evaluation, std::string> out;
        with_decoder(a, t, [&](auto d) {
            using D = typename decltype(d)::type;
            out = evaluate_with<on_decoder<ftune::heads::last_token_classification, D>>(a, t);
            return 0;
        });
        return out;
    }
    return evaluate_with<ftune::bert::sequence_classifier<E>>(a, t);
}

// Runs `ftune eval`.
inline int run_eval(int argc, char** argv) {
    auto a = parse_train_args(argc, argv, true);
    if (a.threads) ftune::set_num_threads(a.threads);
    const auto t = a.task ? *a.task : task_of_adapter_or_model(a);
    using E = ftune::bert::encoder<float>;
    if (t == task::mlm) return eval_with<ftune::bert::masked_lm<E>>(a, t);
    if (t == task::causal_lm || t == task::chat)
        return with_decoder(a, t, [&](auto d) {
            return eval_lm_with<on_decoder<ftune::heads::causal_lm, typename decltype(d)::type>>(a,
                                                                                                 t);
        });
    if (t == task::qa) {  // SQuAD exact match and F1
        auto m = load_model<ftune::bert::question_answering<E>>(a.model, {}, a.adapter);
        if (!m.tokenizer)
            throw ftune::error(ftune::errc::io, a.model.string(), "no vocab.txt or tokenizer.json");
        warn_initialized(m.report, a.model);
        if (!a.adapter.empty()) ftune::peft::merge_adapters(m.model);  // inference at W's cost
        m.model.prepare_inference(a.opt.precision);
        const auto s = ftune::train::evaluate_squad(
            m.model, *m.tokenizer, ftune::data::read_squad(a.data),
            qa_windows(a.max_length, m.config.model.max_position_embeddings));
        std::cout << "exact_match " << s.exact_match << "\nf1 " << s.f1 << "\nquestions " << s.count
                  << "\n";
        return 0;
    }
    std::cout << evaluate_classifier(a, t).second;  // ner, classify, multilabel, regression
    return 0;
}

// Merges a model of type Model with the adapter (W += s B A, adapters dropped) and saves the
// plain Hugging Face model; returns the exit status.
template <class Model>
int merge_with(const train_args& a, cli::task task, const std::filesystem::path& out) {
    auto m = load_model<Model>(a.model, {}, a.adapter);
    warn_initialized(m.report, a.model);
    if constexpr (requires { m.model.head.problem; }) m.model.head.problem = problem_of(task);
    const std::size_t n = ftune::peft::adapter_count(m.model);
    ftune::peft::merge_and_unload(m.model);
    ftune::io::save_hf(m, out);
    std::cerr << "ftune: merged " << n << " adapters into " << a.model.string() << "; saved "
              << out.string() << "\n";
    return 0;
}

// Runs `ftune merge --model BASE --adapter DIR --out DIR` (PEFT's merge_and_unload, then
// save_pretrained): the model type from the adapter's task, else from the base's config.
inline int run_merge(int argc, char** argv) {
    train_args a;
    std::filesystem::path out;
    for (int i = 2; i < argc; i += 2) {
        const std::string k = argv[i];
        if (i + 1 >= argc) throw ftune::error(ftune::errc::invalid_argument, k, "expects a value");
        const std::string v = argv[i + 1];
        if (k == "--model")
            a.model = v;
        else if (k == "--adapter")
            a.adapter = v;
        else if (k == "--out")
            out = v;
        else if (k == "--task")
            a.task = parse_task(v);
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option of ftune merge");
    }
    if (a.adapter.empty() || out.empty())
        throw ftune::error(ftune::errc::invalid_argument, "ftune merge",
                           "--adapter DIR and --out DIR are required (--model BASE unless the "
                           "adapter's base_model_name_or_path is here)");
    if (a.model.empty()) a.model = adapter_base(a.adapter);
    const auto t = a.task ? *a.task : task_of_adapter_or_model(a);
    using E = ftune::bert::encoder<float>;
    if (t == task::causal_lm || t == task::chat)
        return with_decoder(a, t, [&](auto d) {
            return merge_with<on_decoder<ftune::heads::causal_lm, typename decltype(d)::type>>(a, t,
                                                                                               out);
        });
    if (holds_decoder(a)) {
        if (t == task::ner || t == task::mlm || t == task::qa)
            throw ftune::error(ftune::errc::unsupported, a.adapter.string(),
                               "a decoder's adapter is for causal-lm or sequence classification");
        return with_decoder(a, t, [&](auto d) {
            using D = typename decltype(d)::type;
            return merge_with<on_decoder<ftune::heads::last_token_classification, D>>(a, t, out);
        });
    }
    if (t == task::ner) return merge_with<ftune::bert::token_classifier<E>>(a, t, out);
    if (t == task::mlm) return merge_with<ftune::bert::masked_lm<E>>(a, t, out);
    if (t == task::qa) return merge_with<ftune::bert::question_answering<E>>(a, t, out);
    return merge_with<ftune::bert::sequence_classifier<E>>(a, t, out);
}

}  // namespace cli
