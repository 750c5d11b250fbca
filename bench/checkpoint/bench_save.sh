#!/usr/bin/env bash
# Checkpoint save throughput beside `dd` of the same number of bytes to the same disk, in the
# same run, and the training stall of an asynchronous save as a share of the save's duration.
# A Llama-shaped model (default ~110M parameters: a 1.3 GB checkpoint of fp32 parameters and
# Adam moments) is trained from random weights for a few steps, saving every 2 steps; dstrain
# logs each save's bytes, duration and stall. Then dd writes the same bytes with conv=fsync
# (dstrain fsyncs every file too) into the same directory.
# Usage: bench/checkpoint/bench_save.sh [path/to/dstrain] [scratch dir on the disk to measure]
#        HIDDEN=768 LAYERS=8 VOCAB=32000 STEPS=8 env overrides.
set -euo pipefail
DSTRAIN=${1:-build/dstrain}
DIR=${2:-/tmp/dstrain-bench-ckpt}
HIDDEN=${HIDDEN:-768} LAYERS=${LAYERS:-8} VOCAB=${VOCAB:-32000} STEPS=${STEPS:-8}
rm -rf "$DIR"; mkdir -p "$DIR/model"
cat > "$DIR/model/config.json" <<EOF
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": $VOCAB,
 "hidden_size": $HIDDEN, "intermediate_size": $((HIDDEN * 8 / 3 / 64 * 64)),
 "num_hidden_layers": $LAYERS, "num_attention_heads": $((HIDDEN / 64)),
 "num_key_value_heads": $((HIDDEN / 64)), "max_position_embeddings": 2048,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
 "torch_dtype": "float32"}
EOF
run() { # run ASYNC -> log
  "$DSTRAIN" train model.path="$DIR/model" model.random_init=true train.steps="$STEPS" \
    checkpoint.every=2 checkpoint.keep=1 checkpoint.async="$1" checkpoint.dir="$DIR/ck" \
    run.dir="$DIR/run" train.seq_len=16 train.micro_batch_size=1 export.enabled=false \
    log.every=1 train.resume=none
}
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), disk: $(df -h "$DIR" | awk 'NR==2 {print $1, $2}')"
for mode in true false; do
  run $mode > "$DIR/train-$mode.log" 2>&1
  python3 - "$DIR/train-$mode.log" "$mode" <<'EOF'
import re, sys
# (MB, whole save s, write phase s, stall s) per save
saves = [tuple(map(float, m.groups())) for m in re.finditer(
    r"saved: ([0-9.]+) MB in ([0-9.]+)s \(written in ([0-9.]+)s, [0-9]+ MB/s\), training stalled ([0-9.]+)s",
    open(sys.argv[1]).read())]
mb = saves[0][0]
med = lambda xs: sorted(xs)[len(xs) // 2]
whole = [s[0] / s[1] for s in saves]
write = [s[0] / s[2] for s in saves]
share = [s[3] / s[1] for s in saves]
print(f"async={sys.argv[2]}: {len(saves)} saves of {mb:.0f} MB: whole save {min(whole):.0f}..{max(whole):.0f} MB/s "
      f"(median {med(whole):.0f}), write phase {min(write):.0f}..{max(write):.0f} MB/s (median {med(write):.0f}); "
      f"stall {min(s[3] for s in saves):.3f}..{max(s[3] for s in saves):.3f}s "
      f"= {100*min(share):.1f}..{100*max(share):.1f}% of the save (median {100*med(share):.1f}%)")
open(sys.argv[1] + ".bytes", "w").write(str(int(mb * 1e6)))
EOF
done
# dd of the same bytes: the last checkpoint's shard (real data, just written, so read from the
# page cache as dstrain reads its snapshot from memory), and zeros for reference
bytes=$(cat "$DIR/train-true.log.bytes")
shard=$(ls "$DIR"/ck/step-*/rank-tp0-dp0.safetensors | tail -1)
cat "$shard" > /dev/null
for i in 1 2 3; do
  sync
  dd if="$shard" of="$DIR/dd.bin" bs=4M conv=fsync 2>&1 | tail -1 |
    sed "s/^/dd conv=fsync of the shard ($i): /"
  rm -f "$DIR/dd.bin"
  sync
  dd if=/dev/zero of="$DIR/dd.bin" bs=4M count=$((bytes / 4194304 + 1)) conv=fsync 2>&1 | tail -1 |
    sed "s/^/dd conv=fsync of zeros ($i): /"
  rm -f "$DIR/dd.bin"
done
rm -rf "$DIR"
