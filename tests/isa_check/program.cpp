// A program that includes ftune (config.hpp, which every ftune header includes) and says so:
// built for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2) and run on QEMU's emulated CPU, which has
// AVX2 but no AVX-512, by the isa_check_* tests (tests/CMakeLists.txt).
#include <cstdio>

#include "ftune/config.hpp"

int main() {
    std::printf("ran: %s\n", ftune::compiled_isa().c_str());
    return 0;
}
