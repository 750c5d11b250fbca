#!/usr/bin/env bash
# Load test of the metrics endpoint: does serving /metrics at 10 requests a second (far above a
# real scrape rate) slow training? Alternates runs without an endpoint (A) and with the endpoint
# scraped at RATE/s for the whole run (B), PAIRS times, and prints tokens/s of each run (all
# steps but the first: total tokens over total step time, from metrics.jsonl) and the change.
# First, micro.c measures the costs directly (step-loop side, formatter, CPU per scrape).
# Loopback only; every run and the load stop by themselves. EXTRA: more key=value for the runs
# (e.g. EXTRA="device=cuda train.micro_batch_size=16 train.seq_len=1024").
# Usage: bench/metrics/run.sh [DSTRAIN] [PAIRS] [STEPS] [RATE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DSTRAIN=${1:-$here/../../build/dstrain}
PAIRS=${2:-4}; STEPS=${3:-300}; RATE=${4:-10}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=1
args=(train.steps=$STEPS train.micro_batch_size=4 train.seq_len=64 export.enabled=false
      checkpoint.every=0 log.every=100 ${EXTRA:-})
src=$here/../..
cc -O2 -std=gnu17 -I"$src" "$here/micro.c" "$src/trainer/progress.c" \
  "$src/trainer/metrics_server.c" "$src/trainer/common.c" -luv -lpthread -lm -o "$work/micro"
"$work/micro"
tps() { python3 -c "
import json,sys; l=[json.loads(x) for x in open(sys.argv[1]) if '\"loss\"' in x][1:]
print('%.1f' % (sum(x['tokens'] for x in l)/sum(x['step_seconds'] for x in l)))" "$1"; }
for i in $(seq "$PAIRS"); do
  "$DSTRAIN" train "${args[@]}" run.dir="$work/a$i" > "$work/a$i.out" 2>&1
  "$DSTRAIN" train "${args[@]}" run.dir="$work/b$i" metrics.listen=127.0.0.1:0 > "$work/b$i.out" 2>&1 &
  pid=$!
  port=""
  for _ in $(seq 200); do
    port=$(sed -n 's|^dstrain: metrics on http://127.0.0.1:\([0-9]*\)/metrics$|\1|p' "$work/b$i.out")
    [ -n "$port" ] && break; sleep 0.05
  done
  load=$(python3 "$here/scrape_load.py" "$port" "$RATE" 600)
  wait "$pid"
  a=$(tps "$work/a$i/metrics.jsonl"); b=$(tps "$work/b$i/metrics.jsonl")
  echo "pair $i: without endpoint $a tok/s | scraped at ${RATE}/s $b tok/s ($load)"
  echo "$a $b" >> "$work/pairs"
done
python3 - "$work/pairs" <<'PY'
import sys, statistics as st
p = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
a, b = [x for x, _ in p], [y for _, y in p]
d = [100 * (y - x) / x for x, y in p]
print("mean without %.1f tok/s, with %.1f tok/s; change %+.2f%% (pairs: %s; median %+.2f%%)"
      % (st.mean(a), st.mean(b), 100 * (st.mean(b) - st.mean(a)) / st.mean(a),
         " ".join("%+.2f%%" % x for x in d), st.median(d)))
PY
