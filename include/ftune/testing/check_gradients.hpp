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
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/core/tensor.hpp"

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

/// Checks a layer instantiated with T = double: every trainable parameter and, for real-valued
/// inputs, the input x (a mutable view the checker perturbs), with loss = Σ R ⊙ forward(x) for a
/// fixed random R. ctx.rng is rewound before every forward, so a training-mode layer with
/// dropout is checked under one fixed mask (the same seed gives the same mask). A layer whose
/// backward also takes grad_write::overwrite must then write the same d input over a dx of NaN.
template <class Layer, class X>
gradient_check_result check_layer_gradients(Layer& layer, context& ctx, X x,
                                            const gradient_check_options& opt = {}) {
    using out_view = typename Layer::output_view;
    using in_elem = std::remove_const_t<typename Layer::input_view::element_type>;
    constexpr bool real_input = std::is_floating_point_v<in_elem>;
    std::vector<gradient_target> targets;
    layer.visit_parameters("", [&](parameter_ref<double> p) {
        if (p.trainable) targets.push_back({p.name, p.value, p.grad});
    });
    std::vector<double> dx(real_input ? x.size() : 0), r;
    if constexpr (real_input)
        targets.push_back({"input", std::span<double>(x.data(), x.size()), dx});
    const std::uint64_t rng_position = ctx.rng.position();
    typename out_view::shape_type out_shape{};
    auto loss = [&] {
        ctx.rng.set_position(rng_position);
        const out_view y = layer.forward(ctx, x);
        out_shape = y.shape();
        if (r.empty()) {  // the fixed projection R, drawn once
            const random_stream s(opt.seed, 99);
            r.resize(y.size());
            for (std::size_t i = 0; i < r.size(); ++i) r[i] = s.normal(i);
        }
        double l = 0;
        for (std::size_t i = 0; i < r.size(); ++i) l += r[i] * y.data()[i];
        return l;
    };
    auto backward = [&] {
        const out_view dy(r.data(), out_shape);
        if constexpr (real_input)
            layer.backward(ctx, dy, typename Layer::d_input_view(dx.data(), x.shape()));
        else
            layer.backward(ctx, dy);
    };
    gradient_check_result res =
        check_gradients(std::span<gradient_target>(targets), loss, backward, opt);
    if constexpr (real_input) {
        // 4. a backward that takes grad_write::overwrite writes the d input that accumulating
        // into zeros gives, whatever dx held before (NaN here)
        typename Layer::d_input_view dxv(dx.data(), x.shape());
        const out_view dy0(r.data(), out_shape);
        if constexpr (requires { layer.backward(ctx, dy0, dxv, grad_write::overwrite); }) {
            std::fill(dx.begin(), dx.end(), 0.0);
            (void)loss();
            backward();
            const std::vector<double> want = dx;
            std::fill(dx.begin(), dx.end(), std::numeric_limits<double>::quiet_NaN());
            (void)loss();
            layer.backward(ctx, out_view(r.data(), out_shape), dxv, grad_write::overwrite);
            for (std::size_t i = 0; i < dx.size(); ++i)
                if (!(std::abs(dx[i] - want[i]) <= opt.atol + opt.rtol * std::abs(want[i]))) {
                    std::ostringstream os;
                    os << "input[" << i << "]: backward with grad_write::overwrite gives " << dx[i]
                       << ", accumulating into zeros " << want[i]
                       << " (does it read what dx held?)\n";
                    res.ok = false;
                    res.report += os.str();
                    break;
                }
            (void)
                loss();  // the forward state of the unperturbed values, as check_gradients left it
        }
    }
    return res;
}

}  // namespace testing
FTUNE_NAMESPACE_END
