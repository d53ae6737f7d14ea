"""Quantize, dequantize and fake-quantize: the two directions of r = S (q - Z).

    quantize:      q  = clamp(round(r / S) + Z, qmin, qmax)                 (Eq. 9)
    dequantize:    r' = S (q - Z)                                           (Eq. 1)
    fake-quantize: r' = S (clamp(round(r / S) + Z, qmin, qmax) - Z)         (Eq. 10)

Fake quantization (paper Sec. 3, "simulated quantization") keeps values in floating point but
snaps them to the grid, so training sees the rounding and clamping errors inference will make.
``round`` is round-half-to-even here, as ``torch.fake_quantize_per_tensor_affine`` uses
(std::nearbyint); a tie x/S = k + 1/2 is the only place the choice matters.

The seed's literal formulas (paper Sec. 3, Eq. 12 there) are kept separately as ``paper_scale`` and
``paper_fake_quant``: they take the range [a, b] as given, without nudging, so 0 may fall between
grid points. The paper itself nudges [a, b] right after its Eq. 12 (Sec. 3.1) so that 0.0 is exactly
representable -- that is ``qparams_from_range`` + ``fake_quantize``.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from qlearn._checks import as_float_array, check_integer_array
from qlearn.qparams import QParams


def _check_qparams(qp: Any) -> QParams:
    if not isinstance(qp, QParams):
        raise TypeError(
            f"expected QParams (make one with qlearn.qparams_from_range), got {type(qp).__name__}"
        )
    return qp


def _scalar_or_array(out: np.ndarray) -> Any:
    return out[()] if out.ndim == 0 else out


def quantize(x: Any, qp: QParams) -> Any:
    """Real values to integers on the grid of ``qp`` (Eq. 9).

    x: any shape, finite reals.  Returns integers in [qmin, qmax] of dtype ``qp.dtype``
    (uint8 for the default 8-bit activations, int8 for signed weights); values outside the
    representable range are clamped to qmin/qmax (the *clipping* error of Eq. 14).
    """
    qp = _check_qparams(qp)
    arr = as_float_array(x, "x", allow_empty=True)
    qp.check_matches(arr)
    scale, zp = qp.broadcast_to(arr.ndim)
    q = np.rint(arr / scale) + zp  # float64: exact for |q| < 2^53
    return _scalar_or_array(np.clip(q, qp.qmin, qp.qmax).astype(qp.dtype))


def dequantize(q: Any, qp: QParams) -> Any:
    """Integers back to reals: r' = S (q - Z) (Eq. 1). Returns float64.

    q must be integers inside [qmin, qmax]; anything else is a mistake upstream, so it is refused
    rather than silently mapped to a real value the grid cannot hold.
    """
    qp = _check_qparams(qp)
    q_arr = check_integer_array(q if isinstance(q, np.ndarray) else np.asarray(q), "q")
    if q_arr.size and (q_arr.min() < qp.qmin or q_arr.max() > qp.qmax):
        raise ValueError(
            f"q holds values outside [qmin, qmax] = [{qp.qmin}, {qp.qmax}] "
            f"(found {q_arr.min()}..{q_arr.max()}); were these made with other parameters?"
        )
    qp.check_matches(q_arr, "q")
    scale, zp = qp.broadcast_to(q_arr.ndim)
    return _scalar_or_array(scale * (q_arr.astype(np.float64) - zp))


def fake_quantize(x: Any, qp: QParams) -> Any:
    """Snap reals to the grid and back: dequantize(quantize(x)) in float64 (Eq. 10)."""
    qp = _check_qparams(qp)
    arr = as_float_array(x, "x", allow_empty=True)
    qp.check_matches(arr)
    scale, zp = qp.broadcast_to(arr.ndim)
    q = np.clip(np.rint(arr / scale) + zp, qp.qmin, qp.qmax)
    return _scalar_or_array(scale * (q - zp))


#: Largest number of levels ``paper_scale`` accepts: 2^16, the 16-bit grid (``check_bits``' upper bound).
PAPER_LEVELS_MAX = 2**16


def paper_scale(a: float, b: float, n: int) -> float:
    """The seed's step size s(a, b, n) = (b - a) / (n - 1), n = number of levels (256 for 8 bits) (Eq. 11).

    n is an integer in [2, 2^16]; a < b, and b - a must fit a float64 (|b - a| <= 1.8e308).
    """
    a_f, b_f = float(as_float_array(a, "a")), float(as_float_array(b, "b"))
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n is the number of quantization levels, an integer (256 for 8 bits), got {n!r}")
    n = int(n)
    if not 2 <= n <= PAPER_LEVELS_MAX:
        raise ValueError(f"n must be at least 2 levels and at most 2^16 = {PAPER_LEVELS_MAX}, got {n}")
    if not a_f < b_f:
        raise ValueError(f"the range needs a < b, got a={a_f}, b={b_f}")
    width = b_f - a_f  # Python floats: overflow gives inf, not an exception
    if not np.isfinite(width):
        raise ValueError(
            f"a and b are too far apart: b - a overflows float64 (max {np.finfo(np.float64).max:.3g}), "
            f"got a={a_f}, b={b_f}"
        )
    return width / (n - 1)


def paper_fake_quant(r: Any, a: float, b: float, n: int) -> Any:
    """The seed's fake-quant formula, literally (paper Sec. 3, Eq. 12 there; our Eq. 12):

        q(r; a, b, n) = round((clamp(r; a, b) - a) / s(a, b, n)) * s(a, b, n) + a

    with round-to-nearest (ties away from zero; the argument is never negative). Unlike
    ``fake_quantize`` the range [a, b] is used as given: no nudging, so 0 need not be on the grid.
    (This is Eq. 12 read without the paper's next sentence, Sec. 3.1, which nudges [a, b] so that 0.0
    is representable; with the nudge the worked example gives 1.00588.)
    Worked example (seed): r = 1.0, a = -3.2, b = 1.3, n = 256 gives s = 4.5/255 = 0.017647... and
    (1.0 + 3.2)/s = 238 exactly, so the result is 1.0; the blog's 1.0064 comes from rounding s to
    0.0176 before dividing (4.2/0.0176 = 238.6 -> 239).
    """
    s = paper_scale(a, b, n)
    arr = as_float_array(r, "r", allow_empty=True)
    steps = np.floor((np.clip(arr, a, b) - a) / s + 0.5)
    return _scalar_or_array(steps * s + a)
