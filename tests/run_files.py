"""run_files.py: what the shell tests read back from a run directory, in one place.

final_tensors(run_dir): run.save_final's final.safetensors as {name: float32 numpy array}.
step_metrics(run_dir): the training-step lines of metrics.jsonl (those with a "loss"), parsed.
params_close(ref, got): whether two runs' parameters agree as two layouts of one fp32 run can.
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


def params_close(ref, got, tol=1e-5, drift=1e-3, noise=("k_proj.bias",)):
    """(ok, text): ref and got ({name: array}, as final_tensors) hold the same tensors, of the
    same shapes, as two layouts of one fp32 training run leave them.

    Two layouts sum in other orders, so their parameters differ by rounding carried through the
    steps: within tol. Except where an element's true gradient is below that rounding: AdamW
    divides a gradient by its own scale, so such an element steps by up to lr either way, whatever
    the layout. In a tensor those are a chance few (which, depends on the CPU's BLAS kernels): at
    most max(1, 0.1%) of its elements may lie past tol, none past drift (about lr times the
    steps that can go either way). A tensor whose name ends with one of noise has a zero true
    gradient throughout (k_proj biases: softmax ignores a shift of a query's scores) and is held
    to drift alone. A slicing or reduction error moves whole rows or tensors, far past this."""
    if ref.keys() != got.keys():
        return False, "different tensors: %s" % sorted(set(ref) ^ set(got))[:4]
    bad = [k for k in ref if ref[k].shape != got[k].shape]
    if bad:
        return False, "different shapes: %s" % bad[:4]
    worst, worst_d, stray, ok = None, 0.0, 0, True
    for k in ref:
        d = np.abs(ref[k].astype(np.float64) - got[k].astype(np.float64))
        m = float(np.max(d)) if d.size else 0.0
        if m > worst_d:
            worst, worst_d = k, m
        ok = ok and m <= drift
        if not k.endswith(tuple(noise)):
            n = int(np.sum(d > tol))
            stray += n
            ok = ok and n <= max(1, d.size // 1000)
    return ok, "parameters within %.2e (worst %s), %d elements past %.0e" % (worst_d, worst, stray,
                                                                             tol)
