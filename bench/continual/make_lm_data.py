#!/usr/bin/env python3
"""Two text domains for the language-model continual case, both shipped by packages: English
prose (the King James Bible bundled with dstrain, data/bundled) and Python source code (the
standard library that ships with the Python interpreter). Byte-level tokens as the bundled
files use (0..255 bytes, 256 BOS, 257 EOS, vocab 320). Writes code-train.h5, code-eval.h5 and a
tasks file: prose first, then code."""
import argparse
import os
import sysconfig

import h5py
import numpy as np


def write(path, docs):
    toks = [np.frombuffer(d, dtype=np.uint8).astype(np.int32) for d in docs]
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.concatenate(toks))
        f.create_dataset("doc_offsets", data=np.concatenate([[0], np.cumsum([len(t) for t in toks])]).astype(np.int64))
        f.attrs["format"] = "dstrain-tokens"
        f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = 320
        f.attrs["bos_id"] = 256
        f.attrs["eos_id"] = 257
        f.attrs["pad_id"] = -1
        f.attrs["tokenizer"] = "byte"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--src", required=True, help="dstrain source tree (for data/bundled)")
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    lib = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(lib) if n.endswith(".py"))
    docs = []
    for n in names:  # sorted: the same files on every machine with the same Python
        with open(os.path.join(lib, n), "rb") as f:
            data = f.read()
        if 2000 <= len(data) <= 60000 and max(data) < 128:
            docs.append(data)
    train, evald, size = [], [], 0
    for i, d in enumerate(docs):
        if i % 10 == 0 and sum(map(len, evald)) < 65000:
            evald.append(d)
        elif size < 650000:
            train.append(d)
            size += len(d)
    write(os.path.join(a.out, "code-train.h5"), train)
    write(os.path.join(a.out, "code-eval.h5"), evald)
    b = os.path.join(a.src, "data/bundled")
    with open(os.path.join(a.out, "tasks.yaml"), "w") as f:
        f.write("tasks:\n"
                f"  - {{id: prose, train: {b}/kjv-train.h5, eval: {b}/kjv-eval.h5, steps: {a.steps}}}\n"
                f"  - {{id: code, train: {a.out}/code-train.h5, eval: {a.out}/code-eval.h5, steps: {a.steps}}}\n")
    print(f"code: {len(train)} train files ({size} bytes), {len(evald)} eval files, from {lib}")


if __name__ == "__main__":
    main()
