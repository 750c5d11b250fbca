#!/usr/bin/env bash
# The data tools end to end: tools/tokenize_jsonl.py (raw text, prompt/response and chat JSONL
# with a tiny tokenizer.json trained here with the tokenizers library) and
# tools/make_sensor_data.py, each packed with `dstrain pack` and read back with h5py; then short
# `dstrain train` runs in SFT mode, on a weighted mixture, and with an eval set.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/data_tools; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
PY=""
for p in python3 /usr/bin/python3; do
  if $p -c 'import tokenizers, h5py, numpy' >/dev/null 2>&1; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
  echo "FAIL: no python3 with tokenizers, h5py and numpy (tools/install-deps.sh installs them)"
  echo "0 passed, 1 failed"; exit 1
fi

# A WordLevel tokenizer trained on a few sentences, with <unk>, <pad> and <eos>.
$PY - <<'EOF'
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
text = ["the press stopped at noon", "check the hydraulic pressure", "pressure is low",
        "what is the pressure", "the pressure is fine", "<|user|>", "<|assistant|>"]
tok.train_from_iterator(text, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>"]))
tok.save("tokenizer.json")
EOF
check "tokenizer.json built" test -s tokenizer.json

cat > raw.jsonl <<'EOF'
{"text": "the press stopped at noon", "label": 0}

{"text": "pressure is low", "label": 1}
EOF
cat > chat.jsonl <<'EOF'
{"prompt": "what is the pressure", "response": "the pressure is fine"}
{"messages": [{"role": "user", "content": "check the hydraulic pressure"}, {"role": "assistant", "content": "pressure is low"}]}
EOF
TOK="$PY $SRC/tools/tokenize_jsonl.py --tokenizer tokenizer.json"
$TOK --input raw.jsonl --output raw.ids.jsonl --eos "<eos>" > raw.out 2>&1
check "raw text tokenized" test $? -eq 0
check "summary line" grep -q "2 documents" raw.out
$TOK --input chat.jsonl --output chat.ids.jsonl --eos "<eos>" > chat.out 2>&1
check "chat tokenized" test $? -eq 0
check "ids and masks are the tokenizer's" $PY - <<'EOF'
import json
from tokenizers import Tokenizer
tok = Tokenizer.from_file("tokenizer.json")
enc = lambda s: tok.encode(s, add_special_tokens=False).ids
eos = tok.token_to_id("<eos>")
raw = [json.loads(l) for l in open("raw.ids.jsonl")]
assert raw[0] == {"input_ids": enc("the press stopped at noon") + [eos], "label": 0}, raw[0]
assert raw[1]["label"] == 1 and "loss_mask" not in raw[1], raw[1]
chat = [json.loads(l) for l in open("chat.ids.jsonl")]
p, r = enc("what is the pressure"), enc("the pressure is fine")
assert chat[0]["input_ids"] == p + r + [eos], chat[0]
assert chat[0]["loss_mask"] == [0] * len(p) + [1] * (len(r) + 1), chat[0]
ids, mask = chat[1]["input_ids"], chat[1]["loss_mask"]
user = enc("<|user|>\n") + enc("check the hydraulic pressure\n")
assistant_head = enc("<|assistant|>\n")
answer = enc("pressure is low\n")
assert ids == user + assistant_head + answer + [eos], ids
assert mask == [0] * (len(user) + len(assistant_head)) + [1] * (len(answer) + 1), mask
EOF

# Bad input: one line naming FILE:LINE, exit 2, no output file left behind.
printf '{"text": "ok"}\n{"prompt": "no response"}\n' > bad.jsonl
$TOK --input bad.jsonl --output bad.ids.jsonl > bad.out 2>&1; rc=$?
check "bad line exits 2" test $rc -eq 2
check "bad line named" grep -q "bad.jsonl:2: response: expected a string" bad.out
check "no partial output" test ! -e bad.ids.jsonl -a ! -e bad.ids.jsonl.tmp
printf '{"text": "ok"\n' > broken.jsonl
$TOK --input broken.jsonl --output x.jsonl > broken.out 2>&1
check "invalid JSON named" grep -q "broken.jsonl:1: invalid JSON" broken.out
$TOK --input raw.jsonl --output x.jsonl --eos "</s>" > eos.out 2>&1; rc=$?
check "unknown special token exits 2" test $rc -eq 2
check "unknown special token named" grep -q -- "--eos '</s>': not a token" eos.out

# Packed and read back: tokens, offsets and masks as tokenized.
VOCAB=$($PY -c "from tokenizers import Tokenizer; print(Tokenizer.from_file('tokenizer.json').get_vocab_size())")
EOS=$($PY -c "from tokenizers import Tokenizer; print(Tokenizer.from_file('tokenizer.json').token_to_id('<eos>'))")
PAD=$($PY -c "from tokenizers import Tokenizer; print(Tokenizer.from_file('tokenizer.json').token_to_id('<pad>'))")
"$DSTRAIN" pack --input chat.ids.jsonl --output chat.h5 --vocab-size "$VOCAB" --eos-id "$EOS" \
  --pad-id "$PAD" --tokenizer tokenizer.json > pack.out 2>&1
check "chat packed" test $? -eq 0
check "packed file matches the JSONL" $PY - <<'EOF'
import json, h5py, numpy as np
docs = [json.loads(l) for l in open("chat.ids.jsonl")]
with h5py.File("chat.h5", "r") as f:
    o = f["doc_offsets"][:]
    for k, d in enumerate(docs):
        assert f["tokens"][o[k]:o[k + 1]].tolist() == d["input_ids"]
        assert f["loss_mask"][o[k]:o[k + 1]].tolist() == d["loss_mask"]
EOF

# Sensor data: deterministic per seed, four labels, ids in range; packs for classification.
SENS="$PY $SRC/tools/make_sensor_data.py --sequences 400 --bins 64"
$SENS --output s1.jsonl --seed 3 > sens.out 2>&1
check "sensor data made" test $? -eq 0
$SENS --output s2.jsonl --seed 3 >/dev/null 2>&1
$SENS --output s3.jsonl --seed 4 >/dev/null 2>&1
check "same seed, same data" cmp -s s1.jsonl s2.jsonl
check "other seed, other data" bash -c '! cmp -s s1.jsonl s3.jsonl'
check "summary names the pack flags" grep -q -- "--vocab-size 65 --pad-id 64" sens.out
"$DSTRAIN" pack --input s1.jsonl --output sensors.h5 --vocab-size 65 --pad-id 64 > spack.out 2>&1
check "sensor data packed" test $? -eq 0
check "sensor file: labels, ids, lengths" $PY - <<'EOF'
import h5py, numpy as np
with h5py.File("sensors.h5", "r") as f:
    labels, tokens, o = f["labels"][:], f["tokens"][:], f["doc_offsets"][:]
    assert f.attrs["pad_id"] == 64 and f.attrs["vocab_size"] == 65
assert len(labels) == 400 and set(labels.tolist()) == {0, 1, 2, 3}, np.bincount(labels)
assert tokens.min() >= 0 and tokens.max() < 64
lengths = np.diff(o)
assert lengths.min() >= 48 and lengths.max() <= 128
# the classes differ as documented: drift ends higher than it starts, normal does not
def ends(label):
    d = [tokens[o[k]:o[k + 1]] for k in range(400) if labels[k] == label]
    return np.mean([x[-8:].mean() - x[:8].mean() for x in d])
assert ends(1) > 10 and abs(ends(0)) < 3, (ends(1), ends(0))
EOF
$SENS --output bad.jsonl --bins 1 > sbad.out 2>&1; rc=$?
check "bad sensor options exit 2" test $rc -eq 2

# Training on what the tools made: SFT rows, a weighted mixture from YAML, an eval set.
"$DSTRAIN" pack --input raw.ids.jsonl --output raw.h5 --vocab-size "$VOCAB" --eos-id "$EOS" \
  > rawpack.out 2>&1
check "raw text packed" test $? -eq 0
"$DSTRAIN" train data.train=chat.h5 data.mode=sft train.seq_len=16 train.micro_batch_size=2 \
  train.steps=3 run.dir=sft log.every=1 > sft.out 2>&1
check "SFT run exits 0" test $? -eq 0
check "SFT run trained on response tokens only" $PY -c "
import json
l = [json.loads(x) for x in open('sft/metrics.jsonl') if '\"loss\"' in x]
assert len(l) == 3 and all(x['tokens'] == 5 + 4 for x in l), l"
cat > mix.yaml <<EOF
data:
  train:
    - {path: chat.h5, weight: 0.7}
    - path: raw.h5
      weight: 0.3
  eval: [chat.h5]
train: {seq_len: 8, micro_batch_size: 2, steps: 4}
eval: {every: 2, batches: 1}
EOF
"$DSTRAIN" train -c mix.yaml run.dir=mix > mix.out 2>&1
check "mixture run exits 0" test $? -eq 0
check "mixture run recorded eval losses" $PY -c "
import json
e = [json.loads(x) for x in open('mix/metrics.jsonl') if 'eval_loss' in x]
assert [x['step'] for x in e] == [2, 4] and e[0]['eval_set'] == 0, e"
check "resolved config keeps the list" grep -q 'weight: 0.3' mix/config.yaml
printf 'data:\n  train:\n    - {path: chat.h5, weight: -1}\n' > badmix.yaml
"$DSTRAIN" train -c badmix.yaml > badmix.out 2>&1; rc=$?
check "bad weight exits 2" test $rc -eq 2
check "bad weight message" grep -q "badmix.yaml:3: data.train\[0\].weight: expected a number" badmix.out
"$DSTRAIN" train data.train=missing.h5 train.steps=1 run.dir=missing > missing.out 2>&1; rc=$?
check "missing file exits 2" test $rc -eq 2
check "missing file named" grep -q "missing.h5: cannot open" missing.out

# Classification on the sensor file: labels reach the model's head, and the loss falls.
"$DSTRAIN" train data.train=sensors.h5 data.mode=classification task.type=classification \
  task.num_labels=4 train.seq_len=64 train.micro_batch_size=16 train.steps=40 optim.lr=3e-3 \
  optim.warmup_steps=5 export.enabled=false run.dir=cls log.every=10 > cls.out 2>&1
check "classification run exits 0" test $? -eq 0
check "classification loss falls from about ln 4" $PY -c "
import json, math
l = [json.loads(x) for x in open('cls/metrics.jsonl') if '\"loss\"' in x]
first, last = l[0]['loss'], sum(x['loss'] for x in l[-5:]) / 5
assert abs(first - math.log(4)) < 0.5 and all(x['tokens'] == 16 for x in l), (first, l[0])
assert last < 0.8 * first, (first, last)"
"$DSTRAIN" train data.train=sensors.h5 data.mode=classification task.type=causal_lm \
  train.steps=1 run.dir=cls2 > cls2.out 2>&1; rc=$?
check "mode and task.type must agree" test $rc -eq 2
check "mode and task.type message" grep -q "data.mode classification does not go with task.type causal_lm" cls2.out

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
