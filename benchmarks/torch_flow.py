"""PyTorch's own eager-mode QAT flow on a qlearn MobileNet: the baseline the pipeline is compared with.

    fuse_modules_qat (conv + BN)  ->  prepare_qat (x86 QAT qconfig)  ->  train  ->  convert  ->  x86 int8

PyTorch's eager mode needs the model written for it: ``QuantStub`` / ``DeQuantStub`` at the ends,
every activation a module (``nn.ReLU6`` instead of qlearn's ``torch.clamp``) and every skip add a
``FloatFunctional``. ``eager_copy`` rebuilds a trained qlearn ``MobileNet`` that way, sharing nothing
with it (a deep copy), computing the same function. Eager mode fuses conv + BN (+ ReLU, not ReLU6),
so each ConvBNReLU becomes a fused ConvBn2d followed by a quantized ReLU6.

PyTorch's x86 QAT qconfig is its own: 7-bit activations (``reduce_range=True``), per-channel
symmetric int8 weights over [-128, 127]; qlearn's is the paper's (uint8 activations, [-127, 127]).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.quantization as tq
from torch import nn

from qlearn.deploy import conv_bn_pairs, eager_copy  # the same eager-mode copy notebook 13 uses

__all__ = ["eager_copy", "fuse_conv_bn", "prepare", "freeze_bn_callback", "convert", "describe_qconfig"]


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Step 1 of the flow: ``torch.ao.quantization.fuse_modules_qat`` on every (conv, bn) pair, in place."""
    pairs = conv_bn_pairs(model)
    model.train()
    return tq.fuse_modules_qat(model, pairs, inplace=True)


def prepare(model: nn.Module, engine: str = "x86") -> nn.Module:
    """Step 2: attach PyTorch's default QAT qconfig for ``engine`` and insert fake-quant (in place)."""
    torch.backends.quantized.engine = engine
    model.qconfig = tq.get_default_qat_qconfig(engine)
    model.train()
    return tq.prepare_qat(model, inplace=True)


def freeze_bn_callback(model: nn.Module, freeze_step: int) -> Callable[[int], None]:
    """An ``on_step`` for ``qlearn.train.train`` that freezes BN statistics at ``freeze_step`` (as qlearn's QAT)."""
    def on_step(step: int) -> None:
        if step == freeze_step:
            model.apply(nniqat.freeze_bn_stats)
    return on_step


def convert(model: nn.Module) -> nn.Module:
    """Step 4: ``torch.ao.quantization.convert`` -> a model of quantized modules (eval mode)."""
    model.eval()
    return tq.convert(model, inplace=False)


def describe_qconfig(engine: str = "x86") -> dict[str, Any]:
    qc = tq.get_default_qat_qconfig(engine)
    return {"engine": engine, "activation": str(qc.activation), "weight": str(qc.weight)}
