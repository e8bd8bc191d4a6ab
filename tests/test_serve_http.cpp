// `ftune serve` end to end over loopback HTTP: Text Embeddings Inference's /predict and /embed
// forms and errors, answers equal to the library's (serve::text_classifier, itself checked against
// Transformers in test_hf_heads), /info, /health, /metrics, 503 on a full queue and on a queue
// timeout, a promotion under load (no request fails, answers switch to the new version's), and a
// clean stop on SIGTERM. The server is the built `ftune` binary; the client is cpp-httplib's.
#include <ftune/bert/tasks.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/peft/adapter_io.hpp>
#include <ftune/serve.hpp>
#include <ftune/serve/adapters.hpp>
#include <ftune/serve/chat.hpp>

#include <httplib.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"

#if !defined(FTUNE_CLI) || !defined(FTUNE_REFERENCE_DIR) || !defined(FTUNE_TEST_TMP)
#error "FTUNE_CLI, FTUNE_REFERENCE_DIR and FTUNE_TEST_TMP must be defined"
#endif

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using json = nlohmann::json;
using classifier = ftune::serve::text_classifier<ftune::bert::sequence_classifier<>>;

namespace {

const fs::path fixture = fs::path(FTUNE_REFERENCE_DIR) / "hf_heads" / "seq";

// `ftune serve ARGS --port 0` as a child process; the port read from its first line.
class server {
  public:
    explicit server(const std::vector<std::string>& args) {
        int out[2];
        REQUIRE(pipe(out) == 0);
        pid_ = fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);  // a test that crashes leaves no server behind
            dup2(out[1], 1);
            close(out[0]);
            std::vector<std::string> all{FTUNE_CLI, "serve", "--port", "0"};
            all.insert(all.end(), args.begin(), args.end());
            std::vector<char*> argv;
            for (auto& a : all) argv.push_back(a.data());
            argv.push_back(nullptr);
            execv(FTUNE_CLI, argv.data());
            _exit(127);
        }
        close(out[1]);
        FILE* f = fdopen(out[0], "r");
        char line[512] = {};
        REQUIRE(std::fgets(line, sizeof line, f) != nullptr);  // "... http://host:PORT ..."
        const std::string s(line);
        INFO(s);
        const auto colon = s.rfind(':', s.find(" (version"));
        REQUIRE(colon != std::string::npos);
        port_ = std::stoi(s.substr(colon + 1));
        out_ = f;
    }
    ~server() {
        if (pid_ > 0) stop();
        if (out_) std::fclose(out_);
    }
    int port() const { return port_; }
    // SIGTERM; the exit status (0: a clean stop)
    int stop() {
        kill(pid_, SIGTERM);
        int status = 0;
        waitpid(pid_, &status, 0);
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

  private:
    pid_t pid_ = -1;
    int port_ = 0;
    FILE* out_ = nullptr;
};

// The probabilities of an answer [{"label", "score"}...] by label.
std::map<std::string, double> scores(const json& answer) {
    std::map<std::string, double> m;
    for (const auto& e : answer) m[e.at("label").get<std::string>()] = e.at("score").get<double>();
    return m;
}

// Whether an answer holds the prediction's probabilities (to 1e-12), sorted by score.
bool same(const json& answer, const ftune::serve::prediction& p, const classifier& clf) {
    if (!answer.is_array() || answer.size() != p.probabilities.size()) return false;
    for (std::size_t i = 1; i < answer.size(); ++i)
        if (answer[i - 1]["score"].get<double>() < answer[i]["score"].get<double>()) return false;
    const auto m = scores(answer);
    for (std::size_t c = 0; c < p.probabilities.size(); ++c)
        if (std::abs(m.at(clf.labels()[c]) - p.probabilities[c]) > 1e-12) return false;
    return true;
}

}  // namespace

TEST_CASE(
    "ftune serve: TEI's /predict, /info, /health, /metrics, /openapi.json; errors with their codes",
    "[serve]") {
    const classifier clf(ftune::io::load_hf<ftune::bert::sequence_classifier<>>(fixture));
    server srv({"--model", fixture.string(), "--max-client-batch", "4", "--max-bytes", "4096"});
    httplib::Client c("127.0.0.1", srv.port());
    auto post = [&](const std::string& body) {
        auto r = c.Post("/predict", body, "application/json");
        REQUIRE(r);
        return r;
    };
    // one text; a pair; a batch of singles, pairs and [text]
    auto r = post(R"({"inputs": "the plot is thin"})");
    CHECK(r->status == 200);
    CHECK(same(json::parse(r->body), clf.predict("the plot is thin"), clf));
    r = post(R"({"inputs": ["is it good?", "it is fine"]})");
    CHECK(r->status == 200);
    CHECK(same(json::parse(r->body), clf.predict("is it good?", "it is fine"), clf));
    r = post(R"({"inputs": ["a fine film", ["is it good?", "it is fine"], ["dull"]]})");
    REQUIRE(r->status == 200);
    const auto batch = json::parse(r->body);
    REQUIRE(batch.size() == 3);
    CHECK(same(batch[0], clf.predict("a fine film"), clf));
    CHECK(same(batch[1], clf.predict("is it good?", "it is fine"), clf));
    CHECK(same(batch[2], clf.predict("dull"), clf));
    // TEI's raw_scores: the logits, highest first
    r = post(R"({"inputs": "the plot is thin", "raw_scores": true})");
    REQUIRE(r->status == 200);
    {
        const auto want = clf.predict("the plot is thin");
        const auto body = json::parse(r->body);
        const auto got = scores(body);
        REQUIRE(got.size() == want.logits.size());
        for (std::size_t i = 0; i < want.logits.size(); ++i) {
            CHECK(std::abs(got.at(clf.labels()[i]) - want.logits[i]) < 1e-12);
            CHECK(std::abs(want.logits[i] - want.probabilities[i]) > 1e-6);  // not probabilities
        }
        for (std::size_t i = 1; i < body.size(); ++i)
            CHECK(body[i - 1]["score"].get<double>() >= body[i]["score"].get<double>());
    }
    // TEI's truncate: an input over max_input_length (32 tokens) is cut with true and by
    // default (--auto-truncate true), refused with 413 with false
    std::string long_text;
    for (int i = 0; i < 20; ++i) long_text += "the plot is thin ";
    r = post(json{{"inputs", long_text}, {"truncate", true}}.dump());
    CHECK(r->status == 200);
    CHECK(same(json::parse(r->body), clf.predict(long_text), clf));
    r = post(json{{"inputs", long_text}}.dump());
    CHECK(r->status == 200);
    CHECK(same(json::parse(r->body), clf.predict(long_text), clf));
    r = post(json{{"inputs", {"short", long_text}}, {"truncate", false}}.dump());  // a pair
    CHECK(r->status == 413);
    const auto given = clf.tokenizer().encode("short", long_text).ids.size();  // uncut
    CHECK(given > 32);
    CHECK(json::parse(r->body)["error"].get<std::string>().find(
              "`inputs` must have less than 32 tokens. Given: " + std::to_string(given) +
              " (input 0") != std::string::npos);
    r = post(R"({"inputs": "x", "truncation_direction": "left"})");  // cut on the right only
    CHECK(r->status == 422);
    // errors: TEI's codes and JSON
    r = post(R"({"inputs": []})");
    CHECK(r->status == 422);
    CHECK(json::parse(r->body)["error_type"] == "Empty");
    r = post("not json");
    CHECK(r->status == 422);
    CHECK(json::parse(r->body)["error_type"] == "Validation");
    r = post(R"({"text": "x"})");
    CHECK(r->status == 422);
    r = post(R"({"inputs": [["a", "b", "c"]]})");
    CHECK(r->status == 422);
    r = post(R"({"inputs": ["a", "b", "c", "d", "e"]})");
    CHECK(r->status == 413);
    CHECK(json::parse(r->body)["error"].get<std::string>().find("> maximum allowed 4") !=
          std::string::npos);
    r = post(R"({"inputs": ")" + std::string(5000, 'x') + R"("})");
    CHECK(r->status == 413);  // over --max-bytes
    // /info, /health, /metrics
    auto g = c.Get("/info");
    REQUIRE(g);
    CHECK(g->status == 200);
    const auto info = json::parse(g->body);
    CHECK(info["model_type"]["classifier"]["id2label"]["2"] == "positive");
    CHECK(info["max_client_batch_size"] == 4);
    CHECK(info["max_input_length"] == 32);
    g = c.Get("/openapi.json");  // the description names every endpoint
    REQUIRE(g);
    CHECK(g->status == 200);
    const auto api = json::parse(g->body);
    for (const char* path :
         {"/predict", "/embed", "/token-classification", "/question-answering",
          "/v1/chat/completions", "/info", "/health", "/metrics", "/openapi.json"})
        CHECK(api["paths"].contains(path));
    auto e = c.Post("/embed", R"({"inputs": "a text"})", "application/json");  // not this model's
    REQUIRE(e);
    CHECK(e->status == 400);
    CHECK(json::parse(e->body)["error"].get<std::string>().find("POST /predict") !=
          std::string::npos);
    g = c.Get("/health");
    REQUIRE(g);
    CHECK(g->status == 200);
    g = c.Get("/metrics");
    REQUIRE(g);
    CHECK(g->body.find("ftune_requests_total{path=\"/predict\",status=\"200\"} 6") !=
          std::string::npos);
    CHECK(g->body.find("ftune_requests_total{path=\"/predict\",status=\"413\"} 3") !=
          std::string::npos);
    // /predict's handler ran 13 times (the body over --max-bytes never reached it), /embed's once
    CHECK(g->body.find("ftune_requests_total{path=\"/embed\",status=\"400\"} 1") !=
          std::string::npos);
    CHECK(g->body.find("ftune_request_duration_seconds_count 14") != std::string::npos);
    CHECK(g->body.find("ftune_batch_size_sum 8") != std::string::npos);  // 1 + 1 + 3 + 1 + 1 + 1
    CHECK(srv.stop() == 0);
}

TEST_CASE("ftune serve: 503 when the queue is full, and when an input waited past its timeout",
          "[serve]") {
    {  // batches wait 300 ms to fill; one waiting input fills the queue of 1
        server srv({"--model", fixture.string(), "--max-queue", "1", "--max-wait-us", "300000",
                    "--max-batch", "8"});
        httplib::Client c1("127.0.0.1", srv.port()), c2("127.0.0.1", srv.port());
        std::thread first([&] {
            auto r = c1.Post("/predict", R"({"inputs": "one"})", "application/json");
            CHECK((r && r->status == 200));
        });
        std::this_thread::sleep_for(100ms);
        auto r = c2.Post("/predict", R"({"inputs": "two"})", "application/json");
        REQUIRE(r);
        CHECK(r->status == 503);
        CHECK(r->get_header_value("Retry-After") == "1");
        CHECK(json::parse(r->body)["error_type"] == "Overloaded");
        first.join();
    }
    {  // inputs may wait 1 ms, batches wait 100 ms to fill: the input expires in the queue
        server srv({"--model", fixture.string(), "--timeout-ms", "1", "--max-wait-us", "100000"});
        httplib::Client c("127.0.0.1", srv.port());
        auto r = c.Post("/predict", R"({"inputs": "late"})", "application/json");
        REQUIRE(r);
        CHECK(r->status == 503);
        CHECK(json::parse(r->body)["error"].get<std::string>().find("past its timeout") !=
              std::string::npos);
    }
}

TEST_CASE("ftune serve: a promotion under load fails no request and switches versions", "[serve]") {
    // a repository of two versions that answer differently: v2's classifier favours "positive"
    const fs::path repo = fs::path(FTUNE_TEST_TMP) / "serve_repo";
    fs::remove_all(repo);
    fs::create_directories(repo / "versions");
    fs::copy(fixture, repo / "versions" / "v1");
    {
        auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(fixture);
        m.model.head.classifier.bias.value.data()[2] += 5.0f;
        ftune::io::save_hf(m, repo / "versions" / "v2");
    }
    const ftune::serve::repository r(repo);
    r.promote("v1");
    const classifier v1(
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(repo / "versions" / "v1"));
    const classifier v2(
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(repo / "versions" / "v2"));
    const std::string text = "the plot is thin";
    REQUIRE(v1.predict(text).name != v2.predict(text).name);

    server srv({"--model", repo.string(), "--reload-ms", "50"});
    std::atomic<bool> stop{false};
    std::atomic<int> failed{0}, wrong{0}, answered_v1{0}, answered_v2{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t)
        clients.emplace_back([&] {
            httplib::Client c("127.0.0.1", srv.port());
            while (!stop) {
                auto res =
                    c.Post("/predict", R"({"inputs": "the plot is thin"})", "application/json");
                if (!res || res->status != 200) {
                    ++failed;
                    continue;
                }
                const std::string v = res->get_header_value("X-Model-Version");
                const auto& want = v == "v1" ? v1 : v2;
                wrong += (v != "v1" && v != "v2") ||
                         !same(json::parse(res->body), want.predict(text), want);
                ++(v == "v1" ? answered_v1 : answered_v2);
            }
        });
    while (answered_v1 < 20) std::this_thread::sleep_for(5ms);
    r.promote("v2");
    const auto t0 = std::chrono::steady_clock::now();
    while (answered_v2 < 20 && std::chrono::steady_clock::now() - t0 < 60s)
        std::this_thread::sleep_for(5ms);
    stop = true;
    for (auto& t : clients) t.join();
    CHECK(failed == 0);
    CHECK(wrong == 0);
    CHECK(answered_v1 >= 20);
    CHECK(answered_v2 >= 20);
    httplib::Client c("127.0.0.1", srv.port());
    auto m = c.Get("/metrics");
    REQUIRE(m);
    CHECK(m->body.find("ftune_model_info{version=\"v2\"} 1") != std::string::npos);
    CHECK(m->body.find("ftune_reloads_total{result=\"ok\"} 1") != std::string::npos);
    // a version that does not load is not served: v1 of a broken repository stays
    fs::create_directories(repo / "versions" / "broken");
    { std::ofstream(repo / "versions" / "broken" / "config.json") << "{not json"; }
    r.promote("broken");
    std::this_thread::sleep_for(300ms);
    auto p = c.Post("/predict", R"({"inputs": "the plot is thin"})", "application/json");
    REQUIRE(p);
    CHECK(p->status == 200);
    CHECK(p->get_header_value("X-Model-Version") == "v2");
    m = c.Get("/metrics");
    REQUIRE(m);
    CHECK(m->body.find("ftune_reloads_total{result=\"failed\"} 1") != std::string::npos);
    CHECK(srv.stop() == 0);
}

TEST_CASE("ftune serve: TEI's /embed on a sentence-transformers model equals text_embedder",
          "[serve]") {
    const fs::path model = fs::path(FTUNE_REFERENCE_DIR) / "sentence" / "model";
    const ftune::serve::text_embedder<> lib(ftune::io::load_hf<ftune::bert::model<>>(model),
                                            ftune::io::read_sentence_config(model));
    server s({"--model", model.string(), "--auto-truncate", "false"});
    httplib::Client c("127.0.0.1", s.port());
    const std::vector<std::string> texts{"John lives in Paris.", "Hello worlds!", "is"};
    auto close = [](const json& got, const std::vector<float>& want) {
        if (!got.is_array() || got.size() != want.size()) return false;
        for (std::size_t i = 0; i < want.size(); ++i)  // the text reads back as the same float
            if (got[i].get<float>() != want[i]) return false;
        return true;
    };
    // one text: a list of one vector, normalized by default (TEI's normalize: true)
    auto r = c.Post("/embed", json{{"inputs", texts[0]}}.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    auto body = json::parse(r->body);
    REQUIRE(body.size() == 1);
    CHECK(close(body[0], lib.embed(texts[0], true)));
    // a batch, not normalized: the pooled vectors as they are
    r = c.Post("/embed", json{{"inputs", texts}, {"normalize", false}}.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    body = json::parse(r->body);
    REQUIRE(body.size() == texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
        INFO(texts[i]);
        // batched with other inputs the sums may differ in the last bits: compare to 1e-6
        const auto want = lib.embed(texts[i], false);
        REQUIRE(body[i].size() == want.size());
        for (std::size_t j = 0; j < want.size(); ++j)
            CHECK(std::abs(body[i][j].get<double>() - want[j]) < 1e-6);
    }
    // /info says what the model is; /predict is not for it; bad bodies are 422
    auto g = c.Get("/info");
    REQUIRE(g);
    const auto info = json::parse(g->body);
    CHECK(info["model_type"]["embedding"]["pooling"] == "mean");
    CHECK(info["model_type"]["embedding"]["dimension"] == 32);
    CHECK(info["max_input_length"] == 12);
    r = c.Post("/predict", json{{"inputs", "x"}}.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(json::parse(r->body)["error"].get<std::string>().find("POST /embed") !=
          std::string::npos);
    for (const char* bad : {R"({"inputs": 3})", R"({"inputs": ["a", 1]})", R"({"inputs": "a",
        "normalize": "yes"})",
                            "[not json"}) {
        r = c.Post("/embed", bad, "application/json");
        REQUIRE(r);
        CHECK(r->status == 422);
    }
    r = c.Post("/embed", R"({"inputs": []})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 422);
    CHECK(json::parse(r->body)["error_type"] == "Empty");
    // over max_input_length (12): refused (--auto-truncate false) unless "truncate": true
    const std::string long_text = "john lives in paris near the river with john in paris";
    r = c.Post("/embed", json{{"inputs", {"is", long_text}}}.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 413);
    CHECK(json::parse(r->body)["error"].get<std::string>().find("less than 12 tokens") !=
          std::string::npos);
    r = c.Post("/embed", json{{"inputs", long_text}, {"truncate", true}}.dump(),
               "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    CHECK(close(json::parse(r->body)[0], lib.embed(long_text, true)));
    CHECK(s.stop() == 0);
}

TEST_CASE("ftune serve: /token-classification and /question-answering equal the library's",
          "[serve]") {
    const fs::path heads = fs::path(FTUNE_REFERENCE_DIR) / "hf_heads";
    {  // a token classifier: entities as Transformers' pipeline (aggregation "first")
        const ftune::serve::token_tagger<> lib(
            ftune::io::load_hf<ftune::bert::token_classifier<>>(heads / "token"));
        server s({"--model", (heads / "token").string()});
        httplib::Client c("127.0.0.1", s.port());
        const std::vector<std::string> texts{"John lives in Paris.",
                                             "where is berlin near the river ? john lives"};
        auto r =
            c.Post("/token-classification", json{{"inputs", texts}}.dump(), "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        auto body = json::parse(r->body);
        REQUIRE(body.size() == 2);
        for (std::size_t i = 0; i < texts.size(); ++i) {
            const auto want = lib.entities(texts[i]);
            REQUIRE(body[i].size() == want.size());
            for (std::size_t k = 0; k < want.size(); ++k) {
                CHECK(body[i][k]["entity_group"] == want[k].entity_group);
                CHECK(body[i][k]["word"] == want[k].word);
                CHECK(body[i][k]["start"] == want[k].start);
                CHECK(body[i][k]["end"] == want[k].end);
                CHECK(std::abs(body[i][k]["score"].get<double>() - want[k].score) < 1e-6);
            }
        }
        // one text, every word not tagged O
        r = c.Post("/token-classification",
                   json{{"inputs", texts[0]}, {"aggregation_strategy", "none"}}.dump(),
                   "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        body = json::parse(r->body);
        REQUIRE(body.is_array());
        const std::vector<std::string_view> one{texts[0]};
        std::vector<ftune::serve::word_tag> tagged;  // the library's words, O left out
        const auto words = lib.tag_batch(one);       // kept: a range over words[0] must not dangle
        for (const auto& w : words[0])
            if (w.label != "O") tagged.push_back(w);
        REQUIRE(body.size() == tagged.size());
        CHECK(!tagged.empty());
        for (std::size_t k = 0; k < tagged.size(); ++k) {
            CHECK(body[k]["entity"] == tagged[k].label);
            CHECK(body[k]["word"] == tagged[k].word);
            CHECK(body[k]["start"] == tagged[k].start);
            CHECK(std::abs(body[k]["score"].get<double>() - tagged[k].score) < 1e-6);
        }
        const auto info = json::parse(c.Get("/info")->body);
        CHECK(info["model_type"]["token_classifier"]["id2label"]["1"] == "B-PER");
        r = c.Post("/token-classification", R"({"inputs": "x", "aggregation_strategy": "max"})",
                   "application/json");
        REQUIRE(r);
        CHECK(r->status == 422);
        r = c.Post("/predict", R"({"inputs": "x"})", "application/json");
        REQUIRE(r);
        CHECK(r->status == 400);
        CHECK(json::parse(r->body)["error"].get<std::string>().find("POST /token-classification") !=
              std::string::npos);
        CHECK(s.stop() == 0);
    }
    {  // a question-answering model: the pipeline's answers
        const ftune::serve::question_answerer<> lib(
            ftune::io::load_hf<ftune::bert::question_answering<>>(heads / "qa"));
        server s({"--model", (heads / "qa").string()});
        httplib::Client c("127.0.0.1", s.port());
        const std::string q = "Where is the café?", ctx = "The café is in Berlin, near the rivers.";
        auto r = c.Post("/question-answering",
                        json{{"inputs", {{"question", q}, {"context", ctx}}}}.dump(),
                        "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        auto body = json::parse(r->body);  // one question, top_k 1: one answer object
        const auto want = lib.answer(q, ctx, 1);
        REQUIRE(want.size() == 1);
        CHECK(body["answer"] == want[0].text);
        CHECK(body["start"] == want[0].char_begin);
        CHECK(body["end"] == want[0].char_end);
        CHECK(std::abs(body["score"].get<double>() - want[0].score) < 1e-9);
        // a batch with top_k 3: a list of three answers per question
        r = c.Post("/question-answering",
                   json{{"inputs", json::array({{{"question", q}, {"context", ctx}},
                                                {{"question", "Who?"}, {"context", ctx}}})},
                        {"top_k", 3}}
                       .dump(),
                   "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        body = json::parse(r->body);
        REQUIRE(body.size() == 2);
        const auto three = lib.answer("Who?", ctx, 3);
        REQUIRE(body[1].size() == three.size());
        for (std::size_t k = 0; k < three.size(); ++k) CHECK(body[1][k]["answer"] == three[k].text);
        for (const char* bad : {R"({"inputs": {"question": "q"}})", R"({"inputs": "text"})",
                                R"({"inputs": {"question": "q", "context": "c"}, "top_k": 0})"}) {
            r = c.Post("/question-answering", bad, "application/json");
            REQUIRE(r);
            CHECK(r->status == 422);
        }
        CHECK(s.stop() == 0);
    }
}

TEST_CASE("ftune serve: OpenAI's /v1/chat/completions, whole and streamed, equals the library's",
          "[serve]") {
    // the tiny Llama with a letters-only chat template (as cli_train_chat assembles it)
    const fs::path ref = FTUNE_REFERENCE_DIR, dir = fs::path(FTUNE_TEST_TMP) / "chat_model";
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& f : {ref / "hf_llama" / "untied" / "config.json",
                          ref / "hf_llama" / "untied" / "model.safetensors",
                          ref / "hf_llama" / "cli" / "tokenizer.json",
                          ref / "lm" / "tiny_chat" / "tokenizer_config.json"})
        fs::copy_file(f, dir / f.filename());
    auto m = ftune::io::load_hf<ftune::llama::causal_lm<>>(dir);
    ftune::serve::chat_generator<ftune::llama::causal_lm<>> lib(
        std::move(m.model), *m.tokenizer, m.config.model.max_position_embeddings);
    const std::vector<ftune::text::chat_message> messages{{"user", "GHI"}};
    ftune::generation::options greedy;
    greedy.temperature = 0, greedy.max_new_tokens = 6;
    const auto want = lib.complete(messages, greedy);
    REQUIRE(!want.result.text.empty());

    server s({"--model", dir.string()});
    httplib::Client c("127.0.0.1", s.port());
    const json request{{"model", "tiny"},
                       {"messages", {{{"role", "user"}, {"content", "GHI"}}}},
                       {"temperature", 0},
                       {"max_tokens", 6}};
    auto r = c.Post("/v1/chat/completions", request.dump(), "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    auto body = json::parse(r->body);
    CHECK(body["object"] == "chat.completion");
    CHECK(body["model"] == "tiny");
    CHECK(body["choices"][0]["message"]["role"] == "assistant");
    CHECK(body["choices"][0]["message"]["content"] == want.result.text);
    CHECK(body["choices"][0]["finish_reason"] == "length");  // 6 tokens, no eos
    CHECK(body["usage"]["prompt_tokens"] == want.prompt_tokens);
    CHECK(body["usage"]["completion_tokens"] == 6);
    // streamed: server-sent events whose deltas add up to the same reply, then [DONE]
    auto streamed = request;
    streamed["stream"] = true;
    r = c.Post("/v1/chat/completions", streamed.dump(), "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    CHECK(r->get_header_value("Content-Type").find("text/event-stream") != std::string::npos);
    std::string text, finish;
    std::size_t events = 0;
    bool done = false;
    std::istringstream lines(r->body);
    for (std::string line; std::getline(lines, line);) {
        if (line.empty()) continue;
        REQUIRE(line.starts_with("data: "));
        REQUIRE(!done);  // nothing after [DONE]
        const std::string data = line.substr(6);
        if (data == "[DONE]") {
            done = true;
            continue;
        }
        const auto chunk = json::parse(data);
        CHECK(chunk["object"] == "chat.completion.chunk");
        const auto& choice = chunk["choices"][0];
        if (choice["delta"].contains("content")) text += choice["delta"]["content"];
        if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
        ++events;
    }
    CHECK(done);
    CHECK(events >= 3);  // the role, at least one piece, the finish
    CHECK(text == want.result.text);
    CHECK(finish == "length");
    // a stop string ends the reply before it (as OpenAI's stop)
    const std::string stop = want.result.text.substr(2, 1);
    auto stopped = request;
    stopped["stop"] = stop;
    r = c.Post("/v1/chat/completions", stopped.dump(), "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    body = json::parse(r->body);
    CHECK(body["choices"][0]["finish_reason"] == "stop");
    CHECK(body["choices"][0]["message"]["content"] ==
          want.result.text.substr(0, want.result.text.find(stop)));
    // OpenAI's error shape for what ftune does not do, or a bad body; /info says what is served
    for (const char* bad :
         {R"({"messages": []})", R"({"messages": [{"role": "user"}]})",
          R"({"messages": [{"role": "user", "content": "x"}], "n": 2})",
          R"({"messages": [{"role": "user", "content": "x"}], "top_p": 0})", "not json"}) {
        r = c.Post("/v1/chat/completions", bad, "application/json");
        REQUIRE(r);
        CHECK(r->status == 400);
        CHECK(json::parse(r->body)["error"]["type"] == "invalid_request_error");
    }
    CHECK(json::parse(c.Get("/info")->body)["model_type"]["generation"]["max_positions"] ==
          m.config.model.max_position_embeddings);
    r = c.Post("/predict", R"({"inputs": "x"})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(s.stop() == 0);
}

TEST_CASE("ftune serve --adapter: LoRA tasks over one base, each request naming its adapter",
          "[serve]") {
    using Model = ftune::bert::sequence_classifier<>;
    const fs::path root = fs::path(FTUNE_TEST_TMP) / "serve_adapters";
    // two tasks (3 and 2 labels), B and the heads random so that their answers differ
    std::uint64_t seed = 7;
    for (const auto& [name, labels] : std::vector<std::pair<std::string, std::vector<std::string>>>{
             {"three", {"a", "b", "c"}}, {"two", {"no", "yes"}}}) {
        auto m = ftune::io::load_hf<Model>(fixture, {.labels = labels, .seed = seed});
        const ftune::peft::lora_config cfg{.r = 2,
                                           .alpha = 4,
                                           .target_modules = {"query", "value"},
                                           .modules_to_save = {"classifier"},
                                           .seed = seed};
        ftune::peft::apply_lora(m.model, cfg);
        const ftune::random_stream rng(++seed, 0);
        std::uint64_t k = 0;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            if (p.name.ends_with("lora_B.weight") || p.name.starts_with("classifier."))
                for (auto& x : p.value) x = 0.5f * rng.normal(k++);
        });
        fs::remove_all(root / name);
        ftune::peft::save_adapter(m.model, cfg, root / name);
    }
    ftune::serve::adapter_classifier<Model> lib(ftune::io::load_hf<Model>(fixture));
    lib.add_adapter("three", root / "three");
    lib.add_adapter("two", root / "two");
    server s({"--model", fixture.string(), "--adapter", "three=" + (root / "three").string(),
              "--adapter", "two=" + (root / "two").string()});
    httplib::Client c("127.0.0.1", s.port());
    for (const char* task : {"three", "two"})
        for (const std::string text : {"John lives in Paris.", "Hello worlds!"}) {
            INFO(task << ": " << text);
            auto r = c.Post("/predict", json{{"inputs", text}, {"adapter", task}}.dump(),
                            "application/json");
            REQUIRE(r);
            REQUIRE(r->status == 200);
            const auto got = scores(json::parse(r->body));
            const auto want = lib.predict(task, text);
            REQUIRE(got.size() == want.probabilities.size());
            for (std::size_t i = 0; i < want.probabilities.size(); ++i)
                CHECK(std::abs(got.at(lib.labels(task)[i]) - want.probabilities[i]) < 1e-9);
        }
    // a request without an adapter, or with an unknown one, names the loaded ones
    for (const char* body : {R"({"inputs": "x"})", R"({"inputs": "x", "adapter": "four"})"}) {
        auto r = c.Post("/predict", body, "application/json");
        REQUIRE(r);
        CHECK(r->status == 422);
        CHECK(json::parse(r->body)["error"].get<std::string>().find("adapters are three, two") !=
              std::string::npos);
    }
    const auto info = json::parse(c.Get("/info")->body);
    CHECK(info["model_type"]["classifier"]["adapters"]["two"]["id2label"].size() == 2);
    CHECK(s.stop() == 0);
}
