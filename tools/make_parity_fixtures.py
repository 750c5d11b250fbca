#!/usr/bin/env python3
"""Make the PyTorch/transformers parity fixtures in tests/fixtures/parity/.

Each case is a tiny random model of one supported architecture saved as a Hugging Face
directory (config.json in the old or the transformers-5 form, F32 or BF16 safetensors, one
file or shards with an index) plus reference.safetensors holding, computed by transformers in
fp32 with eager attention:
  input_ids [B, T] (I32), logits [B, T, V], loss [1] (HF causal-LM loss on input_ids),
  grad.<name> (gradient of that loss), adamw.<name> (parameters after 5 AdamW steps on the
  same batch with clip_grad_norm_ 1.0), adamw_losses [5], and for `dstrain eval`:
  eval_loss [1], eval_tokens [1], eval_seq_len [1] over the documents in eval.jsonl.
Run where torch and transformers are installed:  python3 tools/make_parity_fixtures.py OUTDIR
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

B, T = 2, 16
EVAL_SEQ_LEN = 8
# eps 1e-6: gradients that are zero in exact arithmetic (k_proj.bias: softmax ignores a shift
# shared by all keys) come out as rounding noise, which eps 1e-8 would blow up to full-size
# Adam steps of random sign; 1e-6 keeps those steps negligible and changes nothing else here.
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
CLIP = 1.0

CASES = [
    # name, arch, dims, rope, flags
    dict(name="llama_gqa_f32_oldform", arch="llama", vocab=96, hidden=64, inter=96, layers=2,
         heads=4, kv=2, rope=dict(rope_type="default", rope_theta=10000.0), dtype="float32",
         form="old", tied=False),
    dict(name="llama_tied_linear_bf16_newform_sharded", arch="llama", vocab=80, hidden=48,
         inter=64, layers=2, heads=4, kv=4, rope=dict(rope_type="linear", rope_theta=500.0,
         factor=2.0), dtype="bfloat16", form="new", tied=True, shard="20KB"),
    dict(name="llama_llama3rope_bias_f32_newform", arch="llama", vocab=64, hidden=32, inter=48,
         layers=2, heads=2, kv=1, rope=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
         low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
         dtype="float32", form="new", tied=False, attention_bias=True, mlp_bias=True),
    dict(name="qwen2_gqa_bias_f32_newform", arch="qwen2", vocab=72, hidden=64, inter=80, layers=2,
         heads=4, kv=1, rope=dict(rope_type="default", rope_theta=1000000.0), dtype="float32",
         form="new", tied=False),
    dict(name="qwen2_tied_bf16_oldform", arch="qwen2", vocab=64, hidden=32, inter=64, layers=3,
         heads=4, kv=2, rope=dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
         dtype="bfloat16", form="old", tied=True),
]


def make_config(case):
    common = dict(vocab_size=case["vocab"], hidden_size=case["hidden"],
                  intermediate_size=case["inter"], num_hidden_layers=case["layers"],
                  num_attention_heads=case["heads"], num_key_value_heads=case["kv"],
                  max_position_embeddings=64, rms_norm_eps=1e-6,
                  tie_word_embeddings=case["tied"], initializer_range=0.1,
                  bos_token_id=1, eos_token_id=2)
    if case["arch"] == "llama":
        cls = transformers.LlamaConfig
        common.update(attention_bias=case.get("attention_bias", False),
                      mlp_bias=case.get("mlp_bias", False))
    else:
        cls = transformers.Qwen2Config
        common.update(use_sliding_window=False)
    try:
        cfg = cls(**common, rope_parameters=dict(case["rope"]))
    except TypeError:
        rope = dict(case["rope"])
        theta = rope.pop("rope_theta")
        cfg = cls(**common, rope_theta=theta,
                  rope_scaling=None if rope["rope_type"] == "default" else rope)
    cfg._attn_implementation = "eager"
    return cfg


def rewrite_config_json(path, case):
    """Write config.json in the case's form, from what transformers saved."""
    with open(path) as f:
        cfg = json.load(f)
    rope = dict(case["rope"])
    for key in ("rope_parameters", "rope_scaling", "rope_theta", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    if case["form"] == "new":
        cfg["rope_parameters"] = rope
        cfg["dtype"] = case["dtype"]
    else:
        cfg["rope_theta"] = rope.pop("rope_theta")
        if rope["rope_type"] == "default":
            cfg["rope_scaling"] = None
        else:
            rope["type"] = rope.pop("rope_type")  # the spelling DeepSeek's files use
            cfg["rope_scaling"] = rope
        cfg["torch_dtype"] = case["dtype"]
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def hf_loss(logits, ids):
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def make_case(case, out_root, seed):
    torch.manual_seed(seed)
    cfg = make_config(case)
    cls = transformers.LlamaForCausalLM if case["arch"] == "llama" else transformers.Qwen2ForCausalLM
    model = cls(cfg).float()
    with torch.no_grad():  # make norms and biases non-trivial so that they are tested
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
        # round the parameters to the file's dtype, but not the model's buffers: module.to()
        # would also round the rotary inv_freq buffer, which transformers computes in fp32
        dtype = getattr(torch, case["dtype"])
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    model.config._attn_implementation = "eager"

    out = os.path.join(out_root, case["name"])
    shutil.rmtree(out, ignore_errors=True)
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    if case["tied"]:
        state.pop("lm_head.weight", None)  # tied: the file holds the embedding only
    model.save_pretrained(out, state_dict=state, safe_serialization=True,
                          max_shard_size=case.get("shard", "100MB"))
    rewrite_config_json(os.path.join(out, "config.json"), case)
    for f in os.listdir(out):
        if f == "generation_config.json":
            os.remove(os.path.join(out, f))

    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, case["vocab"], (B, T), generator=g)
    model.train()
    logits = model(input_ids=ids).logits.float()
    loss = hf_loss(logits, ids)
    loss.backward()
    ref = {"input_ids": ids.to(torch.int32), "logits": logits.detach().contiguous(),
           "loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        ref["grad." + name] = p.grad.detach().clone().contiguous()

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                            foreach=False, **ADAMW)
    losses = []
    model.zero_grad()
    for _ in range(5):
        opt.zero_grad()
        loss = hf_loss(model(input_ids=ids).logits.float(), ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(loss.item())
    for name, p in model.named_parameters():
        ref["adamw." + name] = p.detach().clone().contiguous()
    ref["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)

    # eval documents, scored as `dstrain eval --seq-len EVAL_SEQ_LEN` defines it
    with torch.no_grad():
        model_eval = cls(cfg).float()
        model_eval.config._attn_implementation = "eager"
        # reload the saved (pre-training) weights for eval
        model_eval = cls.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager")
        lengths = [1, 2, 5, 8, 9, 17, 30]
        docs = [torch.randint(0, case["vocab"], (n,), generator=g) for n in lengths]
        total, count = 0.0, 0
        for d in docs:
            for start in range(0, len(d) - 1, EVAL_SEQ_LEN):
                window = d[start:start + EVAL_SEQ_LEN + 1]
                lg = model_eval(input_ids=window[None, :-1]).logits.float()[0]
                total += torch.nn.functional.cross_entropy(lg, window[1:], reduction="sum").item()
                count += len(window) - 1
        ref["eval_loss"] = torch.tensor([total / count], dtype=torch.float32)
        ref["eval_tokens"] = torch.tensor([count], dtype=torch.int32)
        ref["eval_seq_len"] = torch.tensor([EVAL_SEQ_LEN], dtype=torch.int32)
        with open(os.path.join(out, "..", case["name"] + ".eval.jsonl"), "w") as f:
            for d in docs:
                f.write(json.dumps({"input_ids": d.tolist()}) + "\n")
    save_file(ref, os.path.join(out_root, case["name"] + ".reference.safetensors"))
    print(f"{case['name']}: loss {ref['loss'].item():.6f} eval_loss {ref['eval_loss'].item():.6f} "
          f"files {sorted(os.listdir(out))}")


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity"
    os.makedirs(out_root, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    print("torch", torch.__version__, "transformers", transformers.__version__)
    for i, case in enumerate(CASES):
        make_case(case, out_root, 1000 + 17 * i)


if __name__ == "__main__":
    main()
