#!/usr/bin/env bash
# Data-parallel fine-tuning speed, 1 -> 2 ranks, on one machine (issue 22): the same
# `ftune train` run (the first ROWS sentences of SST-2, batch 32, --max-length 64, one epoch)
# as one process on 1 and 2 threads, as `mpirun -np 2` with one thread per rank, with Open
# MPI's shared-memory transport copying through a shared segment (single_copy none, what
# containers allow) and with cross-memory attach (cma), and as --virtual-ranks 2 whose model
# must equal the 2-rank one byte for byte. Prints one line per run: training seconds (ftune's
# own "N steps in S s", without loading and saving) and, for the ranks, the time spent waiting
# for gradient sums after backward.
#   bench/dist_train.sh FTUNE_BINARY MODEL_DIR FTUNE_DATA_DIR [ROWS (640)] [REPEATS (2)]
set -euo pipefail
ftune=$1 model=$2 data=$3 rows=${4:-640} repeats=${5:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n $((rows + 1)) "$data/sst2/train.tsv" >"$work/train.tsv"
args=(train --model "$model" --train "$work/train.tsv" --epochs 1 --batch-size 32
      --max-length 64 --lr 5e-5 --seed 1)
seconds() { grep -o "steps in [0-9.]* s.*" | sed 's/; saved.*//'; }
for ((i = 1; i <= repeats; i++)); do
    echo "1 process, 1 thread:    $(OMP_NUM_THREADS=1 "$ftune" "${args[@]}" --out "$work/t1" 2>&1 | seconds)"
    echo "1 process, 2 threads:   $(OMP_NUM_THREADS=2 "$ftune" "${args[@]}" --out "$work/t2" 2>&1 | seconds)"
    for copy in none cma; do
        echo "2 ranks x 1 thread ($copy): $(OMPI_MCA_btl_vader_single_copy_mechanism=$copy \
            mpirun -np 2 --oversubscribe "$ftune" "${args[@]}" --out "$work/r2" 2>&1 | seconds)"
    done
done
OMP_NUM_THREADS=2 "$ftune" "${args[@]}" --virtual-ranks 2 --out "$work/v2" >/dev/null 2>&1
cmp "$work/r2/model.safetensors" "$work/v2/model.safetensors" \
    && echo "2 ranks and --virtual-ranks 2: the same model, byte for byte"
