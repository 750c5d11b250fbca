#!/usr/bin/env bash
# tests/gpu/curves.py, the GPU loss-curve check of tests/gpu/run.sh and moe.sh, on made-up
# metrics (it runs on GPU nodes only otherwise): equal curves pass both rows and write the TSV;
# a bf16 curve 5% off in its tail fails the bf16 row only; an fp32 step off by 2.7e-4 in the first
# 50 fails --fp32-early 50 1e-4 but not the same run judged after step 50; one step 2e-3 off
# relative fails --fp32-every 1e-3; a missing run is "no common steps", exit 1.
set -u
: "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/tools_gpu_curves; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { local name=$1; shift; if "$@"; then passes=$((passes+1)); echo "ok: $name"; else echo "FAIL: $name"; fails=$((fails+1)); fi; }
# metrics NAME [STEP:FACTOR ...]: 80 steps of a falling, jittering loss, the listed steps' losses
# times FACTOR; step_seconds 0.01
metrics() {
  python3 - "$@" <<'PY'
import json, math, sys
name, changes = sys.argv[1], dict(a.split(":") for a in sys.argv[2:])
with open(name + ".jsonl", "w") as f:
    for s in range(1, 81):
        loss = 2 + 4 * math.exp(-s / 20) + 0.05 * math.sin(s * 1.7)
        if str(s) in changes:
            loss *= float(changes[str(s)])
        f.write(json.dumps({"step": s, "loss": loss, "step_seconds": 0.01}) + "\n")
PY
}
curves() { # curves GPU GPU32 ARGS...: sets out and rc
  local gpu=$1 gpu32=$2; shift 2
  out=$(python3 "$SRC/tests/gpu/curves.py" cpu.jsonl "$gpu.jsonl" "$gpu32.jsonl" curves.tsv \
    --name tiny --window 10 --tail 20 "$@" 2>&1); rc=$?
}
metrics cpu
metrics same
tail_off=(); for s in $(seq 61 80); do tail_off+=("$s:1.05"); done
metrics bf16_tail "${tail_off[@]}"
metrics fp32_early 3:1.00005   # 2.7e-4 absolute at step 3 (the loss is near 5.4)
metrics fp32_step 70:1.002

curves same same --fp32-early 50 1e-4
check "equal curves: exit 0" test "$rc" -eq 0
check "... both rows PASS" test "$(grep -c '| PASS |' <<< "$out")" -eq 2
check "... the TSV: a header and 80 steps" test "$(wc -l < curves.tsv)" -eq 81
check "... the step times read" grep -q "median step ms: CPU / GPU bf16 / fp32 .* 10.00 / 10.00 / 10.00" <<< "$out"

curves bf16_tail same --fp32-early 50 1e-4
check "bf16 5% off over the last 20 steps: exit 1" test "$rc" -eq 1
check "... the bf16 row fails" grep -q "tiny GPU bf16 vs CPU (80 steps) .*| FAIL |" <<< "$out"
check "... the fp32 row passes" grep -q "tiny GPU fp32 vs CPU (80 steps) .*| PASS |" <<< "$out"

curves same fp32_early --fp32-early 50 1e-4
check "fp32 2e-4 off at step 3: fails --fp32-early 50 1e-4" test "$rc" -eq 1
check "... on the fp32 row" grep -q "tiny GPU fp32 vs CPU (80 steps) .*| 50 steps 2.7e-04 .*| FAIL |" <<< "$out"
curves same fp32_early --fp32-early 2 1e-4
check "... and not when the early steps end before it" test "$rc" -eq 0

curves same fp32_step --fp32-every 1e-3
check "one step 2e-3 off relative: fails --fp32-every 1e-3" test "$rc" -eq 1
curves same fp32_step --fp32-every 3e-3
check "... passes --fp32-every 3e-3" test "$rc" -eq 0

curves missing same --fp32-every 1e-3
check "a missing run: exit 1, no common steps" bash -c "[ $rc -eq 1 ] && grep -q 'no common steps' <<< \"\$0\"" "$out"
curves same same
check "neither fp32 rule given: refused" test "$rc" -eq 2

echo "test_gpu_curves: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
