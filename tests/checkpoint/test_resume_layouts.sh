#!/usr/bin/env bash
# Resume across parallel layouts: a checkpoint saved by tp=2 x dp=2 (ZeRO-1, four shard files)
# resumed at the same layout continues bitwise; resumed at np=1 and at tp=1 x dp=4 it continues
# within 1e-5 (relative) of the uninterrupted run; a single-process checkpoint resumed at
# tp=2 x dp=2 likewise. The multi-rank run's export at the end is a loadable HF directory.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
T=$TMPROOT/checkpoint_layouts; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
common=(train.steps=20 train.seq_len=32 log.every=1000 checkpoint.every=10)
# global batch 4 everywhere: micro_batch_size is per data-parallel rank
run() { # name np tp dp [key=value ...]
  local name=$1 np=$2 tp=$3 dp=$4; shift 4
  local args=("${common[@]}" run.dir="$name" parallel.tp="$tp" train.micro_batch_size=$((4 / dp)) "$@")
  if [ "$np" = 1 ]; then "$DSTRAIN" train "${args[@]}" > "$name.log" 2>&1
  else mpi_run "$np" "$name.log" train "${args[@]}"; fi
  local rc=$?
  [ $rc -eq 0 ] || { echo "--- $name (exit $rc)"; tail -20 "$name.log"; }
  return $rc
}
compare() { # compare RESUMED REFERENCE TOLERANCE(0 = bitwise)
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "$3" <<'EOF'
import json, sys
load = lambda p: {d["step"]: d["loss"] for d in map(json.loads, open(p)) if "loss" in d}
got, ref, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
assert sorted(got) == list(range(11, 21)), sorted(got)
bad = [(s, got[s], ref[s]) for s in got
       if (got[s] != ref[s] if tol == 0 else abs(got[s] - ref[s]) > tol * abs(ref[s]))]
assert not bad, bad[:5]
EOF
}

run a 4 2 2 parallel.zero=1
check "tp2 x dp2 run" test $? -eq 0
check "four shard files and their layout in the manifest" python3 - a/checkpoints/step-00000010 <<'EOF'
import json, os, sys
m = json.load(open(os.path.join(sys.argv[1], "manifest.json")))
assert m["world"] == {"tp": 2, "dp": 2, "zero": 1}, m["world"]
names = {f["name"] for f in m["files"]}
for t in range(2):
    for d in range(2):
        assert f"rank-tp{t}-dp{d}.safetensors" in names, names
# a column-parallel weight is stored as two tp slices, its moments as dp ranges of each
q = [x for x in m["tensors"] if x["name"] == "model.layers.0.self_attn.q_proj.weight"]
assert {x["buffer"] for x in q} == {"params", "optim.m", "optim.v"}
assert sorted(x["slice"][0] for x in q if x["buffer"] == "params") == [0, 64], q
EOF
run b 4 2 2 parallel.zero=1 train.resume=a/checkpoints/step-00000010
check "tp2 x dp2 resumed at tp2 x dp2" test $? -eq 0
check "same layout: losses 11..20 bitwise equal" compare b a 0
run c 1 1 1 train.resume=a/checkpoints/step-00000010
check "tp2 x dp2 resumed at np=1" test $? -eq 0
check "says the layout changed" grep -q "saved at tp=2 x dp=2, this run is tp=1 x dp=1" c.log
check "np=1: losses within 1e-5" compare c a 1e-5
run d 4 1 4 parallel.zero=1 train.resume=a/checkpoints/step-00000010
check "tp2 x dp2 resumed at tp1 x dp4" test $? -eq 0
check "tp1 x dp4: losses within 1e-5" compare d a 1e-5
run s 1 1 1
check "single-process run" test $? -eq 0
run e 4 2 2 parallel.zero=1 train.resume=s/checkpoints/step-00000010
check "single-process checkpoint resumed at tp2 x dp2" test $? -eq 0
check "np=1 -> tp2 x dp2: losses within 1e-5" compare e s 1e-5
check "the multi-rank run exported" test -f a/export/model.safetensors.index.json -a -f a/export/tokenizer.json
"$DSTRAIN" eval --model a/export --data "$SRC/data/bundled/kjv-eval.h5" --seq-len 32 > eval.out 2>&1
check "its export evaluates" grep -q "^eval_loss=" eval.out

echo "$passes passed, $fails failed"
test $fails -eq 0
