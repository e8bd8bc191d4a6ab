// The x86 intrinsic headers, included once for every ftune header that needs them (the Philox
// RNG, xsimd). GCC 12's AVX-512 intrinsic headers start some vectors as deliberately undefined
// values (`__m256d __Y = __Y;`), and -W(maybe-)uninitialized reports each in every program that
// inlines them (fixed in GCC 13). The warnings are off for those system headers only: GCC decides
// by the location the warning points at, and these pragmas cover the headers' lines when this is
// the first place they are included.
#pragma once

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
