#!/usr/bin/env bash
# tests/gpu/same_losses.py, the "same training" check of tests/gpu/weight_copy.sh and
# checkpointing.sh, on made-up metrics (it runs on GPU nodes only otherwise): a run equal to the
# base passes with every step the same bits; one step 4e-6 off passes (under the 1e-5 bar) with
# one step less of equal bits; one step 2e-5 off fails; a run short of steps or missing fails; a
# failing run fails the exit status whatever passed beside it.
set -u
: "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/tools_gpu_same_losses; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { local name=$1; shift; if "$@"; then passes=$((passes+1)); echo "ok: $name"; else echo "FAIL: $name"; fails=$((fails+1)); fi; }
# run NAME STEPS [STEP:DELTA ...]: STEPS losses of a falling curve in NAME/metrics.jsonl, the
# listed steps' losses plus DELTA, and a line without a loss between steps
run() {
  python3 - "$@" <<'PY'
import json, math, os, sys
name, steps = sys.argv[1], int(sys.argv[2])
changes = {int(k): float(v) for k, v in (a.split(":") for a in sys.argv[3:])}
os.makedirs(name, exist_ok=True)
with open(f"{name}/metrics.jsonl", "w") as f:
    for s in range(1, steps + 1):
        f.write(json.dumps({"step": s, "loss": 3 + math.exp(-s / 7) + changes.get(s, 0.0)}) + "\n")
        f.write(json.dumps({"step": s, "eval_loss": 4.0}) + "\n")
PY
}
same() { # same OTHER...: sets out and rc
  out=$(python3 "$SRC/tests/gpu/same_losses.py" . 30 "x %s vs base" base "$@" 2>&1); rc=$?
}
run base 30
run equal 30
run near 30 12:4e-6
run off 30 20:2e-5
run short 29

has() { grep -q -- "$1" <<< "$out"; } # has PATTERN: the last output holds it
same equal
check "an equal run: exit 0" test "$rc" -eq 0
check "... PASS, 30 of 30 equal bits" has "^| x equal vs base .*max |d| 0.0e+00 (<= 1e-5), 30 of 30 equal bits *| PASS |"
same near
check "4e-6 off at one step: exit 0" test "$rc" -eq 0
check "... PASS, 29 of 30 equal bits" has "29 of 30 equal bits *| PASS |"
same equal off
check "2e-5 off at one step: exit 1" test "$rc" -eq 1
check "... its row FAIL" has "^| x off vs base .*| FAIL |"
check "... the equal one's PASS" has "^| x equal vs base .*| PASS |"
same short
check "a run short of a step: exit 1" test "$rc" -eq 1
check "... named" has "30 and 29 steps of 30 *| FAIL |"
same missing
check "a missing run: exit 1" test "$rc" -eq 1
check "... named" has "30 and 0 steps of 30 *| FAIL |"
out=$(python3 "$SRC/tests/gpu/same_losses.py" . 30 2>&1); rc=$?
check "too few arguments: exit 2" test "$rc" -eq 2
check "... the usage" has "usage: same_losses.py"

echo "tools/gpu_same_losses: $passes passed, $fails failed"
[ $fails -eq 0 ]
