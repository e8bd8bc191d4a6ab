// Sentiment on SST-2 with ftune's primitives alone: a bag-of-embeddings classifier (the fastText
// recipe) written forward and backward by hand, trained with AdamW, evaluated on the dev set.
//
//   build/bin/sst2_bag_of_embeddings [--data DIR] [--epochs N] [--max-train N] [--threads N]
//                                    [--min-accuracy F]
//
// DIR holds sst2/train.tsv and sst2/dev.tsv (default: $FTUNE_DATA_DIR, else ../shared/data).
// It shows the primitives a BERT layer is made of at work on real data: embedding gather and
// scatter-add, GEMMs with transposes, bias, GELU, dropout, cross-entropy, global-norm clipping
// and AdamW. Fine-tuning a pretrained encoder replaces this model in later releases.
//
// Model, for a batch of B sentences holding n tokens in all:
//   E      = table[ids]                      (n, C)   embedding gather
//   pooled = P E                             (B, C)   P (B, n) averages each sentence's tokens
//   h      = GELU(pooled W1ᵀ + b1)           (B, H)
//   logits = dropout(h) W2ᵀ + b2             (B, 2)
//   loss   = mean cross-entropy(logits, labels)
#include <ftune/ftune.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

namespace cpu = ftune::backends::cpu;
using ftune::transpose;

namespace {

// One labelled sentence as word ids.
struct example {
    std::vector<ftune::token_id> ids;
    int label = 0;
};

// Reads an SST-2 TSV (header "sentence<TAB>label"), mapping words to ids; unknown words get id 0
// unless `grow` adds them to the vocabulary.
std::vector<example> read_sst2(const std::string& path, std::unordered_map<std::string, int>& vocab,
                               bool grow, std::size_t max_rows) {
    std::ifstream in(path);
    if (!in)
        throw ftune::error(ftune::errc::io, path,
                           "cannot open; pass --data DIR or set FTUNE_DATA_DIR");
    std::string line;
    std::getline(in, line);  // header
    std::vector<example> out;
    std::size_t lineno = 1;
    while (std::getline(in, line) && out.size() < max_rows) {
        ++lineno;
        const auto tab = line.rfind('\t');
        if (tab == std::string::npos || tab + 1 >= line.size())
            throw ftune::error(ftune::errc::parse, path + ":" + std::to_string(lineno),
                               "expected sentence<TAB>label");
        example ex;
        ex.label = line[tab + 1] == '1' ? 1 : 0;
        std::size_t i = 0;
        while (i < tab) {  // the text is already lower-cased and tokenized: split on spaces
            while (i < tab && line[i] == ' ') ++i;
            std::size_t j = i;
            while (j < tab && line[j] != ' ') ++j;
            if (j > i) {
                const std::string w = line.substr(i, j - i);
                auto it = vocab.find(w);
                if (it == vocab.end() && grow) it = vocab.emplace(w, int(vocab.size())).first;
                ex.ids.push_back(it == vocab.end() ? 0 : it->second);
            }
            i = j;
        }
        if (ex.ids.empty()) ex.ids.push_back(0);
        out.push_back(std::move(ex));
    }
    return out;
}

// A dense parameter with its gradient and AdamW moments.
struct param {
    std::vector<float> value, grad, m, v;
    bool decay = true;
    param(std::size_t n, double init_std, std::uint64_t seed, bool decay_)
        : value(n), grad(n), m(n), v(n), decay(decay_) {
        ftune::random_stream s(seed, 0);
        for (std::size_t i = 0; i < n; ++i) value[i] = float(init_std * s.normal(i));
    }
};

// The classifier: its parameters and the activations of the last batch (kept for backward).
struct model {
    std::size_t C, H;
    param table, w1, b1, w2, b2;
    std::vector<float> emb, pool, pooled, pre, h, hd, logits, losses;  // activations
    std::vector<std::uint8_t> mask;                                    // dropout keep mask
    std::vector<float> d_logits, d_hd, d_pre, d_pooled, d_emb;         // gradients

    model(std::size_t vocab, std::size_t C_, std::size_t H_)
        : C(C_),
          H(H_),
          table(vocab * C_, 0.1, 1, false),
          w1(H_ * C_, 1.0 / std::sqrt(double(C_)), 2, true),
          b1(H_, 0, 3, false),
          w2(2 * H_, 1.0 / std::sqrt(double(H_)), 4, true),
          b2(2, 0, 5, false) {}

    std::vector<param*> params() { return {&table, &w1, &b1, &w2, &b2}; }

    // Forward pass over a batch; returns the mean loss (labels may be null at inference).
    float forward(const std::vector<const example*>& batch, std::vector<ftune::token_id>& ids,
                  const std::vector<ftune::token_id>* labels, bool training,
                  ftune::generator& rng) {
        const std::size_t B = batch.size();
        ids.clear();
        for (auto* ex : batch) ids.insert(ids.end(), ex->ids.begin(), ex->ids.end());
        const std::size_t n = ids.size();
        emb.resize(n * C);
        cpu::embedding_forward(emb.data(), ids.data(), table.value.data(), n, C,
                               table.value.size() / C);  // (n, C)
        pool.assign(B * n, 0.0f);  // (B, n): row b averages sentence b's tokens
        for (std::size_t b = 0, off = 0; b < B; off += batch[b]->ids.size(), ++b)
            for (std::size_t t = 0; t < batch[b]->ids.size(); ++t)
                pool[b * n + off + t] = 1.0f / float(batch[b]->ids.size());
        pooled.resize(B * C);
        cpu::gemm(transpose::no, transpose::no, B, C, n, 1.0f, pool.data(), n, emb.data(), C, 0.0f,
                  pooled.data(), C);
        pre.resize(B * H);
        cpu::gemm(transpose::no, transpose::yes, B, H, C, 1.0f, pooled.data(), C, w1.value.data(),
                  C, 0.0f, pre.data(), H);
        cpu::bias_add(pre.data(), b1.value.data(), B, H);  // (B, H)
        h.resize(B * H);
        cpu::gelu_forward(h.data(), pre.data(), B * H);
        hd.resize(B * H);
        mask.resize(B * H);
        cpu::dropout_forward(hd.data(), mask.data(), h.data(), training ? 0.1f : 0.0f, B * H,
                             rng.next());
        logits.resize(B * 2);
        cpu::gemm(transpose::no, transpose::yes, B, 2, H, 1.0f, hd.data(), H, w2.value.data(), H,
                  0.0f, logits.data(), 2);
        cpu::bias_add(logits.data(), b2.value.data(), B, 2);  // (B, 2)
        if (!labels) return 0.0f;
        losses.resize(B);
        const std::size_t count =
            cpu::cross_entropy_forward(losses.data(), logits.data(), labels->data(), B, 2);
        return float(cpu::sum(losses.data(), B) / double(count));
    }

    // Backward pass of the last forward; accumulates into every parameter's gradient.
    void backward(const std::vector<ftune::token_id>& ids,
                  const std::vector<ftune::token_id>& labels, bool training) {
        const std::size_t B = labels.size(), n = ids.size();
        std::vector<float> dloss(B, 1.0f / float(B));
        d_logits.assign(B * 2, 0.0f);
        cpu::cross_entropy_backward(d_logits.data(), logits.data(), labels.data(), dloss.data(), B,
                                    2);
        cpu::gemm(transpose::yes, transpose::no, 2, H, B, 1.0f, d_logits.data(), 2, hd.data(), H,
                  1.0f, w2.grad.data(), H);
        cpu::bias_backward(b2.grad.data(), d_logits.data(), B, 2);
        d_hd.assign(B * H, 0.0f);
        cpu::gemm(transpose::no, transpose::no, B, H, 2, 1.0f, d_logits.data(), 2, w2.value.data(),
                  H, 0.0f, d_hd.data(), H);
        std::vector<float> d_h(B * H, 0.0f);
        cpu::dropout_backward(d_h.data(), mask.data(), d_hd.data(), training ? 0.1f : 0.0f, B * H);
        d_pre.assign(B * H, 0.0f);
        cpu::gelu_backward(d_pre.data(), pre.data(), d_h.data(), B * H);
        cpu::gemm(transpose::yes, transpose::no, H, C, B, 1.0f, d_pre.data(), H, pooled.data(), C,
                  1.0f, w1.grad.data(), C);
        cpu::bias_backward(b1.grad.data(), d_pre.data(), B, H);
        d_pooled.resize(B * C);
        cpu::gemm(transpose::no, transpose::no, B, C, H, 1.0f, d_pre.data(), H, w1.value.data(), C,
                  0.0f, d_pooled.data(), C);
        d_emb.resize(n * C);
        cpu::gemm(transpose::yes, transpose::no, n, C, B, 1.0f, pool.data(), n, d_pooled.data(), C,
                  0.0f, d_emb.data(), C);
        cpu::embedding_backward(table.grad.data(), ids.data(), d_emb.data(), n, C,
                                table.value.size() / C);
    }
};

// Prints per-class precision/recall/F1 and accuracy on `data`; returns the accuracy.
double report(model& m, const std::vector<example>& data, ftune::generator& rng) {
    std::size_t confusion[2][2] = {};  // [true][predicted]
    std::vector<ftune::token_id> ids;
    for (std::size_t i = 0; i < data.size(); i += 64) {
        std::vector<const example*> batch;
        for (std::size_t j = i; j < std::min(data.size(), i + 64); ++j) batch.push_back(&data[j]);
        m.forward(batch, ids, nullptr, false, rng);
        for (std::size_t b = 0; b < batch.size(); ++b)
            ++confusion[batch[b]->label][m.logits[b * 2 + 1] > m.logits[b * 2] ? 1 : 0];
    }
    std::printf("\n              precision    recall  f1-score   support\n\n");
    const char* names[] = {"negative", "positive"};
    for (int c = 0; c < 2; ++c) {
        const double tp = double(confusion[c][c]), pred = double(confusion[0][c] + confusion[1][c]),
                     sup = double(confusion[c][0] + confusion[c][1]);
        const double p = pred > 0 ? tp / pred : 0, r = sup > 0 ? tp / sup : 0,
                     f = p + r > 0 ? 2 * p * r / (p + r) : 0;
        std::printf("%12s %10.4f %9.4f %9.4f %9.0f\n", names[c], p, r, f, sup);
    }
    const double acc = double(confusion[0][0] + confusion[1][1]) / double(data.size());
    std::printf("\n    accuracy %30.4f %9zu\n", acc, data.size());
    return acc;
}

}  // namespace

int main(int argc, char** argv) try {
    std::string data_dir =
        std::getenv("FTUNE_DATA_DIR") ? std::getenv("FTUNE_DATA_DIR") : "../shared/data";
    std::size_t epochs = 3, max_train = SIZE_MAX;
    double min_accuracy = 0;  // exit with status 3 below this dev accuracy (used by the tests)
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--data")
            data_dir = argv[i + 1];
        else if (a == "--epochs")
            epochs = std::stoul(argv[i + 1]);
        else if (a == "--max-train")
            max_train = std::stoul(argv[i + 1]);
        else if (a == "--min-accuracy")
            min_accuracy = std::stod(argv[i + 1]);
        else if (a == "--threads")
            ftune::set_num_threads(std::stoi(argv[i + 1]));
        else
            throw ftune::error(ftune::errc::invalid_argument, a, "unknown option");
    }
    std::unordered_map<std::string, int> vocab{{"[UNK]", 0}};
    const auto train = read_sst2(data_dir + "/sst2/train.tsv", vocab, true, max_train);
    const auto dev = read_sst2(data_dir + "/sst2/dev.tsv", vocab, false, SIZE_MAX);
    std::printf("SST-2: %zu training sentences, %zu dev sentences, %zu words; %d threads\n",
                train.size(), dev.size(), vocab.size(), ftune::num_threads());

    model m(vocab.size(), 64, 64);
    ftune::generator rng(42);
    std::vector<std::size_t> order(train.size());
    std::iota(order.begin(), order.end(), 0);
    const std::size_t batch_size = 32,
                      steps_per_epoch = (train.size() + batch_size - 1) / batch_size;
    const std::size_t total_steps = epochs * steps_per_epoch;
    std::vector<ftune::token_id> ids, labels;
    std::size_t step = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t epoch = 0; epoch < epochs; ++epoch) {
        ftune::shuffle(std::span<std::size_t>(order), rng.next());
        double loss_sum = 0;
        for (std::size_t s = 0; s < steps_per_epoch; ++s, ++step) {
            std::vector<const example*> batch;
            labels.clear();
            for (std::size_t j = s * batch_size; j < std::min(train.size(), (s + 1) * batch_size);
                 ++j) {
                batch.push_back(&train[order[j]]);
                labels.push_back(train[order[j]].label);
            }
            for (param* p : m.params()) std::fill(p->grad.begin(), p->grad.end(), 0.0f);
            loss_sum += m.forward(batch, ids, &labels, true, rng);
            m.backward(ids, labels, true);
            // clip the global gradient norm to 1, then AdamW with linear decay of the rate
            std::vector<std::span<const float>> grads;
            for (param* p : m.params()) grads.emplace_back(p->grad);
            const double norm = cpu::global_l2_norm<float>(grads);
            if (norm > 1.0)
                for (param* p : m.params())
                    cpu::scale(p->grad.data(), float(1.0 / norm), p->grad.size());
            const double lr = 3e-3 * (1.0 - double(step) / double(total_steps));
            for (param* p : m.params())
                cpu::adamw_update(
                    p->value.data(), p->grad.data(), p->m.data(), p->v.data(), p->value.size(),
                    {.lr = lr, .weight_decay = p->decay ? 0.01 : 0.0, .step = step + 1});
        }
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("epoch %zu: mean training loss %.4f (%.1f s)\n", epoch + 1,
                    loss_sum / double(steps_per_epoch), secs);
    }
    std::printf("\nSST-2 dev:");
    const double acc = report(m, dev, rng);
    if (acc < min_accuracy) {
        std::fprintf(stderr, "dev accuracy %.4f is below --min-accuracy %.4f\n", acc, min_accuracy);
        return 3;
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
