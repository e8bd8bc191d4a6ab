// Trainable parameters: a value, its gradient, flags for training and weight decay, and a name.
#pragma once

#include <array>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/core/tensor.hpp"

FTUNE_NAMESPACE_BEGIN

/// A type-erased reference to one parameter, as optimizers and visitors see it.
template <class T>
struct parameter_ref {
    std::string name;    ///< full hierarchical name ("encoder.layer.3.attention.self.query.weight")
    std::span<T> value;  ///< the values
    std::span<T> grad;   ///< the gradients (same size; empty when frozen and freed)
    bool trainable = true;                 ///< false when frozen
    bool decay = true;                     ///< false when weight decay does not apply
    std::array<std::size_t, 4> extents{};  ///< the shape (first `rank` entries), for loaders
    std::size_t rank = 0;                  ///< number of axes
    bool* owner_trainable = nullptr;       ///< the owning parameter's flag (nullptr: none)
    void* owner = nullptr;                 ///< the owning parameter (inference_only)
    void (*inference_only_fn)(void*, T*) = nullptr;  ///< the owner's parameter::inference_only

    /// Freezes (false) or unfreezes (true) the parameter itself, through a visit; references
    /// collected before keep the old flag: collect them again.
    void set_trainable(bool on) noexcept {
        trainable = on;
        if (owner_trainable) *owner_trainable = on;
    }

    /// Calls the owning parameter's inference_only (see there); throws when there is no owner.
    void inference_only(T* shared_value = nullptr) const {
        if (!inference_only_fn)
            throw error(errc::invalid_argument, name, "this parameter reference has no owner");
        inference_only_fn(owner, shared_value);
    }
    /// The shape as "[768, 3072]".
    std::string shape_string() const { return detail::format_extents({extents.data(), rank}); }
};

/// A reference to one parameter whose memory is a device's, not the host's (device::cuda): its
/// value and gradient are views on D, which only ops and device copies read. Visitors that
/// take a parameter_ref<T> (host spans: optimizers, loaders, checkpoints) do not compile for
/// such a model, instead of reading device memory on the host; generic visitors (`auto p`) see
/// this type (cuda::upload_parameters copies a host model's values into a device twin).
template <class T, class D>
struct device_parameter_ref {
    std::string name;                      ///< full hierarchical name, as parameter_ref's
    view<T, shape<dynamic>, D> value;      ///< the values, in D's memory
    view<T, shape<dynamic>, D> grad;       ///< the gradients (empty when frozen and freed)
    bool trainable = true;                 ///< false when frozen
    bool decay = true;                     ///< false when weight decay does not apply
    std::array<std::size_t, 4> extents{};  ///< the shape (first `rank` entries)
    std::size_t rank = 0;                  ///< number of axes
    bool* owner_trainable = nullptr;       ///< the owning parameter's flag (nullptr: none)

    /// Freezes (false) or unfreezes (true) the parameter itself, as parameter_ref's.
    void set_trainable(bool on) noexcept {
        trainable = on;
        if (owner_trainable) *owner_trainable = on;
    }
    /// The shape as "[768, 3072]".
    std::string shape_string() const { return detail::format_extents({extents.data(), rank}); }
};

/// What a visit shows of a parameter on device D: parameter_ref<T> on the host,
/// device_parameter_ref<T, D> elsewhere.
template <class T, class D>
using parameter_ref_on = std::conditional_t<D::host, parameter_ref<T>, device_parameter_ref<T, D>>;

/// Base of a parameter visitor that leaves the values unchanged (it reads them, or only moves
/// where they are stored): visits with it keep the packed weights of prepare_inference(), which
/// other visits drop.
struct keeps_values {};
/// Whether the visitor type F derives from keeps_values.
template <class F>
inline constexpr bool keeps_values_v = std::is_base_of_v<keeps_values, std::remove_cvref_t<F>>;

/// Joins a module path and a local name with a dot ("encoder.layer.3" + "weight"); an empty name
/// is the path itself.
inline std::string join_name(std::string_view prefix, std::string_view name) {
    if (prefix.empty()) return std::string(name);
    if (name.empty()) return std::string(prefix);
    std::string s(prefix);
    s += '.';
    s += name;
    return s;
}

/// Whether module `name` is `leaf` or ends with "." + leaf ("encoder.layer.0.attention.self.query"
/// ends with "self.query" and "query", not "uery"): PEFT's rule for module names.
inline bool module_ends_with(std::string_view name, std::string_view leaf) noexcept {
    return name == leaf || (name.size() > leaf.size() && name.ends_with(leaf) &&
                            name[name.size() - leaf.size() - 1] == '.');
}

/// Where one of ftune's modules sits among a checkpoint's modules, when a family names or fuses
/// them otherwise (GPT-2's q_proj is part 0 of the 3 that "c_attn" stacks along its outputs): the
/// checkpoint's module name and which of `parts` equal slices of its outputs the module is.
struct module_slot {
    std::string name;       ///< the checkpoint's module ("transformer.h.0.attn.c_attn")
    std::size_t part = 0;   ///< which slice of the outputs
    std::size_t parts = 1;  ///< how many modules share it (1: the module is all of it)
};

/// A model parameter: value and gradient of one shape, plus the flags optimizers read.
/// Gradients accumulate (`+=`) in backward and are cleared by `zero_grad()`.
template <class T, class Shape, device_tag Device = device::cpu>
struct parameter {
    using value_type = T;      ///< scalar type
    using shape_type = Shape;  ///< the shape type

    std::string name;                ///< local name ("weight", "bias"); the owner adds its path
    buffer<T, Shape, Device> value;  ///< the parameter's value
    buffer<T, Shape, Device> grad;   ///< d loss / d value, accumulated by backward passes
    bool trainable = true;           ///< false: frozen (no gradient use, no optimizer state)
    bool decay = true;               ///< false: AdamW/SGD apply no weight decay (biases, LayerNorm)

    /// An empty parameter (for all-static shapes: allocated, zero).
    parameter() = default;
    /// A zero-initialized parameter named `n` of shape `s`.
    parameter(std::string n, const Shape& s, bool decay_ = true)
        : name(std::move(n)), value(s), grad(s), decay(decay_) {}

    /// Number of scalars.
    std::size_t size() const noexcept { return value.size(); }
    /// Sets the gradient to zero. A frozen parameter's gradient storage is freed instead (a
    /// frozen base, LoRA's, costs no gradient memory); it comes back, zero, once it trains again.
    void zero_grad() {
        if (!trainable) {
            grad.release();
            return;
        }
        gradient().fill(T(0));
    }
    /// The gradient, its storage allocated (zero) when zero_grad() had freed it: what a
    /// backward pass accumulates into.
    buffer<T, Shape, Device>& gradient() {
        if (!grad.data() && value.size()) grad.resize(value.shape());
        return grad;
    }
    /// For a model that only runs inference: frees the gradient and freezes the parameter;
    /// with `shared_value`, the value becomes an alias of another model's (size() elements that
    /// must outlive this parameter and its copies, which then only read it). Nothing may use the
    /// gradient, or write an aliased value, afterwards (serve::text_classifier's replicas).
    void inference_only(T* shared_value = nullptr) noexcept {
        if (shared_value) value.borrow(shared_value);
        grad.release();
        trainable = false;
    }
    /// This parameter as visitors see it, named "<prefix>.<name>" (on a device whose memory is
    /// not the host's: a device_parameter_ref).
    parameter_ref_on<T, Device> ref(std::string_view prefix) {
        static_assert(Shape::rank <= 4, "ftune: parameters have at most 4 axes");
        if (trainable) gradient();  // a parameter that trains again gets its storage back
        if constexpr (!Device::host) {
            device_parameter_ref<T, Device> r{join_name(prefix, name),
                                              {value.data(), value.size()},
                                              {grad.data(), grad.data() ? grad.size() : 0},
                                              trainable,
                                              decay};
            r.rank = Shape::rank;
            r.owner_trainable = &trainable;
            for (std::size_t i = 0; i < Shape::rank; ++i) r.extents[i] = value.extent(i);
            return r;
        } else {
            return host_ref(prefix);
        }
    }

  private:
    // ref() on the host: spans over the value and gradient
    parameter_ref<T> host_ref(std::string_view prefix) {
        // a frozen parameter whose gradient storage zero_grad() freed shows an empty gradient
        parameter_ref<T> r{join_name(prefix, name), value.span(),
                           grad.data() ? grad.span() : std::span<T>(), trainable, decay};
        r.rank = Shape::rank;
        r.owner_trainable = &trainable;
        r.owner = this;
        r.inference_only_fn = [](void* p, T* v) { static_cast<parameter*>(p)->inference_only(v); };
        for (std::size_t i = 0; i < Shape::rank; ++i) r.extents[i] = value.extent(i);
        return r;
    }
};

/// What copy_parameters copies: the host model's values into its twin, or the twin's values or
/// gradients back.
enum class parameter_copy { values_to_twin, values_to_host, gradients_to_host };

namespace detail {
/// The device of a parameter reference: D for device_parameter_ref<T, D>, the CPU otherwise.
template <class P>
struct ref_device {
    using type = device::cpu;  ///< host memory
};
/// A device parameter reference's device.
template <class T, class D>
struct ref_device<device_parameter_ref<T, D>> {
    using type = D;  ///< D's memory
};
/// A visitor that passes each reference to f and leaves the values alone (keeps_values: the
/// visited model's prepared weights stay).
template <class F>
struct reading_visit : keeps_values {
    F* f;  ///< what each reference goes to
    /// f(p).
    template <class P>
    void operator()(P&& p) const {
        (*f)(std::forward<P>(p));
    }
};
}  // namespace detail

/// Copies between model `host` (host memory) and its twin (the same architecture on any device:
/// Model::on_device<D>), each parameter matched in visit order by name and size (else
/// shape_mismatch naming `what`): the host's values into the twin, or the twin's values or
/// gradients into the host (a gradient the twin freed, a frozen parameter's, leaves the host's
/// alone). The side whose values change drops its prepared inference weights; the other keeps
/// them.
template <class Host, class Twin>
void copy_parameters(Host& host, Twin& twin, parameter_copy what_copies, const char* what) {
    using T = typename Host::value_type;
    const bool to_twin = what_copies == parameter_copy::values_to_twin;
    std::vector<parameter_ref<T>> refs;
    auto keep = [&](parameter_ref<T> p) { refs.push_back(std::move(p)); };
    if (what_copies == parameter_copy::values_to_host)
        host.visit_parameters("", keep);  // the host's values change
    else
        host.visit_parameters("", detail::reading_visit<decltype(keep)>{{}, &keep});
    std::size_t i = 0;
    auto each = [&](auto p) {
        using D = typename detail::ref_device<decltype(p)>::type;
        if (i >= refs.size())
            throw error(errc::shape_mismatch, what,
                        ftune::detail::cat("the twin has more than the host model's ", refs.size(),
                                           " parameters: the two models must have the same "
                                           "architecture and configuration"));
        const parameter_ref<T>& h = refs[i];
        if (p.name != h.name || p.value.size() != h.value.size())
            throw error(
                errc::shape_mismatch, what,
                ftune::detail::cat("parameter ", i, " is \"", p.name, "\" ", p.shape_string(),
                                   " on the twin but \"", h.name, "\" ", h.shape_string(),
                                   " on the host: the two models must have the same "
                                   "architecture and configuration"));
        if (to_twin)
            host_to_device<D>(p.value.data(), h.value.data(), h.value.size());
        else if (what_copies == parameter_copy::values_to_host)
            device_to_host<D>(h.value.data(), p.value.data(), h.value.size());
        else if (p.grad.size() && h.grad.size() == p.grad.size())
            device_to_host<D>(h.grad.data(), p.grad.data(), h.grad.size());
        ++i;
    };
    if (to_twin)
        twin.visit_parameters("", each);  // the twin's values change
    else
        twin.visit_parameters("", detail::reading_visit<decltype(each)>{{}, &each});
    if (i != refs.size())
        throw error(
            errc::shape_mismatch, what,
            ftune::detail::cat("the twin has ", i, " parameters, the host model ", refs.size(),
                               ": the two models must have the same "
                               "architecture and configuration"));
}

FTUNE_NAMESPACE_END
