#!/usr/bin/env bash
# Runs all of ftune's tests: installs missing Debian packages (as root), checks that the single
# header is fresh, builds (Release) and runs CTest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L primitives
# Environment: BUILD_DIR (default build), FTUNE_DATA_DIR (default ../shared/data).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$FTUNE_ROOT/scripts/lib.sh"
cd "$FTUNE_ROOT"

ftune_require_packages "${FTUNE_DEBIAN_PACKAGES[@]}"
scripts/amalgamate.sh --check
build=${BUILD_DIR:-build}
ftune_build "$build" -DFTUNE_BUILD_TESTS=ON
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"

# The libFuzzer targets of the parsers (safetensors, config.json, tokenizer_config.json, GGUF, chat
# templates, `ftune serve`'s /predict body),
# when Clang is installed: built with AddressSanitizer and run FTUNE_FUZZ_SECONDS (default 20)
# each from the committed fixtures. A crash or sanitizer report fails the run. Skipped when ctest
# arguments select a subset, or with FTUNE_FUZZ_SECONDS=0.
fuzz_seconds=${FTUNE_FUZZ_SECONDS:-20}
if [[ $# -eq 0 && $fuzz_seconds -gt 0 ]] && command -v clang++ >/dev/null; then
    fuzz_build="$build-fuzz"
    CXX=clang++ cmake -S . -B "$fuzz_build" -DCMAKE_BUILD_TYPE=Release -DFTUNE_BUILD_FUZZERS=ON \
        -DFTUNE_BUILD_TESTS=OFF -DFTUNE_BUILD_EXAMPLES=OFF -DFTUNE_BUILD_BENCH=OFF \
        -DFTUNE_BUILD_TOOLS=OFF -DFTUNE_INSTALL=OFF >/dev/null
    cmake --build "$fuzz_build" -j "$(nproc)"
    fixtures=tests/reference/fixtures
    rm -rf "$fuzz_build/corpus"
    mkdir -p "$fuzz_build/corpus/safetensors" "$fuzz_build/corpus/config" "$fuzz_build/corpus/gguf" \
        "$fuzz_build/corpus/chat"
    cp "$fixtures"/gguf/types.gguf "$fixtures"/gguf/tiny_llama.gguf "$fixtures"/bpe/smollm.gguf \
        "$fuzz_build/corpus/gguf/"
    cp "$fixtures"/hf_llama/tied/config.json "$fuzz_build/corpus/config/llama.json"
    cp "$fixtures"/hf_gpt2/tied/config.json "$fuzz_build/corpus/config/gpt2.json"
    cp "$fixtures"/hf_heads/expected.safetensors "$fixtures"/hf_tiny_bert/model.safetensors \
        "$fuzz_build/corpus/safetensors/"
    for d in seq token qa mlm; do
        cp "$fixtures/hf_heads/$d/config.json" "$fuzz_build/corpus/config/$d.json"
        cp "$fixtures/hf_heads/$d/tokenizer_config.json" "$fuzz_build/corpus/config/tok_$d.json"
    done
    cp tests/fuzz/corpus/chat/*.jinja "$fuzz_build/corpus/chat/"  # the parity fixture's templates
    mkdir -p "$fuzz_build/corpus/predict"
    cp tests/fuzz/corpus/predict/*.json "$fuzz_build/corpus/predict/"  # TEI's /predict forms
    for t in safetensors config gguf chat predict; do
        target=fuzz_$t
        [[ $t == config ]] && target=fuzz_hf_config
        [[ $t == chat ]] && target=fuzz_chat_template
        [[ $t == predict ]] && target=fuzz_predict_request
        echo "fuzzing $target for ${fuzz_seconds} s"
        if ! "$fuzz_build/bin/$target" -max_total_time="$fuzz_seconds" -max_len=100000 \
            -artifact_prefix="$fuzz_build/" "$fuzz_build/corpus/$t" >"$fuzz_build/$target.log" 2>&1; then
            tail -n 40 "$fuzz_build/$target.log" >&2
            echo "ftune: $target found a crash; the input is in $fuzz_build/" >&2
            exit 1
        fi
        tail -n 1 "$fuzz_build/$target.log"
    done
fi
