// libFuzzer target: any bytes given to `ftune serve`'s request parsers (POST /predict, /embed,
// /token-classification, /question-answering, /v1/chat/completions: serve::parse_*_request) give a
// request or an ftune::error, never a crash (built with AddressSanitizer and
// UndefinedBehaviorSanitizer); a parsed request is consistent.
#include <ftune/serve/chat.hpp>
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
    try {
        (void)ftune::serve::parse_embed_request(body);
    } catch (const ftune::error&) {
    }
    try {
        const auto r = ftune::serve::parse_token_request(body);
        if (!r.batched && r.inputs.size() != 1) __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {
        const auto r = ftune::serve::parse_qa_request(body);
        if (!r.batched && r.inputs.size() != 1) __builtin_trap();
        for (const auto& q : r.inputs)
            if (q.top_k == 0 || q.max_answer_length == 0) __builtin_trap();
    } catch (const ftune::error&) {
    }
    try {
        const auto r = ftune::serve::parse_chat_request(body);
        if (r.messages.empty() || r.stop.size() > 4 || !(r.top_p > 0 && r.top_p <= 1))
            __builtin_trap();
    } catch (const ftune::error&) {
    }
    return 0;
}
