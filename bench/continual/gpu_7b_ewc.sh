#!/usr/bin/env bash
# gpu_7b_ewc.sh: deepseek-llm-7b (random weights) through a two-task continual sequence with EWC
# on a node with 2 GPUs, the EWC state and the fused AdamW + EWC update on the device: dp 2 with
# ZeRO-1, activation checkpointing, micro-batch 1 x 4096, online EWC with the Fisher over a
# handful of examples, a few steps a task on small generated token files. Prints a table: step
# time per task (from time-stamped progress lines), Fisher pass time, peak memory of each GPU
# (nvidia-smi every 300 ms, whole device: CUDA context, NCCL and cuBLASLt included) and the
# memory estimate dstrain prints at start. Run by hand from the repo root (not in ctest):
#     bash bench/continual/gpu_7b_ewc.sh
# Environment: BUILD (build dir, /tmp/dstrain-7b-ewc), RUN_ROOT (run directory, data and logs,
# /tmp/dstrain-7b-ewc-run), STEPS (steps a task, 3), FISHER (Fisher examples, 4), PRECISION
# (auto | fp32 | bf16, auto), TIMEOUT (seconds for the run, 3600), CKPT_DIR (see below), FORCE=1
# (run even where the free-space check fails).
# Disk: after each task dstrain writes the EWC state, Fisher and anchor as whole fp32 tensors,
# to <run.dir>/continual-state/ewc.h5 (about 55 GB for 6.9e9 parameters; while the second task's
# state is written the first one's is still there, so about 110 GB at the peak), and no config
# key turns that off: RUN_ROOT must be on a disk with that much room. The end-of-run checkpoint
# (parameters, Adam moments and EWC pair, about 140 GB, and host snapshot buffers of 3 x 28 GB
# per rank) has no off switch either: by default checkpoint.dir names a directory that cannot be
# created, so the run measures everything, fails to open the checkpoint writer at the very end
# and exits 2 with "checkpoint.dir: ... cannot create", which this script expects. Set CKPT_DIR
# to a directory on a disk with room to write it instead.
set -uo pipefail
build=${BUILD:-/tmp/dstrain-7b-ewc}
root=${RUN_ROOT:-/tmp/dstrain-7b-ewc-run}
steps=${STEPS:-3}
fisher=${FISHER:-4}
precision=${PRECISION:-auto}
no_ckpt=/proc/dstrain-no-checkpoint # cannot be created: the final save is skipped
ckpt=${CKPT_DIR:-$no_ckpt}
mkdir -p "$root"
logs=$root/logs
rm -rf "$logs" "$root/run" && mkdir -p "$logs" "$root/data"
source .devdeps/activate
export NCCL_NVLS_ENABLE=0 # never NVLink multicast on shared GPU hosts
# libcjson.pc in .devdeps names /usr/include without a prefix (activate rewrites prefix= lines
# only): where the node has no cJSON headers of its own, point it at the unpacked ones
pc=.devdeps/root/usr/lib/x86_64-linux-gnu/pkgconfig/libcjson.pc
if [ -f "$pc" ] && [ ! -d /usr/include/cjson ]; then
  sed -i "s|=/usr/|=$PWD/.devdeps/root/usr/|" "$pc"
fi

# ---- room on the disks --------------------------------------------------------------------
free_gb() { df -P -B1G "$1" | awk 'NR == 2 {print $4}'; }
if [ "$(free_gb "$root")" -lt 120 ] && [ "${FORCE:-0}" != 1 ]; then
  echo "gpu_7b_ewc: $root has $(free_gb "$root") GB free; the EWC state needs about 110 GB" \
    "(set RUN_ROOT to a larger disk, or FORCE=1)"
  exit 1
fi
if [ "$ckpt" != "$no_ckpt" ]; then
  mkdir -p "$ckpt"
  if [ "$(free_gb "$ckpt")" -lt 150 ] && [ "${FORCE:-0}" != 1 ]; then
    echo "gpu_7b_ewc: $ckpt has $(free_gb "$ckpt") GB free; the final checkpoint needs ~140 GB"
    exit 1
  fi
fi

# ---- build --------------------------------------------------------------------------------
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DDSTRAIN_TESTS=OFF >"$logs/cmake.log" 2>&1 &&
  cmake --build "$build" -j"$(nproc)" --target dstrain >"$logs/build.log" 2>&1 ||
  { tail -30 "$logs/build.log" "$logs/cmake.log"; exit 1; }
dstrain=$build/dstrain
nvidia-smi -L
gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -lt 2 ]; then echo "gpu_7b_ewc: needs 2 GPUs, found $gpus"; exit 1; fi

# ---- data: two tasks of random tokens from different parts of the vocabulary --------------
# long documents, so that each 4096-token window lies inside one; token ids < 102400
python3 - "$root/data" <<'PY' || exit 1
import json, random, sys
out = sys.argv[1]
rng = random.Random(7)
for task, (lo, hi) in (("a", (1000, 30000)), ("b", (60000, 100000))):
    for split, docs in (("train", 8), ("eval", 2)):
        with open(f"{out}/{task}-{split}.jsonl", "w") as f:
            for _ in range(docs):
                f.write(json.dumps({"input_ids": [rng.randrange(lo, hi) for _ in range(9000)]}))
                f.write("\n")
PY
for f in a-train a-eval b-train b-eval; do
  "$dstrain" pack --input "$root/data/$f.jsonl" --output "$root/data/$f.h5" --vocab-size 102400 \
    >>"$logs/pack.log" 2>&1 || { cat "$logs/pack.log"; exit 1; }
done
cat >"$root/data/tasks.yaml" <<YAML
tasks:
  - {id: a, train: $root/data/a-train.h5, eval: $root/data/a-eval.h5, steps: $steps}
  - {id: b, train: $root/data/b-train.h5, eval: $root/data/b-eval.h5, steps: $steps}
YAML

# ---- the run --------------------------------------------------------------------------------
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 300 \
  >"$logs/memory.csv" &
sampler=$!
# each rank gets half the cores for the host side (Fisher squares, staging, HDF5); no binding,
# or Open MPI would pin each rank and its OpenMP threads to one core. stdbuf: rank 0's progress
# lines leave at once, so that their time stamps are the steps' ends.
export OMP_NUM_THREADS=$(($(nproc) / 2)) OPENBLAS_NUM_THREADS=1
t0=$(date +%s.%N)
timeout "${TIMEOUT:-3600}" mpirun --allow-run-as-root -np 2 --bind-to none \
  -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
  stdbuf -oL -eL "$dstrain" train \
  model.preset=deepseek-llm-7b model.random_init=true device=cuda precision="$precision" \
  parallel.tp=1 parallel.dp=2 parallel.zero=1 train.activation_checkpointing=true \
  train.micro_batch_size=1 train.seq_len=4096 train.grad_accum=1 optim.warmup_steps=1 \
  task.type=causal_lm continual.tasks="$root/data/tasks.yaml" \
  continual.ewc.enabled=true continual.ewc.mode=online continual.ewc.lambda=100 \
  continual.ewc.fisher.type=empirical continual.ewc.fisher.samples="$fisher" \
  continual.replay.capacity=0 eval.batches=1 log.every=1 export.enabled=false \
  checkpoint.dir="$ckpt" checkpoint.on_error=continue run.dir="$root/run" 2>&1 |
  while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$logs/run.log"
rc=${PIPESTATUS[0]}
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
echo "run: exit $rc after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}') s" \
  "(log: $logs/run.log)"
expected_end=0
if [ "$rc" -ne 0 ] && [ "$ckpt" = "$no_ckpt" ] &&
  grep -q "checkpoint.dir: $no_ckpt: cannot create" "$logs/run.log" &&
  [ "$(grep -c "Fisher over" "$logs/run.log")" -eq 2 ]; then
  expected_end=1 # the skipped final checkpoint, after everything measured
fi
[ "$rc" -eq 0 ] || [ "$expected_end" = 1 ] || { tail -40 "$logs/run.log"; }

# ---- the table ------------------------------------------------------------------------------
python3 - "$logs/run.log" "$logs/memory.csv" <<'PY'
import re, sys
lines = [l.rstrip("\n").split(" ", 1) for l in open(sys.argv[1]) if " " in l]
stamped = [(float(t), text) for t, text in lines]
steps, fisher, estimate = {}, {}, None
prev = stamped[0][0] if stamped else 0.0
for t, text in stamped:
    m = re.match(r"task (\S+) step (\d+)/(\d+)", text)
    if m:
        steps.setdefault(m.group(1), []).append(t - prev)
    m = re.match(r"continual: task (\S+): Fisher over (\d+) examples in ([\d.]+)s", text)
    if m:
        fisher[m.group(1)] = (int(m.group(2)), float(m.group(3)))
    if "memory per rank" in text and estimate is None:
        estimate = text
    prev = t
peak = {}
for row in open(sys.argv[2]):
    parts = [p.strip() for p in row.split(",")]
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        peak[int(parts[0])] = max(peak.get(int(parts[0]), 0), int(parts[1]))
print()
print("| task | steps | step time, each (s) | mean of steps 2.. (s) | Fisher pass |")
print("| --- | --- | --- | --- | --- |")
for task, times in steps.items():
    rest = times[1:] or times
    n, secs = fisher.get(task, (0, float("nan")))
    print(f"| {task} | {len(times)} | {' '.join(f'{x:.2f}' for x in times)} | "
          f"{sum(rest) / len(rest):.2f} | {secs:.1f} s over {n} examples |")
print()
print("| GPU | peak memory (MiB, nvidia-smi) |")
print("| --- | --- |")
for gpu in sorted(peak):
    print(f"| {gpu} | {peak[gpu]} |")
print()
print("estimate:", estimate or "(no estimate line: see the log)")
print("(step 1 of a task also holds the task's setup; the first step of the run the CUDA warm-up)")
PY
[ "$rc" -eq 0 ] || [ "$expected_end" = 1 ]
