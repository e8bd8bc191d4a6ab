// Decoder fine-tuning data: JSON-lines conversations and prompt-completion pairs read with
// file:line errors, and encoded as ids and labels equal to Hugging Face's
// (tests/reference/lm_data.py): the assistant's turns located by prefix rendering in SmolLM2's
// template and by {% generation %} blocks (Transformers' assistant mask), prompt-completion as TRL
// tokenizes it; summarization data (DialogSum, SAMSum) as chats with all their references.
#include <ftune/data/summaries.hpp>
#include <ftune/text/tokenizer_json.hpp>
#include <ftune/train/generation_eval.hpp>
#include <ftune/train/lm_batching.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
const fs::path fixtures(FTUNE_REFERENCE_DIR);

ftune::text::bpe_tokenizer smollm_tokenizer() {
    auto tok = ftune::text::load_bpe_tokenizer_json(fixtures / "bpe" / "smollm.json");
    ftune::text::lm_tokenizer_settings s;
    s.bos_token = "<|im_start|>", s.eos_token = "<|im_end|>", s.pad_token = "<|im_end|>";
    tok.set_settings(s);
    return tok;
}

nlohmann::json expected() {
    std::ifstream in(fixtures / "lm" / "expected.json");
    return nlohmann::json::parse(in);
}

// xs equal the ids and labels of want[key]
void check_encoded(const std::vector<ftune::train::example>& xs, const nlohmann::json& want) {
    REQUIRE(xs.size() == want.size());
    for (std::size_t i = 0; i < xs.size(); ++i) {
        INFO("example " << i);
        CHECK(xs[i].ids == want[i]["ids"].get<std::vector<ftune::token_id>>());
        CHECK(xs[i].labels == want[i]["labels"].get<std::vector<ftune::token_id>>());
    }
}

// A file holding `text`, in the test's working directory.
fs::path file_with(const std::string& name, const std::string& text) {
    const fs::path p = fs::path("lm_data_cases") / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p;
}
}  // namespace

TEST_CASE("decoder data: conversations and prompt-completion pairs as Hugging Face encodes them",
          "[data][parity]") {
    const auto tok = smollm_tokenizer();
    const auto want = expected();
    const auto chats = ftune::data::read_jsonl(fixtures / "lm" / "chat.jsonl");
    REQUIRE(chats.rows.size() == 3);  // the blank line skipped
    CHECK(chats.format == ftune::data::lm_format::messages);
    CHECK(chats.rows[1].line == 3);
    CHECK(chats.rows[2].first_trained == 1);  // TRL's conversational prompt-completion
    {
        INFO("SmolLM2's template: the assistant's turns found by prefix rendering");
        const ftune::text::chat_template tmpl(want["smollm2_template"].get<std::string>());
        check_encoded(ftune::train::encode(tok, chats, &tmpl), want["prefix"]);
    }
    {
        INFO("{% generation %} blocks: Transformers' return_assistant_tokens_mask");
        const ftune::text::chat_template tmpl(want["generation_template"].get<std::string>());
        check_encoded(ftune::train::encode(tok, chats, &tmpl), want["generation"]);
    }
    {
        INFO("conversational prompt-completion: an assistant turn in the prompt is not learned");
        const ftune::text::chat_template tmpl(want["generation_template"].get<std::string>());
        ftune::data::lm_example e;
        e.messages = {
            {"user", "hi"}, {"assistant", "hello"}, {"user", "card?"}, {"assistant", "ok"}};
        e.first_trained = 3;
        const auto x = ftune::train::encode_conversation(tok, tmpl, e);
        std::vector<ftune::token_id> learned;
        for (const auto l : x.labels)
            if (l != -100) learned.push_back(l);
        CHECK(tok.decode(learned) == "ok<|im_end|>");
        e.first_trained = 0;  // both replies
        const auto both = ftune::train::encode_conversation(tok, tmpl, e);
        learned.clear();
        for (const auto l : both.labels)
            if (l != -100) learned.push_back(l);
        CHECK(tok.decode(learned) == "hello<|im_end|>ok<|im_end|>");
    }
    const auto pc = ftune::data::read_jsonl(fixtures / "lm" / "prompt_completion.jsonl");
    CHECK(pc.format == ftune::data::lm_format::prompt_completion);
    check_encoded(ftune::train::encode(tok, pc, nullptr), want["prompt_completion"]);
    // cut to max_length: the end goes, labels with it; a data set left with nothing to learn
    // is an error
    const auto cut = ftune::train::encode_prompt_completion(tok, pc.rows[0], {.max_length = 5});
    CHECK(cut.ids.size() == 5);
    CHECK(cut.labels.size() == 5);
    CHECK_THROWS_WITH(ftune::train::encode(tok, pc, nullptr, {.max_length = 5}),
                      Catch::Contains("prompt_completion.jsonl") &&
                          Catch::Contains("no example has a token to learn"));
    // a conversation without a template is an error naming file:line
    CHECK_THROWS_WITH(ftune::train::encode(tok, chats, nullptr),
                      Catch::Contains("chat.jsonl:1") && Catch::Contains("chat template"));
    // a template whose renderings are not prefixes of one another: the turns cannot be found
    const ftune::text::chat_template counted(
        "{{ messages|length }}{% for m in messages %}{{ m.content }}{% endfor %}");
    CHECK_THROWS_WITH(ftune::train::encode(tok, chats, &counted),
                      Catch::Contains("chat.jsonl:1") && Catch::Contains("generation"));
}

TEST_CASE("decoder data: malformed JSON lines are errors naming file:line", "[data]") {
    const std::string chat =
        R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})";
    const std::pair<std::string, std::string> cases[] = {
        {chat + "\n{not json\n", "bad.jsonl:2"},
        {"[1, 2]\n", "not a JSON object"},
        {R"({"text": "x"})", "needs \"messages\""},
        {R"({"messages": []})", "non-empty list of messages"},
        {R"({"messages": [{"role": "user"}]})", "message 0 of \"messages\""},
        {R"({"messages": [{"role": "user", "content": "only a question"}]})",
         "no assistant message"},
        {R"({"prompt": "a", "completion": ["b"]})", "both be strings or both lists"},
        {chat + "\n" + R"({"prompt": "a", "completion": "b"})", "mixes formats"},
        {"\n  \n", "no examples"}};
    for (const auto& [text, message] : cases) {
        INFO(text);
        const auto p = file_with("bad.jsonl", text);
        CHECK_THROWS_WITH(ftune::data::read_jsonl(p), Catch::Contains(message));
    }
    CHECK_THROWS_WITH(ftune::data::read_jsonl("lm_data_cases/missing.jsonl"),
                      Catch::Contains("cannot open"));
}

TEST_CASE("summarization data: DialogSum's and SAMSum's JSON lines, as chats with every reference",
          "[data]") {
    // DialogSum's train layout (one summary, a topic), its test layout (three), SAMSum's (a
    // numeric-looking string id, no topic)
    const std::string text =
        R"({"fname": "train_0", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet.", "topic": "greeting"})"
        "\n\n"
        R"({"fname": "test_0", "dialogue": "#Person1#: Bye.", "summary1": "A", "topic1": "t", "summary2": "B", "topic2": "t", "summary3": "C"})"
        "\n"
        R"({"id": 13818513, "dialogue": "Amanda: cookies?", "summary": "Amanda baked cookies."})"
        "\n";
    const auto d = ftune::data::parse_summaries(text, "dialogsum.jsonl");
    REQUIRE(d.rows.size() == 3);
    CHECK(d.rows[0].id == "train_0");
    CHECK(d.rows[0].text == "#Person1#: Hi.\n#Person2#: Hello.");
    CHECK(d.rows[0].summaries == std::vector<std::string>{"They greet."});
    CHECK(d.rows[0].topic == "greeting");
    CHECK(d.rows[1].summaries == std::vector<std::string>{"A", "B", "C"});
    CHECK(d.rows[1].topic == "t");
    CHECK(d.rows[1].line == 3);
    CHECK(d.rows[2].id == "13818513");
    CHECK(d.rows[2].topic.empty());
    // as chats: the instruction and the dialogue, then the first reference; the others kept
    const auto chats = ftune::data::summary_chats(d, 2, "Summarize:");
    REQUIRE(chats.rows.size() == 2);
    CHECK(chats.rows[1].line == 3);  // rows 0 and 1 * 3 / 2 = 1
    CHECK(chats.rows[1].messages[0].content == "Summarize:\n\n#Person1#: Bye.");
    CHECK(chats.rows[1].messages[1].role == "assistant");
    CHECK(chats.rows[1].messages[1].content == "A");
    CHECK(chats.rows[1].first_trained == 1);
    CHECK(chats.rows[1].other_references == std::vector<std::string>{"B", "C"});
    CHECK(chats.rows[0].other_references.empty());
    CHECK(ftune::data::summary_chats(d).rows.size() == 3);
    // the three references reach the generation cases
    const auto tok = smollm_tokenizer();
    const ftune::text::chat_template tmpl(expected()["smollm2_template"].get<std::string>());
    const auto cases = ftune::train::generation_cases(tok, chats, &tmpl);
    REQUIRE(cases.size() == 2);
    CHECK(cases[1].reference == "A");
    CHECK(cases[1].other_references == std::vector<std::string>{"B", "C"});
}

TEST_CASE("summarization data: malformed lines are errors naming file:line", "[data]") {
    const std::string good = R"({"dialogue": "a", "summary": "b"})";
    const std::pair<std::string, std::string> cases[] = {
        {good + "\n{not json\n", "sum.jsonl:2"},
        {"[1, 2]\n", "not a JSON object"},
        {R"({"summary": "b"})", "needs the text to summarize"},
        {R"({"dialogue": "", "summary": "b"})", "needs the text to summarize"},
        {R"({"dialogue": " \n ", "summary": "b"})", "needs the text to summarize"},
        {R"({"dialogue": "a", "summary": "b", "id": 1.5})",
         "\"id\" must be a string or an integer"},
        {R"({"dialogue": 3, "summary": "b"})", "\"dialogue\" must be a string"},
        {R"({"dialogue": "a"})", "needs a reference summary"},
        {R"({"dialogue": "a", "summary2": "b"})", "needs a reference summary"},
        {R"({"dialogue": "a", "summary1": "b", "summary2": " "})", "reference summary 2 is empty"},
        {R"({"dialogue": "a", "summary": ["b"]})", "\"summary\" must be a string"},
        {R"({"dialogue": "a", "summary": "b", "fname": {}})", "\"fname\" must be a string"},
        {"\n  \n", "no examples"}};
    for (const auto& [text, message] : cases) {
        INFO(text);
        CHECK_THROWS_WITH(ftune::data::parse_summaries(text, "sum.jsonl"),
                          Catch::Contains(message) && Catch::Contains("sum.jsonl"));
    }
    CHECK_THROWS_WITH(ftune::data::read_summaries("lm_data_cases/missing.jsonl"),
                      Catch::Contains("cannot open"));
    // which files the chat tools read as summarization data
    CHECK(ftune::data::looks_like_summaries("\n" + good + "\n"));
    CHECK(ftune::data::looks_like_summaries(R"({"document": "a", "summary1": "b"})"));
    CHECK_FALSE(ftune::data::looks_like_summaries(
        R"({"messages": [{"role": "user", "content": "a"}], "dialogue": "a", "summary": "b"})"));
    CHECK_FALSE(ftune::data::looks_like_summaries(R"({"prompt": "a", "completion": "b"})"));
    CHECK_FALSE(ftune::data::looks_like_summaries(R"({"dialogue": "a"})"));
    CHECK_FALSE(ftune::data::looks_like_summaries("{not json"));
}
