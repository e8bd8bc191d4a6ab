// Serving a fine-tuned text classifier from many threads: serve::text_classifier's predict is
// const and thread-safe.
//
// A model's forward keeps its activations in the model (for backward), so one model object can
// run one forward at a time. text_classifier holds the loaded model as a prototype that is never
// run, and a pool of replicas (copies with the weights packed for inference): a call takes a
// free replica, or copies the prototype when every replica is busy, and gives it back after.
// Memory is the weights times the number of calls that ever ran at the same time; the
// tokenizer is shared (its const functions are thread-safe).
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
#include <string>
#include <string_view>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/context.hpp"
#include "ftune/core/error.hpp"
#include "ftune/io/hf.hpp"
#include "ftune/models/bert_tasks.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// A class prediction for one text.
struct prediction {
    std::size_t label = 0;              ///< the most likely class
    std::string name;                   ///< its name (id2label)
    std::vector<double> probabilities;  ///< softmax of the logits (sigmoid for multi-label)
};

/// Thread-safe, const inference of a sequence classifier (see the file comment).
template <class Model = bert::sequence_classifier<>>
class text_classifier {
  public:
    /// Takes a loaded model (it needs its tokenizer); inputs are cut to max_length tokens
    /// (0: the model's maximum).
    explicit text_classifier(io::hf_model<Model>&& m, std::size_t max_length = 0)
        : prototype_(std::move(m.model)),
          labels_(std::move(m.config.id2label)),
          multi_label_(m.config.problem_type == "multi_label_classification") {
        if (!m.tokenizer)
            throw error(errc::invalid_argument, "serve::text_classifier",
                        "the model directory has no vocab.txt or tokenizer.json");
        tok_.emplace(std::move(*m.tokenizer));
        max_length_ = max_length ? std::min(max_length, m.model_max_length) : m.model_max_length;
        for (std::size_t i = labels_.size(); i < prototype_.num_labels(); ++i)
            labels_.push_back("LABEL_" + std::to_string(i));
        prototype_.prepare_inference();  // copies inherit the packed weights
    }

    /// The class of a text (or of a pair of texts).
    prediction predict(std::string_view text,
                       std::optional<std::string_view> text_pair = {}) const {
        const auto e = tok_->encode(text, text_pair, max_length_);
        const std::size_t T = e.ids.size();
        auto r = acquire();
        const auto logits =
            r->model.forward(r->ctx, {e.ids.data(), 1, T}, {e.attention_mask.data(), 1, T},
                             {e.type_ids.data(), 1, T});  // (1, L)
        prediction p;
        const std::size_t L = logits.extent(1);
        p.probabilities.resize(L);
        double mx = logits(0, 0), sum = 0;
        for (std::size_t c = 0; c < L; ++c) mx = std::max(mx, double(logits(0, c)));
        for (std::size_t c = 0; c < L; ++c) {
            const double z = logits(0, c);
            p.probabilities[c] = multi_label_ ? 1 / (1 + std::exp(-z)) : std::exp(z - mx);
            sum += p.probabilities[c];
            if (z > logits(0, p.label)) p.label = c;
        }
        release(std::move(r));
        if (!multi_label_)
            for (auto& v : p.probabilities) v /= sum;
        p.name = labels_[p.label];
        return p;
    }

    /// Class names, by id.
    const std::vector<std::string>& labels() const noexcept { return labels_; }
    /// The tokenizer.
    const text::bert_tokenizer& tokenizer() const noexcept { return *tok_; }
    /// Model copies made so far (the most calls that ran at once).
    std::size_t replicas() const {
        std::lock_guard lock(mu_);
        return made_;
    }

  private:
    struct replica {
        Model model;  // a copy of the prototype
        context ctx;  // eval mode: no dropout
    };
    std::unique_ptr<replica> acquire() const {
        {
            std::lock_guard lock(mu_);
            if (!free_.empty()) {
                auto r = std::move(free_.back());
                free_.pop_back();
                return r;
            }
            ++made_;
        }
        return std::make_unique<replica>(replica{prototype_, context{}});  // reads only
    }
    void release(std::unique_ptr<replica> r) const {
        std::lock_guard lock(mu_);
        free_.push_back(std::move(r));
    }

    Model prototype_;                                     // never run: only copied
    std::optional<text::bert_tokenizer> tok_;             // shared, const
    std::vector<std::string> labels_;                     // id2label
    bool multi_label_ = false;                            // sigmoid instead of softmax
    std::size_t max_length_ = 0;                          // tokens per input
    mutable std::mutex mu_;                               // guards free_ and made_
    mutable std::vector<std::unique_ptr<replica>> free_;  // idle replicas
    mutable std::size_t made_ = 0;                        // replicas made
};

}  // namespace serve
FTUNE_NAMESPACE_END
