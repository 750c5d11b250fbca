#!/usr/bin/env bash
# dstrain eval: cheap checks first. A bad --seq-len or --batch is refused before the model is
# even looked at; the window is sized from the data (a --seq-len beyond the longest document
# gives the same loss as one that just fits, without allocating for the length asked); and a
# model that would not fit the host's memory is refused with both figures before it is made.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/train_eval_windows; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

"$DSTRAIN" train train.steps=2 train.seq_len=32 train.micro_batch_size=4 log.every=1000 \
  run.dir=run > run.out 2>&1 || { echo "FAIL: the tiny run"; exit 1; }
# documents of 3, 7 and 4 tokens: the longest needs a window of 6
printf '%s\n' '{"input_ids": [3, 4, 5]}' '{"input_ids": [6, 7, 8, 9, 10, 11, 12]}' \
  '{"input_ids": [12, 13, 14, 15]}' > docs.jsonl
"$DSTRAIN" pack --input docs.jsonl --output docs.h5 --vocab-size 258 > /dev/null

# 1. bad values, refused before the model (which does not exist here) is looked at
for bad in 0 -1 abc 16777217 "" 1e3 " 5"; do
  "$DSTRAIN" eval --model nowhere --data docs.h5 --seq-len "$bad" > bad.out 2> bad.err; rc=$?
  check "--seq-len '$bad': exit 2 and the flag named, not the model" \
    test $rc -eq 2 -a "$(cat bad.err)" = "dstrain: error: --seq-len: expected a positive integer, got \"$bad\""
done
"$DSTRAIN" eval --model nowhere --data docs.h5 --batch 0 > bad.out 2> bad.err; rc=$?
check "--batch 0: exit 2 and the flag named" \
  test $rc -eq 2 -a "$(cat bad.err)" = 'dstrain: error: --batch: expected a positive integer, got "0"'

# 2. the window from the data (and no more rows than windows): 6, 100 and 2^24 score the same
#    tokens to the same loss
loss() { "$DSTRAIN" eval --model run/export --data docs.h5 "$@" 2> /dev/null | tail -n 1; }
fit=$(loss --seq-len 6)
check "--seq-len 6 scores the 11 predictions" bash -c "echo '$fit' | grep -q 'tokens=11$'"
check "--seq-len 100: the same" test "$(loss --seq-len 100)" = "$fit"
check "no --seq-len: the same" test "$(loss)" = "$fit"
if [ -x /usr/bin/time ]; then
  # against the same eval at --seq-len 6: what the binary and its libraries take (a build with
  # the CUDA backend maps more) is not the window's; the window at 2^24 took 2.4 GB
  /usr/bin/time -f "%M" -o base.txt "$DSTRAIN" eval --model run/export --data docs.h5 \
    --seq-len 6 > base.out 2> base.err
  /usr/bin/time -f "%M" -o rss.txt "$DSTRAIN" eval --model run/export --data docs.h5 \
    --seq-len 16777216 > big.out 2> big.err; rc=$?
  check "--seq-len 2^24 on a small file: exit 0 and the same loss" \
    test $rc -eq 0 -a "$(tail -n 1 big.out)" = "$fit"
  check "--seq-len 2^24 on a small file: within 100 MB of --seq-len 6 ($(cat rss.txt) KB against $(cat base.txt) KB)" \
    test "$(cat rss.txt)" -lt $(( $(cat base.txt) + 100000 ))
fi
# shorter windows still split the long document (3 windows of 2 for it)
check "--seq-len 2 still scores 11 predictions" bash -c "loss() { \"$DSTRAIN\" eval --model run/export --data docs.h5 \"\$@\" 2>/dev/null | tail -n 1; }; loss --seq-len 2 | grep -q 'tokens=11$'"

# 3. a model that does not fit the host is refused before it is made
DSTRAIN_HOST_MEMORY_BYTES=1000000 "$DSTRAIN" eval --model run/export --data docs.h5 \
  > small.out 2> small.err; rc=$?
check "a 976.56 KiB host: exit 2 and the line" test $rc -eq 2 -a "$(cat small.err)" = \
  "dstrain: error: memory: eval at --batch 3 x --seq-len 6 (parameters and gradients 6.63 MiB, activations 762.88 KiB) needs 7.38 MiB of host memory, more than the 976.56 KiB this host has (DSTRAIN_HOST_MEMORY_BYTES); lower --seq-len or --batch"

# 4. where it computes: --device and --precision, refused with the flag named before the model
#    is looked at; the CPU in fp32 is what eval does by default
refused() { # refused NAME EXPECTED-LINE ARGS...
  local name=$1 line=$2; shift 2
  "$DSTRAIN" "$@" > bad.out 2> bad.err; local rc=$?
  check "$name: exit 2 and one line ($(head -c 300 bad.err))" \
    test $rc -eq 2 -a "$(cat bad.err)" = "dstrain: error: $line"
}
for cmd in "eval --data docs.h5" "generate --prompt-ids 3"; do
  refused "$cmd --device tpu" '--device: expected cpu or cuda, got "tpu"' \
    $cmd --model nowhere --device tpu
  refused "$cmd --precision fp16" '--precision: expected auto, fp32, bf16 or tf32, got "fp16"' \
    $cmd --model nowhere --precision fp16
  refused "$cmd --precision bf16 on the CPU" \
    '--precision: bf16 needs --device cuda (the CPU computes in fp32 only; use auto or fp32)' \
    $cmd --model nowhere --precision bf16
done
# on a machine without a GPU (or a build without CUDA) --device cuda is one line naming it
if ! command -v nvidia-smi > /dev/null 2>&1; then
  "$DSTRAIN" eval --model run/export --data docs.h5 --device cuda > gpu.out 2> gpu.err; rc=$?
  check "--device cuda without a GPU: exit 2, one line naming device cuda ($(cat gpu.err))" \
    bash -c "test $rc -eq 2 -a \$(wc -l < gpu.err) -eq 1 && grep -q '^dstrain: error: device: cuda: ' gpu.err"
fi
check "--device cpu --precision fp32: the default's loss" \
  test "$(loss --seq-len 6 --device cpu --precision fp32)" = "$fit"

echo "train/eval_windows: $passes passed, $fails failed"
[ $fails -eq 0 ]
