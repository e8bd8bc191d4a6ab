// `ftune serve`: a fine-tuned sequence classifier, a sentence-embedding encoder, a token
// classifier or a question-answering model over HTTP/JSON, with the endpoints and JSON of
// Hugging Face's Text Embeddings Inference (POST /predict, POST /embed, GET /info, /health,
// /metrics), so TEI's clients work unchanged, and in its style POST /token-classification and
// POST /question-answering (the JSON of Transformers' pipelines); a decoder language model
// answers OpenAI's POST /v1/chat/completions (streamed with server-sent events on request).
// Concurrent requests are batched dynamically (serve::batcher: up to --max-batch inputs, waiting at
// most
// --max-wait-us for a batch to fill), the queue is bounded (503 when full), and a model
// repository's promoted version (serve::repository) is reloaded when it changes: new requests go to
// the new version, requests in flight finish on the old one, none fails. cpp-httplib (Debian's
// libcpp-httplib-dev) parses HTTP; nlohmann/json the bodies.
#pragma once

#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <future>
#include <random>
#include <functional>
#include <ctime>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <ftune/serve.hpp>
#include <ftune/serve/adapters.hpp>
#include <ftune/serve/batcher.hpp>
#include <ftune/serve/chat.hpp>
#include <ftune/serve/repository.hpp>

#include "generate_cmd.hpp"
#include "predict_cmd.hpp"
#include "serve_openapi.hpp"

namespace cli {

// Options of `ftune serve`.
struct serve_options {
    fs::path model;                     // a model directory or a model repository
    std::string host = "127.0.0.1";     // address to listen on
    int port = 8080;                    // 0: any free port (printed)
    std::size_t max_batch = 32;         // most inputs per forward
    std::size_t max_wait_us = 0;        // longest wait for a batch to fill (0: none)
    std::size_t max_queue = 512;        // most inputs waiting (then 503)
    std::size_t workers = 1;            // batches running at once
    std::size_t threads = 0;            // threads per batch's forward (0: all)
    std::size_t http_threads = 64;      // connections served at once
    std::size_t max_client_batch = 32;  // most inputs in one request (then 413)
    std::size_t max_bytes = 1 << 20;    // largest request body (then 413)
    std::size_t max_length = 0;         // tokens per input (0: the model's)
    bool auto_truncate = true;          // cut over-long inputs when a request names no truncate
    std::size_t timeout_ms = 30000;     // longest wait in the queue (then 503)
    std::size_t reload_ms = 1000;       // how often the promoted version is checked
    ftune::precision precision = ftune::precision::fp32;  // of the products
    std::size_t max_tokens = 256;  // new tokens of a chat completion that names no max_tokens
    std::vector<std::pair<std::string, fs::path>> adapters;  // --adapter NAME=DIR: tasks
};

// A Prometheus histogram of values in seconds (or counts), thread-safe.
class histogram {
  public:
    explicit histogram(std::vector<double> bounds)
        : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
    void observe(double v) {
        std::lock_guard lock(mu_);
        std::size_t i = 0;
        while (i < bounds_.size() && v > bounds_[i]) ++i;
        ++counts_[i];
        sum_ += v;
        ++n_;
    }
    // The histogram in Prometheus' text format (cumulative buckets, sum, count).
    std::string text(const std::string& name, const std::string& help) const {
        std::lock_guard lock(mu_);
        std::string s = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
        std::uint64_t cum = 0;
        for (std::size_t i = 0; i < bounds_.size(); ++i) {
            cum += counts_[i];
            s += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
        }
        s += name + "_bucket{le=\"+Inf\"} " + std::to_string(n_) + "\n";
        s += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(n_) + "\n";
        return s;
    }

  private:
    std::vector<double> bounds_;
    std::vector<std::uint64_t> counts_;
    double sum_ = 0;
    std::uint64_t n_ = 0;
    mutable std::mutex mu_;
};

// One loaded version of the model, with its batcher: a sequence classifier (POST /predict), a
// sentence-embedding encoder (POST /embed), a token classifier (POST /token-classification) or
// a question-answering model (POST /question-answering). Requests hold it through a shared_ptr,
// so a version replaced by a reload lives until its last request has its answer.
struct served_version {
    using classifier_batcher =
        ftune::serve::batcher<ftune::serve::text_input, ftune::serve::prediction>;
    using embedder_batcher = ftune::serve::batcher<std::string, std::vector<float>>;
    using tagger_batcher = ftune::serve::batcher<std::string, std::vector<ftune::serve::word_tag>>;
    using answerer_batcher =
        ftune::serve::batcher<ftune::serve::qa_input, std::vector<ftune::qa::answer>>;
    std::string version;  // the repository's version name ("" for a plain directory)
    fs::path dir;         // its model directory
    std::unique_ptr<ftune::serve::text_classifier<>> model;  // one of these four
    std::unique_ptr<classifier_batcher> batch;
    std::unique_ptr<ftune::serve::text_embedder<>> embedder;
    std::unique_ptr<embedder_batcher> embeds;
    std::unique_ptr<ftune::serve::token_tagger<>> tagger;
    std::unique_ptr<tagger_batcher> tags;
    std::unique_ptr<ftune::serve::question_answerer<>> answerer;
    std::unique_ptr<answerer_batcher> answers;
    // or LoRA adapters over one base (--adapter), each task with its batcher
    std::unique_ptr<ftune::serve::adapter_classifier<>> tasks;
    std::map<std::string, std::unique_ptr<classifier_batcher>> task_batches;
    // or a decoder language model answering conversations, one at a time
    std::function<ftune::serve::completion(const std::vector<ftune::text::chat_message>&,
                                           const ftune::generation::options&,
                                           const ftune::generation::stream_fn&)>
        chat;
    std::size_t chat_positions = 0;            // its context, in tokens
    std::atomic<std::size_t> chat_waiting{0};  // conversations running or waiting for it
    nlohmann::json id2label, label2id;         // for /info

    // The endpoint this model answers.
    std::string endpoint() const {
        return model      ? "POST /predict"
               : tasks    ? "POST /predict with \"adapter\""
               : embedder ? "POST /embed"
               : tagger   ? "POST /token-classification"
               : answerer ? "POST /question-answering"
                          : "POST /v1/chat/completions";
    }
    ftune::serve::batch_stats stats() const {
        if (tasks) {  // every task's batcher together
            ftune::serve::batch_stats all;
            for (const auto& [name, b] : task_batches) {
                const auto s = b->stats();
                all.batches += s.batches, all.items += s.items, all.rejected += s.rejected;
                all.timed_out += s.timed_out, all.failed += s.failed;
                all.sizes.resize(std::max(all.sizes.size(), s.sizes.size()));
                for (std::size_t k = 0; k < s.sizes.size(); ++k) all.sizes[k] += s.sizes[k];
            }
            return all;
        }
        return batch     ? batch->stats()
               : embeds  ? embeds->stats()
               : tags    ? tags->stats()
               : answers ? answers->stats()
                         : ftune::serve::batch_stats{};
    }
    std::size_t queued() const {
        std::size_t n = 0;
        for (const auto& [name, b] : task_batches) n += b->queued();
        return tasks     ? n
               : batch   ? batch->queued()
               : embeds  ? embeds->queued()
               : tags    ? tags->queued()
               : answers ? answers->queued()
                         : chat_waiting.load();
    }
    std::size_t max_length() const {
        return model      ? model->max_length()
               : tasks    ? tasks->max_length()
               : embedder ? embedder->max_length()
               : tagger   ? tagger->max_length()
               : answerer ? answerer->max_length()
                          : chat_positions;
    }
};

// The batching options of `ftune serve`'s options.
inline ftune::serve::batch_options batching(const serve_options& opt) {
    return {
        .max_batch = opt.max_batch,
        .max_wait = std::chrono::microseconds(opt.max_wait_us),
        .max_queue = opt.max_queue,
        .workers = opt.workers,
        .timeout = std::chrono::milliseconds(opt.timeout_ms),
    };
}

// id2label and label2id of /info from label names.
inline void set_labels(served_version& v, const std::vector<std::string>& labels) {
    v.id2label = nlohmann::json::object();
    v.label2id = nlohmann::json::object();
    for (std::size_t i = 0; i < labels.size(); ++i) {
        v.id2label[std::to_string(i)] = labels[i];
        v.label2id[labels[i]] = i;
    }
}

// Loads the model directory `dir` as version `version`, by its architecture: a
// *ForSequenceClassification, *ForTokenClassification or *ForQuestionAnswering model, or a
// BertModel (a sentence-transformers model) for embeddings.
inline std::shared_ptr<served_version> load_version(const fs::path& dir, std::string version,
                                                    const serve_options& opt) {
    auto v = std::make_shared<served_version>();
    v->version = std::move(version);
    v->dir = dir;
    const bool gguf = fs::is_regular_file(dir);  // a decoder's GGUF file
    const std::string arch = gguf ? "" : architecture_of(dir);
    const int threads = int(opt.threads);
    if (!opt.adapters.empty()) {  // tasks over one base: each adapter with its head and labels
        auto base = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir);  // head unused
        v->tasks =
            std::make_unique<ftune::serve::adapter_classifier<>>(std::move(base), opt.max_length);
        for (const auto& [name, adapter] : opt.adapters) {
            if (const auto task = adapter_task(adapter); !task.empty() && task != "classify")
                throw ftune::error(ftune::errc::unsupported, adapter.string(),
                                   "a " + task +
                                       " adapter: ftune serve --adapter runs sequence "
                                       "classification adapters");
            v->tasks->add_adapter(name, adapter, adapter_labels(adapter));
            v->task_batches[name] = std::make_unique<served_version::classifier_batcher>(
                [model = v->tasks.get(), name,
                 threads](std::span<const ftune::serve::text_input> in) {
                    if (threads > 0) ftune::set_num_threads(threads);  // (this worker's)
                    std::vector<ftune::serve::prediction> out;         // one forward per input
                    for (const auto& x : in)
                        out.push_back(model->predict(
                            name, x.text,
                            x.pair ? std::optional<std::string_view>(*x.pair) : std::nullopt));
                    return out;
                },
                batching(opt));
        }
        return v;
    }
    if (gguf || arch.ends_with("ForCausalLM") || arch.ends_with("LMHeadModel")) {
        with_language_model(
            dir, [&](auto& lm, const ftune::text::bpe_tokenizer& tok, std::size_t positions) {
                using Model = std::decay_t<decltype(lm)>;
                auto g = std::make_shared<ftune::serve::chat_generator<Model>>(
                    std::move(lm), tok, positions, opt.precision);
                v->chat = [g](const std::vector<ftune::text::chat_message>& m,
                              const ftune::generation::options& o,
                              const ftune::generation::stream_fn& stream) {
                    return g->complete(m, o, stream);
                };
                v->chat_positions = positions;
                return 0;
            });
        return v;
    }
    // the batch function of a model: its call on this worker thread's thread count
    auto on_worker = [threads](auto f) {
        return [threads, f](auto in) {
            if (threads > 0) ftune::set_num_threads(threads);  // (this worker thread's)
            return f(in);
        };
    };
    auto load = [&]<class Model>(std::type_identity<Model>) {
        auto m = ftune::io::load_hf<Model>(dir);
        warn_initialized(m.report, dir);
        return m;
    };
    if (arch == "BertModel") {
        v->embedder = std::make_unique<ftune::serve::text_embedder<>>(
            load(std::type_identity<ftune::bert::model<>>{}), ftune::io::read_sentence_config(dir),
            opt.max_length, opt.precision);
        v->embeds = std::make_unique<served_version::embedder_batcher>(
            on_worker([model = v->embedder.get()](std::span<const std::string> in) {
                const std::vector<std::string_view> texts(in.begin(), in.end());
                return model->embed_batch(texts, false);  // normalized per request
            }),
            batching(opt));
    } else if (arch.ends_with("ForSequenceClassification")) {
        v->model = std::make_unique<ftune::serve::text_classifier<>>(
            load(std::type_identity<ftune::bert::sequence_classifier<>>{}), opt.max_length,
            opt.precision);
        set_labels(*v, v->model->labels());
        v->batch = std::make_unique<served_version::classifier_batcher>(
            on_worker([model = v->model.get()](std::span<const ftune::serve::text_input> in) {
                return model->predict_batch(in);
            }),
            batching(opt));
    } else if (arch.ends_with("ForTokenClassification")) {
        v->tagger = std::make_unique<ftune::serve::token_tagger<>>(
            load(std::type_identity<ftune::bert::token_classifier<>>{}), opt.max_length,
            opt.precision);
        set_labels(*v, v->tagger->labels());
        v->tags = std::make_unique<served_version::tagger_batcher>(
            on_worker([model = v->tagger.get()](std::span<const std::string> in) {
                const std::vector<std::string_view> texts(in.begin(), in.end());
                return model->tag_batch(texts);
            }),
            batching(opt));
    } else if (arch.ends_with("ForQuestionAnswering")) {
        v->answerer = std::make_unique<ftune::serve::question_answerer<>>(
            load(std::type_identity<ftune::bert::question_answering<>>{}), opt.max_length, 0,
            opt.precision);
        // each question's windows make one forward of their own (a batch answers them in turn)
        v->answers = std::make_unique<served_version::answerer_batcher>(
            on_worker([model = v->answerer.get()](std::span<const ftune::serve::qa_input> in) {
                std::vector<std::vector<ftune::qa::answer>> out;
                for (const auto& q : in)
                    out.push_back(
                        model->answer(q.question, q.context, q.top_k, q.max_answer_length));
                return out;
            }),
            batching(opt));
    } else {
        throw ftune::error(
            ftune::errc::unsupported, (dir / "config.json").string(),
            "architecture " + (arch.empty() ? std::string("(none)") : arch) +
                ": ftune serve runs BERT-family sequence classifiers, token classifiers, "
                "question-answering models, BertModel encoders (embeddings) and Llama or GPT-2 "
                "language models (chat)");
    }
    return v;
}

// The server's state: the version in service and the counters of /metrics.
class serve_state {
  public:
    std::shared_ptr<served_version> current() const {
        std::lock_guard lock(mu_);
        return cur_;
    }
    void set(std::shared_ptr<served_version> v) {
        std::shared_ptr<served_version> old;  // released outside the lock
        std::lock_guard lock(mu_);
        old = std::move(cur_);
        cur_ = std::move(v);
    }
    void count(const std::string& path, int status) {
        std::lock_guard lock(mu_);
        ++requests_[{path, status}];
    }
    std::atomic<std::uint64_t> reloads{0}, reload_failures{0};
    histogram latency{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
    std::string requests_text() const {
        std::lock_guard lock(mu_);
        std::string s =
            "# HELP ftune_requests_total HTTP requests answered, by path and status\n"
            "# TYPE ftune_requests_total counter\n";
        for (const auto& [k, n] : requests_)
            s += "ftune_requests_total{path=\"" + k.first + "\",status=\"" +
                 std::to_string(k.second) + "\"} " + std::to_string(n) + "\n";
        return s;
    }

  private:
    mutable std::mutex mu_;
    std::shared_ptr<served_version> cur_;
    std::map<std::pair<std::string, int>, std::uint64_t> requests_;
};

// A TEI-style error body: {"error": message, "error_type": type}.
inline void json_error(httplib::Response& res, int status, const std::string& type,
                       const std::string& message) {
    res.status = status;
    res.set_content(nlohmann::json{{"error", message}, {"error_type", type}}.dump(),
                    "application/json");
}

// Waits for every future of `futures` that is still valid (the answers of a request that failed
// part-way: the batcher finishes them anyway).
template <class F>
void settle(std::vector<F>& futures) {
    for (auto& f : futures)
        if (f.valid()) f.wait();
}

// Submits every input to batcher b and collects the answers in order. On a full queue, an input
// that waited past --timeout-ms (503, Retry-After) or a failed forward (424) the error is the
// response, and nothing is returned.
template <class In, class Out>
std::optional<std::vector<Out>> answers_of(ftune::serve::batcher<In, Out>& b,
                                           std::vector<In>& inputs, httplib::Response& res) {
    std::vector<std::future<Out>> futures;
    try {
        for (auto& in : inputs) futures.push_back(b.submit(std::move(in)));
    } catch (const ftune::error& e) {  // the queue is full: the submitted ones still finish
        settle(futures);
        res.set_header("Retry-After", "1");
        json_error(res, 503, "Overloaded", e.what());
        return std::nullopt;
    }
    std::vector<Out> out;
    out.reserve(futures.size());
    for (auto& f : futures) {
        try {
            out.push_back(f.get());
        } catch (const ftune::error& e) {
            settle(futures);
            if (e.id() == ftune::errc::timeout) {
                res.set_header("Retry-After", "1");
                json_error(res, 503, "Overloaded", e.what());
            } else {
                json_error(res, 424, "Backend", e.what());
            }
            return std::nullopt;
        }
    }
    return out;
}

// Parses a request body with parse(body) and checks its number of inputs against
// --max-client-batch; otherwise answers the error (422, 413) and returns nothing.
template <class Parse>
auto parsed(Parse parse, const serve_options& opt, const httplib::Request& req,
            httplib::Response& res) -> std::optional<decltype(parse(req.body))> {
    try {
        auto r = parse(req.body);
        if (r.inputs.empty()) {
            json_error(res, 422, "Empty", "inputs is an empty list");
            return std::nullopt;
        }
        if (r.inputs.size() > opt.max_client_batch) {
            json_error(res, 413, "Validation",
                       ftune::detail::cat("batch size ", r.inputs.size(), " > maximum allowed ",
                                          opt.max_client_batch, " (--max-client-batch)"));
            return std::nullopt;
        }
        return r;
    } catch (const ftune::error& e) {
        json_error(res, 422, "Validation", e.what());
        return std::nullopt;
    }
}

// TEI's "truncate": whether the request's over-long inputs are cut (else refused with 413).
inline bool truncates(const std::optional<bool>& asked, const serve_options& opt) {
    return asked.value_or(opt.auto_truncate);
}

// Without truncation, the first of n inputs with more than `most` tokens (tokens(i): input i's
// count, special tokens included) is answered 413 as TEI does; false when one was.
template <class Count>
bool within_length(std::size_t n, std::size_t most, Count tokens, httplib::Response& res) {
    for (std::size_t i = 0; i < n; ++i)
        if (const std::size_t t = tokens(i); t > most) {
            json_error(res, 413, "Validation",
                       ftune::detail::cat("`inputs` must have less than ", most, " tokens. Given: ",
                                          t, " (input ", i, "; \"truncate\": true cuts it)"));
            return false;
        }
    return true;
}

// Answers 400 naming the endpoint of the model in service.
inline void wrong_endpoint(httplib::Response& res, const served_version& v) {
    json_error(res, 400, "Validation", "the model in service answers " + v.endpoint());
}

// What `ftune serve` answers to POST /predict.
inline void handle_predict(serve_state& state, const serve_options& opt,
                           const httplib::Request& req, httplib::Response& res) {
    const auto v = state.current();  // this version answers the whole request
    if (!v->model && !v->tasks) return wrong_endpoint(res, *v);
    auto request = parsed(ftune::serve::parse_predict_request, opt, req, res);
    if (!request) return;
    auto* batcher = v->batch.get();
    std::vector<std::string> labels;
    if (v->tasks) {  // the request names its task
        const auto it = v->task_batches.find(request->adapter);
        if (it == v->task_batches.end()) {
            std::string names;
            for (const auto& [name, b] : v->task_batches)
                names += (names.empty() ? "" : ", ") + name;
            return json_error(
                res, 422, "Validation",
                (request->adapter.empty() ? std::string("no \"adapter\" named")
                                          : "no adapter \"" + request->adapter + "\"") +
                    ": this server's adapters are " + names);
        }
        batcher = it->second.get();
        labels = v->tasks->labels(request->adapter);
    } else {
        if (!request->adapter.empty())
            return json_error(res, 422, "Validation",
                              "\"adapter\": this server has no adapters (ftune serve --adapter)");
        labels = v->model->labels();
    }
    if (!truncates(request->truncate, opt)) {  // refused rather than cut
        const auto& tok = v->tasks ? v->tasks->tokenizer() : v->model->tokenizer();
        const std::size_t most = v->tasks ? v->tasks->max_length() : v->model->max_length();
        const auto& in = request->inputs;
        if (!within_length(
                in.size(), most,
                [&](std::size_t i) {
                    return tok
                        .encode(in[i].text, in[i].pair
                                                ? std::optional<std::string_view>(*in[i].pair)
                                                : std::nullopt)
                        .ids.size();
                },
                res))
            return;
    }
    const auto predictions = answers_of(*batcher, request->inputs, res);
    if (!predictions) return;
    nlohmann::json out = nlohmann::json::array();
    for (const auto& p : *predictions) {
        // TEI's raw_scores: the logits; else the probabilities; highest first either way
        const auto& score = request->raw_scores ? p.logits : p.probabilities;
        std::vector<std::size_t> order(score.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return score[a] > score[b]; });
        nlohmann::json scores = nlohmann::json::array();
        for (const std::size_t i : order)
            scores.push_back({{"score", score[i]}, {"label", labels[i]}});
        out.push_back(std::move(scores));
    }
    res.set_header("X-Model-Version", v->version);
    res.set_content((request->batched ? out : out[0]).dump(), "application/json");
}

// What `ftune serve` answers to POST /embed: TEI's list of vectors, one per input (normalized
// unless "normalize": false).
inline void handle_embed(serve_state& state, const serve_options& opt, const httplib::Request& req,
                         httplib::Response& res) {
    const auto v = state.current();  // this version answers the whole request
    if (!v->embedder) return wrong_endpoint(res, *v);
    auto request = parsed(ftune::serve::parse_embed_request, opt, req, res);
    if (!request) return;
    if (!truncates(request->truncate, opt) &&
        !within_length(
            request->inputs.size(), v->embedder->max_length(),
            [&](std::size_t i) {
                return v->embedder->tokenizer().encode(request->inputs[i]).ids.size();
            },
            res))
        return;
    auto vectors = answers_of(*v->embeds, request->inputs, res);
    if (!vectors) return;
    std::string body = "[";  // written directly: a JSON array of float arrays
    for (std::size_t i = 0; i < vectors->size(); ++i) {
        auto& e = (*vectors)[i];
        if (request->normalize) ftune::heads::l2_normalize(e, e.size());
        body += i ? ",[" : "[";
        for (std::size_t j = 0; j < e.size(); ++j) {
            if (j) body += ',';
            char text[32];  // the shortest text that reads back as the same float
            body.append(text, std::to_chars(text, text + sizeof text, e[j]).ptr);
        }
        body += ']';
    }
    body += ']';
    res.set_header("X-Model-Version", v->version);
    res.set_content(body, "application/json");
}

// What `ftune serve` answers to POST /token-classification: per text, the entities
// (aggregation_strategy "first", as Transformers' pipeline: entity_group, score, word, start,
// end) or every word not tagged O ("none": entity, score, word, start, end).
inline void handle_tokens(serve_state& state, const serve_options& opt, const httplib::Request& req,
                          httplib::Response& res) {
    const auto v = state.current();  // this version answers the whole request
    if (!v->tagger) return wrong_endpoint(res, *v);
    auto request = parsed(ftune::serve::parse_token_request, opt, req, res);
    if (!request) return;
    const std::vector<std::string> texts = request->inputs;  // kept for the entities' words
    const auto tagged = answers_of(*v->tags, request->inputs, res);
    if (!tagged) return;
    nlohmann::json out = nlohmann::json::array();
    for (std::size_t i = 0; i < tagged->size(); ++i) {
        nlohmann::json list = nlohmann::json::array();
        if (request->aggregate) {
            for (const auto& e : ftune::serve::group_entities((*tagged)[i], texts[i]))
                list.push_back({{"entity_group", e.entity_group},
                                {"score", e.score},
                                {"word", e.word},
                                {"start", e.start},
                                {"end", e.end}});
        } else {
            for (const auto& w : (*tagged)[i])
                if (w.label != "O")
                    list.push_back({{"entity", w.label},
                                    {"score", w.score},
                                    {"word", w.word},
                                    {"start", w.start},
                                    {"end", w.end}});
        }
        out.push_back(std::move(list));
    }
    res.set_header("X-Model-Version", v->version);
    res.set_content((request->batched ? out : out[0]).dump(), "application/json");
}

// What `ftune serve` answers to POST /question-answering: per question the best answer
// {"score", "start", "end", "answer"} (a list of the top_k best when top_k > 1), as Transformers'
// question-answering pipeline; null when the context has no answer span.
inline void handle_qa(serve_state& state, const serve_options& opt, const httplib::Request& req,
                      httplib::Response& res) {
    const auto v = state.current();  // this version answers the whole request
    if (!v->answerer) return wrong_endpoint(res, *v);
    auto request = parsed(ftune::serve::parse_qa_request, opt, req, res);
    if (!request) return;
    const std::size_t top_k = request->inputs.front().top_k;
    const auto found = answers_of(*v->answers, request->inputs, res);
    if (!found) return;
    nlohmann::json out = nlohmann::json::array();
    for (const auto& answers : *found) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& a : answers)
            list.push_back({{"score", a.score},
                            {"start", a.char_begin},
                            {"end", a.char_end},
                            {"answer", a.text}});
        out.push_back(top_k > 1 ? list : list.empty() ? nlohmann::json(nullptr) : list[0]);
    }
    res.set_header("X-Model-Version", v->version);
    res.set_content((request->batched ? out : out[0]).dump(), "application/json");
}

// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
inline void openai_error(httplib::Response& res, int status, const std::string& type,
                         const std::string& message) {
    res.status = status;
    res.set_content(
        nlohmann::json{
            {"error",
             {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}}
            .dump(),
        "application/json");
}

// OpenAI's finish_reason of a generation.
inline const char* finish_reason(ftune::generation::finish f) {
    return f == ftune::generation::finish::length ? "length" : "stop";
}

// What `ftune serve` answers to POST /v1/chat/completions (OpenAI's API): the assistant's reply
// to the conversation, in one chat.completion object or, with "stream": true, as server-sent
// events (chat.completion.chunk deltas, then "data: [DONE]"). One conversation runs at a time;
// more than --max-queue running or waiting are refused with 503.
inline void handle_chat(serve_state& state, const serve_options& opt, const httplib::Request& req,
                        httplib::Response& res) {
    const auto v = state.current();  // this version answers the whole request
    if (!v->chat)
        return openai_error(res, 400, "invalid_request_error",
                            "the model in service answers " + v->endpoint());
    ftune::serve::chat_request r;
    try {
        r = ftune::serve::parse_chat_request(req.body);
    } catch (const ftune::error& e) {
        return openai_error(res, 400, "invalid_request_error", e.what());
    }
    ftune::generation::options o;
    o.max_new_tokens = r.max_tokens.value_or(opt.max_tokens);
    o.temperature = r.temperature;
    o.top_p = r.top_p;
    o.top_k = 0;  // OpenAI's sampling has no top-k
    o.stop_strings = r.stop;
    o.seed = r.seed ? *r.seed : std::random_device{}();
    static std::atomic<std::uint64_t> next_id{0};
    const std::string id = "chatcmpl-ftune-" + std::to_string(++next_id);
    const auto created = std::int64_t(std::time(nullptr));
    const std::string model = r.model.empty() ? v->dir.filename().string() : r.model;
    // the conversations running or waiting, counted down when the request is done with
    struct waiting {
        std::shared_ptr<served_version> v;
        ~waiting() { --v->chat_waiting; }
    };
    // a waiting conversation holds an HTTP thread: 4 are kept for the others (/health...)
    const std::size_t limit =
        std::min(opt.max_queue, opt.http_threads > 4 ? opt.http_threads - 4 : std::size_t(1));
    if (++v->chat_waiting > limit) {
        --v->chat_waiting;
        res.set_header("Retry-After", "1");
        return openai_error(
            res, 503, "server_error",
            ftune::detail::cat("overloaded: ", limit,
                               " conversations running or waiting (--max-queue, and all but 4 "
                               "of --http-threads)"));
    }
    const std::shared_ptr<waiting> hold(new waiting{v});  // (no temporary to count down twice)
    res.set_header("X-Model-Version", v->version);
    const auto dump = [](const nlohmann::json& j) {  // invalid UTF-8 replaced, never thrown
        return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    };
    if (!r.stream) {
        ftune::serve::completion c;
        try {
            c = v->chat(r.messages, o, {});
        } catch (const ftune::error& e) {
            return openai_error(res, 400, "invalid_request_error", e.what());
        }
        const std::size_t n = c.result.tokens.size();
        res.set_content(
            dump(
                {{"id", id},
                 {"object", "chat.completion"},
                 {"created", created},
                 {"model", model},
                 {"choices", nlohmann::json::array(
                                 {{{"index", 0},
                                   {"message", {{"role", "assistant"}, {"content", c.result.text}}},
                                   {"finish_reason", finish_reason(c.result.reason)}}})},
                 {"usage",
                  {{"prompt_tokens", c.prompt_tokens},
                   {"completion_tokens", n},
                   {"total_tokens", c.prompt_tokens + n}}}}),
            "application/json");
        return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [v, r, o, id, created, model, hold, dump](std::size_t, httplib::DataSink& sink) {
            auto event = [&](const std::string& data) {
                const std::string line = "data: " + data + "\n\n";
                return sink.write(line.data(), line.size());
            };
            auto chunk = [&](nlohmann::json delta, nlohmann::json finish) {
                return dump({{"id", id},
                             {"object", "chat.completion.chunk"},
                             {"created", created},
                             {"model", model},
                             {"choices", nlohmann::json::array({{{"index", 0},
                                                                 {"delta", std::move(delta)},
                                                                 {"finish_reason", finish}}})}});
            };
            struct gone {};  // the client left: the generation stops at its next piece
            event(chunk({{"role", "assistant"}, {"content", ""}}, nullptr));
            try {
                const auto c = v->chat(r.messages, o, [&](std::size_t, std::string_view piece) {
                    if (!event(chunk({{"content", std::string(piece)}}, nullptr))) throw gone{};
                });
                event(chunk(nlohmann::json::object(), finish_reason(c.result.reason)));
            } catch (const gone&) {
                return false;                    // the connection is closed
            } catch (const std::exception& e) {  // the status is sent: the error is an event
                event(dump({{"error", {{"message", e.what()}, {"type", "server_error"}}}}));
            }
            event("[DONE]");
            sink.done();
            return true;
        });
}

// Runs `ftune serve` with argv[2..]; returns the exit status.
inline int run_serve(int argc, char** argv) {
    serve_options opt;
    bool have_model = false;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (i + 1 >= argc)
            throw ftune::error(ftune::errc::invalid_argument, std::string(a), "expects a value");
        const std::string v = argv[++i];
        auto count = [&](bool zero_ok) { return parse_count(a, v, zero_ok); };
        if (a == "--model")
            opt.model = v, have_model = true;
        else if (a == "--host")
            opt.host = v;
        else if (a == "--port") {
            opt.port = int(count(true));
            if (opt.port > 65535)
                throw ftune::error(ftune::errc::invalid_argument, "--port " + v,
                                   "a port is 0 (any free one) to 65535");
        } else if (a == "--max-batch")
            opt.max_batch = count(false);
        else if (a == "--max-wait-us")
            opt.max_wait_us = count(true);
        else if (a == "--max-queue")
            opt.max_queue = count(false);
        else if (a == "--workers")
            opt.workers = count(false);
        else if (a == "--threads")
            opt.threads = count(false);
        else if (a == "--http-threads")
            opt.http_threads = count(false);
        else if (a == "--max-client-batch")
            opt.max_client_batch = count(false);
        else if (a == "--max-bytes")
            opt.max_bytes = count(false);
        else if (a == "--max-length")
            opt.max_length = count(false);
        else if (a == "--timeout-ms")
            opt.timeout_ms = count(false);
        else if (a == "--reload-ms")
            opt.reload_ms = count(false);
        else if (a == "--precision")
            opt.precision = parse_precision(std::string(a), v);
        else if (a == "--max-tokens")
            opt.max_tokens = count(false);
        else if (a == "--auto-truncate") {
            if (v != "true" && v != "false")
                throw ftune::error(ftune::errc::invalid_argument, "--auto-truncate " + v,
                                   "expects true (cut over-long inputs; the default) or false "
                                   "(answer 413, as TEI's default)");
            opt.auto_truncate = v == "true";
        } else if (a == "--adapter") {
            const auto eq = v.find('=');
            if (eq == 0 || eq == std::string::npos || eq + 1 == v.size())
                throw ftune::error(ftune::errc::invalid_argument, "--adapter " + v,
                                   "expects NAME=DIR (a PEFT LoRA adapter of --model)");
            opt.adapters.emplace_back(v.substr(0, eq), v.substr(eq + 1));
        } else
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune serve");
    }
    if (!have_model)
        throw ftune::error(ftune::errc::invalid_argument, "ftune serve",
                           "--model DIR is required (a model directory, or a model repository "
                           "with versions/ and a `current` link)");
    // SIGINT and SIGTERM stop the server from a thread of their own (the others block them)
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    const ftune::serve::repository repo(opt.model);
    serve_state state;
    state.set(load_version(repo.promoted_path(), repo.promoted(), opt));

    httplib::Server svr;
    svr.new_task_queue = [n = opt.http_threads] { return new httplib::ThreadPool(n); };
    svr.set_payload_max_length(opt.max_bytes);
    svr.set_tcp_nodelay(true);  // answers leave at once (Nagle's wait would add ~40 ms each)
    svr.set_read_timeout(std::chrono::seconds(30));
    svr.set_write_timeout(std::chrono::seconds(30));
    using clock = std::chrono::steady_clock;
    // every answer is counted by path and status
    svr.set_logger([&](const httplib::Request& req, const httplib::Response& res) {
        state.count(req.path, res.status);
    });
    // the model's endpoints: each answer's latency goes to the histogram
    auto endpoint = [&](void (*handle)(serve_state&, const serve_options&, const httplib::Request&,
                                       httplib::Response&)) {
        return [&state, &opt, handle](const httplib::Request& req, httplib::Response& res) {
            const auto t0 = clock::now();
            try {
                handle(state, opt, req, res);
            } catch (const std::exception& e) {
                json_error(res, 500, "Backend", e.what());
            }
            state.latency.observe(std::chrono::duration<double>(clock::now() - t0).count());
        };
    };
    svr.Post("/predict", endpoint(handle_predict));
    svr.Post("/embed", endpoint(handle_embed));
    svr.Post("/token-classification", endpoint(handle_tokens));
    svr.Post("/question-answering", endpoint(handle_qa));
    svr.Post("/v1/chat/completions", endpoint(handle_chat));
    svr.Get("/openapi.json", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(serve_openapi, "application/json");
    });
    svr.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
        res.status = state.current() ? 200 : 503;
    });
    svr.Get("/info", [&](const httplib::Request&, httplib::Response& res) {
        const auto v = state.current();
        nlohmann::json model_type;  // TEI's: {"classifier": {...}} or {"embedding": {...}}
        if (v->model) {
            model_type["classifier"] = {{"id2label", v->id2label}, {"label2id", v->label2id}};
        } else if (v->tasks) {  // ftune's extension: a classifier per adapter
            nlohmann::json tasks = nlohmann::json::object();
            for (const auto& name : v->tasks->tasks()) {
                const auto labels = v->tasks->labels(name);
                nlohmann::json id2label = nlohmann::json::object();
                for (std::size_t i = 0; i < labels.size(); ++i)
                    id2label[std::to_string(i)] = labels[i];
                tasks[name] = {{"id2label", id2label}};
            }
            model_type["classifier"] = {{"adapters", tasks}};
        } else if (v->tagger) {  // ftune's extensions
            model_type["token_classifier"] = {{"id2label", v->id2label}, {"label2id", v->label2id}};
        } else if (v->answerer) {
            model_type["question_answering"] = nlohmann::json::object();
        } else if (v->chat) {
            model_type["generation"] = {{"max_positions", v->chat_positions}};
        } else {
            std::string pooling;
            for (const auto p : v->embedder->config().pooling)
                pooling +=
                    (pooling.empty() ? "" : "+") + std::string(ftune::heads::pooling_name(p));
            model_type["embedding"] = {{"pooling", pooling},
                                       {"dimension", v->embedder->dimension()},
                                       {"normalize_by_default", true}};
        }
        const nlohmann::json info{
            {"model_id", v->dir.string()},
            {"model_sha", nullptr},
            {"model_version", v->version},
            {"model_dtype", opt.precision == ftune::precision::bf16 ? "bfloat16" : "float32"},
            {"model_type", model_type},
            {"max_concurrent_requests", opt.max_queue},
            {"max_input_length", v->max_length()},
            {"max_batch_tokens", opt.max_batch * v->max_length()},
            {"max_batch_requests", opt.max_batch},
            {"max_client_batch_size", opt.max_client_batch},
            {"tokenization_workers", opt.http_threads},
            {"version", ftune::version_string},
        };
        res.set_content(info.dump(), "application/json");
    });
    svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
        const auto v = state.current();
        const auto st = v->stats();
        std::string s = state.requests_text();
        s += state.latency.text("ftune_request_duration_seconds",
                                "time to answer the model's POST endpoint (a streamed chat: "
                                "until its headers), in seconds");
        s += "# HELP ftune_batch_size inputs per forward of the version in service\n"
             "# TYPE ftune_batch_size histogram\n";
        std::size_t cum = 0;
        for (const std::size_t le : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
            for (std::size_t k = (le == 1 ? 0 : le / 2); k < std::min(le, st.sizes.size()); ++k)
                cum += st.sizes[k];
            s += "ftune_batch_size_bucket{le=\"" + std::to_string(le) + "\"} " +
                 std::to_string(cum) + "\n";
        }
        s += "ftune_batch_size_bucket{le=\"+Inf\"} " + std::to_string(st.batches) + "\n";
        s += "ftune_batch_size_sum " + std::to_string(st.items) + "\n";
        s += "ftune_batch_size_count " + std::to_string(st.batches) + "\n";
        s += "# HELP ftune_queue_size inputs waiting for a batch\n# TYPE ftune_queue_size gauge\n";
        s += "ftune_queue_size " + std::to_string(v->queued()) + "\n";
        s += "# HELP ftune_rejected_total inputs refused with 503: the queue was full, or they "
             "waited past --timeout-ms\n# TYPE ftune_rejected_total counter\n";
        s += "ftune_rejected_total{reason=\"queue_full\"} " + std::to_string(st.rejected) + "\n";
        s += "ftune_rejected_total{reason=\"timeout\"} " + std::to_string(st.timed_out) + "\n";
        s += "# HELP ftune_model_info the version in service\n# TYPE ftune_model_info gauge\n";
        s += "ftune_model_info{version=\"" + v->version + "\"} 1\n";
        s += "# HELP ftune_reloads_total versions loaded after the first (failed: kept the "
             "old)\n# TYPE ftune_reloads_total counter\n";
        s += "ftune_reloads_total{result=\"ok\"} " + std::to_string(state.reloads.load()) + "\n";
        s += "ftune_reloads_total{result=\"failed\"} " +
             std::to_string(state.reload_failures.load()) + "\n";
        res.set_content(s, "text/plain; version=0.0.4");
    });

    const int port = opt.port == 0 ? svr.bind_to_any_port(opt.host) : opt.port;
    if (opt.port != 0 && !svr.bind_to_port(opt.host, opt.port))
        throw ftune::error(ftune::errc::io, opt.host + ":" + std::to_string(opt.port),
                           "cannot listen there (in use, or not an address of this machine); "
                           "choose another --port, or --port 0 for any free one");
    if (port < 0) throw ftune::error(ftune::errc::io, opt.host, "cannot listen on any port there");
    std::cout << "ftune serve: listening on http://" << opt.host << ":" << port << " (version "
              << (state.current()->version.empty() ? "-" : state.current()->version) << ")"
              << std::endl;

    // the promoted version, checked every --reload-ms while the server runs
    std::mutex stop_mu;
    std::condition_variable stop_cv;
    bool stopping = false;
    std::thread reloader([&] {
        std::string failed;  // a version that did not load: not tried again until it changes
        std::unique_lock lock(stop_mu);
        while (!stop_cv.wait_for(lock, std::chrono::milliseconds(opt.reload_ms),
                                 [&] { return stopping; })) {
            lock.unlock();
            try {
                const std::string now = repo.promoted();
                if (now != state.current()->version && now != failed) {
                    try {
                        state.set(load_version(repo.promoted_path(), now, opt));
                        ++state.reloads;
                        std::cerr << "ftune serve: now serving version " << now << std::endl;
                        failed.clear();
                    } catch (const std::exception& e) {
                        ++state.reload_failures;
                        failed = now;
                        std::cerr << "ftune serve: version " << now
                                  << " did not load; still serving " << state.current()->version
                                  << ": " << e.what() << std::endl;
                    }
                }
            } catch (const std::exception& e) {
                std::cerr << "ftune serve: " << e.what() << std::endl;
            }
            lock.lock();
        }
    });
    std::thread signals([&] {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        svr.stop();
    });
    svr.listen_after_bind();
    {
        std::lock_guard lock(stop_mu);
        stopping = true;
    }
    stop_cv.notify_all();
    reloader.join();
    if (signals.joinable()) {  // stopped by a signal: that thread has returned
        pthread_kill(signals.native_handle(), SIGTERM);
        signals.join();
    }
    std::cerr << "ftune serve: stopped" << std::endl;
    return 0;
}

}  // namespace cli
