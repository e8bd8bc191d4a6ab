// What the CPU this process runs on is, read once at run time: its name (cpuid's brand string),
// vendor, family and model, the vector extensions the kernels care about, and the sizes of its
// data caches (Linux's sysfs, else cpuid leaf 4 / 0x8000001D). The GEMM takes its cache
// blocking from here (backends::cpu::gemm_detail::runtime_blocking), and every benchmark names
// the CPU it ran on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "ftune/backends/common.hpp"

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu {

/// The processor as seen at run time (x86-64 through cpuid; other CPUs get the caches only).
struct cpu_info {
    std::string name;             ///< brand string, e.g. "AMD EPYC 9B45" or "Intel(R) Xeon(R) ..."
    std::string vendor;           ///< "GenuineIntel", "AuthenticAMD", ... (empty when unknown)
    unsigned family = 0;          ///< display family (base + extended)
    unsigned model = 0;           ///< display model (with the extended model bits)
    bool avx2 = false;            ///< AVX2 and FMA
    bool avx512f = false;         ///< AVX-512 Foundation (usable: the OS saves the ZMM state)
    bool avx512_bf16 = false;     ///< AVX512-BF16 (vdpbf16ps)
    bool amx_bf16 = false;        ///< AMX-BF16 and AMX-TILE (the OS saves the tiles' state)
    std::size_t l1d = 32 * 1024;  ///< L1 data cache per core, bytes
    std::size_t l2 = 512 * 1024;  ///< L2 per core, bytes
    std::size_t l3 = 8 * 1024 * 1024;  ///< last-level cache, bytes (the whole cache)
    std::size_t l3_sharing = 1;        ///< logical CPUs that share the last-level cache
    bool caches_detected = false;      ///< false: the sizes above are defaults

    /// "AMD EPYC 9B45 (family 26 model 2; AVX-512, BF16; L1d 48 KiB, L2 1024 KiB, L3 32 MiB)".
    std::string summary() const {
        std::string isa = avx512f ? "AVX-512" : avx2 ? "AVX2" : "SSE";
        if (avx512_bf16) isa += ", BF16";
        if (amx_bf16) isa += ", AMX-BF16";
        return (name.empty() ? std::string("unknown CPU") : name) + " (family " +
               std::to_string(family) + " model " + std::to_string(model) + "; " + isa + "; L1d " +
               std::to_string(l1d / 1024) + " KiB, L2 " + std::to_string(l2 / 1024) + " KiB, L3 " +
               std::to_string(l3 / (1024 * 1024)) + " MiB" + (caches_detected ? "" : " (assumed)") +
               ")";
    }
};

namespace cpu_detail {

/// A sysfs cache size such as "48K" or "32768K" in bytes (0 when unreadable).
inline std::size_t read_cache_size(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    if (!(in >> s) || s.empty()) return 0;
    std::size_t mult = 1;
    if (s.back() == 'K')
        mult = 1024, s.pop_back();
    else if (s.back() == 'M')
        mult = 1024 * 1024, s.pop_back();
    try {
        return std::stoul(s) * mult;
    } catch (...) {
        return 0;
    }
}

/// The number of CPUs in a sysfs shared_cpu_list such as "0-15" or "0,1" (0 when unreadable).
inline std::size_t count_cpu_list(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    if (!(in >> s)) return 0;
    std::size_t n = 0, pos = 0;
    while (pos < s.size()) {
        const std::size_t comma = s.find(',', pos);
        const std::string part = s.substr(pos, comma == std::string::npos ? comma : comma - pos);
        const std::size_t dash = part.find('-');
        try {
            n += dash == std::string::npos
                     ? 1
                     : std::stoul(part.substr(dash + 1)) - std::stoul(part.substr(0, dash)) + 1;
        } catch (...) {
            return 0;
        }
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    return n;
}

/// Fills the cache sizes from /sys/devices/system/cpu/cpu0/cache (Linux); false if absent.
inline bool caches_from_sysfs(cpu_info& c) {
    bool any = false;
    for (int i = 0; i < 8; ++i) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i);
        std::ifstream lv(dir + "/level"), ty(dir + "/type");
        int level = 0;
        std::string type;
        if (!(lv >> level) || !(ty >> type) || type == "Instruction") continue;
        const std::size_t size = read_cache_size(dir + "/size");
        if (size == 0) continue;
        any = true;
        if (level == 1) c.l1d = size;
        if (level == 2) c.l2 = size;
        if (level == 3) {
            c.l3 = size;
            if (const std::size_t n = count_cpu_list(dir + "/shared_cpu_list")) c.l3_sharing = n;
        }
    }
    return any;
}

#if defined(__x86_64__) || defined(__i386__)
/// cpuid(leaf, subleaf) into r[4] (eax, ebx, ecx, edx).
inline void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}

/// Fills the cache sizes from the deterministic cache parameters (Intel leaf 4, AMD 0x8000001D).
inline bool caches_from_cpuid(cpu_info& c, unsigned leaf) {
    bool any = false;
    for (unsigned i = 0; i < 8; ++i) {
        unsigned r[4];
        cpuid(leaf, i, r);
        const unsigned type = r[0] & 31u, level = (r[0] >> 5) & 7u;
        if (type == 0) break;
        if (type == 2) continue;  // instruction cache
        const std::size_t ways = ((r[1] >> 22) & 1023u) + 1, parts = ((r[1] >> 12) & 1023u) + 1,
                          line = (r[1] & 4095u) + 1, sets = std::size_t(r[2]) + 1;
        const std::size_t size = ways * parts * line * sets;
        any = true;
        if (level == 1) c.l1d = size;
        if (level == 2) c.l2 = size;
        if (level == 3) c.l3 = size, c.l3_sharing = ((r[0] >> 14) & 4095u) + 1;
    }
    return any;
}
#endif

/// Reads everything once.
inline cpu_info detect() {
    cpu_info c;
#if defined(__x86_64__) || defined(__i386__)
    unsigned r[4];
    cpuid(0, 0, r);
    const unsigned max_leaf = r[0];
    char vendor[13] = {};
    std::memcpy(vendor, &r[1], 4), std::memcpy(vendor + 4, &r[3], 4),
        std::memcpy(vendor + 8, &r[2], 4);
    c.vendor = vendor;
    cpuid(1, 0, r);
    const unsigned base_family = (r[0] >> 8) & 15u, base_model = (r[0] >> 4) & 15u;
    c.family = base_family == 15 ? base_family + ((r[0] >> 20) & 255u) : base_family;
    c.model = base_family == 6 || base_family == 15 ? base_model | (((r[0] >> 16) & 15u) << 4)
                                                    : base_model;
    const bool osxsave = (r[2] >> 27) & 1u, fma = (r[2] >> 12) & 1u;
    unsigned long long xcr0 = 0;
    if (osxsave) {
        unsigned lo = 0, hi = 0;
        __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
    }
    const bool ymm_state = (xcr0 & 6u) == 6u, zmm_state = (xcr0 & 0xe6u) == 0xe6u,
               amx_state = (xcr0 & (3ull << 17)) == (3ull << 17);
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        c.avx2 = ymm_state && fma && ((r[1] >> 5) & 1u);
        c.avx512f = zmm_state && ((r[1] >> 16) & 1u);
        c.amx_bf16 = amx_state && ((r[3] >> 22) & 1u) && ((r[3] >> 24) & 1u);  // and AMX-TILE
        cpuid(7, 1, r);
        c.avx512_bf16 = c.avx512f && ((r[0] >> 5) & 1u);
    }
    cpuid(0x80000000u, 0, r);
    const unsigned max_ext = r[0];
    if (max_ext >= 0x80000004u) {
        char brand[49] = {};
        for (unsigned i = 0; i < 3; ++i) {
            cpuid(0x80000002u + i, 0, r);
            std::memcpy(brand + 16 * i, r, 16);
        }
        std::string b(brand);
        const auto first = b.find_first_not_of(' '), last = b.find_last_not_of(' ');
        c.name = first == std::string::npos ? "" : b.substr(first, last - first + 1);
    }
    c.caches_detected = caches_from_sysfs(c);
    if (!c.caches_detected) {
        if (c.vendor == "AuthenticAMD" && max_ext >= 0x8000001Du)
            c.caches_detected = caches_from_cpuid(c, 0x8000001Du);
        else if (max_leaf >= 4)
            c.caches_detected = caches_from_cpuid(c, 4);
    }
#else
    c.caches_detected = caches_from_sysfs(c);
#endif
    return c;
}

}  // namespace cpu_detail

/// The CPU this process runs on, detected on first use (thread-safe).
inline const cpu_info& this_cpu() {
    static const cpu_info info = cpu_detail::detect();
    return info;
}

}  // namespace backends::cpu
FTUNE_NAMESPACE_END
