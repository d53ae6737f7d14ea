"""Integer engine: images per second of the same trained network run three (four) ways, same run, same input.

* ``qlearn integer``  qlearn.integer_model.IntegerModel (from qlearn.convert.convert): readable numpy, integer
                      arithmetic only; float in -> quantize -> integer layers -> dequantize
* ``torch float``     the float MobileNet in eval mode with BN folded into the convs (qlearn.bn_fold)
* ``torch int8``      the same integers on PyTorch's int8 kernels (qlearn.torch_int8.to_torch_int8, engine "auto":
                      qnnpack for full-range 8-bit integers, exact on every CPU; x86 when no int16 pair can
                      saturate); the engine and the reason are recorded per model
* ``torch int8 (own QAT)``  PyTorch's eager-mode QAT model of the same float network, converted

at batch 1 (latency) and batch 256 (throughput), each int8 model built fresh for its batch size (see
qlearn.torch_int8 on PyTorch's first-call primitive cache). The PyTorch contenders are timed in alternating rounds;
ratios are against ``torch float`` measured in the same run. The per-layer comparison of
benchmarks/bench_integer.py is included for the kernels.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks import bench_integer
from qlearn.bn_fold import fuse_model
from qlearn.timing import interleaved
from qlearn.torch_int8 import to_torch_int8


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // x.shape[0])
    return x.repeat(reps, 1, 1, 1)[:n].contiguous()


def bench_model(arts: dict, batches: tuple[int, ...], quick: bool) -> dict:
    fused = fuse_model(arts["float"]).eval()
    integer_model = arts["integer"]
    x_test = arts["data"].x_test
    out: dict[str, Any] = {}
    for n in batches:
        x = _batch(x_test, n)
        # Fresh int8 models for every batch size, first called with it: PyTorch's oneDNN int8 kernels
        # keep the primitive built on their first call and rebuild it on every call of another shape.
        deployed = to_torch_int8(integer_model, "auto")
        out["engine"], out["engine_reason"] = deployed.engine, deployed.engine_reason
        contenders = {
            "qlearn integer": lambda x: integer_model(x.numpy()),
            "torch float": fused,
            "torch int8": deployed,
            "torch int8 (own QAT)": copy.deepcopy(arts["torch_int8"]),
        }
        fast = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in contenders.items() if name != "qlearn integer"}
        reps = 3 if quick else (60 if n == 1 else 12)
        with torch.no_grad():
            row = {name: t.to_dict() for name, t in interleaved(fast, repeats=reps, rounds=3, warmup=1).items()}
            # the numpy engine is 10-100x slower: fewer calls, timed right after the others
            slow = interleaved({"qlearn integer": lambda x=x: integer_model(x.numpy())},
                               repeats=2 if quick else (20 if n == 1 else 3), rounds=1, warmup=1)
            row.update({name: t.to_dict() for name, t in slow.items()})
        base = row["torch float"]["median_ms"]
        for name in contenders:
            row[name]["images_per_s"] = 1000.0 * n / row[name]["median_ms"]
            row[name]["speedup_vs_torch_float"] = base / row[name]["median_ms"]
        out[f"batch_{n}"] = row
    return out


def run(artifacts: dict[str, dict], *, quick: bool, seed: int = 0) -> dict:
    batches = (1, 16) if quick else (1, 256)
    torch.backends.quantized.engine = "x86"
    results: dict[str, Any] = {"batches": list(batches), "models": {}, "deployment": {}}
    for name in tqdm(list(artifacts), desc="integer engine", leave=False):
        rows = bench_model(artifacts[name], batches, quick)
        results["deployment"][name] = {"engine": rows.pop("engine"), "reason": rows.pop("engine_reason")}
        results["models"][name] = rows
        results.setdefault("configs", {})[name] = dict(artifacts[name]["float"].config)
    rng = np.random.default_rng(seed)
    layers = []
    for name, n, cin, cout, h, k, stride, groups in tqdm(bench_integer.SHAPES, desc="layers", leave=False):
        layers.append(bench_integer.bench_shape(name, 1 if quick else n, cin, cout, h, k, stride, groups,
                                                2 if quick else 10, rng))
    results["layers"] = layers
    return results
