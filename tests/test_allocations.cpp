// A steady-state training step (forward + backward) and an inference call at a (batch, sequence)
// already seen allocate nothing: this binary replaces the global operator new to count.
#include <ftune/loss.hpp>
#include <ftune/bert/encoder.hpp>
#include <ftune/bert/tasks.hpp>
#include <ftune/optim.hpp>
#include <ftune/generation.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/train/batch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "catch.hpp"

namespace {
std::atomic<long> allocations{0};  // calls of any operator new since start
void* counted(std::size_t n, std::size_t align) {
    allocations.fetch_add(1, std::memory_order_relaxed);
    if (n == 0) n = 1;
    void* p = align > alignof(std::max_align_t)
                  ? std::aligned_alloc(align, (n + align - 1) / align * align)
                  : std::malloc(n);
    if (!p) throw std::bad_alloc();
    return p;
}
}  // namespace

void* operator new(std::size_t n) {
    return counted(n, 0);
}
void* operator new[](std::size_t n) {
    return counted(n, 0);
}
void* operator new(std::size_t n, std::align_val_t a) {
    return counted(n, std::size_t(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
    return counted(n, std::size_t(a));
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete[](void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}

TEST_CASE("steady-state forward + backward allocates nothing", "[allocations]") {
    constexpr std::size_t dyn = ftune::dynamic;
    ftune::bert::encoder<float> enc({.vocab_size = 50,
                                     .hidden_size = 16,
                                     .num_hidden_layers = 2,
                                     .num_attention_heads = 4,
                                     .intermediate_size = 32,
                                     .max_position_embeddings = 16});
    const std::size_t B = 3, T = 7, C = 16;
    std::vector<ftune::token_id> ids(B * T, 5), mask(B * T, 1);
    mask[B * T - 1] = 0;
    std::vector<float> dh(B * T * C, 0.01f);
    const ftune::view<const ftune::token_id, ftune::dynamic_shape<2>> idv(ids.data(), B, T),
        mv(mask.data(), B, T);
    const ftune::view<const float, ftune::shape<dyn, dyn, dyn>> dhv(dh.data(), B, T, C);
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(1)};
    for (int warm = 0; warm < 2; ++warm) {  // workspaces grow to this (batch, sequence)
        enc.forward(train, idv, mv);
        enc.backward(train, dhv);
    }
    const long before = allocations.load();
    REQUIRE(before > 0);  // the counter sees the workspaces being allocated during warm-up
    for (int step = 0; step < 3; ++step) {
        enc.zero_grad();
        enc.forward(train, idv, mv);
        enc.backward(train, dhv);
    }
    ftune::context eval;
    enc.forward(eval, idv, mv);
    CHECK(allocations.load() - before == 0);
    // a smaller batch reuses the workspaces too
    const ftune::view<const ftune::token_id, ftune::dynamic_shape<2>> small(ids.data(), 1, T),
        smallm(mask.data(), 1, T);
    const long before_small = allocations.load();
    enc.forward(train, small, smallm);
    enc.backward(train, {dh.data(), 1, T, C});
    CHECK(allocations.load() - before_small == 0);
}

TEST_CASE("inference with prepared (packed) weights allocates nothing after the first call",
          "[allocations]") {
    ftune::bert::encoder<float> enc({.vocab_size = 50,
                                     .hidden_size = 16,
                                     .num_hidden_layers = 2,
                                     .num_attention_heads = 4,
                                     .intermediate_size = 32,
                                     .max_position_embeddings = 16});
    std::vector<ftune::token_id> ids(2 * 9, 5);
    enc.prepare_inference();
    ftune::context eval;
    enc.forward(eval, {ids.data(), 2, 9});
    const long before = allocations.load();
    for (int i = 0; i < 3; ++i) enc.forward(eval, {ids.data(), 2, 9});
    enc.forward(eval, {ids.data(), 1, 9});
    CHECK(allocations.load() - before == 0);
    enc.prepare_inference();  // packing again into storage of the same size
    CHECK(allocations.load() - before == 0);
}

using Model = ftune::bert::sequence_classifier<ftune::bert::encoder<float>>;
// A small classifier: 2 layers of hidden size 32, 3 labels.
const ftune::bert::config small_classifier{.vocab_size = 50,
                                           .hidden_size = 32,
                                           .num_hidden_layers = 2,
                                           .num_attention_heads = 4,
                                           .intermediate_size = 48,
                                           .max_position_embeddings = 16,
                                           .num_labels = 3};

TEST_CASE(
    "a prepared classifier packs no weight per call, also after a collecting visit, and "
    "allocates nothing",
    "[allocations]") {
    Model m(small_classifier);
    m.prepare_inference();
    // collecting the parameters (a visit that may change the weights) keeps the model
    // prepared; the next forward packs the weights again, once
    const auto params = ftune::optim::parameters_of(m);
    for (auto& p : params)
        for (std::size_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.01f * float(i % 5);
    auto& packs = ftune::backends::cpu::packing_stats();
    std::vector<ftune::token_id> ids(2 * 9, 5), mask(2 * 9, 1);
    ftune::context eval;
    const auto repacks = packs.prepacked.load();
    m.forward(eval, {ids.data(), 2, 9}, {mask.data(), 2, 9});
    CHECK(packs.prepacked.load() - repacks ==
          2 * 4 + 2);  // per block: qkv, 3 linears; pooler, classifier
    const long before = allocations.load();
    const auto per_call = packs.per_call.load(), prepacked = packs.prepacked.load();
    for (int i = 0; i < 3; ++i) m.forward(eval, {ids.data(), 2, 9}, {mask.data(), 2, 9});
    m.forward(eval, {ids.data(), 1, 9}, {mask.data(), 1, 9});
    CHECK(packs.per_call.load() - per_call == 0);    // no gemm() that packs per call
    CHECK(packs.prepacked.load() - prepacked == 0);  // no weight packed again
    CHECK(allocations.load() - before == 0);
}

TEST_CASE("a full training step (task model, loss, clipping, AdamW) allocates nothing",
          "[allocations]") {
    Model m(small_classifier);
    auto params = ftune::optim::parameters_of(m);
    for (auto& p : params)
        for (std::size_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.01f * float(i % 7);
    ftune::optim::adamw<float> opt({.lr = 1e-3, .weight_decay = 0.01});
    ftune::loss::cross_entropy<float> ce;
    const std::size_t B = 4, T = 10;
    std::vector<ftune::token_id> ids(B * T, 3), mask(B * T, 1), labels{0, 1, 2, 1};
    std::vector<float> d(B * 3);
    ftune::context ctx{.mode = ftune::mode::train, .rng = ftune::generator(1)};
    const std::span<const ftune::parameter_ref<float>> ps(params);
    auto step = [&] {
        const auto y = m.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
        ce.forward({y.data(), B, 3}, {labels.data(), B});
        std::fill(d.begin(), d.end(), 0.0f);
        ce.backward({d.data(), B, 3}, 1.0f);
        m.backward(ctx, {d.data(), B, 3});
        ftune::optim::clip_grad_norm(ps, 1.0);
        opt.step(ps);
        m.zero_grad();
    };
    step(), step();  // warm-up: workspaces and optimizer state
    const long before = allocations.load();
    for (int i = 0; i < 3; ++i) step();
    CHECK(allocations.load() - before == 0);
}

TEST_CASE(
    "a decoder's training steps (causal-LM loss and the last-token classifier, tied head, "
    "clipping, AdamW) allocate nothing",
    "[allocations]") {
    ftune::llama::config c;
    c.vocab_size = 40, c.hidden_size = 16, c.intermediate_size = 24, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 32;
    c.tie_word_embeddings = true, c.num_labels = 3;
    ftune::llama::causal_lm<> lm(c);
    ftune::llama::sequence_classifier<> cls(c);
    const std::size_t B = 3, T = 9;
    ftune::train::batch b, bc;
    b.B = bc.B = B, b.T = bc.T = T;
    b.ids.assign(B * T, 7), b.mask.assign(B * T, 1);
    b.mask.back() = 0;  // padding at the end of the last row
    b.labels = b.ids;
    b.labels.back() = -100;
    bc.ids = b.ids, bc.mask = b.mask, bc.labels = {0, 2, 1};
    ftune::context ctx{.mode = ftune::mode::train, .rng = ftune::generator(1)};
    auto steps = [&](auto& m, const ftune::train::batch& batch) {
        auto params = ftune::optim::parameters_of(m);
        for (auto& p : params)
            for (std::size_t i = 0; i < p.value.size(); ++i)
                p.value[i] = p.name.ends_with("norm.weight") ? 1.0f : 0.02f * float(i % 5);
        ftune::optim::adamw<float> opt({.lr = 1e-3, .weight_decay = 0.01});
        const std::span<const ftune::parameter_ref<float>> ps(params);
        std::vector<float> d;
        auto step = [&] {
            if constexpr (requires { m.loss_backward(ctx, batch, 1.0f); }) {
                m.loss_backward(ctx, batch, 1.0f);  // the trainer's path: logits in chunks
            } else {
                const auto y = m.forward(ctx, {batch.ids.data(), B, T}, {batch.mask.data(), B, T});
                d.resize(y.size());
                std::fill(d.begin(), d.end(), 0.0f);
                m.head.loss(y, batch, d.data(), 1.0f);
                m.backward(ctx, {d.data(), y.shape()});
            }
            ftune::optim::clip_grad_norm(ps, 1.0);
            opt.step(ps);
            m.zero_grad();
        };
        step(), step();  // warm-up: workspaces and optimizer state
        const long before = allocations.load();
        for (int i = 0; i < 3; ++i) step();
        return allocations.load() - before;
    };
    lm.head.loss_chunk_rows = 5;  // 26 counted positions: 6 chunks, the last one short
    CHECK(steps(lm, b) == 0);
    CHECK(steps(cls, bc) == 0);
}

TEST_CASE("generation allocates nothing per new token (greedy and sampled, batch of two)",
          "[allocations][generation]") {
    // the random tiny LlamaForCausalLM of tests/reference/llama_heads.py (no eos in 20 tokens)
    auto m = ftune::io::load_hf<ftune::llama::causal_lm<>>(std::string(FTUNE_REFERENCE_DIR) +
                                                           "/hf_llama/tied");
    ftune::generation::generator gen(m.model);
    const std::vector<std::vector<ftune::token_id>> prompts{{1, 17, 8, 25, 3, 39, 12, 40},
                                                            {1, 9, 30}};
    for (const double temperature : {0.0, 0.8}) {
        INFO("temperature " << temperature);
        ftune::generation::options o;
        o.temperature = temperature;
        o.top_k = 20;
        o.top_p = 0.9;
        o.repetition_penalty = 1.1;
        std::size_t streamed = 0;
        const auto stream = [&](std::size_t, std::string_view) { ++streamed; };
        auto run = [&](std::size_t n) {
            o.max_new_tokens = n;
            const long before = allocations.load();
            const auto r = gen.generate(prompts, o, stream);
            REQUIRE(r[0].tokens.size() == n);
            REQUIRE(r[1].tokens.size() == n);
            return allocations.load() - before;
        };
        run(24);  // the first run sizes what later runs reuse
        const long few = run(4), many = run(24);
        CHECK(many == few);  // 20 more tokens, not one more allocation
    }
}
