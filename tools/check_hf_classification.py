#!/usr/bin/env python3
"""Check a dstrain classification export against Hugging Face transformers: load EXPORT_DIR with
AutoModelForSequenceClassification (every tensor must load: no missing, unexpected or mismatched
key), score documents of DATA.h5 (dstrain's token layout with a "labels" dataset) and compare
the logits with `dstrain eval --logits` on the same export and rows. Rows are made as dstrain
makes them: a document's first SEQ_LEN tokens, right-padded with pad_token_id; no attention mask
is passed, so transformers reads the last non-padding token's state as dstrain does (with right
padding the causal mask makes the padding invisible to it). Run where torch and transformers
are installed (the GPU nodes):

    python3 tools/check_hf_classification.py EXPORT_DIR DATA.h5 [--dstrain PATH | --logits FILE]
        [--seq-len N] [--limit N] [--tolerance 1e-4]

Prints max_abs_logit_diff=D examples=N, both accuracies and how often the argmax agrees; exits 1
when D > tolerance or a tensor did not load. dstrain is $DSTRAIN, else build/dstrain of this
checkout, else `dstrain` on the PATH.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def dstrain_binary(given):
    if given:
        return given
    if os.environ.get("DSTRAIN"):
        return os.environ["DSTRAIN"]
    local = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "dstrain")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("dstrain") or sys.exit("check_hf_classification: no dstrain (set DSTRAIN)")


def load_rows(h5_path, seq_len, pad, limit):
    import h5py
    import numpy as np

    with h5py.File(h5_path, "r") as f:
        tokens, offsets = f["tokens"][:], f["doc_offsets"][:]
        if "labels" not in f:
            sys.exit(f"check_hf_classification: {h5_path}: no \"labels\" dataset")
        labels = f["labels"][:]
    n = len(offsets) - 1
    rows = np.zeros((n, seq_len), dtype=np.int64)
    for d in range(n):
        doc = tokens[offsets[d] : offsets[d + 1]][:seq_len]
        if len(doc) < seq_len and pad is None:
            sys.exit(f"check_hf_classification: document {d} has {len(doc)} tokens, fewer than "
                     f"--seq-len {seq_len}, and the export has no pad_token_id")
        rows[d, : len(doc)] = doc
        rows[d, len(doc) :] = pad if pad is not None else 0
    return rows[:limit], labels[:limit].astype(np.int64), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("data")
    ap.add_argument("--dstrain", help="dstrain binary (default $DSTRAIN, build/dstrain, PATH)")
    ap.add_argument("--logits", help="a `dstrain eval --logits` file instead of running dstrain")
    ap.add_argument("--seq-len", type=int, default=0,
                    help="default: the longest document, at most max_position_embeddings")
    ap.add_argument("--limit", type=int, default=512, help="documents compared (the first N)")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()

    import numpy as np
    import h5py

    cfg = json.load(open(os.path.join(a.export_dir, "config.json")))
    pad = cfg.get("pad_token_id")
    seq_len = a.seq_len
    if seq_len == 0:  # dstrain eval's default, made explicit so that both sides agree
        with h5py.File(a.data, "r") as f:
            offsets = f["doc_offsets"][:]
        seq_len = int(min(np.diff(offsets).max(), cfg.get("max_position_embeddings", 1 << 30)))

    rows, labels, n_docs = load_rows(a.data, seq_len, pad, a.limit)

    # dstrain's logits: label then num_labels logits per line, every document of the file
    if a.logits:
        ref = np.loadtxt(a.logits, ndmin=2)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "logits.txt")
            cmd = [dstrain_binary(a.dstrain), "eval", "--model", a.export_dir, "--data", a.data,
                   "--seq-len", str(seq_len), "--logits", path]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"check_hf_classification: {' '.join(cmd)} failed:\n{run.stderr}")
            print(run.stdout.strip())
            ref = np.loadtxt(path, ndmin=2)
    if ref.shape[0] != n_docs:
        sys.exit(f"check_hf_classification: dstrain gave {ref.shape[0]} rows for {n_docs} documents")
    ref_labels, ref = ref[: len(rows), 0].astype(np.int64), ref[: len(rows), 1:]
    if not (ref_labels == labels).all():
        sys.exit("check_hf_classification: dstrain's labels are not the file's (another file?)")

    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:  # transformers 5 calls it dtype, older versions torch_dtype
        model, info = AutoModelForSequenceClassification.from_pretrained(
            a.export_dir, dtype=torch.float32, **kw)
    except TypeError:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            a.export_dir, torch_dtype=torch.float32, **kw)
    model = model.to(device).eval()
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"} or (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    print(f"transformers {transformers.__version__} on {device}: {type(model).__name__}, "
          f"{model.config.num_labels} labels, id2label {dict(list(model.config.id2label.items())[:4])}"
          f"{' ...' if model.config.num_labels > 4 else ''}")
    if problems:
        print(f"loading problems: {problems}")

    # without a pad token transformers takes one row at a time
    batch = 32 if pad is not None else 1
    got = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ids = torch.tensor(rows[i : i + batch], device=device)
            got.append(model(input_ids=ids).logits.double().cpu().numpy())
    got = np.concatenate(got)
    diff = float(np.abs(got - ref).max())
    acc_ref = float((ref.argmax(1) == labels).mean())
    acc_got = float((got.argmax(1) == labels).mean())
    agree = int((ref.argmax(1) == got.argmax(1)).sum())
    print(f"max_abs_logit_diff={diff:.3g} examples={len(rows)} seq_len={seq_len} "
          f"dstrain_accuracy={acc_ref:.4f} transformers_accuracy={acc_got:.4f} "
          f"argmax_agree={agree}/{len(rows)} (tolerance {a.tolerance:g})")
    sys.exit(0 if diff <= a.tolerance and not problems else 1)


if __name__ == "__main__":
    main()
