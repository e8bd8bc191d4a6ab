// Shapes with static or dynamic extents (like Eigen's Dynamic and std::extents).
//
// shape<384, dynamic> is a rank-2 shape whose first extent is fixed at compile time and whose
// second is known at run time. Static extents are checked when shapes meet: two different static
// extents stop the build; a dynamic extent meeting a static one is checked at run time and throws
// ftune::error naming both shapes.
#pragma once

#include <array>
#include <cstddef>
#include <ostream>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN

/// The extent value meaning "known only at run time" (same value as std::dynamic_extent).
inline constexpr std::size_t dynamic = std::dynamic_extent;

namespace detail {
/// Formats an extent list as "[2, 384]" (a dynamic extent prints as "*").
inline std::string format_extents(std::span<const std::size_t> e) {
    std::string s = "[";
    for (std::size_t i = 0; i < e.size(); ++i) {
        if (i) s += ", ";
        s += e[i] == dynamic ? std::string("*") : std::to_string(e[i]);
    }
    return s + "]";
}

// The throws of the shape checks, out of line and cold: every check in every template keeps
// only its comparison inline, not the building of the message (less code, faster builds).

/// Throws about axis i of a shape given ftune::dynamic as its size.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_dynamic_extent(const char* what,
                                                                        std::size_t i) {
    throw error(errc::invalid_argument, what,
                cat("axis ", i,
                    " has no size: ftune::dynamic marks an extent known only at run time and is "
                    "not itself a size; pass the size (e.g. linear<float>(in, out), not "
                    "linear<float>())"));
}
/// Throws about extents `got` contradicting the static ones at axis i.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_static_extent(
    const char* what, std::span<const std::size_t> expected, std::span<const std::size_t> got,
    std::size_t i) {
    throw error(errc::shape_mismatch, what,
                cat("expected ", format_extents(expected), ", got ", format_extents(got), " (axis ",
                    i, " is fixed at compile time to ", expected[i], ")"));
}
/// Throws about two shapes that must be equal and are not.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_shapes_differ(
    const char* context, std::span<const std::size_t> a, std::span<const std::size_t> b) {
    throw error(errc::shape_mismatch, context,
                cat("shapes differ: ", format_extents(a), " vs ", format_extents(b)));
}
/// True when two static extent lists can describe the same tensor (equal, or one is dynamic).
template <std::size_t N, std::size_t M>
constexpr bool static_extents_compatible(std::array<std::size_t, N> a,
                                         std::array<std::size_t, M> b) {
    if (N != M) return false;
    for (std::size_t i = 0; i < N; ++i)
        if (a[i] != dynamic && b[i] != dynamic && a[i] != b[i]) return false;
    return true;
}
}  // namespace detail

/// The extents of a row-major tensor; each is a compile-time constant or `dynamic`.
template <std::size_t... Es>
class shape {
  public:
    /// Number of axes.
    static constexpr std::size_t rank = sizeof...(Es);
    /// The compile-time extents (`dynamic` where known only at run time).
    static constexpr std::array<std::size_t, rank> static_extents{Es...};
    /// Number of axes whose extent is known only at run time.
    static constexpr std::size_t rank_dynamic = ((Es == dynamic ? 1 : 0) + ... + 0);

    /// All-static shapes are default constructible; dynamic extents default to 0.
    constexpr shape() noexcept {
        for (std::size_t i = 0; i < rank; ++i)
            e_[i] = static_extents[i] == dynamic ? 0 : static_extents[i];
    }

    /// A shape from all its extents; a value that contradicts a static extent throws
    /// shape_mismatch.
    template <class... I>
    requires(sizeof...(I) == rank && rank > 0 &&
             (std::is_integral_v<I> && ...)) constexpr shape(I... extents)
        : e_{static_cast<std::size_t>(extents)...} {
        check_against_static("shape");
    }

    /// A shape from an extent array (checked like the variadic constructor).
    constexpr explicit shape(const std::array<std::size_t, rank>& extents) : e_(extents) {
        check_against_static("shape");
    }

    /// Conversion from another shape of the same rank. Static extents must agree at compile time;
    /// a dynamic source extent meeting a static target is checked at run time (hence explicit).
    template <std::size_t... Fs>
    constexpr explicit(((Es != dynamic && Fs == dynamic) || ...)) shape(const shape<Fs...>& other) {
        static_assert(sizeof...(Fs) == rank,
                      "ftune: the two shapes have different ranks; reshape the tensor explicitly "
                      "(view::reshape) before passing it.");
        static_assert(
            detail::static_extents_compatible(static_extents, shape<Fs...>::static_extents),
            "ftune: static extents differ: a tensor whose compile-time shape is "
            "shape<Fs...> is used where shape<Es...> is required. Make the dimensions of "
            "the two types agree, or declare the axis ftune::dynamic to check it at run time.");
        for (std::size_t i = 0; i < rank; ++i) e_[i] = other.extent(i);
        check_against_static("shape conversion");
    }

    /// The extent of axis i.
    constexpr std::size_t extent(std::size_t i) const noexcept { return e_[i]; }
    /// All extents.
    constexpr const std::array<std::size_t, rank>& extents() const noexcept { return e_; }
    /// Number of elements (product of extents; 1 for rank 0).
    constexpr std::size_t size() const noexcept {
        std::size_t n = 1;
        for (auto e : e_) n *= e;
        return n;
    }
    /// Formats as "[2, 384]".
    std::string to_string() const { return detail::format_extents(e_); }

    /// Extent-wise equality (whatever the static/dynamic split).
    template <std::size_t... Fs>
    constexpr bool operator==(const shape<Fs...>& o) const noexcept {
        if constexpr (sizeof...(Fs) != rank) {
            return false;
        } else {
            for (std::size_t i = 0; i < rank; ++i)
                if (e_[i] != o.extent(i)) return false;
            return true;
        }
    }

  private:
    constexpr void check_against_static(const char* what) const {
        for (std::size_t i = 0; i < rank; ++i) {
            if (e_[i] == dynamic) detail::throw_dynamic_extent(what, i);
            if (static_extents[i] != dynamic && static_extents[i] != e_[i])
                detail::throw_static_extent(what, static_extents, e_, i);
        }
    }
    std::array<std::size_t, rank> e_{};
};

/// Prints a shape as "[2, 384]".
template <std::size_t... Es>
std::ostream& operator<<(std::ostream& os, const shape<Es...>& s) {
    return os << s.to_string();
}

namespace detail {
template <class Seq>
struct make_dynamic_shape;
template <std::size_t... I>
struct make_dynamic_shape<std::index_sequence<I...>> {
    using type = shape<(static_cast<void>(I), dynamic)...>;
};
}  // namespace detail

/// A shape type with `Rank` dynamic extents, e.g. dynamic_shape<2> = shape<dynamic, dynamic>.
template <std::size_t Rank>
using dynamic_shape = typename detail::make_dynamic_shape<std::make_index_sequence<Rank>>::type;

/// True for specializations of ftune::shape.
template <class S>
inline constexpr bool is_shape_v = false;
template <std::size_t... Es>
inline constexpr bool is_shape_v<shape<Es...>> = true;

/// Throws shape_mismatch naming both shapes unless `a` and `b` have equal extents.
/// Different static extents are a compile-time error instead.
template <std::size_t... As, std::size_t... Bs>
constexpr void check_same_shape(const shape<As...>& a, const shape<Bs...>& b, const char* context) {
    static_assert(sizeof...(As) == sizeof...(Bs),
                  "ftune: the two tensors have different ranks; reshape one of them first.");
    static_assert(detail::static_extents_compatible(shape<As...>::static_extents,
                                                    shape<Bs...>::static_extents),
                  "ftune: static extents differ between two tensors that must have the same "
                  "shape. Make the dimensions of the two types agree, or declare the axis "
                  "ftune::dynamic to check it at run time.");
    if (!(a == b)) detail::throw_shapes_differ(context, a.extents(), b.extents());
}

FTUNE_NAMESPACE_END
