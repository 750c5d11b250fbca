#!/usr/bin/env bash
# A model with a NaN or an infinity in its weights is never exported: a run whose weights went
# non-finite keeps its final checkpoint and stops with exit 2 and one line naming the checkpoint,
# the tensor and the element, with no export/ written; `dstrain export` of such a checkpoint or of
# such a Hugging Face directory is refused the same way. optim.eps=0 (which makes AdamW's update
# 0/0) is refused before the run starts.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/checkpoint_export_nonfinite; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
SMALL="train.steps=2 train.seq_len=32 train.micro_batch_size=4 log.every=1000"

"$DSTRAIN" train $SMALL run.dir=good > good.out 2>&1
check "a finite run exports" test $? -eq 0 -a -f good/export/config.json

# a Hugging Face directory with one NaN (bf16 0x7fc0) at element 3 of layer 0's down_proj
cp -r good/export nanmodel
python3 - nanmodel/model-00001-of-00001.safetensors <<'EOF'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
off = 8 + n + h['model.layers.0.mlp.down_proj.weight']['data_offsets'][0]
b[off + 6:off + 8] = struct.pack('<H', 0x7fc0)
open(p, 'wb').write(b)
EOF
WHAT="tensor model.layers.0.mlp.down_proj.weight: element 3 of 49152 is NaN (1 non-finite value in 1 tensor); a model with non-finite weights is not exported"

# the end of a run: every step is skipped (the loss is NaN), the checkpoint is saved, no export
"$DSTRAIN" train $SMALL model.path=nanmodel run.dir=bad > bad.out 2> bad.err; rc=$?
check "end-of-run export of NaN weights: exit 2" test $rc -eq 2
check "end-of-run export: one line naming checkpoint, tensor and element" \
  test "$(tail -n 1 bad.err)" = "dstrain: error: export: bad/checkpoints/step-00000002: $WHAT"
check "end-of-run export: the final checkpoint is kept" test -f bad/checkpoints/step-00000002/manifest.json
check "end-of-run export: no export and no temporary left" \
  bash -c '! ls -d bad/export* 2>/dev/null | grep -q .'

# dstrain export of that checkpoint, and of the Hugging Face directory itself
"$DSTRAIN" export --checkpoint bad/checkpoints/step-00000002 --output out1 > e1.out 2> e1.err; rc=$?
check "export of a NaN checkpoint: exit 2 and the line" \
  test $rc -eq 2 -a "$(tail -n 1 e1.err)" = "dstrain: error: export: bad/checkpoints/step-00000002: $WHAT"
"$DSTRAIN" export --model nanmodel --output out2 > e2.out 2> e2.err; rc=$?
check "export of a NaN Hugging Face directory: exit 2 and the line" \
  test $rc -eq 2 -a "$(tail -n 1 e2.err)" = "dstrain: error: export: nanmodel: $WHAT"
check "refused exports write nothing" bash -c '! ls -d out1* out2* 2>/dev/null | grep -q .'

# optim.eps=0 is refused before anything is made
"$DSTRAIN" train $SMALL optim.eps=0 run.dir=eps0 > eps.out 2> eps.err; rc=$?
check "optim.eps=0: exit 2" test $rc -eq 2
check "optim.eps=0: the line" \
  test "$(cat eps.err)" = "dstrain: error: command line: optim.eps: 0 is out of range (0..1, 0 excluded)"
check "optim.eps=0: no run directory" test ! -e eps0

echo "checkpoint/export_nonfinite: $passes passed, $fails failed"
[ $fails -eq 0 ]
