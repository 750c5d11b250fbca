#!/usr/bin/env bash
# test_continual_layouts.sh: a continual-learning sequence (3 tasks, EWC and replay on) gives the
# same results at every parallel layout: np=1, tp=2, dp=2 (with and without ZeRO-1) and
# tp=2 x dp=2, for a classification sequence and a causal-LM one. Asserts the R matrix, per-step
# losses and EWC penalties (1e-5 relative) and final parameters (1e-5, but for elements whose
# gradient is rounding noise: tests/run_files.py's params_close), that the saved state
# (EWC Fisher and anchor, replay buffer) and the end-of-run HF export (fp32, put together from
# the slices) are the same whatever layout wrote them, and that a state
# written at one layout loads at another with the same second run. Also: the per-rank memory
# line carries the EWC state (Fisher and anchor: as large as the Adam moments, so 1/(tp x dp)
# with ZeRO-1), and a failing rank takes the job down. The global batch is 4 rows everywhere:
# micro_batch_size is per data-parallel rank (4 / dp), half of each batch replayed.
# On a GPU node (by hand, not in ctest): DSTRAIN_DEVICE=cuda and, with 2 GPUs, MAX_NP=2 (the
# layouts of more ranks than GPUs are left out); see tests/parallel/gpu_continual.sh.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-continual"
device=${DSTRAIN_DEVICE:-cpu}
layouts=(tp2 dp2 dp2_allreduce tp2dp2)
big=tp2dp2 # the layout of the most ranks, for the state carried across layouts
if [ "${MAX_NP:-4}" -lt 4 ]; then layouts=(tp2 dp2 dp2_allreduce); big=dp2; fi
rm -rf "$work" && mkdir -p "$work" && cd "$work"

python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(7)
def write(path, rows, labels=None, vocab=24):
    n, t = rows.shape
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * t
        if labels is not None: f["labels"] = labels.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = vocab
# classification: the label is which third of the tokens dominates, shifted per task
for k in range(3):
    for name, n in (("train", 64), ("test", 22)):
        y = rng.integers(0, 3, n)
        write(f"c{k}-{name}.h5", (rng.integers(0, 6, (n, 16)) + 6 * y[:, None] + 5 * k) % 20, y)
# causal LM: per task a different repeating pattern with noise
for k in range(3):
    for name, n in (("train", 48), ("test", 16)):
        base = (np.arange(24)[None, :] * (k + 2) + rng.integers(0, 3, (n, 1))) % 24
        noise = rng.integers(0, 24, (n, 24))
        write(f"l{k}-{name}.h5", np.where(rng.random((n, 24)) < 0.2, noise, base))
PY
mkdir -p model
cat > model/config.json <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 24,
 "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
 "num_key_value_heads": 2, "max_position_embeddings": 32, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "tie_word_embeddings": false}
JSON
for c in c l; do
  {
    echo "tasks:"
    for k in 0 1 2; do echo "  - {id: t$k, train: $c$k-train.h5, eval: $c$k-test.h5, steps: 5}"; done
  } > "$c-tasks.yaml"
done
printf 'tasks:\n  - {id: next, train: c0-train.h5, eval: c0-test.h5, steps: 4}\n' > c-next.yaml

# optim.eps 1e-6: AdamW divides by sqrt(v) + eps, so an element whose gradient is near zero
# turns the layouts' summation-order noise (1e-7 of the largest gradients) into a step of up to
# lr; eps 1e-6 bounds that gain, and the parameters then measure the layouts, not the noise
common=(device="$device" model.path=model model.random_init=true train.seq_len=16 optim.lr=1e-3
        optim.eps=1e-6
        optim.warmup_steps=1 log.every=100 checkpoint.every=0 export.enabled=true export.dtype=fp32
        run.save_final=true eval.batches=2 continual.ewc.enabled=true continual.ewc.lambda=50
        continual.ewc.fisher.samples=6 continual.replay.capacity=16 continual.replay.ratio=0.5)
cls=(task.type=classification task.num_labels=3 continual.tasks=c-tasks.yaml)
lm=(continual.tasks=l-tasks.yaml)

run() { # name np tp dp zero args...
  local name=$1 np=$2 tp=$3 dp=$4 zero=$5
  shift 5
  local args=("${common[@]}" "$@" run.dir="$work/$name" parallel.tp="$tp" parallel.zero="$zero"
              train.micro_batch_size=$((4 / dp)))
  if [ "$np" = 1 ]; then
    "$DSTRAIN" train "${args[@]}" >"$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
  else
    mpi_run "$np" "$work/$name.log" train "${args[@]}" || { cat "$work/$name.log"; exit 1; }
  fi
  grep -q "^dstrain: $np ranks (tp $tp x dp $dp, zero $((dp > 1 ? zero : 0)))" "$work/$name.log" ||
    { echo "FAIL: $name: no memory line for tp $tp x dp $dp"; cat "$work/$name.log"; exit 1; }
}

for case in cls lm; do
  declare -n extra=$case
  run "$case-single" 1 1 1 1 "${extra[@]}"
  run "$case-tp2" 2 2 1 1 "${extra[@]}"
  run "$case-dp2" 2 1 2 1 "${extra[@]}"
  run "$case-dp2_allreduce" 2 1 2 0 "${extra[@]}"
  [ "$big" = tp2dp2 ] && run "$case-tp2dp2" 4 2 2 1 "${extra[@]}"
done
# a state written at one layout, loaded at another: the same second run
run next-from-single-at-single 1 1 1 1 "${cls[@]}" continual.tasks=c-next.yaml \
  continual.state="$work/cls-single/continual-state"
run next-from-big-at-single 1 1 1 1 "${cls[@]}" continual.tasks=c-next.yaml \
  continual.state="$work/cls-$big/continual-state"
if [ "$big" = tp2dp2 ]; then
  run next-from-single-at-big 4 2 2 1 "${cls[@]}" continual.tasks=c-next.yaml \
    continual.state="$work/cls-single/continual-state"
else
  run next-from-single-at-big 2 1 2 1 "${cls[@]}" continual.tasks=c-next.yaml \
    continual.state="$work/cls-single/continual-state"
fi
run next-from-dp2-at-tp2 2 2 1 1 "${cls[@]}" continual.tasks=c-next.yaml \
  continual.state="$work/cls-dp2/continual-state"

python3 - "$work" "$big" "${layouts[@]}" <<'PY'
import json, os, re, struct, sys
import h5py
import numpy as np
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests"))
import run_files
work, big, layouts = sys.argv[1], sys.argv[2], sys.argv[3:]
DRIFT = 15 * 1e-3  # lr x steps: how far an element whose gradient is rounding noise may go
failed = False

def report(ok, text):
    global failed
    failed |= not ok
    print(f"{'ok' if ok else 'FAIL'}: {text}")

def steps(name):
    with open(f"{work}/{name}/metrics.jsonl") as f:
        return [json.loads(l) for l in f if '"loss"' in l]

def R(name):
    return json.load(open(f"{work}/{name}/continual.json"))["R"]

def read_st(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__"), path
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=np.float32).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}

def tensors(name):
    return read_st(f"{work}/{name}/final.safetensors")

def export(name):
    import glob, os
    out = {}
    for path in sorted(glob.glob(f"{work}/{name}/export/*.safetensors")):
        out.update(read_st(path))
    config = json.load(open(f"{work}/{name}/export/config.json"))
    return out, config

def rel(a, b, floor=0.0):
    return abs(a - b) / max(abs(a), floor) if a != b else 0.0

def compare(ref, name, n_steps):
    s0, s1 = steps(ref), steps(name)
    assert len(s0) == len(s1) == n_steps, (name, len(s0), len(s1))
    loss = max(rel(a["loss"], b["loss"]) for a, b in zip(s0, s1))
    pen = max(rel(a["ewc_penalty"], b["ewc_penalty"], 1e-3) for a, b in zip(s0, s1))
    rows = all(a["replay_rows"] == b["replay_rows"] for a, b in zip(s0, s1))
    r0, r1 = R(ref), R(name)
    rdiff = max(abs(a - b) for x, y in zip(r0, r1) for a, b in zip(x, y) if a is not None)
    pclose, ptext = run_files.params_close(tensors(ref), tensors(name), drift=DRIFT)
    e0, c0 = export(ref)
    e1, c1 = export(name)
    eclose, etext = run_files.params_close(e0, e1, drift=DRIFT)
    eclose = eclose and len(e0) > 0 and c0 == c1
    ok = loss <= 1e-5 and pen <= 1e-5 and rows and rdiff <= 1e-5 and pclose and eclose
    report(ok, f"{name}: losses within {loss:.2e}, EWC penalties within {pen:.2e} relative, "
               f"R within {rdiff:.2e}; {ptext}; export: {etext} ({c1.get('architectures')})")
    return s0

for case in ["cls", "lm"]:
    ref = f"{case}-single"
    s = steps(ref)
    # the run is not trivial: EWC bites after the first task, replay rows in every later batch
    report(len(s) == 15 and all(x["ewc_penalty"] == 0 for x in s[:5]) and
           all(x["ewc_penalty"] > 0 for x in s[6:10] + s[11:]) and
           all(x["replay_rows"] == 2 for x in s[1:]) and s[0]["replay_rows"] == 0,
           f"{ref}: EWC penalty after the first task, 2 of 4 rows replayed")
    for layout in layouts:
        compare(ref, f"{case}-{layout}", 15)
    # the state each layout wrote: the same Fisher, anchor and replay buffer
    with h5py.File(f"{work}/{ref}/continual-state/ewc.h5") as f0:
        for layout in sorted({"tp2", "dp2", big}):
            with h5py.File(f"{work}/{case}-{layout}/continual-state/ewc.h5") as f1:
                # anchors are parameters (params_close); the Fisher, squared gradients at
                # parameters that agree to 1e-5, within 1e-4 of each tensor's largest element
                fw = 0.0
                for k in f0["fisher_0"]:
                    a, b = f0["fisher_0"][k][()], f1["fisher_0"][k][()]
                    fw = max(fw, float(np.max(np.abs(a - b))) / max(float(np.max(a)), 1e-30))
                same = set(f0["fisher_0"]) == set(f1["fisher_0"]) == set(f1["anchor_0"])
                aclose, atext = run_files.params_close(
                    {k: f0["anchor_0"][k][()] for k in f0["anchor_0"]},
                    {k: f1["anchor_0"][k][()] for k in f1["anchor_0"]}, drift=DRIFT)
                report(same and fw <= 1e-4 and aclose and f1.attrs["format"] == 2,
                       f"{case}-{layout}: EWC state file matches np=1: Fisher within {fw:.2e} "
                       f"of its largest, anchor {atext}")
    with h5py.File(f"{work}/{ref}/continual-state/replay-rank-00000.h5") as f0:
        for layout in sorted({"dp2", big}):
            with h5py.File(f"{work}/{case}-{layout}/continual-state/replay-rank-00000.h5") as f1:
                same = all(np.array_equal(f0[k][()], f1[k][()])
                           for k in ["inputs", "targets", "loss_mask", "labels", "task_ids"])
                same &= list(f0.attrs["meta"]) == list(f1.attrs["meta"])
                report(same and f0["inputs"].shape[0] == 16,
                       f"{case}-{layout}: the replay buffer saved is the one of np=1")

# state across layouts: the second run starts with the penalty on and replay from step 1
ref = steps("next-from-single-at-single")
report(ref[0]["ewc_penalty"] > 0 and ref[0]["replay_rows"] == 2, "second run starts from the state")
for name in ["next-from-big-at-single", "next-from-single-at-big", "next-from-dp2-at-tp2"]:
    compare("next-from-single-at-single", name, 4)

# the memory line: EWC state as large as the optimizer's (one Fisher and one anchor per
# element of the moments' shard), so it shrinks as 1/(tp x dp) with ZeRO-1
def memory(name):
    text = open(f"{work}/{name}.log").read()
    m = re.search(r"optimizer ([\d.]+) MiB, activations [\d.]+ MiB, EWC ([\d.]+) MiB "
                  r"\(Fisher and anchor x 1\)", text)
    assert m, name
    return float(m.group(1)), float(m.group(2))
o1, e1 = memory("cls-single")
for name, shard in [("cls-single", 1), ("cls-tp2", 2), ("cls-dp2", 2), ("cls-dp2_allreduce", 1),
                    ("cls-tp2dp2", 4)][:len(layouts) + 1]:
    o, e = memory(name)
    report(e == o and abs(e * shard / e1 - 1) < 0.25,
           f"{name}: EWC {e} MiB = optimizer {o} MiB (x{e1 / e:.2f} less than np=1)")
sys.exit(1 if failed else 0)
PY

# a rank that fails takes the job down with its message, no hang
set +e
DSTRAIN_FAIL_RANK=1 mpi_run 2 "$work/fail.log" train "${common[@]}" "${cls[@]}" \
  run.dir="$work/fail" parallel.dp=2 train.micro_batch_size=2
rc=$?
set -e
if [ $rc -ne 0 ] && grep -q "injected failure on rank 1" "$work/fail.log"; then
  echo "ok: a failing rank ends the continual job (exit $rc)"
else
  echo "FAIL: failing rank: exit $rc"; cat "$work/fail.log"; exit 1
fi
