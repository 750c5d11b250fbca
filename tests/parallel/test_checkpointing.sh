#!/usr/bin/env bash
# test_checkpointing.sh: train.activation_checkpointing changes memory, never the training.
# The tiny preset on the bundled data, 20 steps, without it, with it (true) and selective, as one
# process and under mpirun at tp=2 (the recomputed forward does the same all-reduces on every
# rank): per-step and eval losses identical, final parameters bitwise identical; the per-rank
# memory line shows smaller activations with it (selective: between none and true) and the same
# parameters, gradients and optimizer state.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-checkpointing"
rm -rf "$work" && mkdir -p "$work"
common=(train.steps=20 train.seq_len=32 train.micro_batch_size=4 log.every=5 optim.lr=1e-3
        run.save_final=true export.enabled=false checkpoint.every=0 eval.every=10 eval.batches=2
        data.eval="$SRC/data/bundled/kjv-eval.h5")

run() { # name np tp checkpointing
  local name=$1 np=$2 tp=$3 ckpt=$4
  local args=("${common[@]}" run.dir="$work/$name" parallel.tp="$tp"
              train.activation_checkpointing="$ckpt")
  if [ "$np" = 1 ]; then
    "$DSTRAIN" train "${args[@]}" >"$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
  else
    mpi_run "$np" "$work/$name.log" train "${args[@]}" || { cat "$work/$name.log"; exit 1; }
  fi
}

run single_off 1 1 false
run single_on 1 1 true
run single_sel 1 1 selective
run tp2_off 2 2 false
run tp2_on 2 2 true
run tp2_sel 2 2 selective
grep -q "activation_checkpointing: true" "$work/single_on/config.yaml" ||
  { echo "FAIL: the resolved config does not show the key"; cat "$work/single_on.log"; exit 1; }
grep -q "activation_checkpointing: selective" "$work/single_sel/config.yaml" ||
  { echo "FAIL: the resolved config does not show selective"; cat "$work/single_sel.log"; exit 1; }

python3 - "$work" <<'PY'
import json, re, struct, sys
work = sys.argv[1]

def metrics(name, key):
    with open(f"{work}/{name}/metrics.jsonl") as f:
        return [json.loads(l)[key] for l in f if f'"{key}"' in l]

def tensors(name):
    with open(f"{work}/{name}/final.safetensors", "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}

def memory(name):
    text = open(f"{work}/{name}.log").read()
    m = re.search(r"memory per rank: parameters ([\d.]+) MiB, gradients ([\d.]+) MiB, "
                  r"optimizer ([\d.]+) MiB, activations ([\d.]+) MiB", text)
    assert m, name
    return [float(x) for x in m.groups()]

failed = False
for layout, mode in [("single", "on"), ("single", "sel"), ("tp2", "on"), ("tp2", "sel")]:
    off, on = f"{layout}_off", f"{layout}_{mode}"
    loss_off, loss_on = metrics(off, "loss"), metrics(on, "loss")
    eval_off, eval_on = metrics(off, "eval_loss"), metrics(on, "eval_loss")
    t_off, t_on = tensors(off), tensors(on)
    same_params = t_off.keys() == t_on.keys() and all(t_off[k] == t_on[k] for k in t_off)
    p0, g0, o0, a0 = memory(off)
    p1, g1, o1, a1 = memory(on)
    ok = (len(loss_off) == 20 and loss_off == loss_on and len(eval_off) == 2 and
          eval_off == eval_on and loss_off[-1] < loss_off[0] - 1.0 and same_params and
          (p0, g0, o0) == (p1, g1, o1) and
          (a1 < a0 * 0.75 if mode == "on" else memory(f"{layout}_on")[3] < a1 < a0))
    failed |= not ok
    print(f"{'ok' if ok else 'FAIL'}: {layout}, {mode}: 20 losses {'identical' if loss_off == loss_on else 'DIFFER'} "
          f"({loss_off[0]:.6f} -> {loss_off[-1]:.6f}), eval losses {eval_off} vs {eval_on}, "
          f"final parameters {'bitwise identical' if same_params else 'DIFFER'}, "
          f"activations {a0} -> {a1} MiB")
    if not ok:
        print("  losses without:", loss_off, "\n  losses with:   ", loss_on)
sys.exit(1 if failed else 0)
PY
