#!/usr/bin/env python3
"""bench_torch.py: dstrain and PyTorch side by side on one GPU, same shapes, batch and sequence.

PyTorch: transformers' LlamaForCausalLM with SDPA attention, AMP bf16 autocast over fp32
parameters, fused AdamW (what a Trainer run with bf16 does), eager and torch.compile; random
weights from the published config values. dstrain: `dstrain train device=cuda` with the
matching preset (PRECISION in the environment picks its config key precision, bf16 by default;
DSTRAIN_ARGS adds key=value settings, e.g. "cuda.weight_copy=none").
Shapes: deepseek-coder-1.3b at 8 x 2048 (coder-1.3b) and 1 x 16384 (coder-1.3b-16k),
deepseek-llm-7b at 1 x 4096 with activation checkpointing (llm-7b), without (llm-7b-nockpt) and
with dstrain's selective checkpointing (llm-7b-selective; PyTorch without). Prints tokens/s, MFU
(6N + 6*L*d*T flops per token, N the matmul parameters, against 989 TFLOP/s), peak memory and
dstrain / PyTorch ratios.

Each measurement runs in its own process (clean memory, a failure stays local) under a
timeout; --budget stops starting new ones when time is short. Not a test: numbers go to
bench/gpu/RESULTS.md with date, machine and command.

usage: bench_torch.py [--dstrain PATH] [--shapes coder-1.3b,llm-7b,...] [--runs torch-eager,
       dstrain,torch-compile] [--steps 8] [--warmup 3] [--budget SECONDS] [--log FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PEAK_FLOPS = 989e12

SHAPES = {
    # published config.json values (docs/ and the model presets)
    "coder-1.3b": dict(preset="deepseek-coder-1.3b", vocab=32256, hidden=2048, inter=5504,
                       layers=24, heads=16, kv_heads=16, max_pos=16384, theta=100000.0,
                       rope_linear=4.0, eps=1e-6, batch=8, seq=2048, ckpt=False),
    "llm-7b": dict(preset="deepseek-llm-7b", vocab=102400, hidden=4096, inter=11008, layers=30,
                   heads=32, kv_heads=32, max_pos=4096, theta=10000.0, rope_linear=None,
                   eps=1e-6, batch=1, seq=4096, ckpt=True),
}
# the long-context and no-checkpointing shapes: the same models at other batch, seq, ckpt
SHAPES["coder-1.3b-16k"] = dict(SHAPES["coder-1.3b"], batch=1, seq=16384)
SHAPES["llm-7b-nockpt"] = dict(SHAPES["llm-7b"], ckpt=False)
# dstrain's selective checkpointing (the norms and SwiGLU recomputed); transformers' Llama has no
# such mode, so PyTorch's rows of this shape run without checkpointing (its fastest that fits)
SHAPES["llm-7b-selective"] = dict(SHAPES["llm-7b"], ckpt="selective")


def matmul_params(s):
    """Parameters that take part in matmuls: every linear layer and the LM head (not the
    embedding lookup, not the norms)."""
    d, i, hd = s["hidden"], s["inter"], s["hidden"] // s["heads"]
    attn = d * (s["heads"] * hd) + 2 * d * (s["kv_heads"] * hd) + (s["heads"] * hd) * d
    mlp = 3 * d * i
    return s["layers"] * (attn + mlp) + s["vocab"] * d


def flops_per_token(s):
    return 6 * matmul_params(s) + 6 * s["layers"] * s["hidden"] * s["seq"]


# ---- PyTorch side (runs in a child process) ----------------------------------------------------

def torch_child(shape_name, mode, steps, warmup):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[shape_name]
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                      intermediate_size=s["inter"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                      max_position_embeddings=s["max_pos"], rms_norm_eps=s["eps"],
                      tie_word_embeddings=False, use_cache=False,
                      rope_parameters=(dict(rope_type="linear", rope_theta=s["theta"],
                                            factor=s["rope_linear"]) if s["rope_linear"]
                                       else dict(rope_type="default", rope_theta=s["theta"])))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)  # fp32 parameters
    model.train()
    if s["ckpt"] is True:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    B, T = s["batch"], s["seq"]
    gen = torch.Generator(device="cuda").manual_seed(1)

    def step():
        x = torch.randint(0, s["vocab"], (B, T), device="cuda", generator=gen)
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
    return dict(step_s=statistics.median(times),
                peak_gib=torch.cuda.max_memory_reserved() / 2**30,
                peak_alloc_gib=torch.cuda.max_memory_allocated() / 2**30,
                loss=float(loss.detach()))


# ---- dstrain side --------------------------------------------------------------------------------

class GpuMemoryPeak:
    """Largest device memory in use while a process runs (nvidia-smi every 200 ms)."""

    def __init__(self):
        self.peak_mib = 0
        self.proc = None
        self.thread = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, text=True)
        except OSError:
            return self  # no nvidia-smi: peak stays 0

        def read():
            for line in self.proc.stdout:
                try:
                    self.peak_mib = max(self.peak_mib, int(line.split()[0]))
                except (ValueError, IndexError):
                    pass
        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


def run_dstrain(binary, shape_name, steps, warmup, timeout, log):
    s = SHAPES[shape_name]
    run_dir = tempfile.mkdtemp(prefix="dstrain-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    cmd = [binary, "train", "device=cuda", f"model.preset={s['preset']}",
           f"train.seq_len={s['seq']}", f"train.micro_batch_size={s['batch']}",
           f"train.steps={warmup + steps}", "log.every=1", "export.enabled=false",
           f"run.dir={run_dir}"]
    if s["ckpt"]:
        mode = "selective" if s["ckpt"] == "selective" else "true"
        cmd.append(f"train.activation_checkpointing={mode}")
    precision = os.environ.get("PRECISION", "bf16")
    cmd.append(f"precision={precision}")
    cmd += os.environ.get("DSTRAIN_ARGS", "").split()  # more key=value settings
    env = dict(os.environ)
    log.write("$ %s\n" % " ".join(cmd))
    log.flush()
    with GpuMemoryPeak() as mem:
        try:
            p = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(l) for l in f if '"loss"' in l]
    except OSError:
        pass
    subprocess.run(["rm", "-rf", run_dir])
    timed = [r["step_seconds"] for r in rows[warmup:]]
    if not timed:
        return dict(error="rc %s, %d steps recorded" % (rc, len(rows)))
    return dict(step_s=statistics.median(timed), peak_gib=mem.peak_mib / 1024.0,
                loss=rows[-1]["loss"], matmul=precision)


# ---- driver ----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dstrain", default="build/dstrain")
    ap.add_argument("--shapes", default="coder-1.3b,llm-7b")
    ap.add_argument("--runs", default="torch-eager,dstrain,torch-compile")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per measurement")
    ap.add_argument("--budget", type=float, default=1e9, help="start nothing after this many s")
    ap.add_argument("--log", default=None, help="child output (default: stderr)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        res = torch_child(args.child[0], args.child[1], args.steps, args.warmup)
        print("RESULT " + json.dumps(res))
        return 0

    log = open(args.log, "a") if args.log else sys.stderr
    t_start = time.time()
    results = []
    for shape_name in args.shapes.split(","):
        s = SHAPES[shape_name]
        for run in args.runs.split(","):
            if time.time() - t_start > args.budget:
                results.append((shape_name, run, dict(error="skipped (time budget)")))
                continue
            t0 = time.time()
            if run == "dstrain":
                res = run_dstrain(args.dstrain, shape_name, args.steps, args.warmup, args.timeout, log)
            else:
                mode = run.split("-", 1)[1]
                cmd = [sys.executable, os.path.abspath(__file__), "--child", shape_name, mode,
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
                log.write("$ %s\n" % " ".join(cmd))
                log.flush()
                with GpuMemoryPeak() as mem:  # the whole device, as dstrain's is measured
                    try:
                        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                           timeout=args.timeout)
                        line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
                        res = (json.loads(line[-1][7:]) if line
                               else dict(error="rc %d" % p.returncode))
                        log.write(p.stdout)
                    except subprocess.TimeoutExpired:
                        res = dict(error="timeout after %.0f s" % args.timeout)
                if mem.peak_mib:
                    res["peak_smi_gib"] = mem.peak_mib / 1024.0
            res["wall_s"] = time.time() - t0
            results.append((shape_name, run, res))
            print("%s %s: %s" % (shape_name, run, json.dumps(res)), flush=True)

    print()
    print("| shape | run | batch x seq | step s | tokens/s | MFU | peak GiB | vs torch-eager |")
    print("|---|---|---|---|---|---|---|---|")
    for shape_name, run, res in results:
        s = SHAPES[shape_name]
        tokens = s["batch"] * s["seq"]
        bxs = "%d x %d%s" % (s["batch"], s["seq"],
                             {True: " ckpt", "selective": " selective"}.get(s["ckpt"], ""))
        if "step_s" not in res:
            print("| %s | %s | %s | %s | | | | |" % (shape_name, run, bxs, res.get("error")))
            continue
        tps = tokens / res["step_s"]
        mfu = tps * flops_per_token(s) / PEAK_FLOPS
        base = [r for sn, rn, r in results if sn == shape_name and rn == "torch-eager" and "step_s" in r]
        ratio = "%.2f" % (base[0]["step_s"] / res["step_s"]) if base else ""
        label = run + (" (matmul %s)" % res["matmul"] if "matmul" in res else "")
        print("| %s | %s | %s | %.3f | %.0f | %.1f%% | %.1f | %s |" % (
            shape_name, label, bxs, res["step_s"], tps, 100 * mfu, res["peak_gib"], ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
