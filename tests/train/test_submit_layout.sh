#!/usr/bin/env bash
# test_submit_layout.sh: the job `dstrain submit` renders (--dry-run, no cluster needed) takes
# its ranks from parallel.tp x parallel.dp: a fixed layout as the config says, an auto one on
# GPUs as the fewest GPUs whose memory estimate fits --gpu-mem (deepseek-llm-7b with EWC: tp 4 on
# 80 GiB, tp 2 on an H200, two full nodes with checkpointing at 20 GiB), the CPU's auto as one
# rank; nothing that fits, a layout the job's options contradict and a tp the model cannot split
# are refused in one line with exit 2 and no script; --layout prints the line nightly.sh reads;
# the estimate's figures are the trainer's own; the shipped scrontab asks for what --layout says.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
W=$TMPROOT/train_submit_layout; rm -rf "$W"; mkdir -p "$W"; cd "$W"
fails=0; passes=0
check() { local name=$1; shift; if "$@"; then passes=$((passes+1)); echo "ok: $name"; else echo "FAIL: $name"; fails=$((fails+1)); fi; }
sbatch_value() { sed -n "s/^#SBATCH --$2=//p" "$1"; } # script option
trainer_args() { sed -n "s/.*' train \(.*\) \\\\$/\1/p" "$1"; }
# job NAME [submit args]: renders NAME.sbatch and NAME.err, sets rc
job() { local name=$1; shift; "$DSTRAIN" submit --dry-run "$@" > "$name.sbatch" 2> "$name.err"; rc=$?; }
resources() { # script -> "nodes ntasks-per-node gpus-per-node cpus-per-task"
  echo "$(sbatch_value "$1" nodes) $(sbatch_value "$1" ntasks-per-node) $(sbatch_value "$1" gpus-per-node) $(sbatch_value "$1" cpus-per-task)"
}
one_line() { test "$(wc -l < "$1")" -eq 1; }

cat > 7b-ewc.yaml <<'YAML'
model: {preset: deepseek-llm-7b}
device: cuda
train: {seq_len: 4096, micro_batch_size: 1}
continual:
  ewc: {enabled: true}
YAML
cat > tiny-gpu.yaml <<'YAML'
device: cuda
YAML
cat > fixed.yaml <<'YAML'
model: {preset: deepseek-llm-7b}
device: cuda
train: {seq_len: 4096, micro_batch_size: 1}
parallel: {tp: 2, dp: 2}
YAML

# ---- the CPU: the config's layout, or one rank ----
job cpu
check "cpu, auto: exit 0" test $rc -eq 0
check "cpu, auto: one node, one task, no GPU" test "$(resources cpu.sbatch)" = "1 1  1"
check "cpu, auto: the trainer gets tp 1 x dp 1" test "$(trainer_args cpu.sbatch)" = "parallel.tp=1 parallel.dp=1"
job cpu-dp2 parallel.dp=2
check "cpu, dp 2: two tasks" test "$(resources cpu-dp2.sbatch)" = "1 2  1"
check "cpu, dp 2: the trainer gets tp 1 x dp 2, once" test "$(trainer_args cpu-dp2.sbatch)" = "parallel.tp=1 parallel.dp=2"
job cpu-tasks --tasks-per-node 2
check "cpu, --tasks-per-node 2: data parallel over the two ranks" test "$(resources cpu-tasks.sbatch) $(trainer_args cpu-tasks.sbatch)" = "1 2  1 parallel.tp=1 parallel.dp=2"
job cpu-tp2 parallel.tp=2
check "cpu, tp 2: two tasks, tp 2 x dp 1" test "$(resources cpu-tp2.sbatch) $(trainer_args cpu-tp2.sbatch)" = "1 2  1 parallel.tp=2 parallel.dp=1"

# ---- GPUs: the fewest that fit ----
job tiny-gpu -c tiny-gpu.yaml
check "tiny on cuda: one GPU, 8 CPUs" test "$(resources tiny-gpu.sbatch)" = "1 1 1 8"
job 7b-80 -c 7b-ewc.yaml
check "7b with EWC on 80 GiB GPUs: tp 4 x dp 1 on 4 GPUs" test "$(resources 7b-80.sbatch) $(trainer_args 7b-80.sbatch)" = "1 4 4 8 -c '$W/7b-ewc.yaml' parallel.tp=4 parallel.dp=1"
check "it says why and how much" grep -q "^dstrain: submit: layout tp 4 x dp 1 (the fewest GPUs that fit --gpu-mem) on 1 node x 4 GPUs; estimate 55.8 GiB per rank (.*EWC 12.9, bf16 weights 3.2)$" 7b-80.err
job 7b-nocopy -c 7b-ewc.yaml cuda.weight_copy=none
check "cuda.weight_copy none: no bf16 weights counted, 3.2 GiB less a rank" grep -q "; estimate 52.6 GiB per rank (parameters 6.4, gradients 6.4, optimizer 12.9, activations 14.0, EWC 12.9)$" 7b-nocopy.err
job 7b-tf32 -c 7b-ewc.yaml precision=tf32
check "precision tf32 (fp32 storage) has no bf16 weights either" grep -q "; estimate 52.6 GiB per rank (.*EWC 12.9)$" 7b-tf32.err
job 7b-h200 -c 7b-ewc.yaml --gpu-mem 141
check "7b with EWC on H200s (--gpu-mem 141): tp 2 x dp 1" test "$(resources 7b-h200.sbatch) $(trainer_args 7b-h200.sbatch)" = "1 2 2 8 -c '$W/7b-ewc.yaml' parallel.tp=2 parallel.dp=1"
job 7b-tp1 -c 7b-ewc.yaml --gpu-mem 141 parallel.tp=1
check "with tp 1 fixed, dp grows until the shards fit: dp 3" test "$(resources 7b-tp1.sbatch) $(trainer_args 7b-tp1.sbatch)" = "1 3 3 8 -c '$W/7b-ewc.yaml' parallel.tp=1 parallel.dp=3"
job 7b-nodes -c 7b-ewc.yaml --gpu-mem 20 train.activation_checkpointing=true
check "more than a node: two full nodes of 8, the multi-node template" test "$(resources 7b-nodes.sbatch) $(grep -c 'on several nodes' 7b-nodes.sbatch)" = "2 8 8 8 1"
check "... tp 8 x dp 2" grep -q "parallel.tp=8 parallel.dp=2 \\\\$" 7b-nodes.sbatch
job 7b-b2 -c 7b-ewc.yaml --gpu-mem 141 train.micro_batch_size=2
check "micro_batch_size 2: the Fisher pass's one-row model is counted, and needs tp 4" bash -c "grep -q 'layout tp 4 x dp 1 .*Fisher pass model' 7b-b2.err"
job 7b-given -c 7b-ewc.yaml --gpus-per-node 8
check "--gpus-per-node 8 fixes the ranks: tp 8 x dp 1 in them" test "$(resources 7b-given.sbatch) $(trainer_args 7b-given.sbatch | grep -o 'parallel.*')" = "1 8 8 8 parallel.tp=8 parallel.dp=1"

# ---- a layout the config fixes: as it is, with a warning when it does not fit ----
job fixed -c fixed.yaml
check "tp 2 x dp 2 from the config: 4 GPUs" test "$(resources fixed.sbatch) $(trainer_args fixed.sbatch | grep -o 'parallel.*')" = "1 4 4 8 parallel.tp=2 parallel.dp=2"
check "no warning where it fits 80 GiB" bash -c "! grep -q warning fixed.err"
job fixed-small -c fixed.yaml --gpu-mem 40
check "a fixed layout over --gpu-mem is kept, with a warning" test "$rc $(sbatch_value fixed-small.sbatch ntasks-per-node)" = "0 4"
check "... that names the estimate" grep -q "warning: submit: parallel.tp x parallel.dp = 2 x 2: the estimate, 6[0-9.]* GiB per GPU, is more than --gpu-mem 40 GiB" fixed-small.err

# ---- refusals: one line, exit 2, no script ----
job none -c 7b-ewc.yaml --gpu-mem 10
check "nothing fits 10 GiB: exit 2, no script" test "$rc $(wc -c < none.sbatch)" = "2 0"
check "... one line naming the least memory and what to change" bash -c "one_line() { test \$(wc -l < \$1) -eq 1; }; one_line none.err && grep -q '^dstrain: error: parallel layout: nothing fits 10.0 GiB per GPU (--gpu-mem): the least is 31.9 GiB at tp 8 x dp 1 .*activation_checkpointing' none.err"
check "... and what the lighter checkpointing modes would take there" grep -q "set train.activation_checkpointing: selective (the least then 27.7 GiB) or true (23.7 GiB), or use GPUs with more memory$" none.err
job none-ckpt -c 7b-ewc.yaml --gpu-mem 10 train.activation_checkpointing=true
check "checkpointing already true: refused, the least 23.7 GiB, no mode to add" bash -c "test $rc -eq 2 && grep -q 'the least is 23.7 GiB at tp 8 x dp 1 ' none-ckpt.err && grep -q 'seq_len, or use GPUs with more memory$' none-ckpt.err && ! grep -q 'set train.activation_checkpointing' none-ckpt.err"
job none-given -c 7b-ewc.yaml --gpus-per-node 2
check "2 GPUs that cannot hold it: exit 2, one line" bash -c "[ $rc -eq 2 ] && [ \$(wc -l < none-given.err) -eq 1 ] && grep -q \"nothing fits 80.0 GiB per GPU (--gpu-mem) on the job's 2 ranks\" none-given.err"
job contradicts -c fixed.yaml --gpus-per-node 2
check "tp 2 x dp 2 on a job of 2 GPUs: exit 2, one line" bash -c "[ $rc -eq 2 ] && [ \$(wc -l < contradicts.err) -eq 1 ] && grep -q 'parallel.tp x parallel.dp: 2 x 2 = 4 ranks, but the job has 2' contradicts.err"
job tp3 -c 7b-ewc.yaml parallel.tp=3
check "a tp that does not split the heads: exit 2, the model's reason" bash -c "[ $rc -eq 2 ] && [ \$(wc -l < tp3.err) -eq 1 ] && grep -q 'parallel.tp: 3 does not divide' tp3.err"
job tp16 -c 7b-ewc.yaml parallel.tp=16
check "a tp larger than a node: exit 2" bash -c "[ $rc -eq 2 ] && grep -q 'parallel.tp: 16 ranks do not fit on one node of 8 (--node-gpus)' tp16.err"
job dp-over --tasks-per-node 1 parallel.dp=2
check "cpu: dp 2 on a job of 1 rank: exit 2" bash -c "[ $rc -eq 2 ] && grep -q \"parallel.dp: 2 does not divide the job's 1 ranks\" dp-over.err"
job badmem -c 7b-ewc.yaml --gpu-mem 0
check "--gpu-mem 0 is refused" bash -c "[ $rc -eq 2 ] && grep -q 'submit: --gpu-mem: expected GiB' badmem.err"

# ---- --layout: one line for scripts (nightly.sh) ----
"$DSTRAIN" submit -c 7b-ewc.yaml --gpu-mem 141 --layout > layout.out 2> layout.err; rc=$?
check "--layout prints the layout and nothing else" test "$rc $(cat layout.out)" = "0 tp=2 dp=1 nodes=1 tasks_per_node=2 gpus_per_node=2 gib_per_gpu=103.48"
# the shipped scrontab asks for the GPUs and tasks that a 7b night with EWC on H200s needs
scron() { sed -n "s/^#SCRON --$1=//p" "$SRC/slurm/nightly.scrontab"; }
check "the scrontab's tasks and GPUs are --layout's for 7b with EWC on H200s" test "$(scron nodes) $(scron ntasks-per-node) $(scron gpus-per-node)" = "1 2 2"

# ---- the estimate's figures are the ones the trainer allocates (CPU, tiny, EWC) ----
ewc=(continual.ewc.enabled=true continual.ewc.fisher.samples=2 train.steps=1)
"$DSTRAIN" submit --layout "${ewc[@]}" > /dev/null 2> est.err
"$DSTRAIN" train "${ewc[@]}" run.dir=tiny > tiny.log 2>&1
fig() { grep 'per rank' "$1" | sed -n "s/.*[ (]$2 \([0-9.]*\).*/\1/p"; }
for what in parameters gradients optimizer activations EWC; do
  check "estimate = trainer: $what" awk -v a="$(fig est.err "$what")" -v b="$(fig tiny.log "$what")" 'BEGIN { exit !(a != "" && b != "" && (a - b < 0.051 && b - a < 0.051)) }'
done

echo "$passes passed, $fails failed"
test $fails -eq 0
