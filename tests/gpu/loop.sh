#!/usr/bin/env bash
# loop.sh: the one training loop on a GPU node (by hand, not in ctest): a three-task
# classification sequence with EWC and replay on `device: cuda`, stopped by SIGUSR1 inside the
# second task, resumed, and compared with an uninterrupted run (the same final parameters and
# matrix); then a causal LM fine-tuned as a classifier (its body loaded, a new head) exported as
# *ForSequenceClassification and checked against transformers (tools/check_hf_classification.py).
# Environment: DSTRAIN (the binary, built with CUDA), OUT (logs). Prints a table last.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
: "${DSTRAIN:?}"
OUT=${OUT:-/tmp/dstrain-loop}
W=$(mktemp -d); cd "$W"
status=0
row() { printf '| %-52s | %-40s | %s |\n' "$1" "$2" "$3" | tee -a "$OUT/loop-summary.txt"; }
mkdir -p "$OUT"; : > "$OUT/loop-summary.txt"

python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(3)
def write(path, n, shift):
    y = rng.integers(0, 3, n)
    rows = (rng.integers(0, 40, (n, 64)) + 40 * y[:, None] + shift) % 250
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * 64
        f["labels"] = y.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 256; f.attrs["pad_id"] = 0
for k in range(3):
    write(f"t{k}.h5", 256, 20 * k); write(f"t{k}-test.h5", 64, 20 * k)
PY
cat > tasks.yaml <<YAML
tasks:
  - {id: first, train: t0.h5, eval: t0-test.h5, steps: 30}
  - {id: second, train: t1.h5, eval: t1-test.h5, steps: 30}
  - {id: third, train: t2.h5, eval: t2-test.h5, steps: 30}
YAML
common=(device=cuda model.preset=tiny task.type=classification task.num_labels=3 train.seq_len=64
  train.micro_batch_size=8 optim.lr=1e-3 optim.warmup_steps=2 log.every=10
  continual.tasks=tasks.yaml continual.ewc.enabled=true continual.ewc.lambda=100
  continual.ewc.fisher.samples=32 continual.replay.capacity=64 continual.replay.ratio=0.25
  checkpoint.every=10 run.save_final=true export.enabled=false)
"$DSTRAIN" train "${common[@]}" run.dir=ref > "$OUT/loop-ref.log" 2>&1; rc=$?
row "cuda sequence, uninterrupted" "exit $rc" "$([ $rc = 0 ] && echo PASS || echo FAIL)"
[ $rc = 0 ] || status=1
DSTRAIN_STEP_SLEEP_MS=100 "$DSTRAIN" train "${common[@]}" run.dir=usr1 > "$OUT/loop-usr1.log" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q '"task_index": 1, "task_step": 5' usr1/metrics.jsonl 2>/dev/null && break; sleep 0.05; done
kill -USR1 $pid; wait $pid; rc=$?
row "cuda sequence, SIGUSR1 inside task 2" "exit $rc" "$([ $rc = 75 ] && echo PASS || echo FAIL)"
[ $rc = 75 ] || status=1
"$DSTRAIN" train "${common[@]}" run.dir=usr1 train.resume=auto > "$OUT/loop-resume.log" 2>&1; rc=$?
row "cuda sequence, resumed" "exit $rc" "$([ $rc = 0 ] && echo PASS || echo FAIL)"
cmp=$(python3 - <<'PY'
import json, struct, numpy as np
def rd(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype=np.float32)
            for k, v in h.items() if k != "__metadata__"}
a, b = rd("ref/final.safetensors"), rd("usr1/final.safetensors")
d = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
ra, rb = json.load(open("ref/continual.json"))["R"], json.load(open("usr1/continual.json"))["R"]
print(f"params max diff {d:.2e}, R equal {ra == rb}")
PY
)
same=$(echo "$cmp" | grep -q "diff 0.00e+00, R equal True" && echo PASS || echo "CHECK")
row "resumed vs uninterrupted (cuda)" "$cmp" "$same"

# a causal LM fine-tuned as a classifier, checked by transformers
"$DSTRAIN" train device=cuda train.steps=20 run.dir=lm > "$OUT/loop-lm.log" 2>&1
"$DSTRAIN" train device=cuda model.path=lm/export task.type=classification task.num_labels=3 \
  data.train=t0.h5 train.seq_len=64 train.steps=40 optim.lr=1e-4 export.dtype=fp32 \
  run.dir=cls > "$OUT/loop-cls.log" 2>&1; rc=$?
row "classifier from a pretrained LM (cuda)" "exit $rc, $(grep -c 'score.weight' "$OUT/loop-cls.log") head line" "$([ $rc = 0 ] && echo PASS || echo FAIL)"
[ $rc = 0 ] || status=1
DSTRAIN="$DSTRAIN" python3 "$SRC/tools/check_hf_classification.py" cls/export t0-test.h5 \
  --seq-len 64 > "$OUT/loop-hf.log" 2>&1; rc=$?
row "its export in transformers" "$(tail -1 "$OUT/loop-hf.log" | cut -c1-40)" "$([ $rc = 0 ] && echo PASS || echo FAIL)"
[ $rc = 0 ] || status=1
rm -rf "$W"
exit $status
