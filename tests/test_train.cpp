// The training engine: freezing by name, deterministic length-bucketed batches, padding,
// token-classification labels on first wordpieces, entity chunking, and whole fits of a small
// Hugging Face model (the loss falls, early stopping restores the best weights, the log and the
// plot are written, frozen parameters do not move).
#include <ftune/io/hf.hpp>
#include <ftune/metrics/rouge.hpp>
#include <ftune/train/qa.hpp>
#include <ftune/train/trainer.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "device_training.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
const fs::path heads = fs::path(FTUNE_REFERENCE_DIR) / "hf_heads";
}  // namespace

TEST_CASE("freeze: embeddings, the lowest N layers, everything but the head", "[unit][train]") {
    using ftune::train::freeze;
    const auto e = freeze::parse("embeddings"), l = freeze::parse("layers:1"),
               enc = freeze::parse("encoder"), none = freeze::parse("none");
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    REQUIRE(m.model.backbone.layer.size() == 2);
    // whether each named parameter trains after apply_freeze(f)
    auto trains = [&](const freeze& f, const std::string& name) {
        ftune::train::apply_freeze(m.model, f);
        bool found = false, t = false;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            if (p.name == name) found = true, t = p.trainable;
        });
        REQUIRE(found);
        return t;
    };
    CHECK_FALSE(trains(e, "bert.embeddings.word_embeddings.weight"));
    CHECK_FALSE(trains(e, "bert.embeddings.LayerNorm.bias"));
    CHECK(trains(e, "bert.encoder.layer.0.output.dense.weight"));
    CHECK_FALSE(trains(l, "bert.embeddings.position_embeddings.weight"));
    CHECK_FALSE(trains(l, "bert.encoder.layer.0.output.dense.weight"));
    CHECK(trains(l, "bert.encoder.layer.1.output.dense.weight"));
    CHECK_FALSE(trains(enc, "bert.encoder.layer.1.output.dense.weight"));
    CHECK_FALSE(trains(enc, "bert.pooler.dense.weight"));
    CHECK(trains(enc, "classifier.weight"));
    CHECK(trains(none, "bert.embeddings.word_embeddings.weight"));
    CHECK(trains(freeze::parse("layers:5"), "classifier.weight"));  // more layers than the model
    CHECK_THROWS_WITH(freeze::parse("layers:x"), Catch::Contains("layers:N"));

    const std::size_t n = ftune::train::apply_freeze(m.model, enc);
    std::size_t trainable = 0, total = 0;
    m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        total += p.value.size();
        if (p.trainable) trainable += p.value.size();
    });
    CHECK(trainable == 32 * 3 + 3);  // the classifier only
    CHECK(n == total - trainable);
}

TEST_CASE("batches: one permutation per (seed, epoch), bucketed by length, padded",
          "[unit][train]") {
    std::vector<ftune::train::example> xs;
    for (int i = 0; i < 37; ++i) {
        ftune::train::example x;
        x.ids.assign(2 + std::size_t(i * 7 % 11), 5);
        x.types.assign(x.ids.size(), 0);
        x.labels = {i % 3};
        xs.push_back(x);
    }
    const auto a = ftune::train::batch_order(xs, 8, true, true, 1, 0);
    const auto b = ftune::train::batch_order(xs, 8, true, true, 1, 0);
    const auto c = ftune::train::batch_order(xs, 8, true, true, 1, 1);
    CHECK(a == b);
    CHECK(a != c);
    std::multiset<std::size_t> all;
    for (const auto& batch : a) all.insert(batch.begin(), batch.end());
    CHECK(all.size() == 37);
    CHECK(std::set<std::size_t>(all.begin(), all.end()).size() == 37);
    // within a batch, lengths are close (sorted within windows): less padding than random
    std::size_t padded = 0, plain = 0;
    for (const auto& batch : a) {
        const auto bt = ftune::train::collate(xs, batch, 0, false);
        padded += bt.B * bt.T;
    }
    for (const auto& batch : ftune::train::batch_order(xs, 8, true, false, 1, 0)) {
        const auto bt = ftune::train::collate(xs, batch, 0, false);
        plain += bt.B * bt.T;
    }
    CHECK(padded < plain);
    // save_batch_order: the trainer's steps of two epochs, a line of indices each
    const fs::path order = fs::temp_directory_path() / "ftune_test_batch_order.txt";
    ftune::train::save_batch_order(order, xs, 8, true, 1, 2);
    std::ifstream in(order);
    std::vector<std::vector<std::size_t>> lines;
    for (std::string line; std::getline(in, line);) {
        std::istringstream words(line);
        lines.emplace_back(std::istream_iterator<std::size_t>(words),
                           std::istream_iterator<std::size_t>());
    }
    auto both = a;
    both.insert(both.end(), c.begin(), c.end());
    CHECK(lines == both);
    fs::remove(order);
    const auto bt = ftune::train::collate(xs, a[0], 0, false);
    CHECK(bt.labels.size() == bt.B);
    for (std::size_t r = 0; r < bt.B; ++r) {
        const auto len = xs[a[0][r]].ids.size();
        CHECK(bt.mask[r * bt.T + len - 1] == 1);
        if (len < bt.T) CHECK(bt.mask[r * bt.T + len] == 0);
    }
}

TEST_CASE("token classification: a word's tag on its first wordpiece, -100 elsewhere",
          "[unit][train]") {
    const auto tok = *ftune::io::load_hf_tokenizer(heads / "token");
    ftune::data::tagged_sentence s{{"Hello", "worlds", "!"}, {"B-LOC", "I-LOC", "O"}, 1};
    const std::vector<std::string> names{"O", "B-PER", "I-PER", "B-LOC", "I-LOC"};
    const auto xs = ftune::train::encode(tok, {s}, names, 0);
    REQUIRE(xs.size() == 1);
    // [CLS] hello world ##s ! [SEP]
    CHECK(xs[0].ids.size() == 6);
    CHECK(xs[0].labels == std::vector<ftune::token_id>{-100, 3, 4, -100, 0, -100});
    CHECK_THROWS_WITH(ftune::train::encode(tok, {{{"x"}, {"B-ORG"}, 7}}, names, 0, "f.conll"),
                      Catch::Contains("f.conll:7"));
}

TEST_CASE("entities: conlleval's chunking", "[unit][train]") {
    using ftune::metrics::entities;
    using E = ftune::metrics::entity;
    CHECK(entities({"B-PER", "I-PER", "O", "B-LOC"}) ==
          std::vector<E>{{"PER", 0, 2}, {"LOC", 3, 4}});
    CHECK(entities({"I-PER", "I-PER", "O"}) == std::vector<E>{{"PER", 0, 2}});  // I- starts one
    CHECK(entities({"B-PER", "I-LOC"}) == std::vector<E>{{"PER", 0, 1}, {"LOC", 1, 2}});
    CHECK(entities({"B-PER", "B-PER"}) == std::vector<E>{{"PER", 0, 1}, {"PER", 1, 2}});
    const auto s = ftune::metrics::entity_f1({{"B-PER", "I-PER", "O", "B-LOC"}},
                                             {{"B-PER", "I-PER", "O", "O"}});
    CHECK(s.precision == 1.0);
    CHECK(s.recall == 0.5);
}

namespace {
// A toy sentiment set over the fixture's vocabulary: a text is positive when it mentions paris.
ftune::data::text_dataset toy(std::size_t n, std::uint64_t seed) {
    const std::vector<std::string> words{"john",  "lives", "in",    "the",    "cafe", "was",
                                         "great", "hello", "world", "berlin", "near", "river"};
    ftune::data::text_dataset d;
    d.path = "toy";
    const ftune::random_stream s(seed, 0);
    std::size_t k = 0;
    for (std::size_t i = 0; i < n; ++i) {
        std::string text;
        const bool pos = s.below(k++, 2) == 1;
        const std::size_t len = 3 + s.below(k++, 5), at = s.below(k++, std::uint32_t(len));
        for (std::size_t w = 0; w < len; ++w) {
            if (w) text += ' ';
            text += pos && w == at ? "paris" : words[s.below(k++, std::uint32_t(words.size()))];
        }
        d.rows.push_back({text, "", pos ? "positive" : "negative", i + 2});
    }
    return d;
}
}  // namespace

TEST_CASE("fit: a small model learns a toy task; early stopping keeps the best weights",
          "[train]") {
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    const auto names = ftune::train::label_names({"negative", "positive"});
    const auto train = ftune::train::encode(
        *m.tokenizer, toy(400, 1), ftune::heads::problem::single_label_classification, names, 32);
    const auto valid = ftune::train::encode(
        *m.tokenizer, toy(100, 2), ftune::heads::problem::single_label_classification, names, 32);
    const fs::path log = fs::temp_directory_path() / "ftune_test_train.jsonl";
    std::ostringstream progress;
    ftune::train::trainer<ftune::bert::sequence_classifier<>> t(m.model, {.epochs = 6,
                                                                          .batch_size = 16,
                                                                          .lr = 1e-3,
                                                                          .warmup_ratio = 0.1,
                                                                          .eval_every = 25,
                                                                          .patience = 3,
                                                                          .log_every = 5,
                                                                          .progress = &progress,
                                                                          .log_path = log});
    const auto before = t.evaluate(valid);
    const auto r = t.fit(train, valid);
    const auto after = t.evaluate(valid);
    INFO(progress.str());
    CHECK(before.accuracy < 0.8);
    CHECK(r.best_metric >= 0.95);
    CHECK(after.accuracy == r.best_metric);  // the best weights are back
    CHECK(after.loss < before.loss);
    CHECK(r.steps > 0);
    // the log: training lines and evaluation lines, as JSON
    std::ifstream in(log);
    std::size_t train_lines = 0, eval_lines = 0;
    for (std::string l; std::getline(in, l);) {
        const auto j = nlohmann::json::parse(l);
        train_lines += j.contains("loss");
        eval_lines += j.contains("eval_metric");
    }
    CHECK(train_lines >= r.steps / 5);
    CHECK(eval_lines >= 1);
    const fs::path svg = fs::temp_directory_path() / "ftune_test_train.svg";
    t.write_plot(svg);
    std::ifstream sv(svg);
    const std::string svg_text((std::istreambuf_iterator<char>(sv)), {});
    CHECK(svg_text.find("<polyline") != std::string::npos);
    CHECK(progress.str().find("eval loss") != std::string::npos);
}

TEST_CASE("fit: optimizer and schedule objects, callbacks that observe and steer", "[train]") {
    using Model = ftune::bert::sequence_classifier<>;
    const auto names = ftune::train::label_names({"negative", "positive"});
    auto weights = [](Model& model) {
        std::vector<float> v;
        model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            v.insert(v.end(), p.value.begin(), p.value.end());
        });
        return v;
    };
    const ftune::train::options o{
        .epochs = 2, .batch_size = 8, .lr = 1e-3, .warmup_ratio = 0.2, .progress = nullptr};
    auto a =
        ftune::io::load_hf<Model>(heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    auto b =
        ftune::io::load_hf<Model>(heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    const auto train = ftune::train::encode(
        *a.tokenizer, toy(40, 11), ftune::heads::problem::single_label_classification, names, 32);
    // the default (AdamW, options.schedule) and the same objects passed in: the same weights
    ftune::train::trainer<Model> ta(a.model, o), tb(b.model, o);
    const std::size_t total = tb.total_steps(train.size());
    CHECK(total == 2 * 5);
    tb.optimizer = ftune::optim::make_optimizer<float>("adamw", o.lr, o.weight_decay);
    tb.lr_schedule = ftune::schedule::make("linear", o.lr, 2, total);
    ta.fit(train, {});
    tb.fit(train, {});
    CHECK(weights(a.model) == weights(b.model));
    // SGD with a constant rate: other weights; every record has that rate
    auto c =
        ftune::io::load_hf<Model>(heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    ftune::train::trainer<Model> tc(
        c.model, {.epochs = 2, .batch_size = 8, .log_every = 1, .progress = nullptr});
    tc.optimizer = ftune::optim::make_optimizer<float>("sgd", 0.05, 0.0, 0.9);
    tc.lr_schedule = ftune::schedule::any_schedule(ftune::schedule::constant{0.05}, "constant");
    // a callback that counts what it sees and stops the run after 7 steps
    struct counting : ftune::train::callback {
        std::size_t steps = 0, logs = 0, begins = 0, ends = 0;
        bool interrupted = false;
        void on_train_begin(const ftune::train::state&) override { ++begins; }
        void on_step_end(const ftune::train::state& s, ftune::train::control& c) override {
            ++steps;
            c.should_stop |= s.step == 7;
        }
        void on_log(const ftune::train::state&, const ftune::train::record& r) override {
            ++logs;
            CHECK(r.lr == 0.05);
        }
        void on_train_end(const ftune::train::state& s) override {
            ++ends;
            interrupted = s.interrupted;
        }
    };
    auto* seen = new counting;
    tc.callbacks.emplace_back(seen);
    const auto r = tc.fit(train, {});
    CHECK(r.steps == 7);
    CHECK(r.interrupted);
    CHECK(seen->steps == 7);
    CHECK(seen->logs == 7);  // log_every 1
    CHECK(seen->begins == 1);
    CHECK(seen->ends == 1);
    CHECK(seen->interrupted);
    CHECK(weights(c.model) != weights(a.model));
    CHECK_THROWS_AS(ftune::optim::make_optimizer<float>("adam", 1e-3, 0), ftune::error);
    CHECK_THROWS_AS(ftune::schedule::make("step", 1e-3, 0, 10), ftune::error);
}

TEST_CASE("fit: frozen parameters do not move; the head still learns", "[train]") {
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    ftune::train::apply_freeze(m.model, ftune::train::freeze::parse("layers:1"));
    std::vector<float> frozen_before, head_before;
    auto collect = [&](std::vector<float>& frozen, std::vector<float>& head) {
        frozen.clear(), head.clear();
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            auto& dst = p.trainable ? head : frozen;
            dst.insert(dst.end(), p.value.begin(), p.value.end());
        });
    };
    collect(frozen_before, head_before);
    const auto names = ftune::train::label_names({"negative", "positive"});
    const auto train = ftune::train::encode(
        *m.tokenizer, toy(64, 4), ftune::heads::problem::single_label_classification, names, 32);
    ftune::train::trainer<ftune::bert::sequence_classifier<>> t(
        m.model, {.epochs = 1, .lr = 1e-3, .progress = nullptr});
    t.fit(train, {});
    std::vector<float> frozen_after, head_after;
    collect(frozen_after, head_after);
    CHECK(frozen_after == frozen_before);
    CHECK(head_after != head_before);
}

TEST_CASE("classification_report: scikit-learn's text, digit for digit", "[parity][train]") {
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "classification_reports.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 4);
    for (const auto& c : cases) {
        const auto gold = c["gold"].get<std::vector<int>>(),
                   pred = c["pred"].get<std::vector<int>>();
        const auto names = c["names"].get<std::vector<std::string>>();
        CHECK(ftune::metrics::classification_report(gold, pred, names) ==
              c["report"].get<std::string>());
    }
}

TEST_CASE("entity_report: seqeval's text, digit for digit", "[parity][train]") {
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "entity_reports.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 3);
    for (const auto& c : cases) {
        const auto gold = c["gold"].get<std::vector<std::vector<std::string>>>();
        const auto pred = c["pred"].get<std::vector<std::vector<std::string>>>();
        CHECK(ftune::metrics::entity_report(gold, pred) == c["report"].get<std::string>());
    }
}

TEST_CASE(
    "metrics: multi-label and token reports, confusion matrix, correlations and SQuAD "
    "scores equal scikit-learn, scipy and torchmetrics",
    "[parity][train]") {
    // tests/reference/metrics_parity.py
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "metrics_extra.json");
    const auto x = nlohmann::json::parse(in);
    using tags = std::vector<std::vector<std::string>>;
    using rows = std::vector<std::vector<int>>;
    REQUIRE(x["multilabel"].size() == 3);
    for (const auto& c : x["multilabel"])
        CHECK(ftune::metrics::multilabel_report(c["gold"].get<rows>(), c["pred"].get<rows>(),
                                                c["names"].get<std::vector<std::string>>()) ==
              c["report"].get<std::string>());
    REQUIRE(x["confusion"].size() == 4);
    for (const auto& c : x["confusion"]) {
        const auto m = ftune::metrics::confusion_matrix(c["gold"].get<std::vector<int>>(),
                                                        c["pred"].get<std::vector<int>>(), c["n"]);
        CHECK(m == c["matrix"].get<std::vector<std::vector<std::size_t>>>());
    }
    REQUIRE(x["token"].size() == 3);
    for (const auto& c : x["token"])
        CHECK(ftune::metrics::token_report(c["gold"].get<tags>(), c["pred"].get<tags>()) ==
              c["report"].get<std::string>());
    REQUIRE(x["correlation"].size() == 3);
    for (const auto& c : x["correlation"]) {
        const auto a = c["x"].get<std::vector<double>>(), b = c["y"].get<std::vector<double>>();
        CHECK(std::abs(ftune::metrics::pearson(a, b) - c["pearson"].get<double>()) < 1e-12);
        CHECK(std::abs(ftune::metrics::spearman(a, b) - c["spearman"].get<double>()) < 1e-12);
    }
    REQUIRE(x["squad"].size() == 14);
    for (const auto& c : x["squad"]) {
        const std::string p = c["prediction"];
        const auto golds = c["golds"].get<std::vector<std::string>>();
        INFO(p << " vs " << c["golds"].dump());
        CHECK(ftune::metrics::squad_exact_match(p, golds) == c["exact_match"].get<double>());
        CHECK(std::abs(ftune::metrics::squad_f1(p, golds) - c["f1"].get<double>()) < 1e-6);
    }
    SECTION("the confusion matrix as text") {
        const auto text = ftune::metrics::confusion_matrix_text({{5, 1}, {0, 12}}, {"neg", "pos"});
        CHECK(text ==
              "true \\ predicted   0   1\n"
              "  0 neg            5   1\n"
              "  1 pos            0  12\n");
    }
}

TEST_CASE("metrics: ROUGE-1, ROUGE-2 and ROUGE-L equal the rouge-score package's", "[parity]") {
    // tests/reference/rouge_parity.py: edge cases (punctuation, numbers, Unicode, empty texts)
    // and SST-2 sentences against shuffled, cut versions of themselves
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "rouge.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() >= 12);
    for (const auto& c : cases) {
        const std::string ref = c["reference"], pred = c["prediction"];
        INFO(ref << " | " << pred);
        const ftune::metrics::rouge_score got[] = {ftune::metrics::rouge_n(ref, pred, 1),
                                                   ftune::metrics::rouge_n(ref, pred, 2),
                                                   ftune::metrics::rouge_l(ref, pred)};
        const char* names[] = {"rouge1", "rouge2", "rougeL"};
        for (int k = 0; k < 3; ++k) {
            INFO(names[k]);
            CHECK(got[k].precision == Approx(double(c[names[k]][0])).margin(1e-12));
            CHECK(got[k].recall == Approx(double(c[names[k]][1])).margin(1e-12));
            CHECK(got[k].fmeasure == Approx(double(c[names[k]][2])).margin(1e-12));
        }
    }
    CHECK_THROWS_WITH(ftune::metrics::rouge_n("a", "a", 0), Catch::Contains("at least 1"));
}

TEST_CASE(
    "metrics: ROUGE against several references equals rouge-score's score_multi and the "
    "mean over them",
    "[parity]") {
    // tests/reference/rouge_parity.py: three made-up references in DialogSum's style a case,
    // against a prediction mixing pieces of them; then two references with tied F-measures
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "rouge_multi.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 26);  // the last two: a tie between the references
    for (const auto& c : cases) {
        const auto refs = c["references"].get<std::vector<std::string>>();
        const std::string pred = c["prediction"];
        INFO(pred);
        const auto best = ftune::metrics::rouge_best(refs, pred);
        const ftune::metrics::rouge_score got[] = {best.rouge1, best.rouge2, best.rouge_l};
        const char* names[] = {"rouge1", "rouge2", "rougeL"};
        double mean[3] = {0, 0, 0};
        const double n = double(refs.size());
        for (const auto& ref : refs) {
            const auto s = ftune::metrics::rouge(ref, pred);
            mean[0] += s.rouge1.fmeasure / n, mean[1] += s.rouge2.fmeasure / n;
            mean[2] += s.rouge_l.fmeasure / n;
        }
        for (int k = 0; k < 3; ++k) {
            INFO(names[k]);
            CHECK(got[k].precision == Approx(double(c["best"][names[k]][0])).margin(1e-12));
            CHECK(got[k].recall == Approx(double(c["best"][names[k]][1])).margin(1e-12));
            CHECK(got[k].fmeasure == Approx(double(c["best"][names[k]][2])).margin(1e-12));
            CHECK(mean[k] == Approx(double(c["mean"][names[k]])).margin(1e-12));
        }
    }
    CHECK_THROWS_WITH(ftune::metrics::rouge_best({}, "a"), Catch::Contains("at least one"));
}

TEST_CASE("BANKING77, 10 intents: test accuracy within 3 points of PyTorch on the same recipe",
          "[train][accuracy]") {
    // tests/reference/banking_tiny.py: the rows, the recipe, the random model, PyTorch's result
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "banking_tiny_reference.json");
    const auto ref = nlohmann::json::parse(in);
    const auto intents = ref["intents"].get<std::vector<std::string>>();
    const auto& recipe = ref["recipe"];
    const fs::path data = FTUNE_DATA_DIR;
    auto select = [&](const char* file, std::size_t per_intent) {
        auto d = ftune::data::read_table(data / "banking77" / file);
        std::map<std::string, std::size_t> taken;
        std::erase_if(d.rows, [&](const ftune::data::text_example& r) {
            if (std::find(intents.begin(), intents.end(), r.label) == intents.end()) return true;
            return per_intent && taken[r.label]++ >= per_intent;
        });
        return d;
    };
    const auto train_rows = select("train.csv", recipe["rows_per_intent"].get<std::size_t>());
    const auto test_rows = select("test.csv", 0);
    REQUIRE(train_rows.rows.size() == ref["train_rows"].get<std::size_t>());
    REQUIRE(test_rows.rows.size() == ref["test_rows"].get<std::size_t>());
    double sum = 0;
    const auto seeds = ref["seeds"].get<std::vector<std::uint64_t>>();
    for (const auto seed : seeds) {
        auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
            fs::path(FTUNE_REFERENCE_DIR) / "banking_tiny", {.labels = intents});
        REQUIRE(m.report.initialized.empty());  // PyTorch's initial weights, head included
        const auto max_len = recipe["max_length"].get<std::size_t>();
        const auto train = ftune::train::encode(*m.tokenizer, train_rows,
                                                ftune::heads::problem::single_label_classification,
                                                intents, max_len);
        const auto test = ftune::train::encode(*m.tokenizer, test_rows,
                                               ftune::heads::problem::single_label_classification,
                                               intents, max_len);
        ftune::train::trainer<ftune::bert::sequence_classifier<>> t(
            m.model, {.epochs = recipe["epochs"].get<std::size_t>(),
                      .batch_size = recipe["batch_size"].get<std::size_t>(),
                      .lr = recipe["lr"].get<double>(),
                      .weight_decay = recipe["weight_decay"].get<double>(),
                      .warmup_ratio = recipe["warmup_ratio"].get<double>(),
                      .max_grad_norm = recipe["max_grad_norm"].get<double>(),
                      .seed = seed,
                      .bucket_by_length = false,  // the reference shuffles plainly
                      .progress = nullptr});
        t.fit(train, {});
        const double acc = t.evaluate(test).accuracy;
        UNSCOPED_INFO("seed " << seed << ": ftune " << acc);
        sum += acc;
    }
    const double mine = sum / double(seeds.size()),
                 theirs = ref["pytorch_mean_accuracy"].get<double>();
    INFO("mean test accuracy: ftune " << mine << ", PyTorch " << theirs);
    CHECK(std::abs(mine - theirs) <= 0.03);
    CHECK(mine > 0.5);  // far above chance (0.1): the model learned
}

TEST_CASE("checkpoint and resume: the same weights, bit for bit, as an uninterrupted run",
          "[train]") {
    const int threads = ftune::num_threads();
    ftune::set_num_threads(1);
    const auto names = ftune::train::label_names({"negative", "positive"});
    auto load = [&] {
        return ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
            heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    };
    auto values = [](auto& model) {
        std::vector<float> v;
        model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            v.insert(v.end(), p.value.begin(), p.value.end());
        });
        return v;
    };
    auto a0 = load();
    const auto train = ftune::train::encode(
        *a0.tokenizer, toy(120, 5), ftune::heads::problem::single_label_classification, names, 32);
    const auto valid = ftune::train::encode(
        *a0.tokenizer, toy(40, 6), ftune::heads::problem::single_label_classification, names, 32);
    std::vector<std::vector<float>> finals;  // fp32's, then bf16's
    for (const auto precision : {ftune::precision::fp32, ftune::precision::bf16}) {
        if (precision == ftune::precision::bf16 && !ftune::backends::cpu::bf16_supported()) {
            WARN("bf16 resume not checked: this CPU has no AVX512-BF16");
            break;
        }
        INFO("precision " << ftune::to_string(precision));
        const ftune::train::options base{.epochs = 3,
                                         .batch_size = 8,
                                         .lr = 1e-3,
                                         .warmup_ratio = 0.2,
                                         .grad_accum = 2,
                                         .eval_every = 5,
                                         .patience = 10,
                                         .precision = precision,
                                         .progress = nullptr};
        auto a = load();
        ftune::train::trainer<ftune::bert::sequence_classifier<>> ta(a.model, base);
        const auto ra = ta.fit(train, valid);
        finals.push_back(values(a.model));

        // the same run, killed after 7 steps (mid-epoch; a checkpoint every 3 steps: at 6)...
        const fs::path ck = fs::temp_directory_path() / "ftune_test_checkpoint";
        fs::remove_all(ck);
        auto b = load();
        auto ob = base;
        ob.checkpoint_dir = ck, ob.checkpoint_every = 3, ob.stop_after = 7;
        ftune::train::trainer<ftune::bert::sequence_classifier<>> tb(b.model, ob);
        tb.fit(train, valid);
        REQUIRE(fs::exists(ck / "trainer_state.json"));
        CHECK(nlohmann::json::parse(std::ifstream(ck / "trainer_state.json"))["step"] == 6);
        // ... and resumed in a fresh process-like state: a newly loaded model
        auto c = load();
        auto oc = base;
        oc.resume_from = ck;
        ftune::train::trainer<ftune::bert::sequence_classifier<>> tc(c.model, oc);
        const auto rc = tc.fit(train, valid);
        CHECK(rc.steps == ra.steps);
        CHECK(rc.best_step == ra.best_step);
        CHECK(values(c.model) == values(a.model));  // bitwise
        // another setup cannot resume from it: another batch size, or the other precision
        auto d = load();
        auto od = base;
        od.resume_from = ck, od.batch_size = 4;
        ftune::train::trainer<ftune::bert::sequence_classifier<>> td(d.model, od);
        CHECK_THROWS_WITH(td.fit(train, valid), Catch::Contains("batch_size"));
        od.batch_size = base.batch_size;
        od.precision =
            precision == ftune::precision::fp32 ? ftune::precision::bf16 : ftune::precision::fp32;
        if (ftune::backends::cpu::bf16_supported()) {
            ftune::train::trainer<ftune::bert::sequence_classifier<>> te(d.model, od);
            CHECK_THROWS_WITH(te.fit(train, valid), Catch::Contains("precision"));
        }
    }
    if (finals.size() == 2) CHECK(finals[0] != finals[1]);  // bf16 products did change the run
    ftune::set_num_threads(threads);
}

TEST_CASE("freezing: backward stops below the lowest trainable layer, with the same gradients",
          "[train]") {
    auto full = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    auto part = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    ftune::train::apply_freeze(part.model, ftune::train::freeze::parse("layers:1"));
    std::vector<ftune::token_id> ids{2, 10, 11, 12, 13, 5, 3, 2, 21, 22, 29, 3}, mask(12, 1);
    std::vector<float> d(2 * 3, 0.5f);
    for (auto* m : {&full.model, &part.model}) {
        ftune::context ctx{.mode = ftune::mode::train, .rng = ftune::generator(9)};
        m->zero_grad();
        m->forward(ctx, {ids.data(), 2, 6}, {mask.data(), 2, 6});
        m->backward(ctx, {d.data(), 2, 3});
    }
    std::vector<std::vector<float>> gf, gp;
    full.model.visit_parameters(
        "", [&](ftune::parameter_ref<float> p) { gf.emplace_back(p.grad.begin(), p.grad.end()); });
    std::size_t trained = 0;
    part.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        if (p.trainable) {
            ++trained;
            CHECK(std::vector<float>(p.grad.begin(), p.grad.end()) == gf[gp.size()]);
        } else {  // no gradient computed at all, none stored
            CHECK(p.grad.empty());
        }
        gp.emplace_back();
    });
    CHECK(trained == 16 + 2 + 2);  // layer 1, the pooler, the classifier
}

TEST_CASE("gradient accumulation: two half batches give one batch's gradient", "[train]") {
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        heads / "seq", {.labels = {"negative", "positive"}, .seed = 3});
    const auto names = ftune::train::label_names({"negative", "positive"});
    const auto xs = ftune::train::encode(
        *m.tokenizer, toy(16, 8), ftune::heads::problem::single_label_classification, names, 32);
    std::vector<std::size_t> all(16), first(8), second(8);
    for (std::size_t i = 0; i < 16; ++i) all[i] = i, (i < 8 ? first[i] : second[i - 8]) = i;
    ftune::context eval;  // no dropout: both ways compute one function
    ftune::loss::cross_entropy<float> ce;
    auto grads = [&](const std::vector<std::vector<std::size_t>>& parts) {
        m.model.zero_grad();
        for (const auto& part : parts) {  // what the trainer does per batch, scaled 1/parts
            const auto b = ftune::train::collate(xs, part, 0, false);
            const auto y =
                m.model.forward(eval, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T});
            std::vector<float> d(y.size(), 0.0f);
            ce.forward({y.data(), b.B, 2}, {b.labels.data(), b.B});
            ce.backward({d.data(), b.B, 2}, 1.0f / float(parts.size()));
            m.model.backward(eval, {d.data(), b.B, 2});
        }
        std::vector<float> g;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            g.insert(g.end(), p.grad.begin(), p.grad.end());
        });
        return g;
    };
    const auto one = grads({all}), two = grads({first, second});
    double d = 0, scale = 0;
    for (std::size_t i = 0; i < one.size(); ++i)
        d = std::max(d, double(std::abs(one[i] - two[i]))),
        scale = std::max(scale, double(std::abs(one[i])));
    INFO("max |difference| " << d << " of " << scale);
    CHECK(d <= 1e-5 * scale);
    // and the trainer steps once per grad_accum batches (the last, short group too)
    const auto train = ftune::train::encode(
        *m.tokenizer, toy(70, 9), ftune::heads::problem::single_label_classification, names, 32);
    const auto r =
        ftune::train::trainer<ftune::bert::sequence_classifier<>>(
            m.model, {.epochs = 1, .batch_size = 8, .grad_accum = 3, .progress = nullptr})
            .fit(train, {});
    CHECK(r.steps == 3);  // 9 batches of at most 8 -> 3 steps
}

TEST_CASE("evaluate (ner): entity scores over each sentence's own tags", "[train]") {
    auto m = ftune::io::load_hf<ftune::bert::token_classifier<>>(heads / "token");
    const auto names = m.config.id2label;
    std::vector<ftune::data::tagged_sentence> s{
        {{"John", "lives", "in", "Paris", "."}, {"B-PER", "O", "O", "B-LOC", "O"}, 1},
        {{"Hello", "worlds", "!"}, {"O", "B-LOC", "O"}, 7},
        {{"the", "cafe", "near", "the", "river", "in", "berlin"},
         {"O", "B-LOC", "O", "O", "O", "O", "B-LOC"},
         11}};
    const auto xs = ftune::train::encode(*m.tokenizer, s, names, 32);
    ftune::train::trainer<ftune::bert::token_classifier<>> t(
        m.model, {.batch_size = 2, .progress = nullptr}, names);
    const auto e = t.evaluate(xs);
    REQUIRE(e.gold_tags.size() == 3);
    std::multiset<std::vector<std::string>> want, got(e.gold_tags.begin(), e.gold_tags.end());
    for (const auto& x : s) want.insert(x.tags);
    CHECK(got == want);  // whole sentences, whatever order evaluation visited them in
    for (std::size_t i = 0; i < 3; ++i) CHECK(e.predicted_tags[i].size() == e.gold_tags[i].size());
    CHECK(e.f1 == ftune::metrics::entity_f1(e.gold_tags, e.predicted_tags).f1);
}

TEST_CASE("mlm_masking: 15% of real tokens, 80/10/10, never specials or padding, reproducible",
          "[unit][train]") {
    ftune::train::batch b;
    b.B = 40, b.T = 500;
    b.ids.resize(b.B * b.T), b.mask.assign(b.B * b.T, 1), b.types.assign(b.B * b.T, 0);
    for (std::size_t i = 0; i < b.ids.size(); ++i) b.ids[i] = ftune::token_id(10 + i % 900);
    for (std::size_t r = 0; r < b.B; ++r) {
        b.ids[r * b.T] = 1;        // [CLS]
        b.ids[r * b.T + 400] = 2;  // [SEP]
        for (std::size_t t = 401; t < b.T; ++t) b.mask[r * b.T + t] = 0, b.ids[r * b.T + t] = 0;
    }
    const auto original = b.ids;
    const ftune::train::mlm_masking m{
        .probability = 0.15, .mask_id = 3, .vocab_size = 1000, .special = {0, 1, 2}};
    m.apply(b, ftune::random_stream(7, 1));
    std::size_t real = 0, chosen = 0, masked = 0, random = 0, kept = 0;
    for (std::size_t i = 0; i < b.ids.size(); ++i) {
        const bool special = original[i] < 3 || !b.mask[i];
        real += !special;
        if (b.labels[i] == -100) {
            CHECK(b.ids[i] == original[i]);  // not chosen: unchanged
            continue;
        }
        REQUIRE_FALSE(special);
        CHECK(b.labels[i] == original[i]);
        ++chosen;
        if (b.ids[i] == 3)
            ++masked;
        else if (b.ids[i] == original[i])
            ++kept;
        else
            ++random;
    }
    const double share = double(chosen) / double(real);
    INFO(chosen << " of " << real << " chosen: " << masked << " masked, " << random << " random, "
                << kept << " kept");
    CHECK(std::abs(share - 0.15) < 0.01);  // 15,960 real tokens: 3 standard deviations ~ 0.0085
    CHECK(std::abs(double(masked) / double(chosen) - 0.8) < 0.03);
    CHECK(std::abs(double(random + kept) / double(chosen) - 0.2) < 0.03);
    CHECK(random > kept / 2);  // random replacements (a few land on the same token)
    auto again = b;
    again.ids = original;
    m.apply(again, ftune::random_stream(7, 1));
    CHECK(again.ids == b.ids);
    CHECK(again.labels == b.labels);
}

TEST_CASE("masked-LM continued pretraining: the held-out masked-token loss falls",
          "[unit][train]") {
    using Model = ftune::bert::masked_lm<>;
    auto m = ftune::io::load_hf<Model>(heads / "mlm");
    std::ifstream in(heads / "texts.json");
    const auto j = nlohmann::json::parse(in);
    ftune::data::text_dataset d;
    for (int rep = 0; rep < 40; ++rep)
        for (const auto& t : j["texts"]) d.rows.push_back({t.get<std::string>(), "", "", 0});
    const auto xs = ftune::train::encode_texts(*m.tokenizer, d, 32);
    ftune::train::trainer<Model> t(
        m.model, {.epochs = 10, .batch_size = 8, .lr = 5e-3, .progress = nullptr});
    t.masking = ftune::train::mlm_masking_for(*m.tokenizer);
    CHECK(t.masking.mask_id == *m.tokenizer->vocab().find("[MASK]"));
    const auto before = t.evaluate(xs);
    const auto r = t.fit(xs, xs);
    const auto after = t.evaluate(xs);
    INFO("masked-token loss " << before.loss << " -> " << after.loss << ", accuracy "
                              << before.accuracy << " -> " << after.accuracy);
    CHECK(r.steps == 150);
    CHECK(after.loss < 0.4 * before.loss);  // measured: 4.40 -> 0.91
    CHECK(after.accuracy > before.accuracy + 0.5);
    CHECK(t.metric_name() == "-loss");
}

TEST_CASE("qa: run_qa's window labels and BertForQuestionAnswering's loss", "[parity][train]") {
    // tests/reference/qa_parity.py: windows of 24 tokens with stride 6, labels by run_qa's
    // preprocessing, the loss of Transformers' model on each example's padded windows
    using Model = ftune::bert::question_answering<>;
    auto m = ftune::io::load_hf<Model>(heads / "qa");
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "qa_training.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 3);
    ftune::train::trainer<Model> t(m.model, {.progress = nullptr});
    for (const auto& c : cases) {
        const ftune::data::qa_example x{"q",
                                        c["question"],
                                        c["context"],
                                        {{c["answer"], c["answer_start"].get<std::size_t>()}}};
        const auto xs =
            ftune::train::encode_qa(*m.tokenizer, {x}, {.max_length = 24, .doc_stride = 6});
        REQUIRE(xs.size() == c["labels"].size());
        for (std::size_t w = 0; w < xs.size(); ++w)
            CHECK(xs[w].labels == c["labels"][w].get<std::vector<ftune::token_id>>());
        const auto e = t.evaluate(xs);
        INFO(x.question << ": loss " << e.loss << " vs " << c["loss"].get<double>());
        CHECK(std::abs(e.loss - c["loss"].get<double>()) <= 1e-5);
    }
}

TEST_CASE("qa: fine-tuning answers questions on a small synthetic SQuAD set", "[unit][train]") {
    using Model = ftune::bert::question_answering<>;
    auto m = ftune::io::load_hf<Model>(heads / "qa");
    // two facts in either order; the questions ask for one of them
    const std::string a = "john lives in paris .", b = "the cafe is in berlin .";
    std::vector<ftune::data::qa_example> data;
    for (int order = 0; order < 2; ++order) {
        const std::string ctx = order ? b + " " + a : a + " " + b;
        const std::size_t pa = ctx.find(a), pb = ctx.find(b);
        data.push_back({"", "who lives in paris ?", ctx, {{"john", pa}}});
        data.push_back({"", "where is the cafe ?", ctx, {{"berlin", pb + 15}}});
        data.push_back({"", "where is john ?", ctx, {{"paris", pa + 14}}});
    }
    for (const auto& x : data)
        REQUIRE(x.context.substr(x.answers[0].char_start, x.answers[0].text.size()) ==
                x.answers[0].text);
    std::vector<ftune::data::qa_example> train;
    for (int rep = 0; rep < 16; ++rep) train.insert(train.end(), data.begin(), data.end());
    const auto xs =
        ftune::train::encode_qa(*m.tokenizer, train, {.max_length = 32, .doc_stride = 8});
    const auto before = ftune::train::evaluate_squad(m.model, *m.tokenizer, data,
                                                     {.max_length = 32, .doc_stride = 8});
    ftune::train::trainer<Model> t(
        m.model, {.epochs = 10, .batch_size = 8, .lr = 3e-3, .progress = nullptr});
    t.fit(xs, {});
    const auto after = ftune::train::evaluate_squad(m.model, *m.tokenizer, data,
                                                    {.max_length = 32, .doc_stride = 8});
    INFO("exact match " << before.exact_match << " -> " << after.exact_match << ", F1 " << before.f1
                        << " -> " << after.f1);
    CHECK(after.count == 6);
    CHECK(after.exact_match == 1.0);
    CHECK(before.exact_match < 0.5);
}

TEST_CASE(
    "fit on another device (device::reference here): the same losses, weights and evaluation "
    "as the CPU's run; checkpoints resume across devices; clear errors for unusable devices",
    "[train]") {
    test::check_training_on_device("reference");
    test::check_bf16_training_on_device("reference");
    CHECK(ftune::device_spec::parse("cuda:3").index == 3);
    CHECK(ftune::device_spec::parse("cuda").str() == "cuda:0");
    CHECK_THROWS_AS(ftune::device_spec::parse("gpu"), ftune::error);
    CHECK_THROWS_AS(ftune::device_spec::parse("cuda:x"), ftune::error);
#if !FTUNE_WITH_CUDA
    test::check_device_error("cuda", "-DFTUNE_WITH_CUDA=ON");
#endif
    // a head without a device form: the model's architecture and the heads that have one
    using Model = ftune::bert::relation_classifier<>;
    Model re(ftune::bert::config{.vocab_size = 40,
                                 .hidden_size = 16,
                                 .num_hidden_layers = 1,
                                 .num_attention_heads = 2,
                                 .intermediate_size = 32,
                                 .max_position_embeddings = 16});
    ftune::train::trainer<Model> t(re, test::device_options("reference"));
    std::vector<ftune::train::example> xs(4, {{1, 7, 8, 9, 2}, {0, 0, 0, 0, 0}, {0}, {}});
    CHECK_THROWS_WITH(t.fit(xs, {}),
                      Catch::Contains(std::string(Model::architecture) + " has no form"));
}
