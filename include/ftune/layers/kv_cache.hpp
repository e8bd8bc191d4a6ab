// layers::kv_cache: what a decoder keeps between generation steps: every layer's rotated keys
// and values of the positions seen so far, and the state one step's layers share (which
// positions are tokens and which padding, each new token's position, the attention scratch).
// Sized once for B sequences of up to `capacity` positions: a step then allocates nothing.
#pragma once

#include <algorithm>
#include <vector>

#include "ftune/core/tensor.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// Keys and values of B sequences for a decoder's layers, filled step by step (a prefill of the
/// prompts, then one token per step). Rows may start with padding (left padding: every
/// sequence's last token is at the same place); a row's positions count its tokens only, as
/// Transformers' generate derives position_ids from the attention mask.
template <scalar T, device_tag D = device::cpu>
class kv_cache {
  public:
    /// One layer's keys and values.
    struct entry {
        buffer<T, dynamic_shape<3>, D> k;  ///< (B, capacity, Hkv d) keys, rotated
        buffer<T, dynamic_shape<3>, D> v;  ///< (B, capacity, Hkv d) values
    };

    /// An empty cache; reset() sizes it.
    kv_cache() = default;

    /// Empties the cache and sizes it for `batch` sequences of up to `capacity` positions of a
    /// decoder with `layers` layers, `heads` query heads and `kv_features` = Hkv d key/value
    /// features (storage grows only).
    void reset(std::size_t layers, std::size_t batch, std::size_t capacity, std::size_t heads,
               std::size_t kv_features) {
        entries_.resize(layers);
        for (auto& e : entries_) {
            e.k.resize(dynamic_shape<3>(batch, capacity, kv_features));
            e.v.resize(e.k.shape());
        }
        batch_ = batch, capacity_ = capacity, length_ = 0, heads_ = heads;
        valid_.assign(batch * capacity, 0);
        seen_.assign(batch, 0);
        // the host staging of a step at its largest (a step then allocates nothing)
        attention_host_.reserve(batch * capacity);
        positions_host_.reserve(batch * capacity);
        flags_host_.reserve(batch * capacity);
        // the step buffers at their largest decode sizes (a prefill may grow them once)
        attention_.resize(shape<dynamic, dynamic>(batch, capacity));
        mask_.resize(attention_.shape());
        positions_.resize(shape<dynamic>(batch));
        scores_.resize(dynamic_shape<4>(batch, heads, 1, capacity));
        probs_.resize(scores_.shape());
    }

    /// Starts a step of `steps` new positions per sequence: attention (B, steps) on D, 1 for a
    /// token and 0 for padding (null: all tokens), sets their positions and the key mask over
    /// the S = length() + steps positions. Throws when they do not fit in the capacity. The
    /// bookkeeping runs on the host; on a device the mask comes down and the positions and
    /// the (B, S) token flags go up (B (steps + S) ids).
    void begin_step(const token_id* attention, std::size_t steps) {
        if (length_ + steps > capacity_)
            throw error(errc::out_of_range, "kv_cache",
                        ftune::detail::cat(length_, " cached and ", steps,
                                           " new positions exceed the capacity of ", capacity_,
                                           " (reset() it larger)"));
        steps_ = steps;
        const std::size_t S = length_ + steps;
        if (attention && !D::host) {  // the step's mask to the host
            attention_host_.resize(batch_ * steps);
            device_to_host<D>(attention_host_.data(), attention, batch_ * steps);
            attention = attention_host_.data();
        }
        positions_host_.resize(batch_ * steps);
        token_id* pos = positions_host_.data();
        for (std::size_t b = 0; b < batch_; ++b)
            for (std::size_t i = 0; i < steps; ++i) {
                const bool token = !attention || attention[b * steps + i] != 0;
                valid_[b * capacity_ + length_ + i] = token ? 1 : 0;
                // padding gets position 1, as Transformers' masked_fill (it is never attended)
                pos[b * steps + i] = token ? token_id(seen_[b]++) : 1;
            }
        flags_host_.resize(batch_ * S);
        for (std::size_t b = 0; b < batch_; ++b)
            std::copy_n(valid_.data() + b * capacity_, S, flags_host_.data() + b * S);
        positions_.resize(shape<dynamic>(batch_ * steps));
        host_to_device<D>(positions_.data(), positions_host_.data(), batch_ * steps);
        attention_.resize(shape<dynamic, dynamic>(batch_, S));
        host_to_device<D>(attention_.data(), flags_host_.data(), batch_ * S);
        mask_.resize(attention_.shape());
        ops::key_mask(mask_, attention_.view());
        scores_.resize(dynamic_shape<4>(batch_, heads_, steps, S));
        probs_.resize(scores_.shape());
    }
    /// Ends the step: its positions count as cached.
    void end_step() noexcept { length_ += steps_; }

    /// Layer i's keys and values.
    entry& layer(std::size_t i) { return entries_.at(i); }
    /// Number of layers.
    std::size_t layers() const noexcept { return entries_.size(); }
    /// B, the sequences.
    std::size_t batch() const noexcept { return batch_; }
    /// The most positions a sequence may hold.
    std::size_t capacity() const noexcept { return capacity_; }
    /// Positions cached so far (before the current step's).
    std::size_t length() const noexcept { return length_; }
    /// New positions per sequence in the current step.
    std::size_t steps() const noexcept { return steps_; }
    /// The current step's positions (B * steps), in rotary angle order.
    view<const token_id, shape<dynamic>, D> positions() const { return positions_.view(); }
    /// The current step's additive key mask (B, S).
    view<const T, shape<dynamic, dynamic>, D> key_mask() const { return mask_.view(); }
    /// The attention scores' scratch (B, H, steps, S).
    buffer<T, dynamic_shape<4>, D>& scores() noexcept { return scores_; }
    /// The attention probabilities' scratch (B, H, steps, S).
    buffer<T, dynamic_shape<4>, D>& probs() noexcept { return probs_; }

  private:
    std::vector<entry> entries_;  // one per layer
    std::size_t batch_ = 0, capacity_ = 0, length_ = 0, steps_ = 0, heads_ = 0;
    std::vector<unsigned char> valid_;      // (B, capacity) 1: token, 0: padding
    std::vector<std::size_t> seen_;         // tokens of each sequence so far
    std::vector<token_id> attention_host_;  // (B, steps) the step's mask (a device's, copied)
    std::vector<token_id> positions_host_;  // (B * steps) positions, made on the host
    std::vector<token_id> flags_host_;      // (B, S) 1 token, 0 padding, made on the host
    buffer<token_id, shape<dynamic, dynamic>, D> attention_;  // (B, S) 1 token, 0 padding
    buffer<T, shape<dynamic, dynamic>, D> mask_;              // (B, S) additive
    buffer<token_id, shape<dynamic>, D> positions_;           // (B * steps)
    buffer<T, dynamic_shape<4>, D> scores_, probs_;           // (B, H, steps, S)
};

}  // namespace layers
FTUNE_NAMESPACE_END
