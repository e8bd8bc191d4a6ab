// From read data to padded batches: encoding labelled texts (for an encoder's WordPiece or a
// decoder's byte-level BPE tokenizer) and tagged sentences (BERT), deterministic length-bucketed
// batch order, and dynamic padding.
#pragma once

#include <algorithm>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/rng.hpp"
#include "ftune/data/readers.hpp"
#include "ftune/heads/common.hpp"
#include "ftune/io/atomic.hpp"
#include "ftune/train/batch.hpp"
#include "ftune/text/bert.hpp"
#include "ftune/text/bpe.hpp"

FTUNE_NAMESPACE_BEGIN
namespace train {

/// The label ids of label names: integers keep their value when every label is an integer
/// (0..n-1 as written), names are sorted (as Hugging Face datasets' ClassLabel), or follow
/// `known` (a checkpoint's id2label) when it holds every name.
inline std::vector<std::string> label_names(const std::vector<std::string>& seen,
                                            const std::vector<std::string>& known = {}) {
    std::vector<std::string> names(seen);
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    if (!known.empty() && std::all_of(names.begin(), names.end(), [&](const std::string& n) {
            return std::find(known.begin(), known.end(), n) != known.end();
        }))
        return known;
    const bool integers = !names.empty() && std::all_of(names.begin(), names.end(), [](auto& n) {
        return !n.empty() && n.size() < 9 &&
               std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; });
    });
    if (integers) {
        std::size_t top = 0;
        for (const auto& n : names) top = std::max<std::size_t>(top, std::stoul(n));
        std::vector<std::string> by_id(top + 1);
        for (std::size_t i = 0; i <= top; ++i)
            by_id[i] = i < known.size() ? known[i] : std::to_string(i);
        return by_id;
    }
    return names;
}

namespace detail {
inline token_id label_id(const std::vector<std::string>& names, const std::string& label,
                         const std::string& where) {
    const auto it = std::find(names.begin(), names.end(), label);
    if (it != names.end()) return token_id(it - names.begin());
    // integer labels may be written as numbers while names come from a checkpoint
    if (!label.empty() &&
        std::all_of(label.begin(), label.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
        label.size() < 9 && std::stoul(label) < names.size())
        return token_id(std::stoul(label));
    throw error(errc::out_of_range, where,
                "label \"" + label + "\" is not one of the model's " +
                    std::to_string(names.size()) + " labels");
}
}  // namespace detail

namespace detail {
/// ids and token types of a text (and its pair) for an encoder: [CLS] a [SEP] (b [SEP]), the
/// longer text cut first to max_length, as BertTokenizer.
inline example classifier_input(const text::bert_tokenizer& tok, std::string_view a,
                                std::optional<std::string_view> b, std::size_t max_length) {
    const auto e = tok.encode(a, b, {.max_length = max_length});
    return {e.ids, e.type_ids, {}, {}};
}
/// ids of a text (and its pair) for a decoder's classifier: bos (when the tokenizer adds one)
/// and a, then bos and b, as LlamaTokenizer builds pairs; the longer text cut first to
/// max_length (Transformers' longest_first); token types all 0.
inline example classifier_input(const text::bpe_tokenizer& tok, std::string_view a,
                                std::optional<std::string_view> b, std::size_t max_length) {
    const auto& s = tok.settings();
    const token_id bos = s.add_bos_token ? tok.id_of(s.bos_token) : -1;
    auto first = tok.encode(a);
    std::vector<std::int32_t> second;
    if (b) second = tok.encode(*b);
    const std::size_t specials = (bos >= 0) * (b ? 2 : 1);
    while (max_length && first.size() + second.size() + specials > max_length &&
           !(first.empty() && second.empty()))
        (first.size() >= second.size() ? first : second).pop_back();
    example x;
    if (bos >= 0) x.ids.push_back(bos);
    x.ids.insert(x.ids.end(), first.begin(), first.end());
    if (b && bos >= 0) x.ids.push_back(bos);
    x.ids.insert(x.ids.end(), second.begin(), second.end());
    x.types.assign(x.ids.size(), 0);
    return x;
}
}  // namespace detail

/// Encodes labelled texts for a sequence classifier of problem type p with labels `names`
/// (ignored for regression), truncated to max_length tokens: a class id (single-label), 0/1 per
/// label from comma-separated names (multi-label), a number (regression). Tokenizer is an
/// encoder's WordPiece or a decoder's byte-level BPE (detail::classifier_input).
template <class Tokenizer>
std::vector<example> encode(const Tokenizer& tok, const data::text_dataset& d, heads::problem p,
                            const std::vector<std::string>& names, std::size_t max_length) {
    std::vector<example> out;
    out.reserve(d.rows.size());
    for (const auto& r : d.rows) {
        const std::string where = ftune::detail::cat(d.path, ":", r.line);
        example x = detail::classifier_input(
            tok, r.text, d.pairs ? std::optional<std::string_view>(r.text_pair) : std::nullopt,
            max_length);
        if (p == heads::problem::single_label_classification) {
            x.labels = {detail::label_id(names, r.label, where)};
        } else if (p == heads::problem::multi_label_classification) {
            x.targets.assign(names.size(), 0.0f);
            std::size_t a = 0;
            while (a <= r.label.size()) {
                std::size_t b = r.label.find(',', a);
                if (b == std::string::npos) b = r.label.size();
                if (b > a)
                    x.targets[std::size_t(
                        detail::label_id(names, r.label.substr(a, b - a), where))] = 1;
                a = b + 1;
            }
        } else {
            try {
                std::size_t pos = 0;
                x.targets = {std::stof(r.label, &pos)};
                if (pos != r.label.size()) throw std::invalid_argument("trailing");
            } catch (const std::exception&) {
                throw error(errc::parse, where,
                            "regression label \"" + r.label + "\" is not a number");
            }
        }
        out.push_back(std::move(x));
    }
    return out;
}

/// Encodes tagged sentences for token classification: each word is tokenized on its own; its
/// first wordpiece carries the tag, the others and [CLS]/[SEP] carry -100 (ignored), as Hugging
/// Face's token-classification recipe. Words past max_length are cut.
inline std::vector<example> encode(const text::bert_tokenizer& tok,
                                   const std::vector<data::tagged_sentence>& sentences,
                                   const std::vector<std::string>& names, std::size_t max_length,
                                   const std::string& path = "") {
    std::vector<example> out;
    out.reserve(sentences.size());
    std::vector<text::token_info> pieces;
    for (const auto& s : sentences) {
        example x;
        x.ids.push_back(tok.cls_id());
        x.labels.push_back(-100);
        for (std::size_t w = 0; w < s.tokens.size(); ++w) {
            pieces.clear();
            tok.tokenize(s.tokens[w], pieces);
            const token_id tag =
                detail::label_id(names, s.tags[w], ftune::detail::cat(path, ":", s.line + w));
            for (std::size_t k = 0; k < pieces.size(); ++k) {
                if (max_length && x.ids.size() + 1 >= max_length) break;
                x.ids.push_back(pieces[k].id);
                x.labels.push_back(k == 0 ? tag : -100);
            }
        }
        x.ids.push_back(tok.sep_id());
        x.labels.push_back(-100);
        x.types.assign(x.ids.size(), 0);
        out.push_back(std::move(x));
    }
    return out;
}

/// The order of one epoch as batches of example indices. With shuffle, a permutation drawn from
/// (seed, epoch) — the same on any thread count and after a resume. With bucket, indices are
/// sorted by length within windows of 50 batches before batching (less padding, as Hugging
/// Face's group_by_length), and the batches are shuffled again.
inline std::vector<std::vector<std::size_t>> batch_order(const std::vector<example>& xs,
                                                         std::size_t batch_size, bool shuffle,
                                                         bool bucket, std::uint64_t seed,
                                                         std::uint64_t epoch) {
    std::vector<std::size_t> idx(xs.size());
    std::iota(idx.begin(), idx.end(), std::size_t(0));
    const random_stream s(seed, 1000 + 2 * epoch), s2(seed, 1001 + 2 * epoch);
    if (shuffle) ftune::shuffle(std::span<std::size_t>(idx), s);
    if (bucket) {
        const std::size_t window = 50 * batch_size;
        for (std::size_t a = 0; a < idx.size(); a += window) {
            const auto end = idx.begin() + std::ptrdiff_t(std::min(idx.size(), a + window));
            std::stable_sort(
                idx.begin() + std::ptrdiff_t(a), end,
                [&](std::size_t i, std::size_t j) { return xs[i].ids.size() > xs[j].ids.size(); });
        }
    }
    std::vector<std::vector<std::size_t>> batches;
    for (std::size_t a = 0; a < idx.size(); a += batch_size)
        batches.emplace_back(idx.begin() + std::ptrdiff_t(a),
                             idx.begin() + std::ptrdiff_t(std::min(idx.size(), a + batch_size)));
    if (shuffle && bucket) ftune::shuffle(std::span<std::vector<std::size_t>>(batches), s2);
    return batches;
}

/// Writes the batches of `epochs` epochs that trainer::fit takes from xs (batch_order with
/// shuffle; bucket, batch_size and seed as the trainer's options), one batch per line (a step's
/// when grad_accum is 1): its examples' indices separated by spaces, epoch after epoch. Another
/// framework can then train on the very same batches (bench/smollm2_recipe.py's fit(batches=...)).
/// Written atomically.
inline void save_batch_order(const std::filesystem::path& path, const std::vector<example>& xs,
                             std::size_t batch_size, bool bucket, std::uint64_t seed,
                             std::size_t epochs) {
    io::write_file_atomic(path, [&](std::ostream& f) {
        for (std::size_t e = 0; e < epochs; ++e)
            for (const auto& b : batch_order(xs, batch_size, true, bucket, seed, e)) {
                for (std::size_t j = 0; j < b.size(); ++j) f << (j ? " " : "") << b[j];
                f << '\n';
            }
    });
}

/// Pads the examples `which` into b (to the longest; [PAD] = pad_id, mask 0, and for per-token
/// labels -100), reusing b's storage: no allocation once b has seen a batch as large.
inline void collate_into(batch& b, const std::vector<example>& xs,
                         std::span<const std::size_t> which, token_id pad_id, bool per_token) {
    b.B = which.size(), b.T = 0;
    for (auto i : which) b.T = std::max(b.T, xs[i].ids.size());
    b.ids.assign(b.B * b.T, pad_id), b.mask.assign(b.B * b.T, 0), b.types.assign(b.B * b.T, 0);
    if (per_token)
        b.labels.assign(b.B * b.T, -100);
    else
        b.labels.clear();
    b.targets.clear();
    for (std::size_t r = 0; r < b.B; ++r) {
        const auto& x = xs[which[r]];
        std::copy(x.ids.begin(), x.ids.end(), b.ids.begin() + std::ptrdiff_t(r * b.T));
        std::copy(x.types.begin(), x.types.end(), b.types.begin() + std::ptrdiff_t(r * b.T));
        std::fill_n(b.mask.begin() + std::ptrdiff_t(r * b.T), x.ids.size(), 1);
        if (per_token)
            std::copy(x.labels.begin(), x.labels.end(), b.labels.begin() + std::ptrdiff_t(r * b.T));
        else
            b.labels.insert(b.labels.end(), x.labels.begin(), x.labels.end());
        b.targets.insert(b.targets.end(), x.targets.begin(), x.targets.end());
    }
}

/// Masked-LM inputs and labels, as Transformers' DataCollatorForLanguageModeling: each real,
/// non-special token of the batch is chosen with probability `probability`; a chosen token's
/// label is its id (the others -100) and its input becomes [MASK] (80%), a random vocabulary
/// token (10%) or stays (10%). Draws come from `rng` (value 3 i .. 3 i + 2 for position i), so
/// a batch masks the same way whenever it is seen with the same stream.
struct mlm_masking {
    double probability = 0.15;      ///< share of tokens chosen
    token_id mask_id = -1;          ///< [MASK] (set it: mlm_masking_for(tokenizer))
    std::size_t vocab_size = 0;     ///< random replacements are drawn from [0, vocab_size)
    std::vector<token_id> special;  ///< never chosen ([CLS], [SEP], [PAD], [UNK], [MASK])

    /// Masks b in place (b.labels becomes (B, T)).
    void apply(batch& b, const random_stream& rng) const {
        if (mask_id < 0 || vocab_size == 0 || special.empty())
            throw error(errc::invalid_argument, "mlm_masking",
                        "no [MASK] id, vocabulary size or special tokens: set it from the "
                        "tokenizer with train::mlm_masking_for(tokenizer)");
        b.labels.assign(b.B * b.T, -100);
        for (std::size_t i = 0; i < b.B * b.T; ++i) {
            if (!b.mask[i] || std::find(special.begin(), special.end(), b.ids[i]) != special.end())
                continue;
            if (rng.uniform(3 * i) >= float(probability)) continue;
            b.labels[i] = b.ids[i];
            const float u = rng.uniform(3 * i + 1);
            if (u < 0.8f)
                b.ids[i] = mask_id;
            else if (u < 0.9f)
                b.ids[i] = token_id(rng.below(3 * i + 2, std::uint32_t(vocab_size)));
        }
    }
};

/// mlm_masking with a tokenizer's [MASK] id, its vocabulary size, and its special tokens
/// ([CLS], [SEP], [PAD], [UNK], [MASK]: Transformers' all_special_ids) never chosen.
inline mlm_masking mlm_masking_for(const text::bert_tokenizer& tok, double probability = 0.15) {
    return {.probability = probability,
            .mask_id = tok.mask_id(),
            .vocab_size = tok.vocab().size(),
            .special = {tok.cls_id(), tok.sep_id(), tok.pad_id(), tok.unk_id(), tok.mask_id()}};
}

/// Plain texts (the `text` column of a table, or lines) as masked-LM examples: [CLS] text [SEP]
/// cut to max_length; labels are made per batch by mlm_masking.
inline std::vector<example> encode_texts(const text::bert_tokenizer& tok,
                                         const data::text_dataset& d, std::size_t max_length) {
    std::vector<example> out;
    out.reserve(d.rows.size());
    for (const auto& r : d.rows) {
        auto e = tok.encode(r.text, std::nullopt, max_length);
        example x;
        x.ids = std::move(e.ids);
        x.types = std::move(e.type_ids);
        x.labels.assign(x.ids.size(), -100);
        out.push_back(std::move(x));
    }
    return out;
}

/// Rows [r0, r1) of batch g into out, at g's length T (a rank's share of a global batch in
/// data-parallel training: the padding, and so every row's computation, stay those of g);
/// per-row labels and targets are cut the same way. Reuses out's storage.
inline void slice_rows(batch& out, const batch& g, std::size_t r0, std::size_t r1) {
    if (r0 > r1 || r1 > g.B)
        throw error(errc::out_of_range, "slice_rows",
                    ftune::detail::cat("rows [", r0, ", ", r1, ") of a batch of ", g.B));
    auto cut = [&](auto& to, const auto& from) {
        const std::size_t per = g.B ? from.size() / g.B : 0;
        to.assign(from.begin() + std::ptrdiff_t(r0 * per), from.begin() + std::ptrdiff_t(r1 * per));
    };
    out.B = r1 - r0, out.T = g.T;
    cut(out.ids, g.ids), cut(out.mask, g.mask), cut(out.types, g.types);
    cut(out.labels, g.labels), cut(out.targets, g.targets);
}

/// collate_into a new batch.
inline batch collate(const std::vector<example>& xs, std::span<const std::size_t> which,
                     token_id pad_id, bool per_token) {
    batch b;
    collate_into(b, xs, which, pad_id, per_token);
    return b;
}

}  // namespace train
FTUNE_NAMESPACE_END
