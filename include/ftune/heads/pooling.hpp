// Sentence embeddings from an encoder's hidden states, as sentence-transformers' Pooling and
// Normalize modules compute them: each input's vector is the concatenation, in the configured
// order, of its pooled hidden states (the first token, the element-wise maximum, the mean, the
// sum over the square root of the length, the position-weighted mean, or the last token), over
// the input's own tokens only (padding excluded); Normalize divides by the L2 norm (at least
// 1e-12, as torch.nn.functional.normalize).
//
//   heads::sentence_pool(h, lengths, {heads::pooling::mean}, out);  // h (B, T, C) -> out (B, C)
//   heads::l2_normalize(out, C);
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/core/tensor.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads {

/// One of sentence-transformers' pooling modes.
enum class pooling {
    cls,            ///< the first token's hidden state ("cls")
    max,            ///< the element-wise maximum over the tokens ("max")
    mean,           ///< the mean over the tokens ("mean")
    mean_sqrt_len,  ///< the sum over the tokens / sqrt(their count) ("mean_sqrt_len_tokens")
    weighted_mean,  ///< the mean weighted by position 1, 2, ... ("weightedmean")
    last_token,     ///< the last token's hidden state ("lasttoken")
};

/// sentence-transformers' name of a pooling mode.
inline std::string_view pooling_name(pooling p) {
    switch (p) {
        case pooling::cls:
            return "cls";
        case pooling::max:
            return "max";
        case pooling::mean:
            return "mean";
        case pooling::mean_sqrt_len:
            return "mean_sqrt_len_tokens";
        case pooling::weighted_mean:
            return "weightedmean";
        case pooling::last_token:
            break;
    }
    return "lasttoken";
}

/// The pooling mode of sentence-transformers' name; throws naming `where` for another name.
inline pooling pooling_from_name(std::string_view name, const std::string& where) {
    for (const pooling p : {pooling::cls, pooling::max, pooling::mean, pooling::mean_sqrt_len,
                            pooling::weighted_mean, pooling::last_token})
        if (pooling_name(p) == name) return p;
    throw error(errc::unsupported, where,
                "\"" + std::string(name) +
                    "\": expected cls, max, mean, mean_sqrt_len_tokens, weightedmean or lasttoken");
}

/// Pools hidden states h (B, T, C) of inputs whose first lengths[b] positions are tokens (the
/// rest padding) into out (B, modes.size() * C): for each input the modes' vectors one after
/// another, accumulated in double. Every length must be in [1, T].
template <class T, class S>
void sentence_pool(view<const T, S> h, std::span<const std::size_t> lengths,
                   std::span<const pooling> modes, std::span<float> out) {
    const std::size_t B = h.extent(0), L = h.extent(1), C = h.extent(2), M = modes.size();
    if (lengths.size() != B || out.size() != B * M * C || M == 0)
        throw error(errc::shape_mismatch, "sentence_pool",
                    ftune::detail::cat("lengths ", lengths.size(), " and out ", out.size(), " for ",
                                       B, " inputs of ", C, " features and ", M, " modes"));
    std::vector<double> acc(C);
    for (std::size_t b = 0; b < B; ++b) {
        const std::size_t n = lengths[b];
        if (n == 0 || n > L)
            throw error(errc::out_of_range, "sentence_pool",
                        ftune::detail::cat("input ", b, " has ", n, " tokens; expected 1 to ", L));
        const T* x = h.data() + b * L * C;  // (T, C) of input b
        for (std::size_t m = 0; m < M; ++m) {
            float* y = out.data() + (b * M + m) * C;
            const pooling p = modes[m];
            if (p == pooling::cls || p == pooling::last_token) {
                const T* row = x + (p == pooling::cls ? 0 : n - 1) * C;
                for (std::size_t c = 0; c < C; ++c) y[c] = float(row[c]);
                continue;
            }
            if (p == pooling::max) {
                std::fill(acc.begin(), acc.end(), -std::numeric_limits<double>::infinity());
                for (std::size_t t = 0; t < n; ++t)
                    for (std::size_t c = 0; c < C; ++c)
                        acc[c] = std::max(acc[c], double(x[t * C + c]));
                for (std::size_t c = 0; c < C; ++c) y[c] = float(acc[c]);
                continue;
            }
            std::fill(acc.begin(), acc.end(), 0.0);
            double weights = 0;
            for (std::size_t t = 0; t < n; ++t) {
                const double w = p == pooling::weighted_mean ? double(t + 1) : 1.0;
                weights += w;
                for (std::size_t c = 0; c < C; ++c) acc[c] += w * double(x[t * C + c]);
            }
            const double d = p == pooling::mean_sqrt_len ? std::sqrt(weights) : weights;
            for (std::size_t c = 0; c < C; ++c) y[c] = float(acc[c] / d);
        }
    }
}

/// The backward of sentence_pool: dh (B, T, C) += the gradient of the pooled vectors from
/// d_out (B, modes.size() * C), for the same h and lengths (max: to the first position holding
/// each feature's maximum, as torch.max's gradient).
template <class T, class S, class SD>
void sentence_pool_backward(view<const T, S> h, std::span<const std::size_t> lengths,
                            std::span<const pooling> modes, std::span<const float> d_out,
                            view<T, SD> dh) {
    const std::size_t B = h.extent(0), L = h.extent(1), C = h.extent(2), M = modes.size();
    if (lengths.size() != B || d_out.size() != B * M * C || dh.shape().size() != B * L * C)
        throw error(errc::shape_mismatch, "sentence_pool_backward",
                    ftune::detail::cat("lengths ", lengths.size(), ", d_out ", d_out.size(),
                                       " and dh ", dh.shape().size(), " for ", B, " inputs of ", L,
                                       " x ", C, " and ", M, " modes"));
    for (std::size_t b = 0; b < B; ++b) {
        const std::size_t n = lengths[b];
        if (n == 0 || n > L)
            throw error(errc::out_of_range, "sentence_pool_backward",
                        ftune::detail::cat("input ", b, " has ", n, " tokens; expected 1 to ", L));
        const T* x = h.data() + b * L * C;  // (T, C) of input b
        T* dx = dh.data() + b * L * C;
        for (std::size_t m = 0; m < M; ++m) {
            const float* dy = d_out.data() + (b * M + m) * C;
            const pooling p = modes[m];
            if (p == pooling::cls || p == pooling::last_token) {
                T* row = dx + (p == pooling::cls ? 0 : n - 1) * C;
                for (std::size_t c = 0; c < C; ++c) row[c] += T(dy[c]);
                continue;
            }
            if (p == pooling::max) {
                for (std::size_t c = 0; c < C; ++c) {
                    std::size_t at = 0;
                    for (std::size_t t = 1; t < n; ++t)
                        if (x[t * C + c] > x[at * C + c]) at = t;
                    dx[at * C + c] += T(dy[c]);
                }
                continue;
            }
            double weights = 0;
            for (std::size_t t = 0; t < n; ++t)
                weights += p == pooling::weighted_mean ? double(t + 1) : 1.0;
            const double d = p == pooling::mean_sqrt_len ? std::sqrt(weights) : weights;
            for (std::size_t t = 0; t < n; ++t) {
                const double w = (p == pooling::weighted_mean ? double(t + 1) : 1.0) / d;
                for (std::size_t c = 0; c < C; ++c) dx[t * C + c] += T(w * double(dy[c]));
            }
        }
    }
}

/// Divides each row of `rows` (rows.size() / dim of them) by its L2 norm, or by 1e-12 when the
/// norm is smaller (torch.nn.functional.normalize).
inline void l2_normalize(std::span<float> rows, std::size_t dim) {
    if (dim == 0 || rows.size() % dim != 0)
        throw error(errc::shape_mismatch, "l2_normalize",
                    ftune::detail::cat(rows.size(), " values are not rows of ", dim));
    for (std::size_t r = 0; r < rows.size(); r += dim) {
        double sq = 0;
        for (std::size_t c = 0; c < dim; ++c) sq += double(rows[r + c]) * rows[r + c];
        const double norm = std::max(std::sqrt(sq), 1e-12);
        for (std::size_t c = 0; c < dim; ++c) rows[r + c] = float(rows[r + c] / norm);
    }
}

}  // namespace heads
FTUNE_NAMESPACE_END
