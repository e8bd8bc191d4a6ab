// Task models from Hugging Face directories (tests/reference/hf_heads.py): load_hf builds
// BertForSequenceClassification / TokenClassification / QuestionAnswering / MaskedLM models whose
// logits match Transformers' on a padded batch tokenized by ftune; save_hf writes them back
// (the script's --roundtrip loads those into Transformers); base checkpoints get new heads;
// bad directories are errors naming the file.
#include <ftune/io/hf.hpp>
#include <ftune/qa/spans.hpp>
#include <ftune/serve.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif
#ifndef FTUNE_ROUNDTRIP_DIR
#error "FTUNE_ROUNDTRIP_DIR must name the directory the saved models go to"
#endif

namespace {

namespace fs = std::filesystem;
using ftune::token_id;
using dynamic_encoder = ftune::bert::encoder<float>;

const fs::path heads = fs::path(FTUNE_REFERENCE_DIR) / "hf_heads";

// The fixture's texts and pairs (texts.json).
struct inputs {
    std::vector<std::string> texts, questions, contexts;
};
inputs read_inputs() {
    std::ifstream in(heads / "texts.json");
    const auto j = nlohmann::json::parse(in);
    inputs r;
    for (const auto& t : j["texts"]) r.texts.push_back(t);
    for (const auto& p : j["pairs"]) r.questions.push_back(p[0]), r.contexts.push_back(p[1]);
    return r;
}

// A batch of encodings as (B, T) arrays.
struct batch {
    std::size_t B = 0, T = 0;
    std::vector<token_id> ids, mask, types;
};
batch to_batch(const std::vector<ftune::text::encoding>& es) {
    batch b;
    b.B = es.size(), b.T = es.front().ids.size();
    for (const auto& e : es) {
        b.ids.insert(b.ids.end(), e.ids.begin(), e.ids.end());
        b.mask.insert(b.mask.end(), e.attention_mask.begin(), e.attention_mask.end());
        b.types.insert(b.types.end(), e.type_ids.begin(), e.type_ids.end());
    }
    return b;
}
batch encode(const ftune::text::bert_tokenizer& tok, const std::vector<std::string>& a,
             const std::vector<std::string>& b = {}) {
    std::vector<std::string_view> va(a.begin(), a.end()), vb(b.begin(), b.end());
    return to_batch(tok.encode_batch(va, vb, {.pad = ftune::text::padding::longest}));
}

std::vector<token_id> ints(const ftune::io::safetensors_file& f, const char* name) {
    const auto& t = f.at(name);
    std::vector<token_id> v(t.numel());
    std::memcpy(v.data(), f.bytes(t).data(), v.size() * sizeof(token_id));
    return v;
}

// max |got - want| over the first `count` values of each of `rows` rows of `stride` values.
double max_diff(const float* got, const std::vector<float>& want, std::size_t rows = 1,
                std::size_t stride = 0, std::size_t count = 0) {
    if (stride == 0) stride = count = want.size();
    double d = 0;
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t i = 0; i < count; ++i)
            d = std::max(d, double(std::abs(got[r * stride + i] - want[r * stride + i])));
    return d;
}

template <class Model>
auto forward(Model& m, ftune::context& ctx, const batch& b) {
    return m.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T},
                     {b.types.data(), b.B, b.T});
}

// Every parameter value of a model, in visiting order.
template <class Model>
std::vector<float> values(Model& m) {
    std::vector<float> v;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        v.insert(v.end(), p.value.begin(), p.value.end());
    });
    return v;
}

}  // namespace

TEST_CASE("load_hf: task models' logits equal Transformers' on a padded batch, each text alone too",
          "[parity][io]") {
    const ftune::io::safetensors_file want(heads / "expected.safetensors");
    const auto in = read_inputs();
    ftune::context eval;

    SECTION("BertForSequenceClassification (gelu)") {
        auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
        CHECK(m.report.missing.empty());
        CHECK(m.report.unexpected.empty());
        CHECK(m.report.initialized.empty());
        CHECK(m.config.id2label == std::vector<std::string>{"negative", "neutral", "positive"});
        CHECK(m.model_max_length == 32);
        REQUIRE(m.tokenizer);
        const auto b = encode(*m.tokenizer, in.texts);
        CHECK(b.ids == ints(want, "single_input_ids"));  // ftune's tokenizer, Hugging Face's ids
        CHECK(b.mask == ints(want, "single_attention_mask"));
        const auto ref = want.read<float>(want.at("seq_logits"));
        const auto logits = forward(m.model, eval, b);
        REQUIRE(logits.extent(1) == 3);
        const double d = max_diff(logits.data(), ref);
        INFO("padded batch: max |diff| " << d);
        CHECK(d <= 1e-5);
        for (std::size_t i = 0; i < in.texts.size(); ++i) {  // alone, unpadded: the same row
            const auto one = encode(*m.tokenizer, {in.texts[i]});
            const auto l = forward(m.model, eval, one);
            CHECK(max_diff(l.data(), std::vector<float>(ref.begin() + 3 * i,
                                                        ref.begin() + 3 * i + 3)) <= 1e-5);
        }
        m.model.prepare_inference();  // packed weights: the same logits
        CHECK(max_diff(forward(m.model, eval, b).data(), ref) <= 1e-5);
    }
    SECTION("BertForTokenClassification (gelu_new)") {
        auto m = ftune::io::load_hf<ftune::bert::token_classifier<>>(heads / "token");
        CHECK(m.report.unexpected.empty());
        CHECK(m.report.initialized.empty());
        CHECK(m.config.model.hidden_act == ftune::ops::activation::gelu_tanh);
        CHECK(m.config.id2label.size() == 5);
        const auto b = encode(*m.tokenizer, in.texts);
        const auto ref = want.read<float>(want.at("token_logits"));
        const auto logits = forward(m.model, eval, b);  // (B, T, 5)
        REQUIRE(logits.extent(2) == 5);
        // padding positions too: Transformers computes them with the same key mask
        const double d = max_diff(logits.data(), ref);
        INFO("padded batch: max |diff| " << d);
        CHECK(d <= 1e-5);
        for (std::size_t i = 0; i < in.texts.size(); ++i) {
            const auto one = encode(*m.tokenizer, {in.texts[i]});
            const auto l = forward(m.model, eval, one);
            const std::vector<float> row(ref.begin() + i * b.T * 5,
                                         ref.begin() + (i * b.T + one.T) * 5);
            CHECK(max_diff(l.data(), row) <= 1e-5);
        }
    }
    SECTION("BertForQuestionAnswering (relu) on question/context pairs") {
        auto m = ftune::io::load_hf<ftune::bert::question_answering<>>(heads / "qa");
        CHECK(m.report.unexpected.empty());
        CHECK(m.config.model.hidden_act == ftune::ops::activation::relu);
        const auto b = encode(*m.tokenizer, in.questions, in.contexts);
        CHECK(b.ids == ints(want, "pair_input_ids"));
        CHECK(b.types == ints(want, "pair_token_type_ids"));
        const auto start = want.read<float>(want.at("qa_start_logits"));
        const auto end = want.read<float>(want.at("qa_end_logits"));
        const auto logits = forward(m.model, eval, b);  // (B, T, 2)
        double d = 0;
        for (std::size_t i = 0; i < b.B * b.T; ++i)
            d = std::max({d, double(std::abs(logits.data()[2 * i] - start[i])),
                          double(std::abs(logits.data()[2 * i + 1] - end[i]))});
        INFO("max |diff| " << d);
        CHECK(d <= 1e-5);
    }
    SECTION("BertForMaskedLM (decoder tied to the word embeddings)") {
        auto m = ftune::io::load_hf<ftune::bert::masked_lm<>>(heads / "mlm");
        CHECK(m.report.unexpected.empty());
        CHECK(m.report.missing.empty());
        const auto b = encode(*m.tokenizer, in.texts);
        const auto ref = want.read<float>(want.at("mlm_logits"));
        const auto logits = forward(m.model, eval, b);
        REQUIRE(logits.extent(2) == m.config.model.vocab_size);
        const double d = max_diff(logits.data(), ref);
        INFO("max |diff| " << d);
        CHECK(d <= 1e-5);
    }
}

TEST_CASE("serve::text_classifier: Transformers' probabilities, the same from many threads",
          "[io][parity]") {
    const auto in = read_inputs();
    const ftune::io::safetensors_file want(heads / "expected.safetensors");
    const auto ref = want.read<float>(want.at("seq_logits"));  // (texts, 3)
    const ftune::serve::text_classifier<ftune::bert::sequence_classifier<>> clf(
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq"));
    CHECK(clf.labels() == std::vector<std::string>{"negative", "neutral", "positive"});
    std::vector<std::string> single;
    for (std::size_t i = 0; i < in.texts.size(); ++i) {
        const auto p = clf.predict(in.texts[i]);
        const float* y = ref.data() + 3 * i;
        const double m = std::max({y[0], y[1], y[2]});
        const double z = std::exp(y[0] - m) + std::exp(y[1] - m) + std::exp(y[2] - m);
        for (std::size_t c = 0; c < 3; ++c)
            CHECK(std::abs(p.probabilities[c] - std::exp(y[c] - m) / z) <= 1e-5);
        CHECK(p.name == clf.labels()[std::size_t(std::max_element(y, y + 3) - y)]);
        single.push_back(p.name);
    }
    // four threads at once: each call gets a replica; every answer equals the single-thread one
    std::vector<std::thread> pool;
    std::vector<int> wrong(4);
    for (int w = 0; w < 4; ++w)
        pool.emplace_back([&, w] {
            for (std::size_t k = 0; k < 60; ++k) {
                const std::size_t i = (k + std::size_t(w)) % in.texts.size();
                wrong[std::size_t(w)] += clf.predict(in.texts[i]).name != single[i];
            }
        });
    for (auto& t : pool) t.join();
    CHECK(wrong == std::vector<int>(4, 0));
    CHECK(clf.replicas() >= 1);
    CHECK(clf.replicas() <= 4);
}

TEST_CASE("serve::text_classifier::predict_batch: one ragged forward, Transformers' probabilities",
          "[io][parity]") {
    const auto in = read_inputs();
    const ftune::io::safetensors_file want(heads / "expected.safetensors");
    const auto ref = want.read<float>(want.at("seq_logits"));  // (texts, 3)
    const ftune::serve::text_classifier<ftune::bert::sequence_classifier<>> clf(
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq"));
    // the texts in reverse and twice over, of different lengths: each its own answer
    std::vector<ftune::serve::text_input> batch;
    std::vector<std::size_t> which;
    for (int round = 0; round < 2; ++round)
        for (std::size_t i = in.texts.size(); i-- > 0;)
            batch.push_back({in.texts[i], std::nullopt}), which.push_back(i);
    const auto got = clf.predict_batch(batch);
    REQUIRE(got.size() == batch.size());
    std::size_t lengths_differ = 0;
    for (std::size_t k = 0; k < got.size(); ++k) {
        const std::size_t i = which[k];
        const float* y = ref.data() + 3 * i;
        const double m = std::max({y[0], y[1], y[2]});
        const double z = std::exp(y[0] - m) + std::exp(y[1] - m) + std::exp(y[2] - m);
        INFO("text " << i << ": " << in.texts[i]);
        for (std::size_t c = 0; c < 3; ++c)
            CHECK(std::abs(got[k].probabilities[c] - std::exp(y[c] - m) / z) <= 1e-5);
        CHECK(got[k].name == clf.labels()[std::size_t(std::max_element(y, y + 3) - y)]);
        lengths_differ += clf.tokenizer().encode(in.texts[i]).ids.size() !=
                          clf.tokenizer().encode(in.texts[0]).ids.size();
    }
    CHECK(lengths_differ > 0);  // some rows were padded
    CHECK(clf.predict_batch({}).empty());
}

TEST_CASE("forward_packed: a ragged batch gives each sequence's forward alone, no padding",
          "[io]") {
    const auto in = read_inputs();
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    m.model.prepare_inference();
    ftune::context eval;
    std::vector<ftune::text::encoding> es;  // single texts and pairs, all lengths different
    for (const auto& t : in.texts) es.push_back(m.tokenizer->encode(t));
    for (std::size_t i = 0; i < in.questions.size(); ++i)
        es.push_back(m.tokenizer->encode(in.questions[i], in.contexts[i]));
    std::vector<token_id> ids, types;
    std::vector<std::size_t> offsets{0};
    std::vector<std::vector<float>> alone;  // each sequence's logits by itself
    for (const auto& e : es) {
        ids.insert(ids.end(), e.ids.begin(), e.ids.end());
        types.insert(types.end(), e.type_ids.begin(), e.type_ids.end());
        offsets.push_back(ids.size());
        const std::size_t T = e.ids.size();
        const auto y = m.model.forward(eval, {e.ids.data(), 1, T}, {e.attention_mask.data(), 1, T},
                                       {e.type_ids.data(), 1, T});
        alone.emplace_back(y.data(), y.data() + y.extent(1));
    }
    const std::size_t N = ids.size();
    const auto packed = m.model.forward_packed(eval, {ids.data(), 1, N}, {types.data(), 1, N},
                                               offsets);  // (S, 3)
    REQUIRE(packed.extent(0) == es.size());
    for (std::size_t s = 0; s < es.size(); ++s)
        for (std::size_t c = 0; c < 3; ++c)
            CHECK(packed.data()[s * 3 + c] == Approx(alone[s][c]).margin(1e-5));
    // offsets that do not cut the N rows into sequences are refused
    const std::vector<std::size_t> bad{0, 5, 5, N};
    CHECK_THROWS_WITH(m.model.forward_packed(eval, {ids.data(), 1, N}, {types.data(), 1, N}, bad),
                      Catch::Contains("rising starts from 0"));
    const std::vector<std::size_t> short_of_n{0, N - 1};
    CHECK_THROWS_WITH(
        m.model.forward_packed(eval, {ids.data(), 1, N}, {types.data(), 1, N}, short_of_n),
        Catch::Contains("rising starts from 0"));
    // a model not prepared for inference says so
    auto raw = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    CHECK_THROWS_WITH(
        raw.model.forward_packed(eval, {ids.data(), 1, N}, {types.data(), 1, N}, offsets),
        Catch::Contains("prepared for inference"));
}

TEST_CASE("serve::share_weights: replicas alias the weights, keep them packed, same logits",
          "[io]") {
    const auto in = read_inputs();
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    m.model.prepare_inference();
    const auto values = ftune::serve::parameter_values(m.model);
    CHECK(m.model.head.classifier.inference_prepared());  // the collecting visit kept the packing
    auto replica = m.model;
    ftune::serve::share_weights(replica, values);
    auto copy = replica;  // a copy of a replica aliases the same weights
    auto aliased = [&](auto& model) {
        const auto shared = ftune::serve::parameter_values(model);
        std::size_t n = 0;
        for (std::size_t i = 0; i < std::min(values.size(), shared.size()); ++i)
            n += shared[i].data() == values[i].data() && shared[i].size() == values[i].size();
        return n;
    };
    CHECK(aliased(replica) == values.size());
    CHECK(aliased(copy) == values.size());
    ftune::serve::free_gradients(m.model);  // the prototype's: its weights stay packed
    CHECK(m.model.head.classifier.inference_prepared());
    CHECK(m.model.backbone.layer[1].attention.inference_prepared());
    CHECK(replica.head.classifier.inference_prepared());
    CHECK(replica.head.pooler.dense.inference_prepared());
    CHECK(replica.backbone.layer[0].attention.inference_prepared());
    CHECK(replica.backbone.layer[0].output_dense.inference_prepared());

    ftune::context eval;
    const auto b = encode(*m.tokenizer, in.texts);
    const auto l = forward(m.model, eval, b);
    const std::vector<float> want(l.data(), l.data() + l.size());
    const auto r = forward(replica, eval, b);
    CHECK(std::vector<float>(r.data(), r.data() + r.size()) == want);  // bit for bit

    std::size_t freed = 0, frozen = 0;  // this visit (not keeps_values) marks the packing stale
    replica.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        freed += p.grad.data() == nullptr;
        frozen += !p.trainable;
    });
    CHECK(freed == values.size());
    CHECK(frozen == values.size());
    CHECK(replica.head.classifier.inference_prepared());
    CHECK_FALSE(replica.head.classifier.inference_packed());
    const auto r2 = forward(replica, eval, b);  // packed again (into its own storage): same logits
    CHECK(replica.head.classifier.inference_packed());
    CHECK(std::vector<float>(r2.data(), r2.data() + r2.size()) == want);
    const auto l2 = forward(m.model, eval, b);  // the prototype's packed weights are untouched
    CHECK(std::vector<float>(l2.data(), l2.data() + l2.size()) == want);

    auto other = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        heads / "seq", {.labels = {"O", "B-X", "I-X", "B-Y", "I-Y"}});  // a 5-class head
    CHECK_THROWS_WITH(
        ftune::serve::share_weights(other.model, values),
        Catch::Contains("classifier.weight") && Catch::Contains("not a copy of the model"));
}

TEST_CASE("serve::token_tagger: the entities of Transformers' token-classification pipeline",
          "[serve][parity]") {
    // tests/reference/ner_pipeline.py: aggregation_strategy "first" on the fixture model
    std::ifstream in(heads / "token_entities.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 6);
    const ftune::serve::token_tagger<> tagger(
        ftune::io::load_hf<ftune::bert::token_classifier<>>(heads / "token"));
    std::vector<std::string> texts;
    for (const auto& c : cases) texts.push_back(c["text"]);
    const std::vector<std::string_view> views(texts.begin(), texts.end());
    const auto tagged = tagger.tag_batch(views);  // one padded batch of all texts
    std::size_t entities = 0;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        INFO(texts[i]);
        const auto got = ftune::serve::group_entities(tagged[i], texts[i]);
        const auto& want = cases[i]["entities"];
        REQUIRE(got.size() == want.size());
        for (std::size_t k = 0; k < got.size(); ++k) {
            INFO("entity " << k << ": " << want[k].dump());
            CHECK(got[k].entity_group == want[k]["entity_group"].get<std::string>());
            CHECK(got[k].start == want[k]["start"].get<std::size_t>());
            CHECK(got[k].end == want[k]["end"].get<std::size_t>());
            CHECK(std::abs(got[k].score - want[k]["score"].get<double>()) < 1e-5);
            // the text's own span, code points [start, end) (the pipeline decodes the pieces
            // instead: lowercase, "' t")
            std::size_t cp = 0, b = 0, e = texts[i].size();
            for (std::size_t at = 0; at < texts[i].size(); ++at)
                if ((static_cast<unsigned char>(texts[i][at]) & 0xC0) != 0x80) {
                    if (cp == got[k].start) b = at;
                    if (cp == got[k].end) e = at;
                    ++cp;
                }
            CHECK(got[k].word == texts[i].substr(b, e - b));
        }
        entities += got.size();
        // one text alone gives what the batch gave
        const auto alone = tagger.entities(texts[i]);
        REQUIRE(alone.size() == got.size());
        for (std::size_t k = 0; k < got.size(); ++k)
            CHECK(std::abs(alone[k].score - got[k].score) < 1e-6);
    }
    CHECK(entities == 15);
}

TEST_CASE("serve::question_answerer: the answers of Transformers' QA pipeline", "[serve][parity]") {
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "qa_answers.json");
    const auto cases = nlohmann::json::parse(in);
    std::size_t checked = 0;
    for (const auto& c : cases) {
        if (c["handle_impossible_answer"].get<bool>()) continue;  // not the server's mode
        const ftune::serve::question_answerer<> qa(
            ftune::io::load_hf<ftune::bert::question_answering<>>(heads / "qa"), c["max_length"],
            c["doc_stride"]);
        const std::string question = c["question"], context = c["context"];
        INFO(question);
        const auto answers = qa.answer(question, context, c["top_k"], c["max_answer_length"]);
        REQUIRE(answers.size() == c["answers"].size());
        for (std::size_t k = 0; k < answers.size(); ++k) {
            const auto& want = c["answers"][k];
            CHECK(answers[k].text == want["answer"].get<std::string>());
            CHECK(answers[k].char_begin == want["start"].get<std::uint32_t>());
            CHECK(answers[k].char_end == want["end"].get<std::uint32_t>());
            CHECK(std::abs(answers[k].score - want["score"].get<double>()) <=
                  1e-4 * want["score"].get<double>());
        }
        ++checked;
    }
    CHECK(checked >= 3);
}

TEST_CASE("qa: windows and n-best answers equal Transformers' tokenizer and QA pipeline",
          "[io][parity]") {
    // tests/reference/qa_parity.py: the fast tokenizer's overflowing windows and the pipeline's
    // select_starts_ends on the fixture BertForQuestionAnswering's logits
    std::ifstream in(fs::path(FTUNE_REFERENCE_DIR) / "qa_answers.json");
    const auto cases = nlohmann::json::parse(in);
    REQUIRE(cases.size() == 5);
    auto m = ftune::io::load_hf<ftune::bert::question_answering<>>(heads / "qa");
    ftune::context eval;
    for (const auto& c : cases) {
        const std::string question = c["question"], context = c["context"];
        INFO(question << " | max_length " << c["max_length"]);
        const auto windows = ftune::qa::encode_windows(
            *m.tokenizer, question, context,
            {.max_length = c["max_length"], .doc_stride = c["doc_stride"]});
        REQUIRE(windows.size() == c["windows"].size());
        for (std::size_t w = 0; w < windows.size(); ++w)
            CHECK(windows[w].ids == c["windows"][w].get<std::vector<token_id>>());
        auto padded = windows;
        std::size_t T = 0;
        for (const auto& e : padded) T = std::max(T, e.ids.size());
        for (auto& e : padded) m.tokenizer->pad(e, T);
        const auto logits = forward(m.model, eval, to_batch(padded));  // (B, T, 2)
        const auto answers =
            ftune::qa::best_answers(logits, windows, context,
                                    {.top_k = c["top_k"],
                                     .max_answer_length = c["max_answer_length"],
                                     .handle_impossible_answer = c["handle_impossible_answer"]});
        REQUIRE(answers.size() == c["answers"].size());
        for (std::size_t k = 0; k < answers.size(); ++k) {
            const auto& want = c["answers"][k];
            INFO("answer " << k << ": " << want.dump());
            CHECK(answers[k].text == want["answer"].get<std::string>());
            CHECK(answers[k].char_begin == want["start"].get<std::uint32_t>());
            CHECK(answers[k].char_end == want["end"].get<std::uint32_t>());
            CHECK(std::abs(answers[k].score - want["score"].get<double>()) <=
                  1e-4 * want["score"].get<double>());
        }
    }
    SECTION("bad window options are errors that say what to change") {
        CHECK_THROWS_WITH(
            ftune::qa::encode_windows(*m.tokenizer, "Who?", "John.", {.max_length = 5}),
            Catch::Contains("leaves no room for the context"));
        CHECK_THROWS_WITH(ftune::qa::encode_windows(*m.tokenizer, "Who?", "John.",
                                                    {.max_length = 16, .doc_stride = 12}),
                          Catch::Contains("doc_stride 12 must be below"));
    }
}

TEST_CASE("save_hf: a directory load_hf (and Transformers) loads back with the same logits",
          "[parity][io]") {
    const auto in = read_inputs();
    ftune::context eval;
    const fs::path out_root = FTUNE_ROUNDTRIP_DIR;
    fs::create_directories(out_root);
    auto roundtrip = [&](auto tag, const char* name, bool pairs) {
        using Model = typename decltype(tag)::type;
        auto a = ftune::io::load_hf<Model>(heads / name);
        const fs::path dir = out_root / name;
        fs::remove_all(dir);
        ftune::io::save_hf(a, dir);
        for (const char* f :
             {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"})
            CHECK(fs::exists(dir / f));
        for (const auto& e : fs::directory_iterator(out_root))  // no temporary left
            CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
        auto b = ftune::io::load_hf<Model>(dir);
        CHECK(b.report.unexpected.empty());
        CHECK(b.report.initialized.empty());
        CHECK(b.config.id2label == a.config.id2label);
        CHECK(b.config.hidden_act == a.config.hidden_act);
        CHECK(b.config.json.at("architectures")[0] == std::string(Model::architecture));
        CHECK(b.tokenizer->vocab().size() == a.tokenizer->vocab().size());
        CHECK(values(b.model) == values(a.model));
        const auto x = pairs ? encode(*a.tokenizer, in.questions, in.contexts)
                             : encode(*a.tokenizer, in.texts);
        const auto y = pairs ? encode(*b.tokenizer, in.questions, in.contexts)
                             : encode(*b.tokenizer, in.texts);
        CHECK(x.ids == y.ids);
        const auto la = forward(a.model, eval, x);
        const std::vector<float> va(la.data(), la.data() + la.size());
        const auto lb = forward(b.model, eval, y);
        CHECK(std::vector<float>(lb.data(), lb.data() + lb.size()) == va);
        // saving over an existing model replaces it, keeping the user's other files and
        // folders (a checkpoint) and leaving out a stale tokenizer.json
        std::ofstream(dir / "notes.txt") << "mine";
        fs::create_directories(dir / "checkpoint");
        std::ofstream(dir / "checkpoint" / "trainer_state.json") << "{}";
        std::ofstream(dir / "tokenizer.json") << "{}";
        ftune::io::save_hf(b, dir);
        auto c = ftune::io::load_hf<Model>(dir);
        CHECK(values(c.model) == values(a.model));
        CHECK(fs::exists(dir / "notes.txt"));
        CHECK(fs::exists(dir / "checkpoint" / "trainer_state.json"));
        CHECK(!fs::exists(dir / "tokenizer.json"));
        for (const auto& e : fs::directory_iterator(out_root))  // no temporary left
            CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
    };
    roundtrip(std::type_identity<ftune::bert::sequence_classifier<>>{}, "seq", false);
    roundtrip(std::type_identity<ftune::bert::token_classifier<>>{}, "token", false);
    roundtrip(std::type_identity<ftune::bert::question_answering<>>{}, "qa", true);
    roundtrip(std::type_identity<ftune::bert::masked_lm<>>{}, "mlm", false);
}

TEST_CASE("load_hf: a new head on a base checkpoint is initialized and listed, as Transformers",
          "[io]") {
    const fs::path base = fs::path(FTUNE_REFERENCE_DIR) / "hf_tiny_bert";  // a BertModel
    auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        base, {.labels = {"neg", "pos"}, .seed = 5});
    CHECK(m.report.initialized == std::vector<std::string>{"classifier.weight", "classifier.bias"});
    CHECK(m.report.unexpected.empty());
    CHECK(m.config.id2label == std::vector<std::string>{"neg", "pos"});
    CHECK(m.model.num_labels() == 2);
    CHECK(!m.tokenizer);  // the fixture has no vocabulary
    // normal(0, initializer_range = 0.2) weights, zero biases
    const auto& w = m.model.head.classifier.weight.value;
    double sum = 0, sq = 0;
    for (std::size_t i = 0; i < w.size(); ++i)
        sum += w.data()[i], sq += double(w.data()[i]) * w.data()[i];
    const double n = double(w.size()), sd = std::sqrt(sq / n - (sum / n) * (sum / n));
    CHECK(sd > 0.1);
    CHECK(sd < 0.3);
    const auto& bias = m.model.head.classifier.bias.value;
    CHECK(std::all_of(bias.data(), bias.data() + bias.size(), [](float v) { return v == 0; }));
    // the pooler came from the file: not initialized
    CHECK(m.report.loaded.size() == 5 + 2 * 16 + 2);
    // strict: a missing head is an error naming the weights
    try {
        ftune::io::load_options strict;
        strict.allow_new_head = false;
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(base, strict);
        FAIL("a missing head was accepted");
    } catch (const ftune::error& e) {
        CHECK(std::string(e.message()).find("classifier.weight") != std::string::npos);
    }
    // a token classifier on a sequence classifier's checkpoint: the pooler is unexpected; other
    // labels make a new classifier (its old shape is reported as mismatched)
    auto t = ftune::io::load_hf<ftune::bert::token_classifier<>>(
        heads / "seq", {.labels = {"O", "B-X", "I-X", "B-Y", "I-Y"}});
    CHECK(t.report.unexpected ==
          std::vector<std::string>{"bert.pooler.dense.bias", "bert.pooler.dense.weight"});
    CHECK(t.report.mismatched == std::vector<std::string>{"classifier.weight", "classifier.bias"});
    CHECK(t.report.initialized == t.report.mismatched);
    // the same number of labels under other names: a new head too; the same names: kept
    auto renamed = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        heads / "seq", {.labels = {"bad", "so-so", "good"}});
    CHECK(renamed.report.initialized ==
          std::vector<std::string>{"classifier.weight", "classifier.bias"});
    auto same = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(
        heads / "seq", {.labels = {"negative", "neutral", "positive"}});
    CHECK(same.report.initialized.empty());
    // static sizes: the checkpoint must agree with them
    using Static = ftune::bert::Encoder<ftune::bert::dims{.hidden = 32, .heads = 4, .ffn = 37}>;
    auto s = ftune::io::load_hf<ftune::bert::sequence_classifier<Static>>(heads / "seq");
    auto d = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
    CHECK(values(s.model) == values(d.model));
    using Wrong = ftune::bert::Encoder<ftune::bert::dims{.hidden = 64, .heads = 4, .ffn = 37}>;
    CHECK_THROWS_AS(ftune::io::load_hf<ftune::bert::sequence_classifier<Wrong>>(heads / "seq"),
                    ftune::error);
}

namespace {
// A copy of the "seq" fixture in a temporary directory, for breaking it.
fs::path scratch_copy(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("ftune_test_bad_" + name);
    fs::remove_all(dir);
    fs::copy(heads / "seq", dir, fs::copy_options::recursive);
    return dir;
}
// The message of the ftune::error load_hf throws for dir, with its context ("" when none).
std::string load_error(const fs::path& dir) {
    try {
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir);
    } catch (const ftune::error& e) {
        return e.what();
    }
    return "";
}
void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j;
    {
        std::ifstream in(dir / "config.json");
        j = nlohmann::json::parse(in);
    }
    f(j);
    std::ofstream(dir / "config.json") << j.dump();
}
}  // namespace

TEST_CASE("load_hf: bad model directories are errors naming the file and the problem", "[io]") {
    CHECK(load_error("/nonexistent/model").find("not a directory") != std::string::npos);
    {
        const auto dir = scratch_copy("no_weights");
        fs::remove(dir / "model.safetensors");
        std::ofstream(dir / "pytorch_model.bin") << "x";
        const auto msg = load_error(dir);
        CHECK(msg.find("model.safetensors") != std::string::npos);
        CHECK(msg.find("safe_serialization=True") != std::string::npos);
    }
    {
        const auto dir = scratch_copy("truncated");
        fs::resize_file(dir / "model.safetensors", 5000);
        const auto msg = load_error(dir);
        CHECK(msg.find("model.safetensors") != std::string::npos);
        CHECK(msg.find("outside") != std::string::npos);
    }
    {
        const auto dir = scratch_copy("no_hidden");
        edit_config(dir, [](nlohmann::json& j) { j.erase("hidden_size"); });
        const auto msg = load_error(dir);
        CHECK(msg.find("config.json: hidden_size") != std::string::npos);
        CHECK(msg.find("missing") != std::string::npos);
    }
    {
        const auto dir = scratch_copy("heads");
        edit_config(dir, [](nlohmann::json& j) { j["num_attention_heads"] = 5; });
        CHECK(load_error(dir).find("5 heads do not divide hidden_size 32") != std::string::npos);
    }
    {
        const auto dir = scratch_copy("act");
        edit_config(dir, [](nlohmann::json& j) { j["hidden_act"] = "quick_gelu"; });
        CHECK(load_error(dir).find("config.json: hidden_act") != std::string::npos);
    }
    {
        const auto dir = scratch_copy("roberta");
        edit_config(dir, [](nlohmann::json& j) { j["model_type"] = "roberta"; });
        CHECK(load_error(dir).find("model_type") != std::string::npos);
    }
    {
        const auto dir = scratch_copy("json");
        std::ofstream(dir / "config.json") << "{\"hidden_size\": 32,";
        CHECK(load_error(dir).find("malformed JSON") != std::string::npos);
    }
    {  // the vocabulary holds more tokens than the embedding table has rows
        const auto dir = scratch_copy("vocab");
        edit_config(dir, [](nlohmann::json& j) { j["vocab_size"] = 20; });
        const auto msg = load_error(dir);
        CHECK(msg.find("vocab_size is 20") != std::string::npos);
    }
    {  // the embedding table disagrees with the config: the shapes are named
        const auto dir = scratch_copy("rows");
        edit_config(dir, [](nlohmann::json& j) { j["vocab_size"] = 40; });
        const auto msg = load_error(dir);
        CHECK(msg.find("word_embeddings.weight: the file holds [35, 32], the model needs [40, "
                       "32]") != std::string::npos);
    }
    {  // config.json that cannot be read as a file
        const auto dir = scratch_copy("unreadable");
        fs::remove(dir / "config.json");
        fs::create_directory(dir / "config.json");
        CHECK(load_error(dir).find("cannot open config.json") != std::string::npos);
    }
    {  // an id outside the vocabulary is an error, not a read past the table
        auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(heads / "seq");
        ftune::context eval;
        std::vector<token_id> ids{2, 99, 3};
        CHECK_THROWS_AS(m.model.forward(eval, {ids.data(), 1, 3}), ftune::error);
    }
}

#ifdef FTUNE_CLI  // built with the tool (FTUNE_BUILD_TOOLS)
namespace {
// stdout of a shell command line (the ftune tool); its exit status in `status`.
std::string run(const std::string& cmd, int& status) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p);
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    status = pclose(p);
    return out;
}
std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> v;
    std::size_t a = 0;
    for (std::size_t b; (b = s.find('\n', a)) != std::string::npos; a = b + 1)
        v.push_back(s.substr(a, b - a));
    return v;
}
}  // namespace

TEST_CASE("ftune predict: logits, labels and JSON agree with Transformers' logits", "[cli]") {
    const ftune::io::safetensors_file want(heads / "expected.safetensors");
    const auto in = read_inputs();
    const std::string input = (fs::temp_directory_path() / "ftune_test_predict_input.txt").string();
    {
        std::ofstream f(input);
        for (const auto& t : in.texts) f << t << "\n";
    }
    const std::string cli = FTUNE_CLI;
    int status = 0;
    auto predict = [&](const char* model, const char* format) {
        return split_lines(run(cli + " predict --model " + (heads / model).string() +
                                   " --batch-size 2 --format " + format + " < " + input,
                               status));
    };
    SECTION("sequence classification") {
        const auto ref = want.read<float>(want.at("seq_logits"));  // (3, 3)
        const auto logits = predict("seq", "logits");
        REQUIRE(status == 0);
        REQUIRE(logits.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {
            std::istringstream s(logits[i]);
            for (std::size_t j = 0; j < 3; ++j) {
                double v = 0;
                REQUIRE(s >> v);
                CHECK(std::abs(v - ref[3 * i + j]) <= 1e-5);
            }
        }
        const std::vector<std::string> names{"negative", "neutral", "positive"};
        const auto labels = predict("seq", "labels");
        const auto json = predict("seq", "json");
        REQUIRE(labels.size() == 3);
        REQUIRE(json.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {
            const float* r = ref.data() + 3 * i;
            const std::size_t best = std::size_t(std::max_element(r, r + 3) - r);
            CHECK(labels[i] == names[best]);
            const auto j = nlohmann::json::parse(json[i]);
            CHECK(j["label"] == names[best]);
            double z = 0;
            for (int k = 0; k < 3; ++k) z += std::exp(double(r[k]) - r[best]);
            CHECK(std::abs(j["score"].get<double>() - 1 / z) <= 1e-5);
        }
    }
    SECTION("token classification") {
        const auto ref = want.read<float>(want.at("token_logits"));  // (3, T, 5)
        const std::size_t T = want.at("token_logits").shape[1];
        const auto mask = ints(want, "single_attention_mask");
        const auto logits = predict("token", "logits");
        REQUIRE(status == 0);
        REQUIRE(logits.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {  // one group per wordpiece, [CLS] and [SEP] too
            const auto n =
                std::size_t(std::count(mask.begin() + i * T, mask.begin() + (i + 1) * T, 1));
            std::string line = logits[i];
            CHECK(std::size_t(std::count(line.begin(), line.end(), '|')) + 1 == n);
            std::replace(line.begin(), line.end(), '|', ' ');
            std::istringstream s(line);
            for (std::size_t k = 0; k < n * 5; ++k) {
                double v = 0;
                REQUIRE(s >> v);
                CHECK(std::abs(v - ref[i * T * 5 + k]) <= 1e-5);
            }
        }
        // labels: one tag per whitespace-separated word (as training splits CoNLL lines), from
        // the word's first piece; BERT's pre-tokenizer splits on whitespace first, so the pieces
        // and the reference logits are those of the plain encoding
        auto m = ftune::io::load_hf<ftune::bert::token_classifier<>>(heads / "token");
        const auto labels = predict("token", "labels");
        const auto json = predict("token", "json");
        REQUIRE(labels.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {
            const auto e =
                m.tokenizer->encode(in.texts[i], std::nullopt, {.split_into_words = true});
            REQUIRE(e.ids == m.tokenizer->encode(in.texts[i]).ids);
            std::string expect;
            std::int32_t last = -1;
            for (std::size_t t = 0; t < e.tokens.size(); ++t) {
                if (e.tokens[t].word <= last) continue;
                last = e.tokens[t].word;
                const float* r = ref.data() + (i * T + t) * 5;
                if (!expect.empty()) expect += ' ';
                expect += m.config.id2label[std::size_t(std::max_element(r, r + 5) - r)];
            }
            CHECK(labels[i] == expect);
        }
        const auto j = nlohmann::json::parse(json[0]);  // "John lives in Paris."
        REQUIRE(j["words"].size() == 4);
        CHECK(j["words"][3]["word"] == "Paris.");
        CHECK(j["words"][3]["start"] == 14);
        CHECK(j["words"][3]["end"] == 20);
        const auto j1 = nlohmann::json::parse(json[1]);  // "The café ...": offsets in characters
        CHECK(j1["words"][1]["word"] == "café");
        CHECK(j1["words"][1]["start"] == 4);
        CHECK(j1["words"][1]["end"] == 8);
    }
    SECTION("bad requests are errors that say what to do") {
        const std::string base = (fs::path(FTUNE_REFERENCE_DIR) / "hf_tiny_bert").string();
        run(cli + " predict --model " + base + " < " + input + " 2>&1", status);
        CHECK(status != 0);
        const auto msg = run(cli + " predict --model " + (heads / "seq").string() +
                                 " --format xml < " + input + " 2>&1",
                             status);
        CHECK(status != 0);
        CHECK(msg.find("expected logits, labels or json") != std::string::npos);
        const auto msg2 = run(cli + " predict --model " + (heads / "seq").string() +
                                  " --max-length 100 < " + input + " 2>&1",
                              status);
        CHECK(status != 0);
        CHECK(msg2.find("32 positions") != std::string::npos);
    }
}
#endif  // FTUNE_CLI
