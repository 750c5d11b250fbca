#!/usr/bin/env python3
"""Encode and decode with a Hugging Face tokenizer.json for `dstrain generate` (the C trainer
has no BPE implementation of its own; this uses the `tokenizers` library).
  tokenizer_helper.py encode TOKENIZER_JSON   text on stdin  -> ids (one line, spaces) on stdout
  tokenizer_helper.py decode TOKENIZER_JSON   ids on stdin   -> text on stdout
encode adds the tokenizer's special tokens (its post-processor, e.g. BOS) as transformers does;
decode skips special tokens. Exit 2 with one line on stderr on bad input."""
import sys


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("encode", "decode"):
        print("usage: tokenizer_helper.py encode|decode TOKENIZER_JSON", file=sys.stderr)
        return 2
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("the python package 'tokenizers' is not installed (tools/install-deps.sh)",
              file=sys.stderr)
        return 2
    try:
        tok = Tokenizer.from_file(sys.argv[2])
    except Exception as e:  # the library raises plain Exceptions for bad files
        print("%s: %s" % (sys.argv[2], e), file=sys.stderr)
        return 2
    data = sys.stdin.buffer.read()
    if sys.argv[1] == "encode":
        ids = tok.encode(data.decode("utf-8", errors="replace")).ids
        sys.stdout.write(" ".join(str(i) for i in ids) + "\n")
    else:
        try:
            ids = [int(x) for x in data.split()]
        except ValueError:
            print("decode: expected token ids", file=sys.stderr)
            return 2
        sys.stdout.buffer.write(tok.decode(ids, skip_special_tokens=True).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
