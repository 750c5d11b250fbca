#!/usr/bin/env bash
# moe.sh: DeepSeek on the GPU, as a training run: the tiny-moe preset (multi-head latent attention
# with a q latent, sigmoid noaux_tc routing over 16 experts in 4 groups, a shared expert, the first
# layer dense) trained from the same seed on the bundled data for $STEPS steps on the CPU (fp32,
# the reference), on the GPU in its default mixed precision (bf16) and on the GPU in fp32, and the
# loss curves compared. Run on a GPU node, by itself or from run.sh (which passes its BUILD and
# OUT). Prints one summary row per check (run.sh's format, also written to $OUT/moe-summary.txt)
# and exits 1 if any failed.
# Environment: BUILD (build dir, default /tmp/dstrain-gpu; dstrain is built there when missing or
# stale), OUT (logs, default $BUILD/logs), STEPS (default 50).
set -uo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$(dirname "$0")/common.sh" moe
STEPS=${STEPS:-50}

build_dstrain

# The CPU is the reference; the fp32 GPU run differs from it only in the order of its sums (and
# in the GPU's expf), the bf16 run rounds every activation. Routing is a choice: a score that the
# two sides round differently can send a token to another expert, after which the runs differ by
# more than rounding, so the bars are looser than the dense model's in run.sh: fp32 within 1e-3
# relative at every step; both GPU runs' 5-step moving averages within 3% of the CPU's and the
# mean of the last 10 steps within 2% (tests/gpu/curves.py, which run.sh shares).
for run in cpu cuda cuda-fp32; do
    case $run in
        cpu) args="device=cpu" ;;
        cuda) args="device=cuda" ;;
        cuda-fp32) args="device=cuda precision=fp32" ;;
    esac
    rm -rf "$BUILD/moe-$run"
    t0=$(date +%s)
    # shellcheck disable=SC2086 # args holds several key=value words
    timeout 300 "$BUILD/dstrain" train model.preset=tiny-moe $args train.steps="$STEPS" \
        log.every=10 export.enabled=false run.dir="$BUILD/moe-$run" > "$OUT/moe-$run.log" 2>&1
    rc=$?
    tail -2 "$OUT/moe-$run.log"
    if [ $rc -eq 0 ]; then r=PASS; else r=FAIL; status=1; fi
    row "train tiny-moe $STEPS steps $args" "rc $rc, $(($(date +%s) - t0)) s" $r
done
python3 "$SRC/tests/gpu/curves.py" "$BUILD/moe-cpu/metrics.jsonl" "$BUILD/moe-cuda/metrics.jsonl" \
    "$BUILD/moe-cuda-fp32/metrics.jsonl" "$OUT/moe-curves.tsv" --name "moe: tiny-moe" --window 5 \
    --tail 10 --fp32-every 1e-3 --skip 2 | tee -a "$SUMMARY" || status=1

# The sequence-wise balance loss (moe.balance_loss) on the GPU: 10 steps of tiny-moe with it, on
# the CPU and on the GPU in fp32; the loss and the balance loss held to moe.sh's fp32 bar (1e-3
# relative at every step: a routing choice the two round differently moves both).
for run in cpu cuda-fp32; do
    case $run in
        cpu) args="device=cpu" ;;
        cuda-fp32) args="device=cuda precision=fp32" ;;
    esac
    rm -rf "$BUILD/moe-balance-$run"
    # shellcheck disable=SC2086 # args holds several key=value words
    timeout 300 "$BUILD/dstrain" train model.preset=tiny-moe $args train.steps=10 log.every=1 \
        moe.balance_loss=0.01 export.enabled=false run.dir="$BUILD/moe-balance-$run" \
        > "$OUT/moe-balance-$run.log" 2>&1 || tail -3 "$OUT/moe-balance-$run.log"
done
python3 - "$BUILD/moe-balance-cpu/metrics.jsonl" "$BUILD/moe-balance-cuda-fp32/metrics.jsonl" \
    <<'EOF' | tee -a "$SUMMARY" || status=1
import json, sys
def load(path):
    try:
        return [r for r in map(json.loads, open(path)) if "loss" in r]
    except OSError:
        return []
c, g = load(sys.argv[1]), load(sys.argv[2])
def row(a, b, r): print("| %-44s | %-48s | %s |" % (a, b, r))
if not c or len(c) != len(g) or any("balance_loss" not in r for r in c + g):
    row("moe: balance loss GPU fp32 vs CPU", "steps %d / %d, or no balance_loss" % (len(c), len(g)),
        "FAIL")
    sys.exit(1)
dl = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(c, g))
db = max(abs(a["balance_loss"] - b["balance_loss"]) / abs(a["balance_loss"]) for a, b in zip(c, g))
ok = dl <= 1e-3 and db <= 1e-3 and all(r["balance_loss"] > 0 for r in c)
row("moe: balance loss GPU fp32 vs CPU (%d steps)" % len(c),
    "loss %.1e, balance_loss %.1e (<= 1e-3; %.3g)" % (dl, db, c[-1]["balance_loss"]),
    "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
exit $status
