"""Notebook 11: quantizing a transformer's linear layers.

Every block linear of the small ViT (``qlearn.transformer``) is run through ``quant_hook``: its input
X (tokens x channels) and weight W (Out x In) are fake-quantized by a ``Scheme`` -- weights per-tensor,
per-channel or per-group (Eq. 81), activations static (a range calibrated once) or dynamic (a range per
image or per token, Eq. 80), optional LLM.int8-style outlier columns kept in float (Eq. 82) and
SmoothQuant's migration X / s, W s (Eq. 83) -- and then multiplied in float64. The attention
products, LayerNorm, GELU, the patch embedding and the head stay in float (as in LLM W8A8 recipes).

Everything reuses the core: ``qparams_from_range`` / ``weight_qparams`` for the grids,
``fake_quantize`` for the rounding, ``sqnr_db`` for the error, ``qlearn.integer.linear`` for the
integer layer. Sweeps that take more than a second are stored with ``cached_results`` (shipped for
the shipped model). No ipywidgets or matplotlib here.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from qlearn._checks import as_float_array, check_bits
from qlearn.agreement import Agreement, code_agreement
from qlearn.error import sqnr_db
from qlearn.fixedpoint import multiply_by_quantized_multiplier
from qlearn.groups import bits_per_weight as groups_bits_per_weight
from qlearn.groups import quantize_groups
from qlearn.integer import linear as integer_linear
from qlearn.layer_integers import quantize_bias, requant_multiplier
from qlearn.lessons.lesson_model import cached_results
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize, quantize
from qlearn.ranges import range_for, weight_qparams
from qlearn.threads import one_thread
from qlearn.train import evaluate
from qlearn.transformer import TransformerModel

__all__ = [
    "CALIBRATION_IMAGES", "WEIGHT_GRANULARITIES", "ACT_MODES", "Scheme", "smooth_scales", "group_fake_quant",
    "bits_per_weight", "quant_hook", "accuracy", "layer_inputs", "channel_absmax", "outlier_ratio",
    "with_outlier", "layer_sqnr", "granularity_results", "weight_only_results", "smoothquant_results",
    "IntegerLayer", "integer_layer",
]

CALIBRATION_IMAGES = 256  # the first training images: static ranges and SmoothQuant's max|X_j|
WEIGHT_GRANULARITIES = ("per-tensor", "per-channel", "group 16", "group 8")
ACT_MODES = ("static per-tensor", "dynamic per-tensor", "dynamic per-token")
OUTLIER_LAYER, OUTLIER_CHANNEL, OUTLIER_FACTOR = "blocks.0.fc1", 5, 30.0


@dataclass(frozen=True)
class Scheme:
    """How each block linear is quantized. ``None`` bits: kept in float (weights fp32, activations fp16).

    w_gran : "per-tensor", "per-channel" (one scale per output row) or "group G" (G inputs per scale)
    a_mode : one of ``ACT_MODES``; static ranges come from the calibration images (min/max)
    alpha  : SmoothQuant migration strength (Eq. 83), None = no smoothing
    keep   : LLM.int8-style decomposition: this many input channels (largest max|X_j|) kept in fp16
    """

    w_bits: int | None = 8
    w_gran: str = "per-channel"
    a_bits: int | None = 8
    a_mode: str = "static per-tensor"
    alpha: float | None = None
    keep: int = 0

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits"):
            if getattr(self, name) is not None:
                check_bits(getattr(self, name), name)
        if self.w_gran not in ("per-tensor", "per-channel") and not _group_size(self.w_gran):
            raise ValueError(f"w_gran must be 'per-tensor', 'per-channel' or 'group G', got {self.w_gran!r}")
        if self.a_mode not in ACT_MODES:
            raise ValueError(f"a_mode must be one of {ACT_MODES}, got {self.a_mode!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be None or a number in [0, 1], got {self.alpha!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 0:
            raise ValueError(f"keep must be a non-negative integer, got {self.keep!r}")


def _group_size(gran: str) -> int:
    parts = str(gran).split()
    return int(parts[1]) if len(parts) == 2 and parts[0] == "group" and parts[1].isdigit() and int(parts[1]) > 0 else 0


# ---------------------------------------------------------------------------------- the formulas
def smooth_scales(x_absmax: Any, w_absmax: Any, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel scales s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (Eq. 83).

    x_absmax, w_absmax : (In,) non-negative floats (max over tokens of |X[:, j]|, over outputs of
    |W[:, j]|). A channel where either is 0 gets s_j = 1 (nothing to migrate). Returns (In,) float64 > 0.
    """
    xa, wa = as_float_array(x_absmax, "x_absmax"), as_float_array(w_absmax, "w_absmax")
    if xa.ndim != 1 or xa.shape != wa.shape:
        raise ValueError(f"x_absmax and w_absmax must be 1-D of the same length, got {xa.shape} and {wa.shape}")
    if np.any(xa < 0) or np.any(wa < 0):
        raise ValueError("x_absmax and w_absmax must be non-negative (maxima of |values|)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    ok = (xa > 0) & (wa > 0)
    s = np.ones_like(xa)
    s[ok] = xa[ok] ** float(alpha) / wa[ok] ** (1.0 - float(alpha))
    return s


def group_fake_quant(w: Any, bits: int, group: int) -> np.ndarray:
    """Fake-quantize (Out, In) weights with one symmetric scale per run of ``group`` inputs (Eqs. 76, 81).

    ``qlearn.groups.quantize_groups``, for the transformer's layers, whose In is a multiple of ``group``.
    """
    arr = as_float_array(w, "w")
    if arr.ndim != 2 or group < 1 or arr.shape[1] % group:
        raise ValueError(f"w must be (Out, In) with In a multiple of group={group}, got shape {arr.shape}")
    return quantize_groups(arr, bits, group).w_hat


def bits_per_weight(bits: int, gran: str, shape: tuple[int, int], scale_bits: int = 16) -> float:
    """Storage per weight including the fp16 scales: b + 16 / G per group, b + 16 / In per channel (Eqs. 77, 81)."""
    return groups_bits_per_weight(shape, bits, _group_size(gran) or gran, scale_bits=scale_bits)


def _fake_weight(w: np.ndarray, scheme: Scheme) -> np.ndarray:
    if scheme.w_bits is None:
        return w
    g = _group_size(scheme.w_gran)
    if g:
        return group_fake_quant(w, scheme.w_bits, g)
    return fake_quantize(w, weight_qparams(w, scheme.w_bits, per_channel=scheme.w_gran == "per-channel"))


def _fake_act(x: np.ndarray, scheme: Scheme, static: tuple[float, float], tokens: int) -> np.ndarray:
    """x (N * T, C) float64 -> fake-quantized on an asymmetric uint8-style grid (Eqs. 4-7, 90)."""
    if scheme.a_bits is None:  # A16: fp16 activations
        return x.astype(np.float16).astype(np.float64)
    if scheme.a_mode == "static per-tensor":
        lo, hi = static
        return fake_quantize(x, qparams_from_range(lo, hi, scheme.a_bits))
    rows = x if scheme.a_mode == "dynamic per-token" else x.reshape(-1, tokens * x.shape[1])  # per token / per image
    lo, hi = range_for(rows, "min/max", axis=0)
    return fake_quantize(rows, qparams_from_range(lo, hi, scheme.a_bits, axis=0)).reshape(x.shape)


# ---------------------------------------------------------------------------------- running the model
def _float64(tm: TransformerModel) -> torch.nn.Module:
    if "float64" not in tm.cache:
        tm.cache["float64"] = copy.deepcopy(tm.model).double().eval()
    return tm.cache["float64"]


def layer_inputs(tm: TransformerModel, split: str = "calibration") -> dict[str, np.ndarray]:
    """Each block linear's float input as (tokens, channels) float64: calibration images or the test set."""
    if split not in ("calibration", "test"):
        raise ValueError(f"split must be 'calibration' or 'test', got {split!r}")
    key = ("inputs", split)
    if key not in tm.cache:
        x = tm.data.x_train[:CALIBRATION_IMAGES] if split == "calibration" else tm.data.x_test
        got: dict[str, np.ndarray] = {}

        def hook(name: str, module: torch.nn.Linear, inp: torch.Tensor) -> torch.Tensor:
            got[name] = inp.detach().reshape(-1, inp.shape[-1]).numpy().copy()
            return module(inp)

        with torch.no_grad(), one_thread():
            _float64(tm)(x.double(), hook=hook)
        tm.cache[key] = got
    return tm.cache[key]


def channel_absmax(tm: TransformerModel) -> dict[str, np.ndarray]:
    """max over calibration tokens of |X[:, j]| for each input channel j of each block linear."""
    return {n: np.abs(x).max(axis=0) for n, x in layer_inputs(tm).items()}


def outlier_ratio(absmax: np.ndarray) -> float:
    """Largest channel max|X_j| over the median channel's: ~1-2 without outlier channels, >> 5 with."""
    return float(np.max(absmax) / np.median(absmax))


def with_outlier(tm: TransformerModel, factor: float = OUTLIER_FACTOR, layer: str = OUTLIER_LAYER,
                 channel: int = OUTLIER_CHANNEL) -> TransformerModel:
    """The same function with one outlier input channel (a controlled injection: this model has none).

    The LayerNorm before ``layer`` gets its bias of ``channel`` raised by c = (factor - 1) max|X_c|,
    so that channel of the linear's input sits near c -- ``factor`` times its old range -- on every
    token, as the systematic outlier channels of large language models do; the linear's bias is
    lowered by W[:, channel] c. In exact arithmetic the model's outputs are unchanged (the float
    accuracy is the trained model's); only the ranges a quantizer sees move. The weight column is
    untouched, so max|W_j| does not reveal the outlier (unlike a rescaled column).
    """
    if not isinstance(tm, TransformerModel):
        raise TypeError(f"tm must be a TransformerModel, got {type(tm).__name__}")
    parts = layer.split(".") if isinstance(layer, str) else []
    if len(parts) != 3 or parts[2] not in ("qkv", "fc1") or layer not in tm.linears:
        raise ValueError(f"layer must be a qkv or fc1 layer of the model (they follow a LayerNorm), got {layer!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
        raise ValueError(f"factor must be a number >= 1, got {factor!r}")
    model = copy.deepcopy(tm.model)
    b = model.blocks[int(parts[1])]
    ln, lin = (b.ln1, b.qkv) if parts[2] == "qkv" else (b.ln2, b.fc1)
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < lin.in_features:
        raise ValueError(f"channel must be an input channel of {layer} (0..{lin.in_features - 1}), got {channel!r}")
    c = (float(factor) - 1.0) * float(channel_absmax(tm)[layer][channel])
    with torch.no_grad():
        ln.bias[channel] += c
        lin.bias -= lin.weight[:, channel] * c
    with one_thread():
        acc = evaluate(model, tm.data.x_test, tm.data.y_test)
    return replace(tm, model=model, float_acc=acc, path=None, shipped=False, cache={})


def quant_hook(tm: TransformerModel, scheme: Scheme) -> Callable[..., torch.Tensor]:
    """A ``TinyViT.forward`` hook running every block linear under ``scheme`` in float64."""
    if not isinstance(scheme, Scheme):
        raise TypeError(f"scheme must be a Scheme, got {type(scheme).__name__}")
    calib, absmax, tokens = layer_inputs(tm), channel_absmax(tm), tm.config.tokens + 1
    prepared: dict[str, tuple] = {}
    for name, module in tm.linears.items():
        w = module.weight.detach().double().numpy()  # (Out, In)
        s = np.ones(w.shape[1]) if scheme.alpha is None else smooth_scales(absmax[name], np.abs(w).max(0), scheme.alpha)
        keep = np.argsort(absmax[name] / s)[::-1][: scheme.keep]  # the largest smoothed input channels
        rest = np.setdiff1d(np.arange(w.shape[1]), keep)
        xs = calib[name][:, rest] / s[rest]
        static = (float(xs.min()), float(xs.max()))
        w_q = np.zeros_like(w)
        w_q[:, rest] = _fake_weight(w[:, rest] * s[rest], scheme)
        w_q[:, keep] = w[:, keep].astype(np.float16)  # the outlier columns in fp16 (Eq. 82)
        prepared[name] = (s, keep, rest, static, w_q, module.bias.detach().double().numpy())

    def hook(name: str, module: torch.nn.Linear, inp: torch.Tensor) -> torch.Tensor:
        s, keep, rest, static, w_q, b = prepared[name]
        x = inp.detach().double().reshape(-1, inp.shape[-1]).numpy()  # (N * T, In)
        xq = np.empty_like(x)
        xq[:, rest] = _fake_act(x[:, rest] / s[rest], scheme, static, tokens)
        xq[:, keep] = x[:, keep].astype(np.float16)
        y = xq @ w_q.T + b  # (N * T, Out) float64
        return torch.from_numpy(y).reshape(*inp.shape[:-1], -1).to(inp.dtype)

    return hook


def accuracy(tm: TransformerModel, scheme: Scheme | None) -> float:
    """Test accuracy with every block linear under ``scheme`` (None: the float64 model)."""
    hook = None if scheme is None else quant_hook(tm, scheme)
    with torch.no_grad(), one_thread():
        logits = _float64(tm)(tm.data.x_test.double(), hook=hook)
    return float((logits.argmax(1) == tm.data.y_test).double().mean())


def layer_sqnr(tm: TransformerModel, scheme: Scheme, name: str = OUTLIER_LAYER) -> float:
    """SQNR (dB) of one linear layer's output under ``scheme`` on its float test-set inputs (Eq. 10)."""
    x = layer_inputs(tm, "test")[name]
    module = tm.linears[name]
    w, b = module.weight.detach().double().numpy(), module.bias.detach().double().numpy()
    y_hat = quant_hook(tm, scheme)(name, module, torch.from_numpy(x)).numpy()
    return sqnr_db(x @ w.T + b, y_hat)


# ---------------------------------------------------------------------------------- the sweeps (cached)
GRAN_BITS = (8, 6, 4)
WEIGHT_ONLY_BITS = (8, 4, 3, 2)
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
SMOOTH_BITS = (8, 6, 4)
KEEPS = (0, 1, 2, 4)


def granularity_results(tm: TransformerModel) -> dict[str, list[float]]:
    """W{b}A{b}, b in GRAN_BITS: accuracy and blocks.0.fc1 SQNR for weight x activation granularities."""
    def compute() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"bits": list(GRAN_BITS)}
        for wg in ("per-tensor", "per-channel"):
            for am in ACT_MODES:
                sch = [Scheme(b, wg, b, am) for b in GRAN_BITS]
                out[f"acc | {wg} | {am}"] = [accuracy(tm, s) for s in sch]
                out[f"sqnr | {wg} | {am}"] = [layer_sqnr(tm, s) for s in sch]
        return out

    return cached_results(tm, "granularity-8-6-4-v1", compute)


def weight_only_results(tm: TransformerModel) -> dict[str, list[float]]:
    """W{b}A16 (fp16 activations), b in WEIGHT_ONLY_BITS, per weight granularity: accuracy, bits per weight."""
    def compute() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"bits": list(WEIGHT_ONLY_BITS)}
        shapes = [tuple(m.weight.shape) for m in tm.linears.values()]
        n = sum(a * b for a, b in shapes)
        for g in WEIGHT_GRANULARITIES:
            out[f"acc | {g}"] = [accuracy(tm, Scheme(b, g, None)) for b in WEIGHT_ONLY_BITS]
            out[f"bpw | {g}"] = [sum(bits_per_weight(b, g, s) * s[0] * s[1] for s in shapes) / n for b in WEIGHT_ONLY_BITS]
        return out

    return cached_results(tm, "weight-only-8-4-3-2-v1", compute)


def smoothquant_results(tm: TransformerModel) -> dict[str, list[float]]:
    """SmoothQuant alpha sweep and LLM.int8 decomposition, W8A8, W6A6 and W4A4 per-tensor static, on the model
    as trained and with the injected outlier channel (``with_outlier``)."""
    def compute() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"alpha": list(ALPHAS), "keep": list(KEEPS)}
        for label, model in (("trained", tm), ("outlier", with_outlier(tm))):
            out[f"float acc | {label}"] = [accuracy(model, None)]
            for b in SMOOTH_BITS:
                sch = [Scheme(b, "per-tensor", b, "static per-tensor", alpha=a) for a in ALPHAS]
                out[f"acc | {label} | {b}"] = [accuracy(model, s) for s in sch]
                out[f"sqnr | {label} | {b}"] = [layer_sqnr(model, s) for s in sch]
                dec = [Scheme(b, "per-tensor", b, "static per-tensor", keep=k) for k in KEEPS]
                out[f"keep acc | {label} | {b}"] = [accuracy(model, s) for s in dec]
                out[f"keep sqnr | {label} | {b}"] = [layer_sqnr(model, s) for s in dec]
        return out

    return cached_results(tm, "smoothquant-8-6-4-v1", compute)


# ---------------------------------------------------------------------------------- one integer layer
@dataclass(frozen=True, eq=False)
class IntegerLayer:
    """One block linear run by ``qlearn.integer.linear`` next to its fake-quant references.

    codes           : (tokens, Out) uint8 from the integer kernel (Eqs. 20-25)
    reference_codes : the fake-quant product read back as the int32 accumulator, requantized with the
                      same M0 and shift: must equal ``codes`` bit for bit
    float_codes     : the fake-quant output rounded once on the output grid (float M): within 1 LSB
    """

    name: str
    x_qp: QParams
    w_qp: QParams
    out_qp: QParams
    x_q: np.ndarray  # (tokens, In) uint8
    w_q: np.ndarray  # (Out, In) int8
    bias_q: np.ndarray  # (Out,) int32
    m0: np.ndarray
    shift: np.ndarray
    codes: np.ndarray
    reference_codes: np.ndarray
    float_codes: np.ndarray

    @property
    def agreement(self) -> Agreement:
        return code_agreement(self.codes, self.float_codes)


def integer_layer(tm: TransformerModel, name: str = "blocks.0.fc1", images: int = 64) -> IntegerLayer:
    """``name`` with static uint8 input, per-channel int8 weights and an int32 bias, on the first test images."""
    if name not in tm.linears:
        raise ValueError(f"name must be one of {list(tm.linears)}, got {name!r}")
    module = tm.linears[name]
    w, b = module.weight.detach().double().numpy(), module.bias.detach().double().numpy()
    calib = layer_inputs(tm)[name]
    x_qp = qparams_from_range(float(calib.min()), float(calib.max()), 8)  # static, asymmetric uint8
    w_qp = weight_qparams(w, 8, per_channel=True)  # symmetric int8 [-127, 127], one scale per output
    y_cal = calib @ w.T + b
    out_qp = qparams_from_range(float(y_cal.min()), float(y_cal.max()), 8)
    x = layer_inputs(tm, "test")[name][: images * (tm.config.tokens + 1)]
    x_q, w_q = quantize(x, x_qp).astype(np.uint8), quantize(w, w_qp).astype(np.int8)
    bias_q = quantize_bias(b, x_qp.scale, w_qp.scale)  # int32, scale S1 S2 (Eq. 24)
    m0, shift = requant_multiplier(x_qp.scale, w_qp.scale, out_qp.scale)
    codes = integer_linear(x_q, x_qp.zero_point, w_q, bias_q, m0, shift, out_qp.zero_point)
    # the fake-quant reference: float64 product of the fake-quantized values (Eq. 50)
    y_fq = fake_quantize(x, x_qp) @ fake_quantize(w, w_qp).T  # (tokens, Out)
    acc = np.rint(y_fq / (x_qp.scale * w_qp.scale)).astype(np.int64) + bias_q  # the int32 accumulator
    ref = multiply_by_quantized_multiplier(acc, m0, shift).astype(np.int64) + out_qp.zero_point
    reference = np.clip(ref, 0, 255).astype(np.uint8)
    y_real = y_fq + bias_q * (x_qp.scale * w_qp.scale)
    float_codes = quantize(y_real, out_qp).astype(np.uint8)
    return IntegerLayer(name, x_qp, w_qp, out_qp, x_q, w_q, bias_q, np.asarray(m0), np.asarray(shift),
                        codes, reference, float_codes)
