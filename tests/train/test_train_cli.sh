#!/usr/bin/env bash
# Command-line behaviour of `dstrain train`: the bundled default learns, runs are bitwise
# reproducible, example configs run, and bad configs get one clear line and exit 2.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/train_cli; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
loss_at() { python3 -c "import json,sys; l=[json.loads(x) for x in open(sys.argv[1]) if '\"loss\"' in x]; print(l[int(sys.argv[2])]['loss'])" "$@"; }

# 1. The bundled default with no arguments: writes run dir, learns >= 20%.
"$DSTRAIN" > default.out 2>&1; rc=$?
check "default run exits 0" test $rc -eq 0
run=$(ls -d runs/* 2>/dev/null | head -1)
check "default run dir" test -n "$run" -a -f "$run/metrics.jsonl" -a -f "$run/config.yaml"
steps=$(grep -c '"loss"' "$run/metrics.jsonl")
check "one metrics line per step (300)" test "$steps" -eq 300
first=$(loss_at "$run/metrics.jsonl" 0); last=$(loss_at "$run/metrics.jsonl" -1)
echo "default run: loss $first -> $last"
check "loss falls by at least 20%" python3 -c "import sys; sys.exit(0 if $last <= 0.8*$first else 1)"
check "metrics keys" python3 -c "
import json; d=json.loads(open('$run/metrics.jsonl').readline())
assert all(k in d for k in ('step','loss','lr','grad_norm','tokens_per_second')), d"
check "a short summary printed, the resolved config saved" grep -q "preset tiny" default.out
check "the resolved config is not printed by default" test "$(grep -c 'preset: tiny' default.out)" -eq 0
check "the resolved config saved" grep -q "preset: tiny" "$run/config.yaml"

# 2. Bitwise reproducible on the CPU: same seed, same losses; another seed differs.
"$DSTRAIN" train train.steps=15 run.dir=a >/dev/null 2>&1
"$DSTRAIN" train train.steps=15 run.dir=b >/dev/null 2>&1
"$DSTRAIN" train train.steps=15 run.dir=c train.seed=7 >/dev/null 2>&1
strip() { python3 -c "import json,sys; [print(json.loads(x)['loss']) for x in open(sys.argv[1]) if '\"loss\"' in x]" "$1"; }
strip a/metrics.jsonl > a.loss; strip b/metrics.jsonl > b.loss; strip c/metrics.jsonl > c.loss
differ() { ! cmp -s "$1" "$2"; }
check "same seed, identical losses" cmp -s a.loss b.loss
check "other seed, other losses" differ a.loss c.loss
check "15 steps" test "$(wc -l < a.loss)" -eq 15

# 3. Grad accumulation of 2 x 4 equals one micro-batch of 8 (same tokens, same loss).
"$DSTRAIN" train train.steps=3 run.dir=acc1 train.micro_batch_size=8 >/dev/null 2>&1
"$DSTRAIN" train train.steps=3 run.dir=acc2 train.micro_batch_size=4 train.grad_accum=2 >/dev/null 2>&1
check "grad accumulation matches a full batch" python3 -c "
import json
a=[json.loads(x)['loss'] for x in open('acc1/metrics.jsonl')]
b=[json.loads(x)['loss'] for x in open('acc2/metrics.jsonl')]
assert len(a)==3 and all(abs(x-y) < 1e-5*abs(x) for x,y in zip(a,b)), (a,b)"

# 4. Every example config runs (briefly).
for cfg in "$SRC"/configs/*.yaml; do
  name=$(basename "$cfg" .yaml)
  "$DSTRAIN" train -c "$cfg" train.steps=2 run.dir="cfg_$name" > "cfg_$name.out" 2>&1
  check "configs/$name.yaml runs" test $? -eq 0
done

# 5. Bad configs: one line, names file:line and key, exit 2.
printf 'optim:\n  lr: 1e-5x\n' > bad1.yaml
"$DSTRAIN" train -c bad1.yaml > bad1.out 2> bad1.err; rc=$?
check "bad number exits 2" test $rc -eq 2
check "bad number message" grep -q '^dstrain: error: bad1.yaml:2: optim.lr: ' bad1.err
printf 'optim:\n  lrr: 1e-3\n' > bad2.yaml
"$DSTRAIN" train -c bad2.yaml > /dev/null 2> bad2.err; rc=$?
check "unknown key exits 2" test $rc -eq 2
check "did you mean" grep -q 'did you mean optim.lr' bad2.err
"$DSTRAIN" train train.steps=0 > /dev/null 2> bad3.err; rc=$?
check "out of range override exits 2" test $rc -eq 2
check "override message" grep -q 'command line: train.steps' bad3.err
"$DSTRAIN" train model.preset=nope run.dir=np > /dev/null 2> bad4.err; rc=$?
check "unknown preset exits 2" test $rc -eq 2
check "unknown preset names the known ones" grep -q 'tiny' bad4.err
"$DSTRAIN" train data.train=missing.h5 run.dir=md > /dev/null 2> bad5.err; rc=$?
check "missing data exits 2" test $rc -eq 2
check "missing data names the file" grep -q 'missing.h5' bad5.err
"$DSTRAIN" train precision=bf16 run.dir=bf > /dev/null 2> bad6.err; rc=$?
check "bf16 on the cpu exits 2" test $rc -eq 2
check "bf16 on the cpu names the keys" grep -q 'precision: bf16 needs device: cuda' bad6.err
check "bf16 on the cpu is one line" test "$(cat bad6.err | wc -l)" -eq 1
"$DSTRAIN" train precision=tf32 run.dir=tf > /dev/null 2> bad6.err; rc=$?
check "tf32 on the cpu: exit 2, one line naming the keys" test $rc -eq 2 -a "$(cat bad6.err)" = \
  "dstrain: error: precision: tf32 needs device: cuda (the CPU backend computes in fp32 only; use auto or fp32)"
"$DSTRAIN" train cuda.experts=grouped cuda.attention=mma train.steps=1 run.dir=ck > ck.out 2>&1
check "the cuda keys are accepted (and unused) on the cpu" test $? -eq 0
for kv in cuda.experts=fast cuda.attention=flash3; do
  "$DSTRAIN" train "$kv" run.dir=ck2 > /dev/null 2> bad8.err; rc=$?
  check "$kv: exit 2, one line naming the key and the choices ($(cat bad8.err))" bash -c \
    "test $rc -eq 2 -a \$(wc -l < bad8.err) -eq 1 && grep -q '${kv%%=*}' bad8.err && grep -Eq 'streams|flash' bad8.err"
done
"$DSTRAIN" train precision=fp16 run.dir=bf > /dev/null 2> bad7.err; rc=$?
check "unknown precision exits 2" test $rc -eq 2
check "unknown precision names the choices" grep -q 'precision' bad7.err
check "errors are one line" test "$(cat bad1.err | wc -l)" -eq 1
"$DSTRAIN" frobnicate > /dev/null 2> bad6.err; rc=$?
check "unknown command exits 2" test $rc -eq 2

# on a machine without a GPU (or a build without CUDA) device=cuda is one line naming it, before
# the run directory is made (the backend is made, and freed, first)
if ! command -v nvidia-smi > /dev/null 2>&1; then
  "$DSTRAIN" train device=cuda train.steps=1 run.dir=nogpu > /dev/null 2> nogpu.err; rc=$?
  check "device=cuda without a GPU: exit 2, one line naming device cuda ($(cat nogpu.err))" \
    bash -c "test $rc -eq 2 -a \$(wc -l < nogpu.err) -eq 1 && grep -q '^dstrain: error: device: cuda: ' nogpu.err && test ! -e nogpu"
fi

echo "$passes passed, $fails failed"
test $fails -eq 0
