"""Integer-only inference: the kernels of paper Sec. 2.2-2.4 and a tiny engine that chains them.

Every tensor here is an integer array and every parameter an integer; no float touches the data
path. A quantized layer computes, for real values r = S (q - Z) (Eq. 1),

    q3 = Z3 + M (q_bias + sum_j (q1_j - Z1) q2_j)                        (Eq. 20-21)
    M  = S1 S2 / S3  ~=  M0 2^(shift - 31)                               (Eq. 22-23)

with int8 weights q2 (symmetric, Z2 = 0: qlearn's weight format, after Krishnamoorthi 2018 and the
TFLite int8 specification; the paper's weights keep a zero point), uint8 (or int8) activations q1 / q3, an int32 bias of
scale S1 S2 and zero point 0 (Eq. 24), an int32 accumulator (Eq. 25) and the fixed-point
multiplication of ``qlearn.fixedpoint`` (Eq. 27-31). The fused activation is the clamp
[act_min, act_max] of the output (paper Sec. 2.4; Eq. 37): ReLU6 costs nothing. Because the
weights are symmetric (Z2 = 0), the input is simply centred, q1 - Z1; the paper's expansion of
sum (q1 - Z1)(q2 - Z2) into four sums (Eq. 39) is what a kernel needs when Z2 != 0.

Two layers of API:

* kernels ``conv2d``, ``linear``, ``add``, ``avg_pool``, ``requantize`` take integer arrays and
  integer parameters only (float arrays are a ``TypeError``);
* layers ``QConv2d``, ``QLinear``, ``QAdd``, ``QGlobalAvgPool``, ``QRequantize``: frozen dataclasses
  holding one kernel's parameters (plus the real scales, for ``describe()``), and ``IntegerModel``,
  which runs a list of layers on an integer input.

Helpers for a converter: ``requant_multiplier`` (S1 S2 / S3 -> M0, shift), ``quantize_bias``
(float bias -> int32 of scale S1 S2), ``activation_range`` (ReLU / ReLU6 / none -> clamp),
``add_multipliers`` (the six fixed-point numbers of a quantized add).

How the sums stay exact without an integer matrix multiply: the centred activations satisfy
|q1 - Z1| <= 255 and the weights |q2| <= 128, so every product has |p| <= 255 * 128 = 32640 < 2^15
and every partial sum of K products has |s| <= 32640 K. Integers up to 2^53 are exact in float64,
so a float64 BLAS matrix product (in any summation order, with or without FMA) returns the exact
integer sum whenever 32640 K < 2^53, i.e. K < 2.7e11 terms (Eq. 26). The kernels check the bound
(with the actual maxima; if it is below 2^24 they use float32, which is then exact too).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qlearn._checks import as_float_array, check_integer_array
from qlearn.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    Int32OverflowError,
    multiplier_value,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)
from qlearn.qparams import QParams

__all__ = [
    "Int32OverflowError",
    "conv2d",
    "conv2d_accumulator",
    "linear",
    "add",
    "avg_pool",
    "requantize",
    "requant_multiplier",
    "quantize_bias",
    "activation_range",
    "add_multipliers",
    "AddMultipliers",
    "QConv2d",
    "QLinear",
    "QAdd",
    "QGlobalAvgPool",
    "QRequantize",
    "IntegerModel",
]

ACTIVATION_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))
OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


# ---------------------------------------------------------------------------------------------
# Argument checks (each raises TypeError / ValueError with a message a learner can act on)
# ---------------------------------------------------------------------------------------------
def _int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _activation(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    x = check_integer_array(x, name)
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"{name} must be uint8 or int8 activations (paper Sec. 2.1), got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    return x


def _zero_point(zp: Any, name: str, dtype: np.dtype) -> int:
    zp = _int(zp, name)
    info = np.iinfo(dtype)
    if not info.min <= zp <= info.max:
        raise ValueError(
            f"{name}={zp} is outside the {dtype} range [{info.min}, {info.max}]; a zero point is a "
            "value of q and must be representable (paper Sec. 2.1)"
        )
    return zp


def _clamp(act_min: Any, act_max: Any, dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    lo = info.min if act_min is None else _int(act_min, "act_min")
    hi = info.max if act_max is None else _int(act_max, "act_max")
    if not info.min <= lo <= hi <= info.max:
        raise ValueError(
            f"the activation clamp must satisfy {info.min} <= act_min <= act_max <= {info.max} "
            f"for {dtype} outputs, got act_min={lo}, act_max={hi}"
        )
    return lo, hi


def _weights(w: Any, name: str, ndim: int) -> np.ndarray:
    w = check_integer_array(w, name)
    if w.dtype != np.int8:
        raise TypeError(f"{name} must be int8 (symmetric weights, zero point 0; docs/conventions.md), got {w.dtype}")
    if w.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"{name} is empty")
    return w


def _bias(bias: Any, n_out: int) -> np.ndarray:
    if bias is None:
        return np.zeros(n_out, dtype=np.int64)
    b = check_integer_array(bias, "bias_q")
    if b.shape != (n_out,):
        raise ValueError(f"bias_q must have shape ({n_out},) (one int32 per output channel), got {b.shape}")
    b = b.astype(np.int64)
    if b.min() < INT32_MIN or b.max() > INT32_MAX:
        raise ValueError("bias_q must hold int32 values (Eq. 24); quantize it with quantize_bias")
    return b


def _multipliers(m0: Any, shift: Any, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """m0 / shift as (n_out,) int64 arrays; scalars broadcast. Ranges: m0 in [0, 2^31-1], shift in [-31, 30]."""
    arrays = []
    for value, name, lo, hi in ((m0, "m0", 0, INT32_MAX), (shift, "shift", -31, 30)):
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            arr = np.full(n_out, int(value), dtype=np.int64)
        else:
            arr = check_integer_array(value, name)
            if arr.ndim == 0:
                arr = np.full(n_out, int(arr), dtype=np.int64)
            elif arr.shape != (n_out,):
                raise ValueError(
                    f"{name} must be a scalar or have shape ({n_out},) (one per output channel), got {arr.shape}"
                )
            arr = arr.astype(np.int64)
        if arr.min() < lo or arr.max() > hi:
            raise ValueError(
                f"{name} must lie in [{lo}, {hi}] (TFLite's fixed-point multiplier, Eq. 23), got values in "
                f"[{arr.min()}, {arr.max()}]; make it with quantize_multiplier / requant_multiplier"
            )
        arrays.append(arr)
    return arrays[0], arrays[1]


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        out = (_int(v[0], name), _int(v[1], name))
    else:
        out = (_int(v, name),) * 2
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return out


def _padding(v: Any, size: tuple[int, int] | None = None, kernel: tuple[int, int] = (1, 1),
             stride: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, a pair (h, w), a 4-tuple or "same".

    "same" is TensorFlow's SAME padding for an input of ``size`` (H, W): output ceil(H / s), total
    padding max((ceil(H/s) - 1) s + k - H, 0) per axis, the smaller half before, the larger after --
    asymmetric for a stride-2 layer on an even input (EfficientNet's convs). Without ``size`` only
    the spelling is checked (all zeros returned).
    """
    if isinstance(v, str):
        if v != "same":
            raise ValueError(f"padding must be an int, a pair, a 4-tuple (top, bottom, left, right) or 'same', got {v!r}")
        if size is None:
            return (0, 0, 0, 0)
        pads = []
        for n, k, s in zip(size, kernel, stride):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]
    if isinstance(v, (tuple, list)) and len(v) == 4:
        out4 = tuple(_int(p, "padding") for p in v)
        if min(out4) < 0:
            raise ValueError(f"padding must be >= 0, got {v!r}")
        return out4  # type: ignore[return-value]
    ph, pw = _pair(v, "padding", 0)
    return ph, ph, pw, pw


def _check_int32(acc: np.ndarray, what: str) -> None:
    """Refuse accumulators outside int32 (Eq. 25): hardware would wrap them silently."""
    lo, hi = int(acc.min()), int(acc.max())
    if lo < INT32_MIN or hi > INT32_MAX:
        n_bad = int(np.count_nonzero((acc < INT32_MIN) | (acc > INT32_MAX)))
        raise Int32OverflowError(
            f"{what}: {n_bad} int32 accumulator(s) overflow (values in [{lo}, {hi}], int32 holds "
            f"[{INT32_MIN}, {INT32_MAX}]); an int32 device would wrap these silently. Usually the bias "
            "scale S1*S2 is tiny compared with the bias, or the layer sums too many large products."
        )


def _exact_matmul(a: np.ndarray, b: np.ndarray, a_absmax: int, b_absmax: int, k: int) -> np.ndarray:
    """a @ b for integer-valued float arrays, exact (Eq. 26), returned as int64.

    Every partial sum is bounded by k * a_absmax * b_absmax; below 2^24 float32 is exact, below
    2^53 float64 is. Larger never happens for 8-bit layers (k would need ~2.7e11 terms).
    """
    bound = k * a_absmax * b_absmax
    if bound >= 2**53:
        raise ValueError(f"the layer sums {k} products: too many for an exact sum (bound {bound} >= 2^53)")
    ftype = np.float32 if bound < 2**24 else np.float64
    out = np.matmul(a.astype(ftype, copy=False), b.astype(ftype, copy=False))
    return out.astype(np.int64)  # exact integers already: the cast drops nothing


def _requantize_acc(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, out_zp: int,
                    lo: int, hi: int, dtype: np.dtype, channel_axis: int) -> np.ndarray:
    """int32 accumulator -> clamp(out_zp + MBQM(acc, m0, shift), lo, hi) in ``dtype`` (Eq. 21, 30)."""
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    scaled = multiply_by_quantized_multiplier(acc, m0.reshape(shape), shift.reshape(shape))  # int32
    # clamp first, then add the zero point: an int32 sum scaled + out_zp could wrap, this cannot
    return (np.clip(scaled, lo - out_zp, hi - out_zp) + out_zp).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Kernels: integer arrays in, integer arrays out.
# ---------------------------------------------------------------------------------------------
def conv2d_accumulator(
    x_q: np.ndarray,
    x_zp: int,
    w_q: np.ndarray,
    bias_q: np.ndarray | None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] | str = 0,
    groups: int = 1,
) -> np.ndarray:
    """The int32 accumulator of ``conv2d`` before requantization (Eq. 25), as int64 holding int32 values.

    acc[n, o, i, j] = bias_q[o] + sum_{c,u,v} (x_pad[n, g(o) Cg + c, i sh + u, j sw + v] - x_zp) w_q[o, c, u, v]
    Shapes as in ``conv2d``; raises ``Int32OverflowError`` if any accumulator leaves int32.
    """
    x = _activation(x_q, "x_q", 4)
    x_zp = _zero_point(x_zp, "x_zp", x.dtype)
    w = _weights(w_q, "w_q", 4)
    groups = _int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    if cin % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({cin}) and output channels ({cout})")
    if cg * groups != cin:
        raise ValueError(
            f"w_q has {cg} input channels per group but x_q has {cin} channels / {groups} groups = "
            f"{cin // groups}; w_q must be (Cout, Cin/groups, kh, kw)"
        )
    bias = _bias(bias_q, cout)
    sh, sw = _pair(stride, "stride", 1)
    pt, pb, pl, pr = _padding(padding, (h, wd), (kh, kw), (sh, sw))  # asymmetric for "same" (TF SAME)
    if h + pt + pb < kh or wd + pl + pr < kw:
        raise ValueError(f"the {kh}x{kw} kernel is larger than the padded input {h + pt + pb}x{wd + pl + pr}")

    # Centre the input: x - Z1 in [-255, 255]. Padding with 0 *after* centring is padding x with
    # Z1 before it, so padded pixels are exactly the real value 0 (paper Sec. 2.1; Eq. 38).
    xc = x.astype(np.int16) - np.int16(x_zp)  # (N, Cin, H, W) int16, |.| <= 255
    xc = np.pad(xc, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = sliding_window_view(xc, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # (N, Cin, Ho, Wo, kh, kw) view
    ho, wo = win.shape[2], win.shape[3]
    x_absmax = int(np.abs(xc).max()) if xc.size else 0
    w_absmax = int(np.abs(w.astype(np.int16)).max())
    mult = cout // groups
    if cg == 1 and groups > 1:
        # Depthwise (groups == Cin): a loop over the kh*kw taps (not over pixels), each tap a
        # vectorised multiply-add over (N, Cout, Ho, Wo). Exact in int64 (|acc| <= 32640 kh kw).
        # int32 is enough here: |acc| <= 255 * 128 * kh * kw < 2^31 for any kernel under 256x256.
        if kh * kw * x_absmax * w_absmax >= 2**31:
            raise ValueError(f"a {kh}x{kw} depthwise kernel is too large for an exact int32 sum")
        chan = np.arange(cout) // mult  # input channel of each output channel
        src = win if mult == 1 else win[:, chan]  # (N, Cout, Ho, Wo, kh, kw)
        acc32 = np.zeros((n, cout, ho, wo), dtype=np.int32)
        for u in range(kh):
            for v in range(kw):
                acc32 += src[:, :, :, :, u, v] * w[:, 0, u, v].astype(np.int32)[None, :, None, None]
        acc = acc32.astype(np.int64)
    else:
        # im2col: (G, Cg kh kw, N Ho Wo) columns times (G, Cout/G, Cg kh kw) weights, one BLAS call per group.
        k = cg * kh * kw
        cols = win.reshape(n, groups, cg, ho, wo, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4).reshape(groups, k, n * ho * wo)
        wm = w.reshape(groups, mult, k)
        acc = _exact_matmul(wm, cols, w_absmax, x_absmax, k)  # (G, Cout/G, N Ho Wo) int64
        acc = acc.reshape(cout, n, ho, wo).transpose(1, 0, 2, 3)
    acc = acc + bias[None, :, None, None]
    _check_int32(acc, f"conv2d {tuple(w.shape)}")
    return acc


def conv2d(
    x_q: np.ndarray,
    x_zp: int,
    w_q: np.ndarray,
    bias_q: np.ndarray | None,
    m0: Any,
    shift: Any,
    out_zp: int,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] | str = 0,
    groups: int = 1,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """Quantized 2-D convolution, NCHW (paper Sec. 2.2-2.4; Eq. 20-25).

    x_q    : (N, Cin, H, W) uint8 or int8 activations, zero point ``x_zp`` (in the dtype's range)
    w_q    : (Cout, Cin/groups, kh, kw) int8 weights, zero point 0 (symmetric; codes in [-127, 127] as
             the paper's Sec. 3.1 keeps them, -128 accepted)
    bias_q : (Cout,) int32 of scale S1*S2 and zero point 0 (Eq. 24), or None for no bias
    m0, shift : fixed-point multiplier(s) M ~= m0 2^(shift-31) (Eq. 23), scalars or (Cout,) arrays
               (per-channel weights), from ``requant_multiplier``; m0 in [0, 2^31-1], shift in [-31, 30]
    out_zp : zero point of the output, in the output dtype's range (output dtype = x_q's dtype)
    act_min, act_max : the fused activation clamp on q3 (None = the dtype's whole range);
               ReLU is [out_zp, qmax], ReLU6 [out_zp, out_zp + round(6/S3)] (``activation_range``)

    Returns (N, Cout, Ho, Wo) of x_q's dtype, Ho = (H + 2 ph - kh) // sh + 1.
    padding: an int, a pair (ph, pw), a 4-tuple (top, bottom, left, right), or "same" (TensorFlow's
    SAME: Ho = ceil(H / sh), asymmetric for stride 2 on even sizes); padded pixels hold x_zp (Eq. 38).

    acc = bias_q[o] + sum (x_pad - x_zp) w_q in int32 (Eq. 25; ``conv2d_accumulator``), the padding
    value being x_zp so that padded reals are exactly 0; an accumulator outside int32 raises
    ``Int32OverflowError`` instead of wrapping. Then q3 = clamp(out_zp + MBQM(acc, m0, shift)) (Eq. 21).
    ``groups == Cin`` is a depthwise convolution (MobileNet).
    """
    x = _activation(x_q, "x_q", 4)
    out_zp = _zero_point(out_zp, "out_zp", x.dtype)
    lo, hi = _clamp(act_min, act_max, x.dtype)
    cout = _weights(w_q, "w_q", 4).shape[0]
    m0_a, shift_a = _multipliers(m0, shift, cout)
    acc = conv2d_accumulator(x, x_zp, w_q, bias_q, stride=stride, padding=padding, groups=groups)
    return _requantize_acc(acc, m0_a, shift_a, out_zp, lo, hi, x.dtype, channel_axis=1)


def _linear_args(x_q: Any, x_zp: Any, w_q: Any, bias_q: Any, m0: Any, shift: Any, out_zp: Any,
                 act_min: Any, act_max: Any) -> tuple:
    """The checked arguments of a fully connected layer (``linear`` here and in ``qlearn.saturation``):
    x (N, In), x_zp, w (Out, In) int8, bias (Out,) int64, m0 and shift (Out,), out_zp, clamp lo, hi."""
    x = _activation(x_q, "x_q", 2)
    x_zp = _zero_point(x_zp, "x_zp", x.dtype)
    w = _weights(w_q, "w_q", 2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w_q is (Out, In) = {w.shape} but x_q has {x.shape[1]} features (shape {x.shape})")
    out_zp = _zero_point(out_zp, "out_zp", x.dtype)
    lo, hi = _clamp(act_min, act_max, x.dtype)
    bias = _bias(bias_q, w.shape[0])
    m0_a, shift_a = _multipliers(m0, shift, w.shape[0])
    return x, x_zp, w, bias, m0_a, shift_a, out_zp, lo, hi

def linear(
    x_q: np.ndarray,
    x_zp: int,
    w_q: np.ndarray,
    bias_q: np.ndarray | None,
    m0: Any,
    shift: Any,
    out_zp: int,
    *,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """Quantized fully connected layer: the matrix product of paper Sec. 2.2 (Eq. 20-25).

    x_q (N, In) uint8/int8 with zero point x_zp; w_q (Out, In) int8, zero point 0;
    bias_q (Out,) int32 or None; m0/shift scalars or (Out,) arrays. Returns (N, Out), x_q's dtype:

        q3[n, o] = clamp(out_zp + MBQM(bias_q[o] + sum_i (x_q[n, i] - x_zp) w_q[o, i], m0, shift))
    """
    x, x_zp, w, bias, m0_a, shift_a, out_zp, lo, hi = _linear_args(x_q, x_zp, w_q, bias_q, m0, shift, out_zp,
                                                                    act_min, act_max)
    xc = x.astype(np.int16) - np.int16(x_zp)  # (N, In), |.| <= 255
    acc = _exact_matmul(xc, w.T, int(np.abs(xc).max()), int(np.abs(w.astype(np.int16)).max()), w.shape[1])
    acc = acc + bias[None, :]  # (N, Out) int64 holding the int32 accumulator
    _check_int32(acc, f"linear {tuple(w.shape)}")
    return _requantize_acc(acc, m0_a, shift_a, out_zp, lo, hi, x.dtype, channel_axis=1)


def add(
    a_q: np.ndarray,
    a_zp: int,
    a_m0: int,
    a_shift: int,
    b_q: np.ndarray,
    b_zp: int,
    b_m0: int,
    b_shift: int,
    out_zp: int,
    out_m0: int,
    out_shift: int,
    *,
    left_shift: int = 20,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """Add two quantized tensors with different scales (skip connections; TFLite ADD) (Eq. 32-34).

    This is TFLite's kernel, not the paper's recipe (Appendix A.2 rescales one input onto the other's
    scale, adds, then rescales the sum to the output scale); both compute Eq. 72.

    a_q, b_q: same shape, same dtype (uint8/int8), zero points a_zp, b_zp. Each input is centred,
    shifted left by ``left_shift`` (headroom, so the rescaling keeps 20 fractional bits), rescaled to a
    common scale 2 max(Sa, Sb) by its (m0, shift) (multipliers <= 1/2, shift <= 0), the two are summed
    in int32, and the sum is rescaled to the output by (out_m0, out_shift):

        a' = MBQM((a_q - a_zp) 2^left_shift, a_m0, a_shift)      (likewise b')       (Eq. 33)
        q  = clamp(out_zp + MBQM(a' + b', out_m0, out_shift), act_min, act_max)      (Eq. 34)

    Get the six multiplier numbers from ``add_multipliers(a_scale, b_scale, out_scale)``.
    |a_q - a_zp| <= 255 < 2^8, so left_shift <= 22 keeps the shifted values inside int32.
    """
    a = _activation(a_q, "a_q")
    b = _activation(b_q, "b_q")
    if a.shape != b.shape:
        raise ValueError(f"a_q and b_q must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"a_q and b_q must have the same dtype, got {a.dtype} and {b.dtype}")
    a_zp = _zero_point(a_zp, "a_zp", a.dtype)
    b_zp = _zero_point(b_zp, "b_zp", b.dtype)
    out_zp = _zero_point(out_zp, "out_zp", a.dtype)
    lo, hi = _clamp(act_min, act_max, a.dtype)
    left_shift = _int(left_shift, "left_shift")
    if not 0 <= left_shift <= 22:
        raise ValueError(f"left_shift must be in [0, 22] so that (q - Z) 2^left_shift fits int32, got {left_shift}")
    terms = []
    for q, zp, m0, sh, nm in ((a, a_zp, a_m0, a_shift, "a"), (b, b_zp, b_m0, b_shift, "b")):
        m0_a, sh_a = _multipliers(m0, sh, 1)
        centred = (q.astype(np.int64) - zp) << left_shift  # |.| <= 255 2^22 < 2^30: int32
        terms.append(multiply_by_quantized_multiplier(centred, int(m0_a[0]), int(sh_a[0])).astype(np.int64))
    raw_sum = terms[0] + terms[1]
    _check_int32(raw_sum, "add")
    om0, osh = _multipliers(out_m0, out_shift, 1)
    out = multiply_by_quantized_multiplier(raw_sum, int(om0[0]), int(osh[0])).astype(np.int64) + out_zp
    return np.clip(out, lo, hi).astype(a.dtype)


def avg_pool(
    x_q: np.ndarray,
    *,
    keepdims: bool = False,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """Global average pool over H and W with integer rounding (TFLite AVERAGE_POOL_2D) (Eq. 35).

    x_q (N, C, H, W) uint8/int8 -> (N, C) (or (N, C, 1, 1) with keepdims) of the same dtype and the
    same scale and zero point (the mean of S (q - Z) is S (mean(q) - Z), Z being an integer):

        acc = sum_{h,w} x_q (int32);   q = clamp(round_half_away(acc / (H W)), act_min, act_max)

    computed as TFLite does: sign(acc) ((|acc| + HW/2) // HW) (C integer division of acc +- HW/2).
    Worked: acc = 10, HW = 4: (10 + 2) // 4 = 3 (2.5 -> 3); acc = -10: -3.
    """
    x = _activation(x_q, "x_q", 4)
    if not isinstance(keepdims, bool):
        raise TypeError(f"keepdims must be True or False, got {keepdims!r}")
    lo, hi = _clamp(act_min, act_max, x.dtype)
    count = x.shape[2] * x.shape[3]
    acc = x.astype(np.int64).sum(axis=(2, 3))  # (N, C)
    _check_int32(acc, "avg_pool")
    q = np.sign(acc) * ((np.abs(acc) + count // 2) // count)
    out = np.clip(q, lo, hi).astype(x.dtype)
    return out[:, :, None, None] if keepdims else out


def requantize(
    x_q: np.ndarray,
    x_zp: int,
    m0: Any,
    shift: Any,
    out_zp: int,
    *,
    out_dtype: Any = np.uint8,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """Move integers from one (S1, Z1) grid to another (S3, Z3) (TFLite QUANTIZE / REQUANTIZE) (Eq. 36).

        q3 = clamp(Z3 + MBQM(q1 - Z1, m0, shift), act_min, act_max),   (m0, shift) from S1 / S3

    x_q: any shape, any integer dtype (e.g. int32 accumulators); q1 - Z1 must fit int32.
    out_dtype: uint8, int8, int16 or int32. m0 / shift: scalars (or arrays broadcasting against x_q).
    """
    x = check_integer_array(x_q, "x_q")
    if x.size == 0:
        raise ValueError("x_q is empty")
    x_zp = _int(x_zp, "x_zp")
    try:
        dtype = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"out_dtype must be a numpy integer dtype, got {out_dtype!r}") from None
    if dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of uint8, int8, int16, int32, got {dtype}")
    out_zp = _zero_point(out_zp, "out_zp", dtype)
    lo, hi = _clamp(act_min, act_max, dtype)
    centred = x.astype(np.int64) - x_zp
    _check_int32(centred, "requantize (x_q - x_zp)")
    for value, name, vlo, vhi in ((m0, "m0", 0, INT32_MAX), (shift, "shift", -31, 30)):
        arr = check_integer_array(value if isinstance(value, np.ndarray) else _int(value, name), name)
        if arr.min() < vlo or arr.max() > vhi:
            raise ValueError(f"{name} must lie in [{vlo}, {vhi}] (Eq. 23), got {value!r}")
    scaled = multiply_by_quantized_multiplier(centred, m0, shift)
    out = np.asarray(scaled, dtype=np.int64) + out_zp
    return np.clip(out, lo, hi).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Helpers that turn float scales into the integer parameters above (used by a converter).
# ---------------------------------------------------------------------------------------------
def _positive(v: Any, name: str) -> np.ndarray:
    arr = as_float_array(v, name)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be positive (a quantization scale), got {v!r}")
    return arr


def requant_multiplier(in_scale: float, w_scale: Any, out_scale: float) -> tuple[Any, Any]:
    """M = S1 S2 / S3 (Eq. 22) as TFLite's (m0, shift) (Eq. 23).

    Scalars give (int, int); a per-channel (Cout,) ``w_scale`` gives two (Cout,) int32 arrays.
    Refuses M >= 2^30 (shift > 30), which no sensible layer has.
    """
    s1 = _positive(in_scale, "in_scale")
    s2 = _positive(w_scale, "w_scale")
    s3 = _positive(out_scale, "out_scale")
    if s1.ndim or s3.ndim:
        raise ValueError("in_scale and out_scale must be scalars (per-tensor activations)")
    if s2.ndim > 1:
        raise ValueError(f"w_scale must be a scalar or a 1-D per-channel array, got shape {s2.shape}")
    m = s1 * s2 / s3
    m0, shift = quantize_multiplier(float(m) if m.ndim == 0 else m)
    if np.max(shift) > 30:
        raise ValueError(f"the multiplier S1 S2 / S3 = {np.max(m):.3g} is too large (>= 2^30) for int32 arithmetic")
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


# ---------------------------------------------------------------------------------------------
# Layers: one kernel's parameters, frozen, callable, self-describing.
# ---------------------------------------------------------------------------------------------
def _check_layer_name(layer: Any, n_inputs: int | None) -> None:
    if not isinstance(layer.name, str) or not layer.name or layer.name == "input":
        raise ValueError(f"a layer name must be a non-empty string other than 'input', got {layer.name!r}")
    inputs = layer.inputs
    if isinstance(inputs, str):
        inputs = (inputs,)
    inputs = tuple(inputs)
    if not all(isinstance(i, str) for i in inputs):
        raise TypeError(f"layer {layer.name!r}: inputs must be names (strings), got {layer.inputs!r}")
    if n_inputs is not None and len(inputs) != n_inputs:
        raise ValueError(f"layer {layer.name!r} takes {n_inputs} input(s), got inputs={inputs!r}")
    object.__setattr__(layer, "inputs", inputs)


def _summary(v: Any) -> Any:
    """A scalar stays a number; a per-channel array becomes 'min..max (C)' for a table."""
    arr = np.asarray(v)
    if arr.ndim == 0:
        return arr.item()
    if np.issubdtype(arr.dtype, np.integer):
        return f"{arr.min()}..{arr.max()} ({arr.size})"
    return f"{arr.min():.4g}..{arr.max():.4g} ({arr.size})"


def _one_input(layer: Any, xs: tuple) -> tuple:
    if len(xs) != 1:
        raise TypeError(f"layer {layer.name!r} takes one input, got {len(xs)}")
    return xs


@dataclass(frozen=True, eq=False)
class QConv2d:
    """A quantized conv layer: ``conv2d`` with its parameters (see there for shapes and dtypes).

    in_scale, w_scale (float or (Cout,) array), out_scale are the real scales, kept only for
    ``describe()``; the data path uses m0 / shift, which must have been derived from them
    (``requant_multiplier(in_scale, w_scale, out_scale)``). Arrays are checked at construction.
    """

    name: str
    inputs: tuple[str, ...]
    w_q: np.ndarray  # (Cout, Cin/groups, kh, kw) int8
    bias_q: np.ndarray  # (Cout,) int32
    in_zp: int
    out_zp: int
    m0: Any  # int scalar or (Cout,) int32
    shift: Any  # int scalar or (Cout,) int
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, ...] | str = 0  # int, (ph, pw), (top, bottom, left, right) or "same"
    groups: int = 1
    act_min: int = 0
    act_max: int = 255
    in_scale: float = 1.0
    w_scale: Any = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)
        w = _weights(self.w_q, "w_q", 4)
        _bias(self.bias_q, w.shape[0])
        _multipliers(self.m0, self.shift, w.shape[0])
        _pair(self.stride, "stride", 1)
        _padding(self.padding)
        if _int(self.groups, "groups") < 1 or w.shape[0] % self.groups:
            raise ValueError(f"groups={self.groups} must be >= 1 and divide Cout={w.shape[0]}")

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        (x,) = _one_input(self, xs)
        return conv2d(
            x, self.in_zp, self.w_q, self.bias_q, self.m0, self.shift, self.out_zp,
            stride=self.stride, padding=self.padding, groups=self.groups,
            act_min=self.act_min, act_max=self.act_max,
        )

    def describe(self) -> dict:
        w = np.asarray(self.w_q)
        kind = "depthwise conv" if self.groups > 1 and w.shape[1] == 1 else "conv"
        return {
            "name": self.name, "kind": kind, "inputs": self.inputs,
            "w_shape": tuple(w.shape), "w_dtype": str(w.dtype), "bias_dtype": str(np.asarray(self.bias_q).dtype),
            "stride": self.stride, "padding": self.padding, "groups": self.groups,
            "in_scale": self.in_scale, "w_scale": _summary(self.w_scale), "out_scale": self.out_scale,
            "in_zp": self.in_zp, "out_zp": self.out_zp,
            "M": _summary(multiplier_value(np.asarray(self.m0, dtype=np.int64), np.asarray(self.shift, dtype=np.int64))),
            "m0": _summary(self.m0), "shift": _summary(self.shift),
            "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QLinear:
    """A quantized fully connected layer: ``linear`` with its parameters. w_q (Out, In) int8."""

    name: str
    inputs: tuple[str, ...]
    w_q: np.ndarray  # (Out, In) int8
    bias_q: np.ndarray  # (Out,) int32
    in_zp: int
    out_zp: int
    m0: Any
    shift: Any
    act_min: int = 0
    act_max: int = 255
    in_scale: float = 1.0
    w_scale: Any = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)
        w = _weights(self.w_q, "w_q", 2)
        _bias(self.bias_q, w.shape[0])
        _multipliers(self.m0, self.shift, w.shape[0])

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        (x,) = _one_input(self, xs)
        return linear(
            x, self.in_zp, self.w_q, self.bias_q, self.m0, self.shift, self.out_zp,
            act_min=self.act_min, act_max=self.act_max,
        )

    def describe(self) -> dict:
        w = np.asarray(self.w_q)
        return {
            "name": self.name, "kind": "linear", "inputs": self.inputs,
            "w_shape": tuple(w.shape), "w_dtype": str(w.dtype), "bias_dtype": str(np.asarray(self.bias_q).dtype),
            "in_scale": self.in_scale, "w_scale": _summary(self.w_scale), "out_scale": self.out_scale,
            "in_zp": self.in_zp, "out_zp": self.out_zp,
            "M": _summary(multiplier_value(np.asarray(self.m0, dtype=np.int64), np.asarray(self.shift, dtype=np.int64))),
            "m0": _summary(self.m0), "shift": _summary(self.shift),
            "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QAdd:
    """A quantized elementwise add of two earlier outputs (``add``; TFLite style, left_shift=20).

    Build it with ``QAdd.from_scales``, which derives the multipliers (``add_multipliers``).
    """

    name: str
    inputs: tuple[str, ...]  # exactly two names
    a_zp: int
    a_m0: int
    a_shift: int
    b_zp: int
    b_m0: int
    b_shift: int
    out_zp: int
    out_m0: int
    out_shift: int
    left_shift: int = 20
    act_min: int = 0
    act_max: int = 255
    a_scale: float = 1.0
    b_scale: float = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_layer_name(self, 2)
        for m0, sh in ((self.a_m0, self.a_shift), (self.b_m0, self.b_shift), (self.out_m0, self.out_shift)):
            _multipliers(m0, sh, 1)

    @classmethod
    def from_scales(
        cls,
        name: str,
        inputs: Sequence[str],
        a_scale: float,
        a_zp: int,
        b_scale: float,
        b_zp: int,
        out_scale: float,
        out_zp: int,
        *,
        act_min: int = 0,
        act_max: int = 255,
        left_shift: int = 20,
    ) -> "QAdd":
        """Derive every multiplier from the three real scales (``add_multipliers``, Eq. 33)."""
        m = add_multipliers(a_scale, b_scale, out_scale, left_shift=left_shift)
        return cls(
            name, tuple(inputs), a_zp, m.a_m0, m.a_shift, b_zp, m.b_m0, m.b_shift,
            out_zp, m.out_m0, m.out_shift, left_shift, act_min, act_max,
            float(a_scale), float(b_scale), float(out_scale),
        )

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        if len(xs) != 2:
            raise TypeError(f"layer {self.name!r} adds two inputs, got {len(xs)}")
        return add(
            xs[0], self.a_zp, self.a_m0, self.a_shift, xs[1], self.b_zp, self.b_m0, self.b_shift,
            self.out_zp, self.out_m0, self.out_shift,
            left_shift=self.left_shift, act_min=self.act_min, act_max=self.act_max,
        )

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "add", "inputs": self.inputs,
            "a_scale": self.a_scale, "b_scale": self.b_scale, "out_scale": self.out_scale,
            "a_zp": self.a_zp, "b_zp": self.b_zp, "out_zp": self.out_zp,
            "M": tuple(multiplier_value(int(m), int(sh)) for m, sh in
                       ((self.a_m0, self.a_shift), (self.b_m0, self.b_shift), (self.out_m0, self.out_shift))),
            "m0": (self.a_m0, self.b_m0, self.out_m0), "shift": (self.a_shift, self.b_shift, self.out_shift),
            "left_shift": self.left_shift, "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QGlobalAvgPool:
    """Global average pool (N, C, H, W) -> (N, C); scale and zero point pass through unchanged."""

    name: str
    inputs: tuple[str, ...]
    act_min: int = 0
    act_max: int = 255
    scale: float = 1.0
    zero_point: int = 0

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        (x,) = _one_input(self, xs)
        return avg_pool(x, act_min=self.act_min, act_max=self.act_max)

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "global avg pool", "inputs": self.inputs,
            "in_scale": self.scale, "out_scale": self.scale, "in_zp": self.zero_point,
            "out_zp": self.zero_point, "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QRequantize:
    """Change the grid of a tensor from (in_scale, in_zp) to (out_scale, out_zp) (``requantize``)."""

    name: str
    inputs: tuple[str, ...]
    in_zp: int
    m0: int
    shift: int
    out_zp: int
    act_min: int = 0
    act_max: int = 255
    out_dtype: Any = np.uint8
    in_scale: float = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)
        _multipliers(self.m0, self.shift, 1)

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        (x,) = _one_input(self, xs)
        return requantize(
            x, self.in_zp, self.m0, self.shift, self.out_zp,
            out_dtype=self.out_dtype, act_min=self.act_min, act_max=self.act_max,
        )

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "requantize", "inputs": self.inputs,
            "in_scale": self.in_scale, "out_scale": self.out_scale,
            "in_zp": self.in_zp, "out_zp": self.out_zp,
            "M": multiplier_value(int(self.m0), int(self.shift)), "m0": int(self.m0), "shift": int(self.shift),
            "clamp": (self.act_min, self.act_max),
        }


class IntegerModel:
    """A list of integer layers run in order on an integer input (the paper's integer-only inference).

    layers         : list of QConv2d / QLinear / QAdd / QGlobalAvgPool / QRequantize (any object with
                     ``name``, ``inputs``, ``__call__`` and ``describe``); names unique and not "input";
                     each ``inputs`` entry names an earlier layer or "input" (the model input).
    input_qparams  : per-tensor QParams; ``__call__`` quantizes float inputs with it.
    output_qparams : per-tensor QParams of the last layer's output; ``__call__`` dequantizes with it.
    input_shape    : optional example input shape, used by ``describe()`` to print output shapes.

    ``run(x_q)`` -> last layer's integer output; ``layer_outputs(x_q)`` -> {name: integer output};
    ``__call__(x_float)`` -> float64 output; ``describe()`` -> a printable layer-by-layer table.
    """

    def __init__(
        self,
        layers: Sequence[Any],
        input_qparams: QParams,
        output_qparams: QParams,
        *,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("an IntegerModel needs at least one layer")
        for qp, nm in ((input_qparams, "input_qparams"), (output_qparams, "output_qparams")):
            if not isinstance(qp, QParams):
                raise TypeError(f"{nm} must be a QParams (qlearn.qparams), got {type(qp).__name__}")
            if qp.per_channel:
                raise ValueError(f"{nm} must be per-tensor (axis=None): activations have one scale")
        seen = {"input"}
        for layer in layers:
            for attr in ("name", "inputs", "describe"):
                if not hasattr(layer, attr) or not callable(layer):
                    raise TypeError(
                        f"{layer!r} is not an integer layer (needs name, inputs, describe and __call__)"
                    )
            if layer.name in seen:
                raise ValueError(f"layer name {layer.name!r} is used twice (or is the reserved 'input')")
            missing = [i for i in layer.inputs if i not in seen]
            if missing:
                raise ValueError(
                    f"layer {layer.name!r} reads {missing}, which no earlier layer produces; inputs must name "
                    "earlier layers or 'input'"
                )
            seen.add(layer.name)
        self.layers = layers
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Any:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def layer_outputs(self, x_q: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer's integer output by name (plus "input"), to hunt down LSB differences."""
        x = check_integer_array(x_q, "x_q")
        qp = self.input_qparams
        if x.dtype != qp.dtype:
            raise TypeError(
                f"x_q must have dtype {qp.dtype} (from input_qparams), got {x.dtype}; "
                "quantize float inputs with qlearn.quantize.quantize or call the model on floats"
            )
        if x.size and (x.min() < qp.qmin or x.max() > qp.qmax):
            raise ValueError(f"x_q holds values outside [{qp.qmin}, {qp.qmax}] of input_qparams")
        outs: dict[str, np.ndarray] = {"input": x}
        for layer in self.layers:
            outs[layer.name] = layer(*(outs[i] for i in layer.inputs))
        return outs

    def run(self, x_q: np.ndarray) -> np.ndarray:
        """Integer input -> the last layer's integer output."""
        return self.layer_outputs(x_q)[self.layers[-1].name]

    def __call__(self, x: Any) -> np.ndarray:
        """Float input -> quantize (input_qparams) -> run -> dequantize (output_qparams) -> float64."""
        from qlearn.quantize import dequantize, quantize

        x_q = np.asarray(quantize(x, self.input_qparams))
        return np.asarray(dequantize(self.run(x_q), self.output_qparams))

    def describe(self, x_shape: tuple[int, ...] | None = None) -> str:
        """A table, one row per layer: name, kind, output shape, dtype, scales, zero points, M0, shift, clamp.

        Output shapes come from running an input of ``x_shape`` (or ``input_shape``) filled with the
        input zero point; without a shape the column shows "?".
        """
        shape = x_shape if x_shape is not None else self.input_shape
        outs: dict[str, np.ndarray] = {}
        if shape is not None:
            x0 = np.full(tuple(shape), self.input_qparams.zero_point, dtype=self.input_qparams.dtype)
            outs = self.layer_outputs(x0)
        header = ("name", "kind", "out shape", "dtype", "in scale", "out scale", "in zp", "out zp",
                  "M", "M0", "shift", "clamp")
        rows = [header]
        for layer in self.layers:
            d = layer.describe()
            out = outs.get(layer.name)
            scale_in = d.get("in_scale", d.get("a_scale", ""))
            if d["kind"] == "add":
                scale_in = f"{d['a_scale']:.4g}, {d['b_scale']:.4g}"
                zp_in = f"{d['a_zp']}, {d['b_zp']}"
            else:
                zp_in = d.get("in_zp", "")
            rows.append((
                d["name"], d["kind"],
                "?" if out is None else str(tuple(out.shape)),
                "?" if out is None else str(out.dtype),
                f"{scale_in:.4g}" if isinstance(scale_in, float) else str(scale_in),
                f"{d.get('out_scale', ''):.4g}" if isinstance(d.get("out_scale"), float) else str(d.get("out_scale", "")),
                str(zp_in), str(d.get("out_zp", "")),
                _fmt_cell(d.get("M", "")), _fmt_cell(d.get("m0", "")), _fmt_cell(d.get("shift", "")),
                str(d.get("clamp", "")),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        qi, qo = self.input_qparams, self.output_qparams
        lines.append(
            f"input: scale {qi.scale:.4g}, zero point {qi.zero_point}, {qi.dtype}   "
            f"output: scale {qo.scale:.4g}, zero point {qo.zero_point}, {qo.dtype}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"IntegerModel({len(self.layers)} layers: {', '.join(l.name for l in self.layers)})"


def _fmt_cell(v: Any) -> str:
    if isinstance(v, tuple):
        return ", ".join(_fmt_cell(i) for i in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
