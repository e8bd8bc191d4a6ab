// ftune::bert task models: the encoder with Hugging Face's task heads, under Hugging Face's
// parameter names, so that their checkpoints load by name and Transformers loads ftune's back.
//
//   model                    BertModel                        hidden states + pooled output
//   sequence_classifier      BertForSequenceClassification    pooler -> dropout -> classifier
//   token_classifier         BertForTokenClassification       dropout -> classifier per token
//   question_answering       BertForQuestionAnswering         qa_outputs: start, end per token
//   masked_lm                BertForMaskedLM                  transform -> tied decoder + bias
//
// Each is parameterized by its encoder type (bert::encoder<T> or bert::Encoder<dims>), built from
// a bert::config, and has forward(ctx, ids, attention_mask, token_types) -> outputs,
// backward(ctx, d outputs) accumulating every trainable parameter's gradient, prepare_inference,
// zero_grad and visit_parameters.
#pragma once

#include <string_view>

#include "ftune/layers/pooler.hpp"
#include "ftune/models/bert.hpp"

FTUNE_NAMESPACE_BEGIN
namespace bert {

/// What a task model computes (for tools that accept any of them).
enum class task {
    base,
    sequence_classification,
    token_classification,
    question_answering,
    masked_lm
};

namespace detail {
/// The classifier dropout of a config: classifier_dropout, or hidden_dropout_prob when unset.
inline double classifier_dropout(const config& c) {
    return c.classifier_dropout >= 0 ? c.classifier_dropout : c.hidden_dropout_prob;
}
/// Throws when the encoder's last forward ran the prepared inference path, which keeps nothing
/// for backward: before any gradient of the head is touched.
template <class Encoder>
void require_backward(const Encoder& e, std::string_view model) {
    if (e.kept_nothing_for_backward()) throw no_backward_after_inference(std::string(model));
}
/// (B, T, C) <-> (B*T, C) views of the same memory.
template <class U, std::size_t C>
view<U, shape<dynamic, C>> flat(view<U, shape<dynamic, dynamic, C>> v) {
    return {v.data(), v.extent(0) * v.extent(1), v.extent(2)};
}
}  // namespace detail

/// BertModel: forward gives the hidden states (B, T, C); pooled() the pooled output (B, C) of the
/// last forward. Parameter names have no prefix ("embeddings.word_embeddings.weight", ...,
/// "pooler.dense.weight").
template <class Encoder = encoder<float>>
class model {
  public:
    using value_type = typename Encoder::value_type;               ///< scalar type
    static constexpr std::size_t C = Encoder::hidden_extent;       ///< hidden size (or dynamic)
    static constexpr std::string_view architecture = "BertModel";  ///< config.json architectures
    static constexpr bert::task task = bert::task::base;           ///< what it computes
    using ids_view = typename Encoder::ids_view;                   ///< (B, T) token ids
    using output_view = typename Encoder::output_view;             ///< (B, T, C) hidden states

    Encoder bert;                          ///< embeddings + encoder layers
    layers::pooler<value_type, C> pooler;  ///< "pooler"

    /// A zero-initialized model of configuration c.
    explicit model(const config& c) : bert(c), pooler(c.hidden_size) {}

    /// Hidden states (B, T, C); also computes the pooled output.
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        const auto h = bert.forward(ctx, ids, attention_mask, token_types);
        pooled_ = pooler.forward(ctx, h);
        return h;
    }

    /// The pooled output (B, C) of the last forward.
    typename layers::pooler<value_type, C>::output_view pooled() const { return pooled_; }

    /// Accumulates every gradient from d hidden states (B, T, C) and d pooled (B, C) (empty: 0).
    void backward(context& ctx, output_view d_hidden,
                  typename layers::pooler<value_type, C>::output_view d_pooled = {}) {
        detail::require_backward(bert, architecture);
        d_.resize(d_hidden.shape());
        std::copy_n(d_hidden.data(), d_hidden.size(), d_.data());
        if (!d_pooled.empty()) pooler.backward(ctx, d_pooled, d_.view());
        bert.backward(ctx, d_.view());
    }

    /// Packs the weights for low-latency inference (see encoder::prepare_inference).
    void prepare_inference() {
        bert.prepare_inference();
        pooler.prepare_inference();
    }
    /// Sets every gradient to zero.
    void zero_grad() noexcept {
        bert.zero_grad();
        pooler.zero_grad();
    }
    /// Visits every parameter under Hugging Face's BertModel names, prefixed by `prefix`.
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        bert.visit_parameters(prefix, f);
        pooler.visit_parameters(join_name(prefix, "pooler"), f);
    }

  private:
    typename layers::pooler<value_type, C>::output_view pooled_;  // (B, C)
    buffer<value_type, shape<dynamic, dynamic, C>> d_;            // (B, T, C)
};

/// BertForSequenceClassification: logits (B, num_labels) = classifier(dropout(pooler(h))). With
/// num_labels = 1 it is a regression head; multi-label problems read the logits through a sigmoid.
template <class Encoder = encoder<float>>
class sequence_classifier {
  public:
    using value_type = typename Encoder::value_type;          ///< scalar type
    static constexpr std::size_t C = Encoder::hidden_extent;  ///< hidden size (or dynamic)
    static constexpr std::string_view architecture =
        "BertForSequenceClassification";  ///< config.json architectures
    static constexpr bert::task task = bert::task::sequence_classification;  ///< what it computes
    using ids_view = typename Encoder::ids_view;                             ///< (B, T) token ids
    using output_view = view<const value_type, shape<dynamic, dynamic>>;     ///< logits (B, L)

    Encoder bert;                                       ///< "bert"
    layers::pooler<value_type, C> pooler;               ///< "bert.pooler"
    layers::dropout<value_type, C> dropout;             ///< classifier dropout
    layers::linear<value_type, C, dynamic> classifier;  ///< "classifier" (L, C)

    /// A zero-initialized model of configuration c (c.num_labels outputs).
    explicit sequence_classifier(const config& c)
        : bert(c),
          pooler(c.hidden_size),
          dropout(value_type(detail::classifier_dropout(c))),
          classifier(c.hidden_size, c.num_labels) {}

    /// Number of labels L.
    std::size_t num_labels() const noexcept { return classifier.out_features(); }

    /// Logits (B, L) of each sequence. Prepared for inference (prepare_inference()) and in eval
    /// mode, the last encoder layer runs for the [CLS] rows only (the same logits, bit for bit).
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        const auto h = !ctx.training() && bert.inference_prepared()
                           ? bert.forward_first_tokens(ctx, ids, attention_mask, token_types)
                           : bert.forward(ctx, ids, attention_mask, token_types);  // (B, T, C)
        T_ = ids.extent(1);
        const auto y = classifier.forward(ctx, dropout.forward(ctx, pooler.forward(ctx, h)));
        return {y.data(), y.extent(0), y.extent(1)};
    }

    /// Accumulates every trainable parameter's gradient from d logits (B, L).
    void backward(context& ctx, output_view d_logits) {
        detail::require_backward(bert, architecture);
        const std::size_t B = d_logits.extent(0), Cn = bert.hidden_size();
        d_drop_.resize(shape<dynamic, C>(B, Cn));
        d_pooled_.resize(shape<dynamic, C>(B, Cn));
        d_hidden_.resize(shape<dynamic, dynamic, C>(B, T_, Cn));
        d_drop_.fill(value_type(0)), d_pooled_.fill(value_type(0)), d_hidden_.fill(value_type(0));
        classifier.backward(ctx, {d_logits.data(), B, d_logits.extent(1)}, d_drop_.view());
        dropout.backward(ctx, d_drop_.view(), d_pooled_.view());
        pooler.backward(ctx, d_pooled_.view(), d_hidden_.view());
        bert.backward(ctx, d_hidden_.view());
    }

    /// Packs the weights for low-latency inference (see encoder::prepare_inference).
    void prepare_inference() {
        bert.prepare_inference(), pooler.prepare_inference(), classifier.prepare_inference();
    }
    /// Sets every gradient to zero.
    void zero_grad() noexcept { bert.zero_grad(), pooler.zero_grad(), classifier.zero_grad(); }
    /// Visits "bert.*" (BertModel's names under "bert.") and "classifier.{weight,bias}".
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        const std::string b = join_name(prefix, "bert");
        bert.visit_parameters(b, f);
        pooler.visit_parameters(join_name(b, "pooler"), f);
        classifier.visit_parameters(join_name(prefix, "classifier"), f);
    }

  private:
    std::size_t T_ = 0;                                        // the last forward's length
    buffer<value_type, shape<dynamic, C>> d_drop_, d_pooled_;  // (B, C)
    buffer<value_type, shape<dynamic, dynamic, C>> d_hidden_;  // (B, T, C)
};

/// BertForTokenClassification: logits (B, T, num_labels) = classifier(dropout(h)) per token.
/// No pooler (a base checkpoint's pooler weights are unexpected, as in Transformers).
template <class Encoder = encoder<float>>
class token_classifier {
  public:
    using value_type = typename Encoder::value_type;          ///< scalar type
    static constexpr std::size_t C = Encoder::hidden_extent;  ///< hidden size (or dynamic)
    static constexpr std::string_view architecture =
        "BertForTokenClassification";  ///< config.json architectures
    static constexpr bert::task task = bert::task::token_classification;  ///< what it computes
    using ids_view = typename Encoder::ids_view;                          ///< (B, T) token ids
    using output_view =
        view<const value_type, shape<dynamic, dynamic, dynamic>>;  ///< logits (B, T, L)

    Encoder bert;                                       ///< "bert"
    layers::dropout<value_type, C> dropout;             ///< classifier dropout
    layers::linear<value_type, C, dynamic> classifier;  ///< "classifier" (L, C)

    /// A zero-initialized model of configuration c (c.num_labels outputs per token).
    explicit token_classifier(const config& c)
        : bert(c),
          dropout(value_type(detail::classifier_dropout(c))),
          classifier(c.hidden_size, c.num_labels) {}

    /// Number of labels L.
    std::size_t num_labels() const noexcept { return classifier.out_features(); }

    /// Logits (B, T, L) of every token.
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        const auto h = bert.forward(ctx, ids, attention_mask, token_types);  // (B, T, C)
        B_ = ids.extent(0), T_ = ids.extent(1);
        const auto y = classifier.forward(ctx, dropout.forward(ctx, detail::flat(h)));  // (N, L)
        return {y.data(), B_, T_, y.extent(1)};
    }

    /// Accumulates every trainable parameter's gradient from d logits (B, T, L).
    void backward(context& ctx, output_view d_logits) {
        detail::require_backward(bert, architecture);
        const std::size_t N = B_ * T_, Cn = bert.hidden_size();
        d_drop_.resize(shape<dynamic, C>(N, Cn));
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_drop_.fill(value_type(0)), d_hidden_.fill(value_type(0));
        classifier.backward(ctx, {d_logits.data(), N, d_logits.extent(2)}, d_drop_.view());
        dropout.backward(ctx, d_drop_.view(), detail::flat(d_hidden_.view()));
        bert.backward(ctx, d_hidden_.view());
    }

    /// Packs the weights for low-latency inference (see encoder::prepare_inference).
    void prepare_inference() { bert.prepare_inference(), classifier.prepare_inference(); }
    /// Sets every gradient to zero.
    void zero_grad() noexcept { bert.zero_grad(), classifier.zero_grad(); }
    /// Visits "bert.*" (no pooler) and "classifier.{weight,bias}".
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        bert.visit_parameters(join_name(prefix, "bert"), f);
        classifier.visit_parameters(join_name(prefix, "classifier"), f);
    }

  private:
    std::size_t B_ = 0, T_ = 0;                                // the last forward's batch, length
    buffer<value_type, shape<dynamic, C>> d_drop_;             // (N, C)
    buffer<value_type, shape<dynamic, dynamic, C>> d_hidden_;  // (B, T, C)
};

/// BertForQuestionAnswering: logits (B, T, 2) = qa_outputs(h); [..., 0] is the start logit of
/// each token, [..., 1] the end logit. No pooler.
template <class Encoder = encoder<float>>
class question_answering {
  public:
    using value_type = typename Encoder::value_type;          ///< scalar type
    static constexpr std::size_t C = Encoder::hidden_extent;  ///< hidden size (or dynamic)
    static constexpr std::string_view architecture =
        "BertForQuestionAnswering";  ///< config.json architectures
    static constexpr bert::task task = bert::task::question_answering;       ///< what it computes
    using ids_view = typename Encoder::ids_view;                             ///< (B, T) token ids
    using output_view = view<const value_type, shape<dynamic, dynamic, 2>>;  ///< (B, T, 2)

    Encoder bert;                                 ///< "bert"
    layers::linear<value_type, C, 2> qa_outputs;  ///< "qa_outputs" (2, C)

    /// A zero-initialized model of configuration c (num_labels is ignored: always 2).
    explicit question_answering(const config& c) : bert(c), qa_outputs(c.hidden_size, 2) {}

    /// Start and end logits (B, T, 2) of every token.
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        const auto h = bert.forward(ctx, ids, attention_mask, token_types);  // (B, T, C)
        B_ = ids.extent(0), T_ = ids.extent(1);
        const auto y = qa_outputs.forward(ctx, detail::flat(h));  // (N, 2)
        return {y.data(), B_, T_, 2};
    }

    /// Accumulates every trainable parameter's gradient from d logits (B, T, 2).
    void backward(context& ctx, output_view d_logits) {
        detail::require_backward(bert, architecture);
        const std::size_t N = B_ * T_, Cn = bert.hidden_size();
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_hidden_.fill(value_type(0));
        qa_outputs.backward(ctx, {d_logits.data(), N, 2}, detail::flat(d_hidden_.view()));
        bert.backward(ctx, d_hidden_.view());
    }

    /// Packs the weights for low-latency inference (see encoder::prepare_inference).
    void prepare_inference() { bert.prepare_inference(), qa_outputs.prepare_inference(); }
    /// Sets every gradient to zero.
    void zero_grad() noexcept { bert.zero_grad(), qa_outputs.zero_grad(); }
    /// Visits "bert.*" (no pooler) and "qa_outputs.{weight,bias}".
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        bert.visit_parameters(join_name(prefix, "bert"), f);
        qa_outputs.visit_parameters(join_name(prefix, "qa_outputs"), f);
    }

  private:
    std::size_t B_ = 0, T_ = 0;                                // the last forward's batch, length
    buffer<value_type, shape<dynamic, dynamic, C>> d_hidden_;  // (B, T, C)
};

/// BertForMaskedLM: logits (B, T, V) = LN(act(dense(h))) Eᵀ + bias, where E is the word-embedding
/// table (the decoder is tied to it, as in Transformers: its gradient adds into E's). No pooler.
template <class Encoder = encoder<float>>
class masked_lm {
  public:
    using value_type = typename Encoder::value_type;          ///< scalar type
    static constexpr std::size_t C = Encoder::hidden_extent;  ///< hidden size (or dynamic)
    static constexpr std::string_view architecture = "BertForMaskedLM";  ///< architectures
    static constexpr bert::task task = bert::task::masked_lm;            ///< what it computes
    using ids_view = typename Encoder::ids_view;                         ///< (B, T) token ids
    using output_view =
        view<const value_type, shape<dynamic, dynamic, dynamic>>;  ///< logits (B, T, V)

    Encoder bert;                                            ///< "bert"
    layers::linear<value_type, C, C> transform_dense;        ///< "cls.predictions.transform.dense"
    layers::hidden_activation<value_type, C> transform_act;  ///< hidden_act
    layers::layer_norm<value_type, C> transform_norm;  ///< "cls.predictions.transform.LayerNorm"
    parameter<value_type, shape<dynamic>> bias;        ///< "cls.predictions.bias" (V), no decay

    /// A zero-initialized model of configuration c.
    explicit masked_lm(const config& c)
        : bert(c),
          transform_dense(c.hidden_size, c.hidden_size),
          transform_act(c.hidden_act),
          transform_norm(c.hidden_size, value_type(c.layer_norm_eps)),
          bias("bias", shape<dynamic>(c.vocab_size), false) {}

    /// Vocabulary logits (B, T, V) of every token.
    output_view forward(context& ctx, ids_view ids, ids_view attention_mask = {},
                        ids_view token_types = {}) {
        const auto h = bert.forward(ctx, ids, attention_mask, token_types);  // (B, T, C)
        B_ = ids.extent(0), T_ = ids.extent(1);
        t_ = transform_norm.forward(
            ctx, transform_act.forward(ctx, transform_dense.forward(ctx, detail::flat(h))));
        const auto& E = bert.embeddings.word_embeddings.weight.value;   // (V, C)
        logits_.resize(shape<dynamic, dynamic>(B_ * T_, E.extent(0)));  // (N, V)
        ops::matmul<transpose::no, transpose::yes>(t_, E, logits_);
        ops::bias_add(logits_, bias.value);
        return {logits_.data(), B_, T_, E.extent(0)};
    }

    /// Accumulates every trainable parameter's gradient from d logits (B, T, V); the decoder's
    /// gradient goes into the word-embedding table (tied).
    void backward(context& ctx, output_view d_logits) {
        detail::require_backward(bert, architecture);
        const std::size_t N = B_ * T_, Cn = bert.hidden_size();
        auto& E = bert.embeddings.word_embeddings.weight;
        const view<const value_type, shape<dynamic, dynamic>> dl(d_logits.data(), N,
                                                                 d_logits.extent(2));  // (N, V)
        if (bias.trainable) ops::bias_backward(bias.grad, dl);
        if (E.trainable)
            ops::matmul<transpose::yes, transpose::no>(dl, t_, E.grad, value_type(1),
                                                       value_type(1));  // dE += dlᵀ t
        zeroed(d_t_, N, Cn), zeroed(d_a_, N, Cn), zeroed(d_d_, N, Cn);
        ops::matmul(dl, E.value, d_t_, value_type(1), value_type(1));  // dt = dl E
        transform_norm.backward(ctx, d_t_.view(), d_a_.view());
        transform_act.backward(ctx, d_a_.view(), d_d_.view());
        d_hidden_.resize(shape<dynamic, dynamic, C>(B_, T_, Cn));
        d_hidden_.fill(value_type(0));
        transform_dense.backward(ctx, d_d_.view(), detail::flat(d_hidden_.view()));
        bert.backward(ctx, d_hidden_.view());
    }

    /// Packs the weights for low-latency inference (see encoder::prepare_inference).
    void prepare_inference() { bert.prepare_inference(), transform_dense.prepare_inference(); }
    /// Sets every gradient to zero.
    void zero_grad() noexcept {
        bert.zero_grad(), transform_dense.zero_grad(), transform_norm.zero_grad();
        bias.zero_grad();
    }
    /// Visits "bert.*" (no pooler), "cls.predictions.transform.{dense,LayerNorm}.*" and
    /// "cls.predictions.bias"; the tied decoder is the word-embedding table, visited once.
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        bert.visit_parameters(join_name(prefix, "bert"), f);
        const std::string p = join_name(prefix, "cls.predictions");
        transform_dense.visit_parameters(join_name(p, "transform.dense"), f);
        transform_norm.visit_parameters(join_name(p, "transform.LayerNorm"), f);
        f(bias.ref(p));
    }

  private:
    static void zeroed(buffer<value_type, shape<dynamic, C>>& b, std::size_t rows,
                       std::size_t cols) {
        b.resize(shape<dynamic, C>(rows, cols));
        b.fill(value_type(0));
    }
    std::size_t B_ = 0, T_ = 0;                                // the last forward's batch, length
    view<const value_type, shape<dynamic, C>> t_;              // (N, C) transformed states
    buffer<value_type, shape<dynamic, dynamic>> logits_;       // (N, V)
    buffer<value_type, shape<dynamic, C>> d_t_, d_a_, d_d_;    // (N, C) gradients in the head
    buffer<value_type, shape<dynamic, dynamic, C>> d_hidden_;  // (B, T, C)
};

}  // namespace bert
FTUNE_NAMESPACE_END
