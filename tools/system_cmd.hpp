// `ftune info --system`: the CPU as ftune sees it at run time (name, vector extensions, those
// this build was compiled for, logical CPUs, caches, the GEMM's cache blocking) and its measured
// peaks: fp32 FMA and, where the CPU has AVX512-BF16, bf16 dot products (vdpbf16ps), and AMX
// tiles (tdpbf16ps) where the bf16 products use them, on one thread and on all of them.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "bench_cmd.hpp"

namespace cli {

// Runs `ftune info --system`; returns the exit status.
inline int run_system_info() {
    namespace cpu = ftune::backends::cpu;
    const cpu::cpu_info& c = cpu::this_cpu();
    const auto& b = cpu::gemm_detail::runtime_blocking<float>();
    const int nt = ftune::num_threads();
    auto yes = [](bool v) { return v ? "yes" : "no"; };
    std::printf("cpu           %s (%s, family %u model %u)\n",
                c.name.empty() ? "unknown" : c.name.c_str(),
                c.vendor.empty() ? "unknown vendor" : c.vendor.c_str(), c.family, c.model);
    std::printf(
        "isa           AVX2+FMA %s, AVX-512 %s, AVX512-BF16 %s, AMX-BF16 %s; ftune built "
        "for %s (%zu float lanes)\n",
        yes(c.avx2), yes(c.avx512f), yes(c.avx512_bf16), yes(c.amx_bf16),
        FTUNE_STRINGIFY_VALUE(FTUNE_ABI_ARCH), cpu::detail::width<float>);
    const std::string built = ftune::compiled_isa(), lacking = ftune::missing_isa();
    std::printf("compiled for  %s (%s)\n", built.empty() ? "the baseline ISA" : built.c_str(),
                lacking.empty() ? "all on this CPU" : ("this CPU lacks " + lacking).c_str());
    std::printf("cores         %u logical CPUs, %d OpenMP threads\n",
                std::thread::hardware_concurrency(), nt);
    std::printf(
        "caches        L1d %zu KiB, L2 %zu KiB per core, L3 %zu MiB shared by %zu logical "
        "CPUs (%s)\n",
        c.l1d / 1024, c.l2 / 1024, c.l3 / (1024 * 1024), c.l3_sharing,
        c.caches_detected ? "detected" : "assumed: none found");
    std::printf("gemm blocks   kc %zu, mc %zu, nc %zu (from the caches)\n", b.kc, b.mc, b.nc);
    std::printf("fp32 peak     %.1f GFLOP/s on 1 thread, %.1f on %d (FMA, measured)\n",
                fma_peak_gflops(1), fma_peak_gflops(nt), nt);
    if (c.avx512_bf16)
        std::printf("bf16 peak     %.1f GFLOP/s on 1 thread, %.1f on %d (vdpbf16ps, measured)\n",
                    bf16_peak_gflops(1), bf16_peak_gflops(nt), nt);
    else
        std::printf("bf16 peak     none: the CPU has no AVX512-BF16\n");
    if (c.amx_bf16 && cpu::amx_enabled())
        std::printf(
            "amx peak      %.1f GFLOP/s on 1 thread, %.1f on %d (tdpbf16ps, measured; "
            "the bf16 products use the tiles)\n",
            amx_peak_gflops(1), amx_peak_gflops(nt), nt);
    else if (c.amx_bf16)
        std::printf("amx peak      not measured: the bf16 products do not use the tiles (%s)\n",
                    cpu::amx_available() ? "FTUNE_AMX=0"
                                         : "the OS refused them, or this build has no AMX kernels");
    return 0;
}

}  // namespace cli
