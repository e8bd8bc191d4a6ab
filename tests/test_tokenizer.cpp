// Tokenizer parity with Hugging Face: ids of the slow BertTokenizer, offsets and word ids of the
// fast one where both agree, for the sets written by tests/reference/tokenizer_parity.py. The
// data-set texts are read from FTUNE_DATA_DIR; the hard cases travel with their fixtures.
#include <ftune/tokenize.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif
#ifndef FTUNE_DATA_DIR
#error "FTUNE_DATA_DIR must name the data directory"
#endif

namespace {

using json = nlohmann::json;

std::vector<std::string> read_lines(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
    return lines;
}

// The first TSV column of every row after the header (SST-2: sentence).
std::vector<std::string> tsv_first_column(const std::string& path) {
    std::vector<std::string> out;
    const auto lines = read_lines(path);
    for (std::size_t i = 1; i < lines.size(); ++i)
        out.push_back(lines[i].substr(0, lines[i].find('\t')));
    return out;
}

// Counts of texts compared and of mismatches, per set.
struct outcome {
    std::size_t texts = 0, id_mismatch = 0, offsets_compared = 0, offset_mismatch = 0;
};

outcome check_set(const std::string& name) {
    const auto lines =
        read_lines(std::string(FTUNE_REFERENCE_DIR) + "/tokenizer_" + name + ".jsonl");
    REQUIRE(lines.size() > 1);
    const json meta = json::parse(lines[0]);
    const std::string data = FTUNE_DATA_DIR;
    std::vector<std::string> texts;
    if (meta.contains("texts"))
        texts = meta["texts"].get<std::vector<std::string>>();
    else if (name == "sst2_dev")
        texts = tsv_first_column(data + "/sst2/dev.tsv");
    REQUIRE(texts.size() == lines.size() - 1);
    ftune::text::bert_options options;
    options.lowercase = meta["lowercase"].get<bool>();
    const auto tok = ftune::text::bert_tokenizer::from_vocab(
        data + "/" + meta["vocab"].get<std::string>() + "/vocab.txt", options);
    outcome o;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        const json want = json::parse(lines[i + 1]);
        const auto enc = tok.encode(texts[i]);
        ++o.texts;
        const auto ids = want["ids"].get<std::vector<std::int32_t>>();
        if (enc.ids != ids) {
            ++o.id_mismatch;
            std::ostringstream got;
            for (auto id : enc.ids) got << id << ' ';
            UNSCOPED_INFO(name << " text " << i << " [" << texts[i] << "]: ids " << got.str()
                               << " want " << want["ids"].dump());
            continue;
        }
        if (!want.contains("offsets")) continue;
        ++o.offsets_compared;
        bool same = true;
        for (std::size_t k = 0; k < ids.size(); ++k) {
            const auto& off = want["offsets"][k];
            const auto& t = enc.tokens[k];
            const std::int32_t w = want["words"][k].is_null() ? -1 : want["words"][k].get<int>();
            same = same && t.char_begin == off[0].get<std::uint32_t>() &&
                   t.char_end == off[1].get<std::uint32_t>() && t.word == w;
        }
        if (!same) {
            ++o.offset_mismatch;
            std::ostringstream got;
            for (const auto& t : enc.tokens)
                got << '[' << t.char_begin << ',' << t.char_end << ']' << t.word << ' ';
            UNSCOPED_INFO(name << " text " << i << " [" << texts[i] << "]: offsets/words "
                               << got.str() << " want " << want["offsets"].dump() << " "
                               << want["words"].dump());
        }
    }
    return o;
}

}  // namespace

TEST_CASE("tokenizer parity with Hugging Face BERT tokenizers", "[parity][tokenizer]") {
    for (const char* set : {"hard_uncased", "hard_cased", "hard_chinese", "sst2_dev"}) {
        const auto o = check_set(set);
        INFO(set << ": " << o.texts << " texts, " << o.id_mismatch << " id mismatches, "
                 << o.offset_mismatch << " of " << o.offsets_compared << " offset mismatches");
        CHECK(o.id_mismatch == 0);
        CHECK(o.offset_mismatch == 0);
    }
}

TEST_CASE("tokenizer: byte offsets, invalid UTF-8, pairs, truncation, padding", "[tokenizer]") {
    const auto tok = ftune::text::bert_tokenizer::from_vocab(std::string(FTUNE_DATA_DIR) +
                                                             "/bert-base-uncased/vocab.txt");
    // "café" is 5 bytes: offsets in characters and bytes
    const auto e = tok.encode("Café au lait");
    REQUIRE(e.ids.size() >= 4);
    CHECK(e.tokens[1].char_begin == 0);
    CHECK(e.tokens[1].char_end == 4);
    CHECK(e.tokens[1].byte_end == 5);
    CHECK(tok.vocab().token(e.ids[1]) == "cafe");
    // invalid UTF-8 is dropped like U+FFFD, never a crash
    const std::string bad = "ok \xff\xfe bad \xc3";
    const auto b = tok.encode(bad);
    CHECK(tok.vocab().token(b.ids[1]) == "ok");
    CHECK(tok.vocab().token(b.ids[2]) == "bad");
    CHECK(b.ids.size() == 4);
    // pairs: types 0 then 1; truncation to 8 takes from the longer text first; padding
    const auto p = tok.encode("one two three four five", std::string_view("six seven"), 8, 12);
    CHECK(p.ids.size() == 12);
    CHECK(p.ids[0] == tok.cls_id());
    std::size_t ones = 0, real = 0;
    for (std::size_t i = 0; i < p.ids.size(); ++i)
        ones += p.type_ids[i], real += p.attention_mask[i];
    CHECK(real == 8);
    CHECK(ones == 3);  // "six", "seven", [SEP]
    CHECK(p.ids.back() == tok.pad_id());
    CHECK_THROWS_AS(ftune::text::bert_tokenizer::from_vocab("/nonexistent/vocab.txt"),
                    ftune::error);
}
