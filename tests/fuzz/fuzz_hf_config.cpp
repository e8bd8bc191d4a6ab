// libFuzzer target: any text given to the config.json (BERT, Llama and GPT-2 families),
// tokenizer_config.json and sentence-transformers Pooling config.json parsers gives a consistent
// configuration or an ftune::error, never a crash (built with AddressSanitizer and
// UndefinedBehaviorSanitizer).
#include <ftune/io/hf.hpp>
#include <ftune/io/sentence_transformers.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto c = ftune::io::parse_hf_config(text, "fuzz/config.json");
        // a parsed configuration is consistent
        if (c.model.hidden_size % c.model.num_attention_heads != 0) __builtin_trap();
        if (!c.id2label.empty() && c.id2label.size() != c.model.num_labels) __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {  // the Llama family's reader
        const auto c = ftune::io::parse_hf_config<ftune::llama::config>(text, "fuzz/config.json");
        const auto& m = c.model;
        if (m.num_attention_heads % m.num_key_value_heads != 0 || m.head_size() % 2 != 0)
            __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {  // the GPT-2 family's reader
        const auto c = ftune::io::parse_hf_config<ftune::gpt2::config>(text, "fuzz/config.json");
        if (c.model.hidden_size % c.model.num_attention_heads != 0) __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {
        (void)ftune::io::parse_hf_tokenizer_config(text, "fuzz/tokenizer_config.json");
    } catch (const ftune::error&) {
    }
    try {
        ftune::io::sentence_config c;
        ftune::io::parse_pooling_config(text, "fuzz/1_Pooling/config.json", c);
        if (c.pooling.empty()) __builtin_trap();
    } catch (const ftune::error&) {
    }
    return 0;
}
