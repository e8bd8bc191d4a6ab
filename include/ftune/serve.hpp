// Serving a fine-tuned text classifier, or a sentence-embedding encoder, from many threads:
// serve::text_classifier's predict and serve::text_embedder's embed are const and thread-safe.
//
// A model's forward keeps its activations in the model (for backward), so one model object can
// run one forward at a time. serve::replica_pool holds the loaded model, without gradients, as a
// prototype that is never run, and a pool of replicas: a call takes a free replica, or makes one
// when every replica is busy, and gives it back after. Replicas share the prototype's weights
// (share_weights): their parameter values alias the prototype's, they have no gradients, and the
// weights packed by prepare_inference() are shared, so a replica owns only its activations
// (examples/deployment.cpp, all-MiniLM-L6-v2, 8 threads: 176 MB resident, against 2,051 MB
// when every replica copied the model with its gradients). The tokenizer is shared too (its const
// functions are thread-safe).
//
//   ftune::serve::text_classifier<>
//   clf(ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir)); auto p = clf.predict("the
//   plot is thin");  // p.label, p.name, p.probabilities
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/context.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/io/hf.hpp"
#include "ftune/io/sentence_transformers.hpp"
#include "ftune/bert/tasks.hpp"
#include "ftune/heads/pooling.hpp"
#include "ftune/serve/batcher.hpp"
#include "ftune/serve/replicas.hpp"
#include "ftune/serve/repository.hpp"
#include "ftune/serve/tasks.hpp"
#include "ftune/serve/tei.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// A class prediction for one text.
struct prediction {
    std::size_t label = 0;              ///< the most likely class
    std::string name;                   ///< its name (id2label)
    std::vector<double> probabilities;  ///< softmax of the logits (sigmoid for multi-label;
                                        ///< the values for regression): the head's decode()
    std::vector<double> logits;         ///< the head's outputs before softmax (TEI's raw scores)
};

/// The L logits of one row as doubles (prediction::logits).
template <class T>
std::vector<double> logit_row(const T* row, std::size_t L) {
    return std::vector<double>(row, row + L);
}

/// Thread-safe, const inference of a sequence classifier (see the file comment).
template <class Model = bert::sequence_classifier<>>
class text_classifier {
  public:
    /// Takes a loaded model (it needs its tokenizer); inputs are cut to max_length tokens
    /// (0: the model's maximum); its products run in precision p (bf16: weights rounded once).
    explicit text_classifier(io::hf_model<Model>&& m, std::size_t max_length = 0,
                             precision p = precision::fp32)
        : tok_(take_tokenizer(m)),
          labels_(std::move(m.config.id2label)),
          pool_(std::move(m.model), p) {
        max_length_ = max_length ? std::min(max_length, m.model_max_length) : m.model_max_length;
        for (std::size_t i = labels_.size(); i < pool_.model().num_labels(); ++i)
            labels_.push_back("LABEL_" + std::to_string(i));
    }

    /// The class of a text (or of a pair of texts).
    prediction predict(std::string_view text,
                       std::optional<std::string_view> text_pair = {}) const {
        const auto e = tok_.encode(text, text_pair, max_length_);
        const std::size_t T = e.ids.size();
        const auto d = pool_.run([&](Model& model, context& ctx) {
            const auto logits =
                model.forward(ctx, {e.ids.data(), 1, T}, {e.attention_mask.data(), 1, T},
                              {e.type_ids.data(), 1, T});  // (1, L)
            return std::pair(model.head.decode(logits.data()),
                             logit_row(logits.data(), logits.extent(1)));
        });
        prediction p{d.first.label, {}, d.first.scores, d.second};
        p.name = labels_[p.label];
        return p;
    }

    /// The classes of many inputs in one forward, on one replica: what a dynamic batcher runs.
    /// The inputs go in as a ragged batch, one after another without padding
    /// (forward_packed: no padded position is computed, attention stays within each input);
    /// a model without that path runs them padded to the longest, padded keys masked. Either
    /// way each prediction is predict()'s for that input, up to the order of float sums.
    std::vector<prediction> predict_batch(std::span<const text_input> inputs) const {
        const std::size_t B = inputs.size();
        if (B == 0) return {};
        std::vector<text::encoding> enc;
        enc.reserve(B);
        std::size_t T = 0, N = 0;
        std::vector<std::size_t> offsets{0};  // ragged: input b at offsets[b] .. offsets[b + 1]
        for (const auto& in : inputs) {
            enc.push_back(tok_.encode(
                in.text, in.pair ? std::optional<std::string_view>(*in.pair) : std::nullopt,
                max_length_));
            T = std::max(T, enc.back().ids.size());
            offsets.push_back(N += enc.back().ids.size());
        }
        constexpr bool ragged = requires(Model & m, context & c, std::span<const std::size_t> o) {
            m.forward_packed(c, {}, {}, o);
        };
        const std::size_t rows = ragged ? 1 : B, cols = ragged ? N : T;
        std::vector<std::int32_t> ids(rows * cols), mask(rows * cols), types(rows * cols);
        for (std::size_t b = 0; b < B; ++b) {
            if (!ragged) tok_.pad(enc[b], T);
            const std::size_t at = ragged ? offsets[b] : b * T;  // (1, N) or (B, T)
            std::copy(enc[b].ids.begin(), enc[b].ids.end(), ids.begin() + at);
            std::copy(enc[b].attention_mask.begin(), enc[b].attention_mask.end(),
                      mask.begin() + at);
            std::copy(enc[b].type_ids.begin(), enc[b].type_ids.end(), types.begin() + at);
        }
        return pool_.run([&](Model& model, context& ctx) {
            const auto logits = [&] {  // (B, L)
                if constexpr (ragged)
                    return model.forward_packed(ctx, {ids.data(), 1, N}, {types.data(), 1, N},
                                                offsets);
                else
                    return model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T},
                                         {types.data(), B, T});
            }();
            const std::size_t L = logits.extent(1);
            std::vector<prediction> out;
            out.reserve(B);
            for (std::size_t b = 0; b < B; ++b) {
                const auto d = model.head.decode(logits.data() + b * L);
                out.push_back(
                    {d.label, labels_[d.label], d.scores, logit_row(logits.data() + b * L, L)});
            }
            return out;
        });
    }

    /// Class names, by id.
    const std::vector<std::string>& labels() const noexcept { return labels_; }
    /// Most tokens of an input (longer ones are cut).
    std::size_t max_length() const noexcept { return max_length_; }
    /// The tokenizer.
    const text::bert_tokenizer& tokenizer() const noexcept { return tok_; }
    /// Replicas made so far (the most calls that ran at once).
    std::size_t replicas() const { return pool_.replicas(); }

  private:
    static text::bert_tokenizer take_tokenizer(io::hf_model<Model>& m) {
        if (!m.tokenizer)
            throw error(errc::invalid_argument, "serve::text_classifier",
                        "the model directory has no vocab.txt or tokenizer.json");
        return std::move(*m.tokenizer);
    }

    text::bert_tokenizer tok_;         // shared, const
    std::vector<std::string> labels_;  // id2label
    std::size_t max_length_ = 0;       // tokens per input
    replica_pool<Model> pool_;         // the weights and the replicas running them
};

/// Thread-safe, const sentence embeddings of an encoder, as sentence-transformers' encode()
/// computes them: the hidden states of each text pooled by the model directory's Pooling module
/// (heads::sentence_pool; the mean without modules.json), normalized when a Normalize module
/// follows (or as asked), inputs cut to sentence_bert_config.json's max_seq_length.
///
///   ftune::serve::text_embedder<> e(ftune::io::load_hf<ftune::bert::model<>>(dir),
///                                   ftune::io::read_sentence_config(dir));
///   const auto v = e.embed_batch(std::vector<std::string_view>{"a query", "a document"});
template <class Model = bert::model<>>
class text_embedder {
  public:
    /// Takes a loaded encoder (it needs its tokenizer) and its sentence-transformers
    /// configuration; inputs are cut to max_length tokens (0: the configuration's, else the
    /// model's maximum); its products run in precision p (bf16: weights rounded once).
    text_embedder(io::hf_model<Model>&& m, io::sentence_config c, std::size_t max_length = 0,
                  precision p = precision::fp32)
        : config_(std::move(c)),
          tok_(take_tokenizer(m)),
          hidden_(m.config.model.hidden_size),
          pool_(std::move(m.model), p) {
        if (config_.dimension && config_.dimension != hidden_)
            throw error(errc::shape_mismatch, "serve::text_embedder",
                        ftune::detail::cat("the Pooling module takes ", config_.dimension,
                                           " features but the encoder gives ", hidden_));
        max_length_ = m.model_max_length;
        for (const std::size_t cut : {config_.max_seq_length, max_length})
            if (cut) max_length_ = std::min(max_length_, cut);
    }

    /// Width of an embedding (pooling modes x hidden size).
    std::size_t dimension() const noexcept { return config_.pooling.size() * hidden_; }
    /// The embeddings of texts, one vector each, from one padded forward; L2-normalized when
    /// `normalize` (default: when the model has a Normalize module).
    std::vector<std::vector<float>> embed_batch(std::span<const std::string_view> texts,
                                                std::optional<bool> normalize = {}) const {
        const std::size_t B = texts.size();
        if (B == 0) return {};
        std::vector<text::encoding> enc;
        enc.reserve(B);
        std::vector<std::size_t> lengths;
        std::size_t T = 0;
        for (const auto t : texts) {
            enc.push_back(tok_.encode(t, std::nullopt, max_length_));
            lengths.push_back(enc.back().ids.size());
            T = std::max(T, lengths.back());
        }
        std::vector<std::int32_t> ids(B * T), mask(B * T), types(B * T);  // (B, T)
        for (std::size_t b = 0; b < B; ++b) {
            tok_.pad(enc[b], T);
            std::copy(enc[b].ids.begin(), enc[b].ids.end(), ids.begin() + b * T);
            std::copy(enc[b].attention_mask.begin(), enc[b].attention_mask.end(),
                      mask.begin() + b * T);
            std::copy(enc[b].type_ids.begin(), enc[b].type_ids.end(), types.begin() + b * T);
        }
        const std::size_t D = dimension();
        std::vector<float> flat(B * D);  // (B, D)
        pool_.run([&](Model& model, context& ctx) {
            const auto h = model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T},
                                         {types.data(), B, T});  // (B, T, C)
            heads::sentence_pool(h, lengths, config_.pooling, flat);
            return 0;
        });
        if (normalize.value_or(config_.normalize)) heads::l2_normalize(flat, D);
        std::vector<std::vector<float>> out(B);
        for (std::size_t b = 0; b < B; ++b)
            out[b].assign(flat.begin() + std::ptrdiff_t(b * D),
                          flat.begin() + std::ptrdiff_t((b + 1) * D));
        return out;
    }
    /// The embedding of one text (embed_batch of one).
    std::vector<float> embed(std::string_view text, std::optional<bool> normalize = {}) const {
        return std::move(embed_batch(std::span<const std::string_view>(&text, 1), normalize)[0]);
    }
    /// The sentence-transformers configuration.
    const io::sentence_config& config() const noexcept { return config_; }
    /// Most tokens of an input (longer ones are cut).
    std::size_t max_length() const noexcept { return max_length_; }
    /// The tokenizer.
    const text::bert_tokenizer& tokenizer() const noexcept { return tok_; }

  private:
    static text::bert_tokenizer take_tokenizer(io::hf_model<Model>& m) {
        if (!m.tokenizer)
            throw error(errc::invalid_argument, "serve::text_embedder",
                        "the model directory has no vocab.txt or tokenizer.json");
        return std::move(*m.tokenizer);
    }

    io::sentence_config config_;  // pooling, normalization, longest input
    text::bert_tokenizer tok_;    // shared, const
    std::size_t hidden_ = 0;      // the encoder's width
    std::size_t max_length_ = 0;  // tokens per input
    replica_pool<Model> pool_;    // the weights and the replicas running them
};

}  // namespace serve
FTUNE_NAMESPACE_END
