#!/usr/bin/env python3
"""How close PyTorch's own mixed precision comes to the fp32 gradients of the parity fixtures.

For each fixture of tests/fixtures/parity/, the model is loaded in fp32 by transformers and its
loss (the fixture's: HF causal-LM loss on the stored input_ids) differentiated under bf16 autocast
with SDPA attention, as a Trainer run with bf16 does; each parameter's gradient is compared with
the fixture's fp32 gradient (grad.<name>, computed in fp32 with eager attention) by cosine
similarity. This is the yardstick for test_gpu_ops' bf16 rows: the same comparison, with dstrain's
bf16 mode in place of autocast. Prints one row per fixture: the loss's and the logits' relative
error, the lowest cosine over the tensors other than the k_proj biases, and the lowest over the
k_proj biases (whose gradient is a sum over tokens that nearly cancels).
Run where torch (with a GPU) and transformers are installed:
    python3 tools/check_amp_grads.py [FIXTURE_DIR ...]
"""
import glob
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity")


def hf_loss(logits, ids):
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    den = a.norm() * b.norm()
    return float((a @ b) / den) if den > 0 else 1.0


def check(fixture_dir):
    name = os.path.basename(os.path.normpath(fixture_dir))
    ref = load_file(fixture_dir.rstrip("/") + ".reference.safetensors")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fixture_dir, dtype=torch.float32, attn_implementation="sdpa").cuda()
    model.train()
    ids = ref["input_ids"].long().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    loss = hf_loss(logits.float(), ids)
    loss.backward()
    worst, worst_name, kbias = 1.0, "", None
    for pname, p in model.named_parameters():
        key = "grad." + pname
        if key not in ref or p.grad is None:
            continue
        c = cosine(p.grad.cpu(), ref[key])
        if "k_proj.bias" in pname:
            kbias = c if kbias is None else min(kbias, c)
        elif c < worst:
            worst, worst_name = c, pname
    loss_rel = abs(loss.item() - ref["loss"].item()) / abs(ref["loss"].item())
    lg, lr = logits.detach().float().cpu(), ref["logits"]
    logits_rel = float((lg - lr).norm() / lr.norm())
    kb = "-" if kbias is None else f"{kbias:.4f}"
    print(f"| {name} | {loss_rel:.2e} | {logits_rel:.2e} | {worst:.4f} ({worst_name}) | {kb} |")


def main():
    dirs = sys.argv[1:] or sorted(d for d in glob.glob(os.path.join(ROOT, "*")) if os.path.isdir(d))
    print("| fixture | loss rel err | logits rel err | min cosine, other tensors | "
          "min cosine, k_proj.bias |")
    print("|---|---|---|---|---|")
    for d in dirs:
        check(d)


if __name__ == "__main__":
    main()
