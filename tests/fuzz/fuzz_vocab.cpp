// libFuzzer target: any bytes given to the vocab.txt reader (text::vocabulary::from_text) give a
// vocabulary or an ftune::error, never a crash (built with AddressSanitizer and
// UndefinedBehaviorSanitizer). The input is vocab.txt, then optionally a NUL byte and a text: a
// vocabulary that makes a tokenizer encodes that text (or a fixed sample) to ids it holds.
#include <ftune/text/bert.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view vocab(reinterpret_cast<const char*>(data), size);
    std::string_view text = "Hello, W\xC3\xB6rld! \xE4\xBD\xA0\xE5\xA5\xBD [MASK] ##ing unaffable";
    if (const auto nul = vocab.find('\0'); nul != std::string_view::npos) {
        text = vocab.substr(nul + 1);
        vocab = vocab.substr(0, nul);
    }
    try {
        auto v = ftune::text::vocabulary::from_text(vocab, "fuzz/vocab.txt");
        for (std::size_t i = 0; i < v.size(); ++i) {  // a repeated token keeps its last id
            const auto id = v.find(v.token(std::int32_t(i)));
            if (!id || std::size_t(*id) < i) __builtin_trap();
        }
        const std::size_t n = v.size();
        {
            ftune::text::bert_options o;
            o.lowercase = size % 2 == 0;  // cased and uncased alike
            const ftune::text::bert_tokenizer t(std::move(v), o);
            const auto e = t.encode(text, text, 64);
            if (e.ids.size() > 64 || e.ids.size() != e.attention_mask.size()) __builtin_trap();
            for (const auto id : e.ids)
                if (id < 0 || std::size_t(id) >= n) __builtin_trap();
        }
    } catch (const ftune::error&) {
    }
    return 0;
}
