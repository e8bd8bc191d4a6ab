// layers::input_embeddings: a model's input layer composed of separate pieces: the token table,
// an optional learned position table, an optional token-type table, an optional norm, dropout.
// BERT uses all of them; GPT-2 tokens + positions (its final norm is the stack's); Llama tokens
// only (positions are rotary, applied in attention). A family picks the pieces and their
// checkpoint names with a small struct (bert_embedding_pieces below).
#pragma once

#include <string_view>
#include <type_traits>

#include "ftune/layers/absent.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/embedding.hpp"
#include "ftune/layers/layer_norm.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// Sizes of an input layer known at run time (the pieces a composition leaves out ignore theirs).
struct embedding_sizes {
    std::size_t vocab;              ///< rows of the token table
    std::size_t features;           ///< C
    std::size_t max_positions = 0;  ///< rows of the learned position table
    std::size_t type_vocab = 0;     ///< rows of the token-type table
    double norm_eps = 1e-12;        ///< the norm's eps
    double dropout = 0;             ///< dropout after the sum (and norm)
    token_id pad_id = -1;  ///< the token row that gets no gradient (Hugging Face's padding_idx);
                           ///< -1: every row learns
};

/// BERT's pieces and names: word + position + token type tables, then LayerNorm, then dropout.
/// Another family writes the same struct with its own types and names ("wte" and "wpe" for
/// GPT-2, "embed_tokens" alone for Llama); a piece is left out with layers::absent.
struct bert_embedding_pieces {
    /// the learned position table (or absent)
    template <scalar T, std::size_t C, device_tag D>
    using positions = embedding<T, C, D>;
    /// the token-type table (or absent)
    template <scalar T, std::size_t C, device_tag D>
    using token_types = embedding<T, C, D>;
    /// the norm over the sum (or absent)
    template <scalar T, std::size_t C, device_tag D>
    using norm = layer_norm<T, C, D>;
    static constexpr std::string_view token_name = "word_embeddings";         ///< token table
    static constexpr std::string_view position_name = "position_embeddings";  ///< position table
    static constexpr std::string_view type_name = "token_type_embeddings";    ///< type table
    static constexpr std::string_view norm_name = "LayerNorm";                ///< the norm
};

/// ids (B, T) [+ token types (B, T)] -> (B, T, C): token rows + position rows (start .. start+T-1)
/// + type rows, normalized, dropped out, with the pieces and names Pieces gives.
template <scalar T, std::size_t C, device_tag D, class Pieces>
class input_embeddings {
  public:
    using value_type = T;  ///< scalar type
    using ids_view =
        view<const token_id, shape<dynamic, dynamic>, D>;              ///< (B, T) token or type ids
    using output_view = view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)
    using positions_type = typename Pieces::template positions<T, C, D>;  ///< or absent
    using types_type = typename Pieces::template token_types<T, C, D>;    ///< or absent
    using norm_type = typename Pieces::template norm<T, C, D>;            ///< or absent

    embedding<T, C, D> token;                       ///< the token table (vocab, C)
    [[no_unique_address]] positions_type position;  ///< (max positions, C) or absent
    [[no_unique_address]] types_type token_type;    ///< (type vocab, C) or absent
    [[no_unique_address]] norm_type norm;           ///< over C, or absent
    dropout<T, C, D> drop;                          ///< after the sum and the norm

    /// Zero tables of the given sizes, the norm's weight 1.
    explicit input_embeddings(const embedding_sizes& s)
        : token(s.vocab, s.features),
          position(s.max_positions, s.features),
          token_type(s.type_vocab, s.features),
          norm(s.features, T(s.norm_eps)),
          drop(T(s.dropout)) {
        token.padding_idx = s.pad_id;
    }

    /// Embeds ids; token_types may be empty (all type 0); the positions of row b are
    /// start .. start + T - 1 (start > 0: continuing a sequence, as generation with a cache does).
    output_view forward(context& ctx, ids_view ids, ids_view token_types = {},
                        std::size_t start = 0) {
        return embed(ctx, ids, token_types, start, {});
    }

    /// Embeds ids at the given positions (B * T; below `end`, which must not exceed the
    /// position table): generation's, where each row of a left-padded batch counts its own
    /// tokens (layers::kv_cache::positions).
    output_view forward_at(context& ctx, ids_view ids,
                           view<const token_id, shape<dynamic>, D> positions, std::size_t end) {
        return embed(ctx, ids, {}, end - ids.extent(1), positions);
    }

    /// Embeds a ragged batch: ids (1, N) and token_types (1, N, or empty) hold several
    /// sequences one after another without padding, each token at its own position (N; the
    /// largest below `end`, which must not exceed the position table).
    output_view forward_packed(context& ctx, ids_view ids, ids_view token_types,
                               view<const token_id, shape<dynamic>, D> positions, std::size_t end) {
        // (start is not used with given positions; embed checks start + N, which is `end`)
        return embed(ctx, ids, token_types, end - ids.extent(1), positions);
    }

  private:
    // the sum of the pieces; positions start .. start + T - 1 in every row, or `given`
    output_view embed(context& ctx, ids_view ids, ids_view token_types, std::size_t start,
                      view<const token_id, shape<dynamic>, D> given) {
        const std::size_t B = ids.extent(0), Tn = ids.extent(1), N = B * Tn;
        const view<const token_id, shape<dynamic>, D> flat_ids(ids.data(), N);
        const auto w = token.forward(ctx, flat_ids);  // (N, C)
        view<const T, shape<dynamic, C>, D> sum = w;
        if constexpr (!is_absent<positions_type> || !is_absent<types_type>) {
            sum_.resize(shape<dynamic, C>(N, w.extent(1)));  // (N, C)
            sum = sum_.view();
        }
        if constexpr (!is_absent<positions_type>) {
            const std::size_t rows = position.weight.value.extent(0);
            if (start + Tn > rows)
                throw error(errc::invalid_argument, "input_embeddings",
                            ftune::detail::cat("positions up to ", start + Tn,
                                               " exceed the position table's ", rows,
                                               " (max_position_embeddings); truncate the input"));
            positions_.resize(shape<dynamic>(N));  // (N) position of each token
            if (given.empty())
                ops::position_ids(positions_, Tn, start);
            else
                ops::copy_ids(positions_, given);
            ops::residual_add(sum_, w, position.forward(ctx, positions_.view()));
        }
        if constexpr (!is_absent<types_type>) {
            types_.resize(shape<dynamic>(N));  // (N) token type of each token (0: none given)
            ops::copy_ids(types_, view<const token_id, shape<dynamic>, D>(
                                      token_types.data(), token_types.empty() ? 0 : N));
            const auto t = token_type.forward(ctx, types_.view());
            if constexpr (is_absent<positions_type>)
                ops::residual_add(sum_, w, t);
            else
                ops::residual_add(sum_, sum_, t);
        }
        auto normed = sum;
        if constexpr (!is_absent<norm_type>) normed = norm.forward(ctx, sum);
        const auto y = drop.forward(ctx, normed);
        return {y.data(), B, Tn, y.extent(1)};
    }

  public:
    /// Accumulates the tables' and the norm's gradients (ids have none).
    void backward(context& ctx, output_view dout) {
        const std::size_t N = dout.extent(0) * dout.extent(1), Cn = dout.extent(2);
        const view<const T, shape<dynamic, C>, D> dy(dout.data(), N, Cn);
        d_sum_.resize(shape<dynamic, C>(N, Cn));
        d_sum_.fill(T(0));
        if constexpr (!is_absent<norm_type>) {
            d_norm_.resize(shape<dynamic, C>(N, Cn));
            d_norm_.fill(T(0));
            drop.backward(ctx, dy, d_norm_.view());
            norm.backward(ctx, d_norm_.view(), d_sum_.view());
        } else {
            drop.backward(ctx, dy, d_sum_.view());
        }
        token.backward(ctx, d_sum_.view());
        if constexpr (!is_absent<positions_type>) position.backward(ctx, d_sum_.view());
        if constexpr (!is_absent<types_type>) token_type.backward(ctx, d_sum_.view());
    }

    /// Whether any table or the norm trains (false: frozen).
    bool trainable() const noexcept {
        bool t = token.trainable();
        if constexpr (!is_absent<positions_type>) t = t || position.trainable();
        if constexpr (!is_absent<types_type>) t = t || token_type.trainable();
        if constexpr (!is_absent<norm_type>) t = t || norm.trainable();
        return t;
    }
    /// Sets every gradient to zero.
    void zero_grad() {
        token.zero_grad();
        if constexpr (!is_absent<positions_type>) position.zero_grad();
        if constexpr (!is_absent<types_type>) token_type.zero_grad();
        if constexpr (!is_absent<norm_type>) norm.zero_grad();
    }

    /// Visits the pieces under Pieces' names.
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        token.visit_parameters(join_name(prefix, Pieces::token_name), f);
        if constexpr (!is_absent<positions_type>)
            position.visit_parameters(join_name(prefix, Pieces::position_name), f);
        if constexpr (!is_absent<types_type>)
            token_type.visit_parameters(join_name(prefix, Pieces::type_name), f);
        if constexpr (!is_absent<norm_type>)
            norm.visit_parameters(join_name(prefix, Pieces::norm_name), f);
    }

  private:
    buffer<token_id, shape<dynamic>, D> positions_, types_;  // (N) ids of the position/type tables
    buffer<T, shape<dynamic, C>, D> sum_, d_norm_, d_sum_;   // (N, C)
};

/// BERT's input layer: word + learned position + token type embeddings -> LayerNorm -> dropout.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
using bert_embeddings = input_embeddings<T, C, D, bert_embedding_pieces>;

}  // namespace layers
FTUNE_NAMESPACE_END
