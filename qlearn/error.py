"""Error analysis: how far is the quantized tensor from the real one, and why?

- ``mse``, ``max_abs_error``, ``sqnr_db`` measure the error e = x_hat - x.
- ``uniform_noise_mse(S) = S^2 / 12`` is the classic model (Eq. 17): inside the range, rounding
  error is roughly uniform on [-S/2, S/2]. Each extra bit halves S, so the MSE falls 4x and the
  SQNR rises 20 log10(2) = 6.02 dB per bit (Eq. 18).
- ``error_breakdown`` splits the total MSE into its two causes (Eq. 14): *rounding* (values inside the
  representable range, |e| <= S/2) and *clipping* (values outside it, clamped to the ends).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn._checks import as_float_array
from qlearn.qparams import QParams
from qlearn.quantize import _check_qparams, fake_quantize


def _pair(x: Any, x_hat: Any) -> tuple[np.ndarray, np.ndarray]:
    a = as_float_array(x, "x")
    b = as_float_array(x_hat, "x_hat")
    if a.shape != b.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def mse(x: Any, x_hat: Any) -> float:
    """Mean squared error mean((x_hat - x)^2)."""
    a, b = _pair(x, x_hat)
    return float(np.mean((b - a) ** 2))


def max_abs_error(x: Any, x_hat: Any) -> float:
    """max |x_hat - x|: at most S/2 inside the range (Eq. 17's bound), unbounded outside it."""
    a, b = _pair(x, x_hat)
    return float(np.max(np.abs(b - a)))


def _log10_sum_squares(v: np.ndarray, peak: float) -> float:
    """log10(sum v^2) without overflow or underflow: v is divided by its peak |v| first.

    sum (v / peak)^2 lies in [1, v.size], so the logarithm is 2 log10(peak) + log10(that sum).
    """
    return 2.0 * float(np.log10(peak)) + float(np.log10(np.sum((v / peak) ** 2)))


def sqnr_db(x: Any, x_hat: Any) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x_hat - x)^2) in dB (Eq. 18).

    Returns +inf when the reconstruction is exact (no noise at all), and raises when the signal
    itself is all zeros (the ratio means nothing there). Signal and noise are each scaled by their
    largest magnitude before squaring, so values near the ends of float64 (1e200, 1e-200), whose
    squares would overflow to inf or underflow to 0, give the same answer as values near 1.
    """
    a, b = _pair(x, x_hat)
    peak_x = float(np.max(np.abs(a)))
    if peak_x == 0.0:
        raise ValueError("x is all zeros: the signal-to-noise ratio is undefined for a zero signal")
    with np.errstate(over="ignore"):
        e = b - a  # float64 (N,); inf only where |x_hat - x| exceeds 1.8e308
    if np.all(np.isfinite(e)):
        peak_e = float(np.max(np.abs(e)))
        if peak_e == 0.0:
            return float("inf")
        log_noise = _log10_sum_squares(e, peak_e)
    else:  # the difference overflowed: subtract after scaling both sides by their common peak
        peak = max(peak_x, float(np.max(np.abs(b))))
        log_noise = _log10_sum_squares(b / peak - a / peak, 1.0) + 2.0 * float(np.log10(peak))
    return 10.0 * (_log10_sum_squares(a, peak_x) - log_noise)


def uniform_noise_mse(scale: Any) -> Any:
    """S^2 / 12: the MSE of rounding error uniform on [-S/2, S/2] (Eq. 17)."""
    s = as_float_array(scale, "scale")
    if np.any(s <= 0):
        raise ValueError(f"scale must be positive, got {scale!r}")
    out = s * s / 12.0
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class ErrorBreakdown:
    """Total MSE = rounding_mse + clipping_mse (Eq. 14); each is a sum over its values divided by N."""

    rounding_mse: float
    clipping_mse: float
    clipped_fraction: float  # share of values outside the representable range

    @property
    def total_mse(self) -> float:
        return self.rounding_mse + self.clipping_mse


def error_breakdown(x: Any, qp: QParams) -> ErrorBreakdown:
    """Split the fake-quantization error of ``x`` under ``qp`` into rounding and clipping (Eq. 14).

    A value is *clipped* when it lies outside [S (qmin - Z), S (qmax - Z)] by more than half a step,
    i.e. when rounding alone cannot bring it onto the grid; every other value carries rounding error
    only (at most S/2).
    """
    qp = _check_qparams(qp)
    arr = as_float_array(x, "x")
    x_hat = fake_quantize(arr, qp)
    scale, zp = qp.broadcast_to(arr.ndim)
    lo = scale * (qp.qmin - zp - 0.5)
    hi = scale * (qp.qmax - zp + 0.5)
    clipped = (arr < lo) | (arr > hi)
    sq = (x_hat - arr) ** 2
    n = arr.size
    return ErrorBreakdown(
        rounding_mse=float(sq[~clipped].sum() / n),
        clipping_mse=float(sq[clipped].sum() / n),
        clipped_fraction=float(clipped.mean()),
    )
