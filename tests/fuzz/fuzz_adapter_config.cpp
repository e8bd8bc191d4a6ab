// libFuzzer target: any bytes given to the PEFT adapter_config.json reader
// (peft::parse_adapter_config) give a LoRA configuration or an ftune::error, never a crash (built
// with AddressSanitizer and UndefinedBehaviorSanitizer); a configuration it gives is usable.
#include <ftune/peft/adapter_io.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto c = ftune::peft::parse_adapter_config(text, "fuzz/adapter_config.json");
        if (c.r == 0 || c.r > 65536 || !std::isfinite(c.alpha) ||
            !(c.dropout >= 0 && c.dropout < 1))
            __builtin_trap();
        for (const auto& [key, rank] : c.rank_pattern)
            if (rank == 0 || rank > 65536) __builtin_trap();
    } catch (const ftune::error&) {
    }
    return 0;
}
