// blocks::encoder_block: one transformer encoder layer composed from ftune's layers, with the
// norm placement as a policy: post_norm (BERT: LayerNorm after each residual sum) or pre_norm
// (LayerNorm before each sublayer). Residuals are written out as plain code.
#pragma once

#include <concepts>
#include <span>
#include <string_view>

#include "ftune/layers.hpp"

FTUNE_NAMESPACE_BEGIN
namespace blocks {

/// Norm placement of BERT (and most encoders): y = LN(x + sublayer(x)).
struct post_norm {};
/// Norm placement of pre-LN transformers: y = x + sublayer(LN(x)).
struct pre_norm {};

/// Sizes of an encoder block known at run time.
struct block_sizes {
    std::size_t hidden;                           ///< C
    std::size_t heads;                            ///< attention heads (divide C)
    std::size_t ffn;                              ///< intermediate size F
    double hidden_dropout = 0.1;                  ///< BERT hidden_dropout_prob
    double attention_dropout = 0.1;               ///< BERT attention_probs_dropout_prob
    double layer_norm_eps = 1e-12;                ///< BERT layer_norm_eps
    ops::activation act = ops::activation::gelu;  ///< FFN activation (BERT hidden_act)
};

/// The layer types an encoder block is built from, BERT's by default, all on device D:
/// projection<In, Out> for q, k, v, the attention output and the feed-forward (layers::lora_linear:
/// a linear that can take a LoRA adapter at run time), norm<C> for the two norms, activation<F> for
/// the FFN (Act: layers::hidden_activation, chosen by block_sizes::act, or a fixed one such as
/// layers::gelu), attention<C> the self-attention over those projections. Another family writes its
/// own parts struct.
template <scalar T, device_tag D = device::cpu,
          template <class, std::size_t, class> class Act = layers::hidden_activation>
struct bert_parts {
    using value_type = T;   ///< scalar type
    using device_type = D;  ///< where the block's tensors live and which backend runs it
    /// The same parts on device D2.
    template <device_tag D2>
    using on_device = bert_parts<T, D2, Act>;
    /// q, k, v, attention output and feed-forward projections: (N, In) -> (N, Out)
    template <std::size_t In, std::size_t Out>
    using projection = layers::lora_linear<T, In, Out, D>;
    /// the norm after (post_norm) or before (pre_norm) each sublayer: (N, C) -> (N, C)
    template <std::size_t C>
    using norm = layers::layer_norm<T, C, D>;
    /// the FFN activation: (N, F) -> (N, F)
    template <std::size_t F>
    using activation = Act<T, F, D>;
    /// multi-head self-attention with projection<C, C> for q, k and v: (B, T, C) -> (B, T, C)
    template <std::size_t C>
    using attention = layers::self_attention<T, C, D, projection<C, C>>;
};

/// Self-attention + feed-forward with residuals: (B, T, C) -> (B, T, C). Hugging Face names:
/// attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate.dense,
/// output.{dense,LayerNorm}. Parts gives the layer types and the device (bert_parts<T>: BERT's
/// linear, LayerNorm and the configured activation on the CPU).
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic, class Norm = post_norm,
          class Parts = bert_parts<T>>
class encoder_block {
    static_assert(std::is_same_v<Norm, post_norm> || std::is_same_v<Norm, pre_norm>,
                  "ftune: encoder_block's Norm is blocks::post_norm (BERT) or blocks::pre_norm");
    static_assert(std::is_same_v<typename Parts::value_type, T>,
                  "ftune: encoder_block's Parts compute in the block's scalar type");
    using D = typename Parts::device_type;
    using Act = typename Parts::template activation<F>;

  public:
    using value_type = T;                                             ///< scalar type
    using input_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< x: (B, T, C)
    using output_view = input_view;                                   ///< y: (B, T, C)
    using d_input_view = view<T, shape<dynamic, dynamic, C>, D>;      ///< dx, accumulated into
    using device_type = D;  ///< where the block's tensors live
    using attention_type = typename Parts::template attention<C>;  ///< attention.self
    using mask_view = typename attention_type::mask_view;          ///< additive key mask (B, T)

    attention_type attention;                                   ///< attention.self
    typename Parts::template projection<C, C> attention_dense;  ///< attention.output.dense
    layers::dropout<T, C, D> attention_dropout;  ///< dropout after attention.output.dense
    typename Parts::template norm<C> norm1;      ///< attention.output.LayerNorm
    typename Parts::template projection<C, F> intermediate;  ///< intermediate.dense
    Act activation;                                          ///< intermediate activation
    typename Parts::template projection<F, C> output_dense;  ///< output.dense
    layers::dropout<T, C, D> output_dropout;                 ///< dropout after output.dense
    typename Parts::template norm<C> norm2;                  ///< output.LayerNorm

    /// A zero-initialized block of the given sizes (LayerNorm weights 1).
    explicit encoder_block(const block_sizes& s)
        : attention(s.hidden, s.heads, T(s.attention_dropout)),
          attention_dense(s.hidden, s.hidden),
          attention_dropout(T(s.hidden_dropout)),
          norm1(s.hidden, T(s.layer_norm_eps)),
          intermediate(s.hidden, s.ffn),
          activation(make_activation(s.act)),
          output_dense(s.ffn, s.hidden),
          output_dropout(T(s.hidden_dropout)),
          norm2(s.hidden, T(s.layer_norm_eps)) {}

    /// y = block(x) with keys masked by key_mask (B, T) (empty: no mask). Keeps a view of x.
    output_view forward(context& ctx, input_view x, mask_view key_mask = {}) {
        const std::size_t B = x.extent(0), Tn = x.extent(1);
        inference_only_ = !ctx.training() && inference_prepared();
        if (!inference_only_) return unflat(kept_forward(ctx, x, key_mask, false), B, Tn);
        // packed weights, fused epilogues, nothing kept for backward
        x_ = flat(x);
        B_ = B, T_ = Tn, Tx_ = Tn;
        if constexpr (std::is_same_v<Norm, post_norm>) {
            out_ = inference_tail(ctx, flat(attention.forward(ctx, x, key_mask)), x_);
        } else {
            const auto n1 = norm1.forward(ctx, x_);
            out_ =
                inference_tail(ctx, flat(attention.forward(ctx, unflat(n1, B, Tn), key_mask)), x_);
        }
        return unflat(out_, B, Tn);
    }

    /// Prepared inference over a ragged batch (self_attention::forward_packed): x (1, N, C)
    /// holds S sequences one after another, sequence s at rows offsets[s] .. offsets[s + 1];
    /// returns (1, N, C), or with first_only (1, S, C), each sequence's position 0 (as
    /// forward_first). No padded row is computed. Needs prepare_inference(); eval mode.
    output_view forward_packed(context& ctx, input_view x, std::span<const std::size_t> offsets,
                               bool first_only = false) {
        const std::size_t N = x.extent(1), Cn = x.extent(2);
        inference_only_ = true;
        attention_type::check_offsets(offsets, N);
        const std::size_t S = offsets.size() - 1, rows = first_only ? S : N;
        view<const T, shape<dynamic, C>, D> residual = flat(x);  // the rows that continue
        if (first_only) {                                        // position 0 of each sequence
            first_.resize(shape<dynamic, C>(S, Cn));
            for (std::size_t s = 0; s < S; ++s)
                ops::copy(view<T, shape<dynamic>, D>(first_.data() + s * Cn, Cn),
                          view<const T, shape<dynamic>, D>(x.data() + offsets[s] * Cn, Cn));
            residual = first_.view();
        }
        if constexpr (std::is_same_v<Norm, post_norm>) {
            out_ = inference_tail(ctx, flat(attention.forward_packed(ctx, x, offsets, first_only)),
                                  residual);
        } else {
            const auto n1 = norm1.forward(ctx, flat(x));  // every position: keys and values
            out_ = inference_tail(
                ctx, flat(attention.forward_packed(ctx, unflat(n1, 1, N), offsets, first_only)),
                residual);
        }
        B_ = 1, T_ = rows, Tx_ = N;
        return unflat(out_, 1, rows);
    }

    /// The first token of each sequence only: (B, 1, C), row 0 of forward()'s output, computing
    /// every position's keys and values but nothing else for the other positions (the last layer
    /// under a [CLS] classifier). On a model prepared for inference, in eval mode: equal bit for
    /// bit, nothing kept for backward. Otherwise (training) equal up to the order of float sums,
    /// keeping what backward needs; backward then takes dy (B, 1, C) and gives dx (B, T, C).
    output_view forward_first(context& ctx, input_view x, mask_view key_mask = {}) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2);
        first_.resize(shape<dynamic, C>(B, Cn));  // (B, C) x at position 0
        ops::first_tokens(first_, x);
        inference_only_ = !ctx.training() && inference_prepared();
        if (!inference_only_) return unflat(kept_forward(ctx, x, key_mask, true), B, 1);
        if constexpr (std::is_same_v<Norm, post_norm>) {
            out_ =
                inference_tail(ctx, flat(attention.forward_first(ctx, x, key_mask)), first_.view());
        } else {
            const auto n1 = norm1.forward(ctx, flat(x));  // every position: keys and values
            out_ =
                inference_tail(ctx, flat(attention.forward_first(ctx, unflat(n1, B, Tn), key_mask)),
                               first_.view());
        }
        B_ = B, T_ = 1, Tx_ = Tn;
        return unflat(out_, B, 1);
    }

    /// Accumulates every parameter's gradient and, unless dx is empty, dx (B, T, C) from dy, the
    /// gradient of the last forward's output: (B, T, C), or (B, 1, C) after forward_first
    /// (grad_write::overwrite: dx written, its old content not read).
    void backward(context& ctx, output_view dy_in, d_input_view dx_in,
                  grad_write write = grad_write::accumulate) {
        if (inference_only_) throw no_backward_after_inference("encoder_block");
        auto& s = ctx.workspace.get<backward_scratch>();
        // N rows continue through the block (all B T, or B first tokens); Nx rows came in
        const std::size_t N = B_ * T_, Nx = B_ * Tx_, Cn = dy_in.extent(2),
                          Fn = intermediate.out_features();
        if (dy_in.extent(0) != B_ || dy_in.extent(1) != T_)
            throw error(
                errc::shape_mismatch, "encoder_block backward",
                ftune::detail::cat("dy is ", dy_in.shape().to_string(),
                                   " but the last forward gave (", B_, ", ", T_, ", ", Cn, ")"));
        const auto dy = flat(dy_in);
        const bool pre = std::is_same_v<Norm, pre_norm>;
        // every gradient buffer is written before it is read: none is zeroed
        s.c1.resize(shape<dynamic, C>(N, Cn));
        s.c2.resize(shape<dynamic, C>(pre ? Nx : N, Cn));
        s.c3.resize(shape<dynamic, C>(N, Cn));
        s.f1.resize(shape<dynamic, F>(N, Fn));
        s.f2.resize(shape<dynamic, F>(N, Fn));
        // dx += d (the residual rows), or dx = d where write says so: every position, or
        // position 0 after forward_first (the other rows then zero); the writes after it add
        auto add_residual = [&](view<const T, shape<dynamic, C>, D> d) {
            if (dx_in.empty()) return;
            if (T_ == Tx_) {
                if (write == grad_write::overwrite)
                    ops::copy(flat(dx_in), d);
                else
                    ops::residual_add(flat(dx_in), flat(dx_in), d);
            } else {
                if (write == grad_write::overwrite) ops::zero(dx_in);
                ops::add_first_tokens(dx_in, d);
            }
        };
        if constexpr (std::is_same_v<Norm, post_norm>) {
            // y = LN2(s2), s2 = n1 + f: d_s2 = LN2ᵀ dy; d_n1 += d_s2; d_f = d_s2 through the FFN
            layers::backward_into(norm2, ctx, dy, s.c1.view());  // d_c1 = d s2
            ffn_backward(ctx, s.c1.view(), s.c1.view(), N, Cn,
                         grad_write::accumulate);  // d_c1 += d n1 (through FFN)
            // n1 = LN1(s1), s1 = x + a: d_s1 = LN1ᵀ d_n1; dx += d_s1; d_a = d_s1 through attention
            layers::backward_into(norm1, ctx, s.c1.view(), s.c2.view());  // d_c2 = d s1
            add_residual(s.c2.view());
            attention_backward(ctx, s.c2.view(), dx_in, N, Cn, grad_write::accumulate);
        } else {
            // y = h1 + f(LN2(h1)): d_h1 = dy + LN2ᵀ(FFNᵀ dy)
            ffn_backward(ctx, dy, s.c1.view(), N, Cn, grad_write::overwrite);  // d_c1 = d n2
            ops::copy(s.c3, dy);                                               // d_c3 = d h1 = dy
            norm2.backward(ctx, s.c1.view(), s.c3.view());  //        ... + LN2ᵀ d n2
            // h1 = x + a(LN1(x)): dx += d_h1 + LN1ᵀ(attentionᵀ d_h1)
            add_residual(s.c3.view());
            attention_backward(ctx, s.c3.view(), unflat(s.c2.view(), B_, Tx_), N, Cn,
                               grad_write::overwrite);  // d_c2 = d n1, every position
            const view<T, shape<dynamic, C>, D> dx =
                dx_in.empty() ? view<T, shape<dynamic, C>, D>() : flat(dx_in);
            norm1.backward(ctx, s.c2.view(), dx);  // dx += LN1ᵀ d n1
        }
    }

    /// Packs every projection's weight for inference (linear::prepare_inference).
    void prepare_inference(precision p = precision::fp32) {
        attention.prepare_inference(p), attention_dense.prepare_inference(p);
        intermediate.prepare_inference(p), output_dense.prepare_inference(p);
    }

    /// Whether the last forward ran the prepared inference path (backward would throw).
    bool kept_nothing_for_backward() const noexcept { return inference_only_; }

    /// Whether eval-mode forwards run on the weights packed by prepare_inference().
    bool inference_prepared() const noexcept { return attention.inference_prepared(); }

    /// Whether any parameter of the block trains (false: frozen).
    bool trainable() const noexcept {
        return attention.trainable() || attention_dense.trainable() || norm1.trainable() ||
               intermediate.trainable() || output_dense.trainable() || norm2.trainable();
    }
    /// Sets every gradient to zero.
    void zero_grad() {
        attention.zero_grad(), attention_dense.zero_grad(), norm1.zero_grad();
        intermediate.zero_grad(), output_dense.zero_grad(), norm2.zero_grad();
    }

    /// Visits the parameters with Hugging Face's names, in Hugging Face's order.
    template <class Fn>
    void visit_parameters(std::string_view prefix, Fn&& f) {
        const std::string p(prefix);
        attention.visit_parameters(join_name(p, "attention.self"), f);
        attention_dense.visit_parameters(join_name(p, "attention.output.dense"), f);
        norm1.visit_parameters(join_name(p, "attention.output.LayerNorm"), f);
        intermediate.visit_parameters(join_name(p, "intermediate.dense"), f);
        output_dense.visit_parameters(join_name(p, "output.dense"), f);
        norm2.visit_parameters(join_name(p, "output.LayerNorm"), f);
    }

  private:
    // forward() (first_only false) or forward_first() outside prepared inference: the (rows, C)
    // output, rows = B T, or B for position 0 alone (first_ holds x there), keeping what backward
    // needs (x's view, the residual sums, each layer's own)
    //   post-norm: n1 = LN1(x + dropout(dense(attention(x)))); y = LN2(n1 +
    //   dropout(out(act(inter(n1))))) pre-norm:  h1 = x + dropout(dense(attention(LN1(x)))); y = h1
    //   + dropout(out(act(inter(LN2(h1)))))
    view<const T, shape<dynamic, C>, D> kept_forward(context& ctx, input_view x, mask_view key_mask,
                                                     bool first_only) {
        const std::size_t B = x.extent(0), Tn = x.extent(1), Cn = x.extent(2),
                          rows = first_only ? B : B * Tn;
        x_ = flat(x);
        B_ = B, T_ = first_only ? 1 : Tn, Tx_ = Tn;
        const auto residual = first_only ? first_.view() : x_;  // (rows, C) what continues
        auto attend = [&](input_view in) {                      // (rows, C) the attention's output
            return flat(first_only ? attention.forward_first(ctx, in, key_mask)
                                   : attention.forward(ctx, in, key_mask));
        };
        h1_.resize(shape<dynamic, C>(rows, Cn));  // (rows, C) first residual sum
        h2_.resize(shape<dynamic, C>(rows, Cn));  // (rows, C) second residual sum
        if constexpr (std::is_same_v<Norm, post_norm>) {
            const auto ad = attention_dropout.forward(ctx, attention_dense.forward(ctx, attend(x)));
            ops::residual_add(h1_, residual, ad);
            const auto n1 = norm1.forward(ctx, h1_.view());
            const auto f = output_dropout.forward(ctx, ffn_forward(ctx, n1));
            ops::residual_add(h2_, n1, f);
            out_ = norm2.forward(ctx, h2_.view());
        } else {
            const auto n1 = norm1.forward(ctx, x_);  // every position: keys and values
            const auto ad = attention_dropout.forward(
                ctx, attention_dense.forward(ctx, attend(unflat(n1, B, Tn))));
            ops::residual_add(h1_, residual, ad);
            const auto n2 = norm2.forward(ctx, h1_.view());
            const auto f = output_dropout.forward(ctx, ffn_forward(ctx, n2));
            ops::residual_add(h2_, h1_, f);
            out_ = h2_.view();
        }
        return out_;
    }

    using out_projection = typename Parts::template projection<F, C>;  // output_dense's type
    // Whether the activation and the output projection can keep the FFN activation in bf16
    // alone (hidden_activation::forward_bf16 and linear's bf16 input: float on the CPU)
    static constexpr bool ffn_bf16_capable =
        requires(context & c, Act& a, out_projection& o, view<const T, shape<dynamic, F>, D> h,
                 view<const T, shape<dynamic, C>, D> r) {
        o.forward(c, a.forward_bf16(c, h));
        o.forward_fused(c, a.forward_bf16(c, h), ops::add_residual{r});
        { o.forward_precision(c) == precision::bf16 } -> std::convertible_to<bool>;
        { a.keeps_input_only() && o.takes_bf16_input() } -> std::convertible_to<bool>;
    };

    using in_projection = typename Parts::template projection<C, F>;  // intermediate's type
    // Whether prepared inference applies the FFN activation in the intermediate product's
    // epilogue (ops::apply_activation, on each tile as it is stored): for ftune's own activation
    // and projection layers only, whose computation that reproduces (a type of the user's, or
    // derived from these, may compute something else: it keeps the separate activation)
    static constexpr bool ffn_activation_fusable =
        (std::is_same_v<Act, layers::hidden_activation<T, F, D>> ||
         requires {
             requires std::is_same_v<Act, layers::activation<T, Act::fixed_kind, F, D>>;
         }) &&
        (std::is_same_v<in_projection, layers::linear<T, C, F, D, true>> ||
         std::is_same_v<in_projection, layers::linear<T, C, F, D, false>> ||
         std::is_same_v<in_projection, layers::lora_linear<T, C, F, D, true>> ||
         std::is_same_v<in_projection, layers::lora_linear<T, C, F, D, false>>);

    // Whether this forward keeps the FFN activation in bf16 alone: the output projection's
    // product runs in bf16, the activation's backward reads its input only (not tanh), and the
    // projection takes a bf16 input (no active LoRA adapter). The same values either way: the
    // projection's product and its weight gradient's read the activation rounded to bf16.
    bool ffn_in_bf16(const context& ctx) const {
        if constexpr (ffn_bf16_capable)
            return output_dense.forward_precision(ctx) == precision::bf16 &&
                   activation.keeps_input_only() && output_dense.takes_bf16_input();
        else
            return false;
    }

    // project(act(h)) for h (rows, F), the output projection's call on the activation, which
    // is kept in bf16 alone where ffn_in_bf16 says
    template <class Project>
    view<const T, shape<dynamic, C>, D> activate_into(context& ctx,
                                                      view<const T, shape<dynamic, F>, D> h,
                                                      Project project) {
        if constexpr (ffn_bf16_capable)
            if (ffn_in_bf16(ctx)) return project(activation.forward_bf16(ctx, h));
        return project(activation.forward(ctx, h));
    }

    // out(act(inter(n))) (rows, C), keeping what backward needs
    view<const T, shape<dynamic, C>, D> ffn_forward(context& ctx,
                                                    view<const T, shape<dynamic, C>, D> n) {
        return activate_into(ctx, intermediate.forward(ctx, n),
                             [&](auto g) { return output_dense.forward(ctx, g); });
    }

    // Prepared inference after the attention: a (rows, C) attention output and the residual
    // x (rows, C) it adds to. The residuals run in the output projections' epilogues (the same
    // values as residual_add after them, bit for bit); dropout is the identity.
    //   post-norm: n1 = LN1(x + dense(a)); y = LN2(n1 + out(act(inter(n1))))
    //   pre-norm:  h1 = x + dense(a);      y = h1 + out(act(inter(LN2(h1))))
    view<const T, shape<dynamic, C>, D> inference_tail(context& ctx,
                                                       view<const T, shape<dynamic, C>, D> a,
                                                       view<const T, shape<dynamic, C>, D> x) {
        // c += r (same rows, columns), added as the product's tiles are stored
        auto add_rows = [](view<const T, shape<dynamic, C>, D> r) { return ops::add_residual{r}; };
        const auto h1 = attention_dense.forward_fused(ctx, a, add_rows(x));  // x + dense(a)
        const auto n =
            std::is_same_v<Norm, post_norm> ? norm1.forward(ctx, h1) : norm2.forward(ctx, h1);
        auto down = [&](view<const T, shape<dynamic, C>, D> r) {  // out(act(inter(n))) + r
            if constexpr (ffn_activation_fusable)
                if (!ffn_in_bf16(ctx))  // act on each tile of inter(n) while in L1 (rows, F)
                    return output_dense.forward_fused(
                        ctx,
                        intermediate.forward_fused(ctx, n, ops::apply_activation{activation.kind}),
                        add_rows(r));
            return activate_into(ctx, intermediate.forward(ctx, n), [&](auto g) {
                return output_dense.forward_fused(ctx, g, add_rows(r));
            });
        };
        if constexpr (std::is_same_v<Norm, post_norm>)
            return norm2.forward(ctx, down(n));  // LN2(n1 + out(...))
        else
            return down(h1);  // h1 + out(...)
    }

    // The FFN activation for act: built from it, or checked against the type's fixed function.
    static Act make_activation(ops::activation act) {
        if constexpr (std::is_constructible_v<Act, ops::activation>) {
            return Act(act);
        } else {
            if constexpr (requires { Act::fixed_kind; })
                if (Act::fixed_kind != act)
                    throw error(errc::invalid_argument, "encoder_block activation",
                                "the configuration's hidden_act differs from the block type's "
                                "fixed activation; use layers::hidden_activation or the "
                                "matching layer");
            return Act();
        }
    }

    // (B, T, C) <-> (B*T, C) views of the same memory
    template <class U>
    static view<U, shape<dynamic, C>, D> flat(view<U, shape<dynamic, dynamic, C>, D> v) {
        return {v.data(), v.extent(0) * v.extent(1), v.extent(2)};
    }
    template <class U>
    static view<U, shape<dynamic, dynamic, C>, D> unflat(view<U, shape<dynamic, C>, D> v,
                                                         std::size_t B, std::size_t Tn) {
        return {v.data(), B, Tn, v.extent(1)};
    }
    // d_in += (or, as w says, =) d loss / d (FFN input) for d_out = d loss / d (FFN output); both
    // (N, C); d_in may be d_out (accumulate)
    void ffn_backward(context& ctx, view<const T, shape<dynamic, C>, D> d_out,
                      view<T, shape<dynamic, C>, D> d_in, std::size_t N, std::size_t Cn,
                      grad_write w) {
        auto& s = ctx.workspace.get<backward_scratch>();
        s.c3s.resize(shape<dynamic, C>(N, Cn));
        layers::backward_into(output_dropout, ctx, d_out, s.c3s.view());      // d (dense output)
        layers::backward_into(output_dense, ctx, s.c3s.view(), s.f1.view());  // d (act output)
        layers::backward_into(activation, ctx, s.f1.view(), s.f2.view());     // d (inter output)
        layers::backward_into(intermediate, ctx, s.f2.view(), d_in, w);
    }
    // dx += (or, as w says, =) d loss / d (attention input) for d_out = d loss / d (attention
    // sublayer output)
    void attention_backward(context& ctx, view<const T, shape<dynamic, C>, D> d_out,
                            d_input_view dx, std::size_t N, std::size_t Cn, grad_write w) {
        auto& s = ctx.workspace.get<backward_scratch>();
        s.a1.resize(shape<dynamic, C>(N, Cn));
        s.a2.resize(shape<dynamic, C>(N, Cn));
        layers::backward_into(attention_dropout, ctx, d_out, s.a1.view());
        layers::backward_into(attention_dense, ctx, s.a1.view(), s.a2.view());
        layers::backward_into(attention, ctx,
                              unflat(view<const T, shape<dynamic, C>, D>(s.a2.view()), B_, T_), dx,
                              w);
    }

    std::size_t B_ = 0, T_ = 0;    // the last forward's batch and output rows per sequence
    std::size_t Tx_ = 0;           // its input's sequence length (T_, or more after forward_first)
    bool inference_only_ = false;  // the last forward kept nothing for backward
    view<const T, shape<dynamic, C>, D> x_;    // (N, C) the last forward's input
    buffer<T, shape<dynamic, C>, D> h1_, h2_;  // (rows, C) residual sums
    buffer<T, shape<dynamic, C>, D> first_;    // (B, C) position 0 of x (forward_first)
    view<const T, shape<dynamic, C>, D> out_;  // (N, C) output: norm2's (post) or h2_ (pre)
    // Gradient buffers used only inside one backward call: one set per run (ctx.workspace) for
    // every block of this type (an encoder's layers share it), not one per layer.
    struct backward_scratch {
        buffer<T, shape<dynamic, C>, D> c1, c2, c3;   // (N, C) gradients
        buffer<T, shape<dynamic, C>, D> c3s, a1, a2;  // (N, C) gradients inside sublayers
        buffer<T, shape<dynamic, F>, D> f1, f2;       // (N, F) gradients inside the FFN
    };
};

}  // namespace blocks
FTUNE_NAMESPACE_END
