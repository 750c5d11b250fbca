#!/usr/bin/env bash
# run.sh: the DeepSeek MoE benchmark in one call on a GPU node, from the repo root (with .devdeps
# sourced where the node lacks build dependencies): builds dstrain (and gpu_test_experts when
# TESTS=1, and runs it first), then bench/moe/bench_torch.py: a V2-Lite-shaped model of LAYERS
# layers (default 8) at BATCH x SEQ (default 4 x 2048) trained by dstrain and by transformers
# (RUNS, default dstrain,torch-eager,torch-compile; dstrain:loop is dstrain with its experts one
# by one; WARMUP untimed steps first, default 5: dstrain's first steps settle its matmul plans),
# then with TESTS=1 tests/gpu/moe.sh (MOE_STEPS steps, default 50). Logs, JSON and
# the table under OUT (default $BUILD/logs); the table is printed last. Exit 1 when a check or
# the benchmark failed.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
export BUILD=${BUILD:-/tmp/dstrain-gpu}
OUT=${OUT:-$BUILD/logs}
mkdir -p "$OUT"
status=0
targets="dstrain"
[ "${TESTS:-0}" = 1 ] && targets="dstrain gpu_test_experts"
if ! { cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        > "$OUT/build.log" 2>&1 && cmake --build "$BUILD" -j"$(nproc)" --target $targets \
        >> "$OUT/build.log" 2>&1; }; then
    tail -40 "$OUT/build.log"
    exit 1
fi
[ "${TESTS:-0}" = 1 ] && { "$BUILD/gpu_test_experts" > "$OUT/gpu_test_experts.txt" 2>&1 || status=1; }
python3 "$SRC/bench/moe/bench_torch.py" --dstrain "$BUILD/dstrain" --layers "${LAYERS:-8}" \
    --batch "${BATCH:-4}" --seq "${SEQ:-2048}" \
    --runs "${RUNS:-dstrain,torch-eager,torch-compile}" --steps "${BENCH_STEPS:-3}" \
    --warmup "${WARMUP:-5}" --timeout "${BENCH_TIMEOUT:-200}" --budget "${BENCH_BUDGET:-1e9}" \
    --log "$OUT/bench_torch.log" --json "$OUT/bench_moe.json" > "$OUT/bench_torch.txt" 2>&1 \
    || status=1
if [ "${TESTS:-0}" = 1 ]; then
    STEPS=${MOE_STEPS:-50} OUT="$OUT" bash "$SRC/tests/gpu/moe.sh" > "$OUT/moe.txt" 2>&1 || status=1
    grep -E '\| (FAIL|PASS) \|' "$OUT/gpu_test_experts.txt" | grep -c PASS | sed 's/^/gpu_test_experts PASS rows: /'
    grep -E '\| FAIL \|' "$OUT/gpu_test_experts.txt" | head -20
    tail -3 "$OUT/gpu_test_experts.txt"
    cat "$OUT/moe-summary.txt" 2>/dev/null
fi
tail -8 "$OUT/bench_torch.txt"
exit $status
