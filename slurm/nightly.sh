#!/usr/bin/env bash
# nightly.sh: incremental training on the data that arrived since the last run, as scheduled by
# slurm/nightly.scrontab. Each new file in the drop directory becomes one continual-learning task
# (token-id JSONL is packed, 1 line in 10 held out for evaluation; an .h5 file in the layout of
# docs/data.md is used as it is, for training and evaluation), trained from the latest model with
# the EWC and replay state carried over. Every earlier task is then evaluated, and the model is
# published to SERVE/versions/NNNN (with SERVE/current switched atomically) only when no earlier
# task's eval loss rose by more than --max-forgetting and the new tasks' loss is under
# --max-eval-loss; otherwise the current version stays and the reason is printed.
#
# Idempotent: a night claims its files by renaming STATE/nights/NNNN.tmp into place (the ledger of
# trained files is the union of nights/*/files.tsv); a night that was interrupted (preempted,
# killed, started twice) is finished by the next start, never repeated, and publishes at most once.
#
# usage: nightly.sh -c BASE.yaml --drop DIR --state DIR --serve DIR [--max-forgetting 0.10]
#                   [--max-eval-loss X] [--eval-seq-len N] [key=value ...]
# Exit: 0 done (published, rejected or nothing new), 2 bad input, 75 preempted (requeue me).
set -uo pipefail
DSTRAIN=${DSTRAIN:-$(command -v dstrain || echo "$(dirname "$0")/../build/dstrain")}
base="" drop="" state="" serve="" max_forgetting=0.10 max_eval_loss="" eval_seq_len=64
overrides=()
die() { echo "dstrain nightly: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -c) base=$2; shift 2 ;;
    --drop) drop=$2; shift 2 ;;
    --state) state=$2; shift 2 ;;
    --serve) serve=$2; shift 2 ;;
    --max-forgetting) max_forgetting=$2; shift 2 ;;
    --max-eval-loss) max_eval_loss=$2; shift 2 ;;
    --eval-seq-len) eval_seq_len=$2; shift 2 ;;
    *=*) overrides+=("$1"); shift ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -n "$base" ] && [ -f "$base" ] || die "-c BASE.yaml: missing or not a file: '$base'"
[ -n "$drop" ] && [ -d "$drop" ] || die "--drop: not a directory: '$drop'"
[ -n "$state" ] && [ -n "$serve" ] || die "--state and --serve are required"
mkdir -p "$state/nights" "$serve/versions" || die "cannot create $state or $serve"
base=$(cd "$(dirname "$base")" && pwd)/$(basename "$base")
state=$(cd "$state" && pwd); serve=$(cd "$serve" && pwd); drop=$(cd "$drop" && pwd)

# one nightly run at a time; a second start while one runs has nothing to do
exec 9>"$state/lock"
flock -n 9 || { echo "dstrain nightly: another run holds $state/lock; nothing to do"; exit 0; }

# forward Slurm's warning signal to the trainer, which checkpoints and exits 75
child=0
trap '[ $child -ne 0 ] && kill -USR1 $child 2>/dev/null' USR1
trap '[ $child -ne 0 ] && kill -TERM $child 2>/dev/null' TERM
run() { "$@" & child=$!; local rc; while :; do wait $child; rc=$?; kill -0 $child 2>/dev/null || break; done; child=0; return $rc; }

last_night() { ls -1 "$state/nights" | grep -E '^[0-9]{4}$' | sort | tail -1; }
night=$(last_night)

if [ -z "$night" ] || [ -f "$state/nights/$night/done" ]; then
  # a new night: the files of the drop directory no night has claimed, by content
  cat "$state"/nights/[0-9][0-9][0-9][0-9]/files.tsv 2>/dev/null | cut -f1 | sort -u > "$state/claimed.tmp"
  next=$(printf '%04d' $(( 10#${night:-0} + 1 )))
  dir="$state/nights/$next.tmp"; rm -rf "$dir"; mkdir -p "$dir/data"
  for f in $(ls -1 "$drop" | grep -E '\.(jsonl|h5)$' | sort); do
    sum=$(sha256sum "$drop/$f" | cut -d' ' -f1)
    grep -qx "$sum" "$state/claimed.tmp" && continue
    grep -q "^$sum" "$dir/files.tsv" 2>/dev/null && continue # the same content twice tonight
    printf '%s\t%s\n' "$sum" "$f" >> "$dir/files.tsv"
  done
  rm -f "$state/claimed.tmp"
  if [ ! -s "$dir/files.tsv" ]; then
    rm -rf "$dir"; echo "dstrain nightly: no new files in $drop; nothing to do"; exit 0
  fi
  # pack and describe the tasks before claiming, so that a claimed night is complete
  echo "tasks:" > "$dir/tasks.yaml"
  i=0
  while IFS=$'\t' read -r sum f; do
    i=$((i + 1)); id="n${next}-$i"
    if [[ "$f" == *.jsonl ]]; then
      awk 'NR % 10 != 0' "$drop/$f" > "$dir/data/$id-train.jsonl"
      awk 'NR % 10 == 0' "$drop/$f" > "$dir/data/$id-eval.jsonl"
      [ -s "$dir/data/$id-eval.jsonl" ] || head -1 "$drop/$f" > "$dir/data/$id-eval.jsonl"
      "$DSTRAIN" pack --input "$dir/data/$id-train.jsonl" --output "$dir/data/$id-train.h5" >/dev/null || die "$drop/$f: pack failed"
      "$DSTRAIN" pack --input "$dir/data/$id-eval.jsonl" --output "$dir/data/$id-eval.h5" >/dev/null || die "$drop/$f: pack failed"
      rm -f "$dir/data/$id-train.jsonl" "$dir/data/$id-eval.jsonl"
      train_h5="$state/nights/$next/data/$id-train.h5"; eval_h5="$state/nights/$next/data/$id-eval.h5"
    else
      cp "$drop/$f" "$dir/data/$id.h5" || die "$drop/$f: cannot copy"
      train_h5="$state/nights/$next/data/$id.h5"; eval_h5=$train_h5
    fi
    printf '  - {id: %s, train: "%s", eval: "%s", epochs: 1}\n' "$id" "$train_h5" "$eval_h5" >> "$dir/tasks.yaml"
    printf '%s\t%s\n' "$id" "$eval_h5" >> "$dir/evals.tsv"
  done < "$dir/files.tsv"
  mv -T "$dir" "$state/nights/$next" || die "cannot claim night $next"
  sync "$state/nights" 2>/dev/null || true
  night=$next
  echo "dstrain nightly: night $night claims $(wc -l < "$state/nights/$night/files.tsv") file(s)"
else
  echo "dstrain nightly: finishing night $night, which an earlier start left unfinished"
fi
nd="$state/nights/$night"

# train, unless this night already did: from the latest trained night's model and state
prev=$(ls -1 "$state/nights" | grep -E '^[0-9]{4}$' | sort | awk -v n="$night" '$1 < n' | tail -1)
if [ ! -f "$nd/trained" ]; then
  from=()
  if [ -n "$prev" ]; then
    from=(model.path="$state/nights/$prev/run/export" continual.state="$state/nights/$prev/run/continual-state")
  fi
  run "$DSTRAIN" train -c "$base" "${overrides[@]}" "${from[@]}" continual.tasks="$nd/tasks.yaml" \
      run.dir="$nd/run" export.enabled=true export.dtype=fp32
  rc=$?
  [ $rc -eq 75 ] && { echo "dstrain nightly: preempted; the next start finishes night $night"; exit 75; }
  [ $rc -eq 0 ] || { echo "dstrain nightly: error: training night $night failed (exit $rc)" >&2; exit $rc; }
  [ -f "$nd/run/export/config.json" ] || { echo "dstrain nightly: error: night $night left no export" >&2; exit 1; }
  touch "$nd/trained"
fi

# evaluate every task so far; baselines are each task's loss on the night it was trained
: > "$nd/eval.tsv.tmp"
verdict=ok reason=""
for n in $(ls -1 "$state/nights" | grep -E '^[0-9]{4}$' | sort); do
  [ "$n" \> "$night" ] && continue
  [ "$n" != "$night" ] && [ ! -f "$state/nights/$n/trained" ] && continue
  while IFS=$'\t' read -r id eval_h5; do
    out=$("$DSTRAIN" eval --model "$nd/run/export" --data "$eval_h5" --seq-len "$eval_seq_len" | tail -1)
    loss=$(sed -n 's/^eval_loss=\([^ ]*\) .*/\1/p' <<< "$out")
    [ -n "$loss" ] || { echo "dstrain nightly: error: eval of $id failed: $out" >&2; exit 1; }
    base_loss=$loss
    [ "$n" != "$night" ] && base_loss=$(awk -F'\t' -v id="$id" '$1 == id {print $2}' "$state/nights/$n/eval.tsv")
    printf '%s\t%s\t%s\n' "$id" "$loss" "$base_loss" >> "$nd/eval.tsv.tmp"
    if [ "$n" != "$night" ] && awk -v l="$loss" -v b="$base_loss" -v m="$max_forgetting" 'BEGIN {exit !(l > b * (1 + m))}'; then
      verdict=reject; reason="$reason task $id eval loss $loss > $base_loss x (1 + $max_forgetting);"
    fi
    if [ "$n" = "$night" ] && [ -n "$max_eval_loss" ] && awk -v l="$loss" -v m="$max_eval_loss" 'BEGIN {exit !(l > m)}'; then
      verdict=reject; reason="$reason new task $id eval loss $loss > $max_eval_loss;"
    fi
  done < "$state/nights/$n/evals.tsv"
done
mv "$nd/eval.tsv.tmp" "$nd/eval.tsv"
column -t "$nd/eval.tsv" 2>/dev/null | sed 's/^/dstrain nightly: eval (task, loss, baseline): /'

# publish at most once per night
if [ -f "$nd/published" ]; then
  echo "dstrain nightly: night $night was already published as version $(cat "$nd/published")"
elif [ "$verdict" = ok ]; then
  lastv=$(ls -1 "$serve/versions" | grep -E '^[0-9]{4}$' | sort | tail -1)
  version=$(printf '%04d' $(( 10#${lastv:-0} + 1 )))
  tmp="$serve/versions/.$version.tmp"; rm -rf "$tmp"
  "$DSTRAIN" export --checkpoint "$nd/run/checkpoints" --output "$tmp" --dtype bf16 >/dev/null 2>&1 ||
    cp -r "$nd/run/export" "$tmp" || { echo "dstrain nightly: error: export failed" >&2; exit 1; }
  mv -T "$tmp" "$serve/versions/$version"
  ln -sfn "versions/$version" "$serve/.current.tmp" && mv -T "$serve/.current.tmp" "$serve/current"
  echo "$version" > "$nd/published.tmp" && mv "$nd/published.tmp" "$nd/published"
  echo "dstrain nightly: published night $night as $serve/versions/$version (current)"
else
  echo "$reason" > "$nd/rejected"
  echo "dstrain nightly: night $night not published, $serve/current unchanged:$reason"
fi
touch "$nd/done"
exit 0
