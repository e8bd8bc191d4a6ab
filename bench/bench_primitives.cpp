// Benchmarks of every primitive at the shapes of MiniLM-L12-H384 (hidden 384, FFN 1536, 12 heads)
// and BERT-base (768, 3072, 12 heads), batch 16 x sequence 128, on 1 and 2 threads, with the
// reference implementation beside the CPU one and a probe of this machine's peak. The infer_*
// rows are the served path at batch 1 (1 x 32 and 1 x 128 tokens): the projections on weights
// packed once (gemm_packed) and the fused attention (attention_inference).
//
//   build/bin/ftune_bench_primitives                 all benchmarks, then a summary table
//   build/bin/ftune_bench_primitives --benchmark_filter=gemm
//
// Counters: GFLOP/s for GEMM and the peak probe; GB/s (minimum bytes read + written) otherwise.
// Each benchmark runs 3 repetitions; the summary keeps the best (the machines are shared and
// interference only slows a run down). The summary table gives GEMM as % of the measured FMA
// peak (also best-of) at the same thread count,
// memory-bound kernels as % of the measured triad bandwidth of the cache level their data fit in
// (L3 or DRAM), and the CPU speed-up over the reference (over Eigen for GEMM).
#include <benchmark/benchmark.h>

#include <ftune/backends/cpu/gemm_eigen.hpp>
#include <ftune/backends/cpu/primitives.hpp>
#include <ftune/backends/reference/primitives.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cpu = ftune::backends::cpu;
namespace ref = ftune::backends::reference;
using ftune::transpose;

namespace {

// Model shapes at batch 16 x sequence 128.
struct model_dims {
    const char* name;    // short name used in benchmark names
    std::size_t hidden;  // C
    std::size_t ffn;     // intermediate size
    std::size_t heads;   // attention heads
    std::size_t params;  // parameter count (for optimizer and norm benchmarks)
};
constexpr std::size_t B = 16, T = 128, rows = B * T, vocab = 30522;
const model_dims models[] = {{"minilm", 384, 1536, 12, 33'360'000},
                             {"bertbase", 768, 3072, 12, 109'480'000}};

// n floats with values in [-2, 2).
std::vector<float> data(std::size_t n, std::uint64_t seed) {
    ftune::random_stream s(seed, 0);
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = float(s.uniform(i) * 4.0f - 2.0f);
    return v;
}

// Sets the thread count for a benchmark and reports it.
void threads(benchmark::State& st) {
    ftune::set_num_threads(int(st.range(0)));
}

// Reports bytes/s as a GB/s counter and an items/s rate.
void report_bytes(benchmark::State& st, double bytes_per_iter) {
    st.counters["GB/s"] = benchmark::Counter(bytes_per_iter * 1e-9 * double(st.iterations()),
                                             benchmark::Counter::kIsRate);
    st.counters["MB"] =
        bytes_per_iter * 1e-6;  // working set per call: picks the L3 or DRAM roofline
}
void report_flops(benchmark::State& st, double flops_per_iter) {
    st.counters["GFLOP/s"] = benchmark::Counter(flops_per_iter * 1e-9 * double(st.iterations()),
                                                benchmark::Counter::kIsRate);
}

// ---------------------------------------------------------------------------------------------
// Peak probe

// FMA peak: 12 independent chains of batch FMAs (enough to cover latency x throughput on
// current x86 cores), on every thread of an OpenMP team.
void probe_fma_peak(benchmark::State& st) {
    threads(st);
    using Bt = cpu::detail::batch<float>;
    constexpr int chains = 12;
    const long iters = 1 << 20;
    const int nt = int(st.range(0));
    float sink = 0;
    for (auto _ : st) {
#pragma omp parallel num_threads(nt) reduction(+ : sink)
        {
            Bt acc[chains];
            for (int k = 0; k < chains; ++k) acc[k] = Bt(1.0f + 1e-3f * float(k));
            const Bt a(0.999999f), c(1e-7f);
            for (long i = 0; i < iters; ++i)
                for (int k = 0; k < chains; ++k) acc[k] = xsimd::fma(acc[k], a, c);
            Bt s = acc[0];
            for (int k = 1; k < chains; ++k) s += acc[k];
            sink += cpu::detail::reduce_add(s);
        }
        benchmark::DoNotOptimize(sink);
    }
    report_flops(st, 2.0 * chains * double(Bt::size) * double(iters) * nt);
}

// Memory bandwidth: STREAM triad a = b + s c over 3 arrays of n floats (bytes counted: 3 arrays).
void triad(benchmark::State& st, std::size_t n) {
    threads(st);
    std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
    for (auto _ : st) {
        cpu::detail::parallel_for(n, std::max<std::size_t>(n / 64, 4096),
                                  [&](std::size_t i0, std::size_t i1) {
                                      for (std::size_t i = i0; i < i1; ++i)
                                          a[i] = b[i] + 0.5f * c[i];
                                  });
        benchmark::DoNotOptimize(a.data());
        benchmark::ClobberMemory();
    }
    report_bytes(st, 3.0 * double(n) * sizeof(float));
}
// DRAM: 3 x 256 MiB, far beyond any cache.
void probe_triad(benchmark::State& st) {
    triad(st, std::size_t(64) << 20);
}
// L3: 3 x 4 MiB = 12 MiB, inside a 32 MiB L3 but not in L2.
void probe_triad_l3(benchmark::State& st) {
    triad(st, std::size_t(1) << 20);
}

// ---------------------------------------------------------------------------------------------
// GEMM: the encoder's linear layers, forward (x Wᵀ) and the two backward products.

/// Which implementation a GEMM benchmark times.
enum class gemm_impl { cpu, eigen, bf16 };

// bf16: cpu::gemm_bf16 per call, rounding and packing both operands as a bf16 training step's
// products do (compare its GFLOP/s with the bf16 peak of `ftune info --system`).
void bench_gemm(benchmark::State& st, std::size_t M, std::size_t N, std::size_t K, transpose ta,
                transpose tb, gemm_impl impl) {
    threads(st);
    if (impl == gemm_impl::bf16 && !cpu::bf16_supported()) {
        st.SkipWithError("this CPU has no AVX512-BF16");
        return;
    }
    auto A = data(M * K, 1), Bm = data(K * N, 2), C = data(M * N, 3);
    const std::size_t lda = ta == transpose::no ? K : M, ldb = tb == transpose::no ? N : K;
    for (auto _ : st) {
        if (impl == gemm_impl::eigen)
            cpu::gemm_eigen(ta, tb, M, N, K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(),
                            N);
        else if (impl == gemm_impl::bf16)
            cpu::gemm_bf16(ta, tb, M, N, K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(), N);
        else
            cpu::gemm(ta, tb, M, N, K, 1.0f, A.data(), lda, Bm.data(), ldb, 0.0f, C.data(), N);
        benchmark::DoNotOptimize(C.data());
    }
    report_flops(st, 2.0 * double(M) * double(N) * double(K));
}

// A weight gradient's dyᵀ (dy: rows x cols, fp32) rounded and packed as a bf16 product's A:
// the packing of every dW = dyᵀ x of a bf16 training step (bytes: fp32 read, bf16 written).
void bench_pack_bf16_transposed(benchmark::State& st, std::size_t cols) {
    threads(st);
    if (!cpu::bf16_supported()) {
        st.SkipWithError("this CPU has no AVX512-BF16");
        return;
    }
    namespace bd = cpu::bf16_detail;
    auto dy = data(rows * cols, 1);
    std::vector<std::uint32_t> packed((cols + bd::MR - 1) / bd::MR * bd::MR * bd::pairs(rows));
    for (auto _ : st) {
        bd::pack_a(packed.data(), dy.data(), cols, transpose::yes, cols, rows);
        benchmark::DoNotOptimize(packed.data());
    }
    report_bytes(st, 6.0 * double(rows * cols));
}

// Attention scores Q Kᵀ per (batch, head): (T, d) x (d, T) over B*heads batches.
void bench_attention_gemm(benchmark::State& st, const model_dims& m) {
    threads(st);
    const std::size_t d = m.hidden / m.heads, batch = B * m.heads;
    auto Q = data(batch * T * d, 1), K = data(batch * T * d, 2), S = data(batch * T * T, 3);
    for (auto _ : st) {
        cpu::gemm_strided_batched(transpose::no, transpose::yes, T, T, d, 1.0f, Q.data(), d, T * d,
                                  K.data(), d, T * d, 0.0f, S.data(), T, T * T, batch);
        benchmark::DoNotOptimize(S.data());
    }
    report_flops(st, 2.0 * double(batch) * T * T * double(d));
}

// Batch-1 inference (the served path): x Wᵀ on weights packed once, M = one sequence's tokens.
void bench_gemm_packed(benchmark::State& st, std::size_t M, std::size_t N, std::size_t K) {
    threads(st);
    auto A = data(M * K, 1), W = data(N * K, 2), C = data(M * N, 3);
    cpu::packed_b<float> Wp;
    Wp.pack(W.data(), K, transpose::yes, K, N);
    for (auto _ : st) {
        cpu::gemm_packed(transpose::no, M, N, K, 1.0f, A.data(), K, Wp, 0.0f, C.data(), N);
        benchmark::DoNotOptimize(C.data());
    }
    report_flops(st, 2.0 * double(M) * double(N) * double(K));
}

// Fused inference attention of one sequence of T tokens (all heads): Q Kᵀ, softmax, P V.
// bf16: attention_inference_bf16 (prepared bf16 inference).
void bench_attention_inference(benchmark::State& st, const model_dims& m, std::size_t Tn,
                               bool bf16 = false) {
    threads(st);
    if (bf16 && !cpu::bf16_supported()) {
        st.SkipWithError("this CPU has no AVX512-BF16");
        return;
    }
    const std::size_t C = m.hidden, d = C / m.heads;
    auto qkv = data(Tn * 3 * C, 1), out = data(Tn * C, 2);
    std::vector<float> mask(Tn, 0.0f);
    for (auto _ : st) {
        (bf16 ? cpu::attention_inference_bf16
              : cpu::attention_inference<float>)(out.data(), C, qkv.data(), 3 * C, qkv.data() + C,
                                                 qkv.data() + 2 * C, 3 * C, mask.data(),
                                                 1.0f / std::sqrt(float(d)), 1, m.heads, Tn, Tn, d,
                                                 false);
        benchmark::DoNotOptimize(out.data());
    }
    report_flops(st, 4.0 * double(m.heads) * double(Tn) * double(Tn) * double(d));
}

// ---------------------------------------------------------------------------------------------
// Memory-bound primitives. Each takes an implementation tag (cpu or ref) as a template argument.

struct use_cpu {};
struct use_ref {};

template <class Impl>
void bench_gelu_fwd(benchmark::State& st, std::size_t n) {
    threads(st);
    auto x = data(n, 1);
    std::vector<float> y(n);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::gelu_forward(y.data(), x.data(), n);
        else
            ref::gelu_forward(y.data(), x.data(), n);
        benchmark::DoNotOptimize(y.data());
    }
    report_bytes(st, 2.0 * double(n) * 4);
}

template <class Impl>
void bench_gelu_bwd(benchmark::State& st, std::size_t n) {
    threads(st);
    auto x = data(n, 1), dy = data(n, 2), dx = data(n, 3);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::gelu_backward(dx.data(), x.data(), dy.data(), n);
        else
            ref::gelu_backward(dx.data(), x.data(), dy.data(), n);
        benchmark::DoNotOptimize(dx.data());
    }
    report_bytes(st, 4.0 * double(n) * 4);
}

template <class Impl>
void bench_gelu_tanh_fwd(benchmark::State& st, std::size_t n) {
    threads(st);
    auto x = data(n, 1);
    std::vector<float> y(n);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::gelu_tanh_forward(y.data(), x.data(), n);
        else
            ref::gelu_tanh_forward(y.data(), x.data(), n);
        benchmark::DoNotOptimize(y.data());
    }
    report_bytes(st, 2.0 * double(n) * 4);
}

template <class Impl>
void bench_tanh_fwd(benchmark::State& st, std::size_t n) {
    threads(st);
    auto x = data(n, 1);
    std::vector<float> y(n);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::tanh_forward(y.data(), x.data(), n);
        else
            ref::tanh_forward(y.data(), x.data(), n);
        benchmark::DoNotOptimize(y.data());
    }
    report_bytes(st, 2.0 * double(n) * 4);
}

template <class Impl>
void bench_layer_norm_fwd(benchmark::State& st, std::size_t C) {
    threads(st);
    auto x = data(rows * C, 1), w = data(C, 2), b = data(C, 3);
    std::vector<float> y(rows * C), mean(rows), rstd(rows);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::layer_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                    b.data(), rows, C, 1e-12f);
        else
            ref::layer_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                    b.data(), rows, C, 1e-12f);
        benchmark::DoNotOptimize(y.data());
    }
    report_bytes(st, 2.0 * double(rows * C) * 4);
}

template <class Impl>
void bench_layer_norm_bwd(benchmark::State& st, std::size_t C) {
    threads(st);
    auto x = data(rows * C, 1), w = data(C, 2), dy = data(rows * C, 3), dx = data(rows * C, 4);
    std::vector<float> y(rows * C), mean(rows), rstd(rows), dw(C), db(C);
    ref::layer_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), rows,
                            C, 1e-12f);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::layer_norm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                                     mean.data(), rstd.data(), rows, C);
        else
            ref::layer_norm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                                     mean.data(), rstd.data(), rows, C);
        benchmark::DoNotOptimize(dx.data());
    }
    report_bytes(st, 4.0 * double(rows * C) * 4);  // read x, dy, dx; write dx
}

template <class Impl>
void bench_softmax_fwd(benchmark::State& st, std::size_t heads) {
    threads(st);
    const std::size_t n = B * heads * T * T;
    auto s = data(n, 1);
    std::vector<float> p(n), mask(B * T, 0.0f);
    for (std::size_t b = 0; b < B; ++b)  // rows of different lengths
        for (std::size_t k = T - 8 * b; k < T; ++k) mask[b * T + k] = -1e4f;
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::softmax_forward(p.data(), s.data(), mask.data(), 0.125f, B, heads, T, T);
        else
            ref::softmax_forward(p.data(), s.data(), mask.data(), 0.125f, B, heads, T, T);
        benchmark::DoNotOptimize(p.data());
    }
    report_bytes(st, 2.0 * double(n) * 4);
}

template <class Impl>
void bench_softmax_bwd(benchmark::State& st, std::size_t heads) {
    threads(st);
    const std::size_t n = B * heads * T * T;
    auto p = data(n, 1), dp = data(n, 2), ds = data(n, 3);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::softmax_backward(ds.data(), p.data(), dp.data(), 0.125f, B * heads * T, T);
        else
            ref::softmax_backward(ds.data(), p.data(), dp.data(), 0.125f, B * heads * T, T);
        benchmark::DoNotOptimize(ds.data());
    }
    report_bytes(st, 4.0 * double(n) * 4);
}

template <class Impl>
void bench_adamw(benchmark::State& st, std::size_t n) {
    threads(st);
    auto p = data(n, 1), g = data(n, 2), m = data(n, 3);
    std::vector<float> v(n, 0.01f);
    ftune::adamw_params h{.lr = 1e-5, .weight_decay = 0.01, .step = 10};
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, h);
        else
            ref::adamw_update(p.data(), g.data(), m.data(), v.data(), n, h);
        benchmark::DoNotOptimize(p.data());
    }
    report_bytes(st, 7.0 * double(n) * 4);  // read p, g, m, v; write p, m, v
}

template <class Impl>
void bench_dropout_fwd(benchmark::State& st, std::size_t n) {
    threads(st);
    auto x = data(n, 1);
    std::vector<float> y(n);
    std::vector<std::uint8_t> mask(n);
    ftune::generator gen(1);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::dropout_forward(y.data(), mask.data(), x.data(), 0.1f, n, gen.next());
        else
            ref::dropout_forward(y.data(), mask.data(), x.data(), 0.1f, n, gen.next());
        benchmark::DoNotOptimize(y.data());
    }
    report_bytes(st, 9.0 * double(n));  // read x, write y and the 1-byte mask
}

template <class Impl>
void bench_dropout_bwd(benchmark::State& st, std::size_t n) {
    threads(st);
    auto dy = data(n, 1), dx = data(n, 2);
    std::vector<std::uint8_t> mask(n, 1);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::dropout_backward(dx.data(), mask.data(), dy.data(), 0.1f, n);
        else
            ref::dropout_backward(dx.data(), mask.data(), dy.data(), 0.1f, n);
        benchmark::DoNotOptimize(dx.data());
    }
    report_bytes(st, 13.0 * double(n));
}

template <class Impl>
void bench_bias_add(benchmark::State& st, std::size_t C) {
    threads(st);
    auto y = data(rows * C, 1), b = data(C, 2);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::bias_add(y.data(), b.data(), rows, C);
        else
            ref::bias_add(y.data(), b.data(), rows, C);
        benchmark::DoNotOptimize(y.data());
    }
    report_bytes(st, 2.0 * double(rows * C) * 4);
}

template <class Impl>
void bench_bias_bwd(benchmark::State& st, std::size_t C) {
    threads(st);
    auto dy = data(rows * C, 1);
    std::vector<float> db(C);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::bias_backward(db.data(), dy.data(), rows, C);
        else
            ref::bias_backward(db.data(), dy.data(), rows, C);
        benchmark::DoNotOptimize(db.data());
    }
    report_bytes(st, double(rows * C) * 4);
}

template <class Impl>
void bench_residual_add(benchmark::State& st, std::size_t n) {
    threads(st);
    auto a = data(n, 1), b = data(n, 2);
    std::vector<float> out(n);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::residual_add(out.data(), a.data(), b.data(), n);
        else
            ref::residual_add(out.data(), a.data(), b.data(), n);
        benchmark::DoNotOptimize(out.data());
    }
    report_bytes(st, 3.0 * double(n) * 4);
}

template <class Impl>
void bench_embedding_fwd(benchmark::State& st, std::size_t C) {
    threads(st);
    auto table = data(vocab * C, 1);
    std::vector<ftune::token_id> ids(rows);
    ftune::random_stream s(3, 3);
    for (std::size_t i = 0; i < rows; ++i) ids[i] = ftune::token_id(s.below(i, vocab));
    std::vector<float> out(rows * C);
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::embedding_forward(out.data(), ids.data(), table.data(), rows, C, vocab);
        else
            ref::embedding_forward(out.data(), ids.data(), table.data(), rows, C, vocab);
        benchmark::DoNotOptimize(out.data());
    }
    report_bytes(st, 2.0 * double(rows * C) * 4);
}

template <class Impl>
void bench_embedding_bwd(benchmark::State& st, std::size_t C) {
    threads(st);
    std::vector<float> dtable(vocab * C);
    auto dout = data(rows * C, 1);
    std::vector<ftune::token_id> ids(rows);
    ftune::random_stream s(3, 3);
    for (std::size_t i = 0; i < rows; ++i) ids[i] = ftune::token_id(s.below(i, vocab));
    for (auto _ : st) {
        if constexpr (std::is_same_v<Impl, use_cpu>)
            cpu::embedding_backward(dtable.data(), ids.data(), dout.data(), rows, C, vocab);
        else
            ref::embedding_backward(dtable.data(), ids.data(), dout.data(), rows, C, vocab);
        benchmark::DoNotOptimize(dtable.data());
    }
    report_bytes(st, 3.0 * double(rows * C) * 4);
}

// Cross-entropy over the masked-LM vocabulary for 15% of the tokens (the largest use).
template <class Impl>
void bench_cross_entropy(benchmark::State& st, bool backward) {
    threads(st);
    const std::size_t r = rows * 15 / 100;
    auto z = data(r * vocab, 1);
    std::vector<float> loss(r), dl(r, 1.0f / float(r)), dz(backward ? r * vocab : 0);
    std::vector<ftune::token_id> t(r);
    for (std::size_t i = 0; i < r; ++i) t[i] = ftune::token_id((i * 7919) % vocab);
    for (auto _ : st) {
        if (backward) {
            if constexpr (std::is_same_v<Impl, use_cpu>)
                cpu::cross_entropy_backward(dz.data(), z.data(), t.data(), dl.data(), r, vocab);
            else
                ref::cross_entropy_backward(dz.data(), z.data(), t.data(), dl.data(), r, vocab);
        } else {
            if constexpr (std::is_same_v<Impl, use_cpu>)
                cpu::cross_entropy_forward(loss.data(), z.data(), t.data(), r, vocab);
            else
                ref::cross_entropy_forward(loss.data(), z.data(), t.data(), r, vocab);
        }
        benchmark::DoNotOptimize(loss.data());
    }
    report_bytes(st, (backward ? 3.0 : 1.0) * double(r * vocab) * 4);
}

template <class Impl>
void bench_global_norm(benchmark::State& st, std::size_t n) {
    threads(st);
    auto g = data(n, 1);
    const std::span<const float> parts[] = {g};
    for (auto _ : st) {
        double v;
        if constexpr (std::is_same_v<Impl, use_cpu>)
            v = cpu::global_l2_norm<float>(parts);
        else
            v = ref::global_l2_norm<float>(parts);
        benchmark::DoNotOptimize(v);
    }
    report_bytes(st, double(n) * 4);
}

// ---------------------------------------------------------------------------------------------
// Registration

void apply_threads(benchmark::internal::Benchmark* b) {
    b->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->Unit(benchmark::kMillisecond);
}

template <class Impl>
void register_memory_bound(const model_dims& m, const std::string& impl) {
    std::string s = "/";  // appended step by step: GCC 12 warns falsely on "/" + std::string
    s += m.name;
    s += "/";
    s += impl;
    auto reg = [&](const std::string& name, auto fn) {
        apply_threads(benchmark::RegisterBenchmark((name + s).c_str(), fn));
    };
    reg("gelu_fwd", [m](benchmark::State& st) { bench_gelu_fwd<Impl>(st, rows * m.ffn); });
    reg("gelu_bwd", [m](benchmark::State& st) { bench_gelu_bwd<Impl>(st, rows * m.ffn); });
    reg("gelu_tanh_fwd",
        [m](benchmark::State& st) { bench_gelu_tanh_fwd<Impl>(st, rows * m.ffn); });
    reg("tanh_fwd", [m](benchmark::State& st) { bench_tanh_fwd<Impl>(st, B * m.hidden); });
    reg("layer_norm_fwd", [m](benchmark::State& st) { bench_layer_norm_fwd<Impl>(st, m.hidden); });
    reg("layer_norm_bwd", [m](benchmark::State& st) { bench_layer_norm_bwd<Impl>(st, m.hidden); });
    reg("softmax_fwd", [m](benchmark::State& st) { bench_softmax_fwd<Impl>(st, m.heads); });
    reg("softmax_bwd", [m](benchmark::State& st) { bench_softmax_bwd<Impl>(st, m.heads); });
    reg("dropout_fwd", [m](benchmark::State& st) { bench_dropout_fwd<Impl>(st, rows * m.hidden); });
    reg("dropout_bwd", [m](benchmark::State& st) { bench_dropout_bwd<Impl>(st, rows * m.hidden); });
    reg("bias_add", [m](benchmark::State& st) { bench_bias_add<Impl>(st, m.ffn); });
    reg("bias_bwd", [m](benchmark::State& st) { bench_bias_bwd<Impl>(st, m.ffn); });
    reg("residual_add",
        [m](benchmark::State& st) { bench_residual_add<Impl>(st, rows * m.hidden); });
    reg("embedding_fwd", [m](benchmark::State& st) { bench_embedding_fwd<Impl>(st, m.hidden); });
    reg("embedding_bwd", [m](benchmark::State& st) { bench_embedding_bwd<Impl>(st, m.hidden); });
    reg("global_l2_norm", [m](benchmark::State& st) { bench_global_norm<Impl>(st, m.params); });
    reg("adamw", [m](benchmark::State& st) { bench_adamw<Impl>(st, m.params); });
}

void register_all() {
    apply_threads(benchmark::RegisterBenchmark("peak/fma", probe_fma_peak));
    apply_threads(benchmark::RegisterBenchmark("peak/triad", probe_triad));
    apply_threads(benchmark::RegisterBenchmark("peak/triad_l3", probe_triad_l3));
    for (const auto& m : models) {
        const std::size_t H = m.hidden, F = m.ffn;
        struct g {
            const char* name;
            std::size_t M, N, K;
            transpose ta, tb;
        };
        const g gemms[] = {
            {"gemm_qkv_fwd", rows, 3 * H, H, transpose::no, transpose::yes},    // x Wqkvᵀ
            {"gemm_attn_out_fwd", rows, H, H, transpose::no, transpose::yes},   // ctx Woᵀ
            {"gemm_ffn_up_fwd", rows, F, H, transpose::no, transpose::yes},     // (2048, F, H)
            {"gemm_ffn_down_fwd", rows, H, F, transpose::no, transpose::yes},   // (2048, H, F)
            {"gemm_ffn_up_bwd_dx", rows, H, F, transpose::no, transpose::no},   // dY W
            {"gemm_ffn_up_bwd_dw", F, H, rows, transpose::yes, transpose::no},  // dYᵀ X
        };
        for (const auto& x : gemms)
            for (auto [impl, tag] :
                 {std::pair{gemm_impl::cpu, "/cpu"}, std::pair{gemm_impl::eigen, "/eigen"},
                  std::pair{gemm_impl::bf16, "/bf16"}}) {
                const std::string name = std::string(x.name) + "/" + m.name + tag;
                apply_threads(
                    benchmark::RegisterBenchmark(name.c_str(), [x, impl](benchmark::State& st) {
                        bench_gemm(st, x.M, x.N, x.K, x.ta, x.tb, impl);
                    }));
            }
        for (std::size_t cols : {H, F})
            apply_threads(benchmark::RegisterBenchmark(
                (std::string("pack_bf16_dyT/") + m.name + "_" + std::to_string(cols)).c_str(),
                [cols](benchmark::State& st) { bench_pack_bf16_transposed(st, cols); }));
        apply_threads(benchmark::RegisterBenchmark(
            (std::string("gemm_attention_qk/") + m.name + "/cpu").c_str(),
            [m](benchmark::State& st) { bench_attention_gemm(st, m); }));
        for (std::size_t t : {32, 128}) {  // batch 1: the served path's products
            const std::string tok = "/" + std::string(m.name) + "_1x" + std::to_string(t) + "/cpu";
            const g inf[] = {{"infer_qkv", t, 3 * H, H, transpose::no, transpose::yes},
                             {"infer_attn_out", t, H, H, transpose::no, transpose::yes},
                             {"infer_ffn_up", t, F, H, transpose::no, transpose::yes},
                             {"infer_ffn_down", t, H, F, transpose::no, transpose::yes}};
            for (const auto& x : inf)
                apply_threads(benchmark::RegisterBenchmark(
                    (x.name + tok).c_str(),
                    [x](benchmark::State& st) { bench_gemm_packed(st, x.M, x.N, x.K); }));
            apply_threads(benchmark::RegisterBenchmark(
                ("infer_attention" + tok).c_str(),
                [m, t](benchmark::State& st) { bench_attention_inference(st, m, t); }));
            apply_threads(benchmark::RegisterBenchmark(
                ("infer_attention/" + std::string(m.name) + "_1x" + std::to_string(t) + "/bf16")
                    .c_str(),
                [m, t](benchmark::State& st) { bench_attention_inference(st, m, t, true); }));
        }
        register_memory_bound<use_cpu>(m, "cpu");
        register_memory_bound<use_ref>(m, "ref");
    }
    for (const char* impl : {"cpu", "ref"}) {
        const bool is_cpu = std::string(impl) == "cpu";
        for (bool bwd : {false, true}) {
            const std::string name =
                std::string(bwd ? "cross_entropy_bwd" : "cross_entropy_fwd") + "/mlm30522/" + impl;
            apply_threads(
                benchmark::RegisterBenchmark(name.c_str(), [is_cpu, bwd](benchmark::State& st) {
                    if (is_cpu)
                        bench_cross_entropy<use_cpu>(st, bwd);
                    else
                        bench_cross_entropy<use_ref>(st, bwd);
                }));
        }
    }
}

// Collects every run to print the summary table at the end.
class collecting_reporter : public benchmark::ConsoleReporter {
  public:
    struct row {
        double gflops = 0, gbs = 0, ms = 0, mb = 0;  // mb: working set per call
    };
    std::map<std::string, row> runs;  // "name/threads:N/real_time" -> best repetition
    void ReportRuns(const std::vector<Run>& reports) override {
        ConsoleReporter::ReportRuns(reports);
        for (const auto& r : reports) {
            if (r.run_type != Run::RT_Iteration) continue;
            // keep the best repetition: on a shared machine, interference only slows runs down
            row x;
            if (auto it = r.counters.find("GFLOP/s"); it != r.counters.end()) x.gflops = it->second;
            if (auto it = r.counters.find("GB/s"); it != r.counters.end()) x.gbs = it->second;
            if (auto it = r.counters.find("MB"); it != r.counters.end()) x.mb = it->second;
            x.ms = r.GetAdjustedRealTime();
            auto [it, fresh] = runs.emplace(r.benchmark_name(), x);
            if (!fresh && x.ms < it->second.ms) it->second = x;
        }
    }
};

// Prints a Markdown table: GEMM as % of the FMA peak; the others as % of the triad bandwidth of
// the memory level their working set lives in (L3 up to 30 MB, DRAM beyond), and x reference.
void print_summary(const collecting_reporter& rep) {
    auto get = [&](const std::string& k) -> const collecting_reporter::row* {
        auto it = rep.runs.find(k);
        return it == rep.runs.end() ? nullptr : &it->second;
    };
    std::printf("\n## Summary (B=16, T=128; best repetition) on %s\n\n",
                ftune::backends::cpu::this_cpu().summary().c_str());
    for (int t : {1, 2}) {
        const std::string ts = "/threads:" + std::to_string(t) + "/real_time";
        const auto* peak = get("peak/fma" + ts);
        const auto* bw = get("peak/triad" + ts);
        const auto* l3 = get("peak/triad_l3" + ts);
        if (peak) std::printf("threads %d: FMA peak %.1f GFLOP/s", t, peak->gflops);
        if (bw) std::printf(", DRAM triad %.1f GB/s", bw->gbs);
        if (l3) std::printf(", L3 triad %.1f GB/s", l3->gbs);
        std::printf("\n");
    }
    std::printf(
        "\n| primitive | model | 1 thread | 2 threads | %% of peak (1t / 2t) | roofline | "
        "speed-up, 1 thread | bf16, 1 thread |\n|---|---|---|---|---|---|---|---|\n");
    for (const auto& [key, r] : rep.runs) {
        const std::string suffix = "/threads:1/real_time";
        if (key.size() < suffix.size() ||
            key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
            continue;
        const std::string base = key.substr(0, key.size() - suffix.size());
        if (base.size() < 4 || base.compare(base.size() - 4, 4, "/cpu") != 0)
            continue;  // baselines are columns
        const auto* r2 = get(base + "/threads:2/real_time");
        const bool is_gemm = r.gflops > 0;
        const char* roof = is_gemm ? "peak/fma" : (r.mb > 30.0 ? "peak/triad" : "peak/triad_l3");
        const auto* p1 = get(roof + suffix);
        const auto* p2 = get(roof + std::string("/threads:2/real_time"));
        const double v1 = is_gemm ? r.gflops : r.gbs,
                     v2 = r2 ? (is_gemm ? r2->gflops : r2->gbs) : 0;
        const double pk1 = p1 ? (is_gemm ? p1->gflops : p1->gbs) : 0,
                     pk2 = p2 ? (is_gemm ? p2->gflops : p2->gbs) : 0;
        std::string name = base, model;
        if (auto s = base.find('/'); s != std::string::npos) {
            name = base.substr(0, s);
            model = base.substr(s + 1);
            if (auto c = model.find("/cpu"); c != std::string::npos) model = model.substr(0, c);
        }
        // speed-up over the baseline at one thread: Eigen for GEMM, the reference otherwise
        std::string speedup = "";
        std::string basekey = base.substr(0, base.size() - 4) + (is_gemm ? "/eigen" : "/ref");
        if (const auto* rr = get(basekey + suffix); rr && rr->ms > 0) {
            char buf[48];
            std::snprintf(buf, sizeof buf, "%.2fx %s", rr->ms / r.ms,
                          is_gemm ? "Eigen" : "reference");
            speedup = buf;
        }
        // the same product in bf16 (gemm_bf16, operands rounded and packed per call)
        std::string bf16 = "";
        if (const auto* rb = get(base.substr(0, base.size() - 4) + "/bf16" + suffix);
            rb && rb->gflops > 0) {
            char buf[48];
            std::snprintf(buf, sizeof buf, "%.1f GFLOP/s", rb->gflops);
            bf16 = buf;
        }
        std::printf("| %s | %s | %.1f %s | %.1f %s | %.0f%% / %.0f%% | %s | %s | %s |\n",
                    name.c_str(), model.c_str(), v1, is_gemm ? "GFLOP/s" : "GB/s", v2,
                    is_gemm ? "GFLOP/s" : "GB/s", pk1 > 0 ? 100 * v1 / pk1 : 0,
                    pk2 > 0 ? 100 * v2 / pk2 : 0, is_gemm ? "FMA" : (r.mb > 30.0 ? "DRAM" : "L3"),
                    speedup.c_str(), bf16.c_str());
    }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    // Defaults (overridable on the command line): 3 repetitions of at least 0.2 s each.
    std::vector<char*> args(argv, argv + argc);
    std::string reps = "--benchmark_repetitions=3", min_time = "--benchmark_min_time=0.2";
    auto given = [&](const char* flag) {
        for (int i = 1; i < argc; ++i)
            if (std::string(argv[i]).rfind(flag, 0) == 0) return true;
        return false;
    };
    if (!given("--benchmark_repetitions")) args.insert(args.begin() + 1, reps.data());
    if (!given("--benchmark_min_time")) args.insert(args.begin() + 1, min_time.data());
    argc = int(args.size());
    argv = args.data();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::AddCustomContext("cpu", ftune::backends::cpu::this_cpu().summary());
    collecting_reporter rep;
    benchmark::RunSpecifiedBenchmarks(&rep);
    print_summary(rep);
    benchmark::Shutdown();
    return 0;
}
