// layers::backward_into: a layer's backward into an input-gradient buffer whose old content is
// dead (the containers' scratch between layers), written over instead of zeroed and added to.
#pragma once

#include "ftune/core/context.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// layer.backward(ctx, dy, dx) with dx written as w says: added to (accumulate, the layer
/// contract), or written over (overwrite: through the layer's grad_write::overwrite backward
/// where it has one, else dx zeroed first and added to; the same values either way).
template <class L, class DY, class DX>
void backward_into(L& layer, context& ctx, const DY& dy, DX dx,
                   grad_write w = grad_write::overwrite) {
    if (w == grad_write::accumulate) return layer.backward(ctx, dy, dx);
    if constexpr (requires { layer.backward(ctx, dy, dx, grad_write::overwrite); }) {
        layer.backward(ctx, dy, dx, grad_write::overwrite);
    } else {
        if (!dx.empty()) ops::zero(dx);
        layer.backward(ctx, dy, dx);
    }
}

}  // namespace layers
FTUNE_NAMESPACE_END
