#!/usr/bin/env bash
# continual.sh: continual learning on the GPU, against the CPU: two causal-LM tasks of the tiny
# preset (the bundled training and evaluation files as tasks) with EWC (online, then separate)
# and replay, on the CPU (the reference) and on the GPU in fp32, then a second run that starts
# from each first run's continual state. On the GPU every host access to the EWC pairs, the
# Fisher's squares, the weights and the checkpoints goes through the backend's staging
# (backend_stage), which the CPU never takes. Run on a GPU node, by itself or from run.sh (which
# passes its BUILD and OUT). Prints one summary row per check (run.sh's format, also written to
# $OUT/continual-summary.txt) and exits 1 if any failed.
#
# Bars: in fp32 the GPU's sums differ from the CPU's only in order (about 1e-6 relative a step),
# and training 24 steps grows that to about 1e-5 (run.sh's dense curves: 1e-4 over 50 steps), so
# every step's loss and EWC penalty is held to 1e-4 relative (penalty: 1e-4 of its own size plus
# 1e-6 of the loss, as it starts at zero); the saved Fisher and anchor, which come from those
# weights, to 1e-3 relative in the sum of absolute differences over the sum of magnitudes.
set -uo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$(dirname "$0")/common.sh" continual
D=$BUILD/dstrain
W=$BUILD/continual
rm -rf "$W"
mkdir -p "$W"

build_dstrain

kjv=$SRC/data/bundled
cat > "$W/tasks.yaml" <<YAML
tasks:
  - {id: bible, train: $kjv/kjv-train.h5, eval: $kjv/kjv-eval.h5, steps: 12}
  - {id: held, train: $kjv/kjv-eval.h5, eval: $kjv/kjv-train.h5, steps: 12}
YAML
cat > "$W/tasks2.yaml" <<YAML
tasks:
  - {id: again, train: $kjv/kjv-train.h5, eval: $kjv/kjv-eval.h5, steps: 6}
YAML
common="train.seq_len=64 train.micro_batch_size=4 log.every=1 export.enabled=false
  continual.ewc.enabled=true continual.ewc.lambda=100 continual.ewc.fisher.samples=8
  continual.replay.capacity=16 continual.replay.ratio=0.25"
for mode in online separate; do
    for run in cpu cuda; do
        case $run in
            cpu) args="device=cpu" ;;
            cuda) args="device=cuda precision=fp32" ;;
        esac
        t0=$(date +%s)
        # shellcheck disable=SC2086 # word lists
        timeout 300 "$D" train $args $common continual.ewc.mode=$mode \
            continual.tasks="$W/tasks.yaml" run.dir="$W/$mode-$run" \
            > "$OUT/continual-$mode-$run.log" 2>&1 &&
            timeout 300 "$D" train $args $common continual.ewc.mode=$mode \
                continual.tasks="$W/tasks2.yaml" continual.state="$W/$mode-$run/continual-state" \
                run.dir="$W/$mode-$run-next" >> "$OUT/continual-$mode-$run.log" 2>&1
        rc=$?
        if [ $rc -eq 0 ]; then r=PASS; else r=FAIL; status=1; tail -5 "$OUT/continual-$mode-$run.log"; fi
        row "continual $mode, $args: two runs" "rc $rc, $(($(date +%s) - t0)) s" $r
    done
    python3 - "$W/$mode-cpu" "$W/$mode-cuda" "$mode" <<'PY' | tee -a "$SUMMARY" || status=1
import json, sys
import h5py, numpy as np
cpu, gpu, mode = sys.argv[1:4]
def row(a, d, r): print("| %-44s | %-48s | %s |" % (a, d, r))
def rows(d):
    try:
        return [r for r in map(json.loads, open(d + "/metrics.jsonl")) if "loss" in r]
    except OSError:
        return []
ok_all = True
for suffix, what in (("", "first run"), ("-next", "run from the state")):
    c, g = rows(cpu + suffix), rows(gpu + suffix)
    if not c or len(c) != len(g):
        row("continual %s %s: curves" % (mode, what), "steps cpu %d gpu %d" % (len(c), len(g)), "FAIL")
        ok_all = False
        continue
    dl = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(c, g))
    pen = [(a.get("ewc_penalty", 0.0), b.get("ewc_penalty", 0.0), a["loss"]) for a, b in zip(c, g)]
    dp = max(abs(x - y) / (abs(x) + 1e-2 * l) for x, y, l in pen)
    last = max(x for x, _, _ in pen)
    ok = dl <= 1e-4 and dp <= 1e-4 and last > 0
    ok_all &= ok
    row("continual %s %s: %d steps" % (mode, what, len(c)),
        "loss %.1e, penalty %.1e (max %.3g) (<= 1e-4)" % (dl, dp, last), "PASS" if ok else "FAIL")
try:
    fc, fg = h5py.File(cpu + "/continual-state/ewc.h5"), h5py.File(gpu + "/continual-state/ewc.h5")
    names = sorted(k for k in fc.keys() if k.startswith(("fisher", "anchor")))
    worst = 0.0
    for k in names:
        for t in fc[k].keys() if isinstance(fc[k], h5py.Group) else [None]:
            a = np.asarray(fc[k][t] if t else fc[k], dtype=np.float64)
            b = np.asarray(fg[k][t] if t else fg[k], dtype=np.float64)
            worst = max(worst, np.abs(a - b).sum() / max(np.abs(a).sum(), 1e-30))
    ok = len(names) > 0 and worst <= 1e-3
except (OSError, KeyError) as e:
    names, worst, ok = [], float("nan"), False
ok_all &= ok
row("continual %s: saved Fisher and anchor" % mode,
    "%d groups, sum|d|/sum|x| %.1e (<= 1e-3)" % (len(names), worst), "PASS" if ok else "FAIL")
sys.exit(0 if ok_all else 1)
PY
done
exit $status
