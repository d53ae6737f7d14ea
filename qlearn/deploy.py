"""Notebook 13: one MobileNet, three ways to int8 -- PyTorch's eager flow, qlearn, ONNX Runtime.

The computations of the deployment lesson (no widgets, no plotting):

* ``torch_eager_ptq``: PyTorch's own post-training flow on a copy of the float model -- a QConfig of
  observers (``HistogramObserver`` for activations, per-channel min/max for weights, as PyTorch's
  default for its engine), ``fuse_modules`` (conv + BN), ``prepare`` (observers in), calibrate,
  ``convert`` (quantized modules). It picks its own ranges, so its integers are not qlearn's.
* ``three_engines``: qlearn's integers on qlearn's engine, on PyTorch's int8 kernels
  (``qlearn.torch_int8.to_torch_int8``) and on ONNX Runtime (``qlearn.onnx_export``), compared code by
  code with ``qlearn.agreement.code_agreement`` (Eq. 69), with the eager flow's accuracy beside them.
* ``requant_rounding`` / ``pool_ties``: where the runtimes round differently -- the float multiplier
  M = S1 S2 / S3 rounded half to even (PyTorch, ONNX Runtime) against the fixed-point M0 2^(shift-31)
  with ties away (qlearn, Eqs. 22-31); the average pool's half-way means (Eq. 35).
* ``exact_export``: the bit-exact road -- ``qlearn.onnx_export`` with ``requant="fixedpoint"`` writes
  qlearn's fixed-point requantization itself in ONNX integer operators (ConvInteger, int64 Mul / Div /
  Where / Sign / Abs), so ONNX Runtime gives qlearn's codes exactly; the QLinear export stays beside it as what
  a deployment tool writes.
* ``artefacts``: every model written to a real file, and its size in bytes.
* ``latencies``: live median latencies at batch 1 and 256, one thread.

The paper deploys on gemmlowp / TensorFlow Lite (Sec. 2.2-2.4, 4); ONNX Runtime and PyTorch are two
other int8 runtimes that read the same kind of integers.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn

from qlearn.agreement import Agreement, code_agreement
from qlearn.convert import quantize_input
from qlearn.fixedpoint import multiply_by_quantized_multiplier
from qlearn.integer import avg_pool, conv2d_accumulator
from qlearn.integer_layers import QConv2d
from qlearn.models import ConvBNReLU, DepthwiseSeparable, InvertedResidual, MobileNet
from qlearn.onnx_export import OnnxInt8Model, compare, save_onnx, to_onnx, to_onnx_runtime
from qlearn.threads import one_thread
from qlearn.timing import measure
from qlearn.torch_int8 import to_torch_int8

__all__ = [
    "EagerConvBNReLU", "eager_copy", "conv_bn_pairs", "TorchEagerPTQ", "torch_eager_ptq", "EngineComparison",
    "three_engines", "requant_rounding", "pool_ties", "exact_export", "artefacts", "latencies", "LayerCodes", "layer_codes",
]


# ---------------------------------------------------------------------------- PyTorch's eager flow
class EagerConvBNReLU(nn.Module):
    """conv -> bn -> ReLU6 as modules: eager mode quantizes modules, not ``torch.clamp`` calls."""

    def __init__(self, block: ConvBNReLU) -> None:
        super().__init__()
        self.conv, self.bn = block.conv, block.bn
        self.act = nn.ReLU6() if block.relu6 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _EagerBlock(nn.Module):
    """A DepthwiseSeparable or InvertedResidual block; the skip add is a ``FloatFunctional`` (its own S, Z)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        convs = [block.dw, block.pw] if isinstance(block, DepthwiseSeparable) else list(block.layers)
        self.layers = nn.Sequential(*[EagerConvBNReLU(b) for b in convs])
        self.use_res = bool(getattr(block, "use_res", False))
        self.skip = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return self.skip.add(x, y) if self.use_res else y


class _EagerMobileNet(nn.Module):
    """QuantStub -> features -> pool -> flatten -> classifier -> DeQuantStub (the same function as the source)."""

    def __init__(self, model: MobileNet) -> None:
        super().__init__()
        src = copy.deepcopy(model)
        blocks = [EagerConvBNReLU(b) if isinstance(b, ConvBNReLU) else _EagerBlock(b) for b in src.features]
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = src.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        return self.dequant(self.classifier(torch.flatten(self.pool(x), 1)))


def eager_copy(model: MobileNet) -> nn.Module:
    """A deep copy of a float qlearn ``MobileNet`` written for PyTorch's eager quantization (same function)."""
    if not isinstance(model, MobileNet):
        raise TypeError(f"model must be a float qlearn MobileNet (run.float_model), got {type(model).__name__}")
    for block in model.features:
        if not isinstance(block, (ConvBNReLU, DepthwiseSeparable, InvertedResidual)):
            raise TypeError(f"eager_copy does not know block type {type(block).__name__}")
    return _EagerMobileNet(model).eval()


def conv_bn_pairs(model: nn.Module) -> list[list[str]]:
    """The [conv, bn] module names of an ``eager_copy``: what ``fuse_modules`` / ``fuse_modules_qat`` fold."""
    return [[f"{name}.conv", f"{name}.bn"] for name, m in model.named_modules() if isinstance(m, EagerConvBNReLU)]


@dataclass(eq=False)
class TorchEagerPTQ:
    """The result of PyTorch's eager post-training flow.

    model      : the converted model (quantized modules; float in, float out), eval mode
    engine     : the quantized engine its weights were packed for ("x86" or "qnnpack")
    qconfig    : {"activation": observer, "weight": observer} as PyTorch prints them
    act_qmax   : the largest activation code its observers allow (127 with reduce_range: 7 bits)
    steps      : the flow's steps in order, for the lesson to print
    """

    model: nn.Module
    engine: str
    qconfig: dict
    act_qmax: int
    steps: list[str]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        old = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            with torch.no_grad():
                return self.model(x)
        finally:
            torch.backends.quantized.engine = old


def torch_eager_ptq(float_model: MobileNet, calib_images: torch.Tensor, *, engine: str = "x86") -> TorchEagerPTQ:
    """PyTorch's eager post-training quantization of a copy of ``float_model`` (``float_model`` is untouched).

    ``tq.get_default_qconfig(engine)``: for "x86" a ``HistogramObserver(reduce_range=True)`` on
    activations -- 7-bit codes [0, 127], so that x86's int16 pair sums cannot saturate (Eq. 75) -- and
    per-channel symmetric int8 weights; for "qnnpack" 8-bit activations and per-tensor weights.
    """
    if engine not in ("x86", "qnnpack"):
        raise ValueError(f"engine must be 'x86' or 'qnnpack', got {engine!r}")
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"this PyTorch build has no {engine!r} engine: {torch.backends.quantized.supported_engines}")
    if not isinstance(calib_images, torch.Tensor) or not torch.is_floating_point(calib_images) or calib_images.ndim != 4:
        raise TypeError("calib_images must be a float tensor (N, C, H, W)")
    model = eager_copy(float_model)
    pairs = conv_bn_pairs(model)
    model = tq.fuse_modules(model, pairs)  # conv + BN -> one conv (Eq. 41); ReLU6 stays a module
    model.qconfig = tq.get_default_qconfig(engine)
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch's deprecation notices for the eager flow
            prepared = tq.prepare(model)
            with torch.no_grad():
                for i in range(0, calib_images.shape[0], 64):
                    prepared(calib_images[i:i + 64])
            converted = tq.convert(prepared).eval()
            act, w = model.qconfig.activation(), model.qconfig.weight()  # fresh observers, to describe them
    finally:
        torch.backends.quantized.engine = old
    qc = {"activation": f"{type(act).__name__}(reduce_range={act.reduce_range}, quant_max={act.quant_max})",
          "weight": f"{type(w).__name__}({w.qscheme}, {w.dtype})"}
    steps = ["copy: QuantStub/DeQuantStub, ReLU6 and skip adds as modules",
             f"fuse_modules: {len(pairs)} conv + BN pairs",
             f"qconfig = get_default_qconfig({engine!r})", "prepare: observers in",
             f"calibrate: {calib_images.shape[0]} images", "convert: quantized modules"]
    return TorchEagerPTQ(converted, engine, qc, int(act.quant_max), steps)


# ----------------------------------------------------------------------------- three engines
@dataclass(frozen=True)
class EngineComparison:
    """qlearn's integers on three engines, and PyTorch's own eager model, on the same test images.

    accuracy   : {engine: top-1 accuracy}
    vs_qlearn  : {engine: Agreement with qlearn's engine on the same uint8 codes (Eq. 69)}
    per_layer  : {engine: [(layer, Agreement of that layer alone, fed qlearn's codes)]}
    torch_engine, torch_engine_reason : what ``to_torch_int8`` chose and why
    eager_top1_vs_qlearn : fraction of images where PyTorch's eager model predicts qlearn's class
    """

    n: int
    accuracy: dict
    vs_qlearn: dict
    per_layer: dict
    torch_engine: str
    torch_engine_reason: str
    eager_top1_vs_qlearn: float


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(a.shape[0], -1)


def three_engines(run: Any, images: torch.Tensor, labels: torch.Tensor, eager: TorchEagerPTQ | None = None,
                  *, onnx_model: Any = None) -> EngineComparison:
    """Run ``run``'s integer model on qlearn, PyTorch int8 and ONNX Runtime (and ``eager``) and compare."""
    im = run.integer_model
    x_q = quantize_input(run.qat8, images)  # (N, C, H, W) uint8: the same codes for every engine
    y = labels.numpy()
    ours = im.layer_outputs(x_q)
    out = ours[im.layers[-1].name]
    ort = onnx_model if onnx_model is not None else to_onnx_runtime(im)
    tm = to_torch_int8(im)
    codes = {"ONNX Runtime": ort.run_codes(x_q), "PyTorch int8": tm.run_codes(x_q)}
    with torch.no_grad():
        float_pred = run.float_model.eval()(images).argmax(1).numpy()
    acc = {"float (PyTorch)": float((float_pred == y).mean()), "qlearn engine": float((out.argmax(1) == y).mean())}
    acc.update({k: float((v.argmax(1) == y).mean()) for k, v in codes.items()})
    eager_top1 = float("nan")
    if eager is not None:
        pred = eager(images).argmax(1).numpy()
        acc["PyTorch eager flow"] = float((pred == y).mean())
        eager_top1 = float((pred == out.argmax(1)).mean())
    per_layer: dict[str, list[tuple[str, Agreement]]] = {"ONNX Runtime": [], "PyTorch int8": []}
    for layer in im.layers:
        xs = [ours[i] for i in layer.inputs]
        want = _flat(ours[layer.name])
        per_layer["ONNX Runtime"].append((layer.name, code_agreement(want, _flat(ort.run_layer(layer.name, *xs)))))
        per_layer["PyTorch int8"].append((layer.name, code_agreement(want, _flat(tm.run_layer(layer.name, *xs)))))
    return EngineComparison(int(x_q.shape[0]), acc, {k: code_agreement(out, v) for k, v in codes.items()},
                            per_layer, tm.engine, tm.engine_reason, eager_top1)


@dataclass(frozen=True, eq=False)
class LayerCodes:
    """One layer's output codes on qlearn's engine and on the two runtimes, (N, ...) int64 each.

    alone[engine]      : the runtime's layer fed qlearn's codes of its inputs (its own rounding only)
    end_to_end[engine] : the runtime's layer fed its own earlier outputs (differences compound)
    """

    index: int
    name: str
    kind: str
    ours: np.ndarray
    alone: dict
    end_to_end: dict


def layer_codes(run: Any, images: torch.Tensor, *, onnx_model: Any = None) -> list[LayerCodes]:
    """Every layer of ``run``'s integer model on qlearn, ONNX Runtime and PyTorch int8 (notebook 13's explorer)."""
    im = run.integer_model
    x_q = quantize_input(run.qat8, images)
    ours = im.layer_outputs(x_q)
    ort = onnx_model if onnx_model is not None else to_onnx_runtime(im)
    tm = to_torch_int8(im)
    runtimes = {"ONNX Runtime": ort, "PyTorch int8": tm}
    chained = {name: {"input": x_q} for name in runtimes}  # each runtime's own outputs, layer after layer
    rows = []
    for i, layer in enumerate(im.layers):
        alone, e2e = {}, {}
        for name, rt in runtimes.items():
            alone[name] = np.asarray(rt.run_layer(layer.name, *(ours[s] for s in layer.inputs))).astype(np.int64)
            own = chained[name]
            own[layer.name] = np.asarray(rt.run_layer(layer.name, *(own[s] for s in layer.inputs)))
            e2e[name] = own[layer.name].astype(np.int64)
        rows.append(LayerCodes(i, layer.name, layer.describe()["kind"], ours[layer.name].astype(np.int64), alone, e2e))
    return rows


# ----------------------------------------------------------------------------- rounding
def requant_rounding(layer: Any, x_q: np.ndarray) -> dict:
    """One conv layer's exact int32 accumulators requantized two ways (Eqs. 21-31).

    fixed : qlearn -- clamp(Z3 + MBQM(acc, M0, shift)), ties away from zero
    float : ONNX Runtime -- clamp(Z3 + round_half_even(float32(acc) float32(M))) (exact for this graph:
            tests/test_onnx_export.py checks it code for code)
    Returns counts: codes, differing codes, max difference, and the accumulators whose float product
    acc M lies within 0.01 of a half-way point (where the two roundings can part).
    """
    if not isinstance(layer, QConv2d):
        raise TypeError(f"layer must be a QConv2d, got {type(layer).__name__}")
    acc = conv2d_accumulator(x_q, layer.in_zp, layer.w_q, layer.bias_q, stride=layer.stride,
                             padding=layer.padding, groups=layer.groups)  # (N, Cout, Ho, Wo) int32 values
    m0 = np.asarray(layer.m0, dtype=np.int64).reshape(1, -1, 1, 1)
    sh = np.asarray(layer.shift, dtype=np.int64).reshape(1, -1, 1, 1)
    fixed = np.clip(multiply_by_quantized_multiplier(acc, m0, sh) + layer.out_zp, layer.act_min, layer.act_max)
    ws = np.broadcast_to(np.asarray(layer.w_scale, np.float32), (acc.shape[1],))
    m32 = (np.float32(layer.in_scale) * ws / np.float32(layer.out_scale)).astype(np.float32).reshape(1, -1, 1, 1)
    prod = acc.astype(np.float32) * m32  # float32, as the runtime computes it
    flt = np.clip(np.rint(prod).astype(np.int64) + layer.out_zp, layer.act_min, layer.act_max)
    frac = np.abs(np.abs(prod.astype(np.float64) - np.floor(prod)) - 0.5)
    diff = np.abs(fixed.astype(np.int64) - flt)
    return {"codes": int(acc.size), "differ": int(np.count_nonzero(diff)), "max_diff": int(diff.max()),
            "near_half": int(np.count_nonzero(frac < 0.01)),
            "differ_near_half": int(np.count_nonzero((diff > 0) & (frac < 0.01)))}


def pool_ties(x_q: np.ndarray) -> dict:
    """Global average pool of (N, C, H, W) uint8 codes: how many means are exact halves (k + 1/2), and
    what Eq. 35 (qlearn, ties away from zero) and round-half-to-even give there."""
    x = np.asarray(x_q)
    hw = x.shape[2] * x.shape[3]
    total = x.astype(np.int64).sum(axis=(2, 3))  # (N, C)
    tie = (2 * total) % hw == 0
    tie &= (total % hw) != 0  # k + 1/2, not an integer mean
    away = avg_pool(x)
    even = np.rint(total / hw).astype(np.int64)  # numpy rounds half to even
    return {"means": int(total.size), "ties": int(tie.sum()), "hw": int(hw),
            "differ": int(np.count_nonzero(away.astype(np.int64) != even))}


def exact_export(run: Any, images: torch.Tensor, *, onnx_model: Any = None) -> dict:
    """``run``'s integer model exported with ``requant="fixedpoint"`` and compared with qlearn's engine.

    Returns {"runtime": the OnnxInt8Model, "ops": {operator: count} of its graph, "end_to_end":
    Agreement of the output codes (Eq. 69), "per_layer": [(layer, Agreement of that layer
    alone, fed qlearn's codes)]}. ``onnx_model``: an already built fixed-point runtime to reuse.
    """
    if onnx_model is not None and (not isinstance(onnx_model, OnnxInt8Model) or onnx_model.requant != "fixedpoint"):
        raise ValueError("onnx_model must be an OnnxInt8Model built with requant='fixedpoint'")
    rt = onnx_model if onnx_model is not None else to_onnx_runtime(run.integer_model, requant="fixedpoint")
    x_q = quantize_input(run.qat8, images)  # (N, C, H, W) uint8
    out, rows = compare(run.integer_model, rt, x_q)
    ops: dict[str, int] = {}
    for node in rt.proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"runtime": rt, "ops": ops, "end_to_end": out, "per_layer": [(r.name, r.alone) for r in rows]}


# ----------------------------------------------------------------------------- files and times
def artefacts(run: Any, eager: TorchEagerPTQ, folder: str | Path) -> dict[str, dict]:
    """Write each model to ``folder`` and return {name: {"path", "bytes", "what"}} (sizes measured from the files).

    float state_dict (torch.save), PyTorch eager int8 state_dict, qlearn's 8-bit QAT checkpoint (the
    run's qat8.pt: float fake-quant weights and ranges), qlearn's integers (np.savez of every layer's
    arrays) and the ONNX models (``qlearn.onnx_export``, uint8 weights: QLinear and fixed point).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}

    def record(name: str, path: Path, what: str) -> None:
        out[name] = {"path": str(path), "bytes": path.stat().st_size, "what": what}

    torch.save(run.float_model.state_dict(), folder / "float.pt")
    record("float (PyTorch state_dict)", folder / "float.pt", "float32 weights and BN statistics")
    torch.save(eager.model.state_dict(), folder / "torch_eager_int8.pt")
    record("PyTorch eager int8 (state_dict)", folder / "torch_eager_int8.pt", "packed int8 weights, float biases, scales")
    record("qlearn QAT checkpoint", Path(run.directory) / "qat8.pt", "float weights + fake-quant ranges (training state)")
    arrays = {}
    for layer in run.integer_model.layers:
        for key in ("w_q", "bias_q", "m0", "shift"):
            if hasattr(layer, key):
                arrays[f"{layer.name}.{key}"] = np.asarray(getattr(layer, key))
    np.savez(folder / "qlearn_integers.npz", **arrays)
    record("qlearn integers (npz)", folder / "qlearn_integers.npz", "int8 weights, int32 biases, M0, shift")
    save_onnx(to_onnx(run.integer_model), folder / "qlearn_mobilenet.onnx")
    record("ONNX (qlearn.onnx_export)", folder / "qlearn_mobilenet.onnx", "uint8 weights, int32 biases, scales, graph")
    save_onnx(to_onnx(run.integer_model, requant="fixedpoint"), folder / "qlearn_mobilenet_fixedpoint.onnx")
    record("ONNX fixed point (bit-exact)", folder / "qlearn_mobilenet_fixedpoint.onnx",
           "uint8 weights, int32 biases, int64 M0 / shift constants, integer graph")
    return out


def latencies(fns: dict[str, Any], *, repeats: int = 20) -> dict[str, float]:
    """{name: median ms} of each zero-argument callable, on one thread (``qlearn.threads.one_thread``),
    timed by ``qlearn.timing.measure``."""
    with one_thread():
        return {name: measure(fn, repeats=repeats, warmup=2).median_ms for name, fn in fns.items()}
