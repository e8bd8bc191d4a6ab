// The run context passed to every forward/backward call: mode, random numbers, and the scratch
// memory of backward passes.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/core/types.hpp"

FTUNE_NAMESPACE_BEGIN

/// Training (dropout active) or evaluation (dropout off, deterministic).
enum class mode { train, eval };

/// Scratch memory owned by a run: one object of each type a layer asks for (get<S>()), shared by
/// every layer that asks for that type in the run (an encoder's 12 blocks use one set of backward
/// gradients, not 12) and kept between calls, so the steady state allocates nothing. Only one
/// call uses it at a time (a run's backward calls follow each other). A copy starts empty: two
/// contexts never share scratch, so runs on different threads each have their own.
class workspace {
  public:
    /// An empty workspace.
    workspace() = default;
    /// An empty workspace (scratch is never shared between contexts).
    workspace(const workspace&) {}
    /// Keeps this workspace's own scratch.
    workspace& operator=(const workspace&) { return *this; }
    /// Moves the scratch.
    workspace(workspace&&) noexcept = default;
    /// Moves the scratch.
    workspace& operator=(workspace&&) noexcept = default;

    /// The run's object of type S (value-initialized at the first call).
    template <class S>
    S& get() {
        for (auto& e : items_)
            if (e.type == &tag<S>) return *static_cast<S*>(e.object.get());
        items_.push_back({&tag<S>, {new S(), [](void* p) { delete static_cast<S*>(p); }}});
        return *static_cast<S*>(items_.back().object.get());
    }
    /// Number of scratch objects held.
    std::size_t size() const noexcept { return items_.size(); }

  private:
    template <class S>
    static constexpr char tag = 0;  // one address per type
    struct item {
        const char* type;                               // &tag<S>
        std::unique_ptr<void, void (*)(void*)> object;  // the S
    };
    std::vector<item> items_;
};

/// What a layer needs to know about the current run besides its inputs.
struct context {
    ftune::mode mode = ftune::mode::eval;  ///< train or eval
    generator rng{0};                      ///< source of dropout streams, seeded by the user
    ftune::workspace workspace{};          ///< scratch of backward passes (layers' get<S>())
    /// Training packs each frozen projection weight once, in the two layouts its products read
    /// (forward and d input), instead of at every call: a LoRA step about 8% faster, for twice
    /// the frozen weights' bytes. False: per-call packing, no extra memory (the same values).
    bool pack_frozen_weights = true;
    /// The number format of the matrix products of forwards and backwards that are not prepared
    /// for inference (prepare_inference() fixes its own): fp32, or bf16 operands with fp32 sums
    /// (mixed-precision training: weights, gradients and optimizer state stay fp32; each weight
    /// is rounded to bf16 once per forward, packed for both of its products).
    ftune::precision precision = ftune::precision::fp32;
    /// Dropout masks per example. 0: a dropout layer draws its whole tensor from one stream,
    /// ctx.rng.next(). n > 0: the tensor is n equal blocks, one per example (batch rows first),
    /// and block r draws from ctx.rng.next().derive(first_example + r), so an example gets the
    /// same mask wherever it sits: in a whole batch, in a slice of it, or on another process of
    /// a data-parallel run (the trainer sets both).
    std::size_t dropout_examples = 0;
    /// The key of the first example of the batch (dropout_examples).
    std::size_t first_example = 0;
    /// Called during backward with each trainable parameter's gradient (its first value) as
    /// soon as it is final for the batch, so that a data-parallel trainer sums it over the
    /// ranks while backward computes the rest; empty: nothing is called.
    std::function<void(const void* gradient)> gradient_ready{};
    /// True in training mode.
    bool training() const noexcept { return mode == ftune::mode::train; }
};

namespace detail {
/// The visitor of gradients_final (a keeps_values one: packed weights stay).
struct tell_gradient_ready : keeps_values {
    const std::function<void(const void*)>* ready;  ///< ctx.gradient_ready
    /// Tells it p's gradient when p trains.
    template <class P>
    void operator()(const P& p) const {
        if (p.trainable && !p.grad.empty()) (*ready)(p.grad.data());
    }
};
}  // namespace detail

/// Calls ctx.gradient_ready with the gradient of each trainable parameter `visit` reaches
/// (visit(f) calls f(parameter_ref) for each): after the backward that completed them.
template <class Visit>
void gradients_final(context& ctx, Visit&& visit) {
    if (ctx.gradient_ready) visit(detail::tell_gradient_ready{{}, &ctx.gradient_ready});
}

/// The error of a backward after a forward on the prepared inference path (prepare_inference()),
/// which keeps nothing for backward; `where` names the layer or model.
inline error no_backward_after_inference(const std::string& where) {
    return error(errc::invalid_argument, where + " backward",
                 "the forward ran the prepared inference path (prepare_inference()), which keeps "
                 "nothing for backward; run the forward in training mode (which ends the "
                 "prepared mode), or on a model never prepared");
}

FTUNE_NAMESPACE_END
