// libFuzzer target: any text read as a chat template parses to a template or an ftune::error,
// and rendering a parsed one for a few conversations gives text or an ftune::error, never a
// crash, a hang or unbounded memory (built with AddressSanitizer).
#include <ftune/text/chat_template.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string source(reinterpret_cast<const char*>(data), size);
    try {
        const ftune::text::chat_template t(source, "fuzz.jinja");
        const nlohmann::ordered_json vars = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
        for (const bool prompt : {false, true}) {
            try {
                (void)t.render({{"system", "S"}, {"user", "Hi 😀"}, {"assistant", "Hello"}}, prompt,
                               vars);
            } catch (const ftune::error&) {
            }
            try {
                (void)t.render({}, prompt, vars);
            } catch (const ftune::error&) {
            }
        }
    } catch (const ftune::error&) {
    }
    return 0;
}
