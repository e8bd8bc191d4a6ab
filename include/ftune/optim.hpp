// Optimizers (AdamW, SGD) and gradient clipping, with PyTorch's and
// Hugging Face's definitions (step for step equal to torch.optim on tests/reference/optim_parity.py
// fixtures).
//
//   optim::adamw / optim::sgd   step(params) updates every trainable parameter from its gradient;
//                               frozen parameters are skipped and own no state
//   optim::param_group          per-name-prefix learning-rate scale and weight decay
//   (schedule.hpp, included: schedule::constant / linear / cosine / polynomial, warmup in steps)
//   optim::clip_grad_norm       the global L2 norm of the gradients, scaled down to max_norm
//   optim::clip_scale           that norm and the factor, for step(params, scale) to apply as it
//                               reads each gradient (one pass over the gradients fewer)
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <numbers>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ftune/core/concepts.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/ops.hpp"
#include "ftune/schedule.hpp"  // the learning-rate schedules optimizers run with

FTUNE_NAMESPACE_BEGIN
namespace optim {

/// Settings for the parameters whose name starts with `prefix` (the first matching group wins):
/// e.g. {.prefix = "classifier.", .lr_scale = 10} or {.prefix = "bert.embeddings.", .lr_scale =
/// 0.1}. Parameters whose decay flag is off (biases, LayerNorm weights) never decay.
struct param_group {
    std::string prefix;                  ///< name prefix ("" matches every parameter)
    double lr_scale = 1;                 ///< multiplies the learning rate
    std::optional<double> weight_decay;  ///< replaces the optimizer's weight decay
};

/// Every parameter of a model (visit_parameters with prefix ""), frozen ones included.
template <class Model>
std::vector<parameter_ref<typename Model::value_type>> parameters_of(Model& model) {
    std::vector<parameter_ref<typename Model::value_type>> v;
    model.visit_parameters(
        "", [&](parameter_ref<typename Model::value_type> p) { v.push_back(std::move(p)); });
    return v;
}

namespace detail {
/// b = n zeros (storage grows only).
template <class T, class D>
void zeroed(buffer<T, shape<dynamic>, D>& b, std::size_t n) {
    b.resize(shape<dynamic>(n));
    b.fill(T(0));
}

/// The group of a parameter name (nullptr: none).
inline const param_group* group_of(const std::vector<param_group>& groups,
                                   const std::string& name) {
    for (const auto& g : groups)
        if (name.starts_with(g.prefix)) return &g;
    return nullptr;
}
/// Checks that step() sees the same parameters in the same order every time.
template <class Ref>
void check_same_params(const std::vector<std::string>& names, std::size_t sizes_count,
                       std::span<const Ref> params, const char* who) {
    if (names.size() != params.size() || sizes_count != params.size())
        throw error(
            errc::invalid_argument, who,
            ftune::detail::cat("step() was given ", params.size(), " parameters but earlier ",
                               names.size(), "; pass the same parameters every step"));
    for (std::size_t i = 0; i < params.size(); ++i)
        if (names[i] != params[i].name)
            throw error(errc::invalid_argument, who,
                        "parameter " + std::to_string(i) + " was \"" + names[i] +
                            "\" and is now \"" + params[i].name +
                            "\"; pass the same parameters every step");
}
/// An optimizer state buffer as visit_state shows it: a span on the host, a view on a device.
template <class T, class D>
auto state_of(buffer<T, shape<dynamic>, D>& b) {
    if constexpr (D::host)
        return b.span();
    else
        return b.view();
}

/// p's values (or, gradient: its gradient) as a rank-1 view on D: parameter_ref's host spans,
/// device_parameter_ref's views as they are.
template <class T, class D, class Ref>
view<T, shape<dynamic>, D> values_of(const Ref& p, bool gradient = false) {
    if constexpr (D::host) {
        const auto s = gradient ? p.grad : p.value;
        return {s.data(), s.size()};
    } else {
        return gradient ? p.grad : p.value;
    }
}

/// Multiplies every trainable gradient of params by scale (nothing when it is 1).
template <class T, class D, class Ref>
void scale_gradients(std::span<const Ref> params, double scale) {
    if (scale != 1)
        for (const auto& p : params)
            if (p.trainable) ops::scale(values_of<T, D>(p, true), T(scale));
}
}  // namespace detail

/// Options of adamw (torch.optim.AdamW's, bias correction always on).
struct adamw_options {
    double lr = 5e-5;           ///< base learning rate (a schedule sets the current one)
    double beta1 = 0.9;         ///< first-moment decay
    double beta2 = 0.999;       ///< second-moment decay
    double eps = 1e-8;          ///< denominator term
    double weight_decay = 0.0;  ///< decoupled decay λ: θ ← θ − ηλθ (Hugging Face's default 0)
    std::vector<param_group> groups{};  ///< per-prefix learning-rate scale and decay
};

/// AdamW with decoupled weight decay, as torch.optim.AdamW: θ ← θ(1 − ηλ), then the Adam step
/// with bias correction. Moments are allocated at the first step for trainable parameters only,
/// on the parameters' device D (device::cuda: a device model's parameters, device_parameter_ref).
template <scalar T, device_tag D = device::cpu>
class adamw {
  public:
    using value_type = T;                       ///< scalar type
    using param_type = parameter_ref_on<T, D>;  ///< what step() updates
    /// The same optimizer for parameters on device D2.
    template <device_tag D2>
    using on_device = adamw<T, D2>;
    adamw_options options;  ///< hyper-parameters; options.lr is the rate of the next step

    /// An optimizer with the given options.
    explicit adamw(adamw_options o = {}) : options(std::move(o)) {}

    /// Sets the learning rate of the next steps (called by a schedule each step).
    void set_lr(double lr) noexcept { options.lr = lr; }
    /// Number of steps taken.
    std::size_t step_count() const noexcept { return steps_; }

    /// Updates every trainable parameter of params from its gradient times grad_scale
    /// (clip_scale's factor: the update clip_grad_norm and step(params) give; gradients
    /// unchanged).
    void step(std::span<const param_type> params, double grad_scale = 1) {
        if (names_.empty() && steps_ == 0) init_state(params);
        detail::check_same_params(names_, m_.size(), params, "adamw::step");
        ++steps_;
        for (std::size_t i = 0; i < params.size(); ++i) {
            const auto& p = params[i];
            if (!p.trainable) continue;
            if (m_[i].size() != p.value.size())  // unfrozen after the first step
                detail::zeroed(m_[i], p.value.size()), detail::zeroed(v_[i], p.value.size());
            const param_group* g = detail::group_of(options.groups, p.name);
            adamw_params h{.lr = options.lr * (g ? g->lr_scale : 1.0),
                           .beta1 = options.beta1,
                           .beta2 = options.beta2,
                           .eps = options.eps,
                           .weight_decay = p.decay ? (g && g->weight_decay ? *g->weight_decay
                                                                           : options.weight_decay)
                                                   : 0.0,
                           .step = steps_,
                           .grad_scale = grad_scale};
            ops::adamw_update(detail::values_of<T, D>(p), detail::values_of<T, D>(p, true),
                              m_[i].view(), v_[i].view(), h);
        }
    }

    /// Allocates the (zero) state of params as the first step would, so that visit_state can
    /// restore saved moments before any step.
    void init_state(std::span<const param_type> params) {
        names_.clear(), m_.clear(), v_.clear();
        for (const auto& p : params) {
            names_.push_back(p.name);
            m_.emplace_back(p.trainable ? p.value.size() : 0);  // zero-filled
            v_.emplace_back(p.trainable ? p.value.size() : 0);
        }
    }

    /// Visits the state for saving or restoring: f(name, span) for every parameter's first and
    /// second moments ("<param>.exp_avg", "<param>.exp_avg_sq"; on a device: f(name, view));
    /// the step count is step_count().
    template <class F>
    void visit_state(F&& f) {
        for (std::size_t i = 0; i < names_.size(); ++i) {
            f(names_[i] + ".exp_avg", detail::state_of(m_[i]));
            f(names_[i] + ".exp_avg_sq", detail::state_of(v_[i]));
        }
    }
    /// Restores the step count (with visit_state for the moments).
    void set_step_count(std::size_t n) noexcept { steps_ = n; }

  private:
    std::size_t steps_ = 0;
    std::vector<std::string> names_;                   // parameter names, in step() order
    std::vector<buffer<T, shape<dynamic>, D>> m_, v_;  // first and second moments (empty: frozen)
};

/// Options of sgd (torch.optim.SGD's).
struct sgd_options {
    double lr = 1e-2;                   ///< base learning rate
    double momentum = 0;                ///< momentum factor (0: plain SGD)
    double dampening = 0;               ///< dampening of the momentum
    double weight_decay = 0;            ///< L2 penalty added to the gradient (coupled, as PyTorch)
    bool nesterov = false;              ///< Nesterov momentum (needs momentum > 0, dampening 0)
    std::vector<param_group> groups{};  ///< per-prefix learning-rate scale and decay
};

/// SGD with momentum / Nesterov, as torch.optim.SGD (state on the parameters' device D, as
/// adamw's).
template <scalar T, device_tag D = device::cpu>
class sgd {
  public:
    using value_type = T;                       ///< scalar type
    using param_type = parameter_ref_on<T, D>;  ///< what step() updates
    /// The same optimizer for parameters on device D2.
    template <device_tag D2>
    using on_device = sgd<T, D2>;
    sgd_options options;  ///< hyper-parameters; options.lr is the rate of the next step

    /// An optimizer with the given options (Nesterov without momentum is an error).
    explicit sgd(sgd_options o = {}) : options(std::move(o)) {
        if (options.nesterov && (options.momentum <= 0 || options.dampening != 0))
            throw error(errc::invalid_argument, "sgd",
                        "Nesterov momentum needs momentum > 0 and dampening 0 (as PyTorch)");
    }

    /// Sets the learning rate of the next steps.
    void set_lr(double lr) noexcept { options.lr = lr; }
    /// Number of steps taken.
    std::size_t step_count() const noexcept { return steps_; }

    /// Updates every trainable parameter of params from its gradient times grad_scale
    /// (clip_scale's factor; gradients unchanged).
    void step(std::span<const param_type> params, double grad_scale = 1) {
        if (names_.empty() && steps_ == 0)
            for (const auto& p : params) {
                names_.push_back(p.name);
                buf_.emplace_back();
            }
        detail::check_same_params(names_, buf_.size(), params, "sgd::step");
        ++steps_;
        for (std::size_t i = 0; i < params.size(); ++i) {
            const auto& p = params[i];
            if (!p.trainable) continue;
            const bool first = options.momentum != 0 && buf_[i].size() != p.value.size();
            if (first) detail::zeroed(buf_[i], p.value.size());
            const param_group* g = detail::group_of(options.groups, p.name);
            sgd_params h{.lr = options.lr * (g ? g->lr_scale : 1.0),
                         .momentum = options.momentum,
                         .dampening = options.dampening,
                         .weight_decay = p.decay ? (g && g->weight_decay ? *g->weight_decay
                                                                         : options.weight_decay)
                                                 : 0.0,
                         .nesterov = options.nesterov,
                         .first_step = first,
                         .grad_scale = grad_scale};
            const bool momentum = options.momentum != 0;
            ops::sgd_update(detail::values_of<T, D>(p), detail::values_of<T, D>(p, true),
                            momentum ? buf_[i].view() : view<T, shape<dynamic>, D>(), h);
        }
    }

    /// Allocates the state of params as the first step would (zero momentum buffers when
    /// momentum is on), so that visit_state can restore saved buffers before any step.
    void init_state(std::span<const param_type> params) {
        names_.clear(), buf_.clear();
        for (const auto& p : params) {
            names_.push_back(p.name);
            buf_.emplace_back(p.trainable && options.momentum != 0 ? p.value.size() : 0);
        }
    }

    /// Visits the momentum buffers ("<param>.momentum_buffer"; empty before the first step).
    template <class F>
    void visit_state(F&& f) {
        for (std::size_t i = 0; i < names_.size(); ++i)
            f(names_[i] + ".momentum_buffer", detail::state_of(buf_[i]));
    }
    /// Restores the step count.
    void set_step_count(std::size_t n) noexcept { steps_ = n; }

  private:
    std::size_t steps_ = 0;
    std::vector<std::string> names_;  // parameter names, in step() order
    std::vector<buffer<T, shape<dynamic>, D>>
        buf_;  // momentum buffers (empty: none yet, or frozen)
};

/// Any optimizer (adamw, sgd, or a type of one's own with the same members: step, set_lr,
/// step_count, set_step_count, init_state, visit_state), held by value behind one interface: what
/// the trainer runs, chosen at run time (the CLI's --optimizer). D is the parameters' device.
template <scalar T, device_tag D = device::cpu>
class any_optimizer {
  public:
    using param_type = parameter_ref_on<T, D>;  ///< what step() updates
    /// A state tensor as visit_state shows it: a span on the host, a view on a device.
    using state_view = decltype(detail::state_of(std::declval<buffer<T, shape<dynamic>, D>&>()));

    /// Holds o (satisfying the optimizer concept), called `name` in checkpoints and messages.
    template <class O>
    requires optimizer<O, T, D> any_optimizer(O o, std::string name)
        : p_(std::make_unique<impl<O>>(std::move(o))), name_(std::move(name)) {}

    /// Updates every trainable parameter from its gradient times grad_scale (clip_scale's
    /// factor): applied as the optimizer reads each gradient where its step takes a scale (adamw,
    /// sgd), else by scaling the gradients first.
    void step(std::span<const param_type> params, double grad_scale = 1) {
        p_->step(params, grad_scale);
    }
    /// Sets the learning rate of the next steps.
    void set_lr(double lr) { p_->set_lr(lr); }
    /// Number of steps taken.
    std::size_t step_count() const { return p_->step_count(); }
    /// Restores the step count.
    void set_step_count(std::size_t n) { p_->set_step_count(n); }
    /// Allocates the state of params as the first step would.
    void init_state(std::span<const param_type> params) { p_->init_state(params); }
    /// Visits the state: f(name, span) per tensor (on a device: f(name, view)).
    void visit_state(const std::function<void(const std::string&, state_view)>& f) {
        p_->visit_state(f);
    }
    /// Its name ("adamw", "sgd").
    const std::string& name() const noexcept { return name_; }
    /// The same optimizer (type, options and current rate; no state) for a model's twin on
    /// device D2 (device::reference; device::cuda in a CUDA build): what the trainer runs there.
    /// Throws for an optimizer type without a device form (a member alias on_device<D>, as
    /// adamw's and sgd's).
    template <device_tag D2>
    any_optimizer<T, D2> on_device() const requires(std::is_same_v<D, device::cpu>) {
        if constexpr (std::is_same_v<D2, device::reference>) return p_->on_reference(name_);
#if FTUNE_WITH_CUDA
        else if constexpr (std::is_same_v<D2, device::cuda>)
            return p_->on_cuda(name_);
#endif
        else
            static_assert(std::is_same_v<D2, device::reference>,
                          "ftune: any_optimizer::on_device knows device::reference and, in CUDA "
                          "builds, device::cuda");
    }

  private:
    struct base {
        virtual ~base() = default;
        virtual void step(std::span<const param_type>, double) = 0;
        virtual void set_lr(double) = 0;
        virtual std::size_t step_count() const = 0;
        virtual void set_step_count(std::size_t) = 0;
        virtual void init_state(std::span<const param_type>) = 0;
        virtual void visit_state(const std::function<void(const std::string&, state_view)>&) = 0;
        virtual any_optimizer<T, device::reference> on_reference(const std::string& name) const = 0;
#if FTUNE_WITH_CUDA
        virtual any_optimizer<T, device::cuda> on_cuda(const std::string& name) const = 0;
#endif
    };
    template <class O>
    struct impl final : base {
        O o;
        explicit impl(O x) : o(std::move(x)) {}
        void step(std::span<const param_type> p, double scale) override {
            if constexpr (requires { o.step(p, scale); }) {
                o.step(p, scale);
            } else {
                detail::scale_gradients<T, D>(p, scale);
                o.step(p);
            }
        }
        void set_lr(double lr) override { o.set_lr(lr); }
        std::size_t step_count() const override { return o.step_count(); }
        void set_step_count(std::size_t n) override { o.set_step_count(n); }
        void init_state(std::span<const param_type> p) override { o.init_state(p); }
        void visit_state(const std::function<void(const std::string&, state_view)>& f) override {
            o.visit_state(f);
        }
        any_optimizer<T, device::reference> on_reference(const std::string& name) const override {
            return twin<device::reference>(name);
        }
#if FTUNE_WITH_CUDA
        any_optimizer<T, device::cuda> on_cuda(const std::string& name) const override {
            return twin<device::cuda>(name);
        }
#endif
        // o's type on D2 with o's options (no state)
        template <class D2>
        any_optimizer<T, D2> twin(const std::string& name) const {
            if constexpr (std::is_same_v<D, device::cpu> && has_device_form<O, D2>) {
                return {on_device_t<O, D2>(o.options), name};
            } else {
                throw error(errc::unsupported, "optimizer " + name,
                            ftune::detail::cat("this optimizer has no form on device::", D2::name,
                                               " (a member alias on_device<D>, as optim::adamw's "
                                               "and optim::sgd's); use adamw or sgd there, or "
                                               "train on the CPU"));
            }
        }
    };
    std::unique_ptr<base> p_;
    std::string name_;
};

/// The optimizer called `name` ("adamw": decoupled weight decay; "sgd": with momentum, weight
/// decay as an L2 penalty, as torch.optim.SGD), for a base rate lr; throws for other names.
template <scalar T>
any_optimizer<T> make_optimizer(const std::string& name, double lr, double weight_decay,
                                double momentum = 0) {
    if (name == "adamw") return {adamw<T>({.lr = lr, .weight_decay = weight_decay}), name};
    if (name == "sgd")
        return {sgd<T>({.lr = lr, .momentum = momentum, .weight_decay = weight_decay}), name};
    throw error(errc::invalid_argument, "optimizer " + name, "expected adamw or sgd");
}

/// The global L2 norm of the trainable gradients and the factor clip_grad_norm scales them by.
struct grad_clip {
    double norm;   ///< the norm (before clipping)
    double scale;  ///< max_norm / (norm + 1e-6), or 1 where that is not below 1
};

namespace detail {
/// clip_scale on device D.
template <class T, class D, class Ref>
grad_clip clip_scale(std::span<const Ref> params, double max_norm) {
    double sq = 0;  // Σ ||g||² tensor by tensor, as global_l2_norm (no tensor allocation)
    using Bk = ops::backend_of<D>;
    if constexpr (requires(const T* const* xs, const std::size_t* ns) {
                      Bk::sum_squares_list(xs, ns, std::size_t(0));
                  }) {
        // a GPU: the same sums, one wait for all tensors instead of one each
        std::vector<const T*> xs;
        std::vector<std::size_t> ns;
        for (const auto& p : params)
            if (p.trainable) {
                const auto g = values_of<T, D>(p, true);
                xs.push_back(g.data()), ns.push_back(g.shape().size());
            }
        sq = Bk::sum_squares_list(xs.data(), ns.data(), xs.size());
    } else {
        for (const auto& p : params)
            if (p.trainable) sq += ops::sum_squares(values_of<T, D>(p, true));
    }
    const double norm = std::sqrt(sq);
    if (!std::isfinite(norm))
        throw error(errc::invalid_argument, "clip_grad_norm",
                    "the gradient norm is not finite (NaN or inf: a diverging loss? lower the "
                    "learning rate)");
    const double coef = max_norm / (norm + 1e-6);
    return {norm, coef < 1 ? coef : 1.0};
}

/// clip_grad_norm on device D.
template <class T, class D, class Ref>
double clip_grad_norm(std::span<const Ref> params, double max_norm) {
    const grad_clip c = clip_scale<T, D>(params, max_norm);
    scale_gradients<T, D>(params, c.scale);
    return c.norm;
}
}  // namespace detail

/// clip_grad_norm's norm and factor without scaling the gradients: an optimizer's
/// step(params, scale) multiplies each gradient by it as it reads it, the same update as
/// clip_grad_norm then step(params), one pass over every gradient fewer. A non-finite norm is an
/// error naming it.
template <scalar T>
grad_clip clip_scale(std::span<const parameter_ref<T>> params, double max_norm) {
    return detail::clip_scale<T, device::cpu>(params, max_norm);
}
/// clip_scale of a device model's parameters.
template <scalar T, class D>
grad_clip clip_scale(std::span<const device_parameter_ref<T, D>> params, double max_norm) {
    return detail::clip_scale<T, D>(params, max_norm);
}

/// Scales every trainable gradient so that their global L2 norm is at most max_norm, as
/// torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6), capped at 1). Returns
/// the norm before clipping. A non-finite norm is an error naming it (the step would be garbage).
/// On a device model (device_parameter_ref) the sums run on the device.
template <scalar T>
double clip_grad_norm(std::span<const parameter_ref<T>> params, double max_norm) {
    return detail::clip_grad_norm<T, device::cpu>(params, max_norm);
}
/// clip_grad_norm of a device model's parameters.
template <scalar T, class D>
double clip_grad_norm(std::span<const device_parameter_ref<T, D>> params, double max_norm) {
    return detail::clip_grad_norm<T, D>(params, max_norm);
}

}  // namespace optim

FTUNE_NAMESPACE_END
