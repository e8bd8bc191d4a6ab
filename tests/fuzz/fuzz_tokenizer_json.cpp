// libFuzzer target: any JSON given to the tokenizer.json readers (text::tokenizer_from_json for
// WordPiece, text::bpe_tokenizer_from_json for byte-level BPE) gives a tokenizer or an
// ftune::error, never a crash (built with AddressSanitizer and UndefinedBehaviorSanitizer); a
// tokenizer it gives encodes a sample text to ids it holds and decodes them.
#include <ftune/text/tokenizer_json.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    const auto j = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return 0;  // not JSON: read_tokenizer_json's error, not this reader's
    const std::string_view sample =
        "Hello, W\xC3\xB6rld! 2024 \xE4\xBD\xA0\xE5\xA5\xBD <|im_start|> [CLS] don't  \t\n x";
    try {
        const auto t = ftune::text::tokenizer_from_json(j, "fuzz/tokenizer.json");
        const auto e = t.encode(sample, {}, 48);
        if (e.ids.size() > 48) __builtin_trap();
        for (const auto id : e.ids)
            if (id < 0 || std::size_t(id) >= t.vocab().size()) __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {
        const auto t = ftune::text::bpe_tokenizer_from_json(j, "fuzz/tokenizer.json");
        const auto ids = t.encode(sample);
        for (const auto id : ids)
            if (id < 0 || std::size_t(id) >= t.size()) __builtin_trap();
        (void)t.decode(ids);
        (void)t.encode_with_offsets(sample);
    } catch (const ftune::error&) {
    }
    return 0;
}
