#!/usr/bin/env bash
# Faults during re-fine-tuning on a model repository (issue 21): `ftune retrain` killed with
# SIGKILL at many moments (while it trains, saves the challenger, evaluates, writes the report,
# promotes), and run under a file-size limit (RLIMIT_FSIZE: writes fail as on a full disk).
# After each, the version in service loads and predicts, every version listed loads, and a
# failed save names what it could not write. `ftune train` killed while it writes checkpoints
# and saves over a previous model leaves one of the two models whole and a checkpoint that
# resumes to the uninterrupted result; `ftune promote` killed leaves a version in service.
# Kills at random moments rarely land in the short windows between the steps of a write, so
# each step is also hit deterministically: FTUNE_CRASH_AT=POINT makes the process SIGKILL
# itself there (io::detail::crash_point: file-written, directory-filled, directory-swapped,
# save_hf-written, save_hf-swapped, promote-linked, history-torn, retrain-trained,
# retrain-saved, retrain-reported, retrain-promoted). Then a diverging `ftune train` (NaN loss) stops
# naming the step, its last checkpoint whole.
#   tests/cli/faults.sh FTUNE_BINARY FIXTURE_DIR SCRATCH_DIR
set -euo pipefail
ftune=$1 fixture=$2 work=$3
export OMP_NUM_THREADS=1  # a tiny model: one thread is fastest, and other tests run beside
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

# kill -9 while `ftune train` writes checkpoints and saves its model over a previous one: the
# directory holds the previous model or the new one, whole (their predictions tell them apart),
# and a checkpoint left behind resumes to the uninterrupted run's model
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }
probe() { printf 'the cafe was great\njohn lives in berlin\nwhere is the river ?\n' \
    | "$ftune" predict --model "$1" 2>&1; }
"$ftune" train --model "$fixture" --train "$work/new.tsv" --out "$work/out" --epochs 1 \
    --batch-size 2 >/dev/null 2>&1 || fail "the first ftune train"
old_model=$(probe "$work/out")
train=(train --model "$fixture" --train "$work/new.tsv" --out "$work/out" --epochs 3
       --batch-size 2 --lr 1e-3 --checkpoint-every 1)
cp -r "$work/out" "$work/out.first"
start=$(date +%s%N)
"$ftune" "${train[@]}" >/dev/null 2>&1 || fail "an uninterrupted ftune train"
train_ms=$(( ($(date +%s%N) - start) / 1000000 ))
new_model=$(probe "$work/out")
[[ $new_model != "$old_model" ]] || fail "the second model predicts as the first: no test"
old_seen=0 new_seen=0 resumed=0
for i in $(seq 1 10); do
    rm -rf "$work/out" && cp -r "$work/out.first" "$work/out"
    "$ftune" "${train[@]}" >/dev/null 2>&1 &
    pid=$!
    sleep_ms $(( train_ms * i / 10 ))
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    got=$(probe "$work/out")
    if [[ $got == "$old_model" ]]; then old_seen=$((old_seen + 1))
    elif [[ $got == "$new_model" ]]; then new_seen=$((new_seen + 1))
    else echo "$got" >&2; fail "kill $i of ftune train left a model that is neither the old nor the new"
    fi
    if [[ -d $work/out/checkpoint ]]; then
        "$ftune" "${train[@]}" --resume "$work/out/checkpoint" >/dev/null 2>&1 \
            || fail "kill $i of ftune train: its checkpoint does not resume"
        [[ $(probe "$work/out") == "$new_model" ]] \
            || fail "kill $i of ftune train: the resumed run differs from the uninterrupted one"
        resumed=$((resumed + 1))
    fi
done
echo "10 kills spread over a ${train_ms} ms ftune train: the previous model whole $old_seen times," \
     "the new one $new_seen times; $resumed checkpoints resumed to the uninterrupted model"

# the same at every step, deterministically: FTUNE_CRASH_AT=POINT[#N] makes the process kill
# itself (SIGKILL) at a named step (io::detail::crash_point, the Nth time it is reached)
crashed() {  # crashed POINT CMD...: fails unless CMD was killed at POINT
    local point=$1 rc=0
    shift
    (FTUNE_CRASH_AT=$point "$@"; exit $?) >/dev/null 2>&1 || rc=$?
    [[ $rc == 137 ]] || fail "$point: the run was not killed there (exit $rc): never reached?"
}
for point in file-written directory-filled directory-filled#20 directory-swapped#20 \
             save_hf-written save_hf-swapped; do
    rm -rf "$work/out" && cp -r "$work/out.first" "$work/out"
    crashed "$point" "$ftune" "${train[@]}"
    got=$(probe "$work/out")
    [[ $got == "$old_model" || $got == "$new_model" ]] \
        || fail "a crash at $point left a model that is neither the old nor the new"
    if [[ -d $work/out/checkpoint ]]; then
        "$ftune" "${train[@]}" --resume "$work/out/checkpoint" >/dev/null 2>&1 \
            || fail "a crash at $point: the checkpoint does not resume"
        [[ $(probe "$work/out") == "$new_model" ]] \
            || fail "a crash at $point: the resumed run differs from the uninterrupted one"
    elif [[ $point == save_hf-swapped ]]; then  # the model was whole: the run had finished
        [[ $got == "$new_model" ]] || fail "a crash at $point left the old model"
    fi
done
echo "ftune train killed at each step of its checkpoints and of save_hf: one model whole, resumable"
for point in save_hf-written retrain-trained retrain-saved retrain-reported promote-linked \
             retrain-promoted history-torn; do
    before=$(readlink "$work/repo/current")
    crashed "$point" "$ftune" "${retrain[@]}" --version "c-$point"
    check_servable "a retrain killed at $point"
    case $point in
        promote-linked | retrain-reported | retrain-saved | retrain-trained | save_hf-written)
            [[ $(readlink "$work/repo/current") == "$before" ]] \
                || fail "a retrain killed at $point changed the version in service" ;;
        *)
            [[ $(readlink "$work/repo/current") == "versions/c-$point" ]] \
                || fail "a retrain killed at $point after its promotion: not in service" ;;
    esac
done
# the history cut short by the last crash reads on (its last event lost: rollback asks for
# --to), and the next event starts a line of its own
if "$ftune" rollback --model "$work/repo" 2>"$work/torn.txt" >/dev/null; then
    fail "rollback found the event a crash cut short"
fi
grep -q "names no version in service before c-history-torn: give one with --to" "$work/torn.txt" \
    || { cat "$work/torn.txt"; fail "rollback after a torn history does not say what to do"; }
"$ftune" rollback --model "$work/repo" --to timing >/dev/null 2>&1 || fail "rollback --to"
tail -n 1 "$work/repo/history.tsv" | grep -q $'^[0-9TZ:-]*\trollback\ttiming\tc-history-torn\t' \
    || { tail -n 3 "$work/repo/history.tsv"; fail "the rollback's event is not on a line of its own"; }
echo "ftune retrain killed at each step: the version in service loaded after each"

# kill -9 while `ftune promote` switches versions: `current` always names a version that loads
for i in $(seq 1 20); do
    target=v1
    (( i % 2 )) && target=timing
    "$ftune" promote --model "$work/repo" --version "$target" >/dev/null 2>&1 &
    pid=$!
    sleep "0.00$(( i % 10 ))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    check_servable "kill $i of ftune promote"
done
"$ftune" promote --model "$work/repo" --version timing >/dev/null || fail "promote after the kills"
echo "20 kills of ftune promote: the version in service loaded after each"

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
