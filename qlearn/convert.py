"""Conversion: from a trained fake-quant model to the integer engine's model (paper Sec. 2.2-2.4, 3).

A ``FakeQuantMobileNet`` (after QAT, or from ``qlearn.ptq``) already computes, in floating point, what the
integer model will compute: its weights sit on an int8 grid, its biases on an int32 grid, its
activations on uint8 grids. ``convert`` writes those grids down as integers (Eq. 66):

    w_q    = clamp(round(w_fold / S_w), -127, 127)            int8, zero point 0 (per channel or tensor)
    bias_q = round(b_fold / (S_in S_w))                         int32, zero point 0 (Eq. 65)
    M      = S_in S_w / S_out  ->  (M0, shift) = quantize_multiplier(M)   per output channel (Eq. 22-23)
    clamp  = [Z_out, Z_out + round(6 / S_out)] after ReLU6, the whole uint8 range otherwise (Eq. 67)

Every integer comes from the same float32 arithmetic the fake-quant forward uses (the modules'
``int_params``), so the two models differ only by the float rounding of the fake-quant forward and
by the fixed-point rounding of M0 (Eq. 31). ``compare`` measures that difference in output LSBs
(Eq. 69): how often the integer logits equal the fake-quant ones, the largest difference, and the
top-1 agreement.

The integer graph mirrors the QAT model layer for layer: input -> one ``QConv2d`` per ``QATConvBN``
-> a ``QAdd`` after each residual block -> ``QGlobalAvgPool`` -> ``QLinear``. Layer names are the
QAT model's module names ("features.3.layers.1", "features.3.add", "pool", "classifier").
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qlearn.agreement import Agreement, code_agreement
from qlearn.fake_quant import quantize_int
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear, conv_layer, linear_layer
from qlearn.integer_model import IntegerModel
from qlearn.layer_integers import int32_bias
from qlearn.qat import FakeQuantMobileNet, QATDepthwiseSeparable, QATInvertedResidual
from qlearn.qat_layers import QATConvBN, QATLinear
from qlearn.train import predict

__all__ = ["convert", "quantize_input", "compare"]


def _check_ready(model: Any) -> FakeQuantMobileNet:
    if not isinstance(model, FakeQuantMobileNet):
        raise TypeError(
            f"convert needs a FakeQuantMobileNet (from qlearn.qat.prepare_qat or qlearn.ptq), got {type(model).__name__}"
        )
    for name, q in model.quantizers():
        if not q.has_range:
            raise ValueError(
                f"activation quantizer {name!r} has no range yet: train the QAT model for a few steps or "
                "calibrate it (qlearn.ptq.calibrate) before converting"
            )
        if not q.enabled:
            raise ValueError(f"activation quantizer {name!r} is switched off; switch it on (set_quantization) to convert")
    for name, m in model.named_modules():
        if isinstance(m, (QATConvBN, QATLinear)) and not m.weight_quant:
            raise ValueError(f"weight quantization of {name!r} is switched off; switch it on to convert")
    return model


def _w_scale(p: dict, channels: int, per_channel: bool) -> Any:
    """S_w from a layer's ``int_params()``: a (C,) float64 array per channel, else one float."""
    w_scale = np.atleast_1d(p["w_scale"].cpu().numpy().astype(np.float64))
    w_scale = np.broadcast_to(w_scale, (channels,)).copy()  # (C,) float64
    return w_scale if per_channel else float(w_scale[0])


def _conv_layer(name: str, src: str, m: QATConvBN) -> QConv2d:
    """One QATConvBN as a QConv2d: its integers (``int_params``), M = S_in S_w / S_out per output
    channel (Eqs. 22-23), ReLU6 as the clamp (Eq. 67), via ``qlearn.integer_layers.conv_layer``."""
    p = m.int_params()
    c = m.conv
    return conv_layer(
        name, src, p["w_q"].cpu().numpy().astype(np.int8),  # (Cout, Cin/groups, kh, kw)
        p["in_qp"], _w_scale(p, c.out_channels, m.per_channel), p["out_qp"],
        bias_q=int32_bias(p["bias_q"].cpu().numpy(), f"the bias of {name!r}"),  # (Cout,) int32
        activation="relu6" if p["relu6"] else None, per_channel_multipliers=True,
        stride=tuple(c.stride), groups=c.groups,
        # TensorFlow SAME padding (qlearn.efficientnet.Conv2dSame): asymmetric, pads with in_zp (Eq. 38)
        padding="same" if getattr(c, "same_padding", False) else tuple(c.padding),
    )


def _linear_layer(name: str, src: str, m: QATLinear) -> QLinear:
    """The classifier as a QLinear: w_q (Out, In) int8, no activation (the whole output range)."""
    p = m.int_params()
    return linear_layer(
        name, src, p["w_q"].cpu().numpy().astype(np.int8),  # (Out, In)
        p["in_qp"], _w_scale(p, m.linear.out_features, m.per_channel), p["out_qp"],
        bias_q=int32_bias(p["bias_q"].cpu().numpy(), f"the bias of {name!r}"), per_channel_multipliers=True,
    )


@torch.no_grad()
def convert(qat_model: FakeQuantMobileNet) -> IntegerModel:
    """The integer engine's model of a trained ``FakeQuantMobileNet``: int8 weights, int32 biases, per-channel
    (M0, shift), zero points and clamps of every layer (Eqs. 65-67; paper Sec. 2.2-2.4).

    The QAT model must have every activation range set (trained or calibrated); it is not modified
    (its BN is used frozen, as in eval mode). The integer model's output is the uint8 logits of the
    classifier; ``IntegerModel.__call__`` dequantizes them.
    """
    model = _check_ready(qat_model)
    layers: list = []

    def conv(name: str, src: str, m: QATConvBN) -> str:
        layers.append(_conv_layer(name, src, m))
        return name

    prev = "input"
    for i, block in enumerate(model.features):
        base = f"features.{i}"
        if isinstance(block, QATConvBN):
            prev = conv(base, prev, block)
        elif isinstance(block, QATDepthwiseSeparable):
            prev = conv(f"{base}.dw", prev, block.dw)
            prev = conv(f"{base}.pw", prev, block.pw)
        elif isinstance(block, QATInvertedResidual):
            block_in, block_in_qp = prev, block.layers[0].input_quant.qparams()
            for j, sub in enumerate(block.layers):
                prev = conv(f"{base}.layers.{j}", prev, sub)
            if block.add is not None:
                a_qp, b_qp, out_qp = block_in_qp, block.layers[-1].act.qparams(), block.add.act.qparams()
                layers.append(QAdd.from_scales(
                    f"{base}.add", (block_in, prev), a_qp.scale, a_qp.zero_point, b_qp.scale, b_qp.zero_point,
                    out_qp.scale, out_qp.zero_point, act_min=out_qp.qmin, act_max=out_qp.qmax,
                ))
                prev = f"{base}.add"
        else:
            raise TypeError(f"features[{i}] is a {type(block).__name__}, which convert does not know")
    pool_qp = model.pool.input_quant.qparams()
    layers.append(QGlobalAvgPool("pool", (prev,), act_min=pool_qp.qmin, act_max=pool_qp.qmax,
                                 scale=pool_qp.scale, zero_point=pool_qp.zero_point))
    layers.append(_linear_layer("classifier", "pool", model.classifier))
    size = int(model.config.get("input_size", 0)) or None
    channels = int(model.config.get("in_channels", 1))
    return IntegerModel(
        layers, model.input_quant.qparams(), model.classifier.act.qparams(),
        input_shape=(1, channels, size, size) if size else None,
    )


def quantize_input(qat_model: FakeQuantMobileNet, images: torch.Tensor) -> np.ndarray:
    """The uint8 codes the fake-quant model's input quantizer gives ``images`` (N, C, H, W).

    Same float32 arithmetic as its forward (x * (1/S), round half to even), so both models start
    from identical integers. (``IntegerModel.__call__`` quantizes in float64 with x / S, which can
    round the other way when x / S lies within float32 error of a tie k + 1/2.)
    """
    if not isinstance(qat_model, FakeQuantMobileNet):
        raise TypeError(f"qat_model must be a FakeQuantMobileNet, got {type(qat_model).__name__}")
    if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images) or images.ndim != 4:
        raise TypeError("images must be a float tensor (N, C, H, W)")
    qp = qat_model.input_quant.qparams()
    s = torch.tensor(qp.scale, dtype=images.dtype)
    q = quantize_int(images.detach().cpu(), s, torch.tensor(float(qp.zero_point), dtype=images.dtype), qp.qmin, qp.qmax)
    return q.numpy().astype(qp.dtype)


@torch.no_grad()
def compare(
    qat_model: FakeQuantMobileNet, integer_model: IntegerModel, images: torch.Tensor,
    labels: torch.Tensor | None = None, *, batch_size: int = 128, progress: bool = False,
) -> Agreement:
    """Run both models on ``images`` and compare their logits in output LSBs (Eq. 69).

    The fake-quant logits (eval mode) are on the output grid, so q_fake = round(y / S_out) + Z_out
    recovers their codes exactly; the integer engine runs on ``quantize_input`` codes and its uint8
    output is compared code by code. Accuracy of the integer model is computed from its own output.
    Returns ``qlearn.agreement.Agreement`` (``code_agreement(q_int, q_fake, labels)``).
    """
    if not isinstance(integer_model, IntegerModel):
        raise TypeError(f"integer_model must be an IntegerModel (from convert), got {type(integer_model).__name__}")
    x_q = quantize_input(qat_model, images)
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be a 1-D tensor with one label per image ({images.shape[0]})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out_qp = integer_model.output_qparams
    fake = predict(qat_model, images, batch_size=batch_size).double()  # (N, classes)
    q_fake = torch.clamp(torch.round(fake / out_qp.scale) + out_qp.zero_point, out_qp.qmin, out_qp.qmax)
    q_fake = q_fake.numpy().astype(np.int64)
    chunks = []
    for i in tqdm(range(0, x_q.shape[0], batch_size), desc="integer engine", disable=not progress, leave=False):
        chunks.append(integer_model.run(x_q[i : i + batch_size]).astype(np.int64))
    q_int = np.concatenate(chunks)
    return code_agreement(q_int, q_fake, None if labels is None else labels.cpu().numpy())
