// Byte-level BPE against Hugging Face `tokenizers`: two tokenizers trained by it on SST-2
// (tests/reference/bpe_parity.py: GPT-2's pre-tokenizer, and SmolLM2's Digits + ByteLevel with
// ChatML's special tokens) give the same ids as `tokenizers` on hard cases and on every SST-2 dev
// sentence, and decode back to the same text; the same tokenizer read from GGUF metadata
// (tests/reference/bpe_gguf.py) does too.
#include <ftune/io/gguf_llama.hpp>
#include <ftune/text/tokenizer_json.hpp>

#include <zlib.h>

#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif
#ifndef FTUNE_DATA_DIR
#error "FTUNE_DATA_DIR must name the data sets"
#endif

namespace {
const std::string dir = std::string(FTUNE_REFERENCE_DIR) + "/bpe";

nlohmann::json read_gz_json(const std::string& path) {
    gzFile f = gzopen(path.c_str(), "rb");
    REQUIRE(f != nullptr);
    std::string text;
    char buf[1 << 16];
    for (int n; (n = gzread(f, buf, sizeof buf)) > 0;) text.append(buf, std::size_t(n));
    gzclose(f);
    return nlohmann::json::parse(text);
}

// SST-2 dev's sentences as the reference script reads them (csv, tab, no quoting, a header)
std::vector<std::string> sst2_dev() {
    std::ifstream in(std::string(FTUNE_DATA_DIR) + "/sst2/dev.tsv", std::ios::binary);
    REQUIRE(in);
    std::vector<std::string> out;
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        out.push_back(line.substr(0, line.find('\t')));
    }
    return out;
}
}  // namespace

TEST_CASE(
    "byte-level BPE: ids and decoded text equal to tokenizers' (GPT-2's and SmolLM2's "
    "pre-tokenizers, special tokens), hard cases and SST-2 dev",
    "[parity][text]") {
    const auto want = read_gz_json(dir + "/expected.json.gz");
    std::vector<std::string> texts = want["hard"].get<std::vector<std::string>>();
    const std::size_t hard = texts.size();
    const auto dev = sst2_dev();
    REQUIRE(dev.size() == 872);
    texts.insert(texts.end(), dev.begin(), dev.end());
    for (const char* name : {"gpt2", "smollm"}) {
        INFO(name);
        const auto tok = ftune::text::load_bpe_tokenizer_json(dir + "/" + name + ".json");
        const auto& ids = want[name]["ids"];
        REQUIRE(ids.size() == texts.size());
        std::size_t differ = 0, offsets_differ = 0;
        for (std::size_t i = 0; i < texts.size(); ++i) {
            const auto got = tok.encode(texts[i]);
            const auto expected = ids[i].get<std::vector<std::int32_t>>();
            if (got != expected) {
                if (differ < 5) UNSCOPED_INFO("text " << i << ": \"" << texts[i] << "\"");
                ++differ;
            }
            if (i < hard) CHECK(tok.decode(got) == want[name]["decoded"][i].get<std::string>());
            // offsets in code points, as offset_mapping; the byte offsets cover the same
            // characters
            const auto info = tok.encode_with_offsets(texts[i]);
            const auto& offsets = want[name]["offsets"][i];
            bool same = info.size() == offsets.size();
            const auto chars = ftune::text::detail::decode(texts[i]);
            for (std::size_t k = 0; same && k < info.size(); ++k) {
                const auto& t = info[k];
                same = t.id == expected[k] && t.char_begin == offsets[k][0].get<std::uint32_t>() &&
                       t.char_end == offsets[k][1].get<std::uint32_t>() &&
                       t.char_end > t.char_begin && t.byte_begin == chars[t.char_begin].begin &&
                       t.byte_end == chars[t.char_end - 1].end;
            }
            if (!same) {
                if (offsets_differ < 5)
                    UNSCOPED_INFO("offsets of text " << i << ": \"" << texts[i] << "\"");
                ++offsets_differ;
            }
        }
        CHECK(differ == 0);
        CHECK(offsets_differ == 0);
    }
}

TEST_CASE(
    "byte-level BPE: a ByteLevel post-processor with trim_offsets trims the offsets as "
    "tokenizers does",
    "[parity][text]") {
    const auto want = read_gz_json(dir + "/expected.json.gz");
    std::vector<std::string> texts = want["hard"].get<std::vector<std::string>>();
    const auto dev = sst2_dev();
    texts.insert(texts.end(), dev.begin(), dev.end());
    // gpt2.json with GPT-2's own post-processor, trim_offsets on
    auto j = nlohmann::json::parse(std::ifstream(dir + "/gpt2.json"));
    j["post_processor"] = {{"type", "ByteLevel"},
                           {"add_prefix_space", true},
                           {"trim_offsets", true},
                           {"use_regex", true}};
    const std::string path = "bpe_trim_offsets.json";
    std::ofstream(path) << j.dump();
    const auto tok = ftune::text::load_bpe_tokenizer_json(path);
    const auto& offsets = want["gpt2_trim_offsets"];
    REQUIRE(offsets.size() == texts.size());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        const auto info = tok.encode_with_offsets(texts[i]);
        bool same = info.size() == offsets[i].size();
        for (std::size_t k = 0; same && k < info.size(); ++k)
            same = info[k].char_begin == offsets[i][k][0].get<std::uint32_t>() &&
                   info[k].char_end == offsets[i][k][1].get<std::uint32_t>() &&
                   info[k].byte_end - info[k].byte_begin >= info[k].char_end - info[k].char_begin;
        if (!same && differ++ < 5) UNSCOPED_INFO("text " << i << ": \"" << texts[i] << "\"");
    }
    CHECK(differ == 0);
    // a post-processor ftune does not run is refused by name
    j["post_processor"] = {{"type", "RobertaProcessing"}};
    std::ofstream(path) << j.dump();
    CHECK_THROWS_WITH(
        ftune::text::load_bpe_tokenizer_json(path),
        Catch::Contains("post_processor.type") && Catch::Contains("RobertaProcessing"));
    std::remove(path.c_str());
}

TEST_CASE(
    "byte-level BPE: invalid UTF-8 keeps its bytes (each a token of its byte); decode_bytes "
    "gives them back, decode replaces them with U+FFFD as tokenizers' decode",
    "[text]") {
    const auto tok = ftune::text::load_bpe_tokenizer_json(dir + "/gpt2.json");
    // the bytes, and the text tokenizers' decode (= Python's bytes.decode("utf-8", "replace"))
    // gives for their ids: one U+FFFD per maximal invalid subsequence
    const std::pair<std::string, std::string> cases[] = {
        {"ab\xff\xfe cd", "ab\uFFFD\uFFFD cd"},
        {"\xe2\x82 x", "\uFFFD x"},
        {"\xc3", "\uFFFD"},
        {"ok \xf0\x9f\x98", "ok \uFFFD"},
        {"\xef\xef\xefis", "\uFFFD\uFFFD\uFFFDis"},
        {"\xf4\x90\x80\x80!", "\uFFFD\uFFFD\uFFFD\uFFFD!"},
        {"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},
        {"\xe0\x80\xaf", "\uFFFD\uFFFD\uFFFD"}};
    for (const auto& [text, replaced] : cases) {
        const auto ids = tok.encode(text);
        CHECK(tok.decode_bytes(ids) == text);
        CHECK(tok.decode(ids) == replaced);
        // the offsets cover every byte once, in order, one code point per invalid byte
        const auto info = tok.encode_with_offsets(text);
        REQUIRE(info.size() == ids.size());
        std::uint32_t end = 0;
        for (const auto& t : info) {
            CHECK(t.byte_begin == end);
            end = t.byte_end;
        }
        CHECK(end == text.size());
    }
}

TEST_CASE(
    "byte-level BPE from GGUF metadata (llama.cpp's smollm pre-tokenizer) tokenizes as "
    "tokenizers does",
    "[parity][text][io]") {
    // the smollm tokenizer above, written as llama.cpp writes SmolLM2's (bpe_gguf.py)
    const auto want = read_gz_json(dir + "/expected.json.gz");
    std::vector<std::string> texts = want["hard"].get<std::vector<std::string>>();
    const auto dev = sst2_dev();
    texts.insert(texts.end(), dev.begin(), dev.end());
    const ftune::io::gguf_file f(dir + "/smollm.gguf");
    const auto tok = ftune::io::bpe_tokenizer_from_gguf(f);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < texts.size(); ++i)
        differ += tok.encode(texts[i]) != want["smollm"]["ids"][i].get<std::vector<std::int32_t>>();
    CHECK(differ == 0);
    // a tokenizer of another kind is refused by name
    CHECK_THROWS_WITH(ftune::io::bpe_tokenizer_from_gguf(ftune::io::gguf_file(
                          std::string(FTUNE_REFERENCE_DIR) + "/gguf/types.gguf")),
                      Catch::Contains("tokenizer.ggml.model"));
}

TEST_CASE(
    "byte-level BPE: bpe_tokenizer_json writes a tokenizer.json that reads back to the same ids "
    "(the GGUF's tokenizer and a trimming post-processor)",
    "[text][io]") {
    const auto want = read_gz_json(dir + "/expected.json.gz");
    std::vector<std::string> texts = want["hard"].get<std::vector<std::string>>();
    const auto dev = sst2_dev();
    texts.insert(texts.end(), dev.begin(), dev.end());
    // SmolLM2's configuration from GGUF metadata (written as Transformers' tokenizers would
    // read it: tests/reference/bpe_parity.py --roundtrip build/tests/bpe_roundtrip.json)
    const auto from_gguf =
        ftune::io::bpe_tokenizer_from_gguf(ftune::io::gguf_file(dir + "/smollm.gguf"));
    const std::string path = "bpe_roundtrip.json";
    std::ofstream(path) << ftune::text::bpe_tokenizer_json(from_gguf).dump(2);
    const auto back = ftune::text::load_bpe_tokenizer_json(path);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < texts.size(); ++i)
        differ +=
            back.encode(texts[i]) != want["smollm"]["ids"][i].get<std::vector<std::int32_t>>();
    CHECK(differ == 0);
    CHECK(back.merges() == from_gguf.merges());
    CHECK(back.size() == from_gguf.size());
    // GPT-2's, with a ByteLevel post-processor that trims offsets
    auto j = nlohmann::json::parse(std::ifstream(dir + "/gpt2.json"));
    j["post_processor"] = {
        {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}};
    std::ofstream("bpe_trim.json") << j.dump();
    const auto trim = ftune::text::load_bpe_tokenizer_json("bpe_trim.json");
    std::ofstream("bpe_trim2.json") << ftune::text::bpe_tokenizer_json(trim).dump();
    const auto trim2 = ftune::text::load_bpe_tokenizer_json("bpe_trim2.json");
    for (std::size_t i = 0; i < 40; ++i) {
        const auto a = trim.encode_with_offsets(texts[i]), b = trim2.encode_with_offsets(texts[i]);
        REQUIRE(a.size() == b.size());
        for (std::size_t k = 0; k < a.size(); ++k)
            CHECK((a[k].id == b[k].id && a[k].char_begin == b[k].char_begin &&
                   a[k].char_end == b[k].char_end));
    }
    std::remove("bpe_trim.json");
    std::remove("bpe_trim2.json");
}

TEST_CASE("byte-level BPE: what tokenizer.json ftune does not read is an error naming it",
          "[text]") {
    const std::string path = "bpe_bad_tokenizer.json";
    auto with = [&](const std::string& text) {
        std::ofstream(path) << text;
        return path;
    };
    CHECK_THROWS_WITH(ftune::text::load_bpe_tokenizer_json(
                          with(R"({"model": {"type": "WordPiece", "vocab": {}}})")),
                      Catch::Contains("model.type"));
    CHECK_THROWS_WITH(
        ftune::text::load_bpe_tokenizer_json(with(
            R"({"model": {"type": "BPE", "vocab": {}}, "pre_tokenizer": {"type": "Metaspace"}})")),
        Catch::Contains("Metaspace"));
    CHECK_THROWS_WITH(ftune::text::load_bpe_tokenizer_json(
                          with(R"({"model": {"type": "BPE", "vocab": {}, "merges": ["ab"]}})")),
                      Catch::Contains("not a pair"));
    CHECK_THROWS_WITH(
        ftune::text::load_bpe_tokenizer_json(with(
            R"({"model": {"type": "BPE", "vocab": {}, "merges": [], "ignore_merges": true}})")),
        Catch::Contains("ignore_merges"));
    CHECK_THROWS_AS(ftune::text::load_bpe_tokenizer_json(with("{")), ftune::error);
    CHECK_THROWS_AS(ftune::text::load_bpe_tokenizer_json("/nonexistent/tokenizer.json"),
                    ftune::error);
    std::remove(path.c_str());
}

#ifdef FTUNE_CLI  // built with the tool (FTUNE_BUILD_TOOLS)
TEST_CASE("ftune tokenize --bpe: the ids of each line, as tokenizers gives them", "[text][cli]") {
    const auto want = read_gz_json(dir + "/expected.json.gz");
    const auto hard = want["hard"].get<std::vector<std::string>>();
    const std::string input = "bpe_cli_input.txt";
    std::vector<std::size_t> used;  // the single-line hard cases
    {
        std::ofstream out(input, std::ios::binary);
        for (std::size_t i = 0; i < hard.size(); ++i)
            if (hard[i].find_first_of("\r\n") == std::string::npos) {
                out << hard[i] << "\n";
                used.push_back(i);
            }
    }
    const std::string cmd =
        std::string(FTUNE_CLI) + " tokenize --bpe " + dir + "/smollm.json < " + input;
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p);
    std::string out;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    REQUIRE(pclose(p) == 0);
    std::vector<std::string> lines;
    for (std::size_t s = 0, e; s < out.size(); s = e + 1) {
        e = out.find('\n', s);
        lines.push_back(out.substr(s, e - s));
    }
    REQUIRE(lines.size() == used.size());
    for (std::size_t k = 0; k < used.size(); ++k) {
        std::string expected;
        for (const auto& id : want["smollm"]["ids"][used[k]]) {
            if (!expected.empty()) expected += ' ';
            expected += std::to_string(id.get<int>());
        }
        CHECK(lines[k] == expected);
    }
}
#endif  // FTUNE_CLI

TEST_CASE("byte-level BPE: an empty special token is ignored, not matched forever", "[text]") {
    const ftune::text::bpe_tokenizer tok({{"a", 0}, {"b", 1}}, {}, {{"", 2}, {"<s>", 3}});
    CHECK(tok.encode("a<s>b") == std::vector<std::int32_t>{0, 3, 1});
    CHECK(tok.decode({0, 3, 1}) == "a<s>b");
}

TEST_CASE("byte-level BPE: one tokenizer encodes on several threads at once as on one", "[text]") {
    const auto tok = ftune::text::load_bpe_tokenizer_json(dir + "/smollm.json");
    const auto dev = sst2_dev();
    std::vector<std::vector<std::int32_t>> alone;
    for (const auto& t : dev) alone.push_back(tok.encode(t));
    const auto fresh = ftune::text::load_bpe_tokenizer_json(dir + "/smollm.json");  // cold cache
    std::vector<std::vector<std::int32_t>> a(dev.size()), b(dev.size());
    std::thread t1([&] {
        for (std::size_t i = 0; i < dev.size(); ++i) a[i] = fresh.encode(dev[i]);
    });
    std::thread t2([&] {
        for (std::size_t i = dev.size(); i-- > 0;) b[i] = fresh.encode(dev[i]);
    });
    t1.join();
    t2.join();
    CHECK(a == alone);
    CHECK(b == alone);
}
