// Fine-tuning sentence embeddings as sentence-transformers does: an encoder, its Pooling (and
// Normalize) modules, and a loss on the embeddings of pairs of texts:
// MultipleNegativesRankingLoss (anchor, positive[, hard negative]: every other positive of the
// batch is a negative) for retrieval, or CosineSimilarityLoss (two texts and a similarity
// score). The texts of a batch are encoded in one padded forward (anchors, positives, then
// negatives), pooled, scored by the loss, and the gradient goes back through the pooling and
// the encoder; AdamW, the schedule and clipping are the classification trainer's. Evaluation
// embeds queries and a corpus and scores the ranking with metrics/retrieval.hpp (as
// sentence-transformers' InformationRetrievalEvaluator).
//
//   auto m = ftune::io::load_hf<ftune::bert::model<>>(dir);
//   ftune::train::embedding_trainer<ftune::bert::model<>> t(m.model, *m.tokenizer,
//       ftune::io::read_sentence_config(dir), {.epochs = 1, .batch_size = 32, .lr = 2e-5});
//   t.fit(pairs);                                    // {anchor, positive} texts
//   auto scores = t.evaluate(queries, corpus, relevant);
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "ftune/bert/tasks.hpp"
#include "ftune/heads/pooling.hpp"
#include "ftune/io/sentence_transformers.hpp"
#include "ftune/loss.hpp"
#include "ftune/metrics/retrieval.hpp"
#include "ftune/optim.hpp"
#include "ftune/schedule.hpp"
#include "ftune/text/bert.hpp"
#include "ftune/train/trainer.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// One training example of an embedding model: an anchor and a positive text (with
/// MultipleNegativesRankingLoss, optionally a hard negative), or two texts and their similarity
/// score (CosineSimilarityLoss).
struct text_pair {
    std::string anchor;    ///< the query, or the first text
    std::string positive;  ///< its match, or the second text
    std::string negative;  ///< a hard negative for the anchor ("" : none; all or none of a batch)
    float score = 0;       ///< CosineSimilarityLoss: the target cosine similarity
};

/// The loss of embedding fine-tuning.
enum class embedding_loss {
    multiple_negatives_ranking,  ///< in-batch negatives, cosine x scale (sentence-transformers')
    cosine_similarity,           ///< (cos(a, b) − score)² (CosineSimilarityLoss)
};

/// Fine-tunes an encoder's sentence embeddings (see the file comment). The options are the
/// classification trainer's (epochs, batch_size in pairs, lr, weight_decay, warmup_ratio,
/// schedule, max_grad_norm, seed, progress, log_every); the other fields are not read.
template <class Model = bert::model<>>
class embedding_trainer {
  public:
    using T = typename Model::value_type;   ///< scalar type
    Model& model;                           ///< the encoder trained in place
    const text::bert_tokenizer& tokenizer;  ///< its tokenizer
    io::sentence_config config;             ///< pooling, normalization, longest input
    train::options options;                 ///< hyper-parameters
    embedding_loss loss = embedding_loss::multiple_negatives_ranking;  ///< the loss
    double scale = 20.0;  ///< MultipleNegativesRankingLoss: the similarities' factor
    /// Most tokens of a text, longer ones cut (0: the configuration's max_seq_length, else 512);
    /// at most the model's positions (hf_model::model_max_length).
    std::size_t max_length = 0;

    /// A trainer of `m`'s embeddings. The encoder's own pooler (BERT's first-token dense layer)
    /// is left out of training, as sentence-transformers leaves it unused.
    embedding_trainer(Model& m, const text::bert_tokenizer& tok, io::sentence_config c,
                      train::options o)
        : model(m), tokenizer(tok), config(std::move(c)), options(std::move(o)) {
        model.visit_parameters("", [](parameter_ref<T> p) {
            if (p.name.find("pooler.") != std::string::npos) p.set_trainable(false);
        });
    }

    /// The result of fit.
    struct result {
        std::size_t steps = 0;  ///< optimizer steps taken
        double loss = 0;        ///< the mean loss of the last epoch
        double seconds = 0;     ///< wall time
    };

    /// Trains on `pairs`, shuffled each epoch (seed, epoch), batch_size pairs a step.
    result fit(const std::vector<text_pair>& pairs) {
        if (pairs.empty())
            throw error(errc::invalid_argument, "embedding_trainer::fit", "no pairs");
        const auto t0 = std::chrono::steady_clock::now();
        const std::size_t B = options.batch_size;
        const std::size_t per_epoch = (pairs.size() + B - 1) / B,
                          total = per_epoch * options.epochs;
        auto params = optim::parameters_of(model);
        optim::adamw<T> opt({.lr = options.lr, .weight_decay = options.weight_decay});
        const auto sched =
            schedule::make(options.schedule, options.lr,
                           schedule::warmup_steps(options.warmup_ratio, total), total);
        context ctx{.mode = mode::train, .rng = generator(options.seed)};
        model.zero_grad();
        result r;
        std::vector<std::size_t> order(pairs.size());
        for (std::size_t epoch = 0; epoch < options.epochs; ++epoch) {
            std::iota(order.begin(), order.end(), std::size_t(0));
            ftune::shuffle(std::span<std::size_t>(order),
                           random_stream(options.seed, 2000 + epoch));
            double sum = 0;
            for (std::size_t b0 = 0; b0 < order.size(); b0 += B) {
                const std::span<const std::size_t> which(order.data() + b0,
                                                         std::min(B, order.size() - b0));
                const double l = train_batch(ctx, pairs, which);
                if (!std::isfinite(l))
                    throw error(errc::invalid_argument,
                                ftune::detail::cat("embedding training step ", r.steps + 1),
                                "the loss is not finite (diverged: lower the learning rate)");
                const std::span<const parameter_ref<T>> ps(params);
                opt.set_lr(sched.lr_at(r.steps));
                opt.step(ps, options.max_grad_norm > 0  // clipped as the gradients are read
                                 ? optim::clip_scale(ps, options.max_grad_norm).scale
                                 : 1.0);
                model.zero_grad();
                ++r.steps, sum += l;
                if (options.progress && options.log_every &&
                    (r.steps % options.log_every == 0 || r.steps == total))
                    *options.progress << "step " << r.steps << "/" << total << " loss " << l
                                      << "\n";
            }
            r.loss = sum / double(per_epoch);
        }
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return r;
    }

    /// The loss of `pairs` as one batch, its gradient added to the model's (no optimizer
    /// step); without dropout, an eval-mode forward.
    double gradients(const std::vector<text_pair>& pairs, bool dropout = true) {
        std::vector<std::size_t> all(pairs.size());
        std::iota(all.begin(), all.end(), std::size_t(0));
        context ctx{.mode = dropout ? mode::train : mode::eval, .rng = generator(options.seed)};
        return train_batch(ctx, pairs, all);
    }

    /// The embeddings of texts (rows of dimension(), one after another) in eval mode, `batch`
    /// texts a forward (sorted by length first: less padding), L2-normalized when `normalize`.
    std::vector<float> embed(const std::vector<std::string>& texts, bool normalize,
                             std::size_t batch = 64) {
        const std::size_t D = dimension();
        std::vector<float> out(texts.size() * D);
        std::vector<text::encoding> enc;
        enc.reserve(texts.size());
        for (const auto& t : texts) enc.push_back(encode(t));
        std::vector<std::size_t> order(texts.size());
        std::iota(order.begin(), order.end(), std::size_t(0));
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return enc[a].ids.size() > enc[b].ids.size();
        });
        context ctx;  // eval mode
        std::vector<float> pooled;
        for (std::size_t b0 = 0; b0 < order.size(); b0 += batch) {
            const std::span<const std::size_t> which(order.data() + b0,
                                                     std::min(batch, order.size() - b0));
            const auto h = forward(ctx, enc, which);
            pooled.assign(which.size() * D, 0.0f);
            heads::sentence_pool(h, lengths_, config.pooling, pooled);
            for (std::size_t i = 0; i < which.size(); ++i)
                std::copy_n(pooled.begin() + std::ptrdiff_t(i * D), D,
                            out.begin() + std::ptrdiff_t(which[i] * D));
        }
        if (normalize) heads::l2_normalize(out, D);
        return out;
    }

    /// Retrieval metrics of `queries` against `corpus` by cosine similarity
    /// (relevant[q]: the corpus indices relevant to query q), as sentence-transformers'
    /// InformationRetrievalEvaluator scores them.
    metrics::retrieval_scores evaluate(const std::vector<std::string>& queries,
                                       const std::vector<std::string>& corpus,
                                       const std::vector<std::vector<std::size_t>>& relevant,
                                       const metrics::retrieval_cutoffs& ks = {}) {
        return metrics::retrieval_metrics(rank(queries, corpus, ks.largest()), relevant, ks);
    }

    /// The corpus indices of each query best first by cosine similarity, `keep` of them.
    std::vector<std::vector<std::size_t>> rank(const std::vector<std::string>& queries,
                                               const std::vector<std::string>& corpus,
                                               std::size_t keep) {
        const std::size_t D = dimension(), Q = queries.size(), N = corpus.size();
        const auto q = embed(queries, true), c = embed(corpus, true);
        std::vector<float> scores(Q * N);  // (Q, N) = q cᵀ
        ops::matmul<transpose::no, transpose::yes>(matrix_view<const float>(q.data(), Q, D),
                                                   matrix_view<const float>(c.data(), N, D),
                                                   matrix_view<float>(scores.data(), Q, N));
        return metrics::rank_corpus(scores, Q, N, keep);
    }

    /// Width of an embedding (pooling modes x hidden size).
    std::size_t dimension() const { return config.pooling.size() * model.backbone.hidden_size(); }

  private:
    text::encoding encode(const std::string& text) const {
        const std::size_t cut = max_length              ? max_length
                                : config.max_seq_length ? config.max_seq_length
                                                        : 512;
        return tokenizer.encode(text, std::nullopt, cut);
    }

    // One padded forward of the encodings `which`: hidden states (n, T, C); lengths_ filled.
    auto forward(context& ctx, std::vector<text::encoding>& enc,
                 std::span<const std::size_t> which) {
        const std::size_t n = which.size();
        std::size_t Tn = 0;
        lengths_.clear();
        for (const auto i : which)
            lengths_.push_back(enc[i].ids.size()), Tn = std::max(Tn, lengths_.back());
        ids_.assign(n * Tn, tokenizer.pad_id()), mask_.assign(n * Tn, 0), types_.assign(n * Tn, 0);
        for (std::size_t r = 0; r < n; ++r) {
            const auto& e = enc[which[r]];
            std::copy(e.ids.begin(), e.ids.end(), ids_.begin() + std::ptrdiff_t(r * Tn));
            std::copy(e.type_ids.begin(), e.type_ids.end(),
                      types_.begin() + std::ptrdiff_t(r * Tn));
            std::fill_n(mask_.begin() + std::ptrdiff_t(r * Tn), e.ids.size(), 1);
        }
        return model.forward(ctx, {ids_.data(), n, Tn}, {mask_.data(), n, Tn},
                             {types_.data(), n, Tn});  // (n, T, C)
    }

    // Forward, loss and backward of the pairs `which` (their texts in one batch: anchors,
    // positives, negatives); returns the loss.
    double train_batch(context& ctx, const std::vector<text_pair>& pairs,
                       std::span<const std::size_t> which) {
        const std::size_t B = which.size(), D = dimension();
        const bool negatives = !pairs[which[0]].negative.empty();
        std::vector<text::encoding> enc;
        for (const auto i : which) enc.push_back(encode(pairs[i].anchor));
        for (const auto i : which) enc.push_back(encode(pairs[i].positive));
        if (negatives && loss == embedding_loss::multiple_negatives_ranking)
            for (const auto i : which) {
                if (pairs[i].negative.empty())
                    throw error(errc::invalid_argument, "embedding_trainer",
                                "a batch mixes pairs with and without a hard negative: give "
                                "every pair one, or none");
                enc.push_back(encode(pairs[i].negative));
            }
        std::vector<std::size_t> all(enc.size());
        std::iota(all.begin(), all.end(), std::size_t(0));
        ctx.dropout_examples = all.size(), ctx.first_example = 0;
        const auto h = forward(ctx, enc, all);  // (n, T, C)
        const std::size_t n = all.size();
        std::vector<float> e(n * D), de(n * D, 0.0f);  // pooled embeddings and their gradient
        heads::sentence_pool(h, lengths_, config.pooling, e);
        const matrix_view<const float> anchors(e.data(), B, D), rest(e.data() + B * D, n - B, D);
        double l = 0;
        if (loss == embedding_loss::multiple_negatives_ranking) {
            mnrl_.scale = scale;
            l = double(mnrl_.forward(anchors, rest));
            mnrl_.backward({de.data(), B, D}, {de.data() + B * D, n - B, D});
        } else {
            std::vector<float> y;
            for (const auto i : which) y.push_back(pairs[i].score);
            l = double(cosine_.forward(anchors, {e.data() + B * D, B, D}, y));
            cosine_.backward({de.data(), B, D}, {de.data() + B * D, B, D});
        }
        dh_.assign(h.size(), T(0));
        heads::sentence_pool_backward(h, lengths_, config.pooling, de,
                                      view<T, shape<dynamic, dynamic, dynamic>>(
                                          dh_.data(), h.extent(0), h.extent(1), h.extent(2)));
        model.backward(ctx, typename Model::output_view(dh_.data(), h.shape()));
        return l;
    }

    loss::multiple_negatives_ranking<float> mnrl_;
    loss::cosine_similarity_mse<float> cosine_;
    std::vector<std::size_t> lengths_;
    std::vector<token_id> ids_, mask_, types_;
    std::vector<T> dh_;
};

}  // namespace train
FTUNE_NAMESPACE_END
