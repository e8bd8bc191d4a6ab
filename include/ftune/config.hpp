// Build configuration: the macros that change generated code, and the ABI namespace they select.
//
// Every ftune declaration lives in `ftune::FTUNE_ABI_TAG` (an inline namespace), whose name encodes
// the version, the SIMD architecture, whether OpenMP is on and whether CUDA is on. Two translation
// units built with different settings therefore get different symbols, and linking them together
// cannot silently break the one-definition rule (the approach of nlohmann_json's ABI namespace).
#pragma once

#include "ftune/version.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

// FTUNE_WITH_CUDA: 1 when the CUDA backend is compiled in (set by CMake's FTUNE_WITH_CUDA).
#ifndef FTUNE_WITH_CUDA
#define FTUNE_WITH_CUDA 0
#endif

// FTUNE_ABI_ARCH: the widest x86 SIMD level the compiler targets (it decides xsimd's default_arch).
#if defined(__AVX512F__)
#define FTUNE_ABI_ARCH avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define FTUNE_ABI_ARCH avx2fma
#elif defined(__AVX__)
#define FTUNE_ABI_ARCH avx
#elif defined(__SSE2__) || defined(_M_X64)
#define FTUNE_ABI_ARCH sse2
#elif defined(__ARM_NEON)
#define FTUNE_ABI_ARCH neon
#else
#define FTUNE_ABI_ARCH generic
#endif

#if FTUNE_WITH_CUDA
#define FTUNE_ABI_CUDA cuda
#else
#define FTUNE_ABI_CUDA nocuda
#endif

#if defined(_OPENMP)
#define FTUNE_ABI_OMP omp
#else
#define FTUNE_ABI_OMP noomp
#endif

#define FTUNE_ABI_CONCAT_EX(a, b, c, d, e, f) abi_v##a##_##b##_##c##_##d##_##e##_##f
#define FTUNE_ABI_CONCAT(a, b, c, d, e, f) FTUNE_ABI_CONCAT_EX(a, b, c, d, e, f)
/// The inline namespace that holds every ftune declaration, e.g. abi_v0_1_0_avx2fma_omp_nocuda.
#define FTUNE_ABI_TAG                                                               \
    FTUNE_ABI_CONCAT(FTUNE_VERSION_MAJOR, FTUNE_VERSION_MINOR, FTUNE_VERSION_PATCH, \
                     FTUNE_ABI_ARCH, FTUNE_ABI_OMP, FTUNE_ABI_CUDA)

/// Opens namespace ftune (and its ABI namespace).
#define FTUNE_NAMESPACE_BEGIN \
    namespace ftune {         \
    inline namespace FTUNE_ABI_TAG {
/// Closes what FTUNE_NAMESPACE_BEGIN opened.
#define FTUNE_NAMESPACE_END \
    }                       \
    }

// FTUNE_PRAGMA_OMP(x): `#pragma omp x` when OpenMP is on, nothing otherwise.
#if defined(_OPENMP)
#define FTUNE_PRAGMA_OMP(x) _Pragma(FTUNE_STRINGIFY(omp x))
#else
#define FTUNE_PRAGMA_OMP(x)
#endif
#define FTUNE_STRINGIFY(x) #x
/// The value of a macro as a string literal (FTUNE_STRINGIFY_VALUE(FTUNE_ABI_ARCH) -> "avx2fma").
#define FTUNE_STRINGIFY_VALUE(x) FTUNE_STRINGIFY(x)

FTUNE_NAMESPACE_BEGIN

/// Whether this build runs kernels on several threads (OpenMP enabled).
inline constexpr bool has_openmp =
#if defined(_OPENMP)
    true;
#else
    false;
#endif

/// Whether this build includes the CUDA backend.
inline constexpr bool has_cuda = FTUNE_WITH_CUDA != 0;

/// Number of threads the CPU kernels use (1 without OpenMP).
inline int num_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// Sets the number of threads the CPU kernels (and Eigen's GEMM) use; no effect without OpenMP.
inline void set_num_threads(int n) {
#if defined(_OPENMP)
    omp_set_num_threads(n < 1 ? 1 : n);
#else
    (void)n;
#endif
}

FTUNE_NAMESPACE_END

// Every translation unit that includes ftune checks at start-up that the CPU has the extensions
// its compiler flags allowed (a clear message instead of SIGILL on another machine).
#include "ftune/core/isa_check.hpp"
