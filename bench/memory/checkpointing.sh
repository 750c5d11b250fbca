#!/usr/bin/env bash
# checkpointing.sh: deepseek-llm-7b (random weights) at 1 x 4096 tokens on one GPU with
# train.activation_checkpointing true, selective and false: dstrain's memory line, peak device
# memory from nvidia-smi (sampled every 300 ms, whole device: CUDA context and cuBLASLt workspace
# included), step time and loss from metrics.jsonl; then the tiny preset for 20 steps all three
# ways, whose loss curves must be identical. Run from the repo root on a GPU node (after
# `source .devdeps/activate` where the libraries are unpacked there). BUILD: build dir.
set -uo pipefail
B=${BUILD:-/tmp/dstrain-ckpt}
OUT=${OUT:-$B/logs}
mkdir -p "$OUT"
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DDSTRAIN_TESTS=OFF \
    > "$OUT/build.log" 2>&1 && cmake --build "$B" -j"$(nproc)" --target dstrain >> "$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
for ck in true selective false; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 300 > "$OUT/mem-$ck.csv" &
    P=$!
    timeout 280 "$B/dstrain" train device=cuda model.preset=deepseek-llm-7b train.seq_len=4096 \
        train.micro_batch_size=1 train.steps=3 log.every=1 train.activation_checkpointing=$ck \
        export.enabled=false run.dir="$B/7b-$ck" > "$OUT/7b-$ck.log" 2>&1
    echo "7b checkpointing=$ck: rc $?"
    kill $P
    grep -h "memory per rank\|^step" "$OUT/7b-$ck.log"
    echo "peak MiB $(sort -n "$OUT/mem-$ck.csv" | tail -1)"
done
for ck in false true selective; do
    timeout 100 "$B/dstrain" train device=cuda train.steps=20 log.every=1 \
        train.activation_checkpointing=$ck run.dir="$B/tiny-$ck" > "$OUT/tiny-$ck.log" 2>&1
    python3 -c "import json,sys;print([json.loads(l)['loss'] for l in open(sys.argv[1]) if '\"loss\"' in l])" \
        "$B/tiny-$ck/metrics.jsonl" > "$OUT/tiny-$ck.loss"
done
cmp "$OUT/tiny-false.loss" "$OUT/tiny-true.loss" && cmp "$OUT/tiny-false.loss" "$OUT/tiny-selective.loss" &&
    echo "tiny: 20 losses identical (false, true, selective)"
