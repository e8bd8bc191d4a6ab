// libFuzzer target: any bytes given to the GGUF reader give a valid file or an ftune::error,
// never a crash or an out-of-bounds read (built with AddressSanitizer); every tensor of a file
// that parses is dequantized.
#include <ftune/io/gguf.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const ftune::io::gguf_file f(std::span<const unsigned char>(data, size), "fuzz");
        for (const auto& t : f.tensors())
            if (t.numel() <= (std::size_t(1) << 22)) (void)f.read<float>(t);
    } catch (const ftune::error&) {
    }
    return 0;
}
