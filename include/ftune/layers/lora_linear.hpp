// layers::lora_linear: a linear layer that can carry a low-rank adapter (LoRA, Hu et al. 2021)
// as Hugging Face PEFT's lora.Linear: y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ with A (r, In),
// B (Out, r) and s = α / r (rsLoRA: α / √r), W and b frozen. Built without an adapter, it is
// layers::linear; the model families use it as their blocks' projection type, so any model can
// take adapters at run time (peft::apply_lora).
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// An adapter's hyper-parameters (PEFT's LoraConfig: r, lora_alpha, lora_dropout, use_rslora).
struct lora_options {
    std::size_t r = 8;    ///< rank
    double alpha = 8;     ///< lora_alpha
    double dropout = 0;   ///< lora_dropout: on the adapter's input, in training
    bool rslora = false;  ///< use_rslora: scaling α / √r instead of α / r

    /// The scaling s of the adapter's product.
    double scaling() const noexcept {
        return rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
    }
};

/// linear (N, In) -> (N, Out) with an optional adapter: lora_A (r, In), lora_B (Out, r), named
/// "<prefix>.lora_A.weight" and "<prefix>.lora_B.weight" as PEFT saves them.
template <scalar T, std::size_t In = dynamic, std::size_t Out = dynamic, device_tag D = device::cpu,
          bool Bias = true>
class lora_linear : public linear<T, In, Out, D, Bias> {
    using base = linear<T, In, Out, D, Bias>;

  public:
    using input_view = typename base::input_view;      ///< x: (N, In)
    using output_view = typename base::output_view;    ///< y: (N, Out)
    using d_input_view = typename base::d_input_view;  ///< dx: (N, In), accumulated into

    parameter<T, shape<dynamic, In>, D> lora_A;   ///< A (r, In); empty without an adapter
    parameter<T, shape<Out, dynamic>, D> lora_B;  ///< B (Out, r); empty without an adapter

    /// A zero-initialized layer of the given sizes, without an adapter.
    explicit lora_linear(std::size_t in = In, std::size_t out = Out) : base(in, out), drop_(T(0)) {
        unload_adapter();
    }

    /// Adds an adapter of rank o.r, replacing any: A Kaiming-uniform as PEFT initializes it
    /// (U(−1/√In, 1/√In), drawn from s), B zero, so the output is unchanged until B trains.
    /// Freezes W and b (PEFT's bias "none"; unfreeze b for "all").
    void add_adapter(const lora_options& o, const random_stream& s) {
        if (o.r == 0 || !(o.alpha > 0) || !(o.dropout >= 0 && o.dropout < 1))
            throw error(
                errc::invalid_argument, "lora_linear::add_adapter",
                ftune::detail::cat("r = ", o.r, ", alpha = ", o.alpha, ", dropout = ", o.dropout,
                                   ": give r > 0, alpha > 0, dropout in [0, 1)"));
        if (merged_) unmerge();
        options_ = o;
        const std::size_t in = this->in_features(), out = this->out_features();
        lora_A = parameter<T, shape<dynamic, In>, D>("lora_A.weight", shape<dynamic, In>(o.r, in));
        lora_B =
            parameter<T, shape<Out, dynamic>, D>("lora_B.weight", shape<Out, dynamic>(out, o.r));
        const double bound = 1.0 / std::sqrt(double(in));
        std::vector<T> a(lora_A.size());  // drawn on the host, then copied to D
        for (std::size_t i = 0; i < a.size(); ++i)
            a[i] = T(bound * (2.0 * double(s.uniform(i)) - 1.0));
        host_to_device<D>(lora_A.value.data(), a.data(), a.size());
        drop_.p = T(o.dropout);
        this->weight.trainable = false;
        if constexpr (Bias) this->bias.trainable = false;
    }
    /// Removes the adapter (unmerging it first when merged); W and b stay frozen.
    void remove_adapter() {
        unmerge();
        unload_adapter();
    }
    /// Drops the adapter and leaves W as it is: with the adapter's product in it when merged
    /// (PEFT's merge_and_unload), without it otherwise. W and b stay frozen.
    void unload_adapter() {
        merged_ = false;
        lora_A = parameter<T, shape<dynamic, In>, D>("lora_A.weight",
                                                     shape<dynamic, In>(0, this->in_features()));
        lora_B = parameter<T, shape<Out, dynamic>, D>("lora_B.weight",
                                                      shape<Out, dynamic>(this->out_features(), 0));
    }

    /// Whether an adapter is attached.
    bool has_adapter() const noexcept { return lora_A.value.extent(0) > 0; }
    /// The adapter's rank (0: none).
    std::size_t rank() const noexcept { return lora_A.value.extent(0); }
    /// The adapter's hyper-parameters (meaningful when has_adapter()).
    const lora_options& adapter_options() const noexcept { return options_; }
    /// Whether the adapter is merged into W (merge()).
    bool merged() const noexcept { return merged_; }

    /// W += s B A: the adapter costs nothing at inference. Until unmerge(), forwards use W alone
    /// and the adapter gets no gradient. Inside a model, merge through peft::merge_adapters: its
    /// visit also marks packed copies that other layers made of W stale (self_attention's q, k,
    /// v), which a direct call cannot.
    void merge() {
        if (!has_adapter() || merged_) return;
        ops::matmul(lora_B.value, lora_A.value, this->weight.value, T(options_.scaling()), T(1));
        merged_ = true;
        this->weight_changed();  // W changed: pack it again before its next packed use
    }
    /// W −= s B A: back to the frozen base weight (up to rounding) and the separate adapter.
    void unmerge() {
        if (!merged_) return;
        ops::matmul(lora_B.value, lora_A.value, this->weight.value, T(-options_.scaling()), T(1));
        merged_ = false;
        this->weight_changed();
    }

    /// y = x Wᵀ + b + s dropout(x) Aᵀ Bᵀ (the adapter's term unless none or merged). Keeps views
    /// for backward, as linear.
    output_view forward(context& ctx, input_view x) {
        const auto y = base::forward(ctx, x);
        if (active()) add_adapter_term(ctx, x);
        return y;
    }

    /// linear's forward for an x kept in bf16, without an active adapter (takes_bf16_input():
    /// the adapter's products read x as floats).
    output_view forward(context& ctx, typename base::bf16_input_view x) requires
        std::is_same_v<T, float> && std::is_same_v<D, device::cpu> {
        if (active())
            throw error(errc::invalid_argument, "lora_linear::forward",
                        "a layer with an active adapter takes its input as floats");
        return base::forward(ctx, x);
    }
    /// Whether forward takes an input kept in bf16 (no active adapter).
    bool takes_bf16_input() const noexcept { return !active(); }
    /// Prepared inference with an epilogue (linear::forward_fused), then the adapter's term: after
    /// a residual (ops::add_residual, a sum, in either order), before an activation
    /// (ops::apply_activation: f(x Wᵀ + b + s x Aᵀ Bᵀ), f then run over y).
    template <class Epilogue>
    output_view forward_fused(context& ctx, input_view x, Epilogue epilogue) {
        if constexpr (std::is_same_v<Epilogue, ops::apply_activation>) {
            if (active()) {
                const auto y = base::forward_fused(ctx, x, ops::no_epilogue{});
                add_adapter_term(ctx, x);
                ops::activate(epilogue.f, this->y_, this->y_);
                return y;
            }
        }
        const auto y = base::forward_fused(ctx, x, epilogue);
        if (active()) add_adapter_term(ctx, x);
        return y;
    }

    /// linear's forward_fused for an x kept in bf16, without an active adapter
    /// (takes_bf16_input()).
    template <class Epilogue>
    output_view forward_fused(
        context& ctx, typename base::bf16_input_view x,
        Epilogue epilogue) requires std::is_same_v<T, float> && std::is_same_v<D, device::cpu> {
        if (active())
            throw error(errc::invalid_argument, "lora_linear::forward_fused",
                        "a layer with an active adapter takes its input as floats");
        return base::forward_fused(ctx, x, epilogue);
    }
    /// Adds the adapter's term s x Aᵀ Bᵀ to y (N, Out), whose rows are ld elements apart (a
    /// block of columns of a wider product: self_attention's packed q, k and v), in eval mode;
    /// nothing when no adapter is active (none, or merged).
    void add_adapter_term_to(context& ctx, input_view x, T* y, std::size_t ld) {
        if (!active()) return;
        const std::size_t N = x.extent(0), Out_n = this->out_features();
        adapter_product(ctx, x);
        delta_.resize(shape<dynamic, Out>(N, Out_n));
        ops::matmul<transpose::no, transpose::yes>(u_.view(), lora_B.value, delta_,
                                                   T(options_.scaling()));  // s u Bᵀ (N, Out)
        using row = view<T, shape<dynamic>, D>;
        using const_row = view<const T, shape<dynamic>, D>;
        for (std::size_t n = 0; n < N; ++n)
            ops::residual_add(row(y + n * ld, Out_n), const_row(y + n * ld, Out_n),
                              const_row(delta_.data() + n * Out_n, Out_n));
    }

    /// linear's backward (dW only when W trains), then dB += s dyᵀ u, dA += (s dy B)ᵀ x', and
    /// dx += (s dy B) A through the adapter's dropout.
    void backward(context& ctx, output_view dy, d_input_view dx) {
        base::backward(ctx, dy, dx);
        if (!active()) return;
        const std::size_t N = dy.extent(0), r = rank();
        const T s = T(options_.scaling());
        if (lora_B.trainable)  // (Out, r) += s dyᵀ u
            ops::matmul_thin<transpose::yes, transpose::no>(dy, u_.view(), lora_B.gradient(), s,
                                                            T(1));
        du_.resize(shape<dynamic, dynamic>(N, r));
        ops::matmul_thin(dy, lora_B.value, du_, s);  // du = s dy B (N, r)
        if (lora_A.trainable)                        // (r, In) += duᵀ x'
            ops::matmul_thin<transpose::yes, transpose::no>(du_.view(), xa_, lora_A.gradient(),
                                                            T(1), T(1));
        if (dx.empty()) return;
        if (!drop_.active()) {
            ops::matmul(du_.view(), lora_A.value, dx, T(1), T(1));  // dx += du A
            return;
        }
        dxa_.resize(shape<dynamic, In>(N, this->in_features()));  // d x' = du A, then the mask
        ops::matmul(du_.view(), lora_A.value, dxa_);
        drop_.backward(ctx, dxa_.view(), dx);
    }

    /// Sets every gradient to zero.
    void zero_grad() {
        base::zero_grad();
        lora_A.zero_grad();
        lora_B.zero_grad();
    }
    /// Whether any parameter trains (false: frozen).
    bool trainable() const noexcept {
        return base::trainable() || (has_adapter() && (lora_A.trainable || lora_B.trainable));
    }

    /// Visits weight and bias as linear ("<prefix>.weight"), then the adapter's A and B when
    /// attached ("<prefix>.lora_A.weight", "<prefix>.lora_B.weight"). A visitor with a member
    /// visit_lora(name, layer) is first shown the layer itself (peft::apply_lora finds its
    /// targets so).
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        if constexpr (requires { f.visit_lora(prefix, *this); }) f.visit_lora(prefix, *this);
        base::visit_parameters(prefix, f);
        if (!has_adapter()) return;
        f(lora_A.ref(prefix));
        f(lora_B.ref(prefix));
    }

  private:
    // whether forwards add the adapter's term (attached, not merged)
    bool active() const noexcept { return has_adapter() && !merged_; }
    // u_ = x' Aᵀ (N, r) with x' = dropout(x), both kept for backward
    void adapter_product(context& ctx, input_view x) {
        xa_ = drop_.forward(ctx, x);  // (N, In): x itself unless dropping
        u_.resize(shape<dynamic, dynamic>(x.extent(0), rank()));
        ops::matmul_thin<transpose::no, transpose::yes>(xa_, lora_A.value, u_);
    }
    // y_ += s (x' Aᵀ) Bᵀ
    void add_adapter_term(context& ctx, input_view x) {
        adapter_product(ctx, x);
        ops::matmul<transpose::no, transpose::yes>(u_.view(), lora_B.value, this->y_,
                                                   T(options_.scaling()), T(1));  // y += s u Bᵀ
    }

    lora_options options_;                          // the adapter's hyper-parameters
    bool merged_ = false;                           // W holds W + s B A
    dropout<T, In, D> drop_;                        // on the adapter's input (lora_dropout)
    input_view xa_;                                 // (N, In) the adapter's input after dropout
    buffer<T, shape<dynamic, dynamic>, D> u_, du_;  // (N, r) x' Aᵀ and its gradient
    buffer<T, shape<dynamic, In>, D> dxa_;          // (N, In) d x' before the dropout
    buffer<T, shape<dynamic, Out>, D> delta_;       // (N, Out) the term (add_adapter_term_to)
};

/// A visitor for a model's visit_parameters that shows fn(name, layer) every lora_linear and
/// skips the parameters: how peft::apply_lora, merging and a device run find a model's adapters.
template <class Fn>
struct lora_visitor {
    Fn fn;  ///< fn(name, layer)
    /// Shown each lora_linear (lora_linear::visit_parameters calls it).
    template <class L>
    void visit_lora(std::string_view name, L& layer) {
        fn(name, layer);
    }
    /// Parameters: skipped.
    template <class P>
    void operator()(const P&) const {}
};
/// lora_visitor{fn} deduces Fn.
template <class Fn>
lora_visitor(Fn) -> lora_visitor<Fn>;

/// lora_linear as a template of the two sizes, for layers that take their projection type as a
/// template: lora_projection<T, D, Bias>::type<In, Out>.
template <scalar T, device_tag D = device::cpu, bool Bias = true>
struct lora_projection {
    /// (N, In) -> (N, Out) that can carry an adapter
    template <std::size_t In, std::size_t Out>
    using type = lora_linear<T, In, Out, D, Bias>;
};

}  // namespace layers
FTUNE_NAMESPACE_END
