// layers::chain: a layer made of layers applied one after another (PyTorch's nn.Sequential), with
// the compile-time sizes of every pair of neighbours checked when the chain type is formed.
//
//   using mlp = ftune::layers::chain<ftune::layers::linear<float, 384, 256>,
//                                    ftune::layers::gelu<float, 256>,
//                                    ftune::layers::linear<float, 256, 2>>;
//   mlp head(ftune::layers::linear<float, 384, 256>(), {}, ftune::layers::linear<float, 256, 2>());
//
// Parameters are named by position ("<prefix>.0.weight", as nn.Sequential) unless a member is
// wrapped in named<"dense", L> ("<prefix>.dense.weight").
#pragma once

#include <algorithm>
#include <concepts>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "ftune/core/context.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/core/tensor.hpp"
#include "ftune/layers/activation.hpp"
#include "ftune/layers/gradients.hpp"
#include "ftune/layers/linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// A string literal usable as a template argument: the name of a chain member.
template <std::size_t N>
struct fixed_name {
    char chars[N]{};  ///< the characters, NUL-terminated
    /// From a string literal.
    constexpr fixed_name(const char (&s)[N]) { std::copy_n(s, N, chars); }
    /// The name without the terminating NUL.
    constexpr std::string_view view() const { return {chars, N - 1}; }
};

/// Layer L appearing as "<prefix>.<Name>" in a chain's parameter names instead of its index.
template <fixed_name Name, class L>
struct named : L {
    using L::L;
    /// Wraps an already built layer.
    named(L l) : L(std::move(l)) {}
    /// The name segment.
    static constexpr std::string_view name() { return Name.view(); }
};

namespace detail {
/// The name of member I of a chain: Name for named<Name, L>, otherwise the index.
template <class L>
std::string member_name(std::size_t index) {
    if constexpr (requires { L::name(); })
        return std::string(L::name());
    else
        return std::to_string(index);
}

/// Fails the build, naming I and both shapes in its template arguments, when layer I's output
/// cannot be layer I + 1's input.
template <std::size_t I, class OutShape, class InShape>
constexpr bool chain_link_fits() {
    static_assert(OutShape::rank == InShape::rank,
                  "ftune::layers::chain: layer I + 1 takes a tensor of another rank than layer I "
                  "returns (I, layer I's output shape and layer I + 1's input shape are the "
                  "template arguments of chain_link_fits above). Put a layer between them that "
                  "changes the rank, or compose them by hand.");
    if constexpr (OutShape::rank == InShape::rank)
        static_assert(ftune::detail::static_extents_compatible(OutShape::static_extents,
                                                               InShape::static_extents),
                      "ftune::layers::chain: layer I returns a tensor whose compile-time sizes "
                      "differ from what layer I + 1 takes (I, layer I's output shape and layer "
                      "I + 1's input shape are the template arguments of chain_link_fits above). "
                      "Make the neighbours agree (linear<T, In, Out> followed by a layer of width "
                      "Out), or declare the size ftune::dynamic to check it at run time.");
    return true;
}

/// Stands for the input gradient of a layer whose input has none (token ids).
struct no_input_gradient {};
/// L::d_input_view, or no_input_gradient when L's input is not differentiable.
template <class L>
struct d_input_of {
    using type = no_input_gradient;
};
template <class L>
requires requires {
    typename L::d_input_view;
}
struct d_input_of<L> {
    using type = typename L::d_input_view;
};
}  // namespace detail

/// The layers Ls applied in order: (input of the first) -> (output of the last).
template <class... Ls>
class chain {
    static_assert(sizeof...(Ls) > 0, "ftune::layers::chain needs at least one layer");
    static constexpr std::size_t N = sizeof...(Ls);
    template <std::size_t I>
    using layer_t = std::tuple_element_t<I, std::tuple<Ls...>>;
    template <std::size_t I>
    using out_shape = typename layer_t<I>::output_view::shape_type;
    template <std::size_t I>
    using in_shape = typename layer_t<I>::input_view::shape_type;

    static_assert((std::is_same_v<typename Ls::value_type, typename layer_t<0>::value_type> && ...),
                  "ftune::layers::chain: every layer of a chain computes in the same scalar type");
    template <std::size_t... I>
    static constexpr bool links_fit(std::index_sequence<I...>) {
        return (detail::chain_link_fits<I, out_shape<I>, in_shape<I + 1>>() && ...);
    }
    static_assert(links_fit(std::make_index_sequence<N - 1>{}));

  public:
    using value_type = typename layer_t<0>::value_type;        ///< scalar type
    using input_view = typename layer_t<0>::input_view;        ///< the first layer's input
    using output_view = typename layer_t<N - 1>::output_view;  ///< the last layer's output
    /// dx, accumulated into (detail::no_input_gradient when the first layer takes token ids)
    using d_input_view = typename detail::d_input_of<layer_t<0>>::type;

    std::tuple<Ls...> members;  ///< the layers, in order (also get<I>())

    /// A chain of default-constructed layers (their static sizes).
    chain() requires(std::default_initializable<Ls>&&...) = default;
    /// A chain of the given layers, moved in.
    explicit chain(Ls... ls) : members(std::move(ls)...) {}

    /// Layer I.
    template <std::size_t I>
    layer_t<I>& get() noexcept {
        return std::get<I>(members);
    }
    /// Layer I (const).
    template <std::size_t I>
    const layer_t<I>& get() const noexcept {
        return std::get<I>(members);
    }

    /// Runs every layer's forward on the previous one's output. An ftune::error from a member is
    /// rethrown with the member's name in its context.
    output_view forward(context& ctx, input_view x) { return forward_from<0>(ctx, x); }

    /// Runs the layers' backward passes in reverse; accumulates into parameter gradients and,
    /// unless dx is empty, into dx.
    void backward(context& ctx, output_view dy, d_input_view dx) requires(
        !std::is_same_v<d_input_view, detail::no_input_gradient>) {
        backward_from<N - 1>(ctx, dy, dx);
    }
    /// The same for a chain whose first layer takes token ids (no input gradient).
    void backward(context& ctx, output_view dy) requires(
        std::is_same_v<d_input_view, detail::no_input_gradient>) {
        backward_from<N - 1>(ctx, dy, {});
    }

    /// Calls prepare_inference() on the members that have one (linear::prepare_inference).
    void prepare_inference(precision p = precision::fp32) {
        std::apply(
            [p](auto&... l) {
                auto one = [p](auto& m) {
                    if constexpr (requires { m.prepare_inference(p); }) m.prepare_inference(p);
                };
                (one(l), ...);
            },
            members);
    }

    /// Sets every member's gradients to zero.
    void zero_grad() {
        std::apply([](auto&... l) { (l.zero_grad(), ...); }, members);
    }

    /// Visits the members' parameters in order, as "<prefix>.<index or name>.<parameter>".
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        visit_from<0>(prefix, f);
    }

  private:
    // calls fn(); an ftune::error gets "chain member <name>" prepended to its context
    template <std::size_t I, class Fn>
    static decltype(auto) guarded(Fn&& fn) {
        try {
            return fn();
        } catch (const error& e) {
            throw error(e.id(),
                        ftune::detail::cat("chain member ", detail::member_name<layer_t<I>>(I),
                                           e.context().empty() ? "" : ": ", e.context()),
                        e.message());
        }
    }

    template <std::size_t I, class In>
    output_view forward_from(context& ctx, const In& x) {
        const auto y =
            guarded<I>([&] { return get<I>().forward(ctx, typename layer_t<I>::input_view(x)); });
        std::get<I>(outputs_) = y;
        if constexpr (I + 1 == N)
            return y;
        else
            return forward_from<I + 1>(ctx, y);
    }

    template <std::size_t I>
    void backward_from(context& ctx, typename layer_t<I>::output_view dy, d_input_view dx) {
        if constexpr (I == 0) {
            if constexpr (std::is_same_v<d_input_view, detail::no_input_gradient>)
                guarded<0>([&] { get<0>().backward(ctx, dy); });
            else
                guarded<0>([&] { get<0>().backward(ctx, dy, dx); });
        } else {
            auto& g = std::get<I - 1>(grads_);  // d loss / d (layer I-1's output), written
            g.resize(std::get<I - 1>(outputs_).shape());
            guarded<I>([&] {
                backward_into(get<I>(), ctx, dy, typename layer_t<I>::d_input_view(g.view()));
            });
            backward_from<I - 1>(ctx, typename layer_t<I - 1>::output_view(g.view()), dx);
        }
    }

    template <std::size_t I, class F>
    void visit_from(std::string_view prefix, F& f) {
        get<I>().visit_parameters(join_name(prefix, detail::member_name<layer_t<I>>(I)), f);
        if constexpr (I + 1 < N) visit_from<I + 1>(prefix, f);
    }

    std::tuple<typename Ls::output_view...> outputs_;  // the last forward's member outputs
    std::tuple<buffer<value_type, typename Ls::output_view::shape_type>...>
        grads_;  // d loss / d output of members 0 .. N-2
};

/// A position-wise feed-forward network (C) -> linear -> Act -> linear -> (C), F hidden units;
/// parameters "<prefix>.0.*" and "<prefix>.2.*", as nn.Sequential.
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic,
          template <class, std::size_t> class Act = gelu>
using feed_forward = chain<linear<T, C, F>, Act<T, F>, linear<T, F, C>>;

/// A zero-initialized feed_forward of width c with f hidden units (defaults: the static sizes).
template <scalar T, std::size_t C = dynamic, std::size_t F = dynamic,
          template <class, std::size_t> class Act = gelu>
feed_forward<T, C, F, Act> make_feed_forward(std::size_t c = C, std::size_t f = F) {
    return feed_forward<T, C, F, Act>(linear<T, C, F>(c, f), Act<T, F>(), linear<T, F, C>(f, c));
}

}  // namespace layers
FTUNE_NAMESPACE_END
