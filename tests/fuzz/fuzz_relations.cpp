// libFuzzer target: any bytes given to SemEval-2010 Task 8's reader (data::parse_semeval2010)
// and then to the entity-marker check (data::check_entity_markers) give examples or an
// ftune::error, never a crash (built with AddressSanitizer and UndefinedBehaviorSanitizer); the
// same bytes as the text of one example go through the marker check alone. Every example read
// has a text, a label and a line; every example that passes the check has each marker once.
#include <ftune/data/relations.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto d = ftune::data::parse_semeval2010(text, "fuzz/TRAIN_FILE.TXT");
        for (const auto& r : d.rows)
            if (r.label.empty() || r.line == 0) __builtin_trap();
        ftune::data::check_entity_markers(d);
        for (const auto& r : d.rows)
            for (const char* m : {"<e1>", "</e1>", "<e2>", "</e2>"})
                if (r.text.find(m) == std::string::npos) __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {
        ftune::data::text_dataset one;
        one.path = "fuzz/rows.tsv";
        one.rows.push_back({std::string(text), {}, "Other", 1});
        ftune::data::check_entity_markers(one);
    } catch (const ftune::error&) {
    }
    return 0;
}
