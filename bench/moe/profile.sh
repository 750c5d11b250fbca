#!/usr/bin/env bash
# profile.sh: where bench/moe's dstrain step goes, on a GPU node without Nsight Systems: runs the
# benchmark's dstrain (bench_torch.py, RUNS, default dstrain) untraced for PLAIN_STEPS steps, then
# once more under cupti_trace.so (CUDA_INJECTION64_PATH: a timeline of every kernel, copy and
# runtime call) for TRACE_STEPS steps, and prints profile_step.py's breakdown of the traced steps.
# Environment: BUILD (dstrain's build dir, built when TRACE_BUILD=1), OUT (logs, trace.tsv.gz),
# TRACE_LIB (cupti_trace.so, built here from cupti_trace.c when missing and cupti.h is found; a
# libcupti.so beside it is used first), PLAIN_STEPS (default 10, 0 = skip), TRACE_STEPS
# (default 6), BENCH_TIMEOUT (default 120). Not a test.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-/tmp/dstrain-gpu}
OUT=${OUT:-$BUILD/logs}
TRACE_LIB=${TRACE_LIB:-$BUILD/cupti_trace.so}
mkdir -p "$OUT"
if [ ! -f "$TRACE_LIB" ]; then
    CUDA=${CUDA_HOME:-/usr/local/cuda}
    inc=$(dirname "$(ls "$CUDA"/include/cupti.h "$CUDA"/extras/CUPTI/include/cupti.h 2>/dev/null |
        head -1)")
    lib=$(dirname "$(ls "$CUDA"/lib64/libcupti.so "$CUDA"/extras/CUPTI/lib64/libcupti.so \
        "$CUDA"/lib/libcupti.so 2>/dev/null | head -1)")
    gcc -O2 -shared -fPIC -o "$TRACE_LIB" "$SRC/bench/moe/cupti_trace.c" -I"$inc" -I"$CUDA/include" \
        -L"$lib" -lcupti || { echo "profile.sh: cannot build cupti_trace.so"; exit 1; }
fi
steps_plain=${PLAIN_STEPS:-10}
steps_trace=${TRACE_STEPS:-6}
bench() { # steps, log name, extra env...
    local steps=$1 name=$2
    shift 2
    env "$@" python3 "$SRC/bench/moe/bench_torch.py" --dstrain "$BUILD/dstrain" \
        --runs "${RUNS:-dstrain}" --steps "$steps" --warmup 2 --timeout "${BENCH_TIMEOUT:-120}" \
        --log "$OUT/$name.log" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
    grep -E '^dstrain' "$OUT/$name.txt" | cut -c1-400
}
[ "$steps_plain" -gt 0 ] && bench "$steps_plain" plain
libdir=$(dirname "$TRACE_LIB")
bench "$steps_trace" traced CUDA_INJECTION64_PATH="$TRACE_LIB" CUPTI_TRACE_OUT="$OUT/trace.tsv" \
    LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
python3 "$SRC/bench/moe/profile_step.py" "$OUT/trace.tsv" --skip 2 > "$OUT/profile.txt" 2>&1
gzip -f "$OUT/trace.tsv"
cat "$OUT/profile.txt"
