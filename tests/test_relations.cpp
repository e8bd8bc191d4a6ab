// Relation extraction against independent references (tests/reference/relations.py):
// SemEval-2010 Task 8's official scores (metrics/relations.hpp) by the scorer's own steps on the
// test set's labels with drawn predictions and on edge cases; Transformers' tokenization with the
// entity markers added as special tokens (300 SemEval test sentences and hard cases, under
// bert-base-uncased's vocabulary; tokens that start with a letter or a non-ASCII character;
// tokenizer.json's added tokens); the relation head on a tiny random BERT: the grown token table,
// logits, loss and gradients in PyTorch; save and load keep the markers; the readers' and the
// head's errors.
#include <ftune/bert/tasks.hpp>
#include <ftune/train/relations.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/io/safetensors.hpp>
#include <ftune/train/trainer.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.hpp"
#include "util.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif
#ifndef FTUNE_DATA_DIR
#error "FTUNE_DATA_DIR must name the data directory"
#endif
#ifndef FTUNE_ROUNDTRIP_DIR
#error "FTUNE_ROUNDTRIP_DIR must name where saved models are left for the reference scripts"
#endif

namespace {
namespace fs = std::filesystem;
using Model = ftune::bert::relation_classifier<>;
const fs::path fixtures = fs::path(FTUNE_REFERENCE_DIR) / "relations";
const fs::path data = FTUNE_DATA_DIR;

nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    REQUIRE(in);
    return nlohmann::json::parse(in);
}

std::vector<std::string> lines_of(const fs::path& p) {
    std::ifstream in(p);
    REQUIRE(in);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);)
        if (!l.empty()) out.push_back(l);
    return out;
}

// (label, sentence) of the staged test.tsv (id, relation, sentence)
std::vector<std::pair<std::string, std::string>> semeval_test() {
    const auto rows = lines_of(data / "semeval2010_task8" / "test.tsv");
    std::vector<std::pair<std::string, std::string>> out;
    for (std::size_t i = 1; i < rows.size(); ++i) {
        const auto a = rows[i].find('\t'), b = rows[i].find('\t', a + 1);
        out.emplace_back(rows[i].substr(a + 1, b - a - 1), rows[i].substr(b + 1));
    }
    return out;
}

std::vector<int> ids_of(const ftune::text::bert_tokenizer& t, const std::string& s) {
    const auto e = t.encode(s);
    return {e.ids.begin(), e.ids.end()};
}
}  // namespace

TEST_CASE("relation scores equal the SemEval-2010 Task 8 scorer's", "[relations][parity]") {
    const auto cases = read_json(fixtures / "scores.json");
    const auto labels = lines_of(data / "semeval2010_task8" / "relations.txt");
    const auto test = semeval_test();
    REQUIRE(test.size() == 2717);
    REQUIRE(cases.size() == 5);
    for (const auto& c : cases) {
        INFO(c["name"].get<std::string>());
        std::vector<std::string> gold, predicted;
        if (c.contains("predicted_ids")) {
            for (const auto& [label, text] : test) gold.push_back(label);
            for (const int i : c["predicted_ids"]) predicted.push_back(labels.at(std::size_t(i)));
        } else {
            gold = c["gold"].get<std::vector<std::string>>();
            predicted = c["predicted"].get<std::vector<std::string>>();
        }
        const auto s = ftune::metrics::score_relations(gold, predicted);
        const auto& want = c["expected"];
        REQUIRE(s.types.size() == want["types"].size());
        for (std::size_t i = 0; i < s.types.size(); ++i) {
            const auto& t = s.types[i];
            const auto& w = want["types"][i];
            INFO(t.type);
            CHECK(t.type == w["type"].get<std::string>());
            CHECK(t.correct == w["correct"].get<std::size_t>());
            CHECK(t.proposed == w["proposed"].get<std::size_t>());
            CHECK(t.wrong_direction == w["wrong_direction"].get<std::size_t>());
            CHECK(t.gold == w["gold"].get<std::size_t>());
            CHECK(std::abs(100 * t.precision - w["P"].get<double>()) < 1e-9);
            CHECK(std::abs(100 * t.recall - w["R"].get<double>()) < 1e-9);
            CHECK(std::abs(100 * t.f1 - w["F1"].get<double>()) < 1e-9);
        }
        const double micro[3] = {s.micro_precision, s.micro_recall, s.micro_f1};
        const double macro[3] = {s.macro_precision, s.macro_recall, s.macro_f1};
        for (std::size_t k = 0; k < 3; ++k) {
            CHECK(std::abs(100 * micro[k] - want["micro"][k].get<double>()) < 1e-9);
            CHECK(std::abs(100 * macro[k] - want["macro"][k].get<double>()) < 1e-9);
        }
        CHECK(std::abs(100 * s.accuracy - want["accuracy"].get<double>()) < 1e-9);
    }
    // the report prints the official line with the macro-averaged F1
    const auto s = ftune::metrics::score_relations({"Cause-Effect(e1,e2)", "Other"},
                                                   {"Cause-Effect(e1,e2)", "Other"});
    CHECK_THAT(ftune::metrics::relation_report(s),
               Catch::Contains("official score (macro-averaged F1, direction counted (excluding "
                               "Other)) = 100.00%"));
    CHECK_THROWS_WITH(ftune::metrics::score_relations({"Other"}, {}),
                      Catch::Contains("1 gold labels but 0 predictions"));
}

TEST_CASE("entity markers tokenize as Transformers' added special tokens", "[relations][parity]") {
    const auto want = read_json(fixtures / "tokens.json");
    auto tok = ftune::text::bert_tokenizer::from_vocab(data / "bert-base-uncased" / "vocab.txt");
    const auto markers = want["markers"].get<std::vector<std::string>>();
    CHECK(tok.add_special_tokens(markers) == 4);
    CHECK(tok.add_special_tokens(markers) == 0);  // already there
    CHECK(tok.vocab().size() == want["vocab_size"].get<std::size_t>());
    const auto test = semeval_test();
    const auto& ids = want["test_ids"];
    REQUIRE(ids.size() == 300);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        INFO(test[i].second);
        CHECK(ids_of(tok, test[i].second) == ids[i].get<std::vector<int>>());
    }
    for (const auto& h : want["hard"]) {
        INFO(h["text"].get<std::string>());
        CHECK(ids_of(tok, h["text"]) == h["ids"].get<std::vector<int>>());
    }
    // tokens that start inside a word (a letter) or with a non-ASCII character
    auto other = ftune::text::bert_tokenizer::from_vocab(data / "bert-base-uncased" / "vocab.txt");
    other.add_special_tokens(want["other_tokens"].get<std::vector<std::string>>());
    CHECK(other.vocab().size() == want["other_vocab_size"].get<std::size_t>());
    for (const auto& h : want["other"]) {
        INFO(h["text"].get<std::string>());
        CHECK(ids_of(other, h["text"]) == h["ids"].get<std::vector<int>>());
    }
    CHECK_THROWS_WITH(other.add_special_tokens({""}), Catch::Contains("non-empty valid UTF-8"));
    CHECK_THROWS_WITH(other.add_special_tokens({"\xff"}), Catch::Contains("valid UTF-8"));

    // Transformers' saved tokenizer (tokenizer.json's added tokens, extra_special_tokens)
    const auto marked = fixtures / "tiny_marked_tokenizer";
    const auto from_json = ftune::text::load_tokenizer_json(marked / "tokenizer.json");
    const auto config = ftune::io::read_hf_tokenizer_config(marked / "tokenizer_config.json");
    CHECK(config.options.extra_special_tokens == markers);
    CHECK(from_json.vocab().size() == 32);
    const ftune::io::safetensors_file tiny(fixtures / "tiny_expected.safetensors");
    const auto tiny_ids = test::read_ids(tiny, "input_ids");
    const auto mask = test::read_ids(tiny, "attention_mask");
    const std::size_t T = tiny.at("input_ids").shape[1];
    const auto sentences = nlohmann::json::parse(tiny.metadata().at("sentences"));
    for (std::size_t b = 0; b < sentences.size(); ++b) {
        std::vector<int> row;
        for (std::size_t t = 0; t < T; ++t)
            if (mask[b * T + t]) row.push_back(tiny_ids[b * T + t]);
        CHECK(ids_of(from_json, sentences[b]) == row);
    }
}

TEST_CASE("the relation head equals PyTorch's on a tiny BERT: logits, loss, gradients",
          "[relations][parity]") {
    const ftune::io::safetensors_file want(fixtures / "tiny_expected.safetensors");
    auto read = [&](const std::string& n) { return want.read<float>(want.at(n)); };
    const std::vector<std::string> names{"Other", "Instrument-Agency(e2,e1)",
                                         "Instrument-Agency(e1,e2)"};
    auto m = ftune::io::load_hf<Model>(fixtures / "tiny", {.labels = names});
    // load_hf added the markers: 4 tokens, 4 rows at the mean of the old ones
    CHECK(m.tokenizer->vocab().size() == 32);
    CHECK(m.config.model.vocab_size == 32);
    CHECK(m.model.head.entity_starts == std::array<ftune::token_id, 2>{28, 30});
    CHECK(m.model.head.label_names == names);  // for the relation score on every rank
    const auto table = read("word_embeddings");
    auto& w = m.model.backbone.input_embeddings().value;
    REQUIRE(w.size() == table.size());
    for (std::size_t i = 0; i < table.size(); ++i)
        REQUIRE(std::abs(w.data()[i] - table[i]) < 1e-6f);
    const auto cw = read("classifier.weight"), cb = read("classifier.bias");
    std::copy(cw.begin(), cw.end(), m.model.head.classifier.weight.value.data());
    std::copy(cb.begin(), cb.end(), m.model.head.classifier.bias.value.data());

    // the fixture's batch, encoded by ftune
    const auto ids = test::read_ids(want, "input_ids");
    const auto mask = test::read_ids(want, "attention_mask");
    const auto shape = want.at("input_ids").shape;
    const std::size_t B = shape[0], T = shape[1];
    ftune::data::text_dataset d;
    d.path = "batch";
    for (const auto& s : nlohmann::json::parse(want.metadata().at("sentences")))
        d.rows.push_back({s.get<std::string>(), {}, "Other", d.rows.size() + 1});
    const auto xs = ftune::train::encode_relations(*m.tokenizer, d, names, 32);
    for (std::size_t b = 0; b < B; ++b) {
        std::vector<int> row(ids.begin() + std::ptrdiff_t(b * T),
                             ids.begin() + std::ptrdiff_t(b * T + xs[b].ids.size()));
        CHECK(std::vector<int>(xs[b].ids.begin(), xs[b].ids.end()) == row);
    }
    ftune::train::batch batch;
    batch.B = B, batch.T = T;
    batch.ids.assign(ids.begin(), ids.end());
    batch.mask.assign(mask.begin(), mask.end());
    batch.types.assign(B * T, 0);
    const auto labels = test::read_ids(want, "labels");
    batch.labels.assign(labels.begin(), labels.end());

    ftune::context ctx{.mode = ftune::mode::train};
    m.model.zero_grad();
    const auto y = m.model.forward(ctx, {batch.ids.data(), B, T}, {batch.mask.data(), B, T},
                                   {batch.types.data(), B, T});
    const auto logits = read("logits");
    for (std::size_t i = 0; i < logits.size(); ++i)
        CHECK(std::abs(y.data()[i] - logits[i]) < 1e-5f);
    std::vector<float> dy(y.size(), 0.0f);
    const double loss = m.model.head.loss(y, batch, dy.data(), 1.0f);
    CHECK(std::abs(loss - double(read("loss")[0])) < 1e-6);
    m.model.backward(ctx, {dy.data(), B, y.extent(1)});
    auto close = [&](const std::string& name, const float* got) {
        INFO(name);
        const auto g = read("grad." + name);
        float scale = 0;
        for (float v : g) scale = std::max(scale, std::abs(v));
        float worst = 0;
        for (std::size_t i = 0; i < g.size(); ++i) worst = std::max(worst, std::abs(got[i] - g[i]));
        CHECK(worst <= 1e-4f * scale + 1e-7f);
    };
    auto grad_of = [&](const std::string& name) {
        const float* g = nullptr;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            if (p.name == name) g = p.grad.data();
        });
        REQUIRE(g);
        return g;
    };
    close("classifier.weight", grad_of("classifier.weight"));
    close("classifier.bias", grad_of("classifier.bias"));
    close("word_embeddings", grad_of("bert.embeddings.word_embeddings.weight"));
    close("layer1.query.weight", grad_of("bert.encoder.layer.1.attention.self.query.weight"));

    // evaluation: the official score is the selection metric
    ftune::train::trainer<Model> t(m.model, {.batch_size = 2, .progress = nullptr}, names);
    const auto e = t.evaluate(xs);
    CHECK(t.metric_name() == "relation macro-F1");
    CHECK(e.metric == e.f1);

    // saved and loaded again: the markers, their rows and the logits stay
    // (kept for tests/reference/relations.py --roundtrip: Transformers loads it back)
    const fs::path out = fs::path(FTUNE_ROUNDTRIP_DIR) / "relations";
    fs::create_directories(out.parent_path());
    fs::remove_all(out);
    ftune::io::save_hf(m, out);
    auto again = ftune::io::load_hf<Model>(out);
    CHECK(again.tokenizer->vocab().size() == 32);
    CHECK(again.model.head.entity_starts == m.model.head.entity_starts);
    CHECK(again.config.id2label == names);
    ctx.mode = ftune::mode::eval;
    const auto y1 = m.model.forward(ctx, {batch.ids.data(), B, T}, {batch.mask.data(), B, T}, {});
    std::vector<float> first(y1.data(), y1.data() + y1.size());
    const auto y2 =
        again.model.forward(ctx, {batch.ids.data(), B, T}, {batch.mask.data(), B, T}, {});
    for (std::size_t i = 0; i < first.size(); ++i) CHECK(y2.data()[i] == first[i]);
}

TEST_CASE("relation inputs: malformed rows and lost markers are errors naming the line",
          "[relations]") {
    const std::string file =
        "1\t\"The <e1>author</e1> of a <e2>keygen</e2>.\"\r\nOther\r\nComment: x\r\n\r\n"
        "2\t\"A <e1>b</e1> <e2>c</e2>\"\r\nCause-Effect(e1,e2)\r\nComment:\r\n\r\n";
    const auto d = ftune::data::parse_semeval2010(file, "TRAIN_FILE.TXT");
    REQUIRE(d.rows.size() == 2);
    CHECK(d.rows[1].text == "A <e1>b</e1> <e2>c</e2>");
    CHECK(d.rows[1].label == "Cause-Effect(e1,e2)");
    CHECK(d.rows[1].line == 5);
    // the real release files
    const auto train = ftune::data::read_semeval2010(data / "semeval2010_task8" / "TRAIN_FILE.TXT");
    const auto full =
        ftune::data::read_semeval2010(data / "semeval2010_task8" / "TEST_FILE_FULL.TXT");
    CHECK(train.rows.size() == 8000);
    REQUIRE(full.rows.size() == 2717);
    const auto test = semeval_test();
    for (std::size_t i = 0; i < test.size(); ++i) {
        CHECK(full.rows[i].label == test[i].first);
        CHECK(full.rows[i].text == test[i].second);
    }
    ftune::data::check_entity_markers(train);
    ftune::data::check_entity_markers(full);

    CHECK_THROWS_WITH(ftune::data::parse_semeval2010("1 \"x\"\nOther\n", "f"),
                      Catch::Contains("f:1") && Catch::Contains("<id><TAB>"));
    CHECK_THROWS_WITH(ftune::data::parse_semeval2010("1\tx\nOther\n", "f"),
                      Catch::Contains("f:1") && Catch::Contains("double quotes"));
    CHECK_THROWS_WITH(ftune::data::parse_semeval2010("1\t\"x\"\n\n", "f"),
                      Catch::Contains("f:2") && Catch::Contains("relation"));
    CHECK_THROWS_WITH(ftune::data::parse_semeval2010("1\t\"x\"\nOther\nNote\n", "f"),
                      Catch::Contains("f:3") && Catch::Contains("Comment"));
    CHECK_THROWS_WITH(ftune::data::parse_semeval2010("\n\n", "f"), Catch::Contains("no examples"));

    auto bad = [](const std::string& text) {
        ftune::data::text_dataset d;
        d.path = "rel.tsv";
        d.rows.push_back({text, {}, "Other", 7});
        ftune::data::check_entity_markers(d);
    };
    CHECK_THROWS_WITH(bad("no <e1>markers</e1> for two"),
                      Catch::Contains("rel.tsv:7") && Catch::Contains("no <e2>"));
    CHECK_THROWS_WITH(bad("<e1>a</e1> <e1>b</e1> <e2>c</e2>"),
                      Catch::Contains("more than one <e1>"));
    CHECK_THROWS_WITH(bad("</e1>a<e1> <e2>c</e2>"), Catch::Contains("</e1> comes before <e1>"));
    CHECK_THROWS_WITH(bad("<e1> </e1> <e2>c</e2>"), Catch::Contains("entity 1 is empty"));

    // truncation that cuts a marker off, and a head without a marker in its input
    auto m = ftune::io::load_hf<Model>(fixtures / "tiny", {.labels = {"Other", "Cause"}});
    ftune::data::text_dataset longer;
    longer.path = "rel.tsv";
    longer.rows.push_back(
        {"the author of a keygen uses the <e1>code</e1> to <e2>look</e2>", {}, "Other", 3});
    CHECK_THROWS_WITH(
        ftune::train::encode_relations(*m.tokenizer, longer, {"Other", "Cause"}, 8),
        Catch::Contains("rel.tsv:3") && Catch::Contains("entities span 7 word pieces"));
    // cut to 10: the window of 8 pieces that ends at </e2>, between [CLS] and [SEP]
    const auto whole = m.tokenizer->encode(longer.rows[0].text).ids;
    const auto cut = ftune::train::encode_relations(*m.tokenizer, longer, {"Other", "Cause"}, 10);
    REQUIRE(whole.size() > 10);
    REQUIRE(cut[0].ids.size() == 10);
    CHECK(cut[0].ids.front() == whole.front());
    CHECK(cut[0].ids.back() == whole.back());
    CHECK(std::equal(cut[0].ids.begin() + 1, cut[0].ids.end() - 1, whole.end() - 9));
    for (const auto* marker : {"<e1>", "</e1>", "<e2>", "</e2>"})
        CHECK(std::count(cut[0].ids.begin(), cut[0].ids.end(),
                         *m.tokenizer->vocab().find(marker)) == 1);
    ftune::context ctx;
    const auto e = m.tokenizer->encode("the author <e1>of</e1> code");
    const std::size_t T = e.ids.size();
    CHECK_THROWS_WITH(m.model.forward(ctx, {e.ids.data(), 1, T}, {}, {}),
                      Catch::Contains("no <e2> marker"));
    auto base = ftune::text::bert_tokenizer::from_vocab(fixtures / "tiny" / "vocab.txt");
    CHECK_THROWS_WITH(ftune::train::encode_relations(base, d, {"Other", "Cause-Effect(e1,e2)"}, 32),
                      Catch::Contains("io::add_entity_markers"));
}
