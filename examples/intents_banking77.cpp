// Customer-service intent recognition: fine-tune a BERT encoder on BANKING77 (online-banking
// queries, 77 intents), optionally with the lower layers frozen, then print the classification
// report, the intents most often confused with each other, and the top intents of a new query.
//
//   intents_banking77 --model all-MiniLM-L6-v2 --data ../shared/data [--max-train 10003]
//                     [--epochs 3] [--freeze none|embeddings|layers:N|encoder] [--out DIR]
//
// Frozen parameters cost no weight-gradient GEMM and no optimizer state; backward stops below
// the lowest trainable layer.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <tuple>

#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::sequence_classifier<>;

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out;
    std::size_t max_train = 10003, epochs = 3;
    std::string freeze = "none";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--model")
            model_dir = v;
        else if (k == "--data")
            data = v;
        else if (k == "--max-train")
            max_train = std::stoul(v);
        else if (k == "--epochs")
            epochs = std::stoul(v);
        else if (k == "--freeze")
            freeze = v;
        else if (k == "--out")
            out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. CSV with `text` and `category` columns; intents named by their strings.
    auto train_rows = ftune::data::read_table(data / "banking77" / "train.csv");
    auto test_rows = ftune::data::read_table(data / "banking77" / "test.csv");
    if (train_rows.rows.size() > max_train) train_rows.rows.resize(max_train);
    std::vector<std::string> seen;
    for (const auto* d : {&train_rows, &test_rows})
        for (const auto& r : d->rows) seen.push_back(r.label);
    const auto names = ftune::train::label_names(seen);

    // 2. The checkpoint with a 77-way head; freeze what was asked.
    auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names});
    const std::size_t frozen =
        ftune::train::apply_freeze(m.model, ftune::train::freeze::parse(freeze));
    std::cout << frozen << " weights frozen\n";
    const auto problem = ftune::heads::problem::single_label_classification;
    const std::size_t max_len = std::min<std::size_t>(64, m.model_max_length);
    const auto train = ftune::train::encode(*m.tokenizer, train_rows, problem, names, max_len);
    const auto test = ftune::train::encode(*m.tokenizer, test_rows, problem, names, max_len);

    // 3. Fine-tune and evaluate on the test rows.
    ftune::train::trainer<Model> t(m.model, {.epochs = epochs,
                                             .batch_size = 32,
                                             .lr = 1e-4,
                                             .weight_decay = 0.01,
                                             .warmup_ratio = 0.1});
    t.fit(train, {});
    const auto scores = t.evaluate(test);
    std::cout << ftune::metrics::classification_report(scores.gold, scores.predicted, names);

    // 4. The pairs of intents confused most often (true -> predicted).
    const auto cm = ftune::metrics::confusion_matrix(scores.gold, scores.predicted, names.size());
    std::vector<std::tuple<std::size_t, std::size_t, std::size_t>> confused;
    for (std::size_t i = 0; i < cm.size(); ++i)
        for (std::size_t j = 0; j < cm.size(); ++j)
            if (i != j && cm[i][j] > 0) confused.emplace_back(cm[i][j], i, j);
    std::sort(confused.rbegin(), confused.rend());
    std::cout << "\nmost confused intents:\n";
    for (std::size_t k = 0; k < std::min<std::size_t>(5, confused.size()); ++k) {
        const auto [n, i, j] = confused[k];
        std::cout << "  " << n << "  " << names[i] << " -> " << names[j] << "\n";
    }
    if (!out.empty()) ftune::io::save_hf(m, out);

    // 5. The three most likely intents of a new query (softmax of the logits).
    m.model.prepare_inference();
    ftune::context ctx;
    const std::string query = "I still have not received my new card, what should I do?";
    const auto e = m.tokenizer->encode(query, std::nullopt, max_len);
    const std::size_t T = e.ids.size();
    const auto logits = m.model.forward(ctx, {e.ids.data(), 1, T}, {e.attention_mask.data(), 1, T},
                                        {e.type_ids.data(), 1, T});  // (1, 77)
    std::vector<std::pair<double, std::size_t>> p;
    double sum = 0, top = logits(0, 0);
    for (std::size_t c = 0; c < names.size(); ++c) top = std::max(top, double(logits(0, c)));
    for (std::size_t c = 0; c < names.size(); ++c)
        sum += p.emplace_back(std::exp(double(logits(0, c)) - top), c).first;
    std::sort(p.rbegin(), p.rend());
    std::cout << "\n" << query << "\n";
    for (std::size_t k = 0; k < std::min<std::size_t>(3, p.size()); ++k)
        std::cout << "  " << p[k].first / sum << "  " << names[p[k].second] << "\n";
    return 0;
} catch (const std::exception& e) {
    std::cerr << "intents_banking77: " << e.what() << "\n";
    return 1;
}
