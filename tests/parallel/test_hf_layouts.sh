#!/usr/bin/env bash
# test_hf_layouts.sh: tensor parallelism on Hugging Face models read from safetensors, each rank
# loading only its slices: the parity fixtures (Qwen2 with q/k/v biases and one kv head shared
# by both ranks; Llama with attention and MLP biases, o/down biases replicated; Llama with tied
# embeddings in bf16 sharded files) train 8 steps at np=1 and at tp=2 on a small random-token
# dataset (data parallelism is covered by test_layouts.sh): losses within 1e-5 relative, final
# parameters within 1e-5.
# Except k_proj biases: softmax ignores a shift of a query's scores, so their true gradient is
# zero and AdamW turns the rounding noise into steps of up to lr (as in any fp32 run, whatever
# the layout); they are held to 1e-3.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-hf"
rm -rf "$work" && mkdir -p "$work"
python3 - "$work/tokens.jsonl" <<'PY'
import json, random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for _ in range(64):  # ids below 64: every fixture's vocabulary holds them
        ids = [random.randrange(64) for _ in range(random.randrange(20, 60))]
        f.write(json.dumps({"input_ids": ids}) + "\n")
PY
"$DSTRAIN" pack --input "$work/tokens.jsonl" --output "$work/tokens.h5" --vocab-size 64 \
  >"$work/pack.log" 2>&1 || { cat "$work/pack.log"; exit 1; }

fail=0
for model in qwen2_gqa_bias_f32_newform llama_llama3rope_bias_f32_newform \
             llama_tied_linear_bf16_newform_sharded; do
  args=(model.path="$SRC/tests/fixtures/parity/$model" data.train="$work/tokens.h5"
        train.steps=8 train.seq_len=16 optim.warmup_steps=2 optim.lr=1e-3 run.save_final=true
        export.enabled=false log.every=4)
  "$DSTRAIN" train "${args[@]}" train.micro_batch_size=4 run.dir="$work/$model-1" \
    >"$work/$model-1.log" 2>&1 || { cat "$work/$model-1.log"; exit 1; }
  for layout in tp2; do
    np=2 mb=4
    mpi_run $np "$work/$model-$layout.log" train "${args[@]}" parallel.tp=2 \
      train.micro_batch_size=$mb run.dir="$work/$model-$layout" ||
      { cat "$work/$model-$layout.log"; exit 1; }
    python3 - "$work/$model-1" "$work/$model-$layout" <<'PY' || fail=1
import json, struct, sys
import numpy as np
def losses(d): return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl") if '"loss"' in l]
def tensors(d):
    b = open(d + "/final.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             np.float32).reshape(v["shape"]) for k, v in h.items() if k != "__metadata__"}
a, b = sys.argv[1:3]
la, lb, pa, pb = losses(a), losses(b), tensors(a), tensors(b)
rel = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
noise = [k for k in pa if k.endswith("k_proj.bias")]
diff = max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa if k not in noise)
kbias = max([float(np.max(np.abs(pa[k] - pb[k]))) for k in noise] or [0.0])
ok = len(la) == len(lb) == 8 and pa.keys() == pb.keys() and rel <= 1e-5 and diff <= 1e-5
ok = ok and kbias <= 1e-3
print(f"{'ok' if ok else 'FAIL'}: {b.rsplit('/', 1)[1]}: losses within {rel:.2e}, parameters "
      f"within {diff:.2e} ({len(pa)} tensors; k_proj biases within {kbias:.1e})")
sys.exit(0 if ok else 1)
PY
  done
done
exit $fail
