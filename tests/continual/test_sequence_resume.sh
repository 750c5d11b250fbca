#!/usr/bin/env bash
# test_sequence_resume.sh: a three-task sequence (classification, EWC and replay on, checkpoints
# every 3 steps) interrupted and resumed ends bitwise identical to an uninterrupted one: the same
# final parameters, the same accuracy matrix, the same per-step losses, each step logged once.
# Interruptions: kill -9 at random points (10 trials, each resumed with train.resume=auto until
# it finishes), and SIGUSR1 in the middle of the second task (checkpoint, exit 75, resume).
# Also: resuming the finished run says so and trains nothing; a changed tasks file is refused.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/sequence_resume; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

python3 - <<'PY' || { echo "FAIL: python3 + h5py needed"; exit 1; }
import h5py, numpy as np
rng = np.random.default_rng(3)
def write(path, n, shift):
    y = rng.integers(0, 3, n)
    rows = (rng.integers(0, 6, (n, 16)) + 6 * y[:, None] + shift) % 20
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * 16
        f["labels"] = y.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 20; f.attrs["pad_id"] = 0
for k in range(3):
    write(f"t{k}.h5", 64, 5 * k); write(f"t{k}-test.h5", 24, 5 * k)
PY
cat > tasks.yaml <<YAML
tasks:
  - {id: first, train: t0.h5, eval: t0-test.h5, steps: 8}
  - {id: second, train: t1.h5, eval: t1-test.h5, steps: 8}
  - {id: third, train: t2.h5, eval: t2-test.h5, steps: 7}
YAML
mkdir -p model
cat > model/config.json <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 24,
 "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 2, "max_position_embeddings": 16, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "tie_word_embeddings": false}
JSON
common=(model.path=model model.random_init=true task.type=classification task.num_labels=3
  train.seq_len=16 train.micro_batch_size=4 train.grad_accum=2 optim.warmup_steps=2 log.every=100
  continual.tasks=tasks.yaml continual.ewc.enabled=true continual.ewc.lambda=50
  continual.ewc.mode=separate continual.ewc.fisher.samples=8 continual.replay.capacity=24
  continual.replay.ratio=0.25 checkpoint.every=3 checkpoint.keep=2 run.save_final=true
  export.enabled=false)

# the reference: uninterrupted
"$DSTRAIN" train "${common[@]}" run.dir=ref > ref.out 2>&1; rc=$?
check "reference run exits 0" test $rc -eq 0
[ $rc -eq 0 ] || { cat ref.out; exit 1; }

# losses of each step, each step once; the matrix
same_as_ref() { # DIR
  cmp -s ref/final.safetensors "$1/final.safetensors" && cmp -s ref/continual.json "$1/continual.json" &&
  python3 - "$1" <<'PY'
import json, sys
def steps(d):
    m = [json.loads(x) for x in open(d + "/metrics.jsonl") if '"loss"' in x]
    return [(x["step"], x["loss"], x["ewc_penalty"], x["replay_rows"]) for x in m]
a, b = steps("ref"), steps(sys.argv[1])
assert [s[0] for s in b] == list(range(1, 24)), [s[0] for s in b]
assert a == b, [(x, y) for x, y in zip(a, b) if x != y][:3]
PY
}

# kill -9 at random points, each trial resumed until it finishes
for trial in $(seq 1 10); do
  d=kill$trial; n=0; rc=1
  while [ $rc -ne 0 ] && [ $n -lt 40 ]; do
    n=$((n + 1))
    DSTRAIN_STEP_SLEEP_MS=25 "$DSTRAIN" train "${common[@]}" run.dir=$d train.resume=auto \
      >> $d.out 2>&1 &
    pid=$!
    sleep "0.$(( (RANDOM % 9) + 1 ))$((RANDOM % 10))"
    kill -9 $pid 2>/dev/null
    wait $pid; rc=$?
  done
  # finish without interruption
  [ $rc -eq 0 ] || { "$DSTRAIN" train "${common[@]}" run.dir=$d train.resume=auto >> $d.out 2>&1; rc=$?; }
  check "kill -9 trial $trial finishes" test $rc -eq 0
  check "kill -9 trial $trial ($n starts) is bitwise the uninterrupted run" same_as_ref $d
done

# SIGUSR1 in the middle of the second task: checkpoint, exit 75, resume
DSTRAIN_STEP_SLEEP_MS=60 "$DSTRAIN" train "${common[@]}" run.dir=usr1 > usr1.out 2>&1 &
pid=$!
for i in $(seq 1 400); do
  grep -q '"task_index": 1, "task_step": 3' usr1/metrics.jsonl 2>/dev/null && break
  sleep 0.02
done
kill -USR1 $pid; wait $pid; rc=$?
check "SIGUSR1 exits 75" test $rc -eq 75
check "SIGUSR1 message names the task" grep -q "SIGUSR1 at step 1[0-3] of task second: checkpoint written" usr1.out
check "the checkpoint is inside the second task" python3 -c "
import json, glob; s = sorted(glob.glob('usr1/checkpoints/step-*'))[-1]
step = json.load(open(s + '/manifest.json'))['step']; assert 9 < step < 16, step"
"$DSTRAIN" train "${common[@]}" run.dir=usr1 train.resume=auto > usr1b.out 2>&1; rc=$?
check "resume after SIGUSR1 exits 0" test $rc -eq 0
check "resume after SIGUSR1 is bitwise the uninterrupted run" same_as_ref usr1
check "resumed inside the second task" grep -q "resumed from .*step-000000" usr1b.out

# resuming the finished run trains nothing and says so
"$DSTRAIN" train "${common[@]}" run.dir=ref train.resume=auto > again.out 2>&1; rc=$?
check "resuming a finished run exits 0" test $rc -eq 0
check "and says it is complete" grep -q "already complete (step 23 of 23)" again.out
# a tasks file with other steps does not fit the checkpoint
sed 's/steps: 7/steps: 5/' tasks.yaml > tasks2.yaml
"$DSTRAIN" train "${common[@]}" continual.tasks=tasks2.yaml run.dir=ref train.resume=auto \
  > changed.out 2>&1; rc=$?
check "a shorter sequence than the checkpoint exits 2" test $rc -eq 2
check "and says why" grep -q "beyond this run's 21 steps" changed.out

echo "sequence resume: $passes passed, $fails failed"
[ $fails -eq 0 ]
