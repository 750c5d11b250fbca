#!/usr/bin/env python3
"""curves.py: a GPU training run's loss curves against the CPU's, for tests/gpu/run.sh (the tiny
preset) and tests/gpu/moe.sh (tiny-moe): three runs from the same seed on the same data, the CPU
in fp32 (the reference), the GPU in bf16 and the GPU in fp32, each a metrics.jsonl.

The fp32 GPU run differs from the CPU only in the order of its sums, so it is held step by step
at first: --fp32-early N BAR (the first N steps within BAR absolute; a dense model, whose runs
then drift apart through single batches' swings) or --fp32-every BAR (every step within BAR
relative; a MoE model, whose routing choices keep the runs close or move them far). Both GPU runs
are held to the smoothed curve: WINDOW-step moving averages within 3% of the CPU's at every step
and the mean of the last TAIL steps within 2%. Prints run.sh's summary rows (the first two PASS
or FAIL, the rest figures), writes the three curves to TSV, and exits 1 if a check failed.

usage: curves.py CPU GPU_BF16 GPU_FP32 TSV --name NAME --window W --tail T
       (--fp32-early N BAR | --fp32-every BAR) [--skip S]
"""
import argparse
import json
import sys


def load(path):
    """{step: row} of the rows with a loss; {} when the file is missing"""
    try:
        with open(path) as f:
            return {r["step"]: r for r in map(json.loads, f) if "loss" in r}
    except OSError:
        return {}


def moving(x, w):
    return [sum(x[max(0, i - w + 1):i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(x))]


def mean(xs):
    return sum(xs) / len(xs)


def median(xs):
    return sorted(xs)[len(xs) // 2]


def row(a, b, c):
    print("| %-44s | %-48s | %s |" % (a, b, c))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("cpu")
    ap.add_argument("gpu")
    ap.add_argument("gpu32")
    ap.add_argument("tsv")
    ap.add_argument("--name", required=True, help="the rows' subject, e.g. 'tiny-moe'")
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--tail", type=int, required=True)
    ap.add_argument("--fp32-early", nargs=2, metavar=("N", "BAR"))
    ap.add_argument("--fp32-every", type=float, metavar="BAR")
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of step times")
    args = ap.parse_args(argv)
    if (args.fp32_early is None) == (args.fp32_every is None):
        ap.error("one of --fp32-early and --fp32-every")
    cpu, gpu, gpu32 = load(args.cpu), load(args.gpu), load(args.gpu32)
    steps = sorted(set(cpu) & set(gpu) & set(gpu32))
    if not steps:
        row("%s: loss curves GPU vs CPU" % args.name, "no common steps", "FAIL")
        return 1
    with open(args.tsv, "w") as f:
        f.write("step\tloss_cpu\tloss_cuda\tloss_cuda_fp32\n")
        for s in steps:
            f.write("%d\t%.6f\t%.6f\t%.6f\n" % (s, cpu[s]["loss"], gpu[s]["loss"], gpu32[s]["loss"]))
    c = [cpu[s]["loss"] for s in steps]
    g = [gpu[s]["loss"] for s in steps]
    g32 = [gpu32[s]["loss"] for s in steps]
    w, tail = args.window, min(args.tail, len(steps))

    def smoothed(y):
        """largest relative gap of the moving averages; relative gap of the tail means"""
        ma = max(abs(a - b) / abs(a) for a, b in zip(moving(c, w), moving(y, w)))
        return ma, abs(mean(c[-tail:]) - mean(y[-tail:])) / abs(mean(c[-tail:]))

    if args.fp32_early:
        n, bar = int(args.fp32_early[0]), float(args.fp32_early[1])
        early = max(abs(a - b) for a, b in zip(c[:n], g32[:n]))
        early_text = "%d steps %.1e (<= %.0e)" % (min(n, len(steps)), early, bar)
    else:
        bar = args.fp32_every
        early = max(abs(a - b) / abs(a) for a, b in zip(c, g32))
        early_text = "every step %.1e rel (<= %.0e)" % (early, bar)
    ma32, end32 = smoothed(g32)
    ok32 = early <= bar and ma32 <= 0.03 and end32 <= 0.02
    row("%s GPU fp32 vs CPU (%d steps)" % (args.name, len(steps)),
        "%s; %d-step means %.1e, end %.1e" % (early_text, w, ma32, end32),
        "PASS" if ok32 else "FAIL")
    ma, end = smoothed(g)
    ok = ma <= 0.03 and end <= 0.02
    row("%s GPU bf16 vs CPU (%d steps)" % (args.name, len(steps)),
        "%d-step means %.1e rel (<= 3e-2), last %d %.1e (<= 2e-2)" % (w, ma, tail, end),
        "PASS" if ok else "FAIL")
    diff = [abs(a - b) for a, b in zip(c, g)]
    row("  %s per step |d|: bf16 max, last-%d mean; fp32 max" % (args.name, tail),
        "%.2e, %.2e; %.2e" % (max(diff), mean(diff[-tail:]),
                              max(abs(a - b) for a, b in zip(c, g32))), "")
    if len(c) > 1:
        row("  %s CPU step-to-step |change|, median" % args.name,
            "%.2e" % median([abs(c[i] - c[i - 1]) for i in range(1, len(c))]), "")
    last = steps[-1]
    for label, run in (("CPU", cpu), ("GPU bf16", gpu), ("GPU fp32", gpu32)):
        row("  %s loss step 1 -> %d, %s" % (args.name, last, label),
            "%.4f -> %.4f" % (run[steps[0]]["loss"], run[last]["loss"]), "")
    timed = steps[args.skip:] or steps
    row("  %s median step ms: CPU / GPU bf16 / fp32" % args.name, "%.2f / %.2f / %.2f" % tuple(
        1e3 * median([r[s]["step_seconds"] for s in timed]) for r in (cpu, gpu, gpu32)), "")
    return 0 if ok and ok32 else 1


if __name__ == "__main__":
    sys.exit(main())
