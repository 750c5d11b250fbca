#!/usr/bin/env python3
"""bench_torch.py: DeepSeek MoE training, dstrain and PyTorch side by side on one GPU.

The model: DeepSeek-V2-Lite's published shape (the deepseek-v2-lite preset: MLA with a 512 kv
latent, 64 routed experts of 1408, 6 a token, 2 shared, first layer dense, YaRN) cut to --layers
decoder layers, random weights. One config.json (written here) drives both sides:
  dstrain: `dstrain train device=cuda model.path=DIR model.random_init=true` (bf16 mixed
    precision, AdamW; run "dstrain:KIND" sets the config key cuda.experts=KIND, how the routed
    experts run: streams, grouped or loop), step time from metrics.jsonl; the run is stopped once its
    steps are recorded (its end-of-run checkpoint of the optimizer state is not part of a step).
  PyTorch: transformers' DeepseekV2ForCausalLM from the same config, fp32 parameters, bf16
    autocast, fused AdamW, clip_grad_norm_ (what a Trainer run with bf16 does), eager and
    torch.compile; the attention and experts implementations are the library's defaults and
    are printed with the result.
Same micro-batch x sequence on both. Prints tokens/s, MFU on the ACTIVE parameters (6 * active
matmul parameters + MLA attention flops per token, against 989 TFLOP/s bf16 dense), peak memory
and the ratios to PyTorch eager and torch.compile. Not a test: numbers go to
bench/moe/RESULTS.md with date, machine, commit and command.

usage: bench_torch.py [--dstrain PATH] [--layers 8] [--batch 4] [--seq 2048]
       [--runs dstrain,dstrain:loop,torch-eager,torch-compile] [--steps 3] [--warmup 2]
       [--timeout S] [--budget S] [--log FILE] [--json FILE]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import importlib.util  # noqa: E402

# bench/gpu/bench_torch.py's nvidia-smi sampler, loaded under its own name
_spec = importlib.util.spec_from_file_location(
    "bench_gpu_torch", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu",
                                    "bench_torch.py"))
_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gpu)
GpuMemoryPeak = _gpu.GpuMemoryPeak

PEAK_FLOPS = 989e12

# DeepSeek-V2-Lite's config.json values (trainer/param_table.c, preset deepseek-v2-lite)
V2_LITE = dict(
    architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", vocab_size=102400,
    hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
    num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
    n_routed_experts=64, num_experts_per_tok=6, routed_scaling_factor=1.0, topk_method="greedy",
    n_group=1, topk_group=1, norm_topk_prob=False, scoring_func="softmax",
    first_k_dense_replace=1, moe_layer_freq=1, q_lora_rank=None, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=163840,
    rms_norm_eps=1e-6, hidden_act="silu", bos_token_id=100000, eos_token_id=100001,
    tie_word_embeddings=False, attention_bias=False, attention_dropout=0.0,
    torch_dtype="bfloat16", rope_theta=10000.0,
    rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096,
                      beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707))


def model_config(layers):
    c = dict(V2_LITE)
    c["num_hidden_layers"] = layers
    return c


def active_matmul_params(c):
    """Parameters one token multiplies through: attention projections, the dense MLP or the
    shared experts, its k routed experts, the router and the LM head (not the embedding)."""
    C, H = c["hidden_size"], c["num_attention_heads"]
    dq = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    kvl, dv = c["kv_lora_rank"], c["v_head_dim"]
    q = C * H * dq if not c["q_lora_rank"] else (C * c["q_lora_rank"] + c["q_lora_rank"] * H * dq)
    attn = q + C * (kvl + c["qk_rope_head_dim"]) + kvl * H * (c["qk_nope_head_dim"] + dv) \
        + H * dv * C
    Im = c["moe_intermediate_size"]
    dense_mlp = 3 * C * c["intermediate_size"]
    moe_mlp = 3 * C * Im * (c["n_shared_experts"] + c["num_experts_per_tok"]) \
        + C * c["n_routed_experts"]
    L, k0 = c["num_hidden_layers"], c["first_k_dense_replace"]
    return L * attn + k0 * dense_mlp + (L - k0) * moe_mlp + c["vocab_size"] * C


def flops_per_token(c, seq):
    """6 N_active, plus causal attention: q.k over nope + rope and p.v over v_head_dim, forward
    and backward (3x), half the positions."""
    H, dq = c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    attn = 3 * c["num_hidden_layers"] * H * seq * (dq + c["v_head_dim"])
    return 6 * active_matmul_params(c) + attn


# ---- PyTorch side (runs in a child process) ----------------------------------------------------

def torch_child(cfg_path, mode, batch, seq, steps, warmup):
    import torch
    import transformers
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    with open(cfg_path) as f:
        c = json.load(f)
    c = {k: v for k, v in c.items() if k not in ("architectures", "model_type", "torch_dtype")}
    rope = dict(c.pop("rope_scaling"))
    rope["rope_type"] = rope.pop("type")
    rope["rope_theta"] = c.pop("rope_theta")
    c.pop("scoring_func", None)  # V2 scores by softmax in transformers
    try:
        cfg = DeepseekV2Config(**c, rope_parameters=rope, use_cache=False)
    except TypeError:
        theta = rope.pop("rope_theta")
        cfg = DeepseekV2Config(**c, rope_theta=theta, rope_scaling=rope, use_cache=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = DeepseekV2ForCausalLM(cfg)  # fp32 parameters
    model.train()
    impl = dict(attn=getattr(model.config, "_attn_implementation", None),
                experts=getattr(model.config, "_experts_implementation", None),
                transformers=transformers.__version__, torch=torch.__version__)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    vocab = c["vocab_size"]
    gen = torch.Generator(device="cuda").manual_seed(1)

    def step():
        x = torch.randint(0, vocab, (batch, seq), device="cuda", generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        loss.item()  # one sync per step, as a logging trainer has
        times.append(time.perf_counter() - t0)
    return dict(step_s=statistics.median(times), times=times,
                peak_gib=torch.cuda.max_memory_reserved() / 2**30,
                peak_alloc_gib=torch.cuda.max_memory_allocated() / 2**30,
                loss=float(loss.detach()), impl=impl)


# ---- dstrain side -------------------------------------------------------------------------------

def run_dstrain(binary, model_dir, batch, seq, steps, warmup, timeout, log, experts=None):
    run_dir = tempfile.mkdtemp(prefix="dstrain-moe-bench-")
    total = warmup + steps
    cmd = [binary, "train", "device=cuda", f"model.path={model_dir}", "model.random_init=true",
           f"train.seq_len={seq}", f"train.micro_batch_size={batch}", f"train.steps={total}",
           "log.every=1", "export.enabled=false", f"run.dir={run_dir}"]
    if experts:
        cmd.append(f"cuda.experts={experts}")
    env = dict(os.environ)
    log.write("$ %s\n" % " ".join(cmd))
    log.flush()
    metrics = os.path.join(run_dir, "metrics.jsonl")
    rows, rc = [], None

    def read_rows():
        try:
            with open(metrics) as f:
                return [json.loads(l) for l in f if '"loss"' in l]
        except (OSError, ValueError):
            return []

    with GpuMemoryPeak() as mem:
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while True:
            rc = p.poll()
            rows = read_rows()
            if rc is not None or len(rows) >= total:
                break
            if time.time() - t0 > timeout:
                rc = "timeout"
                break
            time.sleep(0.5)
        if p.poll() is None:  # its steps are in: the final checkpoint is not measured
            p.send_signal(signal.SIGKILL)
            p.wait()
    rows = read_rows()
    subprocess.run(["rm", "-rf", run_dir])
    timed = [r["step_seconds"] for r in rows[warmup:total]]
    if not timed:
        return dict(error="rc %s, %d steps recorded" % (rc, len(rows)))
    return dict(step_s=statistics.median(timed), times=timed, peak_gib=mem.peak_mib / 1024.0,
                loss=rows[-1]["loss"], expert_load=rows[-1].get("expert_load"))


# ---- driver ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dstrain", default="build/dstrain")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--runs", default="dstrain,torch-eager,torch-compile")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=200, help="seconds per measurement")
    ap.add_argument("--budget", type=float, default=1e9, help="start nothing after this many s")
    ap.add_argument("--log", default=None, help="child output (default: stderr)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        res = torch_child(args.child[0], args.child[1], args.batch, args.seq, args.steps,
                          args.warmup)
        print("RESULT " + json.dumps(res))
        return 0

    log = open(args.log, "a") if args.log else sys.stderr
    cfg = model_config(args.layers)
    model_dir = tempfile.mkdtemp(prefix="v2-lite-%dl-" % args.layers)
    cfg_path = os.path.join(model_dir, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    t_start = time.time()
    results = []
    for run in args.runs.split(","):
        if time.time() - t_start > args.budget:
            results.append((run, dict(error="skipped (time budget)")))
            continue
        t0 = time.time()
        if run.startswith("dstrain"):  # dstrain, or dstrain:KIND (cuda.experts=KIND)
            res = run_dstrain(args.dstrain, model_dir, args.batch, args.seq, args.steps,
                              args.warmup, args.timeout, log,
                              run.split(":", 1)[1] if ":" in run else None)
        else:
            mode = run.split("-", 1)[1]
            cmd = [sys.executable, os.path.abspath(__file__), "--child", cfg_path, mode,
                   "--batch", str(args.batch), "--seq", str(args.seq),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            log.write("$ %s\n" % " ".join(cmd))
            log.flush()
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                   timeout=args.timeout)
                line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
                res = json.loads(line[-1][7:]) if line else dict(error="rc %d" % p.returncode)
                log.write(p.stdout)
            except subprocess.TimeoutExpired:
                res = dict(error="timeout after %.0f s" % args.timeout)
        res["wall_s"] = time.time() - t0
        results.append((run, res))
        print("%s: %s" % (run, json.dumps(res)), flush=True)

    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(layers=args.layers, batch=args.batch, seq=args.seq,
                           active_matmul_params=active_matmul_params(cfg), flops_per_token=fpt,
                           results=dict(results)), f, indent=1)
    print()
    print("V2-Lite shape, %d layers, %d x %d tokens; %.3e active matmul params, %.2f GFLOP/token"
          % (args.layers, args.batch, args.seq, active_matmul_params(cfg), fpt / 1e9))
    print("| run | step s | tokens/s | MFU (active) | peak GiB | vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|")
    ok = {r: res for r, res in results if "step_s" in res}
    for run, res in results:
        if "step_s" not in res:
            print("| %s | %s | | | | | |" % (run, res.get("error")))
            continue
        tps = tokens / res["step_s"]
        ratio = lambda b: "%.2f" % (ok[b]["step_s"] / res["step_s"]) if b in ok else ""
        print("| %s | %.3f | %.0f | %.1f%% | %.1f | %s | %s |" % (
            run, res["step_s"], tps, 100 * tps * fpt / PEAK_FLOPS, res["peak_gib"],
            ratio("torch-eager"), ratio("torch-compile")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
