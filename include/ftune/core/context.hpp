// The run context passed to every forward/backward call: mode, random numbers, threads.
#pragma once

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

FTUNE_NAMESPACE_END
