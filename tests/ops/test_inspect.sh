#!/usr/bin/env bash
# `dstrain info`, `dstrain plot` (a run, a nightly state's history matrix, garbled matrices) and
# `dstrain generate` on fixtures, each checked against values computed independently (python on
# the files, PyTorch reference logits, the tokenizers library).
set -u
: "${DSTRAIN:?}" "${SRC:?}" "${TMPROOT:?}"
T=$TMPROOT/ops_inspect; rm -rf "$T"; mkdir -p "$T"; cd "$T"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fails=0; passes=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passes=$((passes+1)); else echo "FAIL: $name"; fails=$((fails+1)); fi
}
P=$SRC/tests/fixtures/parity

# ---- info: checkpoint ----
"$DSTRAIN" train train.steps=3 train.micro_batch_size=2 train.seq_len=16 export.enabled=false \
  run.dir=run eval.every=1 data.eval="$SRC/data/bundled/kjv-eval.h5" eval.batches=1 > run.out 2>&1
ck=run/checkpoints/step-00000003
"$DSTRAIN" info "$ck" > ck.txt 2>&1; rc=$?
check "info checkpoint exits 0" test $rc -eq 0
check "info checkpoint: step" grep -q '^step: *3$' ck.txt
check "info checkpoint: layout" grep -q '^layout: *tp 1 x dp 1 (1 ranks)' ck.txt
check "info checkpoint: buffers" grep -q '^buffers: *params, optim.m, optim.v$' ck.txt
check "info checkpoint: checksums OK" grep -q '^checksums: *OK' ck.txt
check "info checkpoint: every file with its crc" python3 -c "
import json; m=json.load(open('$ck/manifest.json')); t=open('ck.txt').read()
assert all(('%s' % f['name']) in t and f['crc32c'] in t for f in m['files']), t"
# one flipped byte in the shard: the checksum check fails, exit 2
python3 -c "
p='$ck/rank-tp0-dp0.safetensors'; b=bytearray(open(p,'rb').read()); b[-5]^=0xff; open(p,'wb').write(b)"
"$DSTRAIN" info "$ck" > ckbad.txt 2> ckbad.err; rc=$?
check "info damaged checkpoint exits 2" test $rc -eq 2
check "info damaged checkpoint says which file" grep -q '^checksums: *FAILED: .*rank-tp0-dp0.safetensors' ckbad.txt

# ---- info: Hugging Face model directories (parameter count from the headers, by python) ----
for m in llama_tied_linear_bf16_newform_sharded qwen2_gqa_bias_f32_newform; do
  "$DSTRAIN" info "$P/$m" > "$m.txt" 2>&1
  check "info $m: counts and dtypes" python3 -c "
import json, glob, struct, re
n = {}
for f in glob.glob('$P/$m/*.safetensors'):
    h = open(f, 'rb'); k = struct.unpack('<Q', h.read(8))[0]; hd = json.loads(h.read(k))
    for name, e in hd.items():
        if name == '__metadata__': continue
        c = 1
        for s in e['shape']: c *= s
        n[e['dtype']] = n.get(e['dtype'], 0) + c
t = open('$m.txt').read()
arch = json.load(open('$P/$m/config.json'))['architectures'][0]
assert re.search(r'^architecture: +%s$' % arch, t, re.M), t
assert re.search(r'^parameters: +%d ' % sum(n.values()), t, re.M), (n, t)
for d, c in n.items(): assert re.search(r'dtype %s +\d+ tensors, %d parameters' % (d, c), t), (d, c, t)"
done

# ---- info: a dataset with labels and tasks (expected values computed by numpy) ----
python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(3)
lengths = np.array([1, 3, 4, 7, 8, 100, 5, 6, 2, 9])
offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
with h5py.File("ds.h5", "w") as f:
    f.create_dataset("tokens", data=rng.integers(0, 50, offsets[-1]).astype(np.int32))
    f.create_dataset("doc_offsets", data=offsets)
    f.create_dataset("labels", data=np.array([0, 1, 1, 2, 0, 1, 1, 1, 2, 2], dtype=np.int64))
    f.create_dataset("task_ids", data=np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=np.int32))
    f.attrs["format"] = "dstrain-tokens"; f.attrs["format_version"] = 1
    f.attrs["vocab_size"] = 64; f.attrs["bos_id"] = -1; f.attrs["eos_id"] = 63
    f.attrs["pad_id"] = -1; f.attrs["tokenizer"] = "test"
PY
"$DSTRAIN" info ds.h5 > ds.txt 2>&1; rc=$?
check "info dataset exits 0" test $rc -eq 0
check "info dataset: documents and tokens" bash -c "grep -q '^documents: *10 ' ds.txt && grep -q '^tokens: *145 ' ds.txt"
check "info dataset: length histogram" python3 -c "
t=open('ds.txt').read()
for r, c in (('1-1', 1), ('2-3', 2), ('4-7', 4), ('8-15', 2), ('64-127', 1)):
    assert any(l.split()[:2] == [r, str(c)] for l in t.splitlines()), (r, c, t)
assert 'min 1, mean 14.5, max 100 tokens' in t, t"
check "info dataset: labels" python3 -c "
t=open('ds.txt').read(); i=t.index('labels: 3 distinct'); s=t[i:].splitlines()
assert s[1].split()[:2]==['0','2'] and s[2].split()[:2]==['1','5'] and s[3].split()[:2]==['2','3'], s"
check "info dataset: tasks" python3 -c "
t=open('ds.txt').read(); i=t.index('tasks: 2 distinct'); s=t[i:].splitlines()
assert s[1].split()[:2]==['0','4'] and s[2].split()[:2]==['1','6'], s"
"$DSTRAIN" info "$SRC/README.md" > /dev/null 2> other.err; rc=$?
check "info on another file: exit 2 and one line" bash -c "[ $rc -eq 2 ] && [ \$(wc -l < other.err) -eq 1 ] && grep -q '^dstrain: error: info: ' other.err"
printf '\x89HDF\r\n\x1a\ngarbage' > fake.h5
"$DSTRAIN" info fake.h5 > /dev/null 2> fake.err; rc=$?
check "info on a broken .h5: exit 2" test $rc -eq 2

# ---- plot ----
if command -v gnuplot >/dev/null; then
  "$DSTRAIN" plot run -o plot.png > plot.out 2>&1; rc=$?
  check "plot exits 0" test $rc -eq 0
  check "plot says what it drew" grep -q 'plot of 3 steps (3 evaluations) written to plot.png' plot.out
  check "plot writes a 1200x900 PNG" python3 -c "
import struct; b=open('plot.png','rb').read(32)
assert b[:8]==b'\x89PNG\r\n\x1a\n' and struct.unpack('>II', b[16:24])==(1200,900), b"
  "$DSTRAIN" plot run > /dev/null 2>&1
  check "plot default output in the run dir" test -s run/plot.png
else
  echo "SKIP: gnuplot is not installed (tools/install-deps.sh installs it)"
fi
"$DSTRAIN" plot nowhere > /dev/null 2> noplot.err; rc=$?
check "plot of a missing run: exit 2" bash -c "[ $rc -eq 2 ] && grep -q 'nowhere/metrics.jsonl: cannot open' noplot.err"

# ---- plot: a nightly state directory's history matrix (slurm/nightly.sh writes it) ----
mkdir -p nightly/nights
printf 'version\tn0001-1\tgeneral\tit'\''s "n2"\n1\t2.5\t3.0\t2.75\n2\t2.25\t3.125\t-\n3\t2.375\t3.0\t2.0\n' > nightly/history-matrix.tsv
if command -v gnuplot >/dev/null; then
  "$DSTRAIN" plot nightly > hplot.out 2> hplot.err; rc=$?
  check "plot of a state directory: exit 0, nothing on stderr" bash -c "[ $rc -eq 0 ] && [ ! -s hplot.err ]"
  check "plot says what it drew (8 of the 9 cells)" grep -q '^dstrain: plot of the history of 3 published versions on 3 held-out sets (8 losses) written to nightly/history.png$' hplot.out
  check "plot writes a 1200x1000 PNG" python3 -c "
import struct; b=open('nightly/history.png','rb').read(32)
assert b[:8]==b'\x89PNG\r\n\x1a\n' and struct.unpack('>II', b[16:24])==(1200,1000), b"
fi
one_error() { # rc file regex [file that must not exist]
  [ "$1" -eq 2 ] && [ "$(wc -l < "$2")" -eq 1 ] && grep -q -- "$3" "$2" && [ ! -e "${4:-/nonexistent}" ]
}
mkdir -p unpublished/nights
"$DSTRAIN" plot unpublished > /dev/null 2> plot-none.err; rc=$?
check "plot of a state directory with nothing published: exit 2, one line" one_error $rc plot-none.err '^dstrain: error: plot: unpublished/history-matrix.tsv: missing: no night of this state directory has published a version yet$'
garbled() { # name content expected-message: plot exits 2 with that one line and writes no PNG
  mkdir -p "g-$1/nights"; printf "$2" > "g-$1/history-matrix.tsv"
  "$DSTRAIN" plot "g-$1" > /dev/null 2> "g-$1.err"; local rc=$?
  check "garbled history matrix ($1): exit 2, one line, no PNG" one_error $rc "g-$1.err" "^dstrain: error: plot: g-$1/history-matrix.tsv$3" "g-$1/history.png"
}
garbled empty '' ': empty: no header and no version$'
garbled header 'loss\tn0001-1\n1\t2.5\n' ':1: expected the header "version<TAB>set..." of nightly.sh.s history matrix, got "loss"$'
garbled fields 'version\tn0001-1\tgeneral\n1\t2.5\n' ':2: 2 tab-separated fields, expected 3 (version and the header.s 2 sets)$'
garbled number 'version\tn0001-1\n1\t2.5x\n' ':2: set n0001-1: expected a loss or -, got "2.5x"$'
garbled version 'version\tn0001-1\nv1\t2.5\n' ':2: version: expected a positive integer, got "v1"$'
garbled noversion 'version\tn0001-1\n' ': no version in it yet (no night has been published)$'
garbled binary 'version\tn0001-1\n1\t\001\002\n' ':2: field 2: a control character in'


# ---- generate: greedy next token == argmax of the PyTorch reference logits ----
for m in llama_gqa_f32_oldform qwen2_gqa_bias_f32_newform llama_tied_linear_bf16_newform_sharded; do
  check "generate $m: greedy matches PyTorch for every prefix" python3 -c "
import subprocess, numpy as np
from safetensors.numpy import load_file
d = load_file('$P/$m.reference.safetensors')
for row in range(d['input_ids'].shape[0]):
    ids, lg = d['input_ids'][row], d['logits'][row]
    for L in range(1, len(ids) + 1):
        out = subprocess.run(['$DSTRAIN', 'generate', '--model', '$P/$m', '--prompt-ids',
                              ' '.join(map(str, ids[:L])), '--max-new-tokens', '1', '--print-ids'],
                             capture_output=True, text=True, check=True).stdout
        got = int(out.split('generated ids:')[1].split()[0])
        assert got == int(np.argmax(lg[L - 1])), (row, L, got, int(np.argmax(lg[L - 1])))"
done

# ---- generate with a tokenizer.json (trained here with the tokenizers library) ----
mkdir -p tokmodel && cp "$P"/llama_gqa_f32_oldform/* tokmodel/
python3 - <<'PY'
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
text = ["in the beginning god created the heaven and the earth"] * 20
tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:0]))
tok.save("tokmodel/tokenizer.json")
assert tok.get_vocab_size() <= 96, tok.get_vocab_size()
PY
"$DSTRAIN" generate --model tokmodel --prompt "the earth" --max-new-tokens 12 --print-ids > gen.txt 2> gen.err; rc=$?
check "generate with tokenizer.json exits 0" test $rc -eq 0 || cat gen.err
check "prompt encoded as the tokenizers library does" python3 -c "
from tokenizers import Tokenizer
t = Tokenizer.from_file('tokmodel/tokenizer.json')
got = open('gen.txt').read().split('prompt ids:')[1].split('\n')[0].split()
assert [int(x) for x in got] == t.encode('the earth').ids, (got, t.encode('the earth').ids)"
check "generated ids decoded as the tokenizers library does" python3 -c "
from tokenizers import Tokenizer
t = Tokenizer.from_file('tokmodel/tokenizer.json')
lines = open('gen.txt').read().split('\n')
ids = [int(x) for x in lines[1].split(':')[1].split()]
assert len(ids) >= 1
assert lines[2] == 'the earth' + t.decode(ids, skip_special_tokens=True), (lines, t.decode(ids))"
pids=$(sed -n 's/^prompt ids: //p' gen.txt)
"$DSTRAIN" generate --model tokmodel --prompt-ids "$pids" --max-new-tokens 12 --print-ids > gen2.txt 2>&1
check "the same ids without the tokenizer give the same tokens" test "$(sed -n 2p gen.txt)" = "$(sed -n 2p gen2.txt)"

# ---- sampling: seeded, and top-p -> 0 is greedy ----
g() { "$DSTRAIN" generate --model "$P/llama_gqa_f32_oldform" --prompt-ids "5 6 7" --max-new-tokens 20 --print-ids "$@" | sed -n 2p; }
greedy=$(g); s1=$(g --temperature 1 --top-p 0.9 --seed 1); s1b=$(g --temperature 1 --top-p 0.9 --seed 1)
s2=$(g --temperature 1 --top-p 0.9 --seed 2); tiny=$(g --temperature 1 --top-p 1e-9 --seed 3)
check "sampling is reproducible for a seed" test "$s1" = "$s1b"
check "another seed samples differently" test "$s1" != "$s2"
check "top-p near 0 is greedy" test "$tiny" = "$greedy"
check "20 tokens generated" test "$(echo "$greedy" | wc -w)" -eq 22
# byte-level (the tiny preset has no tokenizer.json): from a checkpoint and from its fp32 export
"$DSTRAIN" train train.steps=2 train.micro_batch_size=2 train.seq_len=16 export.dtype=fp32 \
  run.dir=exp > exp.out 2>&1
gck() { "$DSTRAIN" generate --model "$1" --prompt "In the" --max-new-tokens 8 --print-ids; }
gck exp/checkpoints/step-00000002 > genck.txt 2> genck.err; rc=$?
check "generate from a checkpoint exits 0" test $rc -eq 0 || cat genck.err
gck exp/export > genexp.txt 2>&1
check "byte-level prompt: BOS then the bytes" test "$(sed -n 1p genck.txt)" = "prompt ids: 256 73 110 32 116 104 101"
check "checkpoint and its export generate the same" test "$(sed -n 2p genck.txt)" = "$(sed -n 2p genexp.txt)"
check "checkpoint output: prompt + decoded bytes" python3 -c "
l=open('genck.txt').read().split('\\n'); ids=[int(x) for x in l[1].split(':')[1].split()]
assert l[2].encode('latin-1') == b'In the' + bytes(i for i in ids if i < 256), l"
"$DSTRAIN" generate --model "$P/llama_gqa_f32_oldform" --prompt "zz~" > /dev/null 2> genbyte.err; rc=$?
check "byte outside a small vocabulary: exit 2" bash -c "[ $rc -eq 2 ] && grep -q 'outside the model' genbyte.err"
"$DSTRAIN" generate --model "$P/llama_gqa_f32_oldform" --prompt-ids "1 999" > /dev/null 2> genid.err; rc=$?
check "token id outside the vocabulary: exit 2" bash -c "[ $rc -eq 2 ] && grep -q 'expected token ids in 0..95' genid.err"
"$DSTRAIN" generate --model "$P/llama_gqa_f32_oldform" --prompt x --top-p 0 > /dev/null 2>&1
check "bad --top-p: exit 2" test $? -eq 2

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
