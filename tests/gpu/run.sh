#!/usr/bin/env bash
# run.sh: the GPU checks, on a GPU node, in one go: builds dstrain with the CUDA backend
# (Release, sm_90), runs tests/gpu/test_gpu_ops.c (every op and the whole model against the CPU
# backend), trains the tiny preset on the bundled data for $STEPS steps on the CPU and on the GPU
# and compares the loss curves, then prints a summary table last. Exit 1 if anything failed.
# Environment: BUILD (build dir, default /tmp/dstrain-gpu), OUT (where logs go, default
# $BUILD/logs), STEPS (default 300), BENCH=1 also times deepseek-coder-1.3b steps with each
# matmul mode of BENCH_MATMUL (default "fp32 bf16"; see kernels/cuda/cuda_ops.h).
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-/tmp/dstrain-gpu}
OUT=${OUT:-$BUILD/logs}
STEPS=${STEPS:-300}
mkdir -p "$BUILD" "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
: > "$OUT/train.log"
status=0
row() { printf '| %-44s | %-48s | %s |\n' "$1" "$2" "$3" | tee -a "$SUMMARY" > /dev/null; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# ---- build ----------------------------------------------------------------------------------
t0=$(date +%s)
if cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        > "$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" -j"$(nproc)" --target dstrain gpu_test_ops >> "$OUT/build.log" 2>&1; then
    row "build (Release, sm_90)" "$(($(date +%s) - t0)) s" PASS
else
    tail -40 "$OUT/build.log"
    row "build (Release, sm_90)" "see build.log" FAIL
    cat "$SUMMARY"
    exit 1
fi

# ---- ops and whole model ----------------------------------------------------------------------
t0=$(date +%s)
timeout 300 "$BUILD/gpu_test_ops" > "$OUT/ops.txt" 2>&1
rc=$?
cat "$OUT/ops.txt"
passed=$(grep -c '| PASS |' "$OUT/ops.txt")
failed=$(grep -c '| FAIL |' "$OUT/ops.txt")
if [ $rc -eq 0 ]; then r=PASS; else r=FAIL; status=1; fi
if [ $rc -ne 0 ] && command -v compute-sanitizer > /dev/null; then
    # a crash or a wrong value: look for bad memory accesses too
    timeout 150 compute-sanitizer --print-limit 5 "$BUILD/gpu_test_ops" > "$OUT/sanitizer.txt" 2>&1
    grep -m 12 -E '^=========' "$OUT/sanitizer.txt"
fi
row "ops + model vs CPU (gpu_test_ops)" "$passed passed, $failed failed, rc $rc, $(($(date +%s) - t0)) s" $r

# ---- training: CPU and GPU loss curves ----------------------------------------------------------
for dev in cpu cuda; do
    rm -rf "$BUILD/train-$dev"
    t0=$(date +%s)
    timeout 240 "$BUILD/dstrain" train device=$dev train.steps="$STEPS" log.every=50 \
        run.dir="$BUILD/train-$dev" > "$BUILD/train-$dev.log" 2>&1
    rc=$?
    tail -3 "$BUILD/train-$dev.log"
    cat "$BUILD/train-$dev.log" >> "$OUT/train.log"
    if [ $rc -eq 0 ]; then r=PASS; else r=FAIL; status=1; fi
    row "train tiny $STEPS steps device=$dev" "rc $rc, $(($(date +%s) - t0)) s" $r
done
python3 - "$BUILD/train-cpu/metrics.jsonl" "$BUILD/train-cuda/metrics.jsonl" "$OUT/curves.tsv" \
    >> "$SUMMARY" <<'EOF' || status=1
import json, sys
def load(path):
    try:
        return {r["step"]: r for r in map(json.loads, open(path)) if "loss" in r}
    except OSError:
        return {}
cpu, gpu = load(sys.argv[1]), load(sys.argv[2])
steps = sorted(set(cpu) & set(gpu))
def row(a, b, c): print("| %-44s | %-48s | %s |" % (a, b, c))
if not steps:
    row("loss curves GPU vs CPU", "no common steps", "FAIL"); sys.exit(1)
diff = [abs(cpu[s]["loss"] - gpu[s]["loss"]) for s in steps]
with open(sys.argv[3], "w") as f:
    f.write("step\tloss_cpu\tloss_cuda\n")
    for s in steps: f.write("%d\t%.6f\t%.6f\n" % (s, cpu[s]["loss"], gpu[s]["loss"]))
tail = diff[-50:]
ok = max(diff) <= 0.05 and sum(tail) / len(tail) <= 0.02
row("loss curves GPU vs CPU (%d steps)" % len(steps),
    "max |d| %.2e, mean |d| last 50 %.2e" % (max(diff), sum(tail) / len(tail)), "PASS" if ok else "FAIL")
last = steps[-1]
row("  loss step 1 -> %d, CPU" % last, "%.4f -> %.4f" % (cpu[steps[0]]["loss"], cpu[last]["loss"]), "")
row("  loss step 1 -> %d, GPU" % last, "%.4f -> %.4f" % (gpu[steps[0]]["loss"], gpu[last]["loss"]), "")
med = lambda xs: sorted(xs)[len(xs) // 2]
row("  median step time CPU / GPU", "%.2f ms / %.2f ms" % (
    1e3 * med([cpu[s]["step_seconds"] for s in steps[5:]]),
    1e3 * med([gpu[s]["step_seconds"] for s in steps[5:]])), "")
sys.exit(0 if ok else 1)
EOF

# ---- optional: a deepseek-coder-1.3b step (each matmul mode of BENCH_MATMUL), time and peak memory ----------------------
if [ "${BENCH:-0}" = 1 ]; then
    for mm in ${BENCH_MATMUL:-fp32 bf16}; do
        bench_dir=/dev/shm/dstrain-bench # the final checkpoint (16 GB in fp32) goes to memory
        rm -rf "$bench_dir"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$BUILD/mem.txt" &
        smi=$!
        t0=$(date +%s)
        DSTRAIN_CUDA_MATMUL=$mm timeout "${BENCH_TIMEOUT:-240}" "$BUILD/dstrain" train device=cuda \
            model.preset=deepseek-coder-1.3b train.seq_len="${BENCH_T:-2048}" \
            train.micro_batch_size="${BENCH_B:-8}" train.steps=4 log.every=1 export.enabled=false \
            run.dir="$bench_dir" > "$OUT/bench-$mm.log" 2>&1
        rc=$?
        kill $smi 2>/dev/null
        wait $smi 2>/dev/null
        grep -v '^ ' "$OUT/bench-$mm.log" | tail -6
        peak=$(sort -n "$BUILD/mem.txt" | tail -1)
        steptime=$(python3 -c "
import json
r=[json.loads(l) for l in open('$bench_dir/metrics.jsonl') if 'loss' in l]
print('step s: %s; %.0f tok/s (last)' % (' '.join('%.3f' % x['step_seconds'] for x in r), r[-1]['tokens_per_second']))
" 2>/dev/null)
        rm -rf "$bench_dir"
        if [ -n "$steptime" ]; then r=PASS; else r=FAIL; fi
        row "coder-1.3b matmul=$mm ${BENCH_B:-8}x${BENCH_T:-2048}" "${steptime:-none}" $r
        row "  peak GPU memory (nvidia-smi), wall" "${peak:-?} MiB, rc $rc, $(($(date +%s) - t0)) s" ""
    done
fi

echo
echo "==== summary ===="
printf '| %-44s | %-48s | %s |\n' "check" "detail" "result"
cat "$SUMMARY"
exit $status
