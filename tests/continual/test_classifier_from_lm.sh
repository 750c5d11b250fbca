#!/usr/bin/env bash
# test_classifier_from_lm.sh: a pretrained causal LM directory fine-tuned as a classifier, end to
# end: its body loaded, a new head drawn (one line says so), trained, exported as a
# *ForSequenceClassification directory that dstrain eval scores; where torch and transformers
# are installed, transformers loads the export with every tensor and gives the same logits
# (tools/check_hf_classification.py; skipped, and said so, where they are not).
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/classifier_from_lm; rm -rf "$T"; mkdir -p "$T"; cd "$T"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
python3 - <<'PY' || { echo "FAIL: python3 + h5py needed"; exit 1; }
import h5py, numpy as np
rng = np.random.default_rng(3)
def write(path, n):
    y = rng.integers(0, 3, n)
    rows = (rng.integers(0, 40, (n, 64)) + 40 * y[:, None]) % 250
    with h5py.File(path, "w") as f:
        f["tokens"] = rows.reshape(-1).astype(np.int32)
        f["doc_offsets"] = np.arange(n + 1, dtype=np.int64) * 64
        f["labels"] = y.astype(np.int64)
        f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 256; f.attrs["pad_id"] = 0
write("train.h5", 256); write("test.h5", 64)
PY
"$DSTRAIN" train train.steps=20 run.dir=lm > lm.out 2>&1
check "the causal LM trains and exports" test -f lm/export/config.json
"$DSTRAIN" train model.path=lm/export task.type=classification task.num_labels=3 \
  data.train=train.h5 train.seq_len=64 train.steps=40 optim.lr=1e-4 export.dtype=fp32 \
  run.dir=cls > cls.out 2>&1; rc=$?
check "fine-tuning the LM as a classifier exits 0" test $rc -eq 0
check "one line says the body is loaded and the head is new" \
  grep -q "lm/export is a causal LM: its body is loaded (not lm_head.weight), the new head score.weight \[3, 128\]" cls.out
check "the export is a LlamaForSequenceClassification" \
  grep -q '"LlamaForSequenceClassification"' cls/export/config.json
check "the body came from the LM: the classifier starts at the LM's embedding" python3 - <<'PY'
import json, struct, numpy as np, glob
def rd(d):
    out = {}
    for p in glob.glob(d + "/*.safetensors"):
        b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k == "__metadata__": continue
            raw = b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            if v["dtype"] == "BF16":
                a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, dtype=np.float32)
            out[k] = a
    return out
lm, cls = rd("lm/export"), rd("cls/export")
assert "score.weight" in cls and "lm_head.weight" not in cls, sorted(cls)
e0, e1 = lm["model.embed_tokens.weight"], cls["model.embed_tokens.weight"]
# 40 steps at lr 1e-4 move a weight by at most 40 x 1e-4; a random start would be 0.02-scale away
assert np.max(np.abs(e0 - e1)) < 40 * 1e-4 + 1e-2 * 0.5, float(np.max(np.abs(e0 - e1)))
PY
"$DSTRAIN" eval --model cls/export --data test.h5 > eval.out 2>&1
check "dstrain eval scores the export" python3 -c "
import re; m = re.search(r'eval_accuracy=([\d.]+) examples=64', open('eval.out').read())
assert m and float(m.group(1)) > 0.6, open('eval.out').read()"
if python3 -c "import torch, transformers" 2>/dev/null; then
  python3 "$SRC/tools/check_hf_classification.py" cls/export test.h5 --seq-len 64 --dstrain "$DSTRAIN" > hf.out 2>&1
  check "transformers loads the export and agrees on the logits" test $? -eq 0
  tail -1 hf.out
else
  echo "skipped: the transformers check (torch and transformers are not installed here)"
fi
echo "classifier from LM: $passes passed, $fails failed"
[ $fails -eq 0 ]
