// layers::absent: the type of a piece a composition leaves out (a position table, a norm, a
// bias), so that one template serves the models with and without it.
#pragma once

#include <type_traits>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// A piece a composition leaves out (no position table, no type table, no norm, no bias): it
/// takes no space ([[no_unique_address]]) and the code that would use it is not compiled.
struct absent {
    /// Accepts any constructor arguments.
    template <class... A>
    constexpr explicit absent(A&&...) noexcept {}
};

/// True when piece P is left out.
template <class P>
inline constexpr bool is_absent = std::is_same_v<P, absent>;

}  // namespace layers
FTUNE_NAMESPACE_END
