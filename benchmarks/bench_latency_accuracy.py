"""Latency vs accuracy: the paper's Figure 4.1 (float vs 8-bit MobileNets) on this CPU.

For every (width, input size) of MobileNet v1 on the digits data:

1. train the float model (seeded), measure its accuracy and its batch-1 latency in PyTorch float
   (eval, BN folded);
2. quantization-aware training from it with qlearn (8-bit, per-channel, BN frozen half-way),
   ``qlearn.convert.convert`` -> the integer model;
3. deploy those integers on PyTorch's int8 kernels (``qlearn.torch_int8.to_torch_int8``, engine "auto":
   qnnpack for full-range 8-bit integers, exact on every CPU; x86 when no int16 pair sum can saturate):
   its accuracy and batch-1 latency are the 8-bit point, recorded with the engine and the reason;
4. check the deployment against qlearn's integer engine on the same uint8 input codes: top-1
   agreement and the fraction of identical output codes (and the same per layer, each layer fed
   qlearn's own input codes, which separates one layer's rounding from the compounding).

Latencies are medians over repeated single-image calls on one thread (as the paper's single big
core), float and int8 timed in alternating rounds of the same run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qlearn.agreement import code_agreement
from qlearn.bn_fold import fuse_model
from qlearn.convert import convert, quantize_input
from qlearn.data import load_digits_data
from qlearn.models import MODELS
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig
from qlearn.timing import interleaved
from qlearn.torch_int8 import to_torch_int8
from qlearn.train import TrainConfig, evaluate, seed_everything, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]

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
    deployed = to_torch_int8(integer_model, "auto")
    fused = fuse_model(model).eval()

    x_q = quantize_input(qat, data.x_test)
    codes_qlearn = integer_model.run(x_q)
    codes_torch = deployed.run_codes(x_q)
    agree = code_agreement(codes_qlearn, codes_torch)
    layer_exact = per_layer_agreement(integer_model, to_torch_int8(integer_model, deployed.engine), x_q[:64])
    with torch.no_grad():
        int8_acc = float((deployed(data.x_test).argmax(1) == data.y_test).double().mean())
        x1 = data.x_test[:1].contiguous()
        # a fresh int8 model whose first call is batch 1: PyTorch's oneDNN kernels keep the primitive
        # of their first call and rebuild it on every call of another shape (qlearn.torch_int8)
        timed = to_torch_int8(integer_model, deployed.engine)
        fns = {"float": lambda: fused(x1), "int8": lambda: timed(x1)}
        ort = _onnx_runtime(integer_model)  # the same integers on ONNX Runtime, where it is installed
        if ort is not None:
            x1_q = x_q[:1]
            fns["onnx"] = lambda: ort.run_codes(x1_q)
        lat = {name: t.to_dict() for name, t in interleaved(fns, repeats=s["repeats"], rounds=5, warmup=3).items()}
    f_ms, q_ms = lat["float"]["median_ms"], lat["int8"]["median_ms"]
    onnx = {}
    if ort is not None:
        codes_onnx = ort.run_codes(x_q)
        onnx = {"onnx_ms": lat["onnx"]["median_ms"],
                "onnx_acc": float((codes_onnx.argmax(1) == data.y_test.numpy()).mean()),
                "onnx_agreement_vs_qlearn": code_agreement(codes_qlearn, codes_onnx).to_dict()}
    return {
        "arch": arch, "width": width, "input_size": size,
        "engine": deployed.engine, "engine_reason": deployed.engine_reason,
        "parameters": sum(p.numel() for p in model.parameters()),
        "float_acc": float_acc, "qat_fake_quant_acc": qat_acc,
        "int8_acc": int8_acc, "qlearn_integer_acc": float((codes_qlearn.argmax(1) == data.y_test.numpy()).mean()),
        "float_ms": f_ms, "int8_ms": q_ms, "speedup": f_ms / q_ms,
        "float_p95_ms": lat["float"]["p95_ms"], "int8_p95_ms": lat["int8"]["p95_ms"],
        "agreement_vs_qlearn": agree.to_dict(),
        "per_layer_exact_min": min(layer_exact.values()),
        "per_layer_exact_mean": float(np.mean(list(layer_exact.values()))),
        "train_seconds": round(train_seconds, 2),
        **onnx,
    }


def _onnx_runtime(integer_model):  # type: ignore[no-untyped-def]
    """qlearn's integers on ONNX Runtime (one thread), or None where onnx/onnxruntime are not installed."""
    try:
        from qlearn.onnx_export import to_onnx_runtime

        return to_onnx_runtime(integer_model, threads=1)
    except ImportError:
        return None


def run(*, quick: bool, seed: int = 0) -> dict:
    s = QUICK if quick else FULL
    points = []
    grid = [(w, n) for n in s["sizes"] for w in s["widths"]]
    for w, n in tqdm(grid, desc="latency vs accuracy", leave=False):
        points.append(one_point(s["arch"], w, n, s, seed))
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    engines = sorted({p["engine"] for p in points})
    return {"settings": settings, "engine": "/".join(engines), "threads": torch.get_num_threads(), "points": points}


def plot_latency_accuracy(result: dict) -> Figure:
    """Two curves, float and 8-bit: accuracy (%) against batch-1 latency (ms), like the paper's Figure 4.1.

    ``result`` is what ``run`` measures: ``{"threads": int, "points":
    [{"arch", "width", "input_size", "float_ms", "int8_ms", "float_acc", "int8_acc"}, ...]}`` (accuracies
    in [0, 1]); ``python -m benchmarks.bench_latency_accuracy --redraw`` redraws it from the numbers recorded in
    ``benchmarks/results.json``, so the figure is reproducible without re-timing anything.
    Every model is a marker; each curve joins the models that no faster model of its kind beats in
    accuracy (the latency-accuracy trade-off). Dotted grey: a float model and its 8-bit version.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(result, dict) or not result.get("points"):
        raise ValueError("result must be a dict with a non-empty 'points' list (see benchmarks/bench_latency_accuracy.py)")

    fig = Figure(figsize=(7.0, 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = result["points"]
    curves = [("float_ms", "float_acc", "float (PyTorch, BN folded)", "o-"),
              ("int8_ms", "int8_acc", f"8-bit (qlearn QAT -> PyTorch {result.get('engine', 'x86')} int8)", "s-")]
    if all("onnx_ms" in p for p in pts):
        curves.append(("onnx_ms", "onnx_acc", "8-bit (the same integers -> ONNX Runtime)", "^-"))
    for key_ms, key_acc, label, style in curves:
        order = sorted(pts, key=lambda p: p[key_ms])
        front, best = [], -1.0  # the trade-off curve: points no faster model beats in accuracy
        for p in order:
            if p[key_acc] > best:
                front.append(p)
                best = p[key_acc]
        line = ax.plot([p[key_ms] for p in front], [100 * p[key_acc] for p in front], style, label=label)[0]
        ax.plot([p[key_ms] for p in order], [100 * p[key_acc] for p in order], style[0], color=line.get_color(),
                mfc="none", alpha=0.7)
    for p in pts:
        ax.annotate(f"{p['width']:g}x{p['input_size']}", (p["int8_ms"], 100 * p["int8_acc"]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
        ax.plot([p["float_ms"], p["int8_ms"]], [100 * p["float_acc"], 100 * p["int8_acc"]], color="gray", lw=0.6, ls=":")
    ax.set_xlabel(f"latency, batch 1, {result['threads']} thread(s) (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{pts[0]['arch']} on digits: latency vs accuracy (labels: width x input size)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot(result: dict, path: Path) -> Path:
    """Draw ``result`` with ``plot_latency_accuracy`` into ``path`` (the paper's Figure 4.1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_latency_accuracy(result).savefig(path)
    return path


def redraw(results: Path = ROOT / "benchmarks" / "results.json",
           path: Path = ROOT / "figures" / "latency_vs_accuracy.png") -> Path:
    """The committed figure, redrawn from the committed numbers (timings are not measured again)."""
    try:
        section = json.loads(Path(results).read_text())["sections"]["latency"]["result"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{results} has no latency results ({exc}); run `python -m benchmarks --record`") from exc
    return plot(section, path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_latency_accuracy",
                                     description="Redraw figures/latency_vs_accuracy.png from benchmarks/results.json.")
    parser.add_argument("--redraw", action="store_true", required=True)
    parser.parse_args()
    print(f"wrote {redraw()}")
