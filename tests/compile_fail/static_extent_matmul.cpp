// Compile-fail test: a matrix product whose inner dimensions differ at compile time
// (activations (T, 384) times a weight stored (768, 3072)).
#include <ftune/ops.hpp>

using ftune::dynamic;

int main() {
    ftune::buffer<float, ftune::shape<dynamic, 384>> x(2, 384);
#ifdef FTUNE_COMPILE_FAIL
    ftune::buffer<float, ftune::shape<768, 3072>> w;
#else
    ftune::buffer<float, ftune::shape<384, 3072>> w;
#endif
    ftune::buffer<float, ftune::shape<dynamic, 3072>> y(2, 3072);
    ftune::ops::matmul(x, w, y);
    return int(y(0, 0));
}
