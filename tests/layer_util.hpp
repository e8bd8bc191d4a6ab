// Helpers for the layer and block tests: random parameters and a key-mask binder.
#pragma once

#include <ftune/core/context.hpp>
#include <ftune/core/parameter.hpp>

#include <string>
#include <string_view>

#include "util.hpp"

namespace test {

/// Fills every parameter with normal(0, scale) values, seeded; LayerNorm weights around 1.
template <class L>
void randomize(L& layer, std::uint64_t seed, double scale = 0.4) {
    using T = typename L::value_type;
    layer.visit_parameters("", [&](ftune::parameter_ref<T> p) {
        const auto v = randn<double>(p.value.size(), seed++, scale);
        const bool ln_weight = p.name.find("LayerNorm.weight") != std::string::npos;
        for (std::size_t i = 0; i < v.size(); ++i) p.value[i] = T((ln_weight ? 1.0 : 0.0) + v[i]);
    });
}

/// A layer whose backward also takes grad_write::overwrite.
template <class L>
concept overwriting_backward = requires(L& l, ftune::context& c, typename L::output_view dy,
                                        typename L::d_input_view dx) {
    l.backward(c, dy, dx, ftune::grad_write::overwrite);
};

/// Binds a key mask to a layer whose forward takes one (attention, block), so that
/// check_layer_gradients can call forward(ctx, x).
template <class L>
struct masked {
    using value_type = double;
    using input_view = typename L::input_view;
    using output_view = typename L::output_view;
    using d_input_view = typename L::d_input_view;
    L& layer;
    typename L::mask_view mask;
    output_view forward(ftune::context& ctx, input_view x) { return layer.forward(ctx, x, mask); }
    void backward(ftune::context& ctx, output_view dy, d_input_view dx) {
        layer.backward(ctx, dy, dx);
    }
    /// The layer's grad_write::overwrite backward, where it has one.
    void backward(ftune::context& ctx, output_view dy, d_input_view dx,
                  ftune::grad_write w) requires overwriting_backward<L> {
        layer.backward(ctx, dy, dx, w);
    }
    void zero_grad() { layer.zero_grad(); }
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        layer.visit_parameters(prefix, f);
    }
};

}  // namespace test
