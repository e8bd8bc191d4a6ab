// Generation speed of a decoder from a GGUF file (SmolLM2-135M-Instruct in bench/
// compare_generate.py, which runs Transformers' generate and llama.cpp beside it): greedy,
// --batch prompts each `--prompt-tokens` long. Prefill = the time to the first new token;
// decode = new tokens per second (of the batch) after it (generations of 1 and of 1 + N new
// tokens, best of --rounds each), and the memory traffic that implies: every float32 weight is
// read once per step (the tied LM head's table included), against the bandwidth this machine's
// STREAM triad reaches. --prefill-tokens sets generation::options::prefill_tokens (positions of
// the batch per prefill pass; 0: one pass); peak_rss_mb is the process's peak memory.
//
//   build/bin/ftune_bench_generate --gguf FILE [--prompt-tokens 128] [--new-tokens 64]
//       [--batch 1] [--prefill-tokens 512] [--rounds 3] [--threads N]   (prints one JSON line)
#include <ftune/generation.hpp>
#include <ftune/io/gguf_llama.hpp>
#include <ftune/llama/tasks.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The bandwidth of a STREAM triad a = b + s c over arrays far larger than the caches (GB/s,
// best of 5; 3 arrays counted).
double triad_gbps() {
    const std::size_t n = std::size_t(1) << 25;  // 128 MiB per array
    std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
    double best = 0;
    for (int r = 0; r < 5; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(static)
        for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(n); ++i)
            a[std::size_t(i)] = b[std::size_t(i)] + 3.f * c[std::size_t(i)];
        best = std::max(best, 3.0 * double(n) * sizeof(float) / seconds_since(t0) * 1e-9);
    }
    return best + a[n / 2] * 0;  // keeps the loop
}

}  // namespace

int main(int argc, char** argv) {
    std::string gguf;
    std::size_t prompt_tokens = 128, new_tokens = 64, batch = 1, prefill_tokens = 512;
    int rounds = 3, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--gguf")
            gguf = v;
        else if (a == "--prompt-tokens")
            prompt_tokens = std::stoul(v);
        else if (a == "--new-tokens")
            new_tokens = std::stoul(v);
        else if (a == "--batch")
            batch = std::stoul(v);
        else if (a == "--prefill-tokens")
            prefill_tokens = std::stoul(v);
        else if (a == "--rounds")
            rounds = std::stoi(v);
        else if (a == "--threads")
            threads = std::stoi(v);
    }
    if (gguf.empty()) {
        std::cerr << "usage: ftune_bench_generate --gguf FILE [--prompt-tokens N] [--new-tokens N] "
                     "[--batch B] [--prefill-tokens N] [--rounds N] [--threads N]\n";
        return 2;
    }
    try {
        if (threads > 0) ftune::set_num_threads(threads);
        const ftune::io::gguf_file f(gguf);
        const auto cfg = ftune::io::llama_config_from_gguf(f);
        ftune::llama::causal_lm<> model(cfg);
        ftune::io::load_llama_gguf(model, f, cfg);
        std::size_t weights = 0;
        model.visit_parameters("",
                               [&](ftune::parameter_ref<float> p) { weights += p.value.size(); });
        // prompts of ordinary tokens (ids 100 .. 40,000; the timing does not depend on them)
        std::vector<std::vector<ftune::token_id>> prompt(
            batch, std::vector<ftune::token_id>(prompt_tokens));
        for (std::size_t b = 0; b < batch; ++b)
            for (std::size_t i = 0; i < prompt_tokens; ++i)
                prompt[b][i] = ftune::token_id(100 + (i * 7919 + b * 104729) % 39900);
        ftune::generation::generator gen(model);  // token ids only: no stop token
        ftune::generation::options o;
        o.temperature = 0;
        o.prefill_tokens = prefill_tokens;
        double first = 1e30, whole = 1e30;
        for (int r = 0; r < rounds; ++r) {
            o.max_new_tokens = 1;
            auto t0 = std::chrono::steady_clock::now();
            gen.generate(prompt, o);
            first = std::min(first, seconds_since(t0));
            o.max_new_tokens = 1 + new_tokens;
            t0 = std::chrono::steady_clock::now();
            const auto res = gen.generate(prompt, o);
            whole = std::min(whole, seconds_since(t0));
            for (const auto& r : res)
                if (r.tokens.size() != 1 + new_tokens) throw std::runtime_error("stopped early");
        }
        const double decode_s = std::max(whole - first, 1e-9);
        const double tps = double(batch * new_tokens) / decode_s;
        const double steps_per_s = double(new_tokens) / decode_s;  // each reads every weight
        const double gb_per_token = double(weights) * sizeof(float) * 1e-9;
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);  // before the triad's arrays
        const double triad = triad_gbps();
        std::printf(
            "{\"gguf\": \"%s\", \"threads\": %d, \"batch\": %zu, \"prompt_tokens\": %zu, "
            "\"new_tokens\": %zu, \"prefill_tokens\": %zu, \"prefill_ms\": %.1f, "
            "\"prefill_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.2f, "
            "\"weights_gb_per_token\": %.3f, \"decode_gb_per_s\": %.1f, \"triad_gb_per_s\": "
            "%.1f, \"peak_rss_mb\": %.1f}\n",
            gguf.c_str(), ftune::num_threads(), batch, prompt_tokens, new_tokens, prefill_tokens,
            first * 1e3, double(batch * prompt_tokens) / first, tps, gb_per_token,
            steps_per_s * gb_per_token, triad, double(ru.ru_maxrss) / 1024.0);
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
    return 0;
}
