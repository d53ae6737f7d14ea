"""The arguments of the integer kernels (``qlearn.integer``): checked, and read into one form.

Every kernel takes integer arrays and integer parameters only; each function here checks one kind
of argument and raises a ``TypeError`` / ``ValueError`` naming it, with a message a learner can act
on: activations are uint8 or int8 (paper Sec. 2.1), weights int8 with zero point 0, the bias int32
of scale S1 S2 (Eq. 24), zero points inside their dtype's range, the fixed-point multipliers
(m0, shift) inside TFLite's ranges (Eq. 23), and the fused activation clamp inside the output dtype
(Eq. 37). ``_padding`` also reads the padding spellings, TensorFlow's "same" included. The kernels
(``qlearn.integer``), their int16-pair emulation (``qlearn.saturation``) and the frozen layers
(``qlearn.integer_layers``, checked once at construction) share these checks.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from qlearn._checks import check_integer_array
from qlearn.fixedpoint import INT32_MAX, INT32_MIN

ACTIVATION_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))
OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


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


def _output_grid(x: np.ndarray, out_zp: Any, act_min: Any, act_max: Any) -> tuple[int, int, int]:
    """(out_zp, act_min, act_max) checked against the output dtype, which is the input's dtype."""
    out_zp = _zero_point(out_zp, "out_zp", x.dtype)
    lo, hi = _clamp(act_min, act_max, x.dtype)
    return out_zp, lo, hi


def _groups(groups: Any, cout: int) -> int:
    groups = _int(groups, "groups")
    if groups < 1 or cout % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the output channels ({cout})")
    return groups


def _linear_args(x_q: Any, x_zp: Any, w_q: Any, bias_q: Any, m0: Any, shift: Any, out_zp: Any,
                 act_min: Any, act_max: Any) -> tuple:
    """The checked arguments of a fully connected layer (``linear`` here and in ``qlearn.saturation``):
    x (N, In), x_zp, w (Out, In) int8, bias (Out,) int64, m0 and shift (Out,), out_zp, clamp lo, hi."""
    x = _activation(x_q, "x_q", 2)
    x_zp = _zero_point(x_zp, "x_zp", x.dtype)
    w = _weights(w_q, "w_q", 2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w_q is (Out, In) = {w.shape} but x_q has {x.shape[1]} features (shape {x.shape})")
    out_zp, lo, hi = _output_grid(x, out_zp, act_min, act_max)
    bias = _bias(bias_q, w.shape[0])
    m0_a, shift_a = _multipliers(m0, shift, w.shape[0])
    return x, x_zp, w, bias, m0_a, shift_a, out_zp, lo, hi
