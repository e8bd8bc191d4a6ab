// text::bert_tokenizer: BERT's WordPiece tokenizer with Hugging Face's semantics (the Python
// BertTokenizer, BertTokenizerLegacy in Transformers 5), with character and byte offsets into the
// original text and word ids (as the fast tokenizer reports them).
//
//   auto tok = ftune::text::bert_tokenizer::from_vocab("vocab.txt", {.lowercase = true});
//   auto enc = tok.encode("Hello, world!");  // enc.ids = [CLS] hello , world ! [SEP]
//
// The pipeline, per text: split out special-token literals ([CLS], [SEP], [PAD], [UNK], [MASK],
// and added ones such as <e1>);
// clean (drop NUL, U+FFFD and control characters, map whitespace to spaces); surround CJK
// ideographs with spaces; NFC; split on whitespace; per word lower-case (Python's str.lower,
// final sigma included) and strip accents (NFD, drop Mn) when lower-casing; split on punctuation
// (Unicode P* and ASCII non-alphanumerics); WordPiece (greedy longest match, "##" continuations,
// [UNK] for unmatchable words and words over 100 characters). Unicode properties come from
// utf8proc. Invalid UTF-8 decodes to U+FFFD, which cleaning drops: never a crash.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <utf8proc.h>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace text {

/// A WordPiece vocabulary: token strings and their ids (the line numbers of vocab.txt).
class vocabulary {
  public:
    /// Reads vocab.txt: one token per line, the 0-based line number is its id (a token listed
    /// twice keeps its last id, as Hugging Face's load_vocab). Throws ftune::error naming the file.
    static vocabulary from_file(const std::filesystem::path& path) {
        std::ifstream in(path, std::ios::binary);
        if (!in)
            throw error(errc::io, path.string(),
                        "cannot open the vocabulary (vocab.txt: one token per line)");
        const std::string text((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
        return from_text(text, path.string());
    }
    /// The vocabulary of vocab.txt's contents (as from_file; the last line needs no line end);
    /// `where` names the file in errors.
    static vocabulary from_text(std::string_view text, const std::string& where) {
        vocabulary v;
        for (std::size_t pos = 0; pos < text.size();) {
            std::size_t end = text.find('\n', pos);
            if (end == std::string_view::npos) end = text.size();
            std::string_view line = text.substr(pos, end - pos);
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            v.add(std::string(line));
            pos = end + 1;
        }
        if (v.tokens_.empty()) throw error(errc::parse, where, "the vocabulary is empty");
        return v;
    }
    /// Appends a token with the next id.
    void add(std::string token) {
        ids_[token] = std::int32_t(tokens_.size());
        tokens_.push_back(std::move(token));
    }
    /// The id of token, if present.
    std::optional<std::int32_t> find(std::string_view token) const {
        const auto it = ids_.find(token);
        if (it == ids_.end()) return std::nullopt;
        return it->second;
    }
    /// The token string of id (throws out_of_range).
    const std::string& token(std::int32_t id) const {
        if (id < 0 || std::size_t(id) >= tokens_.size())
            throw error(
                errc::out_of_range, "vocabulary",
                ftune::detail::cat("token id ", id, " is outside [0, ", tokens_.size(), ")"));
        return tokens_[std::size_t(id)];
    }
    /// Number of lines (ids).
    std::size_t size() const noexcept { return tokens_.size(); }

  private:
    struct hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };
    std::unordered_map<std::string, std::int32_t, hash, std::equal_to<>> ids_;
    std::vector<std::string> tokens_;
};

/// Options of the BERT tokenizer (Hugging Face's BertTokenizer arguments).
struct bert_options {
    bool lowercase = true;                       ///< do_lower_case
    std::optional<bool> strip_accents{};         ///< strip_accents (default: follows lowercase)
    bool chinese_chars = true;                   ///< tokenize_chinese_chars
    std::size_t max_input_chars_per_word = 100;  ///< longer words become [UNK]
    std::string unk = "[UNK]", cls = "[CLS]", sep = "[SEP]", pad = "[PAD]",
                mask = "[MASK]";  ///< special tokens
    /// More special tokens, matched whole in the raw text wherever they occur (Transformers'
    /// additional_special_tokens / extra_special_tokens: entity markers such as "<e1>"); one
    /// missing from the vocabulary gets the next id.
    std::vector<std::string> extra_special_tokens;
};

/// One token of an encoding, with where it came from.
struct token_info {
    std::int32_t id;           ///< vocabulary id
    std::uint32_t char_begin;  ///< first code point in the original text
    std::uint32_t char_end;    ///< one past the last code point (begin == end: special token)
    std::uint32_t byte_begin;  ///< first byte in the original UTF-8 text
    std::uint32_t byte_end;    ///< one past the last byte
    std::int32_t word;         ///< word index in its text (-1: [CLS], [SEP], padding)
};

/// Which text of a pair gives up tokens when the pair is longer than max_length.
enum class truncation {
    longest_first,  ///< one token at a time from the longer (the second on a tie), as Hugging Face
    only_first,     ///< only from the first text
    only_second,    ///< only from the second text
};

/// How encodings are padded.
enum class padding {
    none,        ///< no padding
    longest,     ///< encode_batch: to the longest encoding of the batch
    max_length,  ///< to max_length
};

/// Options of encode and encode_batch (Hugging Face's __call__ arguments).
struct encode_options {
    std::size_t max_length = 0;                       ///< 0: no truncation
    truncation strategy = truncation::longest_first;  ///< who gives up tokens
    padding pad = padding::none;                      ///< padding mode
    /// Words are the whitespace-separated parts of each text (Transformers' is_split_into_words
    /// on text.split()): each is tokenized on its own and all its pieces carry its index, as
    /// token classification labels them; otherwise word ids count the pre-tokenizer's words
    /// (punctuation splits them).
    bool split_into_words = false;
};

/// The result of encoding one text: ids, type ids, attention mask and alignment, all the same
/// length.
struct encoding {
    std::vector<std::int32_t> ids;             ///< token ids, [CLS] first, [SEP] last
    std::vector<std::int32_t> type_ids;        ///< 0 for the first text, 1 for the second
    std::vector<std::int32_t> attention_mask;  ///< 1 for tokens, 0 for padding
    std::vector<token_info> tokens;            ///< offsets and word ids per position
};

namespace detail {

/// A code point of the text being normalized, with the span of original code points it comes
/// from.
struct mapped_char {
    char32_t cp;          ///< the (normalized) code point
    std::uint32_t begin;  ///< first original code point
    std::uint32_t end;    ///< one past the last
};

inline utf8proc_category_t category(char32_t c) {
    return utf8proc_category(utf8proc_int32_t(c));
}
/// Classes of the ASCII characters (bit 0 whitespace, 1 control, 2 punctuation), so that English
/// text never reaches utf8proc's tables.
struct ascii_classes {
    unsigned char bits[128] = {};
    constexpr ascii_classes() {
        for (int c = 0; c < 128; ++c) {
            const bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r';
            const bool ctrl = (c < 32 || c == 127) && !ws;
            const bool punct = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) ||
                               (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
            bits[c] = (ws ? 1 : 0) | (ctrl ? 2 : 0) | (punct ? 4 : 0);
        }
    }
};
inline constexpr ascii_classes ascii{};

/// BERT's whitespace: space, \t, \n, \r, or category Zs.
inline bool is_whitespace(char32_t c) {
    if (c < 128) return ascii.bits[c] & 1;
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || category(c) == UTF8PROC_CATEGORY_ZS;
}
/// BERT's control characters: category C* except \t, \n, \r (unassigned code points included).
inline bool is_control(char32_t c) {
    if (c < 128) return ascii.bits[c] & 2;
    switch (category(c)) {
        case UTF8PROC_CATEGORY_CN:
        case UTF8PROC_CATEGORY_CC:
        case UTF8PROC_CATEGORY_CF:
        case UTF8PROC_CATEGORY_CS:
        case UTF8PROC_CATEGORY_CO:
            return true;
        default:
            return false;
    }
}
/// BERT's punctuation: every ASCII non-alphanumeric printable, or category P*.
inline bool is_punctuation(char32_t c) {
    if (c < 128) return ascii.bits[c] & 4;
    const auto k = category(c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}
/// The CJK ideograph ranges BERT surrounds with spaces.
inline bool is_chinese(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}
/// Cased letters (Lu, Ll, Lt), for the final-sigma rule.
inline bool is_cased(char32_t c) {
    const auto k = category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}
/// Case-ignorable characters (Mn, Me, Cf, Lm, Sk and the word-internal punctuation), for the
/// final-sigma rule.
inline bool is_case_ignorable(char32_t c) {
    switch (category(c)) {
        case UTF8PROC_CATEGORY_MN:
        case UTF8PROC_CATEGORY_ME:
        case UTF8PROC_CATEGORY_CF:
        case UTF8PROC_CATEGORY_LM:
        case UTF8PROC_CATEGORY_SK:
            return true;
        default:
            return c == 0x27 || c == 0x2E || c == 0x3A || c == 0xB7 || c == 0x2018 || c == 0x2019 ||
                   c == 0x2024 || c == 0xFE52 || c == 0xFF07 || c == 0xFF0E || c == 0x387 ||
                   c == 0x5F4 || c == 0x2027 || c == 0xFE13 || c == 0xFE55 || c == 0xFF1A;
    }
}

/// A byte trie of word pieces for WordPiece's longest-match-first search: one walk from a start
/// position finds the longest piece there, reading each byte once (a hash table needs one lookup
/// per candidate length, each a cache miss). The root's children are a direct table; deeper
/// nodes keep sorted edge lists.
class piece_trie {
  public:
    /// Adds (or replaces: a later id wins, as Hugging Face's load_vocab) piece -> id.
    void insert(std::string_view piece, std::int32_t id) {
        if (build_.empty()) build_.emplace_back();
        std::size_t node = 0;
        for (unsigned char c : piece) {
            auto& kids = build_[node].kids;
            auto it = std::lower_bound(kids.begin(), kids.end(), c,
                                       [](const auto& e, unsigned char b) { return e.first < b; });
            if (it == kids.end() || it->first != c) {
                it = kids.insert(it, {c, std::int32_t(build_.size())});
                const std::int32_t child = it->second;
                build_.emplace_back();
                node = std::size_t(child);
            } else {
                node = std::size_t(it->second);
            }
        }
        build_[node].id = id;
        frozen_ = false;
    }
    /// Flattens the trie for lookups (called by the tokenizer once after the inserts).
    void freeze() {
        nodes_.assign(build_.size(), {});
        edges_.clear();
        dense_.clear();
        for (std::size_t n = 0; n < build_.size(); ++n) {
            nodes_[n].id = build_[n].id;
            const auto& kids = build_[n].kids;
            if (kids.size() > dense_threshold) {  // a direct table for wide nodes
                nodes_[n].first = std::uint32_t(dense_.size());
                nodes_[n].count = dense_marker;
                dense_.emplace_back();
                dense_.back().fill(-1);
                for (const auto& [c, child] : kids) dense_.back()[c] = child;
                continue;
            }
            nodes_[n].first = std::uint32_t(edges_.size());
            nodes_[n].count = std::uint32_t(kids.size());
            for (const auto& [c, child] : kids) edges_.push_back({c, child});
        }
        root_.fill(-1);
        if (!build_.empty())
            for (const auto& [c, child] : build_[0].kids) root_[c] = child;
        frozen_ = true;
    }
    /// The longest piece that is a prefix of text: (its length in bytes, its id); (0, -1) if
    /// none.
    std::pair<std::size_t, std::int32_t> longest_prefix(std::string_view text) const noexcept {
        std::pair<std::size_t, std::int32_t> best{0, -1};
        if (!frozen_ || text.empty()) return best;
        std::int32_t node = root_[static_cast<unsigned char>(text[0])];
        for (std::size_t i = 1; node >= 0; ++i) {
            const auto& nd = nodes_[std::size_t(node)];
            if (nd.id >= 0) best = {i, nd.id};
            if (i == text.size()) break;
            const auto c = static_cast<unsigned char>(text[i]);
            if (nd.count == dense_marker) {
                node = dense_[nd.first][c];
                continue;
            }
            const edge* e = edges_.data() + nd.first;
            const edge* e_end = e + nd.count;
            node = -1;
            for (; e != e_end; ++e)  // short lists: a linear scan beats a binary search
                if (e->c == c) {
                    node = e->child;
                    break;
                }
        }
        return best;
    }

  private:
    struct build_node {
        std::vector<std::pair<unsigned char, std::int32_t>> kids;
        std::int32_t id = -1;
    };
    struct node {
        std::uint32_t first = 0, count = 0;
        std::int32_t id = -1;
    };
    struct edge {
        unsigned char c;
        std::int32_t child;
    };
    static constexpr std::size_t dense_threshold = 8;   // more children: a direct table
    static constexpr std::uint32_t dense_marker = ~0u;  // node.count of a dense node
    std::vector<build_node> build_;
    std::vector<node> nodes_;
    std::vector<std::array<std::int32_t, 256>> dense_;
    std::vector<edge> edges_;
    std::array<std::int32_t, 256> root_{};
    bool frozen_ = false;
};

/// Appends the UTF-8 encoding of c.
inline void append_utf8(std::string& s, char32_t c) {
    utf8proc_uint8_t buf[4];
    const auto n = utf8proc_encode_char(utf8proc_int32_t(c), buf);
    s.append(reinterpret_cast<const char*>(buf), std::size_t(n));
}

/// Canonical decomposition of one code point (NFD of a single character).
inline std::size_t decompose(char32_t c, utf8proc_int32_t* out, std::size_t cap) {
    int last = 0;
    const auto n = utf8proc_decompose_char(utf8proc_int32_t(c), out, utf8proc_ssize_t(cap),
                                           UTF8PROC_DECOMPOSE, &last);
    if (n < 0 || std::size_t(n) > cap) {
        out[0] = utf8proc_int32_t(c);
        return 1;
    }
    return std::size_t(n);
}

}  // namespace detail

/// BERT's tokenizer (see the file comment). Const member functions are thread-safe.
class bert_tokenizer {
  public:
    /// A tokenizer over a vocabulary; throws when a special token is missing from it.
    bert_tokenizer(vocabulary vocab, bert_options options)
        : vocab_(std::move(vocab)), opt_(std::move(options)) {
        auto need = [&](const std::string& t) {
            const auto id = vocab_.find(t);
            if (!id)
                throw error(errc::invalid_argument, "bert_tokenizer",
                            ftune::detail::cat("special token ", t,
                                               " is not in the vocabulary; is this a BERT "
                                               "vocab.txt?"));
            return *id;
        };
        for (std::size_t i = 0; i < vocab_.size(); ++i) {  // "##x" is looked up as "x"
            const std::string& t = vocab_.token(std::int32_t(i));
            const std::int32_t id = vocab_.find(t).value();  // a repeated token's last id
            if (t.size() > 2 && t[0] == '#' && t[1] == '#')
                continuation_.insert(std::string_view(t).substr(2), id);
            initial_.insert(t, id);
        }
        initial_.freeze();
        continuation_.freeze();
        unk_ = need(opt_.unk), cls_ = need(opt_.cls), sep_ = need(opt_.sep);
        pad_ = need(opt_.pad), mask_ = need(opt_.mask);
        for (auto [t, id] :
             {std::pair{&opt_.cls, cls_}, std::pair{&opt_.sep, sep_}, std::pair{&opt_.pad, pad_},
              std::pair{&opt_.unk, unk_}, std::pair{&opt_.mask, mask_}})
            add_literal(*t, id);
        auto extra = std::move(opt_.extra_special_tokens);
        opt_.extra_special_tokens.clear();
        add_special_tokens(extra);
        strip_accents_ = opt_.strip_accents.value_or(opt_.lowercase);
    }

    /// A tokenizer reading vocab.txt.
    static bert_tokenizer from_vocab(const std::filesystem::path& path, bert_options options = {}) {
        return bert_tokenizer(vocabulary::from_file(path), std::move(options));
    }

    /// Adds special tokens (Transformers'
    /// tokenizer.add_special_tokens({"additional_special_tokens":
    /// ...})): each is matched whole wherever it occurs in the raw text (case as written), and
    /// one that is not in the vocabulary gets the next id. Returns how many ids were added (the
    /// rows a model's token table needs more). Not thread-safe: call it before tokenizing.
    std::size_t add_special_tokens(const std::vector<std::string>& tokens) {
        const std::size_t before = vocab_.size();
        for (const auto& t : tokens) {
            if (t.empty() || !valid_utf8(t))
                throw error(errc::invalid_argument, "bert_tokenizer::add_special_tokens",
                            "\"" + t + "\": a special token is non-empty valid UTF-8");
            if (std::find(opt_.extra_special_tokens.begin(), opt_.extra_special_tokens.end(), t) !=
                opt_.extra_special_tokens.end())
                continue;
            auto id = vocab_.find(t);
            if (!id) {
                vocab_.add(t);
                id = std::int32_t(vocab_.size() - 1);
            }
            opt_.extra_special_tokens.push_back(t);
            add_literal(t, *id);
        }
        return vocab_.size() - before;
    }

    /// The vocabulary.
    const vocabulary& vocab() const noexcept { return vocab_; }
    /// The options.
    const bert_options& options() const noexcept { return opt_; }
    /// Id of [CLS].
    std::int32_t cls_id() const noexcept { return cls_; }
    /// Id of [SEP].
    std::int32_t sep_id() const noexcept { return sep_; }
    /// Id of [PAD].
    std::int32_t pad_id() const noexcept { return pad_; }
    /// [MASK]'s id.
    std::int32_t mask_id() const noexcept { return mask_; }
    /// Id of [UNK].
    std::int32_t unk_id() const noexcept { return unk_; }

    /// Appends the word pieces of text (no [CLS]/[SEP]) to out, with offsets and word ids
    /// (numbered from first_word).
    void tokenize(std::string_view text, std::vector<token_info>& out,
                  std::int32_t first_word = 0) const {
        if (!word_literals_ && plain_ascii(text)) {  // most English text: no Unicode tables
            tokenize_ascii(text, first_word, out);
            return;
        }
        // 1. decode, keeping each code point's byte offset (invalid UTF-8 becomes U+FFFD)
        thread_local std::vector<char32_t> cps;
        thread_local std::vector<std::uint32_t> bytes;  // byte offset of each code point + end
        cps.clear();
        bytes.clear();
        const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
        for (std::size_t i = 0; i < text.size();) {
            if (p[i] < 0x80) {  // ASCII
                bytes.push_back(std::uint32_t(i));
                cps.push_back(p[i++]);
                continue;
            }
            utf8proc_int32_t c = 0;
            const auto n = utf8proc_iterate(p + i, utf8proc_ssize_t(text.size() - i), &c);
            bytes.push_back(std::uint32_t(i));
            if (n <= 0) {
                cps.push_back(0xFFFD);
                i += 1;
            } else {
                cps.push_back(char32_t(c));
                i += std::size_t(n);
            }
        }
        bytes.push_back(std::uint32_t(text.size()));
        std::int32_t word = first_word;
        // 2. special-token literals are whole tokens; the text between them is tokenized
        std::size_t start = 0;
        for (std::size_t i = 0; i < cps.size();) {
            std::int32_t special = -1;
            const std::size_t len = special_at(cps, i, special);
            if (len == 0) {
                ++i;
                continue;
            }
            tokenize_span(cps, bytes, start, i, word, out);
            out.push_back({special, std::uint32_t(i), std::uint32_t(i + len), bytes[i],
                           bytes[i + len], word++});
            i += len;
            start = i;
        }
        tokenize_span(cps, bytes, start, cps.size(), word, out);
    }

    /// Appends the word pieces of text (no [CLS]/[SEP]) to out, where a word is a
    /// whitespace-separated part of text (BERT's whitespace), tokenized on its own: every piece
    /// of word i has word id first_word + i (Transformers' is_split_into_words, the way token
    /// classification is trained); offsets refer to text. Returns the number of words (a word of
    /// control characters only has no pieces but still counts).
    std::size_t tokenize_words(std::string_view text, std::vector<token_info>& out,
                               std::int32_t first_word = 0) const {
        const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
        std::int32_t word = first_word;
        std::uint32_t cps = 0, word_byte = 0, word_cp = 0;  // code points so far; word start
        bool in_word = false;
        auto finish = [&](std::size_t end) {  // tokenize text[word_byte, end) as word `word`
            const std::size_t first = out.size();
            tokenize(text.substr(word_byte, end - word_byte), out);
            for (std::size_t k = first; k < out.size(); ++k) {
                auto& t = out[k];
                t.word = word;
                t.byte_begin += word_byte, t.byte_end += word_byte;
                t.char_begin += word_cp, t.char_end += word_cp;
            }
            ++word;
            in_word = false;
        };
        for (std::size_t i = 0; i < text.size();) {
            // decode as tokenize() does (an invalid byte is one code point, U+FFFD)
            utf8proc_int32_t c = p[i];
            std::size_t n = 1;
            if (p[i] >= 0x80) {
                const auto r = utf8proc_iterate(p + i, utf8proc_ssize_t(text.size() - i), &c);
                if (r > 0)
                    n = std::size_t(r);
                else
                    c = 0xFFFD;
            }
            if (detail::is_whitespace(char32_t(c))) {
                if (in_word) finish(i);
            } else if (!in_word) {
                in_word = true, word_byte = std::uint32_t(i), word_cp = cps;
            }
            i += n, ++cps;
        }
        if (in_word) finish(text.size());
        return std::size_t(word - first_word);
    }

    /// [CLS] text [SEP] (and text_pair [SEP] when given), truncated to max_length tokens when
    /// max_length > 0 (the longest sequence first), padded to pad_to when larger.
    encoding encode(std::string_view text, std::optional<std::string_view> text_pair = {},
                    std::size_t max_length = 0, std::size_t pad_to = 0) const {
        return encode(text, text_pair, encode_options{.max_length = max_length}, pad_to);
    }

    /// encode() with a truncation strategy; padding::max_length pads to max_length (pad_to, if
    /// larger, wins). A strategy that cannot reach max_length (only_first with a first text too
    /// short) throws ftune::error instead of returning an over-long encoding.
    encoding encode(std::string_view text, std::optional<std::string_view> text_pair,
                    const encode_options& o, std::size_t pad_to = 0) const {
        thread_local std::vector<token_info> a, b;
        a.clear();
        b.clear();
        if (o.split_into_words) {
            tokenize_words(text, a);
            if (text_pair) tokenize_words(*text_pair, b);
        } else {
            tokenize(text, a);
            if (text_pair) tokenize(*text_pair, b);
        }
        if (o.max_length > 0) truncate(a, b, text_pair.has_value(), o);
        if (o.pad == padding::max_length) pad_to = std::max(pad_to, o.max_length);
        encoding e;
        const std::size_t n = std::max(pad_to, a.size() + b.size() + (text_pair ? 3 : 2));
        e.ids.reserve(n), e.type_ids.reserve(n), e.attention_mask.reserve(n), e.tokens.reserve(n);
        auto push = [&](const token_info& t, std::int32_t type) {
            e.ids.push_back(t.id);
            e.type_ids.push_back(type);
            e.attention_mask.push_back(1);
            e.tokens.push_back(t);
        };
        const token_info cls{cls_, 0, 0, 0, 0, -1}, sep{sep_, 0, 0, 0, 0, -1};
        push(cls, 0);
        for (const auto& t : a) push(t, 0);
        push(sep, 0);
        if (text_pair) {
            for (const auto& t : b) push(t, 1);
            push(sep, 1);
        }
        pad(e, pad_to);
        return e;
    }

    /// Encodes many texts (pairs when `pairs` is not empty: the same length as texts); with
    /// padding::longest every encoding is padded to the longest one.
    std::vector<encoding> encode_batch(const std::vector<std::string_view>& texts,
                                       const std::vector<std::string_view>& pairs = {},
                                       const encode_options& o = {}) const {
        if (!pairs.empty() && pairs.size() != texts.size())
            throw error(errc::invalid_argument, "encode_batch",
                        ftune::detail::cat(texts.size(), " texts but ", pairs.size(),
                                           " second texts; give one per text or none"));
        std::vector<encoding> out;
        out.reserve(texts.size());
        std::size_t longest = 0;
        for (std::size_t i = 0; i < texts.size(); ++i) {
            out.push_back(
                encode(texts[i], pairs.empty() ? std::nullopt : std::optional(pairs[i]), o));
            longest = std::max(longest, out.back().ids.size());
        }
        if (o.pad == padding::longest)
            for (auto& e : out) pad(e, longest);
        return out;
    }

    /// Pads e with [PAD] (type 0, mask 0, no offsets) to `length` positions.
    void pad(encoding& e, std::size_t length) const {
        while (e.ids.size() < length) {
            e.ids.push_back(pad_);
            e.type_ids.push_back(0);
            e.attention_mask.push_back(0);
            e.tokens.push_back({pad_, 0, 0, 0, 0, -1});
        }
    }

  private:
    // Removes tokens from the ends of a and b until they fit o.max_length with the specials.
    static void truncate(std::vector<token_info>& a, std::vector<token_info>& b, bool pair,
                         const encode_options& o) {
        const std::size_t specials = pair ? 3 : 2;
        if (o.max_length < specials)
            throw error(errc::invalid_argument, "encode",
                        ftune::detail::cat("max_length ", o.max_length, " leaves no room for the ",
                                           specials, " special tokens"));
        const std::size_t room = o.max_length - specials;
        if (a.size() + b.size() <= room) return;
        const std::size_t excess = a.size() + b.size() - room;
        auto fail = [&](const char* which, std::size_t have) {
            throw error(
                errc::invalid_argument, "encode",
                ftune::detail::cat("truncating only the ", which,
                                   " text cannot reach "
                                   "max_length ",
                                   o.max_length, ": ", excess, " tokens must go and it has ", have,
                                   "; use truncation::longest_first or a larger "
                                   "max_length"));
        };
        switch (pair ? o.strategy : truncation::only_first) {
            case truncation::only_first:
                if (excess > a.size()) fail("first", a.size());
                a.resize(a.size() - excess);
                return;
            case truncation::only_second:
                if (excess > b.size()) fail("second", b.size());
                b.resize(b.size() - excess);
                return;
            case truncation::longest_first:
                while (a.size() + b.size() > room) {
                    if (a.size() > b.size())
                        a.pop_back();
                    else
                        b.pop_back();
                }
                return;
        }
    }

    // ASCII without control characters (which cleaning would remove from inside words)
    static bool plain_ascii(std::string_view t) noexcept {
        for (unsigned char c : t)
            if (c >= 0x80 || (detail::ascii.bits[c] & 2)) return false;
        return true;
    }

    // The pipeline on plain ASCII text, where characters are bytes: words are runs between
    // whitespace and punctuation, lower-casing is A-Z, nothing composes or carries accents.
    void tokenize_ascii(std::string_view t, std::int32_t word, std::vector<token_info>& out) const {
        const std::size_t n = t.size();
        for (std::size_t i = 0; i < n;) {
            const auto c = static_cast<unsigned char>(t[i]);
            const unsigned char cls = detail::ascii.bits[c];
            if (cls & 1) {  // whitespace
                ++i;
                continue;
            }
            if (cls & 4) {  // punctuation: a word of its own, or a special-token literal
                if (literal_first_[c]) {
                    std::int32_t id = -1;
                    if (const std::size_t len = special_at_ascii(t, i, id)) {
                        const auto b = std::uint32_t(i), e = std::uint32_t(i + len);
                        out.push_back({id, b, e, b, e, word++});
                        i += len;
                        continue;
                    }
                }
                wordpiece_ascii(t, i, i + 1, word++, out);
                ++i;
                continue;
            }
            std::size_t j = i + 1;
            while (j < n && !(detail::ascii.bits[static_cast<unsigned char>(t[j])] & 5)) ++j;
            wordpiece_ascii(t, i, j, word++, out);
            i = j;
        }
    }

    // WordPiece of the ASCII word t[begin, end).
    void wordpiece_ascii(std::string_view t, std::size_t begin, std::size_t end, std::int32_t word,
                         std::vector<token_info>& out) const {
        auto span = [&](std::size_t a, std::size_t b, std::int32_t id) {
            return token_info{
                id, std::uint32_t(a), std::uint32_t(b), std::uint32_t(a), std::uint32_t(b), word};
        };
        const std::size_t n = end - begin;
        if (n > opt_.max_input_chars_per_word) {
            out.push_back(span(begin, end, unk_));
            return;
        }
        char buf[128];  // n <= max_input_chars_per_word, checked above for the default 100
        std::string heap;
        char* w = buf;
        if (n > sizeof buf) {
            heap.resize(n);
            w = heap.data();
        }
        for (std::size_t k = 0; k < n; ++k) {
            char c = t[begin + k];
            if (opt_.lowercase && c >= 'A' && c <= 'Z') c = char(c + ('a' - 'A'));
            w[k] = c;
        }
        const std::string_view sv(w, n);
        const std::size_t mark = out.size();
        for (std::size_t start = 0; start < n;) {
            const auto [len, id] =
                (start == 0 ? initial_ : continuation_).longest_prefix(sv.substr(start));
            if (id < 0) {  // unmatchable: the whole word is [UNK]
                out.resize(mark);
                out.push_back(span(begin, end, unk_));
                return;
            }
            out.push_back(span(begin + start, begin + start + len, id));
            start += len;
        }
    }

    // length of the special-token literal at t[i] (0: none); its id in `id`
    // (the longest literal that matches, as Transformers' added-token matching)
    std::size_t special_at_ascii(std::string_view t, std::size_t i, std::int32_t& id) const {
        for (const auto& l : specials_)
            if (t.substr(i, l.text.size()) == l.text) {
                id = l.id;
                return l.text.size();
            }
        return 0;
    }

    // length of the special-token literal starting at cps[i] (0: none); its id in `id`
    std::size_t special_at(const std::vector<char32_t>& cps, std::size_t i,
                           std::int32_t& id) const {
        if (cps[i] < 0x80 ? !literal_first_[cps[i]] : !non_ascii_literals_) return 0;
        for (const auto& l : specials_) {
            if (l.cps.size() > cps.size() - i) continue;
            if (std::equal(l.cps.begin(), l.cps.end(), cps.begin() + std::ptrdiff_t(i))) {
                id = l.id;
                return l.cps.size();
            }
        }
        return 0;
    }

    // whether s is well-formed UTF-8
    static bool valid_utf8(std::string_view s) {
        const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
        for (std::size_t i = 0; i < s.size();) {
            utf8proc_int32_t c = 0;
            const auto n = utf8proc_iterate(p + i, utf8proc_ssize_t(s.size() - i), &c);
            if (n <= 0) return false;
            i += std::size_t(n);
        }
        return true;
    }

    // Makes `text` a literal kept whole with id `id`; literals stay sorted longest first.
    void add_literal(const std::string& text, std::int32_t id) {
        literal l{text, {}, id};
        const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
        for (std::size_t i = 0; i < text.size();) {
            utf8proc_int32_t c = 0;
            const auto n = utf8proc_iterate(p + i, utf8proc_ssize_t(text.size() - i), &c);
            l.cps.push_back(n > 0 ? char32_t(c) : char32_t(0xFFFD));
            i += n > 0 ? std::size_t(n) : 1;
        }
        const auto first = static_cast<unsigned char>(text.empty() ? 0 : text[0]);
        if (first < 0x80) {
            literal_first_[first] = true;
            // a literal starting inside a word (a letter, digit, space) needs the general path
            if (!(detail::ascii.bits[first] & 4)) word_literals_ = true;
        } else {
            non_ascii_literals_ = true;
        }
        const auto at = std::find_if(specials_.begin(), specials_.end(), [&](const literal& o) {
            return o.text.size() < l.text.size();
        });
        specials_.insert(at, std::move(l));
    }

    // Tokenizes cps[begin, end) (no special literals inside) into out.
    void tokenize_span(const std::vector<char32_t>& cps, const std::vector<std::uint32_t>& bytes,
                       std::size_t begin, std::size_t end, std::int32_t& word,
                       std::vector<token_info>& out) const {
        // clean and space out CJK ideographs
        thread_local std::vector<detail::mapped_char> chars;
        chars.clear();
        for (std::size_t i = begin; i < end; ++i) {
            const char32_t c = cps[i];
            const auto at = std::uint32_t(i);
            if (c == 0 || c == 0xFFFD || detail::is_control(c)) continue;
            if (detail::is_whitespace(c)) {
                chars.push_back({' ', at, at + 1});
            } else if (opt_.chinese_chars && detail::is_chinese(c)) {
                chars.push_back({' ', at, at});
                chars.push_back({c, at, at + 1});
                chars.push_back({' ', at + 1, at + 1});
            } else {
                chars.push_back({c, at, at + 1});
            }
        }
        // whitespace-separated words
        thread_local std::vector<detail::mapped_char> w, norm;
        for (std::size_t i = 0; i < chars.size();) {
            while (i < chars.size() && chars[i].cp == ' ') ++i;
            std::size_t j = i;
            while (j < chars.size() && chars[j].cp != ' ') ++j;
            if (j > i) {
                w.assign(chars.begin() + std::ptrdiff_t(i), chars.begin() + std::ptrdiff_t(j));
                normalize_word(w, norm);
                split_and_wordpiece(norm, bytes, word, out);
            }
            i = j;
        }
    }

    // NFC, then (lower-casing) Python's lower() and accent stripping, keeping the alignment.
    void normalize_word(const std::vector<detail::mapped_char>& w,
                        std::vector<detail::mapped_char>& out) const {
        out.clear();
        bool ascii = true;
        for (const auto& c : w) ascii = ascii && c.cp < 128;
        if (ascii) {  // nothing to compose, decompose or strip; lower-casing is A-Z only
            out = w;
            if (opt_.lowercase)
                for (auto& c : out)
                    if (c.cp >= 'A' && c.cp <= 'Z') c.cp += 'a' - 'A';
            return;
        }
        // With accent stripping, NFC can be skipped: NFD(NFC(x)) == NFD(x), and lower-casing
        // commutes with it, so each output character keeps its one original character (the fast
        // tokenizer's offsets). Without it, NFC changes the result and composed characters span
        // the characters they came from.
        thread_local std::vector<detail::mapped_char> nfc;
        const std::vector<detail::mapped_char>* src = &w;
        if (!(opt_.lowercase && strip_accents_)) {
            compose(w, nfc);
            src = &nfc;
        }
        const auto& in = *src;
        for (std::size_t i = 0; i < in.size(); ++i) {
            utf8proc_int32_t low[3];
            const std::size_t nl =
                opt_.lowercase ? lower(in, i, low) : (low[0] = utf8proc_int32_t(in[i].cp), 1);
            for (std::size_t k = 0; k < nl; ++k) {
                if (!strip_accents_) {
                    out.push_back({char32_t(low[k]), in[i].begin, in[i].end});
                    continue;
                }
                utf8proc_int32_t d[32];  // NFD, without the non-spacing marks
                const std::size_t nd = detail::decompose(char32_t(low[k]), d, 32);
                for (std::size_t m = 0; m < nd; ++m)
                    if (detail::category(char32_t(d[m])) != UTF8PROC_CATEGORY_MN)
                        out.push_back({char32_t(d[m]), in[i].begin, in[i].end});
            }
        }
    }

    // Python's str.lower() of w[i] in its word: full mappings (İ -> i̇) and the final sigma.
    static std::size_t lower(const std::vector<detail::mapped_char>& w, std::size_t i,
                             utf8proc_int32_t* out) {
        const char32_t c = w[i].cp;
        if (c == 0x130) {  // İ -> i + combining dot above
            out[0] = 0x69, out[1] = 0x307;
            return 2;
        }
        if (c == 0x3A3) {  // Σ: ς at the end of a word, σ elsewhere
            bool before = false, after = false;
            for (std::size_t k = i; k-- > 0;) {
                if (detail::is_case_ignorable(w[k].cp)) continue;
                before = detail::is_cased(w[k].cp);
                break;
            }
            for (std::size_t k = i + 1; k < w.size(); ++k) {
                if (detail::is_case_ignorable(w[k].cp)) continue;
                after = detail::is_cased(w[k].cp);
                break;
            }
            out[0] = before && !after ? 0x3C2 : 0x3C3;
            return 1;
        }
        out[0] = utf8proc_tolower(utf8proc_int32_t(c));
        return 1;
    }

    // NFC of a word; each composed character spans the original characters it came from.
    static void compose(const std::vector<detail::mapped_char>& w,
                        std::vector<detail::mapped_char>& out) {
        out.clear();
        bool ascii = true;
        for (const auto& c : w) ascii = ascii && c.cp < 0x300;
        if (ascii) {  // nothing below U+0300 composes or decomposes canonically
            out = w;
            return;
        }
        // normalize runs that start at a character of combining class 0
        std::size_t i = 0;
        std::string run;
        while (i < w.size()) {
            std::size_t j = i + 1;
            while (j < w.size() &&
                   utf8proc_get_property(utf8proc_int32_t(w[j].cp))->combining_class != 0)
                ++j;
            // Hangul jamo and other starters that compose with the previous one join the run
            while (j < w.size() && composes_with_previous(w, j)) {
                ++j;
                while (j < w.size() &&
                       utf8proc_get_property(utf8proc_int32_t(w[j].cp))->combining_class != 0)
                    ++j;
            }
            run.clear();
            for (std::size_t k = i; k < j; ++k) detail::append_utf8(run, w[k].cp);
            utf8proc_uint8_t* nfc =
                utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(run.c_str()));
            if (!nfc) {
                for (std::size_t k = i; k < j; ++k) out.push_back(w[k]);
            } else {
                const auto* q = nfc;
                std::size_t len =
                    std::char_traits<char>::length(reinterpret_cast<const char*>(nfc));
                std::vector<char32_t> got;
                for (std::size_t k = 0; k < len;) {
                    utf8proc_int32_t c = 0;
                    const auto n = utf8proc_iterate(q + k, utf8proc_ssize_t(len - k), &c);
                    if (n <= 0) break;
                    got.push_back(char32_t(c));
                    k += std::size_t(n);
                }
                std::free(nfc);
                if (got.size() == j - i) {  // nothing composed: keep the one-to-one alignment
                    for (std::size_t k = 0; k < got.size(); ++k)
                        out.push_back({got[k], w[i + k].begin, w[i + k].end});
                } else {
                    for (char32_t c : got) out.push_back({c, w[i].begin, w[j - 1].end});
                }
            }
            i = j;
        }
    }

    // whether the starter w[j] composes canonically with the character before it
    static bool composes_with_previous(const std::vector<detail::mapped_char>& w, std::size_t j) {
        std::string two;
        detail::append_utf8(two, w[j - 1].cp);
        detail::append_utf8(two, w[j].cp);
        utf8proc_uint8_t* nfc =
            utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(two.c_str()));
        if (!nfc) return false;
        const bool composed =
            std::char_traits<char>::length(reinterpret_cast<const char*>(nfc)) != two.size() ||
            two != reinterpret_cast<const char*>(nfc);
        std::free(nfc);
        return composed;
    }

    // Splits a normalized word on punctuation and runs WordPiece on each piece.
    void split_and_wordpiece(const std::vector<detail::mapped_char>& w,
                             const std::vector<std::uint32_t>& bytes, std::int32_t& word,
                             std::vector<token_info>& out) const {
        std::size_t i = 0;
        while (i < w.size()) {
            std::size_t j = i + 1;
            if (!detail::is_punctuation(w[i].cp))
                while (j < w.size() && !detail::is_punctuation(w[j].cp)) ++j;
            wordpiece(w, i, j, bytes, word++, out);
            i = j;
        }
    }

    // Greedy longest-match-first WordPiece of w[begin, end).
    void wordpiece(const std::vector<detail::mapped_char>& w, std::size_t begin, std::size_t end,
                   const std::vector<std::uint32_t>& bytes, std::int32_t word,
                   std::vector<token_info>& out) const {
        auto span = [&](std::size_t a, std::size_t b, std::int32_t id) {
            const std::uint32_t cb = w[a].begin, ce = w[b - 1].end;
            return token_info{id, cb, ce, bytes[cb], bytes[ce], word};
        };
        const std::size_t n = end - begin;
        if (n > opt_.max_input_chars_per_word) {
            out.push_back(span(begin, end, unk_));
            return;
        }
        // UTF-8 of the word and the byte offset of each character in it
        thread_local std::string s;
        thread_local std::vector<std::size_t> at;
        s.clear();
        at.resize(n + 1);
        for (std::size_t k = 0; k < n; ++k) {
            at[k] = s.size();
            detail::append_utf8(s, w[begin + k].cp);
        }
        at[n] = s.size();
        const std::size_t mark = out.size();
        const std::string_view sv(s);
        for (std::size_t start = 0; start < n;) {
            // the longest piece at `start` ("##" pieces live in their own trie, without "##"),
            // then back to a character boundary (a piece ending inside a character cannot be
            // a vocabulary token of whole characters, but guard anyway)
            const auto [len, id] =
                (start == 0 ? initial_ : continuation_).longest_prefix(sv.substr(at[start]));
            std::size_t stop = start;
            std::int32_t found = -1;
            if (id >= 0) {
                stop = std::size_t(std::upper_bound(at.begin() + std::ptrdiff_t(start),
                                                    at.begin() + std::ptrdiff_t(n + 1),
                                                    at[start] + len) -
                                   at.begin()) -
                       1;
                if (stop > start && at[stop] == at[start] + len)
                    found = id;
                else
                    stop = start;
            }
            if (found < 0) {  // unmatchable: the whole word is [UNK]
                out.resize(mark);
                out.push_back(span(begin, end, unk_));
                return;
            }
            out.push_back(span(begin + start, begin + stop, found));
            start = stop;
        }
    }

    vocabulary vocab_;
    detail::piece_trie initial_;       // every token -> id (word-initial pieces)
    detail::piece_trie continuation_;  // "##x" pieces keyed by "x"
    bert_options opt_;
    bool strip_accents_ = true;
    struct literal {
        std::string text;      // as written (UTF-8)
        std::u32string cps;    // its code points
        std::int32_t id = -1;  // its token id
    };
    std::vector<literal> specials_;          // literals kept whole, the longest first
    std::array<bool, 128> literal_first_{};  // ASCII bytes that start a literal
    bool word_literals_ = false;             // a literal starts with a non-punctuation ASCII byte
    bool non_ascii_literals_ = false;        // a literal starts with a non-ASCII code point
    std::int32_t unk_ = 0, cls_ = 0, sep_ = 0, pad_ = 0, mask_ = 0;
};

}  // namespace text
FTUNE_NAMESPACE_END
