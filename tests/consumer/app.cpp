// A consumer program: uses ftune through whichever route its build chose (single header,
// find_package after install, add_subdirectory), computes a tiny layer and checks it.
#include <ftune/ftune.hpp>

#include <cmath>
#include <cstdio>

int main() {
    using ftune::dynamic;
    ftune::buffer<float, ftune::shape<dynamic, 3>> x(2, 3);
    ftune::buffer<float, ftune::shape<2, 3>> w;  // stored [out, in] as Hugging Face does
    ftune::buffer<float, ftune::shape<2>> b;
    ftune::buffer<float, ftune::shape<dynamic, 2>> y(2, 2);
    for (std::size_t i = 0; i < 6; ++i) x.data()[i] = float(i), w.data()[i] = 0.1f * float(i);
    b(0) = 1.0f;
    b(1) = -1.0f;
    ftune::ops::matmul<ftune::transpose::no, ftune::transpose::yes>(x, w, y);  // y = x wᵀ
    ftune::ops::bias_add(y, b);
    // y(1, 1) = (3, 4, 5) . (0.3, 0.4, 0.5) - 1 = 4.0
    const bool ok = std::abs(y(1, 1) - 4.0f) < 1e-5f;
    std::printf("ftune %s: y(1,1) = %g %s\n", ftune::version_string, double(y(1, 1)),
                ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
