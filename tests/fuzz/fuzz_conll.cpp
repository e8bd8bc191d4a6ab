// libFuzzer target: any bytes given to the CoNLL column reader (data::parse_conll) give tagged
// sentences or an ftune::error, never a crash (built with AddressSanitizer and
// UndefinedBehaviorSanitizer); every sentence has one tag per token.
#include <ftune/data/readers.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto sentences = ftune::data::parse_conll(text, "fuzz/train.conll");
        for (const auto& s : sentences) {
            if (s.tokens.empty() || s.tokens.size() != s.tags.size() || s.line == 0)
                __builtin_trap();
            for (const auto& t : s.tokens)
                if (t.empty() || t.find_first_of(" \t\n") != std::string::npos) __builtin_trap();
        }
    } catch (const ftune::error&) {
    }
    return 0;
}
