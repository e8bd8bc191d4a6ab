#!/usr/bin/env bash
# Load test of `ftune serve` on loopback with wrk (Debian's): POST /predict with SST-2 dev
# sentences at 1, 8 and 64 connections, with dynamic batching (--max-batch 32) and without it
# (--max-batch 1); then a promotion under load (a model repository of two versions, `ftune
# promote` halfway through an 8-connection run: errors and answers per version); then a
# retrain under load (`ftune retrain` on 256 SST-2 training sentences against 200 held-out dev
# sentences while 8 connections send requests; --margin -1, so the challenger is promoted and
# the server switches to it mid-run); then, with --soak SECONDS, the server's resident memory at
# the start and the end of a long run.
#
#   bench/serve_load.sh --model DIR [--seconds 10] [--connections "1 8 64"] [--soak 600]
#                       [--server "MORE SERVE OPTIONS"] [--runs on|off|retrain]
#                       [--out bench/results/serve-load.json]
# DIR: a fine-tuned sequence classifier (scripts/demo.sh writes build/demo-sst2).
# Environment: BUILD_DIR (default build), FTUNE_DATA_DIR (default ../shared/data).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$FTUNE_ROOT/scripts/lib.sh"
cd "$FTUNE_ROOT"

build=${BUILD_DIR:-build}
data=${FTUNE_DATA_DIR:-$FTUNE_ROOT/../shared/data}
model=$build/demo-sst2 seconds=10 connections="1 8 64" soak=0 out="" extra=() runs=on
while [[ $# -gt 0 ]]; do
    case $1 in
        --model) model=${2:?}; shift 2 ;;
        --seconds) seconds=${2:?}; shift 2 ;;
        --connections) connections=${2:?}; shift 2 ;;
        --soak) soak=${2:?}; shift 2 ;;
        --runs) runs=${2:?}; shift 2 ;;  # off: the soak alone; retrain: that run alone
        --out) out=${2:?}; shift 2 ;;
        --server) read -r -a extra <<<"${2:?}"; shift 2 ;;  # more `ftune serve` options
        *) echo "serve_load.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -f $model/config.json ]] || { echo "serve_load.sh: $model: no config.json (run scripts/demo.sh, or give --model DIR)" >&2; exit 1; }
sentences=$data/sst2/dev.tsv
[[ -f $sentences ]] || { echo "serve_load.sh: $sentences missing (FTUNE_DATA_DIR)" >&2; exit 1; }
ftune_require_packages wrk
ftune=$build/bin/ftune
work=$(mktemp -d)
server_pid=""
cleanup() { [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# start_server ARGS...: `ftune serve --port 0 ARGS` in the background; sets port, server_pid
start_server() {
    "$ftune" serve --port 0 "$@" >"$work/serve.out" 2>"$work/serve.err" &
    server_pid=$!
    for _ in $(seq 200); do
        port=$(sed -n 's/.*http:\/\/[^:]*:\([0-9]*\) .*/\1/p' "$work/serve.out")
        [[ -n $port ]] && return 0
        sleep 0.1
    done
    cat "$work/serve.err" >&2
    exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" || true; server_pid=""; }
# run_wrk CONNECTIONS SECONDS: one JSON line of results
run_wrk() {
    local c=$1 threads=$(( $1 < 2 ? 1 : 2 ))
    wrk -t "$threads" -c "$c" -d "${2}s" --latency -s bench/serve_load.lua \
        "http://127.0.0.1:$port" -- "$sentences" | tail -n 1
}
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$server_pid/status"; }

results="["
sep=""
modes="batched single"
[[ $runs == on ]] || modes=""
for mode in $modes; do
    if [[ $mode == batched ]]; then max_batch=32; else max_batch=1; fi
    start_server --model "$model" --max-batch "$max_batch" --max-queue 4096 "${extra[@]}"
    run_wrk 8 2 >/dev/null  # warm up: replicas made, pages touched
    for c in $connections; do
        line=$(run_wrk "$c" "$seconds")
        echo "$mode (--max-batch $max_batch), $c connections: $line"
        results+="$sep{\"mode\": \"$mode\", \"max_batch\": $max_batch, \"connections\": $c, \"result\": $line}"
        sep=", "
    done
    stop_server
done

# promotion under load: versions a and b of the same model, b promoted halfway through
if [[ $runs == on ]]; then
mkdir -p "$work/repo/versions"
cp -r "$model" "$work/repo/versions/a"
cp -r "$model" "$work/repo/versions/b"
"$ftune" promote --model "$work/repo" --version a >/dev/null
start_server --model "$work/repo" --max-batch 32 --reload-ms 200
( sleep "$(( seconds / 2 ))"; "$ftune" promote --model "$work/repo" --version b >/dev/null ) &
promoter=$!
promotion=$(run_wrk 8 "$seconds")
wait "$promoter"
echo "promotion under load, 8 connections: $promotion"
results+="$sep{\"mode\": \"promotion\", \"max_batch\": 32, \"connections\": 8, \"result\": $promotion}"
stop_server
fi

# retrain under load: the challenger trained, gated and promoted while the server answers
if [[ $runs != off ]]; then
rm -rf "$work/repo"
mkdir -p "$work/repo/versions"
cp -r "$model" "$work/repo/versions/a"
"$ftune" promote --model "$work/repo" --version a >/dev/null
head -n 257 "$data/sst2/train.tsv" >"$work/new.tsv"
head -n 201 "$sentences" >"$work/holdout.tsv"
start_server --model "$work/repo" --max-batch 32 --reload-ms 200
t0=$(date +%s)
( sleep 2
  "$ftune" retrain --model "$work/repo" --new "$work/new.tsv" --holdout "$work/holdout.tsv" \
      --version retrained --margin -1 --epochs 1 --batch-size 16 >"$work/retrain.out" 2>&1
  echo $(( $(date +%s) - t0 )) >"$work/retrain.seconds" ) &
retrainer=$!
retraining=$(run_wrk 8 "$(( seconds * 6 ))")
wait "$retrainer"
[[ $(readlink "$work/repo/current") == versions/retrained ]] \
    || { cat "$work/retrain.out" >&2; echo "serve_load.sh: the retrain did not promote" >&2; exit 1; }
echo "retrain under load (promoted after $(cat "$work/retrain.seconds") s), 8 connections: $retraining"
results+="$sep{\"mode\": \"retrain\", \"max_batch\": 32, \"connections\": 8, \"retrain_promoted_after_s\": $(cat "$work/retrain.seconds"), \"result\": $retraining}"
stop_server
fi

soak_json="null"
if [[ $soak -gt 0 ]]; then
    start_server --model "$model" --max-batch 32
    run_wrk 8 5 >/dev/null
    rss_start=$(rss_mb)
    # the resident memory every 60 s while wrk runs (a leak climbs; buffers that grow to the
    # largest batch seen level off)
    ( while sleep 60; do rss_mb; echo; done ) >"$work/rss.txt" &
    sampler=$!
    line=$(run_wrk 8 "$soak")
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    rss_end=$(rss_mb)
    samples=$(paste -sd, "$work/rss.txt")
    echo "soak, 8 connections, $soak s: RSS $rss_start MB at the start, $rss_end MB at the end (each minute: $samples): $line"
    soak_json="{\"seconds\": $soak, \"rss_start_mb\": $rss_start, \"rss_end_mb\": $rss_end, \"rss_each_minute_mb\": [$samples], \"result\": $line}"
    stop_server
fi
results+="]"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
json="{\"date\": \"$(date -u +%F)\", \"cpu\": \"$cpu\", \"cores\": $(nproc), \"model\": \"$model\", \"seconds\": $seconds, \"runs\": $results, \"soak\": $soak_json}"
if [[ -n $out ]]; then
    echo "$json" | python3 -m json.tool >"$out"
    echo "wrote $out"
fi
