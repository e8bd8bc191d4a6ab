// `ftune bench`: times a randomly initialized BertForSequenceClassification (encoder, pooler,
// 2-way classifier; cross-entropy when training), or with --gguf a Llama-family causal LM of the
// file's shapes, and prints one JSON line. Inference runs the
// model exactly as `ftune predict` and serve::text_classifier do (prepared, eval mode).
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <ftune/ftune.hpp>
#include <ftune/io/gguf_llama.hpp>
#include <ftune/optim.hpp>
#include <ftune/peft/lora.hpp>
#include <ftune/train/batch.hpp>

namespace cli {

// Fills every parameter with normal(0, 0.02) as BERT's initializer (LayerNorm weights 1).
template <class M>
void init_parameters(M& model, const std::string& prefix, std::uint64_t seed) {
    model.visit_parameters(prefix, [&](ftune::parameter_ref<float> p) {
        const bool ln = p.name.find("LayerNorm") != std::string::npos,
                   bias = p.name.ends_with("bias");
        const ftune::random_stream s(seed++, 0);
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = ln ? (bias ? 0.0f : 1.0f) : (bias ? 0.0f : float(0.02 * s.normal(i)));
    });
}

// The rate of `threads` threads each running chains() (which does `flops` floating-point
// operations and returns a sum that keeps them alive), in GFLOP/s, best of 5.
template <class Chains>
double peak_gflops(int threads, double flops, Chains&& chains) {
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        float sink = 0;
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += chains();
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (sink == 12345.f) std::printf(" ");  // keep the result alive
        best = std::max(best, flops * threads / dt * 1e-9);
    }
    return best;
}

// The FMA peak of `threads` threads in GFLOP/s (12 independent chains of batch FMAs, best of 5).
inline double fma_peak_gflops(int threads) {
    using B = ftune::backends::cpu::detail::batch<float>;
    constexpr int chains = 12;
    const long iters = 1 << 21;
    return peak_gflops(threads, 2.0 * chains * double(B::size) * double(iters), [&] {
        B acc[chains];
        for (int k = 0; k < chains; ++k) acc[k] = B(1.0f + 1e-3f * float(k));
        for (long i = 0; i < iters; ++i)
#pragma GCC unroll 16  // (a loop over k in memory would time store-to-load latency, not the peak)
            for (int k = 0; k < chains; ++k) acc[k] = xsimd::fma(acc[k], B(0.999999f), B(1e-7f));
        B s = acc[0];
        for (int k = 1; k < chains; ++k) s += acc[k];
        return ftune::backends::cpu::detail::reduce_add(s);
    });
}

#if defined(__x86_64__) && defined(__GNUC__)
// `iters` rounds of 12 independent vdpbf16ps chains on one thread (64 flops each: 32 bf16
// products summed into 16 floats); returns their sum so the work stays alive.
__attribute__((target("avx512f,avx512bf16"))) inline float bf16_chains(long iters) {
    constexpr int chains = 12;
    __m512 acc[chains];
    for (int k = 0; k < chains; ++k) acc[k] = _mm512_set1_ps(1e-3f * float(k));
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);  // 1.0 in bf16
    const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3380);  // 2^-24 in bf16
    for (long i = 0; i < iters; ++i)
#pragma GCC unroll 16  // (a loop over k in memory would time store-to-load latency, not the peak)
        for (int k = 0; k < chains; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
    __m512 s = acc[0];
    for (int k = 1; k < chains; ++k) s = _mm512_add_ps(s, acc[k]);
    return _mm512_reduce_add_ps(s);
}
#endif

#if FTUNE_HAS_AMX_KERNELS
// `iters` rounds of 3 independent tdpbf16ps chains on one thread (16 x 16 x 32 products summed
// into 16 x 16 floats: 16,384 flops each) on tiles loaded once; returns a sum of the results.
FTUNE_AMX_TARGET inline float amx_chains(long iters) {
    namespace amx = ftune::backends::cpu::amx_detail;
    amx::configure();
    alignas(64) std::uint16_t ab[2][16 * 32];
    for (int i = 0; i < 16 * 32; ++i) ab[0][i] = 0x3f80, ab[1][i] = 0x3380;  // 1.0, 2^-24
    alignas(64) float c[3][16 * 16];
    amx::memory_barrier(ab);
    _tile_zero(0);  // (asm statements: one per statement)
    _tile_zero(1);
    _tile_zero(2);
    _tile_loadd(3, ab[0], 64);
    _tile_loadd(4, ab[1], 64);
    _tile_loadd(5, ab[1], 64);
    _tile_loadd(6, ab[1], 64);
    for (long i = 0; i < iters; ++i) {
        _tile_dpbf16ps(0, 3, 4);
        _tile_dpbf16ps(1, 3, 5);
        _tile_dpbf16ps(2, 3, 6);
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    amx::memory_barrier(c);
    return c[0][0] + c[1][17] + c[2][255];
}
#endif

// The peak of AMX-BF16 tiles on `threads` threads in GFLOP/s (best of 5), or 0 where the bf16
// products do not use them (amx_enabled() false).
inline double amx_peak_gflops(int threads) {
#if FTUNE_HAS_AMX_KERNELS
    if (!ftune::backends::cpu::amx_enabled()) return 0;
    const long iters = 1 << 16;
    return peak_gflops(threads, double(iters) * 3 * 16384, [&] { return amx_chains(iters); });
#else
    (void)threads;
    return 0;
#endif
}

// The bf16 dot-product peak of `threads` threads in GFLOP/s (best of 5), or 0 without
// AVX512-BF16.
inline double bf16_peak_gflops(int threads) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!ftune::backends::cpu::this_cpu().avx512_bf16) return 0;
    const long iters = 1 << 21;
    return peak_gflops(threads, double(iters) * 12 * 64, [&] { return bf16_chains(iters); });
#else
    (void)threads;
    return 0;
#endif
}

// The median time of `steps` calls of step in ms, after `warmup` calls that let workspaces reach
// their size.
template <class Step>
double median_ms(Step&& step, int steps, int warmup = 2) {
    for (int i = 0; i < warmup; ++i) step();
    std::vector<double> ms;
    for (int i = 0; i < steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

// One BertForSequenceClassification of `ftune bench` (random weights, LoRA adapters when r > 0)
// with its context, optimizer and buffers; step() runs the timed step of the mode.
struct bench_model {
    ftune::bert::sequence_classifier<> model;         // encoder, pooler, 2 labels
    ftune::context ctx;                               // train or eval mode
    std::vector<ftune::parameter_ref<float>> params;  // trained (train mode only)
    ftune::optim::adamw<float> adamw{{.lr = 1e-5, .weight_decay = 0.01}};  // the update
    std::vector<float> losses, dlosses, dlogits;                           // (B), (B), (B, 2)
    std::size_t trainable = 0, total = 0;  // parameter counts (LoRA)

    // Builds the model of cfg with seed 1's weights; rank r > 0 adds PEFT's SST-2 recipe.
    bench_model(const ftune::bert::config& cfg, std::size_t B, bool backward, bool train,
                bool prepack, std::size_t r, bool pack_frozen = true,
                ftune::precision precision = ftune::precision::fp32)
        : model(cfg),
          ctx{.mode = backward ? ftune::mode::train : ftune::mode::eval,
              .rng = ftune::generator(1),
              .pack_frozen_weights = pack_frozen,
              .precision = precision},
          losses(B),
          dlosses(B, 1.0f / float(B)),
          dlogits(B * 2) {
        init_parameters(model, "", 1);
        // LoRA: adapters on query and value, the classifier in full, the rest frozen (no weight
        // gradients, no optimizer state)
        if (r) {
            const auto s = ftune::peft::apply_lora(model, {.r = r,
                                                           .alpha = 2.0 * double(r),
                                                           .target_modules = {"query", "value"},
                                                           .modules_to_save = {"classifier"},
                                                           .seed = 1});
            trainable = s.trainable, total = s.total;
        }
        if (!backward && prepack) model.prepare_inference(precision);  // as a deployed model
        // train: every parameter, clipped to norm 1 and updated by AdamW (weight decay 0.01);
        // only training collects parameters (inference times exactly the served path)
        if (train) params = ftune::optim::parameters_of(model);
    }

    // Forward; with backward the cross-entropy's gradient through the model; with train the
    // clipping and the AdamW update too.
    void step(const ftune::view<const ftune::token_id, ftune::dynamic_shape<2>>& ids,
              const ftune::view<const ftune::token_id, ftune::dynamic_shape<2>>& mask,
              const std::vector<ftune::token_id>& labels, bool backward, bool train) {
        const std::size_t B = labels.size();
        const auto logits = model.forward(ctx, ids, mask);
        if (!backward) return;
        ftune::backends::cpu::cross_entropy_forward(losses.data(), logits.data(), labels.data(), B,
                                                    2);
        model.zero_grad();
        std::fill(dlogits.begin(), dlogits.end(), 0.0f);
        ftune::backends::cpu::cross_entropy_backward(dlogits.data(), logits.data(), labels.data(),
                                                     dlosses.data(), B, 2);
        model.backward(ctx, {dlogits.data(), B, 2});
        if (!train) return;
        const std::span<const ftune::parameter_ref<float>> ps(params);
        adamw.step(ps, ftune::optim::clip_scale(ps, 1.0).scale);  // as the trainer clips
    }
};

// The measured peak of `threads` threads for products in precision p (bf16: of AMX tiles where
// the products use them, else of vdpbf16ps).
inline double peak_for(ftune::precision p, int threads) {
    if (p != ftune::precision::bf16) return fma_peak_gflops(threads);
    return ftune::backends::cpu::amx_enabled() ? amx_peak_gflops(threads)
                                               : bf16_peak_gflops(threads);
}

// Runs `ftune bench` with its parsed options; returns the exit status. versus_full (with
// lora_r): the full step and the LoRA step alternate in this one process, and the JSON adds the
// full step's median and the median of the paired ratios. versus_fp32 (with precision bf16):
// the same model's fp32 step and bf16 step alternate, and the JSON gives both medians and the
// median of the paired speed-ups (fp32 time / bf16 time).
inline int run_bench(std::size_t H, std::size_t L, std::size_t heads, std::size_t F, std::size_t V,
                     std::size_t B, std::size_t T, bool backward, int steps, int threads,
                     bool prepack = true, bool train = false, std::size_t lora_r = 0,
                     bool versus_full = false, bool pack_frozen = true,
                     ftune::precision precision = ftune::precision::fp32,
                     bool versus_fp32 = false) {
    backward = backward || train;
    if (threads > 0) ftune::set_num_threads(threads);
    const int nt = ftune::num_threads();
    ftune::bert::config cfg{.vocab_size = V,
                            .hidden_size = H,
                            .num_hidden_layers = L,
                            .num_attention_heads = heads,
                            .intermediate_size = F,
                            .max_position_embeddings = std::max<std::size_t>(512, T)};
    cfg.num_labels = 2;
    // the model `ftune predict` and serve::text_classifier run: BertForSequenceClassification
    bench_model bm(cfg, B, backward, train, prepack, lora_r, pack_frozen, precision);
    auto& model = bm.model;
    const std::size_t trainable = bm.trainable, total = bm.total;
    // inputs: random ids, every token real, random labels
    std::vector<ftune::token_id> ids(B * T), mask(B * T, 1), labels(B);
    const ftune::random_stream s(7, 7);
    for (std::size_t i = 0; i < B * T; ++i) ids[i] = ftune::token_id(s.below(i, std::uint32_t(V)));
    for (std::size_t b = 0; b < B; ++b) labels[b] = ftune::token_id(s.below(B * T + b, 2));
    const ftune::view<const ftune::token_id, ftune::dynamic_shape<2>> idv(ids.data(), B, T),
        maskv(mask.data(), B, T);
    auto step = [&] { bm.step(idv, maskv, labels, backward, train); };
    auto ms = [](auto&& run) {
        const auto t0 = std::chrono::steady_clock::now();
        run();
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
            .count();
    };
    auto median_of = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    if (versus_fp32) {  // the fp32 model's step, then the bf16 one's, `steps` times
        bench_model fp32(cfg, B, backward, train, prepack, lora_r, pack_frozen);
        auto fp32_step = [&] { fp32.step(idv, maskv, labels, backward, train); };
        for (int i = 0; i < 2; ++i) fp32_step(), step();  // warm-up
        std::vector<double> f, h, speedup;
        for (int i = 0; i < steps; ++i) {
            f.push_back(ms(fp32_step)), h.push_back(ms(step));
            speedup.push_back(f.back() / h.back());
        }
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        std::printf(
            "{\"mode\": \"%s\", \"dims\": [%zu, %zu, %zu, %zu], \"vocab\": %zu, "
            "\"batch\": %zu, \"seq\": %zu, \"threads\": %d, \"steps\": %d, "
            "\"fp32_ms_per_step\": %.3f, \"bf16_ms_per_step\": %.3f, \"speedup\": %.3f, "
            "\"speedup_min\": %.3f, \"speedup_max\": %.3f, \"lora_r\": %zu, "
            "\"fp32_peak_gflops\": %.1f, \"bf16_peak_gflops\": %.1f, "
            "\"peak_rss_mb_both\": %.1f, \"cpu\": \"%s\"}\n",
            train      ? "train"
            : backward ? "backward"
                       : "forward",
            H, L, heads, F, V, B, T, nt, steps, median_of(f), median_of(h), median_of(speedup),
            *std::min_element(speedup.begin(), speedup.end()),
            *std::max_element(speedup.begin(), speedup.end()), lora_r, fma_peak_gflops(nt),
            peak_for(ftune::precision::bf16, nt), double(ru.ru_maxrss) / 1024.0,
            ftune::backends::cpu::this_cpu().summary().c_str());
        return 0;
    }
    if (versus_full) {  // the full model's step, then the LoRA model's, `steps` times
        bench_model full(cfg, B, backward, train, prepack, 0, true, precision);
        auto full_step = [&] { full.step(idv, maskv, labels, backward, train); };
        for (int i = 0; i < 2; ++i) full_step(), step();  // warm-up
        std::vector<double> f, l, ratio;
        for (int i = 0; i < steps; ++i) {
            f.push_back(ms(full_step)), l.push_back(ms(step));
            ratio.push_back(l.back() / f.back());
        }
        const auto median = median_of;
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        std::printf(
            "{\"mode\": \"train\", \"dims\": [%zu, %zu, %zu, %zu], \"vocab\": %zu, "
            "\"batch\": %zu, \"seq\": %zu, \"threads\": %d, \"steps\": %d, "
            "\"full_ms_per_step\": %.3f, \"lora_ms_per_step\": %.3f, \"lora_r\": %zu, "
            "\"ratio\": %.3f, \"ratio_min\": %.3f, \"ratio_max\": %.3f, "
            "\"trainable_params\": %zu, \"all_params\": %zu, \"peak_rss_mb_both\": %.1f, "
            "\"cpu\": \"%s\"}\n",
            H, L, heads, F, V, B, T, nt, steps, median(f), median(l), lora_r, median(ratio),
            *std::min_element(ratio.begin(), ratio.end()),
            *std::max_element(ratio.begin(), ratio.end()), trainable, total,
            double(ru.ru_maxrss) / 1024.0, ftune::backends::cpu::this_cpu().summary().c_str());
        return 0;
    }
    step(), step();  // warm-up: workspaces reach their size before packing is counted
    auto& packs = ftune::backends::cpu::packing_stats();
    const std::uint64_t per_call0 = packs.per_call.load(), prepacked0 = packs.prepacked.load();
    const double median = median_ms(step, steps, 0);
    // weight packing during the timed steps: none on the prepared inference path
    const std::uint64_t per_call = packs.per_call.load() - per_call0,
                        prepacked = packs.prepacked.load() - prepacked0;
    // matrix-product FLOPs executed by the forward pass; backward adds twice as many. The
    // classifier runs its last layer for the [CLS] rows only, after the keys and values of every
    // position: prepared inference through the fused [Wq; Wk; Wv] over every row, otherwise
    // with the queries of the [CLS] rows alone.
    const double N = double(B * T), Bd = double(B);
    const bool fused = model.backbone.inference_prepared() && !backward;
    const double proj = 2 * N * H * (4.0 * H) + 2 * N * H * (2.0 * F), att = 4.0 * N * T * H;
    const double proj_last = 2 * N * H * (fused ? 3.0 * H : 2.0 * H) +
                             (fused ? 0 : 2 * Bd * H * H) + 2 * Bd * H * H + 2 * Bd * H * (2.0 * F),
                 att_last = 4.0 * Bd * T * H;
    const double projections = L > 0 ? double(L - 1) * proj + proj_last : 0,
                 attention = L > 0 ? double(L - 1) * att + att_last : 0,
                 head = 2.0 * B * H * (H + 2);  // pooler and classifier
    // (LoRA: frozen projections' products twice, forward and d input; the adapters' products
    // are not counted)
    const double flops = lora_r ? 2 * projections + 3 * (attention + head)
                                : (projections + attention + head) * (backward ? 3 : 1);
    const double gflops = flops / (median * 1e-3) * 1e-9, peak = peak_for(precision, nt);
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::printf(
        "{\"mode\": \"%s\", \"precision\": \"%s\", \"dims\": [%zu, %zu, %zu, %zu], "
        "\"vocab\": %zu, \"batch\": %zu, "
        "\"seq\": %zu, "
        "\"threads\": %d, \"steps\": %d, \"ms_per_step\": %.3f, \"tokens_per_s\": %.1f, "
        "\"gflops\": %.1f, "
        "\"peak_gflops\": %.1f, \"percent_of_peak\": %.1f, \"peak_rss_mb\": %.1f, "
        "\"prepacked\": %s, \"gemm_packs_per_step\": %.1f, \"weight_repacks\": %llu, "
        "\"lora_r\": %zu, \"trainable_params\": %zu, \"all_params\": %zu, \"pack_frozen\": %s, "
        "\"cpu\": \"%s\"}\n",
        train      ? "train"
        : backward ? "backward"
                   : "forward",
        ftune::to_string(precision), H, L, heads, F, V, B, T, nt, steps, median,
        N / (median * 1e-3), gflops, peak, 100 * gflops / peak, double(ru.ru_maxrss) / 1024.0,
        !backward && prepack ? "true" : "false", double(per_call) / steps,
        static_cast<unsigned long long>(prepacked), lora_r, trainable, total,
        pack_frozen ? "true" : "false", ftune::backends::cpu::this_cpu().summary().c_str());
    return 0;
}

// Runs `ftune bench --gguf FILE`: a causal-LM training step (forward, the next-token loss of
// the trainer, backward, clipping to norm 1, AdamW) or a forward of the Llama-family model the
// GGUF file describes, its weights random (normal(0, 0.02), norms 1: the file gives the shapes
// only), on B random sequences of T tokens that all carry the loss. Prints one JSON line.
inline int run_bench_lm(const std::string& gguf, std::size_t B, std::size_t T, bool train,
                        int steps, int threads,
                        ftune::precision precision = ftune::precision::fp32) {
    if (threads > 0) ftune::set_num_threads(threads);
    const int nt = ftune::num_threads();
    const auto cfg = ftune::io::llama_config_from_gguf(ftune::io::gguf_file(gguf));
    ftune::llama::causal_lm<> model(cfg);
    model.visit_parameters("", [seed = std::uint64_t(1)](ftune::parameter_ref<float> p) mutable {
        const bool norm = p.name.ends_with("norm.weight");
        const ftune::random_stream s(seed++, 0);
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = norm ? 1.0f : float(0.02 * s.normal(i));
    });
    const std::size_t V = cfg.vocab_size, C = cfg.hidden_size, F = cfg.intermediate_size,
                      L = cfg.num_hidden_layers, d = cfg.head_size();
    ftune::train::batch b;
    b.B = B, b.T = T;
    b.ids.resize(B * T), b.mask.assign(B * T, 1);
    const ftune::random_stream s(7, 7);
    for (std::size_t i = 0; i < B * T; ++i)
        b.ids[i] = ftune::token_id(s.below(i, std::uint32_t(V)));
    b.labels = b.ids;  // every position predicts the next token
    ftune::context ctx{.mode = train ? ftune::mode::train : ftune::mode::eval,
                       .rng = ftune::generator(1),
                       .precision = precision};
    std::vector<ftune::parameter_ref<float>> params;
    if (train) params = ftune::optim::parameters_of(model);
    ftune::optim::adamw<float> adamw({.lr = 1e-5, .weight_decay = 0.01});
    auto step = [&] {
        if (!train) {
            model.forward(ctx, {b.ids.data(), B, T}, {b.mask.data(), B, T});
            return;
        }
        model.zero_grad();
        model.loss_backward(ctx, b, 1.0f);  // as the trainer: the logits a chunk at a time
        const std::span<const ftune::parameter_ref<float>> ps(params);
        adamw.step(ps, ftune::optim::clip_scale(ps, 1.0).scale);  // as the trainer clips
    };
    const double median = median_ms(step, steps);
    // matrix-product FLOPs of the forward pass: the projections, the attention's two products
    // over every key position (as computed), the LM head (training: over the B (T - 1)
    // positions with a next token); backward adds twice as many
    const double N = double(B * T), counted = train ? double(B * (T - 1)) : N;
    const double per_layer =
        2 * N * C * (2.0 * cfg.num_attention_heads * d + 2.0 * cfg.num_key_value_heads * d) +
        2 * N * C * (3.0 * F) + 4.0 * N * double(T) * cfg.num_attention_heads * d;
    const double flops = (double(L) * per_layer + 2 * counted * C * double(V)) * (train ? 3 : 1);
    const double gflops = flops / (median * 1e-3) * 1e-9, peak = peak_for(precision, nt);
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::printf(
        "{\"mode\": \"%s\", \"precision\": \"%s\", \"model\": \"llama %zu x %zu, ffn %zu, vocab "
        "%zu\", \"batch\": %zu, "
        "\"seq\": %zu, \"threads\": %d, \"steps\": %d, \"ms_per_step\": %.3f, "
        "\"tokens_per_s\": %.1f, \"gflops\": %.1f, \"peak_gflops\": %.1f, "
        "\"percent_of_peak\": %.1f, \"peak_rss_mb\": %.1f, \"cpu\": \"%s\"}\n",
        train ? "train" : "forward", ftune::to_string(precision), L, C, F, V, B, T, nt, steps,
        median, N / (median * 1e-3), gflops, peak, 100 * gflops / peak,
        double(ru.ru_maxrss) / 1024.0, ftune::backends::cpu::this_cpu().summary().c_str());
    return 0;
}

}  // namespace cli
