// What every backend shares beyond the core types: the residual epilogue of inference products.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ftune/core/concepts.hpp"
#include "ftune/core/types.hpp"

FTUNE_NAMESPACE_BEGIN

namespace backends {
/// The epilogue C += R of an inference product (R (M, N), rows ldr apart: a residual
/// connection), called on each finished tile of C; the CPU backend adds it inside its
/// micro-kernel as the tile is stored.
template <class T>
struct add_residual {
    const T* r;       ///< R(0, 0)
    std::size_t ldr;  ///< row stride of R
    /// C(row0 .., col0 ..) += R at the same place (c points at C(row0, col0)).
    void operator()(T* c, std::size_t ldc, std::size_t row0, std::size_t rows, std::size_t col0,
                    std::size_t cols) const noexcept {
        for (std::size_t i = 0; i < rows; ++i)
            for (std::size_t j = 0; j < cols; ++j) c[i * ldc + j] += r[(row0 + i) * ldr + col0 + j];
    }
};
}  // namespace backends

FTUNE_NAMESPACE_END
