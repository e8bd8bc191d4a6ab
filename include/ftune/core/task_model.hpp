// task_model<Backbone, Head>: a backbone (a model family's encoder or decoder) with a task head
// on top, as Transformers' <Family>For<Task> classes: the architecture name, the parameter names
// and the forward/backward come from the two parts. The head also owns its task: the loss, the
// evaluation report, the decoding of predictions (heads/*.hpp).
#pragma once

#include <array>
#include <string>
#include <span>
#include <string_view>
#include <utility>

#include "ftune/core/concepts.hpp"
#include "ftune/core/context.hpp"
#include "ftune/core/device.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"

FTUNE_NAMESPACE_BEGIN

namespace detail {
/// A + B as one constexpr string (architecture names: "Bert" + "ForSequenceClassification").
template <const std::string_view& A, const std::string_view& B>
struct joined_name {
    static constexpr auto chars = [] {
        std::array<char, A.size() + B.size()> s{};
        for (std::size_t i = 0; i < A.size(); ++i) s[i] = A[i];
        for (std::size_t i = 0; i < B.size(); ++i) s[A.size() + i] = B[i];
        return s;
    }();
    static constexpr std::string_view value{chars.data(), chars.size()};  ///< A + B
};
}  // namespace detail

template <class Backbone, class Head>
class task_model;

namespace detail {
/// task_model<Backbone, Head> on device D: `type` when both parts have a form there, else
/// nothing (so has_device_form says no instead of failing the build).
template <class Backbone, class Head, class D>
struct task_model_on {};
/// Both parts have a form on D.
template <class Backbone, class Head, class D>
requires has_device_form<Backbone, D> && has_device_form<Head, D>
struct task_model_on<Backbone, Head, D> {
    using type = task_model<on_device_t<Backbone, D>, on_device_t<Head, D>>;  ///< the twin
};
}  // namespace detail

/// A backbone with a head. The backbone supplies ids -> hidden states (B, T, C), its family's
/// names (architecture_prefix "Bert", base_model_prefix "bert") and config type; the head
/// supplies the outputs, its parameters' names and its task (heads::sequence_classification,
/// token_classification, question_answering, masked_lm, base_model).
template <class Backbone, class Head>
class task_model {
    static_assert(head<Head>, "ftune: task_model's Head is a head (core/concepts.hpp)");

  public:
    using value_type = typename Backbone::value_type;    ///< scalar type
    using backbone_type = Backbone;                      ///< the family's encoder
    using head_type = Head;                              ///< the task head
    using config_type = typename Backbone::config_type;  ///< what both are built from
    using ids_view = typename Backbone::ids_view;        ///< (B, T) token ids
    using input_view = ids_view;  ///< what forward takes first (as a layer's input)
    using output_view = typename Head::output_view;  ///< the head's outputs
    /// The architecture name in config.json ("BertForSequenceClassification").
    /// The family may name a head's class otherwise (Backbone::head_architecture<Head>: GPT-2's
    /// LM head is GPT2LMHeadModel).
    static constexpr std::string_view architecture = [] {
        if constexpr (requires { Backbone::template head_architecture<Head>::value; })
            return Backbone::template head_architecture<Head>::value;
        else
            return detail::joined_name<Backbone::architecture_prefix,
                                       Head::architecture_suffix>::value;
    }();

    /// The same model with its tensors on device D (when the backbone and the head have a form
    /// there): what train::trainer builds to train on a GPU (docs/cuda.md).
    template <device_tag D>
    using on_device = typename detail::task_model_on<Backbone, Head, D>::type;

    Backbone backbone;  ///< under "<base_model_prefix>." (unprefixed for a base model)
    Head head;          ///< the task's layers and semantics

    /// A zero-initialized model of configuration c.
    explicit task_model(const config_type& c) : backbone(c), head(c), config_(c) {}

    /// The configuration the model was built from (a resized token table updates its vocabulary
    /// size: io::resize_token_embeddings): what builds its twin on another device.
    const config_type& config() const noexcept { return config_; }
    /// The configuration, for code that changes the model's shape after construction.
    config_type& config() noexcept { return config_; }

    /// The head's outputs for ids; attention_mask (B, T) holds 1 for tokens and 0 for padding
    /// (empty: all tokens), token_types may be empty. A head that reads position 0 only gets
    /// the last layer computed for that position alone: on a model prepared for inference, in
    /// eval mode, the same outputs bit for bit; otherwise (training) up to the order of float
    /// sums, with the gradients backward() gives unchanged (on a host device; a GPU model keeps
    /// the full last layer outside prepared inference).
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        if constexpr (Head::first_token_only)
            if (host_device<typename Backbone::device_type> ||
                (!ctx.training() && backbone.inference_prepared()))
                return head.forward(
                    ctx, backbone,
                    backbone.forward_first_tokens(ctx, ids, attention_mask, token_types));
        const auto h = backbone.forward(ctx, ids, attention_mask, token_types);
        if constexpr (requires { head.forward(ctx, backbone, h, attention_mask, ids); })
            return head.forward(ctx, backbone, h, attention_mask, ids);  // finds marker tokens
        else if constexpr (requires { head.forward(ctx, backbone, h, attention_mask); })
            return head.forward(ctx, backbone, h, attention_mask);  // reads the last tokens
        else
            return head.forward(ctx, backbone, h);
    }

    /// The head's outputs (S, ...) for a ragged batch (a head that reads position 0 only, on a
    /// model prepared for inference, in eval mode): ids (1, N) and token_types (1, N, or empty)
    /// hold S sequences one after another without padding, sequence s at offsets[s] ..
    /// offsets[s + 1]. Each row is what forward() gives that sequence alone (up to the order of
    /// float sums); no padded position is computed (the backbone's
    /// forward_first_tokens_packed).
    output_view forward_packed(
        context& ctx, ids_view ids, ids_view token_types,
        std::span<const std::size_t> offsets) requires Head::first_token_only {
        return head.forward(ctx, backbone,
                            backbone.forward_first_tokens_packed(ctx, ids, token_types, offsets));
    }

    /// Generation (causal LM heads): the logits (B, V) after the last new token of each
    /// sequence, for the step's new tokens ids (B, steps) attending to the cached positions
    /// (backbone's forward_cached; attention_mask marks padding, empty: all tokens).
    template <class Cache>
    requires requires(Head& h, context& c, Backbone& b, typename Backbone::output_view x) {
        h.forward_last(c, b, x);
    }
    auto forward_cached(context& ctx, ids_view ids, Cache& cache, ids_view attention_mask = {}) {
        return head.forward_last(ctx, backbone,
                                 backbone.forward_cached(ctx, ids, cache, attention_mask));
    }

    /// Accumulates every trainable parameter's gradient from d outputs (and whatever else the
    /// head's backward takes: the base model's d pooled). Throws, before touching a gradient,
    /// after a prepared forward (which keeps nothing for backward).
    template <class... Extra>
    void backward(context& ctx, output_view d_out, Extra&&... extra) {
        if (backbone.kept_nothing_for_backward())
            throw no_backward_after_inference(std::string(architecture));
        const auto d = head.backward(ctx, backbone, d_out, std::forward<Extra>(extra)...);
        gradients_final(ctx, [&](auto f) { head.visit_parameters("", "", f); });
        backbone.backward(ctx, d);
    }

    /// Training step of a head that takes its loss from the hidden states without computing
    /// all its outputs (heads::causal_lm: the vocabulary logits a chunk of counted positions at
    /// a time): the forward of batch b (ids, mask, types as for forward), the head's loss, and
    /// every trainable parameter's gradient += scale * the loss's. Returns the loss.
    template <class Batch>
    requires requires(Head& h, context& c, Backbone& bb, typename Backbone::output_view x,
                      const Batch& b) {
        h.loss_backward(c, bb, x, b, value_type(1));
    }
    double loss_backward(context& ctx, const Batch& b, value_type scale) {
        require_host_memory<typename Backbone::device_type>();  // b's ids are host memory
        return loss_backward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T},
                             {b.types.data(), b.B, b.T}, b, scale);
    }
    /// The same with the batch's inputs already in the model's memory (ids, attention_mask and
    /// token_types (B, T) on its device: a twin's on a GPU); b gives the labels.
    template <class Batch>
    requires requires(Head& h, context& c, Backbone& bb, typename Backbone::output_view x,
                      const Batch& b) {
        h.loss_backward(c, bb, x, b, value_type(1));
    }
    double loss_backward(context& ctx, ids_view ids, ids_view attention_mask, ids_view token_types,
                         const Batch& b, value_type scale) {
        const auto h = backbone.forward(ctx, ids, attention_mask, token_types);
        if (backbone.kept_nothing_for_backward())
            throw no_backward_after_inference(std::string(architecture));
        const auto [loss, d_hidden] = head.loss_backward(ctx, backbone, h, b, scale);
        gradients_final(ctx, [&](auto f) { head.visit_parameters("", "", f); });
        backbone.backward(ctx, d_hidden);
        return loss;
    }

    /// Number of labels of the head.
    std::size_t num_labels() const requires(requires(const Head& h) { h.num_labels(); }) {
        return head.num_labels();
    }

    /// Packs the weights for low-latency inference (see the backbone's prepare_inference).
    void prepare_inference(precision p = precision::fp32) {
        backbone.prepare_inference(p);
        if constexpr (requires { head.prepare_inference(backbone, p); })
            head.prepare_inference(backbone, p);  // a head that reads the backbone's weights
        else
            head.prepare_inference(p);
    }
    /// Sets every gradient to zero.
    void zero_grad() {
        backbone.zero_grad();
        head.zero_grad();
    }
    /// Visits every parameter under Transformers' names, prefixed by `prefix`: the backbone's
    /// under base_model_prefix ("bert.embeddings...") unless the head is the base model, then
    /// the head's ("classifier.weight", "bert.pooler.dense.weight").
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        const std::string_view base = prefixed() ? Backbone::base_model_prefix : "";
        backbone.visit_parameters(base.empty() ? std::string(prefix) : join_name(prefix, base), f);
        head.visit_parameters(prefix, base, f);
    }

  private:
    config_type config_;  // what the model was built from
    // whether the backbone's parameters are named under base_model_prefix (not for a base model)
    static constexpr bool prefixed() {
        if constexpr (requires { Head::prefixes_backbone; })
            return Head::prefixes_backbone;
        else
            return true;
    }
};

FTUNE_NAMESPACE_END
