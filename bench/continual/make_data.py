#!/usr/bin/env python3
"""Permuted digits for the continual-learning benchmark: scikit-learn's load_digits (1797 8x8
images, intensities 0..16), one fixed pixel permutation per task. Each image is 64 tokens and a
closing CLS token; token = position x 17 + intensity, so every input position has its own
embedding rows (as every input pixel has its own first-layer weights in the permuted-MNIST
experiments of the EWC paper: something importance weights can protect). Splits, stratified and
the same images for every task: test (20%), and out of the remaining training images a
validation split (--val, 20%) that no run trains on, for tuning. Writes per task train/val/test
HDF5 files in dstrain's token layout (docs/data.md), the tasks files (tasks-val.yaml evaluates on
the validation split, tasks-test.yaml on the test split), joint-train.h5 (every task's training
images, for the joint-training upper bound) and the config.json of the small Llama-shaped
classifier trained from scratch."""
import argparse
import json
import os

import h5py
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LEVELS = 17  # intensities 0..16
PIXELS = 64
CLS = PIXELS * LEVELS  # 1088, appended to every image: the head reads this token's state
VOCAB = CLS + 1


def encode(images, perm):
    """Permuted images as tokens: position p holds pixel perm[p], as token p * 17 + intensity."""
    return images[:, perm] + LEVELS * np.arange(PIXELS, dtype=np.int64)[None, :]


def write_h5(path, rows, labels):
    rows = np.concatenate([rows, np.full((len(rows), 1), CLS, dtype=rows.dtype)], axis=1)
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=rows.reshape(-1).astype(np.int32))
        f.create_dataset("doc_offsets", data=np.arange(len(rows) + 1, dtype=np.int64) * rows.shape[1])
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.attrs["format"] = "dstrain-tokens"
        f.attrs["format_version"] = 1
        f.attrs["vocab_size"] = VOCAB
        f.attrs["tokenizer"] = "digits-position-intensity"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="splits and permutations")
    ap.add_argument("--val", type=float, default=0.2, help="share of the training images held out")
    ap.add_argument("--heads", type=int, default=8)
    # 64 positions: a short rotary wavelength lets attention tell neighbouring pixels apart
    ap.add_argument("--theta", type=float, default=100.0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.int64)  # 0..16
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=a.seed, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=a.val, random_state=a.seed,
                                          stratify=ytr)
    rng = np.random.default_rng(a.seed)
    lines = {"val": ["tasks:"], "test": ["tasks:"]}
    joint_rows, joint_labels = [], []
    for k in range(a.tasks):
        perm = rng.permutation(PIXELS)
        for split, xs, ys in (("train", xtr, ytr), ("val", xva, yva), ("test", xte, yte)):
            write_h5(os.path.join(a.out, f"digits-{k}-{split}.h5"), encode(xs, perm), ys)
        joint_rows.append(encode(xtr, perm))
        joint_labels.append(ytr)
        for split in ("val", "test"):
            lines[split] += [f"  - id: perm{k}",
                             f"    train: {a.out}/digits-{k}-train.h5",
                             f"    eval: {a.out}/digits-{k}-{split}.h5",
                             f"    steps: {a.steps}"]
    for split in ("val", "test"):
        with open(os.path.join(a.out, f"tasks-{split}.yaml"), "w") as f:
            f.write("\n".join(lines[split]) + "\n")
    # joint training: every task's training images in one shuffled task, as many steps in all
    write_h5(os.path.join(a.out, "joint-train.h5"), np.concatenate(joint_rows),
             np.concatenate(joint_labels))
    with open(os.path.join(a.out, "tasks-joint.yaml"), "w") as f:
        f.write("tasks:\n  - id: joint\n"
                f"    train: {a.out}/joint-train.h5\n"
                f"    eval: {a.out}/digits-0-val.h5\n"
                f"    steps: {a.steps * a.tasks}\n")
    model = os.path.join(a.out, "model")
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": a.heads,
                   "num_key_value_heads": a.heads, "max_position_embeddings": PIXELS + 1,
                   "rms_norm_eps": 1e-5, "rope_theta": a.theta, "tie_word_embeddings": False,
                   "torch_dtype": "float32"}, f, indent=1)
    print(f"seed {a.seed}: train {len(xtr)} val {len(xva)} test {len(xte)} per task, "
          f"{a.tasks} tasks in {a.out}")


if __name__ == "__main__":
    main()
