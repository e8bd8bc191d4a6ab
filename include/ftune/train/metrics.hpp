// Evaluation metrics the trainer selects models by: accuracy and macro F1 over classes, and
// entity-level F1 over BIO / IOB2 tag sequences with conlleval's (seqeval's default) chunking.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "ftune/config.hpp"

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

/// scikit-learn's classification_report(gold, pred, labels=range(n), target_names=names,
/// digits=digits, zero_division=0) as text: per-class precision, recall, f1-score and support,
/// then accuracy, macro avg and weighted avg.
inline std::string classification_report(const std::vector<int>& gold, const std::vector<int>& pred,
                                         const std::vector<std::string>& names, int digits = 4) {
    const std::size_t n = names.size();
    std::vector<double> tp(n), fp(n), fn(n), support(n);
    for (std::size_t i = 0; i < gold.size(); ++i) {
        const auto g = std::size_t(gold[i]), p = std::size_t(pred[i]);
        support[g] += 1;
        if (g == p)
            tp[g] += 1;
        else
            fp[p] += 1, fn[g] += 1;
    }
    std::size_t width = 12;  // "weighted avg"
    for (const auto& nm : names) width = std::max(width, nm.size());
    auto num = [&](double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %9.*f", digits, v);
        return std::string(buf);
    };
    auto count = [](double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %9.0f", v);
        return std::string(buf);
    };
    auto name = [&](const std::string& s) {
        return std::string(width > s.size() ? width - s.size() : 0, ' ') + s + " ";
    };
    std::string out = name("") + " precision    recall  f1-score   support\n\n";
    double total = 0, correct = 0, mp = 0, mr = 0, mf = 0, wp = 0, wr = 0, wf = 0;
    for (std::size_t c = 0; c < n; ++c) {
        const double p = tp[c] + fp[c] > 0 ? tp[c] / (tp[c] + fp[c]) : 0.0;
        const double r = support[c] > 0 ? tp[c] / support[c] : 0.0;
        const double f = p + r > 0 ? 2 * p * r / (p + r) : 0.0;
        out += name(names[c]) + num(p) + num(r) + num(f) + count(support[c]) + "\n";
        total += support[c], correct += tp[c];
        mp += p, mr += r, mf += f;
        wp += p * support[c], wr += r * support[c], wf += f * support[c];
    }
    const double N = double(n), acc = total > 0 ? correct / total : 0.0;
    out += "\n" + name("accuracy") + std::string(20, ' ') + num(acc) + count(total) + "\n";
    out += name("macro avg") + num(mp / N) + num(mr / N) + num(mf / N) + count(total) + "\n";
    const double W = total > 0 ? total : 1;
    out += name("weighted avg") + num(wp / W) + num(wr / W) + num(wf / W) + count(total) + "\n";
    return out;
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
    std::size_t width = 12;  // "weighted avg"
    for (const auto& [t, c] : types) width = std::max(width, t.size());
    auto cell = [&](double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %9.*f", digits, v);
        return std::string(buf);
    };
    auto count = [](double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " %9.0f", v);
        return std::string(buf);
    };
    auto name = [&](const std::string& n) {
        return std::string(width > n.size() ? width - n.size() : 0, ' ') + n + " ";
    };
    auto prf = [](double tp, double predicted, double support) {
        const double p = predicted > 0 ? tp / predicted : 0.0, r = support > 0 ? tp / support : 0.0;
        return std::tuple{p, r, p + r > 0 ? 2 * p * r / (p + r) : 0.0};
    };
    std::string out = name("") + " precision    recall  f1-score   support\n\n";
    double tp = 0, predicted = 0, support = 0, mp = 0, mr = 0, mf = 0, wp = 0, wr = 0, wf = 0;
    for (const auto& [t, c] : types) {
        const auto [p, r, f] = prf(c.tp, c.predicted, c.support);
        out += name(t) + cell(p) + cell(r) + cell(f) + count(c.support) + "\n";
        tp += c.tp, predicted += c.predicted, support += c.support;
        mp += p, mr += r, mf += f;
        wp += p * c.support, wr += r * c.support, wf += f * c.support;
    }
    const double n = types.empty() ? 1 : double(types.size()), w = support > 0 ? support : 1;
    const auto [p, r, f] = prf(tp, predicted, support);
    out += "\n" + name("micro avg") + cell(p) + cell(r) + cell(f) + count(support) + "\n";
    out += name("macro avg") + cell(mp / n) + cell(mr / n) + cell(mf / n) + count(support) + "\n";
    out +=
        name("weighted avg") + cell(wp / w) + cell(wr / w) + cell(wf / w) + count(support) + "\n";
    return out;
}

}  // namespace metrics
FTUNE_NAMESPACE_END
