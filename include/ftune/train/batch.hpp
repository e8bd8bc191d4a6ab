// train::example and train::batch: encoded examples and the padded batches the trainer feeds a
// model and its head (what a head's loss and evaluation read). Encoding and batching:
// train/batching.hpp.
#pragma once

#include <cstddef>
#include <vector>

#include "ftune/core/types.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// One encoded example.
struct example {
    std::vector<token_id> ids;     ///< [CLS] ... [SEP] (...[SEP])
    std::vector<token_id> types;   ///< segment ids
    std::vector<token_id> labels;  ///< single-label: {class}; tokens: one per position (-100:
                                   ///< none); qa: {start, end}
    std::vector<float> targets;    ///< multi-label: L values in {0, 1}; regression: {value}
};

/// A padded batch, (B, T) row-major.
struct batch {
    std::size_t B = 0, T = 0;                ///< sizes
    std::vector<token_id> ids, mask, types;  ///< (B, T)
    std::vector<token_id> labels;            ///< (B) or (B, T) for ner
    std::vector<float> targets;              ///< (B, L)
};

}  // namespace train
FTUNE_NAMESPACE_END
