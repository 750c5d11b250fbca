#!/usr/bin/env bash
# A classification run ends with a Hugging Face sequence-classification export: config.json with
# architectures, num_labels, id2label/label2id (task.labels, else the base model's, else
# LABEL_i), pad_token_id; tensors model.* and score.weight, no lm_head. dstrain's own loader
# reads the export back with the run's accuracy (`dstrain eval`), `dstrain export` of the
# checkpoint gives the same files, a run can start from the export, and bad names, bad configs
# and a classifier under task.type causal_lm stop with one line and exit 2.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/classification_export; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

# two tasks of 3 classes: 5..11 tokens drawn from a third of the vocabulary by label (shifted
# per task), then a CLS token (21), right-padded to 12 with pad_token_id 23 by the trainer
python3 - <<'PY' || { echo "FAIL: python3 + h5py needed"; exit 1; }
import h5py, numpy as np
rng = np.random.default_rng(1)
def write(path, n, shift, labels=True):
    y = rng.integers(0, 3, n)
    docs = [list((rng.integers(0, 7, rng.integers(5, 12)) + 7 * c + shift) % 21) + [21] for c in y]
    with h5py.File(path, "w") as f:
        f["tokens"] = np.concatenate(docs).astype(np.int32)
        f["doc_offsets"] = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
        if labels: f["labels"] = y.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 24; f.attrs["pad_id"] = 23
for k in range(2):
    write(f"t{k}.h5", 192, 3 * k); write(f"t{k}-test.h5", 61, 3 * k)
write("nolabels.h5", 8, 0, labels=False)
PY
cat > tasks.yaml <<YAML
tasks:
  - {id: first, train: t0.h5, eval: t0-test.h5, steps: 30}
  - {id: second, train: t1.h5, eval: t1-test.h5, steps: 30}
YAML
printf 'tasks:\n  - {id: first, train: t0.h5, eval: t0-test.h5, steps: 1}\n' > one-task.yaml
for arch in llama qwen2; do
  mkdir -p $arch
  name=$([ $arch = llama ] && echo LlamaForCausalLM || echo Qwen2ForCausalLM)
  cat > $arch/config.json <<JSON
{"architectures": ["$name"], "model_type": "$arch", "vocab_size": 24,
 "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
 "num_key_value_heads": 1, "max_position_embeddings": 12, "rms_norm_eps": 1e-5,
 "rope_theta": 100.0, "tie_word_embeddings": false, "pad_token_id": 23}
JSON
done
common="model.random_init=true task.type=classification task.num_labels=3 train.seq_len=12
  train.micro_batch_size=8 optim.warmup_steps=2 log.every=100 export.dtype=fp32"

# --- Llama with class names
"$DSTRAIN" train $common model.path=llama continual.tasks=tasks.yaml run.dir=run \
  task.labels="ok, bearing_fault ,overheat" > run.out 2>&1; rc=$?
check "classification run exits 0" test $rc -eq 0
[ $rc -eq 0 ] || tail -5 run.out
check "the run says it exported" grep -q "exported the model to run/export" run.out
check "config.json: sequence classification fields" python3 -c "
import json; c = json.load(open('run/export/config.json'))
assert c['architectures'] == ['LlamaForSequenceClassification'] and c['model_type'] == 'llama', c
assert c['num_labels'] == 3 and c['problem_type'] == 'single_label_classification', c
assert c['id2label'] == {'0': 'ok', '1': 'bearing_fault', '2': 'overheat'}, c['id2label']
assert c['label2id'] == {'ok': 0, 'bearing_fault': 1, 'overheat': 2}, c['label2id']
assert c['pad_token_id'] == 23 and c['torch_dtype'] == 'float32', c
"
# every tensor of the export with its shape, from the safetensors headers through the index
cat > tensors.py <<'PY'
import json, struct, sys
d = sys.argv[1]
index = json.load(open(f"{d}/model.safetensors.index.json"))
out = {}
for shard in sorted(set(index["weight_map"].values())):
    with open(f"{d}/{shard}", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    for name, v in header.items():
        assert index["weight_map"][name] == shard, name
        out[name] = (v["dtype"], v["shape"])
assert set(out) == set(index["weight_map"]), "index and shards disagree"
print(json.dumps(out, sort_keys=True))
PY
python3 tensors.py run/export > run-tensors.json
check "tensors: model.* and score.weight [3, 16], no lm_head, all F32" python3 -c "
import json; t = json.load(open('run-tensors.json'))
assert t['score.weight'] == ['F32', [3, 16]], t.get('score.weight')
assert not any(n.startswith('lm_head') for n in t), sorted(t)
assert all(n.startswith('model.') for n in t if n != 'score.weight'), sorted(t)
assert t['model.embed_tokens.weight'] == ['F32', [24, 16]] and len(t) == 2 + 2 * 9 + 1, sorted(t)
assert t['model.layers.1.self_attn.k_proj.weight'] == ['F32', [8, 16]], t
assert all(v[0] == 'F32' for v in t.values())
"
# the export read back by dstrain scores each task as the run did after its last task
for k in 0 1; do
  "$DSTRAIN" eval --model run/export --data t$k-test.h5 --seq-len 12 --batch 8 \
    --logits logits$k.txt > eval$k.out 2>&1
  check "eval of task $k exits 0" test $? -eq 0
  check "eval of task $k: the run's accuracy" python3 -c "
import json, re; R = json.load(open('run/continual.json'))['R']
got = float(re.search(r'eval_accuracy=([0-9.]+) examples=61', open('eval$k.out').read()).group(1))
assert abs(got - R[-1][$k]) < 1e-6, (got, R[-1][$k])
assert R[-1][$k] > 0.5, R  # learned, so the comparison means something
"
  check "logits of task $k: one row per document, the file's labels, argmax = accuracy" python3 -c "
import h5py, numpy as np, re
z = np.loadtxt('logits$k.txt'); y = h5py.File('t$k-test.h5')['labels'][:]
assert z.shape == (61, 4) and (z[:, 0] == y).all(), z.shape
acc = float(re.search(r'eval_accuracy=([0-9.]+)', open('eval$k.out').read()).group(1))
assert abs((z[:, 1:].argmax(1) == y).mean() - acc) < 1e-6
"
done
"$DSTRAIN" eval --model run/export --data t0-test.h5 --seq-len 12 --batch 5 --logits l5.txt \
  > /dev/null 2>&1
check "the logits do not depend on the eval batch" python3 -c "
import numpy as np; a, b = np.loadtxt('logits0.txt'), np.loadtxt('l5.txt')
assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
"
"$DSTRAIN" export --checkpoint run/checkpoints --output again --dtype fp32 > export.out 2>&1
check "dstrain export of the checkpoint exits 0" test $? -eq 0
check "and writes the same config.json and tensors" bash -c \
  "cmp -s run/export/config.json again/config.json &&
   cmp -s run/export/model-00001-of-00001.safetensors again/model-00001-of-00001.safetensors"
"$DSTRAIN" export --checkpoint run/checkpoints --output half > /dev/null 2>&1
python3 tensors.py half > half-tensors.json
check "a bf16 export has the same names and shapes" python3 -c "
import json; a, b = json.load(open('run-tensors.json')), json.load(open('half-tensors.json'))
assert {n: v[1] for n, v in a.items()} == {n: v[1] for n, v in b.items()}
assert all(v[0] == 'BF16' for v in b.values())
"

# a run that starts from the export (tomorrow night's): lr 0 keeps the weights, so it scores the
# first task as the first run did at its end, and the class names carry over
"$DSTRAIN" train $common model.random_init=false model.path=run/export continual.tasks=one-task.yaml \
  optim.lr=0 run.dir=next > next.out 2>&1; rc=$?
check "a run from the export exits 0" test $rc -eq 0
[ $rc -eq 0 ] || tail -5 next.out
check "and scores the first task as the first run ended" python3 -c "
import json; a = json.load(open('run/continual.json'))['R']; b = json.load(open('next/continual.json'))['R']
assert abs(a[-1][0] - b[0][0]) < 1e-9, (a, b)
c = json.load(open('next/export/config.json'))
assert c['id2label'] == {'0': 'ok', '1': 'bearing_fault', '2': 'overheat'}, c['id2label']
"

# --- Qwen2 (q/k/v biases), no names
"$DSTRAIN" train $common model.path=qwen2 continual.tasks=one-task.yaml run.dir=qrun \
  > qrun.out 2>&1; rc=$?
check "Qwen2 classification run exits 0" test $rc -eq 0
[ $rc -eq 0 ] || tail -5 qrun.out
python3 tensors.py qrun/export > q-tensors.json
check "Qwen2: Qwen2ForSequenceClassification, LABEL_i, q/k/v biases, score.weight" python3 -c "
import json; c = json.load(open('qrun/export/config.json')); t = json.load(open('q-tensors.json'))
assert c['architectures'] == ['Qwen2ForSequenceClassification'] and c['model_type'] == 'qwen2', c
assert c['id2label'] == {'0': 'LABEL_0', '1': 'LABEL_1', '2': 'LABEL_2'}, c
assert c['label2id'] == {'LABEL_0': 0, 'LABEL_1': 1, 'LABEL_2': 2}, c
assert t['model.layers.0.self_attn.q_proj.bias'] == ['F32', [16]], t
assert t['score.weight'] == ['F32', [3, 16]] and not any('lm_head' in n for n in t), t
"
"$DSTRAIN" eval --model qrun/export --data t0-test.h5 --seq-len 12 --batch 8 > qeval.out 2>&1
check "Qwen2 export read back: the run's accuracy" python3 -c "
import json, re; R = json.load(open('qrun/continual.json'))['R']
got = float(re.search(r'eval_accuracy=([0-9.]+)', open('qeval.out').read()).group(1))
assert abs(got - R[0][0]) < 1e-6, (got, R)
"

# --- refused with one line and exit 2
expect_error() { # expect_error NAME MESSAGE COMMAND...
  local name=$1 message=$2; shift 2
  "$@" > err.out 2>&1; local rc=$?
  check "$name exits 2" test $rc -eq 2
  check "$name: says \"$message\"" grep -qF "dstrain: error: $message" err.out
  check "$name: before any training" bash -c "! grep -q 'step 1/' err.out"
}
expect_error "two names for three labels" "task.labels: 2 names for task.num_labels 3" \
  "$DSTRAIN" train $common model.path=llama continual.tasks=tasks.yaml run.dir=bad1 task.labels=a,b
expect_error "a name twice" 'task.labels: "a" names both label 0 and 2' \
  "$DSTRAIN" train $common model.path=llama continual.tasks=tasks.yaml run.dir=bad2 task.labels=a,b,a
expect_error "an empty name" "task.labels: name 1 is empty" \
  "$DSTRAIN" train $common model.path=llama continual.tasks=tasks.yaml run.dir=bad3 task.labels="a,,b"
expect_error "a classifier as a causal LM" "model.path: run/export is a sequence classifier (3 labels)" \
  "$DSTRAIN" train model.path=run/export continual.tasks=tasks.yaml run.dir=bad4
expect_error "eval on a file without labels" 'nolabels.h5: dataset "labels": missing' \
  "$DSTRAIN" eval --model run/export --data nolabels.h5
expect_error "--logits on a causal LM" "eval: --logits is for classification models" \
  "$DSTRAIN" eval --model llama --data t0.h5 --logits x.txt
for bad in 'num_labels=1' 'id2label_mismatch' 'id2label_list'; do
  rm -rf hostile; cp -r run/export hostile
  python3 - "$bad" <<'PY'
import json, sys
c = json.load(open("hostile/config.json"))
if sys.argv[1] == "num_labels=1": c["num_labels"] = 1; c["id2label"] = {"0": "x"}
elif sys.argv[1] == "id2label_mismatch": c["num_labels"] = 4
else: c["id2label"] = ["ok", "bearing_fault", "overheat"]
json.dump(c, open("hostile/config.json", "w"))
PY
  case $bad in
    num_labels=1) msg="hostile/config.json: num_labels: expected 2..1000000 classes, got 1" ;;
    id2label_mismatch) msg="hostile/config.json: num_labels: 4, but id2label names 3 labels" ;;
    *) msg="hostile/config.json: id2label: expected an object" ;;
  esac
  expect_error "config.json with $bad" "$msg" "$DSTRAIN" eval --model hostile --data t0-test.h5
done

echo "classification export: $passes passed, $fails failed"
[ $fails -eq 0 ]
