#!/usr/bin/env python3
"""make_sensor_data.py: synthetic manufacturing sensor sequences for classification tests and
demos. Each sequence is one machine cycle of readings with a fault type; readings are quantized
to token ids 0..bins-1, so the output is the token-id JSONL `dstrain pack` reads:
{"input_ids": [...], "label": FAULT}. Not a simulator of any real machine: the four classes
differ in ways a small model can learn (and a test can check).

Fault types (label): 0 normal (noise around the set point), 1 drift (slow linear rise),
2 spikes (a few short excursions), 3 oscillation (a vibration at a random frequency).
Readings span [-4, 4] around the set point before quantization. The output is the same for the
same --seed. Token ids: readings 0..bins-1, pad_id = bins (pack with --pad-id BINS and
--vocab-size BINS+1, as the summary line says).

  tools/make_sensor_data.py --output sensors.jsonl --sequences 1000 --seed 1
  dstrain pack --input sensors.jsonl --output sensors.h5 --vocab-size 257 --pad-id 256
"""
import argparse
import json
import sys

import numpy as np

FAULTS = ("normal", "drift", "spikes", "oscillation")


def sequence(rng, fault, length):
    t = np.arange(length, dtype=np.float64)
    x = rng.normal(0.0, 0.35, length)
    if fault == 1:
        x += np.linspace(0.0, rng.uniform(1.5, 3.0), length)
    elif fault == 2:
        for start in rng.integers(0, max(1, length - 3), size=rng.integers(2, 5)):
            x[start:start + 3] += rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 3.5)
    elif fault == 3:
        period = rng.uniform(4.0, 12.0)
        x += rng.uniform(1.0, 2.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return x


def quantize(x, bins):
    q = np.rint((np.clip(x, -4.0, 4.0) + 4.0) / 8.0 * (bins - 1))
    return q.astype(np.int64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", required=True)
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--min-length", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--bins", type=int, default=256, help="quantization levels (token ids)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.sequences < 1 or not 2 <= args.bins <= 1 << 20 or \
            not 1 <= args.min_length <= args.max_length:
        print("make_sensor_data.py: error: need --sequences >= 1, 2 <= --bins <= 2^20 and "
              "1 <= --min-length <= --max-length", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    counts = [0] * len(FAULTS)
    with open(args.output, "w") as out:
        for _ in range(args.sequences):
            fault = int(rng.integers(0, len(FAULTS)))
            length = int(rng.integers(args.min_length, args.max_length + 1))
            ids = quantize(sequence(rng, fault, length), args.bins)
            out.write(json.dumps({"input_ids": ids.tolist(), "label": fault},
                                 separators=(",", ":")) + "\n")
            counts[fault] += 1
    print(f"make_sensor_data.py: wrote {args.output}: {args.sequences} sequences, labels "
          + ", ".join(f"{i} {name} {c}" for i, (name, c) in enumerate(zip(FAULTS, counts)))
          + f"; pack with --vocab-size {args.bins + 1} --pad-id {args.bins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
