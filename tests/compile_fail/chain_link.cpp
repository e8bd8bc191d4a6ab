// Compile-fail test: a chain whose neighbours disagree at compile time (a 384 -> 256 projection
// followed by a classifier that takes 128 features).
#include <ftune/layers/chain.hpp>

namespace layers = ftune::layers;

#ifdef FTUNE_COMPILE_FAIL
using head = layers::chain<layers::linear<float, 384, 256>, layers::gelu<float, 256>,
                           layers::linear<float, 128, 2>>;
#else
using head = layers::chain<layers::linear<float, 384, 256>, layers::gelu<float, 256>,
                           layers::linear<float, 256, 2>>;
#endif

int main() {
    head h;
    return int(h.get<2>().out_features()) - 2;
}
