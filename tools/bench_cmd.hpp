// `ftune bench`: times a randomly initialized BERT encoder with a 2-way sequence-classification
// head (pooler -> linear -> cross-entropy) and prints one JSON line.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <ftune/ftune.hpp>
#include <ftune/optim.hpp>

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

// The FMA peak of `threads` threads in GFLOP/s (12 independent chains of batch FMAs, best of 5).
inline double fma_peak_gflops(int threads) {
    using B = ftune::backend::cpu::detail::batch<float>;
    constexpr int chains = 12;
    const long iters = 1 << 21;
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        float sink = 0;
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            B acc[chains];
            for (int k = 0; k < chains; ++k) acc[k] = B(1.0f + 1e-3f * float(k));
            for (long i = 0; i < iters; ++i)
                for (int k = 0; k < chains; ++k)
                    acc[k] = xsimd::fma(acc[k], B(0.999999f), B(1e-7f));
            B s = acc[0];
            for (int k = 1; k < chains; ++k) s += acc[k];
            sink += ftune::backend::cpu::detail::reduce_add(s);
        }
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (sink == 12345.f) std::printf(" ");  // keep the result alive
        best = std::max(best, 2.0 * chains * double(B::size) * double(iters) * threads / dt * 1e-9);
    }
    return best;
}

// Runs `ftune bench` with its parsed options; returns the exit status.
inline int run_bench(std::size_t H, std::size_t L, std::size_t heads, std::size_t F, std::size_t V,
                     std::size_t B, std::size_t T, bool backward, int steps, int threads,
                     bool prepack = true, bool train = false) {
    backward = backward || train;
    if (threads > 0) ftune::set_num_threads(threads);
    const int nt = ftune::num_threads();
    ftune::bert::config cfg{.vocab_size = V,
                            .hidden_size = H,
                            .num_hidden_layers = L,
                            .num_attention_heads = heads,
                            .intermediate_size = F,
                            .max_position_embeddings = std::max<std::size_t>(512, T)};
    ftune::bert::encoder<float> encoder(cfg);
    ftune::layers::pooler<float> pooler(H);
    ftune::layers::linear<float> classifier(H, 2);
    init_parameters(encoder, "bert", 1);
    init_parameters(pooler, "bert.pooler", 1000);
    init_parameters(classifier, "classifier", 2000);
    // inputs: random ids, every token real, random labels
    std::vector<ftune::token_id> ids(B * T), mask(B * T, 1), labels(B);
    const ftune::random_stream s(7, 7);
    for (std::size_t i = 0; i < B * T; ++i) ids[i] = ftune::token_id(s.below(i, std::uint32_t(V)));
    for (std::size_t b = 0; b < B; ++b) labels[b] = ftune::token_id(s.below(B * T + b, 2));
    const ftune::view<const ftune::token_id, ftune::dynamic_shape<2>> idv(ids.data(), B, T),
        maskv(mask.data(), B, T);
    std::vector<float> losses(B), dlosses(B, 1.0f / float(B)), dlogits(B * 2), dpooled(B * H),
        d_hidden(B * T * H);
    if (!backward && prepack) {  // inference: weights packed once, as a deployed model would be
        encoder.prepare_inference();
        pooler.prepare_inference();
        classifier.prepare_inference();
    }
    ftune::context ctx{.mode = backward ? ftune::mode::train : ftune::mode::eval,
                       .rng = ftune::generator(1)};
    // train: every parameter, clipped to norm 1 and updated by AdamW (weight decay 0.01)
    std::vector<ftune::parameter_ref<float>> params;
    auto collect = [&](ftune::parameter_ref<float> p) { params.push_back(std::move(p)); };
    encoder.visit_parameters("bert", collect);
    pooler.visit_parameters("bert.pooler", collect);
    classifier.visit_parameters("classifier", collect);
    ftune::optim::adamw<float> adamw({.lr = 1e-5, .weight_decay = 0.01});
    auto step = [&] {
        const auto hidden = encoder.forward(ctx, idv, maskv);
        const auto logits = classifier.forward(ctx, pooler.forward(ctx, hidden));
        if (!backward) return;
        ftune::backend::cpu::cross_entropy_forward(losses.data(), logits.data(), labels.data(), B,
                                                   2);
        encoder.zero_grad(), pooler.zero_grad(), classifier.zero_grad();
        std::fill(dlogits.begin(), dlogits.end(), 0.0f);
        std::fill(dpooled.begin(), dpooled.end(), 0.0f);
        ftune::backend::cpu::cross_entropy_backward(dlogits.data(), logits.data(), labels.data(),
                                                    dlosses.data(), B, 2);
        classifier.backward(ctx, {dlogits.data(), B, 2}, {dpooled.data(), B, H});
        std::fill(d_hidden.begin(), d_hidden.end(), 0.0f);
        pooler.backward(ctx, {dpooled.data(), B, H}, {d_hidden.data(), B, T, H});
        encoder.backward(ctx, {d_hidden.data(), B, T, H});
        if (!train) return;
        ftune::optim::clip_grad_norm(std::span<const ftune::parameter_ref<float>>(params), 1.0);
        adamw.step(std::span<const ftune::parameter_ref<float>>(params));
    };
    for (int i = 0; i < 2; ++i) step();  // warm-up: workspaces reach their size
    std::vector<double> ms;
    for (int i = 0; i < steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    // matrix-product FLOPs of the forward pass; backward adds twice as many
    const double N = double(B * T);
    const double per_layer =
        2 * N * H * (4.0 * H) + 2 * N * H * (2.0 * F) + 4.0 * double(B) * T * T * H;
    const double flops = (double(L) * per_layer + 2.0 * B * H * (H + 2)) * (backward ? 3 : 1);
    const double gflops = flops / (median * 1e-3) * 1e-9, peak = fma_peak_gflops(nt);
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::printf(
        "{\"mode\": \"%s\", \"dims\": [%zu, %zu, %zu, %zu], \"vocab\": %zu, \"batch\": %zu, "
        "\"seq\": %zu, "
        "\"threads\": %d, \"steps\": %d, \"ms_per_step\": %.3f, \"tokens_per_s\": %.1f, "
        "\"gflops\": %.1f, "
        "\"peak_gflops\": %.1f, \"percent_of_peak\": %.1f, \"peak_rss_mb\": %.1f, "
        "\"prepacked\": %s}\n",
        train      ? "train"
        : backward ? "backward"
                   : "forward",
        H, L, heads, F, V, B, T, nt, steps, median, N / (median * 1e-3), gflops, peak,
        100 * gflops / peak, double(ru.ru_maxrss) / 1024.0,
        !backward && prepack ? "true" : "false");
    return 0;
}

}  // namespace cli
