#!/usr/bin/env bash
# Every command that reads a model (eval, generate, info, export) takes the same four kinds of
# path and reads the same model from each: a checkpoint (step-N), a checkpoint directory (its
# newest complete checkpoint), a run directory (its checkpoints/, else its export/) and a
# Hugging Face directory (the run's fp32 export). eval's loss and generate's tokens are equal
# across all four; export writes the same model from each; anything else is refused with exit 2.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/checkpoint_model_paths; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
same() { [ "$1" = "$2" ] || { echo "  '$1' != '$2'"; return 1; }; }

# 4 steps of the tiny preset, a checkpoint at 2 and 4, an fp32 export
"$DSTRAIN" train train.steps=4 checkpoint.every=2 train.seq_len=32 train.micro_batch_size=2 \
  export.dtype=fp32 run.dir=run > train.out 2>&1
check "training run exits 0" test $? -eq 0
printf '%s\n' '{"input_ids": [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]}' \
  '{"input_ids": [65, 110, 100, 32, 71, 111, 100, 32, 115, 97, 105, 100]}' > docs.jsonl
"$DSTRAIN" pack --input docs.jsonl --output docs.h5 --vocab-size 320 > /dev/null

step=run/checkpoints/step-00000004
forms=("$step" run/checkpoints run run/export)
for f in "${forms[@]}"; do
  key=$(echo "$f" | tr '/' '_')
  "$DSTRAIN" eval --model "$f" --data docs.h5 > "eval_$key.out" 2> "eval_$key.err"
  check "eval $f exits 0" test $? -eq 0
  "$DSTRAIN" generate --model "$f" --prompt-ids "72 101 108" --max-new-tokens 6 --print-ids \
    > "gen_$key.out" 2> "gen_$key.err"
  check "generate $f exits 0" test $? -eq 0
  "$DSTRAIN" info "$f" > "info_$key.out" 2> "info_$key.err"
  check "info $f exits 0" test $? -eq 0
  "$DSTRAIN" export --checkpoint "$f" --output "out_$key" --dtype fp32 > "export_$key.out" 2>&1
  check "export $f exits 0" test $? -eq 0
done
ref_eval=$(tail -1 "eval_$(echo $step | tr '/' '_').out")
ref_gen=$(cat "gen_$(echo $step | tr '/' '_').out")
check "eval of the step directory prints a loss" grep -q "^eval_loss=" <<< "$ref_eval"
for f in run/checkpoints run run/export; do
  key=$(echo "$f" | tr '/' '_')
  check "eval $f: the same loss as the step directory" same "$(tail -1 "eval_$key.out")" "$ref_eval"
  check "generate $f: the same tokens as the step directory" same "$(cat "gen_$key.out")" "$ref_gen"
done
# which directory was read, said on stderr when it is not the one given
check "checkpoint directory: the newest step" grep -q "reading $step (the newest complete checkpoint of run/checkpoints)" eval_run_checkpoints.err
check "run directory: its newest checkpoint" grep -q "reading $step (the newest complete checkpoint of run)" eval_run.err
check "step directory: nothing to say" test ! -s "eval_$(echo $step | tr '/' '_').err"
for f in "$step" run/checkpoints run; do
  key=$(echo "$f" | tr '/' '_')
  check "info $f: the checkpoint of step 4" grep -q "^step: *4$" "info_$key.out"
done
check "info run/export: a model directory" grep -qi "LlamaForCausalLM" info_run_export.out
# every export holds the same model: the same eval loss from each
for f in "${forms[@]}"; do
  key=$(echo "$f" | tr '/' '_')
  "$DSTRAIN" eval --model "out_$key" --data docs.h5 > "eval_out_$key.out" 2>&1
  check "export of $f: the same eval loss" same "$(tail -1 "eval_out_$key.out")" "$ref_eval"
done
# a run directory whose checkpoints are gone: its export
rm -rf run/checkpoints
"$DSTRAIN" eval --model run --data docs.h5 > eval_export_only.out 2> eval_export_only.err
check "run without checkpoints: eval reads its export" same "$(tail -1 eval_export_only.out)" "$ref_eval"
check "run without checkpoints: says so" grep -q "reading run/export (the export of run)" eval_export_only.err
# refusals: exit 2, one line naming the four kinds
mkdir -p empty
for cmd in "eval --data docs.h5 --model" "generate --prompt-ids 1 --model" "info" "export --output x --checkpoint"; do
  "$DSTRAIN" $cmd empty > refuse.out 2> refuse.err; rc=$?
  check "${cmd%% *} of an empty directory exits 2" test $rc -eq 2
  check "${cmd%% *}: names what it accepts" grep -q "no model there: expected a Hugging Face model directory" refuse.err
done
"$DSTRAIN" eval --model nowhere --data docs.h5 > refuse.out 2> refuse.err
check "eval of a missing path exits 2" test $? -eq 2
mkdir -p broken/step-00000009
"$DSTRAIN" eval --model broken --data docs.h5 > refuse.out 2> refuse.err
check "a checkpoint directory without a complete checkpoint exits 2" test $? -eq 2
check "and says so" grep -q "no complete checkpoint there" refuse.err

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
