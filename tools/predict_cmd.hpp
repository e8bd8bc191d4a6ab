// `ftune predict` (a fine-tuned Hugging Face model's predictions for each line of stdin) and
// `ftune info` (what a model directory holds and whether ftune loads it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include <ftune/io/gguf_gpt2.hpp>
#include <ftune/io/gguf_llama.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/qa/spans.hpp>
#include <ftune/train/batching.hpp>

#include "peft_cmd.hpp"

namespace cli {

namespace fs = std::filesystem;

// The architecture config.json names first ("" when none), whatever the family.
inline std::string architecture_of(const fs::path& dir) {
    return ftune::io::read_config_string(dir / "config.json", "architectures");
}

// Calls f(std::type_identity<Model>{}) with the task model of a model directory: the family its
// config.json's model_type names, with the head its architecture names after the family's
// prefix ("Bert" + "ForTokenClassification"), or the head `head_suffix` names when given (an
// adapter's task on a base model); the family's base model for an architecture without a head
// ftune has (BertForPreTraining...).
template <class F>
decltype(auto) with_task_model(const fs::path& dir, F&& f, std::string_view head_suffix = {}) {
    const std::string arch = architecture_of(dir);
    return ftune::io::with_family(
        ftune::io::read_config_string(dir / "config.json", "model_type"),
        [&](auto family) -> decltype(auto) {
            using Config = typename decltype(family)::type;
            using E = typename ftune::io::hf_family<Config>::template backbone<float>;
            namespace h = ftune::heads;
            const std::string_view head =
                !head_suffix.empty() ? head_suffix
                : std::string_view(arch).starts_with(E::architecture_prefix)
                    ? std::string_view(arch).substr(E::architecture_prefix.size())
                    : std::string_view();
            auto is = [&](std::string_view suffix) { return head == suffix; };
            if constexpr (std::is_same_v<Config, ftune::llama::config>) {  // decoders
                using lm = ftune::llama::causal_lm<E>;
                using seq = ftune::llama::sequence_classifier<E>;
                if (is(lm::head_type::architecture_suffix)) return f(std::type_identity<lm>{});
                if (is(seq::head_type::architecture_suffix)) return f(std::type_identity<seq>{});
            } else if constexpr (std::is_same_v<Config, ftune::gpt2::config>) {
                using lm = ftune::gpt2::lm_head_model<E>;
                using seq = ftune::gpt2::sequence_classifier<E>;
                if (head_suffix.empty() && arch == lm::architecture)
                    return f(std::type_identity<lm>{});
                if (is(seq::head_type::architecture_suffix)) return f(std::type_identity<seq>{});
            } else {  // encoders
                using seq = ftune::bert::with_head<h::sequence_classification, E>;
                using tok = ftune::bert::with_head<h::token_classification, E>;
                using qa = ftune::bert::with_head<h::question_answering, E>;
                using mlm = ftune::bert::with_head<h::masked_lm, E>;
                using rel = ftune::bert::with_head<h::entity_relation, E>;
                if (is(seq::head_type::architecture_suffix)) return f(std::type_identity<seq>{});
                if (is(tok::head_type::architecture_suffix)) return f(std::type_identity<tok>{});
                if (is(qa::head_type::architecture_suffix)) return f(std::type_identity<qa>{});
                if (is(mlm::head_type::architecture_suffix)) return f(std::type_identity<mlm>{});
                if (is(rel::head_type::architecture_suffix)) return f(std::type_identity<rel>{});
            }
            return f(std::type_identity<ftune::bert::with_head<h::base_model, E>>{});
        });
}

// Shortest decimal form of v rounded to 6 significant digits, for text and JSON output.
inline double round6(double v) {
    if (v == 0 || !std::isfinite(v)) return v;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return std::strtod(buf, nullptr);
}
inline std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

// What `ftune predict` prints.
enum class predict_format { logits, labels, json };

// Options of `ftune predict`.
struct predict_options {
    fs::path model;                                  // --model
    fs::path adapter;                                // --adapter: a LoRA adapter on --model
    predict_format format = predict_format::labels;  // --format
    std::size_t batch_size = 32;                     // --batch-size
    std::size_t max_length = 0;                      // --max-length (0: the model's)
    std::size_t top_k = 1;                           // --top-k: QA answers per question
    std::size_t max_answer_length = 15;              // --max-answer-length: QA, in tokens
    std::size_t doc_stride = 0;                      // --doc-stride: QA window overlap (0: 128,
                                                     // or half a window's context if smaller)
    ftune::precision precision = ftune::precision::fp32;  // --precision: products in bf16
};

// Writes the report's initialized weights to stderr: predictions of such a model mean nothing.
inline void warn_initialized(const ftune::io::load_report& r, const fs::path& dir) {
    if (r.initialized.empty()) return;
    std::cerr << "ftune: warning: " << dir.string() << ": " << r.initialized.size()
              << " weight(s) are not in the checkpoint and were initialized randomly (";
    for (std::size_t i = 0; i < r.initialized.size(); ++i)
        std::cerr << (i ? ", " : "") << r.initialized[i];
    std::cerr << "); fine-tune the model before trusting its predictions\n";
}

// Predictions of a loaded model for a batch of lines, appended to out (one line each).
template <class Model>
void predict_batch(ftune::io::hf_model<Model>& m, const std::vector<std::string>& lines,
                   std::size_t first_line, const predict_options& opt, std::string& out) {
    using H = typename Model::head_type;
    constexpr bool sequences = ftune::heads::is_a<H, ftune::heads::sequence_classification> ||
                               ftune::heads::is_a<H, ftune::heads::last_token_classification> ||
                               ftune::heads::is_a<H, ftune::heads::entity_relation>;
    const auto& tok = *m.tokenizer;
    const auto& names = m.config.id2label;
    auto label = [&](std::size_t i) { return ftune::heads::label_name(names, i); };
    // tokenize: TAB separates the two texts of a pair (sequence classification)
    std::vector<std::string_view> a, b;
    bool pairs = false;
    for (const auto& l : lines) pairs |= sequences && l.find('\t') != std::string::npos;
    for (const auto& l : lines) {
        const std::size_t tab = pairs ? l.find('\t') : std::string::npos;
        a.push_back(std::string_view(l).substr(0, tab));
        if (pairs)
            b.push_back(tab == std::string::npos ? std::string_view()
                                                 : std::string_view(l).substr(tab + 1));
    }
    std::vector<ftune::text::encoding> enc;
    std::vector<ftune::token_id> ids, mask, types;
    std::size_t B = lines.size(), T = 0;
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(tok)>, ftune::text::bert_tokenizer>) {
        try {
            // token classification: one tag per whitespace-separated word, tokenized as in
            // training
            enc = tok.encode_batch(a, b,
                                   {.max_length = opt.max_length,
                                    .pad = ftune::text::padding::longest,
                                    .split_into_words = !sequences});
        } catch (const ftune::error& e) {
            throw ftune::error(
                e.id(),
                ftune::detail::cat("stdin lines ", first_line, "-", first_line + lines.size() - 1),
                e.context() + ": " + e.message());
        }
        B = enc.size(), T = enc.front().ids.size();
        for (const auto& e : enc) {
            ids.insert(ids.end(), e.ids.begin(), e.ids.end());
            mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
            types.insert(types.end(), e.type_ids.begin(), e.type_ids.end());
        }
    } else {  // a decoder's classifier: encoded as in training, padded on the right
        std::vector<ftune::train::example> xs;
        for (std::size_t i = 0; i < B; ++i)
            xs.push_back(ftune::train::detail::classifier_input(
                tok, a[i], pairs ? std::optional(b[i]) : std::nullopt, opt.max_length));
        for (const auto& x : xs) T = std::max(T, x.ids.size());
        const std::vector<std::size_t> all = [&] {
            std::vector<std::size_t> v(B);
            std::iota(v.begin(), v.end(), std::size_t(0));
            return v;
        }();
        auto batch = ftune::train::collate(xs, all, m.model.backbone.pad_token_id(), false);
        ids = std::move(batch.ids), mask = std::move(batch.mask), types = std::move(batch.types);
    }
    ftune::context eval;
    const auto logits = [&] {
        try {  // a relation head names the row without a marker: say which lines these are
            return m.model.forward(eval, {ids.data(), B, T}, {mask.data(), B, T},
                                   {types.data(), B, T});
        } catch (const ftune::error& e) {
            throw ftune::error(
                e.id(),
                ftune::detail::cat("stdin lines ", first_line, "-", first_line + lines.size() - 1),
                e.context() + ": " + e.message());
        }
    }();

    if constexpr (sequences) {
        const std::size_t L = logits.extent(1);
        const auto problem = m.model.head.problem;
        for (std::size_t i = 0; i < B; ++i) {
            const float* y = logits.data() + i * L;
            if (opt.format == predict_format::logits) {
                for (std::size_t j = 0; j < L; ++j) {
                    if (j) out += ' ';
                    out += num(y[j]);
                }
                out += '\n';
                continue;
            }
            const auto p = m.model.head.decode(y);  // the head's reading of the logits
            if (problem == ftune::heads::problem::regression) {
                out += opt.format == predict_format::json
                           ? nlohmann::json{{"score", round6(y[0])}}.dump()
                           : num(y[0]);
            } else if (problem == ftune::heads::problem::multi_label_classification) {
                nlohmann::json scores = nlohmann::json::object(), chosen = nlohmann::json::array();
                std::string text;
                for (std::size_t j = 0; j < L; ++j) scores[label(j)] = round6(p.scores[j]);
                for (const std::size_t j : p.chosen) {  // sigmoids over 0.5
                    chosen.push_back(label(j));
                    if (!text.empty()) text += ',';
                    text += label(j);
                }
                out += opt.format == predict_format::json
                           ? nlohmann::json{{"labels", chosen}, {"scores", scores}}.dump()
                           : text;
            } else if (opt.format == predict_format::labels) {
                out += label(p.label);
            } else {
                nlohmann::json scores = nlohmann::json::object();
                for (std::size_t j = 0; j < L; ++j) scores[label(j)] = round6(p.scores[j]);
                out +=
                    nlohmann::json{
                        {"label", label(p.label)}, {"score", round6(p.score)}, {"scores", scores}}
                        .dump();
            }
            out += '\n';
        }
    } else {  // token classification: per wordpiece (logits) or per word (labels, json)
        const std::size_t L = logits.extent(2);
        for (std::size_t i = 0; i < B; ++i) {
            const auto& e = enc[i];
            const std::size_t n =
                std::size_t(std::count(e.attention_mask.begin(), e.attention_mask.end(), 1));
            const float* y = logits.data() + i * T * L;
            if (opt.format == predict_format::logits) {
                for (std::size_t t = 0; t < n; ++t) {
                    if (t) out += " | ";
                    for (std::size_t j = 0; j < L; ++j) {
                        if (j) out += ' ';
                        out += num(y[t * L + j]);
                    }
                }
                out += '\n';
                continue;
            }
            // the whitespace-separated words of the whole line (truncation may have dropped the
            // last ones), tokenized one by one as training does
            std::vector<ftune::text::token_info> all;
            const std::size_t words = tok.tokenize_words(lines[i], all);
            struct word_pred {
                std::size_t label = 0;
                double score = -1;    // < 0: not seen (truncated, or no pieces)
                bool pieces = false;  // the word has word pieces (not only control characters)
                std::uint32_t byte_begin = 0, byte_end = 0, char_begin = 0, char_end = 0;
            };
            std::vector<word_pred> w(words);
            for (const auto& t : all) {  // spans from every piece of the word
                auto& p = w[std::size_t(t.word)];
                if (!p.pieces) p.byte_begin = t.byte_begin, p.char_begin = t.char_begin;
                p.byte_end = t.byte_end, p.char_end = t.char_end, p.pieces = true;
            }
            const auto tags =
                m.model.head.decode_words(y, std::span(e.tokens), n, words);  // one per word
            for (std::size_t k = 0; k < words; ++k)
                w[k].label = tags[k].label, w[k].score = tags[k].score;
            const std::size_t cut = std::size_t(std::count_if(
                w.begin(), w.end(), [](const word_pred& p) { return p.pieces && p.score < 0; }));
            if (cut)
                std::cerr << "ftune: warning: stdin line " << first_line + i << ": " << cut
                          << " word(s) past --max-length " << opt.max_length
                          << " were not seen by the model and are tagged O\n";
            if (opt.format == predict_format::labels) {
                for (std::size_t k = 0; k < words; ++k) {
                    if (k) out += ' ';
                    out += w[k].score < 0 ? std::string("O") : label(w[k].label);
                }
            } else {
                nlohmann::json arr = nlohmann::json::array();
                for (const auto& p : w)
                    arr.push_back(
                        {{"word", lines[i].substr(p.byte_begin, p.byte_end - p.byte_begin)},
                         {"label", p.score < 0 ? std::string("O") : label(p.label)},
                         {"score",
                          p.score < 0 ? nlohmann::json(nullptr) : nlohmann::json(round6(p.score))},
                         {"start", p.char_begin},
                         {"end", p.char_end}});
                out += nlohmann::json{{"words", arr}}.dump();
            }
            out += '\n';
        }
    }
}

// Question answering: each stdin line is `question<TAB>context`; the context is cut into
// overlapping windows and the n best answer spans over all windows are printed (labels: the
// best answer's text; json: answers with score and character offsets; logits: start and end
// logits per position, windows separated by " || ").
template <class Model>
void predict_qa(ftune::io::hf_model<Model>& m, const std::string& line, std::size_t line_no,
                const predict_options& opt, std::string& out) {
    const std::size_t tab = line.find('\t');
    if (tab == std::string::npos)
        throw ftune::error(ftune::errc::invalid_argument,
                           ftune::detail::cat("stdin line ", line_no),
                           "expected `question<TAB>context` for a question-answering model");
    const std::string_view question(line.data(), tab),
        context(line.data() + tab + 1, line.size() - tab - 1);
    // a question may take up to half the window (longer ones are cut, with a warning); the
    // default stride is 128 or half a window's context tokens, whichever is smaller
    ftune::qa::window_options wo{.max_length = opt.max_length, .doc_stride = opt.doc_stride};
    wo.max_question = opt.max_length / 2;
    std::vector<ftune::text::token_info> q;
    m.tokenizer->tokenize(question, q);
    if (q.size() > wo.max_question)
        std::cerr << "ftune: warning: stdin line " << line_no << ": the question's " << q.size()
                  << " tokens are cut to " << wo.max_question << " (half of --max-length)\n";
    const std::size_t room = opt.max_length - std::min(q.size(), wo.max_question) - 3;
    if (opt.doc_stride == 0) wo.doc_stride = std::min<std::size_t>(128, room / 2);
    auto windows = ftune::qa::encode_windows(*m.tokenizer, question, context, wo);
    const std::size_t B = windows.size();
    const auto logits = ftune::qa::forward_windows(m.model, *m.tokenizer, windows);  // (B, T, 2)
    if (opt.format == predict_format::logits) {
        for (std::size_t w = 0; w < B; ++w) {
            if (w) out += " || ";
            for (std::size_t t = 0; t < windows[w].ids.size(); ++t)
                out += (t ? " | " : "") + num(logits(w, t, 0)) + " " + num(logits(w, t, 1));
        }
        out += '\n';
        return;
    }
    const auto answers = ftune::qa::best_answers(
        logits, windows, context, {.top_k = opt.top_k, .max_answer_length = opt.max_answer_length});
    if (opt.format == predict_format::labels) {
        out += (answers.empty() ? std::string() : answers.front().text) + '\n';
        return;
    }
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& a : answers)
        arr.push_back({{"answer", a.text},
                       {"score", round6(a.score)},
                       {"start", a.char_begin},
                       {"end", a.char_end}});
    out += nlohmann::json{{"answers", arr}}.dump() + '\n';
}

// Reads stdin in batches and prints the predictions of a model of type Model.
template <class Model>
int predict_with(const predict_options& opt) {
    auto m = ftune::io::load_hf<Model>(
        opt.model,
        {.labels = opt.adapter.empty() ? std::vector<std::string>{} : adapter_labels(opt.adapter)});
    if (!m.tokenizer)
        throw ftune::error(ftune::errc::io, opt.model.string(),
                           "no vocab.txt or tokenizer.json: ftune predict needs the tokenizer");
    if (!opt.adapter.empty()) {
        attach_adapter(m, opt.adapter);
        ftune::peft::merge_adapters(m.model);                // served at the base model's cost
        if constexpr (requires { m.model.head.problem; }) {  // the base config has no problem
            const std::string t = adapter_task(opt.adapter);
            if (t == "multilabel")
                m.model.head.problem = ftune::heads::problem::multi_label_classification;
            if (t == "regression") m.model.head.problem = ftune::heads::problem::regression;
        }
    }
    warn_initialized(m.report, opt.model);
    predict_options o = opt;
    if (o.max_length == 0)  // QA: the pipeline's max_seq_len 384 unless the model is shorter
        o.max_length =
            ftune::heads::is_a<typename Model::head_type, ftune::heads::question_answering>
                ? std::min<std::size_t>(384, m.model_max_length)
                : m.model_max_length;
    if (o.max_length > m.config.model.max_position_embeddings)
        throw ftune::error(
            ftune::errc::invalid_argument, "--max-length " + std::to_string(o.max_length),
            ftune::detail::cat("the model has ", m.config.model.max_position_embeddings,
                               " positions"));
    m.model.prepare_inference(o.precision);
    std::vector<std::string> lines;
    std::string line, out;
    std::size_t first = 1;
    auto flush = [&] {
        if (lines.empty()) return;
        out.clear();
        if constexpr (ftune::heads::is_a<typename Model::head_type,
                                         ftune::heads::question_answering>) {
            for (std::size_t i = 0; i < lines.size(); ++i)
                predict_qa(m, lines[i], first + i, o, out);
        } else {
            predict_batch(m, lines, first, o, out);
        }
        std::cout << out << std::flush;
        first += lines.size();
        lines.clear();
    };
    while (std::getline(std::cin, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(std::move(line));
        if (lines.size() == o.batch_size) flush();
    }
    flush();
    return 0;
}

// The whole number `v` given to option `option`: at least 1 (or 0 when zero_ok), else an
// error naming the option.
inline std::size_t parse_count(std::string_view option, const std::string& v,
                               bool zero_ok = false) {
    std::size_t pos = 0;
    long n = -1;
    try {
        n = std::stol(v, &pos);
    } catch (const std::exception&) {
    }
    if (pos != v.size() || n < (zero_ok ? 0 : 1))
        throw ftune::error(ftune::errc::invalid_argument, std::string(option) + " " + v,
                           zero_ok ? "expects a whole number" : "expects a positive integer");
    return std::size_t(n);
}

// Runs `ftune predict` with argv[2..]; returns the exit status.
inline int run_predict(int argc, char** argv) {
    predict_options opt;
    bool have_model = false;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (i + 1 >= argc)
            throw ftune::error(ftune::errc::invalid_argument, std::string(a), "expects a value");
        const std::string v = argv[++i];
        auto positive = [&] { return parse_count(a, v); };
        if (a == "--model") {
            opt.model = v, have_model = true;
        } else if (a == "--adapter") {
            opt.adapter = v;
        } else if (a == "--format") {
            if (v == "logits")
                opt.format = predict_format::logits;
            else if (v == "labels")
                opt.format = predict_format::labels;
            else if (v == "json")
                opt.format = predict_format::json;
            else
                throw ftune::error(ftune::errc::invalid_argument, "--format " + v,
                                   "expected logits, labels or json");
        } else if (a == "--precision") {
            opt.precision = parse_precision(std::string(a), v);
        } else if (a == "--batch-size") {
            opt.batch_size = positive();
        } else if (a == "--top-k") {
            opt.top_k = positive();
        } else if (a == "--max-answer-length") {
            opt.max_answer_length = positive();
        } else if (a == "--doc-stride") {
            opt.doc_stride = positive();
        } else if (a == "--max-length") {
            opt.max_length = positive();
            if (opt.max_length < 3)
                throw ftune::error(ftune::errc::invalid_argument, "--max-length " + v,
                                   "needs room for [CLS], a token and [SEP] (at least 3)");
        } else {
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune predict");
        }
    }
    if (!have_model && !opt.adapter.empty())
        opt.model = adapter_base(opt.adapter), have_model = true;
    if (!have_model)
        throw ftune::error(ftune::errc::invalid_argument, "ftune predict",
                           "--model DIR is required (a Hugging Face model directory)");
    const std::string arch = architecture_of(opt.model);
    // an adapter's task names the head on a base model without one
    const std::string task = opt.adapter.empty() ? "" : adapter_task(opt.adapter);
    const std::string_view suffix =
        task == "classify" || task == "multilabel" || task == "regression"
            ? "ForSequenceClassification"
        : task == "ner" ? "ForTokenClassification"
        : task == "qa"  ? "ForQuestionAnswering"
                        : "";
    return with_task_model(
        opt.model,
        [&](auto tag) -> int {
            using Model = typename decltype(tag)::type;
            using H = typename Model::head_type;
            if constexpr (ftune::heads::is_a<H, ftune::heads::sequence_classification> ||
                          ftune::heads::is_a<H, ftune::heads::last_token_classification> ||
                          ftune::heads::is_a<H, ftune::heads::entity_relation> ||
                          ftune::heads::is_a<H, ftune::heads::token_classification> ||
                          ftune::heads::is_a<H, ftune::heads::question_answering>) {
                return predict_with<Model>(opt);
            } else {
                throw ftune::error(
                    ftune::errc::unsupported, opt.model.string(),
                    "architecture \"" + (arch.empty() ? std::string("BertModel") : arch) +
                        "\": ftune predict runs BertForSequenceClassification, "
                        "BertForTokenClassification, BertForQuestionAnswering and the decoders' "
                        "LlamaForSequenceClassification and GPT2ForSequenceClassification models "
                        "(fine-tune a head with ftune train; ftune generate runs language models)");
            }
        },
        suffix);
}

// The tokenizer line of `ftune info` for a decoder's byte-level BPE tokenizer.
inline void print_bpe_tokenizer(const ftune::text::bpe_tokenizer& t) {
    const auto& s = t.settings();
    std::cout << "tokenizer     byte-level BPE, " << t.size() << " tokens"
              << (s.bos_token.empty() ? "" : ", bos " + s.bos_token)
              << (s.eos_token.empty() ? "" : ", eos " + s.eos_token)
              << (s.add_bos_token ? " (bos added to prompts)" : "") << "\n"
              << "chat template " << (s.chat_template.empty() ? "none" : "yes") << "\n";
}

// `ftune info` on a GGUF file: the model it holds (read as ftune loads it), the tensor types,
// the tokenizer.
inline int gguf_info(const fs::path& path) {
    const ftune::io::gguf_file f(path);
    const auto& m = f.metadata();
    auto text = [&](const char* key) {
        return m.contains(key) && m[key].is_string() ? m[key].get<std::string>() : std::string();
    };
    std::map<std::string, std::size_t> types;
    std::size_t values = 0;
    for (const auto& t : f.tensors()) {
        ++types[ftune::io::ggml_type_name(t.type)];
        values += t.numel();
    }
    std::string type_list;
    for (const auto& [name, n] : types)
        type_list += (type_list.empty() ? "" : ", ") + std::to_string(n) + " " + name;
    std::cout << "model         " << fs::absolute(path).string() << " (GGUF version " << f.version()
              << ")\n"
              << "name          "
              << (text("general.name").empty() ? "(none given)" : text("general.name")) << "\n"
              << "architecture  " << text("general.architecture") << ", loaded as ";
    if (ftune::io::gguf_architecture(f) == "gpt2") {
        const auto c = ftune::io::gpt2_config_from_gguf(f);
        std::cout << ftune::gpt2::lm_head_model<>::architecture << "\n"
                  << "dims          hidden " << c.hidden_size << ", layers " << c.num_hidden_layers
                  << ", heads " << c.num_attention_heads << ", ffn " << c.intermediate_size
                  << ", vocab " << c.vocab_size << ", positions " << c.max_position_embeddings
                  << (c.tie_word_embeddings ? ", tied LM head" : "") << "\n";
    } else {
        const auto c = ftune::io::llama_config_from_gguf(f);
        std::cout << ftune::llama::causal_lm<>::architecture << "\n"
                  << "dims          hidden " << c.hidden_size << ", layers " << c.num_hidden_layers
                  << ", heads " << c.num_attention_heads << ", key/value heads "
                  << c.num_key_value_heads << ", ffn " << c.intermediate_size << ", vocab "
                  << c.vocab_size << ", context " << c.max_position_embeddings << ", rope_theta "
                  << c.rope_theta << (c.tie_word_embeddings ? ", tied LM head" : "") << "\n";
    }
    std::cout << "tensors       " << f.tensors().size() << " (" << type_list << "), " << values
              << " values, dequantized to float32 on load (" << num(double(values) * 4 / 1048576.0)
              << " MiB)\n";
    print_bpe_tokenizer(ftune::io::bpe_tokenizer_from_gguf(f));
    return 0;
}

// Runs `ftune info` with argv[2..]: what the model directory holds, after loading it.
inline int run_info(int argc, char** argv) {
    std::optional<fs::path> dir;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--model" && i + 1 < argc)
            dir = argv[++i];
        else
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune info (usage: ftune info --model DIR)");
    }
    if (!dir)
        throw ftune::error(ftune::errc::invalid_argument, "ftune info", "--model DIR is required");
    if (fs::is_regular_file(*dir)) return gguf_info(*dir);
    const std::string arch = architecture_of(*dir);
    return with_task_model(*dir, [&](auto tag) -> int {
        using Model = typename decltype(tag)::type;
        auto m = ftune::io::load_hf<Model>(*dir);
        const auto& c = m.config.model;
        std::size_t params = 0;
        m.model.visit_parameters("",
                                 [&](ftune::parameter_ref<float> p) { params += p.value.size(); });
        auto list = [](const std::vector<std::string>& v) {
            std::string s;
            for (std::size_t i = 0; i < v.size(); ++i) {
                if (i) s += ", ";
                s += v[i];
            }
            return s;
        };
        std::cout << "model         " << fs::absolute(*dir).string() << "\n"
                  << "architecture  " << (arch.empty() ? "(none given)" : arch) << ", loaded as "
                  << Model::architecture << "\n"
                  << "dims          hidden " << c.hidden_size << ", layers " << c.num_hidden_layers
                  << ", heads " << c.num_attention_heads << ", ffn " << c.intermediate_size
                  << ", vocab " << c.vocab_size << ", positions " << c.max_position_embeddings;
        if constexpr (requires { c.type_vocab_size; })  // encoders
            std::cout << ", token types " << c.type_vocab_size;
        if constexpr (requires { c.num_key_value_heads; })  // decoders
            std::cout << ", key/value heads " << c.num_key_value_heads << ", rope_theta "
                      << c.rope_theta;
        if constexpr (ftune::heads::is_a<typename Model::head_type, ftune::heads::causal_lm>)
            if (c.tie_word_embeddings) std::cout << ", tied LM head";
        std::cout << "\n"
                  << "activation    " << m.config.hidden_act << "\n"
                  << "parameters    " << params << " (" << num(double(params) * 4 / 1048576.0)
                  << " MiB as float32)\n";
        if constexpr (requires { m.model.num_labels(); }) {
            std::vector<std::string> names;
            for (std::size_t i = 0; i < m.model.num_labels(); ++i)
                names.push_back(i < m.config.id2label.size() ? m.config.id2label[i]
                                                             : "LABEL_" + std::to_string(i));
            std::cout << "labels        " << names.size() << ": " << list(names) << "\n";
            if constexpr (requires { m.model.head.problem; })
                std::cout << "problem_type  " << ftune::heads::to_hf(m.model.head.problem) << "\n";
        }
        if (!m.tokenizer) {
            std::cout << "tokenizer     none (no vocab.txt or tokenizer.json)\n";
        } else if constexpr (std::is_same_v<std::remove_cvref_t<decltype(*m.tokenizer)>,
                                            ftune::text::bert_tokenizer>) {  // BERT's WordPiece
            const auto& o = m.tokenizer->options();
            std::cout << "tokenizer     " << m.tokenizer->vocab().size() << " tokens, "
                      << (o.lowercase ? "lowercase" : "cased") << ", accents "
                      << (o.strip_accents.value_or(o.lowercase) ? "stripped" : "kept")
                      << ", Chinese characters " << (o.chinese_chars ? "split" : "not split")
                      << ", max length " << m.model_max_length << "\n";
        } else {  // a decoder's byte-level BPE
            print_bpe_tokenizer(*m.tokenizer);
        }
        std::cout << "weights       " << m.report.loaded.size() << " loaded";
        if (!m.report.initialized.empty())
            std::cout << "; initialized (not in the file): " << list(m.report.initialized);
        if (!m.report.unexpected.empty()) std::cout << "; unused: " << list(m.report.unexpected);
        std::cout << "\n";
        return 0;
    });
}

}  // namespace cli
