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

import copy
from typing import Any, Callable

import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn

from qlearn.models import ConvBNReLU, DepthwiseSeparable, InvertedResidual, MobileNet


class EagerConvBNReLU(nn.Module):
    """conv -> bn -> ReLU6 module (or nothing): ConvBNReLU with its activation as a module."""

    def __init__(self, block: ConvBNReLU) -> None:
        super().__init__()
        self.conv, self.bn = block.conv, block.bn
        self.act = nn.ReLU6() if block.relu6 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class EagerDepthwiseSeparable(nn.Module):
    def __init__(self, block: DepthwiseSeparable) -> None:
        super().__init__()
        self.dw, self.pw = EagerConvBNReLU(block.dw), EagerConvBNReLU(block.pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class EagerInvertedResidual(nn.Module):
    def __init__(self, block: InvertedResidual) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[EagerConvBNReLU(b) for b in block.layers])
        self.use_res = block.use_res
        self.skip = nnq.FloatFunctional()  # the add becomes a quantized add with its own (S, Z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return self.skip.add(x, y) if self.use_res else y


class EagerMobileNet(nn.Module):
    """QuantStub -> features -> avg pool -> flatten -> classifier -> DeQuantStub."""

    def __init__(self, model: MobileNet) -> None:
        super().__init__()
        src = copy.deepcopy(model)
        blocks: list[nn.Module] = []
        for block in src.features:
            if isinstance(block, ConvBNReLU):
                blocks.append(EagerConvBNReLU(block))
            elif isinstance(block, DepthwiseSeparable):
                blocks.append(EagerDepthwiseSeparable(block))
            elif isinstance(block, InvertedResidual):
                blocks.append(EagerInvertedResidual(block))
            else:
                raise TypeError(f"eager_copy does not know block type {type(block).__name__}")
        self.quant = tq.QuantStub()
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = src.classifier
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        return self.dequant(self.classifier(torch.flatten(self.pool(x), 1)))


def eager_copy(model: MobileNet) -> EagerMobileNet:
    """A deep copy of a float qlearn MobileNet in PyTorch eager-quantization form (same function)."""
    if not isinstance(model, MobileNet):
        raise TypeError(f"eager_copy needs a qlearn MobileNet, got {type(model).__name__}")
    return EagerMobileNet(model)


def fuse_conv_bn(model: EagerMobileNet) -> EagerMobileNet:
    """Step 1 of the flow: ``torch.ao.quantization.fuse_modules_qat`` on every (conv, bn) pair, in place."""
    pairs = [[f"{name}.conv", f"{name}.bn"] for name, m in model.named_modules() if isinstance(m, EagerConvBNReLU)]
    model.train()
    return tq.fuse_modules_qat(model, pairs, inplace=True)


def prepare(model: EagerMobileNet, engine: str = "x86") -> EagerMobileNet:
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


def convert(model: EagerMobileNet) -> nn.Module:
    """Step 4: ``torch.ao.quantization.convert`` -> a model of quantized modules (eval mode)."""
    model.eval()
    return tq.convert(model, inplace=False)


def describe_qconfig(engine: str = "x86") -> dict[str, Any]:
    qc = tq.get_default_qat_qconfig(engine)
    return {"engine": engine, "activation": str(qc.activation), "weight": str(qc.weight)}
