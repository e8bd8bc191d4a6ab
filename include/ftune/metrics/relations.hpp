// The official score of SemEval-2010 Task 8 (relations between marked nominals), computed by the
// rules of the task's scorer (semeval2010_task8_scorer-v1.2.pl), its "(9+1)-way evaluation with
// directionality taken into account":
//
//   - a label "Cause-Effect(e1,e2)" belongs to the relation type "Cause-Effect"; the direction
//     suffix "(e1,e2)" / "(e2,e1)" is stripped to find the type; "Other" is its own type;
//   - a prediction is correct only when the whole label (type and direction) matches;
//   - for each type R in the gold labels: precision = correct / (predictions of type R that were
//     made for another gold type + correct + right type with the wrong direction); recall =
//     correct / gold examples of type R; F1 from both;
//   - macro-averaged P, R, F1 = the means over the types in the gold labels other than Other
//     (F1 is the mean of the per-type F1s, not the F1 of the means); micro-averaged from the
//     summed counts, Other again left out. The official score is the macro-averaged F1.
//
// Checked against a committed reference made by tests/reference/relation_scores.py, which
// follows the scorer's own steps (confusion matrix, WRONG_DIR column); see
// tests/test_relations.cpp.
//
//   auto s = ftune::metrics::score_relations(gold, predicted);   // label strings
//   std::cout << ftune::metrics::relation_report(s);             // ... macro-averaged F1 = 86.14%
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace metrics {

/// The counts and scores of one relation type (direction counted).
struct relation_type_score {
    std::string type;                 ///< "Cause-Effect" (the label without its direction)
    std::size_t correct = 0;          ///< type and direction right
    std::size_t proposed = 0;         ///< predicted as this type for another gold type, or right
    std::size_t wrong_direction = 0;  ///< right type, wrong direction
    std::size_t gold = 0;             ///< gold examples of this type
    double precision = 0;  ///< correct / (proposed + wrong_direction) (0 when nothing proposed)
    double recall = 0;     ///< correct / gold
    double f1 = 0;         ///< 2PR / (P + R) (0 when both are 0)
};

/// SemEval-2010 Task 8's scores (see the file comment); fractions in [0, 1].
struct relation_scores {
    std::vector<relation_type_score> types;  ///< per gold type, sorted by name, Other included
    std::string other;                       ///< the type left out of the averages ("" none)
    double micro_precision = 0, micro_recall = 0, micro_f1 = 0;  ///< from the summed counts
    double macro_precision = 0, macro_recall = 0;                ///< means over the types
    double macro_f1 = 0;   ///< the official score: the mean of the types' F1
    double accuracy = 0;   ///< whole labels right / examples (Other included)
    std::size_t size = 0;  ///< examples
};

/// The relation type of a label: the label without a trailing "(e1,e2)" or "(e2,e1)".
inline std::string_view relation_type(std::string_view label) {
    for (std::string_view dir : {"(e1,e2)", "(e2,e1)"})
        if (label.size() > dir.size() && label.ends_with(dir))
            return label.substr(0, label.size() - dir.size());
    return label;
}

/// Scores predicted relation labels against gold ones (the same length, one per example) by
/// the official scorer's rules; `other` names the label left out of the averages ("Other" in
/// SemEval-2010 Task 8; "" to keep every type).
inline relation_scores score_relations(const std::vector<std::string>& gold,
                                       const std::vector<std::string>& predicted,
                                       std::string_view other = "Other") {
    if (gold.size() != predicted.size())
        throw error(
            errc::shape_mismatch, "score_relations",
            ftune::detail::cat(gold.size(), " gold labels but ", predicted.size(), " predictions"));
    std::map<std::string, relation_type_score, std::less<>> by_type;  // gold types only
    std::map<std::string, std::size_t, std::less<>> proposed;         // per predicted type
    relation_scores s;
    s.other = std::string(other);
    s.size = gold.size();
    std::size_t right = 0;
    for (std::size_t i = 0; i < gold.size(); ++i) {
        const auto g = relation_type(gold[i]), p = relation_type(predicted[i]);
        auto& t = by_type[std::string(g)];
        t.type = std::string(g);
        ++t.gold;
        if (gold[i] == predicted[i]) {
            ++t.correct, ++right;
            ++proposed[std::string(p)];
        } else if (g == p) {
            ++t.wrong_direction;  // the scorer's WRONG_DIR column, not a proposal of the type
        } else {
            ++proposed[std::string(p)];
        }
    }
    s.accuracy = gold.empty() ? 0 : double(right) / double(gold.size());
    std::size_t micro_correct = 0, micro_proposed = 0, micro_gold = 0, averaged = 0;
    for (auto& [name, t] : by_type) {
        const auto it = proposed.find(name);
        t.proposed = it == proposed.end() ? 0 : it->second;
        t.precision =
            t.proposed == 0 ? 0 : double(t.correct) / double(t.proposed + t.wrong_direction);
        t.recall = double(t.correct) / double(t.gold);
        t.f1 =
            t.precision + t.recall == 0 ? 0 : 2 * t.precision * t.recall / (t.precision + t.recall);
        s.types.push_back(t);
        if (name == other) continue;
        ++averaged;
        s.macro_precision += t.precision, s.macro_recall += t.recall, s.macro_f1 += t.f1;
        micro_correct += t.correct;
        micro_proposed += t.proposed + t.wrong_direction;
        micro_gold += t.gold;
    }
    if (averaged) {
        s.macro_precision /= double(averaged), s.macro_recall /= double(averaged);
        s.macro_f1 /= double(averaged);
    }
    s.micro_precision = micro_proposed ? double(micro_correct) / double(micro_proposed) : 0;
    s.micro_recall = micro_gold ? double(micro_correct) / double(micro_gold) : 0;
    s.micro_f1 = s.micro_precision + s.micro_recall == 0 ? 0
                                                         : 2 * s.micro_precision * s.micro_recall /
                                                               (s.micro_precision + s.micro_recall);
    return s;
}

/// The scores as the official scorer prints its per-relation lines and averages (percent, two
/// decimals), ending with the official score's line.
inline std::string relation_report(const relation_scores& s) {
    std::string out;
    char line[256];
    std::size_t width = 8;
    for (const auto& t : s.types) width = std::max(width, t.type.size());
    for (const auto& t : s.types) {
        std::snprintf(line, sizeof line,
                      "%*s :  P = %4zu/(%4zu +%4zu) = %6.2f%%  R = %4zu/%4zu = %6.2f%%  F1 = "
                      "%6.2f%%\n",
                      int(width), t.type.c_str(), t.correct, t.proposed, t.wrong_direction,
                      100 * t.precision, t.correct, t.gold, 100 * t.recall, 100 * t.f1);
        out += line;
    }
    const std::string excl = s.other.empty() ? "" : " (excluding " + s.other + ")";
    std::snprintf(line, sizeof line,
                  "\nmicro-averaged%s: P = %6.2f%%  R = %6.2f%%  F1 = %6.2f%%\n"
                  "macro-averaged%s: P = %6.2f%%  R = %6.2f%%  F1 = %6.2f%%\n",
                  excl.c_str(), 100 * s.micro_precision, 100 * s.micro_recall, 100 * s.micro_f1,
                  excl.c_str(), 100 * s.macro_precision, 100 * s.macro_recall, 100 * s.macro_f1);
    out += line;
    std::snprintf(line, sizeof line,
                  "accuracy (every label, direction counted) = %zu examples, %6.2f%%\n"
                  "official score (macro-averaged F1, direction counted%s) = %.2f%%\n",
                  s.size, 100 * s.accuracy, excl.c_str(), 100 * s.macro_f1);
    return out + line;
}

}  // namespace metrics
FTUNE_NAMESPACE_END
