#!/usr/bin/env bash
# A model directory whose weight files hold tensors the model lacks (here: config.json says 3
# layers, the files hold 4) is refused by train, eval and export with one line naming the first
# tensor and the way out; model.allow_extra_tensors=true (train) and --allow-extra-tensors (eval,
# export) load it with one warning naming them, and what is written holds only the model's
# tensors (the export loads back without the flag). dstrain info describes it with the warning.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/checkpoint_extra_tensors; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
SMALL="train.steps=2 train.seq_len=32 train.micro_batch_size=4 log.every=1000 optim.lr=1e-4"
DATA=$SRC/data/bundled/kjv-eval.h5

"$DSTRAIN" train $SMALL run.dir=base > base.out 2>&1 || { echo "FAIL: the tiny run"; exit 1; }
cp -r base/export x3
python3 -c "
import json; c = json.load(open('x3/config.json')); c['num_hidden_layers'] = 3
json.dump(c, open('x3/config.json', 'w'))"
REFUSED="dstrain: error: x3: tensor model.layers.3.input_layernorm.weight in model-00001-of-00001.safetensors is not part of the model config.json describes (3 layers); model.allow_extra_tensors: true (--allow-extra-tensors) loads the model without it"
WARNED="dstrain: warning: x3: 9 tensors not part of the model config.json describes (3 layers) are left out (model.allow_extra_tensors): model.layers.3.input_layernorm.weight, model.layers.3.mlp.down_proj.weight, model.layers.3.mlp.gate_proj.weight, model.layers.3.mlp.up_proj.weight, ..."

# refused by default, each with the one line
"$DSTRAIN" train $SMALL model.path=x3 run.dir=t1 > t1.out 2> t1.err; rc=$?
check "train: refused, exit 2, the line" test $rc -eq 2 -a "$(cat t1.err)" = "$REFUSED"
check "train: no run directory" test ! -e t1
"$DSTRAIN" eval --model x3 --data "$DATA" --seq-len 32 > e1.out 2> e1.err; rc=$?
check "eval: refused, exit 2, the line" test $rc -eq 2 -a "$(cat e1.err)" = "$REFUSED"
"$DSTRAIN" export --model x3 --output o1 > o1.out 2> o1.err; rc=$?
check "export: refused, exit 2, the line" test $rc -eq 2 -a "$(cat o1.err)" = "${REFUSED/error: /error: export: }"

# allowed: one warning each, and the runs go on
"$DSTRAIN" train $SMALL model.path=x3 model.allow_extra_tensors=true run.dir=t2 > t2.out 2> t2.err; rc=$?
check "train allowed: exit 0" test $rc -eq 0
check "train allowed: the warning, once" test "$(grep -c 'not part of the model' t2.err)" = 1 -a \
  "$(grep 'not part of the model' t2.err)" = "$WARNED"
check "train allowed: the run's export loads without the flag" \
  bash -c "'$DSTRAIN' eval --model t2/export --data '$DATA' --seq-len 32 > /dev/null 2>&1"
"$DSTRAIN" eval --model x3 --data "$DATA" --seq-len 32 --allow-extra-tensors > e2.out 2> e2.err; rc=$?
check "eval allowed: exit 0, a loss and the warning" \
  bash -c "[ $rc -eq 0 ] && grep -q '^eval_loss=' e2.out && [ \"\$(cat e2.err)\" = '$WARNED' ]"
"$DSTRAIN" export --model x3 --output o2 --allow-extra-tensors > o2.out 2> o2.err; rc=$?
check "export allowed: exit 0 and the warning" bash -c "[ $rc -eq 0 ] && grep -qF '$WARNED' o2.err"
"$DSTRAIN" eval --model o2 --data "$DATA" --seq-len 32 > e3.out 2> e3.err; rc=$?
check "the export holds the 3 layers only: it loads without the flag, to the same loss" \
  bash -c "[ $rc -eq 0 ] && [ ! -s e3.err ] && [ \"\$(tail -n 1 e3.out)\" = \"\$(tail -n 1 e2.out)\" ]"

# info describes such a directory (with the warning)
"$DSTRAIN" info x3 > i.out 2> i.err; rc=$?
check "info: exit 0, 3 layers, 39 tensors in the files, the warning" bash -c \
  "[ $rc -eq 0 ] && grep -q '3 layers' i.out && grep -q 'in 39 tensors' i.out && [ \"\$(cat i.err)\" = '$WARNED' ]"

echo "checkpoint/extra_tensors: $passes passed, $fails failed"
[ $fails -eq 0 ]
