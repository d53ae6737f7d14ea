"""The integers of a layer: what a converter writes down next to the int8 weights (Eqs. 22-24, 33, 37).

A conv or linear layer with input grid (S1, Z1), weight scale S2 (Z2 = 0) and output grid (S3, Z3)
needs, besides its int8 weights, three more things, and this module is their one home:

* the multiplier M = S1 S2 / S3 as TFLite's (M0, shift) (Eq. 22-23): ``requant_multiplier``;
* the bias as int32 of scale S1 S2 and zero point 0 (Eq. 24): ``quantize_bias`` (or, when the codes
  were already computed elsewhere, e.g. by the fake-quant model, ``int32_bias`` to check them);
* the fused activation as a clamp [act_min, act_max] on the output codes (paper Sec. 2.4; Eq. 37):
  ``activation_range`` / ``activation_clamp``.

``layer_integers`` computes all three at once (a ``LayerIntegers``); ``qlearn.convert`` and the
lessons build their integer layers from it. A quantized ADD has its own six numbers
(``add_multipliers``, Eq. 33). Everything here runs once per layer, at conversion time: float64
arithmetic on scales, integers out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn._checks import as_float_array
from qlearn.fixedpoint import INT32_MAX, INT32_MIN, Int32OverflowError, quantize_multiplier
from qlearn.integer_args import OUT_DTYPES, _int, _zero_point
from qlearn.qparams import QParams

__all__ = [
    "requant_multiplier",
    "quantize_bias",
    "int32_bias",
    "activation_range",
    "activation_clamp",
    "LayerIntegers",
    "layer_integers",
    "AddMultipliers",
    "add_multipliers",
]


def _positive(v: Any, name: str) -> np.ndarray:
    arr = as_float_array(v, name)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be positive (a quantization scale), got {v!r}")
    return arr



def requant_multiplier(in_scale: float, w_scale: Any, out_scale: float, *,
                       channels: int | None = None) -> tuple[Any, Any]:
    """M = S1 S2 / S3 (Eq. 22) as TFLite's (m0, shift) (Eq. 23).

    Scalars give (int, int); a per-channel (Cout,) ``w_scale`` gives two (Cout,) int32 arrays.
    ``channels``: repeat a per-tensor ``w_scale`` over this many output channels, so that m0 and
    shift are (channels,) int32 arrays either way (one multiplier per output channel, as a converter
    stores them). Refuses M >= 2^30 (shift > 30), which no sensible layer has.
    """
    s1 = _positive(in_scale, "in_scale")
    s2 = _positive(w_scale, "w_scale")
    s3 = _positive(out_scale, "out_scale")
    if s1.ndim or s3.ndim:
        raise ValueError("in_scale and out_scale must be scalars (per-tensor activations)")
    if s2.ndim > 1:
        raise ValueError(f"w_scale must be a scalar or a 1-D per-channel array, got shape {s2.shape}")
    if channels is not None:
        channels = _int(channels, "channels")
        if s2.ndim and s2.shape != (channels,):
            raise ValueError(f"per-channel w_scale {s2.shape} does not match channels={channels}")
        s2 = np.broadcast_to(np.atleast_1d(s2), (channels,)).copy()  # (C,) float64
    m = s1 * s2 / s3  # float64, scalar or (C,)
    m0, shift = quantize_multiplier(float(m) if m.ndim == 0 else m)
    if np.max(shift) > 30:
        raise ValueError(f"the multiplier S1 S2 / S3 = {np.max(m):.3g} is too large (>= 2^30) for int32 arithmetic")
    if channels is not None:
        return np.asarray(m0, dtype=np.int32), np.asarray(shift, dtype=np.int32)
    return m0, shift


def quantize_bias(bias: Any, in_scale: float, w_scale: Any) -> np.ndarray:
    """Float bias -> int32 with scale S1 S2 and zero point 0: round_half_even(b / (S1 S2)) (Eq. 24).

    bias (Cout,) floats; w_scale scalar or (Cout,). Returns (Cout,) int32. Raises
    ``Int32OverflowError`` if a bias does not fit int32 (a sign of broken scales).
    """
    b = as_float_array(bias, "bias")
    if b.ndim != 1:
        raise ValueError(f"bias must be 1-D (one per output channel), got shape {b.shape}")
    s1 = _positive(in_scale, "in_scale")
    s2 = _positive(w_scale, "w_scale")
    if s2.ndim and s2.shape != b.shape:
        raise ValueError(f"per-channel w_scale {s2.shape} does not match bias {b.shape}")
    q = np.rint(b / (s1 * s2))
    if q.min() < INT32_MIN or q.max() > INT32_MAX:
        raise Int32OverflowError(
            f"bias / (S1 S2) reaches {np.abs(q).max():.3g}, outside int32: the input or weight scale is "
            "far too small for this bias"
        )
    return q.astype(np.int32)



def int32_bias(bias_q: Any, name: str = "bias_q") -> np.ndarray:
    """Bias codes computed elsewhere (any numeric dtype holding integers, e.g. the float64 codes of
    the fake-quant model) -> (Cout,) int32, refusing values outside int32 (Eq. 24)."""
    b = as_float_array(bias_q, name)
    if b.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one per output channel), got shape {b.shape}")
    if not np.all(b == np.rint(b)):
        raise ValueError(f"{name} must hold integer codes (round b / (S1 S2) first, Eq. 24)")
    if b.min() < INT32_MIN or b.max() > INT32_MAX:
        raise Int32OverflowError(
            f"{name} does not fit int32 at scale S1 S2 (|b / (S1 S2)| up to {np.abs(b).max():.3g}); "
            "the weight or input scale is far too small for this bias"
        )
    return b.astype(np.int32)


def activation_range(kind: str | None, out_scale: float, out_zp: int, *, dtype: Any = np.uint8) -> tuple[int, int]:
    """The clamp [act_min, act_max] of a fused activation on the output grid (paper Sec. 2.4; Eq. 37).

    kind None / "none" -> the dtype's range; "relu" -> [max(qmin, Z), qmax];
    "relu6" -> [max(qmin, Z), min(qmax, Z + round(6 / S))]  (TFLite CalculateActivationRangeQuantized,
    round half away from zero).
    """
    dt = np.dtype(dtype)
    if dt not in OUT_DTYPES:
        raise TypeError(f"dtype must be uint8, int8, int16 or int32, got {dt}")
    info = np.iinfo(dt)
    s = float(_positive(out_scale, "out_scale"))
    z = _zero_point(out_zp, "out_zp", dt)
    if kind is None or kind == "none":
        return int(info.min), int(info.max)
    if kind == "relu":
        return max(int(info.min), z), int(info.max)
    if kind == "relu6":
        six = z + int(np.floor(6.0 / s + 0.5))
        return max(int(info.min), z), min(int(info.max), six)
    raise ValueError(f"kind must be None, 'none', 'relu' or 'relu6', got {kind!r}")


def activation_clamp(kind: str | None, out_qp: QParams) -> tuple[int, int]:
    """``activation_range`` on the output grid ``out_qp``, kept inside its [qmin, qmax] (Eq. 37, 67).

    kind None / "none" -> [qmin, qmax]; "relu" / "relu6" -> their clamps, cut to [qmin, qmax] (a
    grid of fewer than 8 bits has a smaller code range than its dtype).
    """
    if not isinstance(out_qp, QParams) or out_qp.per_channel:
        raise TypeError(f"out_qp must be a per-tensor QParams (activations have one scale), got {out_qp!r}")
    lo, hi = activation_range(kind, out_qp.scale, int(out_qp.zero_point), dtype=out_qp.dtype)
    return max(lo, int(out_qp.qmin)), min(hi, int(out_qp.qmax))


@dataclass(frozen=True, eq=False)
class LayerIntegers:
    """The integers of one conv / linear layer besides its int8 weights (``layer_integers``).

    bias_q           : (Cout,) int32 of scale S1 S2, zero point 0 (Eq. 24), or None (no bias)
    m0, shift        : M = S1 S2 / S3 ~= m0 2^(shift - 31) (Eq. 22-23): ints, or (Cout,) int32 arrays
    act_min, act_max : the fused activation's clamp on the output codes (Eq. 37)
    """

    bias_q: np.ndarray | None
    m0: Any
    shift: Any
    act_min: int
    act_max: int


def layer_integers(in_qp: QParams, w_scale: Any, out_qp: QParams, *, bias: Any = None, bias_q: Any = None,
                   activation: str | None = None, channels: int | None = None) -> LayerIntegers:
    """Scales in, the integers of a layer out: M0/shift (Eq. 23), int32 bias (Eq. 24), clamp (Eq. 37).

    in_qp, out_qp : per-tensor activation grids (S1, Z1) and (S3, Z3); w_scale: S2, scalar or (Cout,)
    bias          : float bias (Cout,), quantized here with ``quantize_bias``; or
    bias_q        : bias codes already computed (checked with ``int32_bias``); at most one of the two
    activation    : None / "none", "relu" or "relu6" (``activation_clamp``)
    channels      : give per-channel multipliers for a per-tensor w_scale (see ``requant_multiplier``)
    """
    for qp, nm in ((in_qp, "in_qp"), (out_qp, "out_qp")):
        if not isinstance(qp, QParams) or qp.per_channel:
            raise TypeError(f"{nm} must be a per-tensor QParams (activations have one scale), got {qp!r}")
    if bias is not None and bias_q is not None:
        raise ValueError("give either bias (floats, quantized here) or bias_q (codes), not both")
    m0, shift = requant_multiplier(in_qp.scale, w_scale, out_qp.scale, channels=channels)
    if bias is not None:
        codes = quantize_bias(bias, in_qp.scale, w_scale)
    elif bias_q is not None:
        codes = int32_bias(bias_q)
    else:
        codes = None
    act_min, act_max = activation_clamp(activation, out_qp)
    return LayerIntegers(codes, m0, shift, act_min, act_max)


@dataclass(frozen=True)
class AddMultipliers:
    """The fixed-point numbers of a quantized ADD (TFLite add.cc Prepare; Eq. 32-34)."""

    a_m0: int
    a_shift: int
    b_m0: int
    b_shift: int
    out_m0: int
    out_shift: int
    left_shift: int = 20


def add_multipliers(a_scale: float, b_scale: float, out_scale: float, *, left_shift: int = 20) -> AddMultipliers:
    """TFLite's recipe for ADD (Eq. 33): common scale T = 2 max(Sa, Sb), then

        Ma = Sa / T,  Mb = Sb / T   (both <= 1/2)        Mout = T / (2^left_shift S_out)

    each as (m0, shift) by ``quantize_multiplier``; all three must be < 1 (shift <= 0).
    Pass float32-rounded scales to match TFLite bit for bit (its scales are float32).
    """
    sa = float(_positive(a_scale, "a_scale"))
    sb = float(_positive(b_scale, "b_scale"))
    so = float(_positive(out_scale, "out_scale"))
    left_shift = _int(left_shift, "left_shift")
    if not 0 <= left_shift <= 22:
        raise ValueError(f"left_shift must be in [0, 22], got {left_shift}")
    twice_max = 2.0 * max(sa, sb)
    am0, ash = quantize_multiplier(sa / twice_max)
    bm0, bsh = quantize_multiplier(sb / twice_max)
    out_real = twice_max / ((1 << left_shift) * so)
    if out_real >= 1.0:
        raise ValueError(
            f"the output multiplier 2 max(Sa, Sb) / (2^{left_shift} S_out) = {out_real:.3g} must be < 1; "
            "the output scale is far smaller than the input scales"
        )
    om0, osh = quantize_multiplier(out_real)
    return AddMultipliers(am0, ash, bm0, bsh, om0, osh, left_shift)
