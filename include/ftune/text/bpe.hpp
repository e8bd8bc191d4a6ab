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

/// Appends bytes to out as valid UTF-8: each maximal invalid subsequence (a byte that cannot
/// start a character, or a character's valid beginning cut short) becomes one U+FFFD, as
/// `tokenizers`' decode (Rust's from_utf8_lossy) and Python's errors="replace" do.
inline void append_utf8_lossy(std::string& out, std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    for (std::size_t i = 0; i < n;) {
        const unsigned char c = p[i];
        if (c < 0x80) {
            out += char(c);
            ++i;
            continue;
        }
        // the character's length and the range of its second byte (Unicode's table 3-7)
        std::size_t len = 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        }
        std::size_t k = 1;  // bytes of a valid beginning
        while (k < len && i + k < n && p[i + k] >= (k == 1 ? lo : 0x80) &&
               p[i + k] <= (k == 1 ? hi : 0xBF))
            ++k;
        if (len != 0 && k == len)
            out.append(s.substr(i, len));
        else
            out += "\xEF\xBF\xBD";  // U+FFFD
        i += k;
    }
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
    /// A ByteLevel post-processor's trim_offsets: offsets leave out a token's leading and
    /// trailing spaces.
    bool trim_offsets = false;
    /// That post-processor's add_prefix_space: the first token's single leading space is kept.
    bool trim_keeps_first_space = false;
};

/// What comes with a decoder's tokenizer besides its vocabulary (Transformers'
/// tokenizer_config.json, or GGUF's tokenizer.* metadata): the special tokens' roles and the chat
/// template.
struct lm_tokenizer_settings {
    std::string bos_token;       ///< beginning of sequence ("" when none)
    std::string eos_token;       ///< end of sequence: generation stops at it ("" when none)
    std::string pad_token;       ///< padding ("" when none)
    bool add_bos_token = false;  ///< whether a prompt starts with bos_token (Llama 2/3 do)
    std::string chat_template;   ///< the Jinja chat template ("" when none)
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
        raw_.resize(tokens_.size());  // the bytes of each token (a special token: its text)
        for (std::size_t id = 0; id < tokens_.size(); ++id) {
            if (is_special(std::int32_t(id))) {
                raw_[id] = tokens_[id];
                continue;
            }
            for (const auto& cp : detail::decode(tokens_[id])) raw_[id] += char(byte_of(cp.c));
        }
    }

    /// Number of token ids (the largest id + 1).
    std::size_t size() const noexcept { return tokens_.size(); }

    /// The ids of text (no special tokens added).
    std::vector<std::int32_t> encode(std::string_view text) const {
        std::vector<std::int32_t> ids;
        run(text, ids, nullptr);
        return ids;
    }

    /// The tokens of text with their offsets, as Hugging Face's offset_mapping gives them: a
    /// token holding some of a character's bytes covers the whole character (an emoji split in
    /// two tokens: both cover it); a special token covers its text. No word alignment (word -1).
    std::vector<token_info> encode_with_offsets(std::string_view text) const {
        std::vector<std::int32_t> ids;
        std::vector<token_info> out;
        run(text, ids, &out);
        if (opt_.trim_offsets) trim(out);
        return out;
    }

    /// The text of ids, as `tokenizers` decodes it: the tokens' byte-alphabet characters mapped
    /// back to bytes (special tokens as written), bytes of a character split across tokens
    /// joined again, and bytes that form no character replaced by U+FFFD (valid UTF-8).
    std::string decode(const std::vector<std::int32_t>& ids) const {
        std::string out;
        detail::append_utf8_lossy(out, decode_bytes(ids));
        return out;
    }

    /// The bytes of ids as they are, invalid UTF-8 included (decode() replaces it).
    std::string decode_bytes(const std::vector<std::int32_t>& ids) const {
        std::string out;
        for (const std::int32_t id : ids) append_bytes(id, out);
        return out;
    }

    /// Appends the bytes id stands for (a special token: its text) to out; allocates only when
    /// out must grow.
    void append_bytes(std::int32_t id, std::string& out) const {
        if (id < 0 || std::size_t(id) >= raw_.size())
            throw error(
                errc::out_of_range, "bpe_tokenizer::decode",
                ftune::detail::cat("id ", id, " is outside the vocabulary of ", raw_.size()));
        out += raw_[std::size_t(id)];
    }

    /// The token string of id (in the byte alphabet: "Ġthe" for " the").
    const std::string& token(std::int32_t id) const { return tokens_.at(std::size_t(id)); }

    /// The id of a token string (a special token's text or a byte-alphabet token); -1 when the
    /// vocabulary has no such token.
    std::int32_t id_of(std::string_view token) const {
        for (const auto& [s, id] : specials_)
            if (s == token) return id;
        const auto it = vocab_.find(std::string(token));
        return it == vocab_.end() ? -1 : it->second;
    }

    /// Whether id is a special (added, control) token.
    bool is_special(std::int32_t id) const {
        for (const auto& s : specials_)
            if (s.second == id) return true;
        return false;
    }

    /// The vocabulary (byte-alphabet token -> id), special tokens not included.
    const std::unordered_map<std::string, std::int32_t>& vocab() const noexcept { return vocab_; }
    /// The merges in rank order.
    std::vector<std::pair<std::string, std::string>> merges() const {
        std::vector<std::pair<std::string, std::string>> out(ranks_.size());
        for (const auto& [pair, rank] : ranks_) {
            const std::size_t sp = pair.find(' ');  // byte-alphabet tokens hold no space
            out[rank] = {pair.substr(0, sp), pair.substr(sp + 1)};
        }
        return out;
    }
    /// The special tokens (text, id), longest first.
    const std::vector<std::pair<std::string, std::int32_t>>& specials() const noexcept {
        return specials_;
    }
    /// What the pre-tokenizer and post-processor do.
    const bpe_options& options() const noexcept { return opt_; }

    /// The special tokens' roles and the chat template.
    const lm_tokenizer_settings& settings() const noexcept { return settings_; }
    /// Sets them (the loaders do).
    void set_settings(lm_tokenizer_settings s) { settings_ = std::move(s); }

  private:
    // tokenizers' ByteLevel post-processor with trim_offsets: the offsets of a token starting
    // (ending) with spaces ('Ġ') start later (end earlier), never past the other end
    void trim(std::vector<token_info>& out) const {
        for (std::size_t i = 0; i < out.size(); ++i) {
            auto& t = out[i];
            const auto cp = detail::decode(tokens_[std::size_t(t.id)]);
            const auto space = [](char32_t c) { return c == U'\u0120' || detail::bpe_space(c); };
            std::uint32_t lead = 0, trail = 0;
            while (lead < cp.size() && space(cp[lead].c)) ++lead;
            while (trail < cp.size() && space(cp[cp.size() - 1 - trail].c)) ++trail;
            if (lead == 1 && opt_.trim_keeps_first_space && (i == 0 || t.char_begin == 0)) lead = 0;
            // spaces are one byte and one code point: both offsets move alike
            t.char_begin = std::min(t.char_begin + lead, t.char_end);
            t.byte_begin = std::min(t.byte_begin + lead, t.byte_end);
            if (trail && t.char_end >= trail) {
                t.char_end = std::max(t.char_end - trail, t.char_begin);
                t.byte_end = std::max(t.byte_end - trail, t.byte_begin);
            }
        }
    }
    // the byte a byte-alphabet character stands for
    unsigned char byte_of(char32_t c) const {
        const auto it = inverse_.find(c);
        return it == inverse_.end() ? (unsigned char)'?' : it->second;
    }

    // text -> ids (and offsets when info is given): special tokens split out first, the text
    // between them encoded by encode_ordinary
    void run(std::string_view text, std::vector<std::int32_t>& ids,
             std::vector<token_info>* info) const {
        std::size_t start = 0;
        std::uint32_t chars = 0;  // code points before start
        while (start <= text.size()) {
            std::size_t at = text.size(), len = 0;
            std::int32_t sid = -1;
            for (const auto& [s, id] : specials_) {
                const std::size_t k = text.find(s, start);
                if (k != std::string_view::npos && (k < at || (k == at && s.size() > len)))
                    at = k, len = s.size(), sid = id;
            }
            chars += encode_ordinary(text.substr(start, at - start), ids, info,
                                     std::uint32_t(start), chars);
            if (sid < 0) break;
            ids.push_back(sid);
            const auto n = std::uint32_t(detail::decode(text.substr(at, len)).size());
            if (info)
                info->push_back(
                    {sid, chars, chars + n, std::uint32_t(at), std::uint32_t(at + len), -1});
            chars += n;
            start = at + len;
        }
    }

    // text without special tokens -> ids; with info, also the offsets of each token (the text
    // starts at byte `byte0` and code point `char0` of the whole). Returns the code points.
    std::uint32_t encode_ordinary(std::string_view text, std::vector<std::int32_t>& ids,
                                  std::vector<token_info>* info, std::uint32_t byte0,
                                  std::uint32_t char0) const {
        const auto cp = detail::decode(text);
        // the offsets of the tokens ids[first..] of the piece made of code points [b, e)
        auto offsets = [&](std::size_t first, std::size_t b, std::size_t e) {
            std::size_t c = b;              // the code point holding byte `pos`
            std::size_t pos = cp[b].begin;  // the token's first byte
            for (std::size_t k = first; k < ids.size(); ++k) {
                const std::size_t last = pos + raw_[std::size_t(ids[k])].size() - 1;
                while (c + 1 < e && cp[c].end <= pos) ++c;
                std::size_t d = c;  // the code point holding the token's last byte
                while (d + 1 < e && cp[d].end <= last) ++d;
                info->push_back({ids[k], char0 + std::uint32_t(c), char0 + std::uint32_t(d + 1),
                                 byte0 + std::uint32_t(cp[c].begin),
                                 byte0 + std::uint32_t(cp[d].end), -1});
                pos = last + 1;
            }
        };
        std::size_t i = 0;
        while (i < cp.size()) {
            // the Digits pre-tokenizer first: a digit alone, or the run up to the next digit
            std::size_t limit = cp.size();
            if (opt_.individual_digits) {
                if (detail::bpe_number(cp[i].c) && is_digit_char(cp[i].c)) {
                    const std::size_t first = ids.size();
                    piece(text.substr(cp[i].begin, cp[i].end - cp[i].begin), ids);
                    if (info) offsets(first, i, i + 1);
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
                const std::size_t first = ids.size();
                piece(text.substr(part[k].begin, part[e - 1].end - part[k].begin), ids);
                if (info) offsets(first, i + k, i + e);
                k = e;
            }
            i = limit;
        }
        return std::uint32_t(cp.size());
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
    std::vector<std::string> raw_;                                // id -> the bytes it stands for
    bpe_options opt_;
    lm_tokenizer_settings settings_;
    std::unordered_map<char32_t, unsigned char> inverse_;                   // alphabet -> byte
    std::shared_ptr<piece_cache> cache_ = std::make_shared<piece_cache>();  // piece -> ids
};

}  // namespace text
FTUNE_NAMESPACE_END
