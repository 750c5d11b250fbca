#!/usr/bin/env bash
# dstrain info prints names that come from files (safetensors tensor names and metadata, a token
# file's tokenizer attribute) escaped, and so do the messages that refuse them and the tokenizer
# helper's output: a newline, a terminal escape or a quote in them cannot add
# a line, move the cursor or end a quoted name early. Each case counts the output's lines and
# looks for the escaped form.
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/ops_info_escapes; rm -rf "$T"; mkdir -p "$T"; cd "$T"
fails=0; passes=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
no_raw_controls() { ! LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]' "$1"; }

# a safetensors file whose tensor name holds a newline, ESC [2J, a quote and a backslash, and
# whose metadata value holds ESC ]0; (a terminal title) and DEL
python3 - <<'EOF'
import json, struct
name = 'w\nFAKE LINE\x1b[2J"q\\'
h = {"__metadata__": {"format": "pt\x1b]0;pwned\x07\x7f"},
     name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
b = json.dumps(h).encode()
b += b' ' * (-len(b) % 8)
open('evil.safetensors', 'wb').write(struct.pack('<Q', len(b)) + b + b'\0' * 8)
EOF
"$DSTRAIN" info evil.safetensors > st.out 2> st.err; rc=$?
check "safetensors: exit 0" test $rc -eq 0
check "safetensors: no raw control character in the output" no_raw_controls st.out
check "safetensors: no line starts with the planted text" bash -c '! grep -q "^FAKE LINE" st.out'
check "safetensors: the name escaped" grep -qF 'w\nFAKE LINE\x1B[2J"q\\' st.out
check "safetensors: the metadata escaped" grep -qF '{"format":"pt\u001b]0;pwned\u0007\x7F"}' st.out

# a token file whose tokenizer attribute holds a newline, ESC and a quote
python3 - <<'EOF'
import h5py, numpy as np
with h5py.File('evil.h5', 'w') as f:
    f.create_dataset('tokens', data=np.array([1, 2, 3, 4], dtype='<i4'))
    f.create_dataset('doc_offsets', data=np.array([0, 2, 4], dtype='<i8'))
    f.attrs['format'] = 'dstrain-tokens'
    f.attrs['format_version'] = np.int64(1)
    f.attrs['vocab_size'] = np.int64(16)
    f.attrs['tokenizer'] = 'gpt2"\nFAKE LINE\x1b[31m'
EOF
"$DSTRAIN" info evil.h5 > h5.out 2> h5.err; rc=$?
check "dataset: exit 0" test $rc -eq 0 || cat h5.err
check "dataset: no raw control character" no_raw_controls h5.out
check "dataset: no line starts with the planted text" bash -c '! grep -q "^FAKE LINE" h5.out'
check "dataset: the tokenizer quoted and escaped" \
  grep -qF 'vocabulary:   16 (tokenizer "gpt2\"\nFAKE LINE\x1B[31m"); ' h5.out

# the messages of a refused file escape the same names
python3 - <<'EOF'
import json, struct
h = {'a\n\x1b[2J"': {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}
b = json.dumps(h).encode()
open('bad.safetensors', 'wb').write(struct.pack('<Q', len(b)) + b + b'\0')
EOF
"$DSTRAIN" info bad.safetensors > bad.out 2> bad.err; rc=$?
check "refused safetensors: exit 2, one line, the name escaped" bash -c \
  "[ $rc -eq 2 ] && [ \$(wc -l < bad.err) -eq 1 ] && grep -qF 'tensor \"a\n\x1B[2J\\\"\": unknown dtype \"Q8\"' bad.err"

# the tokenizer helper's output, refused, is escaped in the message (a stand-in helper prints
# an id, then a terminal escape and a line of its own)
"$DSTRAIN" train train.steps=1 train.micro_batch_size=2 train.seq_len=16 run.dir=tok > tok.out 2>&1
printf '{}\n' > tok/export/tokenizer.json
cat > helper.py <<'PY'
import sys
sys.stdin.read()
sys.stdout.write('5 \x1b[2J\nFAKE LINE "q"')
PY
DSTRAIN_TOKENIZER_HELPER=$PWD/helper.py "$DSTRAIN" generate --model tok/export --prompt hi \
  > gen.out 2> gen.err; rc=$?
check "tokenizer output refused: exit 2, one line" test $rc -eq 2 -a "$(wc -l < gen.err)" -eq 1
check "tokenizer output refused: escaped" \
  grep -qF 'generate: tokenizer output: "\x1B[2J\nFAKE LINE \"q\"": expected token ids in 0..' gen.err

echo "ops/info_escapes: $passes passed, $fails failed"
[ $fails -eq 0 ]
