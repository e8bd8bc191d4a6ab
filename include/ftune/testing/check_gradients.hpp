// ftune::testing::check_gradients: compares the gradients a backward pass computes with central
// differences, in double, for users' own layers as for ftune's.
//
//   std::vector<double> x = ..., dx(x.size());
//   ftune::testing::gradient_target targets[] = {{"x", x, dx}};
//   auto result = ftune::testing::check_gradients(
//       targets,
//       [&] { /* forward: return the scalar loss from the current values */ },
//       [&] { /* backward of the last forward: ACCUMULATE d loss / d target into dx */ });
//   if (!result.ok) std::cerr << result.report;
//
// Gradients are pre-filled with a sentinel, so a backward that overwrites instead of accumulating
// (`=` for `+=`) is caught, and a second forward + backward must add the same gradient again.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "ftune/core/rng.hpp"

FTUNE_NAMESPACE_BEGIN
namespace testing {

/// One tensor whose gradient is checked: its values (perturbed by the checker) and the gradient
/// buffer the backward callback accumulates into.
struct gradient_target {
    std::string name;  ///< reported in failures ("encoder.layer.0.attention.self.query.weight")
    std::span<double> value;  ///< the values the loss depends on
    std::span<double> grad;   ///< where backward accumulates d loss / d value (same size)
};

/// Settings of check_gradients.
struct gradient_check_options {
    double eps = 1e-6;   ///< central-difference step
    double rtol = 1e-5;  ///< relative tolerance on each gradient element
    double atol = 1e-8;  ///< absolute tolerance on each gradient element
    std::size_t max_points =
        512;  ///< elements checked per target (all when fewer; else a fixed random sample)
    double sentinel = 0.3125;  ///< value gradients hold before backward (exact in binary)
    std::uint64_t seed = 1;    ///< chooses the sampled elements
};

/// What check_gradients found.
struct gradient_check_result {
    bool ok = true;           ///< every checked element within tolerance, and accumulation correct
    std::size_t checked = 0;  ///< number of elements compared with central differences
    double worst_error = 0;   ///< largest |numeric - analytic| / (atol + rtol * scale) seen
    std::string report;       ///< one line per failure (at most 20), empty when ok
};

/// Checks the gradients `backward` accumulates into each target against central differences of
/// `loss`. `loss()` runs the forward pass on the current values and returns the scalar loss;
/// `backward()` runs the backward pass of the last forward with d loss = 1.
template <class Loss, class Backward>
gradient_check_result check_gradients(std::span<gradient_target> targets, Loss&& loss,
                                      Backward&& backward, const gradient_check_options& opt = {}) {
    gradient_check_result res;
    std::ostringstream report;
    std::size_t failures = 0;
    auto fail = [&](const std::string& line) {
        res.ok = false;
        if (failures++ < 20) report << line << "\n";
    };
    // 1. analytic gradients, on top of the sentinel
    for (auto& t : targets) {
        if (t.grad.size() != t.value.size()) {
            fail(t.name + ": gradient and value sizes differ");
            res.report = report.str();
            return res;
        }
        std::fill(t.grad.begin(), t.grad.end(), opt.sentinel);
    }
    (void)loss();
    backward();
    std::vector<std::vector<double>> analytic;
    for (auto& t : targets) {
        analytic.emplace_back(t.grad.size());
        for (std::size_t i = 0; i < t.grad.size(); ++i)
            analytic.back()[i] = t.grad[i] - opt.sentinel;
    }
    // 2. a second forward + backward must add the same gradient again (accumulation)
    (void)loss();
    backward();
    for (std::size_t k = 0; k < targets.size(); ++k) {
        const auto& t = targets[k];
        for (std::size_t i = 0; i < t.grad.size(); ++i) {
            const double want = opt.sentinel + 2 * analytic[k][i];
            if (!(std::abs(t.grad[i] - want) <=
                  opt.atol + opt.rtol * std::abs(want) + 1e-12 * std::abs(opt.sentinel))) {
                std::ostringstream os;
                os << t.name << "[" << i
                   << "]: backward does not accumulate: after two passes the gradient is "
                   << t.grad[i] << ", expected sentinel + 2 x " << analytic[k][i] << " = " << want
                   << " (does it assign with = instead of adding with +=?)";
                fail(os.str());
                break;
            }
        }
    }
    // 3. central differences on every element, or on a fixed random sample of max_points
    for (std::size_t k = 0; k < targets.size(); ++k) {
        auto& t = targets[k];
        const std::size_t n = t.value.size();
        std::vector<std::size_t> idx(n);
        for (std::size_t i = 0; i < n; ++i) idx[i] = i;
        if (n > opt.max_points) {
            shuffle(std::span<std::size_t>(idx), random_stream(opt.seed, k));
            idx.resize(opt.max_points);
        }
        for (std::size_t i : idx) {
            const double v = t.value[i];
            t.value[i] = v + opt.eps;
            const double lp = loss();
            t.value[i] = v - opt.eps;
            const double lm = loss();
            t.value[i] = v;
            const double numeric = (lp - lm) / (2 * opt.eps), a = analytic[k][i];
            const double err = std::abs(numeric - a) /
                               (opt.atol + opt.rtol * std::max(std::abs(numeric), std::abs(a)));
            res.worst_error = std::max(res.worst_error, std::isnan(err) ? INFINITY : err);
            ++res.checked;
            if (!(err <= 1.0)) {
                std::ostringstream os;
                os << t.name << "[" << i << "]: analytic " << a << ", numeric " << numeric;
                fail(os.str());
            }
        }
    }
    (void)loss();  // leave the forward state as it was for the unperturbed values
    if (failures > 20) report << "(" << failures - 20 << " more failures)\n";
    res.report = report.str();
    return res;
}

}  // namespace testing
FTUNE_NAMESPACE_END
