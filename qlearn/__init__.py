"""qlearn: learn neural-network quantization by doing it (Jacob et al., CVPR 2018).

The package reads like the table of contents of the paper; every equation cited as (Eq. N) is derived
in docs/equations.md.

    qparams      r = S (q - Z): the QParams dataclass and parameters from a range    (Eqs. 1-8)
    quantize     quantize / dequantize / fake_quantize, and the seed's formulas      (Eqs. 9-12)
    ranges       min/max, percentile, MSE-optimal and EMA range setting              (Eqs. 13-16)
    error        MSE, SQNR, S^2/12, rounding vs clipping                             (Eqs. 14, 17-19)
    fixedpoint   gemmlowp/TFLite fixed point: SRDHM, RDBPOT, M = M0 * 2^shift        (Eqs. 22-31)
    integer      integer-only kernels (conv, linear, add, pool) and IntegerModel     (Eqs. 20-39)
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
from qlearn.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    Int32OverflowError,
    multiplier_value,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    rounding_shift_right_half_up,
    saturating_rounding_doubling_high_mul,
)
from qlearn.integer import (
    AddMultipliers,
    IntegerModel,
    QAdd,
    QConv2d,
    QGlobalAvgPool,
    QLinear,
    QRequantize,
    activation_range,
    add_multipliers,
    quantize_bias,
    requant_multiplier,
)

__version__ = "0.1.0"

__all__ = [
    "QParams", "integer_limits", "qparams_from_range",
    "quantize", "dequantize", "fake_quantize", "paper_scale", "paper_fake_quant",
    "minmax_range", "percentile_range", "mse_range", "EMARange",
    "mse", "sqnr_db", "max_abs_error", "error_breakdown", "ErrorBreakdown", "uniform_noise_mse",
    "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "rounding_shift_right_half_up",
    "quantize_multiplier", "multiply_by_quantized_multiplier", "multiplier_value", "Int32OverflowError",
    "INT32_MIN", "INT32_MAX",
    "IntegerModel", "QConv2d", "QLinear", "QAdd", "QGlobalAvgPool", "QRequantize",
    "requant_multiplier", "quantize_bias", "activation_range", "add_multipliers", "AddMultipliers",
]
