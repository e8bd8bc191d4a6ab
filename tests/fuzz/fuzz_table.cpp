// libFuzzer target: any bytes given to the TSV / CSV reader (data::parse_table), the plain-text
// reader and Financial PhraseBank's reader give examples or an ftune::error, never a crash (built
// with AddressSanitizer and UndefinedBehaviorSanitizer); what they return is consistent.
#include <ftune/data/readers.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    for (const char* where : {"fuzz/train.tsv", "fuzz/train.csv"})
        for (const bool labelled : {true, false}) {
            try {
                ftune::data::table_options o;
                o.require_label = labelled;
                const auto d = ftune::data::parse_table(text, where, o);
                for (const auto& r : d.rows) {
                    if (r.line < 2) __builtin_trap();  // the header is line 1
                    if (!d.pairs && !r.text_pair.empty()) __builtin_trap();
                }
            } catch (const ftune::error&) {
            }
        }
    const auto lines = ftune::data::parse_lines(text, "fuzz/domain.txt");
    for (const auto& r : lines.rows)
        if (r.text.find('\n') != std::string::npos || r.line == 0) __builtin_trap();
    try {
        const auto d = ftune::data::parse_phrasebank(text, "fuzz/Sentences_AllAgree.txt");
        for (const auto& r : d.rows)
            if (r.label.empty() || r.text.empty()) __builtin_trap();
    } catch (const ftune::error&) {
    }
    return 0;
}
