// layers::self_attention: multi-head scaled dot-product self-attention, Hugging Face's
// BertSelfAttention (query/key/value projections, padding key mask, dropout on the probabilities).
// The output projection, residual and LayerNorm (BertSelfOutput) belong to the encoder block.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// Self-attention over x (B, T, C) with `heads` heads of size C / heads: (B, T, C) -> (B, T, C).
template <scalar T, std::size_t C = dynamic>
class self_attention {
  public:
    using value_type = T;                                          ///< scalar type
    using input_view = view<const T, shape<dynamic, dynamic, C>>;  ///< x: (B, T, C)
    using output_view = input_view;                                ///< context: (B, T, C)
    using d_input_view = view<T, shape<dynamic, dynamic, C>>;  ///< dx: (B, T, C), accumulated into
    using mask_view =
        view<const T, shape<dynamic, dynamic>>;  ///< additive key mask (B, T), or empty

    linear<T, C, C> query;  ///< "query" projection
    linear<T, C, C> key;    ///< "key" projection
    linear<T, C, C> value;  ///< "value" projection
    T dropout_p;            ///< dropout on the attention probabilities (BERT: 0.1)
    bool causal;            ///< also mask the keys after each query (decoder-style); BERT: false

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
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), H = heads_,
                          d = Cn / H;
        const view<const T, shape<dynamic, C>> x2(x.data(), B * Tn, Cn);  // (B*T, C)
        B_ = B, T_ = Tn;
        if (ctx.training()) prepared_ = false;  // training changes the weights: back to per-call
        if (prepared_) return fused_attention(x, key_mask, Tn);  // packed, fused, nothing kept
        last_fused_ = false;
        q_ = query.forward(ctx, x2);  // (B*T, C) each; head h at columns h*d .. h*d+d
        k_ = key.forward(ctx, x2);
        v_ = value.forward(ctx, x2);
        const T *q = q_.data(), *k = k_.data(), *v = v_.data();
        const std::size_t ld = Cn;
        scores_.resize(dynamic_shape<4>(B, H, Tn, Tn));  // (B, H, T, T)
        probs_.resize(scores_.shape());
        for (std::size_t b = 0; b < B; ++b)  // S_bh = Q_bh K_bhᵀ over the H heads of batch b
            backend::cpu::gemm_strided_batched(transpose::no, transpose::yes, Tn, Tn, d, T(1),
                                               q + b * Tn * ld, ld, d, k + b * Tn * ld, ld, d, T(0),
                                               scores_.data() + b * H * Tn * Tn, Tn, Tn * Tn, H);
        const T scale = T(1) / std::sqrt(T(d));
        if (key_mask.empty())
            ops::masked_softmax(probs_, scores_, scale, causal);
        else
            ops::masked_softmax(probs_, scores_, key_mask, scale, causal);
        const T* p = probs_.data();
        dropped_ = ctx.training() && dropout_p > T(0);
        if (dropped_) {
            probs_dropped_.resize(probs_.shape());
            mask_.resize(probs_.shape());
            ops::dropout(probs_dropped_, mask_, probs_, dropout_p, ctx.rng.next());
            p = probs_dropped_.data();
        }
        out_.resize(shape<dynamic, dynamic, C>(B, Tn, Cn));  // (B, T, C)
        for (std::size_t b = 0; b < B; ++b)  // ctx_bh = P_bh V_bh, written into its head's columns
            backend::cpu::gemm_strided_batched(transpose::no, transpose::no, Tn, d, Tn, T(1),
                                               p + b * H * Tn * Tn, Tn, Tn * Tn, v + b * Tn * ld,
                                               ld, d, T(0), out_.data() + b * Tn * Cn, Cn, d, H);
        return out_.view();
    }

    /// Inference for the first token of each sequence only (a classifier reading [CLS] needs
    /// nothing else from the last layer): (B, 1, C) = the rows forward() would give for position
    /// 0, equal bit for bit, at the cost of the key and value projections of every position.
    /// Needs prepare_inference(); eval mode; keeps nothing for backward.
    output_view forward_first(context& ctx, input_view x, mask_view key_mask = {}) {
        if (ctx.training() || !prepared_)
            throw error(errc::invalid_argument, "self_attention::forward_first",
                        "runs on a model prepared for inference, in eval mode");
        return fused_attention(x, key_mask, 1);
    }

    /// Accumulates the projections' parameter gradients and, unless dx is empty, dx.
    void backward(context& ctx, output_view dout, d_input_view dx) {
        if (last_fused_) throw no_backward_after_inference("self_attention");
        const std::size_t B = B_, Tn = T_, Cn = dout.extent(2), H = heads_, d = Cn / H;
        auto& w = scratch();  // shared by every attention layer of this type on this thread
        auto &dp = w.dp, &dp_pre = w.dp_pre, &ds = w.ds, &dq = w.dq, &dk = w.dk, &dv = w.dv;
        check_same_shape(dout.shape(), out_.shape(), "self_attention backward (dout vs output)");
        const T* p = dropped_ ? probs_dropped_.data() : probs_.data();
        dp.resize(probs_.shape());  // d loss / d (dropped) probabilities, (B, H, T, T)
        dq.resize(shape<dynamic, C>(B * Tn, Cn));
        dk.resize(dq.shape());
        dv.resize(dq.shape());
        for (std::size_t b = 0; b < B; ++b) {
            const T* g = dout.data() + b * Tn * Cn;
            // dP_bh = dctx_bh V_bhᵀ; dV_bh = P_bhᵀ dctx_bh
            backend::cpu::gemm_strided_batched(transpose::no, transpose::yes, Tn, Tn, d, T(1), g,
                                               Cn, d, v_.data() + b * Tn * Cn, Cn, d, T(0),
                                               dp.data() + b * H * Tn * Tn, Tn, Tn * Tn, H);
            backend::cpu::gemm_strided_batched(transpose::yes, transpose::no, Tn, d, Tn, T(1),
                                               p + b * H * Tn * Tn, Tn, Tn * Tn, g, Cn, d, T(0),
                                               dv.data() + b * Tn * Cn, Cn, d, H);
        }
        ds.resize(probs_.shape());
        ds.fill(T(0));
        if (dropped_) {  // through the dropout, then the softmax
            dp_pre.resize(probs_.shape());
            dp_pre.fill(T(0));
            ops::dropout_backward(dp_pre, mask_, dp, dropout_p);
            ops::masked_softmax_backward(ds, probs_, dp_pre, T(1) / std::sqrt(T(d)));
        } else {
            ops::masked_softmax_backward(ds, probs_, dp, T(1) / std::sqrt(T(d)));
        }
        for (std::size_t b = 0; b < B; ++b) {
            const T* s = ds.data() + b * H * Tn * Tn;
            // dQ_bh = dS_bh K_bh; dK_bh = dS_bhᵀ Q_bh
            backend::cpu::gemm_strided_batched(transpose::no, transpose::no, Tn, d, Tn, T(1), s, Tn,
                                               Tn * Tn, k_.data() + b * Tn * Cn, Cn, d, T(0),
                                               dq.data() + b * Tn * Cn, Cn, d, H);
            backend::cpu::gemm_strided_batched(transpose::yes, transpose::no, Tn, d, Tn, T(1), s,
                                               Tn, Tn * Tn, q_.data() + b * Tn * Cn, Cn, d, T(0),
                                               dk.data() + b * Tn * Cn, Cn, d, H);
        }
        const view<T, shape<dynamic, C>> dx2 =
            dx.empty() ? view<T, shape<dynamic, C>>()
                       : view<T, shape<dynamic, C>>(dx.data(), B * Tn, Cn);
        query.backward(ctx, dq.view(), dx2);
        key.backward(ctx, dk.view(), dx2);
        value.backward(ctx, dv.view(), dx2);
    }

    /// Packs [Wq; Wk; Wv] for inference: eval-mode forwards then run the three projections as
    /// one product without per-call packing, and the attention itself through
    /// backend::cpu::attention_inference (no (B, H, T, T) buffer; nothing kept for backward).
    /// A visit that may change the weights marks the packing stale (the next eval-mode forward
    /// packs again); a train-mode forward ends the prepared mode. After writing the weights
    /// directly (or through references kept from an earlier visit once an eval-mode forward has
    /// run since), call it again.
    void prepare_inference() {
        const std::size_t Cn = query.in_features();
        packed_current_ = false;  // until the packing below has succeeded
        // (3C, C) staging for the packing, one per thread (not per layer or model copy)
        static thread_local buffer<T, shape<dynamic, dynamic>> qkv_weight;
        qkv_weight.resize(shape<dynamic, dynamic>(3 * Cn, Cn));
        qkv_bias_.resize(shape<dynamic>(3 * Cn));
        const linear<T, C, C>* parts[] = {&query, &key, &value};
        for (std::size_t i = 0; i < 3; ++i) {
            std::copy_n(parts[i]->weight.value.data(), Cn * Cn, qkv_weight.data() + i * Cn * Cn);
            std::copy_n(parts[i]->bias.value.data(), Cn, qkv_bias_.data() + i * Cn);
        }
        packed_qkv_.pack(qkv_weight.data(), Cn, transpose::yes, Cn, 3 * Cn);
        prepared_ = packed_current_ = true;
    }

    /// Whether any projection trains (false: frozen).
    bool trainable() const noexcept {
        return query.trainable() || key.trainable() || value.trainable();
    }
    /// Sets the projections' gradients to zero.
    void zero_grad() noexcept {
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
    // Prepared inference: out_ (B, queries, C) for the first `queries` positions of each
    // sequence (all T, or 1), through the packed [Wq; Wk; Wv] and attention_inference.
    output_view fused_attention(input_view x, mask_view key_mask, std::size_t queries) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), H = heads_,
                          d = Cn / H;
        B_ = B, T_ = Tn, last_fused_ = true, dropped_ = false;
        packed_qkv(x);
        out_.resize(shape<dynamic, dynamic, C>(B, queries, Cn));
        const T* qp = qkv_.data();  // q, k, v: columns 0, C, 2C of each (3C) row
        // queries' row stride: a row, or (one query per sequence) a whole sequence
        const std::size_t ldq = queries == Tn ? 3 * Cn : Tn * 3 * Cn;
        backend::cpu::attention_inference(out_.data(), Cn, qp, ldq, qp + Cn, qp + 2 * Cn, 3 * Cn,
                                          key_mask.empty() ? nullptr : key_mask.data(),
                                          T(1) / std::sqrt(T(d)), B, H, queries, Tn, d, causal);
        return out_.view();
    }

    // qkv_ (B*T, 3C) = x [Wq; Wk; Wv]ᵀ + [bq; bk; bv] with the packed weights (packed again
    // first when a visit made them stale)
    void packed_qkv(input_view x) {
        const std::size_t N = x.extent(0) * x.extent(1), Cn = x.extent(2);
        if (Cn != query.in_features())
            throw error(errc::shape_mismatch, "self_attention",
                        ftune::detail::cat("input has ", Cn, " features but the layer takes ",
                                           query.in_features()));
        if (!packed_current_) prepare_inference();
        qkv_.resize(shape<dynamic, dynamic>(N, 3 * Cn));
        backend::cpu::gemm_packed(transpose::no, N, 3 * Cn, Cn, T(1), x.data(), Cn, packed_qkv_,
                                  T(0), qkv_.data(), 3 * Cn, qkv_bias_.data());
    }

    std::size_t heads_;
    bool prepared_ = false;                   // eval-mode forwards use packed_qkv_
    bool packed_current_ = false;             // packed_qkv_ holds the current weights
    bool last_fused_ = false;                 // the last forward used packed_qkv_
    backend::cpu::packed_b<T> packed_qkv_;    // [Wq; Wk; Wv] packed (prepare_inference)
    buffer<T, shape<dynamic>> qkv_bias_;      // (3C) concatenated biases
    buffer<T, shape<dynamic, dynamic>> qkv_;  // (B*T, 3C) fused projections
    std::size_t B_ = 0, T_ = 0;               // the last forward's batch and sequence
    typename linear<T, C, C>::output_view q_, k_,
        v_;                                        // (B*T, C) projections (the linears' buffers)
    buffer<T, dynamic_shape<4>> scores_, probs_;   // (B, H, T, T)
    buffer<T, dynamic_shape<4>> probs_dropped_;    // (B, H, T, T) after dropout
    buffer<std::uint8_t, dynamic_shape<4>> mask_;  // (B, H, T, T) dropout keep mask
    bool dropped_ = false;                         // whether the last forward used dropout
    buffer<T, shape<dynamic, dynamic, C>> out_;    // (B, T, C) context
    // Buffers used only inside one backward call: one set per thread for every layer of this
    // type (an encoder's 12 layers share it), not one per layer.
    struct backward_scratch {
        buffer<T, dynamic_shape<4>> dp, dp_pre, ds;  // (B, H, T, T) gradients
        buffer<T, shape<dynamic, C>> dq, dk, dv;     // (B*T, C) gradients of the projections
    };
    static backward_scratch& scratch() {
        thread_local backward_scratch s;
        return s;
    }
};

}  // namespace layers
FTUNE_NAMESPACE_END
