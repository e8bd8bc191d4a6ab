// serve::replica_pool: inference replicas of one model sharing its weights, for const,
// thread-safe serving (serve::text_classifier, text_embedder, token_tagger, question_answerer).
// A model's forward keeps its activations in the model, so one model object runs one forward at
// a time; the pool keeps the loaded model, without gradients, as a prototype that is never run,
// and gives each call a replica whose parameters alias the prototype's weights (and its weights
// packed by prepare_inference()), so a replica owns only its activations.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/context.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/core/types.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// Where each parameter value of `model` is stored, in visit order (for share_weights). The
/// visit keeps the weights packed by prepare_inference().
template <class Model>
std::vector<std::span<typename Model::value_type>> parameter_values(Model& model) {
    using T = typename Model::value_type;
    struct collect : keeps_values {
        std::vector<std::span<T>>* out;
        void operator()(parameter_ref<T> p) const { out->push_back(p.value); }
    };
    std::vector<std::span<T>> values;
    model.visit_parameters("", collect{{}, &values});
    return values;
}

/// Frees every gradient of a model that will only run inference, and freezes it (the weights
/// packed by prepare_inference() are kept).
template <class Model>
void free_gradients(Model& model) {
    using T = typename Model::value_type;
    struct release : keeps_values {
        void operator()(parameter_ref<T> p) const { p.inference_only(); }
    };
    model.visit_parameters("", release{});
}

/// Makes `replica`, a copy of the model that `values` came from (parameter_values), an inference
/// replica sharing that model's weights: each parameter value becomes an alias of the model's,
/// gradients are freed, and parameters are frozen. The model must outlive the replica (and its
/// copies, which share the same weights without copying them) and keep its weights unchanged;
/// replicas only run eval-mode forwards. When the model was prepared for inference before the
/// copy, the replica shares its packed weights too.
template <class Model>
void share_weights(Model& replica,
                   const std::vector<std::span<typename Model::value_type>>& values) {
    using T = typename Model::value_type;
    struct share : keeps_values {
        const std::vector<std::span<T>>* values;
        std::size_t* next;
        void operator()(parameter_ref<T> p) const {
            if (*next >= values->size() || (*values)[*next].size() != p.value.size())
                throw error(errc::shape_mismatch, p.name,
                            "share_weights: the replica is not a copy of the model the values "
                            "came from");
            p.inference_only((*values)[(*next)++].data());
        }
    };
    std::size_t next = 0;
    replica.visit_parameters("", share{{}, &values, &next});
    if (next != values.size())
        throw error(errc::shape_mismatch, "share_weights",
                    "the replica has fewer parameters than the model the values came from");
}

/// Inference replicas of one model sharing its weights (see the file comment): run(f) calls
/// f(model, context) on a free replica, making one when every replica is busy. Thread-safe.
template <class Model>
class replica_pool {
  public:
    /// Takes the model; prepares it for inference in precision p and frees its gradients.
    explicit replica_pool(Model&& model, precision p = precision::fp32)
        : prototype_(std::move(model)) {
        prototype_.prepare_inference(p);  // copies share the packed weights
        free_gradients(prototype_);
        shared_.emplace(prototype_);  // copies the weights once; replicas are copies of shared_
        share_weights(*shared_, parameter_values(prototype_));
    }

    /// f(Model&, context&) on a replica of its own; returns what f returns.
    template <class F>
    auto run(F&& f) const {
        auto r = acquire();
        try {
            auto out = f(r->model, r->ctx);
            release(std::move(r));  // (r is empty from here on, even if release throws)
            return out;
        } catch (...) {
            if (r) release(std::move(r));
            throw;
        }
    }
    /// The model (never run: for its configuration).
    const Model& model() const noexcept { return prototype_; }
    /// Replicas made so far (the most calls that ran at once).
    std::size_t replicas() const {
        std::lock_guard lock(mu_);
        return made_;
    }

  private:
    struct replica {
        Model model;  // a copy of the prototype sharing its weights
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
        return std::make_unique<replica>(replica{*shared_, context{}});  // copies no weights
    }
    void release(std::unique_ptr<replica> r) const {
        std::lock_guard lock(mu_);
        free_.push_back(std::move(r));
    }

    Model prototype_;                                     // the weights; never run
    std::optional<Model> shared_;                         // aliases them; never run, copied
    mutable std::mutex mu_;                               // guards free_ and made_
    mutable std::vector<std::unique_ptr<replica>> free_;  // idle replicas
    mutable std::size_t made_ = 0;                        // replicas made
};

}  // namespace serve
FTUNE_NAMESPACE_END
