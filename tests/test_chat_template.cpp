// Chat templates against Transformers: every template of tests/reference/chat_templates.py
// (SmolLM2's, ChatML, GPT-2's plain format, Llama 2 and 3, Zephyr, Mistral and one exercising the
// rest of the interpreter) rendered for every conversation, with and without the generation
// prompt, gives Transformers' text byte for byte and the same {% generation %} spans; where
// Transformers raises (raise_exception), ftune throws. Jinja ftune does not run is an error
// naming the template, the line and the construct.
#include <ftune/text/chat_template.hpp>

#include <fstream>
#include <string>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

TEST_CASE("chat templates render as Transformers' apply_chat_template, byte for byte",
          "[text][parity]") {
    const auto want = nlohmann::ordered_json::parse(
        std::ifstream(std::string(FTUNE_REFERENCE_DIR) + "/chat/templates.json"));
    const auto& cases = want["cases"];
    REQUIRE(cases.size() == 90);
    std::size_t same = 0, raised = 0;
    for (const auto& c : cases) {
        const std::string name = c["template"].get<std::string>();
        const auto conversation = c["conversation"].get<std::size_t>();
        INFO(name << ", conversation " << conversation << ", generation prompt "
                  << c["add_generation_prompt"].get<bool>());
        const ftune::text::chat_template t(want["templates"][name].get<std::string>(), name);
        nlohmann::ordered_json vars = {{"bos_token", "<s>"},
                                       {"eos_token", "</s>"},
                                       {"unk_token", "<unk>"},
                                       {"pad_token", "<pad>"},
                                       {"tools", c["tools"]}};
        const auto& messages = want["conversations"][conversation];
        if (c.contains("error")) {
            CHECK_THROWS_WITH(t.render_json(messages, c["add_generation_prompt"].get<bool>(), vars),
                              Catch::Contains(c["error"].get<std::string>()));
            ++raised;
            continue;
        }
        const auto r = t.render_json(messages, c["add_generation_prompt"].get<bool>(), vars);
        CHECK(r.text == c["text"].get<std::string>());
        std::vector<std::pair<std::size_t, std::size_t>> spans;
        for (const auto& s : c["generation"])
            spans.emplace_back(s[0].get<std::size_t>(), s[1].get<std::size_t>());
        CHECK(r.generation == spans);
        same += r.text == c["text"].get<std::string>() && r.generation == spans;
    }
    CHECK(same + raised == cases.size());
    CHECK(raised == 6);
}

TEST_CASE("chat templates: the plain message list of the C++ API renders as the JSON one",
          "[text]") {
    const ftune::text::chat_template t(
        "{% for m in messages %}<{{ m.role }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}");
    const auto r = t.render({{"system", "S"}, {"user", "U"}}, true);
    CHECK(r.text == "<system>S<user>U<assistant>");
    CHECK(t.render({{"user", "U"}}, false).text == "<user>U");
}

TEST_CASE("chat templates: Jinja ftune does not run is an error naming the line and construct",
          "[text]") {
    using ftune::text::chat_template;
    CHECK_THROWS_WITH(chat_template("ok\n{% macro m() %}x{% endmacro %}", "t.jinja"),
                      Catch::Contains("t.jinja: line 2") && Catch::Contains("macro"));
    CHECK_THROWS_WITH(chat_template("{{ x | wordwrap }}", "t"), Catch::Contains("wordwrap"));
    CHECK_THROWS_WITH(chat_template("{% if x is divisibleby(3) %}{% endif %}", "t"),
                      Catch::Contains("divisibleby"));
    CHECK_THROWS_WITH(chat_template("{{ lipsum() }}", "t"), Catch::Contains("lipsum"));
    CHECK_THROWS_WITH(chat_template("{{ s.zfill(3) }}", "t"), Catch::Contains("zfill"));
    CHECK_THROWS_WITH(chat_template("{% if x %}", "t"), Catch::Contains("endif"));
    CHECK_THROWS_WITH(chat_template("{{ 'never closed }}", "t"), Catch::Contains("closed"));
    CHECK_THROWS_WITH(chat_template("{% endfor %}", "t"), Catch::Contains("endfor"));
    CHECK_THROWS_WITH(chat_template("{{ a b }}", "t"), Catch::Contains("'b'"));
    CHECK_THROWS_WITH(chat_template("{{ e[] }}", "t"), Catch::Contains("empty subscript"));
    // nesting deep enough to exhaust the stack is refused
    CHECK_THROWS_WITH(
        chat_template("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "t"),
        Catch::Contains("nested"));
    std::string ifs;
    for (int i = 0; i < 5000; ++i) ifs += "{% if x %}";
    CHECK_THROWS_WITH(chat_template(ifs, "t"), Catch::Contains("nested"));
    CHECK_THROWS_WITH(chat_template("{{ " + std::string(5000, '-') + "1 }}", "t"),
                      Catch::Contains("nested"));
    std::string chain = "{{ 1";
    for (int i = 0; i < 20000; ++i) chain += "+1";
    CHECK_THROWS_WITH(chat_template(chain + " }}", "t"), Catch::Contains("nested"));
    std::string attrs = "{{ x";
    for (int i = 0; i < 20000; ++i) attrs += ".a";
    CHECK_THROWS_WITH(chat_template(attrs + " }}", "t"), Catch::Contains("nested"));
    // errors at render time name the template too
    const chat_template t("{{ x.y.z }}", "t");
    CHECK_THROWS_WITH(t.render({}, false), Catch::Contains("undefined"));
    const chat_template u("{{ raise_exception('no system role') }}", "u");
    CHECK_THROWS_WITH(u.render({}, false),
                      Catch::Contains("u") && Catch::Contains("no system role"));
}
