// The ftune command-line tool. Subcommands are added by the issues that define them
// (bench, tokenize, predict, info, train, eval); this file dispatches.
#include <cstring>
#include <iostream>
#include <string_view>

#include <ftune/ftune.hpp>

namespace {

// Prints the usage text.
void usage(std::ostream& os) {
    os << "usage: ftune <command> [options]\n"
          "\n"
          "commands:\n"
          "  version     print the version\n"
          "  env         print the build configuration (SIMD level, threads, CUDA)\n"
          "  help        print this text\n";
}

// Prints the build configuration as one JSON line.
int cmd_env() {
    std::cout << "{\"version\": \"" << ftune::version_string << "\", \"simd\": \""
              << FTUNE_STRINGIFY_VALUE(FTUNE_ABI_ARCH) << "\", \"simd_float_lanes\": "
              << ftune::backend::cpu::detail::width<float> << ", \"openmp\": "
              << (ftune::has_openmp ? "true" : "false") << ", \"threads\": " << ftune::num_threads()
              << ", \"cuda\": " << (ftune::has_cuda ? "true" : "false") << "}\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        usage(std::cerr);
        return 2;
    }
    const std::string_view cmd = argv[1];
    try {
        if (cmd == "version" || cmd == "--version") {
            std::cout << "ftune " << ftune::version_string << "\n";
            return 0;
        }
        if (cmd == "env") return cmd_env();
        if (cmd == "help" || cmd == "--help" || cmd == "-h") {
            usage(std::cout);
            return 0;
        }
        std::cerr << "ftune: unknown command '" << cmd << "'\n";
        usage(std::cerr);
        return 2;
    } catch (const ftune::error& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
}
