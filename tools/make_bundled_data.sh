#!/usr/bin/env bash
# make_bundled_data.sh: builds data/bundled/kjv-train.h5 and kjv-eval.h5, the small byte-level
# dataset shipped with dstrain, from the King James Bible text of Debian's bible-kjv-text package
# (public domain). One document per chapter of Genesis, Exodus, Leviticus and Numbers; every
# 20th chapter is held out for eval. Byte tokens: ids 0..255 are UTF-8 bytes, 256 = BOS (starts
# every document), 257 = EOS (the reader inserts it between documents), vocab_size 320.
#
# usage: tools/make_bundled_data.sh [DSTRAIN_BINARY]   (default: $DSTRAIN, else build/dstrain)
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
dstrain=${1:-${DSTRAIN:-$src/build/dstrain}}
out=$src/data/bundled
if [[ ! -x $dstrain ]]; then
    echo "make_bundled_data.sh: no dstrain binary at $dstrain (build it, or pass its path)" >&2
    exit 2
fi
if ! command -v bible >/dev/null 2>&1; then
    echo "make_bundled_data.sh: installing bible-kjv (Debian package)" >&2
    apt-get install -y bible-kjv >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# `bible -l WIDTH BOOK1:1-BOOK999:999` prints a whole book: a "Genesis 1" heading per chapter,
# then one verse per line as "  1 In the beginning ..." (a wide line width stops wrapping).
for book in Ge Ex Le Nu; do
    bible -l100000 "${book}1:1-${book}999:999" </dev/null >"$work/$book.txt"
done

python3 - "$work" <<'EOF'
import json, re, sys
work = sys.argv[1]
chapters = []
for book in ["Ge", "Ex", "Le", "Nu"]:
    text = open(f"{work}/{book}.txt", encoding="utf-8").read()
    current = None
    for line in text.splitlines():
        line = line.strip()
        if re.fullmatch(r"[A-Z][a-z]+ \d+", line):
            current = [line, ""]
            chapters.append(current)
        elif line:
            current.append(line)
BOS = 256
with open(f"{work}/train.jsonl", "w") as train, open(f"{work}/eval.jsonl", "w") as heldout:
    for i, lines in enumerate(chapters):
        doc = "\n".join(lines) + "\n"
        ids = [BOS] + list(doc.encode("utf-8"))
        (heldout if i % 20 == 19 else train).write(json.dumps({"input_ids": ids}) + "\n")
print(f"{len(chapters)} chapters", file=sys.stderr)
EOF

mkdir -p "$out"
for split in train eval; do
    "$dstrain" pack --input "$work/$split.jsonl" --output "$out/kjv-$split.h5" --vocab-size 320 \
        --bos-id 256 --eos-id 257 --tokenizer byte --compress
done
ls -l "$out"/kjv-*.h5
