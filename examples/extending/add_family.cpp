// docs/extending.md, "Add a model family": a new encoder as a composition of ftune's pieces and
// one new layer, not a copy. The family here is a pre-norm encoder with RMSNorm (as Llama-family
// blocks normalize): blocks::encoder_block takes the norm placement (pre_norm) and a parts struct
// naming the layer types, so the new family is one layer (rms_norm) and a parts struct of
// twelve lines. The whole encoder, with a classification head on top, is gradient-checked.
//
//   build/bin/extending_add_family    prints the check; exit 1 on failure
#include <ftune/ftune.hpp>

#include <cmath>
#include <cstdio>
#include <string_view>
#include <vector>

using ftune::dynamic;
using ftune::shape;

namespace my {

/// RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) ⊙ w per row, (N, C) -> (N, C),
/// w named "weight". The constructor takes (features, eps) as the block builds its norms.
template <ftune::scalar T, std::size_t C = dynamic, class D = ftune::device::cpu>
class rms_norm {
  public:
    using value_type = T;                                           ///< scalar type
    using input_view = ftune::view<const T, shape<dynamic, C>, D>;  ///< x: (N, C)
    using output_view = input_view;                                 ///< y: (N, C)
    using d_input_view = ftune::view<T, shape<dynamic, C>, D>;      ///< dx, accumulated into

    ftune::parameter<T, shape<C>, D> weight;  ///< w (C), no weight decay
    T eps;                                    ///< added to the mean square

    /// A norm over `features` columns with w = 1.
    explicit rms_norm(std::size_t features = C, T eps_ = T(1e-6))
        : weight("weight", shape<C>(features), false), eps(eps_) {
        weight.value.fill(T(1));
    }

    /// y = x / rms(x) ⊙ w; keeps x (a view) and 1 / rms per row for backward.
    output_view forward(ftune::context&, input_view x) {
        const std::size_t N = x.extent(0), Cn = x.extent(1);
        x_ = x;
        y_.resize(shape<dynamic, C>(N, Cn));
        inv_.resize(shape<dynamic>(N));
        for (std::size_t i = 0; i < N; ++i) {
            T ms = 0;
            for (std::size_t c = 0; c < Cn; ++c) ms += x(i, c) * x(i, c);
            inv_(i) = T(1) / std::sqrt(ms / T(Cn) + eps);
            for (std::size_t c = 0; c < Cn; ++c) y_(i, c) = x(i, c) * inv_(i) * weight.value(c);
        }
        return y_.view();
    }

    /// dw += Σ dy ⊙ x / rms; dx += (w ⊙ dy) / rms − x Σ(w ⊙ dy ⊙ x) / (C rms³).
    void backward(ftune::context&, output_view dy, d_input_view dx) {
        const std::size_t N = dy.extent(0), Cn = dy.extent(1);
        for (std::size_t i = 0; i < N; ++i) {
            T dot = 0;  // Σ w dy x
            for (std::size_t c = 0; c < Cn; ++c) {
                dot += weight.value(c) * dy(i, c) * x_(i, c);
                if (weight.trainable) weight.grad(c) += dy(i, c) * x_(i, c) * inv_(i);
            }
            if (dx.empty()) continue;
            const T r = inv_(i), k = dot * r * r * r / T(Cn);
            for (std::size_t c = 0; c < Cn; ++c)
                dx(i, c) += weight.value(c) * dy(i, c) * r - x_(i, c) * k;
        }
    }

    bool trainable() const noexcept { return weight.trainable; }  ///< false: frozen
    void zero_grad() noexcept { weight.zero_grad(); }             ///< clears dw
    /// Visits "<prefix>.weight".
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        f(weight.ref(prefix));
    }

  private:
    input_view x_;                              // the last forward's input
    ftune::buffer<T, shape<dynamic, C>, D> y_;  // (N, C)
    ftune::buffer<T, shape<dynamic>, D> inv_;   // (N) 1 / rms
};

/// The family's layer types: BERT's projections and activation, RMSNorm for the norms.
template <ftune::scalar T, class D = ftune::device::cpu>
struct rms_parts {
    using value_type = T;   ///< scalar type
    using device_type = D;  ///< where the tensors live
    template <std::size_t In, std::size_t Out>
    using projection = ftune::layers::linear<T, In, Out, D>;  ///< q, k, v, o and the FFN
    template <std::size_t C>
    using norm = rms_norm<T, C, D>;  ///< both norms of a block
    template <std::size_t F>
    using activation = ftune::layers::hidden_activation<T, F, D>;  ///< the FFN's
    template <std::size_t C>
    using attention = ftune::layers::self_attention<T, C, D, projection<C, C>>;  ///< self-attention
};

}  // namespace my

int main() {
    using Encoder = ftune::bert::encoder<double, dynamic, dynamic, ftune::blocks::pre_norm,
                                         my::rms_parts<double>>;
    using Model = ftune::bert::sequence_classifier<Encoder>;
    static_assert(std::is_same_v<decltype(Encoder::block_type::norm1), my::rms_norm<double>>);
    const ftune::bert::config cfg{.vocab_size = 13,
                                  .hidden_size = 8,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 2,
                                  .intermediate_size = 12,
                                  .max_position_embeddings = 6,
                                  .hidden_dropout_prob = 0,
                                  .attention_probs_dropout_prob = 0,
                                  .layer_norm_eps = 1e-6,
                                  .num_labels = 3};
    Model model(cfg);
    std::uint64_t seed = 5;
    model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        const ftune::random_stream s(seed++, 0);
        const bool norm = p.name.find("LayerNorm.weight") != std::string::npos;
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = (norm ? 1.0 : 0.0) + 0.4 * (s.uniform(i) - 0.5);
    });
    std::size_t norms = 0;
    model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        norms += p.name.ends_with("LayerNorm.weight") &&
                 p.name.find("encoder.layer") != std::string::npos;
    });
    const std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 3, 4, 11, 6, 2};
    ftune::context eval;
    const auto res =
        ftune::testing::check_layer_gradients(model, eval, Model::ids_view(ids.data(), 2, 5));
    std::printf(
        "pre-norm RMSNorm encoder (%zu norms in its blocks, Transformers' names kept): "
        "gradient check of %zu values %s\n",
        norms, res.checked, res.ok ? "ok" : "FAILED");
    if (!res.ok) std::printf("%s\n", res.report.c_str());
    return res.ok && norms == 4 ? 0 : 1;
}
