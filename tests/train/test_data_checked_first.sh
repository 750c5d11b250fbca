#!/usr/bin/env bash
# test_data_checked_first.sh: every data file of every task, and of a plain run, is opened and
# checked before the model's weights are loaded or the run directory is touched; the error names
# the config or tasks file, the line and the key.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/data_checked_first; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
kjv="$SRC/data/bundled/kjv-train.h5"; eval_file="$SRC/data/bundled/kjv-eval.h5"
# a model directory with weights, so that "loading weights" would show if it came first
"$DSTRAIN" train train.steps=1 export.enabled=true run.dir=base > base.out 2>&1 ||
  { echo "FAIL: base run"; cat base.out; exit 1; }
cat > tasks.yaml <<YAML
tasks:
  - {id: one, train: $kjv, eval: $eval_file, steps: 2}
  - {id: two, train: $kjv, eval: $eval_file, steps: 2}
  - id: three
    train: [$kjv, {path: typo.h5, weight: 0.1}]
    eval: $eval_file
    steps: 2
YAML
"$DSTRAIN" train model.path=base/export continual.tasks=tasks.yaml run.dir=seq > seq.out 2>&1; rc=$?
check "a typo in the last task exits 2" test $rc -eq 2
check "naming the tasks file, the task's line and the key" \
  grep -q "dstrain: error: tasks.yaml:5: tasks\[2\].train: typo.h5: cannot open" seq.out
check "before the weights are loaded" bash -c "! grep -q 'loading weights' seq.out"
check "and before the run directory is made" test ! -e seq
printf 'train:\n  steps: 2\ndata:\n  mode: lm\n  train: missing.h5\n' > plain.yaml
"$DSTRAIN" train -c plain.yaml model.path=base/export run.dir=plain > plain.out 2>&1; rc=$?
check "a plain run's missing file exits 2" test $rc -eq 2
check "naming the config file, the line and the key" \
  grep -q "dstrain: error: plain.yaml:5: data.train: missing.h5: cannot open" plain.out
check "before the weights are loaded, no run directory" bash -c "! grep -q 'loading weights' plain.out && test ! -e plain"
"$DSTRAIN" train -c plain.yaml data.train=gone.h5 run.dir=plain > over.out 2>&1
check "an override is named as such" grep -q "dstrain: error: data.train: gone.h5: cannot open" over.out
echo "data checked first: $passes passed, $fails failed"
[ $fails -eq 0 ]
