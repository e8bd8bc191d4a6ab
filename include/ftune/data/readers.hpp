// Data readers: labelled texts from TSV / CSV files with a header (and from Financial
// PhraseBank's files), and tagged sentences from CoNLL column files. Malformed input is an
// ftune::error naming file:line.
//
//   TSV / CSV   a header names the columns: the text is `sentence`, `text` or `text_a` (with
//               `text_b` or `sentence2` for pairs), the label `label`, `labels`, `category` or
//               `intent` (or a column given by name). CSV follows RFC 4180: quoted fields may hold
//               commas, doubled quotes and newlines; CRLF line ends are accepted everywhere.
//   CoNLL       one token per line, the token in the first column and its tag in the last;
//               blank lines end sentences; -DOCSTART- lines are skipped.
//   Financial PhraseBank   `sentence@label` per line, Latin-1 (read_phrasebank).
#pragma once

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace data {

/// One labelled text (or pair of texts).
struct text_example {
    std::string text;       ///< the text (text_a)
    std::string text_pair;  ///< the second text of a pair (empty: none)
    std::string label;      ///< the label as written (a name or an integer)
    std::size_t line = 0;   ///< 1-based line where the row starts
};

/// Labelled texts read from a file.
struct text_dataset {
    std::vector<text_example> rows;  ///< the examples, in file order
    bool pairs = false;              ///< whether the file has a second text column
    std::string path;                ///< where they came from
};

/// Options of read_table.
struct table_options {
    char delimiter = 0;         ///< 0: TAB for .tsv, ',' otherwise
    std::string text_column;    ///< "" : sentence, text or text_a
    std::string pair_column;    ///< "" : text_b or sentence2 when present
    std::string label_column;   ///< "" : label, labels, category, intent or relation
    bool require_label = true;  ///< false: a file without a label column is accepted
};

namespace detail {
/// Splits a whole delimited file into records of fields (RFC 4180 quoting when quote is on),
/// each with the 1-based line it starts on. Throws naming file:line for an unterminated quote.
inline std::vector<std::pair<std::size_t, std::vector<std::string>>> split_records(
    std::string_view s, char delim, const std::string& path) {
    std::vector<std::pair<std::size_t, std::vector<std::string>>> out;
    std::vector<std::string> fields;
    std::string field;
    std::size_t line = 1, start_line = 1;
    bool quoted = false, any = false;
    const bool csv = delim == ',';
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (quoted) {
            if (c == '"') {
                if (i + 1 < s.size() && s[i + 1] == '"') {
                    field += '"';
                    ++i;
                } else {
                    quoted = false;
                }
            } else {
                if (c == '\n') ++line;
                if (!(c == '\r' && i + 1 < s.size() && s[i + 1] == '\n')) field += c;
            }
            continue;
        }
        if (csv && c == '"' && field.empty()) {
            quoted = true;
            any = true;
        } else if (c == delim) {
            fields.push_back(std::move(field));
            field.clear();
            any = true;
        } else if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
            if (any || !field.empty()) {
                fields.push_back(std::move(field));
                out.emplace_back(start_line, std::move(fields));
            }
            fields.clear(), field.clear(), any = false;
            start_line = ++line;
        } else {
            field += c;
            any = true;
        }
    }
    if (quoted)
        throw error(errc::parse, ftune::detail::cat(path, ":", start_line),
                    "a quoted field is never closed (a missing \")");
    if (any || !field.empty()) {
        fields.push_back(std::move(field));
        out.emplace_back(start_line, std::move(fields));
    }
    return out;
}
/// Calls f(line, number) for each line of s that is not blank (spaces and TABs only), without
/// its line end (LF or CRLF); number is 1-based.
template <class F>
void for_each_nonblank_line(std::string_view s, F&& f) {
    std::size_t line = 0, pos = 0;
    while (pos < s.size()) {
        std::size_t end = s.find('\n', pos);
        if (end == std::string::npos) end = s.size();
        std::string_view l = s.substr(pos, end - pos);
        ++line;
        pos = end + 1;
        if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
        if (l.find_first_not_of(" \t") != std::string_view::npos) f(l, line);
    }
}

/// Reads a whole file; throws naming it.
inline std::string read_all(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in || !std::filesystem::is_regular_file(path))
        throw error(errc::io, path.string(), "cannot open the data file");
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (s.starts_with("\xEF\xBB\xBF")) s.erase(0, 3);  // a UTF-8 byte-order mark
    return s;
}
}  // namespace detail

/// s without leading and trailing spaces and TABs (labels: ChnSentiCorp's test.tsv has one
/// written "    0").
inline std::string trimmed(std::string_view s) {
    const auto a = s.find_first_not_of(" \t");
    if (a == std::string_view::npos) return {};
    return std::string(s.substr(a, s.find_last_not_of(" \t") - a + 1));
}

/// Parses labelled texts from the contents of a TSV or CSV file with a header row (see the file
/// comment; labels lose surrounding spaces); `where` names the file in errors and its extension
/// picks the delimiter when the options give none.
inline text_dataset parse_table(std::string_view contents, const std::string& where,
                                const table_options& o = {}) {
    const char delim = o.delimiter
                           ? o.delimiter
                           : (std::filesystem::path(where).extension() == ".tsv" ? '\t' : ',');
    const auto records = detail::split_records(contents, delim, where);
    if (records.empty()) throw error(errc::parse, where, "the file is empty (no header row)");
    const auto& header = records.front().second;
    auto find = [&](const std::string& given,
                    std::initializer_list<const char*> defaults) -> std::optional<std::size_t> {
        auto index = [&](std::string_view name) -> std::optional<std::size_t> {
            for (std::size_t i = 0; i < header.size(); ++i)
                if (header[i] == name) return i;
            return std::nullopt;
        };
        if (!given.empty()) {
            auto i = index(given);
            if (!i)
                throw error(errc::parse, where + ":1",
                            "the header has no column \"" + given + "\"");
            return i;
        }
        for (const char* d : defaults)
            if (auto i = index(d)) return i;
        return std::nullopt;
    };
    std::string columns;
    for (const auto& h : header) {
        if (!columns.empty()) columns += ", ";
        columns += h;
    }
    const auto text = find(o.text_column, {"sentence", "text", "text_a", "sentence1"});
    if (!text)
        throw error(errc::parse, where + ":1",
                    "no text column (sentence, text or text_a) in the header: " + columns);
    const auto pair = find(o.pair_column, {"text_b", "sentence2"});
    const auto label = find(o.label_column, {"label", "labels", "category", "intent", "relation"});
    if (!label && o.require_label)
        throw error(
            errc::parse, where + ":1",
            "no label column (label, labels, category, intent or relation) in the header: " +
                columns);
    text_dataset d;
    d.path = where;
    d.pairs = pair.has_value();
    for (std::size_t r = 1; r < records.size(); ++r) {
        const auto& [line, f] = records[r];
        if (f.size() != header.size())
            throw error(
                errc::parse, ftune::detail::cat(where, ":", line),
                ftune::detail::cat(
                    "the row has ", f.size(), " fields but the header ", header.size(),
                    delim == '\t' ? " (a TAB inside a text?)" : " (an unquoted comma in a text?)"));
        text_example e{f[*text], pair ? f[*pair] : std::string(),
                       label ? trimmed(f[*label]) : std::string(), line};
        if (label && e.label.empty())
            throw error(errc::parse, ftune::detail::cat(where, ":", line), "the label is empty");
        d.rows.push_back(std::move(e));
    }
    return d;
}

/// Reads labelled texts from a TSV or CSV file with a header row (parse_table on its contents).
inline text_dataset read_table(const std::filesystem::path& path, const table_options& o = {}) {
    return parse_table(detail::read_all(path), path.string(), o);
}

/// Parses plain text, one example per non-empty line (domain text for masked-LM training); the
/// labels are empty.
inline text_dataset parse_lines(std::string_view contents, const std::string& where) {
    text_dataset d;
    d.path = where;
    detail::for_each_nonblank_line(contents, [&](std::string_view l, std::size_t line) {
        d.rows.push_back({std::string(l), "", "", line});
    });
    return d;
}

/// Reads plain text, one example per non-empty line (parse_lines on the file's contents).
inline text_dataset read_lines(const std::filesystem::path& path) {
    return parse_lines(detail::read_all(path), path.string());
}

/// Latin-1 (ISO-8859-1) bytes as UTF-8: each byte is the code point of the same value.
inline std::string latin1_to_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size() + s.size() / 8);
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x80) {
            out += ch;
        } else {
            out += char(0xC0 | (c >> 6));
            out += char(0x80 | (c & 0x3F));
        }
    }
    return out;
}

/// Parses a Financial PhraseBank file's contents (Sentences_AllAgree.txt...): one
/// `sentence@label` per line (the last '@' separates them), Latin-1 encoded as distributed
/// (decoded to UTF-8 here). A line without '@' or with an empty part is an error naming
/// where:line; blank lines are skipped.
inline text_dataset parse_phrasebank(std::string_view contents, const std::string& where) {
    const std::string s = latin1_to_utf8(contents);
    text_dataset d;
    d.path = where;
    detail::for_each_nonblank_line(s, [&](std::string_view l, std::size_t line) {
        const std::size_t at = l.rfind('@');
        std::string label = at == std::string_view::npos ? "" : trimmed(l.substr(at + 1));
        std::string_view text = l.substr(0, at == std::string_view::npos ? 0 : at);
        while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
        if (label.empty() || text.empty())
            throw error(errc::parse, ftune::detail::cat(d.path, ":", line),
                        "expected `sentence@label` (Financial PhraseBank's format), both parts "
                        "non-empty");
        d.rows.push_back({std::string(text), "", std::move(label), line});
    });
    return d;
}

/// Reads a Financial PhraseBank file (parse_phrasebank on its contents).
inline text_dataset read_phrasebank(const std::filesystem::path& path) {
    return parse_phrasebank(detail::read_all(path), path.string());
}

/// One sentence of a CoNLL file: its tokens and their tags.
struct tagged_sentence {
    std::vector<std::string> tokens;  ///< the first column
    std::vector<std::string> tags;    ///< the last column (BIO / IOB2 tags)
    std::size_t line = 0;             ///< 1-based line of the first token
};

/// Parses a CoNLL column file's contents (CoNLL-2003, Weibo NER...): whitespace-separated
/// columns, token first, tag last; blank lines end sentences; -DOCSTART- lines are skipped. A
/// line with one column is an error naming where:line.
inline std::vector<tagged_sentence> parse_conll(std::string_view s, const std::string& where) {
    std::vector<tagged_sentence> out;
    tagged_sentence cur;
    std::size_t line = 0, pos = 0;
    auto flush = [&] {
        if (!cur.tokens.empty()) out.push_back(std::move(cur));
        cur = {};
    };
    while (pos <= s.size()) {
        std::size_t end = s.find('\n', pos);
        if (end == std::string::npos) end = s.size();
        std::string_view l(s.data() + pos, end - pos);
        ++line;
        pos = end + 1;
        if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
        std::vector<std::string_view> cols;
        for (std::size_t i = 0; i < l.size();) {
            while (i < l.size() && (l[i] == ' ' || l[i] == '\t')) ++i;
            std::size_t j = i;
            while (j < l.size() && l[j] != ' ' && l[j] != '\t') ++j;
            if (j > i) cols.push_back(l.substr(i, j - i));
            i = j;
        }
        if (cols.empty()) {
            flush();
            if (end == s.size()) break;
            continue;
        }
        if (cols.front() == "-DOCSTART-") {
            flush();
            continue;
        }
        if (cols.size() < 2)
            throw error(errc::parse, ftune::detail::cat(where, ":", line),
                        "a token line needs at least two columns (token ... tag)");
        if (cur.tokens.empty()) cur.line = line;
        cur.tokens.emplace_back(cols.front());
        cur.tags.emplace_back(cols.back());
        if (end == s.size()) break;
    }
    flush();
    return out;
}

/// Reads a CoNLL column file (parse_conll on its contents).
inline std::vector<tagged_sentence> read_conll(const std::filesystem::path& path) {
    return parse_conll(detail::read_all(path), path.string());
}

}  // namespace data
FTUNE_NAMESPACE_END
