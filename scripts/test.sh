#!/usr/bin/env bash
# Runs all of ftune's tests: installs missing Debian packages (as root), checks that the single
# header is fresh, builds (Release) and runs CTest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L primitives
# Environment: BUILD_DIR (default build), FTUNE_DATA_DIR (default ../shared/data).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$FTUNE_ROOT/scripts/lib.sh"
cd "$FTUNE_ROOT"

ftune_require_packages "${FTUNE_DEBIAN_PACKAGES[@]}" openmpi-bin libopenmpi-dev iproute2 \
    qemu-user  # MPI: test_dist_*; an emulated CPU without AVX-512: isa_check_*
scripts/amalgamate.sh --check
build=${BUILD_DIR:-build}
ftune_build "$build" -DFTUNE_BUILD_TESTS=ON
# Idle OpenMP threads sleep instead of spinning: tests run side by side (-j) and each one's
# spinning threads would take the cores from the others (here: test times summed 561 s -> 313 s,
# ctest -j2 265 s -> 156 s).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"

# The CUDA backend (docs/cuda.md), when the CUDA toolkit is installed: its kernels and test_cuda
# (label cuda) compile and link; without a GPU, test_cuda reports itself skipped. Nothing runs
# here, so the host code is not optimized (build type None: 43 s instead of 76 s on 2 cores).
# test_cuda runs directly, not through ctest: an all-skipped ctest summary as the log's last one
# reads as "no test ran" to CI. On a GPU: scripts/gpu-check.sh. Skipped when ctest arguments
# select a subset.
if [[ $# -eq 0 ]] && command -v nvcc >/dev/null; then
    cuda_build="$build-cuda"
    cmake -S . -B "$cuda_build" -DCMAKE_BUILD_TYPE=None -DFTUNE_WITH_CUDA=ON \
        -DFTUNE_BUILD_TESTS=ON -DFTUNE_BUILD_EXAMPLES=OFF -DFTUNE_BUILD_BENCH=OFF \
        -DFTUNE_BUILD_TOOLS=OFF -DFTUNE_INSTALL=OFF >/dev/null
    cmake --build "$cuda_build" -j "$(nproc)" --target test_cuda
    rc=0
    "$cuda_build/bin/test_cuda" || rc=$?
    [[ $rc -eq 0 || $rc -eq 77 ]] || { echo "test_cuda failed (exit $rc)" >&2; exit "$rc"; }
fi

# The libFuzzer targets of every reader (safetensors, config.json and tokenizer_config.json, GGUF,
# chat templates, TSV/CSV and plain text, CoNLL, SQuAD JSON, JSON-lines chat data, vocab.txt,
# tokenizer.json, PEFT adapter_config.json, `ftune serve`'s request bodies), when Clang is
# installed: built with AddressSanitizer + UndefinedBehaviorSanitizer and run FTUNE_FUZZ_SECONDS
# (default 5) each from seeds (committed fixtures), one per core at a time. A crash or sanitizer
# report fails the run.
# Skipped when ctest arguments select a subset, or with FTUNE_FUZZ_SECONDS=0. Longer runs:
# docs/fuzzing.md.
fuzz_seconds=${FTUNE_FUZZ_SECONDS:-5}
if [[ $# -eq 0 && $fuzz_seconds -gt 0 ]] && command -v clang++ >/dev/null; then
    fuzz_build="$build-fuzz"
    CXX=clang++ cmake -S . -B "$fuzz_build" -DCMAKE_BUILD_TYPE=Release -DFTUNE_BUILD_FUZZERS=ON \
        -DFTUNE_BUILD_TESTS=OFF -DFTUNE_BUILD_EXAMPLES=OFF -DFTUNE_BUILD_BENCH=OFF \
        -DFTUNE_BUILD_TOOLS=OFF -DFTUNE_INSTALL=OFF >/dev/null
    cmake --build "$fuzz_build" -j "$(nproc)"
    scripts/fuzz.sh --build "$fuzz_build" --seconds "$fuzz_seconds"
fi
