#!/usr/bin/env bash
# test_hf_layouts.sh: tensor parallelism on Hugging Face models read from safetensors, each rank
# loading only its slices: the parity fixtures (Qwen2 with q/k/v biases and one kv head shared
# by both ranks; Llama with attention and MLP biases, o/down biases replicated; Llama with tied
# embeddings in bf16 sharded files) train 8 steps at np=1 and at tp=2 on a small random-token
# dataset (data parallelism is covered by test_layouts.sh): losses within 1e-5 relative, final
# parameters within 1e-5.
# Except where a gradient is rounding noise: AdamW divides a gradient by its own scale, so an
# element whose true gradient is below the noise of the two layouts' summation orders steps by up
# to lr either way (as in any fp32 run, whatever the layout). k_proj biases are all such
# elements (softmax ignores a shift of a query's scores: their true gradient is zero), held to
# 1e-3; in any other tensor such elements are a chance few (which, depends on the CPU's BLAS
# kernels): at most one in a thousand of its elements (at least one) may lie past 1e-5, none past
# 1e-3. A layout's slicing error moves whole rows or tensors, far past that.
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
ok = len(la) == len(lb) == 8 and pa.keys() == pb.keys() and rel <= 1e-5
d = {k: np.abs(pa[k] - pb[k]) for k in pa if k in pb}
kbias = max([float(np.max(d[k])) for k in noise] or [0.0])
diff = max(float(np.max(d[k])) for k in d if k not in noise)
# elements past 1e-5 in a tensor: at most max(1, 0.1%) of it, and none past 1e-3
stray = {k: int(np.sum(d[k] > 1e-5)) for k in d if k not in noise}
worst = max(stray, key=lambda k: stray[k] / max(1, d[k].size // 1000))
ok = ok and kbias <= 1e-3 and diff <= 1e-3
ok = ok and all(n <= max(1, d[k].size // 1000) for k, n in stray.items())
print(f"{'ok' if ok else 'FAIL'}: {b.rsplit('/', 1)[1]}: losses within {rel:.2e}, parameters "
      f"within {diff:.2e} ({len(pa)} tensors; past 1e-5: {sum(stray.values())} elements, "
      f"{stray[worst]} of {d[worst].size} in {worst}; k_proj biases within {kbias:.1e})")
sys.exit(0 if ok else 1)
PY
  done
done
exit $fail
