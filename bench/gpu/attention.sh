#!/usr/bin/env bash
# attention.sh: the attention checks and timings in one call on a GPU node, from the repo root
# (with .devdeps sourced): builds gpu_test_ops and gpu_bench_ops (Release, sm_90; BUILD, default
# /tmp/b), runs gpu_test_ops (the attention kernels against the CPU), gpu_bench_ops 8 2048
# attention (dstrain's default attention beside the mma.sync kernels, three shapes) and
# bench_sdpa.py (PyTorch's SDPA on the same shapes), then prints the attention rows last. Logs
# under OUT. TESTS=0 skips gpu_test_ops. PREV=file: also builds (in parallel, in /tmp/prev and
# PREV_BUILD, default /tmp/bp) and times this tree with kernels/cuda/attention_wgmma.cu replaced
# by that file, e.g. `git show HEAD:kernels/cuda/attention_wgmma.cu`: the previous kernels in the
# same call.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-/tmp/b}
PREV_BUILD=${PREV_BUILD:-/tmp/bp}
OUT=${OUT:-$BUILD/logs}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
prev_pid=
if [ -n "${PREV:-}" ]; then
    rm -rf /tmp/prev && mkdir -p /tmp/prev
    tar -C "$SRC" --exclude=./.git --exclude=./.devdeps -cf - . | tar -C /tmp/prev -xf -
    cp "$PREV" /tmp/prev/kernels/cuda/attention_wgmma.cu
    { cmake -S /tmp/prev -B "$PREV_BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 &&
        cmake --build "$PREV_BUILD" -j6 --target gpu_bench_ops; } > "$OUT/build_prev.log" 2>&1 &
    prev_pid=$!
fi
if ! { cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 &&
    cmake --build "$BUILD" -j"$(nproc)" --target gpu_test_ops gpu_bench_ops; } > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30
    echo "build failed"
    exit 1
fi
grep -E "C75[0-9][0-9]|warning.*wgmma" "$OUT/build.log" | head -5
if [ "${TESTS:-1}" = 1 ]; then
    timeout 300 "$BUILD/gpu_test_ops" > "$OUT/ops.txt" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    echo "gpu_test_ops rc $rc: $(grep -c '| PASS |' "$OUT/ops.txt") passed, $(grep -c '| FAIL |' "$OUT/ops.txt") failed"
    grep -E '\| FAIL \|' "$OUT/ops.txt" | head -20
    grep -E 'attention' "$OUT/ops.txt" | grep -E 'B1 T2048 H16|B2 T191' | head -12
fi
timeout 200 "$BUILD/gpu_bench_ops" 8 2048 attention > "$OUT/bench_ops.txt" 2>&1 || status=1
if [ -n "$prev_pid" ]; then
    if wait "$prev_pid"; then
        timeout 200 "$PREV_BUILD/gpu_bench_ops" 8 2048 attention > "$OUT/bench_prev.txt" 2>&1 ||
            status=1
    else
        echo "previous build failed (build_prev.log)"
        status=1
    fi
fi
timeout 200 python3 "$SRC/bench/gpu/bench_sdpa.py" > "$OUT/sdpa.txt" 2>&1 || status=1
echo "== this tree"
grep -E 'attention|op \(' "$OUT/bench_ops.txt"
if [ -n "$prev_pid" ] && [ -f "$OUT/bench_prev.txt" ]; then
    echo "== previous ($PREV)"
    grep -E 'flash' "$OUT/bench_prev.txt"
fi
cat "$OUT/sdpa.txt"
exit $status
