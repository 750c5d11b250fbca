#!/usr/bin/env bash
# Language-model continual case: the tiny preset trained from scratch on English prose (bundled
# KJV), then on Python source code (the interpreter's standard library); the prose perplexity
# after the code task, naive vs replay vs EWC vs both, EWC and both at every lambda of LAMBDAS
# (the causal-LM Fisher is per token: docs/continual.md).
# usage: bench/continual/run_lm.sh   (DSTRAIN=path/to/dstrain, OUT=dir to keep the runs,
#        JOBS=methods run at once (2), OMP_NUM_THREADS=threads each (1), STEPS=steps a domain,
#        LAMBDAS="0.1 1 10 100 1000")
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DSTRAIN=${DSTRAIN:-$SRC/build/dstrain}
OUT=${OUT:-$(mktemp -d /tmp/continual-lm.XXXXXX)}
STEPS=${STEPS:-300}
[ -f "$OUT/data/tasks.yaml" ] ||
  python3 "$SRC/bench/continual/make_lm_data.py" --out "$OUT/data" --src "$SRC" --steps "$STEPS"
common=(model.preset=tiny task.type=causal_lm continual.tasks="$OUT/data/tasks.yaml"
        train.seq_len=64 train.micro_batch_size=8 optim.lr=3e-3 optim.warmup_steps=20
        eval.batches=16 log.every=100)
ewc=(continual.ewc.enabled=true continual.ewc.fisher.samples=128)
LAMBDAS=${LAMBDAS:-"0.1 1 10 100 1000"}
replay=(continual.replay.capacity=1024 continual.replay.ratio=0.25)
# one thread a run and OpenBLAS single-threaded, two methods at once (see run.sh)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
JOBS=${JOBS:-2}
run_method() { # method: trains, then writes $OUT/$method.rc and $OUT/$method.seconds
  local method=$1 t0 rc=0 extra=()
  case $method in
    ewc-*) extra=("${ewc[@]}" continual.ewc.lambda=${method#ewc-}) ;;
    replay) extra=("${replay[@]}") ;;
    both-*) extra=("${ewc[@]}" continual.ewc.lambda=${method#both-} "${replay[@]}") ;;
  esac
  t0=$(date +%s)
  "$DSTRAIN" train "${common[@]}" ${extra[@]+"${extra[@]}"} run.dir="$OUT/$method" \
    > "$OUT/$method.log" 2>&1 || rc=$?
  echo $(( $(date +%s) - t0 )) > "$OUT/$method.seconds"
  echo $rc > "$OUT/$method.rc"
}
start=$(date +%s)
all=(naive replay)
for l in $LAMBDAS; do all+=("ewc-$l" "both-$l"); done
methods=(${METHODS:-${all[@]}})
running=0
for method in "${methods[@]}"; do
  rm -f "$OUT/$method.rc"
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
  run_method "$method" &
  running=$((running + 1))
done
wait
for method in "${methods[@]}"; do
  if [ "$(cat "$OUT/$method.rc" 2>/dev/null)" != 0 ]; then tail -5 "$OUT/$method.log"; exit 1; fi
  echo "$method: $(cat "$OUT/$method.seconds")s"
done
echo "runs in $OUT ($(( $(date +%s) - start ))s, $JOBS at once, $OMP_NUM_THREADS thread(s) each)"
[ -z "${METHODS:-}" ] || exit 0
python3 - "$OUT" "${methods[@]}" <<'PY'
import json, math, sys
print("method        prose loss after prose  after code  code loss after code  (perplexity: exp)")
for m in sys.argv[2:]:
    R = json.load(open(f"{sys.argv[1]}/{m}/continual.json"))["R"]
    print(f"{m:13s} {R[0][0]:22.4f} {R[1][0]:11.4f} {R[1][1]:21.4f}   "
          f"ppl {math.exp(R[0][0]):.2f} {math.exp(R[1][0]):.2f} {math.exp(R[1][1]):.2f}")
PY
