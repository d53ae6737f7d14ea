"""Latency vs accuracy: the paper's Figure 4.1 (float vs 8-bit MobileNets) on this CPU.

For every (width, input size) of MobileNet v1 on the digits data:

1. train the float model (seeded), measure its accuracy and its batch-1 latency in PyTorch float
   (eval, BN folded);
2. quantization-aware training from it with qlearn (8-bit, per-channel, BN frozen half-way),
   ``qlearn.convert.convert`` -> the integer model;
3. deploy those integers on PyTorch's quantized x86 engine (``qlearn.latency.to_torch_int8``):
   its accuracy and batch-1 latency are the 8-bit point;
4. check the deployment against qlearn's integer engine on the same uint8 input codes: top-1
   agreement and the fraction of identical output codes (and the same per layer, each layer fed
   qlearn's own input codes, which separates one layer's rounding from the compounding).

Latencies are medians over repeated single-image calls on one thread (as the paper's single big
core), float and int8 timed in alternating rounds of the same run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qlearn.bn_fold import fuse_model
from qlearn.convert import convert, quantize_input
from qlearn.data import load_digits_data
from benchmarks.common import interleaved_latency
from qlearn.latency import code_agreement, to_torch_int8
from qlearn.models import MODELS
from qlearn.qat import QATConfig, prepare_qat
from qlearn.train import TrainConfig, evaluate, seed_everything, train

FULL = {"arch": "mobilenet_v1", "widths": (0.25, 0.5, 1.0), "sizes": (16, 24, 32), "float_epochs": 12,
        "qat_epochs": 2, "repeats": 100}
QUICK = {"arch": "mobilenet_v1", "widths": (0.25, 0.5), "sizes": (12,), "float_epochs": 2, "qat_epochs": 1,
         "repeats": 10, "n_train": 384, "n_test": 128}


def per_layer_agreement(integer_model: Any, torch_model: Any, x_q: np.ndarray) -> dict[str, float]:
    """Fraction of identical codes per layer, each PyTorch layer fed qlearn's codes of its inputs."""
    ours = integer_model.layer_outputs(x_q)
    return {layer.name: float((torch_model.run_layer(layer.name, *(ours[i] for i in layer.inputs)) == ours[layer.name]).mean())
            for layer in integer_model.layers}


def one_point(arch: str, width: float, size: int, s: dict, seed: int) -> dict:
    data = load_digits_data(size, seed=seed).subset(s.get("n_train"), s.get("n_test"))
    t0 = time.perf_counter()
    seed_everything(seed)
    model = MODELS[arch](data.num_classes, width=width, input_size=size, in_channels=data.in_channels)
    train(model, data.x_train, data.y_train, TrainConfig(epochs=s["float_epochs"], seed=seed), progress=False)
    model.eval()
    float_acc = evaluate(model, data.x_test, data.y_test)
    steps = s["qat_epochs"] * -(-int(data.x_train.shape[0]) // 64)
    qat = prepare_qat(model, QATConfig(weight_bits=8, per_channel=True, ema_decay=0.99,
                                       freeze_bn_step=max(1, steps // 2)))
    train(qat, data.x_train, data.y_train, TrainConfig(epochs=s["qat_epochs"], lr=1e-3, schedule="cosine",
                                                       weight_decay=0.0, seed=seed + 8), progress=False)
    qat.eval()
    train_seconds = time.perf_counter() - t0
    qat_acc = evaluate(qat, data.x_test, data.y_test)
    integer_model = convert(qat)
    deployed = to_torch_int8(integer_model, "x86")
    fused = fuse_model(model).eval()

    x_q = quantize_input(qat, data.x_test)
    codes_qlearn = integer_model.run(x_q)
    codes_torch = deployed.run_codes(x_q)
    agree = code_agreement(codes_qlearn, codes_torch)
    layer_exact = per_layer_agreement(integer_model, to_torch_int8(integer_model, "x86"), x_q[:64])
    with torch.no_grad():
        int8_acc = float((deployed(data.x_test).argmax(1) == data.y_test).double().mean())
        x1 = data.x_test[:1].contiguous()
        # a fresh int8 model whose first call is batch 1: PyTorch's oneDNN kernels keep the primitive
        # of their first call and rebuild it on every call of another shape (qlearn.latency)
        timed = to_torch_int8(integer_model, "x86")
        lat = interleaved_latency({"float": lambda: fused(x1), "int8": lambda: timed(x1)},
                                  repeats=s["repeats"], rounds=5, warmup=3)
    f_ms, q_ms = lat["float"]["median_ms"], lat["int8"]["median_ms"]
    return {
        "arch": arch, "width": width, "input_size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "float_acc": float_acc, "qat_fake_quant_acc": qat_acc,
        "int8_acc": int8_acc, "qlearn_integer_acc": float((codes_qlearn.argmax(1) == data.y_test.numpy()).mean()),
        "float_ms": f_ms, "int8_ms": q_ms, "speedup": f_ms / q_ms,
        "float_p95_ms": lat["float"]["p95_ms"], "int8_p95_ms": lat["int8"]["p95_ms"],
        "agreement_vs_qlearn": agree.to_dict(),
        "per_layer_exact_min": min(layer_exact.values()),
        "per_layer_exact_mean": float(np.mean(list(layer_exact.values()))),
        "train_seconds": round(train_seconds, 2),
    }


def run(*, quick: bool, seed: int = 0) -> dict:
    s = QUICK if quick else FULL
    points = []
    grid = [(w, n) for n in s["sizes"] for w in s["widths"]]
    for w, n in tqdm(grid, desc="latency vs accuracy", leave=False):
        points.append(one_point(s["arch"], w, n, s, seed))
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    return {"settings": settings, "engine": "x86", "threads": torch.get_num_threads(), "points": points}


def plot(result: dict, path: Path) -> Path:
    """Draw ``result`` with ``qlearn.latency.plot_latency_accuracy`` into ``path`` (the paper's Figure 4.1)."""
    from qlearn.latency import plot_latency_accuracy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_latency_accuracy(result).savefig(path)
    return path
