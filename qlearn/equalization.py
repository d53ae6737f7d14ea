"""Post-training cures that need no training: cross-layer equalization and bias correction.

Both are from Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction"
(ICCV 2019), and both work on the BN-folded network, where one scale per tensor fails because the
folded output channels of a layer have wildly different ranges (Eqs. 41-42, 53).

**Cross-layer equalization (CLE).** For two layers in a row with a positively homogeneous activation
between them (ReLU: relu(x / s) = relu(x) / s for s > 0),

    y = W2 relu(W1 x + b1) = (W2 S) relu(S^-1 W1 x + S^-1 b1),   S = diag(s) > 0

for *any* positive per-channel s: divide output channel i of layer 1 (weights and bias) by s_i and
multiply input channel i of layer 2 by s_i, and the float function is unchanged. Choosing
s_i = sqrt(r1_i / r2_i), with r1_i = max |W1[i, ...]| and r2_i = max |W2[:, i, ...]|, makes both
ranges sqrt(r1_i r2_i): the channels of each layer become as alike as the pair allows, so a single
per-tensor scale fits them all much better. ReLU6 is *not* positively homogeneous (its clip at 6
would move), so, as Nagel et al. do for MobileNet v2, equalized layers use ReLU instead of ReLU6
(``ConvBNPlainReLU``); that change of the float model is measured, not hidden.

**Bias correction.** Rounding the weights shifts each output's mean: with eps = W_q - W the quantized
layer computes W x + eps x, whose expectation is off by eps E[x] per output channel. Subtracting
eps E[x] from the bias (E[x] per input channel measured on calibration images: empirical bias
correction) removes the shift; it does nothing for the variance of the error.

Both edit a "folded form" of the model (``folded_form``): every BN is folded into its conv (the conv
holds w_fold) and kept as an identity BN that only adds b_fold, so ``qlearn.qat.prepare_qat`` /
``qlearn.ptq`` still accept it and fold it again exactly.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from qlearn._checks import check_bits, check_bool, check_int
from qlearn.bn_fold import fold_bn
from qlearn.fake_quant import quantize_int, weight_scale
from qlearn.models import ConvBNReLU, InvertedResidual, MobileNet

__all__ = [
    "ConvBNPlainReLU",
    "folded_form",
    "zero_dead_channels",
    "conv_blocks",
    "channel_ranges",
    "DEAD_REL",
    "dead_channels",
    "equalize_pairs",
    "cross_layer_equalize",
    "bias_correct",
    "range_spread",
]

_EPS = 2.0**-10  # the identity BN's eps: 1 - 2^-10 + 2^-10 == 1 exactly in float32, so it divides by 1


class ConvBNPlainReLU(ConvBNReLU):
    """``ConvBNReLU`` with ReLU (max(0, y)) instead of ReLU6: positively homogeneous, so CLE is exact.

    ``relu6`` is False (no clip at 6); the fake-quant and integer models get the ReLU from the uint8
    output grid: its range starts at 0, so Z = 0 and the kernel's clamp at code 0 is the ReLU (Eq. 37).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def extra_repr(self) -> str:
        return "relu"


def conv_blocks(model: nn.Module) -> list[tuple[str, ConvBNReLU]]:
    """Every ``ConvBNReLU`` of the model with its name, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ConvBNReLU)]


@torch.no_grad()
def folded_form(model: MobileNet) -> MobileNet:
    """A copy of ``model`` (eval mode) whose convs hold the folded weights w_fold (Eq. 41) and whose
    BNs are identities plus the folded bias b_fold (Eq. 42): gamma 1, beta b_fold, mean 0,
    var 1 - 2^-10, eps 2^-10. Same function as ``model.eval()``; folding it again (prepare_qat,
    ``qlearn.bn_fold``) gives back exactly w_fold and b_fold (the BN divides by sqrt(1) = 1).
    """
    if not isinstance(model, MobileNet):
        raise TypeError(f"model must be a qlearn MobileNet (e.g. efficientnet_lite0()), got {type(model).__name__}")
    out = copy.deepcopy(model).eval()
    for name, b in conv_blocks(out):
        bn = b.bn
        if not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"block {name!r} has no BatchNorm: pass the unfused float model")
        w, bias = fold_bn(b.conv.weight.double(), None, bn.weight.double(), bn.bias.double(),
                          bn.running_mean.double(), bn.running_var.double(), bn.eps)  # float64
        b.conv.weight.copy_(w.float())
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias.float())
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - _EPS)
        bn.eps = _EPS
    return out


def _check_folded(model: Any) -> None:
    if not isinstance(model, MobileNet):
        raise TypeError(f"model must be a qlearn MobileNet in folded form (folded_form(...)), got {type(model).__name__}")
    for name, b in conv_blocks(model):
        if not (bool(torch.all(b.bn.running_mean == 0)) and bool(torch.all(b.bn.weight == 1)) and b.bn.eps == _EPS):
            raise ValueError(f"block {name!r} is not in folded form; call qlearn.equalization.folded_form(model) first")


def channel_ranges(w: torch.Tensor, axis: int = 0) -> np.ndarray:
    """max |w| per channel along ``axis`` (0: output channels, 1: input channels), float64 (C,)."""
    w = w.detach().double()
    return w.transpose(0, axis).reshape(w.shape[axis], -1).abs().amax(1).numpy()


#: A channel is "dead" when its range max |w_fold[c]| is below this fraction of the layer's largest.
DEAD_REL = 1e-3


def dead_channels(ranges: np.ndarray, rel: float = DEAD_REL) -> np.ndarray:
    """Boolean mask (C,) of the channels whose range is below ``rel`` times the largest of ``ranges`` (C,)."""
    r = np.asarray(ranges, dtype=np.float64)
    return r < rel * r.max()


def range_spread(w: torch.Tensor) -> float:
    """max_c r_c / min_c r_c over the nonzero output-channel ranges r_c = max |w[c]| (1 = all alike)."""
    r = channel_ranges(w)
    r = r[r > 0]
    return float(r.max() / r.min()) if r.size else 1.0


@torch.no_grad()
def zero_dead_channels(model: MobileNet, rel: float = DEAD_REL) -> dict[str, int]:
    """In a folded-form model, set to exactly 0 the weights of every output channel whose max |w_fold|
    is below ``rel`` times the layer's largest (in place). Returns {block name: channels zeroed}.

    Such "dead" channels output a constant relu(b_fold); their weights change the output by at most
    rel * max|w| * sum |x| per value. Left in, they break integer inference per channel: S_w is
    ~1e-9 of the layer's, so the int32 bias b / (S_in S_w) overflows (Eq. 65). A zero channel gets
    S_w = 1 (``qlearn.fake_quant.weight_scale``), and its bias fits.
    """
    _check_folded(model)
    if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not 0 < rel < 1:
        raise ValueError(f"rel must be a number in (0, 1), e.g. 1e-6, got {rel!r}")
    zeroed = {}
    for name, b in conv_blocks(model):
        dead = dead_channels(channel_ranges(b.conv.weight), rel)
        if dead.any():
            b.conv.weight[torch.from_numpy(dead)] = 0.0
            zeroed[name] = int(dead.sum())
    return zeroed


def equalize_pairs(model: MobileNet) -> list[tuple[str, str]]:
    """The (layer 1, layer 2) pairs CLE equalizes: inside each inverted residual block, expand -> depthwise
    and depthwise -> projection, and the stem -> the first block's first layer (each with a ReLU6 or
    ReLU between them). Projections and the residual adds are left alone (a scale cannot pass an add)."""
    names = {m: n for n, m in model.named_modules()}
    feats = list(model.features)
    pairs = []
    if isinstance(feats[0], ConvBNReLU) and len(feats) > 1 and isinstance(feats[1], InvertedResidual):
        pairs.append((names[feats[0]], names[feats[1].layers[0]]))
    for block in feats:
        if isinstance(block, InvertedResidual):
            layers = list(block.layers)
            for a, b in zip(layers[:-1], layers[1:]):
                pairs.append((names[a], names[b]))
    return pairs


@torch.no_grad()
def cross_layer_equalize(model: MobileNet, *, sweeps: int = 20) -> MobileNet:
    """Cross-layer equalization (Nagel et al. 2019) of a folded-form model: a new model, ``model`` untouched.

    Every layer 1 of ``equalize_pairs`` becomes a ``ConvBNPlainReLU`` (ReLU replaces ReLU6), then for
    ``sweeps`` passes over the pairs: s = sqrt(r1 / r2) per channel (s = 1 where a range is 0),
    W1[i] /= s_i, b1[i] /= s_i, W2[:, i] *= s_i (depthwise W2: W2[i] *= s_i). The result computes the
    same function as the ReLU version of ``model`` (float tolerance); per-tensor ranges spread less.
    """
    _check_folded(model)
    sweeps = check_int(sweeps, "sweeps", minimum=1, maximum=1000)
    out = copy.deepcopy(model).eval()
    mods = dict(out.named_modules())
    pairs = [(mods[a], mods[b]) for a, b in equalize_pairs(out)]
    for first, _ in pairs:
        if first.relu6:
            first.__class__ = ConvBNPlainReLU  # same parameters; ReLU instead of ReLU6
            first.relu6 = False
    for _ in range(sweeps):
        for first, second in pairs:
            w1, w2 = first.conv.weight, second.conv.weight  # (C, ...), (C2, C/g, ...)
            depthwise = second.conv.groups > 1 and w2.shape[1] == 1
            r1 = channel_ranges(w1, 0)
            r2 = channel_ranges(w2, 0 if depthwise else 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / r2), 1.0)  # (C,) float64
            st = torch.from_numpy(s)
            w1.copy_((w1.double() / st.reshape(-1, *[1] * (w1.ndim - 1))).float())
            first.bn.bias.copy_((first.bn.bias.double() / st).float())
            shape = (-1, 1, 1, 1) if depthwise else (1, -1, 1, 1)
            w2.copy_((w2.double() * st.reshape(shape)).float())
    return out


@torch.no_grad()
def bias_correct(model: MobileNet, images: torch.Tensor, *, weight_bits: int = 8, per_channel: bool = False,
                 batch_size: int = 16) -> MobileNet:
    """Empirical bias correction (Nagel et al. 2019, Sec. 4.2) of a folded-form model: a new model.

    For every conv: eps = fq(W) - W with the weight quantizer PTQ will use (``weight_bits``, per
    channel or per tensor, min/max: Eq. 53), E[x] = the mean of the layer's input per channel over
    ``images`` (float model, (N, C, H, W)), and b <- b - sum eps E[x] over input channels and taps
    (padding ignored). The quantized layer's output mean then matches the float one's.
    """
    _check_folded(model)
    weight_bits = check_bits(weight_bits)
    per_channel = check_bool(per_channel, "per_channel")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not torch.is_floating_point(images):
        raise TypeError("images must be a float tensor (N, C, H, W) of preprocessed calibration images")
    out = copy.deepcopy(model).eval()
    blocks = conv_blocks(out)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def f(mod: nn.Module, inp: tuple) -> None:
            x = inp[0].double()
            sums[name] = sums.get(name, 0) + x.sum(dim=(0, 2, 3))  # (Cin,)
            counts[name] = counts.get(name, 0) + x.shape[0] * x.shape[2] * x.shape[3]
        return f

    handles = [b.conv.register_forward_pre_hook(hook(n)) for n, b in blocks]
    try:
        for i in range(0, images.shape[0], batch_size):
            out(images[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    qmax = 2 ** (weight_bits - 1) - 1
    for name, b in blocks:
        w = b.conv.weight.double()  # (Cout, Cin/g, kh, kw)
        s = weight_scale(w, weight_bits, per_channel=per_channel)
        s_b = s.reshape(-1, 1, 1, 1) if per_channel else s
        eps = quantize_int(w, s_b, torch.zeros_like(s_b), -qmax, qmax) * s_b - w  # (Cout, Cin/g, kh, kw)
        mean_x = sums[name] / counts[name]  # (Cin,) float64
        g = b.conv.groups
        cout, cg = w.shape[:2]
        mx = mean_x.reshape(g, cg)  # (groups, Cin/g)
        eps_sum = eps.sum(dim=(2, 3)).reshape(g, cout // g, cg)  # (G, Cout/G, Cin/G)
        shift = torch.einsum("goc,gc->go", eps_sum, mx).reshape(cout)  # (Cout,) float64
        b.bn.bias.copy_((b.bn.bias.double() - shift).float())
    return out
