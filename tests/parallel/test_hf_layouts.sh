#!/usr/bin/env bash
# test_hf_layouts.sh: tensor parallelism on Hugging Face models read from safetensors, each rank
# loading only its slices: the parity fixtures (Qwen2 with q/k/v biases and one kv head shared
# by both ranks; Llama with attention and MLP biases, o/down biases replicated; Llama with tied
# embeddings in bf16 sharded files) train 8 steps at np=1 and at tp=2 on a small random-token
# dataset (data parallelism is covered by test_layouts.sh): losses within 1e-5 relative, final
# parameters within 1e-5.
# Except where a gradient is rounding noise (AdamW steps such an element by up to lr either way):
# k_proj biases, and a chance few elements of a tensor, within lr x steps (tests/run_files.py's
# params_close says why).
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
import os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests"))
import run_files
a, b = sys.argv[1:3]
la = [m["loss"] for m in run_files.step_metrics(a)]
lb = [m["loss"] for m in run_files.step_metrics(b)]
rel = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
close, text = run_files.params_close(run_files.final_tensors(a), run_files.final_tensors(b),
                                     drift=8 * 1e-3)  # lr x steps
ok = len(la) == len(lb) == 8 and rel <= 1e-5 and close
print(f"{'ok' if ok else 'FAIL'}: {b.rsplit('/', 1)[1]}: losses within {rel:.2e}, {text}")
sys.exit(0 if ok else 1)
PY
  done
done
exit $fail
