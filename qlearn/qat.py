"""Quantization-aware training (QAT): a MobileNet rewritten to train with the rounding inference will do.

The paper (Sec. 3) trains in floating point but inserts *fake quantization* wherever the integer
model will round: weights are quantized before the convolution uses them, activations where the
integer kernel writes its uint8 output. The forward pass therefore computes exactly what the integer
model will compute (up to float rounding), while the backward pass is the straight-through
estimator (Eqs. 50-52).

``prepare_qat(model, QATConfig(...))`` deep-copies a float ``qlearn.models.MobileNet`` into a
``FakeQuantMobileNet`` built from the layers of ``qlearn.qat_layers`` (which use the primitives of
``qlearn.fake_quant``); ``load_qat_state`` rebuilds one from a checkpoint. ``qlearn.ptq`` uses the
same model with training off (a fake-quant model, calibrated rather than trained), and
``qlearn.convert`` reads the integers straight out of it.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from qlearn.fake_quant import ActFakeQuant
from qlearn.models import ConvBNReLU, DepthwiseSeparable, InvertedResidual, MobileNet, build_model
from qlearn.qat_layers import QATAdd, QATAvgPool, QATConfig, QATConvBN, QATLinear

__all__ = ["QATDepthwiseSeparable", "QATInvertedResidual", "FakeQuantMobileNet", "prepare_qat", "load_qat_state"]


class QATDepthwiseSeparable(nn.Module):
    """MobileNet v1 block in QAT form: dw (QATConvBN) then pw (QATConvBN)."""

    def __init__(self, dw: QATConvBN, pw: QATConvBN) -> None:
        super().__init__()
        self.dw, self.pw = dw, pw

    @property
    def output_quant(self) -> ActFakeQuant:
        return self.pw.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class QATInvertedResidual(nn.Module):
    """MobileNet v2 block in QAT form: ``layers`` (QATConvBN ...), and ``add`` (QATAdd) when use_res."""

    def __init__(self, layers: nn.Sequential, add: QATAdd | None) -> None:
        super().__init__()
        self.layers = layers
        self.add = add

    @property
    def use_res(self) -> bool:
        return self.add is not None

    @property
    def output_quant(self) -> ActFakeQuant:
        return self.add.act if self.add is not None else self.layers[-1].act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return self.add(x, y) if self.add is not None else y


class FakeQuantMobileNet(nn.Module):
    """input_quant -> features -> pool -> classifier: a MobileNet with fake quantization everywhere
    the integer model rounds -- what QAT trains and what PTQ calibrates. ``config`` is the float
    model's config (for checkpoints), ``qat_config`` the QATConfig it was prepared with.
    (N, C, H, W) in [0, 1] -> (N, num_classes) float logits on the uint8 output grid.
    """

    def __init__(self, input_quant: ActFakeQuant, features: nn.Sequential, pool: QATAvgPool,
                 classifier: QATLinear, config: dict, qat_config: QATConfig) -> None:
        super().__init__()
        self.input_quant = input_quant
        self.features = features
        self.pool = pool
        self.classifier = classifier
        self.config = dict(config)
        self.qat_config = qat_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"FakeQuantMobileNet expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(self.input_quant(x))))

    def quantizers(self) -> Iterator[tuple[str, ActFakeQuant]]:
        """Every activation quantizer with its module name, in forward order."""
        for name, m in self.named_modules():
            if isinstance(m, ActFakeQuant):
                yield name, m


def _output_quant(block: nn.Module) -> ActFakeQuant:
    return block.act if isinstance(block, QATConvBN) else block.output_quant


# ------------------------------------------------------------------------------------ prepare
def prepare_qat(model: nn.Module, config: QATConfig | None = None) -> FakeQuantMobileNet:
    """A deep copy of a float ``qlearn.models.MobileNet`` as a ``FakeQuantMobileNet`` (``model`` is untouched).

    Every ``ConvBNReLU`` becomes a ``QATConvBN`` (fold + weight fake-quant + ReLU6 clamp + uint8
    output), every ``InvertedResidual`` with a skip connection gets a ``QATAdd`` that quantizes the
    sum, the input gets a fixed-range quantizer (config.input_range), the pool rounds on its input's
    grid and the classifier becomes a ``QATLinear``. The copy keeps the float weights and BN
    statistics and is returned in training mode, ready to fine-tune (``qlearn.train.train``).
    """
    if config is None:
        config = QATConfig()
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    if not isinstance(model, MobileNet):
        raise TypeError(f"prepare_qat needs a qlearn.models.MobileNet (mobilenet_v1 / mobilenet_v2), got {type(model).__name__}")
    src = copy.deepcopy(model)
    cfg = config

    def act() -> ActFakeQuant:
        return ActFakeQuant(cfg.act_bits, cfg.ema_decay, cfg.act_quant_delay)

    def conv_bn(block: nn.Module, prev: ActFakeQuant) -> QATConvBN:
        if not isinstance(block, ConvBNReLU):
            raise TypeError(f"expected a ConvBNReLU, found {type(block).__name__}")
        if not isinstance(block.bn, nn.BatchNorm2d) or block.conv.bias is not None:
            raise ValueError("ConvBNReLU blocks must still have their BatchNorm (pass the float model, not a fused one)")
        layer = QATConvBN(block.conv, block.bn, block.relu6, act(), weight_bits=cfg.weight_bits,
                          per_channel=cfg.per_channel, weight_range=cfg.weight_range, freeze_step=cfg.freeze_bn_step)
        layer.link_input(prev)
        return layer

    input_quant = ActFakeQuant(cfg.act_bits, cfg.ema_decay, cfg.act_quant_delay, fixed_range=cfg.input_range)
    prev = input_quant
    blocks: list[nn.Module] = []
    for i, block in enumerate(src.features):
        if isinstance(block, ConvBNReLU):
            new: nn.Module = conv_bn(block, prev)
        elif isinstance(block, DepthwiseSeparable):
            dw = conv_bn(block.dw, prev)
            new = QATDepthwiseSeparable(dw, conv_bn(block.pw, dw.act))
        elif isinstance(block, InvertedResidual):
            layers, p = [], prev
            for sub in block.layers:
                layers.append(conv_bn(sub, p))
                p = layers[-1].act
            new = QATInvertedResidual(nn.Sequential(*layers), QATAdd(act()) if block.use_res else None)
        else:
            raise TypeError(f"features[{i}] is a {type(block).__name__}; prepare_qat handles ConvBNReLU, "
                            "DepthwiseSeparable and InvertedResidual blocks only")
        blocks.append(new)
        prev = _output_quant(new)
    pool = QATAvgPool()
    pool.link_input(prev)
    classifier = QATLinear(src.classifier, act(), weight_bits=cfg.weight_bits, per_channel=cfg.per_channel,
                           weight_range=cfg.weight_range)
    classifier.link_input(prev)  # the pool keeps its input's grid
    qat = FakeQuantMobileNet(input_quant, nn.Sequential(*blocks), pool, classifier, getattr(src, "config", {}), cfg)
    return qat.train()


def load_qat_state(model_config: dict, qat_config: QATConfig | dict, state_dict: dict) -> FakeQuantMobileNet:
    """Rebuild a saved QAT/PTQ model: ``prepare_qat(build_model(model_config), qat_config)`` then load
    ``state_dict`` (weights, BN statistics, activation ranges and step counters). Returns it in eval mode.

    Use it with a checkpoint written by ``qlearn.checkpoints.save_checkpoint(path, qat_model, extra=...)``:
    the checkpoint's ``config`` is the float model's, and ``qat_config`` (a QATConfig or its
    ``to_dict()``) must be the one the model was prepared with. Missing or unexpected tensors raise.
    """
    if isinstance(qat_config, dict):
        cfg = dict(qat_config)
        if isinstance(cfg.get("input_range"), list):
            cfg["input_range"] = tuple(cfg["input_range"])
        try:
            qat_config = QATConfig(**cfg)
        except TypeError as exc:
            raise ValueError(f"qat_config has unknown or missing fields: {exc}") from None
    if not isinstance(qat_config, QATConfig):
        raise TypeError(f"qat_config must be a QATConfig or a dict of its fields, got {type(qat_config).__name__}")
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    model = prepare_qat(build_model(model_config), qat_config)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"state_dict does not fit a QAT model of this config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(state_dict)
    return model.eval()
