// libFuzzer target: any bytes given to the GGUF reader give a valid file or an ftune::error,
// never a crash or an out-of-bounds read (built with AddressSanitizer); every tensor of a file
// that parses is dequantized, and its Llama configuration and tokenizer read.
#include <ftune/io/gguf.hpp>
#include <ftune/io/gguf_llama.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const ftune::io::gguf_file f(std::span<const unsigned char>(data, size), "fuzz");
        for (const auto& t : f.tensors())
            if (t.numel() <= (std::size_t(1) << 22)) (void)f.read<float>(t);
        try {  // a Llama configuration read from the metadata is consistent
            const auto c = ftune::io::llama_config_from_gguf(f);
            if (c.num_attention_heads % c.num_key_value_heads != 0) __builtin_trap();
        } catch (const ftune::error&) {
        }
        try {  // a tokenizer read from the metadata encodes and decodes
            const auto tok = ftune::io::bpe_tokenizer_from_gguf(f);
            (void)tok.decode(tok.encode("Hello, world 123 <|im_end|>"));
        } catch (const ftune::error&) {
        }
    } catch (const ftune::error&) {
    }
    return 0;
}
