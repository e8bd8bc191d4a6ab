// A custom layer, checked with ftune::testing::check_layer_gradients, then composed with ftune's
// layers into a classification head on top of a BERT encoder.
//
//   build/bin/custom_layer        prints the checks and the head's output; exit 1 on failure
//
// The layer is LayerScale (Touvron et al., "Going deeper with Image Transformers", 2021): a
// learned per-feature scale y = x ⊙ γ. What makes it an ftune layer is the contract in
// ftune/core/concepts.hpp: forward saves what backward needs, backward ACCUMULATES into the
// parameter gradients and into dx, visit_parameters names the parameters.
#include <ftune/ftune.hpp>

#include <cstdio>
#include <string_view>
#include <vector>

namespace layers = ftune::layers;
using ftune::dynamic;
using ftune::shape;

/// y = x ⊙ γ over rows of C features; γ starts at `init`. Bug = true swaps += for = in backward,
/// the mistake the gradient checker's sentinel-filled gradients are there to catch.
template <ftune::scalar T, std::size_t C = dynamic, bool Bug = false>
class layer_scale {
  public:
    using value_type = T;                                         ///< scalar type
    using input_view = ftune::view<const T, shape<dynamic, C>>;   ///< x: (N, C)
    using output_view = ftune::view<const T, shape<dynamic, C>>;  ///< y: (N, C)
    using d_input_view = ftune::view<T, shape<dynamic, C>>;       ///< dx: (N, C), accumulated

    ftune::parameter<T, shape<C>> gamma;  ///< γ (C), no weight decay

    /// A layer of `features` scales, all `init`.
    explicit layer_scale(std::size_t features = C, T init = T(0.1))
        : gamma("gamma", shape<C>(features), false) {
        gamma.value.fill(init);
    }

    /// y = x ⊙ γ; keeps a view of x for backward.
    output_view forward(ftune::context&, input_view x) {
        x_ = x;
        y_.resize(x.shape());  // (N, C)
        const std::size_t N = x.extent(0), Cn = x.extent(1);
        for (std::size_t i = 0; i < N; ++i)
            for (std::size_t c = 0; c < Cn; ++c) y_(i, c) = x(i, c) * gamma.value(c);
        return y_.view();
    }

    /// dγ += Σ_rows dy ⊙ x; dx += dy ⊙ γ (skipped when dx is empty).
    void backward(ftune::context&, output_view dy, d_input_view dx) {
        const std::size_t N = dy.extent(0), Cn = dy.extent(1);
        for (std::size_t c = 0; gamma.trainable && c < Cn; ++c) {  // frozen: no gradient kept
            T g = 0;
            for (std::size_t i = 0; i < N; ++i) g += dy(i, c) * x_(i, c);
            if constexpr (Bug)
                gamma.gradient()(c) = g;  // overwrites what earlier backward passes accumulated
            else
                gamma.gradient()(c) += g;
        }
        if (dx.empty()) return;
        for (std::size_t i = 0; i < N; ++i)
            for (std::size_t c = 0; c < Cn; ++c) dx(i, c) += dy(i, c) * gamma.value(c);
    }

    /// Sets dγ to zero.
    void zero_grad() { gamma.zero_grad(); }
    /// Visits "<prefix>.gamma".
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        f(gamma.ref(prefix));
    }

  private:
    input_view x_;                           // the last forward's input
    ftune::buffer<T, shape<dynamic, C>> y_;  // (N, C) output
};
static_assert(ftune::layer<layer_scale<float, 384>>);

// A head: dense -> GELU -> LayerScale -> dropout -> classifier, checked as one chain.
template <class T, std::size_t C, std::size_t Hidden, std::size_t Labels>
using head =
    layers::chain<layers::named<"dense", layers::linear<T, C, Hidden>>, layers::gelu<T, Hidden>,
                  layers::named<"scale", layer_scale<T, Hidden>>, layers::dropout<T, Hidden>,
                  layers::named<"classifier", layers::linear<T, Hidden, Labels>>>;

// Fills every parameter with small seeded normal values (so the check is not at a trivial point).
template <class L>
void randomize(L& l, std::uint64_t seed) {
    l.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        const ftune::random_stream s(seed++, 0);
        for (std::size_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.5 * s.normal(i);
    });
}

int main() {
    bool ok = true;
    std::vector<double> xs(4 * 8);
    const ftune::random_stream s(1, 0);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = s.normal(i);
    const ftune::view<double, shape<dynamic, 8>> x(xs.data(), 4, 8);  // (N, C): 4 rows of 8

    // 1. the custom layer alone: every γ and every input element against central differences
    ftune::context eval;
    layer_scale<double, 8> scale;
    randomize(scale, 10);
    auto r = ftune::testing::check_layer_gradients(scale, eval, x);
    std::printf("layer_scale: %zu gradients checked, %s\n", r.checked, r.ok ? "ok" : "FAILED");
    ok = ok && r.ok;

    // 2. the same layer with '=' for '+=': the checker must catch it
    layer_scale<double, 8, true> buggy;
    randomize(buggy, 10);
    r = ftune::testing::check_layer_gradients(buggy, eval, x);
    std::printf("layer_scale with '=' for '+=': %s\n  %s\n",
                r.ok ? "NOT caught" : "caught:", r.report.substr(0, r.report.find('\n')).c_str());
    ok = ok && !r.ok;

    // 3. composed into a head (static sizes checked at compile time), with dropout in training
    head<double, 8, 16, 3> h(layers::linear<double, 8, 16>(), {}, layer_scale<double, 16>(),
                             layers::dropout<double, 16>(0.2), layers::linear<double, 16, 3>());
    randomize(h, 20);
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(7)};
    r = ftune::testing::check_layer_gradients(h, train, x);
    std::printf("head (dense, gelu, scale, dropout, classifier): %zu gradients, %s\n", r.checked,
                r.ok ? "ok" : "FAILED");
    ok = ok && r.ok;
    h.visit_parameters("head", [](ftune::parameter_ref<double> p) {
        std::printf("  %s (%zu values)\n", p.name.c_str(), p.value.size());
    });

    // 4. on top of a (tiny, zero-initialized) BERT encoder in float: ids -> hidden -> pooled ->
    //    head logits
    ftune::bert::encoder<float, 8, 16> encoder({.vocab_size = 30,
                                                .hidden_size = 8,
                                                .num_hidden_layers = 2,
                                                .num_attention_heads = 2,
                                                .intermediate_size = 16,
                                                .max_position_embeddings = 16});
    layers::pooler<float, 8> pooler;
    head<float, 8, 16, 3> classifier(layers::linear<float, 8, 16>(), {}, layer_scale<float, 16>(),
                                     layers::dropout<float, 16>(0.1),
                                     layers::linear<float, 16, 3>());
    const std::vector<ftune::token_id> ids{2, 7, 9, 3, 2, 5, 3, 0}, mask{1, 1, 1, 1, 1, 1, 1, 0};
    const auto hidden = encoder.forward(eval, {ids.data(), 2, 4}, {mask.data(), 2, 4});
    const auto logits = classifier.forward(eval, pooler.forward(eval, hidden));  // (2, 3)
    std::printf("logits of 2 sequences: %zu x %zu\n", logits.extent(0), logits.extent(1));
    return ok ? 0 : 1;
}
