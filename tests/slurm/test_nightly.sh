#!/usr/bin/env bash
# test_nightly.sh: slurm/nightly.sh run directly (no Slurm), night after night on a tiny model:
# lineage (a rejected night is not the base of the next), the gate against the served model,
# status.json and its exit codes, a night killed at each step of its publication publishes once,
# a failed export is a failure, a failing night is retried then quarantined while the next file
# trains, only complete files are claimed, a night preempted in its task resumes without
# repeating a step, the general replay share, a lock the file system refuses is an error, two
# state directories never reuse a version, retention, rollback, the history matrix, the
# Prometheus files (promtool), and nights of several ranks (mpirun outside Slurm, srun over a
# job's tasks, a job that does not match the layout). tests/slurm/test_slurm.sh runs the same
# script on the cluster.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
W=$TMPROOT/nightly; rm -rf "$W"; mkdir -p "$W"; cd "$W"
NIGHTLY=$SRC/slurm/nightly.sh
fails=0; passes=0
check() { local name=$1; shift; if "$@"; then passes=$((passes+1)); echo "ok: $name"; else echo "FAIL: $name"; fails=$((fails+1)); fi; }
field() { python3 -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v)" "$1" "$2"; }
nightly() { # nightly [env ...] -- args: runs nightly.sh, prints its exit code on the last line of NAME.log
  DSTRAIN=$DSTRAIN bash "$NIGHTLY" -c nightly.yaml --drop drop --state state --serve serve "$@"
}
make_jsonl() { # name seed topic [lines]
  python3 - "$@" <<'PY'
import json, random, sys
name, seed, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = int(sys.argv[4]) if len(sys.argv) > 4 else 60
random.seed(seed)
words = ("the of and to in that is was for it with as on be at by not are from or have an which "
         "one were all there would their when who will more if out so what up about into than").split()
with open(name, "w") as f:
    for _ in range(lines):
        text = topic + ": " + " ".join(random.choice(words) for _ in range(random.randint(20, 50)))
        f.write(json.dumps({"input_ids": [256] + list(text.encode())}) + "\n")
PY
}
make_jsonl monday.jsonl 1 "market report"
make_jsonl tuesday.jsonl 2 "plant sensor log"
make_jsonl wednesday.jsonl 3 "audit"
make_jsonl thursday.jsonl 4 "shift notes"
make_jsonl friday.jsonl 5 "weather"
make_jsonl saturday.jsonl 6 "inventory"
make_jsonl general.jsonl 9 "general" 400
"$DSTRAIN" pack --input general.jsonl --output general.h5 >/dev/null
make_jsonl general-eval.jsonl 10 "general" 30
"$DSTRAIN" pack --input general-eval.jsonl --output general-eval.h5 >/dev/null
# token 400 is outside the tiny model's vocabulary (320): packs, then the trainer refuses it
python3 -c "
import json
with open('bad.jsonl', 'w') as f:
    for i in range(30): f.write(json.dumps({'input_ids': [256, 400, 3 + i, 7]}) + '\n')"
cat > nightly.yaml <<'YAML'
model: {preset: tiny}
train: {seq_len: 32, micro_batch_size: 8, seed: 3}
optim: {lr: 2.0e-3, warmup_steps: 2}
continual:
  ewc: {enabled: true, lambda: 1, fisher: {samples: 8}}
  replay: {capacity: 64, ratio: 0.25}
log: {every: 5}
# the nightly script's own settings; the trainer never sees this section
nightly:
  general_eval: general-eval.h5   # text the model must keep
  max_general_rise: 0.5
  post_publish: echo "$DSTRAIN_VERSION" >> hook.log
YAML
mkdir -p drop

# 1. the first night publishes version 1 from the base model
cp monday.jsonl drop/
nightly --max-forgetting 0.5 > n1.log 2>&1; rc=$?
check "night 1 publishes (exit 0)" test $rc -eq 0
check "night 1: status published, base 0, version 1" test "$(field state/nights/0001/status.json result) $(field state/nights/0001/status.json base) $(field state/nights/0001/status.json version)" = "published 0 1"
check "the general held-out set is gated" grep -q '"kind": "general"' state/nights/0001/status.json
check "the hook ran once with the version" test "$(cat hook.log)" = 0001
check "the trainer's config has no nightly section" bash -c "! grep -q '^nightly:' state/base.yaml"
check "the held-out split is not the training file" test "$(cut -f2 state/nights/0001/evals.tsv)" = "$W/state/nights/0001/data/n0001-1-eval.h5"

# 2. a night the gate rejects: exit 3, current stays, the candidate is kept, never a base
cp tuesday.jsonl drop/
nightly --max-forgetting 0.5 --max-eval-loss 0.01 > n2.log 2>&1; rc=$?
check "a rejected night exits 3" test $rc -eq 3
check "night 2: status rejected, base 1, version 1 (still current)" test "$(field state/nights/0002/status.json result) $(field state/nights/0002/status.json base) $(field state/nights/0002/status.json version)" = "rejected 1 1"
check "the reason names the threshold" grep -q "max-eval-loss 0.01" state/nights/0002/status.json
check "current stays at 0001" test "$(readlink serve/current)" = versions/0001
check "the rejected candidate is kept for inspection" test -f state/nights/0002/candidate/config.json
check "the served model was compared on the new data" python3 -c "
import json; g=[x for x in json.load(open('state/nights/0002/status.json'))['gate'] if x['kind']=='new']; assert g and g[0]['served'] is not None"
check "the Prometheus file says rejected" grep -qx 'dstrain_nightly_last_result{result="rejected"} 1' state/nightly.prom
check "promtool accepts the metrics" bash -c "promtool check metrics < state/nightly.prom"
check "promtool accepts the alert rules" promtool check rules "$SRC/slurm/nightly-alerts.yml"

# 3. the next night trains from night 1 (published), not night 2 (rejected); killed at each step
# of its way to publication, one step further each start, it publishes exactly once
cp wednesday.jsonl drop/
for step in claim claimed trained candidate gate reserve copy rename lineage current published hook status; do
  DSTRAIN_NIGHTLY_KILL_AT=$step nightly --max-forgetting 0.5 >> n3-kills.log 2>&1
  grep -q "killed at $step" n3-kills.log || echo "note: the kill at $step was not reached"
done
nightly --max-forgetting 0.5 > n3.log 2>&1; rc=$?
check "every kill point was reached" test "$(grep -c 'killed at' n3-kills.log)" -eq 13
check "night 3 ends published (exit 0)" test "$rc $(field state/nights/0003/status.json result)" = "0 published"
check "night 3 trained from night 1's model" grep -q "path: $W/state/nights/0001/run/export" state/nights/0003/run/config.yaml
check "night 3's base is version 1" test "$(field state/nights/0003/status.json base)" = 1
check "published exactly once: versions 0001 and 0002 only" test "$(ls serve/versions | tr '\n' ' ')" = "0001 0002 "
check "no half-published directory is left" test -z "$(ls -A serve/versions | grep '^\.')"
check "current is 0002" test "$(readlink serve/current)" = versions/0002
check "the hook ran once for version 2" test "$(tr '\n' ' ' < hook.log)" = "0001 0002 "
check "night 3 trained once" test "$(grep -c 'dstrain: task 1/1:' n3-kills.log)" -eq 1
check "a fourth start has nothing to do" bash -c "DSTRAIN=$DSTRAIN bash $NIGHTLY -c nightly.yaml --drop drop --state state --serve serve | grep -q 'nothing to do'"
check "a start with nothing to do refreshes its run time for the alert rule" grep -q '^dstrain_nightly_last_run_timestamp_seconds [0-9]' state/nightly.prom
check "the history matrix has a row per version" test "$(cut -f1 state/history-matrix.tsv | tr '\n' ' ')" = "version 1 2 "
check "... and a column per held-out set, every night's" test "$(head -1 state/history-matrix.tsv | tr '\t' ' ')" = "version n0001-1 general n0002-1 n0003-1"
check "version 2 was evaluated on every earlier night's set" test "$(awk -F'\t' '$1 == 2' state/history-matrix.tsv | grep -c -- '-')" -eq 0
# dstrain plot draws it (tests/ops/test_inspect.sh: garbled matrices)
if command -v gnuplot >/dev/null; then
  "$DSTRAIN" plot state > plot.out 2> plot.err; rc=$?
  check "dstrain plot STATE draws the history (exit 0)" grep -q "^dstrain: plot of the history of 2 published versions on 4 held-out sets (8 losses) written to state/history.png$" plot.out
  check "... a 1200x1000 PNG, nothing on stderr" bash -c "[ $rc -eq 0 ] && [ ! -s plot.err ] && python3 -c \"
import struct; b = open('state/history.png', 'rb').read(32)
assert b[:8] == b'\\x89PNG\\r\\n\\x1a\\n' and struct.unpack('>II', b[16:24]) == (1200, 1000), b\""
else
  echo "SKIP: gnuplot is not installed (tools/install-deps.sh installs it)"
fi

# 4. a failed export is a failure (exit 4); the next start exports without training again
cat > failing-export.sh <<SH
#!/bin/sh
[ "\$1" = export ] && { echo "dstrain: error: export: disk full (test)" >&2; exit 1; }
exec "$DSTRAIN" "\$@"
SH
chmod +x failing-export.sh
cp thursday.jsonl drop/
DSTRAIN=$W/failing-export.sh bash "$NIGHTLY" -c nightly.yaml --drop drop --state state --serve serve --max-forgetting 0.5 > n4a.log 2>&1; rc=$?
check "a failed export fails the night (exit 4)" test $rc -eq 4
check "night 4: status failed, reason export" bash -c "grep -q '\"result\": \"failed\"' state/nights/0004/status.json && grep -q 'export' state/nights/0004/status.json"
check "nothing was published" test "$(readlink serve/current)" = versions/0002
nightly --max-forgetting 0.5 > n4.log 2>&1; rc=$?
check "the retry publishes night 4 without training again" test "$rc $(field state/nights/0004/status.json result) $(grep -c 'dstrain: task 1/1:' n4.log)" = "0 published 0"

# 5. a failing night is retried (--max-attempts 2), then quarantined; the next file trains
cp bad.jsonl drop/
nightly --max-forgetting 0.5 --max-attempts 2 > n5a.log 2>&1; rc=$?
check "a failing night exits 4" test $rc -eq 4
check "its status says attempt 1 of 2" grep -q "attempt 1 of 2" state/nights/0005/status.json
cp friday.jsonl drop/
nightly --max-forgetting 0.5 --max-attempts 2 > n5b.log 2>&1; rc=$?
check "the second failure quarantines it (exit 5)" test $rc -eq 5
check "the quarantine lists its file" test "$(cut -f1,3 state/quarantine.tsv)" = "0005	bad.jsonl"
check "the next file trained and published in the same start" test "$(cut -f2 state/nights/0006/files.tsv) $(field state/nights/0006/status.json result)" = "friday.jsonl published"
check "the quarantined night's held-out set is not gated" bash -c "! grep -q n0005 state/nights/0006/gate.tsv"

# 6. only complete files: a .part file is never claimed; with --claim ready, only NAME.ready ones
make_jsonl drop/saturday.jsonl.part 6 "inventory"
nightly --max-forgetting 0.5 > n6a.log 2>&1
check "a .part file is not claimed" grep -q "nothing to do" n6a.log
mv drop/saturday.jsonl.part drop/saturday.jsonl
make_jsonl drop/sunday.jsonl 7 "sunday"
nightly --max-forgetting 0.5 --claim ready > n6b.log 2>&1
check "without NAME.ready nothing is claimed" grep -q "nothing to do" n6b.log
touch drop/saturday.jsonl.ready
# 7. ... and that night is preempted in its task (USR1, as Slurm warns), then resumed
DSTRAIN_STEP_SLEEP_MS=400 DSTRAIN=$DSTRAIN bash "$NIGHTLY" -c nightly.yaml --drop drop --state state --serve serve \
  --max-forgetting 0.5 --claim ready > n7a.log 2>&1 &
pid=$!
for _ in $(seq 600); do
  [ -f state/nights/0007/run/metrics.jsonl ] && [ "$(grep -c '"loss"' state/nights/0007/run/metrics.jsonl)" -ge 6 ] && break
  sleep 0.1
done
kill -USR1 "$pid"; wait "$pid"; rc=$?
check "with NAME.ready the file is claimed alone" test "$(cut -f2 state/nights/0007/files.tsv)" = saturday.jsonl
check "a preempted night exits 75" test $rc -eq 75
check "its status says preempted" test "$(field state/nights/0007/status.json result)" = preempted
done_steps=$(grep '"loss"' state/nights/0007/run/metrics.jsonl | grep -vc eval_task)
nightly --max-forgetting 0.5 --claim ready > n7.log 2>&1; rc=$?
total=$(sed -n 's/.*tasks.yaml, \([0-9]*\) steps in all.*/\1/p' n7.log)
steps=$(python3 -c "
import json, sys
s = [json.loads(l)['step'] for l in open('state/nights/0007/run/metrics.jsonl') if '\"eval_task\"' not in l]
print(len(s), len(set(s)))")
check "the resume started inside the task (step $done_steps of $total)" grep -q "resumed from .*step-0*$done_steps at step $done_steps" n7.log
check "each of the $total steps ran exactly once" test "$steps" = "$total $total"
check "the resumed night published" test "$rc $(field state/nights/0007/status.json result)" = "0 published"

# 8. a general replay share of 0.2 (many rows a step, so the share is measured over thousands)
mkdir -p drop2 && cp monday.jsonl drop2/
DSTRAIN=$DSTRAIN bash "$NIGHTLY" -c nightly.yaml --drop drop2 --state state2 --serve serve2 --max-forgetting 0.5 \
  --general-train general.h5 --general-share 0.2 --epochs 4 train.seq_len=8 train.micro_batch_size=64 > n8.log 2>&1; rc=$?
check "the night with a general share publishes" test "$rc $(field state2/nights/0001/status.json result)" = "0 published"
check "its task is a mixture" grep -q "{path: \"$W/general.h5\", weight: 0.2}" state2/nights/0001/tasks.yaml
share=$(python3 - state2/nights/0001/run/checkpoints <<'PY'
import glob, json, struct, sys
ck = sorted(glob.glob(sys.argv[1] + "/step-*"))[-1]
f = open(glob.glob(ck + "/rank-*.safetensors")[0], "rb")
n = struct.unpack("<Q", f.read(8))[0]; header = json.loads(f.read(n))
a, b = header["blob/reader.state"]["data_offsets"]
f.seek(8 + n + a); st = f.read(b - a)
# DataReaderState: version, mode, seq_len, n_sources (int32), seed, global_sample, consumed[16]
n_sources = struct.unpack_from("<i", st, 12)[0]
consumed = struct.unpack_from("<16q", st, 32)[:n_sources]
print(f"{consumed[1] / sum(consumed):.4f} {sum(consumed)}")
PY
)
echo "general share read: $share (fraction, rows)"
check "the general share is 0.2 within 1 point over the run" awk -v s="${share% *}" -v n="${share#* }" 'BEGIN { exit !(s > 0.19 && s < 0.21 && n > 2000) }'

# 9. rollback by hand, then the next night trains from the version rolled back to
nightly --rollback 1 > rb.log 2>&1
check "rollback switches current" test "$(readlink serve/current)" = versions/0001
check "rollback sets the lineage" test "$(cat state/lineage)" = "0001 0001"
# another state directory publishing into the same serve directory has reserved version 6
mkdir serve/.reserved/0006 && echo /elsewhere/state/nights/0001 > serve/.reserved/0006/owner
touch drop/sunday.jsonl.ready
nightly --max-forgetting 5 --min-improvement 0 --keep 2 --claim ready > n10.log 2>&1; rc=$?
check "the night after a rollback trains from night 1" grep -q "path: $W/state/nights/0001/run/export" state/nights/0008/run/config.yaml
check "it is published as version 7, not the reserved 6" test "$rc $(readlink serve/current)" = "0 versions/0007"
check "retention (--keep 2) kept the newest 2 versions" test "$(ls serve/versions | tr '\n' ' ')" = "0005 0007 "
check "old nights' checkpoints are pruned" test ! -d state/nights/0001/run/checkpoints -a -d state/nights/0008/run/checkpoints

# 10. a state directory on a file system that refuses locks: an error, not "nothing to do"
cat > nolock.c <<'C'
#include <errno.h>
int flock(int fd, int op) { (void)fd; (void)op; errno = ENOLCK; return -1; }
C
cc -shared -fPIC -o nolock.so nolock.c
LD_PRELOAD=$W/nolock.so DSTRAIN=$DSTRAIN bash "$NIGHTLY" -c nightly.yaml --drop drop --state state --serve serve > n11.log 2>&1; rc=$?
check "a refused lock exits 1" test $rc -eq 1
check "and says the file system refuses locks" grep -q "dstrain: error: nightly: .*/lock: cannot take the lock: the file system refuses locks" n11.log

# 11. several ranks: the layout comes from the config (parallel.dp=2 here); outside Slurm the
# trainer is started by mpirun -np tp x dp, inside a job by srun over the job's tasks, and a job
# whose tasks the layout does not match is refused before anything is claimed
source "$SRC/tests/parallel/mpi_env.sh"
mkdir -p drop3 && cp monday.jsonl drop3/
DSTRAIN=$DSTRAIN bash "$NIGHTLY" -c nightly.yaml --drop drop3 --state state3 --serve serve3 --max-forgetting 0.5 \
  parallel.dp=2 > n12.log 2>&1; rc=$?
check "a dp 2 night publishes" test "$rc $(field state3/nights/0001/status.json result)" = "0 published"
check "it was started by mpirun -np 2 as tp 1 x dp 2" grep -q "night 0001: tp 1 x dp 2 (2 ranks, started by mpirun -np 2)" n12.log
check "the trainer ran 2 ranks, tp 1 x dp 2" grep -q "^dstrain: 2 ranks (tp 1 x dp 2" n12.log
check "its checkpoint was written by 2 ranks" python3 -c "
import glob, json, sys
m = json.load(open(sorted(glob.glob('state3/nights/0001/run/checkpoints/step-*/manifest.json'))[-1]))
assert m['world']['tp'] == 1 and m['world']['dp'] == 2, m['world']"
# inside a Slurm job of 2 tasks (srun stands in: it records its arguments and starts mpirun)
mkdir -p bin && cat > bin/srun <<'SH'
#!/bin/bash
echo "$*" > "$SRUN_ARGS"
n=1; while [[ "$1" == --* ]]; do [[ "$1" == --ntasks=* ]] && n=${1#--ntasks=}; shift; done
exec mpirun -np "$n" "$@"
SH
chmod +x bin/srun
cp tuesday.jsonl drop3/
PATH=$W/bin:$PATH SRUN_ARGS=$W/srun.args SLURM_JOB_ID=88 SLURM_NTASKS=2 SLURM_JOB_NUM_NODES=1 DSTRAIN=$DSTRAIN \
  bash "$NIGHTLY" -c nightly.yaml --drop drop3 --state state3 --serve serve3 --max-forgetting 0.5 > n13.log 2>&1; rc=$?
check "in a job of 2 tasks an auto layout is dp 2 over them" grep -q "night 0002: tp 1 x dp 2 (2 ranks, started by srun --mpi=pmix --kill-on-bad-exit=1 --ntasks=2)" n13.log
check "srun starts the trainer with the layout" grep -q "^--mpi=pmix --kill-on-bad-exit=1 --ntasks=2 $DSTRAIN train .* parallel.tp=1 parallel.dp=2 " srun.args
check "that night publishes too" test "$rc $(field state3/nights/0002/status.json result)" = "0 published"
cp wednesday.jsonl drop3/
SLURM_JOB_ID=89 SLURM_NTASKS=2 SLURM_JOB_NUM_NODES=1 DSTRAIN=$DSTRAIN bash "$NIGHTLY" -c nightly.yaml --drop drop3 \
  --state state3 --serve serve3 parallel.tp=2 parallel.dp=2 > n14.log 2>&1; rc=$?
check "a job whose tasks the config's layout does not match: exit 2" test $rc -eq 2
check "... one line saying what to ask for" bash -c "[ \$(wc -l < n14.log) -eq 1 ] && grep -q '^dstrain: error: nightly: Slurm job 89 has 2 task(s) on 1 node(s): parallel.tp x parallel.dp: 2 x 2 = 4 ranks, but the job has 2 .*needs #SCRON --nodes=1 --ntasks-per-node=4$' n14.log"
check "... and nothing was claimed" test ! -d state3/nights/0003

echo "$passes passed, $fails failed"
test $fails -eq 0
