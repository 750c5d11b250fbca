#!/usr/bin/env bash
# Checkpoints through the dstrain binary: a resumed run is bitwise identical to an uninterrupted
# one; a flipped byte is caught and resume: auto falls back and says so; kill -9 at random
# moments during saves (20 trials) always resumes from the newest complete checkpoint; a full
# disk gives a clear error with the previous checkpoint intact (stop or continue); exports are
# read by the safetensors Python library and (when installed) the tokenizers library.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/checkpoint_cli; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0; skips=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
# losses by step from metrics.jsonl (later lines of a step win; a torn last line is skipped)
losses() { python3 - "$1" <<'EOF'
import json, sys
d = {}
for line in open(sys.argv[1]):
    try: x = json.loads(line)
    except ValueError: continue
    if 'loss' in x: d[x['step']] = x['loss']
for s in sorted(d): print(s, repr(d[s]))
EOF
}
# every line of metrics file $1 has the loss of the same step in reference $2, bitwise
same_losses() { python3 - "$1" "$2" "${3:-0}" <<'EOF'
import json, sys
def load(p, keep_all):
    out = []
    for line in open(p):
        try: x = json.loads(line)
        except ValueError: continue
        if 'loss' in x: out.append((x['step'], x['loss']))
    return out
got, ref = load(sys.argv[1], True), dict(load(sys.argv[2], False))
need = int(sys.argv[3])
bad = [(s, l, ref.get(s)) for s, l in got if ref.get(s) != l]
steps = {s for s, _ in got}
if bad: print("differ:", bad[:5]); sys.exit(1)
if need and steps != set(range(1, need + 1)): print("missing steps", sorted(set(range(1, need + 1)) - steps)[:10]); sys.exit(1)
EOF
}
newest_complete() { # newest step with a manifest under checkpoint dir $1, or 0
  local best=0 d s
  for d in "$1"/step-*; do
    [ -f "$d/manifest.json" ] || continue
    case "$d" in *.tmp-*|*.old-*) continue;; esac
    s=$((10#${d##*step-})); [ "$s" -gt "$best" ] && best=$s
  done
  echo $best
}
SMALL="train.seq_len=32 train.micro_batch_size=4 log.every=1000"

# 1. Resume is bitwise identical: 20 steps saving every 10, against 10 + resume to 20.
"$DSTRAIN" train $SMALL train.steps=20 checkpoint.every=10 run.dir=a > a.out 2>&1
check "uninterrupted run" test $? -eq 0
check "checkpoints 10 and 20, latest -> 20" test -f a/checkpoints/step-00000010/manifest.json \
  -a -f a/checkpoints/step-00000020/manifest.json -a "$(readlink a/checkpoints/latest)" = step-00000020
check "async save logs its stall" grep -q "training stalled .* of the save" a.out
"$DSTRAIN" train $SMALL train.steps=20 checkpoint.every=10 run.dir=b \
  train.resume=a/checkpoints/step-00000010 > b.out 2>&1
check "resumed run" test $? -eq 0
check "says where it resumed" grep -q "resumed from a/checkpoints/step-00000010 at step 10" b.out
check "resumed losses 11..20 bitwise equal" same_losses b/metrics.jsonl a/metrics.jsonl
check "resumed run did 10 steps" test "$(losses b/metrics.jsonl | wc -l)" -eq 10
check "final state bitwise equal" cmp -s a/checkpoints/step-00000020/rank-tp0-dp0.safetensors \
  b/checkpoints/step-00000020/rank-tp0-dp0.safetensors
"$DSTRAIN" train $SMALL train.steps=3 run.dir=fresh train.resume=auto > fresh.out 2>&1
check "auto with no checkpoint starts fresh" grep -q "no complete checkpoint in fresh/checkpoints yet, starting fresh" fresh.out
"$DSTRAIN" train $SMALL train.steps=3 run.dir=np train.resume=nope/step-1 > np.out 2> np.err
check "missing resume path exits 2" test $? -eq 2
check "missing resume path message" grep -q "train.resume: nope/step-1: not a complete checkpoint" np.err

# 2. A flipped byte: the checksum catches it and auto falls back to the previous checkpoint.
cp -r a/checkpoints flip
python3 -c "
import sys; p='flip/step-00000020/rank-tp0-dp0.safetensors'; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=1; open(p,'wb').write(b)"
"$DSTRAIN" train $SMALL train.steps=20 checkpoint.every=10 run.dir=f checkpoint.dir=flip \
  train.resume=auto export.enabled=false > f.out 2> f.err
check "flipped byte run" test $? -eq 0
check "damage named" grep -q "flip/step-00000020 is damaged and is skipped: .*rank-tp0-dp0.safetensors: checksum mismatch" f.err
check "says it falls back" grep -q "falling back to the previous checkpoint" f.err
check "resumed from step 10" grep -q "resumed from flip/step-00000010 at step 10" f.out
check "fallback losses bitwise equal" same_losses f/metrics.jsonl a/metrics.jsonl
check "damaged step replaced by a good one" cmp -s flip/step-00000020/rank-tp0-dp0.safetensors \
  a/checkpoints/step-00000020/rank-tp0-dp0.safetensors
"$DSTRAIN" train $SMALL train.steps=20 run.dir=f2 train.resume=a/checkpoints/step-00000010/../../../flip/step-00000010 > /dev/null 2>&1
check "resume PATH through .. of a real directory works" test $? -eq 0

# 3. kill -9 at random moments during saves: every restart resumes from the newest complete one.
# A constant learning rate makes the schedule independent of train.steps, so the killed runs
# (long) and the final and reference runs (just past the last checkpoint) train identically.
KILL="train.seq_len=16 train.micro_batch_size=2 log.every=1000 export.enabled=false optim.schedule=constant optim.warmup_steps=0"
last_step() { python3 -c "
import json,sys
s=0
try:
    for l in open(sys.argv[1]):
        try: s=max(s, json.loads(l).get('step', 0))
        except ValueError: pass
except OSError: pass
print(s)" "$1"; }
verified=0; attempts=0; RANDOM=42
while [ $verified -lt 20 ] && [ $attempts -lt 40 ]; do
  attempts=$((attempts+1))
  expect=$(newest_complete k/checkpoints)
  "$DSTRAIN" train $KILL train.steps=100000 run.dir=k checkpoint.every=1 checkpoint.keep=2 \
    train.resume=auto > k.out 2> k.err &
  pid=$!
  # wait until it trains past the checkpoint it resumed from, then kill it a moment later:
  # with a save every step, a save is almost always in flight
  for _ in $(seq 600); do
    [ "$(last_step k/metrics.jsonl)" -gt "$expect" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  if grep -q "damaged" k.err; then echo "FAIL: trial $attempts read a damaged checkpoint"; cat k.err; fails=$((fails+1)); fi
  if [ "$expect" -eq 0 ]; then
    grep -q "starting fresh" k.out && verified=$((verified+1))
  elif grep -q "resumed from" k.out; then
    if grep -q "resumed from k/checkpoints/step-$(printf %08d "$expect") at step $expect\$" k.out; then
      verified=$((verified+1))
    else
      echo "FAIL: trial $attempts: expected a resume from step $expect, got: $(grep resumed k.out)"; fails=$((fails+1))
    fi
  fi
done
final=$(( $(newest_complete k/checkpoints) + 3 ))
echo "kill -9: $verified verified restarts in $attempts trials, newest complete step $((final - 3))"
check "at least 20 verified kill -9 restarts" test $verified -ge 20
check "killed runs made progress" test "$final" -gt 8
"$DSTRAIN" train $KILL train.steps=$final run.dir=k checkpoint.every=0 train.resume=auto > kfinal.out 2> kfinal.err
check "run completes after the kills" test $? -eq 0
"$DSTRAIN" train $KILL train.steps=$final run.dir=ref checkpoint.every=0 > ref.out 2>&1
check "reference run" test $? -eq 0
check "every step of the killed runs equals the uninterrupted run" same_losses k/metrics.jsonl ref/metrics.jsonl $final

# 4. A full disk during a save: clear error, the previous checkpoint intact, stop or continue.
mkdir -p full
if mount -t tmpfs -o size=14m tmpfs full 2> mount.err; then
  trap 'umount "$T/full" 2>/dev/null' EXIT
  "$DSTRAIN" train $SMALL train.steps=4 checkpoint.every=1 checkpoint.dir=full/ck run.dir=d1 \
    export.enabled=false > d1.out 2> d1.err; rc=$?
  check "full disk, on_error stop: exits 1" test $rc -eq 1
  check "full disk message" grep -q "^dstrain: error: checkpoint step 2: .*No space left on device" d1.err
  check "full disk: one line" test "$(wc -l < d1.err)" -eq 1
  check "full disk: no temporary directory left" test -z "$(ls -d full/ck/*.tmp-* 2>/dev/null)"
  check "full disk: previous checkpoint intact" test "$(newest_complete full/ck)" -eq 1
  "$DSTRAIN" train $SMALL train.steps=4 run.dir=d1r train.resume=full/ck/step-00000001 \
    export.enabled=false > d1r.out 2>&1
  check "full disk: previous checkpoint resumes" test $? -eq 0
  check "full disk: resumed losses equal" same_losses d1r/metrics.jsonl a/metrics.jsonl
  rm -rf full/ck
  "$DSTRAIN" train $SMALL train.steps=4 checkpoint.every=1 checkpoint.dir=full/ck run.dir=d2 \
    checkpoint.on_error=continue > d2.out 2> d2.err; rc=$?
  check "full disk, on_error continue: exits 0" test $rc -eq 0
  check "full disk, continue: warns" grep -q "warning: checkpoint step .*No space left on device; training continues" d2.err
  check "full disk, continue: all steps trained" test "$(losses d2/metrics.jsonl | wc -l)" -eq 4
  check "full disk, continue: checkpoint 1 intact" test "$(newest_complete full/ck)" -eq 1
  umount full; trap - EXIT
elif [ "$(id -u)" -ne 0 ] || grep -qi "permission denied\|not permitted" mount.err; then
  echo "SKIP: full-disk tests: cannot mount a tmpfs here ($(cat mount.err))"; skips=$((skips+1))
else
  echo "FAIL: mount of a tmpfs failed: $(cat mount.err)"; fails=$((fails+1))
fi

# 5. Export: dstrain export, read by the safetensors library; tokenizer; dstrain eval.
"$DSTRAIN" export --checkpoint a/checkpoints --output e32 --dtype fp32 --max-shard-size 1MB > e32.out 2>&1
check "export fp32" test $? -eq 0
check "export picks the newest checkpoint" grep -q "exported a/checkpoints/step-00000020 to e32" e32.out
"$DSTRAIN" export --checkpoint a/checkpoints/step-00000020 --output e16 > e16.out 2>&1
check "export bf16 (default)" test $? -eq 0
"$DSTRAIN" export --checkpoint a/checkpoints --output e16 > /dev/null 2> again.err
check "export refuses an existing output" grep -q "e16: already exists" again.err
"$DSTRAIN" export --checkpoint a/checkpoints --output bad --dtype int4 > /dev/null 2> dt.err
check "export refuses an unknown dtype (exit 2)" test $? -eq 2
check "python reads the export" python3 - e32 e16 a/checkpoints/step-00000020 <<'EOF'
import glob, json, os, sys
from safetensors import safe_open
from safetensors.numpy import load_file
e32, e16, ck = sys.argv[1:]
ref = load_file(os.path.join(ck, "rank-tp0-dp0.safetensors"))
for d, dtype in ((e32, "float32"), (e16, "bfloat16")):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    files = sorted(set(idx["weight_map"].values()))
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "*.safetensors"))) == files, files
    assert json.load(open(os.path.join(d, "config.json")))["torch_dtype"] == dtype
    keys = set()
    for f in files:
        with safe_open(os.path.join(d, f), framework="numpy") as st:
            assert st.metadata() == {"format": "pt"}, st.metadata()
            for k in st.keys():
                assert idx["weight_map"][k] == f
                keys.add(k)
                if dtype == "float32":
                    t = st.get_tensor(k)
                    r = ref["params/" + k]
                    assert t.shape == r.shape and t.tobytes() == r.tobytes(), k
    assert keys == set(idx["weight_map"]), "index and files disagree"
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert len(files) >= (3 if dtype == "float32" else 1), files
    gen = json.load(open(os.path.join(d, "generation_config.json")))
    assert gen["bos_token_id"] == 256 and gen["eos_token_id"] == 257
print("export read by safetensors: ok")
EOF
if python3 -c "import tokenizers" 2>/dev/null; then
  check "byte-level tokenizer loads in tokenizers" python3 - e16 <<'EOF'
import sys, tokenizers
t = tokenizers.Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
ids = t.encode("In the beginning\n\u00e9").ids
assert ids == [256] + list("In the beginning\n\u00e9".encode()), ids
assert t.decode(ids, skip_special_tokens=True) == "In the beginning\n\u00e9"
assert t.token_to_id("</s>") == 257
EOF
else
  echo "SKIP: tokenizers is not installed: the tokenizer.json load check did not run"; skips=$((skips+1))
fi
"$DSTRAIN" eval --model e32 --data "$SRC/data/bundled/kjv-eval.h5" --seq-len 64 > ev32.out 2>&1
check "dstrain eval of the fp32 export" test $? -eq 0
"$DSTRAIN" eval --model a/export --data "$SRC/data/bundled/kjv-eval.h5" --seq-len 64 > ev16.out 2>&1
check "dstrain eval of the run's own bf16 export" test $? -eq 0
check "bf16 and fp32 exports agree within 1e-2" python3 -c "
import re
a=float(re.search('eval_loss=([0-9.]+)', open('ev32.out').read()).group(1))
b=float(re.search('eval_loss=([0-9.]+)', open('ev16.out').read()).group(1))
assert abs(a-b) < 1e-2, (a, b)"
check "run's export dir is a complete HF dir" test -f a/export/config.json -a -f a/export/tokenizer.json \
  -a -f a/export/model.safetensors.index.json -a -f a/export/generation_config.json

echo "$passes passed, $fails failed, $skips skipped"
test $fails -eq 0
