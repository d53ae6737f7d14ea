"""qlearn: learn neural-network quantization by doing it (Jacob et al., CVPR 2018).

The package reads like a table of contents, in three layers (README, "The package"; docs/layout.md):

    the core         one module per idea: qparams, quantize, ranges, error, fixedpoint, integer,
                     layer_integers, integer_layers, bn_fold, fake_quant, qat, ptq, convert, pipeline/,
                     torch_int8, onnx_export, ... (every equation cited as (Eq. N) is derived in
                     docs/equations.md)
    qlearn.lessons   what each notebook computes, one module per notebook (no UI)
    qlearn.widgets   the notebooks' sliders and figures

The torch-based modules load on first use (``qlearn.fuse_conv_bn`` imports torch then), so
``import qlearn`` stays fast for the numpy-only lessons.
"""
import importlib
from typing import Any

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
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear, QRequantize
from qlearn.integer_model import IntegerModel
from qlearn.layer_integers import (
    AddMultipliers,
    activation_range,
    add_multipliers,
    quantize_bias,
    requant_multiplier,
)
from qlearn.qparams import QParams, integer_limits, qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, paper_fake_quant, paper_scale, quantize
from qlearn.ranges import EMARange, minmax_range, mse_range, percentile_range

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

# name -> module, for the torch-based parts, imported on first attribute access (PEP 562). The
# functions named like their module (qlearn.train.train, qlearn.convert.convert) are left out on
# purpose: importing the submodule would rebind the package attribute to the module.
_LAZY = {
    "fold_bn": "bn_fold", "fuse_conv_bn": "bn_fold", "fuse_model": "bn_fold",
    "mobilenet_v1": "models", "mobilenet_v2": "models", "build_model": "models", "MobileNet": "models",
    "load_dataset": "data", "load_digits_data": "data", "ImageData": "image_data",
    "TrainConfig": "train", "evaluate": "train",
    "save_checkpoint": "checkpoints", "load_checkpoint": "checkpoints",
    "fake_quant_ste": "fake_quant", "ActFakeQuant": "fake_quant",
    "QATConfig": "qat_layers", "set_quantization": "qat_layers",
    "prepare_qat": "qat", "load_qat_state": "qat", "FakeQuantMobileNet": "qat",
    "calibrate": "ptq", "post_training_quantize": "ptq", "ptq_sweep": "ptq", "PTQ_METHODS": "ptq",
    "compare": "convert", "quantize_input": "convert", "Agreement": "agreement",
    "PipelineConfig": "pipeline.config", "run_pipeline": "pipeline.run",
    "check": "grading", "run_check": "grading", "CheckResult": "grading",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"qlearn.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'qlearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
