#!/usr/bin/env python3
"""profile_step.py: where a dstrain training step's time goes, from a cupti_trace.c timeline.

A step is taken from one embedding forward (the first kernel of a forward; one a step, so a run
with train.grad_accum 1) to the next (the refresh of the bf16 copy before it falls in the step
before); the first --skip steps are left out (warm-up). Within a step, phases by markers:
forward (to the LM head), head (the chunks' matmuls and cross-entropy), backward (to the first
sum_squares_kernel: the gradient norm), optimizer (norm, AdamW, to the step's end). Printed per
step on average: wall, GPU busy (the union of kernels, copies and sets on every stream) and idle,
each phase, kernel groups (sums of kernel times; the experts' side streams overlap each other),
the top kernels, the longest idle gaps by the kernels around them, and the host's blocking API
calls. Not a test: figures for bench/moe/RESULTS.md.

usage: profile_step.py TRACE.tsv [--skip 2] [--top 40]
"""
import argparse
import collections
import re
import subprocess
import sys


def demangle(names):
    try:
        p = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
        out = p.stdout.splitlines()
        if len(out) == len(names):
            return out
    except OSError:
        pass
    return names


def short(name):
    """A kernel's name without template arguments and parameters."""
    s = name
    for _ in range(8):
        s2 = re.sub(r"<[^<>]*>", "", s)
        if s2 == s:
            break
        s = s2
    s = s.split("(")[0]
    s = s.replace("void ", "").strip()
    return s[:70]


GROUPS = [  # (group, regex on the short name); first match wins; experts by stream
    ("adamw", r"adamw"),
    ("bf16 weight copy", r"round_bf16"),
    ("grad norm", r"sum_squares"),
    ("attention", r"attention|flash|^aw_|attn"),
    ("routing", r"moe_route|moe_counts|moe_permute"),
    ("sorts (cub)", r"cub::|DeviceRadixSort|Onesweep|radix|Histogram|ExclusiveSum|scan"),
    ("gather/scatter rows", r"gather_rows|scatter_add_rows|rows_dot|iota"),
    ("copy_block", r"copy_block"),
    ("swiglu", r"swiglu"),
    ("rmsnorm", r"rmsnorm"),
    ("rope", r"rope"),
    ("add/scale/convert", r"add_kernel|scale_kernel|act_to_f32|act_widen|act_narrow|fill_rows"),
    ("cross-entropy", r"cross_entropy|ce_shard"),
    ("embedding", r"embedding"),
    ("column sums", r"colsum"),
    ("matmul (cuBLAS)", r"gemm|nvjet|xmma|cutlass|sm90|Kernel2|splitK|reduce"),
]


def group_of(sname):
    for g, rx in GROUPS:
        if re.search(rx, sname, re.I):
            return g
    return "other"


def union_ms(intervals):
    total, end = 0, None
    cur_s = None
    for s, e in sorted(intervals):
        if cur_s is None or s > end:
            if cur_s is not None:
                total += end - cur_s
            cur_s, end = s, e
        else:
            end = max(end, e)
    if cur_s is not None:
        total += end - cur_s
    return total / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()

    names, apis = {}, {}
    kernels, copies, sets, calls = [], [], [], []
    with open(args.trace) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            t = p[0]
            if t == "K":
                kernels.append((int(p[1]), int(p[2]), int(p[3]), int(p[4]),
                                (int(p[5]), int(p[6]), int(p[7]), int(p[8]))))
            elif t == "N":
                names[int(p[1])] = p[2]
            elif t == "C":
                copies.append((int(p[1]), int(p[2]), int(p[3]), int(p[4]), int(p[5])))
            elif t == "S":
                sets.append((int(p[1]), int(p[2]), int(p[3]), int(p[4])))
            elif t == "R":
                calls.append((int(p[1]), int(p[2]), int(p[3])))
            elif t == "A":
                apis[int(p[1])] = p[2]
    ids = sorted(names)
    dem = dict(zip(ids, demangle([names[i] for i in ids])))
    sname = {i: short(dem[i]) for i in ids}
    sname[-1] = "?"
    kernels.sort()
    # the main stream: the one the embedding runs on
    main_stream = collections.Counter(k[2] for k in kernels
                                      if "embedding" in sname.get(k[3], "")).most_common(1)
    main_stream = main_stream[0][0] if main_stream else None

    embed = [k for k in kernels if "embedding_forward" in sname.get(k[3], "")]
    starts = [k[0] for k in embed]
    if len(starts) < args.skip + 2:
        print("profile_step: %d steps found (embedding forwards); need %d" %
              (len(starts), args.skip + 2))
        starts = starts + [kernels[-1][1]] if kernels else starts
        if len(starts) < 2:
            return 1
        args.skip = 0
    windows = list(zip(starts[args.skip:-1], starts[args.skip + 1:]))
    nsteps = len(windows)
    print("trace: %d kernels, %d copies, %d sets, %d API calls; main stream %s; %d steps "
          "measured (after %d skipped)" % (len(kernels), len(copies), len(sets), len(calls),
                                           main_stream, nsteps, args.skip))

    def inside(items, lo, hi):
        return [x for x in items if x[0] >= lo and x[0] < hi]

    tot = collections.Counter()
    phase_wall, phase_busy = collections.Counter(), collections.Counter()
    ktime, kcount = collections.Counter(), collections.Counter()
    phase_group = collections.defaultdict(collections.Counter)
    gaps = collections.Counter()
    gap_n = collections.Counter()
    api_t, api_n = collections.Counter(), collections.Counter()
    side_busy = 0.0
    for lo, hi in windows:
        ks = inside(kernels, lo, hi)
        cs = inside(copies, lo, hi)
        ss = inside(sets, lo, hi)
        busy_iv = [(k[0], k[1]) for k in ks] + [(c[0], c[1]) for c in cs] + \
            [(s[0], s[1]) for s in ss]
        tot["wall"] += (hi - lo) / 1e6
        tot["busy"] += union_ms(busy_iv)
        side_busy += union_ms([(k[0], k[1]) for k in ks if k[2] != main_stream])
        # phases
        mainks = [k for k in ks if k[2] == main_stream]
        ce = [i for i, k in enumerate(mainks) if re.search("cross_entropy|ce_shard",
                                                            sname.get(k[3], ""))]
        sq = [k[0] for k in mainks if "sum_squares" in sname.get(k[3], "")]
        if ce:
            head_lo = mainks[max(ce[0] - 1, 0)][0]
            head_hi = mainks[min(ce[-1] + 2, len(mainks) - 1)][1]
        else:
            head_lo = head_hi = hi
        opt_lo = sq[0] if sq else hi
        bounds = [("forward", lo, head_lo), ("head", head_lo, head_hi),
                  ("backward", head_hi, opt_lo), ("optimizer", opt_lo, hi)]
        for ph, a, b in bounds:
            phase_wall[ph] += (b - a) / 1e6
            phase_busy[ph] += union_ms(
                [(max(s, a), min(e, b)) for s, e in busy_iv if e > a and s < b])
        for k in ks:
            n = sname.get(k[3], "?")
            side = k[2] != main_stream
            key = n + (" [side streams]" if side else "")
            d = (k[1] - k[0]) / 1e6
            ktime[key] += d
            kcount[key] += 1
            g = "experts matmul (side streams)" if side else group_of(n)
            ph = next(p for p, a, b in bounds if k[0] < b or p == "optimizer")
            phase_group[ph][g] += d
        for c in cs:
            ph = next(p for p, a, b in bounds if c[0] < b or p == "optimizer")
            phase_group[ph]["memcpy kind %d" % c[2]] += (c[1] - c[0]) / 1e6
        for s in ss:
            ph = next(p for p, a, b in bounds if s[0] < b or p == "optimizer")
            phase_group[ph]["memset"] += (s[1] - s[0]) / 1e6
        # idle gaps on the GPU (every stream), named by the kernels around them
        ev = sorted([(k[0], k[1], sname.get(k[3], "?")) for k in ks] +
                    [(c[0], c[1], "memcpy%d" % c[2]) for c in cs] +
                    [(s[0], s[1], "memset") for s in ss])
        end, prev = None, None
        for s, e, n in ev:
            if end is not None and s - end > 5000:
                key = "%s -> %s" % (prev, n)
                gaps[key] += (s - end) / 1e6
                gap_n[key] += 1
            if end is None or e > end:
                end, prev = e, n
        if end is not None and hi - end > 5000:
            key = "%s -> (next step)" % prev
            gaps[key] += (hi - end) / 1e6
            gap_n[key] += 1
        for c in inside(calls, lo, hi):
            a = apis.get(c[2], str(c[2]))
            if re.search("Synchronize|Memcpy(?!.*Async)|Free|Malloc(?!Async)", a):
                api_t[a] += (c[1] - c[0]) / 1e6
                api_n[a] += 1

    n = float(nsteps)
    print("\n| per step (mean of %d) | ms |" % nsteps)
    print("| --- | --- |")
    print("| wall | %.2f |" % (tot["wall"] / n))
    print("| GPU busy (any stream) | %.2f |" % (tot["busy"] / n))
    print("| GPU idle | %.2f |" % ((tot["wall"] - tot["busy"]) / n))
    print("| side streams busy (experts) | %.2f |" % (side_busy / n))
    print("\n| phase | wall ms | busy ms | idle ms |")
    print("| --- | --- | --- | --- |")
    for ph in ("forward", "head", "backward", "optimizer"):
        print("| %s | %.2f | %.2f | %.2f |" % (ph, phase_wall[ph] / n, phase_busy[ph] / n,
                                               (phase_wall[ph] - phase_busy[ph]) / n))
    allg = collections.Counter()
    for ph in phase_group:
        allg.update(phase_group[ph])
    print("\n| kernel group (sum of kernel ms) | forward | head | backward | optimizer | all |")
    print("| --- | --- | --- | --- | --- | --- |")
    for g, t in allg.most_common():
        print("| %s | %s | %.2f |" % (g, " | ".join("%.2f" % (phase_group[p][g] / n) for p in
                                                  ("forward", "head", "backward", "optimizer")),
                                      t / n))
    print("\n| kernel | calls/step | ms/step | us/call |")
    print("| --- | --- | --- | --- |")
    for k, t in ktime.most_common(args.top):
        print("| %s | %.0f | %.2f | %.1f |" % (k, kcount[k] / n, t / n, 1000 * t / kcount[k]))
    print("\n| idle gap (> 5 us) between | gaps/step | ms/step |")
    print("| --- | --- | --- |")
    for k, t in gaps.most_common(25):
        print("| %s | %.1f | %.3f |" % (k[:110], gap_n[k] / n, t / n))
    print("| all gaps > 5 us | %.0f | %.2f |" % (sum(gap_n.values()) / n,
                                                  sum(gaps.values()) / n))
    print("\n| host API call (blocking kinds) | calls/step | ms/step |")
    print("| --- | --- | --- |")
    for k, t in api_t.most_common(12):
        print("| %s | %.1f | %.2f |" % (k, api_n[k] / n, t / n))
    allcalls = collections.Counter()
    for lo, hi in windows:
        for c in inside(calls, lo, hi):
            allcalls[apis.get(c[2], str(c[2]))] += 1
    print("| (all runtime API calls/step: %s) | | |" % ", ".join(
        "%s %.0f" % (a, c / n) for a, c in allcalls.most_common(8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
