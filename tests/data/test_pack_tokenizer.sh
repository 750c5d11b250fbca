#!/usr/bin/env bash
# `dstrain pack --tokenizer`: a tokenizer.json (or the model directory holding it) gives the
# vocabulary size (its largest id + 1, the number tools/tokenize_jsonl.py reports too) and the EOS
# id (tokenizer_config.json's eos_token, else config.json's eos_token_id) that the command line
# left out; explicit flags win; any other value is only recorded; ids beyond the tokenizer's
# vocabulary and a directory without tokenizer.json are refused (exit 2).
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/data_pack_tokenizer; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
attr() { python3 -c "import h5py, sys; print(int(h5py.File(sys.argv[1])['/'].attrs[sys.argv[2]]))" "$@"; }
python3 -c "import tokenizers, h5py" 2>/dev/null || { echo "FAIL: python3 with tokenizers and h5py needed"; exit 1; }

# a WordLevel tokenizer: <unk> 0, <pad> 1, </s> 2, then the words
mkdir -p model lonely
python3 - <<'PY'
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(["the press stopped at noon", "check the hydraulic pressure"],
                        trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "</s>"]))
tok.save("model/tokenizer.json")
tok.save("lonely/tokenizer.json")
open("model/tokenizer_config.json", "w").write('{"eos_token": {"content": "</s>"}}')
print(tok.get_vocab_size())
PY
printf '%s\n' '{"text": "the press stopped"}' '{"text": "check the pressure at noon"}' > text.jsonl
"$SRC/tools/tokenize_jsonl.py" --tokenizer model/tokenizer.json --input text.jsonl --output ids.jsonl > tok.out
check "tokenize_jsonl exits 0" test $? -eq 0
tok_vocab=$(sed -n 's/.*vocab_size \([0-9]*\).*/\1/p' tok.out)
check "tokenize_jsonl suggests pack --tokenizer" grep -q "next: dstrain pack --input ids.jsonl .* --tokenizer model/tokenizer.json" tok.out

"$DSTRAIN" pack --input ids.jsonl --output dir.h5 --tokenizer model > dir.out; rc=$?
check "pack --tokenizer DIR exits 0" test $rc -eq 0
check "vocabulary from the tokenizer, as tokenize_jsonl counts it" test "$(attr dir.h5 vocab_size)" = "$tok_vocab"
check "the tokenizer has 11 ids (3 special, 8 words)" test "$tok_vocab" = 11
check "EOS from tokenizer_config.json" test "$(attr dir.h5 eos_id)" = 2
check "pack says where they came from" grep -q "eos_id from tokenizer_config.json's eos_token </s>" dir.out

"$DSTRAIN" pack --input ids.jsonl --output file.h5 --tokenizer model/tokenizer.json > file.out
check "pack --tokenizer FILE: the same" test "$(attr file.h5 vocab_size)/$(attr file.h5 eos_id)" = "11/2"

# no tokenizer_config.json: the model's config.json names the EOS
echo '{"eos_token_id": [1, 2]}' > lonely/config.json
"$DSTRAIN" pack --input ids.jsonl --output cfg.h5 --tokenizer lonely > cfg.out
check "EOS from config.json's eos_token_id (a list: its first)" test "$(attr cfg.h5 eos_id)" = 1
rm lonely/config.json
"$DSTRAIN" pack --input ids.jsonl --output none.h5 --tokenizer lonely > none.out
check "no EOS anywhere: -1, and pack says so" test "$(attr none.h5 eos_id)" = -1
check "no EOS: the message" grep -q "no eos_id: in lm mode documents are joined without a separator" none.out

"$DSTRAIN" pack --input ids.jsonl --output flags.h5 --tokenizer model --vocab-size 40 --eos-id 7 > /dev/null
check "explicit flags win" test "$(attr flags.h5 vocab_size)/$(attr flags.h5 eos_id)" = "40/7"
"$DSTRAIN" pack --input ids.jsonl --output name.h5 --tokenizer byte > /dev/null
check "a name is only recorded" test "$(attr name.h5 eos_id)" = -1

printf '%s\n' '{"input_ids": [3, 11]}' > big.jsonl
"$DSTRAIN" pack --input big.jsonl --output big.h5 --tokenizer model > big.out 2>&1
check "an id beyond the tokenizer's vocabulary exits 2" test $? -eq 2
check "and names the id and the tokenizer" grep -q "token id 11 is >= the tokenizer.s vocabulary size 11" big.out
mkdir -p empty
"$DSTRAIN" pack --input ids.jsonl --output e.h5 --tokenizer empty > e.out 2>&1
check "a directory without tokenizer.json exits 2" test $? -eq 2
check "and says so" grep -q "no tokenizer.json in it" e.out

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
