#!/usr/bin/env bash
# Faults during re-fine-tuning on a model repository (issue 21): `ftune retrain` killed with
# SIGKILL at many moments (while it trains, saves the challenger, evaluates, writes the report,
# promotes), and run under a file-size limit (RLIMIT_FSIZE: writes fail as on a full disk).
# After each, the version in service loads and predicts, every version listed loads, and a
# failed save names what it could not write. Then a diverging `ftune train` (NaN loss) stops
# naming the step, its last checkpoint whole.
#   tests/cli/faults.sh FTUNE_BINARY FIXTURE_DIR SCRATCH_DIR
set -euo pipefail
ftune=$1 fixture=$2 work=$3
rm -rf "$work"
mkdir -p "$work/repo/versions"
cp -r "$fixture" "$work/repo/versions/v1"
fail() { echo "FAILED: $*" >&2; exit 1; }
make_rows() {
    local i
    echo -e "sentence\tlabel"
    for ((i = 0; i < $1; i++)); do
        case $(( i % 3 )) in
            0) echo -e "the cafe was great\tpositive" ;;
            1) echo -e "john lives in berlin\tneutral" ;;
            2) echo -e "where is the river ?\tnegative" ;;
        esac
    done
}
make_rows 30 >"$work/new.tsv"
make_rows 9 >"$work/holdout.tsv"
"$ftune" promote --model "$work/repo" --version v1 >/dev/null
retrain=(retrain --model "$work/repo" --new "$work/new.tsv" --holdout "$work/holdout.tsv"
         --epochs 40 --batch-size 2 --margin -1)
# the repository is servable: `current` predicts, every listed version loads
check_servable() {
    echo "the cafe was great" | "$ftune" predict --model "$work/repo/current" >/dev/null \
        || fail "$1: the version in service does not load"
    local v
    for v in $("$ftune" promote --model "$work/repo" | tr -d '* '); do
        "$ftune" info --model "$work/repo/versions/$v" >/dev/null 2>&1 \
            || fail "$1: versions/$v does not load"
    done
}

# how long an uninterrupted retrain takes, to spread the kills over it
start=$(date +%s%N)
"$ftune" "${retrain[@]}" --version timing >/dev/null 2>&1 || fail "an uninterrupted retrain"
total_ms=$(( ($(date +%s%N) - start) / 1000000 ))
check_servable "uninterrupted"
promoted=0 saved=0 nothing=0
for i in $(seq 1 12); do
    delay_ms=$(( total_ms * i / 12 ))
    "$ftune" "${retrain[@]}" --version "k$i" >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    check_servable "killed after ${delay_ms} ms"
    if [[ $(readlink "$work/repo/current") == "versions/k$i" ]]; then
        promoted=$((promoted + 1))
    elif [[ -d $work/repo/versions/k$i ]]; then
        saved=$((saved + 1))
    else
        nothing=$((nothing + 1))
    fi
done
echo "12 kills spread over a ${total_ms} ms retrain: $nothing before the challenger was saved," \
     "$saved after it was saved and before its promotion, $promoted after its promotion"

# a file-size limit of 16 KiB: the challenger's weights cannot be written
current=$(readlink "$work/repo/current")
if (ulimit -f 16; "$ftune" "${retrain[@]}" --version full) 2>"$work/full.txt" >/dev/null; then
    fail "a retrain under a 16 KiB file-size limit succeeded"
fi
grep -q "\.retrain/full/.*: writing failed (disk full?)" "$work/full.txt" \
    || { cat "$work/full.txt"; fail "the error does not name the file it could not write"; }
[[ ! -e $work/repo/versions/full ]] || fail "a partial versions/full was left"
[[ $(readlink "$work/repo/current") == "$current" ]] || fail "current changed"
check_servable "under a file-size limit"
# a diverging run (learning rate 1e30) stops naming the step; the checkpoint before it stays whole
if "$ftune" train --model "$fixture" --train "$work/new.tsv" --out "$work/nan" --lr 1e30 --epochs 5 \
    --batch-size 2 --checkpoint-every 1 2>"$work/nan.txt" >/dev/null; then
    fail "a diverging run succeeded"
fi
grep -q "training step 2 (epoch 1, batch 2): the loss is not finite" "$work/nan.txt" \
    || { cat "$work/nan.txt"; fail "the divergence error does not name the step"; }
grep -q '"step": 1$' "$work/nan/checkpoint/trainer_state.json" || fail "no checkpoint of step 1"
[[ ! -e $work/nan/model.safetensors ]] || fail "a diverged model was saved"
echo "faults: all checks passed"
