// text::bpe_tokenizer: byte-level BPE as Hugging Face `tokenizers` runs it for GPT-2, Llama 3,
// SmolLM2 and most decoders: special tokens split out first; an optional Digits pre-tokenizer
// (every digit alone); GPT-2's pre-tokenizer pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// written out as a scanner; each piece's UTF-8 bytes mapped to GPT-2's printable alphabet; the
// merges applied by rank; decoding maps the alphabet back to bytes. Needs utf8proc only; reading
// it from a tokenizer.json is text::load_bpe_tokenizer_json (tokenizer_json.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ftune/text/bert.hpp"

FTUNE_NAMESPACE_BEGIN
namespace text {

namespace detail {

/// GPT-2's map from bytes to printable characters: the printable Latin-1 bytes ('!'..'~',
/// '¡'..'¬', '®'..'ÿ') stand for themselves, the others for U+0100 onwards in byte order.
inline const std::array<char32_t, 256>& byte_to_char() {
    static const std::array<char32_t, 256> table = [] {
        std::array<char32_t, 256> t{};
        char32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            t[std::size_t(b)] = printable ? char32_t(b) : next++;
        }
        return t;
    }();
    return table;
}

/// Whitespace as the pre-tokenizer's \s sees it (Unicode White_Space).
inline bool bpe_space(char32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}
/// \p{L}: letters (Lu, Ll, Lt, Lm, Lo).
inline bool bpe_letter(char32_t c) {
    const auto k = category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_LO;
}
/// \p{N}: numbers (Nd, Nl, No).
inline bool bpe_number(char32_t c) {
    const auto k = category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

/// A decoded code point and where its bytes are in the text.
struct code_point {
    char32_t c;         ///< the code point (U+FFFD for an invalid byte)
    std::size_t begin;  ///< first byte
    std::size_t end;    ///< one past the last byte
};

/// The code points of UTF-8 text; an invalid byte decodes as U+FFFD covering that byte.
inline std::vector<code_point> decode(std::string_view text) {
    std::vector<code_point> out;
    out.reserve(text.size());
    const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
    for (std::size_t i = 0; i < text.size();) {
        utf8proc_int32_t c = p[i];
        std::size_t n = 1;
        if (c >= 0x80) {
            const auto r = utf8proc_iterate(p + i, utf8proc_ssize_t(text.size() - i), &c);
            if (r > 0)
                n = std::size_t(r);
            else
                c = 0xFFFD;
        }
        out.push_back({char32_t(c), i, i + n});
        i += n;
    }
    return out;
}

/// The end of the pre-token starting at cp[i] under GPT-2's pattern (an index into cp).
inline std::size_t gpt2_piece_end(const std::vector<code_point>& cp, std::size_t i) {
    const std::size_t n = cp.size();
    const auto at = [&](std::size_t k) { return k < n ? cp[k].c : char32_t(0); };
    // 's 't 're 've 'm 'll 'd
    if (at(i) == U'\'') {
        const char32_t a = at(i + 1), b = at(i + 2);
        if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
        if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l'))
            return i + 3;
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
    const std::size_t s = at(i) == U' ' ? i + 1 : i;
    if (s < n) {
        auto run = [&](auto&& in_class) {
            std::size_t k = s;
            while (k < n && in_class(cp[k].c)) ++k;
            return k;
        };
        if (bpe_letter(cp[s].c)) return run(bpe_letter);
        if (bpe_number(cp[s].c)) return run(bpe_number);
        const auto other = [](char32_t c) {
            return !bpe_space(c) && !bpe_letter(c) && !bpe_number(c);
        };
        if (other(cp[s].c)) return run(other);
    }
    // `\s+(?!\S)`: the whitespace run, less its last character when a non-space follows;
    // otherwise `\s+`: the whole run (one character before a non-space)
    std::size_t k = i;
    while (k < n && bpe_space(cp[k].c)) ++k;
    if (k == i) return i + 1;  // not reached: every character is in one of the classes
    if (k < n && k - i > 1) return k - 1;
    return k;
}

}  // namespace detail

/// What the BPE pre-tokenizer does before GPT-2's pattern.
struct bpe_options {
    bool individual_digits = false;  ///< tokenizers' Digits(individual_digits=true) first
};

/// Byte-level BPE tokenizer: a vocabulary of byte-alphabet strings, merges by rank, special
/// tokens, GPT-2's pre-tokenizer (optionally after splitting digits one by one).
class bpe_tokenizer {
  public:
    /// A tokenizer of the given vocabulary (token -> id), merges in rank order ("a", "b"), and
    /// special tokens (matched in the text before anything else; empty ones are ignored).
    bpe_tokenizer(std::unordered_map<std::string, std::int32_t> vocab,
                  const std::vector<std::pair<std::string, std::string>>& merges,
                  std::vector<std::pair<std::string, std::int32_t>> specials, bpe_options o = {})
        : vocab_(std::move(vocab)), specials_(std::move(specials)), opt_(o) {
        for (std::size_t r = 0; r < merges.size(); ++r)
            ranks_.emplace(merges[r].first + ' ' + merges[r].second, r);
        // an empty special token, or one with an id no vocabulary has, is ignored
        std::erase_if(specials_, [](const std::pair<std::string, std::int32_t>& s) {
            return s.first.empty() || s.second < 0 || s.second > (std::int32_t(1) << 26);
        });
        const auto& table = detail::byte_to_char();
        for (int b = 0; b < 256; ++b) inverse_[table[std::size_t(b)]] = (unsigned char)b;
        std::sort(specials_.begin(), specials_.end(), [](const auto& a, const auto& b) {
            return a.first.size() > b.first.size();  // longest first
        });
        for (const auto& [t, id] : vocab_) {
            if (std::size_t(id) >= tokens_.size()) tokens_.resize(std::size_t(id) + 1);
            tokens_[std::size_t(id)] = t;
        }
        for (const auto& [t, id] : specials_) {
            if (std::size_t(id) >= tokens_.size()) tokens_.resize(std::size_t(id) + 1);
            tokens_[std::size_t(id)] = t;
        }
    }

    /// Number of token ids (the largest id + 1).
    std::size_t size() const noexcept { return tokens_.size(); }

    /// The ids of text (no special tokens added).
    std::vector<std::int32_t> encode(std::string_view text) const {
        std::vector<std::int32_t> ids;
        std::size_t start = 0;
        while (start <= text.size()) {  // split out special tokens, encode what lies between
            std::size_t at = text.size(), len = 0;
            std::int32_t sid = -1;
            for (const auto& [s, id] : specials_) {
                const std::size_t k = text.find(s, start);
                if (k != std::string_view::npos && (k < at || (k == at && s.size() > len)))
                    at = k, len = s.size(), sid = id;
            }
            encode_ordinary(text.substr(start, at - start), ids);
            if (sid < 0) break;
            ids.push_back(sid);
            start = at + len;
        }
        return ids;
    }

    /// The text of ids: the tokens' byte-alphabet characters mapped back to bytes (special
    /// tokens as written). Bytes of a character split across tokens join again.
    std::string decode(const std::vector<std::int32_t>& ids) const {
        std::string out;
        for (const std::int32_t id : ids) {
            if (id < 0 || std::size_t(id) >= tokens_.size())
                throw error(errc::out_of_range, "bpe_tokenizer::decode",
                            ftune::detail::cat("id ", id, " is outside the vocabulary of ",
                                               tokens_.size()));
            const std::string& t = tokens_[std::size_t(id)];
            if (is_special(id)) {
                out += t;
                continue;
            }
            for (const auto& cp : detail::decode(t)) out += char(byte_of(cp.c));
        }
        return out;
    }

    /// The token string of id (in the byte alphabet: "Ġthe" for " the").
    const std::string& token(std::int32_t id) const { return tokens_.at(std::size_t(id)); }

  private:
    bool is_special(std::int32_t id) const {
        for (const auto& s : specials_)
            if (s.second == id) return true;
        return false;
    }
    // the byte a byte-alphabet character stands for
    unsigned char byte_of(char32_t c) const {
        const auto it = inverse_.find(c);
        return it == inverse_.end() ? (unsigned char)'?' : it->second;
    }

    // text without special tokens -> ids
    void encode_ordinary(std::string_view text, std::vector<std::int32_t>& ids) const {
        const auto cp = detail::decode(text);
        std::size_t i = 0;
        while (i < cp.size()) {
            // the Digits pre-tokenizer first: a digit alone, or the run up to the next digit
            std::size_t limit = cp.size();
            if (opt_.individual_digits) {
                if (detail::bpe_number(cp[i].c) && is_digit_char(cp[i].c)) {
                    piece(text.substr(cp[i].begin, cp[i].end - cp[i].begin), ids);
                    ++i;
                    continue;
                }
                limit = i;
                while (limit < cp.size() && !is_digit_char(cp[limit].c)) ++limit;
            }
            const std::vector<detail::code_point> part(cp.begin() + std::ptrdiff_t(i),
                                                       cp.begin() + std::ptrdiff_t(limit));
            for (std::size_t k = 0; k < part.size();) {
                const std::size_t e = detail::gpt2_piece_end(part, k);
                piece(text.substr(part[k].begin, part[e - 1].end - part[k].begin), ids);
                k = e;
            }
            i = limit;
        }
    }
    // tokenizers' Digits splits on char::is_numeric: the Unicode numbers
    static bool is_digit_char(char32_t c) { return detail::bpe_number(c); }

    // one pre-token's bytes -> ids (BPE over the byte alphabet), through the shared cache
    void piece(std::string_view bytes, std::vector<std::int32_t>& ids) const {
        const std::string key(bytes);
        {
            const std::lock_guard<std::mutex> lock(cache_->mutex);
            if (const auto it = cache_->ids.find(key); it != cache_->ids.end()) {
                ids.insert(ids.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        const std::size_t first = ids.size();
        const auto& table = detail::byte_to_char();
        std::vector<std::string> sym;  // the symbols, each a byte-alphabet string
        for (const unsigned char b : bytes) {
            std::string s;
            detail::append_utf8(s, table[b]);
            sym.push_back(std::move(s));
        }
        while (sym.size() > 1) {  // merge the adjacent pair of lowest rank
            std::size_t best = std::numeric_limits<std::size_t>::max(), at = 0;
            for (std::size_t k = 0; k + 1 < sym.size(); ++k) {
                const auto it = ranks_.find(sym[k] + ' ' + sym[k + 1]);
                if (it != ranks_.end() && it->second < best) best = it->second, at = k;
            }
            if (best == std::numeric_limits<std::size_t>::max()) break;
            sym[at] += sym[at + 1];
            sym.erase(sym.begin() + std::ptrdiff_t(at) + 1);
        }
        for (const auto& s : sym) {
            const auto it = vocab_.find(s);
            if (it == vocab_.end())
                throw error(
                    errc::out_of_range, "bpe_tokenizer",
                    "the symbol \"" + s + "\" is not in the vocabulary (incomplete merges?)");
            ids.push_back(it->second);
        }
        const std::lock_guard<std::mutex> lock(cache_->mutex);
        if (cache_->ids.size() < piece_cache::max_entries)
            cache_->ids.emplace(
                key, std::vector<std::int32_t>(ids.begin() + std::ptrdiff_t(first), ids.end()));
    }

    // the ids of pieces already encoded: encode is const and may run on several threads at
    // once (a served model shares its tokenizer), hence the lock; copies share it
    struct piece_cache {
        static constexpr std::size_t max_entries = 1 << 18;  // then it stops growing
        std::mutex mutex;
        std::unordered_map<std::string, std::vector<std::int32_t>> ids;
    };

    std::unordered_map<std::string, std::int32_t> vocab_;         // byte-alphabet token -> id
    std::unordered_map<std::string, std::size_t> ranks_;          // "a b" -> merge rank
    std::vector<std::pair<std::string, std::int32_t>> specials_;  // longest first
    std::vector<std::string> tokens_;                             // id -> token
    bpe_options opt_;
    std::unordered_map<char32_t, unsigned char> inverse_;                   // alphabet -> byte
    std::shared_ptr<piece_cache> cache_ = std::make_shared<piece_cache>();  // piece -> ids
};

}  // namespace text
FTUNE_NAMESPACE_END
