// ftune version, read by CMake (keep the three #define lines in this form).
#pragma once

#define FTUNE_VERSION_MAJOR 0
#define FTUNE_VERSION_MINOR 1
#define FTUNE_VERSION_PATCH 0

/// The version as one integer, e.g. 100 for 0.1.0, for `#if FTUNE_VERSION >= ...`.
#define FTUNE_VERSION \
    (FTUNE_VERSION_MAJOR * 10000 + FTUNE_VERSION_MINOR * 100 + FTUNE_VERSION_PATCH)

namespace ftune {
/// The version as a string, e.g. "0.1.0".
inline constexpr const char* version_string = "0.1.0";
}  // namespace ftune
