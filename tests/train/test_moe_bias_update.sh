#!/usr/bin/env bash
# test_moe_bias_update.sh: moe.bias_update_rate (DeepSeek-V3's auxiliary-loss-free balancing) on
# the tiny-moe preset. With the default 0 the score correction bias never moves (it has no
# gradient, no decay: it stays exactly as initialised, zero). With a rate, after each step
# every bias moves by exactly +rate, -rate or 0: after 8 steps each one is a whole multiple of
# the rate between -8 and 8 of them, and they are not all zero (the experts' loads differ).
# The training loss is unchanged by the option at the first step (the bias moves after it).
# A model without a score correction (the Llama tiny preset) refuses the option with one line.
# moe.balance_loss (the sequence-wise balance loss): reported as balance_loss on every step, of
# the size the formula gives (alpha times about 1 per MoE layer, 3 here: sum_e f_e P_e is 1 when
# balanced, more when not, at most E / k = 4), the first step's LM loss unchanged (the term adds to the gradient, not to the reported
# loss), and the training different from there on; a dense model refuses it.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
work="$TMPROOT/train-moe-bias"
rm -rf "$work" && mkdir -p "$work"
common=(model.preset=tiny-moe train.steps=8 train.seq_len=32 train.micro_batch_size=2 log.every=8
        run.save_final=true export.enabled=false checkpoint.every=0)

"$DSTRAIN" train "${common[@]}" run.dir="$work/frozen" >"$work/frozen.log" 2>&1 ||
  { cat "$work/frozen.log"; exit 1; }
"$DSTRAIN" train "${common[@]}" run.dir="$work/moving" moe.bias_update_rate=0.01 \
  >"$work/moving.log" 2>&1 || { cat "$work/moving.log"; exit 1; }

"$DSTRAIN" train "${common[@]}" run.dir="$work/balanced" moe.balance_loss=0.01 \
  >"$work/balanced.log" 2>&1 || { cat "$work/balanced.log"; exit 1; }
set +e
"$DSTRAIN" train model.preset=tiny train.steps=1 moe.balance_loss=0.01 run.dir="$work/llama2" \
  >"$work/llama2.log" 2>&1
status=$?
set -e
if [ "$status" -ne 2 ] || [ "$(grep -c 'moe.balance_loss: 0.01: the model (LlamaForCausalLM) has no routed experts' "$work/llama2.log")" -ne 1 ]; then
  echo "FAIL: a Llama model took moe.balance_loss (exit $status)"; cat "$work/llama2.log"; exit 1
fi
set +e
"$DSTRAIN" train model.preset=tiny train.steps=1 moe.bias_update_rate=0.01 run.dir="$work/llama" \
  >"$work/llama.log" 2>&1
status=$?
set -e
if [ "$status" -ne 2 ] || [ "$(grep -c 'moe.bias_update_rate: 0.01: the model (LlamaForCausalLM) has no score correction bias' "$work/llama.log")" -ne 1 ]; then
  echo "FAIL: a Llama model took moe.bias_update_rate (exit $status)"; cat "$work/llama.log"; exit 1
fi

python3 - "$work" <<'PY'
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests"))
import run_files
work = sys.argv[1]

def tensors(name):
    return run_files.final_tensors(f"{work}/{name}")

def losses(name):
    return [m["loss"] for m in run_files.step_metrics(f"{work}/{name}")]

frozen, moving = tensors("frozen"), tensors("moving")
names = sorted(k for k in frozen if k.endswith("mlp.gate.e_score_correction_bias"))
assert len(names) == 3, names  # layers 1..3 (layer 0 is dense)
for k in names:
    assert np.all(frozen[k] == 0.0), (k, frozen[k])
    steps = moving[k] / 0.01
    whole = np.abs(steps - np.round(steps)) < 1e-3
    assert np.all(whole) and np.all(np.abs(np.round(steps)) <= 8), (k, steps)
    assert np.any(np.round(steps) != 0), (k, steps)
a, b = losses("frozen"), losses("moving")
assert len(a) == len(b) == 8 and a[0] == b[0], (a, b)
with open(f"{work}/balanced/metrics.jsonl") as f:
    bal = [json.loads(l) for l in f if '"loss"' in l]
assert len(bal) == 8 and all(0.01 * 3 * 0.9 <= m["balance_loss"] <= 0.01 * 3 * 4 for m in bal), bal
assert bal[0]["loss"] == a[0] and bal[-1]["loss"] != a[-1], (bal[0]["loss"], a[0])
with open(f"{work}/frozen/metrics.jsonl") as f:
    assert all("balance_loss" not in l for l in f)
print("ok: balance_loss " + ", ".join(f"{m['balance_loss']:.5f}" for m in bal))
print("ok: frozen bias stays 0; moving bias in whole steps of the rate "
      + ", ".join(f"{k.split('.')[2]}: {np.round(moving[k] / 0.01).astype(int).tolist()}" for k in names))
PY
