// Data readers: TSV / CSV with a header (RFC 4180 quoting, embedded newlines, CRLF), CoNLL column
// files; malformed input names file:line; the real data sets read with their published sizes.
#include <ftune/data/readers.hpp>
#include <ftune/data/squad.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "catch.hpp"

#ifndef FTUNE_DATA_DIR
#error "FTUNE_DATA_DIR must name the data directory"
#endif

namespace {
std::filesystem::path write(const std::string& name, const std::string& text) {
    const auto p = std::filesystem::temp_directory_path() / ("ftune_test_data_" + name);
    std::ofstream(p, std::ios::binary) << text;
    return p;
}
std::string error_of(const std::filesystem::path& p) {
    try {
        ftune::data::read_table(p);
    } catch (const ftune::error& e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST_CASE("read_table: CSV quoting, embedded newlines, CRLF; TSV; pairs", "[unit][data]") {
    const auto csv = write("a.csv",
                           "text,category\r\n"
                           "plain text,card\r\n"
                           "\"with, comma and \"\"quotes\"\"\",\"top up\"\r\n"
                           "\"two\r\nlines\",card\r\n"
                           "last row without newline,other");
    const auto d = ftune::data::read_table(csv);
    REQUIRE(d.rows.size() == 4);
    CHECK_FALSE(d.pairs);
    CHECK(d.rows[0].text == "plain text");
    CHECK(d.rows[1].text == "with, comma and \"quotes\"");
    CHECK(d.rows[1].label == "top up");
    CHECK(d.rows[2].text == "two\nlines");
    CHECK(d.rows[2].line == 4);
    CHECK(d.rows[3].line == 6);  // the quoted newline moved it down one line
    CHECK(d.rows[3].label == "other");

    const auto tsv = write("b.tsv", "label\ttext_a\ttext_b\n1\tfirst\tsecond\n0\ta \"quote\t\"b\n");
    const auto p = ftune::data::read_table(tsv);
    REQUIRE(p.rows.size() == 2);
    CHECK(p.pairs);
    CHECK(p.rows[0].text_pair == "second");
    CHECK(p.rows[1].text == "a \"quote");  // TSV has no quoting
}

TEST_CASE("read_table and read_conll: malformed input names file:line", "[unit][data]") {
    CHECK(
        error_of(write("c.csv", "text,label\nok,1\nnot,ok,1\n")).find("ftune_test_data_c.csv:3") !=
        std::string::npos);
    CHECK(error_of(write("d.csv", "text,label\nok,1\n\"open,1\n")).find("never closed") !=
          std::string::npos);
    CHECK(error_of(write("e.csv", "words,label\nok,1\n")).find("no text column") !=
          std::string::npos);
    CHECK(error_of(write("f.csv", "text,stars\nok,1\n")).find("no label column") !=
          std::string::npos);
    CHECK(error_of(write("g.csv", "text,label\nok,\n")).find(":2: the label is empty") !=
          std::string::npos);
    CHECK(error_of("/nonexistent.csv").find("cannot open") != std::string::npos);
    const auto bad = write("h.conll", "-DOCSTART- O\n\nEU B-ORG\nrejects\n");
    CHECK_THROWS_WITH(ftune::data::read_conll(bad), Catch::Contains("ftune_test_data_h.conll:4"));
}

TEST_CASE("read_conll: sentences, -DOCSTART-, the last column as the tag", "[unit][data]") {
    const auto p = write("i.conll",
                         "-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\n"
                         "\r\n\r\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER");
    const auto s = ftune::data::read_conll(p);
    REQUIRE(s.size() == 2);
    CHECK(s[0].tokens == std::vector<std::string>{"EU", "rejects"});
    CHECK(s[0].tags == std::vector<std::string>{"B-ORG", "O"});
    CHECK(s[0].line == 3);
    CHECK(s[1].tags == std::vector<std::string>{"B-PER", "I-PER"});
}

TEST_CASE("read_phrasebank: sentence@label lines, Latin-1 decoded to UTF-8", "[unit][data]") {
    const auto p =
        write("j.txt", "Caf\xe9 sales rose 5 % .@positive\r\n\nemail a@b.c fell .@negative");
    const auto d = ftune::data::read_phrasebank(p);
    REQUIRE(d.rows.size() == 2);
    CHECK(d.rows[0].text == "Caf\xc3\xa9 sales rose 5 % .");
    CHECK(d.rows[0].label == "positive");
    CHECK(d.rows[1].text == "email a@b.c fell .");  // the last '@' separates
    CHECK(d.rows[1].label == "negative");
    CHECK(d.rows[1].line == 3);
    CHECK(ftune::data::latin1_to_utf8("\xff\x41") ==
          "\xc3\xbf"
          "A");
    CHECK_THROWS_WITH(ftune::data::read_phrasebank(write("k.txt", "ok .@neutral\nno label\n")),
                      Catch::Contains("ftune_test_data_k.txt:2: expected `sentence@label`"));
    CHECK_THROWS_WITH(ftune::data::read_phrasebank(write("l.txt", "empty label .@\n")),
                      Catch::Contains("ftune_test_data_l.txt:1"));
    // a label of spaces, or no sentence before the '@' (found by fuzz_table)
    CHECK_THROWS_WITH(ftune::data::parse_phrasebank("ok .@neutral\nblank label .@ \t\n", "p.txt"),
                      Catch::Contains("p.txt:2: expected `sentence@label`"));
    CHECK_THROWS_WITH(ftune::data::parse_phrasebank("  @neutral\n", "p.txt"),
                      Catch::Contains("p.txt:1"));
}

TEST_CASE("readers: the real data sets with their published sizes", "[data]") {
    const std::filesystem::path dir = FTUNE_DATA_DIR;
    const auto sst = ftune::data::read_table(dir / "sst2" / "dev.tsv");
    CHECK(sst.rows.size() == 872);
    const auto bank = ftune::data::read_table(dir / "banking77" / "train.csv");
    CHECK(bank.rows.size() == 10003);
    std::set<std::string> intents;
    for (const auto& r : bank.rows) intents.insert(r.label);
    CHECK(intents.size() == 77);
    CHECK(ftune::data::read_table(dir / "banking77" / "test.csv").rows.size() == 3080);
    CHECK(ftune::data::read_conll(dir / "conll2003" / "train.txt").size() == 14041);
    CHECK(ftune::data::read_conll(dir / "conll2003" / "valid.txt").size() == 3250);
    CHECK(ftune::data::read_conll(dir / "conll2003" / "test.txt").size() == 3453);
    const auto chn = ftune::data::read_table(dir / "chnsenticorp" / "test.tsv");
    CHECK(chn.rows.size() == 1200);
    std::map<std::string, std::size_t> polarity;  // line 419's label is written "    0"
    for (const auto& r : chn.rows) ++polarity[r.label];
    CHECK(polarity == std::map<std::string, std::size_t>{{"0", 598}, {"1", 602}});
    const auto fpb =
        ftune::data::read_phrasebank(dir / "financial_phrasebank" / "Sentences_AllAgree.txt");
    std::map<std::string, std::size_t> sentiment;
    for (const auto& r : fpb.rows) ++sentiment[r.label];
    CHECK(fpb.rows.size() == 2264);
    CHECK(sentiment == std::map<std::string, std::size_t>{
                           {"negative", 303}, {"neutral", 1391}, {"positive", 570}});
}

TEST_CASE("parse_squad: answers inside their context; bad entries name their JSON path",
          "[unit][data]") {
    using ftune::data::parse_squad;
    const auto doc = [](const std::string& answers) {
        return R"({"data": [{"paragraphs": [{"context": "Café in Berlin.", "qas": [{"id": "q1",
            "question": "Where?", "answers": )" +
               answers + "}]}]}]}";
    };
    const auto ok = parse_squad(doc(R"([{"text": "Berlin", "answer_start": 8}])"), "s.json");
    REQUIRE(ok.size() == 1);
    CHECK(ok[0].answers[0].char_start == 8);  // code points: é is one
    CHECK_THROWS_WITH(parse_squad(doc(R"([{"text": "Berlin.", "answer_start": 9}])"), "s.json"),
                      Catch::Contains("s.json: data[0].paragraphs[0].qas[0]") &&
                          Catch::Contains("past the context"));
    // a start so large that start + length wraps around (found reviewing the fuzz target)
    CHECK_THROWS_WITH(
        parse_squad(doc(R"([{"text": "B", "answer_start": 18446744073709551615}])"), "s.json"),
        Catch::Contains("past the context"));
    CHECK_THROWS_WITH(
        parse_squad(R"({"data": [{"paragraphs": [{"context": "c", "qas": [{}]}]}]})", "s.json"),
        Catch::Contains("no \"question\""));
    CHECK_THROWS_WITH(parse_squad("[", "s.json"), Catch::Contains("s.json: not valid JSON"));
}
