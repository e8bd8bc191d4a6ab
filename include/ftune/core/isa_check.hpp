// The instruction-set extensions a translation unit was compiled for, checked against the CPU
// before main(). A program built with -march=native on a machine with AVX-512 and run on a
// server without it would otherwise die of SIGILL ("Illegal instruction") at the first such
// instruction, with no word of why; instead it stops at start-up naming the missing extensions
// and how to build for every CPU it is deployed to (docs/usage.md, "Building for other CPUs").
//
// Every translation unit that includes ftune checks the extensions its own compiler flags let
// the compiler use on its own (GCC's and Clang's predefined macros: __AVX512F__, __AVX2__,
// __BMI2__, ...) against cpuid and the state the OS saves (xgetbv). Extensions that only
// intrinsics reach (AES, SHA, RDRAND, AMX, ...) are not checked: a CPU or a VM may hide them
// and the program still runs. The check itself is compiled without any extension the compiler
// could use (the baseline x86-64 ISA) and calls nothing but the C library. FTUNE_ISA_CHECK=warn in
// the environment prints the message and carries on; FTUNE_ISA_CHECK=off skips it; defining
// FTUNE_NO_ISA_CHECK compiles it out. x86-64 with GCC or Clang on Linux only (elsewhere, and in
// CUDA translation units, nothing is checked).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "ftune/config.hpp"

// FTUNE_HAS_ISA_CHECK: 1 where the check is compiled in.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__) && \
    !defined(__CUDACC__) && !defined(FTUNE_NO_ISA_CHECK)
#define FTUNE_HAS_ISA_CHECK 1
#include <unistd.h>
#else
#define FTUNE_HAS_ISA_CHECK 0
#endif

FTUNE_NAMESPACE_BEGIN
namespace isa_detail {

#if FTUNE_HAS_ISA_CHECK
// The extensions the check's own functions must not use beyond FTUNE_ISA_BASELINE's: those the
// flags enabled that do not depend on SSE3 (each negated only where enabled: an older compiler
// may not know the name).
#ifdef __AES__
#define FTUNE_ISA_NO_AES ",no-aes"
#else
#define FTUNE_ISA_NO_AES ""
#endif
#ifdef __PCLMUL__
#define FTUNE_ISA_NO_PCLMUL ",no-pclmul"
#else
#define FTUNE_ISA_NO_PCLMUL ""
#endif
#ifdef __SHA__
#define FTUNE_ISA_NO_SHA ",no-sha"
#else
#define FTUNE_ISA_NO_SHA ""
#endif
#ifdef __GFNI__
#define FTUNE_ISA_NO_GFNI ",no-gfni"
#else
#define FTUNE_ISA_NO_GFNI ""
#endif
#ifdef __ADX__
#define FTUNE_ISA_NO_ADX ",no-adx"
#else
#define FTUNE_ISA_NO_ADX ""
#endif
#ifdef __RDRND__
#define FTUNE_ISA_NO_RDRND ",no-rdrnd"
#else
#define FTUNE_ISA_NO_RDRND ""
#endif
#ifdef __RDSEED__
#define FTUNE_ISA_NO_RDSEED ",no-rdseed"
#else
#define FTUNE_ISA_NO_RDSEED ""
#endif
#ifdef __PRFCHW__
#define FTUNE_ISA_NO_PRFCHW ",no-prfchw"
#else
#define FTUNE_ISA_NO_PRFCHW ""
#endif
#ifdef __APX_F__
#define FTUNE_ISA_NO_APX ",no-apxf"
#else
#define FTUNE_ISA_NO_APX ""
#endif
/// Compiles a function for the baseline x86-64 ISA whatever -march says (no AVX, SSE3, bit
/// manipulation, APX or other instructions the compiler could choose), so that the check runs
/// on any x86-64 CPU.
#define FTUNE_ISA_BASELINE                                                                        \
    __attribute__((target(                                                                        \
        "no-sse3,no-bmi,no-bmi2,no-lzcnt,no-popcnt,no-movbe" FTUNE_ISA_NO_AES FTUNE_ISA_NO_PCLMUL \
            FTUNE_ISA_NO_SHA FTUNE_ISA_NO_GFNI FTUNE_ISA_NO_ADX FTUNE_ISA_NO_RDRND                \
                FTUNE_ISA_NO_RDSEED FTUNE_ISA_NO_PRFCHW FTUNE_ISA_NO_APX)))

/// The cpuid and xgetbv words the table below reads (cpu_words fills them).
enum word : unsigned char {
    leaf1_ecx,    ///< cpuid 1, ecx
    leaf7_ebx,    ///< cpuid 7.0, ebx
    leaf7_ecx,    ///< cpuid 7.0, ecx
    leaf7_edx,    ///< cpuid 7.0, edx
    leaf7_1_eax,  ///< cpuid 7.1, eax
    leaf7_1_edx,  ///< cpuid 7.1, edx
    ext1_ecx,     ///< cpuid 0x80000001, ecx
    os_state,     ///< xgetbv(0): the register state the OS saves (0 without OSXSAVE)
    words         ///< number of words
};

/// An extension and where cpuid reports it: all bits of mask set in word w.
struct feature {
    const char* name;    ///< GCC's name for it (-mNAME), or the OS state it needs
    unsigned char w;     ///< the word
    std::uint32_t mask;  ///< the bits
};

// (Internal linkage and no lambdas nor other inline C++ below: copies compiled with different
// flags stay apart, and nothing here runs code compiled for the translation unit's ISA.)

/// cpuid(leaf, sub) into r (eax, ebx, ecx, edx). (Not cpu_info.hpp's: that one is compiled for
/// the translation unit's ISA and lives above config.hpp's level.)
FTUNE_ISA_BASELINE static inline void cpuid(std::uint32_t leaf, std::uint32_t sub,
                                            std::uint32_t (&r)[4]) {
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

/// The words of this CPU (a leaf past the highest it reports reads as zeros).
FTUNE_ISA_BASELINE static inline void cpu_words(std::uint32_t (&w)[words]) {
    for (unsigned i = 0; i < words; ++i) w[i] = 0;
    std::uint32_t r[4];
    cpuid(0, 0, r);
    const std::uint32_t max_leaf = r[0];
    cpuid(1, 0, r);
    w[leaf1_ecx] = r[2];
    if (r[2] & (1u << 27)) {  // OSXSAVE: xgetbv is there
        std::uint32_t lo = 0, hi = 0;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        w[os_state] = lo;
    }
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        w[leaf7_ebx] = r[1], w[leaf7_ecx] = r[2], w[leaf7_edx] = r[3];
        if (r[0] >= 1) {  // the highest subleaf of leaf 7
            cpuid(7, 1, r);
            w[leaf7_1_eax] = r[0], w[leaf7_1_edx] = r[3];
        }
    }
    cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000001u) {
        cpuid(0x80000001u, 0, r);
        w[ext1_ecx] = r[2];
    }
}

/// Appends the NUL-terminated s to out (length len < cap, capacity cap; truncated at cap - 1
/// characters, NUL-terminated); returns the new length.
FTUNE_ISA_BASELINE static inline std::size_t append(char* out, std::size_t len, std::size_t cap,
                                                    const char* s) {
    for (; *s && len + 1 < cap; ++s) out[len++] = *s;
    out[len] = '\0';
    return len;
}

/// Whether the NUL-terminated a (may be null) equals b.
FTUNE_ISA_BASELINE static inline bool equals(const char* a, const char* b) {
    if (!a) return false;
    for (; *a && *a == *b; ++a, ++b) {
    }
    return *a == *b;
}

/// Appends the names of the features (up to an entry with a null name) that w lacks to out
/// (comma-separated, as append; cap > 0); returns how many. An OS state entry follows the
/// extension it belongs to, and is named only when the CPU has that extension.
FTUNE_ISA_BASELINE static inline std::size_t missing(char* out, std::size_t cap, const feature* f,
                                                     const std::uint32_t (&w)[words]) {
    std::size_t n = 0, len = 0;
    out[0] = '\0';
    bool last_missing = false;  // the entry before: the extension an OS state entry belongs to
    for (; f->name; ++f) {
        const bool lacks = (w[f->w] & f->mask) != f->mask;
        const bool said = f->w == os_state && last_missing;  // no AVX-512: no word of its state
        last_missing = lacks;
        if (!lacks || said) continue;
        if (n++) len = append(out, len, cap, ", ");
        len = append(out, len, cap, f->name);
    }
    return n;
}

/// Whether a translation unit's check has printed its message (FTUNE_ISA_CHECK=warn): the
/// others then stay silent. Constant-initialized, so set and read safely before main().
inline bool warned = false;

/// The check of the features f: nothing when the CPU has them all; otherwise the message on
/// standard error, then _exit(1) unless FTUNE_ISA_CHECK=warn (FTUNE_ISA_CHECK=off: no check).
FTUNE_ISA_BASELINE static inline void check(const feature* f) {
    const char* mode = std::getenv("FTUNE_ISA_CHECK");
    if (equals(mode, "off")) return;
    std::uint32_t w[words];
    cpu_words(w);
    char names[512], msg[1536];
    if (missing(names, sizeof names, f, w) == 0) return;
    const bool warn = equals(mode, "warn");
    if (warn && warned) return;
    warned = true;
    std::size_t len = 0;
    len = append(msg, len, sizeof msg, warn ? "ftune: warning: " : "ftune: ");
    len = append(msg, len, sizeof msg,
                 "this program was compiled for instruction-set extensions this CPU lacks: ");
    len = append(msg, len, sizeof msg, names);
    len = append(msg, len, sizeof msg,
                 ". It would stop with an illegal instruction (SIGILL) at the first of them. "
                 "Rebuild it on this machine, or for every CPU it is deployed to: "
                 "-march=x86-64-v3 (AVX2 and FMA: Intel Core and Xeon since Haswell, AMD since "
                 "Zen) or the oldest of them; for ftune's own programs cmake "
                 "-DFTUNE_ARCH=x86-64-v3 (docs/usage.md, \"Building for other CPUs\").");
    len = append(msg, len, sizeof msg,
                 warn ? " FTUNE_ISA_CHECK=warn: carrying on.\n"
                      : " FTUNE_ISA_CHECK=warn carries on regardless.\n");
    for (std::size_t done = 0; done < len;) {
        const ssize_t r = ::write(2, msg + done, len - done);
        if (r <= 0) break;
        done += static_cast<std::size_t>(r);
    }
    if (!warn) ::_exit(1);
}

// The extensions this translation unit's flags let the compiler use in code of its own choosing
// (vectorized loops, bit manipulation, ...), each where cpuid reports it, and the register state
// AVX and AVX-512 need the OS to save. Not: those only intrinsics or builtins reach (AES, PCLMUL,
// SHA, GFNI, VAES, VPCLMULQDQ, RDRAND, RDSEED, ADX, PREFETCHW, FSGSBASE, XSAVE, CLFLUSHOPT, CLWB,
// RDPID, MOVDIRI, SERIALIZE, SSE4A, AMX, AVX512-VP2INTERSECT: GCC 12 and Clang 14 name the last
// for -march=sapphirerapids, whose CPUs do not report it). Internal linkage: translation units
// built with different flags each check their own.
[[maybe_unused]] static constexpr feature compiled[] = {
#ifdef __SSE3__
    {"sse3", leaf1_ecx, 1u << 0},
#endif
#ifdef __SSSE3__
    {"ssse3", leaf1_ecx, 1u << 9},
#endif
#ifdef __FMA__
    {"fma", leaf1_ecx, 1u << 12},
#endif
#ifdef __GCC_HAVE_SYNC_COMPARE_AND_SWAP_16
    {"cx16", leaf1_ecx, 1u << 13},
#endif
#ifdef __SSE4_1__
    {"sse4.1", leaf1_ecx, 1u << 19},
#endif
#ifdef __SSE4_2__
    {"sse4.2", leaf1_ecx, 1u << 20},
#endif
#ifdef __MOVBE__
    {"movbe", leaf1_ecx, 1u << 22},
#endif
#ifdef __POPCNT__
    {"popcnt", leaf1_ecx, 1u << 23},
#endif
#ifdef __AVX__
    {"avx", leaf1_ecx, 1u << 28},
    {"the OS's saving of AVX registers", os_state, 0x6u},
#endif
#ifdef __F16C__
    {"f16c", leaf1_ecx, 1u << 29},
#endif
#ifdef __BMI__
    {"bmi", leaf7_ebx, 1u << 3},
#endif
#ifdef __AVX2__
    {"avx2", leaf7_ebx, 1u << 5},
#endif
#ifdef __BMI2__
    {"bmi2", leaf7_ebx, 1u << 8},
#endif
#ifdef __AVX512F__
    {"avx512f", leaf7_ebx, 1u << 16},
    {"the OS's saving of AVX-512 registers", os_state, 0xe6u},
#endif
#ifdef __AVX512DQ__
    {"avx512dq", leaf7_ebx, 1u << 17},
#endif
#ifdef __AVX512IFMA__
    {"avx512ifma", leaf7_ebx, 1u << 21},
#endif
#ifdef __AVX512PF__
    {"avx512pf", leaf7_ebx, 1u << 26},
#endif
#ifdef __AVX512ER__
    {"avx512er", leaf7_ebx, 1u << 27},
#endif
#ifdef __AVX512CD__
    {"avx512cd", leaf7_ebx, 1u << 28},
#endif
#ifdef __AVX512BW__
    {"avx512bw", leaf7_ebx, 1u << 30},
#endif
#ifdef __AVX512VL__
    {"avx512vl", leaf7_ebx, 1u << 31},
#endif
#ifdef __AVX512VBMI__
    {"avx512vbmi", leaf7_ecx, 1u << 1},
#endif
#ifdef __AVX512VBMI2__
    {"avx512vbmi2", leaf7_ecx, 1u << 6},
#endif
#ifdef __AVX512VNNI__
    {"avx512vnni", leaf7_ecx, 1u << 11},
#endif
#ifdef __AVX512BITALG__
    {"avx512bitalg", leaf7_ecx, 1u << 12},
#endif
#ifdef __AVX512VPOPCNTDQ__
    {"avx512vpopcntdq", leaf7_ecx, 1u << 14},
#endif
#ifdef __AVX512FP16__
    {"avx512fp16", leaf7_edx, 1u << 23},
#endif
#ifdef __AVXVNNI__
    {"avxvnni", leaf7_1_eax, 1u << 4},
#endif
#ifdef __AVX512BF16__
    {"avx512bf16", leaf7_1_eax, 1u << 5},
#endif
#ifdef __AVXIFMA__
    {"avxifma", leaf7_1_eax, 1u << 23},
#endif
#ifdef __AVXVNNIINT8__
    {"avxvnniint8", leaf7_1_edx, 1u << 4},
#endif
#ifdef __AVXNECONVERT__
    {"avxneconvert", leaf7_1_edx, 1u << 5},
#endif
#ifdef __LZCNT__
    {"lzcnt", ext1_ecx, 1u << 5},
#endif
#ifdef __XOP__
    {"xop", ext1_ecx, 1u << 11},
#endif
#ifdef __FMA4__
    {"fma4", ext1_ecx, 1u << 16},
#endif
#ifdef __TBM__
    {"tbm", ext1_ecx, 1u << 21},
#endif
    {nullptr, 0, 0}};

// Runs the check before main() and before other constructors of this program (priority 101,
// the first one programs may use), once per translation unit that includes ftune.
[[gnu::constructor(101)]] FTUNE_ISA_BASELINE static void check_at_startup() {
    check(compiled);
}
#endif

}  // namespace isa_detail

/// The instruction-set extensions the calling translation unit was compiled for, as checked at
/// start-up, comma-separated ("" where nothing is checked: not x86-64 Linux with GCC or Clang,
/// or FTUNE_NO_ISA_CHECK).
[[maybe_unused]] static inline std::string compiled_isa() {
    std::string s;
#if FTUNE_HAS_ISA_CHECK
    for (const isa_detail::feature* f = isa_detail::compiled; f->name; ++f)
        if (f->w != isa_detail::os_state) s += (s.empty() ? "" : ", ") + std::string(f->name);
#endif
    return s;
}

/// Those of compiled_isa() this CPU lacks, comma-separated ("" when it has them all, and where
/// nothing is checked); also the OS state AVX and AVX-512 need, when it is not saved.
[[maybe_unused]] static inline std::string missing_isa() {
#if FTUNE_HAS_ISA_CHECK
    std::uint32_t w[isa_detail::words];
    isa_detail::cpu_words(w);
    char names[512];
    isa_detail::missing(names, sizeof names, isa_detail::compiled, w);
    return names;
#else
    return {};
#endif
}

FTUNE_NAMESPACE_END
