// generation::generator: text generation with a causal language model (llama::causal_lm<>),
// as Transformers' generate does it: the prompts left-padded into one batch, prefilled into a
// key/value cache (in passes of options::prefill_tokens positions), then one token per step
// chosen from the last logits (greedy, or sampled after repetition penalty, temperature, top-k
// and top-p, in Transformers' order), until a stop token, a stop string or max_new_tokens. Text
// is streamed as whole UTF-8 characters; after the prefill a step allocates nothing (every
// buffer is sized for the longest run first).
//
//   auto m = ...;  // a causal LM and its byte-level BPE tokenizer
//   ftune::generation::generator gen(m.model, *m.tokenizer);
//   auto r = gen.generate(m.tokenizer->encode("The capital of France is"), {.temperature = 0});
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/context.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/layers/kv_cache.hpp"
#include "ftune/text/bpe.hpp"

FTUNE_NAMESPACE_BEGIN
namespace generation {

/// How tokens are chosen and when generation stops (Transformers' GenerationConfig names; the
/// sampling defaults are llama.cpp's).
struct options {
    std::size_t max_new_tokens = 64;  ///< at most this many new tokens per sequence
    /// 0: greedy (the most likely token; top_k and top_p unused); otherwise the logits are
    /// divided by it and the token is drawn.
    double temperature = 0.8;
    std::size_t top_k = 40;                 ///< draw among the k most likely tokens (0: all)
    double top_p = 0.95;                    ///< then among the fewest whose probability reaches it
    double repetition_penalty = 1.0;        ///< CTRL's penalty on tokens already in the sequence
    std::vector<token_id> stop_tokens;      ///< stop at these (and the tokenizer's eos_token)
    std::vector<std::string> stop_strings;  ///< stop where the text holds one (left out of it)
    std::uint64_t seed = 0;                 ///< the draws' random stream
    /// The prompts are prefilled in passes of at most this many positions of the whole batch
    /// (the same columns of every row, prefill_tokens / B of them, at least 1; 0: all in one
    /// pass). Bounds the memory of the prefill as llama.cpp's n_ubatch does: every layer keeps
    /// its activations of a pass (docs/performance.md#generation). The logits equal one pass's
    /// up to float rounding.
    std::size_t prefill_tokens = 512;
};

/// Why a sequence stopped.
enum class finish {
    length,       ///< max_new_tokens (or the model's context) reached
    stop_token,   ///< a stop token (eos) was chosen
    stop_string,  ///< the text reached a stop string
};

/// One sequence's generation.
struct result {
    std::vector<token_id> tokens;    ///< the new tokens (a stop token not included)
    std::string text;                ///< their text, cut before a stop string
    finish reason = finish::length;  ///< why it stopped
};

/// Called with a sequence's index and its next piece of text as soon as it is certain (whole
/// UTF-8 characters; text that may begin a stop string is held back until it does not).
using stream_fn = std::function<void(std::size_t sequence, std::string_view text)>;

/// Generates with a causal LM Model (a task_model with a causal_lm head: forward_cached) and,
/// for text, its tokenizer; both must outlive it. One generation at a time per generator.
template <class Model>
class generator {
    using T = typename Model::value_type;
    using D = typename Model::backbone_type::device_type;

  public:
    /// A generator for model (packed for inference here, its products in precision p) and its
    /// tokenizer; contexts are limited to max_positions (0: no limit; Transformers'
    /// max_position_embeddings is the model's).
    generator(Model& model, const text::bpe_tokenizer& tokenizer, std::size_t max_positions = 0,
              precision p = precision::fp32)
        : model_(model), tok_(&tokenizer), max_positions_(max_positions) {
        model_.prepare_inference(p);
    }
    /// A generator of token ids only (no text, no stop strings; stop tokens from the options).
    explicit generator(Model& model, std::size_t max_positions = 0, precision p = precision::fp32)
        : model_(model), tok_(nullptr), max_positions_(max_positions) {
        model_.prepare_inference(p);
    }

    /// The continuation of one prompt (token ids, e.g. tokenizer.encode(text)).
    result generate(const std::vector<token_id>& prompt, const options& o = {},
                    const stream_fn& stream = {}) {
        return std::move(generate(std::vector<std::vector<token_id>>{prompt}, o, stream)[0]);
    }

    /// The continuations of a batch of prompts, run together (left-padded).
    std::vector<result> generate(const std::vector<std::vector<token_id>>& prompts,
                                 const options& o = {}, const stream_fn& stream = {}) {
        check(prompts, o);
        const std::size_t B = prompts.size();
        std::size_t L = 0;
        for (const auto& p : prompts) L = std::max(L, p.size());
        std::size_t new_tokens = o.max_new_tokens;
        if (max_positions_ && L + new_tokens > max_positions_) new_tokens = max_positions_ - L;
        // the cache, the stop tokens, the per-sequence state: all sized before the first step
        const auto& attn = model_.backbone.layer.front().self_attn.sizes();
        cache_.reset(model_.backbone.layer.size(), B, L + std::max<std::size_t>(new_tokens, 1),
                     attn.heads, attn.kv_heads * attn.head_dim);
        stops_ = o.stop_tokens;
        if (tok_)
            if (const auto eos = tok_->id_of(tok_->settings().eos_token); eos >= 0)
                stops_.push_back(eos);
        const token_id pad = pad_id();
        std::vector<result> out(B);
        rows_.assign(B, row{});
        std::size_t longest_stop = 0;
        for (const auto& s : o.stop_strings) longest_stop = std::max(longest_stop, s.size());
        for (std::size_t b = 0; b < B; ++b) {
            out[b].tokens.reserve(new_tokens);
            out[b].text.reserve(new_tokens * 8 + 64);
            rows_[b].pending.reserve(64);
        }
        if (o.repetition_penalty != 1.0) {
            seen_.assign(B * vocab(), 0);
            for (std::size_t b = 0; b < B; ++b)
                for (const token_id id : prompts[b]) seen_[b * vocab() + std::size_t(id)] = 1;
        }
        order_.resize(vocab());
        probs_.resize(vocab());
        ids_host_.reserve(B * std::max<std::size_t>(chunk_of(o, B, L), 1));
        mask_host_.reserve(ids_host_.capacity());
        if constexpr (!D::host) logits_host_.resize(B * vocab());
        // the prefill: the prompts left-padded, columns t0 .. t0 + n - 1 of every row per pass
        const std::size_t chunk = chunk_of(o, B, L);
        context ctx;  // eval mode
        // the ids (and mask) are made on the host and copied to the model's device; the last
        // logits (B, V) come back to the host for the choice of the next tokens
        const auto prefill = [&](std::size_t t0) {
            const std::size_t n = std::min(chunk, L - t0);
            ids_host_.resize(B * n);
            mask_host_.resize(B * n);
            for (std::size_t b = 0; b < B; ++b) {
                const std::size_t padding = L - prompts[b].size();
                for (std::size_t t = t0; t < t0 + n; ++t) {
                    ids_host_[b * n + t - t0] = t < padding ? pad : prompts[b][t - padding];
                    mask_host_[b * n + t - t0] = t < padding ? 0 : 1;
                }
            }
            ids_.resize(shape<dynamic, dynamic>(B, n));
            mask_.resize(ids_.shape());
            host_to_device<D>(ids_.data(), ids_host_.data(), B * n);
            host_to_device<D>(mask_.data(), mask_host_.data(), B * n);
            return host_logits(
                model_.forward_cached(ctx, ids_.view(), cache_, mask_.view()));  // (B, V)
        };
        const T* logits = prefill(0);  // the last pass's logits are the last prompt tokens'
        for (std::size_t t0 = chunk; t0 < L; t0 += chunk) logits = prefill(t0);
        ids_.resize(shape<dynamic, dynamic>(B, 1));
        ids_host_.resize(B);
        for (std::size_t step = 0; step < new_tokens; ++step) {
            std::size_t running = 0;
            for (std::size_t b = 0; b < B; ++b) {
                if (rows_[b].done) {
                    ids_host_[b] = pad;
                    continue;
                }
                const token_id id = choose(logits + b * vocab(), b, step, o);
                ids_host_[b] = id;
                if (std::find(stops_.begin(), stops_.end(), id) != stops_.end()) {
                    finish_row(out[b], b, finish::stop_token, stream);
                    continue;
                }
                out[b].tokens.push_back(id);
                if (!seen_.empty()) seen_[b * vocab() + std::size_t(id)] = 1;
                if (append_text(out[b], b, id, o, longest_stop, stream)) continue;
                ++running;
            }
            if (running == 0 || step + 1 == new_tokens) break;
            host_to_device<D>(ids_.data(), ids_host_.data(), B);
            logits = host_logits(model_.forward_cached(ctx, ids_.view(), cache_));
        }
        for (std::size_t b = 0; b < B; ++b)
            if (!rows_[b].done) finish_row(out[b], b, finish::length, stream);
        return out;
    }

  private:
    struct row {
        std::string pending;      // bytes of an unfinished UTF-8 character
        std::size_t emitted = 0;  // bytes of the text already streamed
        bool done = false;
    };

    std::size_t vocab() const noexcept {
        return model_.backbone.input_embeddings().value.extent(0);
    }

    // positions per sequence in one prefill pass
    static std::size_t chunk_of(const options& o, std::size_t B, std::size_t L) {
        return o.prefill_tokens == 0 ? L : std::clamp<std::size_t>(o.prefill_tokens / B, 1, L);
    }

    // logits (B, V) in host memory: as they are on a host device, else copied down
    template <class View>
    const T* host_logits(const View& logits) {
        if constexpr (D::host) {
            return logits.data();
        } else {
            device_to_host<D>(logits_host_.data(), logits.data(), logits.size());
            return logits_host_.data();
        }
    }

    // the id that pads prompts on the left (never attended): pad, else eos, else 0
    token_id pad_id() const {
        if (!tok_) return 0;
        for (const auto* s : {&tok_->settings().pad_token, &tok_->settings().eos_token})
            if (const auto id = tok_->id_of(*s); id >= 0 && std::size_t(id) < vocab()) return id;
        return 0;
    }

    void check(const std::vector<std::vector<token_id>>& prompts, const options& o) const {
        if (prompts.empty()) throw error(errc::invalid_argument, "generate", "no prompts given");
        for (std::size_t b = 0; b < prompts.size(); ++b) {
            if (prompts[b].empty())
                throw error(errc::invalid_argument, "generate",
                            ftune::detail::cat("prompt ", b, " has no tokens"));
            for (const token_id id : prompts[b])
                if (id < 0 || std::size_t(id) >= vocab())
                    throw error(errc::out_of_range, "generate",
                                ftune::detail::cat("prompt ", b, " holds token id ", id,
                                                   " outside the model's vocabulary of ", vocab()));
            if (max_positions_ && prompts[b].size() >= max_positions_)
                throw error(errc::out_of_range, "generate",
                            ftune::detail::cat("prompt ", b, " has ", prompts[b].size(),
                                               " tokens; the model's context is ", max_positions_));
        }
        if (!(o.temperature >= 0) || !std::isfinite(o.temperature) || !(o.top_p > 0) ||
            o.top_p > 1 || !(o.repetition_penalty > 0) || !std::isfinite(o.repetition_penalty))
            throw error(errc::invalid_argument, "generate",
                        "temperature must be >= 0, top_p in (0, 1], repetition_penalty > 0");
        for (const auto& s : o.stop_strings)
            if (s.empty()) throw error(errc::invalid_argument, "generate", "an empty stop string");
        if (!tok_ && !o.stop_strings.empty())
            throw error(errc::invalid_argument, "generate",
                        "stop strings need the tokenizer (this generator has token ids only)");
    }

    // the next token of sequence b from its logits (V): repetition penalty, then greedy, or
    // temperature, top-k, top-p and a draw
    token_id choose(const T* logits, std::size_t b, std::size_t step, const options& o) {
        const std::size_t V = vocab();
        float* p = probs_.data();
        for (std::size_t i = 0; i < V; ++i) p[i] = float(logits[i]);
        if (o.repetition_penalty != 1.0) {
            const float r = float(o.repetition_penalty);
            const unsigned char* seen = seen_.data() + b * V;
            for (std::size_t i = 0; i < V; ++i)
                if (seen[i]) p[i] = p[i] < 0 ? p[i] * r : p[i] / r;
        }
        if (o.temperature == 0)  // greedy: the first most likely token, as torch.argmax
            return token_id(std::max_element(p, p + V) - p);
        const float inv = float(1.0 / o.temperature);
        for (std::size_t i = 0; i < V; ++i) p[i] *= inv;
        // candidates by decreasing logit: the top k (ties at the k-th value kept, as
        // Transformers' TopKLogitsWarper), else all
        std::iota(order_.begin(), order_.end(), token_id(0));
        auto more = [&](token_id a, token_id c) { return p[a] > p[c] || (p[a] == p[c] && a < c); };
        std::size_t n = V;
        if (o.top_k > 0 && o.top_k < V) {
            std::nth_element(order_.begin(), order_.begin() + std::ptrdiff_t(o.top_k - 1),
                             order_.end(), more);
            const float kth = p[order_[o.top_k - 1]];
            n = std::size_t(std::partition(order_.begin(), order_.end(),
                                           [&](token_id a) { return p[a] >= kth; }) -
                            order_.begin());
        }
        std::sort(order_.begin(), order_.begin() + std::ptrdiff_t(n), more);
        // softmax over the candidates
        const float top = p[order_[0]];
        double sum = 0;
        for (std::size_t i = 0; i < n; ++i) sum += std::exp(double(p[order_[i]] - top));
        // top-p: the fewest most likely tokens whose probability reaches top_p (at least one;
        // Transformers drops those whose ascending cumulative probability is <= 1 - top_p)
        std::size_t keep = n;
        if (o.top_p < 1) {
            double cum = 0;
            for (std::size_t i = 0; i < n; ++i) {
                cum += std::exp(double(p[order_[i]] - top)) / sum;
                if (cum >= o.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        double kept = 0;
        for (std::size_t i = 0; i < keep; ++i) kept += std::exp(double(p[order_[i]] - top));
        // the draw: value `step` of stream b
        const double u = double(random_stream(o.seed, b).uniform(step)) * kept;
        double acc = 0;
        for (std::size_t i = 0; i < keep; ++i) {
            acc += std::exp(double(p[order_[i]] - top));
            if (u < acc) return order_[i];
        }
        return order_[keep - 1];
    }

    // appends id's bytes to sequence b's text, streams what is certain; true when a stop string
    // ended it
    bool append_text(result& r, std::size_t b, token_id id, const options& o,
                     std::size_t longest_stop, const stream_fn& stream) {
        auto& w = rows_[b];
        if (!tok_) return false;
        // ids past the tokenizer's (a table padded beyond the vocabulary) have no text
        if (std::size_t(id) < tok_->size()) tok_->append_bytes(id, w.pending);
        // whole characters move to the text; an unfinished one at the end waits
        // (bytes that form no character become U+FFFD, as the tokenizer's decode)
        const std::size_t whole = complete_utf8(w.pending);
        text::detail::append_utf8_lossy(r.text, std::string_view(w.pending).substr(0, whole));
        w.pending.erase(0, whole);
        if (longest_stop) {
            for (const auto& s : o.stop_strings)
                if (const std::size_t at = r.text.find(s, w.emitted); at != std::string::npos) {
                    r.text.resize(at);
                    finish_row(r, b, finish::stop_string, stream);
                    return true;
                }
        }
        // hold back the longest end of the text that begins a stop string
        std::size_t hold = 0;
        for (const auto& s : o.stop_strings)
            for (std::size_t k = std::min(s.size() - 1, r.text.size() - w.emitted); k > hold; --k)
                if (std::string_view(r.text).substr(r.text.size() - k) ==
                    std::string_view(s).substr(0, k)) {
                    hold = k;
                    break;
                }
        const std::size_t upto = r.text.size() - hold;
        if (stream && upto > w.emitted)
            stream(b, std::string_view(r.text).substr(w.emitted, upto - w.emitted));
        w.emitted = std::max(w.emitted, upto);
        return false;
    }

    // ends sequence b: what is left of its text is streamed (an unfinished character as U+FFFD)
    void finish_row(result& r, std::size_t b, finish why, const stream_fn& stream) {
        auto& w = rows_[b];
        if (why != finish::stop_string) {
            text::detail::append_utf8_lossy(r.text, w.pending);
            w.pending.clear();
        }
        if (stream && r.text.size() > w.emitted)
            stream(b, std::string_view(r.text).substr(w.emitted));
        w.emitted = r.text.size();
        w.done = true;
        r.reason = why;
    }

    // the length of s's longest prefix that does not end inside a UTF-8 character (bytes that
    // cannot start or continue one count as whole)
    static std::size_t complete_utf8(const std::string& s) {
        const std::size_t n = s.size();
        for (std::size_t back = 1; back <= std::min<std::size_t>(3, n); ++back) {
            const auto c = static_cast<unsigned char>(s[n - back]);
            if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
            const std::size_t len = (c & 0xE0) == 0xC0   ? 2
                                    : (c & 0xF0) == 0xE0 ? 3
                                    : (c & 0xF8) == 0xF0 ? 4
                                                         : 1;
            return len > back ? n - back : n;
        }
        return n;
    }

    Model& model_;
    const text::bpe_tokenizer* tok_;  // null: token ids only
    std::size_t max_positions_;
    layers::kv_cache<T, D> cache_;
    buffer<token_id, shape<dynamic, dynamic>, D> ids_, mask_;  // (B, chunk) then (B, 1)
    std::vector<token_id> ids_host_, mask_host_;               // the same, made on the host
    std::vector<T> logits_host_;  // (B, V) a device's last logits, copied down
    std::vector<token_id> stops_;
    std::vector<row> rows_;
    std::vector<unsigned char> seen_;  // (B, V) tokens in each sequence (repetition penalty)
    std::vector<token_id> order_;      // (V) candidate order
    std::vector<float> probs_;         // (V) the logits being processed
};

}  // namespace generation
FTUNE_NAMESPACE_END
