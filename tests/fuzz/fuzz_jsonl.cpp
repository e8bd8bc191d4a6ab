// libFuzzer target: any bytes given to the decoders' JSON-lines readers (data::parse_jsonl:
// conversations, prompts with completions; data::parse_summaries: DialogSum's and SAMSum's
// summarization data, then as chats) give examples or an ftune::error, never a crash (built with
// AddressSanitizer and UndefinedBehaviorSanitizer); every conversation has an assistant message
// to learn from, every text a non-empty summary.
#include <ftune/data/conversations.hpp>
#include <ftune/data/summaries.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto d = ftune::data::parse_jsonl(text, "fuzz/train.jsonl");
        if (d.rows.empty()) __builtin_trap();
        for (const auto& e : d.rows) {
            if (d.format == ftune::data::lm_format::prompt_completion) continue;
            bool trained = false;
            for (std::size_t i = e.first_trained; i < e.messages.size(); ++i)
                trained = trained || e.messages[i].role == "assistant";
            if (!trained) __builtin_trap();
        }
    } catch (const ftune::error&) {
    }
    try {
        const auto d = ftune::data::parse_summaries(text, "fuzz/dialogsum.jsonl");
        const auto chats = ftune::data::summary_chats(d, 3);
        if (d.rows.empty() || chats.rows.empty()) __builtin_trap();
        for (const auto& e : d.rows)
            if (e.text.empty() || e.summaries.empty() || e.summaries.front().empty())
                __builtin_trap();
        for (const auto& c : chats.rows)
            if (c.messages.size() != 2 || c.messages[1].role != "assistant") __builtin_trap();
    } catch (const ftune::error&) {
    }
    return 0;
}
