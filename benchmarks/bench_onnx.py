"""Latency vs accuracy on three runtimes: ONNX Runtime int8, PyTorch int8 and PyTorch float, one thread.

The same integers everywhere: the shipped quick run's 8-bit QAT MobileNet v2 (``pipeline_run()``,
identical on every machine) is converted by ``qlearn.convert.convert``, then

* exported with ``qlearn.onnx_export`` (uint8 weights: ONNX Runtime's exact U8U8 kernels; the exact
  integer pool) and run in an ONNX Runtime session with one intra-op thread -- twice: the QLinear graph
  ("onnxruntime_int8") and the bit-exact fixed-point graph (``requant="fixedpoint"``,
  "onnxruntime_int8_fixedpoint": ConvInteger + qlearn's MBQM in int64 operators);
* handed to PyTorch's int8 kernels by ``qlearn.torch_int8.to_torch_int8`` (engine "auto"; its choice and
  reason are recorded);
* against the BN-fused float model in PyTorch.

Accuracy and agreement with qlearn's integer engine (``code_agreement`` on the same uint8 codes)
come from the whole digits test split. Latency is the median of interleaved rounds at batch 1 and
batch 256 (``qlearn.timing.interleaved``); each int8 model is built fresh for its
batch size and first called with it (PyTorch's oneDNN keeps the kernel of its first call's shape).
The full run adds untrained, calibrated MobileNet v1 models of larger widths and inputs, for timing
only (their accuracy means nothing and is not recorded).

    python -c "from benchmarks import bench_onnx; print(bench_onnx.run(quick=True))"
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qlearn.agreement import code_agreement
from qlearn.timing import interleaved

QUICK = {"batches": (1, 256), "repeats": 10, "extra": ()}
FULL = {"batches": (1, 256), "repeats": 60, "extra": (("mobilenet_v1", 1.0, 32), ("mobilenet_v2", 1.0, 32))}


def _timings(integer_model: Any, float_model: Any, x: torch.Tensor, x_q: np.ndarray, batch: int,
             repeats: int) -> dict:
    """Median/p95 ms of the three runtimes on the first ``batch`` images (tiled when there are fewer)."""
    from qlearn.onnx_export import to_onnx_runtime
    from qlearn.torch_int8 import to_torch_int8

    reps = -(-batch // x.shape[0])
    xb = x.repeat(reps, 1, 1, 1)[:batch].contiguous()  # (batch, C, H, W) float32
    xqb = np.ascontiguousarray(np.concatenate([x_q] * reps)[:batch])  # (batch, C, H, W) uint8
    onnx_rt = to_onnx_runtime(integer_model, threads=1)
    onnx_fx = to_onnx_runtime(integer_model, threads=1, requant="fixedpoint")
    torch_rt = to_torch_int8(integer_model)
    with torch.no_grad():
        torch_rt(xb)  # the first call fixes oneDNN's primitive to this shape
        fns = {"onnxruntime_int8": lambda: onnx_rt.run_codes(xqb),
               "onnxruntime_int8_fixedpoint": lambda: onnx_fx.run_codes(xqb),
               "torch_int8": lambda: torch_rt(xb),
               "torch_float": lambda: float_model(xb)}
        lat = interleaved(fns, repeats=max(3, repeats if batch == 1 else repeats // 5), rounds=5, warmup=2)
    return {"engine_torch": torch_rt.engine, **{name: t.to_dict() for name, t in lat.items()}}


def _point(name: str, integer_model: Any, float_model: Any, x: torch.Tensor, x_q: np.ndarray, s: dict,
           labels: np.ndarray | None) -> dict:
    from qlearn.onnx_export import to_onnx_runtime
    from qlearn.torch_int8 import to_torch_int8

    ours = integer_model.run(x_q)
    onnx_codes = to_onnx_runtime(integer_model).run_codes(x_q)
    fx_codes = to_onnx_runtime(integer_model, requant="fixedpoint").run_codes(x_q)
    torch_rt = to_torch_int8(integer_model)
    torch_codes = torch_rt.run_codes(x_q)
    point: dict[str, Any] = {
        "model": name, "torch_engine": torch_rt.engine, "torch_engine_reason": torch_rt.engine_reason,
        "agreement_onnx_vs_qlearn": code_agreement(ours, onnx_codes).to_dict(),
        "agreement_onnx_fixedpoint_vs_qlearn": code_agreement(ours, fx_codes).to_dict(),
        "agreement_torch_vs_qlearn": code_agreement(ours, torch_codes).to_dict(),
        "agreement_onnx_vs_torch": code_agreement(torch_codes, onnx_codes).to_dict(),
    }
    if labels is not None:
        with torch.no_grad():
            float_pred = float_model(x).argmax(1).numpy()
        point["accuracy"] = {
            "float": float((float_pred == labels).mean()),
            "qlearn_integer": float((ours.argmax(1) == labels).mean()),
            "onnxruntime_int8": float((onnx_codes.argmax(1) == labels).mean()),
            "onnxruntime_int8_fixedpoint": float((fx_codes.argmax(1) == labels).mean()),
            "torch_int8": float((torch_codes.argmax(1) == labels).mean()),
        }
    point["latency"] = {str(b): _timings(integer_model, float_model, x, x_q, b, s["repeats"]) for b in s["batches"]}
    point["speedup_onnx_vs_float"] = {b: v["torch_float"]["median_ms"] / v["onnxruntime_int8"]["median_ms"]
                                      for b, v in point["latency"].items()}
    point["cost_fixedpoint_vs_qlinear"] = {b: v["onnxruntime_int8_fixedpoint"]["median_ms"]
                                           / v["onnxruntime_int8"]["median_ms"] for b, v in point["latency"].items()}
    point["speedup_onnx_vs_torch_int8"] = {b: v["torch_int8"]["median_ms"] / v["onnxruntime_int8"]["median_ms"]
                                           for b, v in point["latency"].items()}
    return point


def _calibrated(arch: str, width: float, size: int) -> tuple[Any, Any, torch.Tensor, np.ndarray]:
    """An untrained MobileNet calibrated on random images: for timing only."""
    from qlearn.bn_fold import fuse_model
    from qlearn.convert import convert, quantize_input
    from qlearn.models import MODELS
    from qlearn.ptq import post_training_quantize
    from qlearn.train import seed_everything

    seed_everything(0)
    model = MODELS[arch](10, width=width, input_size=size, in_channels=1).eval()
    x = torch.rand(64, 1, size, size)
    qat = post_training_quantize(model, x, num_batches=1)
    return convert(qat), fuse_model(model).eval(), x, quantize_input(qat, x)


def run(*, quick: bool, seed: int = 0) -> dict:
    """{"settings", "threads", "onnxruntime", "points": [...]}; one thread for all three runtimes."""
    import onnxruntime

    from qlearn.bn_fold import fuse_model
    from qlearn.convert import quantize_input
    from qlearn.data import load_digits_data
    from qlearn.lessons.mobilenet_pipeline import pipeline_run
    from qlearn.threads import one_thread

    s = QUICK if quick else FULL
    points = []
    with one_thread():
        run_ = pipeline_run(progress=False)
        data = load_digits_data(run_.report["config"]["input_size"], seed=seed)
        x = data.x_test.contiguous()
        points.append(_point("shipped quick run: mobilenet_v2 x0.25, 16x16 digits", run_.integer_model,
                             fuse_model(run_.float_model).eval(), x, quantize_input(run_.qat8, x), s,
                             data.y_test.numpy()))
        for arch, width, size in s["extra"]:
            im, fm, xr, xq = _calibrated(arch, width, size)
            points.append(_point(f"{arch} x{width}, {size}x{size} (untrained, calibrated: timing only)",
                                 im, fm, xr, xq, s, None))
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    return {"settings": settings, "threads": 1, "onnxruntime": onnxruntime.__version__, "points": points}
