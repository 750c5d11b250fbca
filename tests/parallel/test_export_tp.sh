#!/usr/bin/env bash
# test_export_tp.sh: a model trained at tp=4 (the tiny preset's 2 kv heads then sit on two ranks
# each) saves every kv-head slice once, and its export scores the eval set exactly as the same
# run in one process does.
set -euo pipefail
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
source "$SRC/tests/parallel/mpi_env.sh"
work="$TMPROOT/parallel-export-tp"
rm -rf "$work" && mkdir -p "$work"
args=(train.steps=3 train.seq_len=32 train.micro_batch_size=4 export.dtype=fp32)
timeout 300 mpirun -np 4 "$DSTRAIN" train "${args[@]}" parallel.tp=4 run.dir="$work/tp4" > "$work/tp4.log" 2>&1
"$DSTRAIN" train "${args[@]}" run.dir="$work/tp1" > "$work/tp1.log" 2>&1
data="$SRC/data/bundled/kjv-eval.h5"
a=$("$DSTRAIN" eval --model "$work/tp4/export" --data "$data" --seq-len 32 | tail -1)
b=$("$DSTRAIN" eval --model "$work/tp1/export" --data "$data" --seq-len 32 | tail -1)
echo "tp=4 export: $a"; echo "tp=1 export: $b"
if python3 - "$a" "$b" <<'PY'
import sys
la, lb = (float(s.split()[0].split('=')[1]) for s in sys.argv[1:3])
sys.exit(0 if abs(la - lb) <= 1e-5 * abs(lb) else 1)
PY
then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed"; exit 1; fi
