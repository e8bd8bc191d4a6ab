#!/usr/bin/env bash
# Data-parallel `ftune train` under mpirun (issue 22), on a tiny BERT classifier with dropout,
# gradient accumulation and batches that do not divide evenly:
# - 2 and 3 ranks give the model that one process computing the same ranks gives
#   (--virtual-ranks N), byte for byte; that one follows the plain one-process run up to the
#   order of float sums (test_dist_train checks how closely);
# - rank 0 alone writes the log and the model; the sharded evaluation it prints after training
#   equals `ftune eval` of the saved model in one process;
# - a checkpoint written by 2 ranks resumes in 1 process (and one written by 1 on 2 ranks) to
#   the uninterrupted 2-rank model, byte for byte;
# - a rank that stops answering (SIGSTOP) ends the job within --dist-timeout with an error naming
#   the rank that waited, and one that dies (SIGKILL) ends it too, the last checkpoint resumable;
# - one rank in each of two network namespaces ("two hosts", tests/dist/netns.sh) gives the
#   2-rank model too.
#   tests/dist/train.sh MPIRUN FTUNE_BINARY FIXTURE_DIR SCRATCH_DIR
set -euo pipefail
mpirun=$1 ftune=$2 fixture=$3 work=$4
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
unset OMP_NUM_THREADS  # each rank takes one thread itself
rm -rf "$work"
mkdir -p "$work"
fail() { echo "FAILED: $*" >&2; exit 1; }
make_rows() {
    local i
    echo -e "sentence\tlabel"
    for ((i = 0; i < $1; i++)); do
        case $(( (i * 7 + $2) % 5 )) in
            0) echo -e "the cafe was great\tpositive" ;;
            1) echo -e "john lives in berlin with anna\tneutral" ;;
            2) echo -e "where is the river ?\tnegative" ;;
            3) echo -e "great\tpositive" ;;
            4) echo -e "the river was not great in berlin\tnegative" ;;
        esac
    done
}
make_rows 45 1 >"$work/train.tsv"
make_rows 14 2 >"$work/valid.tsv"
# batches of 7 (45 rows: the last has 3), 2 per step, evaluation every 3 steps
args=(train --model "$fixture" --train "$work/train.tsv" --valid "$work/valid.tsv" --epochs 2
      --batch-size 7 --grad-accum 2 --lr 1e-3 --seed 5 --eval-every 3 --early-stopping 5)
mpi() { local n=$1; shift; "$mpirun" -np "$n" --oversubscribe "$@"; }

for n in 2 3; do
    mpi "$n" "$ftune" "${args[@]}" --out "$work/ranks$n" >"$work/ranks$n.out" 2>"$work/ranks$n.err" \
        || { cat "$work/ranks$n.err" >&2; fail "mpirun -np $n ftune train"; }
    "$ftune" "${args[@]}" --virtual-ranks "$n" --out "$work/virtual$n" >"$work/virtual$n.out" \
        2>/dev/null || fail "ftune train --virtual-ranks $n"
    cmp "$work/ranks$n/model.safetensors" "$work/virtual$n/model.safetensors" \
        || fail "$n ranks and --virtual-ranks $n saved different weights"
    cmp "$work/ranks$n.out" "$work/virtual$n.out" \
        || fail "$n ranks and --virtual-ranks $n printed different reports"
    [[ $(grep -c . "$work/ranks$n/train_log.jsonl") == $(grep -c . "$work/virtual$n/train_log.jsonl") ]] \
        || fail "$n ranks: the log is not written once (rank 0)"
    # the report after training (evaluation sharded over the ranks) is one process's
    "$ftune" eval --model "$work/ranks$n" --data "$work/valid.tsv" >"$work/eval$n.out"
    tail -n "$(wc -l <"$work/eval$n.out")" "$work/ranks$n.out" | cmp - "$work/eval$n.out" \
        || fail "$n ranks: the sharded evaluation differs from ftune eval's"
    echo "$n ranks: the same model as --virtual-ranks $n, byte for byte"
done

# a checkpoint of 2 ranks resumes in one process computing what 2 ranks do, and one written
# that way resumes on 2 ranks: both end at the uninterrupted 2-rank model
mpi 2 "$ftune" "${args[@]}" --out "$work/stop2" --checkpoint-every 2 --stop-after 5 \
    >/dev/null 2>&1 || fail "the 2-rank run stopped after 5 steps"
[[ -f $work/stop2/checkpoint/trainer_state.json ]] || fail "no checkpoint from 2 ranks"
"$ftune" "${args[@]}" --out "$work/stop2" --virtual-ranks 2 --resume "$work/stop2/checkpoint" \
    >/dev/null 2>&1 || fail "resuming the 2-rank checkpoint in one process"
cmp "$work/stop2/model.safetensors" "$work/ranks2/model.safetensors" \
    || fail "2 ranks -> 1 process: not the uninterrupted 2-rank model"
"$ftune" "${args[@]}" --out "$work/stop1" --virtual-ranks 2 --checkpoint-every 2 --stop-after 3 \
    >/dev/null 2>&1 || fail "the one-process run stopped after 3 steps"
mpi 2 "$ftune" "${args[@]}" --out "$work/stop1" --resume "$work/stop1/checkpoint" \
    >/dev/null 2>&1 || fail "resuming a one-process checkpoint on 2 ranks"
cmp "$work/stop1/model.safetensors" "$work/ranks2/model.safetensors" \
    || fail "1 process -> 2 ranks: not the uninterrupted 2-rank model"
# and a plain one-process resume of the 2-rank checkpoint runs to the end
mpi 2 "$ftune" "${args[@]}" --out "$work/plain" --checkpoint-every 2 --stop-after 5 \
    >/dev/null 2>&1 || fail "the 2-rank run stopped after 5 steps (again)"
"$ftune" "${args[@]}" --out "$work/plain" --resume "$work/plain/checkpoint" >/dev/null 2>&1 \
    || fail "resuming the 2-rank checkpoint in a plain one-process run"
[[ -f $work/plain/model.safetensors ]] || fail "the resumed one-process run saved no model"
echo "resume: 2 ranks -> 1 process and 1 -> 2 ranks end at the 2-rank model"

# a rank that stops answering: the job ends with an error within the timeout, not a hang
many=(train --model "$fixture" --train "$work/train.tsv" --out "$work/hang" --epochs 400
      --batch-size 7 --lr 1e-4 --checkpoint-every 1 --dist-timeout 3)
# hurt_a_rank SIGNAL WHAT: a long 2-rank run, SIGNAL sent to one rank once it has checkpointed;
# the job must fail within a minute (its stderr in $work/WHAT.err) and its checkpoint resume
hurt_a_rank() {
    local signal=$1 what=$2 job status=0 start elapsed ranks
    rm -rf "$work/hang"
    mpi 2 "$ftune" "${many[@]}" >/dev/null 2>"$work/$what.err" &
    job=$!
    for _ in $(seq 1 1200); do  # up to 2 minutes: startup is slow on a loaded machine
        [[ -f $work/hang/checkpoint/trainer_state.json ]] && break
        sleep 0.1
    done
    [[ -f $work/hang/checkpoint/trainer_state.json ]] || fail "the long 2-rank run wrote no checkpoint"
    ranks=($(pgrep -f -- "^$ftune train .*--out $work/hang " || true))
    [[ ${#ranks[@]} -ge 2 ]] || fail "did not find the 2 ranks (${ranks[*]})"
    kill "-$signal" "${ranks[-1]}"
    start=$(date +%s)
    wait "$job" || status=$?
    elapsed=$(( $(date +%s) - start ))
    kill -KILL "${ranks[@]}" 2>/dev/null || true
    [[ $status != 0 ]] || fail "the job with a $what rank exited 0"
    (( elapsed < 60 )) || fail "the job with a $what rank took ${elapsed} s to stop"
    "$ftune" train --model "$fixture" --train "$work/train.tsv" --out "$work/hang" --epochs 400 \
        --batch-size 7 --lr 1e-4 --resume "$work/hang/checkpoint" --stop-after 1 \
        --checkpoint-every 1 >/dev/null 2>&1 || fail "the checkpoint of the $what job does not resume"
    echo "a $what rank: the job ended in ${elapsed} s, its checkpoint resumes"
}
# a rank that stops answering: the others time out naming it
hurt_a_rank STOP stopped
grep -q "waited more than 3000 ms for rank" "$work/stopped.err" \
    || { cat "$work/stopped.err" >&2; fail "no error naming the rank that did not answer"; }
grep -o "ftune: rank .*(rank [0-9] of 2)" "$work/stopped.err" | head -1
# a rank that dies: mpirun ends the job
hurt_a_rank KILL killed
# two hosts: one rank in each of two network namespaces (TCP over a veth pair; netns.sh), the
# same model again (skipped where namespaces cannot be made: netns.sh exits 77)
status=0
"$(dirname "$0")/netns.sh" "$mpirun" "$ftune" "${args[@]}" --out "$work/hosts2" \
    >"$work/hosts2.out" 2>&1 || status=$?
if [[ $status == 77 ]]; then
    echo "two hosts: $(grep skipped "$work/hosts2.out")"
else
    [[ $status == 0 ]] || { cat "$work/hosts2.out" >&2; fail "the 2-rank run across namespaces"; }
    cmp "$work/hosts2/model.safetensors" "$work/ranks2/model.safetensors" \
        || fail "two hosts: not the model of 2 ranks on one host"
    echo "two hosts (network namespaces, TCP): the same model as 2 ranks on one host"
fi
echo "dist train: all checks passed"
