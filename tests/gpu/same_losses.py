#!/usr/bin/env python3
"""same_losses.py: runs that must train the same model, step for step, for the GPU checks of
tests/gpu/ (weight_copy.sh: the bf16 working copy kept or not; checkpointing.sh: the activation
checkpointing modes). Each run is a directory DIR/NAME holding its metrics.jsonl; every OTHER run
is held to BASE's losses, all STEPS of them, within 1e-5 absolute (a kernel whose choice depends
on an address may sum in another order; a stale or missing value moves a loss by far more).
Prints one run.sh summary row per OTHER (PASS or FAIL, the largest difference and how many
steps are the same bits) and exits 1 if any failed.

usage: same_losses.py DIR STEPS LABEL BASE OTHER...   (LABEL: the row's name, %s the OTHER)
"""
import json
import sys

BAR = 1e-5


def losses(path):
    """the losses of metrics.jsonl in order; [] when the file is missing"""
    try:
        with open(path) as f:
            return [r["loss"] for r in map(json.loads, f) if "loss" in r]
    except OSError:
        return []


def row(name, value, ok):
    print("| %-44s | %-48s | %s |" % (name, value, "PASS" if ok else "FAIL"))


def main(argv):
    if len(argv) < 6:
        sys.stderr.write(__doc__)
        return 2
    run_dir, steps, label, base = argv[1], int(argv[2]), argv[3], argv[4]
    ref = losses(f"{run_dir}/{base}/metrics.jsonl")
    ok = True
    for other in argv[5:]:
        name = label % other
        got = losses(f"{run_dir}/{other}/metrics.jsonl")
        if len(ref) != steps or len(got) != steps:
            row(name, "%d and %d steps of %d" % (len(ref), len(got), steps), False)
            ok = False
            continue
        diff = max(abs(a - b) for a, b in zip(ref, got))
        same = sum(a == b for a, b in zip(ref, got))
        good = diff <= BAR
        ok = ok and good
        row(name, "max |d| %.1e (<= 1e-5), %d of %d equal bits" % (diff, same, steps), good)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
