#!/usr/bin/env bash
# The CUDA backend on a GPU, in one command: builds its kernels
# (include/ftune/backends/cuda/implementation.cu) and tests/test_cuda.cpp with nvcc and the host
# compiler directly (no CMake packages needed), runs test_cuda (every primitive against the
# reference backend on awkward sizes, fp32 and bf16, the CPU's dropout masks, id errors,
# determinism, buffers and ops on device::cuda, no cudaMalloc in a steady state, whole models and
# the trainer on the GPU against the CPU), then the device benchmarks beside PyTorch on the same
# GPU (bench/compare_cuda.py running bench/bench_device.cpp: the BERT-base fine-tuning step and
# MiniLM-L12 batch-1 latency, fp32 and bf16, and the decode speed of a SmolLM2-135M-shaped
# decoder; skipped, and said so, where python3 has no torch with CUDA), and prints a summary. On the GPU machine a skipped test is a failure: the script
# exits non-zero unless test_cuda ran and passed and the benchmarks, where python3 can run them,
# ran. On one H200 (16 cores):
# 106 s to build, 157 s in all (2026-12-04); about two minutes to build on 2 cores.
#
# It needs nvcc (CUDA 12 or 13, with cuBLAS), a C++20 host compiler, and the headers of xsimd,
# Catch2 and nlohmann/json, and utf8proc (header and library). Where those are not installed (a GPU
# machine without Debian's packages), pack them here first and carry the folder there:
#   scripts/gpu-check.sh --pack .gpu          # here: copies those headers and libutf8proc
#   scripts/gpu-check.sh --deps .gpu          # on the GPU machine
# Options: --arch SM (nvcc -arch; default native where nvidia-smi sees a GPU, else sm_90),
#          --build DIR (default build-gpu), --deps DIR, --pack DIR, --no-bench (tests only).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$FTUNE_ROOT"

arch="" build=build-gpu deps="" pack="" bench=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --arch) arch=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        --deps) deps=$2; shift 2 ;;
        --pack) pack=$2; shift 2 ;;
        --no-bench) bench=0; shift ;;
        *) echo "gpu-check.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
    esac
done

if [[ -n $pack ]]; then
    mkdir -p "$pack/include"
    for h in /usr/include/xsimd /usr/include/catch2 /usr/include/nlohmann /usr/include/utf8proc.h; do
        [[ -e $h ]] || { echo "gpu-check.sh: $h missing: apt-get install libxsimd-dev catch2 nlohmann-json3-dev libutf8proc-dev" >&2; exit 1; }
        cp -r "$h" "$pack/include/"
    done
    # the shared library too (a C library with no dependency but libc; same on Debian and Ubuntu)
    mkdir -p "$pack/lib"
    cp -L /usr/lib/x86_64-linux-gnu/libutf8proc.so /usr/lib/x86_64-linux-gnu/libutf8proc.so.2 "$pack/lib/"
    echo "gpu-check.sh: packed the headers into $pack ($(du -sh "$pack" | cut -f1)); on the GPU" \
         "machine run: scripts/gpu-check.sh --deps $pack"
    exit 0
fi

command -v nvcc >/dev/null || { echo "gpu-check.sh: nvcc not found: install the CUDA toolkit" >&2; exit 1; }
cuda_home=$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)
if [[ -z $arch ]]; then
    if nvidia-smi -L >/dev/null 2>&1; then arch=native; else arch=sm_90; fi
fi
cxx=${CXX:-g++}
# the packed headers come before the toolkit's folder, which may be /usr/include (another Catch2)
includes=(-Iinclude -Itests)
libs=()
[[ -n $deps ]] && includes+=(-DFTUNE_CATCH2_V2 -I"$deps/include") && libs+=(-L"$deps/lib" -Wl,-rpath,"$(cd "$deps" && pwd)/lib")
includes+=(-I"$cuda_home/include")
# the host flags that set ftune's ABI namespace must match between the two objects
host=(-march=native -fopenmp)
mkdir -p "$build"
start=$(date +%s)
echo "== nvcc $(nvcc --version | tail -1), arch $arch, host compiler $($cxx --version | head -1)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
nvcc -std=c++20 -O3 --extended-lambda --expt-relaxed-constexpr -arch="$arch" \
    -Xcompiler=-march=native -Xcompiler=-fopenmp -DFTUNE_WITH_CUDA=1 "${includes[@]}" \
    -c include/ftune/backends/cuda/implementation.cu -o "$build/ftune_cuda.o" &
kernels=$!
$cxx -std=c++20 -O2 "${host[@]}" -DFTUNE_WITH_CUDA=1 "${includes[@]}" \
    -c tests/test_cuda.cpp -o "$build/test_cuda.o" &
tests=$!
$cxx -std=c++20 -O2 "${host[@]}" -DFTUNE_WITH_CUDA=1 "${includes[@]}" \
    -c bench/bench_device.cpp -o "$build/bench_device.o" &
benchmarks=$!
wait $kernels || { echo "gpu-check: FAILED: the kernels did not compile (above)"; exit 1; }
wait $tests || { echo "gpu-check: FAILED: tests/test_cuda.cpp did not compile (above)"; exit 1; }
wait $benchmarks || { echo "gpu-check: FAILED: bench/bench_device.cpp did not compile (above)"; exit 1; }
libdir="$cuda_home/lib64"
[[ -d $libdir ]] || libdir="$cuda_home/lib"
for program in test_cuda bench_device; do
    $cxx -o "$build/$program" "$build/$program.o" "$build/ftune_cuda.o" -fopenmp \
        "${libs[@]}" -lutf8proc -L"$libdir" -Wl,-rpath,"$libdir" -lcublas -lcudart
done
echo "== built in $(( $(date +%s) - start )) s"

set +e
"$build/test_cuda" 2>&1 | tee "$build/test_cuda.log"
rc=${PIPESTATUS[0]}
set -e
# the device benchmarks beside PyTorch (bench/compare_cuda.py), when the tests passed
bench_rc=0 bench_note="not run (--no-bench)"
[[ $bench -eq 1 ]] && bench_note="not run (the tests did not pass)"
if [[ $rc -eq 0 && $bench -eq 1 ]]; then
    if python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
        echo "== device benchmarks beside PyTorch (bench/compare_cuda.py)"
        set +e
        PYTHONUNBUFFERED=1 python3 bench/compare_cuda.py --ftune "$build/bench_device" \
            --json "$build/compare_cuda.json" 2>&1 | tee "$build/compare_cuda.log"
        bench_rc=${PIPESTATUS[0]}
        set -e
        bench_note="results in $build/compare_cuda.json"
        [[ $bench_rc -eq 0 ]] || bench_note="bench/compare_cuda.py exited $bench_rc"
    else
        bench_note="skipped: python3 has no torch with CUDA and transformers here"
    fi
fi
echo "== summary ($(( $(date +%s) - start )) s in all)"
echo "device benchmarks: $bench_note"
[[ -f $build/compare_cuda.log && $bench_rc -eq 0 ]] && sed -n '/^$/,$p' "$build/compare_cuda.log"
case $rc in
    0) grep -E "All tests passed|test cases" "$build/test_cuda.log" | tail -1
       if [[ $bench_rc -eq 0 ]]; then echo "gpu-check: PASSED"
       else echo "gpu-check: FAILED: the device benchmarks did not run (above)"; rc=1; fi ;;
    77) echo "gpu-check: FAILED: test_cuda found no usable GPU (see above); on a GPU machine" \
             "this is a failure" ;;
    *) echo "gpu-check: FAILED: test_cuda exited $rc" ;;
esac
[[ $rc -eq 0 ]]
