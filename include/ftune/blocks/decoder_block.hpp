// blocks::decoder_block: one pre-norm causal decoder layer composed from ftune's layers, as
// Llama-family models stack them (LlamaDecoderLayer):
//   h = x + self_attn(input_layernorm(x));  y = h + mlp(post_attention_layernorm(h)),
// with GPT-2's dropout of both branches' outputs in training when decoder_sizes::dropout > 0
// (and of the attention probabilities when attention_dropout > 0).
#pragma once

#include <string_view>

#include "ftune/layers/dropout.hpp"
#include "ftune/layers/gated_mlp.hpp"
#include "ftune/layers/lora_linear.hpp"
#include "ftune/layers/rms_norm.hpp"
#include "ftune/layers/rotary_attention.hpp"

FTUNE_NAMESPACE_BEGIN
namespace blocks {

/// Sizes of a decoder block known at run time.
struct decoder_sizes {
    std::size_t hidden;                           ///< C
    std::size_t heads;                            ///< query heads
    std::size_t kv_heads;                         ///< key/value heads (divide heads)
    std::size_t head_dim;                         ///< d
    std::size_t ffn;                              ///< intermediate size F
    double rope_theta = 1e4;                      ///< rotary base
    double norm_eps = 1e-6;                       ///< the norms' eps (Llama: rms_norm_eps)
    ops::activation act = ops::activation::silu;  ///< the MLP gate's activation (hidden_act)
    double dropout = 0;  ///< on the attention's and the MLP's outputs in training (GPT-2's
                         ///< resid_pdrop; Llama: none)
    double attention_dropout = 0;  ///< on the attention probabilities in training (GPT-2's
                                   ///< attn_pdrop; Llama: none)
};

/// Llama's layer types on device D: RMSNorm, rotary grouped-query attention and the gated MLP,
/// all projections without a bias (layers::lora_linear: they can take LoRA adapters at run
/// time); Hugging Face's names. Another family writes its own parts
/// struct (gpt2::parts).
template <scalar T, device_tag D = device::cpu>
struct llama_parts {
    using value_type = T;   ///< scalar type
    using device_type = D;  ///< where the block's tensors live
    /// The same parts on device D2.
    template <device_tag D2>
    using on_device = llama_parts<T, D2>;
    static constexpr std::string_view norm1_name = "input_layernorm";           ///< first norm
    static constexpr std::string_view attention_name = "self_attn";             ///< attention
    static constexpr std::string_view norm2_name = "post_attention_layernorm";  ///< second norm
    static constexpr std::string_view mlp_name = "mlp";                         ///< feed-forward
    /// the two norms: (N, C) -> (N, C)
    template <std::size_t C>
    using norm = layers::rms_norm<T, C, D>;
    /// the attention with its output projection: (B, T, C) -> (B, T, C)
    template <std::size_t C>
    using attention =
        layers::rotary_attention<T, C, D, layers::lora_projection<T, D, false>::template type>;
    /// the feed-forward: (N, C) -> (N, C)
    template <std::size_t C, std::size_t F>
    using mlp = layers::gated_mlp<T, C, F, D, layers::lora_linear<T, C, F, D, false>,
                                  layers::lora_linear<T, F, C, D, false>>;
};

/// (B, T, C) -> (B, T, C), pre-norm with residuals written out. Parts gives the layer types and
/// their names (llama_parts<T>: input_layernorm, self_attn, post_attention_layernorm, mlp).
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic, class Parts = llama_parts<T>>
class decoder_block {
    using D = typename Parts::device_type;

  public:
    using value_type = T;                                             ///< scalar type
    using device_type = D;                                            ///< where tensors live
    using input_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< x: (B, T, C)
    using output_view = input_view;                                   ///< y: (B, T, C)
    using d_input_view = view<T, shape<dynamic, dynamic, C>, D>;      ///< dx, accumulated into
    using attention_type = typename Parts::template attention<C>;     ///< self_attn
    using mask_view = typename attention_type::mask_view;             ///< additive key mask (B, T)

    typename Parts::template norm<C> input_layernorm;           ///< Parts::norm1_name
    attention_type self_attn;                                   ///< Parts::attention_name
    typename Parts::template norm<C> post_attention_layernorm;  ///< Parts::norm2_name
    typename Parts::template mlp<C, F> mlp;                     ///< Parts::mlp_name
    layers::dropout<T, C, D> attn_dropout;  ///< on self_attn's output (GPT-2's resid_dropout)
    layers::dropout<T, C, D> mlp_dropout;   ///< on mlp's output (GPT-2's mlp.dropout)

    /// A zero-initialized block of the given sizes (norm weights 1).
    explicit decoder_block(const decoder_sizes& s)
        : input_layernorm(s.hidden, T(s.norm_eps)),
          self_attn(layers::rotary_sizes{s.hidden, s.heads, s.kv_heads, s.head_dim, s.rope_theta,
                                         s.attention_dropout}),
          post_attention_layernorm(s.hidden, T(s.norm_eps)),
          mlp(s.hidden, s.ffn, s.act),
          attn_dropout(T(s.dropout)),
          mlp_dropout(T(s.dropout)) {}

    /// y = block(x), each position attending to itself and earlier unmasked positions.
    output_view forward(context& ctx, input_view x, mask_view key_mask = {}) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), N = B * Tn;
        const auto n1 = input_layernorm.forward(ctx, flat(x));                    // (N, C)
        const auto a = self_attn.forward(ctx, {n1.data(), B, Tn, Cn}, key_mask);  // (B, T, C)
        h_.resize(shape<dynamic, C>(N, Cn));
        ops::residual_add(h_, flat(x), attn_dropout.forward(ctx, flat(a)));  // h = x + attention
        const auto n2 = post_attention_layernorm.forward(ctx, h_.view());
        const auto m = mlp_dropout.forward(ctx, mlp.forward(ctx, n2));
        y_.resize(shape<dynamic, C>(N, Cn));
        ops::residual_add(y_, h_.view(), m);  // y = h + mlp
        return {y_.data(), B, Tn, Cn};
    }

    /// Generation: the step's new positions x (B, steps, C) through the block, attending to the
    /// positions cached in layer `layer` of cache (and appending theirs). Eval mode.
    template <class Cache>
    output_view forward_cached(context& ctx, input_view x, Cache& cache, std::size_t layer) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2), N = B * Tn;
        const auto n1 = input_layernorm.forward(ctx, flat(x));  // (N, C)
        const auto a = self_attn.forward_cached(ctx, {n1.data(), B, Tn, Cn}, cache, layer);
        h_.resize(shape<dynamic, C>(N, Cn));
        ops::residual_add(h_, flat(x), flat(a));  // h = x + attention
        const auto m = mlp.forward(ctx, post_attention_layernorm.forward(ctx, h_.view()));
        y_.resize(shape<dynamic, C>(N, Cn));
        ops::residual_add(y_, h_.view(), m);  // y = h + mlp
        return {y_.data(), B, Tn, Cn};
    }

    /// Accumulates every parameter's gradient and, unless dx is empty, dx (grad_write::overwrite:
    /// dx written, its old content not read).
    void backward(context& ctx, output_view dout, d_input_view dx,
                  grad_write write = grad_write::accumulate) {
        const std::size_t B = dout.extent(0), Tn = dout.extent(1), Cn = dout.extent(2), N = B * Tn;
        auto& w = ctx.workspace.get<backward_scratch>();  // shared by the run's blocks
        const auto dy = flat(dout);
        // d h = d y + d (mlp(norm2(h)))
        w.dh.resize(shape<dynamic, C>(N, Cn));
        ops::copy(w.dh, dy);
        w.dn.resize(w.dh.shape());
        layers::backward_into(mlp, ctx, dropped(ctx, mlp_dropout, dy, w.dd), w.dn.view());
        post_attention_layernorm.backward(ctx, w.dn.view(), w.dh.view());
        // d x = d h + d (attention(norm1(x)))
        w.da.resize(w.dh.shape());
        const auto dha = dropped(ctx, attn_dropout, w.dh.view(), w.dd);  // (N, C)
        layers::backward_into(self_attn, ctx,
                              typename attention_type::output_view{dha.data(), B, Tn, Cn},
                              typename attention_type::d_input_view{w.da.data(), B, Tn, Cn});
        const view<T, shape<dynamic, C>, D> dx2 =
            dx.empty() ? view<T, shape<dynamic, C>, D>()
                       : view<T, shape<dynamic, C>, D>(dx.data(), N, Cn);
        layers::backward_into(input_layernorm, ctx, w.da.view(), dx2, write);
        if (!dx.empty()) ops::residual_add(dx2, dx2, w.dh.view());
    }

    /// Whether any parameter trains (false: frozen).
    bool trainable() const noexcept {
        return input_layernorm.trainable() || self_attn.trainable() ||
               post_attention_layernorm.trainable() || mlp.trainable();
    }
    /// Sets every gradient to zero.
    void zero_grad() {
        input_layernorm.zero_grad();
        self_attn.zero_grad();
        post_attention_layernorm.zero_grad();
        mlp.zero_grad();
    }

    /// Whether eval-mode forwards use packed weights (prepare_inference()). The full forward
    /// still keeps what backward needs; generation (forward_cached) keeps nothing.
    bool inference_prepared() const noexcept { return self_attn.q_proj.inference_prepared(); }
    /// Whether the last forward kept nothing for backward (never: see inference_prepared).
    bool kept_nothing_for_backward() const noexcept { return false; }
    /// Packs every projection's weight for inference (linear::prepare_inference).
    void prepare_inference(precision p = precision::fp32) {
        self_attn.prepare_inference(p);
        mlp.prepare_inference(p);
    }

    /// Visits the first norm, the attention, the second norm, the MLP (Transformers' order),
    /// under Parts' names.
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        input_layernorm.visit_parameters(join_name(prefix, Parts::norm1_name), f);
        self_attn.visit_parameters(join_name(prefix, Parts::attention_name), f);
        post_attention_layernorm.visit_parameters(join_name(prefix, Parts::norm2_name), f);
        mlp.visit_parameters(join_name(prefix, Parts::mlp_name), f);
    }

  private:
    template <class X>
    static auto flat(X x) {  // (B, T, C) -> (B*T, C)
        return view<std::remove_pointer_t<decltype(x.data())>, shape<dynamic, C>, D>(
            x.data(), x.extent(0) * x.extent(1), x.extent(2));
    }

    buffer<T, shape<dynamic, C>, D> h_, y_;              // (N, C) after the attention; the output
    struct backward_scratch {                            // one set per run (ctx.workspace)
        buffer<T, shape<dynamic, C>, D> dh, dn, da, dd;  // (N, C)
    };
    // d of a dropout's input from d of its output dy: dy itself when its last forward passed x
    // through, otherwise dy * mask / (1 - p) written into buf
    static view<const T, shape<dynamic, C>, D> dropped(context& ctx, layers::dropout<T, C, D>& drop,
                                                       view<const T, shape<dynamic, C>, D> dy,
                                                       buffer<T, shape<dynamic, C>, D>& buf) {
        if (!drop.active()) return dy;
        buf.resize(dy.shape());
        layers::backward_into(drop, ctx, dy, buf.view());
        return buf.view();
    }
};

}  // namespace blocks
FTUNE_NAMESPACE_END
