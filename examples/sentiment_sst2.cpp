// Sentiment analysis: fine-tune a pretrained BERT encoder on SST-2 (movie-review sentences,
// negative / positive), print scikit-learn's classification report and the confusion matrix on
// SST-2 dev, save the model in Hugging Face layout, and classify new sentences with it.
//
//   sentiment_sst2 --model all-MiniLM-L6-v2 --data ../shared/data [--max-train 20000]
//                  [--epochs 1] [--out sst2-model]
//
// --model is any BERT directory in Hugging Face layout (config.json, model.safetensors,
// vocab.txt); a base checkpoint gets a new 2-way head.
#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>

#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::sequence_classifier<>;  // pooler -> dropout -> linear, as Transformers

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out;
    std::size_t max_train = 20000, epochs = 1;
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
        else if (k == "--out")
            out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. The checkpoint, with a head for SST-2's labels (0 = negative, 1 = positive).
    const std::vector<std::string> names = {"0", "1"};
    auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names});

    // 2. Data: TSV with `sentence` and `label` columns; the first max_train training rows.
    auto train_rows = ftune::data::read_table(data / "sst2" / "train.tsv");
    if (train_rows.rows.size() > max_train) train_rows.rows.resize(max_train);
    const auto dev_rows = ftune::data::read_table(data / "sst2" / "dev.tsv");
    const auto problem = ftune::heads::problem::single_label_classification;
    const std::size_t max_len = std::min<std::size_t>(128, m.model_max_length);
    const auto train = ftune::train::encode(*m.tokenizer, train_rows, problem, names, max_len);
    const auto dev = ftune::train::encode(*m.tokenizer, dev_rows, problem, names, max_len);

    // 3. Fine-tune: AdamW with decay 0.01 (not biases / LayerNorm), 10% warmup then linear decay,
    //    clipping at 1.0; evaluated on dev after each epoch, the best weights kept.
    ftune::train::trainer<Model> t(m.model, {.epochs = epochs,
                                             .batch_size = 32,
                                             .lr = 1e-4,
                                             .weight_decay = 0.01,
                                             .warmup_ratio = 0.1});
    const auto result = t.fit(train, dev);
    std::cout << "trained " << result.steps << " steps in " << result.seconds << " s\n";

    // 4. The report on dev, as scikit-learn prints it, and the confusion matrix.
    const auto scores = t.evaluate(dev);
    const std::vector<std::string> readable = {"negative", "positive"};
    std::cout << ftune::metrics::classification_report(scores.gold, scores.predicted, readable)
              << "\n"
              << ftune::metrics::confusion_matrix_text(
                     ftune::metrics::confusion_matrix(scores.gold, scores.predicted, 2), readable);

    // 5. Save (Hugging Face layout: Transformers' from_pretrained loads it) and serve.
    if (!out.empty()) ftune::io::save_hf(m, out);
    m.model.prepare_inference();
    ftune::context ctx;  // eval mode: no dropout
    for (const char* text :
         {"a gripping , beautifully acted film", "the plot is thin and the jokes fall flat"}) {
        const auto e = m.tokenizer->encode(text, std::nullopt, max_len);
        const auto logits = m.model.forward(ctx, {e.ids.data(), 1, e.ids.size()},
                                            {e.attention_mask.data(), 1, e.ids.size()},
                                            {e.type_ids.data(), 1, e.ids.size()});  // (1, 2)
        std::cout << (logits(0, 1) > logits(0, 0) ? "positive" : "negative") << "  " << text
                  << "\n";
    }
    return 0;
} catch (const std::exception& e) {
    std::cerr << "sentiment_sst2: " << e.what() << "\n";
    return 1;
}
