// libFuzzer target: any bytes given to `ftune serve`'s POST /predict parser
// (serve::parse_predict_request) give a request or an ftune::error, never a crash (built with
// AddressSanitizer); a parsed request is consistent.
#include <ftune/serve/tei.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    try {
        const auto r = ftune::serve::parse_predict_request(body);
        if (!r.batched && r.inputs.size() != 1) __builtin_trap();  // one text or one pair
    } catch (const ftune::error&) {
    }
    return 0;
}
