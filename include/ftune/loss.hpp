// Losses over a model's output rows, with PyTorch's definitions and mean reductions:
//   loss::cross_entropy    softmax cross-entropy with logits: ignore index, label smoothing,
//                          class weights (classification, token classification, masked LM)
//   loss::bce_with_logits  binary cross-entropy with logits, mean over every element (multi-label)
//   loss::mse              mean squared error (regression)
// forward(logits, targets) returns the mean loss and saves what backward needs;
// backward(d_logits, scale) accumulates scale * d loss / d logits (the `loss` concept).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace loss {

/// Options of cross_entropy (torch.nn.CrossEntropyLoss's arguments).
struct cross_entropy_options {
    token_id ignore_index = -100;       ///< targets equal to it count for nothing
    double label_smoothing = 0;         ///< ε: the target is (1 − ε) one-hot + ε / V uniform
    std::vector<double> class_weights;  ///< w_c per class (empty: all 1); the mean is weighted
};

/// Softmax cross-entropy of logits (N, V) against class ids (N). With weights w and smoothing ε,
/// as PyTorch: loss_i = w_{y_i} (1 − ε) (−log p_{i,y_i}) + (ε / V) Σ_c w_c (−log p_{i,c}), and
/// the mean divides by Σ_i w_{y_i} over the rows not ignored (0 when every row is ignored).
template <scalar T>
class cross_entropy {
  public:
    using value_type = T;                                      ///< scalar type
    using target_view = view<const token_id, shape<dynamic>>;  ///< class id per row (N)

    cross_entropy_options options;  ///< ignore index, smoothing, weights

    /// A loss with the given options (checked when used).
    explicit cross_entropy(cross_entropy_options o = {}) : options(std::move(o)) {}

    /// The mean loss of logits (N, V) for targets (N); saves the logits' view for backward.
    T forward(matrix_view<const T> logits, target_view targets) {
        const std::size_t N = logits.extent(0), V = logits.extent(1);
        check(N, V, targets);
        logits_ = logits, targets_ = targets;
        const double eps = options.label_smoothing;
        const auto& w = options.class_weights;
        if (eps == 0 && w.empty()) {  // the common case: the vectorized primitive
            losses_.resize(shape<dynamic>(N));
            const std::size_t n =
                ops::cross_entropy(losses_, logits, targets, options.ignore_index);
            denom_ = double(n);
            double s = 0;
            for (std::size_t i = 0; i < N; ++i) s += double(losses_.data()[i]);
            return n ? T(s / denom_) : T(0);
        }
        double total = 0;
        denom_ = 0;
        for (std::size_t i = 0; i < N; ++i) {
            const token_id y = targets.data()[i];
            if (y == options.ignore_index) continue;
            const T* z = logits.data() + i * V;
            const double lse = log_sum_exp(z, V);
            const double wy = w.empty() ? 1.0 : w[std::size_t(y)];
            double smooth = 0;  // Σ_c w_c (−log p_c)
            if (eps != 0)
                for (std::size_t c = 0; c < V; ++c)
                    smooth += (w.empty() ? 1.0 : w[c]) * (lse - double(z[c]));
            total += wy * (1 - eps) * (lse - double(z[y])) + eps / double(V) * smooth;
            denom_ += wy;
        }
        return denom_ > 0 ? T(total / denom_) : T(0);
    }

    /// d_logits (N, V) += scale * d loss / d logits of the last forward.
    void backward(matrix_view<T> d_logits, T scale) {
        const std::size_t N = logits_.extent(0), V = logits_.extent(1);
        if (d_logits.extent(0) != N || d_logits.extent(1) != V)
            throw error(errc::shape_mismatch, "cross_entropy::backward",
                        "d_logits must have the shape of the last forward's logits");
        if (denom_ == 0) return;
        const double eps = options.label_smoothing;
        const auto& w = options.class_weights;
        if (eps == 0 && w.empty()) {
            dl_.resize(shape<dynamic>(N));
            for (std::size_t i = 0; i < N; ++i) dl_.data()[i] = T(double(scale) / denom_);
            ops::cross_entropy_backward(d_logits, logits_, targets_, dl_, options.ignore_index);
            return;
        }
        double wsum = 0;  // Σ_c w_c
        for (std::size_t c = 0; c < V; ++c) wsum += w.empty() ? 1.0 : w[c];
        for (std::size_t i = 0; i < N; ++i) {
            const token_id y = targets_.data()[i];
            if (y == options.ignore_index) continue;
            const T* z = logits_.data() + i * V;
            T* d = d_logits.data() + i * V;
            const double lse = log_sum_exp(z, V), k = double(scale) / denom_;
            const double wy = w.empty() ? 1.0 : w[std::size_t(y)];
            // d/dz_j: w_y (1 − ε)(p_j − δ_jy) + (ε / V)(p_j Σ_c w_c − w_j)
            for (std::size_t j = 0; j < V; ++j) {
                const double p = std::exp(double(z[j]) - lse);
                const double wj = w.empty() ? 1.0 : w[j];
                d[j] += T(k * (wy * (1 - eps) * (p - (token_id(j) == y ? 1.0 : 0.0)) +
                               eps / double(V) * (p * wsum - wj)));
            }
        }
    }

  private:
    void check(std::size_t N, std::size_t V, target_view targets) const {
        if (targets.extent(0) != N)
            throw error(errc::shape_mismatch, "cross_entropy",
                        ftune::detail::cat(N, " rows of logits but ", targets.extent(0),
                                           " targets; give one class id per row"));
        if (!(options.label_smoothing >= 0 && options.label_smoothing <= 1))
            throw error(errc::invalid_argument, "cross_entropy: label_smoothing",
                        ftune::detail::cat(options.label_smoothing, " is outside [0, 1]"));
        if (!options.class_weights.empty() && options.class_weights.size() != V)
            throw error(errc::shape_mismatch, "cross_entropy: class_weights",
                        ftune::detail::cat(options.class_weights.size(), " weights for ", V,
                                           " classes; give one per class"));
        for (std::size_t i = 0; i < N; ++i) {
            const token_id y = targets.data()[i];
            if (y != options.ignore_index && (y < 0 || std::size_t(y) >= V))
                throw error(
                    errc::out_of_range, "cross_entropy",
                    ftune::detail::cat("target ", y, " of row ", i, " is outside [0, ", V,
                                       ") and is not the ignore index ", options.ignore_index));
        }
    }
    static double log_sum_exp(const T* z, std::size_t V) {
        double m = double(*std::max_element(z, z + V)), s = 0;
        for (std::size_t c = 0; c < V; ++c) s += std::exp(double(z[c]) - m);
        return m + std::log(s);
    }

    matrix_view<const T> logits_;            // the last forward's logits (N, V)
    target_view targets_;                    // and targets (N)
    double denom_ = 0;                       // Σ w_{y_i} over counted rows
    buffer<T, shape<dynamic>> losses_, dl_;  // (N) per-row losses, d loss / d row loss
};

/// Binary cross-entropy with logits, mean over every element (torch.nn.BCEWithLogitsLoss):
/// loss = mean(max(z, 0) − z y + log(1 + exp(−|z|))) for targets y in [0, 1].
template <scalar T>
class bce_with_logits {
  public:
    using value_type = T;                                        ///< scalar type
    using target_view = view<const T, shape<dynamic, dynamic>>;  ///< (N, L) targets in [0, 1]

    /// The mean loss of logits (N, L) against targets (N, L).
    T forward(matrix_view<const T> logits, target_view targets) {
        if (targets.extent(0) != logits.extent(0) || targets.extent(1) != logits.extent(1))
            throw error(errc::shape_mismatch, "bce_with_logits",
                        "targets must have the logits' shape (one 0/1 value per label)");
        logits_ = logits, targets_ = targets;
        const std::size_t n = logits.size();
        double s = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const double z = logits.data()[i], y = targets.data()[i];
            s += std::max(z, 0.0) - z * y + std::log1p(std::exp(-std::abs(z)));
        }
        return n ? T(s / double(n)) : T(0);
    }

    /// d_logits += scale * (sigmoid(z) − y) / (N L).
    void backward(matrix_view<T> d_logits, T scale) {
        const std::size_t n = logits_.size();
        if (d_logits.size() != n)
            throw error(errc::shape_mismatch, "bce_with_logits::backward",
                        "d_logits must have the shape of the last forward's logits");
        for (std::size_t i = 0; i < n; ++i) {
            const double z = logits_.data()[i];
            d_logits.data()[i] +=
                T(double(scale) * (1 / (1 + std::exp(-z)) - targets_.data()[i]) / double(n));
        }
    }

  private:
    matrix_view<const T> logits_;  // (N, L)
    target_view targets_;          // (N, L)
};

/// Mean squared error (torch.nn.MSELoss): loss = mean((z − y)²) over every element.
template <scalar T>
class mse {
  public:
    using value_type = T;                                        ///< scalar type
    using target_view = view<const T, shape<dynamic, dynamic>>;  ///< (N, L) target values

    /// The mean squared difference of predictions (N, L) and targets (N, L).
    T forward(matrix_view<const T> pred, target_view targets) {
        if (targets.extent(0) != pred.extent(0) || targets.extent(1) != pred.extent(1))
            throw error(errc::shape_mismatch, "mse",
                        "targets must have the predictions' shape (one value per output)");
        pred_ = pred, targets_ = targets;
        double s = 0;
        for (std::size_t i = 0; i < pred.size(); ++i) {
            const double d = double(pred.data()[i]) - double(targets.data()[i]);
            s += d * d;
        }
        return pred.size() ? T(s / double(pred.size())) : T(0);
    }

    /// d_pred += scale * 2 (z − y) / (N L).
    void backward(matrix_view<T> d_pred, T scale) {
        const std::size_t n = pred_.size();
        if (d_pred.size() != n)
            throw error(errc::shape_mismatch, "mse::backward",
                        "d_pred must have the shape of the last forward's predictions");
        for (std::size_t i = 0; i < n; ++i)
            d_pred.data()[i] +=
                T(double(scale) * 2 * (double(pred_.data()[i]) - double(targets_.data()[i])) /
                  double(n));
    }

  private:
    matrix_view<const T> pred_;  // (N, L)
    target_view targets_;        // (N, L)
};

namespace detail {
/// Rows of x (n, d) divided by their L2 norm (at least 1e-12, as torch's normalize), in double;
/// norms gets each row's norm before the clamp.
template <scalar T>
void unit_rows(matrix_view<const T> x, std::vector<double>& unit, std::vector<double>& norms) {
    const std::size_t n = x.extent(0), d = x.extent(1);
    unit.resize(n * d), norms.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
        double s = 0;
        for (std::size_t j = 0; j < d; ++j) s += double(x(i, j)) * double(x(i, j));
        norms[i] = std::sqrt(s);
        const double inv = 1.0 / std::max(norms[i], 1e-12);
        for (std::size_t j = 0; j < d; ++j) unit[i * d + j] = double(x(i, j)) * inv;
    }
}
/// dx += the gradient through x / |x| of d_unit (rows of d values): (du − u (u · du)) / |x|
/// (du / 1e-12 where the norm was clamped).
template <scalar T>
void unit_rows_backward(const std::vector<double>& unit, const std::vector<double>& norms,
                        const std::vector<double>& d_unit, matrix_view<T> dx) {
    const std::size_t n = dx.extent(0), d = dx.extent(1);
    for (std::size_t i = 0; i < n; ++i) {
        const double* u = unit.data() + i * d;
        const double* du = d_unit.data() + i * d;
        const bool clamped = norms[i] < 1e-12;
        double dot = 0;
        for (std::size_t j = 0; j < d; ++j) dot += u[j] * du[j];
        const double inv = 1.0 / std::max(norms[i], 1e-12);
        for (std::size_t j = 0; j < d; ++j)
            dx(i, j) += T((clamped ? du[j] : du[j] - u[j] * dot) * inv);
    }
}
}  // namespace detail

/// sentence-transformers' MultipleNegativesRankingLoss with its defaults (cosine similarity
/// times `scale`, query to document, one softmax): anchors a (B, D) against candidates c (M, D),
/// the B positives first (c_i is a_i's) then any sets of B hard negatives; every other
/// candidate is a negative of a_i (in-batch negatives). loss = mean_i CE(scale cos(a_i, c), i).
/// Computed in double (B x M x D is small beside the encoder that made the embeddings).
template <scalar T>
class multiple_negatives_ranking {
  public:
    using value_type = T;  ///< scalar type
    double scale = 20.0;   ///< the similarities' factor (1 / temperature)

    /// A loss with `scale` (sentence-transformers' default 20).
    explicit multiple_negatives_ranking(double s = 20.0) : scale(s) {}

    /// The mean loss of anchors (B, D) against candidates (M, D), M a multiple of B.
    T forward(matrix_view<const T> anchors, matrix_view<const T> candidates) {
        const std::size_t B = anchors.extent(0), M = candidates.extent(0), D = anchors.extent(1);
        if (B == 0 || M % B != 0 || candidates.extent(1) != D)
            throw error(errc::shape_mismatch, "multiple_negatives_ranking",
                        ftune::detail::cat(B, " anchors of ", D, " values and ", M,
                                           " candidates of ", candidates.extent(1),
                                           ": give each anchor its positive (and the same "
                                           "number of hard negatives), all of one width"));
        detail::unit_rows(anchors, ua_, na_);
        detail::unit_rows(candidates, uc_, nc_);
        B_ = B, M_ = M, D_ = D;
        p_.assign(B * M, 0.0);  // softmax of each anchor's row of scale cos
        double total = 0;
        for (std::size_t i = 0; i < B; ++i) {
            double* row = p_.data() + i * M;
            double top = -std::numeric_limits<double>::infinity();
            for (std::size_t j = 0; j < M; ++j) {
                double dot = 0;
                for (std::size_t k = 0; k < D; ++k) dot += ua_[i * D + k] * uc_[j * D + k];
                row[j] = scale * dot;
                top = std::max(top, row[j]);
            }
            double sum = 0;
            for (std::size_t j = 0; j < M; ++j) sum += std::exp(row[j] - top);
            total += top + std::log(sum) - row[i];
            for (std::size_t j = 0; j < M; ++j) row[j] = std::exp(row[j] - top) / sum;
        }
        return T(total / double(B));
    }

    /// d_anchors (B, D) and d_candidates (M, D) += g × the gradients of the last forward.
    void backward(matrix_view<T> d_anchors, matrix_view<T> d_candidates, T g = T(1)) {
        if (d_anchors.extent(0) != B_ || d_candidates.extent(0) != M_ ||
            d_anchors.extent(1) != D_ || d_candidates.extent(1) != D_)
            throw error(errc::shape_mismatch, "multiple_negatives_ranking::backward",
                        "the gradients must have the shapes of the last forward's embeddings");
        // d (scale cos)_ij = g (p_ij − [i == j]) / B, then through the products and the norms
        std::vector<double> dua(B_ * D_, 0.0), duc(M_ * D_, 0.0);
        for (std::size_t i = 0; i < B_; ++i)
            for (std::size_t j = 0; j < M_; ++j) {
                const double ds =
                    double(g) * scale * (p_[i * M_ + j] - (i == j ? 1.0 : 0.0)) / double(B_);
                for (std::size_t k = 0; k < D_; ++k) {
                    dua[i * D_ + k] += ds * uc_[j * D_ + k];
                    duc[j * D_ + k] += ds * ua_[i * D_ + k];
                }
            }
        detail::unit_rows_backward(ua_, na_, dua, d_anchors);
        detail::unit_rows_backward(uc_, nc_, duc, d_candidates);
    }

  private:
    std::size_t B_ = 0, M_ = 0, D_ = 0;
    std::vector<double> ua_, uc_, na_, nc_;  // unit rows and norms of the last forward
    std::vector<double> p_;                  // (B, M) softmax of each anchor's scores
};

/// sentence-transformers' CosineSimilarityLoss: the mean squared difference between cos(u_i,
/// v_i) and a score y_i (a similarity in [-1, 1] or [0, 1]) for pairs u, v (B, D).
template <scalar T>
class cosine_similarity_mse {
  public:
    using value_type = T;  ///< scalar type

    /// The mean of (cos(u_i, v_i) − y_i)².
    T forward(matrix_view<const T> u, matrix_view<const T> v, std::span<const float> scores) {
        const std::size_t B = u.extent(0), D = u.extent(1);
        if (v.extent(0) != B || v.extent(1) != D || scores.size() != B)
            throw error(errc::shape_mismatch, "cosine_similarity_mse",
                        ftune::detail::cat(B, " and ", v.extent(0), " embeddings, ", scores.size(),
                                           " scores: give one score per pair"));
        detail::unit_rows(u, uu_, nu_);
        detail::unit_rows(v, uv_, nv_);
        B_ = B, D_ = D;
        diff_.assign(B, 0.0);
        double total = 0;
        for (std::size_t i = 0; i < B; ++i) {
            double c = 0;
            for (std::size_t k = 0; k < D; ++k) c += uu_[i * D + k] * uv_[i * D + k];
            diff_[i] = c - double(scores[i]);
            total += diff_[i] * diff_[i];
        }
        return B ? T(total / double(B)) : T(0);
    }

    /// d_u and d_v (B, D) += g × the gradients of the last forward.
    void backward(matrix_view<T> d_u, matrix_view<T> d_v, T g = T(1)) {
        if (d_u.extent(0) != B_ || d_v.extent(0) != B_ || d_u.extent(1) != D_ ||
            d_v.extent(1) != D_)
            throw error(errc::shape_mismatch, "cosine_similarity_mse::backward",
                        "the gradients must have the shapes of the last forward's embeddings");
        std::vector<double> du(B_ * D_), dv(B_ * D_);
        for (std::size_t i = 0; i < B_; ++i) {
            const double dc = double(g) * 2 * diff_[i] / double(B_);
            for (std::size_t k = 0; k < D_; ++k)
                du[i * D_ + k] = dc * uv_[i * D_ + k], dv[i * D_ + k] = dc * uu_[i * D_ + k];
        }
        detail::unit_rows_backward(uu_, nu_, du, d_u);
        detail::unit_rows_backward(uv_, nv_, dv, d_v);
    }

  private:
    std::size_t B_ = 0, D_ = 0;
    std::vector<double> uu_, uv_, nu_, nv_;  // unit rows and norms of the last forward
    std::vector<double> diff_;               // cos − score per pair
};

}  // namespace loss
FTUNE_NAMESPACE_END
