"""qlearn's fixed-point requantization written in ONNX integer operators (``to_onnx(requant="fixedpoint")``).

``qlearn.onnx_export`` with ``requant="float"`` writes the standard QLinear operators, which rescale
the int32 accumulator with a float32 multiplier and round half to even (at most 1 LSB from qlearn per
layer). This module writes, instead, exactly the integers of ``qlearn.fixedpoint`` (Eqs. 22-31), so the
exported graph gives qlearn's codes bit for bit:

    conv / linear   ConvInteger (uint8 x, uint8 w + 128, scalar zero points x_zp and 128) -> int32 sums
                    (Eq. 25; U8U8 kernels widen both operands to 16 bits: exact on every x86 CPU)
                    -> Add int32 bias -> Cast int64 -> MBQM (below) -> + Z3 -> Clip -> Cast uint8
    add             per input: Cast int64 -> - Z -> * 2^left_shift -> MBQM (Eq. 33); sum; MBQM; + Z; Clip
    requantize      Cast int64 -> - Z1 -> MBQM -> + Z3 -> Clip -> Cast uint8

MBQM(x, m0, shift) (TFLite ``MultiplyByQuantizedMultiplier``, Eq. 30), in int64 tensors holding int32
values, with m0 and shift as constants broadcasting over the channel axis (per-channel) or scalars:

    x <- x * 2^max(shift, 0)                               (|x| < 2^31 as in qlearn: no int32 overflow)
    p  = x * m0                                            |p| < 2^62: exact in int64
    h  = Div(p + nudge, 2^31),  nudge = 2^30 if p >= 0 else 1 - 2^30      SRDHM (Eq. 27)
    RoundingDivideByPOT(h, e), e = max(-shift, 0), P = 2^e:                                (Eq. 28)
        result = Sign(h) * Div(|h| + P/2, P)   (P/2 = 0 when e = 0)

The last line is gemmlowp's remainder / threshold rule, (h >> e) + (h & (P-1) > (P-1)/2 + (h < 0)),
rewritten in sign and magnitude: both round h / P to nearest with ties away from zero, and on the
magnitude |h| + P/2 >= 0 the division is a floor whatever a runtime's integer Div does with negatives.
ONNX Runtime's integer Div truncates toward zero, as C's '/' (measured in tests/test_onnx_export.py:
Div(-7, 4) = -1), which is exactly the truncation of SRDHM; the second Div divides a non-negative
number, where truncation is the floor. ``BitShift`` is defined for unsigned types only, hence Div here.
SRDHM's saturation (only INT32_MIN * INT32_MIN) cannot occur: m0 is in [0, 2^31 - 1].
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mbqm", "to_uint8", "conv_integer", "add_fixedpoint", "requantize_fixedpoint"]


def _i64(v: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An int64 constant: a scalar, or a (C,) array reshaped to ``shape`` (e.g. (C, 1, 1) for NCHW)."""
    a = np.asarray(v, dtype=np.int64)
    return a.reshape(()) if a.size == 1 else a.reshape(shape)


def mbqm(g: Any, x: str, m0: Any, shift: Any, out: str, shape: tuple[int, ...] = (-1,)) -> str:
    """Append MBQM(x, m0, shift) (Eq. 30, the module docstring) to graph ``g``; returns ``out`` (int64).

    x: an int64 tensor holding int32 values; m0: int in [0, 2^31 - 1] or (C,) array; shift: int in
    [-31, 30] or (C,) array; per-channel constants are reshaped to ``shape`` to broadcast against x.
    """
    m = np.asarray(m0, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if m.min(initial=0) < 0 or m.max(initial=0) > 2**31 - 1 or s.min(initial=0) < -31 or s.max(initial=0) > 30:
        raise ValueError(f"{out}: m0 must be in [0, 2^31 - 1] and shift in [-31, 30] (Eq. 23)")
    left, right = np.maximum(s, 0), np.maximum(-s, 0)
    if left.any():  # x 2^left, int32-valued for every layer qlearn accepts
        x = g.node("Mul", [x, g.const(f"{out}__left", _i64(np.int64(1) << left, shape))], f"{out}__shifted")
    p = g.node("Mul", [x, g.const(f"{out}__m0", _i64(m, shape))], f"{out}__prod")  # |p| < 2^62
    neg = g.node("Less", [p, g.const(f"{out}__zero", np.asarray(0, np.int64))], f"{out}__pneg")
    nudge = g.node("Where", [neg, g.const(f"{out}__nudge_neg", np.asarray(1 - 2**30, np.int64)),
                             g.const(f"{out}__nudge_pos", np.asarray(2**30, np.int64))], f"{out}__nudge")
    num = g.node("Add", [p, nudge], f"{out}__num")
    h = g.node("Div", [num, g.const(f"{out}__two31", np.asarray(2**31, np.int64))],
               f"{out}__srdhm" if right.any() else out)  # truncates toward zero: SRDHM, int32-valued
    if not right.any():
        return h
    pot = np.int64(1) << right  # P = 2^e, e in [0, 31]
    sign = g.node("Sign", [h], f"{out}__sign")  # -1, 0 or 1
    mag = g.node("Add", [g.node("Abs", [h], f"{out}__abs"), g.const(f"{out}__half", _i64(pot >> 1, shape))],
                 f"{out}__abs_half")  # |h| + P/2 (0 when e = 0) < 2^32: no overflow in int64
    mag = g.node("Div", [mag, g.const(f"{out}__pot", _i64(pot, shape))], f"{out}__round")  # >= 0: the floor
    return g.node("Mul", [sign, mag], out)


def to_uint8(g: Any, y: str, zp: int, act_min: int, act_max: int, out: str) -> str:
    """int64 scaled values -> clamp(y + zp, act_min, act_max) as uint8 codes (Eq. 21, 37); exact."""
    lo, hi = max(int(act_min), 0), min(int(act_max), 255)
    y = g.node("Add", [y, g.const(f"{out}__zp", np.asarray(int(zp), np.int64))], f"{out}__plus_zp")
    y = g.node("Clip", [y, g.const(f"{out}__lo", np.asarray(lo, np.int64)),
                        g.const(f"{out}__hi", np.asarray(hi, np.int64))], f"{out}__clip")
    return g.node("Cast", [y], out, to=g.onnx.TensorProto.UINT8)


def _centred(g: Any, x: str, zp: int, name: str) -> str:
    """uint8 codes -> int64 q - zp (in [-255, 255])."""
    x = g.node("Cast", [x], f"{name}__i64", to=g.onnx.TensorProto.INT64)
    return g.node("Sub", [x, g.const(f"{name}__zp_in", np.asarray(int(zp), np.int64))], f"{name}__centred")


def conv_integer(g: Any, layer: Any, x: str, w: np.ndarray, attrs: dict, out: str) -> str:
    """A QConv2d / QLinear (as a 1x1 conv) in integer ops; ``w`` (Cout, Cin/groups, kh, kw) int8.

    ConvInteger pads with x_zero_point (Eq. 38) and takes only a scalar weight zero point in ONNX
    Runtime: the uint8 codes w + 128 with zero point 128 are that (module docstring of onnx_graph).
    """
    w_u8 = (np.asarray(w, dtype=np.int16) + 128).astype(np.uint8)  # (Cout, ...) in [1, 255]
    acc = g.node("ConvInteger", [x, g.const(f"{layer.name}__w", w_u8),
                                 g.const(f"{layer.name}__x_zp", np.asarray(layer.in_zp, np.uint8)),
                                 g.const(f"{layer.name}__w_zp", np.asarray(128, np.uint8))],
                 f"{layer.name}__acc", **attrs)  # (N, Cout, Ho, Wo) int32: exact sums (Eq. 25)
    bias = np.asarray(layer.bias_q, dtype=np.int32).reshape(-1, 1, 1)  # (Cout, 1, 1) int32 on S1 S2 (Eq. 24)
    acc = g.node("Add", [acc, g.const(f"{layer.name}__bias", bias)], f"{layer.name}__acc_b")  # int32 (Eq. 25)
    acc = g.node("Cast", [acc], f"{layer.name}__acc64", to=g.onnx.TensorProto.INT64)
    y = mbqm(g, acc, layer.m0, layer.shift, f"{layer.name}__mbqm", shape=(-1, 1, 1))
    return to_uint8(g, y, layer.out_zp, layer.act_min, layer.act_max, out)


def add_fixedpoint(g: Any, layer: Any, a: str, b: str, out: str) -> str:
    """qlearn.integer.add (TFLite ADD, Eqs. 32-34) in integer ops: uint8 a, b -> uint8 ``out``."""
    terms = []
    for x, zp, m0, sh, nm in ((a, layer.a_zp, layer.a_m0, layer.a_shift, "a"),
                              (b, layer.b_zp, layer.b_m0, layer.b_shift, "b")):
        c = _centred(g, x, zp, f"{out}__{nm}")  # |q - Z| <= 255
        c = g.node("Mul", [c, g.const(f"{out}__{nm}_ls", np.asarray(1 << int(layer.left_shift), np.int64))],
                   f"{out}__{nm}_shifted")  # |.| <= 255 2^22 < 2^31
        terms.append(mbqm(g, c, m0, sh, f"{out}__{nm}_scaled", shape=()))
    s = g.node("Add", terms, f"{out}__sum")  # int32-valued (each term <= 2^30)
    y = mbqm(g, s, layer.out_m0, layer.out_shift, f"{out}__mbqm", shape=())
    return to_uint8(g, y, layer.out_zp, layer.act_min, layer.act_max, out)


def requantize_fixedpoint(g: Any, layer: Any, x: str, out: str) -> str:
    """qlearn.integer.requantize on uint8 codes in integer ops -> uint8 ``out``."""
    c = _centred(g, x, layer.in_zp, out)
    y = mbqm(g, c, layer.m0, layer.shift, f"{out}__mbqm", shape=())
    return to_uint8(g, y, layer.out_zp, layer.act_min, layer.act_max, out)
