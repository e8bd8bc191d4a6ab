// Financial news sentiment: fine-tune a BERT encoder on the Financial PhraseBank (sentences from
// financial news, labelled negative / neutral / positive by annotators; `sentence@label` lines in
// Latin-1), with a random 80/20 split of the AllAgree file, class weights against
// the neutral majority, and a report on the held-out 20%.
//
//   financial_phrasebank --model all-MiniLM-L6-v2 --data ../shared/data
//                        [--file Sentences_AllAgree.txt] [--epochs 3] [--max-rows N] [--out DIR]
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>

#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::sequence_classifier<>;

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out;
    std::string file = "Sentences_AllAgree.txt";
    std::size_t epochs = 3, max_rows = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--model")
            model_dir = v;
        else if (k == "--data")
            data = v;
        else if (k == "--file")
            file = v;
        else if (k == "--epochs")
            epochs = std::stoul(v);
        else if (k == "--max-rows")
            max_rows = std::stoul(v);
        else if (k == "--out")
            out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. Read (Latin-1 -> UTF-8), shuffle with a fixed seed, split 80/20.
    auto all = ftune::data::read_phrasebank(data / "financial_phrasebank" / file);
    std::shuffle(all.rows.begin(), all.rows.end(), std::mt19937_64(42));
    if (max_rows && all.rows.size() > max_rows) all.rows.resize(max_rows);
    ftune::data::text_dataset train_rows = all, test_rows = all;
    const auto cut = std::ptrdiff_t(all.rows.size() * 8 / 10);
    train_rows.rows.assign(all.rows.begin(), all.rows.begin() + cut);
    test_rows.rows.assign(all.rows.begin() + cut, all.rows.end());
    const std::vector<std::string> names = {"negative", "neutral", "positive"};

    // 2. The checkpoint with a 3-way head.
    auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names});
    const auto problem = ftune::heads::problem::single_label_classification;
    const std::size_t max_len = std::min<std::size_t>(128, m.model_max_length);
    const auto train = ftune::train::encode(*m.tokenizer, train_rows, problem, names, max_len);
    const auto test = ftune::train::encode(*m.tokenizer, test_rows, problem, names, max_len);

    // 3. Class weights n / (classes * count) (scikit-learn's "balanced"): neutral is 61% of
    //    AllAgree, negative 13%.
    std::vector<double> count(names.size());
    for (const auto& x : train) count[std::size_t(x.labels[0])] += 1;
    std::vector<double> weights;
    for (double c : count)
        weights.push_back(double(train.size()) / (double(names.size()) * std::max(c, 1.0)));
    std::cout << "class weights:";
    for (std::size_t c = 0; c < names.size(); ++c)
        std::cout << " " << names[c] << " " << weights[c];
    std::cout << "\n";

    // 4. Fine-tune and report on the held-out sentences.
    ftune::train::trainer<Model> t(m.model, {.epochs = epochs,
                                             .batch_size = 16,
                                             .lr = 5e-5,
                                             .weight_decay = 0.01,
                                             .warmup_ratio = 0.1,
                                             .class_weights = weights});
    t.fit(train, {});
    const auto scores = t.evaluate(test);
    std::cout << ftune::metrics::classification_report(scores.gold, scores.predicted, names) << "\n"
              << ftune::metrics::confusion_matrix_text(
                     ftune::metrics::confusion_matrix(scores.gold, scores.predicted, names.size()),
                     names);
    if (!out.empty()) ftune::io::save_hf(m, out);
    return 0;
} catch (const std::exception& e) {
    std::cerr << "financial_phrasebank: " << e.what() << "\n";
    return 1;
}
