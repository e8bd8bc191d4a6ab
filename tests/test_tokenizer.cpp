// Tokenizer parity with Hugging Face: ids of the slow BertTokenizer, offsets and word ids of the
// fast one where both agree, for the sets written by tests/reference/tokenizer_parity.py. The
// data-set texts are read from FTUNE_DATA_DIR; the hard cases travel with their fixtures.
#include <ftune/text.hpp>
#include <ftune/text/tokenizer_json.hpp>

#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif
#ifndef FTUNE_DATA_DIR
#error "FTUNE_DATA_DIR must name the data directory"
#endif

namespace {

using json = nlohmann::json;

// The lines of a file without their LF (and a CR before it), as the reference script reads them;
// .gz files are decompressed.
std::vector<std::string> read_lines(const std::string& path) {
    std::string text;
    if (path.ends_with(".gz")) {
        gzFile f = gzopen(path.c_str(), "rb");
        REQUIRE(f != nullptr);
        char buf[1 << 16];
        for (int n; (n = gzread(f, buf, sizeof buf)) > 0;) text.append(buf, std::size_t(n));
        gzclose(f);
    } else {
        std::ifstream in(path, std::ios::binary);
        REQUIRE(in);
        text.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(start, end - start);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(std::move(line));
        start = end + 1;
    }
    return lines;
}

// Latin-1 bytes as UTF-8.
std::string latin1_to_utf8(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c < 0x80) {
            out += char(c);
        } else {
            out += char(0xC0 | (c >> 6));
            out += char(0x80 | (c & 0x3F));
        }
    }
    return out;
}

// The texts of a data set, extracted exactly as tests/reference/tokenizer_parity.py does.
std::vector<std::string> data_texts(const std::string& set) {
    const std::string data = FTUNE_DATA_DIR;
    std::vector<std::string> out;
    if (set == "sst2_dev") {  // sentence<TAB>label after a header
        const auto lines = read_lines(data + "/sst2/dev.tsv");
        for (std::size_t i = 1; i < lines.size(); ++i)
            out.push_back(lines[i].substr(0, lines[i].find('\t')));
    } else if (set == "chnsenticorp_dev") {  // label<TAB>text_a after a header
        const auto lines = read_lines(data + "/chnsenticorp/dev.tsv");
        for (std::size_t i = 1; i < lines.size(); ++i)
            out.push_back(lines[i].substr(lines[i].find('\t') + 1));
    } else if (set == "financial_phrasebank") {  // sentence@label, Latin-1
        for (const auto& l : read_lines(data + "/financial_phrasebank/Sentences_AllAgree.txt"))
            out.push_back(latin1_to_utf8(l.substr(0, l.rfind('@'))));
    } else if (set == "conll2003_test") {  // first columns joined by spaces, no -DOCSTART-
        std::string cur;
        for (const auto& l : read_lines(data + "/conll2003/test.txt")) {
            if (l.find_first_not_of(" \t") == std::string::npos) {
                if (!cur.empty()) out.push_back(cur);
                cur.clear();
            } else if (!l.starts_with("-DOCSTART-")) {
                if (!cur.empty()) cur += ' ';
                cur += l.substr(0, l.find(' '));
            }
        }
        if (!cur.empty()) out.push_back(cur);
    }
    return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (true) {
        const std::size_t end = s.find(sep, start);
        out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return out;
}

std::vector<std::int32_t> ints(const std::string& s) {
    std::vector<std::int32_t> v;
    for (const auto& t : split(s, ' '))
        if (!t.empty()) v.push_back(std::stoi(t));
    return v;
}

// Counts of texts compared and of mismatches, per set.
struct outcome {
    std::size_t texts = 0, id_mismatch = 0, offsets_compared = 0, offset_mismatch = 0;
};

outcome check_set(const std::string& name) {
    const auto lines =
        read_lines(std::string(FTUNE_REFERENCE_DIR) + "/tokenizer_" + name + ".txt.gz");
    REQUIRE(lines.size() > 1);
    const json meta = json::parse(lines[0]);
    const std::vector<std::string> texts =
        meta.contains("texts") ? meta["texts"].get<std::vector<std::string>>() : data_texts(name);
    REQUIRE(texts.size() == lines.size() - 1);
    ftune::text::bert_options options;
    options.lowercase = meta["lowercase"].get<bool>();
    const auto tok = ftune::text::bert_tokenizer::from_vocab(
        std::string(FTUNE_DATA_DIR) + "/" + meta["vocab"].get<std::string>() + "/vocab.txt",
        options);
    outcome o;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        const auto cols = split(lines[i + 1], '\t');
        REQUIRE(cols.size() == 4);
        const auto enc = tok.encode(texts[i]);
        ++o.texts;
        const auto ids = ints(cols[0]);
        if (enc.ids != ids) {
            ++o.id_mismatch;
            std::ostringstream got;
            for (auto id : enc.ids) got << id << ' ';
            UNSCOPED_INFO(name << " text " << i << " [" << texts[i] << "]: ids " << got.str()
                               << " want " << cols[0]);
            continue;
        }
        if (cols[1] == "-") continue;  // the fast tokenizer disagrees: no offsets to compare
        ++o.offsets_compared;
        const auto offsets = split(cols[1], ' ');
        const auto words = ints(cols[2]);
        bool same = offsets.size() == ids.size() && words.size() == ids.size();
        for (std::size_t k = 0; same && k < ids.size(); ++k) {
            const auto& t = enc.tokens[k];
            same = offsets[k] == std::to_string(t.char_begin) + ":" + std::to_string(t.char_end) &&
                   words[k] == t.word;
        }
        if (!same) {
            ++o.offset_mismatch;
            std::ostringstream got;
            for (const auto& t : enc.tokens)
                got << t.char_begin << ':' << t.char_end << '/' << t.word << ' ';
            UNSCOPED_INFO(name << " text " << i << " [" << texts[i] << "]: offsets/words "
                               << got.str() << " want " << cols[1] << " | " << cols[2]);
        }
    }
    return o;
}

}  // namespace

TEST_CASE("tokenizer parity with Hugging Face BERT tokenizers", "[parity][tokenizer]") {
    for (const char* set : {"hard_uncased", "hard_cased", "hard_chinese", "sst2_dev",
                            "conll2003_test", "chnsenticorp_dev", "financial_phrasebank"}) {
        const auto o = check_set(set);
        INFO(set << ": " << o.texts << " texts, " << o.id_mismatch << " id mismatches, "
                 << o.offset_mismatch << " of " << o.offsets_compared << " offset mismatches");
        CHECK(o.id_mismatch == 0);
        CHECK(o.offset_mismatch == 0);
    }
}

TEST_CASE("pre-split words: ids and word ids as Transformers' is_split_into_words",
          "[parity][tokenizer]") {
    for (const char* set : {"hard_cased", "hard_uncased", "conll2003_test"}) {
        const auto lines =
            read_lines(std::string(FTUNE_REFERENCE_DIR) + "/tokenizer_words_" + set + ".txt.gz");
        REQUIRE(lines.size() > 1);
        const json meta = json::parse(lines[0]);
        const std::vector<std::string> texts = meta.contains("texts")
                                                   ? meta["texts"].get<std::vector<std::string>>()
                                                   : data_texts(set);
        REQUIRE(texts.size() == lines.size() - 1);
        ftune::text::bert_options options;
        options.lowercase = meta["lowercase"].get<bool>();
        const auto tok = ftune::text::bert_tokenizer::from_vocab(
            std::string(FTUNE_DATA_DIR) + "/" + meta["vocab"].get<std::string>() + "/vocab.txt",
            options);
        std::size_t id_mismatch = 0, word_mismatch = 0, compared = 0;
        for (std::size_t i = 0; i < texts.size(); ++i) {
            const auto cols = split(lines[i + 1], '\t');
            REQUIRE(cols.size() == 2);
            const auto enc = tok.encode(texts[i], std::nullopt, {.split_into_words = true});
            if (enc.ids != ints(cols[0])) {
                ++id_mismatch;
                UNSCOPED_INFO(set << " text " << i << " [" << texts[i] << "]: ids differ");
                continue;
            }
            if (cols[1] == "-") continue;  // the fast tokenizer disagrees: no word ids
            ++compared;
            const auto words = ints(cols[1]);
            bool same = words.size() == enc.ids.size();
            for (std::size_t k = 0; same && k < words.size(); ++k)
                same = words[k] == enc.tokens[k].word;
            if (!same) {
                ++word_mismatch;
                UNSCOPED_INFO(set << " text " << i << " [" << texts[i] << "]: word ids differ");
            }
            // offsets point into the text: every piece's bytes are inside its word's span
            for (const auto& t : enc.tokens)
                if (t.word >= 0) REQUIRE(t.byte_end <= texts[i].size());
        }
        INFO(set << ": " << texts.size() << " texts, " << id_mismatch << " id mismatches, "
                 << word_mismatch << " of " << compared << " word-id mismatches");
        CHECK(id_mismatch == 0);
        CHECK(word_mismatch == 0);
        CHECK(compared > 0);
    }
    // the words of a line, their offsets in it, and a word of control characters only
    const auto tok = ftune::text::bert_tokenizer::from_vocab(std::string(FTUNE_DATA_DIR) +
                                                             "/bert-base-cased/vocab.txt");
    const std::string line = "AL-AIN ,\u00a0United  Arab\tEmirates \x07 1996-12-06";
    std::vector<ftune::text::token_info> pieces;
    REQUIRE(tok.tokenize_words(line, pieces) == 7);
    std::vector<std::pair<std::size_t, std::size_t>> span(7, {line.size(), 0});  // bytes
    for (const auto& t : pieces) {
        REQUIRE(t.word >= 0);
        REQUIRE(t.word < 7);
        auto& [b, e] = span[std::size_t(t.word)];
        b = std::min<std::size_t>(b, t.byte_begin), e = std::max<std::size_t>(e, t.byte_end);
    }
    std::vector<std::string> got;
    for (auto [b, e] : span) got.push_back(b < e ? line.substr(b, e - b) : "");
    CHECK(got ==
          std::vector<std::string>{"AL-AIN", ",", "United", "Arab", "Emirates", "", "1996-12-06"});
    CHECK(pieces.front().char_begin == 0);
    CHECK(pieces.back().char_end == 43);  // code points: the no-break space is one
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

TEST_CASE("tokenizer: truncation strategies, padding modes and batches as Hugging Face",
          "[tokenizer]") {
    using ftune::text::encode_options;
    using ftune::text::padding;
    using ftune::text::truncation;
    const auto tok = ftune::text::bert_tokenizer::from_vocab(std::string(FTUNE_DATA_DIR) +
                                                             "/bert-base-uncased/vocab.txt");
    // expected ids from Transformers 5.24 (BertTokenizer, fast; the slow one agrees on ids)
    const std::vector<std::int32_t> want{101, 2028, 2048, 102, 2698, 2809, 102};
    for (auto s : {truncation::longest_first, truncation::only_first}) {
        const auto e = tok.encode("one two three four five six", std::string_view("seven eight"),
                                  encode_options{.max_length = 7, .strategy = s});
        CHECK(e.ids == want);
        CHECK(e.type_ids == std::vector<std::int32_t>{0, 0, 0, 0, 1, 1, 1});
    }
    // only_second cannot remove 5 tokens from a 2-token text: an error (the fast tokenizer
    // raises too), not an over-long encoding
    CHECK_THROWS_AS(
        tok.encode("one two three four five six", std::string_view("seven eight"),
                   encode_options{.max_length = 7, .strategy = truncation::only_second}),
        ftune::error);
    // longest_first on a tie takes from the second text: (4, 4) - 3 -> (3, 2), as the slow
    // tokenizer (Transformers 5.24's BertTokenizerLegacy); the fast one gives (2, 3)
    const auto tie =
        tok.encode("a b c d", std::string_view("e f g h"), encode_options{.max_length = 8});
    CHECK(tie.ids == std::vector<std::int32_t>{101, 1037, 1038, 1039, 102, 1041, 1042, 102});
    // padding: to max_length, and to the longest of a batch
    const auto padded = tok.encode("hello", std::nullopt,
                                   encode_options{.max_length = 6, .pad = padding::max_length});
    CHECK(padded.ids == std::vector<std::int32_t>{101, 7592, 102, 0, 0, 0});
    CHECK(padded.attention_mask == std::vector<std::int32_t>{1, 1, 1, 0, 0, 0});
    const auto batch =
        tok.encode_batch({"hello", "hello world !"}, {}, encode_options{.pad = padding::longest});
    REQUIRE(batch.size() == 2);
    CHECK(batch[0].ids == std::vector<std::int32_t>{101, 7592, 102, 0, 0});
    CHECK(batch[1].ids == std::vector<std::int32_t>{101, 7592, 2088, 999, 102});
    CHECK_THROWS_AS(tok.encode_batch({"a", "b"}, {"c"}), ftune::error);
}

TEST_CASE("tokenizer: the README's calls compile and run", "[tokenizer]") {
    auto tok = ftune::text::bert_tokenizer::from_vocab(
        std::string(FTUNE_DATA_DIR) + "/bert-base-uncased/vocab.txt", {.lowercase = true});
    auto e = tok.encode("Naïve café?", std::string_view("Second text"),
                        {.max_length = 128,
                         .strategy = ftune::text::truncation::longest_first,
                         .pad = ftune::text::padding::max_length});
    CHECK(e.ids.size() == 128);
    auto batch =
        tok.encode_batch({"first", "second text"}, {}, {.pad = ftune::text::padding::longest});
    CHECK(batch[0].ids.size() == batch[1].ids.size());
}

TEST_CASE("tokenizer.json: vocabulary and BertNormalizer options, ids as tokenizers gives",
          "[parity][tokenizer]") {
    const std::string dir = FTUNE_REFERENCE_DIR;
    // first 4,000 bert-base-cased tokens, lowercase off, accents stripped (saved by tokenizers)
    const auto tok = ftune::text::load_tokenizer_json(dir + "/tokenizer_small.json");
    CHECK_FALSE(tok.options().lowercase);
    CHECK(tok.options().strip_accents == std::optional<bool>(true));
    CHECK(tok.vocab().size() == 4000);
    const auto lines = read_lines(dir + "/tokenizer_json_sst2_dev.txt.gz");
    const auto texts = data_texts("sst2_dev");
    REQUIRE(texts.size() == lines.size() - 1);
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < texts.size(); ++i)
        if (tok.encode(texts[i]).ids != ints(lines[i + 1])) {
            ++mismatches;
            UNSCOPED_INFO("text " << i << " [" << texts[i] << "] want " << lines[i + 1]);
        }
    CHECK(mismatches == 0);
    CHECK_THROWS_AS(ftune::text::load_tokenizer_json(dir + "/bert_parity.safetensors"),
                    ftune::error);
}
