// Evaluation metrics and reports: accuracy, macro F1, confusion matrix and scikit-learn's
// classification_report (single- and multi-label); entity-level scores over BIO / IOB2 tag
// sequences with conlleval's (seqeval's default) chunking and seqeval's report; the token-level
// report; Pearson / Spearman correlation (regression); SQuAD exact match and F1 (QA).
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace metrics {

/// Fraction of equal entries (0 for none).
inline double accuracy(const std::vector<int>& gold, const std::vector<int>& pred) {
    std::size_t ok = 0;
    for (std::size_t i = 0; i < gold.size(); ++i) ok += gold[i] == pred[i];
    return gold.empty() ? 0.0 : double(ok) / double(gold.size());
}

/// Unweighted mean of per-class F1 over the classes present in gold or pred (scikit-learn's
/// f1_score(average="macro") with zero_division=0).
inline double macro_f1(const std::vector<int>& gold, const std::vector<int>& pred,
                       std::size_t num_classes) {
    std::vector<double> tp(num_classes), fp(num_classes), fn(num_classes);
    std::vector<bool> seen(num_classes);
    for (std::size_t i = 0; i < gold.size(); ++i) {
        const auto g = std::size_t(gold[i]), p = std::size_t(pred[i]);
        seen[g] = seen[p] = true;
        if (g == p)
            tp[g] += 1;
        else
            fp[p] += 1, fn[g] += 1;
    }
    double sum = 0;
    std::size_t n = 0;
    for (std::size_t c = 0; c < num_classes; ++c) {
        if (!seen[c]) continue;
        const double d = 2 * tp[c] + fp[c] + fn[c];
        sum += d > 0 ? 2 * tp[c] / d : 0.0;
        ++n;
    }
    return n ? sum / double(n) : 0.0;
}

namespace detail {
/// Text table of scikit-learn's / seqeval's reports: a right-aligned name column as wide as the
/// longest name (at least "weighted avg"), then precision, recall, f1-score, support.
struct report_writer {
    std::size_t width = 12;  ///< name column width
    int digits = 4;          ///< decimals of the scores
    std::string out;         ///< the text so far

    /// A writer for these row names.
    report_writer(const std::vector<std::string>& names, int d) : digits(d) {
        for (const auto& n : names) width = std::max(width, n.size());
        out = name("") + " precision    recall  f1-score   support\n\n";
    }
    /// A name, right-aligned in the name column.
    std::string name(const std::string& s) const {
        return std::string(width > s.size() ? width - s.size() : 0, ' ') + s + " ";
    }
    /// A score cell.
    std::string cell(double v) const {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %9.*f", digits, v);
        return buf;
    }
    /// A support cell.
    static std::string count(double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %9.0f", v);
        return buf;
    }
    /// One row: name, precision, recall, f1-score, support.
    void row(const std::string& n, double p, double r, double f, double support) {
        out += name(n) + cell(p) + cell(r) + cell(f) + count(support) + "\n";
    }
    /// The accuracy row (only the f1-score column filled).
    void accuracy(double acc, double support) {
        out += name("accuracy") + std::string(20, ' ') + cell(acc) + count(support) + "\n";
    }
};

/// Precision, recall and F1 from counts (0 where undefined: zero_division=0).
inline std::tuple<double, double, double> prf(double tp, double predicted, double support) {
    const double p = predicted > 0 ? tp / predicted : 0.0, r = support > 0 ? tp / support : 0.0;
    return {p, r, p + r > 0 ? 2 * p * r / (p + r) : 0.0};
}

/// scikit-learn's precision, recall and F1 from counts: F1 = 2 tp / (support + predicted).
inline std::tuple<double, double, double> sklearn_prf(double tp, double predicted, double support) {
    const double p = predicted > 0 ? tp / predicted : 0.0, r = support > 0 ? tp / support : 0.0;
    return {p, r, support + predicted > 0 ? 2 * tp / (support + predicted) : 0.0};
}

/// numpy's sum of doubles (pairwise summation, 8 accumulators, blocks of 128), so that means
/// round as scikit-learn's do.
inline double numpy_sum(const double* a, std::size_t n) {
    if (n < 8) {
        double r = 0.;
        for (std::size_t i = 0; i < n; ++i) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        for (std::size_t j = 0; j < 8; ++j) r[j] = a[j];
        std::size_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (std::size_t j = 0; j < 8; ++j) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    std::size_t n2 = n / 2;
    n2 -= n2 % 8;
    return numpy_sum(a, n2) + numpy_sum(a + n2, n - n2);
}

/// numpy's mean of xs (0 for none).
inline double numpy_mean(const std::vector<double>& xs) {
    return xs.empty() ? 0.0 : numpy_sum(xs.data(), xs.size()) / double(xs.size());
}

/// numpy.average(xs, weights=w): sum(xs * w) / sum(w) (0 when the weights sum to 0).
inline double numpy_average(const std::vector<double>& xs, const std::vector<double>& w) {
    std::vector<double> xw(xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) xw[i] = xs[i] * w[i];
    const double W = numpy_sum(w.data(), w.size());
    return W > 0 ? numpy_sum(xw.data(), xw.size()) / W : 0.0;
}

/// The per-class scores and the macro and weighted avg rows of scikit-learn's reports.
inline void sklearn_rows(report_writer& w, const std::vector<std::string>& names,
                         const std::vector<double>& tp, const std::vector<double>& predicted,
                         const std::vector<double>& support, const std::function<void()>& between) {
    const std::size_t n = names.size();
    std::vector<double> P(n), R(n), F(n);
    for (std::size_t c = 0; c < n; ++c) {
        std::tie(P[c], R[c], F[c]) = sklearn_prf(tp[c], predicted[c], support[c]);
        w.row(names[c], P[c], R[c], F[c], support[c]);
    }
    const double total = numpy_sum(support.data(), support.size());
    w.out += "\n";
    between();
    w.row("macro avg", numpy_mean(P), numpy_mean(R), numpy_mean(F), total);
    w.row("weighted avg", numpy_average(P, support), numpy_average(R, support),
          numpy_average(F, support), total);
}
}  // namespace detail

/// scikit-learn's confusion_matrix(gold, pred, labels=range(n)): row = true class, column =
/// predicted class.
inline std::vector<std::vector<std::size_t>> confusion_matrix(const std::vector<int>& gold,
                                                              const std::vector<int>& pred,
                                                              std::size_t n) {
    std::vector<std::vector<std::size_t>> m(n, std::vector<std::size_t>(n));
    for (std::size_t i = 0; i < gold.size(); ++i) ++m[std::size_t(gold[i])][std::size_t(pred[i])];
    return m;
}

/// A confusion matrix as text: a header of predicted class numbers, then one row per true class
/// (its number and name), counts right-aligned.
inline std::string confusion_matrix_text(const std::vector<std::vector<std::size_t>>& m,
                                         const std::vector<std::string>& names) {
    const std::string corner = "true \\ predicted";
    std::size_t label = corner.size(), cw = 3;
    for (const auto& n : names) label = std::max(label, n.size() + 4);
    for (const auto& r : m)
        for (auto v : r) cw = std::max(cw, std::to_string(v).size());
    auto pad = [](std::string& out, std::size_t n) { out.append(n, ' '); };
    auto right = [&](std::string& out, const std::string& s, std::size_t w) {
        pad(out, w > s.size() ? w - s.size() : 0);
        out += s;
    };
    std::string out = corner;
    pad(out, label - corner.size());
    for (std::size_t j = 0; j < m.size(); ++j) {
        out += ' ';
        right(out, std::to_string(j), cw);
    }
    out += '\n';
    for (std::size_t i = 0; i < m.size(); ++i) {
        const std::size_t start = out.size();
        right(out, std::to_string(i), 3);
        out += ' ';
        if (i < names.size()) out += names[i];
        pad(out, label > out.size() - start ? label - (out.size() - start) : 0);
        for (auto v : m[i]) {
            out += ' ';
            right(out, std::to_string(v), cw);
        }
        out += '\n';
    }
    return out;
}

/// scikit-learn's classification_report(gold, pred, labels=range(n), target_names=names,
/// digits=digits, zero_division=0) as text: per-class precision, recall, f1-score and support,
/// then accuracy, macro avg and weighted avg.
inline std::string classification_report(const std::vector<int>& gold, const std::vector<int>& pred,
                                         const std::vector<std::string>& names, int digits = 4) {
    const std::size_t n = names.size();
    std::vector<double> tp(n), predicted(n), support(n);
    for (std::size_t i = 0; i < gold.size(); ++i) {
        const auto g = std::size_t(gold[i]), p = std::size_t(pred[i]);
        support[g] += 1, predicted[p] += 1, tp[g] += g == p;
    }
    detail::report_writer w(names, digits);
    double total = 0, correct = 0;
    for (std::size_t c = 0; c < n; ++c) total += support[c], correct += tp[c];
    detail::sklearn_rows(w, names, tp, predicted, support,
                         [&] { w.accuracy(total > 0 ? correct / total : 0.0, total); });
    return w.out;
}

/// scikit-learn's classification_report for multi-label indicator rows (gold[i][c], pred[i][c]
/// in {0, 1}; target_names=names, digits, zero_division=0): per label, then micro avg, macro avg,
/// weighted avg and samples avg.
inline std::string multilabel_report(const std::vector<std::vector<int>>& gold,
                                     const std::vector<std::vector<int>>& pred,
                                     const std::vector<std::string>& names, int digits = 4) {
    const std::size_t n = names.size();
    std::vector<double> tp(n), predicted(n), support(n);
    std::vector<double> sp, sr, sf;  // per-sample precision, recall, F1
    for (std::size_t i = 0; i < gold.size(); ++i) {
        double both = 0, g = 0, p = 0;
        for (std::size_t c = 0; c < n; ++c) {
            const bool gc = gold[i][c] != 0, pc = pred[i][c] != 0;
            support[c] += gc, predicted[c] += pc, tp[c] += gc && pc;
            both += gc && pc, g += gc, p += pc;
        }
        const auto [pi, ri, fi] = detail::sklearn_prf(both, p, g);
        sp.push_back(pi), sr.push_back(ri), sf.push_back(fi);
    }
    detail::report_writer w(names, digits);
    double TP = 0, P = 0, S = 0;
    for (std::size_t c = 0; c < n; ++c) TP += tp[c], P += predicted[c], S += support[c];
    double p = 0, r = 0, f = 0;  // (not a structured binding: Clang 14 cannot capture one)
    std::tie(p, r, f) = detail::sklearn_prf(TP, P, S);
    detail::sklearn_rows(w, names, tp, predicted, support, [&] { w.row("micro avg", p, r, f, S); });
    w.row("samples avg", detail::numpy_mean(sp), detail::numpy_mean(sr), detail::numpy_mean(sf), S);
    return w.out;
}

/// An entity: type and [begin, end) token positions.
using entity = std::tuple<std::string, std::size_t, std::size_t>;

/// The entities of one tag sequence (BIO / IOB2 / IOBES prefixes), chunked as conlleval and
/// seqeval's default mode: an I- after O or after another type starts an entity.
inline std::vector<entity> entities(const std::vector<std::string>& tags) {
    std::vector<entity> out;
    auto split = [](std::string_view t) -> std::pair<char, std::string> {
        if (t == "O" || t.size() < 2) return {'O', ""};
        if (t[1] == '-') return {t[0], std::string(t.substr(2))};
        return {'I', std::string(t)};  // a bare type reads as I-type
    };
    char prev = 'O';
    std::string prev_type;
    std::size_t begin = 0;
    for (std::size_t i = 0; i <= tags.size(); ++i) {
        const auto [tag, type] =
            i < tags.size() ? split(tags[i]) : std::pair<char, std::string>{'O', ""};
        const bool end =
            prev == 'E' || prev == 'S' ||
            ((prev == 'B' || prev == 'I') && (tag == 'B' || tag == 'S' || tag == 'O')) ||
            (prev != 'O' && prev_type != type);
        if (end && prev != 'O') out.emplace_back(prev_type, begin, i);
        const bool start =
            tag == 'B' || tag == 'S' ||
            ((prev == 'E' || prev == 'S' || prev == 'O') && (tag == 'E' || tag == 'I')) ||
            (tag != 'O' && prev_type != type);
        if (start) begin = i;
        prev = tag, prev_type = type;
    }
    return out;
}

/// Entity-level precision, recall and F1 over many sentences (micro average: exact type and
/// span matches), as seqeval's / conlleval's overall score.
struct entity_scores {
    double precision = 0, recall = 0, f1 = 0;          ///< micro averages
    std::size_t gold = 0, predicted = 0, correct = 0;  ///< counts
};

/// entity_scores of predicted tag sequences against gold ones (the same lengths).
inline entity_scores entity_f1(const std::vector<std::vector<std::string>>& gold,
                               const std::vector<std::vector<std::string>>& pred) {
    entity_scores s;
    for (std::size_t i = 0; i < gold.size(); ++i) {
        auto g = entities(gold[i]), p = entities(pred[i]);
        std::sort(g.begin(), g.end()), std::sort(p.begin(), p.end());
        s.gold += g.size(), s.predicted += p.size();
        std::vector<entity> both;
        std::set_intersection(g.begin(), g.end(), p.begin(), p.end(), std::back_inserter(both));
        s.correct += both.size();
    }
    s.precision = s.predicted ? double(s.correct) / double(s.predicted) : 0.0;
    s.recall = s.gold ? double(s.correct) / double(s.gold) : 0.0;
    s.f1 = s.precision + s.recall > 0 ? 2 * s.precision * s.recall / (s.precision + s.recall) : 0.0;
    return s;
}

/// seqeval's classification_report(gold, pred, digits=digits) as text: per entity type
/// (sorted) precision, recall, f1-score and support (gold entities), then micro avg, macro avg
/// and weighted avg.
inline std::string entity_report(const std::vector<std::vector<std::string>>& gold,
                                 const std::vector<std::vector<std::string>>& pred,
                                 int digits = 4) {
    struct counts {
        double tp = 0, predicted = 0, support = 0;
    };
    std::vector<std::pair<std::string, counts>> types;  // sorted by name
    auto at = [&](const std::string& t) -> counts& {
        auto it = std::lower_bound(types.begin(), types.end(), t,
                                   [](const auto& a, const std::string& b) { return a.first < b; });
        if (it == types.end() || it->first != t) it = types.insert(it, {t, counts{}});
        return it->second;
    };
    for (std::size_t i = 0; i < gold.size(); ++i) {
        auto g = entities(gold[i]), p = entities(pred[i]);
        std::sort(g.begin(), g.end()), std::sort(p.begin(), p.end());
        for (const auto& e : g) at(std::get<0>(e)).support += 1;
        for (const auto& e : p) at(std::get<0>(e)).predicted += 1;
        std::vector<entity> both;
        std::set_intersection(g.begin(), g.end(), p.begin(), p.end(), std::back_inserter(both));
        for (const auto& e : both) at(std::get<0>(e)).tp += 1;
    }
    std::vector<std::string> names;
    for (const auto& [t, c] : types) names.push_back(t);
    detail::report_writer w(names, digits);
    double tp = 0, predicted = 0, support = 0;
    std::vector<double> P, R, F, S;  // per type, averaged as numpy does (seqeval)
    for (const auto& [t, c] : types) {
        const auto [p, r, f] = detail::prf(c.tp, c.predicted, c.support);
        w.row(t, p, r, f, c.support);
        tp += c.tp, predicted += c.predicted, support += c.support;
        P.push_back(p), R.push_back(r), F.push_back(f), S.push_back(c.support);
    }
    const auto [p, r, f] = detail::prf(tp, predicted, support);
    w.out += "\n";
    w.row("micro avg", p, r, f, support);
    w.row("macro avg", detail::numpy_mean(P), detail::numpy_mean(R), detail::numpy_mean(F),
          support);
    w.row("weighted avg", detail::numpy_average(P, S), detail::numpy_average(R, S),
          detail::numpy_average(F, S), support);
    return w.out;
}

/// The token-level report of tag sequences: scikit-learn's classification_report(flat gold,
/// flat pred, digits, zero_division=0) over every word, with the tags (sorted) as classes.
inline std::string token_report(const std::vector<std::vector<std::string>>& gold,
                                const std::vector<std::vector<std::string>>& pred, int digits = 4) {
    std::vector<std::string> names;
    for (const auto* side : {&gold, &pred})
        for (const auto& s : *side) names.insert(names.end(), s.begin(), s.end());
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    auto index = [&](const std::string& t) {
        return int(std::lower_bound(names.begin(), names.end(), t) - names.begin());
    };
    std::vector<int> g, p;
    if (gold.size() != pred.size())
        throw error(
            errc::shape_mismatch, "token_report",
            ftune::detail::cat(gold.size(), " gold sentences, ", pred.size(), " predicted"));
    for (std::size_t i = 0; i < gold.size(); ++i) {
        if (gold[i].size() != pred[i].size())
            throw error(
                errc::shape_mismatch, ftune::detail::cat("token_report: sentence ", i),
                ftune::detail::cat(gold[i].size(), " gold tags, ", pred[i].size(), " predicted"));
    }
    for (std::size_t i = 0; i < gold.size(); ++i)
        for (std::size_t j = 0; j < gold[i].size(); ++j)
            g.push_back(index(gold[i][j])), p.push_back(index(pred[i][j]));
    return classification_report(g, p, names, digits);
}

/// Pearson's correlation coefficient of two equally long series (scipy.stats.pearsonr's r;
/// 0 when either is constant).
inline double pearson(const std::vector<double>& x, const std::vector<double>& y) {
    if (x.size() != y.size())
        throw error(errc::shape_mismatch, "pearson",
                    ftune::detail::cat(x.size(), " values against ", y.size()));
    const double n = double(x.size());
    if (x.size() < 2) return 0.0;
    double mx = 0, my = 0;
    for (std::size_t i = 0; i < x.size(); ++i) mx += x[i], my += y[i];
    mx /= n, my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
        sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx),
            syy += (y[i] - my) * (y[i] - my);
    return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

/// Ranks from 1, ties sharing their average rank (scipy.stats.rankdata's "average").
inline std::vector<double> ranks(const std::vector<double>& x) {
    std::vector<std::size_t> order(x.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
    std::vector<double> r(x.size());
    for (std::size_t i = 0; i < order.size();) {
        std::size_t j = i;
        while (j + 1 < order.size() && x[order[j + 1]] == x[order[i]]) ++j;
        for (std::size_t k = i; k <= j; ++k) r[order[k]] = double(i + j) / 2.0 + 1.0;
        i = j + 1;
    }
    return r;
}

/// Spearman's rank correlation (scipy.stats.spearmanr's rho: Pearson's r of the average ranks).
inline double spearman(const std::vector<double>& x, const std::vector<double>& y) {
    return pearson(ranks(x), ranks(y));
}

}  // namespace metrics
FTUNE_NAMESPACE_END
