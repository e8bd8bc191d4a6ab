// The run context passed to every forward/backward call: mode, random numbers, threads.
#pragma once

#include <string>

#include "ftune/core/error.hpp"
#include "ftune/core/rng.hpp"

FTUNE_NAMESPACE_BEGIN

/// Training (dropout active) or evaluation (dropout off, deterministic).
enum class mode { train, eval };

/// What a layer needs to know about the current run besides its inputs.
struct context {
    ftune::mode mode = ftune::mode::eval;  ///< train or eval
    generator rng{0};                      ///< source of dropout streams, seeded by the user
    /// True in training mode.
    bool training() const noexcept { return mode == ftune::mode::train; }
};

/// The error of a backward after a forward on the prepared inference path (prepare_inference()),
/// which keeps nothing for backward; `where` names the layer or model.
inline error no_backward_after_inference(const std::string& where) {
    return error(errc::invalid_argument, where + " backward",
                 "the forward ran the prepared inference path (prepare_inference()), which keeps "
                 "nothing for backward; run the forward in training mode (which ends the "
                 "prepared mode), or on a model never prepared");
}

FTUNE_NAMESPACE_END
