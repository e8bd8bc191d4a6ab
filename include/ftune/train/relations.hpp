// train::encode_relations: relation-extraction rows (data/relations.hpp) encoded for a relation
// classifier (bert::relation_classifier), long sentences cut around their entities.
#pragma once

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "ftune/data/relations.hpp"
#include "ftune/text/bert.hpp"
#include "ftune/train/batching.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// Encodes relation examples for a relation classifier (bert::relation_classifier): the rows
/// are checked (data::check_entity_markers) and encoded as single-label classification
/// (train::encode). A sentence longer than max_length tokens keeps the part around its
/// entities: the window of max_length - 2 word pieces that holds all four markers and starts as
/// early as it can (so the end is cut first, then the beginning); one whose entities alone span
/// more is an ftune::error naming its file:line. The tokenizer must know the markers
/// (io::add_entity_markers).
inline std::vector<example> encode_relations(
    const text::bert_tokenizer& tok, const data::text_dataset& d,
    const std::vector<std::string>& names, std::size_t max_length,
    const std::vector<std::string>& markers = data::default_entity_markers()) {
    data::check_entity_markers(d, markers);
    token_id marker[4];
    for (std::size_t k = 0; k < 4; ++k) {
        const auto id = tok.vocab().find(markers[k]);
        if (!id)
            throw error(errc::invalid_argument, markers[k],
                        "the tokenizer does not know the entity markers; call "
                        "io::add_entity_markers (load_hf does for a relation classifier)");
        marker[k] = *id;
    }
    if (max_length < 6)
        throw error(errc::invalid_argument, "max_length",
                    ftune::detail::cat(max_length, ": too short for [CLS], [SEP] and 4 markers"));
    auto xs = encode(tok, d, heads::problem::single_label_classification, names, max_length);
    for (std::size_t i = 0; i < xs.size(); ++i) {
        if (xs[i].ids.size() < max_length) continue;   // not cut
        const auto full = tok.encode(d.rows[i].text);  // [CLS] body [SEP], uncut
        if (full.ids.size() <= max_length) continue;
        const std::size_t room = max_length - 2, body = full.ids.size() - 2;
        std::size_t lo = body, hi = 0;  // the markers' first and last positions in the body
        for (std::size_t k = 0; k < body; ++k)
            if (std::find(std::begin(marker), std::end(marker), full.ids[k + 1]) !=
                std::end(marker))
                lo = std::min(lo, k), hi = std::max(hi, k);
        if (hi - lo + 1 > room)
            throw error(errc::invalid_argument, ftune::detail::cat(d.path, ":", d.rows[i].line),
                        ftune::detail::cat("the entities span ", hi - lo + 1,
                                           " word pieces, more than max_length ", max_length,
                                           " leaves (", room, "); raise the maximum length"));
        const std::size_t first = hi < room ? 0 : hi + 1 - room;  // the window [first, +room)
        xs[i].ids.assign(1, full.ids.front());
        xs[i].ids.insert(xs[i].ids.end(), full.ids.begin() + std::ptrdiff_t(1 + first),
                         full.ids.begin() + std::ptrdiff_t(1 + first + room));
        xs[i].ids.push_back(full.ids.back());
        xs[i].types.assign(xs[i].ids.size(), 0);
    }
    return xs;
}

}  // namespace train
FTUNE_NAMESPACE_END
