"""Deployment and latency: run qlearn's integer model on PyTorch's int8 CPU kernels, and time it.

The paper's speed claim (Sec. 4, Figure 4.1) is about a real integer runtime, not about readable
numpy. ``qlearn.integer`` shows *what* the integer-only model computes; this module hands the very
same integers -- int8 weights, int32 biases, scales and zero points that qlearn's QAT produced and
``qlearn.convert.convert`` wrote down -- to PyTorch's quantized x86 engine (fbgemm / oneDNN kernels
with AVX2 / AVX-512 VNNI), so that latency and accuracy can be measured on a real int8 runtime:

    IntegerModel layer          PyTorch quantized module (torch.ao.nn.quantized, x86 engine)
    QConv2d  (clamp at Z)       ConvReLU2d     int8 weights per channel, bias = bias_q S_in S_w
    QConv2d  (no clamp)         Conv2d
    QAdd                        QFunctional.add with the output (S, Z)
    QGlobalAvgPool              adaptive_avg_pool2d (keeps the input's S, Z), flatten
    QLinear                     Linear         int8 weights per channel

PyTorch requantizes with a float multiplier where qlearn uses the fixed-point (M0, shift) of
Eqs. 22-31, and its x86 kernels add uint8 x int8 products pairwise in int16 with saturation
(AVX2 ``vpmaddubsw``) -- which is why PyTorch's own observers default to 7-bit activations
(``reduce_range=True``). Outputs therefore agree with qlearn's engine code for code most of the
time, not always; ``agreement`` measures how often (Eq. 69).

One property of the x86 engine matters for timing: on CPUs with VNNI its convolutions run on oneDNN,
whose quantized conv builds its kernel ("primitive") on the *first* call and keeps it only for that
call's input shape, scales and thread count (PyTorch ``PackedConvWeightsOnednn``: "Primitive cache
is initialized when called for the first time and won't be updated afterwards"). Every call with
another shape builds the primitive again -- measured here, a batch-1 call of a small MobileNet went
from 0.5 ms to 1.1-1.5 ms after the model's first call had been a batch of 64. So build one
``TorchInt8Model`` per input shape (``to_torch_int8`` is cheap) and make its first call that shape.

This is deployment glue, so (unlike the rest of qlearn) it uses ``torch.ao.nn.quantized``.
"""
from __future__ import annotations

import numbers
import time
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

from qlearn.integer import IntegerModel, QAdd, QConv2d, QGlobalAvgPool, QLinear, QRequantize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "TorchInt8Model", "to_torch_int8", "Latency", "measure_latency", "code_agreement", "CodeAgreement",
    "plot_latency_accuracy",
]


def _use_engine(engine: str) -> None:
    if not isinstance(engine, str):
        raise TypeError(f"engine must be a string such as 'x86', got {type(engine).__name__}")
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"this PyTorch build has no quantized engine {engine!r}; it has "
            f"{torch.backends.quantized.supported_engines}"
        )
    torch.backends.quantized.engine = engine


def _qweight(w_q: np.ndarray, w_scale: Any) -> torch.Tensor:
    """int8 weights (Cout, ...) and scale (scalar or (Cout,)) -> a qint8 torch tensor, zero point 0.

    Built with the public ``quantize_per_channel`` from w_q * S_w: dividing by S_w again lands within
    float error of the integer, so rounding gives w_q back exactly (checked).
    """
    w_int = torch.from_numpy(np.ascontiguousarray(w_q, dtype=np.int8))
    scale = np.broadcast_to(np.asarray(w_scale, dtype=np.float64), (w_int.shape[0],)).copy()  # (Cout,) float64
    real = w_int.double() * torch.from_numpy(scale).reshape(-1, *([1] * (w_int.ndim - 1)))
    q = torch.quantize_per_channel(real.float(), torch.from_numpy(scale), torch.zeros(len(scale), dtype=torch.long),
                                   0, torch.qint8)
    if not torch.equal(q.int_repr(), w_int):
        raise ValueError("the int8 weights did not survive the hand-over to PyTorch (a scale below float32 range?)")
    return q


def _float_bias(bias_q: np.ndarray, in_scale: float, w_scale: Any) -> torch.Tensor:
    """int32 bias on the grid S_in S_w (Eq. 65) as the float bias PyTorch's modules take (it re-rounds it)."""
    s = np.asarray(in_scale, dtype=np.float64) * np.asarray(w_scale, dtype=np.float64)
    return torch.from_numpy((np.asarray(bias_q, dtype=np.float64) * s).astype(np.float32))


def _needs_clamp(act_min: int, act_max: int, qmin: int, qmax: int) -> bool:
    return act_min > qmin or act_max < qmax


class _Clamp(nn.Module):
    """Clamp a quantized tensor to the codes [act_min, act_max] (exact: the bounds are grid points)."""

    def __init__(self, act_min: int, act_max: int, scale: float, zero_point: int) -> None:
        super().__init__()
        self.lo = float(scale * (act_min - zero_point))
        self.hi = float(scale * (act_max - zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lo, self.hi)


class TorchInt8Model(nn.Module):
    """An ``IntegerModel`` rebuilt from PyTorch quantized modules; runs on the chosen quantized engine.

    ``forward(x)``   float images (N, C, H, W) in the input's range -> quantize -> int8 graph ->
                     dequantized float32 logits (N, classes): what a deployed model does.
    ``run_codes(x_q)`` uint8 codes (N, C, H, W) -> uint8 output codes (N, classes), to compare with
                     ``IntegerModel.run`` on identical integers.
    ``run_layer(name, *codes)`` one layer on given input codes (per-layer agreement).
    """

    def __init__(self, integer_model: IntegerModel, engine: str = "x86") -> None:
        super().__init__()
        if not isinstance(integer_model, IntegerModel):
            raise TypeError(f"to_torch_int8 needs a qlearn IntegerModel (from qlearn.convert.convert), "
                            f"got {type(integer_model).__name__}")
        _use_engine(engine)
        self.engine = engine
        qi, qo = integer_model.input_qparams, integer_model.output_qparams
        for qp, what in ((qi, "input"), (qo, "output")):
            if qp.dtype != np.uint8:
                raise ValueError(f"PyTorch's x86 kernels take uint8 activations; the model's {what} is {qp.dtype}")
        self.in_scale, self.in_zp = float(qi.scale), int(qi.zero_point)
        self.out_scale, self.out_zp = float(qo.scale), int(qo.zero_point)
        self.qmin, self.qmax = 0, 255
        self.steps: list[tuple[str, tuple[str, ...], str]] = []  # (name, inputs, kind)
        self.ops = nn.ModuleDict()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            self._build(integer_model)

    def _build(self, integer_model: IntegerModel) -> None:
        self.grids: dict[str, tuple[float, int]] = {"input": (self.in_scale, self.in_zp)}  # output (S, Z) per layer
        for layer in integer_model.layers:
            d = layer.describe()
            self.grids[layer.name] = (float(d.get("out_scale", d.get("in_scale"))), int(d.get("out_zp", d.get("in_zp"))))
            key = layer.name.replace(".", "_")
            if isinstance(layer, QConv2d):
                self.ops[key] = self._conv(layer)
                kind = "conv"
            elif isinstance(layer, QLinear):
                self.ops[key] = self._linear(layer)
                kind = "linear"
            elif isinstance(layer, QAdd):
                add = nnq.QFunctional()
                add.scale, add.zero_point = float(layer.out_scale), int(layer.out_zp)
                self.ops[key] = add
                if _needs_clamp(layer.act_min, layer.act_max, self.qmin, self.qmax):
                    self.ops[key + "__clamp"] = _Clamp(layer.act_min, layer.act_max, layer.out_scale, layer.out_zp)
                kind = "add"
            elif isinstance(layer, QGlobalAvgPool):
                kind = "pool"
            elif isinstance(layer, QRequantize):
                self.ops[key] = nnq.Quantize(float(layer.out_scale), int(layer.out_zp), torch.quint8)
                kind = "requantize"
            else:
                raise TypeError(f"layer {layer.name!r} is a {type(layer).__name__}, which has no PyTorch int8 module here")
            self.steps.append((layer.name, tuple(layer.inputs), kind))

    def _conv(self, layer: QConv2d) -> nn.Module:
        w = np.asarray(layer.w_q)  # (Cout, Cin/groups, kh, kw) int8
        cout, cin = w.shape[0], w.shape[1] * layer.groups
        relu = layer.act_min == layer.out_zp
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        m = cls(cin, cout, tuple(w.shape[2:]), stride=layer.stride, padding=layer.padding, groups=layer.groups)
        m.set_weight_bias(_qweight(w, layer.w_scale), _float_bias(layer.bias_q, layer.in_scale, layer.w_scale))
        m.scale, m.zero_point = float(layer.out_scale), int(layer.out_zp)
        # ConvReLU2d clamps below at Z; anything else the layer's clamp asks for is an extra exact clamp
        if layer.act_max < self.qmax or (not relu and layer.act_min > self.qmin):
            return nn.Sequential(m, _Clamp(layer.act_min, layer.act_max, layer.out_scale, layer.out_zp))
        return m

    def _linear(self, layer: QLinear) -> nn.Module:
        w = np.asarray(layer.w_q)  # (Out, In) int8
        m = nnq.Linear(w.shape[1], w.shape[0])
        m.set_weight_bias(_qweight(w, layer.w_scale), _float_bias(layer.bias_q, layer.in_scale, layer.w_scale))
        m.scale, m.zero_point = float(layer.out_scale), int(layer.out_zp)
        if _needs_clamp(layer.act_min, layer.act_max, self.qmin, self.qmax):
            return nn.Sequential(m, _Clamp(layer.act_min, layer.act_max, layer.out_scale, layer.out_zp))
        return m

    def _step(self, name: str, kind: str, xs: list[torch.Tensor]) -> torch.Tensor:
        key = name.replace(".", "_")
        if kind == "add":
            y = self.ops[key].add(xs[0], xs[1])
            return self.ops[key + "__clamp"](y) if key + "__clamp" in self.ops else y
        if kind == "pool":
            return torch.flatten(F.adaptive_avg_pool2d(xs[0], 1), 1)  # (N, C), same (S, Z)
        if kind == "requantize":
            return self.ops[key](xs[0].dequantize())
        return self.ops[key](xs[0])

    def _graph(self, qx: torch.Tensor) -> torch.Tensor:
        outs: dict[str, torch.Tensor] = {"input": qx}
        for name, inputs, kind in self.steps:
            outs[name] = self._step(name, kind, [outs[i] for i in inputs])
        return outs[self.steps[-1][0]]

    def _wrap(self, codes: np.ndarray, grid: str) -> torch.Tensor:
        codes = np.asarray(codes)
        if codes.dtype != np.uint8:
            raise TypeError(f"codes must be uint8 (qlearn.convert.quantize_input / IntegerModel outputs), got dtype {codes.dtype}")
        scale, zp = self.grids[grid]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the quantized-tensor constructor is marked private
            return torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(codes)), scale, zp)

    @torch.no_grad()
    def run_layer(self, name: str, *codes: np.ndarray) -> np.ndarray:
        """One layer alone: uint8 codes of its inputs (on their grids) -> its uint8 output codes.

        Feeding it qlearn's own codes of the layer's inputs separates this layer's rounding from
        the differences that earlier layers pass on.
        """
        for step_name, inputs, kind in self.steps:
            if step_name == name:
                if len(codes) != len(inputs):
                    raise ValueError(f"layer {name!r} takes {len(inputs)} input(s) {inputs}, got {len(codes)}")
                return self._step(name, kind, [self._wrap(c, i) for c, i in zip(codes, inputs)]).int_repr().numpy()
        raise ValueError(f"no layer named {name!r}; layers: {[s[0] for s in self.steps]}")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError("TorchInt8Model takes float images (a float torch tensor (N, C, H, W))")
        with warnings.catch_warnings():  # PyTorch marks quantized tensor constructors deprecated
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qx = torch.quantize_per_tensor(x.float(), self.in_scale, self.in_zp, torch.quint8)
        return self._graph(qx).dequantize()

    @torch.no_grad()
    def run_codes(self, x_q: np.ndarray) -> np.ndarray:
        """uint8 input codes -> uint8 output codes, through PyTorch's int8 kernels."""
        return self._graph(self._wrap(x_q, "input")).int_repr().numpy()


def to_torch_int8(integer_model: IntegerModel, engine: str = "x86") -> TorchInt8Model:
    """Hand the integers of ``integer_model`` (from ``qlearn.convert.convert``) to PyTorch's int8 kernels.

    Sets ``torch.backends.quantized.engine = engine`` (default "x86": fbgemm/oneDNN). The result is in
    eval mode and computes on int8/uint8 tensors; see ``TorchInt8Model``.
    """
    return TorchInt8Model(integer_model, engine).eval()


@dataclass(frozen=True)
class CodeAgreement:
    """Two integer engines on the same uint8 input codes (Eq. 69).

    top1_agreement        : fraction of images with the same arg-max output code
    exact_output_fraction : fraction of output codes that are identical
    max_lsb_diff          : largest |difference| of output codes
    """

    n: int
    top1_agreement: float
    exact_output_fraction: float
    max_lsb_diff: int

    def to_dict(self) -> dict:
        return asdict(self)


def code_agreement(a: np.ndarray, b: np.ndarray) -> CodeAgreement:
    """Compare two (N, classes) integer outputs code by code (e.g. qlearn's engine vs PyTorch int8)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"outputs must both be (N, classes) of the same shape, got {a.shape} and {b.shape}")
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise TypeError(f"outputs must be integer codes, got {a.dtype} and {b.dtype}")
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return CodeAgreement(
        n=int(a.shape[0]),
        top1_agreement=float((a.argmax(1) == b.argmax(1)).mean()),
        exact_output_fraction=float((diff == 0).mean()),
        max_lsb_diff=int(diff.max()),
    )


@dataclass(frozen=True)
class Latency:
    """Wall-clock times of repeated calls, in milliseconds: median, 95th percentile, min and count."""

    median_ms: float
    p95_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def _positive_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def measure_latency(fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 2,
                    min_seconds: float = 0.0) -> Latency:
    """Call ``fn()`` ``warmup`` times untimed, then time it ``repeats`` times (more while the timed total
    is below ``min_seconds``); median and 95th percentile with ``time.perf_counter``."""
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    repeats = _positive_int(repeats, "repeats", 1)
    warmup = _positive_int(warmup, "warmup", 0)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, numbers.Real) or min_seconds < 0:
        raise ValueError(f"min_seconds must be a number >= 0, got {min_seconds!r}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or (total < min_seconds and len(times) < 100 * repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    ms = 1000.0 * np.asarray(times)
    return Latency(float(np.median(ms)), float(np.percentile(ms, 95)), float(ms.min()), len(times))


def plot_latency_accuracy(result: dict) -> "Figure":
    """Two curves, float and 8-bit: accuracy (%) against batch-1 latency (ms), like the paper's Figure 4.1.

    ``result`` is what ``benchmarks/bench_latency_accuracy.py`` measures: ``{"threads": int, "points":
    [{"arch", "width", "input_size", "float_ms", "int8_ms", "float_acc", "int8_acc"}, ...]}`` (accuracies
    in [0, 1]); ``python -m qlearn figures`` redraws it from the numbers recorded in
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
    for key_ms, key_acc, label, style in (("float_ms", "float_acc", "float (PyTorch, BN folded)", "o-"),
                                          ("int8_ms", "int8_acc", "8-bit (qlearn QAT -> PyTorch x86 int8)", "s-")):
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
