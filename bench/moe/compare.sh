#!/usr/bin/env bash
# compare.sh: bench/moe's dstrain step at two trees side by side in one call on a GPU node (from
# the repo root, .devdeps sourced): BASE (a commit, or a patch file that turns the working tree
# into the base: `git diff -R HEAD -- paths > FILE` where the node's copy of .git lacks HEAD) and
# NEW (a commit; default: the working tree) are built in their own dirs, then with TESTS=1 NEW's
# gpu_test_ops (the models and kernel choices; op by op: gpu_test_backend_ops) and
# tests/gpu/moe.sh (MOE_STEPS, default 20) run, and with EXPERTS_TEST=1 gpu_test_experts
# (EXPERTS_TIMEOUT s, default 90); bench_torch.py trains each build ROUNDS times in turn (ORDER,
# default "base new": WARMUP steps left out, STEPS timed), and with TRACE=1 bench/moe/profile.sh
# breaks NEW's step down. Logs under OUT; the table last.
# Not a test: figures for bench/moe/RESULTS.md.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/compare-logs}
BASE=${BASE:?BASE: the commit or reverse patch to compare against}
mkdir -p "$OUT" /tmp/src-base
status=0
if [ -f "$BASE" ]; then
    (cd "$SRC" && tar --exclude=./.git --exclude=./.devdeps --exclude=./.trace -cf - .) |
        tar -x -C /tmp/src-base || exit 1
    (cd /tmp/src-base && git apply -p1 "$BASE") || exit 1
else
    git -C "$SRC" archive "$BASE" | tar -x -C /tmp/src-base || exit 1
fi
new_src=$SRC
if [ -n "${NEW:-}" ]; then
    mkdir -p /tmp/src-new
    git -C "$SRC" archive "$NEW" | tar -x -C /tmp/src-new || exit 1
    new_src=/tmp/src-new
fi
targets_new="dstrain"
[ "${TESTS:-0}" = 1 ] && targets_new="dstrain gpu_test_ops"
[ "${EXPERTS_TEST:-0}" = 1 ] && targets_new="$targets_new gpu_test_experts"
build() { # src, dir, targets, tests ON/OFF
    cmake -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DDSTRAIN_TESTS="$4" > "$OUT/build-$(basename "$2").log" 2>&1 &&
        cmake --build "$2" -j8 --target $3 >> "$OUT/build-$(basename "$2").log" 2>&1
}
tests=OFF
[ "${TESTS:-0}${EXPERTS_TEST:-0}" != 00 ] && tests=ON
build /tmp/src-base /tmp/build-base dstrain OFF &
pid=$!
build "$new_src" /tmp/build-new "$targets_new" "$tests" || { tail -30 "$OUT/build-build-new.log"; exit 1; }
wait $pid || { tail -30 "$OUT/build-build-base.log"; exit 1; }
summary=()
if [ "${TESTS:-0}" = 1 ]; then
    timeout 240 /tmp/build-new/gpu_test_ops > "$OUT/gpu_test_ops.txt" 2>&1 || status=1
    summary+=("gpu_test_ops: $(tail -1 "$OUT/gpu_test_ops.txt")")
    grep '| FAIL |' "$OUT/gpu_test_ops.txt" | head -10
fi
fpt=$(python3 -c "
import sys; sys.path.insert(0, '$SRC/bench/moe')
import bench_torch as b; print(b.flops_per_token(b.model_config(${LAYERS:-8}), ${SEQ:-2048}))")
for round in $(seq 1 "${ROUNDS:-1}"); do
    for which in ${ORDER:-base new}; do
        python3 "$SRC/bench/moe/bench_torch.py" --dstrain "/tmp/build-$which/dstrain" --runs dstrain \
            --layers "${LAYERS:-8}" --batch "${BATCH:-4}" --seq "${SEQ:-2048}" \
            --warmup "${WARMUP:-5}" --steps "${STEPS:-6}" --timeout "${BENCH_TIMEOUT:-120}" \
            --log "$OUT/bench-$which-$round.log" --json "$OUT/bench-$which-$round.json" \
            > "$OUT/bench-$which-$round.txt" 2>&1 || status=1
        python3 - "$OUT/bench-$which-$round.json" "$which" "$round" "$fpt" \
            "$((${BATCH:-4} * ${SEQ:-2048}))" >> "$OUT/table.txt" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]["dstrain"]
fpt, tokens = float(sys.argv[4]), int(sys.argv[5])
if "step_s" not in r:
    print("| %s | %s | %s | | | | |" % (sys.argv[2], sys.argv[3], r.get("error")))
else:
    print("| %s | %s | %.4f | %.0f | %.1f%% | %s | %.6f |" % (
        sys.argv[2], sys.argv[3], r["step_s"], tokens / r["step_s"],
        100 * tokens / r["step_s"] * fpt / 989e12, " ".join("%.4f" % t for t in r["times"]),
        r["loss"]))
EOF
    done
done
if [ "${TRACE:-0}" = 1 ]; then
    TRACE_LIB=${TRACE_LIB:-$SRC/.trace/cupti_trace.so} BUILD=/tmp/build-new OUT="$OUT" \
        PLAIN_STEPS=0 TRACE_STEPS=${TRACE_STEPS:-7} \
        bash "$SRC/bench/moe/profile.sh" > "$OUT/profile-run.txt" 2>&1
    head -60 "$OUT/profile.txt"
fi
if [ "${TESTS:-0}" = 1 ]; then
    BUILD=/tmp/build-new OUT="$OUT" STEPS=${MOE_STEPS:-20} bash "$new_src/tests/gpu/moe.sh" \
        > "$OUT/moe.txt" 2>&1 || status=1
    summary+=("$(cat "$OUT/moe-summary.txt" 2>/dev/null)")
fi
if [ "${EXPERTS_TEST:-0}" = 1 ]; then
    timeout "${EXPERTS_TIMEOUT:-90}" /tmp/build-new/gpu_test_experts > "$OUT/gpu_test_experts.txt" 2>&1
    rc=$?
    summary+=("gpu_test_experts rc $rc: $(grep -c '| PASS |' "$OUT/gpu_test_experts.txt") PASS, $(grep -c '| FAIL |' "$OUT/gpu_test_experts.txt") FAIL; $(tail -1 "$OUT/gpu_test_experts.txt")")
    [ "$rc" = 0 ] || [ "$rc" = 124 ] || status=1
fi
printf '%s\n' "${summary[@]}"
echo "base $BASE, new ${NEW:-working tree}"
echo "| build | round | median step s | tokens/s | MFU (active) | timed steps s | last loss |"
echo "|---|---|---|---|---|---|---|"
cat "$OUT/table.txt"
exit $status
