// ftune::gpt2 task models: the GPT-2 backbone with a head (Transformers' GPT2LMHeadModel,
// GPT2ForSequenceClassification).
#pragma once

#include "ftune/core/task_model.hpp"
#include "ftune/gpt2/decoder.hpp"
#include "ftune/heads/causal_lm.hpp"
#include "ftune/heads/last_token_classification.hpp"

FTUNE_NAMESPACE_BEGIN
namespace gpt2 {

/// GPT2LMHeadModel: vocabulary logits (B, T, V) for every position, the LM head tied to the
/// token table "wte" (or its own "lm_head.weight" when the config unties them).
template <class Decoder = decoder<float>>
using lm_head_model =
    task_model<Decoder, heads::causal_lm<typename Decoder::value_type, Decoder::hidden_extent,
                                         typename Decoder::device_type>>;

/// GPT2ForSequenceClassification: logits (B, num_labels) = score(h at each sequence's last token),
/// "score" without a bias; the config's problem_type says whether they are classes, independent
/// labels or regression values.
template <class Decoder = decoder<float>>
using sequence_classifier = task_model<
    Decoder, heads::last_token_classification<typename Decoder::value_type, Decoder::hidden_extent,
                                              typename Decoder::device_type>>;

}  // namespace gpt2
FTUNE_NAMESPACE_END
