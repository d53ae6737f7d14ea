"""Quantization parameters: the scale S and zero point Z of r = S (q - Z).

The paper (Sec. 2.1) maps every real value r of a tensor to an integer q with one affine map

    r = S (q - Z)                                                        (Eq. 1)

where S > 0 is a real *scale* and Z an integer *zero point* of the same type as q, chosen so that
the real value 0 is exactly representable (q = Z gives r = 0, Eq. 3). This module holds the small
dataclass that carries (S, Z, qmin, qmax, axis) and the function that derives it from a real range
[lo, hi] (Eqs. 4-7 of docs/equations.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn._checks import as_float_array, check_axis, check_bits, check_bool

_TINY = np.finfo(np.float64).tiny  # smallest normal float64: a scale below it would underflow


def integer_limits(bits: int, *, signed: bool = False, narrow_range: bool = False) -> tuple[int, int]:
    """The integer interval [qmin, qmax] of a ``bits``-bit type (Eq. 2).

    unsigned: [0, 2^bits - 1]        signed: [-2^(bits-1), 2^(bits-1) - 1]
    ``narrow_range`` drops the lowest code, e.g. int8 [-127, 127] (the paper's int8 weights never take
    -128, Sec. 3.1; the reason, int16 accumulation of pairs of products, is its Appendix B).
    """
    bits = check_bits(bits)
    signed = check_bool(signed, "signed")
    narrow_range = check_bool(narrow_range, "narrow_range")
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2**bits - 1
    return qmin + int(narrow_range), qmax


@dataclass(frozen=True, eq=False)
class QParams:
    """Parameters of r = S (q - Z) (Eq. 1) for a whole tensor or for each channel along ``axis``.

    scale      : float, or (C,) float64 array when per-channel.  S > 0.
    zero_point : int,   or (C,) int64 array when per-channel.   qmin <= Z <= qmax.
    qmin, qmax : the integer interval q lives in, e.g. [0, 255] for uint8.
    axis       : None for per-tensor; the channel axis of the tensor otherwise.
    """

    scale: Any
    zero_point: Any
    qmin: int
    qmax: int
    axis: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.qmin, (int, np.integer)) and isinstance(self.qmax, (int, np.integer))):
            raise TypeError(f"qmin and qmax must be integers, got {self.qmin!r} and {self.qmax!r}")
        if not self.qmin < self.qmax:
            raise ValueError(f"qmin must be below qmax, got qmin={self.qmin}, qmax={self.qmax}")
        scale = as_float_array(self.scale, "scale")
        zp = np.asarray(self.zero_point)
        if not np.issubdtype(zp.dtype, np.integer):
            if np.issubdtype(zp.dtype, np.floating) and np.all(np.isfinite(zp)) and np.all(zp == np.round(zp)):
                zp = zp.astype(np.int64)
            else:
                raise TypeError(f"zero_point must be an integer (it is a value of q), got {self.zero_point!r}")
        zp = zp.astype(np.int64)
        if np.any(scale <= 0):
            raise ValueError(f"scale must be positive, got {self.scale!r}")
        if np.any(zp < self.qmin) or np.any(zp > self.qmax):
            raise ValueError(
                f"zero_point must lie in [qmin, qmax] = [{self.qmin}, {self.qmax}] so that 0 is "
                f"representable, got {self.zero_point!r}"
            )
        if self.axis is None:
            if scale.ndim != 0 or zp.ndim != 0:
                raise ValueError(
                    "per-tensor parameters (axis=None) need a scalar scale and zero_point; "
                    "for per-channel parameters pass axis=<channel axis>"
                )
            object.__setattr__(self, "scale", float(scale))
            object.__setattr__(self, "zero_point", int(zp))
        else:
            if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
                raise TypeError(f"axis must be None or an integer, got {self.axis!r}")
            if scale.ndim != 1 or zp.ndim > 1:
                raise ValueError("per-channel parameters need a 1-D scale (one entry per channel)")
            zp = np.broadcast_to(zp, scale.shape).copy()
            object.__setattr__(self, "scale", scale.copy())
            object.__setattr__(self, "zero_point", zp)
            object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "qmin", int(self.qmin))
        object.__setattr__(self, "qmax", int(self.qmax))

    # ----------------------------------------------------------------- derived facts
    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def num_levels(self) -> int:
        """n = qmax - qmin + 1 grid points (256 for 8 bits)."""
        return self.qmax - self.qmin + 1

    @property
    def dtype(self) -> np.dtype:
        """The smallest numpy integer type that holds [qmin, qmax] (uint8, int8, int16 ...)."""
        for dt in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= self.qmin and self.qmax <= info.max:
                return np.dtype(dt)
        return np.dtype(np.int64)

    @property
    def real_range(self) -> tuple[Any, Any]:
        """The reals at the ends of the grid: S (qmin - Z) and S (qmax - Z) (Eq. 7)."""
        lo = self.scale * (self.qmin - np.asarray(self.zero_point, dtype=np.float64))
        hi = self.scale * (self.qmax - np.asarray(self.zero_point, dtype=np.float64))
        if self.axis is None:
            return float(lo), float(hi)
        return lo, hi

    def broadcast_to(self, ndim: int) -> tuple[Any, Any]:
        """scale and zero_point shaped to broadcast against an ``ndim``-dimensional tensor.

        Per-channel parameters of shape (C,) become (1, .., C, .., 1) with C at ``axis``.
        """
        if self.axis is None:
            return self.scale, self.zero_point
        axis = check_axis(self.axis, ndim)
        shape = [1] * ndim
        shape[axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def check_matches(self, x: np.ndarray, name: str = "x") -> None:
        """Raise if per-channel parameters do not fit ``x`` (missing axis, wrong channel count)."""
        if self.axis is None:
            return
        axis = check_axis(self.axis, x.ndim)
        if x.shape[axis] != self.scale.shape[0]:
            raise ValueError(
                f"{name} has {x.shape[axis]} channels along axis {self.axis} but the parameters have "
                f"{self.scale.shape[0]} (one scale per channel needed)"
            )

    def __repr__(self) -> str:
        def fmt(v: Any) -> str:
            return np.array2string(np.asarray(v), precision=6, threshold=8) if np.ndim(v) else f"{v:.6g}"

        return (
            f"QParams(scale={fmt(self.scale)}, zero_point={fmt(self.zero_point)}, "
            f"qmin={self.qmin}, qmax={self.qmax}, axis={self.axis})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QParams):
            return NotImplemented
        return (
            (self.qmin, self.qmax, self.axis) == (other.qmin, other.qmax, other.axis)
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )


def qparams_from_range(
    lo: Any,
    hi: Any,
    bits: int = 8,
    *,
    symmetric: bool = False,
    narrow_range: bool = False,
    signed: bool = False,
    axis: int | None = None,
) -> QParams:
    """Scale and zero point for the real range [lo, hi], with 0 exactly representable.

    Asymmetric (the paper's scheme, for activations and weights alike, Sec. 2.1 and 3.1; the defaults):
        lo' = min(lo, 0),  hi' = max(hi, 0)              widen so the range contains 0   (Eq. 4)
        S = (hi' - lo') / (qmax - qmin)                                                    (Eq. 5)
        Z = clamp(round(qmin - lo'/S), qmin, qmax)       the *nudged* zero point          (Eq. 6)
    Rounding Z to an integer shifts the grid slightly: the represented range becomes
    [S (qmin - Z), S (qmax - Z)] (Eq. 7): the paper's nudge (Sec. 3.1: [a, b] is nudged so that 0.0
    is exactly representable), with the numbers TensorFlow's FakeQuantWithMinMaxArgs computes.

    Symmetric (qlearn's weights, after Krishnamoorthi 2018 and the TFLite int8 specification; with
    ``signed`` and ``narrow_range``, int8 in [-127, 127], the paper's weight codes of Sec. 3.1):
        S = max(|lo|, |hi|) / ((qmax - qmin) / 2),  Z = ceil((qmin + qmax) / 2)           (Eq. 8)
    i.e. Z = 0 for signed types and 128 for uint8, as PyTorch's symmetric observers use.

    A zero-width range (lo == hi == 0, e.g. an all-zero tensor; also a range so narrow that S would
    underflow below the smallest normal float64) gets S = 1 and the Z of Eq. 6/8:
    the only value present, 0, is still exact, and nothing divides by zero.

    An asymmetric range wider than float64 can hold (hi - lo > 1.8e308) is refused with a ValueError.
    ``bits`` is in [2, 16]; ``symmetric``, ``narrow_range`` and ``signed`` are booleans.

    ``lo``/``hi`` may be 1-D arrays (one entry per channel) together with ``axis``: per-channel.
    """
    qmin, qmax = integer_limits(bits, signed=signed, narrow_range=narrow_range)
    symmetric = check_bool(symmetric, "symmetric")
    lo_a = as_float_array(lo, "lo")
    hi_a = as_float_array(hi, "hi")
    if lo_a.shape != hi_a.shape:
        raise ValueError(f"lo and hi must have the same shape, got {lo_a.shape} and {hi_a.shape}")
    if axis is None and lo_a.ndim != 0:
        raise ValueError(
            "lo and hi are arrays but axis is None: pass axis=<channel axis> for per-channel "
            "parameters, or scalars for one range per tensor"
        )
    if axis is not None:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be None or an integer, got {axis!r}")
        if lo_a.ndim != 1:
            raise ValueError(
                f"per-channel ranges (axis={axis}) must be 1-D arrays with one entry per channel, "
                f"got shape {lo_a.shape}"
            )
    if np.any(lo_a > hi_a):
        raise ValueError(f"the range must have lo <= hi, got lo={lo!r} > hi={hi!r}")

    lo_a = np.minimum(lo_a, 0.0)  # (Eq. 4)
    hi_a = np.maximum(hi_a, 0.0)
    if symmetric:
        zero_point = np.full(lo_a.shape, (qmin + qmax + 1) // 2, dtype=np.int64)  # (Eq. 8)
        half_levels = (qmax - qmin) / 2.0
        scale = np.maximum(-lo_a, hi_a) / half_levels
        scale = np.where(scale >= _TINY, scale, 1.0)  # zero-width range
    else:
        # hi' - lo' can exceed the largest float64 (1.8e308) although both ends are finite: the grid's
        # ends S (qmin - Z), S (qmax - Z) (Eq. 7) could not be represented either, so refuse the range.
        with np.errstate(over="ignore"):
            width = hi_a - lo_a
        if not np.all(np.isfinite(width)):
            raise ValueError(
                f"lo and hi are too far apart: hi - lo overflows float64 (max {np.finfo(np.float64).max:.3g}), "
                f"got lo={lo!r}, hi={hi!r}"
            )
        scale = width / (qmax - qmin)  # (Eq. 5)
        scale = np.where(scale >= _TINY, scale, 1.0)  # zero-width (or sub-normal) range
        zp_real = qmin - lo_a / scale
        # round half away from zero (std::round in TensorFlow's nudging), then clamp (Eq. 6)
        zero_point = np.clip(np.sign(zp_real) * np.floor(np.abs(zp_real) + 0.5), qmin, qmax).astype(np.int64)
    if axis is None:
        return QParams(float(scale), int(zero_point), qmin, qmax, None)
    return QParams(scale, zero_point, qmin, qmax, int(axis))
