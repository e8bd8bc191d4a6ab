// FAQ search on BANKING77 with sentence embeddings: each customer message of the test set ranks
// the messages of the training set by cosine similarity; a training message is relevant when it
// has the query's intent. The retrieval metrics (as sentence-transformers'
// InformationRetrievalEvaluator) before and after fine-tuning the encoder with
// MultipleNegativesRankingLoss on pairs of training messages of the same intent, then the top-5
// suggestions for a few messages, and the model saved as a sentence-transformers directory.
//
//   faq_search --model all-MiniLM-L6-v2 --data ../shared/data [--max-train 10003]
//              [--max-test 3080] [--epochs 1] [--batch-size 32] [--lr 2e-5] [--out DIR]
//              [--pairs-out FILE]  (the training pairs, JSON lines: what
//              bench/compare_embeddings.py gives sentence-transformers)
//
// --model is a sentence-transformers directory (modules.json, 1_Pooling/...; a plain BERT
// directory is mean-pooled).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ftune/io/hf.hpp>
#include <ftune/train/embeddings.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::model<>;  // the encoder's hidden states; pooling is the trainer's

int main(int argc, char** argv) try {
    fs::path model_dir, data = "../shared/data", out, pairs_out;
    std::size_t max_train = 10003, max_test = 3080, epochs = 1, batch = 32;
    double lr = 2e-5;
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
        else if (k == "--batch-size")
            batch = std::stoul(v);
        else if (k == "--lr")
            lr = std::stod(v);
        else if (k == "--out")
            out = v;
        else if (k == "--pairs-out")
            pairs_out = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");

    // 1. The corpus (training messages) and the queries (test messages), with their intents.
    auto corpus_rows = ftune::data::read_table(data / "banking77" / "train.csv").rows;
    auto query_rows = ftune::data::read_table(data / "banking77" / "test.csv").rows;
    if (corpus_rows.size() > max_train) corpus_rows.resize(max_train);
    if (query_rows.size() > max_test) query_rows.resize(max_test);
    std::vector<std::string> corpus, queries;
    std::map<std::string, std::vector<std::size_t>> by_intent;  // intent -> corpus rows
    for (std::size_t i = 0; i < corpus_rows.size(); ++i)
        corpus.push_back(corpus_rows[i].text), by_intent[corpus_rows[i].label].push_back(i);
    std::vector<std::vector<std::size_t>> relevant;  // per query: the corpus rows of its intent
    for (const auto& r : query_rows) {
        queries.push_back(r.text);
        const auto it = by_intent.find(r.label);
        relevant.push_back(it == by_intent.end() ? std::vector<std::size_t>{} : it->second);
    }
    std::cout << corpus.size() << " corpus messages, " << queries.size() << " queries, "
              << by_intent.size() << " intents\n";

    // 2. The encoder, its pooling and normalization (sentence-transformers' files).
    auto m = ftune::io::load_hf<Model>(model_dir);
    ftune::train::embedding_trainer<Model> t(
        m.model, *m.tokenizer, ftune::io::read_sentence_config(model_dir),
        {.epochs = epochs, .batch_size = batch, .lr = lr, .warmup_ratio = 0.1, .log_every = 50});
    t.max_length = std::min<std::size_t>(64, m.model_max_length);
    const auto before = t.evaluate(queries, corpus, relevant);
    std::cout << "before fine-tuning:\n" << ftune::metrics::retrieval_report(before);

    // 3. Training pairs: each corpus message with another message of its intent (in-batch
    //    negatives: the other pairs' messages), drawn from a seeded stream.
    const ftune::random_stream pick(7, 1);
    std::vector<ftune::train::text_pair> pairs;
    for (std::size_t i = 0; i < corpus.size(); ++i) {
        const auto& same = by_intent[corpus_rows[i].label];
        if (same.size() < 2) continue;
        std::size_t j = same[pick.below(i, std::uint32_t(same.size() - 1))];
        if (j == i) j = same.back();  // (draw among the others)
        pairs.push_back({corpus[i], corpus[j]});
    }
    if (!pairs_out.empty()) {
        std::ofstream f(pairs_out);  // JSON lines {"anchor", "positive"}
        for (const auto& p : pairs)
            f << nlohmann::json{{"anchor", p.anchor}, {"positive", p.positive}}.dump() << "\n";
        if (!f) throw ftune::error(ftune::errc::io, pairs_out.string(), "cannot write the pairs");
    }
    const auto r = t.fit(pairs);
    std::cout << pairs.size() << " pairs, " << r.steps << " steps in " << r.seconds << " s\n";
    const auto after = t.evaluate(queries, corpus, relevant);
    std::cout << "after fine-tuning:\n" << ftune::metrics::retrieval_report(after);

    // 4. The top-5 suggestions for a few messages.
    const std::vector<std::string> asks(
        queries.begin(),
        queries.begin() + std::ptrdiff_t(std::min<std::size_t>(3, queries.size())));
    const auto ranked = t.rank(asks, corpus, 5);
    for (std::size_t q = 0; q < asks.size(); ++q) {
        std::cout << "> " << asks[q] << "  [" << query_rows[q].label << "]\n";
        for (const std::size_t d : ranked[q])
            std::cout << "    " << corpus[d] << "  [" << corpus_rows[d].label << "]\n";
    }
    std::cout << "RESULT mrr10_before " << before.mrr.at(10) << " mrr10_after " << after.mrr.at(10)
              << " accuracy1_before " << before.accuracy.at(1) << " accuracy1_after "
              << after.accuracy.at(1) << " ndcg10_after " << after.ndcg.at(10) << " train_seconds "
              << r.seconds << "\n";

    // 5. Save: the encoder in Hugging Face layout plus the sentence-transformers files, so that
    //    SentenceTransformer(out) and ftune both load it.
    if (!out.empty()) {
        ftune::io::save_hf(m, out);
        for (const char* f : {"modules.json", "sentence_bert_config.json",
                              "config_sentence_transformers.json", "1_Pooling", "2_Normalize"})
            if (fs::exists(model_dir / f))
                fs::copy(model_dir / f, out / f,
                         fs::copy_options::recursive | fs::copy_options::overwrite_existing);
        std::cout << "saved " << out.string() << "\n";
    }
    return 0;
} catch (const std::exception& e) {
    std::cerr << "faq_search: " << e.what() << "\n";
    return 1;
}
