#!/usr/bin/env bash
# Continual-learning benchmark: permuted digits (scikit-learn's load_digits, 5 tasks, one fixed
# pixel permutation each; token = position x 17 + intensity, so each input position has its own
# parameters), a small Llama-shaped classifier trained from scratch by dstrain on the tasks in
# order. Rows: naive fine-tuning, L2 to the anchor (F = 1), EWC (empirical and exact Fisher),
# replay, EWC + replay, and joint training on every task at once (the upper bound).
#
# Honest by construction: every strength (lambda of L2, of each EWC and of EWC + replay; the
# replay ratio) is chosen on a validation split held out of the training images, with its own
# seed (TUNE_SEED: its own permutations, split and initialisation; EWC + replay chooses its
# lambda and ratio together); the chosen settings then run on SEEDS (each its own permutations,
# split and initialisation) and are scored on the test split: mean +- sd over the seeds of the
# average accuracy after the last task, backward transfer and forgetting, and the mean accuracy
# matrix of each row.
#
# usage: bench/continual/run.sh     DSTRAIN=path/to/dstrain  OUT=dir (kept; a rerun reuses what
#        is done)  JOBS=runs at once (2)  STEPS=steps a task (200)  TASKS (5)  SEEDS ("1 2 3 4 5")
#        TUNE_SEED (0)  PHASE=all|tune|report  QUICK=1 (3 tasks of 20 steps, 2 seeds, small
#        grids: checks the script, says nothing about the methods)
#        grids: L2_GRID EWC_GRID BOTH_GRID (lambdas), RATIO_GRID (replay ratios)
# The numbers do not depend on JOBS or the thread counts (fixed-order reductions), only on the
# CPU type (OpenBLAS's kernels). Ends with one line, means over the seeds (test accuracy):
# naive_acc=A ewc_acc=B replay_acc=C both_acc=D naive_forgetting=E both_forgetting=F l2_acc=G
# joint_acc=H seeds=N   (ewc: the empirical Fisher)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DSTRAIN=${DSTRAIN:-$SRC/build/dstrain}
OUT=${OUT:-$(mktemp -d /tmp/continual-bench.XXXXXX)}
PHASE=${PHASE:-all}
if [ "${QUICK:-0}" = 1 ]; then
  STEPS=${STEPS:-20} TASKS=${TASKS:-3} SEEDS=${SEEDS:-"1 2"}
  L2_GRID=${L2_GRID:-"0.01 1"} EWC_GRID=${EWC_GRID:-"10 1000"} BOTH_GRID=${BOTH_GRID:-"10"}
  RATIO_GRID=${RATIO_GRID:-"0.5"}
fi
STEPS=${STEPS:-200} TASKS=${TASKS:-5} SEEDS=${SEEDS:-"1 2 3 4 5"} TUNE_SEED=${TUNE_SEED:-0}
L2_GRID=${L2_GRID:-"0.001 0.01 0.1 1 10"}
EWC_GRID=${EWC_GRID:-"1 10 100 1000 10000"}
BOTH_GRID=${BOTH_GRID:-"1 10 100 1000"}
RATIO_GRID=${RATIO_GRID:-"0.25 0.5"}
JOBS=${JOBS:-2}
[ -x "$DSTRAIN" ] || { echo "run.sh: $DSTRAIN not found (build first, or set DSTRAIN)" >&2; exit 2; }
mkdir -p "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
for seed in $TUNE_SEED $SEEDS; do # an OUT that already holds a seed's data reuses it
  [ -f "$OUT/data-$seed/tasks-test.yaml" ] && continue
  if ! python3 -c "import sklearn, h5py, numpy" 2>/dev/null; then
    python3 -m pip install -q scikit-learn h5py numpy 2>/dev/null ||
      python3 -m pip install -q --break-system-packages scikit-learn h5py numpy
  fi
  python3 "$SRC/bench/continual/make_data.py" --out "$OUT/data-$seed" --tasks "$TASKS" \
    --steps "$STEPS" --seed "$seed" > /dev/null
done

# the same model, data order and schedule for every method; only the continual keys differ
common=(model.random_init=true task.type=classification task.num_labels=10 train.seq_len=65
        train.micro_batch_size=32 optim.lr=3e-3 optim.warmup_steps=10 optim.weight_decay=0
        log.every=1000 export.enabled=false)
ewc=(continual.ewc.enabled=true continual.ewc.fisher.samples=200)
replay=(continual.replay.capacity=1024 continual.replay.policy=reservoir)
# one thread a run, OpenBLAS single-threaded, JOBS runs at once: the model's matrices are small
# (2080 x 64 x 64), so threads inside a run buy little and fight each other (RESULTS.md)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# A run: NAME SEED SPLIT(val|test|joint) KEY=VALUE... -> $OUT/runs/NAME-sSEED (skipped when its
# continual.json is there). Queued as one script a run, run JOBS at a time.
queue=$OUT/queue
rm -rf "$queue" && mkdir -p "$queue"
enqueue() {
  local name=$1 seed=$2 split=$3; shift 3
  local dir=$OUT/runs/$name-s$seed
  [ -f "$dir/continual.json" ] && return 0
  rm -rf "$dir"
  { printf 'exec %q train' "$DSTRAIN"
    printf ' %q' "${common[@]}" model.path="$OUT/data-$seed/model" \
      continual.tasks="$OUT/data-$seed/tasks-$split.yaml" train.seed=$((1000 + seed)) "$@" \
      run.dir="$dir"
    printf ' > %q 2>&1\n' "$dir.log"; } > "$queue/$name-s$seed.sh"
}
run_queue() { # the queued runs, JOBS at once; fails when any failed (its log's tail shown)
  local n t0=$SECONDS rc=0
  n=$(find "$queue" -name '*.sh' | wc -l)
  [ "$n" -gt 0 ] || return 0
  echo "run.sh: $n runs, $JOBS at once ($(date -u +%H:%M:%S) UTC)" >&2
  find "$queue" -name '*.sh' | sort | xargs -P "$JOBS" -n 1 bash || rc=$?
  echo "run.sh: done in $((SECONDS - t0)) s" >&2
  rm -f "$queue"/*.sh
  if [ $rc -ne 0 ]; then
    for d in "$OUT"/runs/*.log; do
      [ -f "${d%.log}/continual.json" ] || { echo "== $d"; tail -3 "$d"; } >&2
    done
    return 1
  fi
}
# The best value of a grid: highest mean validation accuracy after the last task (first wins).
best() { # PREFIX VALUES...
  local prefix=$1; shift
  python3 - "$OUT/runs" "$TUNE_SEED" "$prefix" "$@" <<'PY'
import json, sys
runs, seed, prefix, values = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
score = {v: json.load(open(f"{runs}/{prefix}{v}-s{seed}/continual.json"))["average"] for v in values}
print(max(values, key=lambda v: (score[v], -values.index(v))))
PY
}

if [ "$PHASE" = all ] || [ "$PHASE" = tune ]; then
  s=$TUNE_SEED
  both_grid=() # EWC + replay: its lambda and ratio chosen together, on its own
  for r in $RATIO_GRID; do
    enqueue "tune-replay-$r" $s val "${replay[@]}" continual.replay.ratio=$r
    for l in $BOTH_GRID; do
      enqueue "tune-both-$l,$r" $s val "${ewc[@]}" continual.ewc.lambda=$l "${replay[@]}" \
        continual.replay.ratio=$r
      both_grid+=("$l,$r")
    done
  done
  for l in $L2_GRID; do
    enqueue "tune-l2-$l" $s val "${ewc[@]}" continual.ewc.fisher.type=identity continual.ewc.lambda=$l
  done
  for l in $EWC_GRID; do
    enqueue "tune-ewc-$l" $s val "${ewc[@]}" continual.ewc.fisher.type=empirical continual.ewc.lambda=$l
    enqueue "tune-exact-$l" $s val "${ewc[@]}" continual.ewc.fisher.type=exact continual.ewc.lambda=$l
  done
  run_queue
  both=$(best tune-both- "${both_grid[@]}")
  cat > "$OUT/chosen.env" <<EOF
RATIO=$(best tune-replay- $RATIO_GRID)
L2_LAMBDA=$(best tune-l2- $L2_GRID)
EWC_LAMBDA=$(best tune-ewc- $EWC_GRID)
EXACT_LAMBDA=$(best tune-exact- $EWC_GRID)
BOTH_LAMBDA=${both%,*}
BOTH_RATIO=${both#*,}
EOF
  echo "run.sh: chosen on the validation split of seed $TUNE_SEED:" $(cat "$OUT/chosen.env") >&2
fi
[ "$PHASE" = tune ] && exit 0
[ -f "$OUT/chosen.env" ] || { echo "run.sh: $OUT/chosen.env missing: run PHASE=tune first" >&2; exit 2; }
# shellcheck disable=SC1091
. "$OUT/chosen.env"

for s in $SEEDS; do
  enqueue naive $s test
  enqueue l2 $s test "${ewc[@]}" continual.ewc.fisher.type=identity continual.ewc.lambda=$L2_LAMBDA
  enqueue ewc $s test "${ewc[@]}" continual.ewc.fisher.type=empirical continual.ewc.lambda=$EWC_LAMBDA
  enqueue exact $s test "${ewc[@]}" continual.ewc.fisher.type=exact continual.ewc.lambda=$EXACT_LAMBDA
  enqueue replay $s test "${replay[@]}" continual.replay.ratio=$RATIO
  enqueue both $s test "${ewc[@]}" continual.ewc.lambda=$BOTH_LAMBDA "${replay[@]}" \
    continual.replay.ratio=$BOTH_RATIO
  enqueue joint $s joint
done
run_queue
# joint: the final model on every task's test split
for s in $SEEDS; do
  for k in $(seq 0 $((TASKS - 1))); do
    f=$OUT/runs/joint-s$s/eval-$k.txt
    [ -s "$f" ] || "$DSTRAIN" eval --model "$OUT/runs/joint-s$s" \
      --data "$OUT/data-$s/digits-$k-test.h5" > "$f" 2>> "$OUT/runs/joint-s$s.log"
  done
done

python3 - "$OUT" "$TASKS" $SEEDS <<'PY'
import json, re, statistics, sys
out, K, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
chosen = dict(l.strip().split("=") for l in open(f"{out}/chosen.env") if "=" in l)
rows = [("naive", "naive fine-tuning", ""),
        ("l2", "L2 to the anchor (F = 1)", f"lambda {chosen['L2_LAMBDA']}"),
        ("ewc", "EWC, empirical Fisher", f"lambda {chosen['EWC_LAMBDA']}"),
        ("exact", "EWC, exact Fisher", f"lambda {chosen['EXACT_LAMBDA']}"),
        ("replay", "replay", f"1024 examples, ratio {chosen['RATIO']}"),
        ("both", "EWC + replay", f"lambda {chosen['BOTH_LAMBDA']}, ratio {chosen['BOTH_RATIO']}"),
        ("joint", "joint training (upper bound)", "all tasks at once")]
stats, mats = {}, {}
for key, _, _ in rows:
    avg, bwt, fgt, mat = [], [], [], [[[] for _ in range(K)] for _ in range(K)]
    for s in seeds:
        if key == "joint":
            acc = [float(re.search(r"eval_accuracy=([0-9.]+)", open(f"{out}/runs/joint-s{s}/eval-{k}.txt").read()).group(1))
                   for k in range(K)]
            avg.append(sum(acc) / K)
            for k in range(K):
                mat[K - 1][k].append(acc[k])
            continue
        r = json.load(open(f"{out}/runs/{key}-s{s}/continual.json"))
        avg.append(r["average"]), bwt.append(r["backward_transfer"]), fgt.append(r["forgetting"])
        for i in range(K):
            for j in range(i + 1):
                mat[i][j].append(r["R"][i][j])
    stats[key] = (avg, bwt, fgt)
    mats[key] = [[statistics.mean(c) if c else None for c in row] for row in mat]
def ms(xs):
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} +- {sd:.4f}"
lines = [f"Test accuracy, {len(seeds)} seeds ({' '.join(seeds)}), mean +- sd; settings chosen on "
         "the validation split of the tuning seed", "",
         "| method | settings | average accuracy | backward transfer | forgetting |",
         "| --- | --- | --- | --- | --- |"]
for key, name, setting in rows:
    a, b, f = stats[key]
    lines.append(f"| {name} | {setting} | {ms(a)} | {ms(b)} | {ms(f)} |")
lines += ["", "Mean accuracy matrices over the seeds (row: after training task i; column: task j;"
          " joint: its one model on every task)", ""]
for key, name, _ in rows:
    lines.append(f"{name}:")
    lines.append("```")
    lines.append("after \\ on " + " ".join(f"{'perm' + str(j):>7}" for j in range(K)))
    for i in range(K):
        if key == "joint" and i < K - 1:
            continue
        lines.append(f"{'perm' + str(i) if key != 'joint' else 'joint':<10} " +
                     " ".join(f"{v:7.4f}" if v is not None else f"{'':>7}" for v in mats[key][i]))
    lines.append("```")
mean = {k: statistics.mean(v[0]) for k, v in stats.items()}
sd = {k: (statistics.stdev(v[0]) if len(v[0]) > 1 else 0.0) for k, v in stats.items()}
fg = {k: statistics.mean(v[2]) for k, v in stats.items() if v[2]}
aims = [("EWC alone above naive by more than 2 sd", mean["ewc"] - mean["naive"] > 2 * max(sd["ewc"], sd["naive"])),
        ("EWC alone above L2 by more than 2 sd", mean["ewc"] - mean["l2"] > 2 * max(sd["ewc"], sd["l2"])),
        ("EWC + replay at least 30 points above naive", mean["both"] - mean["naive"] >= 0.30),
        ("EWC + replay forgetting at most a third of naive's", fg["both"] <= fg["naive"] / 3)]
lines += ["", "Aims (sd: the larger of the two rows'):"]
lines += [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in aims]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"naive_acc={mean['naive']:.4f} ewc_acc={mean['ewc']:.4f} replay_acc={mean['replay']:.4f} "
      f"both_acc={mean['both']:.4f} naive_forgetting={fg['naive']:.4f} "
      f"both_forgetting={fg['both']:.4f} l2_acc={mean['l2']:.4f} joint_acc={mean['joint']:.4f} "
      f"seeds={len(seeds)}")
PY
