"""Deployment to PyTorch's int8 CPU kernels: run qlearn's integer model on a real int8 runtime.

The paper's speed claim (Sec. 4, Figure 4.1) is about a real integer runtime, not about readable
numpy. ``qlearn.integer`` shows *what* the integer-only model computes; this module hands the very
same integers -- int8 weights, int32 biases, scales and zero points that qlearn's QAT produced and
``qlearn.convert.convert`` wrote down -- to one of PyTorch's quantized CPU engines, so that latency
and accuracy can be measured on a real int8 runtime:

    IntegerModel layer          PyTorch quantized module (torch.ao.nn.quantized)
    QConv2d  (clamp at Z)       ConvReLU2d     int8 weights per channel, bias = bias_q S_in S_w
    QConv2d  (no clamp)         Conv2d
    QAdd                        QFunctional.add with the output (S, Z)
    QGlobalAvgPool              adaptive_avg_pool2d (keeps the input's S, Z), flatten
    QLinear                     Linear         int8 weights per channel

Which engine? The one that computes *these integers* correctly on *this* CPU:

* ``x86`` (FBGEMM / oneDNN) multiplies uint8 codes by int8 weights and, on CPUs without VNNI, adds
  adjacent PAIRS of products in int16 with saturation (AVX2 ``vpmaddubsw``); FBGEMM's depthwise kernel
  does so on every CPU (``qlearn.saturation`` emulates it). A pair of full-range codes reaches
  2 * 255 * 127 = 64770 > 32767, and the layer's output comes out tens of LSB wrong. It is exact only
  when no pair can leave int16: activation codes <= 127 (7-bit activations) or |w| <= 64 (7-bit
  weights); ``qlearn.saturation.max_pair_sum`` gives the precise bound for each layer.
* ``qnnpack`` computes the sum of products exactly (in int32) on any CPU, with full 8-bit integers;
  on x86 CPUs it is slower than ``x86`` (benchmarks/RESULTS.md).

``to_torch_int8(model, engine="auto")`` reads the bound from the integers (not from a guess about the
CPU) and records its choice and the reason on the result (``.engine``, ``.engine_reason``); asking for
``x86`` with integers that can saturate still works (to measure it) but raises an
``Int16SaturationWarning``. PyTorch requantizes with a float multiplier where qlearn uses the
fixed-point (M0, shift) of Eqs. 22-31, so rare near-ties differ by 1 LSB;
``qlearn.agreement.code_agreement`` measures how often outputs agree (Eq. 69), and ``qlearn.timing``
times them.

One property of the x86 engine matters for timing: on CPUs with VNNI its convolutions run on oneDNN,
whose quantized conv builds its kernel ("primitive") on the *first* call and keeps it only for that
call's input shape, scales and thread count (PyTorch ``PackedConvWeightsOnednn``: "Primitive cache
is initialized when called for the first time and won't be updated afterwards"). Every call with
another shape builds the primitive again, so build one ``TorchInt8Model`` per input shape
(``to_torch_int8`` is cheap) and make its first call that shape.

This is deployment glue, so (unlike the rest of qlearn) it uses ``torch.ao.nn.quantized``.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

from qlearn.integer_args import _padding, _pair
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear, QRequantize
from qlearn.integer_model import IntegerModel
from qlearn.saturation import INT16_MAX, max_pair_sum

__all__ = [
    "TorchInt8Model", "to_torch_int8", "cpu_int8_features", "pair_sum_bounds", "choose_engine",
    "Int16SaturationWarning",
]

_PAIRWISE_ENGINES = ("x86", "fbgemm", "onednn")  # uint8 x int8 kernels that may add pairs in int16


class Int16SaturationWarning(UserWarning):
    """The integers can saturate the int16 pair sums of the chosen engine's kernels on this CPU."""


@functools.lru_cache(maxsize=1)
def cpu_int8_features(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU's int8 dot-product features, read from the flags in /proc/cpuinfo (Linux).

    Returns {"avx2", "avx512_vnni", "avx_vnni", "amx_int8": bool, "source": str}. Without the file
    (not Linux) every flag is False and "source" says so. PyTorch's x86 engine routes convolutions to
    oneDNN (exact VNNI dot products) only with avx512_vnni; otherwise FBGEMM's AVX2 int16 pair sums run.
    """
    names = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {**{n: False for n in names}, "source": f"{cpuinfo} not readable: flags unknown"}
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return {**{n: n in flags for n in names}, "source": cpuinfo}


def _input_code_ranges(integer_model: IntegerModel) -> dict[str, tuple[int, int]]:
    """[lowest, highest] code each tensor of the graph can hold (the producing layer's clamp)."""
    qi = integer_model.input_qparams
    ranges = {"input": (int(qi.qmin), int(qi.qmax))}
    for layer in integer_model.layers:
        lo, hi = int(layer.act_min), int(layer.act_max)
        if isinstance(layer, QGlobalAvgPool):  # a mean of codes stays within the input's codes
            in_lo, in_hi = ranges[layer.inputs[0]]
            lo, hi = max(lo, in_lo), min(hi, in_hi)
        ranges[layer.name] = (lo, hi)
    return ranges


def pair_sum_bounds(integer_model: IntegerModel) -> dict[str, dict]:
    """For every conv / linear layer: the codes its input can hold and the largest int16 pair sum.

    {name: {"act_max": highest input code, "w_absmax": max |w|, "max_pair_sum": bound}}, the bound from
    ``qlearn.saturation.max_pair_sum`` (whatever pairs a kernel forms). A bound <= 32767 means an
    int16 pair kernel computes that layer exactly for every input.
    """
    if not isinstance(integer_model, IntegerModel):
        raise TypeError(f"integer_model must be a qlearn IntegerModel, got {type(integer_model).__name__}")
    ranges = _input_code_ranges(integer_model)
    out = {}
    for layer in integer_model.layers:
        if isinstance(layer, (QConv2d, QLinear)):
            lo, hi = ranges[layer.inputs[0]]
            lo, hi = min(lo, int(layer.in_zp)), max(hi, int(layer.in_zp))  # padding holds the zero point
            w = np.asarray(layer.w_q)
            out[layer.name] = {"act_max": hi, "w_absmax": int(np.abs(w.astype(np.int64)).max()),
                               "max_pair_sum": max_pair_sum(w, hi, lo)}
    return out


def choose_engine(integer_model: IntegerModel) -> tuple[str, str]:
    """The PyTorch engine that computes these integers correctly on any x86 CPU, and why.

    "x86" (fastest) when no int16 pair sum of any layer can leave int16; else "qnnpack" (exact sums).
    """
    bounds = pair_sum_bounds(integer_model)
    supported = torch.backends.quantized.supported_engines
    worst_name, worst = max(bounds.items(), key=lambda kv: kv[1]["max_pair_sum"], default=(None, None))
    if worst is None or worst["max_pair_sum"] <= INT16_MAX:
        what = (f"every conv/linear layer's int16 pair sums stay within {INT16_MAX} (largest possible "
                f"{worst['max_pair_sum']}, activation codes <= {max(b['act_max'] for b in bounds.values())})"
                if worst else "the model has no conv/linear layer")
        if "x86" in supported:
            return "x86", f"x86: {what}, so its kernels are exact on every CPU"
        return "qnnpack", f"qnnpack: {what}, but this PyTorch build has no x86 engine"
    if "qnnpack" not in supported:
        raise ValueError(f"layer {worst_name!r} can saturate int16 pair sums and this PyTorch build has no qnnpack "
                         "engine; quantize with 7-bit activations (QATConfig(act_bits=7)) to use x86")
    return "qnnpack", (f"qnnpack: layer {worst_name!r} takes codes up to {worst['act_max']} and weights up to "
                       f"|{worst['w_absmax']}|, so a pair of products can reach {worst['max_pair_sum']} > {INT16_MAX}; "
                       "x86 (FBGEMM) would saturate it in int16 (CPUs without VNNI; its depthwise kernel on every "
                       "CPU); qnnpack sums exactly")


@contextlib.contextmanager
def _engine(engine: str):
    """Run PyTorch's quantized ops on ``engine``, restoring the global setting afterwards."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _check_engine(engine: Any) -> str:
    if not isinstance(engine, str):
        raise TypeError(f"engine must be a string such as 'auto', 'qnnpack' or 'x86', got {type(engine).__name__}")
    if engine != "auto" and engine not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"this PyTorch build has no quantized engine {engine!r}; use 'auto' or one of "
            f"{torch.backends.quantized.supported_engines}"
        )
    return engine


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
    """Clamp a quantized tensor to the codes [act_min, act_max] (exact: the bounds are grid points).

    ``contiguous``: qnnpack's quantized clamp returns wrong codes on channels-last tensors (what its
    convolutions output), so the tensor is made contiguous (NCHW) first on that engine.
    """

    def __init__(self, act_min: int, act_max: int, scale: float, zero_point: int, contiguous: bool = False) -> None:
        super().__init__()
        self.lo = float(scale * (act_min - zero_point))
        self.hi = float(scale * (act_max - zero_point))
        self.contiguous = contiguous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x.contiguous() if self.contiguous else x, self.lo, self.hi)


class _QuantPad(nn.Module):
    """Pad a quantized (N, C, H, W) tensor by qlearn's rule (an asymmetric 4-tuple or TensorFlow's "same",
    ``qlearn.integer_args._padding``); ``F.pad`` fills a quantized tensor with its zero point, as Eq. 38 asks."""

    def __init__(self, padding: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.padding, self.kernel, self.stride = padding, kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = _padding(self.padding, tuple(x.shape[-2:]), self.kernel, self.stride)
        return F.pad(x, (left, right, top, bottom))


class TorchInt8Model(nn.Module):
    """An ``IntegerModel`` rebuilt from PyTorch quantized modules; runs on the chosen quantized engine.

    ``engine``        the engine that runs it ("qnnpack", "x86", ...); ``engine_reason`` says why
    ``cpu``           the CPU's int8 features (``cpu_int8_features``), recorded with the choice

    ``forward(x)``   float images (N, C, H, W) in the input's range -> quantize -> int8 graph ->
                     dequantized float32 logits (N, classes): what a deployed model does.
    ``run_codes(x_q)`` uint8 codes (N, C, H, W) -> uint8 output codes (N, classes), to compare with
                     ``IntegerModel.run`` on identical integers.
    ``run_layer(name, *codes)`` one layer on given input codes (per-layer agreement).
    """

    def __init__(self, integer_model: IntegerModel, engine: str = "auto") -> None:
        super().__init__()
        if not isinstance(integer_model, IntegerModel):
            raise TypeError(f"to_torch_int8 needs a qlearn IntegerModel (from qlearn.convert.convert), "
                            f"got {type(integer_model).__name__}")
        engine = _check_engine(engine)
        self.cpu = cpu_int8_features()
        if engine == "auto":
            self.engine, self.engine_reason = choose_engine(integer_model)
        else:
            self.engine, self.engine_reason = engine, f"{engine}: requested explicitly"
            if engine in _PAIRWISE_ENGINES:
                worst = max(pair_sum_bounds(integer_model).items(), key=lambda kv: kv[1]["max_pair_sum"], default=None)
                if worst is not None and worst[1]["max_pair_sum"] > INT16_MAX:
                    vnni = "has" if self.cpu["avx512_vnni"] else "lacks"
                    msg = (f"engine={engine!r} with these integers: layer {worst[0]!r} can reach int16 pair sums of "
                           f"{worst[1]['max_pair_sum']} > {INT16_MAX} (codes up to {worst[1]['act_max']}, |w| up to "
                           f"{worst[1]['w_absmax']}); FBGEMM saturates them (this CPU {vnni} avx512_vnni; its depthwise "
                           "kernel on every CPU), so outputs can be tens of LSB off qlearn's. Use engine='auto' "
                           "(qnnpack, exact) or 7-bit activations (QATConfig(act_bits=7)).")
                    self.engine_reason += " -- WARNING: " + msg
                    warnings.warn(msg, Int16SaturationWarning, stacklevel=3)
        qi, qo = integer_model.input_qparams, integer_model.output_qparams
        for qp, what in ((qi, "input"), (qo, "output")):
            if qp.dtype != np.uint8:
                raise ValueError(f"PyTorch's int8 CPU kernels take uint8 activations; the model's {what} is {qp.dtype}")
        self.in_scale, self.in_zp = float(qi.scale), int(qi.zero_point)
        self.out_scale, self.out_zp = float(qo.scale), int(qo.zero_point)
        self.qmin, self.qmax = 0, 255
        self.steps: list[tuple[str, tuple[str, ...], str]] = []  # (name, inputs, kind)
        self.ops = nn.ModuleDict()
        with warnings.catch_warnings(), _engine(self.engine):  # weights are packed for the chosen engine
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            self._build(integer_model)

    def _clamp(self, act_min: int, act_max: int, scale: float, zero_point: int) -> _Clamp:
        return _Clamp(act_min, act_max, scale, zero_point, contiguous=self.engine == "qnnpack")

    def _build(self, integer_model: IntegerModel) -> None:
        self.grids: dict[str, tuple[float, int]] = {"input": (self.in_scale, self.in_zp)}  # output (S, Z) per layer
        for layer in integer_model.layers:
            self.grids[layer.name] = (float(layer.out_scale), int(layer.out_zp))  # every layer kind has them
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
                    self.ops[key + "__clamp"] = self._clamp(layer.act_min, layer.act_max, layer.out_scale, layer.out_zp)
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
        kernel, stride = tuple(w.shape[2:]), _pair(layer.stride, "stride", 1)
        # PyTorch's quantized conv pads symmetrically; "same" or (top, bottom, left, right) pads first
        symmetric = not isinstance(layer.padding, str) and len(np.atleast_1d(layer.padding)) <= 2
        m = cls(cin, cout, kernel, stride=layer.stride, padding=layer.padding if symmetric else 0, groups=layer.groups)
        m.set_weight_bias(_qweight(w, layer.w_scale), _float_bias(layer.bias_q, layer.in_scale, layer.w_scale))
        m.scale, m.zero_point = float(layer.out_scale), int(layer.out_zp)
        steps = [m] if symmetric else [_QuantPad(layer.padding, kernel, stride), m]
        # ConvReLU2d clamps below at Z; anything else the layer's clamp asks for is an extra exact clamp
        if layer.act_max < self.qmax or (not relu and layer.act_min > self.qmin):
            steps.append(self._clamp(layer.act_min, layer.act_max, layer.out_scale, layer.out_zp))
        return steps[0] if len(steps) == 1 else nn.Sequential(*steps)

    def _linear(self, layer: QLinear) -> nn.Module:
        w = np.asarray(layer.w_q)  # (Out, In) int8
        m = nnq.Linear(w.shape[1], w.shape[0])
        m.set_weight_bias(_qweight(w, layer.w_scale), _float_bias(layer.bias_q, layer.in_scale, layer.w_scale))
        m.scale, m.zero_point = float(layer.out_scale), int(layer.out_zp)
        if _needs_clamp(layer.act_min, layer.act_max, self.qmin, self.qmax):
            return nn.Sequential(m, self._clamp(layer.act_min, layer.act_max, layer.out_scale, layer.out_zp))
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
        with _engine(self.engine):  # adds, pools and clamps follow the global engine setting
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
                xs = [self._wrap(c, i) for c, i in zip(codes, inputs)]
                with _engine(self.engine):
                    return self._step(name, kind, xs).int_repr().numpy()
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


def to_torch_int8(integer_model: IntegerModel, engine: str = "auto") -> TorchInt8Model:
    """Hand the integers of ``integer_model`` (from ``qlearn.convert.convert``) to PyTorch's int8 kernels.

    engine "auto" (default): ``choose_engine`` -- "x86" when no layer's int16 pair sums can saturate
    (7-bit activations or 7-bit weights), else "qnnpack", which sums exactly. An explicit "x86" /
    "fbgemm" / "onednn" with integers that can saturate runs, with an ``Int16SaturationWarning``.
    The choice and its reason are ``.engine`` and ``.engine_reason``; the global
    ``torch.backends.quantized.engine`` is set only while the model builds and runs. The result is in
    eval mode and computes on int8/uint8 tensors; see ``TorchInt8Model``.
    """
    return TorchInt8Model(integer_model, engine).eval()
