#!/usr/bin/env bash
# `dstrain train` with continual.tasks: a 3-task classification sequence with EWC and replay
# runs, logs the EWC penalty beside the loss, writes the R matrix and the state, a second run
# starts from that state, and bad task files or labels stop with one line and exit 2.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/continual_cli; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

# three small tasks: 16-token rows whose label is which third of the vocabulary dominates, the
# tokens shifted per task; the last file has a label outside num_labels
python3 - <<'PY' || { echo "FAIL: python3 + h5py needed"; exit 1; }
import h5py, numpy as np
rng = np.random.default_rng(0)
def write(path, n, shift, bad=False):
    y = rng.integers(0, 3, n)
    rows = (rng.integers(0, 6, (n, 16)) + 6 * y[:, None] + shift) % 20
    if bad: y[3] = 7
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * 16
        f["labels"] = y.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 20
for k in range(3):
    write(f"t{k}.h5", 96, 5 * k); write(f"t{k}-test.h5", 48, 5 * k)
write("bad.h5", 16, 0, bad=True)
PY
cat > tasks.yaml <<YAML
tasks:
  - {id: first, train: t0.h5, eval: t0-test.h5, steps: 6}
  - {id: second, train: t1.h5, eval: t1-test.h5, steps: 6}
  - {id: third, train: t2.h5, eval: t2-test.h5, epochs: 1}
YAML
mkdir -p model
cat > model/config.json <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 24,
 "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 2, "max_position_embeddings": 16, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "tie_word_embeddings": false}
JSON
common="model.path=model model.random_init=true task.type=classification task.num_labels=3
  train.seq_len=16 train.micro_batch_size=8 optim.warmup_steps=2 log.every=100
  continual.ewc.enabled=true continual.ewc.lambda=50 continual.ewc.fisher.samples=16
  continual.replay.capacity=32 continual.replay.ratio=0.25"
"$DSTRAIN" train $common continual.tasks=tasks.yaml run.dir=one > one.out 2>&1; rc=$?
check "continual run exits 0" test $rc -eq 0
[ $rc -eq 0 ] || cat one.out
check "R matrix printed" grep -q "accuracy after each task" one.out
check "report" python3 -c "
import json; r = json.load(open('one/continual.json'))
assert r['metric'] == 'accuracy' and r['tasks'] == ['first', 'second', 'third'], r
R = r['R']; assert len(R) == 3 and R[0][1] is None and all(0 <= v <= 1 for v in R[2]), R
assert abs(r['average'] - sum(R[2]) / 3) < 1e-9, r
"
check "ewc_penalty logged beside the loss, positive after the first task" python3 -c "
import json; m = [json.loads(x) for x in open('one/metrics.jsonl') if '\"loss\"' in x]
assert all('ewc_penalty' in x for x in m)
assert all(x['ewc_penalty'] == 0 for x in m if x['task'] == 'first'), m[:6]
# a task's first step starts at the anchor: zero penalty; after it the weights move away
later = [x for x in m if x['task'] != 'first']
assert all((x['ewc_penalty'] > 0) == (x['task_step'] > 1) for x in later), later
# one loop: global steps numbered through the sequence, the task's index beside them
assert [x['step'] for x in m] == list(range(1, len(m) + 1)), m
assert [x['task_index'] for x in m] == [0] * 6 + [1] * 6 + [2] * 16, m
assert m[0]['replay_rows'] == 0 and all(x['replay_rows'] == 2 for x in m[1:]), m
assert sum(1 for x in m if x['task'] == 'third') == 16  # 1 epoch of 96 at 6 fresh rows a step
"
check "state written" test -f one/continual-state/ewc.h5 -a -f one/continual-state/replay-rank-00000.h5
# tomorrow night's run starts from tonight's state: the penalty is on from its first step
cat > tasks2.yaml <<YAML
tasks:
  - {id: again, train: t0.h5, eval: t0-test.h5, steps: 3}
YAML
"$DSTRAIN" train $common continual.tasks=tasks2.yaml continual.state=one/continual-state \
  run.dir=two > two.out 2>&1; rc=$?
check "second run exits 0" test $rc -eq 0
check "state loaded" grep -q "3 Fisher set(s)\|1 Fisher set(s), 32 replay" two.out
check "penalty from the first step" python3 -c "
import json; m = [json.loads(x) for x in open('two/metrics.jsonl') if '\"loss\"' in x]
assert m[0]['ewc_penalty'] > 0 and m[0]['replay_rows'] == 2, m[0]"
# same seed, same run
"$DSTRAIN" train $common continual.tasks=tasks.yaml run.dir=again > again.out 2>&1
check "bitwise reproducible" cmp -s one/continual.json again/continual.json

# hostile input: one line, exit 2
cat > badtasks.yaml <<YAML
tasks:
  - {id: x, train: bad.h5, eval: bad.h5, steps: 2}
YAML
"$DSTRAIN" train $common continual.tasks=badtasks.yaml run.dir=bad > bad.out 2>&1; rc=$?
check "bad label exits 2" test $rc -eq 2
check "bad label message" grep -q "bad.h5: dataset \"labels\": label 7 of document 3 is outside" bad.out
printf 'tasks:\n  - {id: x, train: t0.h5, eval: t0-test.h5, steps: 0}\n' > zero.yaml
"$DSTRAIN" train $common continual.tasks=zero.yaml run.dir=bad > zero.out 2>&1; rc=$?
check "steps 0 exits 2" test $rc -eq 2
check "steps 0 message names file and line" grep -q "zero.yaml:2: tasks\[0\].steps" zero.out
"$DSTRAIN" train $common continual.tasks=tasks.yaml task.num_labels=1 run.dir=bad > nl.out 2>&1; rc=$?
check "num_labels 1 exits 2" test $rc -eq 2
"$DSTRAIN" train $common continual.tasks=tasks.yaml continual.ewc.fisher.type=exact \
  continual.ewc.fisher.samples=4 run.dir=exact > exact.out 2>&1; rc=$?
check "exact Fisher runs" test $rc -eq 0

"$DSTRAIN" train $common data.train=t0.h5 train.steps=3 run.dir=plain > plain.out 2>&1; rc=$?
# without a task list, classification trains on data.train alone through the same loop
check "a plain classification run exits 0" test $rc -eq 0
"$DSTRAIN" train $common data.train=t0.h5 data.mode=sft run.dir=bad2 > notasks.out 2>&1; rc=$?
check "classification of an sft-mode data set exits 2" test $rc -eq 2
check "and names both keys" grep -q "data.mode sft does not go with task.type classification" notasks.out

echo "continual cli: $passes passed, $fails failed"
[ $fails -eq 0 ]
