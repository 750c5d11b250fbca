#!/usr/bin/env bash
# test_failure.sh: a rank that fails takes the whole job down with its message, never a hang
# (a hang would end in timeout's status 124, not the rank's 2). The fault-injection hook
# DSTRAIN_FAIL_RANK=k makes rank k fail as on bad input just before the first step, while the
# other ranks wait in the step's first collective; layouts that cannot work are refused on
# every rank with a message naming the key.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-failure"
rm -rf "$work" && mkdir -p "$work"
small=(train.steps=3 train.seq_len=16 train.micro_batch_size=2 export.enabled=false)
fail=0

expect() { # name expected-status log pattern
  local name=$1 want=$2 got=$3 log=$4 pattern=$5 seconds=$6
  if [ "$got" != "$want" ] || ! grep -q -- "$pattern" "$log"; then
    echo "FAIL: $name: exit $got (want $want) after ${seconds}s; want \"$pattern\" in:"
    cat "$log"
    fail=1
  else
    echo "ok: $name: exit $got after ${seconds}s"
  fi
}

for rank in 0 3; do
  start=$SECONDS
  status=0
  DSTRAIN_FAIL_RANK=$rank timeout 90 mpirun -np 4 -x DSTRAIN_FAIL_RANK "$DSTRAIN" train \
    "${small[@]}" parallel.tp=2 run.dir="$work/fail$rank" >"$work/fail$rank.log" 2>&1 || status=$?
  expect "rank $rank fails" 2 "$status" "$work/fail$rank.log" \
    "dstrain: error: rank $rank: DSTRAIN_FAIL_RANK=$rank: injected failure on rank $rank" \
    $((SECONDS - start))
done

start=$SECONDS
status=0
mpi_run 4 "$work/tp3.log" train "${small[@]}" parallel.tp=3 run.dir="$work/tp3" || status=$?
expect "tp 3 of 4 ranks" 2 "$status" "$work/tp3.log" \
  "parallel.tp: 3 does not divide the world size 4" $((SECONDS - start))

start=$SECONDS
status=0
mpi_run 3 "$work/heads.log" train "${small[@]}" parallel.tp=3 run.dir="$work/heads" || status=$?
expect "tp 3 and 4 heads" 2 "$status" "$work/heads.log" \
  "parallel.tp: 3 does not divide the model's num_attention_heads 4" $((SECONDS - start))

start=$SECONDS
status=0
mpi_run 4 "$work/dp.log" train "${small[@]}" parallel.tp=2 parallel.dp=4 run.dir="$work/dp" ||
  status=$?
expect "tp x dp is not the world" 2 "$status" "$work/dp.log" \
  "parallel.tp x parallel.dp: 2 x 4 = 8 ranks, but the launcher started 4" $((SECONDS - start))

# a single process without a launcher: the same hook, the plain error path
status=0
DSTRAIN_FAIL_RANK=0 "$DSTRAIN" train "${small[@]}" run.dir="$work/single" \
  >"$work/single.log" 2>&1 || status=$?
expect "single process" 2 "$status" "$work/single.log" \
  "dstrain: error: DSTRAIN_FAIL_RANK=0: injected failure on rank 0" 0
exit $fail
