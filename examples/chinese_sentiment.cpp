// Chinese sentiment: fine-tune a Chinese BERT (bert-base-chinese's vocabulary: one token per
// Chinese character, do_lower_case false) on ChnSentiCorp (hotel, book and product reviews,
// 0 = negative, 1 = positive), with validation on dev each epoch and early stopping, then the
// report on test.
//
//   chinese_sentiment --model bert-base-chinese --data ../shared/data [--max-train 9600]
//                     [--epochs 2] [--max-length 128] [--out DIR]
//
// Reviews longer than --max-length tokens are truncated (the start is kept).
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>

#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::sequence_classifier<>;

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out;
    std::size_t max_train = 9600, max_eval = 1200, epochs = 2, max_length = 128;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--model")
            model_dir = v;
        else if (k == "--data")
            data = v;
        else if (k == "--max-train")
            max_train = std::stoul(v);
        else if (k == "--max-eval")
            max_eval = std::stoul(v);
        else if (k == "--epochs")
            epochs = std::stoul(v);
        else if (k == "--max-length")
            max_length = std::stoul(v);
        else if (k == "--out")
            out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. The checkpoint; its tokenizer settings come from tokenizer_config.json.
    const std::vector<std::string> names = {"0", "1"};
    auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names});
    std::cout << "tokenizer: " << m.tokenizer->vocab().size() << " tokens, "
              << (m.tokenizer->options().lowercase ? "lower-cased" : "cased") << "\n";

    // 2. TSV with `label` and `text_a` columns.
    auto read = [&](const char* file, std::size_t max) {
        auto d = ftune::data::read_table(data / "chnsenticorp" / file);
        if (d.rows.size() > max) d.rows.resize(max);
        return ftune::train::encode(*m.tokenizer, d,
                                    ftune::heads::problem::single_label_classification, names,
                                    std::min(max_length, m.model_max_length));
    };
    const auto train = read("train.tsv", max_train), dev = read("dev.tsv", max_eval),
               test = read("test.tsv", max_eval);

    // 3. Fine-tune with early stopping on dev accuracy (patience 2; the best weights restored).
    ftune::train::trainer<Model> t(m.model, {.epochs = epochs,
                                             .batch_size = 32,
                                             .lr = 1e-4,
                                             .weight_decay = 0.01,
                                             .warmup_ratio = 0.1,
                                             .patience = 2});
    const auto r = t.fit(train, dev);
    std::cout << "best dev accuracy " << r.best_metric << " at step " << r.best_step << "\n";

    // 4. The report on test.
    const auto scores = t.evaluate(test);
    std::cout << ftune::metrics::classification_report(scores.gold, scores.predicted,
                                                       {"negative", "positive"});
    if (!out.empty()) ftune::io::save_hf(m, out);
    return 0;
} catch (const std::exception& e) {
    std::cerr << "chinese_sentiment: " << e.what() << "\n";
    return 1;
}
