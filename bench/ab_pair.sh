#!/usr/bin/env bash
# Compares two ftune binaries on a shared, noisy machine: both run `ftune bench` at the same time,
# each pinned to its own core (swapped every round), so that the machine's slow drifts hit both
# alike. Prints each round's ms/step and the ratio B/A, then the median ratio.
#
#   bench/ab_pair.sh OLD/ftune NEW/ftune [rounds] [ftune bench arguments...]
#   bench/ab_pair.sh /tmp/ftune_before build/bin/ftune 8 --dims 384,12,12,1536 --batch 1 --seq 128
#
# Needs two cores and one thread per run (--threads 1 is added). The two runs share the L3 and
# the memory bus, so the absolute times are a little above those of a run alone; the ratio is what
# this measures (±1% here, where alternating runs moved by ±5%).
#
# AB_THREADS=2 compares runs on two threads instead: each round runs A and B one after the other
# on both cores (A first in odd rounds, B first in even ones) and takes the ratio of that pair, so
# only the drift within one pair's seconds enters it: take ten rounds or more (±3-5% here).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0"
  exit 2
fi
a=$1 b=$2
shift 2
rounds=6
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
  rounds=$1
  shift
fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--dims 384,12,12,1536 --vocab 30522 --batch 1 --seq 128 --mode forward --steps 60)
[ "$(nproc)" -ge 2 ] || { echo "ab_pair.sh needs two cores" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ms() { tail -n 1 "$1" | sed -E 's/.*"ms_per_step": ([0-9.]+).*/\1/'; }
ratios=()
echo "round  A ms    B ms    B/A"
threads=${AB_THREADS:-1}
for i in $(seq "$rounds"); do
  if [ "$threads" != 1 ]; then
    for x in $([ $((i % 2)) = 1 ] && echo "a b" || echo "b a"); do
      bin=$a
      [ "$x" = b ] && bin=$b
      OMP_NUM_THREADS=$threads "$bin" bench "${args[@]}" --threads "$threads" >"$tmp/$x"
    done
    va=$(ms "$tmp/a") vb=$(ms "$tmp/b")
    r=$(awk -v a="$va" -v b="$vb" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$r")
    printf '%5d  %-7s %-7s %s\n' "$i" "$va" "$vb" "$r"
    continue
  fi
  ca=$((i % 2)) cb=$(((i + 1) % 2))
  OMP_NUM_THREADS=1 taskset -c "$ca" "$a" bench "${args[@]}" --threads 1 >"$tmp/a" &
  pa=$!
  OMP_NUM_THREADS=1 taskset -c "$cb" "$b" bench "${args[@]}" --threads 1 >"$tmp/b" &
  pb=$!
  wait "$pa" "$pb"
  va=$(ms "$tmp/a") vb=$(ms "$tmp/b")
  r=$(awk -v a="$va" -v b="$vb" 'BEGIN { printf "%.3f", b / a }')
  ratios+=("$r")
  printf '%5d  %-7s %-7s %s\n' "$i" "$va" "$vb" "$r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "median B/A %.3f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
