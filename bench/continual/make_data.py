#!/usr/bin/env python3
"""Permuted digits for the continual-learning benchmark: scikit-learn's load_digits (1797 8x8
images, intensities 0..16), each image a 64-token sequence (token = intensity) and a closing CLS token, one fixed pixel
permutation per task, a stratified held-out test split shared by all tasks. Writes per task
train/test HDF5 files in dstrain's token layout (docs/data.md), a tasks file, and the
config.json of the small Llama-shaped classifier trained from scratch."""
import argparse
import json
import os

import h5py
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


CLS = 17  # appended to every image: the classification head reads this token's state


def write_h5(path, rows, labels, vocab):
    rows = np.concatenate([rows, np.full((len(rows), 1), CLS, dtype=rows.dtype)], axis=1)
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=rows.reshape(-1).astype(np.int32))
        f.create_dataset("doc_offsets", data=np.arange(len(rows) + 1, dtype=np.int64) * rows.shape[1])
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.attrs["format"] = "dstrain-tokens"
        f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = vocab
        f.attrs["tokenizer"] = "digits-intensity"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", type=int, default=8)
    # 64 positions: a short rotary wavelength lets attention tell neighbouring pixels apart
    ap.add_argument("--theta", type=float, default=100.0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.int32)  # 0..16
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=a.seed, stratify=y)
    rng = np.random.default_rng(a.seed)
    lines = ["tasks:"]
    for k in range(a.tasks):
        perm = rng.permutation(64)
        for split, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
            write_h5(os.path.join(a.out, f"digits-{k}-{split}.h5"), xs[:, perm], ys, CLS + 1)
        lines += [f"  - id: perm{k}",
                  f"    train: {a.out}/digits-{k}-train.h5",
                  f"    eval: {a.out}/digits-{k}-test.h5",
                  f"    steps: {a.steps}"]
    with open(os.path.join(a.out, "tasks.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    model = os.path.join(a.out, "model")
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "vocab_size": 32, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": a.heads, "num_key_value_heads": a.heads,
                   "max_position_embeddings": 65, "rms_norm_eps": 1e-5, "rope_theta": a.theta,
                   "tie_word_embeddings": False, "torch_dtype": "float32"}, f, indent=1)
    print(f"train {len(xtr)} test {len(xte)} per task, {a.tasks} tasks in {a.out}")


if __name__ == "__main__":
    main()
