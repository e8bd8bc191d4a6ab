// ftune::llama task models: the Llama backbone with a head (Transformers' LlamaFor* classes).
#pragma once

#include "ftune/core/task_model.hpp"
#include "ftune/heads/causal_lm.hpp"
#include "ftune/heads/last_token_classification.hpp"
#include "ftune/llama/decoder.hpp"

FTUNE_NAMESPACE_BEGIN
namespace llama {

/// LlamaForCausalLM: vocabulary logits (B, T, V) for every position, the LM head tied to the
/// token table when the config says so.
template <class Decoder = decoder<float>>
using causal_lm =
    task_model<Decoder, heads::causal_lm<typename Decoder::value_type, Decoder::hidden_extent,
                                         typename Decoder::device_type>>;

/// LlamaForSequenceClassification: logits (B, num_labels) = score(h at each sequence's last token),
/// "score" without a bias; the config's problem_type says whether they are classes, independent
/// labels or regression values.
template <class Decoder = decoder<float>>
using sequence_classifier = task_model<
    Decoder, heads::last_token_classification<typename Decoder::value_type, Decoder::hidden_extent,
                                              typename Decoder::device_type>>;

}  // namespace llama
FTUNE_NAMESPACE_END
