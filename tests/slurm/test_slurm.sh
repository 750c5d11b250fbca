#!/usr/bin/env bash
# test_slurm.sh: dstrain against a real single-node Slurm cluster (slurm/testcluster.sh):
# `dstrain submit` runs a 2-rank CPU job through srun --mpi=pmix; a job requeued mid-run with
# `scontrol requeue` resumes from its checkpoint and ends with the same final loss as an
# uninterrupted run; a job that reaches its time limit gets the warning signal, checkpoints,
# requeues itself and finishes the same way; the nightly command as batch jobs: each file trained
# once, two versions published, a rejected night ends the job with exit code 3 and is not the
# base of the next, a night requeued in the middle of its task resumes there without repeating
# a step, and a job of 2 tasks trains its night as tp 1 x dp 2 through srun. tests/slurm/test_nightly.sh checks the rest of nightly.sh without Slurm.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
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
    # Slurm holds a requeued job back for two minutes; the test waits 20 s (time for the node to
    # clean up the job's previous run, as it would have in those two minutes) and releases it
    if scontrol show job "$1" 2>/dev/null | grep -q "Reason=BeginTime"; then
      held=$((${held:-0} + 1))
      [ "$held" -ge 20 ] && { scontrol update JobId="$1" StartTime=now 2>/dev/null; held=0; }
    fi
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
for _ in $(seq 1 60); do [ "$(job_state "$id")" = PENDING ] || break; sleep 1; done
if [ "$(job_state "$id")" = PENDING ]; then # a cluster that cannot run the job: stop here
  scontrol show job "$id"; echo "FAIL: the job does not start"; echo "$passes passed, $((fails + 1)) failed"; exit 1
fi
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

# 3. the nightly command, as a batch job on the cluster, twice, with a new file in between
python3 - <<'PY'
import json, random
random.seed(1)
words = ("the of and to in that is was for it with as on be at by not are from or have an which "
         "one were all there would their when who will more if out so what up about into than "
         "them can only other new some time these two may then first any now over after").split()
for name, topic in (("monday", "market report"), ("tuesday", "plant sensor log"), ("friday", "audit")):
    with open(f"{name}.jsonl", "w") as f:
        for _ in range(60):
            text = topic + ": " + " ".join(random.choice(words) for _ in range(random.randint(20, 60)))
            f.write(json.dumps({"input_ids": [256] + list(text.encode())}) + "\n")
PY
cat > nightly.yaml <<'YAML'
model: {preset: tiny}
train: {seq_len: 64, micro_batch_size: 8, seed: 3}
optim: {lr: 2.0e-3, warmup_steps: 2}
continual:
  ewc: {enabled: true, lambda: 1, fisher: {samples: 16}}
  replay: {capacity: 64, ratio: 0.25}
log: {every: 5}
YAML
mkdir -p drop
nightly_submit() { # submits one nightly run as a batch job; sets nightly_id
  nightly_id=$(sbatch --parsable --requeue --job-name=nightly --output="$W/nightly-%j.log" --open-mode=append --wrap \
    "DSTRAIN=$DSTRAIN $SRC/slurm/nightly.sh -c $W/nightly.yaml --drop $W/drop --state $W/state --serve $W/serve --max-forgetting 0.5 $*")
}
nightly() { # one nightly run as a batch job; prints its log
  nightly_submit "$@"; wait_done "$nightly_id" 300; cat "$W/nightly-$nightly_id.log"
}
exit_code() { scontrol show job "$1" 2>/dev/null | sed -n 's/.* ExitCode=\([0-9]*\):.*/\1/p'; }
cp monday.jsonl drop/
nightly > n1.log
nightly > n1b.log
cp tuesday.jsonl drop/
nightly > n2.log
check "night 1 publishes version 0001" grep -q "published night 0001 as .*versions/0001" n1.log
check "a second start with nothing new does nothing" grep -q "nothing to do" n1b.log
check "night 2 trains only the new file" test "$(cut -f2 state/nights/0002/files.tsv)" = tuesday.jsonl
check "each file is claimed by exactly one night" test "$(cat state/nights/*/files.tsv | cut -f1 | sort | uniq -d | wc -l)" -eq 0
check "night 2 starts from night 1's model" grep -q "path: $W/state/nights/0001/run/export" state/nights/0002/run/config.yaml
check "night 2 carries EWC and replay state" grep -q "state from $W/state/nights/0001/run/continual-state" n2.log
check "night 2 gates on the earlier night's held-out split" grep -q "n0001-1" state/nights/0002/gate.tsv
check "two versions, current is 0002" test "$(readlink serve/current)" = versions/0002 -a -d serve/versions/0001
check "the versions load in dstrain" "$DSTRAIN" eval --model serve/current --data state/nights/0002/data/n0002-1-eval.h5 --seq-len 64
# an interrupted night (killed after claiming its file) is finished by the next start, not repeated
cp friday.jsonl drop/
# killed as soon as it has claimed the file (a fixed delay raced a fast night to the end)
DSTRAIN=$DSTRAIN setsid "$SRC/slurm/nightly.sh" -c nightly.yaml --drop drop --state state --serve serve > n3a.log 2>&1 &
n3=$!
for _ in $(seq 600); do [ -s state/nights/0003/files.tsv ] && break; sleep 0.01; done
kill -KILL -- -"$n3" 2>/dev/null; wait "$n3" 2>/dev/null
nightly --max-eval-loss 0.01 > n3.log
check "the interrupted night is finished, not claimed again" test "$(ls state/nights | grep -c '^[0-9]*$')" -eq 3
check "a night that fails its thresholds is not published and says why" grep -q "not published.*eval loss" n3.log
check "a rejected night ends its job with exit code 3" test "$(exit_code "$nightly_id")" = 3
check "its status.json says rejected" grep -q '"result": "rejected"' state/nights/0003/status.json
check "current stays at 0002" test "$(readlink serve/current)" = versions/0002
nightly > n4.log
check "a rejected night is not trained again" grep -q "nothing to do" n4.log
# a night requeued in the middle of its task (Slurm signals the job) resumes there
python3 - <<'PY'
import json, random
random.seed(8)
words = "the of and to in that is was for it with as on be at by not are from or have an".split()
with open("drop/saturday.jsonl", "w") as f:
    for _ in range(60):
        text = "market report: " + " ".join(random.choice(words) for _ in range(random.randint(20, 60)))
        f.write(json.dumps({"input_ids": [256] + list(text.encode())}) + "\n")
PY
export DSTRAIN_STEP_SLEEP_MS=400
nightly_submit
for _ in $(seq 1 300); do
  [ -f state/nights/0004/run/metrics.jsonl ] && [ "$(grep -c '"loss"' state/nights/0004/run/metrics.jsonl)" -ge 6 ] && break; sleep 1
done
scontrol requeue "$nightly_id"
check "the requeued night finishes" wait_done "$nightly_id" 400
unset DSTRAIN_STEP_SLEEP_MS
cat "$W/nightly-$nightly_id.log" > n5.log
check "it was restarted" test "$(restarts "$nightly_id")" -ge 1
check "the first run was preempted (exit 75)" grep -q "preempted; the next start resumes night 0004" n5.log
check "the restart resumed inside the task" grep -qE "resumed from .*step-0*[1-9][0-9]* at step [1-9]" n5.log
check "the rejected night 3 is not its base" test "$(cat state/nights/0004/base)" = "0002 0002"
total=$(sed -n 's/.*tasks.yaml, \([0-9]*\) steps in all.*/\1/p' n5.log | tail -1)
steps=$(python3 -c "
import json
s = [json.loads(l)['step'] for l in open('state/nights/0004/run/metrics.jsonl') if '\"eval_task\"' not in l]
print(len(s), len(set(s)))")
check "each of its $total steps ran once" test "$steps" = "$total $total"
check "it was published as version 0003" test "$(readlink serve/current)" = versions/0003
# a night of two ranks: a job of 2 tasks runs the trainer as tp 1 x dp 2 through srun --mpi=pmix
python3 - <<'PY'
import json, random
random.seed(9)
words = "the of and to in that is was for it with as on be at by not are from or have an".split()
with open("drop/sunday.jsonl", "w") as f:
    for _ in range(60):
        text = "plant sensor log: " + " ".join(random.choice(words) for _ in range(random.randint(20, 60)))
        f.write(json.dumps({"input_ids": [256] + list(text.encode())}) + "\n")
PY
dp_id=$(sbatch --parsable --ntasks=2 --job-name=nightly-dp2 --output="$W/nightly-%j.log" --wrap \
  "DSTRAIN=$DSTRAIN $SRC/slurm/nightly.sh -c $W/nightly.yaml --drop $W/drop --state $W/state --serve $W/serve --max-forgetting 0.5")
check "the 2-task night finishes" wait_done "$dp_id" 300
cat "$W/nightly-$dp_id.log" > n6.log
check "its trainer was started by srun over the job's 2 tasks as tp 1 x dp 2" grep -q "night 0005: tp 1 x dp 2 (2 ranks, started by srun --mpi=pmix --kill-on-bad-exit=1 --ntasks=2)" n6.log
check "the trainer ran 2 ranks" grep -q "^dstrain: 2 ranks (tp 1 x dp 2" n6.log
check "the night ended published or rejected by the gate" grep -qE '"result": "(published|rejected)"' state/nights/0005/status.json
# the scrontab entry: Debian's Slurm ships no scrontab command, so its #SCRON options are checked
# by sbatch --test-only (with this cluster's partition) and the schedule line by its shape
opts=$(sed -n 's/^#SCRON //p' "$SRC/slurm/nightly.scrontab" | sed -e 's/--partition=.*/--partition=debug/' -e '/--qos=/d' -e '/--gpus-per-node=/d' -e 's/--cpus-per-task=.*/--cpus-per-task=1/' -e 's|--output=.*|--output=/dev/null|' | tr '\n' ' ')
check "scrontab #SCRON options accepted by sbatch" sbatch --test-only $opts --wrap true
check "scrontab schedule line" grep -qE '^[0-9*,/-]+ [0-9*,/-]+ [0-9*,/-]+ [0-9*,/-]+ [0-9*,/-]+ .*nightly.sh' "$SRC/slurm/nightly.scrontab"

echo "$passes passed, $fails failed"
test $fails -eq 0
