// Helpers shared by the tests: deterministic random data and tolerance-scaled comparisons.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <ftune/core/rng.hpp>
#include <ftune/core/types.hpp>

#include "catch.hpp"

namespace test {

/// The int32 tensor `name` of a safetensors file (token ids, an attention mask) as token ids.
template <class File>
std::vector<ftune::token_id> read_ids(const File& f, const std::string& name) {
    const auto& t = f.at(name);
    std::vector<ftune::token_id> v(t.numel());
    REQUIRE(f.bytes(t).size() == v.size() * sizeof(ftune::token_id));
    std::memcpy(v.data(), f.bytes(t).data(), v.size() * sizeof(ftune::token_id));
    return v;
}

/// max |got - want| / max |want|: the error relative to the tensor's scale.
inline double relative_error(std::span<const float> got, const std::vector<float>& want) {
    double err = 0, scale = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        err = std::max(err, double(std::abs(got[i] - want[i])));
        scale = std::max(scale, double(std::abs(want[i])));
    }
    return err / std::max(scale, 1e-30);
}

/// n values from a normal distribution times `scale`, reproducible from `seed`.
template <class T>
std::vector<T> randn(std::size_t n, std::uint64_t seed, double scale = 1.0) {
    ftune::random_stream s(seed, 0);
    std::vector<T> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = T(scale * s.normal(i));
    return v;
}

/// n values uniform in [lo, hi), reproducible from `seed`.
template <class T>
std::vector<T> randu(std::size_t n, std::uint64_t seed, double lo, double hi) {
    ftune::random_stream s(seed, 1);
    std::vector<T> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = T(lo + (hi - lo) * double(s.bits(i)) * 0x1p-32);
    return v;
}

/// An integer uniform in [lo, hi], reproducible from (seed, i).
inline std::size_t rand_int(std::uint64_t seed, std::uint64_t i, std::size_t lo, std::size_t hi) {
    return lo + ftune::random_stream(seed, 2).below(i, std::uint32_t(hi - lo + 1));
}

/// The tolerance `factor` machine epsilons of T: float and double get proportional slack.
template <class T>
double tol(double factor) {
    return factor * double(std::numeric_limits<T>::epsilon());
}

/// Checks |got - want| <= rtol * max(1, |want|) element-wise; reports the first failure with
/// context.
template <class T>
void require_close(std::span<const T> got, std::span<const T> want, double rtol,
                   const std::string& what) {
    REQUIRE(got.size() == want.size());
    std::size_t bad = got.size();
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = double(got[i]), w = double(want[i]);
        const double err = std::abs(g - w) / std::max(1.0, std::abs(w));
        if (!(err <= rtol)) {  // also catches NaN
            if (bad == got.size()) bad = i;
            worst = std::max(worst, std::isnan(err) ? INFINITY : err);
        }
    }
    if (bad != got.size()) {
        std::ostringstream os;
        os << what << ": element " << bad << " got " << double(got[bad]) << " want "
           << double(want[bad]) << " (worst relative error " << worst << ", tolerance " << rtol
           << ")";
        FAIL(os.str());
    }
    SUCCEED();
}

/// require_close on vectors.
template <class T>
void require_close(const std::vector<T>& got, const std::vector<T>& want, double rtol,
                   const std::string& what) {
    require_close<T>(std::span<const T>(got), std::span<const T>(want), rtol, what);
}

/// Sizes that exercise SIMD tails: empty, one, below/at/above the batch widths, and odd sizes.
inline const std::vector<std::size_t>& awkward_sizes() {
    static const std::vector<std::size_t> s{0,  1,  2,  3,  4,  5,  7,   8,   9,   15,
                                            16, 17, 31, 33, 63, 65, 100, 127, 384, 1000};
    return s;
}

}  // namespace test
