#!/usr/bin/env bash
# Continual-learning benchmark: permuted digits (scikit-learn's load_digits, 5 tasks, one fixed
# pixel permutation each, 20% held-out test split), a small Llama-shaped classifier trained from
# scratch by dstrain on the tasks in order: naive fine-tuning, EWC, replay, and both.
# usage: bench/continual/run.sh            (DSTRAIN=path/to/dstrain, OUT=dir to keep the runs,
#        JOBS=methods run at once (2), OMP_NUM_THREADS=threads each (1), STEPS=steps a task (200))
# The numbers do not depend on JOBS or the thread counts (fixed-order reductions); only the time.
# Ends with one line: naive_acc=A ewc_acc=B replay_acc=C both_acc=D naive_forgetting=E
# both_forgetting=F (average accuracy after the last task; average forgetting; fractions).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DSTRAIN=${DSTRAIN:-$SRC/build/dstrain}
OUT=${OUT:-$(mktemp -d /tmp/continual-bench.XXXXXX)}
STEPS=${STEPS:-200}
[ -x "$DSTRAIN" ] || { echo "run.sh: $DSTRAIN not found (build first, or set DSTRAIN)" >&2; exit 2; }
if [ ! -f "$OUT/data/tasks.yaml" ]; then # an OUT that already holds the data reuses it
  if ! python3 -c "import sklearn, h5py, numpy" 2>/dev/null; then
    python3 -m pip install -q scikit-learn h5py numpy 2>/dev/null ||
      python3 -m pip install -q --break-system-packages scikit-learn h5py numpy
  fi
  python3 "$SRC/bench/continual/make_data.py" --out "$OUT/data" --tasks 5 --steps "$STEPS"
fi

# the same model, data order and schedule for every method; only the continual keys differ
common=(model.path="$OUT/data/model" model.random_init=true task.type=classification
        task.num_labels=10 continual.tasks="$OUT/data/tasks.yaml" train.seq_len=65
        train.micro_batch_size=32 train.seed=1234 optim.lr=3e-3 optim.warmup_steps=10
        optim.weight_decay=0 log.every=100)
ewc=(continual.ewc.enabled=true continual.ewc.lambda=3 continual.ewc.fisher.type=empirical
     continual.ewc.fisher.samples=200)
replay=(continual.replay.capacity=1024 continual.replay.ratio=0.5 continual.replay.policy=reservoir)
# Time: the model's matrices are small (2080 x 64 x 64), so two threads on one run gain little
# and OpenBLAS's own pthreads fight OpenMP's for the cores (1.8x slower on 2 cores, more under
# load). One thread per run, OpenBLAS single-threaded, and the methods two at a time instead.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
JOBS=${JOBS:-2}
run_method() { # method: trains, then writes $OUT/$method.rc and $OUT/$method.seconds
  local method=$1 t0 rc=0 extra=()
  case $method in
    ewc) extra=("${ewc[@]}") ;;
    replay) extra=("${replay[@]}") ;;
    both) extra=("${ewc[@]}" "${replay[@]}") ;;
  esac
  t0=$(date +%s)
  "$DSTRAIN" train "${common[@]}" ${extra[@]+"${extra[@]}"} run.dir="$OUT/$method" \
    > "$OUT/$method.log" 2>&1 || rc=$?
  echo $(( $(date +%s) - t0 )) > "$OUT/$method.seconds"
  echo $rc > "$OUT/$method.rc"
}
start=$(date +%s)
methods=(${METHODS:-naive ewc replay both})
running=0
for method in "${methods[@]}"; do
  rm -f "$OUT/$method.rc"
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
  run_method "$method" &
  running=$((running + 1))
done
wait
for method in "${methods[@]}"; do
  echo "== $method"
  if [ "$(cat "$OUT/$method.rc" 2>/dev/null)" != 0 ]; then tail -5 "$OUT/$method.log"; exit 1; fi
  sed -n '/accuracy after each task/,/^continual: average/p' "$OUT/$method.log"
  echo "$method: $(cat "$OUT/$method.seconds")s"
done
echo "runs in $OUT ($(( $(date +%s) - start ))s, $JOBS at once, $OMP_NUM_THREADS thread(s) each)"
[ -z "${METHODS:-}" ] || exit 0
python3 - "$OUT" <<'PY'
import json, sys
r = {m: json.load(open(f"{sys.argv[1]}/{m}/continual.json")) for m in ("naive", "ewc", "replay", "both")}
print(" ".join(f"{m}_acc={r[m]['average']:.4f}" for m in ("naive", "ewc", "replay", "both")),
      f"naive_forgetting={r['naive']['forgetting']:.4f} both_forgetting={r['both']['forgetting']:.4f}")
PY
