#!/usr/bin/env bash
# test_run_dir.sh: a run directory belongs to one run. A fresh run in a directory an earlier run
# filled is refused (exit 2, nothing of the old run touched) unless resuming or run.overwrite;
# a second process on a directory in use is refused by the first one's lock. Ctrl-C checkpoints
# and exits 75 like SIGTERM; a second Ctrl-C exits 130 at once. Resume edge cases: a longer
# train.steps warns, a changed seq_len is refused in one line, a finished run trains nothing.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/run_dir; rm -rf "$T"; mkdir -p "$T"; cd "$T"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
small=(train.steps=6 train.micro_batch_size=2 train.seq_len=32 export.enabled=false log.every=1)

"$DSTRAIN" train "${small[@]}" run.dir=r > first.out 2>&1
check "first run exits 0" test $? -eq 0
sum=$(md5sum r/metrics.jsonl r/config.yaml | md5sum)
"$DSTRAIN" train "${small[@]}" train.seed=9 run.dir=r > again.out 2>&1; rc=$?
check "a fresh run in a filled run.dir exits 2" test $rc -eq 2
check "and says how to go on" grep -q "run.dir: r holds an earlier run; set train.resume=auto" again.out
check "the old run is untouched" test "$(md5sum r/metrics.jsonl r/config.yaml | md5sum)" = "$sum"
"$DSTRAIN" train "${small[@]}" train.seed=9 run.dir=r run.overwrite=true > over.out 2>&1
check "run.overwrite replaces it" test $? -eq 0
check "with one line saying so" grep -q "run.overwrite: replaced the earlier run in r" over.out
check "the new run's metrics only" test "$(grep -c '"loss"' r/metrics.jsonl)" -eq 6

# two processes on one directory: the second is refused while the first holds it
DSTRAIN_STEP_SLEEP_MS=300 "$DSTRAIN" train "${small[@]}" run.dir=busy > busy1.out 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '"step": 1,' busy/metrics.jsonl 2>/dev/null && break; sleep 0.05; done
"$DSTRAIN" train "${small[@]}" run.dir=busy train.resume=auto > busy2.out 2>&1; rc=$?
check "a second process on a run.dir in use exits 2" test $rc -eq 2
check "naming the holder" grep -q "run.dir: busy is in use by another dstrain process (pid $pid)" busy2.out

# Ctrl-C: a checkpoint at the step boundary, exit 75; the run resumes from it
kill -INT $pid; wait $pid; rc=$?
check "SIGINT exits 75 after a checkpoint" test $rc -eq 75
check "SIGINT's checkpoint is there" bash -c "ls -d busy/checkpoints/step-* >/dev/null 2>&1"
"$DSTRAIN" train "${small[@]}" run.dir=busy train.resume=auto > busy3.out 2>&1
check "the interrupted run resumes and finishes" test $? -eq 0
check "each step logged once after the resume" python3 -c "
import json; s = [json.loads(x)['step'] for x in open('busy/metrics.jsonl') if '\"loss\"' in x]
assert s == [1, 2, 3, 4, 5, 6], s"

# a second Ctrl-C exits at once
DSTRAIN_STEP_SLEEP_MS=2000 "$DSTRAIN" train "${small[@]}" run.dir=twice > twice.out 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q '"step": 1,' twice/metrics.jsonl 2>/dev/null && break; sleep 0.05; done
kill -INT $pid
for _ in $(seq 100); do grep -q "interrupted: saving" twice.out && break; sleep 0.02; done
kill -INT $pid; wait $pid; rc=$?
check "a second SIGINT exits 130 at once" test $rc -eq 130
check "saying so" grep -q "interrupted again: exiting now" twice.out

# resume edge cases
"$DSTRAIN" train "${small[@]}" train.steps=3 checkpoint.every=3 run.dir=edge > e1.out 2>&1
"$DSTRAIN" train "${small[@]}" train.steps=8 run.dir=edge train.resume=auto > e2.out 2>&1; rc=$?
check "a longer run resumes" test $rc -eq 0
check "and warns that the schedule follows the new length" grep -q "the checkpoint's run had 3 steps, this one has 8" e2.out
"$DSTRAIN" train "${small[@]}" train.steps=8 run.dir=edge train.resume=auto > e3.out 2>&1; rc=$?
check "resuming the finished run exits 0" test $rc -eq 0
check "and trains nothing" grep -q "already complete (step 8 of 8); nothing to train" e3.out
"$DSTRAIN" train "${small[@]}" train.steps=3 checkpoint.every=3 run.dir=seq > s1.out 2>&1
"$DSTRAIN" train "${small[@]}" train.steps=6 train.seq_len=16 run.dir=seq train.resume=auto \
  > s2.out 2>&1; rc=$?
check "a changed seq_len on resume exits 2" test $rc -eq 2
check "in one line naming seq_len" bash -c "grep -c 'dstrain: error' s2.out | grep -qx 1 && grep -q 'seq_len' s2.out"

# settings that are legal but likely wrong get one warning each
"$DSTRAIN" submit --gpus-per-node 8 --dry-run > sub.out 2> sub.err
check "submit --gpus-per-node with device cpu warns" grep -q "warning: submit: --gpus-per-node 8 with device: cpu" sub.err
"$DSTRAIN" train "${small[@]}" train.steps=1 train.seq_len=2304 train.micro_batch_size=1 \
  run.dir=warn > warn.out 2> warn.err
check "seq_len above max_position_embeddings warns" \
  grep -q "warning: train.seq_len 2304 is above the model's max_position_embeddings 2048" warn.err

echo "run dir: $passes passed, $fails failed"
[ $fails -eq 0 ]
