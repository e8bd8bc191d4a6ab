// docs/extending.md, "Add a model family": a new backbone as a composition of ftune's pieces and
// one new layer, not a copy. The family here is a pre-norm encoder with RMSNorm (as Llama-family
// blocks normalize) and GPT-2's input layer (token + learned position tables, no token types, no
// norm) and a final norm after the last block, as pre-norm models end:
//   - blocks::encoder_block takes the norm placement (pre_norm) and a parts struct naming the
//     layer types;
//   - layers::input_embeddings takes a pieces struct (which tables, which norm, their names);
//   - blocks::stack puts input layer, blocks and final norm together under a names struct.
// So the new family is one layer (rms_norm), three small structs and a constructor from the
// config. The whole backbone, with a classification head on top, is gradient-checked.
//
//   build/bin/extending_add_family    prints the check; exit 1 on failure
#include <ftune/ftune.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
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
                if (weight.trainable) weight.gradient()(c) += dy(i, c) * x_(i, c) * inv_(i);
            }
            if (dx.empty()) continue;
            const T r = inv_(i), k = dot * r * r * r / T(Cn);
            for (std::size_t c = 0; c < Cn; ++c)
                dx(i, c) += weight.value(c) * dy(i, c) * r - x_(i, c) * k;
        }
    }

    bool trainable() const noexcept { return weight.trainable; }  ///< false: frozen
    void zero_grad() { weight.zero_grad(); }                      ///< clears dw
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

/// The input layer's pieces: GPT-2's token ("wte") and learned position ("wpe") tables only.
struct gpt2_like_pieces {
    template <ftune::scalar T, std::size_t C, class D>
    using positions = ftune::layers::embedding<T, C, D>;  ///< learned positions
    template <ftune::scalar T, std::size_t C, class D>
    using token_types = ftune::layers::absent;  ///< no token types
    template <ftune::scalar T, std::size_t C, class D>
    using norm = ftune::layers::absent;                       ///< no norm over the sum
    static constexpr std::string_view token_name = "wte";     ///< token table
    static constexpr std::string_view position_name = "wpe";  ///< position table
    static constexpr std::string_view type_name = "";         ///< unused
    static constexpr std::string_view norm_name = "";         ///< unused
};

/// The stack's names: the tables directly under the prefix, blocks "h.N", final norm "ln_f".
struct gpt2_like_names {
    static constexpr std::string_view embeddings = "";      ///< tables under the prefix itself
    static constexpr std::string_view layers = "h";         ///< block i is "h.i"
    static constexpr std::string_view final_norm = "ln_f";  ///< after the last block
};

/// The backbone: input layer -> pre-norm RMSNorm blocks -> final RMSNorm, built from BERT's config
/// type (a real family would bring its own config and io::hf_family).
template <ftune::scalar T>
class encoder
    : public ftune::blocks::stack<
          ftune::layers::input_embeddings<T, dynamic, ftune::device::cpu, gpt2_like_pieces>,
          ftune::blocks::encoder_block<T, dynamic, dynamic, ftune::blocks::pre_norm, rms_parts<T>>,
          rms_norm<T>, gpt2_like_names> {
  public:
    using config_type = ftune::bert::config;                              ///< what it is built from
    static constexpr std::size_t hidden_extent = dynamic;                 ///< C at run time
    static constexpr std::string_view architecture_prefix = "MyRms";      ///< "MyRmsFor..."
    static constexpr std::string_view base_model_prefix = "transformer";  ///< parameters' prefix

    /// A zero-initialized backbone of configuration c.
    explicit encoder(const config_type& c)
        : encoder::stack(
              typename encoder::embeddings_type({.vocab = c.vocab_size,
                                                 .features = c.hidden_size,
                                                 .max_positions = c.max_position_embeddings,
                                                 .dropout = c.hidden_dropout_prob}),
              rms_norm<T>(c.hidden_size, T(c.layer_norm_eps))) {
        for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
            this->layer.emplace_back(ftune::blocks::block_sizes{
                c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_dropout_prob,
                c.attention_probs_dropout_prob, c.layer_norm_eps, c.hidden_act});
    }
};

}  // namespace my

int main() {
    using Encoder = my::encoder<double>;
    using Model = ftune::bert::sequence_classifier<Encoder>;
    static_assert(std::is_same_v<decltype(Encoder::block_type::norm1), my::rms_norm<double>>);
    static_assert(Model::architecture == "MyRmsForSequenceClassification");
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
        const bool norm =
            p.name.ends_with("LayerNorm.weight") || p.name == "transformer.ln_f.weight";
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = (norm ? 1.0 : 0.0) + 0.4 * (s.uniform(i) - 0.5);
    });
    std::size_t norms = 0;  // the blocks' two each and the final one
    std::vector<std::string> names;
    model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        norms += p.name.ends_with("LayerNorm.weight") || p.name.ends_with("ln_f.weight");
        names.push_back(p.name);
    });
    const bool named =
        names.front() == "transformer.wte.weight" && names[1] == "transformer.wpe.weight" &&
        names[2] == "transformer.h.0.attention.self.query.weight" &&
        std::find(names.begin(), names.end(), "transformer.ln_f.weight") != names.end();
    const std::vector<ftune::token_id> ids{1, 5, 7, 2, 9, 3, 4, 11, 6, 2};
    ftune::context eval;
    const auto res =
        ftune::testing::check_layer_gradients(model, eval, Model::ids_view(ids.data(), 2, 5));
    std::printf(
        "pre-norm RMSNorm backbone (%zu norms with the final one, %zu parameters, names %s): "
        "gradient check of %zu values %s\n",
        norms, names.size(), named ? "as composed" : "WRONG", res.checked,
        res.ok ? "ok" : "FAILED");
    if (!res.ok) std::printf("%s\n", res.report.c_str());
    return res.ok && norms == 5 && named ? 0 : 1;
}
