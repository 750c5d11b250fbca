#!/usr/bin/env bash
# nightly.sh: incremental training on the files that arrived in a drop directory, as scheduled by
# slurm/nightly.scrontab, built to be left alone. Each start finishes the night an earlier start
# left unfinished (resuming the trainer inside its task), then claims the complete new files as
# the next night: one continual-learning task per file, trained from the last *published* model
# and its EWC/replay state, gated against the served model, and published exactly once.
#
# A night is a directory STATE/nights/NNNN, claimed by renaming NNNN.tmp into place; every step
# after the claim leaves a marker, so a start killed anywhere redoes only what it had not
# finished (tests/slurm/test_nightly.sh kills it at each step). A rejected candidate stays in its
# night for inspection and never becomes a base; a failing night is retried on later starts and
# quarantined after --max-attempts failures, so later files still train. Every night ends with
# nights/NNNN/status.json (result, reason, base, version) and STATE/nightly.prom (Prometheus).
# slurm/README.md ("Nightly incremental training") is the operator's manual.
#
# usage: nightly.sh -c BASE.yaml --drop DIR --state DIR --serve DIR [options] [key=value ...]
#        nightly.sh --state DIR --serve DIR --rollback VERSION
# Exit: 0 published or nothing to do, 2 bad input, 3 rejected by the gate, 4 a night failed (the
# next start retries it), 5 a night was quarantined, 1 internal error, 75 preempted (requeue me).
set -uo pipefail
DSTRAIN=${DSTRAIN:-$(command -v dstrain || echo "$(dirname "$0")/../build/dstrain")}
die() { echo "dstrain: error: nightly: $*" >&2; exit 2; }
fail() { echo "dstrain: error: nightly: $*" >&2; exit 1; }
say() { echo "dstrain nightly: $*"; }
# fault injection for tests: DSTRAIN_NIGHTLY_KILL_AT=<step> kills this script at that step
kill_point() { [ "${DSTRAIN_NIGHTLY_KILL_AT:-}" = "$1" ] && { say "killed at $1 (DSTRAIN_NIGHTLY_KILL_AT)" >&2; kill -KILL $BASHPID $$; }; return 0; }

# ---- options: the command line wins over the base config's `nightly:` section ----------------
base="" drop="" state="" serve="" rollback=""
declare -A opt=()
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    -c) base=${2-}; shift 2 || die "-c needs a file" ;;
    --drop) drop=${2-}; shift 2 || die "--drop needs a directory" ;;
    --state) state=${2-}; shift 2 || die "--state needs a directory" ;;
    --serve) serve=${2-}; shift 2 || die "--serve needs a directory" ;;
    --rollback) rollback=${2-}; shift 2 || die "--rollback needs a version" ;;
    --max-forgetting|--max-eval-loss|--max-general-rise|--min-improvement|--eval-seq-len|\
    --general-eval|--general-train|--general-share|--epochs|--max-attempts|--keep|\
    --post-publish|--claim|--launch|--gpu-mem|--node-gpus)
      [ $# -ge 2 ] || die "$1 needs a value"
      k=${1#--}; opt[${k//-/_}]=$2; shift 2 ;;
    *=*) overrides+=("$1"); shift ;;
    *) die "unknown argument '$1' (see the usage at the top of $0)" ;;
  esac
done
[ -n "$state" ] && [ -n "$serve" ] || die "--state and --serve are required"

# the `nightly:` section of the base config: a block of `key: value` lines, stripped from the
# config the trainer reads (which refuses keys it does not know)
strip_nightly() { # base.yaml out.yaml -> prints key<TAB>value lines
  awk -v out="$2" -v q="'" '
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
    /^nightly:/ {
      rest = $0; sub(/^nightly:[ \t]*/, "", rest); sub(/#.*/, "", rest)
      if (trim(rest) != "") { print "FLOW\t" NR; exit 1 }
      inside = 1; next
    }
    inside && /^([ \t]|$|#)/ {
      line = $0; sub(/(^|[ \t])#.*/, "", line); line = trim(line)
      if (line == "") next
      i = index(line, ":"); if (i == 0) { print "BAD\t" NR; exit 1 }
      key = trim(substr(line, 1, i - 1)); val = trim(substr(line, i + 1))
      if (val ~ /^".*"$/ || val ~ ("^" q ".*" q "$")) val = substr(val, 2, length(val) - 2)
      print key "\t" val; next
    }
    { inside = 0; print > out }' "$1"
}
keys="max_forgetting max_eval_loss max_general_rise min_improvement eval_seq_len general_eval
      general_train general_share epochs max_attempts keep post_publish claim launch gpu_mem node_gpus"
if [ -n "$base" ]; then
  [ -f "$base" ] || die "-c BASE.yaml: missing or not a file: '$base'"
  mkdir -p "$state" || die "cannot create $state"
  state=$(cd "$state" && pwd)
  base_abs=$(cd "$(dirname "$base")" && pwd)/$(basename "$base")
  base_tmp="$state/.base.yaml.$$"
  cfg_lines=$(strip_nightly "$base_abs" "$base_tmp") ||
    die "$base:$(cut -f2 <<< "$cfg_lines"): nightly: write the section as a block of 'key: value' lines"
  while IFS=$'\t' read -r k v; do
    [ -n "$k" ] || continue
    grep -qw -- "$k" <<< "$keys" || die "$base: nightly.$k: unknown key (expected one of: $(echo $keys))"
    [ -n "${opt[$k]+x}" ] || opt[$k]=$v
  done <<< "$cfg_lines"
fi
max_forgetting=${opt[max_forgetting]:-0.10}
max_general_rise=${opt[max_general_rise]:-$max_forgetting}
min_improvement=${opt[min_improvement]:-0}
max_eval_loss=${opt[max_eval_loss]:-}
eval_seq_len=${opt[eval_seq_len]:-64}
general_eval=${opt[general_eval]:-}
general_train=${opt[general_train]:-}
general_share=${opt[general_share]:-0}
epochs=${opt[epochs]:-1}
max_attempts=${opt[max_attempts]:-3}
keep=${opt[keep]:-10}
post_publish=${opt[post_publish]:-}
claim_mode=${opt[claim]:-rename}
launch=${opt[launch]:-}
gpu_mem=${opt[gpu_mem]:-}
node_gpus=${opt[node_gpus]:-}
number() { [[ "$2" =~ ^[0-9]+([.][0-9]*)?([eE][-+]?[0-9]+)?$ ]] || die "$1: expected a number, got '$2'"; }
number max-forgetting "$max_forgetting"; number max-general-rise "$max_general_rise"
number min-improvement "$min_improvement"; number general-share "$general_share"; number epochs "$epochs"
[ -z "$max_eval_loss" ] || number max-eval-loss "$max_eval_loss"
[[ "$eval_seq_len" =~ ^[1-9][0-9]*$ ]] || die "eval-seq-len: expected a positive integer, got '$eval_seq_len'"
[[ "$max_attempts" =~ ^[1-9][0-9]*$ ]] || die "max-attempts: expected a positive integer, got '$max_attempts'"
[[ "$keep" =~ ^[1-9][0-9]*$ ]] || die "keep: expected a positive integer, got '$keep'"
[ -z "$gpu_mem" ] || number gpu-mem "$gpu_mem"
[ -z "$node_gpus" ] || [[ "$node_gpus" =~ ^[1-9][0-9]*$ ]] || die "node-gpus: expected a positive integer, got '$node_gpus'"
case "$claim_mode" in rename|ready) ;; *) die "claim: expected rename or ready, got '$claim_mode'" ;; esac
awk -v s="$general_share" 'BEGIN { exit !(s >= 0 && s < 1) }' || die "general-share: expected a fraction in [0, 1), got '$general_share'"
if awk -v s="$general_share" 'BEGIN { exit !(s > 0) }'; then
  [ -n "$general_train" ] || die "general-share $general_share needs general-train (the general dataset)"
fi
for f in "$general_eval" "$general_train"; do
  [ -z "$f" ] || [ -f "$f" ] || die "general dataset: missing or not a file: '$f'"
done
[ -z "$general_eval" ] || general_eval=$(cd "$(dirname "$general_eval")" && pwd)/$(basename "$general_eval")
[ -z "$general_train" ] || general_train=$(cd "$(dirname "$general_train")" && pwd)/$(basename "$general_train")

mkdir -p "$state/nights" "$serve/versions" "$serve/.reserved" || die "cannot create $state or $serve"
state=$(cd "$state" && pwd); serve=$(cd "$serve" && pwd)

# ---- durable small files -----------------------------------------------------------------------
fsync() { sync -- "$@" 2>/dev/null || fail "fsync failed: $*"; }
fsync_tree() { find "$1" -type f -exec sync -- {} + && sync -- $(find "$1" -type d) || fail "fsync of $1 failed"; }
put() { # put FILE CONTENT: written to FILE.tmp, fsynced, renamed, directory fsynced
  printf '%s\n' "$2" > "$1.tmp" && sync -- "$1.tmp" && mv -f "$1.tmp" "$1" && sync -- "$(dirname "$1")" ||
    fail "cannot write $1"
}
json_str() { # a JSON string literal
  local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/\\r}
  printf '"%s"' "$(printf '%s' "$s" | tr -d '\000-\037')"
}
served_version() { local t; t=$(readlink "$serve/current" 2>/dev/null) || { echo 0; return; }; t=${t##*/}; [[ "$t" =~ ^[0-9]+$ ]] && echo $((10#$t)) || echo 0; }
set_current() { # version dir name
  local tmp="$serve/.current.$$"
  ln -sfn "versions/$1" "$tmp" && mv -T "$tmp" "$serve/current" && fsync "$serve" || fail "cannot switch $serve/current"
}

# ---- rollback by hand --------------------------------------------------------------------------
if [ -n "$rollback" ]; then
  [[ "$rollback" =~ ^[0-9]+$ ]] || die "--rollback: expected a version number, got '$rollback'"
  v=$(printf '%04d' $((10#$rollback)))
  [ -f "$serve/versions/$v/config.json" ] || die "--rollback: $serve/versions/$v is not a published version"
  n=$(grep -lx "$v" "$state"/nights/[0-9][0-9][0-9][0-9]/published 2>/dev/null | head -1)
  [ -n "$n" ] || die "--rollback: no night of $state published version $v"
  n=$(basename "$(dirname "$n")")
  for d in export continual-state; do
    [ -d "$state/nights/$n/run/$d" ] || die "--rollback: $state/nights/$n/run/$d is gone (pruned by --keep); roll back to a newer version"
  done
  rm -f "${base_tmp:-}"
  exec 9>>"$state/lock"; flock -n -E 200 9; rc=$?
  [ $rc -eq 200 ] && die "a nightly run holds $state/lock; roll back when it has ended"
  [ $rc -eq 0 ] || fail "$state/lock: the file system refuses locks (flock exit $rc)"
  put "$state/lineage" "$n $v"
  set_current "$v"
  say "rolled back: $serve/current is versions/$v; the next night trains from night $n"
  exit 0
fi

[ -n "$base" ] || die "-c BASE.yaml is required"
[ -n "$drop" ] && [ -d "$drop" ] || die "--drop: not a directory: '$drop'"
drop=$(cd "$drop" && pwd)

# ---- one start at a time -------------------------------------------------------------------------
exec 9>>"$state/lock" || fail "cannot open $state/lock"
flock -n -E 200 9; rc=$?
if [ $rc -eq 200 ]; then say "another run holds $state/lock; nothing to do"; exit 0; fi
[ $rc -eq 0 ] || fail "$state/lock: cannot take the lock: the file system refuses locks (flock exit $rc); put --state on a file system with working flock"
mv -f "$base_tmp" "$state/base.yaml" || fail "cannot write $state/base.yaml"

# ---- the layout: tp x dp ranks, one a GPU (dstrain submit --layout, slurm/README.md) ----------
# Inside a Slurm job the job's tasks are the world and the config's layout must fit in them;
# outside one the layout sets the world (an auto one: the fewest GPUs that fit --gpu-mem).
layout_opts=()
[ -z "$gpu_mem" ] || layout_opts+=(--gpu-mem "$gpu_mem")
[ -z "$node_gpus" ] || layout_opts+=(--node-gpus "$node_gpus")
job_opts=()
if [ -n "${SLURM_JOB_ID:-}" ]; then
  job_nodes=${SLURM_JOB_NUM_NODES:-1} job_tasks=${SLURM_NTASKS:-1}
  [ $((job_tasks % job_nodes)) -eq 0 ] || die "Slurm job ${SLURM_JOB_ID}: $job_tasks tasks do not divide over $job_nodes nodes; ask for --ntasks-per-node"
  job_opts=(--nodes "$job_nodes" --tasks-per-node $((job_tasks / job_nodes)))
fi
layout_line() { "$DSTRAIN" submit --layout -c "$state/base.yaml" "${overrides[@]}" "${layout_opts[@]}" "$@"; }
if ! layout=$(layout_line "${job_opts[@]}" 2> "$state/layout.err"); then
  why=$(grep -m1 'error' "$state/layout.err" | sed 's/^dstrain: error: //')
  [ -n "$why" ] || why="dstrain submit --layout failed: $(tail -1 "$state/layout.err")"
  if [ ${#job_opts[@]} -gt 0 ] && need=$(layout_line 2>/dev/null); then # what the job should ask
    declare -A want=()
    for kv in $need; do want[${kv%%=*}]=${kv#*=}; done
    gpus=""; [ "${want[gpus_per_node]:-0}" -gt 0 ] && gpus=" --gpus-per-node=${want[gpus_per_node]}"
    die "Slurm job ${SLURM_JOB_ID} has $job_tasks task(s) on $job_nodes node(s): $why; the config's layout (tp ${want[tp]:-?} x dp ${want[dp]:-?}) needs #SCRON --nodes=${want[nodes]:-?} --ntasks-per-node=${want[tasks_per_node]:-?}$gpus"
  fi
  die "the parallel layout: $why"
fi
for kv in $layout; do case "$kv" in tp=*) tp=${kv#tp=} ;; dp=*) dp=${kv#dp=} ;; esac; done
[[ "${tp:-}" =~ ^[1-9][0-9]*$ && "${dp:-}" =~ ^[1-9][0-9]*$ ]] || fail "dstrain submit --layout printed '$layout'"
world=$((tp * dp))
read -ra launch_cmd <<< "$launch"
if [ ${#launch_cmd[@]} -eq 0 ] && [ $world -gt 1 ]; then
  if [ -n "${SLURM_JOB_ID:-}" ]; then launch_cmd=(srun --mpi=pmix --kill-on-bad-exit=1 --ntasks="$world")
  else launch_cmd=(mpirun -np "$world"); fi
fi

# forward Slurm's warning signal to the trainer, which checkpoints and exits 75
child=0 warned=0
trap 'warned=1; [ $child -ne 0 ] && kill -USR1 $child 2>/dev/null' USR1
trap 'warned=1; [ $child -ne 0 ] && kill -TERM $child 2>/dev/null' TERM
run() { "$@" & child=$!; local rc; while :; do wait $child; rc=$?; kill -0 $child 2>/dev/null || break; done; child=0; return $rc; }

nights() { ls -1 "$state/nights" | grep -E '^[0-9]{4}$' | sort; }
lineage() { # the night and version the next night trains from: "NNNN VVVV", empty for the base model
  if [ -s "$state/lineage" ]; then cat "$state/lineage"; return; fi
  local n; for n in $(nights | sort -r); do
    [ -f "$state/nights/$n/published" ] && { echo "$n $(cat "$state/nights/$n/published")"; return; }
  done
}

# ---- the Prometheus textfile and the status -----------------------------------------------------
write_metrics() { # [result]: after every night's end and every start with nothing to do
  local last=${1:-$(sed -n 's/.*"result": "\([a-z]*\)".*/\1/p' "$state/status.json" 2>/dev/null | head -1)}
  local f="$state/nightly.prom" cur published=0 rejected=0 failed=0 quarantined=0 consec=0 n r last_pub=0 last_end=0
  cur=$(served_version)
  for n in $(nights); do
    r=$(sed -n 's/.*"result": "\([a-z]*\)".*/\1/p' "$state/nights/$n/status.json" 2>/dev/null | head -1)
    case "$r" in
      published) published=$((published + 1)); consec=0; last_pub=$(stat -c %Y "$state/nights/$n/status.json") ;;
      rejected) rejected=$((rejected + 1)); consec=$((consec + 1)) ;;
      failed) failed=$((failed + 1)); [ -f "$state/nights/$n/quarantined" ] && quarantined=$((quarantined + 1)); consec=$((consec + 1)) ;;
    esac
    [ -f "$state/nights/$n/status.json" ] && last_end=$(stat -c %Y "$state/nights/$n/status.json")
  done
  {
    echo "# HELP dstrain_nightly_last_result 1 for the result of the last night that ended (status.json)."
    echo "# TYPE dstrain_nightly_last_result gauge"
    for r in published rejected failed preempted; do
      echo "dstrain_nightly_last_result{result=\"$r\"} $([ "$last" = "$r" ] && echo 1 || echo 0)"
    done
    echo "# HELP dstrain_nightly_nights_total Nights that ended, by result."
    echo "# TYPE dstrain_nightly_nights_total counter"
    echo "dstrain_nightly_nights_total{result=\"published\"} $published"
    echo "dstrain_nightly_nights_total{result=\"rejected\"} $rejected"
    echo "dstrain_nightly_nights_total{result=\"failed\"} $failed"
    echo "# HELP dstrain_nightly_quarantined_total Nights quarantined after their last attempt failed."
    echo "# TYPE dstrain_nightly_quarantined_total counter"
    echo "dstrain_nightly_quarantined_total $quarantined"
    echo "# HELP dstrain_nightly_unpublished_streak Nights in a row that ended without publishing."
    echo "# TYPE dstrain_nightly_unpublished_streak gauge"
    echo "dstrain_nightly_unpublished_streak $consec"
    echo "# HELP dstrain_nightly_current_version The version SERVE/current points to (0: none)."
    echo "# TYPE dstrain_nightly_current_version gauge"
    echo "dstrain_nightly_current_version $cur"
    echo "# HELP dstrain_nightly_last_publish_timestamp_seconds When a night was last published."
    echo "# TYPE dstrain_nightly_last_publish_timestamp_seconds gauge"
    echo "dstrain_nightly_last_publish_timestamp_seconds $last_pub"
    echo "# HELP dstrain_nightly_last_end_timestamp_seconds When a night last ended."
    echo "# TYPE dstrain_nightly_last_end_timestamp_seconds gauge"
    echo "dstrain_nightly_last_end_timestamp_seconds $last_end"
    echo "# HELP dstrain_nightly_last_run_timestamp_seconds When a start last ran to its end (also with nothing to do)."
    echo "# TYPE dstrain_nightly_last_run_timestamp_seconds gauge"
    echo "dstrain_nightly_last_run_timestamp_seconds $(date +%s)"
  } > "$f.tmp" && mv -f "$f.tmp" "$f"
}
status() { # night result reason [exit code]: nights/NNNN/status.json and STATE/status.json
  local nd="$state/nights/$1" b v files="" first=1 id
  b=$(cut -d' ' -f2 "$nd/base" 2>/dev/null); b=$((10#${b:-0}))
  if [ "$2" = published ]; then v=$((10#$(cat "$nd/published"))); else v=$(served_version); fi
  while IFS=$'\t' read -r _ name; do
    [ $first -eq 1 ] || files+=", "; first=0; files+=$(json_str "$name")
  done < "$nd/files.tsv"
  {
    printf '{\n  "night": "%s",\n  "result": "%s",\n  "reason": %s,\n' "$1" "$2" "$(json_str "$3")"
    printf '  "base": %d,\n  "version": %d,\n  "exit_code": %d,\n' "$b" "$v" "${4:-0}"
    printf '  "attempts": %d,\n  "failures": %d,\n  "files": [%s],\n' "$(cat "$nd/attempts" 2>/dev/null || echo 0)" \
      "$(cat "$nd/failures" 2>/dev/null || echo 0)" "$files"
    printf '  "gate": ['
    first=1
    if [ -f "$nd/gate.tsv" ]; then
      while IFS=$'\t' read -r kind id cand served limit ok; do
        [ $first -eq 1 ] || printf ','; first=0
        [ "$served" = - ] && served=null; [ "$limit" = - ] && limit=null
        printf '\n    {"set": %s, "kind": "%s", "candidate": %s, "served": %s, "limit": %s, "ok": %s}' \
          "$(json_str "$id")" "$kind" "$cand" "$served" "$limit" "$ok"
      done < "$nd/gate.tsv"
    fi
    printf '\n  ],\n  "time": "%s"\n}\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } > "$nd/status.json.tmp" && sync -- "$nd/status.json.tmp" && mv -f "$nd/status.json.tmp" "$nd/status.json" &&
    cp "$nd/status.json" "$state/status.json.tmp" && mv -f "$state/status.json.tmp" "$state/status.json" &&
    sync -- "$nd" "$state" || fail "cannot write $nd/status.json"
  write_metrics "$2"
}

# ---- claiming: complete files only, each content once -------------------------------------------
complete_files() { # the drop directory's complete .jsonl / .h5 files (not the held-out companions)
  local f
  for f in $(ls -1 "$drop" | grep -E '\.(jsonl|h5)$' | grep -vE '\.eval\.h5$' | grep -v '^\.' | sort); do
    [ -f "$drop/$f" ] || continue
    if [ "$claim_mode" = ready ]; then [ -f "$drop/$f.ready" ] || continue; fi
    echo "$f"
  done
}
claim_night() { # prints the new night's number, or nothing when nothing new arrived
  local last next dir f sum claimed
  last=$(nights | tail -1); next=$(printf '%04d' $(( 10#${last:-0} + 1 )))
  dir="$state/nights/$next.tmp"; rm -rf "$dir"; mkdir -p "$dir/src" || fail "cannot create $dir"
  claimed=$(cat "$state"/nights/[0-9][0-9][0-9][0-9]/files.tsv 2>/dev/null | cut -f1 | sort -u)
  for f in $(complete_files); do
    # copied first and hashed as copied, so a file changed in the drop after this is not the one trained
    cp -- "$drop/$f" "$dir/src/$f" || fail "cannot copy $drop/$f"
    if [[ "$f" == *.h5 ]] && [ -f "$drop/${f%.h5}.eval.h5" ]; then cp -- "$drop/${f%.h5}.eval.h5" "$dir/src/" || fail "cannot copy $drop/${f%.h5}.eval.h5"; fi
    sum=$(sha256sum "$dir/src/$f" | cut -d' ' -f1)
    if grep -qx "$sum" <<< "$claimed" || grep -q "^$sum" "$dir/files.tsv" 2>/dev/null; then
      rm -f "$dir/src/$f" "$dir/src/${f%.h5}.eval.h5"; continue
    fi
    printf '%s\t%s\n' "$sum" "$f" >> "$dir/files.tsv"
  done
  if [ ! -s "$dir/files.tsv" ]; then rm -rf "$dir"; return; fi
  fsync_tree "$dir"
  kill_point claim
  mv -T "$dir" "$state/nights/$next" || fail "cannot claim night $next"
  fsync "$state/nights"
  echo "$next"
}

# ---- preparing a night's tasks: held-out splits, the general share --------------------------------
info_count() { "$DSTRAIN" info "$1" 2>/dev/null | sed -n "s/^$2: *\([0-9]*\).*/\1/p"; }
prepare() { # night: data/, tasks.yaml, evals.tsv; 0 or a reason on stdout
  local n=$1 nd="$state/nights/$1" i=0 id sum f tr ev w
  [ -f "$nd/prepared" ] && return 0
  # a night claimed by the nightly.sh of before 2026-12 made its tasks before its claim
  [ ! -d "$nd/src" ] && [ -s "$nd/tasks.yaml" ] && [ -s "$nd/evals.tsv" ] && return 0
  rm -rf "$nd/data" "$nd/tasks.yaml" "$nd/evals.tsv"; mkdir -p "$nd/data"
  echo "tasks:" > "$nd/tasks.yaml"
  while IFS=$'\t' read -r sum f; do
    i=$((i + 1)); id="n$n-$i"; tr="$nd/data/$id-train.h5"; ev="$nd/data/$id-eval.h5"
    if [[ "$f" == *.jsonl ]]; then # one line in ten held out
      awk 'NR % 10 != 0' "$nd/src/$f" > "$nd/data/$id-train.jsonl"
      awk 'NR % 10 == 0' "$nd/src/$f" > "$nd/data/$id-eval.jsonl"
      [ -s "$nd/data/$id-eval.jsonl" ] || { echo "$f: fewer than 10 lines, nothing to hold out"; return 1; }
      "$DSTRAIN" pack --input "$nd/data/$id-train.jsonl" --output "$tr" >/dev/null 2>"$nd/data/pack.err" &&
        "$DSTRAIN" pack --input "$nd/data/$id-eval.jsonl" --output "$ev" >/dev/null 2>>"$nd/data/pack.err" ||
        { echo "$f: pack failed: $(grep 'error' "$nd/data/pack.err" | head -1)"; return 1; }
      rm -f "$nd/data/$id-train.jsonl" "$nd/data/$id-eval.jsonl" "$nd/data/pack.err"
    elif [ -f "$nd/src/${f%.h5}.eval.h5" ]; then # an .h5 file with its own held-out split
      cp "$nd/src/$f" "$tr" && cp "$nd/src/${f%.h5}.eval.h5" "$ev" || { echo "$f: cannot copy"; return 1; }
    else # an .h5 file alone: one document in ten held out
      python3 "$(dirname "$0")/h5_holdout.py" "$nd/src/$f" "$tr" "$ev" 2>"$nd/data/split.err" ||
        { echo "$f: cannot hold out a split: $(tail -1 "$nd/data/split.err")"; return 1; }
      rm -f "$nd/data/split.err"
    fi
    if awk -v s="$general_share" 'BEGIN { exit !(s > 0) }'; then
      # a mixture: the general set takes general_share of the rows read; epochs count every
      # source of a mixture, so they are scaled to mean passes over the night's own file
      local tn tg e
      tn=$(info_count "$tr" tokens); tg=$(info_count "$general_train" tokens)
      [ -n "$tn" ] && [ -n "$tg" ] || { echo "$f: dstrain info cannot read the token counts"; return 1; }
      e=$(awk -v E="$epochs" -v s="$general_share" -v a="$tn" -v b="$tg" 'BEGIN { printf "%.6g", E * a / ((1 - s) * (a + b)) }')
      w=$(awk -v s="$general_share" 'BEGIN { printf "%.6g", 1 - s }')
      printf '  - {id: %s, train: [{path: "%s", weight: %s}, {path: "%s", weight: %s}], eval: "%s", epochs: %s}\n' \
        "$id" "$tr" "$w" "$general_train" "$general_share" "$ev" "$e" >> "$nd/tasks.yaml"
    else
      printf '  - {id: %s, train: "%s", eval: "%s", epochs: %s}\n' "$id" "$tr" "$ev" "$epochs" >> "$nd/tasks.yaml"
    fi
    printf '%s\t%s\n' "$id" "$ev" >> "$nd/evals.tsv"
  done < "$nd/files.tsv"
  fsync_tree "$nd/data"; fsync "$nd/tasks.yaml" "$nd/evals.tsv"
  touch "$nd/prepared"; fsync "$nd"
}

# ---- evaluation, with the served models' losses kept in STATE/history.tsv -------------------------
eval_model() { # model data -> loss (lower is better; 1 - accuracy for a classifier)
  local out v
  out=$("$DSTRAIN" eval --model "$1" --data "$2" --seq-len "$eval_seq_len" 2>&1 | tail -1)
  v=$(sed -n 's/^eval_loss=\([^ ]*\).*/\1/p' <<< "$out")
  [ -n "$v" ] || v=$(sed -n 's/^eval_accuracy=\([^ ]*\).*/\1/p' <<< "$out" | awk '{ if ($1 != "") printf "%.6f", 1 - $1 }')
  [ -n "$v" ] || { echo "$out" >&2; return 1; }
  echo "$v"
}
history_loss() { awk -F'\t' -v v="$1" -v s="$2" '$1 == v && $2 == s { l = $3 } END { if (l != "") print l }' "$state/history.tsv" 2>/dev/null; }
history_add() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$state/history.tsv"; }
history_matrix() { # STATE/history-matrix.tsv: one row per published version, one column per set
  awk -F'\t' '
    !($2 in col) { col[$2] = ++nc; name[nc] = $2 }
    !($1 in row) { row[$1] = ++nr; ver[nr] = $1 }
    { v[row[$1], col[$2]] = $3 }
    END {
      printf "version"; for (c = 1; c <= nc; c++) printf "\t%s", name[c]; printf "\n"
      for (r = 1; r <= nr; r++) {
        printf "%s", ver[r]
        for (c = 1; c <= nc; c++) printf "\t%s", ((r, c) in v) ? v[r, c] : "-"
        printf "\n"
      }
    }' "$state/history.tsv" > "$state/history-matrix.tsv.tmp" && mv -f "$state/history-matrix.tsv.tmp" "$state/history-matrix.tsv"
}

gate() { # night: nd/gate.tsv and the verdict; returns 0 publish, 1 reject (reason on stdout), 2 error
  local n=$1 nd="$state/nights/$1" cand="$state/nights/$1/candidate" sv svdir m kind id ev c s limit ok reason=""
  sv=$(served_version)
  if [ "$sv" -gt 0 ]; then svdir="$serve/versions/$(printf '%04d' "$sv")"
  else # nothing published yet: the base model, when the config names one
    svdir=$(awk '/^model:/ { m = 1; next } /^[^ ]/ { m = 0 } m && $1 == "path:" { gsub(/"/, "", $2); print $2 }' "$nd/run/config.yaml")
    [ -n "$svdir" ] && [ ! -d "$svdir" ] && svdir=""
  fi
  : > "$nd/gate.tsv.tmp"
  { # the sets: this night's held-out splits, every earlier night's, the general held-out set
    sed 's/^/new\t/' "$nd/evals.tsv"
    for m in $(nights); do
      [ "$m" \< "$n" ] && [ -f "$state/nights/$m/evals.tsv" ] && [ ! -f "$state/nights/$m/quarantined" ] &&
        sed 's/^/earlier\t/' "$state/nights/$m/evals.tsv"
    done
    [ -n "$general_eval" ] && printf 'general\tgeneral\t%s\n' "$general_eval"
  } > "$nd/gate-sets.tsv"
  while IFS=$'\t' read -r kind id ev; do
    c=$(eval_model "$cand" "$ev") || { echo "eval of the candidate on $id ($ev) failed"; return 2; }
    s=""
    if [ -n "$svdir" ]; then
      s=$(history_loss "$sv" "$id")
      if [ -z "$s" ]; then
        s=$(eval_model "$svdir" "$ev") || { echo "eval of the served model on $id ($ev) failed"; return 2; }
        history_add "$sv" "$id" "$s"
      fi
    fi
    limit="" ok=true
    case "$kind" in
      new)
        if [ -n "$s" ]; then
          limit=$(awk -v s="$s" -v m="$min_improvement" 'BEGIN { printf "%.6g", s * (1 - m) }')
          awk -v c="$c" -v l="$limit" 'BEGIN { exit !(c < l) }' ||
            { ok=false; reason+=" new data $id: loss $c did not improve on the served model's $s (limit $limit);"; }
        fi
        if [ -n "$max_eval_loss" ] && awk -v c="$c" -v m="$max_eval_loss" 'BEGIN { exit !(c > m) }'; then
          ok=false; reason+=" new data $id: eval loss $c > --max-eval-loss $max_eval_loss;"
        fi ;;
      earlier|general)
        m=$max_forgetting; [ "$kind" = general ] && m=$max_general_rise
        if [ -n "$s" ]; then
          limit=$(awk -v s="$s" -v m="$m" 'BEGIN { printf "%.6g", s * (1 + m) }')
          awk -v c="$c" -v l="$limit" 'BEGIN { exit !(c > l) }' &&
            { ok=false; reason+=" $kind $id: eval loss $c > served $s x (1 + $m);"; }
        fi ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$id" "$c" "${s:--}" "${limit:--}" "$ok" >> "$nd/gate.tsv.tmp"
  done < "$nd/gate-sets.tsv"
  mv -f "$nd/gate.tsv.tmp" "$nd/gate.tsv"
  column -t -s $'\t' "$nd/gate.tsv" 2>/dev/null | sed 's/^/dstrain nightly: gate (kind, set, candidate, served, limit, ok): /'
  [ -z "$reason" ] && return 0
  echo "${reason# }"; return 1
}

# ---- publishing: every step idempotent, the version number reserved once -------------------------
reserve_version() { # night -> NNNN, reserved in SERVE/.reserved (shared by every state directory)
  local n=$1 nd="$state/nights/$1" owner="$state/nights/$1" v r max
  [ -s "$nd/version" ] && { cat "$nd/version"; return; }
  for r in "$serve"/.reserved/[0-9][0-9][0-9][0-9]; do # a reservation this night made before a crash
    [ -f "$r/owner" ] && [ "$(cat "$r/owner")" = "$owner" ] && { put "$nd/version" "${r##*/}"; echo "${r##*/}"; return; }
  done
  while :; do
    max=$( (ls -1 "$serve/.reserved"; ls -1 "$serve/versions") 2>/dev/null | grep -E '^[0-9]{4}$' | sort | tail -1)
    v=$(printf '%04d' $(( 10#${max:-0} + 1 )))
    if mkdir "$serve/.reserved/$v" 2>/dev/null; then
      put "$serve/.reserved/$v/owner" "$owner"; fsync "$serve/.reserved"
      kill_point reserve
      put "$nd/version" "$v"; echo "$v"; return
    fi
  done
}
publish() { # night
  local n=$1 nd="$state/nights/$1" v tmp
  v=$(reserve_version "$n") || exit 1
  [ -n "$v" ] || fail "no version reserved for night $n"
  if [ ! -d "$serve/versions/$v" ]; then
    tmp="$serve/versions/.$v.tmp"; rm -rf "$tmp"
    cp -r "$nd/candidate" "$tmp" || fail "cannot copy the candidate to $tmp"
    fsync_tree "$tmp"
    kill_point copy
    mv -T "$tmp" "$serve/versions/$v" || fail "cannot rename $tmp"
    fsync "$serve/versions"
  fi
  kill_point rename
  put "$state/lineage" "$n $v"
  kill_point lineage
  set_current "$v"
  kill_point current
  put "$nd/published" "$v"
  kill_point published
  if [ -n "$post_publish" ] && [ ! -f "$nd/hook-done" ]; then
    # at least once: a start killed inside the hook runs it again
    if DSTRAIN_VERSION=$v DSTRAIN_MODEL_DIR="$serve/versions/$v" DSTRAIN_NIGHT=$n bash -c "$post_publish"; then
      touch "$nd/hook-done"
    else
      echo "dstrain: warning: nightly: the post-publish hook failed (exit $?): $post_publish" >&2
      echo "hook failed" > "$nd/hook-failed"
    fi
  fi
  kill_point hook
  # the published model's row of the history matrix
  while IFS=$'\t' read -r _ id c _; do
    [ -n "$(history_loss "$((10#$v))" "$id")" ] || history_add "$((10#$v))" "$id" "$c"
  done < "$nd/gate.tsv"
  history_matrix
  say "published night $n as $serve/versions/$v (current)"
}
retention() { # keep the newest --keep versions (and current, and the lineage's); prune old nights' bulk
  local cur lin v n all
  cur=$(readlink "$serve/current" 2>/dev/null); cur=${cur##*/}
  lin=$(lineage); lin_night=${lin%% *}; lin_v=${lin##* }
  all=$(ls -1 "$serve/versions" | grep -E '^[0-9]{4}$' | sort -r)
  for v in $(tail -n +$((keep + 1)) <<< "$all"); do
    [ "$v" = "$cur" ] || [ "$v" = "$lin_v" ] && continue
    mv -T "$serve/versions/$v" "$serve/versions/.$v.deleting" 2>/dev/null && rm -rf "$serve/versions/.$v.deleting"
  done
  all=$(nights | sort -r)
  for n in $(tail -n +$((keep + 1)) <<< "$all"); do
    [ -f "$state/nights/$n/done" ] || continue
    rm -rf "$state/nights/$n/run/checkpoints" "$state/nights/$n/src"
    [ "$n" = "$lin_night" ] && continue
    [ -f "$state/nights/$n/quarantined" ] && continue
    rm -rf "$state/nights/$n/candidate" "$state/nights/$n/run/export" "$state/nights/$n/run/continual-state"
  done
}

# ---- one night, from wherever an earlier start left it --------------------------------------------
night_failed() { # night reason -> 4, or 5 when quarantined
  local n=$1 nd="$state/nights/$1" a
  # preemptions and kills from outside are not failures; only a failing step counts
  a=$(( $(cat "$nd/failures" 2>/dev/null || echo 0) + 1 ))
  put "$nd/failures" "$a"
  if [ "$a" -ge "$max_attempts" ]; then
    put "$nd/quarantined" "$2"
    while IFS=$'\t' read -r sum f; do printf '%s\t%s\t%s\n' "$n" "$sum" "$f"; done < "$nd/files.tsv" >> "$state/quarantine.tsv"
    status "$n" failed "quarantined after $a failed attempts: $2" 5
    touch "$nd/done"; fsync "$nd"
    echo "dstrain: error: nightly: night $n quarantined after $a failed attempts (its files stay in $nd/src): $2" >&2
    return 5
  fi
  status "$n" failed "attempt $a of $max_attempts failed: $2" 4
  echo "dstrain: error: nightly: night $n failed (attempt $a of $max_attempts; the next start retries it): $2" >&2
  return 4
}
do_night() { # night -> exit code of the night (0 published, 3 rejected, 4 failed, 5 quarantined, 75)
  local n=$1 nd="$state/nights/$1" lin reason rc
  [ -f "$nd/done" ] && return 0
  if [ ! -f "$nd/trained" ] || [ ! -d "$nd/candidate" ]; then
    put "$nd/attempts" $(( $(cat "$nd/attempts" 2>/dev/null || echo 0) + 1 ))
  fi
  # the base is fixed once per night, so a resumed or retried night trains from the same one
  if [ ! -f "$nd/base" ]; then lin=$(lineage); put "$nd/base" "${lin:-0000 0000}"; fi
  read -r base_night base_v < "$nd/base"
  reason=$(prepare "$n") || { night_failed "$n" "preparing the data: $reason"; return $?; }
  if [ ! -f "$nd/trained" ]; then
    local from=()
    if [ "$base_night" != 0000 ]; then
      from=(model.path="$state/nights/$base_night/run/export" continual.state="$state/nights/$base_night/run/continual-state")
      say "night $n trains from night $base_night (version $base_v) with its EWC and replay state"
    fi
    say "night $n: tp $tp x dp $dp ($world rank$([ $world -gt 1 ] && echo s)${launch_cmd[*]:+, started by ${launch_cmd[*]}})"
    run "${launch_cmd[@]}" "$DSTRAIN" train -c "$state/base.yaml" "${overrides[@]}" parallel.tp="$tp" parallel.dp="$dp" "${from[@]}" \
        continual.tasks="$nd/tasks.yaml" run.dir="$nd/run" train.resume=auto export.enabled=true export.dtype=fp32
    rc=$?
    if [ $rc -eq 75 ]; then
      status "$n" preempted "checkpointed at a step boundary; the next start resumes inside the task" 75
      return 75
    fi
    [ $rc -eq 0 ] || { night_failed "$n" "dstrain train exited $rc (log above; run dir $nd/run)"; return $?; }
    [ -f "$nd/run/export/config.json" ] || { night_failed "$n" "dstrain train left no export in $nd/run/export"; return $?; }
    touch "$nd/trained"; fsync "$nd"
    kill_point trained
  fi
  if [ ! -d "$nd/candidate" ]; then # the candidate as it would be served; an export failure is a failure
    rm -rf "$nd/candidate.tmp"
    "$DSTRAIN" export --checkpoint "$nd/run/export" --output "$nd/candidate.tmp" --dtype bf16 > "$nd/export.log" 2>&1 ||
      { night_failed "$n" "export of the candidate failed: $(grep -m1 error "$nd/export.log")"; return $?; }
    fsync_tree "$nd/candidate.tmp"
    mv -T "$nd/candidate.tmp" "$nd/candidate" && fsync "$nd" || fail "cannot rename $nd/candidate.tmp"
    kill_point candidate
  fi
  if [ ! -f "$nd/verdict" ]; then
    reason=$(gate "$n"); rc=$?
    grep '^dstrain nightly: gate' <<< "$reason"; reason=$(grep -v '^dstrain nightly: gate' <<< "$reason")
    [ $rc -eq 2 ] && { night_failed "$n" "$reason"; return $?; }
    if [ $rc -eq 0 ]; then put "$nd/verdict" "publish"; else put "$nd/verdict" "reject"; put "$nd/rejected" "$reason"; fi
    kill_point gate
  fi
  if [ "$(cat "$nd/verdict")" = publish ]; then
    publish "$n"
    retention
    status "$n" published "the gate passed"
    kill_point status
    touch "$nd/done"; fsync "$nd"
    return 0
  fi
  reason=$(cat "$nd/rejected")
  say "night $n not published, $serve/current unchanged, the candidate kept in $nd/candidate: $reason"
  retention
  status "$n" rejected "$reason" 3
  touch "$nd/done"; fsync "$nd"
  return 3
}

# ---- the start: the unfinished night, then the new files ------------------------------------------
worst=0
worse() { # keeps the most severe code: 5 > 4 > 3 > 0
  local r
  for r in 5 4 3; do [ "$worst" -eq $r ] && return; [ "$1" -eq $r ] && { worst=$r; return; }; done
}
for n in $(nights); do
  [ -f "$state/nights/$n/done" ] && continue
  say "finishing night $n, which an earlier start left unfinished"
  do_night "$n"; rc=$?
  if [ $rc -eq 75 ]; then
    say "preempted; the next start resumes night $n inside its task"
    [ $warned -eq 1 ] && [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"
    exit 75
  fi
  [ $rc -eq 4 ] && exit 4 # retried by the next start; later files wait for it (at most --max-attempts)
  worse $rc
done
while :; do
  n=$(claim_night) || exit 1
  if [ -z "$n" ]; then
    [ $worst -eq 0 ] && say "no new complete files in $drop; nothing to do"
    write_metrics
    exit $worst
  fi
  kill_point claimed
  say "night $n claims $(wc -l < "$state/nights/$n/files.tsv") file(s): $(cut -f2 "$state/nights/$n/files.tsv" | tr '\n' ' ')"
  do_night "$n"; rc=$?
  if [ $rc -eq 75 ]; then
    say "preempted; the next start resumes night $n inside its task"
    [ $warned -eq 1 ] && [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"
    exit 75
  fi
  [ $rc -eq 4 ] && exit 4
  worse $rc
done
