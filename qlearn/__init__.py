"""qlearn: learn neural-network quantization by doing it (Jacob et al., CVPR 2018).

The package reads like the table of contents of the paper; every equation cited as (Eq. N) is derived
in docs/equations.md.

    qparams      r = S (q - Z): the QParams dataclass and parameters from a range    (Eqs. 1-8)
    quantize     quantize / dequantize / fake_quantize, and the seed's formulas      (Eqs. 9-12)
    ranges       min/max, percentile, MSE-optimal and EMA range setting              (Eqs. 13-16)
    error        MSE, SQNR, S^2/12, rounding vs clipping                             (Eqs. 14, 17-19)
    fixedpoint   gemmlowp/TFLite fixed point: SRDHM, RDBPOT, M = M0 * 2^shift        (Eqs. 22-31)
    integer      integer-only kernels (conv, linear, add, pool)                      (Eqs. 20-39)
    integer_args the integer kernels' argument checks (dtypes, zero points, M0/shift, clamp)
    layer_integers  a layer's integers from scales: M0/shift, int32 bias, clamp      (Eqs. 22-24, 37)
    integer_layers  frozen integer layers; integer_model: IntegerModel               (Eqs. 20-39)
    bn_fold      batch-norm folding: fold_bn, fuse_conv_bn                          (Eqs. 40-43)
    models       MobileNet v1 (depthwise separable) and v2 (inverted residuals)
    data         scikit-learn's bundled digits; MNIST / CIFAR-10 / image folders from a local folder
    train        a small deterministic trainer; checkpoints: safe save / load of trained models
    fake_quant   fake quant with the straight-through estimator, weight scales, EMA ranges (Eqs. 50-57)
    qat_layers   the fake-quant layers: conv + BN folded in training, linear, add, pool (Eqs. 58-68)
    qat          prepare_qat: a MobileNet rewritten as a fake-quant model, for QAT and PTQ
    ptq          post-training quantization: calibrate, quantize, sweep bit widths
    convert      QAT model -> IntegerModel (int8 weights, int32 bias, M0/shift), agreement
    pipeline     float -> PTQ -> QAT -> integer engine, one command (python -m qlearn pipeline)
    latency      the paper's latency claim on a real int8 runtime (PyTorch's qnnpack or x86 engine,
                 chosen from the integers so that it computes exactly)
    saturation   int16 pair arithmetic: where x86 int8 kernels saturate (Eq. 75)
    onnx_export  qlearn's integers as an ONNX graph (QLinear ops, or bit-exact fixed point), on ONNX Runtime
    deploy       notebook 13: PyTorch's eager flow, PyTorch int8 and ONNX Runtime side by side
    efficientnet EfficientNet-Lite0 with ImageNet weights; photos: scikit-learn's photos as crops
    equalization cross-layer equalization, bias correction; imagenet_ptq: notebook 12's PTQ variants
    folder_data  ImageNet-layout image folders; distributed: torchrun / DDP for the pipeline
    shipped      the trained models the lessons read, the same on every machine
    widgets      the sliders of the notebooks; figures regenerates figures/ from them
    grading      qlearn.check(...) in exercise notebooks; python -m qlearn grade for instructors
    lecture      python -m qlearn lecture NN: a lesson as a code-free page (Voila)

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
