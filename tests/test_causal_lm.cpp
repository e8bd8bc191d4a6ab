// Causal-LM fine-tuning's loss: the next-token cross-entropy with the prompt and the padding
// masked (-100), as Transformers' ForCausalLMLoss (tests/reference/causal_lm_loss.py), for the
// tiny random Llama (tied and untied head) and GPT-2 checkpoints: the loss and every gradient
// equal Transformers' float32 ones. The decoders' sequence classifiers (the last token's
// "score", tests/reference/decoder_classification.py) likewise. Chat fine-tuning end to end: the
// trainer teaches a tiny Llama conversations, and greedy generation then gives the trained replies.
#include <ftune/generation.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/text/tokenizer_json.hpp>
#include <ftune/train/generation_eval.hpp>
#include <ftune/train/lm_batching.hpp>
#include <ftune/train/trainer.hpp>

#include <cmath>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "util.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
const fs::path fixtures(FTUNE_REFERENCE_DIR);

// Compares every gradient of model with Transformers' in `want` ("<name>.grad.<tensor>", cut
// and transposed as each parameter sits in its tensor); returns how many parameters it compared.
template <class Config, class Model>
std::size_t compare_gradients(Model& model, const ftune::io::safetensors_file& want,
                              const std::string& name) {
    std::size_t compared = 0;
    model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        INFO(p.name);
        const auto slot = ftune::io::checkpoint_slots<Config>(p.name).at(0);
        const auto g = want.read<float>(want.at(name + ".grad." + slot.name));
        std::vector<float> mine(p.value.size());
        ftune::io::detail::for_each_slot_element(
            p.extents.data(), p.rank, slot,
            [&](std::size_t i, std::size_t j) { mine[i] = g.at(j); });
        if (p.name.ends_with("k_proj.bias")) {  // softmax ignores it: zero up to rounding
            for (std::size_t i = 0; i < mine.size(); ++i)
                CHECK((std::abs(p.grad[i]) < 1e-6 && std::abs(mine[i]) < 1e-6));
        } else {
            CHECK(test::relative_error(p.grad, mine) < 1e-4);
        }
        ++compared;
    });
    return compared;
}

// Runs the loaded model m on batch b (eval mode: no dropout, which the checkpoints do not have
// anyway; backward still runs), compares its outputs when `want` holds "<name>.logits", the
// head's loss and every gradient with Transformers'; returns how many parameters it compared.
template <class Loaded>
std::size_t check_loss_and_gradients(Loaded& m, const ftune::train::batch& b,
                                     const ftune::io::safetensors_file& want,
                                     const std::string& name) {
    using Model = decltype(m.model);
    using Config = std::remove_cvref_t<decltype(m.config.model)>;
    ftune::context ctx;
    const auto y = m.model.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T});
    if (want.find(name + ".logits"))
        CHECK(test::relative_error(std::vector<float>(y.data(), y.data() + y.size()),
                                   want.read<float>(want.at(name + ".logits"))) < 1e-5);
    std::vector<float> d(y.size(), 0.0f);
    const double loss = m.model.head.loss(y, b, d.data(), 1.0f);
    CHECK(std::abs(loss - double(want.read<float>(want.at(name + ".loss"))[0])) < 1e-6);
    m.model.zero_grad();
    m.model.backward(ctx, typename Model::output_view(d.data(), y.shape()));
    return compare_gradients<Config>(m.model, want, name);
}

// Loads the checkpoint in `folder`, runs the masked causal-LM loss and its backward on the
// fixture's batch, and compares the loss and every gradient with Transformers' (`name`);
// returns how many parameters were compared.
template <class Model>
std::size_t check_against_transformers(const std::string& name, const fs::path& folder) {
    INFO(name);
    const ftune::io::safetensors_file want(fixtures / "causal_lm_loss.safetensors");
    ftune::train::batch b;
    b.B = 2, b.T = 8;
    b.ids = test::read_ids(want, "input_ids");
    b.mask = test::read_ids(want, "attention_mask");
    b.labels = test::read_ids(want, "labels");
    auto m = ftune::io::load_hf<Model>(folder);
    const std::size_t compared = check_loss_and_gradients(m, b, want, name);
    // the trainer's path, without the full logits: 3 counted positions at a time
    using Config = std::remove_cvref_t<decltype(m.config.model)>;
    ftune::context ctx;
    m.model.head.loss_chunk_rows = 3;
    m.model.zero_grad();
    const double loss = m.model.loss_backward(ctx, b, 1.0f);
    CHECK(std::abs(loss - double(want.read<float>(want.at(name + ".loss"))[0])) < 1e-6);
    CHECK(compare_gradients<Config>(m.model, want, name) == compared);
    return compared;
}

// The same for a decoder's sequence classifier (tests/reference/decoder_classification.py): the
// checkpoint with Transformers' new score weight and problem type p, the logits at each row's
// last token (right and left padding), the loss and every gradient.
template <class Model>
std::size_t check_classifier(const std::string& name, const fs::path& folder,
                             ftune::heads::problem p) {
    INFO(name);
    const ftune::io::safetensors_file want(fixtures / "decoder_classification.safetensors");
    const auto score = want.read<float>(want.at(name + ".score"));
    const auto labels = want.read<float>(want.at(name + ".labels"));
    const std::size_t L = want.at(name + ".score").shape[0];
    ftune::train::batch b;
    b.B = 3, b.T = 8;
    b.ids = test::read_ids(want, "input_ids");
    b.mask = test::read_ids(want, "attention_mask");
    if (p == ftune::heads::problem::single_label_classification)
        for (const float l : labels) b.labels.push_back(ftune::token_id(l));
    else
        b.targets = labels;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < L; ++i) names.push_back("L" + std::to_string(i));
    auto m = ftune::io::load_hf<Model>(folder, {.labels = names});
    CHECK(m.report.initialized == std::vector<std::string>{"score.weight"});
    m.model.head.problem = p;
    std::copy(score.begin(), score.end(), m.model.head.classifier.weight.value.data());
    return check_loss_and_gradients(m, b, want, name);
}
}  // namespace

TEST_CASE(
    "causal-LM loss with the prompt and padding masked: loss and every gradient as "
    "Transformers', Llama (tied, untied) and GPT-2",
    "[parity][train]") {
    using Llama = ftune::llama::causal_lm<>;
    using GPT2 = ftune::gpt2::lm_head_model<>;
    CHECK(check_against_transformers<Llama>("llama_tied", fixtures / "hf_llama" / "tied") == 20);
    CHECK(check_against_transformers<Llama>("llama_untied", fixtures / "hf_llama" / "untied") ==
          21);
    CHECK(check_against_transformers<GPT2>("gpt2_tied", fixtures / "hf_gpt2" / "tied") == 36);
}

TEST_CASE(
    "decoder sequence classification from the last token (right and left padding): logits, "
    "loss and every gradient as Transformers', Llama and GPT-2, every problem type",
    "[parity][train]") {
    using P = ftune::heads::problem;
    using Llama = ftune::llama::sequence_classifier<>;
    using GPT2 = ftune::gpt2::sequence_classifier<>;
    CHECK(check_classifier<Llama>("llama_single", fixtures / "hf_llama" / "tied",
                                  P::single_label_classification) == 21);
    CHECK(check_classifier<Llama>("llama_regression", fixtures / "hf_llama" / "untied",
                                  P::regression) == 21);
    CHECK(check_classifier<GPT2>("gpt2_multi", fixtures / "hf_gpt2" / "tied",
                                 P::multi_label_classification) == 37);
}

TEST_CASE("causal-LM loss: labels that do not fit the logits are an error; evaluation scores",
          "[train]") {
    ftune::llama::config c;
    c.vocab_size = 16, c.hidden_size = 8, c.intermediate_size = 16, c.num_hidden_layers = 1;
    c.num_attention_heads = 2, c.num_key_value_heads = 1, c.max_position_embeddings = 16;
    ftune::llama::causal_lm<> model(c);
    model.visit_parameters("", [seed = std::uint64_t(3)](ftune::parameter_ref<float> p) mutable {
        const auto v = test::randn<float>(p.value.size(), seed++, 0.5);
        std::copy(v.begin(), v.end(), p.value.begin());
    });
    ftune::train::batch b;
    b.B = 1, b.T = 4;
    b.ids = {1, 5, 7, 3};
    b.mask = {1, 1, 1, 1};
    b.labels = {-100, 5, 7, 3};  // the first token is the prompt
    ftune::context ctx{.mode = ftune::mode::eval};
    const auto y = model.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T});
    // by hand: positions 0, 1, 2 predict 5, 7, 3 (the prompt's label is never a target)
    double want = 0;
    for (std::size_t t = 0; t < 3; ++t) {
        const float* z = y.data() + t * 16;
        double m = z[0], s = 0;
        for (int v = 0; v < 16; ++v) m = std::max(m, double(z[v]));
        for (int v = 0; v < 16; ++v) s += std::exp(double(z[v]) - m);
        want += m + std::log(s) - double(z[b.labels[t + 1]]);
    }
    want /= 3;
    CHECK(model.head.loss(y, b, static_cast<float*>(nullptr), 0.0f) == Approx(want).epsilon(1e-6));
    ftune::train::evaluation e;
    model.head.score(y, b, e, {});
    model.head.finish(e);
    CHECK(e.loss == Approx(want).epsilon(1e-6));
    CHECK(e.metric == Approx(-want).epsilon(1e-6));
    CHECK_THAT(model.head.report(e, {}), Catch::Contains("perplexity"));
    b.labels = {5, 7, 3};  // one short
    CHECK_THROWS_WITH(model.head.loss(y, b, static_cast<float*>(nullptr), 0.0f),
                      Catch::Contains("one label per input position"));
}

TEST_CASE(
    "the training loss without the full logits (loss_backward) equals forward, loss and "
    "backward: any chunk size, label smoothing, class weights, a frozen head, no labels",
    "[train]") {
    ftune::llama::config c;
    c.vocab_size = 16, c.hidden_size = 8, c.intermediate_size = 16, c.num_hidden_layers = 1;
    c.num_attention_heads = 2, c.num_key_value_heads = 1, c.max_position_embeddings = 16;
    ftune::train::batch b;
    b.B = 2, b.T = 5;
    b.ids = {1, 5, 7, 3, 9, 2, 4, 6, 0, 0};
    b.mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    b.labels = {-100, -100, 7, 3, 9, -100, 4, 6, -100, -100};  // 4 counted positions
    std::vector<double> weights(16);
    for (std::size_t v = 0; v < 16; ++v) weights[v] = 0.5 + 0.1 * double(v);
    // gradients of every parameter after the full-logits path and after loss_backward
    auto run = [&](bool tied, const ftune::loss::cross_entropy_options& o, bool freeze_head,
                   std::size_t chunk) {
        c.tie_word_embeddings = tied;
        ftune::llama::causal_lm<> model(c);
        model.visit_parameters("",
                               [seed = std::uint64_t(5)](ftune::parameter_ref<float> p) mutable {
                                   const auto v = test::randn<float>(p.value.size(), seed++, 0.5);
                                   std::copy(v.begin(), v.end(), p.value.begin());
                               });
        model.head.set_loss_options(o);
        if (freeze_head)
            (tied ? model.backbone.input_embeddings() : model.head.lm_head.weight).trainable =
                false;
        ftune::context ctx;
        const auto y = model.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T});
        std::vector<float> d(y.size(), 0.0f);
        const double full = model.head.loss(y, b, d.data(), 0.5f);
        model.backward(ctx, {d.data(), y.shape()});
        std::vector<std::vector<float>> want;
        model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            want.emplace_back(p.grad.begin(), p.grad.end());
        });
        model.zero_grad();
        model.head.loss_chunk_rows = chunk;
        const double fused = model.loss_backward(ctx, b, 0.5f);
        CHECK(fused == Approx(full).epsilon(1e-6));
        std::size_t i = 0;
        model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            INFO(p.name);
            if (!p.trainable) {  // frozen: zero_grad freed its gradient, and none was made
                CHECK(p.grad.empty());
                CHECK(std::all_of(want[i].begin(), want[i].end(), [](float g) { return g == 0; }));
                ++i;
                return;
            }
            CHECK(test::relative_error(p.grad, want[i++]) < 1e-5);
        });
    };
    for (const bool tied : {true, false})
        for (const std::size_t chunk : {0, 1, 3, 4, 9}) {
            INFO("tied " << tied << ", chunk " << chunk);
            run(tied, {}, false, chunk);
            run(tied, {.label_smoothing = 0.1, .class_weights = weights}, false, chunk);
            run(tied, {.class_weights = weights}, true, chunk);
        }
    // no counted position: loss 0, no gradient; a label outside the vocabulary is an error
    ftune::llama::causal_lm<> model(c);
    ftune::context ctx;
    auto none = b;
    none.labels.assign(10, -100);
    CHECK(model.loss_backward(ctx, none, 1.0f) == 0.0);
    auto bad = b;
    bad.labels[3] = 16;
    CHECK_THROWS_WITH(model.loss_backward(ctx, bad, 1.0f),
                      Catch::Contains("label 16 of row 0 position 3 is outside the vocabulary"));
    bad.labels.pop_back();
    CHECK_THROWS_WITH(model.loss_backward(ctx, bad, 1.0f),
                      Catch::Contains("one label per input position"));
}

TEST_CASE(
    "chat fine-tuning end to end: the trainer teaches a tiny Llama its replies, learned on the "
    "assistant's turns only",
    "[train]") {
    // the random tiny Llama and its one-letter-per-id tokenizer (eos "</s>")
    auto m = ftune::io::load_hf<ftune::llama::causal_lm<>>(fixtures / "hf_llama" / "untied");
    auto tok =
        ftune::text::load_bpe_tokenizer_json(fixtures / "hf_llama" / "cli" / "tokenizer.json");
    ftune::text::lm_tokenizer_settings s;
    s.eos_token = "</s>";
    tok.set_settings(s);
    const ftune::text::chat_template tmpl(
        "{% for m in messages %}{% if m.role == 'user' %}Q{{ m.content }}{% else %}A{{ m.content "
        "}}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}A{% endif %}");
    ftune::data::lm_dataset d;
    d.path = "in-memory";
    const std::pair<const char*, const char*> pairs[] = {
        {"DEF", "uvt"}, {"GHI", "srq"}, {"JKL", "pon"}, {"MNO", "mlk"}};
    for (const auto& [q, a] : pairs)
        d.rows.push_back({{{"user", q}, {"assistant", a}}, 0, "", "", 1});
    const auto xs = ftune::train::encode(tok, d, &tmpl);
    // the loss is on the reply and its end of turn only: "uvt</s>" of "QDEFAuvt</s>"
    CHECK(xs[0].ids.size() == 9);
    CHECK(std::count_if(xs[0].labels.begin(), xs[0].labels.end(),
                        [](auto l) { return l != -100; }) == 4);
    ftune::train::trainer tr(m.model, {.epochs = 60,
                                       .batch_size = 4,
                                       .lr = 1e-2,
                                       .warmup_ratio = 0.1,
                                       .log_every = 0,
                                       .progress = nullptr});
    const auto before = tr.evaluate(xs);
    tr.fit(xs, xs);
    const auto after = tr.evaluate(xs);
    INFO("loss per trained token " << before.loss << " -> " << after.loss);
    CHECK(after.loss < 0.05 * before.loss);
    CHECK(after.accuracy == 1.0);
    // greedy generation after each question: the trained reply, then eos
    ftune::generation::generator gen(m.model, tok, 64);
    for (const auto& [q, a] : pairs) {
        const auto prompt = tmpl.render({{"user", q}}, true).text;
        const auto r = gen.generate(tok.encode(prompt), {.max_new_tokens = 8, .temperature = 0});
        CHECK(r.text == a);
        CHECK(r.reason == ftune::generation::finish::stop_token);
    }
    // the same replies scored as an evaluation: every case exact, ROUGE-L 1; a prompt and
    // completion as strings and a conversation with nothing to answer
    d.rows.push_back({{}, 0, "QJKLA", "pon", 5});
    d.rows.push_back({{{"user", "DEF"}}, 0, "", "", 6});
    const auto cases = ftune::train::generation_cases(tok, d, &tmpl, {.max_length = 3});
    REQUIRE(cases.size() == 5);
    CHECK(cases[0].prompt == tok.encode("EFA"));  // "QDEFA" cut to its last 3 tokens
    CHECK(cases[4].prompt == tok.encode("KLA"));
    CHECK(cases[4].reference == "pon");
    CHECK(cases[4].line == 5);
    const auto full = ftune::train::generation_cases(tok, d, &tmpl);
    CHECK(full[1].prompt == tok.encode("QGHIA"));
    const auto r = ftune::train::evaluate_generation(m.model, tok, full, {.batch_size = 2});
    CHECK(r.predictions == std::vector<std::string>{"uvt", "srq", "pon", "mlk", "pon"});
    CHECK(r.references == r.predictions);
    CHECK(r.exact_match == 1.0);
    CHECK(r.rouge_l == 1.0);
    CHECK(r.max_new_tokens == 3 + 8);  // the longest reference's tokens + 8
    CHECK(r.labels.empty());           // 4 distinct replies of 5: free text
    CHECK(r.most_references == 1);
    CHECK(r.mean_over_references.rouge_l == 1.0);
    CHECK(r.best_of_references.rouge1 == 1.0);
    // several references (DialogSum's test set): "uvt" against "uvt", "uvt x" (ROUGE-1 F 2/3)
    // and "abc" (0): mean 5/9 for that case; the best is the first; exact if any is
    auto more = full;
    more[0].other_references = {"uvt x", "abc"};
    more[1].other_references = {"x"};
    more[1].reference = "nope";  // encodable by the letters-only tokenizer (no space)
    const auto m3 = ftune::train::evaluate_generation(m.model, tok, more, {.batch_size = 2});
    CHECK(m3.most_references == 3);
    CHECK(m3.exact_match == Approx(4.0 / 5));  // "srq" is none of "nope", "x"
    CHECK(m3.mean_over_references.rouge1 == Approx((5.0 / 9 + 0 + 3) / 5));
    CHECK(m3.best_of_references.rouge1 == Approx(4.0 / 5));
    CHECK(m3.rouge1 == Approx(4.0 / 5));  // against the first reference only
    CHECK(m3.labels.empty());
    CHECK_THAT(m3.text(), Catch::Contains("against up to 3 references a case: mean over them "
                                          "ROUGE-1 0.711111"));
}

TEST_CASE("generated replies that are labels: scikit-learn's report, other replies as (other)",
          "[train]") {
    ftune::train::generation_report r;
    r.references = {"card_arrival", "card_arrival", "top_up", "top_up"};
    r.predictions = {"card_arrival", "top_up", "top_up", "I cannot help"};
    r.labels = {"card_arrival", "top_up"};
    r.exact_match = 0.5;
    const auto text = r.text();
    // sklearn classification_report([0, 0, 1, 1], [0, 1, 1, 2], labels=[0, 1, 2], digits=4,
    // target_names=["card_arrival", "top_up", "(other)"], zero_division=0)
    CHECK_THAT(text, Catch::Contains("exact match 0.5"));
    CHECK_THAT(text, Catch::Contains("card_arrival     1.0000    0.5000    0.6667         2"));
    CHECK_THAT(text, Catch::Contains("      top_up     0.5000    0.5000    0.5000         2"));
    CHECK_THAT(text, Catch::Contains("     (other)     0.0000    0.0000    0.0000         0"));
    CHECK_THAT(text, Catch::Contains("    accuracy                         0.5000         4"));
}
