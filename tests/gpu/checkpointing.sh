#!/usr/bin/env bash
# checkpointing.sh: train.activation_checkpointing on the GPU. The tiny preset in bf16 for $STEPS
# steps without it, with it (true) and selective: the losses must agree step for step, and the
# activations the start line reports must fall (selective between none and true). Recomputation
# runs the same ops on the same inputs, so the losses are the same bits unless a kernel's choice
# depends on an address; the bar, 1e-5 absolute, leaves room only for that, while a stale or
# missing recomputation moves a loss by far more. Run on a GPU node, by itself or from run.sh.
# Environment: BUILD, OUT (common.sh), STEPS (default 30).
set -uo pipefail
# shellcheck shell=bash
. "$(dirname "$0")/common.sh" checkpointing
W=$BUILD/checkpointing
STEPS=${STEPS:-30}
rm -rf "$W"
mkdir -p "$W"

build_dstrain

for mode in false true selective; do
    train_tiny "$mode" train.activation_checkpointing="$mode"
    rc=$?
    if [ $rc -eq 0 ]; then r=PASS; else r=FAIL; status=1; fi
    row "checkpointing $mode: trains" "rc $rc" $r
done

python3 "$SRC/tests/gpu/same_losses.py" "$W" "$STEPS" "checkpointing %s vs none: losses" false \
    true selective >> "$SUMMARY" || status=1
python3 - "$W" >> "$SUMMARY" <<'PY' || status=1
import re, sys
w = sys.argv[1]
def activations(name):
    m = re.search(r"activations ([\d.]+) MiB", open(f"{w}/{name}.log").read())
    return float(m.group(1)) if m else float("nan")
a_none, a_full, a_sel = (activations(n) for n in ("false", "true", "selective"))
good = a_full < a_sel < a_none
print("| %-44s | %-48s | %s |" % ("checkpointing: activations none, true, selective",
      "%.1f, %.1f, %.1f MiB" % (a_none, a_full, a_sel), "PASS" if good else "FAIL"))
sys.exit(0 if good else 1)
PY
tail -3 "$SUMMARY"
exit $status
