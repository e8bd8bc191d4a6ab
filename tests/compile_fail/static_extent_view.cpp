// Compile-fail test: a tensor whose compile-time width is 768 passed where 384 is required.
// Built without FTUNE_COMPILE_FAIL it is a valid program (the control); with it, the build must
// stop with ftune's message saying what to do.
#include <ftune/core/tensor.hpp>

using ftune::dynamic;

// A function written for MiniLM-sized hidden states (T, 384).
float first(ftune::view<const float, ftune::shape<dynamic, 384>> hidden) {
    return hidden(0, 0);
}

int main() {
#ifdef FTUNE_COMPILE_FAIL
    ftune::buffer<float, ftune::shape<dynamic, 768>> bert_base_hidden(4, 768);
    return int(first(bert_base_hidden.view()));
#else
    ftune::buffer<float, ftune::shape<dynamic, 384>> minilm_hidden(4, 384);
    return int(first(minilm_hidden.view()));
#endif
}
