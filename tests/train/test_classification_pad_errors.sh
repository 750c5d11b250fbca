#!/usr/bin/env bash
# The two pads of classification, and which one an error blames: `dstrain eval` of a classifier
# pads short documents with the model's pad_token_id (its config.json), a classification run
# pads with the data file's pad_id attribute (dstrain pack --pad-id; the model's pad_token_id
# when the file has none). Each missing one is named as what it is, with where to set it, and
# exits 2; with it set, eval runs.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/classification_pad_errors; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}

# a tiny LlamaForSequenceClassification (3 labels) without pad_token_id, written by hand
python3 - <<'PY' || { echo "FAIL: python3 + numpy needed"; exit 1; }
import json, os, struct, numpy as np
V, C, I, L = 24, 16, 32, 3
rng = np.random.default_rng(0)
os.makedirs("cls", exist_ok=True)
json.dump({"architectures": ["LlamaForSequenceClassification"], "model_type": "llama",
           "vocab_size": V, "hidden_size": C, "intermediate_size": I, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32,
           "rms_norm_eps": 1e-5, "num_labels": L, "tie_word_embeddings": False},
          open("cls/config.json", "w"))
shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,), "score.weight": (L, C)}
p = "model.layers.0."
shapes.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
               p + "self_attn.q_proj.weight": (C, C), p + "self_attn.k_proj.weight": (8, C),
               p + "self_attn.v_proj.weight": (8, C), p + "self_attn.o_proj.weight": (C, C),
               p + "mlp.gate_proj.weight": (I, C), p + "mlp.up_proj.weight": (I, C),
               p + "mlp.down_proj.weight": (C, I)})
header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
for name, shape in shapes.items():
    a = (np.ones(shape) if name.endswith("norm.weight") else rng.normal(0, 0.1, shape)).astype("<f4")
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [at, at + a.nbytes]}
    blobs.append(a.tobytes()); at += a.nbytes
h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
open("cls/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
# documents of 3 and 6 tokens with labels; one file with a pad_id, one without
printf '%s\n' '{"input_ids": [3, 4, 5], "label": 0}' '{"input_ids": [6, 7, 8, 9, 10, 11], "label": 2}' \
  '{"input_ids": [12, 13, 14, 15], "label": 1}' > docs.jsonl
"$DSTRAIN" pack --input docs.jsonl --output padded.h5 --vocab-size 24 --pad-id 0 > /dev/null
"$DSTRAIN" pack --input docs.jsonl --output nopad.h5 --vocab-size 24 > /dev/null

# eval: the model's pad_token_id is what is missing (the file's pad_id is there)
"$DSTRAIN" eval --model cls --data padded.h5 > eval.out 2> eval.err; rc=$?
check "eval without the model's pad_token_id exits 2" test $rc -eq 2
check "eval: names the model's pad_token_id and its config.json" \
  grep -q 'the model has no pad_token_id.*"pad_token_id" of cls/config.json' eval.err
check "eval: says the file's pad_id is not what is used" grep -q "data file's pad_id is not used" eval.err
check "eval: does not blame the file" bash -c '! grep -q "file has no pad_id" eval.err'
# the way out the message gives: a --seq-len no longer than the shortest document
"$DSTRAIN" eval --model cls --data padded.h5 --seq-len 3 > eval3.out 2>&1; rc=$?
check "eval --seq-len 3 runs" test $rc -eq 0
check "eval --seq-len 3 scores the 3 documents" grep -q "examples=3" eval3.out
# and the other: pad_token_id set in config.json
python3 -c "
import json; c = json.load(open('cls/config.json')); c['pad_token_id'] = 0
json.dump(c, open('cls/config.json', 'w'))"
"$DSTRAIN" eval --model cls --data padded.h5 > evalpad.out 2>&1; rc=$?
check "eval with pad_token_id set runs" test $rc -eq 0
check "eval with pad_token_id scores the 3 documents" grep -q "examples=3" evalpad.out
# rows no longer than the longest document: a --seq-len far beyond it scores the same
"$DSTRAIN" eval --model cls --data padded.h5 --seq-len 16777216 > evalbig.out 2>&1; rc=$?
check "eval --seq-len 2^24: exit 0 and the same accuracy" \
  test $rc -eq 0 -a "$(tail -n 1 evalbig.out)" = "$(tail -n 1 evalpad.out)"

# training: the data file's pad_id attribute is what is missing (the model's pad_token_id, when
# it has one, stands in for it: so here it has none)
python3 -c "
import json; c = json.load(open('cls/config.json')); del c['pad_token_id']
json.dump(c, open('cls/config.json', 'w'))"
"$DSTRAIN" train model.path=cls model.random_init=true task.type=classification \
  task.num_labels=3 data.mode=classification data.train=nopad.h5 train.steps=1 \
  train.seq_len=6 train.micro_batch_size=1 run.dir=run-nopad > train.out 2> train.err; rc=$?
check "training on a file without pad_id exits 2" test $rc -eq 2
check "training: names the data file's pad_id attribute" \
  grep -q 'nopad.h5: the data file has no "pad_id" attribute' train.err
check "training: says the model has no pad_token_id either" \
  grep -q "the model has no pad_token_id to use instead" train.err
check "training: says where to set it" grep -q "dstrain pack --pad-id" train.err
[ $fails -eq 0 ] || { echo "--- eval.err"; cat eval.err; echo "--- train.err"; cat train.err; }

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
