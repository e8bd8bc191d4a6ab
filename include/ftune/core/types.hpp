// The small value types the primitives and the layers above them share: transpose flags, token
// ids, and the hyper-parameters of one optimizer update.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN

/// Whether a GEMM operand is used as stored or transposed.
enum class transpose : bool { no = false, yes = true };

/// The number format of matrix products: fp32, or bf16 operands with fp32 sums (AVX512-BF16's
/// vdpbf16ps; see docs/precision.md). Master weights, optimizer state, normalizations, softmax
/// and losses stay fp32 in either.
enum class precision { fp32, bf16 };

/// How a backward pass writes an input gradient: added to what d_in holds (the layer contract,
/// core/concepts.hpp), or written over it (d_in's old content dead: no zeroing pass before the
/// first write).
enum class grad_write { accumulate, overwrite };

/// "fp32" or "bf16".
constexpr const char* to_string(precision p) noexcept {
    return p == precision::bf16 ? "bf16" : "fp32";
}

/// A bfloat16 number kept as its 16 bits (the upper half of a float's; rounding to it is the
/// backends' job): the storage of the attention activations a bf16 training step keeps in bf16
/// (docs/precision.md). Exactly representable as a float.
struct bf16 {
    std::uint16_t bits;  ///< sign, 8 exponent bits, 7 mantissa bits
    /// The value as a float (exact).
    constexpr float to_float() const noexcept {
        return std::bit_cast<float>(std::uint32_t{bits} << 16);
    }
};

/// Token and label ids (as Hugging Face stores input_ids; int32 halves the bandwidth of int64).
using token_id = std::int32_t;

/// Hyper-parameters of one AdamW update (PyTorch's names and defaults). They are doubles, as
/// Python floats are in PyTorch, and derived constants (1 − β1, bias corrections) are computed in
/// double before being rounded to the tensor's type, so float updates match PyTorch bit for bit.
struct adamw_params {
    double lr = 1e-3;            ///< learning rate η
    double beta1 = 0.9;          ///< first-moment decay
    double beta2 = 0.999;        ///< second-moment decay
    double eps = 1e-8;           ///< denominator term
    double weight_decay = 0.01;  ///< decoupled decay λ: θ ← θ − ηλθ before the Adam step
    std::size_t step = 1;        ///< 1-based step number, for bias correction
    double grad_scale = 1;       ///< the gradient is read times this (a clipping coefficient)
};

/// Hyper-parameters of one SGD update (PyTorch's names and semantics).
struct sgd_params {
    double lr = 1e-2;         ///< learning rate
    double momentum = 0;      ///< momentum factor (0: plain SGD, no buffer used)
    double dampening = 0;     ///< dampening of the momentum update
    double weight_decay = 0;  ///< L2 penalty added to the gradient (coupled, as PyTorch's SGD)
    bool nesterov = false;    ///< Nesterov momentum
    bool first_step = false;  ///< true on the first step: the buffer is initialised to the gradient
    double grad_scale = 1;    ///< the gradient is read times this (a clipping coefficient)
};

FTUNE_NAMESPACE_END
