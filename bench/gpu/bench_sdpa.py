#!/usr/bin/env python3
"""bench_sdpa.py: PyTorch's scaled_dot_product_attention on the shapes gpu_bench_ops times, for
the side-by-side rows of bench/gpu/RESULTS.md. Causal, bf16, head_dim 128 unless a shape gives
q/k and v head sizes of their own (DeepSeek's latent attention: 192 and 128), [B, H, T, D] inputs
(SDPA's own layout, so no transposes are timed); each backend PyTorch offers for it (flash,
cuDNN, memory-efficient for the latent shapes, and the default choice), forward alone and backward
alone (the backward of one forward, retain_graph), CUDA-event medians of 20 runs after 5
warm-ups, TFLOP/s counted as gpu_bench_ops counts them: forward 2 * B*H*T*T*(Dqk + Dv) / 2,
backward 2.5 times that. Not a test.

usage: bench_sdpa.py [B,T,H[,Dqk,Dv] ...]   (default: 8,2048,16 1,4096,32 1,16384,16)
"""
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, runs=20, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench(B, T, H, Dqk, Dv, backend):
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, generator=gen)
               .requires_grad_() for d in (Dqk, Dqk, Dv))
    dout = torch.randn(B, H, T, Dv, device="cuda", dtype=torch.bfloat16, generator=gen)
    ctx = sdpa_kernel([backend]) if backend is not None else torch.autocast("cuda", enabled=False)
    with ctx:
        fwd_ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        bwd_ms = timed(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    flops = 2.0 * B * H * T * T * (Dqk + Dv) / 2.0
    return fwd_ms, flops / (fwd_ms * 1e-3) / 1e12, bwd_ms, 2.5 * flops / (bwd_ms * 1e-3) / 1e12


def main():
    shapes = [tuple(int(x) for x in a.split(",")) for a in sys.argv[1:]] or \
        [(8, 2048, 16), (1, 4096, 32), (1, 16384, 16)]
    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION)]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| shape | SDPA backend | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape in shapes:
        B, T, H = shape[:3]
        Dqk, Dv = shape[3:5] if len(shape) >= 5 else (128, 128)
        label = f"B{B} T{T} H{H} D{Dqk}" if Dqk == Dv else f"B{B} T{T} H{H} Dqk{Dqk} Dv{Dv}"
        extra = [("efficient", SDPBackend.EFFICIENT_ATTENTION)] if Dqk != Dv else []
        for name, backend in backends + extra:
            try:
                f_ms, f_tf, b_ms, b_tf = bench(B, T, H, Dqk, Dv, backend)
                print(f"| {label} | {name} | {f_ms:.3f} | {f_tf:.1f} | {b_ms:.3f} | "
                      f"{b_tf:.1f} |", flush=True)
            except Exception as e:  # a backend PyTorch cannot run here: say so, go on
                print(f"| {label} | {name} | - | {type(e).__name__} | - | - |", flush=True)


if __name__ == "__main__":
    main()
