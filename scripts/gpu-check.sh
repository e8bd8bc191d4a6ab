#!/usr/bin/env bash
# The CUDA backend on a GPU, in one command: builds its kernels
# (include/ftune/backends/cuda/implementation.cu) and tests/test_cuda.cpp with nvcc and the host
# compiler directly (no CMake packages needed), runs test_cuda (every primitive against the
# reference backend on awkward sizes, fp32 and bf16, the CPU's dropout masks, id errors,
# determinism, buffers and ops on device::cuda, no cudaMalloc in a steady state) and prints a
# summary. On the GPU machine a skipped test is a failure: the script exits non-zero unless
# test_cuda ran and passed. About a minute to build on 2 cores; well within 8 minutes on one GPU.
#
# It needs nvcc (CUDA 12 or 13, with cuBLAS), a C++20 host compiler, and the headers of xsimd,
# Catch2 and nlohmann/json. Where those are not installed (a GPU machine without Debian's packages),
# pack them here first and carry the folder there:
#   scripts/gpu-check.sh --pack .gpu          # here: copies those headers
#   scripts/gpu-check.sh --deps .gpu          # on the GPU machine
# Options: --arch SM (nvcc -arch; default native where nvidia-smi sees a GPU, else sm_90),
#          --build DIR (default build-gpu), --deps DIR, --pack DIR.
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$FTUNE_ROOT"

arch="" build=build-gpu deps="" pack=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --arch) arch=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        --deps) deps=$2; shift 2 ;;
        --pack) pack=$2; shift 2 ;;
        *) echo "gpu-check.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
    esac
done

if [[ -n $pack ]]; then
    mkdir -p "$pack/include"
    for h in /usr/include/xsimd /usr/include/catch2 /usr/include/nlohmann; do
        [[ -d $h ]] || { echo "gpu-check.sh: $h missing: apt-get install libxsimd-dev catch2 nlohmann-json3-dev" >&2; exit 1; }
        cp -r "$h" "$pack/include/"
    done
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
includes=(-Iinclude -Itests -I"$cuda_home/include")
[[ -n $deps ]] && includes+=(-I"$deps/include")
# the host flags that set ftune's ABI namespace must match between the two objects
host=(-march=native -fopenmp)
mkdir -p "$build"
start=$(date +%s)
echo "== nvcc $(nvcc --version | tail -1), arch $arch, host compiler $($cxx --version | head -1)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
nvcc -std=c++20 -O3 --extended-lambda --expt-relaxed-constexpr -arch="$arch" \
    -Xcompiler=-march=native -Xcompiler=-fopenmp -DFTUNE_WITH_CUDA=1 "${includes[@]}" \
    -c include/ftune/backends/cuda/implementation.cu -o "$build/ftune_cuda.o" &
$cxx -std=c++20 -O2 "${host[@]}" -DFTUNE_WITH_CUDA=1 "${includes[@]}" \
    -c tests/test_cuda.cpp -o "$build/test_cuda.o" &
wait -n && wait -n
libdir="$cuda_home/lib64"
[[ -d $libdir ]] || libdir="$cuda_home/lib"
$cxx -o "$build/test_cuda" "$build/test_cuda.o" "$build/ftune_cuda.o" -fopenmp \
    -L"$libdir" -Wl,-rpath,"$libdir" -lcublas -lcudart
echo "== built in $(( $(date +%s) - start )) s"

set +e
"$build/test_cuda" 2>&1 | tee "$build/test_cuda.log"
rc=${PIPESTATUS[0]}
set -e
echo "== summary ($(( $(date +%s) - start )) s in all)"
case $rc in
    0) grep -E "All tests passed|test cases" "$build/test_cuda.log" | tail -1
       echo "gpu-check: PASSED" ;;
    77) echo "gpu-check: FAILED: test_cuda found no usable GPU (see above); on a GPU machine" \
             "this is a failure" ;;
    *) echo "gpu-check: FAILED: test_cuda exited $rc" ;;
esac
[[ $rc -eq 0 ]]
