// libFuzzer target: any bytes given to the SQuAD JSON reader (data::parse_squad) give questions
// or an ftune::error, never a crash (built with AddressSanitizer and UndefinedBehaviorSanitizer);
// every answer lies inside its context.
#include <ftune/data/squad.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        for (const auto& q : ftune::data::parse_squad(text, "fuzz/train.json"))
            for (const auto& a : q.answers)
                if (a.char_start > ftune::data::code_points(q.context) ||
                    ftune::data::code_points(a.text) >
                        ftune::data::code_points(q.context) - a.char_start)
                    __builtin_trap();
    } catch (const ftune::error&) {
    }
    return 0;
}
