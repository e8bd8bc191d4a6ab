// layers::bert_embeddings: word + learned position + token type embeddings -> LayerNorm -> dropout.
#pragma once

#include <string_view>

#include "ftune/layers/dropout.hpp"
#include "ftune/layers/embedding.hpp"
#include "ftune/layers/layer_norm.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// BERT's input embeddings: ids (B, T) and token type ids (B, T) -> (B, T, C).
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class bert_embeddings {
  public:
    using value_type = T;  ///< scalar type
    using ids_view =
        view<const token_id, shape<dynamic, dynamic>, D>;              ///< (B, T) token or type ids
    using output_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)

    embedding<T, C, D> word_embeddings;        ///< "word_embeddings" (vocab, C)
    embedding<T, C, D> position_embeddings;    ///< "position_embeddings" (max positions, C)
    embedding<T, C, D> token_type_embeddings;  ///< "token_type_embeddings" (type vocab, C)
    layer_norm<T, C, D> norm;                  ///< "LayerNorm"
    dropout<T, C, D> drop;                     ///< hidden dropout

    /// Tables of the given sizes (zero), LayerNorm weight 1. The word table's pad_id row gets no
    /// gradient, as Hugging Face's (padding_idx = pad_token_id); -1: every row learns.
    bert_embeddings(std::size_t vocab, std::size_t max_positions, std::size_t type_vocab,
                    std::size_t features, T layer_norm_eps = T(1e-12), T dropout_p = T(0.1),
                    token_id pad_id = 0)
        : word_embeddings(vocab, features),
          position_embeddings(max_positions, features),
          token_type_embeddings(type_vocab, features),
          norm(features, layer_norm_eps),
          drop(dropout_p) {
        word_embeddings.padding_idx = pad_id;
    }

    /// Embeds ids; token_types may be empty (all type 0). Positions are 0 .. T-1 in every row.
    output_view forward(context& ctx, ids_view ids, ids_view token_types = {}) {
        const std::size_t B = ids.extent(0), Tn = ids.extent(1), N = B * Tn;
        if (Tn > position_embeddings.weight.value.extent(0))
            throw error(errc::invalid_argument, "bert_embeddings",
                        ftune::detail::cat(
                            "sequence length ", Tn, " exceeds max_position_embeddings ",
                            position_embeddings.weight.value.extent(0), "; truncate the input"));
        positions_.resize(shape<dynamic>(N));  // (N) position of each token
        types_.resize(shape<dynamic>(N));      // (N) token type of each token
        for (std::size_t i = 0; i < N; ++i) {
            positions_.data()[i] = token_id(i % Tn);
            types_.data()[i] = token_types.empty() ? 0 : token_types.data()[i];
        }
        const view<const token_id, shape<dynamic>, D> flat_ids(ids.data(), N);
        const auto w = word_embeddings.forward(ctx, flat_ids);
        const auto p = position_embeddings.forward(ctx, positions_.view());
        const auto t = token_type_embeddings.forward(ctx, types_.view());
        sum_.resize(shape<dynamic, C>(N, w.extent(1)));  // (N, C)
        ops::residual_add(sum_, w, p);
        ops::residual_add(sum_, sum_, t);
        const auto y = drop.forward(ctx, norm.forward(ctx, sum_.view()));
        return {y.data(), B, Tn, y.extent(1)};
    }

    /// Accumulates the tables' and LayerNorm's gradients (ids have none).
    void backward(context& ctx, output_view dout) {
        const std::size_t N = dout.extent(0) * dout.extent(1), Cn = dout.extent(2);
        const view<const T, shape<dynamic, C>, D> dy(dout.data(), N, Cn);
        d_norm_.resize(shape<dynamic, C>(N, Cn));
        d_sum_.resize(shape<dynamic, C>(N, Cn));
        d_norm_.fill(T(0));
        d_sum_.fill(T(0));
        drop.backward(ctx, dy, d_norm_.view());
        norm.backward(ctx, d_norm_.view(), d_sum_.view());
        word_embeddings.backward(ctx, d_sum_.view());
        position_embeddings.backward(ctx, d_sum_.view());
        token_type_embeddings.backward(ctx, d_sum_.view());
    }

    /// Whether any table or the LayerNorm trains (false: frozen).
    bool trainable() const noexcept {
        return word_embeddings.trainable() || position_embeddings.trainable() ||
               token_type_embeddings.trainable() || norm.trainable();
    }
    /// Sets every gradient to zero.
    void zero_grad() noexcept {
        word_embeddings.zero_grad(), position_embeddings.zero_grad(),
            token_type_embeddings.zero_grad();
        norm.zero_grad();
    }

    /// Visits the tables and the LayerNorm with Hugging Face's names.
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        word_embeddings.visit_parameters(join_name(prefix, "word_embeddings"), f);
        position_embeddings.visit_parameters(join_name(prefix, "position_embeddings"), f);
        token_type_embeddings.visit_parameters(join_name(prefix, "token_type_embeddings"), f);
        norm.visit_parameters(join_name(prefix, "LayerNorm"), f);
    }

  private:
    buffer<token_id, shape<dynamic>, D> positions_,
        types_;  // (N) ids of the position and type tables
    buffer<T, shape<dynamic, C>, D> sum_, d_norm_, d_sum_;  // (N, C)
};

}  // namespace layers
FTUNE_NAMESPACE_END
