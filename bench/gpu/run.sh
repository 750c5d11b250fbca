#!/usr/bin/env bash
# run.sh: the GPU checks and the PyTorch comparison in one call on a GPU node, from the repo root
# (with .devdeps sourced where the node lacks build dependencies): tests/gpu/run.sh (build, every
# op and the model against the CPU, CPU/GPU loss curves; STEPS steps, default 100), then
# bench/gpu/bench_torch.py with that build: dstrain and PyTorch eager (RUNS) side by side on
# SHAPES (default both benchmark shapes). Logs and tables under OUT (default $BUILD/logs); the
# tables are printed last. Exit 1 when a check failed.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
export BUILD=${BUILD:-/tmp/dstrain-gpu} OUT=${OUT:-${BUILD}/logs} STEPS=${STEPS:-100}
mkdir -p "$OUT"
bash "$SRC/tests/gpu/run.sh" > "$OUT/gpu_checks.txt" 2>&1
status=$?
python3 "$SRC/bench/gpu/bench_torch.py" --dstrain "$BUILD/dstrain" \
    --shapes "${SHAPES:-coder-1.3b,llm-7b}" --runs "${RUNS:-dstrain,torch-eager}" \
    --steps "${BENCH_STEPS:-4}" --warmup 2 --timeout "${BENCH_TIMEOUT:-240}" \
    --log "$OUT/bench_torch.log" > "$OUT/bench_torch.txt" 2>&1 || status=1
sed -n '/==== summary ====/,$p' "$OUT/gpu_checks.txt"
grep -E '\| FAIL \|' "$OUT/gpu_checks.txt" | head -20
tail -8 "$OUT/bench_torch.txt"
exit $status
