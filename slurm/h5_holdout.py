#!/usr/bin/env python3
"""h5_holdout.py: splits a dstrain token file (docs/data.md) into a training file and a held-out
file, every tenth document (the 10th, 20th, ...) held out, as slurm/nightly.sh does with the lines
of a JSONL file. Used by nightly.sh for a dropped NAME.h5 that comes without NAME.eval.h5; every
per-document and per-token dataset and every root attribute is carried over. Needs h5py and numpy.

usage: h5_holdout.py IN.h5 TRAIN.h5 EVAL.h5"""
import sys

import h5py
import numpy as np


def write(path, src, docs):
    off = src["doc_offsets"][:]
    lengths = off[docs + 1] - off[docs]
    new_off = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    token_index = np.concatenate([np.arange(off[d], off[d + 1]) for d in docs])
    with h5py.File(path, "w") as out:
        for name, value in src.attrs.items():
            out.attrs[name] = value
        out.create_dataset("tokens", data=src["tokens"][:][token_index], chunks=True)
        out.create_dataset("doc_offsets", data=new_off)
        if "loss_mask" in src:
            out.create_dataset("loss_mask", data=src["loss_mask"][:][token_index], chunks=True)
        for name in ("labels", "task_ids"):
            if name in src:
                out.create_dataset(name, data=src[name][:][docs])


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: h5_holdout.py IN.h5 TRAIN.h5 EVAL.h5")
    with h5py.File(sys.argv[1], "r") as src:
        if src.attrs.get("format") not in ("dstrain-tokens", b"dstrain-tokens"):
            sys.exit(f"dstrain: error: {sys.argv[1]}: not a dstrain token file (attribute format)")
        n = len(src["doc_offsets"]) - 1
        if n < 10:
            sys.exit(f"dstrain: error: {sys.argv[1]}: {n} documents, fewer than 10: nothing to hold out")
        held = np.arange(n) % 10 == 9
        write(sys.argv[2], src, np.flatnonzero(~held))
        write(sys.argv[3], src, np.flatnonzero(held))


if __name__ == "__main__":
    main()
