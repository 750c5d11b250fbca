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
# Caches cannot be dropped here, but this file's pages can: dd iflag=nocache count=0 asks the
# kernel (posix_fadvise DONTNEED) to evict it, so "cold" reads come from the disk.
evict() { dd if="$FILE" iflag=nocache count=0 2>/dev/null; }
READER_CMD="$BUILD/bench_data_reader $FILE 2048 8 lm 8"
evict; CAT_COLD=$(time_cat)
evict; READER_COLD=$($READER_CMD)
CAT_WARM1=$(time_cat)
CAT_WARM2=$(time_cat)
READER_WARM=$($READER_CMD)
CAT_WARM3=$(time_cat)

# Data-wait share during a real training run on the same file (tiny preset, CPU).
TRAIN_CMD="$BUILD/dstrain train data.train=$FILE train.steps=60 train.seq_len=256 train.micro_batch_size=8 log.every=20 run.dir=$WORK/run export.enabled=false"
$TRAIN_CMD > "$WORK/train.out" 2>&1 || { cat "$WORK/train.out"; exit 1; }
SHARE=$($PY -c "
import json
l = [json.loads(x) for x in open('$WORK/run/metrics.jsonl') if '\"loss\"' in x]
w = sum(x['data_wait_seconds'] for x in l); s = sum(x['step_seconds'] for x in l)
print(f'{w:.4f} {s:.2f} {100 * w / s:.3f} {max(x[\"data_wait_seconds\"] for x in l):.4f}')")

read -r WAIT STEPS PCT MAXWAIT <<< "$SHARE"
tps() { echo "$1" | sed -n 's/.*tokens_per_s=\([0-9]*\).*/\1/p'; }
secs() { echo "$1" | sed -n 's/.* seconds=\([0-9.]*\).*/\1/p'; }
row_cat() { printf '| %s | %.3f | %.0f | %.0f |\n' "$1" "$2" "$(echo "$TOKENS / $2" | bc -l)" "$(echo "$BYTES / $2" | bc -l)"; }
row_reader() { printf '| %s | %s | %s | %s |\n' "$1" "$(secs "$2")" "$(tps "$2")" "$(echo "$(tps "$2") * 4" | bc)"; }
CAT_WARM=$(printf '%s\n' "$CAT_WARM1" "$CAT_WARM2" "$CAT_WARM3" | sort -n | head -1)
cat <<EOF
## $(date -u +%Y-%m-%d) on $(hostname): $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GB RAM, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end

File: $BYTES bytes, $TOKENS int32 tokens (uncompressed, chunks of 262,144), made by bench/data/run.sh.
Reader: \`$READER_CMD\` (one epoch of shuffled windows of 2049 tokens, 8 a batch, prefetch 8;
tokens/s counts the input tokens of the batches delivered; bytes/s is 4 x that).

| what | seconds | tokens/s | bytes/s |
| --- | --- | --- | --- |
$(row_cat 'cat, cold (file evicted first)' "$CAT_COLD")
$(row_reader 'reader, cold (file evicted first)' "$READER_COLD")
$(row_cat 'cat, warm (best of 3)' "$CAT_WARM")
$(row_reader 'reader, warm' "$READER_WARM")

Reader / cat: cold $(echo "scale=3; $(tps "$READER_COLD") / ($TOKENS / $CAT_COLD)" | bc), warm $(echo "scale=3; $(tps "$READER_WARM") / ($TOKENS / $CAT_WARM)" | bc) (aim: >= 0.5).

Training run (\`$TRAIN_CMD\`): data wait $WAIT s of $STEPS s of steps = $PCT % (aim: < 1 %); longest wait in one step $MAXWAIT s.

Reader output, cold: \`$READER_COLD\`
Reader output, warm: \`$READER_WARM\`
EOF
