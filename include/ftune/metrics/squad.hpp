// SQuAD's exact match and F1 of an answer against the gold answers, as the official evaluation
// script (v1.1) normalizes and scores them. Needs utf8proc (Unicode lower case).
#pragma once

#include <algorithm>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <utf8proc.h>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN
namespace metrics {

/// SQuAD's answer normalization, returned as its tokens: lower case (Unicode, by utf8proc),
/// ASCII punctuation removed (string.punctuation), the articles a / an / the dropped, split at
/// whitespace. Non-ASCII characters count as word characters.
inline std::vector<std::string> squad_tokens(std::string_view s) {
    std::vector<std::string> out;
    std::string cur;
    auto flush = [&] {
        if (!cur.empty() && cur != "a" && cur != "an" && cur != "the") out.push_back(cur);
        cur.clear();
    };
    for (std::size_t i = 0; i < s.size();) {
        utf8proc_int32_t cp = 0;
        const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                        utf8proc_ssize_t(s.size() - i), &cp);
        if (n <= 0) {  // invalid UTF-8: the byte as it is
            cur += s[i++];
            continue;
        }
        i += std::size_t(n);
        if (cp < 128 && std::ispunct(cp)) continue;  // removed, joining its neighbours
        if (cp == ' ' || (cp >= '\t' && cp <= '\r')) {
            flush();
            continue;
        }
        utf8proc_uint8_t buf[4];
        const auto m = utf8proc_encode_char(utf8proc_tolower(cp), buf);
        cur.append(reinterpret_cast<const char*>(buf), std::size_t(m));
    }
    flush();
    return out;
}

/// SQuAD exact match of a prediction against its gold answers: 1 when the normalized
/// prediction equals a normalized gold answer, else 0.
inline double squad_exact_match(std::string_view prediction,
                                const std::vector<std::string>& golds) {
    const auto p = squad_tokens(prediction);
    for (const auto& g : golds)
        if (squad_tokens(g) == p) return 1.0;
    return 0.0;
}

/// SQuAD F1 of a prediction: the best over gold answers of the F1 of shared normalized tokens
/// (an empty answer scores 1 against an empty gold answer, else 0, as SQuAD v2).
inline double squad_f1(std::string_view prediction, const std::vector<std::string>& golds) {
    const auto p = squad_tokens(prediction);
    double best = 0;
    for (const auto& gs : golds) {
        const auto g = squad_tokens(gs);
        if (p.empty() || g.empty()) {
            best = std::max(best, p.empty() && g.empty() ? 1.0 : 0.0);
            continue;
        }
        auto a = p, b = g;
        std::sort(a.begin(), a.end()), std::sort(b.begin(), b.end());
        std::vector<std::string> both;
        std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
        if (both.empty()) continue;
        const double pr = double(both.size()) / double(p.size()),
                     rc = double(both.size()) / double(g.size());
        best = std::max(best, 2 * pr * rc / (pr + rc));
    }
    return best;
}

}  // namespace metrics
FTUNE_NAMESPACE_END
