"""qlearn: learn neural-network quantization by doing it (Jacob et al., CVPR 2018).

The package reads like the table of contents of the paper; every equation cited as (Eq. N) is derived
in docs/equations.md.

    qparams      r = S (q - Z): the QParams dataclass and parameters from a range    (Eqs. 1-8)
    quantize     quantize / dequantize / fake_quantize, and the seed's formulas      (Eqs. 9-12)
    ranges       min/max, percentile, MSE-optimal and EMA range setting              (Eqs. 13-16)
    error        MSE, SQNR, S^2/12, rounding vs clipping                             (Eqs. 14, 17-18)
"""
from qlearn.qparams import QParams, integer_limits, qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, paper_fake_quant, paper_scale, quantize
from qlearn.ranges import EMARange, minmax_range, mse_range, percentile_range
from qlearn.error import (
    ErrorBreakdown,
    error_breakdown,
    max_abs_error,
    mse,
    sqnr_db,
    uniform_noise_mse,
)

__version__ = "0.1.0"

__all__ = [
    "QParams", "integer_limits", "qparams_from_range",
    "quantize", "dequantize", "fake_quantize", "paper_scale", "paper_fake_quant",
    "minmax_range", "percentile_range", "mse_range", "EMARange",
    "mse", "sqnr_db", "max_abs_error", "error_breakdown", "ErrorBreakdown", "uniform_noise_mse",
]
