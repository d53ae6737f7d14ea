"""Integer-only kernels: the arithmetic of paper Sec. 2.2-2.4 on integer arrays.

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

The kernels ``conv2d``, ``conv2d_accumulator``, ``linear``, ``add``, ``avg_pool`` and ``requantize``
take integer arrays and integer parameters only (float arrays are a ``TypeError``) and check every
argument with the checks of ``qlearn.integer_args``. The rest of the engine lives next door:
``qlearn.layer_integers`` turns float scales into these integer parameters (M0/shift, int32 bias,
clamp), ``qlearn.integer_layers`` freezes one
kernel's parameters into a layer (checked once, at construction) and ``qlearn.integer_model`` chains
layers into ``IntegerModel``.

How the sums stay exact without an integer matrix multiply: the centred activations satisfy
|q1 - Z1| <= 255 and the weights |q2| <= 128, so every product has |p| <= 255 * 128 = 32640 < 2^15
and every partial sum of K products has |s| <= 32640 K. Integers up to 2^53 are exact in float64,
so a float64 BLAS matrix product (in any summation order, with or without FMA) returns the exact
integer sum whenever 32640 K < 2^53, i.e. K < 2.7e11 terms (Eq. 26). The kernels check the bound
(with the actual maxima; if it is below 2^24 they use float32, which is then exact too).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qlearn._checks import check_integer_array
from qlearn.fixedpoint import INT32_MAX, INT32_MIN, Int32OverflowError, multiply_by_quantized_multiplier
from qlearn.integer_args import (
    OUT_DTYPES,
    _activation,
    _bias,
    _clamp,
    _int,
    _linear_args,
    _multipliers,
    _output_grid,
    _padding,
    _pair,
    _weights,
    _zero_point,
)

__all__ = [
    "Int32OverflowError",
    "conv2d",
    "conv2d_accumulator",
    "linear",
    "add",
    "avg_pool",
    "requantize",
]


# ---------------------------------------------------------------------------------------------
# Shared arithmetic: the int32 range check, the exact matrix product and the requantization
# ---------------------------------------------------------------------------------------------
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
# Unchecked cores: the arithmetic alone, on arguments the callers have checked (the kernels below
# check everything on each call; the frozen layers of qlearn.integer_layers check their parameters
# once, at construction, and only the input on each call).
# ---------------------------------------------------------------------------------------------
def _conv_acc(x: np.ndarray, x_zp: int, w: np.ndarray, bias: np.ndarray, stride: tuple[int, int],
              padding: Any, groups: int) -> np.ndarray:
    """The int32 accumulator of a conv (Eq. 25) as int64; x (N, Cin, H, W), w (Cout, Cin/groups, kh, kw)
    int8, bias (Cout,) int64, stride (sh, sw), padding as ``_padding`` reads it. Checks only what
    depends on the input: its channels against w and its size against the kernel."""
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    sh, sw = stride
    if cin % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({cin}) and output channels ({cout})")
    if cg * groups != cin:
        raise ValueError(
            f"w_q has {cg} input channels per group but x_q has {cin} channels / {groups} groups = "
            f"{cin // groups}; w_q must be (Cout, Cin/groups, kh, kw)"
        )
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


def _conv_out(x: np.ndarray, x_zp: int, w: np.ndarray, bias: np.ndarray, m0: np.ndarray, shift: np.ndarray,
              out_zp: int, lo: int, hi: int, stride: tuple[int, int], padding: Any, groups: int) -> np.ndarray:
    """``conv2d`` on checked arguments (m0 / shift (Cout,) int64): accumulate, then requantize (Eq. 21)."""
    acc = _conv_acc(x, x_zp, w, bias, stride, padding, groups)
    return _requantize_acc(acc, m0, shift, out_zp, lo, hi, x.dtype, channel_axis=1)


def _linear_out(x: np.ndarray, x_zp: int, w: np.ndarray, bias: np.ndarray, m0: np.ndarray, shift: np.ndarray,
                out_zp: int, lo: int, hi: int) -> np.ndarray:
    """``linear`` on checked arguments: x (N, In), w (Out, In) int8, bias / m0 / shift (Out,) int64."""
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w_q is (Out, In) = {w.shape} but x_q has {x.shape[1]} features (shape {x.shape})")
    xc = x.astype(np.int16) - np.int16(x_zp)  # (N, In), |.| <= 255
    acc = _exact_matmul(xc, w.T, int(np.abs(xc).max()), int(np.abs(w.astype(np.int16)).max()), w.shape[1])
    acc = acc + bias[None, :]  # (N, Out) int64 holding the int32 accumulator
    _check_int32(acc, f"linear {tuple(w.shape)}")
    return _requantize_acc(acc, m0, shift, out_zp, lo, hi, x.dtype, channel_axis=1)


# ---------------------------------------------------------------------------------------------
# Kernels: integer arrays in, integer arrays out; every argument checked on every call.
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
    bias = _bias(bias_q, w.shape[0])
    stride = _pair(stride, "stride", 1)
    _padding(padding)  # the spelling; the amounts depend on the input size
    return _conv_acc(x, x_zp, w, bias, stride, padding, groups)


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
    out_zp, lo, hi = _output_grid(x, out_zp, act_min, act_max)
    cout = _weights(w_q, "w_q", 4).shape[0]
    m0_a, shift_a = _multipliers(m0, shift, cout)
    acc = conv2d_accumulator(x, x_zp, w_q, bias_q, stride=stride, padding=padding, groups=groups)
    return _requantize_acc(acc, m0_a, shift_a, out_zp, lo, hi, x.dtype, channel_axis=1)


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
    return _linear_out(*_linear_args(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, act_min, act_max))


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
    for q, zp, m0, sh in ((a, a_zp, a_m0, a_shift), (b, b_zp, b_m0, b_shift)):
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
