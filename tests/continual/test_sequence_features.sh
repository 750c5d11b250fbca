#!/usr/bin/env bash
# test_sequence_features.sh: what a plain run has, a task sequence has, through the one loop:
# non-finite steps skipped and counted inside a task (train.max_nonfinite stops the sequence
# with a checkpoint), the step line with the task and an ETA over the whole sequence, the
# Prometheus endpoint with the task index, the EWC penalty and the replay share, checkpoints
# every checkpoint.every steps inside a task, and per task a data mixture and SFT loss masks
# through the one DataReader.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/sequence_features; rm -rf "$T"; mkdir -p "$T"; cd "$T"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done' EXIT

# two LM tasks; task b mixes two files; every row's first half is a prompt (loss mask 0)
python3 - <<'PY' || { echo "FAIL: python3 + h5py needed"; exit 1; }
import h5py, numpy as np
rng = np.random.default_rng(5)
def write(path, n, k, masked):
    rows = (np.arange(17)[None, :] * (k + 2) + rng.integers(0, 4, (n, 1))) % 24
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * 17
        if masked:
            m = np.ones((n, 17), dtype=np.uint8); m[:, :8] = 0
            f["loss_mask"] = m.reshape(-1)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 24; f.attrs["pad_id"] = 0; f.attrs["eos_id"] = 1
for k, name in enumerate(["a", "b", "c"]):
    write(f"{name}.h5", 64, k, True); write(f"{name}-test.h5", 16, k, True)
PY
cat > tasks.yaml <<YAML
tasks:
  - {id: a, train: a.h5, eval: a-test.h5, steps: 12}
  - {id: b, train: [b.h5, {path: c.h5, weight: 0.5}], eval: b-test.h5, steps: 12}
YAML
mkdir -p model
cat > model/config.json <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 24,
 "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 2, "max_position_embeddings": 16, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "tie_word_embeddings": false}
JSON
common=(model.path=model model.random_init=true train.seq_len=16 train.micro_batch_size=4
  data.mode=sft optim.warmup_steps=1 log.every=1 continual.tasks=tasks.yaml
  continual.ewc.enabled=true continual.ewc.lambda=10 continual.ewc.fisher.samples=4
  continual.replay.capacity=16 continual.replay.ratio=0.25 checkpoint.every=5 export.enabled=false)

# 1. non-finite steps inside task b: skipped and counted, the sequence goes on
DSTRAIN_PROGRESS=plain DSTRAIN_INJECT_NAN_STEP=15:2 "$DSTRAIN" train "${common[@]}" run.dir=nan \
  > nan.out 2> nan.err; rc=$?
check "a sequence with two non-finite steps exits 0" test $rc -eq 0
[ $rc -eq 0 ] || cat nan.out nan.err
check "skipped steps counted in metrics.jsonl" python3 -c "
import json; m = [json.loads(x) for x in open('nan/metrics.jsonl') if '\"step\"' in x and 'eval' not in x]
sk = [x['step'] for x in m if x.get('skipped')]
assert sk == [15, 16], sk
assert m[-1]['nonfinite_steps'] == 2 and m[-1]['task'] == 'b', m[-1]"
check "a warning names the non-finite step" grep -q "warning: step 15" nan.err
check "the step line shows the task and an eta" grep -q "step 14/24 | task 2/2 b | .*| eta " nan.out
check "checkpoints inside each task" test -d nan/checkpoints/step-00000005 -a -d nan/checkpoints/step-00000010 -o -d nan/checkpoints/step-00000020
check "SFT masks: a step trains the 9 unmasked targets of each row" python3 -c "
import json; m = [json.loads(x) for x in open('nan/metrics.jsonl') if '\"tokens\"' in x]
assert all(x['tokens'] == 4 * 9 for x in m), [x['tokens'] for x in m][:5]"
check "the mixture is read: task b trained on b and c" grep -q "task 2/2: b" nan.out

# 2. too many in a row: the sequence stops with exit 1 and a checkpoint of the last good state
DSTRAIN_INJECT_NAN_STEP=15:100 "$DSTRAIN" train "${common[@]}" train.max_nonfinite=3 \
  run.dir=stop > stop.out 2>&1; rc=$?
check "train.max_nonfinite stops the sequence with exit 1" test $rc -eq 1
check "and names the setting" grep -q "train.max_nonfinite: 3" stop.out
check "a checkpoint of the stop" test -d stop/checkpoints/step-00000017

# 3. the endpoint during a sequence: task index, EWC penalty, replay share
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
DSTRAIN_STEP_SLEEP_MS=150 "$DSTRAIN" train "${common[@]}" metrics.listen=127.0.0.1:$port \
  run.dir=scrape > scrape.out 2>&1 &
pids+=($!)
for _ in $(seq 300); do grep -q '"task_index": 1, "task_step": 3' scrape/metrics.jsonl 2>/dev/null && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$port/metrics" > metrics.txt
check "dstrain_task_index is 1 in the second task" grep -q "^dstrain_task_index 1$" metrics.txt
check "dstrain_task_count" grep -q "^dstrain_task_count 2$" metrics.txt
check "dstrain_ewc_penalty is served" grep -q "^dstrain_ewc_penalty [0-9]" metrics.txt
check "dstrain_replay_share is a quarter" grep -q "^dstrain_replay_share 0.25$" metrics.txt
wait "${pids[0]}"; rc=$?; pids=()
check "the scraped sequence exits 0" test $rc -eq 0

# 4. continual.ewc.decay reaches the update: with weight decay on, decay toward the anchor and
# toward zero train different weights after the first task; without weight decay the same
for wd in 0.1 0; do
  for d in anchor zero; do
    "$DSTRAIN" train "${common[@]}" checkpoint.every=0 optim.weight_decay=$wd \
      continual.ewc.decay=$d run.save_final=true run.dir=decay-$wd-$d > decay-$wd-$d.out 2>&1
  done
done
check "decay toward the anchor and toward zero differ under weight decay" \
  bash -c "! cmp -s decay-0.1-anchor/final.safetensors decay-0.1-zero/final.safetensors"
check "and agree without it" cmp -s decay-0-anchor/final.safetensors decay-0-zero/final.safetensors

echo "sequence features: $passes passed, $fails failed"
[ $fails -eq 0 ]
