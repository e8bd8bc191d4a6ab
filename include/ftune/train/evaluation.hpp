// train::evaluation: the scores of one evaluation pass, filled batch by batch by the model's head
// (heads/*.hpp: score() then finish()), whatever the task.
#pragma once

#include <string>
#include <vector>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// Scores of an evaluation.
struct evaluation {
    double loss = 0;                   ///< mean loss
    double accuracy = 0;               ///< classify / ner (tokens) / mlm (masked tokens): accuracy;
                                       ///< multilabel: subset accuracy; qa: windows with both
                                       ///< ends right
    double f1 = 0;                     ///< classify: macro F1; ner: entity micro F1
    double metric = 0;                 ///< the selection metric (accuracy; ner: entity F1;
                                       ///< regression: −MSE; mlm, qa: −loss)
    std::vector<int> gold, predicted;  ///< classify: per example; ner: per labelled word
    std::vector<std::vector<std::string>> gold_tags,
        predicted_tags;  ///< ner: the tags of each sentence (in evaluation order)
    std::vector<std::vector<int>> gold_sets,
        predicted_sets;  ///< multilabel: 0/1 per label and example (sigmoid > 0.5)
    std::vector<double> targets, outputs;  ///< regression: per example

    /// Running sums while batches are scored (a head's score() adds, its finish() divides).
    struct sums {
        double loss = 0;     ///< Σ loss × weight
        double weight = 0;   ///< Σ weight (examples, labelled tokens or masked tokens)
        double correct = 0;  ///< Σ right predictions (subset, masked-token or span accuracy)
        double squared = 0;  ///< Σ squared error (regression)
    } running;               ///< the sums so far
};

}  // namespace train
FTUNE_NAMESPACE_END
