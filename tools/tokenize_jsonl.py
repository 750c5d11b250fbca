#!/usr/bin/env python3
"""tokenize_jsonl.py: raw text and chat/instruction JSONL to the token-id JSONL `dstrain pack`
reads, with the model's own tokenizer.json (Hugging Face `tokenizers`). Not a packer: the output
is one JSON line per document, {"input_ids": [...], "loss_mask": [...]} (plus "label" and
"task" passed through); `dstrain pack` turns it into HDF5 (docs/data.md).

Inputs ending in .jsonl or .json are JSONL; any other file (notes.txt, docs/*.md) is plain
text, the whole file one document, all tokens trained on. JSONL lines, detected one by one:
  {"text": "..."}                                   all tokens trained on (no loss_mask written)
  {"prompt": "...", "response": "..."}              prompt tokens loss_mask 0, response 1
  {"messages": [{"role": "user", "content": ...}]}  only assistant turns loss_mask 1
Chat turns are rendered as ROLE_FORMAT + content + SEPARATOR (defaults "<|{role}|>\\n" and
"\\n"); match them to the model's chat format with --role-format/--separator. --bos/--eos name
special tokens added around every document (the EOS after a response is trained on, so the
model learns to stop). Errors name FILE:LINE and exit with status 2.

  tools/tokenize_jsonl.py --tokenizer MODEL/tokenizer.json --input raw.jsonl notes.txt \\
      --output ids.jsonl
  dstrain pack --input ids.jsonl --output data.h5 --tokenizer MODEL

`dstrain pack --tokenizer` takes the vocabulary size and the EOS id (the separator it puts
between documents when training a causal LM) from the same tokenizer; the summary line here
counts the vocabulary as pack does (largest id + 1). --eos is for rows trained one by one (SFT,
chat, classification), where each example must end in EOS; for plain text packed as a stream,
leave it out: pack's separator does that job.
"""
import argparse
import json
import os
import sys

try:
    from tokenizers import Tokenizer
except ImportError:  # pragma: no cover - told to the user, not a crash
    sys.exit("tokenize_jsonl.py: needs the Hugging Face tokenizers library: "
             "python3 -m pip install tokenizers")


class InputError(Exception):
    pass


def special_id(tok, name, flag):
    if name is None:
        return None
    i = tok.token_to_id(name)
    if i is None:
        raise InputError(f"{flag} {name!r}: not a token of the tokenizer")
    return i


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def document(tok, obj, args, bos, eos):
    """Token ids and loss mask (None = all trained on) of one input object."""
    ids, mask = [], []
    if bos is not None:
        ids.append(bos)
        mask.append(0)
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise InputError("text: expected a string")
        body = encode(tok, obj["text"])
        ids += body
        mask += [1] * len(body)
        all_trained = True
    elif "prompt" in obj or "response" in obj:
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str):
                raise InputError(f"{key}: expected a string (prompt and response go together)")
        p, r = encode(tok, obj["prompt"]), encode(tok, obj["response"])
        ids += p + r
        mask += [0] * len(p) + [1] * len(r)
        all_trained = False
    elif "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError("messages: expected a non-empty list of {role, content}")
        for k, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                    not isinstance(m.get("content"), str):
                raise InputError(f"messages[{k}]: expected {{\"role\": str, \"content\": str}}")
            head = encode(tok, args.role_format.format(role=m["role"]))
            body = encode(tok, m["content"] + args.separator)
            trained = 1 if m["role"] == "assistant" else 0
            ids += head + body
            mask += [0] * len(head) + [trained] * len(body)
        all_trained = False
    else:
        raise InputError("expected \"text\", \"prompt\"/\"response\" or \"messages\"")
    if eos is not None:
        ids.append(eos)
        mask.append(1)
    if not ids:
        raise InputError("no tokens (empty text)")
    if not any(mask):
        raise InputError("every token has loss_mask 0 (no response or assistant turn)")
    out = {"input_ids": ids}
    if not all_trained or bos is not None:
        out["loss_mask"] = mask
    for key in ("label", "task"):
        if key in obj:
            if not isinstance(obj[key], int) or isinstance(obj[key], bool):
                raise InputError(f"{key}: expected an integer")
            out[key] = obj[key]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="the model's tokenizer.json")
    ap.add_argument("--input", required=True, action="extend", nargs="+",
                    help="JSONL files, or plain text files (one document each); repeatable")
    ap.add_argument("--output", required=True, help="token-id JSONL for dstrain pack")
    ap.add_argument("--bos", help="special token put before every document")
    ap.add_argument("--eos", help="special token put after every document (trained on)")
    ap.add_argument("--role-format", default="<|{role}|>\n", help="chat turn header")
    ap.add_argument("--separator", default="\n", help="after every chat turn's content")
    args = ap.parse_args(argv)
    try:
        tok = Tokenizer.from_file(args.tokenizer)
    except Exception as e:  # the library raises plain Exceptions for bad files
        print(f"tokenize_jsonl.py: error: {args.tokenizer}: cannot load: {e}", file=sys.stderr)
        return 2
    try:
        bos = special_id(tok, args.bos, "--bos")
        eos = special_id(tok, args.eos, "--eos")
    except InputError as e:
        print(f"tokenize_jsonl.py: error: {e}", file=sys.stderr)
        return 2
    docs = tokens = 0
    shortest, longest = None, 0
    tmp = args.output + ".tmp"
    try:
        with open(tmp, "w") as out:
            for path in args.input:
                with open(path, encoding="utf-8") as f:
                    lines = enumerate(f, 1)
                    if not path.endswith((".jsonl", ".json")):  # plain text: one document
                        lines = [(1, json.dumps({"text": f.read()}))]
                    for line_no, line in lines:
                        if not line.strip():
                            continue
                        where = f"{path}:{line_no}"
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise InputError(f"{where}: invalid JSON: {e.msg}")
                        if not isinstance(obj, dict):
                            raise InputError(f"{where}: expected a JSON object")
                        try:
                            d = document(tok, obj, args, bos, eos)
                        except InputError as e:
                            raise InputError(f"{where}: {e}")
                        out.write(json.dumps(d, separators=(",", ":")) + "\n")
                        docs += 1
                        tokens += len(d["input_ids"])
                        n = len(d["input_ids"])
                        shortest = n if shortest is None else min(shortest, n)
                        longest = max(longest, n)
        if docs == 0:
            raise InputError(f"{', '.join(args.input)}: no documents")
    except (InputError, OSError, UnicodeDecodeError) as e:
        print(f"tokenize_jsonl.py: error: {e}", file=sys.stderr)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return 2
    os.replace(tmp, args.output)
    vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    print(f"tokenize_jsonl.py: wrote {args.output}: {docs} documents, {tokens} tokens, "
          f"length min {shortest} mean {tokens / docs:.1f} max {longest}; "
          f"vocab_size {vocab_size}" + (f", eos_id {eos}" if eos is not None else ""))
    print(f"next: dstrain pack --input {args.output} --output DATA.h5 --tokenizer "
          f"{args.tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
