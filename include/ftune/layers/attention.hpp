// layers::self_attention: multi-head scaled dot-product self-attention, Hugging Face's
// BertSelfAttention (query/key/value projections, padding key mask, dropout on the probabilities).
// The output projection, residual and LayerNorm (BertSelfOutput) belong to the encoder block.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/layers/attention_dropout.hpp"
#include "ftune/layers/gradients.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// Self-attention over x (B, T, C) with `heads` heads of size C / heads: (B, T, C) -> (B, T, C).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu,
          class Proj = linear<T, C, C, D>>
class self_attention {
  public:
    using value_type = T;                                             ///< scalar type
    using input_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< x: (B, T, C)
    using output_view = input_view;                                   ///< context: (B, T, C)
    using d_input_view =
        view<T, shape<dynamic, dynamic, C>, D>;  ///< dx: (B, T, C), accumulated into
    using mask_view =
        view<const T, shape<dynamic, dynamic>, D>;  ///< additive key mask (B, T), or empty

    Proj query;   ///< "query" projection
    Proj key;     ///< "key" projection
    Proj value;   ///< "value" projection
    T dropout_p;  ///< dropout on the attention probabilities (BERT: 0.1)
    bool causal;  ///< also mask the keys after each query (decoder-style); BERT: false

    /// A layer of width `features` with `num_heads` heads (features % num_heads == 0).
    self_attention(std::size_t features, std::size_t num_heads, T attention_dropout = T(0.1),
                   bool causal_mask = false)
        : query(features, features),
          key(features, features),
          value(features, features),
          dropout_p(attention_dropout),
          causal(causal_mask),
          heads_(num_heads) {
        if (num_heads == 0 || features % num_heads != 0)
            throw error(
                errc::invalid_argument, "self_attention",
                ftune::detail::cat("hidden size ", features, " is not a multiple of the ",
                                   num_heads, " heads; choose a head count that divides it"));
    }

    /// Number of heads.
    std::size_t heads() const noexcept { return heads_; }

    /// Attention of every position to the unmasked keys of its sequence (and, when causal, only
    /// to itself and earlier positions). key_mask (B, T) is added to the scaled scores (0 keeps a
    /// key, a large negative value or -inf drops it).
    output_view forward(context& ctx, input_view x, mask_view key_mask = {}) {
        if (ctx.training()) prepared_ = false;  // training changes the weights: back to per-call
        if (prepared_) return fused_attention(ctx, x, key_mask, x.extent(1));  // none kept
        return unfused_attention(ctx, x, key_mask, false);
    }

    /// The first position of each sequence only, (B, 1, C): the rows forward() gives for
    /// position 0 (a classifier reading [CLS] needs nothing else from the last layer), at the
    /// cost of the key and value projections of every position. On a model prepared for
    /// inference, in eval mode: equal bit for bit, nothing kept. Otherwise (training) it keeps
    /// what backward needs; backward then takes d context (B, 1, C) and accumulates dx
    /// (B, T, C) for every position. Not for a causal layer outside prepared inference.
    output_view forward_first(context& ctx, input_view x, mask_view key_mask = {}) {
        if (ctx.training()) prepared_ = false;
        if (prepared_) return fused_attention(ctx, x, key_mask, 1);
        if (causal)
            throw error(errc::invalid_argument, "self_attention::forward_first",
                        "a causal layer's first position attends to itself alone; run forward()");
        return unfused_attention(ctx, x, key_mask, true);
    }

    /// Inference over a ragged batch: x (1, N, C) holds S sequences one after another without
    /// padding, sequence s at rows offsets[s] .. offsets[s + 1] (offsets: S + 1 values, from 0
    /// to N); each position attends to its own sequence only. Returns (1, N, C), or with
    /// first_only (1, S, C): each sequence's position 0 alone (as forward_first). The
    /// projections run as one product over all N rows, with no padded rows to compute. Needs
    /// prepare_inference(); eval mode; keeps nothing for backward.
    output_view forward_packed(context& ctx, input_view x, std::span<const std::size_t> offsets,
                               bool first_only = false) {
        const std::size_t N = x.extent(1), Cn = x.extent(2), H = heads_, d = Cn / H;
        if (ctx.training() || !prepared_ || x.extent(0) != 1)
            throw error(errc::invalid_argument, "self_attention::forward_packed",
                        "runs on a model prepared for inference, in eval mode, on x (1, N, C)");
        check_offsets(offsets, N);
        const std::size_t S = offsets.size() - 1;
        B_ = 1, T_ = N, last_fused_ = true;
        dropout_.clear();
        packed_qkv(ctx, x);  // (N, 3C) for every row at once
        out_.resize(shape<dynamic, dynamic, C>(1, first_only ? S : N, Cn));
        for (std::size_t s = 0; s < S; ++s) {  // attention within each sequence
            const std::size_t o = offsets[s], len = offsets[s + 1] - o;
            const std::size_t row = first_only ? s : o, queries = first_only ? 1 : len;
            ops::attention_inference(
                view<T, shape<dynamic, dynamic, C>, D>(out_.data() + row * Cn, 1, queries, Cn),
                view<const T, shape<dynamic, dynamic>, D>(qkv_.data() + o * 3 * Cn, len, 3 * Cn),
                mask_view(), H, T(1) / std::sqrt(T(d)), causal, packed_qkv_.precision());
        }
        return out_.view();
    }

    /// Checks a ragged batch's offsets: S + 1 >= 2 values rising from 0 to n, no sequence
    /// empty.
    static void check_offsets(std::span<const std::size_t> offsets, std::size_t n) {
        bool ok = offsets.size() >= 2 && offsets.front() == 0 && offsets.back() == n;
        for (std::size_t i = 1; ok && i < offsets.size(); ++i) ok = offsets[i] > offsets[i - 1];
        if (!ok)
            throw error(errc::invalid_argument, "forward_packed offsets",
                        ftune::detail::cat("need rising starts from 0 to the ", n,
                                           " packed rows, one more than the sequences"));
    }

    /// Accumulates the projections' parameter gradients and, unless dx is empty, dx (B, T, C)
    /// from dout, the gradient of the last forward's output: (B, T, C), or (B, 1, C) after
    /// forward_first (grad_write::overwrite: dx written, its old content not read).
    void backward(context& ctx, output_view dout, d_input_view dx,
                  grad_write write = grad_write::accumulate) {
        if (last_fused_) throw no_backward_after_inference("self_attention");
        const std::size_t B = B_, Tn = T_, Tq = Tq_, Cn = dout.extent(2), H = heads_, d = Cn / H;
        auto& w = ctx.workspace.get<backward_scratch>();  // shared by the run's layers
        auto& dp = w.dp;                                  // (B, H, Tq, T)
        auto &dq = w.dq, &dk = w.dk, &dv = w.dv;          // (B*Tq, C), (B*T, C), (B*T, C)
        check_same_shape(dout.shape(), out_.shape(), "self_attention backward (dout vs output)");
        dp.resize(probs_.shape());  // d loss / d (dropped) probabilities, (B, H, Tq, T)
        dq.resize(shape<dynamic, C>(B * Tq, Cn));
        dk.resize(shape<dynamic, C>(B * Tn, Cn));
        dv.resize(dk.shape());
        const view<const T, shape<dynamic, C>, D> g(dout.data(), B * Tq, Cn);  // d context
        ops::head_scores(dp, g, v_, precision_);           // dP_bh = dctx_bh V_bhᵀ
        dropout_.read(probs_.view(), [&](const auto& p) {  // dV_bh = P_bhᵀ dctx_bh
            ops::head_context<transpose::yes>(dv, p, g, precision_);
        });
        // dS (B, H, Tq, T) through the dropout and the softmax, then dQ_bh = dS_bh K_bh and
        // dK_bh = dS_bhᵀ Q_bh
        dropout_.scores_backward(w.ds, w.ds_bf16, probs_.view(), dp.view(), T(1) / std::sqrt(T(d)),
                                 [&](const auto& ds) {
                                     ops::head_context(dq, ds, k_, precision_);
                                     ops::head_context<transpose::yes>(dk, ds, q_, precision_);
                                 });
        const view<T, shape<dynamic, C>, D> dx2 =
            dx.empty() ? view<T, shape<dynamic, C>, D>()
                       : view<T, shape<dynamic, C>, D>(dx.data(), B * Tn, Cn);
        // the first product into dx2 writes it as w says, the others add
        if (Tq == Tn || dx.empty()) {
            backward_into(query, ctx, dq.view(), dx2, write);
            key.backward(ctx, dk.view(), dx2);
        } else {  // queries of position 0 only: their dx into position 0 of each sequence
            backward_into(key, ctx, dk.view(), dx2, write);
            w.dx_first.resize(shape<dynamic, C>(B, Cn));
            backward_into(query, ctx, dq.view(), w.dx_first.view());
            ops::add_first_tokens(dx, w.dx_first);
        }
        value.backward(ctx, dv.view(), dx2);
    }

    /// Packs [Wq; Wk; Wv] for inference: eval-mode forwards then run the three projections as
    /// one product without per-call packing, and the attention itself through
    /// ops::attention_inference (no (B, H, T, T) buffer; nothing kept for backward).
    /// A visit that may change the weights marks the packing stale (the next eval-mode forward
    /// packs again); a train-mode forward ends the prepared mode. After writing the weights
    /// directly (or through references kept from an earlier visit once an eval-mode forward has
    /// run since), call it again.
    void prepare_inference(precision p = precision::fp32) {
        const std::size_t Cn = query.in_features();
        packed_current_ = false;  // until the packing below has succeeded
        // (3C, C) staging for the packing, one per thread (not per layer or model copy)
        static thread_local buffer<T, shape<dynamic, dynamic>, D> qkv_weight;
        qkv_weight.resize(shape<dynamic, dynamic>(3 * Cn, Cn));
        constexpr bool with_bias = requires(Proj & p) {
            p.bias.value;
        };  // (no bias: left empty)
        qkv_bias_.resize(shape<dynamic>(with_bias ? 3 * Cn : 0));
        const Proj* parts[] = {&query, &key, &value};
        using flat = view<T, shape<dynamic>, D>;
        using const_flat = view<const T, shape<dynamic>, D>;
        for (std::size_t i = 0; i < 3; ++i) {  // rows i C .. (i + 1) C: q, k, v
            ops::copy(flat(qkv_weight.data() + i * Cn * Cn, Cn * Cn),
                      const_flat(parts[i]->weight.value.data(), Cn * Cn));
            if constexpr (with_bias)
                ops::copy(flat(qkv_bias_.data() + i * Cn, Cn),
                          const_flat(parts[i]->bias.value.data(), Cn));
        }
        ops::prepare_weight(packed_qkv_, qkv_weight, p);
        prepared_ = packed_current_ = true;
    }

    /// Whether any projection trains (false: frozen).
    bool trainable() const noexcept {
        return query.trainable() || key.trainable() || value.trainable();
    }
    /// Sets the projections' gradients to zero.
    void zero_grad() {
        query.zero_grad();
        key.zero_grad();
        value.zero_grad();
    }

    /// Whether eval-mode forwards use the projections packed by prepare_inference().
    bool inference_prepared() const noexcept { return prepared_; }
    /// Whether the packed projections are current (false after a visit that may have changed
    /// the weights: the next eval-mode forward packs again).
    bool inference_packed() const noexcept { return prepared_ && packed_current_; }

    /// Visits query, key, value ("<prefix>.query.weight", ...), Hugging Face's order.
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        if constexpr (!keeps_values_v<F>) packed_current_ = false;  // f may change the weights
        query.visit_parameters(join_name(prefix, "query"), f);
        key.visit_parameters(join_name(prefix, "key"), f);
        value.visit_parameters(join_name(prefix, "value"), f);
    }

  private:
    // forward() (first_only false) or forward_first() outside prepared inference: out_ (B, Tq,
    // C) for Tq = T positions or the first alone, keeping the projections, the probabilities
    // and the dropout for backward
    output_view unfused_attention(context& ctx, input_view x, mask_view key_mask, bool first_only) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), H = heads_,
                          d = Cn / H, Tq = first_only ? 1 : Tn;
        const view<const T, shape<dynamic, C>, D> x2(x.data(), B * Tn, Cn);  // (B*T, C)
        B_ = B, T_ = Tn, Tq_ = Tq, last_fused_ = false;
        view<const T, shape<dynamic, C>, D> xq = x2;  // (B*Tq, C) the queries' rows
        if (first_only) {
            x_first_.resize(shape<dynamic, C>(B, Cn));  // (B, C) position 0, kept for backward
            ops::first_tokens(x_first_, x);
            xq = x_first_.view();
        }
        q_ = query.forward(ctx, xq);  // (B*Tq, C); head h at columns h*d .. h*d+d
        k_ = key.forward(ctx, x2);    // (B*T, C) each
        v_ = value.forward(ctx, x2);
        scores_.resize(dynamic_shape<4>(B, H, Tq, Tn));  // (B, H, Tq, T)
        probs_.resize(scores_.shape());
        precision_ = ctx.precision;
        ops::head_scores(scores_, q_, k_, precision_);  // S_bh = Q_bh K_bhᵀ
        const T scale = T(1) / std::sqrt(T(d));
        if (key_mask.empty())
            ops::masked_softmax(probs_, scores_, scale, causal);
        else
            ops::masked_softmax(probs_, scores_, key_mask, scale, causal);
        dropout_.forward(ctx, probs_.view(), dropout_p, precision_);  // in training
        out_.resize(shape<dynamic, dynamic, C>(B, Tq, Cn));           // (B, Tq, C)
        const view<T, shape<dynamic, C>, D> out2(out_.data(), B * Tq, Cn);
        dropout_.read(probs_.view(), [&](const auto& p) {  // P V
            ops::head_context(out2, p, v_, precision_);
        });
        return out_.view();
    }

    // Prepared inference: out_ (B, queries, C) for the first `queries` positions of each
    // sequence (all T, or 1), through the packed [Wq; Wk; Wv] and attention_inference.
    output_view fused_attention(context& ctx, input_view x, mask_view key_mask,
                                std::size_t queries) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), H = heads_,
                          d = Cn / H;
        B_ = B, T_ = Tn, last_fused_ = true;
        dropout_.clear();
        packed_qkv(ctx, x);
        out_.resize(shape<dynamic, dynamic, C>(B, queries, Cn));
        ops::attention_inference(out_, qkv_, key_mask, H, T(1) / std::sqrt(T(d)), causal,
                                 packed_qkv_.precision());  // bf16 weights: bf16 head products
        return out_.view();
    }

    // qkv_ (B*T, 3C) = x [Wq; Wk; Wv]ᵀ + [bq; bk; bv] with the packed weights (packed again
    // first when a visit made them stale), plus the projections' unmerged LoRA adapters' terms
    void packed_qkv(context& ctx, input_view x) {
        const std::size_t N = x.extent(0) * x.extent(1), Cn = x.extent(2);
        if (Cn != query.in_features())
            throw error(errc::shape_mismatch, "self_attention",
                        ftune::detail::cat("input has ", Cn, " features but the layer takes ",
                                           query.in_features()));
        if (!packed_current_) prepare_inference(packed_qkv_.precision());
        qkv_.resize(shape<dynamic, dynamic>(N, 3 * Cn));
        ops::matmul_prepared(view<const T, shape<dynamic, dynamic>, D>(x.data(), N, Cn),
                             packed_qkv_, qkv_, qkv_bias_);
        if constexpr (requires(Proj & p, typename Proj::input_view v) {
                          p.add_adapter_term_to(ctx, v, qkv_.data(), N);
                      }) {
            const typename Proj::input_view x2(x.data(), N, Cn);
            Proj* parts[] = {&query, &key, &value};
            for (std::size_t i = 0; i < 3; ++i)
                parts[i]->add_adapter_term_to(ctx, x2, qkv_.data() + i * Cn, 3 * Cn);
        }
    }

    std::size_t heads_;
    bool prepared_ = false;                          // eval-mode forwards use packed_qkv_
    bool packed_current_ = false;                    // packed_qkv_ holds the current weights
    bool last_fused_ = false;                        // the last forward used packed_qkv_
    precision precision_ = precision::fp32;          // the last forward's head products
    ops::prepared_weight<T, D> packed_qkv_;          // [Wq; Wk; Wv] prepared (prepare_inference)
    buffer<T, shape<dynamic>, D> qkv_bias_;          // (3C) concatenated biases
    buffer<T, shape<dynamic, dynamic>, D> qkv_;      // (B*T, 3C) fused projections
    std::size_t B_ = 0, T_ = 0;                      // the last forward's batch and sequence
    std::size_t Tq_ = 0;                             // its queries per sequence: T, or 1 (first)
    buffer<T, shape<dynamic, C>, D> x_first_;        // (B, C) position 0 of x (forward_first)
    typename Proj::output_view q_;                   // (B*Tq, C) queries (the linear's buffer)
    typename Proj::output_view k_, v_;               // (B*T, C) keys and values
    buffer<T, dynamic_shape<4>, D> scores_, probs_;  // (B, H, Tq, T)
    attention_dropout<T, D> dropout_;                // on the probabilities, in training
    buffer<T, shape<dynamic, dynamic, C>, D> out_;   // (B, Tq, C) context
    // Buffers used only inside one backward call: one set per run (ctx.workspace) for every layer
    // of this type (an encoder's 12 layers share it), not one per layer.
    struct backward_scratch {
        buffer<T, dynamic_shape<4>, D> dp, ds;       // (B, H, Tq, T) gradients
        buffer<bf16, dynamic_shape<4>, D> ds_bf16;   // (B, H, Tq, T) dS for bf16 products
        buffer<T, shape<dynamic, C>, D> dq, dk, dv;  // (B*Tq, C), (B*T, C): the projections'
        buffer<T, shape<dynamic, C>, D> dx_first;    // (B, C) d x at position 0 (forward_first)
    };
};

}  // namespace layers
FTUNE_NAMESPACE_END
