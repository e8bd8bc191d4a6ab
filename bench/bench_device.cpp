// ftune on another device (a CUDA GPU, or the reference backend to check this program on any
// machine): the fine-tuning step of a BertForSequenceClassification and the batch-1 latency of
// a prepared one, random weights, one JSON line per case. bench/compare_cuda.py runs it beside
// PyTorch on the same GPU; scripts/gpu-check.sh builds and runs both.
//
//   bench_device --device cuda:0 --case train --dims 768,12,12,3072 --batch 32 --seq 128 \
//                --precision bf16 --steps 20
//   bench_device --device cuda:0 --case latency --dims 384,12,12,1536 --batch 1 --seq 128
//   bench_device --device cuda:0 --case decode --seq 32 --new 64      # SmolLM2-135M's shape
//
// train: the trainer's step on the device (train::device_run, what `ftune train --device` runs):
// ids and mask up, forward (dropout 0.1), the host head's cross-entropy on the logits that come
// down, backward, clipping to norm 1, AdamW (weight decay 0.01); the logits' copy waits for the
// device, so each step is timed whole. latency: the twin prepared for inference
// (prepare_inference(precision)), eval mode; per call the ids and mask go up and the logits come
// down, as a served request's would. decode: a Llama causal LM of SmolLM2-135M's shape (576
// wide, 30 layers, 9 heads over 3 key/value heads, 1536, vocabulary 49,152, tied) generating
// greedily from a prompt of --seq tokens (generation::generator over the twin: the key/value
// cache on the device, the last logits down each step); decode tokens/s from the time of
// 1 + --new new tokens less the time of 1 (the prefill). The median over --steps timed calls
// after 3 warm-up calls.
#include <ftune/bert/tasks.hpp>
#include <ftune/generation.hpp>
#include <ftune/llama/tasks.hpp>
#include <ftune/train/device_run.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace {

using model_type = ftune::bert::sequence_classifier<>;  // encoder, pooler, 2 labels

// What the command line asked for.
struct options {
    std::string device = "cuda:0", what = "train";                 // --device, --case
    std::size_t H = 768, L = 12, heads = 12, F = 3072, V = 30522;  // --dims, --vocab
    std::size_t B = 32, T = 128;                                   // --batch, --seq
    ftune::precision precision = ftune::precision::fp32;           // --precision
    int steps = 20;                                                // --steps (timed)
    std::size_t new_tokens = 64;                                   // --new (decode)
};

// The median of v.
double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Milliseconds that f takes.
template <class F>
double ms(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The device's name for the JSON.
std::string device_name(const ftune::device_spec& spec) {
#if FTUNE_WITH_CUDA
    if (spec.what == ftune::device_spec::kind::cuda) {
        ftune::train::use_cuda_device(spec.index);
        return ftune::cuda::properties(spec.index).name;
    }
#endif
    return spec.str();
}

// Matrix-product FLOPs of one forward of the encoder over B x T tokens (the pooler and the
// classifier are negligible; backward is twice this).
double forward_flops(const options& o) {
    const double N = double(o.B * o.T), H = double(o.H), F = double(o.F);
    return double(o.L) * (2 * N * H * 4 * H + 2 * N * H * 2 * F + 4 * double(o.B) * o.T * o.T * H);
}

// Random ids (every token real) and labels of batch B x T.
ftune::train::batch random_batch(const options& o) {
    ftune::train::batch b;
    b.B = o.B, b.T = o.T;
    const ftune::random_stream s(7, 7);
    for (std::size_t i = 0; i < o.B * o.T; ++i)
        b.ids.push_back(ftune::token_id(s.below(i, std::uint32_t(o.V))));
    b.mask.assign(o.B * o.T, 1);
    b.types.assign(o.B * o.T, 0);
    for (std::size_t i = 0; i < o.B; ++i)
        b.labels.push_back(ftune::token_id(s.below(o.B * o.T + i, 2)));
    return b;
}

// The host model of o's shape with seed 1's random weights.
model_type make_model(const options& o) {
    ftune::bert::config cfg{.vocab_size = o.V,
                            .hidden_size = o.H,
                            .num_hidden_layers = o.L,
                            .num_attention_heads = o.heads,
                            .intermediate_size = o.F,
                            .max_position_embeddings = std::max<std::size_t>(512, o.T)};
    cfg.num_labels = 2;
    model_type m(cfg);
    std::uint64_t seed = 1;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const ftune::random_stream s(seed++, 0);
        const bool norm = p.name.find("LayerNorm") != std::string::npos;
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = norm && p.name.ends_with("weight") ? 1.0f : 0.04f * (s.uniform(i) - 0.5f);
    });
    return m;
}

// The training step's median in ms on o.device.
std::vector<double> train_steps(const options& o) {
    auto model = make_model(o);
    const auto spec = ftune::device_spec::parse(o.device);
    auto run = ftune::train::make_device_run(
        model, spec,
        ftune::optim::any_optimizer<float>(
            ftune::optim::adamw<float>({.lr = 2e-5, .weight_decay = 0.01}), "adamw"));
    ftune::context ctx{
        .mode = ftune::mode::train, .rng = ftune::generator(1), .precision = o.precision};
    const auto b = random_batch(o);
    auto step = [&] {
        (void)run->train_batch(ctx, b, 1.0f / float(o.B));
        run->step(1.0, 2e-5);
    };
    for (int i = 0; i < 3; ++i) step();  // warm-up: the allocator's cache, cuBLAS's handles
    std::vector<double> t;
    for (int i = 0; i < o.steps; ++i) t.push_back(ms(step));
    return t;
}

// The prepared twin's per-request latencies in ms on device D.
template <class D>
std::vector<double> latencies(const options& o) {
    auto host = make_model(o);
    using twin_type = ftune::on_device_t<model_type, D>;
    twin_type twin(host.config());
    ftune::copy_parameters(host, twin, ftune::parameter_copy::values_to_twin, "bench_device");
    twin.prepare_inference(o.precision);
    ftune::context ctx{.mode = ftune::mode::eval, .precision = o.precision};
    const auto b = random_batch(o);
    using ids_buffer =
        ftune::buffer<ftune::token_id, ftune::shape<ftune::dynamic, ftune::dynamic>, D>;
    ids_buffer ids(o.B, o.T), mask(o.B, o.T), types(o.B, o.T);
    std::vector<float> logits(o.B * 2);
    auto call = [&] {
        ftune::host_to_device<D>(ids.data(), b.ids.data(), b.ids.size());
        ftune::host_to_device<D>(mask.data(), b.mask.data(), b.mask.size());
        const auto y = twin.forward(ctx, ids.view(), mask.view(), types.view());
        ftune::device_to_host<D>(logits.data(), y.data(), y.size());  // waits for the device
    };
    for (int i = 0; i < 3; ++i) call();
    std::vector<double> t;
    for (int i = 0; i < o.steps; ++i) t.push_back(ms(call));
    return t;
}

// SmolLM2-135M's decoder (its config.json) with seed 1's random weights.
ftune::llama::causal_lm<> make_smollm2_shape() {
    ftune::llama::config c;
    c.vocab_size = 49152, c.hidden_size = 576, c.intermediate_size = 1536;
    c.num_hidden_layers = 30, c.num_attention_heads = 9, c.num_key_value_heads = 3;
    c.max_position_embeddings = 8192, c.rope_theta = 100000.0, c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = true;
    ftune::llama::causal_lm<> m(c);
    std::uint64_t seed = 1;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const ftune::random_stream s(seed++, 0);
        const bool norm = p.name.find("norm") != std::string::npos;
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = norm ? 1.0f : 0.04f * (s.uniform(i) - 0.5f);
    });
    return m;
}

// Per call, the times (ms) of generating 1 token and 1 + o.new_tokens on device D.
template <class D>
std::pair<std::vector<double>, std::vector<double>> decode_times(const options& o) {
    auto host = make_smollm2_shape();
    using twin_type = ftune::on_device_t<ftune::llama::causal_lm<>, D>;
    twin_type twin(host.config());
    ftune::copy_parameters(host, twin, ftune::parameter_copy::values_to_twin, "bench_device");
    ftune::generation::generator<twin_type> gen(twin, 0, o.precision);
    std::vector<ftune::token_id> prompt;
    const ftune::random_stream s(7, 7);
    for (std::size_t i = 0; i < o.T; ++i) prompt.push_back(ftune::token_id(3 + s.below(i, 49000)));
    auto run = [&](std::size_t n) {
        const auto r = gen.generate(prompt, {.max_new_tokens = n, .temperature = 0});
        if (r.tokens.size() != n)
            throw ftune::error(ftune::errc::internal, "bench_device decode",
                               "generated fewer tokens than asked");
    };
    for (int i = 0; i < 3; ++i) run(1), run(1 + o.new_tokens);
    std::vector<double> one, all;
    for (int i = 0; i < o.steps; ++i) {
        one.push_back(ms([&] { run(1); }));
        all.push_back(ms([&] { run(1 + o.new_tokens); }));
    }
    return {one, all};
}

// The decode case's JSON line (median_ms: per decoded token).
template <class D>
void decode_case(const options& o, const std::string& name) {
    const auto [one, all] = decode_times<D>(o);
    const double prefill = median(one), total = median(all);
    std::printf(
        "{\"case\": \"decode\", \"device\": \"%s\", \"precision\": \"%s\", \"model\": "
        "\"SmolLM2-135M shape, random weights\", \"prompt\": %zu, \"new_tokens\": %zu, "
        "\"steps\": %d, \"prefill_ms\": %.3f, \"total_ms\": %.3f, \"decode_tokens_per_s\": "
        "%.1f, \"median_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"tflops\": 0}\n",
        name.c_str(), ftune::to_string(o.precision), o.T, o.new_tokens, o.steps, prefill, total,
        double(o.new_tokens) / ((total - prefill) * 1e-3), (total - prefill) / double(o.new_tokens),
        *std::min_element(all.begin(), all.end()), *std::max_element(all.begin(), all.end()));
}

// Parses "a,b,c,d" into four sizes.
bool parse_dims(const std::string& s, options& o) {
    return std::sscanf(s.c_str(), "%zu,%zu,%zu,%zu", &o.H, &o.L, &o.heads, &o.F) == 4;
}

int usage() {
    std::fprintf(stderr,
                 "usage: bench_device [--device cuda[:N]|reference] [--case train|latency] "
                 "[--dims H,L,heads,F] [--vocab V] [--batch B] [--seq T] "
                 "[--precision fp32|bf16] [--steps N] [--new N]\n"
                 "  --case decode: a SmolLM2-135M-shaped decoder, a prompt of --seq tokens\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) try {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return usage();
        const std::string v = argv[++i];
        if (a == "--device")
            o.device = v;
        else if (a == "--case")
            o.what = v;
        else if (a == "--dims") {
            if (!parse_dims(v, o)) return usage();
        } else if (a == "--vocab")
            o.V = std::stoul(v);
        else if (a == "--batch")
            o.B = std::stoul(v);
        else if (a == "--seq")
            o.T = std::stoul(v);
        else if (a == "--precision" && (v == "fp32" || v == "bf16"))
            o.precision = v == "bf16" ? ftune::precision::bf16 : ftune::precision::fp32;
        else if (a == "--steps")
            o.steps = std::stoi(v);
        else if (a == "--new")
            o.new_tokens = std::stoul(v);
        else
            return usage();
    }
    if ((o.what != "train" && o.what != "latency" && o.what != "decode") || o.steps < 1 ||
        o.new_tokens < 1)
        return usage();
    const auto spec = ftune::device_spec::parse(o.device);
    const std::string name = device_name(spec);
    if (o.what == "decode") {
        if (spec.what == ftune::device_spec::kind::reference)
            decode_case<ftune::device::reference>(o, name);
#if FTUNE_WITH_CUDA
        else if (spec.what == ftune::device_spec::kind::cuda)
            decode_case<ftune::device::cuda>(o, name);
#endif
        else
            throw ftune::error(ftune::errc::unsupported, "--device " + o.device,
                               "not a device this program was built for");
        return 0;
    }
    std::vector<double> t;
    if (o.what == "train")
        t = train_steps(o);
    else if (spec.what == ftune::device_spec::kind::reference)
        t = latencies<ftune::device::reference>(o);
#if FTUNE_WITH_CUDA
    else if (spec.what == ftune::device_spec::kind::cuda)
        t = latencies<ftune::device::cuda>(o);
#endif
    else
        throw ftune::error(ftune::errc::unsupported, "--device " + o.device,
                           "not a device this program was built for");
    const double m = median(t), flops = forward_flops(o) * (o.what == "train" ? 3 : 1);
    std::printf(
        "{\"case\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"dims\": [%zu, %zu, "
        "%zu, %zu], \"vocab\": %zu, \"batch\": %zu, \"seq\": %zu, \"steps\": %d, "
        "\"median_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"sequences_per_s\": %.1f, "
        "\"tflops\": %.2f}\n",
        o.what.c_str(), name.c_str(), ftune::to_string(o.precision), o.H, o.L, o.heads, o.F, o.V,
        o.B, o.T, o.steps, m, *std::min_element(t.begin(), t.end()),
        *std::max_element(t.begin(), t.end()), double(o.B) / (m * 1e-3),
        flops / (m * 1e-3) * 1e-12);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_device: %s\n", e.what());
    return 1;
}
