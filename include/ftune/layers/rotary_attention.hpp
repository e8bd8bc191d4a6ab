// layers::rotary_attention: causal multi-head attention with rotary position embeddings and
// grouped-query key/value heads, with its output projection: Hugging Face's LlamaAttention
// (q_proj, k_proj, v_proj, o_proj; RoPE with rotate_half; repeat_kv; causal and padding masks)
// and, without the rotation and with biases, GPT2Attention (dropout of the probabilities).
#pragma once

#include <cmath>
#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/layers/attention_dropout.hpp"
#include "ftune/layers/gradients.hpp"
#include "ftune/layers/kv_cache.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// Sizes of a rotary attention layer.
struct rotary_sizes {
    std::size_t hidden;       ///< C, the model width
    std::size_t heads;        ///< H, query heads
    std::size_t kv_heads;     ///< Hkv, key/value heads (divides H; = H: plain multi-head)
    std::size_t head_dim;     ///< d (Llama: C / H unless config.head_dim says otherwise)
    double rope_theta = 1e4;  ///< the rotary base (Llama's rope_theta); 0: no rotation (GPT-2,
                              ///< whose learned positions are added at the input)
    double dropout = 0;       ///< on the attention probabilities in training (GPT-2's
                              ///< attn_pdrop; Llama: none)
};

/// x (B, T, C) -> (B, T, C): o_proj(drop(softmax(rope(q) rope(k)ᵀ / √d + causal + key mask)) v),
/// with q = q_proj(x) (H heads of d), k and v (Hkv heads, each shared by H / Hkv query heads).
/// Positions are start .. start + T - 1 in every row (forward's `start`). Proj<In, Out> is the
/// projection type (Llama's: linear without bias; a LoRA linear goes here).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu,
          template <std::size_t, std::size_t> class Proj = linear_no_bias<T, D>::template type>
class rotary_attention {
  public:
    using value_type = T;                                             ///< scalar type
    using input_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< x: (B, T, C)
    using output_view = input_view;                                   ///< y: (B, T, C)
    using d_input_view = view<T, shape<dynamic, dynamic, C>, D>;      ///< dx, accumulated into
    using mask_view = view<const T, shape<dynamic, dynamic>, D>;      ///< additive key mask (B, T)

    Proj<C, dynamic> q_proj;  ///< "q_proj" (C -> H d)
    Proj<C, dynamic> k_proj;  ///< "k_proj" (C -> Hkv d)
    Proj<C, dynamic> v_proj;  ///< "v_proj" (C -> Hkv d)
    Proj<dynamic, C> o_proj;  ///< "o_proj" (H d -> C)

    /// A zero-initialized layer of the given sizes.
    explicit rotary_attention(const rotary_sizes& s)
        : q_proj(s.hidden, s.heads * s.head_dim),
          k_proj(s.hidden, s.kv_heads * s.head_dim),
          v_proj(s.hidden, s.kv_heads * s.head_dim),
          o_proj(s.heads * s.head_dim, s.hidden),
          sizes_(s) {
        if (s.heads == 0 || s.kv_heads == 0 || s.heads % s.kv_heads != 0 ||
            (s.rope_theta > 0 && s.head_dim % 2 != 0))
            throw error(errc::invalid_argument, "rotary_attention",
                        ftune::detail::cat(s.kv_heads, " key/value heads must divide the ", s.heads,
                                           " query heads, and the head size ", s.head_dim,
                                           " must be even"));
    }

    /// The sizes it was built with.
    const rotary_sizes& sizes() const noexcept { return sizes_; }
    /// Whether queries and keys are rotated (rope_theta > 0).
    bool rotary() const noexcept { return sizes_.rope_theta > 0; }

    /// Attention of every position to itself and the earlier unmasked positions of its row.
    /// key_mask (B, T) is added to the scaled scores (0 keeps a key, the lowest value drops it).
    output_view forward(context& ctx, input_view x, mask_view key_mask = {},
                        std::size_t start = 0) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), N = B * Tn;
        const std::size_t H = sizes_.heads, Hkv = sizes_.kv_heads, d = sizes_.head_dim,
                          group = H / Hkv;
        const view<const T, shape<dynamic, C>, D> x2(x.data(), N, Cn);  // (B*T, C)
        B_ = B, T_ = Tn;
        // positions and their rotary angles: (N) and (N, d/2)
        positions_.resize(shape<dynamic>(N));
        ops::position_ids(positions_, Tn, start);
        rotated_qk(ctx, x2, positions_.view());  // q (N, H d), k (N, Hkv d)
        v_ = v_proj.forward(ctx, x2);            // (N, Hkv d)
        // every query head's keys and values: (N, H d)
        const auto ke = expanded(k_.view(), k_full_, group);
        const auto ve = expanded(v_, v_full_, group);
        scores_.resize(dynamic_shape<4>(B, H, Tn, Tn));  // (B, H, T, T)
        probs_.resize(scores_.shape());
        precision_ = ctx.precision;
        ops::head_scores(scores_, q_.view(), ke, precision_);
        const T scale = T(1) / std::sqrt(T(d));
        if (key_mask.empty())
            ops::masked_softmax(probs_, scores_, scale, /*causal=*/true);
        else
            ops::masked_softmax(probs_, scores_, key_mask, scale, /*causal=*/true);
        dropout_.forward(ctx, probs_.view(), T(sizes_.dropout), precision_);  // in training
        ctx_.resize(shape<dynamic, dynamic>(N, H * d));                       // (N, H d) context
        dropout_.read(probs_.view(),
                      [&](const auto& p) { ops::head_context(ctx_, p, ve, precision_); });
        const auto y = o_proj.forward(ctx, ctx_.view());  // (N, C)
        return {y.data(), B, Tn, y.extent(1)};
    }

    /// Generation: the step's new positions x (B, steps, C) attend to themselves and to the
    /// cached positions; their rotated keys and values are appended to this layer's entry
    /// (`layer`) of the cache, whose begin_step() set the positions and key mask. Eval mode;
    /// keeps nothing for backward.
    output_view forward_cached(context& ctx, input_view x, kv_cache<T, D>& cache,
                               std::size_t layer) {
        auto& kv = cache.layer(layer);
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), N = B * Tn;
        const std::size_t H = sizes_.heads, Hkv = sizes_.kv_heads, d = sizes_.head_dim;
        const std::size_t past = cache.length(), S = past + Tn, cap = cache.capacity();
        if (B != cache.batch() || Tn != cache.steps() || kv.k.shape().extent(2) != Hkv * d)
            throw error(errc::shape_mismatch, "rotary_attention::forward_cached",
                        ftune::detail::cat("input ", x.shape().to_string(), " and cache ",
                                           kv.k.shape().to_string(), " do not fit this step of ",
                                           cache.steps(), " positions"));
        const view<const T, shape<dynamic, C>, D> x2(x.data(), N, Cn);  // (B*T, C)
        rotated_qk(ctx, x2, cache.positions());                         // q (N, H d), k (N, Hkv d)
        const auto v = v_proj.forward(ctx, x2);                         // (N, Hkv d)
        for (std::size_t b = 0; b < B; ++b) {  // append to each sequence's cache rows
            const std::size_t rows = Tn * Hkv * d, at = (b * cap + past) * Hkv * d;
            ops::copy(view<T, shape<dynamic>, D>(kv.k.data() + at, rows),
                      view<const T, shape<dynamic>, D>(k_.data() + b * rows, rows));
            ops::copy(view<T, shape<dynamic>, D>(kv.v.data() + at, rows),
                      view<const T, shape<dynamic>, D>(v.data() + b * rows, rows));
        }
        ctx_.resize(shape<dynamic, dynamic>(N, H * d));  // (N, H d) context
        ops::cached_attention(ctx_, q_.view(), kv.k.view(), kv.v.view(), S, cache.key_mask(),
                              cache.scores(), cache.probs(), T(1) / std::sqrt(T(d)));
        const auto y = o_proj.forward(ctx, ctx_.view());  // (N, C)
        return {y.data(), B, Tn, y.extent(1)};
    }

    /// Packs the projections' weights for inference (linear::prepare_inference).
    void prepare_inference(precision p = precision::fp32) {
        q_proj.prepare_inference(p);
        k_proj.prepare_inference(p);
        v_proj.prepare_inference(p);
        o_proj.prepare_inference(p);
    }

    /// Accumulates the projections' gradients and, unless dx is empty, dx (grad_write::overwrite:
    /// dx written, its old content not read).
    void backward(context& ctx, output_view dout, d_input_view dx,
                  grad_write write = grad_write::accumulate) {
        const std::size_t B = B_, Tn = T_, N = B * Tn, Cn = dout.extent(2);
        const std::size_t H = sizes_.heads, Hkv = sizes_.kv_heads, d = sizes_.head_dim,
                          group = H / Hkv;
        auto& w = ctx.workspace.get<backward_scratch>();  // shared by the run's layers
        const view<const T, shape<dynamic, C>, D> g(dout.data(), N, Cn);
        w.dctx.resize(shape<dynamic, dynamic>(N, H * d));
        backward_into(o_proj, ctx, g, w.dctx.view());  // d context (N, H d)
        const auto ke = group == 1 ? k_.view() : k_full_.view();
        const auto ve = group == 1 ? view<const T, shape<dynamic, dynamic>, D>(v_) : v_full_.view();
        w.dp.resize(probs_.shape());
        ops::head_scores(w.dp, w.dctx.view(), ve, precision_);  // dP = dctx Vᵀ
        w.dv_full.resize(shape<dynamic, dynamic>(N, H * d));
        dropout_.read(probs_.view(), [&](const auto& p) {  // dV = Pᵀ dctx
            ops::head_context<transpose::yes>(w.dv_full, p, w.dctx.view(), precision_);
        });
        // dS (B, H, T, T) through the dropout and the softmax, then dQ (rotated) = dS K and
        // dK = dSᵀ Q
        w.dq.resize(shape<dynamic, dynamic>(N, H * d));
        w.dk_full.resize(shape<dynamic, dynamic>(N, H * d));
        dropout_.scores_backward(w.ds, w.ds_bf16, probs_.view(), w.dp.view(),
                                 T(1) / std::sqrt(T(d)), [&](const auto& ds) {
                                     ops::head_context(w.dq, ds, ke, precision_);
                                     ops::head_context<transpose::yes>(w.dk_full, ds, q_.view(),
                                                                       precision_);
                                 });
        // back through the repeat (sum over each group) and the rotation (its transpose)
        w.dk.resize(shape<dynamic, dynamic>(N, Hkv * d));
        w.dv.resize(w.dk.shape());
        w.dk.fill(T(0));
        w.dv.fill(T(0));
        ops::repeat_heads_backward(w.dk, w.dk_full, Hkv, group);
        ops::repeat_heads_backward(w.dv, w.dv_full, Hkv, group);
        if (rotary()) {
            ops::rope(w.dq, cos_, sin_, /*inverse=*/true);
            ops::rope(w.dk, cos_, sin_, /*inverse=*/true);
        }
        const view<T, shape<dynamic, C>, D> dx2 =
            dx.empty() ? view<T, shape<dynamic, C>, D>()
                       : view<T, shape<dynamic, C>, D>(dx.data(), N, Cn);
        backward_into(q_proj, ctx, w.dq.view(), dx2, write);  // the first writes as told
        k_proj.backward(ctx, w.dk.view(), dx2);
        v_proj.backward(ctx, w.dv.view(), dx2);
    }

    /// Whether any projection trains (false: frozen).
    bool trainable() const noexcept {
        return q_proj.trainable() || k_proj.trainable() || v_proj.trainable() || o_proj.trainable();
    }
    /// Sets every gradient to zero.
    void zero_grad() {
        q_proj.zero_grad();
        k_proj.zero_grad();
        v_proj.zero_grad();
        o_proj.zero_grad();
    }

    /// Visits q_proj, k_proj, v_proj, o_proj (Transformers' order).
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        q_proj.visit_parameters(join_name(prefix, "q_proj"), f);
        k_proj.visit_parameters(join_name(prefix, "k_proj"), f);
        v_proj.visit_parameters(join_name(prefix, "v_proj"), f);
        o_proj.visit_parameters(join_name(prefix, "o_proj"), f);
    }

  private:
    precision precision_ = precision::fp32;  // the last forward's head products
    using matrix = buffer<T, shape<dynamic, dynamic>, D>;
    // q_ (N, H d) and k_ (N, Hkv d) of x (N, C), rotated at positions (N) unless not rotary
    // (the angles kept in cos_, sin_ for backward)
    void rotated_qk(context& ctx, view<const T, shape<dynamic, C>, D> x,
                    view<const token_id, shape<dynamic>, D> positions) {
        const std::size_t N = x.extent(0), d = sizes_.head_dim;
        if (rotary()) {
            cos_.resize(shape<dynamic, dynamic>(N, d / 2));  // (N, d/2) rotary angles
            sin_.resize(cos_.shape());
            ops::rope_table(cos_, sin_, positions, sizes_.rope_theta);
        }
        q_.resize(shape<dynamic, dynamic>(N, sizes_.heads * d));
        ops::copy(q_, q_proj.forward(ctx, x));
        k_.resize(shape<dynamic, dynamic>(N, sizes_.kv_heads * d));
        ops::copy(k_, k_proj.forward(ctx, x));
        if (rotary()) {
            ops::rope(q_, cos_, sin_);
            ops::rope(k_, cos_, sin_);
        }
    }
    // x itself when every query head has its own key/value head; else x's heads repeated into
    // full (N, H d)
    template <class X>
    view<const T, shape<dynamic, dynamic>, D> expanded(X x, matrix& full, std::size_t group) {
        const view<const T, shape<dynamic, dynamic>, D> v(x.data(), x.extent(0), x.extent(1));
        if (group == 1) return v;
        full.resize(shape<dynamic, dynamic>(v.extent(0), v.extent(1) * group));
        ops::repeat_heads(full, v, sizes_.kv_heads, group);
        return full.view();
    }

    rotary_sizes sizes_;
    std::size_t B_ = 0, T_ = 0;                      // the last forward's batch and length
    buffer<token_id, shape<dynamic>, D> positions_;  // (N) position of each row
    matrix cos_, sin_;                               // (N, d/2) rotary angles
    matrix q_, k_;                                   // (N, H d), (N, Hkv d) rotated
    typename Proj<C, dynamic>::output_view v_;       // (N, Hkv d) the value projection's
    matrix k_full_, v_full_;                         // (N, H d) repeated for every query head
    buffer<T, dynamic_shape<4>, D> scores_, probs_;  // (B, H, T, T)
    attention_dropout<T, D> dropout_;                // on the probabilities, in training
    matrix ctx_;                                     // (N, H d) context

    struct backward_scratch {                       // one set per run (ctx.workspace)
        buffer<T, dynamic_shape<4>, D> dp, ds;      // (B, H, T, T)
        buffer<bf16, dynamic_shape<4>, D> ds_bf16;  // (B, H, T, T) dS for bf16 products
        matrix dctx, dq, dk_full, dv_full, dk, dv;  // (N, H d) and (N, Hkv d)
    };
};

}  // namespace layers
FTUNE_NAMESPACE_END
