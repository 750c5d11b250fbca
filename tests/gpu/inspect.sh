#!/usr/bin/env bash
# inspect.sh: eval, generate and a classifier's eval with --device cuda against the same commands
# on the CPU (the reference), on models trained here on the CPU: the tiny preset (dense), the
# tiny-moe preset (latent attention and experts) and a small Llama sequence classifier. Run on a
# GPU node, by itself or from run.sh (which passes its BUILD and OUT). Prints one summary row per
# check (run.sh's format, also written to $OUT/inspect-summary.txt) and exits 1 if any failed.
# Environment: BUILD (build dir, default /tmp/dstrain-gpu; dstrain is built there when missing or
# stale), OUT (logs, default $BUILD/logs).
#
# Bars, from what differs: in fp32 the GPU's sums differ from the CPU's only in their order, each
# token's loss by about 1e-6 relative, and eval's mean is taken in double, so fp32 means agree to
# 1e-5 relative; bf16 rounds every activation (about 4e-3 relative each), so its mean is held to
# 2e-2. Greedy decoding in fp32 picks the same tokens unless two logits tie within about 1e-5,
# which models trained this far do not have among their top two (the run reports it if they do).
set -uo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$(dirname "$0")/common.sh" inspect
D=$BUILD/dstrain
W=$BUILD/inspect
rm -rf "$W"
mkdir -p "$W"

build_dstrain

# ---- the models, trained on the CPU -------------------------------------------------------------
train() { # train NAME ARGS...
    local name=$1
    shift
    if ! timeout 300 "$D" train device=cpu log.every=1000 export.dtype=fp32 run.dir="$W/$name" \
            "$@" > "$OUT/inspect-train-$name.log" 2>&1; then
        tail -5 "$OUT/inspect-train-$name.log"
        row "inspect: train $name on the CPU" "see inspect-train-$name.log" FAIL
        status=1
    fi
}
train tiny train.steps=150
train moe model.preset=tiny-moe train.steps=20
python3 - "$W" <<'PY' || { row "inspect: classifier data (h5py)" "python3 + h5py needed" FAIL; status=1; }
import h5py, json, numpy as np, sys
w = sys.argv[1]
rng = np.random.default_rng(1)
def write(path, n):  # 3 classes, tokens from a third of the vocabulary by label, then CLS
    y = rng.integers(0, 3, n)
    docs = [list(rng.integers(0, 7, rng.integers(5, 12)) + 7 * c) + [21] for c in y]
    with h5py.File(path, "w") as f:
        f["tokens"] = np.concatenate(docs).astype(np.int32)
        f["doc_offsets"] = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
        f["labels"] = y.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 24; f.attrs["pad_id"] = 23
write(f"{w}/cls-train.h5", 192); write(f"{w}/cls-test.h5", 61)
import os; os.makedirs(f"{w}/llama", exist_ok=True)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 24,
           "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 12,
           "rms_norm_eps": 1e-5, "rope_theta": 100.0, "tie_word_embeddings": False,
           "pad_token_id": 23}, open(f"{w}/llama/config.json", "w"))
PY
train cls model.path="$W/llama" model.random_init=true task.type=classification \
    task.num_labels=3 train.seq_len=12 train.micro_batch_size=8 train.steps=40 \
    data.train="$W/cls-train.h5"

# ---- eval: CPU, GPU fp32, GPU bf16 ----------------------------------------------------------------
value() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" "$2" | tail -n 1; }
eval_all() { # eval_all NAME KEY DATA ARGS...: runs the three, prints "cpu fp32 bf16" of KEY
    local name=$1 key=$2 data=$3
    shift 3
    local out=""
    for dev in "cpu auto" "cuda fp32" "cuda bf16"; do
        set -- $dev "$@"
        local tag="$1-$2"
        timeout 120 "$D" eval --model "$W/$name/export" --data "$data" --device "$1" \
            --precision "$2" "${@:3}" > "$OUT/inspect-eval-$name-$tag.log" 2>&1 ||
            tail -3 "$OUT/inspect-eval-$name-$tag.log" >&2
        local v
        v=$(value "$key" "$OUT/inspect-eval-$name-$tag.log")
        out="$out ${v:-missing}"
        shift 2
    done
    echo $out
}
compare() { # compare WHAT CPU FP32 BF16 FP32-BAR BF16-BAR (relative)
    python3 - "$@" <<'PY'
import sys
what, c, f, b, bar32, bar16 = sys.argv[1:7]
def row(a, d, r): print("| %-44s | %-48s | %s |" % (a, d, r))
try:
    c, f, b, bar32, bar16 = map(float, (c, f, b, bar32, bar16))
except ValueError:
    row(what, "missing: cpu %s fp32 %s bf16 %s" % (c, f, b), "FAIL"); sys.exit(1)
d32, d16 = abs(f - c) / abs(c), abs(b - c) / abs(c)
ok = d32 <= bar32 and d16 <= bar16
row(what, "cpu %.6f: fp32 %.1e (<= %.0e), bf16 %.1e (<= %.0e)" % (c, d32, bar32, d16, bar16),
    "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
}
kjv=$SRC/data/bundled/kjv-eval.h5
# shellcheck disable=SC2046 # three words
compare "eval tiny, kjv-eval, GPU vs CPU" $(eval_all tiny eval_loss "$kjv" --seq-len 256) 1e-5 2e-2 |
    tee -a "$SUMMARY" || status=1
# shellcheck disable=SC2046
compare "eval tiny-moe, kjv-eval, GPU vs CPU" $(eval_all moe eval_loss "$kjv" --seq-len 128) \
    1e-5 2e-2 | tee -a "$SUMMARY" || status=1

# the classifier: its accuracy and every document's logits
for dev in "cpu auto" "cuda fp32"; do
    set -- $dev
    timeout 120 "$D" eval --model "$W/cls/export" --data "$W/cls-test.h5" --device "$1" \
        --precision "$2" --logits "$W/logits-$1.txt" > "$OUT/inspect-eval-cls-$1.log" 2>&1 ||
        tail -3 "$OUT/inspect-eval-cls-$1.log"
done
python3 - "$W/logits-cpu.txt" "$W/logits-cuda.txt" "$OUT/inspect-eval-cls-cpu.log" \
    "$OUT/inspect-eval-cls-cuda.log" <<'PY' | tee -a "$SUMMARY" || status=1
import sys
def row(a, d, r): print("| %-44s | %-48s | %s |" % (a, d, r))
try:
    rows = [[list(map(float, l.split())) for l in open(p) if not l.startswith("#")]
            for p in sys.argv[1:3]]
    acc = [open(p).read().split("eval_accuracy=")[1].split()[0] for p in sys.argv[3:5]]
except (OSError, IndexError, ValueError) as e:
    row("eval classifier, GPU fp32 vs CPU", "missing output (%s)" % e, "FAIL"); sys.exit(1)
n = len(rows[0])
d = max((abs(a - b) for r, s in zip(*rows) for a, b in zip(r[1:], s[1:])), default=float("inf"))
ok = n == 61 and len(rows[1]) == n and d <= 1e-4 and acc[0] == acc[1]
row("eval classifier, GPU fp32 vs CPU", "%d docs, logits max |d| %.1e (<= 1e-4), acc %s %s"
    % (n, d, acc[0], acc[1]), "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY

# ---- generate: greedy, CPU against GPU fp32; bf16 runs ---------------------------------------------
gen() { # gen DEVICE PRECISION: the generated ids
    timeout 120 "$D" generate --model "$W/tiny/export" --prompt "And God said" \
        --max-new-tokens 24 --print-ids --device "$1" --precision "$2" \
        > "$OUT/inspect-gen-$1-$2.log" 2>&1 || tail -3 "$OUT/inspect-gen-$1-$2.log" >&2
    grep -i 'generated' "$OUT/inspect-gen-$1-$2.log" | tail -n 1
}
g_cpu=$(gen cpu auto)
g_fp32=$(gen cuda fp32)
g_bf16=$(gen cuda bf16)
if [ -n "$g_cpu" ] && [ "$g_cpu" = "$g_fp32" ]; then r=PASS; else r=FAIL; status=1; fi
row "generate greedy, GPU fp32 = CPU" "$(echo "$g_fp32" | cut -c1-48)" $r
if [ -n "$g_bf16" ]; then r=PASS; else r=FAIL; status=1; fi
row "generate greedy, GPU bf16 runs" "$(echo "$g_bf16" | cut -c1-48)" $r
exit $status
