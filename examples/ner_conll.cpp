// Named-entity recognition: fine-tune a BERT encoder on CoNLL-2003 (PER, ORG, LOC, MISC in IOB2
// tags), print seqeval's entity-level report and the token-level report on the test set, and
// tag a new sentence word by word.
//
//   ner_conll --model bert-base-cased --data ../shared/data [--max-train 14041]
//             [--max-test 3453] [--epochs 1] [--out conll-model]
//
// Labels go on the first word piece of each word; the other pieces are ignored by the loss, and
// each word's prediction is read from its first piece (as Transformers' run_ner does).
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>

#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::token_classifier<>;  // dropout -> linear on every position

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out;
    std::size_t max_train = 14041, max_test = 3453, epochs = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--model")
            model_dir = v;
        else if (k == "--data")
            data = v;
        else if (k == "--max-train")
            max_train = std::stoul(v);
        else if (k == "--max-test")
            max_test = std::stoul(v);
        else if (k == "--epochs")
            epochs = std::stoul(v);
        else if (k == "--out")
            out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. Sentences (token first, tag last; -DOCSTART- skipped) and the tag set they use.
    auto train_s = ftune::data::read_conll(data / "conll2003" / "train.txt");
    auto test_s = ftune::data::read_conll(data / "conll2003" / "test.txt");
    if (train_s.size() > max_train) train_s.resize(max_train);
    if (test_s.size() > max_test) test_s.resize(max_test);
    std::vector<std::string> seen;
    for (const auto* set : {&train_s, &test_s})
        for (const auto& s : *set) seen.insert(seen.end(), s.tags.begin(), s.tags.end());
    const auto names = ftune::train::label_names(seen);  // O, B-LOC, I-LOC, ...

    // 2. The checkpoint with a token-classification head for those tags.
    auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names});
    const std::size_t max_len = std::min<std::size_t>(128, m.model_max_length);
    const auto train = ftune::train::encode(*m.tokenizer, train_s, names, max_len);
    const auto test = ftune::train::encode(*m.tokenizer, test_s, names, max_len);

    // 3. Fine-tune (no validation set here: the final weights are kept).
    ftune::train::trainer<Model> t(
        m.model,
        {.epochs = epochs, .batch_size = 32, .lr = 1e-4, .weight_decay = 0.01, .warmup_ratio = 0.1},
        names);  // tag names, for the reports
    t.fit(train, {});

    // 4. Entity-level (seqeval / conlleval) and token-level reports on the test sentences.
    const auto scores = t.evaluate(test);
    std::cout << ftune::metrics::entity_report(scores.gold_tags, scores.predicted_tags) << "\n"
              << ftune::metrics::token_report(scores.gold_tags, scores.predicted_tags);
    if (!out.empty()) ftune::io::save_hf(m, out);

    // 5. Tag a new sentence: one prediction per word, from its first piece.
    m.model.prepare_inference();
    ftune::context ctx;
    const std::vector<std::string> words = {"Angela", "Merkel",  "visited",    "Paris",
                                            "with",   "Siemens", "executives", "."};
    ftune::data::tagged_sentence s{words, std::vector<std::string>(words.size(), "O"), 0};
    const auto x = ftune::train::encode(*m.tokenizer, {s}, names, max_len).front();
    const std::size_t T = x.ids.size();
    const std::vector<ftune::token_id> mask(T, 1);
    const auto logits = m.model.forward(ctx, {x.ids.data(), 1, T}, {mask.data(), 1, T},
                                        {x.types.data(), 1, T});  // (1, T, tags)
    std::size_t word = 0;
    for (std::size_t i = 0; i < T; ++i) {
        if (x.labels[i] < 0) continue;  // not a word's first piece
        std::size_t best = 0;
        for (std::size_t c = 1; c < names.size(); ++c)
            if (logits(0, i, c) > logits(0, i, best)) best = c;
        std::cout << words[word++] << "/" << names[best] << " ";
    }
    std::cout << "\n";
    return 0;
} catch (const std::exception& e) {
    std::cerr << "ner_conll: " << e.what() << "\n";
    return 1;
}
