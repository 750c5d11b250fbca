#!/usr/bin/env bash
# test_layouts.sh: the same config and data give the same training at every parallel layout.
# The tiny preset on the bundled data, 20 steps, at np=1 and under mpirun at tp=2, dp=2 (with
# and without ZeRO-1), tp=2 x dp=2 (both), tp=4 (fewer kv heads than ranks: shared kv heads)
# and dp=2 with two accumulated micro-batches: per-step and eval losses (but for the
# accumulation run, whose eval batches are smaller) within 1e-5 relative,
# final parameters within 1e-5 (but for elements whose gradient is rounding noise:
# tests/run_files.py's params_close). The global batch is the same everywhere: micro_batch_size is
# per data-parallel rank and micro-step, so it is 4 / (dp x grad_accum). Also checks the
# per-rank memory line: parameters 1/tp, optimizer state 1/(tp x dp) with ZeRO-1.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-layouts"
rm -rf "$work" && mkdir -p "$work"
common=(train.steps=20 train.seq_len=32 log.every=5 optim.lr=1e-3 run.save_final=true
        export.enabled=false checkpoint.every=0 eval.every=10 eval.batches=2
        data.eval="$SRC/data/bundled/kjv-eval.h5")

run() { # name np tp dp zero [grad_accum]
  local name=$1 np=$2 tp=$3 dp=$4 zero=$5 accum=${6:-1}
  local args=("${common[@]}" run.dir="$work/$name" parallel.tp="$tp" parallel.zero="$zero"
              train.micro_batch_size=$((4 / dp / accum)) train.grad_accum="$accum")
  if [ "$np" = 1 ]; then
    "$DSTRAIN" train "${args[@]}" >"$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
  else
    mpi_run "$np" "$work/$name.log" train "${args[@]}" || { cat "$work/$name.log"; exit 1; }
  fi
  grep -q "^dstrain: $np ranks (tp $tp x dp $dp, zero $((dp > 1 ? zero : 0)))" "$work/$name.log" ||
    { echo "FAIL: $name: no memory line for tp $tp x dp $dp"; cat "$work/$name.log"; exit 1; }
}

run single 1 1 1 1
run tp2 2 2 1 1
run dp2 2 1 2 1
run dp2_allreduce 2 1 2 0
run tp2dp2 4 2 2 1
run tp2dp2_allreduce 4 2 2 0
run tp4 4 4 1 1
run dp2_accum2 2 1 2 1 2

python3 - "$work" <<'PY'
import json, os, re, struct, sys
import numpy as np
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests"))
import run_files
work = sys.argv[1]

def losses(name):
    with open(f"{work}/{name}/metrics.jsonl") as f:
        return [json.loads(l)["loss"] for l in f if '"loss"' in l]

def eval_losses(name):
    with open(f"{work}/{name}/metrics.jsonl") as f:
        return [json.loads(l)["eval_loss"] for l in f if '"eval_loss"' in l]

def tensors(name):
    with open(f"{work}/{name}/final.safetensors", "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (name, k, v["dtype"])
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32).reshape(v["shape"])
    return out

def memory(name):
    text = open(f"{work}/{name}.log").read()
    m = re.search(r"memory per rank: parameters ([\d.]+) MiB, gradients ([\d.]+) MiB, "
                  r"optimizer ([\d.]+) MiB, activations ([\d.]+) MiB", text)
    assert m, name
    return [float(x) for x in m.groups()]

ref_loss, ref_params = losses("single"), tensors("single")
assert len(ref_loss) == 20 and ref_loss[-1] < ref_loss[0] - 1.0, ref_loss
failed = False
for name in ["tp2", "dp2", "dp2_allreduce", "tp2dp2", "tp2dp2_allreduce", "tp4", "dp2_accum2"]:
    loss, params = losses(name), tensors(name)
    assert len(loss) == 20, (name, len(loss))
    rel = max(abs(a - b) / abs(a) for a, b in zip(ref_loss, loss))
    ref_eval, ev = eval_losses("single"), eval_losses(name)
    assert len(ref_eval) == len(ev) == 2, (name, ref_eval, ev)
    if name != "dp2_accum2":  # an evaluation covers micro_batch_size x dp x eval.batches rows
        rel = max([rel] + [abs(a - b) / abs(a) for a, b in zip(ref_eval, ev)])
    close, text = run_files.params_close(ref_params, params, drift=20 * 1e-3)  # lr x steps
    ok = rel <= 1e-5 and close
    failed |= not ok
    print(f"{'ok' if ok else 'FAIL'}: {name}: losses within {rel:.2e} relative, {text}")

# memory per rank: parameters and gradients fall as 1/tp, ZeRO-1 optimizer state as 1/(tp dp)
p1, g1, o1, _ = memory("single")
for name, tp, dp, zero in [("tp2", 2, 1, 1), ("dp2", 1, 2, 1), ("dp2_allreduce", 1, 2, 0),
                           ("tp2dp2", 2, 2, 1)]:
    p, g, o, _ = memory(name)
    shard = tp * (dp if zero else 1)
    ok = abs(p * tp / p1 - 1) < 0.03 and abs(o * shard / o1 - 1) < 0.03 and g == p
    failed |= not ok
    print(f"{'ok' if ok else 'FAIL'}: {name}: parameters {p} MiB (x{p1 / p:.2f} less), "
          f"optimizer {o} MiB (x{o1 / o:.2f} less)")
sys.exit(1 if failed else 0)
PY
