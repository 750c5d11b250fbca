#!/usr/bin/env python3
"""Eval loss of a dstrain export with Hugging Face transformers, scored exactly as `dstrain eval`
scores it: each document on its own from its first token, in consecutive windows of SEQ_LEN
inputs (each window starting where the previous one's targets ended), every predicted token
counted once. Run where torch and transformers are installed (the GPU nodes):

    python3 tests/checkpoint/transformers_eval.py EXPORT_DIR DOCS.json SEQ_LEN [DSTRAIN_LOSS]

DOCS.json is a list of token-id lists (tests/checkpoint/transformers_eval.py --dump FILE.h5
writes it with h5py). With DSTRAIN_LOSS, exits 1 unless |difference| <= 2e-5 (fp32 exports).
"""
import json
import sys


def dump(h5_path):
    import h5py

    with h5py.File(h5_path, "r") as f:
        tokens, offsets = f["tokens"][:], f["doc_offsets"][:]
    docs = [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    json.dump(docs, sys.stdout)


def main():
    if sys.argv[1] == "--dump":
        return dump(sys.argv[2])
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, docs_path, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).to(device)
    model.eval()
    docs = json.load(open(docs_path))
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            for start in range(0, len(doc) - 1, seq_len):
                chunk = torch.tensor(doc[start : start + seq_len + 1], device=device)
                logits = model(input_ids=chunk[None, :-1]).logits[0].double()
                loss = torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum")
                total += loss.item()
                count += len(chunk) - 1
    mean = total / count
    print(f"transformers {__import__('transformers').__version__} on {device}: "
          f"eval_loss={mean:.7f} tokens={count}")
    if len(sys.argv) > 4:
        ref = float(sys.argv[4])
        print(f"dstrain eval_loss={ref:.7f} difference={abs(mean - ref):.3g} (limit 2e-5)")
        sys.exit(0 if abs(mean - ref) <= 2e-5 else 1)


if __name__ == "__main__":
    main()
