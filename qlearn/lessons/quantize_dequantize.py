"""Notebook 01: quantize and dequantize, r = S (q - Z) (Eqs. 1-6). What the lesson measures.

``grid_values`` lists the real values a quantization grid can represent; ``quantize_report``
fake-quantizes a tensor onto that grid (Eq. 10) and measures the error: its rounding and clipping
parts (Eq. 14) beside the uniform-noise model S^2/12 (Eq. 17), the largest error inside the grid
(at most S/2) and the SQNR (Eq. 18). The explorer of notebook 01 is ``qlearn.widgets.basics``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn._checks import as_float_array
from qlearn.error import ErrorBreakdown, error_breakdown, sqnr_db, uniform_noise_mse
from qlearn.qparams import QParams
from qlearn.quantize import fake_quantize

__all__ = ["grid_values", "QuantizeReport", "quantize_report"]


def grid_values(qp: QParams) -> np.ndarray:
    """(num_levels,) float64: S (q - Z) for every integer q in [qmin, qmax] of a per-tensor ``qp`` (Eq. 1)."""
    if not isinstance(qp, QParams):
        raise TypeError(f"qp must be a QParams (from qparams_from_range), got {type(qp).__name__}")
    if np.ndim(qp.scale) != 0:
        raise ValueError("qp must be per-tensor (one scale): a per-channel grid has one row per channel")
    return qp.scale * (np.arange(qp.qmin, qp.qmax + 1) - qp.zero_point)


@dataclass(frozen=True)
class QuantizeReport:
    """What fake-quantizing one tensor with one per-tensor ``qp`` costs."""

    qp: QParams
    breakdown: ErrorBreakdown  # rounding + clipping MSE over all values (Eq. 14)
    model_mse: float  # S^2 / 12, the uniform-noise model of the rounding error (Eq. 17)
    max_error_inside: float  # max |fake_quantize(x) - x| over values inside the grid (<= S/2); 0 if none
    sqnr_db: float  # 10 log10(sum x^2 / sum e^2) (Eq. 18)


def quantize_report(x: Any, qp: QParams) -> QuantizeReport:
    """Fake-quantize ``x`` with ``qp`` (Eq. 10) and measure the error (Eqs. 14, 17, 18)."""
    arr = as_float_array(x, "x")
    glo, ghi = qp.real_range
    x_hat = fake_quantize(arr, qp)
    inside = (arr >= glo) & (arr <= ghi)
    return QuantizeReport(
        qp=qp,
        breakdown=error_breakdown(arr, qp),
        model_mse=uniform_noise_mse(qp.scale),
        max_error_inside=float(np.abs(x_hat - arr)[inside].max()) if inside.any() else 0.0,
        sqnr_db=sqnr_db(arr, x_hat),
    )
