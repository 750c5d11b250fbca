#!/usr/bin/env bash
# gpu_nccl.sh: the NCCL path on a node with 2 or more GPUs (one rank per GPU), run by hand there
# (not in ctest: CI has no GPU). From the repository root, with the build dependencies the node
# lacks in .devdeps (see the device notes): builds, then
#  1. every collective of comm/ on device buffers, at tp = 1 and tp = 2 (comm_test_comm worker);
#  2. dp = 2 (with and without ZeRO-1) and tp = 2 training on the CUDA backend against one GPU,
#     and expert parallelism (tiny-moe, dp = 2 with ep = 2: tokens dispatched and combined by
#     NCCL send/recv) against one GPU on the same model: per-step losses and final parameters
#     side by side (numbers printed);
#  3. a failing rank (DSTRAIN_FAIL_RANK) ends the NCCL job within 60 s.
set -uo pipefail
build=${BUILD:-/tmp/dstrain-nccl}
out=${OUT:-/tmp/dstrain-nccl-out}
mkdir -p "$out"
source .devdeps/activate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/cmake.log" 2>&1 &&
  cmake --build "$build" -j16 --target dstrain comm_test_comm >"$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log" "$out/cmake.log"; exit 1; }
nvidia-smi -L
for tp in 1 2; do
  echo "== collectives on device buffers, np 2, tp $tp"
  timeout 120 mpirun -np 2 -x DSTRAIN_COMM_WORKER=$tp -x DSTRAIN_COMM_DEVICE=cuda \
    "$build/comm_test_comm" 2>&1 | tail -5
done
common=(device=cuda train.steps=20 train.seq_len=64 log.every=10 run.save_final=true
        export.enabled=false)
echo "== training: 1 GPU, then dp 2 over NCCL"
"$build/dstrain" train "${common[@]}" train.micro_batch_size=8 run.dir="$out/r1" >"$out/r1.log" 2>&1
echo "1 GPU: exit $?"
"$build/dstrain" train "${common[@]}" model.preset=tiny-moe train.micro_batch_size=8 \
  run.dir="$out/r1moe" >"$out/r1moe.log" 2>&1
echo "1 GPU, tiny-moe: exit $?"
# dp 2 halves the micro-batch (same global batch); tp 2 keeps it
for layout in "dp2z1 parallel.zero=1 train.micro_batch_size=4" \
              "dp2z0 parallel.zero=0 train.micro_batch_size=4" \
              "tp2 parallel.tp=2 train.micro_batch_size=8" \
              "ep2 model.preset=tiny-moe parallel.ep=2 train.micro_batch_size=4"; do
  set -- $layout
  name=$1; shift
  timeout 200 mpirun -np 2 "$build/dstrain" train "${common[@]}" "$@" run.dir="$out/$name" \
    >"$out/$name.log" 2>&1
  echo "$name ($*): exit $?"
  grep "memory per rank\|done\|error" "$out/$name.log" | head -5
done
python3 - "$out" <<'PY'
import json, struct, sys
import numpy as np
out = sys.argv[1]
def losses(d): return [json.loads(l)["loss"] for l in open(f"{out}/{d}/metrics.jsonl") if '"loss"' in l]
def tensors(d):
    b = open(f"{out}/{d}/final.safetensors", "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], np.float32) for k, v in h.items() if k != "__metadata__"}
try:
    for d, ref in [("dp2z1", "r1"), ("dp2z0", "r1"), ("tp2", "r1"), ("ep2", "r1moe")]:
        L0, P0 = losses(ref), tensors(ref)
        L, P = losses(d), tensors(d)
        rel = max(abs(a - b) / abs(a) for a, b in zip(L0, L))
        dp = max(float(np.max(np.abs(P[k] - P0[k]))) for k in P0)
        print(f"{d}: {len(L)} steps, losses within {rel:.2e} relative, parameters within {dp:.2e}; "
              f"loss {L[0]:.4f} -> {L[-1]:.4f}")
except Exception as e:
    print("comparison failed:", e)
PY
echo "== a failing rank ends the NCCL job"
start=$SECONDS
DSTRAIN_FAIL_RANK=1 timeout 60 mpirun -np 2 -x DSTRAIN_FAIL_RANK "$build/dstrain" train \
  "${common[@]}" train.micro_batch_size=4 run.dir="$out/fail" >"$out/fail.log" 2>&1
echo "exit $? after $((SECONDS - start)) s"; grep "dstrain: error" "$out/fail.log"
