// Relation extraction: which of 9 directed relations (or Other) holds between two marked nominals
// of a sentence, on SemEval-2010 Task 8 (8,000 training and 2,717 test sentences):
//
//   The <e1>author</e1> of a keygen uses a <e2>disassembler</e2> ...  ->  Instrument-Agency(e2,e1)
//
// The markers become special tokens with new embedding rows (trained with the rest), and the head
// classifies the hidden states of [CLS], <e1> and <e2> together (R-BERT style). The official score
// (macro-F1 over the relation types, direction counted, Other left out) is printed before and
// after fine-tuning, then the relations of a few new sentences.
//
//   relations_semeval --model all-MiniLM-L6-v2 --data ../shared/data [--max-train 8000]
//                     [--max-test 2717] [--epochs 5] [--lr 1e-4] [--seed 42] [--out DIR]
//
// bench/compare_relations.py runs the same recipe in Transformers and compares.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>

#include <ftune/train/relations.hpp>
#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::relation_classifier<>;

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out;
    std::size_t max_train = 8000, max_test = 2717, epochs = 5;
    double lr = 1e-4;
    std::uint64_t seed = 42;
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
        else if (k == "--lr")
            lr = std::stod(v);
        else if (k == "--seed")
            seed = std::stoull(v);
        else if (k == "--out")
            out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. TSV files (id, relation, sentence); the 19 labels are the names seen, sorted.
    const ftune::data::table_options columns{.label_column = "relation"};
    auto train_rows = ftune::data::read_table(data / "semeval2010_task8" / "train.tsv", columns);
    auto test_rows = ftune::data::read_table(data / "semeval2010_task8" / "test.tsv", columns);
    if (train_rows.rows.size() > max_train) train_rows.rows.resize(max_train);
    if (test_rows.rows.size() > max_test) test_rows.rows.resize(max_test);
    std::vector<std::string> seen;
    for (const auto* d : {&train_rows, &test_rows})
        for (const auto& r : d->rows) seen.push_back(r.label);
    const auto names = ftune::train::label_names(seen);

    // 2. The checkpoint with a relation head; load_hf adds <e1> </e1> <e2> </e2> to the
    // tokenizer and four rows (the mean embedding) to the token table.
    auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names, .seed = seed});
    const std::size_t max_len = std::min<std::size_t>(128, m.model_max_length);
    const auto train = ftune::train::encode_relations(*m.tokenizer, train_rows, names, max_len);
    const auto test = ftune::train::encode_relations(*m.tokenizer, test_rows, names, max_len);
    std::cout << train.size() << " training and " << test.size() << " test sentences, "
              << names.size() << " labels\n";

    // 3. The official score before and after fine-tuning.
    ftune::train::trainer<Model> t(m.model,
                                   {.epochs = epochs,
                                    .batch_size = 32,
                                    .lr = lr,
                                    .weight_decay = 0.01,
                                    .warmup_ratio = 0.1,
                                    .seed = seed},
                                   names);
    const auto before = t.evaluate(test);
    const auto start = std::chrono::steady_clock::now();
    t.fit(train, {});
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto after = t.evaluate(test);
    std::cout << "\n" << m.model.head.report(after, names);
    std::cout << "\nRESULT f1_before " << before.f1 << " f1_after " << after.f1
              << " accuracy_after " << after.accuracy << " train_seconds " << seconds << "\n";
    if (!out.empty()) ftune::io::save_hf(m, out);

    // 4. The relation of new sentences, with its probability.
    m.model.prepare_inference();
    ftune::context ctx;
    for (const std::string s : {"The <e1>fire</e1> was caused by a faulty <e2>heater</e2>.",
                                "The <e1>orchestra</e1> has eighty <e2>musicians</e2>.",
                                "The <e1>letter</e1> was put into an <e2>envelope</e2>."}) {
        const auto e = m.tokenizer->encode(s, std::nullopt, max_len);
        const std::size_t T = e.ids.size();
        const auto logits = m.model.forward(ctx, {e.ids.data(), 1, T}, {}, {});  // (1, 19)
        const auto p = m.model.head.decode(logits.data());
        std::cout << names[p.label] << " (" << p.score << ")  " << s << "\n";
    }
    return 0;
} catch (const std::exception& e) {
    std::cerr << "relations_semeval: " << e.what() << "\n";
    return 1;
}
