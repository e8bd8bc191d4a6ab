// Relation-extraction data: sentences whose two entities are marked in the text,
//
//   The <e1>author</e1> of a keygen uses a <e2>disassembler</e2> to look at the raw code.
//   -> Instrument-Agency(e2,e1)
//
// read from any table (data::read_table with the label column named, e.g. the staged
// semeval2010_task8/train.tsv: id, relation, sentence) or from SemEval-2010 Task 8's release
// files (TRAIN_FILE.TXT, TEST_FILE_FULL.TXT); check_entity_markers says which line is malformed,
// and train::encode_relations (train/relations.hpp) cuts long sentences around their entities.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ftune/data/readers.hpp"

FTUNE_NAMESPACE_BEGIN
namespace data {

/// The entity markers of relation extraction, open and close entity 1 then entity 2: "<e1>",
/// "</e1>", "<e2>", "</e2>" (the SemEval-2010 Task 8 release's tags).
inline std::vector<std::string> default_entity_markers() {
    return {"<e1>", "</e1>", "<e2>", "</e2>"};
}

/// Parses SemEval-2010 Task 8's release format: per example a line `<id><TAB>"<sentence>"`, a
/// line with the relation, a line `Comment: ...`, then a blank line (CRLF or LF line ends; the
/// last blank line may be missing). The text is the sentence without its enclosing quotes, the
/// label the relation, line the sentence's line. A malformed example is an ftune::error naming
/// where:line.
inline text_dataset parse_semeval2010(std::string_view contents, const std::string& where) {
    std::vector<std::pair<std::size_t, std::string_view>> lines;  // (number, text) of each line
    std::size_t number = 0;
    for (std::size_t pos = 0; pos < contents.size();) {
        std::size_t end = contents.find('\n', pos);
        if (end == std::string_view::npos) end = contents.size();
        std::string_view line = contents.substr(pos, end - pos);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        lines.emplace_back(++number, line);
        pos = end + 1;
    }
    auto at = [&](std::size_t n) { return ftune::detail::cat(where, ":", n); };
    text_dataset d;
    d.path = where;
    for (std::size_t i = 0; i < lines.size();) {
        if (trimmed(lines[i].second).empty()) {  // blank lines between (or after) examples
            ++i;
            continue;
        }
        const auto [n, first] = lines[i];
        const std::size_t tab = first.find('\t');
        if (tab == std::string_view::npos || tab == 0 ||
            first.substr(0, tab).find_first_not_of("0123456789") != std::string_view::npos)
            throw error(errc::parse, at(n),
                        "expected <id><TAB>\"<sentence>\" (SemEval-2010 Task 8's format)");
        std::string_view s = first.substr(tab + 1);
        if (s.size() < 2 || s.front() != '"' || s.back() != '"')
            throw error(errc::parse, at(n), "the sentence is not enclosed in double quotes");
        s = s.substr(1, s.size() - 2);
        if (i + 1 >= lines.size() || trimmed(lines[i + 1].second).empty())
            throw error(errc::parse, at(n + 1), "expected the relation after the sentence");
        std::string label = trimmed(lines[i + 1].second);
        const bool comment = i + 2 < lines.size() && lines[i + 2].second.starts_with("Comment");
        if (i + 2 < lines.size() && !comment && !trimmed(lines[i + 2].second).empty())
            throw error(errc::parse, at(n + 2),
                        "expected a \"Comment:\" line after the relation (or a blank line)");
        d.rows.push_back({std::string(s), {}, std::move(label), n});
        i += comment ? 3 : 2;
    }
    if (d.rows.empty()) throw error(errc::parse, where, "no examples");
    return d;
}

/// Reads a SemEval-2010 Task 8 release file (parse_semeval2010 on its contents).
inline text_dataset read_semeval2010(const std::filesystem::path& path) {
    return parse_semeval2010(detail::read_all(path), path.string());
}

/// Checks that each row's text marks its two entities with `markers` (open and close entity 1,
/// open and close entity 2): each marker exactly once, each entity opened before it is closed and
/// not empty. Throws ftune::error naming the row's file:line and what is wrong.
inline void check_entity_markers(
    const text_dataset& d, const std::vector<std::string>& markers = default_entity_markers()) {
    if (markers.size() != 4)
        throw error(errc::invalid_argument, "entity markers",
                    ftune::detail::cat(markers.size(), " markers; give 4"));
    for (const auto& r : d.rows) {
        const std::string where = ftune::detail::cat(d.path, ":", r.line);
        std::size_t pos[4];
        for (std::size_t k = 0; k < 4; ++k) {
            const std::string& m = markers[k];
            pos[k] = r.text.find(m);
            if (pos[k] == std::string::npos)
                throw error(errc::parse, where,
                            "the text has no " + m + ": mark both entities as " + markers[0] +
                                "..." + markers[1] + " and " + markers[2] + "..." + markers[3]);
            if (r.text.find(m, pos[k] + m.size()) != std::string::npos)
                throw error(errc::parse, where, "the text has more than one " + m);
        }
        for (std::size_t e = 0; e < 2; ++e) {
            const std::size_t open = pos[2 * e], close = pos[2 * e + 1];
            if (close < open + markers[2 * e].size())
                throw error(errc::parse, where,
                            markers[2 * e + 1] + " comes before " + markers[2 * e]);
            if (trimmed(std::string_view(r.text).substr(open + markers[2 * e].size(),
                                                        close - open - markers[2 * e].size()))
                    .empty())
                throw error(errc::parse, where, ftune::detail::cat("entity ", e + 1, " is empty"));
        }
    }
}

}  // namespace data

FTUNE_NAMESPACE_END
