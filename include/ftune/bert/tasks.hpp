// ftune::bert task models: the BERT encoder with a task head (task_model<encoder, head>), under
// Transformers' names, so that their checkpoints load by name and Transformers loads ftune's back.
//
//   model                    BertModel                        hidden states + pooled output
//   sequence_classifier      BertForSequenceClassification    pooler -> dropout -> classifier
//   token_classifier         BertForTokenClassification       dropout -> classifier per token
//   question_answering       BertForQuestionAnswering         qa_outputs: start, end per token
//   masked_lm                BertForMaskedLM                  transform -> tied decoder + bias
//   relation_classifier      (ftune's) ...ForRelation...      [CLS], <e1>, <e2> -> classifier
//
// Each is parameterized by its encoder type (bert::encoder<T> or bert::Encoder<dims>), built from
// a bert::config, and has forward(ctx, ids, attention_mask, token_types) -> outputs,
// backward(ctx, d outputs) accumulating every trainable parameter's gradient, prepare_inference,
// zero_grad and visit_parameters. The heads (heads/*.hpp) also carry their task: loss,
// evaluation report and decoding.
#pragma once

#include "ftune/heads/base_model.hpp"
#include "ftune/heads/entity_relation.hpp"
#include "ftune/heads/masked_lm.hpp"
#include "ftune/heads/question_answering.hpp"
#include "ftune/heads/sequence_classification.hpp"
#include "ftune/heads/token_classification.hpp"
#include "ftune/bert/encoder.hpp"
#include "ftune/core/task_model.hpp"

FTUNE_NAMESPACE_BEGIN
namespace bert {

/// Encoder with the head template H instantiated for its scalar type, width and device.
template <template <class, std::size_t, class> class H, class Encoder>
using with_head = task_model<Encoder, H<typename Encoder::value_type, Encoder::hidden_extent,
                                        typename Encoder::device_type>>;

/// BertModel: forward gives the hidden states (B, T, C); head.pooled() the pooled output (B, C)
/// of the last forward. Parameter names have no prefix ("embeddings.word_embeddings.weight", ...,
/// "pooler.dense.weight").
template <class Encoder = encoder<float>>
using model = with_head<heads::base_model, Encoder>;

/// BertForSequenceClassification: logits (B, num_labels) = classifier(dropout(pooler(h))). The
/// config's problem_type (head.problem) says whether they are classes, independent labels or
/// regression values.
template <class Encoder = encoder<float>>
using sequence_classifier = with_head<heads::sequence_classification, Encoder>;

/// BertForTokenClassification: logits (B, T, num_labels) = classifier(dropout(h)) per token.
template <class Encoder = encoder<float>>
using token_classifier = with_head<heads::token_classification, Encoder>;

/// BertForQuestionAnswering: logits (B, T, 2), the start and end logit of every token.
template <class Encoder = encoder<float>>
using question_answering = with_head<heads::question_answering, Encoder>;

/// BertForMaskedLM: logits (B, T, V) through a transform and the decoder tied to the word
/// embeddings.
template <class Encoder = encoder<float>>
using masked_lm = with_head<heads::masked_lm, Encoder>;

/// Relation classification between two marked entities (R-BERT style, no Transformers class):
/// logits (B, num_labels) = classifier(dropout([h_[CLS]; h_<e1>; h_<e2>])); load_hf adds the
/// entity markers to the tokenizer and the token table (io::add_entity_markers).
template <class Encoder = encoder<float>>
using relation_classifier = with_head<heads::entity_relation, Encoder>;

}  // namespace bert
FTUNE_NAMESPACE_END
