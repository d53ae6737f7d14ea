"""Small MobileNets built from three blocks, sized to train on a laptop CPU in about a minute.

The paper (Sec. 4) evaluates integer-only inference on MobileNets: networks made of depthwise and
pointwise convolutions, each followed by batch normalization and a ReLU6. ReLU6 clamps activations
to [0, 6], which is exactly the clamp an integer kernel applies to its uint8 output (paper Sec. 2.4),
so the activation function costs nothing once quantized.

Everything here is built from three blocks, which is all that ``qlearn.qat.prepare_qat`` has to
understand:

* ``ConvBNReLU``        conv (no bias) -> batch norm -> optional ReLU6 clamp
* ``DepthwiseSeparable`` MobileNet v1 block: 3x3 depthwise ConvBNReLU then 1x1 pointwise ConvBNReLU
* ``InvertedResidual``  MobileNet v2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection,
                        plus a skip connection when the shapes allow it

``mobilenet_v1`` and ``mobilenet_v2`` stack them with a width multiplier (channels scale by
``width``) and scaled-down stage lists suited to small images (8x8 digits upsampled to 32x32).
Inputs are images scaled to [0, 1], so the input quantizes to uint8 with scale 1/255 and zero
point 0.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "ConvBNReLU",
    "DepthwiseSeparable",
    "InvertedResidual",
    "MobileNet",
    "mobilenet_v1",
    "mobilenet_v2",
    "MODELS",
    "build_model",
    "make_divisible",
    "count_parameters",
]

# Stage lists, before the width multiplier. (Full-size MobileNets: paper Sec. 4 / Howard et al. 2017,
# Sandler et al. 2018; these keep the shape of the design but are shallow enough for 32x32 inputs.)
#
# v1: stem channels, then (out_channels, stride) per DepthwiseSeparable block.
V1_STEM = 32
V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
)
# v2: stem channels, then (expand t, out_channels c, repeats n, first stride s) per stage, and the
# channels of the last 1x1 ConvBNReLU before pooling.
V2_STEM = 32
V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (4, 24, 2, 2),
    (4, 32, 2, 2),
    (4, 64, 2, 1),
)
V2_LAST = 256


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (at least ``divisor``).

    As in the reference MobileNet code: never round down by more than 10 %.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_width(width: Any) -> float:
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise TypeError(f"width must be a positive number (the channel multiplier), got {width!r}")
    width = float(width)
    if not (0.0 < width <= 4.0):
        raise ValueError(f"width must be in (0, 4] (1.0 = the base channel counts), got {width}")
    return width


class ConvBNReLU(nn.Module):
    """conv (bias=False, padding=kernel//2) -> BatchNorm2d -> clamp to [0, 6] when ``relu6``.

    Shapes: (N, cin, H, W) float -> (N, cout, ceil(H/stride), ceil(W/stride)) float.
    The conv has no bias because batch norm's beta supplies one; folding BN into the conv
    (qlearn.bn_fold, Eqs. 40-41) creates the bias the integer kernel needs.
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True
    ) -> None:
        super().__init__()
        cin = _check_int(cin, "cin", 1)
        cout = _check_int(cout, "cout", 1)
        kernel = _check_int(kernel, "kernel", 1)
        stride = _check_int(stride, "stride", 1)
        groups = _check_int(groups, "groups", 1)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so that padding kernel//2 keeps the size, got {kernel}")
        if cin % groups or cout % groups:
            raise ValueError(
                f"groups={groups} must divide both cin={cin} and cout={cout} "
                "(depthwise convolution: groups = cin = cout)"
            )
        if not isinstance(relu6, bool):
            raise TypeError(f"relu6 must be True or False, got {relu6!r}")
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return torch.clamp(y, 0.0, 6.0) if self.relu6 else y

    def extra_repr(self) -> str:
        return f"relu6={self.relu6}"


class DepthwiseSeparable(nn.Module):
    """MobileNet v1 block: 3x3 depthwise ConvBNReLU (stride) then 1x1 pointwise ConvBNReLU.

    (N, cin, H, W) -> (N, cout, H/stride, W/stride). A 3x3 conv of cin -> cout costs 9 cin cout
    multiplies per pixel; this pair costs 9 cin + cin cout.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        cin = _check_int(cin, "cin", 1)
        self.dw = ConvBNReLU(cin, cin, 3, stride, groups=cin)
        self.pw = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    """MobileNet v2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 projection (linear).

    The expansion is omitted when ``expand == 1``. With stride 1 and cin == cout the input is added
    back (``use_res``): y = x + layers(x). The projection has no ReLU6 ("linear bottleneck"), so the
    sum can be negative; the quantized model fake-quantizes the sum after the add (TFLite's ADD; the
    paper's Appendix A.2 re-quantizes the add by rescaling one input onto the other's scale).
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        cin = _check_int(cin, "cin", 1)
        cout = _check_int(cout, "cout", 1)
        stride = _check_int(stride, "stride", 1)
        expand = _check_int(expand, "expand", 1)
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1))
        layers.append(ConvBNReLU(hidden, hidden, 3, stride, groups=hidden))
        layers.append(ConvBNReLU(hidden, cout, 1, relu6=False))
        self.layers = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.use_res else y

    def extra_repr(self) -> str:
        return f"use_res={self.use_res}"


class MobileNet(nn.Module):
    """``features`` (ConvBNReLU stem, then blocks) -> global average ``pool`` -> linear ``classifier``.

    (N, in_channels, input_size, input_size) float in [0, 1] -> (N, num_classes) float logits.
    ``config`` holds the constructor arguments so that ``build_model(config)`` rebuilds the same
    architecture (for checkpoints).
    """

    def __init__(self, features: nn.Sequential, num_features: int, num_classes: int, config: dict) -> None:
        super().__init__()
        if not isinstance(features, nn.Sequential):
            raise TypeError(f"features must be an nn.Sequential, got {type(features).__name__}")
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes)
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"MobileNet expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small linear: the reference MobileNet initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _check_common(num_classes: Any, width: Any, input_size: Any, in_channels: Any) -> tuple[int, float, int, int]:
    return (
        _check_int(num_classes, "num_classes", 2),
        _check_width(width),
        _check_int(input_size, "input_size", 8),
        _check_int(in_channels, "in_channels", 1),
    )


def mobilenet_v1(num_classes: int = 10, *, width: float = 0.5, input_size: int = 32, in_channels: int = 1) -> MobileNet:
    """The paper's MobileNet (v1): a stride-2 ConvBNReLU stem and DepthwiseSeparable blocks.

    Channels are ``make_divisible(c * width)`` of the stage list ``V1_BLOCKS``. The input size only
    sets how large images are; global average pooling makes the classifier independent of it.
    """
    num_classes, width, input_size, in_channels = _check_common(num_classes, width, input_size, in_channels)
    stem = make_divisible(V1_STEM * width)
    layers: list[nn.Module] = [ConvBNReLU(in_channels, stem, 3, stride=2)]
    cin = stem
    for c, s in V1_BLOCKS:
        cout = make_divisible(c * width)
        layers.append(DepthwiseSeparable(cin, cout, s))
        cin = cout
    config = dict(arch="mobilenet_v1", width=width, input_size=input_size, in_channels=in_channels, num_classes=num_classes)
    model = MobileNet(nn.Sequential(*layers), cin, num_classes, config)
    _init_weights(model)
    return model


def mobilenet_v2(num_classes: int = 10, *, width: float = 0.5, input_size: int = 32, in_channels: int = 1) -> MobileNet:
    """MobileNet v2: a stride-2 ConvBNReLU stem, InvertedResidual stages, a last 1x1 ConvBNReLU.

    Each stage (t, c, n, s) of ``V2_STAGES`` is n blocks with expansion t and ``make_divisible(c *
    width)`` output channels; the first has stride s, the rest stride 1 and a skip connection.
    """
    num_classes, width, input_size, in_channels = _check_common(num_classes, width, input_size, in_channels)
    stem = make_divisible(V2_STEM * width)
    layers: list[nn.Module] = [ConvBNReLU(in_channels, stem, 3, stride=2)]
    cin = stem
    for t, c, n, s in V2_STAGES:
        cout = make_divisible(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = make_divisible(V2_LAST * width)
    layers.append(ConvBNReLU(cin, last, 1))
    config = dict(arch="mobilenet_v2", width=width, input_size=input_size, in_channels=in_channels, num_classes=num_classes)
    model = MobileNet(nn.Sequential(*layers), last, num_classes, config)
    _init_weights(model)
    return model


MODELS: dict[str, Callable[..., MobileNet]] = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2}


def build_model(config: dict) -> MobileNet:
    """Rebuild a model from its ``.config`` dict (arch, width, input_size, in_channels, num_classes)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict like model.config, got {type(config).__name__}")
    needed = {"arch", "width", "input_size", "in_channels", "num_classes"}
    missing = needed - set(config)
    if missing:
        raise ValueError(f"model config is missing {sorted(missing)}; it needs {sorted(needed)}")
    extra = set(config) - needed
    if extra:
        raise ValueError(f"model config has unknown keys {sorted(extra)}; allowed: {sorted(needed)}")
    arch = config["arch"]
    if arch not in MODELS:
        raise ValueError(f"unknown model architecture {arch!r}; choose one of {sorted(MODELS)}")
    return MODELS[arch](
        config["num_classes"], width=config["width"], input_size=config["input_size"], in_channels=config["in_channels"]
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
