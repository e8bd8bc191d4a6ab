#!/usr/bin/env bash
# Runs ftune's libFuzzer targets (tests/fuzz, built with -DFTUNE_BUILD_FUZZERS=ON by Clang) from
# seed corpora made of the committed fixtures; stops at the first crash, sanitizer report or
# broken invariant, printing the input's path. scripts/test.sh runs every target for a few
# seconds; docs/fuzzing.md records the longer runs.
#   scripts/fuzz.sh --build DIR [--seconds S | --runs N] [--jobs J] [TARGET...]
# --seconds: time per target (default 10); --runs: executions per target instead; --jobs: targets
# run at once (default: the cores; each target is one process on one core); TARGET: the targets
# to run (default all), e.g. fuzz_conll.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="" seconds=10 runs="" jobs=$(nproc) targets=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --build) build=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[[ -n $build ]] || { echo "usage: scripts/fuzz.sh --build DIR [--seconds S | --runs N] [--jobs J] [TARGET...]" >&2; exit 2; }
f=tests/reference/fixtures
c=tests/fuzz/corpus
# the seeds of each target
declare -A seeds=(
    [fuzz_safetensors]="$f/hf_heads/expected.safetensors $f/hf_tiny_bert/model.safetensors"
    [fuzz_hf_config]="$f/hf_llama/tied/config.json $f/hf_gpt2/tied/config.json $f/sentence/model/1_Pooling/config.json $(for d in seq token qa mlm; do echo $f/hf_heads/$d/config.json $f/hf_heads/$d/tokenizer_config.json; done)"
    [fuzz_gguf]="$f/gguf/types.gguf $f/gguf/tiny_llama.gguf $f/bpe/smollm.gguf"
    [fuzz_chat_template]="$c/chat"
    [fuzz_predict_request]="$c/predict"
    [fuzz_table]="$c/table $f/tiny_cities.tsv $f/lm/cases.tsv"
    [fuzz_conll]="$c/conll"
    [fuzz_squad]="$f/squad_tiny.json"
    [fuzz_jsonl]="$f/lm/prompt_completion.jsonl $f/lm/chat.jsonl $f/lm/tiny_chat/train.jsonl $c/summaries"
    [fuzz_vocab]="$c/vocab"
    [fuzz_tokenizer_json]="$f/hf_llama/cli/tokenizer.json $f/hf_heads/seq/tokenizer.json $f/banking_tiny/tokenizer.json $f/relations/tiny_marked_tokenizer/tokenizer.json"
    [fuzz_adapter_config]="$f/peft/bert_seq/adapter_config.json $f/peft/llama_lm/adapter_config.json $f/peft/gpt2_lm/adapter_config.json"
    [fuzz_relations]="$c/relations"
)
[[ ${#targets[@]} -gt 0 ]] || targets=(fuzz_safetensors fuzz_hf_config fuzz_gguf fuzz_chat_template
    fuzz_predict_request fuzz_table fuzz_conll fuzz_squad fuzz_jsonl fuzz_vocab fuzz_tokenizer_json
    fuzz_adapter_config fuzz_relations)
limit=(-max_total_time="$seconds")
[[ -n $runs ]] && limit=(-runs="$runs")
for target in "${targets[@]}"; do
    [[ -n ${seeds[$target]:-} ]] || { echo "scripts/fuzz.sh: no target $target" >&2; exit 2; }
done
# fuzz TARGET: one target from its seed corpus; its output in $build/TARGET.log
fuzz() {
    local target=$1 corpus="$build/corpus/$1" s
    rm -rf "$corpus" && mkdir -p "$corpus"
    for s in ${seeds[$target]}; do
        if [[ -d $s ]]; then cp "$s"/* "$corpus/"; else cp "$s" "$corpus/$(echo "$s" | tr / _)"; fi
    done
    "$build/bin/$target" "${limit[@]}" -max_len=100000 -artifact_prefix="$build/$target-" \
        "$corpus" >"$build/$target.log" 2>&1
}
# finish PID TARGET: waits for a target's run; on a crash prints its log's end and stops all
finish() {
    if ! wait "$1"; then
        tail -n 40 "$build/$2.log" >&2
        echo "ftune: $2 found a crash; the input is in $build/$2-*" >&2
        kill "${pids[@]}" 2>/dev/null || true
        exit 1
    fi
    tail -n 1 "$build/$2.log"
}
pids=() names=()
for target in "${targets[@]}"; do
    if [[ ${#pids[@]} -ge $jobs ]]; then  # the oldest run first: targets take the same time
        finish "${pids[0]}" "${names[0]}"
        pids=("${pids[@]:1}") names=("${names[@]:1}")
    fi
    if [[ -n $runs ]]; then echo "fuzzing $target ($runs runs)"; else echo "fuzzing $target ($seconds s)"; fi
    fuzz "$target" &
    pids+=($!) names+=("$target")
done
for i in "${!pids[@]}"; do finish "${pids[$i]}" "${names[$i]}"; done
