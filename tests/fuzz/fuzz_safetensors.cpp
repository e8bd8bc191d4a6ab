// libFuzzer target: any bytes given to the safetensors reader give a valid file or an
// ftune::error, never a crash or an out-of-bounds read (built with AddressSanitizer).
#include <ftune/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const ftune::io::safetensors_file f(std::span<const unsigned char>(data, size), "fuzz");
        for (const auto& t : f.tensors()) {
            (void)f.bytes(t);
            try {
                (void)f.read<float>(t);  // every element converted
            } catch (const ftune::error&) {
            }
        }
    } catch (const ftune::error&) {
    }
    return 0;
}
