#!/usr/bin/env bash
# test_moe_continual.sh: continual learning on a mixture-of-experts model under expert
# parallelism. Three causal-LM tasks on the tiny-moe preset with EWC (the empirical Fisher over 5
# examples: an odd count, so the ranks of a data-parallel group own different numbers of Fisher
# units) and replay, at np=1, at dp=2 with ep=2 and at tp=2 x dp=2 with ep=2. Under expert
# parallelism the ranks of an expert-parallel group pass each Fisher unit together, its owner
# with the examples and the others with zero weights, so that an expert squares one example's
# gradient. Checked: per-step losses within 1e-5 relative; the saved Fisher (every expert's,
# written by the ranks that hold them) within 1e-4 of each tensor's largest element; the
# anchors (the parameters at the task's end) and the final parameters by run_files.params_close
# at 1e-4 (15 AdamW steps of lr 1e-3 under an EWC penalty of lambda 50: the layouts'
# summation-order noise in the Fisher moves the penalty's gradient; 1e-4 is a tenth of one step,
# while an expert missing from the Fisher or counted twice moves its parameters by whole steps),
# a chance few elements whose gradient is rounding noise allowed up to lr x steps.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-moe-continual"
rm -rf "$work" && mkdir -p "$work" && cd "$work"

python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(7)
def write(path, rows, vocab=24):
    n, t = rows.shape
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * t
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = vocab
# per task a different repeating pattern with noise
for k in range(3):
    for name, n in (("train", 48), ("test", 16)):
        base = (np.arange(24)[None, :] * (k + 2) + rng.integers(0, 3, (n, 1))) % 24
        noise = rng.integers(0, 24, (n, 24))
        write(f"l{k}-{name}.h5", np.where(rng.random((n, 24)) < 0.2, noise, base))
PY
{
  echo "tasks:"
  for k in 0 1 2; do echo "  - {id: t$k, train: l$k-train.h5, eval: l$k-test.h5, steps: 5}"; done
} > tasks.yaml

common=(model.preset=tiny-moe train.seq_len=16 optim.lr=1e-3 optim.eps=1e-6
        optim.warmup_steps=1 log.every=100 checkpoint.every=0 export.enabled=false
        run.save_final=true eval.batches=2 continual.ewc.enabled=true continual.ewc.lambda=50
        continual.ewc.fisher.samples=5 continual.replay.capacity=16 continual.replay.ratio=0.5
        continual.tasks=tasks.yaml)
run() { # name np tp dp ep
  local name=$1 np=$2 tp=$3 dp=$4 ep=$5
  local args=("${common[@]}" run.dir="$work/$name" parallel.tp="$tp" parallel.dp="$dp"
              parallel.ep="$ep" train.micro_batch_size=$((4 / dp)))
  if [ "$np" = 1 ]; then
    "$DSTRAIN" train "${args[@]}" >"$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
  else
    mpi_run "$np" "$work/$name.log" train "${args[@]}" || { cat "$work/$name.log"; exit 1; }
  fi
}
run single 1 1 1 1
run ep2 2 1 2 2
run tp2dp2_ep2 4 2 2 2

python3 - "$work" <<'PY'
import os, sys
import h5py
import numpy as np
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests"))
import run_files
work = sys.argv[1]
failed = False
ref = run_files.step_metrics(f"{work}/single")
ref_params = run_files.final_tensors(f"{work}/single")
assert len(ref) == 15, len(ref)

def state(name):
    with h5py.File(f"{work}/{name}/continual-state/ewc.h5") as f:
        return {g: {k: np.array(f[g][k]) for k in f[g]} for g in ("fisher_0", "anchor_0")}

ref_state = state("single")
experts = [k for k in ref_state["fisher_0"] if ".mlp.experts." in k]
assert len(experts) == 3 * 16 * 3, len(experts)  # 3 MoE layers x 16 experts x 3 projections
for name in ["ep2", "tp2dp2_ep2"]:
    m, params, st = run_files.step_metrics(f"{work}/{name}"), run_files.final_tensors(
        f"{work}/{name}"), state(name)
    loss = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, m))
    p_ok, p_text = run_files.params_close(ref_params, params, tol=1e-4, drift=15 * 1e-3)
    same_keys = st["fisher_0"].keys() == ref_state["fisher_0"].keys()
    fw = max(float(np.max(np.abs(st["fisher_0"][k] - v))) / max(float(np.max(v)), 1e-30)
             for k, v in ref_state["fisher_0"].items()) if same_keys else float("inf")
    a_ok, a_text = run_files.params_close(ref_state["anchor_0"], st["anchor_0"], tol=1e-4,
                                          drift=15 * 1e-3)
    ok = len(m) == 15 and loss <= 1e-5 and p_ok and same_keys and fw <= 1e-4 and a_ok
    failed |= not ok
    print(f"{'ok' if ok else 'FAIL'}: {name}: losses within {loss:.2e} relative, Fisher within "
          f"{fw:.2e} of each tensor's largest, anchors: {a_text}; final: {p_text}"
          f"{'' if same_keys else ' (the saved state has other tensors)'}")
sys.exit(1 if failed else 0)
PY
