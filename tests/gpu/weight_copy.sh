#!/usr/bin/env bash
# weight_copy.sh: cuda.weight_copy on the GPU. The tiny preset in bf16 for $STEPS steps three
# ways: with the weights' bf16 working copy (full), without it (none: each matmul rounds its
# weight as it reads it), and with auto on a GPU made to look too small for the copy
# (DSTRAIN_DEVICE_MEMORY_BYTES between the run's estimate with and without it), which must drop
# the copy and say so; a full run on that GPU is refused in one line. The matmuls read the same
# bf16 values either way (a copy is the rounding of the fp32 weights the other path rounds on the
# fly), so the losses must agree step for step; the bar, 1e-5 absolute, leaves room only for a
# matmul plan that differs with its operand's address, while a stale or missing rounding moves a
# loss by far more (a bf16 step of the weights is about 4e-3 relative). Run on a GPU node, by
# itself or from run.sh. Environment: BUILD, OUT (common.sh), STEPS (default 30).
set -uo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$(dirname "$0")/common.sh" weight_copy
W=$BUILD/weight_copy
STEPS=${STEPS:-30}
rm -rf "$W"
mkdir -p "$W"

build_dstrain

# the estimate with the copy and the copy itself, from a refusal on a GPU of one byte
DSTRAIN_DEVICE_MEMORY_BYTES=1 train_tiny refused cuda.weight_copy=full
need=$(python3 - "$W/refused.log" <<'PY'
import re, sys
units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
text = open(sys.argv[1]).read()
def size(pattern):
    m = re.search(pattern + r" ([0-9.]+) (B|KiB|MiB|GiB|TiB)", text)
    return float(m.group(1)) * units[m.group(2)] if m else 0
total, copy = size("needs at least"), size("bf16 copies")
print("%d %d" % (total, copy) if total > 0 and copy > 0 else "")
PY
)
if [ -z "$need" ]; then
    tail -3 "$W/refused.log"
    row "weight_copy: estimate with the copy" "no figures in the refusal" FAIL
    exit 1
fi
read -r total copy <<< "$need"
small=$((total - copy / 2)) # fits without the copy, not with it
row "weight_copy: estimate with the copy" "$total bytes, of which the copy $copy" PASS

train_tiny full cuda.weight_copy=full
rc_full=$?
train_tiny none cuda.weight_copy=none
rc_none=$?
DSTRAIN_DEVICE_MEMORY_BYTES=$small train_tiny auto cuda.weight_copy=auto
rc_auto=$?
DSTRAIN_DEVICE_MEMORY_BYTES=$small train_tiny small-full cuda.weight_copy=full
rc_small=$?

if [ $rc_full -eq 0 ] && grep -q "bf16 working copy takes" "$W/full.log"; then r=PASS; else
    r=FAIL; status=1; fi
row "weight_copy full: trains, copy reported" "rc $rc_full" $r
if [ $rc_none -eq 0 ] && grep -q "no working copy of the weights (cuda.weight_copy none)" \
        "$W/none.log"; then r=PASS; else r=FAIL; status=1; fi
row "weight_copy none: trains, no copy reported" "rc $rc_none" $r
if [ $rc_auto -eq 0 ] && grep -q "(cuda.weight_copy auto: the run does not fit with it)" \
        "$W/auto.log"; then r=PASS; else r=FAIL; status=1; fi
row "weight_copy auto on a GPU too small for it" "rc $rc_auto, copy dropped" $r
lines=$(grep -c "^dstrain: error" "$W/small-full.log")
if [ $rc_small -ne 0 ] && [ "$lines" -eq 1 ] && grep -q "bf16 copies" "$W/small-full.log"; then
    r=PASS; else r=FAIL; status=1; fi
row "weight_copy full on that GPU: refused" "rc $rc_small, $lines error line(s)" $r

python3 "$SRC/tests/gpu/same_losses.py" "$W" "$STEPS" "weight_copy %s vs full: losses" full \
    none auto >> "$SUMMARY" || status=1
tail -2 "$SUMMARY"
exit $status
