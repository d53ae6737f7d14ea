"""Post-training quantization (PTQ): quantize a trained float model without retraining it.

The cheapest route to an integer model (paper Sec. 3 contrasts it with QAT): fold batch norm into the
convolutions, pick every activation range from a few calibration batches, pick the weight ranges from
the folded weights, and round. No gradient step is taken, so nothing compensates for the rounding:
that is where PTQ loses accuracy at low weight bit widths, and where per-tensor ranges of folded
MobileNet weights (whose channels differ by orders of magnitude) lose most (Eq. 53).

This module writes no second quantized model: ``post_training_quantize`` is ``prepare_qat`` with BN
frozen from step 0 (``freeze_bn_step=0``: the fold uses the trained moving averages, Eq. 62), followed
by ``calibrate``, and the result is the same fake-quant model (``FakeQuantMobileNet``) that QAT trains,
in eval mode -- so ``qlearn.convert`` turns a PTQ model into an integer model exactly as it does a QAT one.

Activation ranges in calibration are the running min/max over the calibration batches (no EMA: every
batch is equally trusted, and nothing is being trained).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from qlearn.qat import FakeQuantMobileNet, prepare_qat
from qlearn.qat_layers import QATConfig
from qlearn.train import evaluate

__all__ = ["calibrate", "post_training_quantize", "PTQ_METHODS", "ptq_sweep"]

#: method name -> (per_channel, weight_range): the weight scheme, then the range rule by its short name
#: in ``qlearn.ranges`` ("minmax" = min/max, Eq. 53; "mse" = MSE-optimal, Eq. 54).
PTQ_METHODS: dict[str, tuple[bool, str]] = {
    "per_tensor_minmax": (False, "minmax"),
    "per_tensor_mse": (False, "mse"),
    "per_channel_minmax": (True, "minmax"),
    "per_channel_mse": (True, "mse"),
}


def _check_images(images: Any, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images) or images.ndim != 4:
        raise TypeError(f"{name} must be a float tensor of images (N, C, H, W), got "
                        f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty: calibration needs at least one image")
    return images


def _check_positive(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


@torch.no_grad()
def calibrate(
    model: FakeQuantMobileNet, images: torch.Tensor, *, batch_size: int = 64, num_batches: int | None = 8,
    progress: bool = False,
) -> FakeQuantMobileNet:
    """Set every activation range of ``model`` from calibration images, in place (returns it in eval mode).

    Runs the first ``num_batches`` batches of ``batch_size`` images (None = all) through the model
    in eval mode (batch norm frozen, weights fake-quantized) with every ``ActFakeQuant`` observing the
    running min/max of its *float* input and passing it through unquantized (its ``start_calibration``
    / ``stop_calibration``); previous ranges are discarded. Fixed ranges (the input's) are kept.
    """
    if not isinstance(model, FakeQuantMobileNet):
        raise TypeError("model must be a fake-quant model, FakeQuantMobileNet (formerly FakeQuantMobileNet; from "
                        f"prepare_qat or post_training_quantize), got {type(model).__name__}")
    images = _check_images(images)
    batch_size = _check_positive(batch_size, "batch_size")
    num_batches = _check_positive(num_batches, "num_batches", allow_none=True)
    quants = [q for _, q in model.quantizers()]
    model.eval()
    for q in quants:
        q.start_calibration()  # a fixed range (the input's) is kept
    try:
        starts = list(range(0, images.shape[0], batch_size))[:num_batches]
        for i in tqdm(starts, desc="calibrate", disable=not progress, leave=False):
            model(images[i : i + batch_size])
    finally:
        for q in quants:
            q.stop_calibration()
    return model


def post_training_quantize(
    model: nn.Module, calib_images: torch.Tensor, config: QATConfig | None = None, *,
    batch_size: int = 64, num_batches: int | None = 8, progress: bool = False,
) -> FakeQuantMobileNet:
    """Quantize a trained float MobileNet after training: a fake-quant model in eval mode.

    1. ``prepare_qat(model, config)`` with ``freeze_bn_step=0``: BN folded with its moving averages
       (Eq. 60, 62), weights fake-quantized per ``config`` (per-tensor / per-channel, min/max or MSE
       range, ``weight_bits`` bits; Eqs. 53-54).
    2. ``calibrate`` on the first ``num_batches`` batches of ``calib_images`` (running min/max).
    ``model`` is not modified. Evaluate the result with ``qlearn.train.evaluate``; convert it with
    ``qlearn.convert.convert``.
    """
    if config is None:
        config = QATConfig()
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    _check_images(calib_images, "calib_images")
    config = dataclasses.replace(config, freeze_bn_step=0, act_quant_delay=0)
    qmodel = prepare_qat(model, config)
    return calibrate(qmodel, calib_images, batch_size=batch_size, num_batches=num_batches, progress=progress)


def ptq_sweep(
    model: nn.Module, calib_images: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
    bits: tuple[int, ...] = (8, 6, 5, 4), methods: tuple[str, ...] = tuple(PTQ_METHODS),
    batch_size: int = 64, num_batches: int | None = 8, progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Test accuracy of PTQ for every method and weight bit width: ``{method: {bits: acc}}``.

    methods are keys of ``PTQ_METHODS`` ('per_tensor_minmax', 'per_tensor_mse', 'per_channel_minmax',
    'per_channel_mse'); activations are 8-bit throughout. A tqdm bar counts the configurations.
    """
    if isinstance(bits, (int, str)) or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in bits):
        raise TypeError(f"bits must be a sequence of integers, e.g. (8, 6, 5, 4), got {bits!r}")
    unknown = [m for m in methods if m not in PTQ_METHODS]
    if unknown or isinstance(methods, str):
        raise ValueError(f"unknown PTQ method(s) {unknown or methods!r}; choose from {sorted(PTQ_METHODS)}")
    combos = [(m, int(b)) for m in methods for b in bits]
    for _, b in combos:
        QATConfig(weight_bits=b)  # validates the bit width before any work is done
    results: dict[str, dict[int, float]] = {m: {} for m in methods}
    for method, b in tqdm(combos, desc="PTQ", disable=not progress, leave=False):
        per_channel, weight_range = PTQ_METHODS[method]
        cfg = QATConfig(weight_bits=b, per_channel=per_channel, weight_range=weight_range)
        qmodel = post_training_quantize(model, calib_images, cfg, batch_size=batch_size, num_batches=num_batches)
        results[method][b] = evaluate(qmodel, x_test, y_test)
    return results
