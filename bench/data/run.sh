#!/usr/bin/env bash
# Data reader benchmark: makes a token file of at least 1 GB in /tmp (h5py, the layout of
# docs/data.md, chunked like `dstrain pack`), times `cat FILE > /dev/null` and the reader
# (bench_data_reader: shuffled windows, prefetch thread) on that same file in the same run, then
# a short training run on it for the data-wait share of step time (metrics.jsonl). Prints the
# figures as a markdown block for bench/data/RESULTS.md; deletes the file afterwards.
#   bench/data/run.sh BUILD_DIR [GB]
set -euo pipefail
BUILD=${1:?usage: bench/data/run.sh BUILD_DIR [GB]}
GB=${2:-1.1}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cmake --build "$BUILD" -j2 --target dstrain bench_data_reader >/dev/null
PY=python3
$PY -c 'import h5py' 2>/dev/null || PY=/usr/bin/python3
WORK=$(mktemp -d /tmp/dstrain-bench-data.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FILE=$WORK/tokens.h5

# Token ids < 320 so that the tiny preset can train on the same file.
$PY - "$FILE" "$GB" <<'EOF'
import sys, h5py, numpy as np
path, gb = sys.argv[1], float(sys.argv[2])
n = int(gb * 1e9 / 4)
rng = np.random.default_rng(0)
lengths = rng.integers(500, 4000, size=n // 1000 + 10)
offsets = np.concatenate([[0], np.cumsum(lengths)])
offsets = offsets[offsets < n]
offsets = np.append(offsets, n).astype(np.int64)
with h5py.File(path, "w") as f:
    t = f.create_dataset("tokens", shape=(n,), dtype=np.int32, chunks=(1 << 18,))
    step = 1 << 25
    for s in range(0, n, step):
        e = min(n, s + step)
        t[s:e] = rng.integers(0, 256, size=e - s, dtype=np.int32)
    f.create_dataset("doc_offsets", data=offsets)
    f.attrs.update({"format": "dstrain-tokens", "format_version": 1, "vocab_size": 320,
                    "eos_id": 257, "tokenizer": "byte"})
EOF
BYTES=$(stat -c %s "$FILE")
TOKENS=$($PY -c "import h5py; print(h5py.File('$FILE','r')['tokens'].shape[0])")

time_cat() { local t0 t1; t0=$(date +%s.%N); cat "$FILE" > /dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
CAT1=$(time_cat)   # first read after writing: mostly page cache (the file was just written)
CAT2=$(time_cat)   # warm
READER_CMD="$BUILD/bench_data_reader $FILE 2048 8 lm 8"
READER_OUT=$($READER_CMD)
CAT3=$(time_cat)   # again after the reader, to see the cache still holds it

# Data-wait share during a real training run on the same file (tiny preset, CPU).
TRAIN_CMD="$BUILD/dstrain train data.train=$FILE train.steps=60 train.seq_len=256 train.micro_batch_size=8 log.every=20 run.dir=$WORK/run export.enabled=false"
$TRAIN_CMD > "$WORK/train.out" 2>&1 || { cat "$WORK/train.out"; exit 1; }
SHARE=$($PY -c "
import json
l = [json.loads(x) for x in open('$WORK/run/metrics.jsonl') if '\"loss\"' in x]
w = sum(x['data_wait_seconds'] for x in l); s = sum(x['step_seconds'] for x in l)
print(f'{w:.4f} {s:.2f} {100 * w / s:.3f} {max(x[\"data_wait_seconds\"] for x in l):.4f}')")

read -r WAIT STEPS PCT MAXWAIT <<< "$SHARE"
READER_TPS=$(echo "$READER_OUT" | sed -n 's/.*tokens_per_s=\([0-9]*\).*/\1/p')
READER_S=$(echo "$READER_OUT" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' | head -1)
cat <<EOF
## $(date -u +%Y-%m-%d) on $(hostname): $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GB RAM

File: $BYTES bytes, $TOKENS int32 tokens (uncompressed, chunks of 262,144), made by bench/data/run.sh.

| what | seconds | tokens/s | bytes/s |
| --- | --- | --- | --- |
| \`cat FILE > /dev/null\` (1st, just written) | $(printf %.3f "$CAT1") | $(echo "$TOKENS / $CAT1" | bc) | $(echo "$BYTES / $CAT1" | bc) |
| \`cat FILE > /dev/null\` (2nd, warm) | $(printf %.3f "$CAT2") | $(echo "$TOKENS / $CAT2" | bc) | $(echo "$BYTES / $CAT2" | bc) |
| reader, one epoch, shuffled windows of 2049 (\`$READER_CMD\`) | $READER_S | $READER_TPS | $(echo "$READER_TPS * 4" | bc) |
| \`cat FILE > /dev/null\` (3rd, after the reader) | $(printf %.3f "$CAT3") | $(echo "$TOKENS / $CAT3" | bc) | $(echo "$BYTES / $CAT3" | bc) |

Reader / warm cat: $(echo "scale=3; $READER_TPS / ($TOKENS / $CAT2)" | bc) (aim: >= 0.5).

Training run (\`$TRAIN_CMD\`): data wait $WAIT s of $STEPS s of steps = $PCT % (aim: < 1 %); longest wait in one step $MAXWAIT s.

Reader output: \`$READER_OUT\`
EOF
