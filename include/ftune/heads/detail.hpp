// What several heads compute the same way: cross-entropy over every position's logits, the
// loss-and-accuracy evaluation finish, and the softmax (in double) their decoders read.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "ftune/loss.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/train/evaluation.hpp"

FTUNE_NAMESPACE_BEGIN
namespace heads::detail {

/// The mean cross-entropy of logits (B*T, L) at y against b's per-position labels (-100: not
/// counted); with d, d (B*T, L) += scale * its gradient.
template <class T>
double per_position_loss(loss::cross_entropy<T>& ce, const T* y, std::size_t L,
                         const train::batch& b, T* d, T scale) {
    const std::size_t n = b.B * b.T;
    const double l = double(ce.forward({y, n, L}, {b.labels.data(), n}));
    if (d) ce.backward({d, n, L}, scale);
    return l;
}

/// Σ over the labels ce counts (not its ignore index) of their class weight (1 without
/// weights): the denominator of ce's mean over them, a batch's loss weight (the trainer's share
/// of a slice in the mean over its whole batch: train/trainer.hpp).
template <class T>
double label_weight(const loss::cross_entropy<T>& ce, std::span<const token_id> labels) {
    const auto& w = ce.options.class_weights;
    double sum = 0;
    for (const token_id y : labels)
        if (y != ce.options.ignore_index)  // (a label outside the weights: the loss throws)
            sum += w.empty() ? 1.0 : y >= 0 && std::size_t(y) < w.size() ? w[std::size_t(y)] : 0;
    return sum;
}

/// The report of a head whose metric is the loss: loss and accuracy per counted item from the
/// running sums, metric −loss.
inline void finish_by_loss(train::evaluation& e) {
    const auto& s = e.running;
    e.loss = s.weight ? s.loss / s.weight : 0;
    e.accuracy = s.weight ? s.correct / s.weight : 0;
    e.metric = -e.loss;
}

/// softmax of the n values at z, in double (max subtracted first), into p.
template <class T>
void softmax(const T* z, std::size_t n, std::vector<double>& p) {
    p.resize(n);
    const double m = double(*std::max_element(z, z + n));
    double sum = 0;
    for (std::size_t j = 0; j < n; ++j) sum += p[j] = std::exp(double(z[j]) - m);
    for (auto& v : p) v /= sum;
}

}  // namespace heads::detail
FTUNE_NAMESPACE_END
