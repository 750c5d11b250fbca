#!/usr/bin/env bash
# scaling.sh: data- and tensor-parallel scaling of training on one GPU node, run by hand there
# (CI has no GPU). From the repository root: builds (unless DSTRAIN is given), then trains the
# same model at 1 GPU, dp = 2 and tp = 2 (one rank per GPU over NCCL) and prints tokens/s and
# the efficiency against linear:
#   dp: tokens/s at dp 2 (same micro-batch per rank) / (2 x tokens/s on 1 GPU)
#   tp: tokens/s at tp 2 (same batch as 1 GPU)      / (2 x tokens/s on 1 GPU)
# Step time is the median of steps 2..STEPS from metrics.jsonl (step 1 warms up).
# Environment: PRESET (deepseek-coder-1.3b), B (micro-batch, 4), T (2048), STEPS (5),
# PRECISION (the config key precision: bf16), BUILD (/tmp/dstrain-scaling), OUT (where logs go).
set -uo pipefail
PRESET=${PRESET:-deepseek-coder-1.3b} B=${B:-4} T=${T:-2048} STEPS=${STEPS:-5}
BUILD=${BUILD:-/tmp/dstrain-scaling} OUT=${OUT:-/tmp/dstrain-scaling-out}
PRECISION=${PRECISION:-bf16}
mkdir -p "$OUT"
[ -f .devdeps/activate ] && source .devdeps/activate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
if [ -z "${DSTRAIN:-}" ]; then
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        > "$OUT/cmake.log" 2>&1 && cmake --build "$BUILD" -j"$(nproc)" --target dstrain \
        > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
    DSTRAIN=$BUILD/dstrain
fi
gpus=$(nvidia-smi -L | wc -l)
[ "$gpus" -ge 2 ] || { echo "scaling.sh: needs 2 GPUs, this node has $gpus"; exit 1; }
runs=/dev/shm/dstrain-scaling # the end-of-run checkpoint goes to memory
common=(device=cuda model.preset="$PRESET" train.seq_len="$T" train.steps="$STEPS" log.every=1
        export.enabled=false precision="$PRECISION")

# run NAME NP ARGS...: train, print "NAME tokens/s step_s"
run() {
    local name=$1 np=$2; shift 2
    rm -rf "$runs/$name"
    local launch=()
    [ "$np" -gt 1 ] && launch=(mpirun -np "$np")
    timeout 300 "${launch[@]}" "$DSTRAIN" train "${common[@]}" run.dir="$runs/$name" "$@" \
        > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -m1 "memory per rank" "$OUT/$name.log"
    python3 - "$runs/$name/metrics.jsonl" "$name" "$rc" <<'PY'
import json, statistics, sys
path, name, rc = sys.argv[1:]
try:
    rows = [json.loads(l) for l in open(path) if '"loss"' in l]
    st = statistics.median(r["step_seconds"] for r in rows[1:])
    tokens = rows[-1]["tokens_per_second"] * rows[-1]["step_seconds"]
    print(f"RESULT {name} {tokens / st:.0f} {st:.4f} rc={rc}")
except Exception as e:
    print(f"RESULT {name} 0 0 rc={rc} ({e})")
PY
    rm -rf "$runs/$name"
}
{
    run gpu1 1 train.micro_batch_size="$B"
    run dp2 2 train.micro_batch_size="$B" parallel.tp=1
    run tp2 2 train.micro_batch_size="$B" parallel.tp=2
} | tee "$OUT/results.txt"
python3 - "$OUT/results.txt" "$PRESET" "$B" "$T" <<'PY'
import sys
res = {l.split()[1]: (float(l.split()[2]), float(l.split()[3])) for l in open(sys.argv[1]) if l.startswith("RESULT")}
preset, B, T = sys.argv[2:]
base = res.get("gpu1", (0, 0))[0]
print(f"\n| {preset}, micro-batch {B} x {T} | GPUs | tokens/s | step s | efficiency vs linear |")
print("| --- | --- | --- | --- | --- |")
for name, gpus, label in [("gpu1", 1, "1 GPU"), ("dp2", 2, "dp 2 (batch 2x)"), ("tp2", 2, "tp 2 (same batch)")]:
    tok, st = res.get(name, (0, 0))
    eff = tok / (gpus * base) if base else 0
    print(f"| {label} | {gpus} | {tok:.0f} | {st:.3f} | {eff * 100:.1f}% |")
PY
