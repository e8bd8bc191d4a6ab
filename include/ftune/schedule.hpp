// schedule: the learning rate as a function of the optimizer step, as Transformers' schedules
// (constant, linear, cosine, polynomial; linear warmup), and any_schedule, which holds the one a
// trainer runs.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>
#include <string>

#include "ftune/core/concepts.hpp"
#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN

namespace schedule {

/// The warmup length for a ratio of the total steps, as Hugging Face (ceil(ratio * total)).
inline std::size_t warmup_steps(double ratio, std::size_t total_steps) {
    if (!(ratio >= 0 && ratio <= 1))
        throw error(errc::invalid_argument, "warmup ratio",
                    ftune::detail::cat(ratio, " is outside [0, 1]"));
    return std::size_t(std::ceil(ratio * double(total_steps)));
}

namespace detail {
/// lr * step / warmup during the warmup (Hugging Face's schedules start at 0).
inline double warmup_factor(std::size_t step, std::size_t warmup) {
    return double(step) / double(std::max<std::size_t>(1, warmup));
}
}  // namespace detail

/// A constant rate after an optional linear warmup (get_constant_schedule_with_warmup).
struct constant {
    double lr;               ///< the rate
    std::size_t warmup = 0;  ///< warmup steps
    /// The rate of optimizer step `step` (0-based).
    double lr_at(std::size_t step) const {
        return step < warmup ? lr * detail::warmup_factor(step, warmup) : lr;
    }
};

/// Linear warmup to lr, then linear decay to 0 at total steps (get_linear_schedule_with_warmup,
/// Hugging Face's default).
struct linear {
    double lr;               ///< peak rate
    std::size_t warmup = 0;  ///< warmup steps
    std::size_t total = 1;   ///< total optimizer steps
    /// The rate of optimizer step `step` (0-based).
    double lr_at(std::size_t step) const {
        if (step < warmup) return lr * detail::warmup_factor(step, warmup);
        return lr * std::max(0.0, double(total - std::min(step, total)) /
                                      double(std::max<std::size_t>(1, total - warmup)));
    }
};

/// Linear warmup, then a cosine from lr to 0 over `cycles` half-waves (0.5: one half cosine)
/// (get_cosine_schedule_with_warmup).
struct cosine {
    double lr;               ///< peak rate
    std::size_t warmup = 0;  ///< warmup steps
    std::size_t total = 1;   ///< total optimizer steps
    double cycles = 0.5;     ///< number of cosine waves
    /// The rate of optimizer step `step` (0-based).
    double lr_at(std::size_t step) const {
        if (step < warmup) return lr * detail::warmup_factor(step, warmup);
        const double progress =
            double(step - warmup) / double(std::max<std::size_t>(1, total - warmup));
        return lr * std::max(0.0, 0.5 * (1 + std::cos(std::numbers::pi * cycles * 2 * progress)));
    }
};

/// Linear warmup, then a polynomial decay from lr to lr_end (get_polynomial_decay_schedule_with
/// _warmup; power 1 is linear to lr_end).
struct polynomial {
    double lr;               ///< peak rate
    std::size_t warmup = 0;  ///< warmup steps
    std::size_t total = 1;   ///< total optimizer steps
    double lr_end = 1e-7;    ///< the rate after total steps
    double power = 1;        ///< exponent of the decay
    /// The rate of optimizer step `step` (0-based).
    double lr_at(std::size_t step) const {
        if (step < warmup) return lr * detail::warmup_factor(step, warmup);
        if (step > total) return lr_end;
        const double left =
            1 - double(step - warmup) / double(std::max<std::size_t>(1, total - warmup));
        return (lr - lr_end) * std::pow(left, power) + lr_end;
    }
};

/// Any schedule (constant, linear, cosine, polynomial, or a type of one's own with lr_at), held
/// by value: what the trainer runs, chosen at run time (the CLI's --schedule).
class any_schedule {
  public:
    /// Holds s (satisfying the lr_schedule concept), called `name` in checkpoints.
    template <class S>
    requires lr_schedule<S> any_schedule(S s, std::string name)
        : f_([s = std::move(s)](std::size_t step) { return double(s.lr_at(step)); }),
          name_(std::move(name)) {}
    /// The rate of optimizer step `step` (0-based).
    double lr_at(std::size_t step) const { return f_(step); }
    /// Its name ("linear", ...).
    const std::string& name() const noexcept { return name_; }

  private:
    std::function<double(std::size_t)> f_;
    std::string name_;
};

/// The schedule called `name` (linear, cosine, constant, polynomial: Transformers' defaults) of
/// a run of `total` steps with `warmup` warmup steps to the peak rate lr; throws for others.
inline any_schedule make(const std::string& name, double lr, std::size_t warmup,
                         std::size_t total) {
    if (name == "linear") return {linear{lr, warmup, total}, name};
    if (name == "cosine") return {cosine{lr, warmup, total}, name};
    if (name == "constant") return {constant{lr, warmup}, name};
    if (name == "polynomial") return {polynomial{lr, warmup, total}, name};
    throw error(errc::invalid_argument, "schedule " + name,
                "expected linear, cosine, constant or polynomial");
}

}  // namespace schedule

FTUNE_NAMESPACE_END
