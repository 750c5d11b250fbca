"""run_files.py: what the shell tests read back from a run directory, in one place.

final_tensors(run_dir): run.save_final's final.safetensors as {name: float32 numpy array}.
step_metrics(run_dir): the training-step lines of metrics.jsonl (those with a "loss"), parsed.
Used as: sys.path.insert(0, os.path.join(os.environ["SRC"], "tests")); import run_files.
"""
import json
import struct

import numpy as np


def final_tensors(run_dir):
    with open(f"{run_dir}/final.safetensors", "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        assert v["dtype"] == "F32", (run_dir, name, v["dtype"])
        begin, end = v["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + begin:8 + n + end],
                                  dtype=np.float32).reshape(v["shape"])
    return out


def step_metrics(run_dir):
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f if '"loss"' in line]
