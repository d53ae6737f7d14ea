"""Notebook 05: batch-norm folding -- exact in float, the source of wide channel ranges, and the
reason quantization-aware training must quantize the *folded* weights.

At inference, a convolution followed by batch norm is one affine map per output channel, so BN is
multiplied into the weights and added into the bias (Eqs. 40-43, paper Sec. 3.2):

    w_fold[c] = gamma_c w[c] / sqrt(var_c + eps),   b_fold[c] = beta_c + (b_c - mu_c) gamma_c / sqrt(var_c + eps)

The fold is exact in real arithmetic (and to float rounding in float32). It multiplies channel c by its
own factor gamma_c / sigma_c: a channel whose running variance is tiny gets a huge factor, and the
folded channel ranges spread apart -- the problem per-channel scales solve (notebook 03). The integer
model stores int8 codes of w_fold, so training must fake-quantize w_fold, not w: quantizing w and then
folding gives weights that are off the integer grid and must be rounded a second time at conversion
(whenever the scale is per tensor). During training the fold uses the moving averages and a correction
sigma / sigma_B restores batch statistics until BN is frozen (Eqs. 58-62 and 44; ``qlearn.qat_layers.QATConvBN``).

This module holds the measurements (``bn_layer``, ``fold_spread``, ``fold_vs_torch``,
``compare_fold_order``, ``bn_correction``), all on the cached lesson model of notebook 03
(``qlearn.lessons.lesson_model``). The explorers ``bn_fold_explorer`` and ``fold_order_explorer``
that show them are in ``qlearn.widgets.bn_fold``.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qlearn._checks import as_float_array, check_bits, check_bool, check_channel
from qlearn.bn_fold import fold_bn, fuse_conv_bn
from qlearn.fake_quant import ActFakeQuant
from qlearn.lessons.lesson_model import LessonModel, check_lesson
from qlearn.lessons.per_channel import widest_spread_layer
from qlearn.models import ConvBNReLU
from qlearn.qat_layers import QATConvBN
from qlearn.quantize import fake_quantize
from qlearn.ranges import weight_qparams
from qlearn.threads import one_thread

__all__ = [
    "BNLayer",
    "bn_layer",
    "bn_layer_names",
    "median_factor_channel",
    "channel_spread",
    "FoldSpread",
    "fold_spread",
    "FoldCheck",
    "fold_vs_torch",
    "OrderComparison",
    "compare_fold_order",
    "BNCorrection",
    "bn_correction",
]


# ---------------------------------------------------------------------------------- one conv + BN
@dataclass(frozen=True, eq=False)
class BNLayer:
    """A convolution of the lesson model with the batch norm after it, as float64 numbers.

    weight (C, Cin/groups, kh, kw) is the *unfolded* conv weight; gamma, beta, mean, var are (C,)
    (BN weight, bias, running mean, running variance); eps is BN's epsilon. ``conv`` and ``bn`` are the
    trained modules themselves (read, never modified).
    """

    name: str
    kind: str  # "conv" or "depthwise"
    weight: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    conv: nn.Conv2d
    bn: nn.BatchNorm2d

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def factor(self) -> np.ndarray:
        """(C,) gamma_c / sqrt(var_c + eps): what folding multiplies channel c by (Eq. 41)."""
        return self.gamma / np.sqrt(self.var + self.eps)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(w_fold, b_fold) in float64 (Eqs. 41-42; the conv has no bias of its own)."""
        return fold_bn(self.weight, None, self.gamma, self.beta, self.mean, self.var, self.eps)

    def with_channel(self, channel: int, *, gamma_scale: float = 1.0, var_scale: float = 1.0) -> BNLayer:
        """A copy with channel ``channel``'s gamma multiplied by ``gamma_scale`` and its running
        variance by ``var_scale`` (what-if: a channel whose BN learned a tiny variance)."""
        c = check_channel(channel, self.channels)
        for name, v in (("gamma_scale", gamma_scale), ("var_scale", var_scale)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        gamma, var = self.gamma.copy(), self.var.copy()
        gamma[c] *= float(gamma_scale)
        var[c] *= float(var_scale)
        return replace(self, gamma=gamma, var=var)

    def modules(self) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
        """Fresh float32 (conv, bn) copies in eval mode carrying this layer's (possibly edited) numbers."""
        conv, bn = copy.deepcopy(self.conv).eval(), copy.deepcopy(self.bn).eval()
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(self.weight))
            bn.weight.copy_(torch.from_numpy(self.gamma))
            bn.bias.copy_(torch.from_numpy(self.beta))
            bn.running_mean.copy_(torch.from_numpy(self.mean))
            bn.running_var.copy_(torch.from_numpy(self.var))
        return conv, bn


def bn_layer_names(lesson: LessonModel) -> list[str]:
    """Names of the lesson model's layers that have a batch norm to fold (every conv; not the classifier)."""
    check_lesson(lesson)
    return [n for n, m in lesson.model.named_modules() if isinstance(m, ConvBNReLU) and isinstance(m.bn, nn.BatchNorm2d)]


def bn_layer(lesson: LessonModel, name: str) -> BNLayer:
    """The conv + BN named ``name`` (e.g. "features.4.dw") of the lesson model's *float* model."""
    check_lesson(lesson)
    names = bn_layer_names(lesson)
    if name not in names:
        raise ValueError(f"{name!r} is not a conv followed by batch norm; choose one of {', '.join(names)}")
    block = lesson.model.get_submodule(name)
    conv, bn = block.conv, block.bn
    kind = "depthwise" if conv.groups > 1 and conv.groups == conv.in_channels else "conv"

    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy().copy()

    return BNLayer(name, kind, f64(conv.weight), f64(bn.weight), f64(bn.bias), f64(bn.running_mean),
                   f64(bn.running_var), float(bn.eps), conv, bn)


# ---------------------------------------------------------------------------------- spreads
def _channel_absmax(w: np.ndarray) -> np.ndarray:
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)  # (C,)


def channel_spread(w: Any) -> float:
    """max_c max|w_c| / min_c max|w_c| over the output channels (axis 0) with a nonzero range.

    1 means every channel spans the same range; k means the widest is k times the narrowest, so a
    per-tensor grid is k times too coarse for the narrowest channel (Eq. 19).
    """
    arr = as_float_array(w, "w")
    if arr.ndim < 2:
        raise ValueError(f"w needs an output-channel axis and values per channel, got shape {arr.shape}")
    a = _channel_absmax(arr)
    a = a[a > 0]
    if a.size == 0:
        raise ValueError("every channel of w is all zeros: the spread is undefined")
    return float(a.max() / a.min())


@dataclass(frozen=True, eq=False)
class FoldSpread:
    """Per-channel ranges of one layer before and after folding. Arrays are (C,)."""

    name: str
    absmax_before: np.ndarray  # max|w_c|
    absmax_after: np.ndarray  # max|w_fold,c| = |factor_c| max|w_c|
    factor: np.ndarray  # gamma_c / sqrt(var_c + eps)
    spread_before: float
    spread_after: float

    @property
    def factor_spread(self) -> float:
        a = np.abs(self.factor)
        return float(a.max() / a.min())


def fold_spread(layer: BNLayer) -> FoldSpread:
    """Channel ranges max|w_c| before and max|w_fold,c| after folding (Eq. 41), and their spreads."""
    if not isinstance(layer, BNLayer):
        raise TypeError(f"layer must be a BNLayer (from bn_layer), got {type(layer).__name__}")
    w_fold, _ = layer.folded()
    return FoldSpread(layer.name, _channel_absmax(layer.weight), _channel_absmax(w_fold), layer.factor,
                      channel_spread(layer.weight), channel_spread(w_fold))


# ---------------------------------------------------------------------------------- exactness
@dataclass(frozen=True)
class FoldCheck:
    """qlearn's fold against PyTorch's ``fuse_conv_bn_eval`` and against running conv then BN (float32)."""

    weight_diff: float  # max |w_fold (qlearn) - w_fold (torch)|
    bias_diff: float  # max |b_fold (qlearn) - b_fold (torch)|
    output_diff: float  # max |bn(conv(x)) - folded_conv(x)| on a fixed random input
    output_scale: float  # max |bn(conv(x))|, to read output_diff against


def fold_vs_torch(layer: BNLayer, *, seed: int = 0) -> FoldCheck:
    """Fold ``layer`` with ``qlearn.bn_fold.fuse_conv_bn`` (Eq. 43) and compare, all in float32:

    * with ``torch.nn.utils.fusion.fuse_conv_bn_eval`` (an independent implementation of Eqs. 41-42),
    * with the unfolded pair bn(conv(x)) on a fixed random input x (4, Cin, 8, 8) ~ U(0, 1).
    The differences are float32 rounding, ~1e-7 of the values' size.
    """
    if not isinstance(layer, BNLayer):
        raise TypeError(f"layer must be a BNLayer (from bn_layer), got {type(layer).__name__}")
    conv, bn = layer.modules()
    with torch.no_grad(), one_thread():
        ours = fuse_conv_bn(conv, bn)
        theirs = fuse_conv_bn_eval(copy.deepcopy(conv), copy.deepcopy(bn))
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.rand((4, conv.in_channels, 8, 8), generator=gen)  # (N, Cin, H, W) float32
        ref = bn(conv(x))
        out = ours(x)
    return FoldCheck(
        weight_diff=float((ours.weight - theirs.weight).detach().abs().max()),
        bias_diff=float((ours.bias - theirs.bias).detach().abs().max()),
        output_diff=float((out - ref).abs().max()),
        output_scale=float(ref.abs().max()),
    )


# ---------------------------------------------------------------------------------- order
@dataclass(frozen=True, eq=False)
class OrderComparison:
    """Fold-then-quantize against quantize-then-fold for one layer. Arrays are (C, ...) or (C,).

    right    = fq(w_fold)                   what the integer model runs, and what training should see
    trained  = factor * fq(w)               what a graph that quantizes w *before* BN trains with
    deployed = fq(trained)                  the integer model needs codes on one grid: round again
    """

    bits: int
    per_channel: bool
    w_fold: np.ndarray
    right: np.ndarray
    trained: np.ndarray
    deployed: np.ndarray
    deployed_scale: Any  # S of the deployed grid: float, or (C,) per channel

    @property
    def mse_right(self) -> float:
        """Quantization MSE of fold-then-quantize: mean (fq(w_fold) - w_fold)^2."""
        return float(np.mean((self.right - self.w_fold) ** 2))

    @property
    def mse_deployed(self) -> float:
        """MSE of what the integer model runs after quantize-then-fold: mean (deployed - w_fold)^2."""
        return float(np.mean((self.deployed - self.w_fold) ** 2))

    @property
    def mismatch(self) -> float:
        """Train/deploy mismatch of quantize-then-fold: mean (deployed - trained)^2 (0 for the right order)."""
        return float(np.mean((self.deployed - self.trained) ** 2))

    @property
    def right_mismatch(self) -> float:
        """The same for fold-then-quantize: mean (fq(right) - right)^2 -- 0, it is already on its grid."""
        again = fake_quantize(self.right, weight_qparams(self.right, self.bits, per_channel=self.per_channel))
        return float(np.mean((again - self.right) ** 2))

    @property
    def mismatch_per_channel(self) -> np.ndarray:
        d = (self.deployed - self.trained).reshape(self.trained.shape[0], -1)
        return np.mean(d**2, axis=1)

    @property
    def off_grid_fraction(self) -> float:
        """Share of quantize-then-fold weights that are not on the deployed grid (more than 1e-6 LSB off)."""
        s = np.asarray(self.deployed_scale, dtype=np.float64)
        s = s.reshape((-1,) + (1,) * (self.trained.ndim - 1)) if s.ndim == 1 else s
        k = self.trained / s
        return float(np.mean(np.abs(k - np.rint(k)) > 1e-6))


def compare_fold_order(layer: BNLayer, bits: int, *, per_channel: bool = False) -> OrderComparison:
    """Quantize the folded weights (right) or fold the quantized weights (wrong), symmetric min/max grids.

    Every fq is ``fake_quantize`` with ``weight_qparams(., bits, per_channel=...)`` (Eq. 8 / Eq. 53: qlearn's
    symmetric narrow-range weights). Per tensor the two orders differ: each channel of fq(w)
    is stretched by its own factor and leaves the grid. Per channel (min/max ranges) they agree to
    float rounding: channel c's grid is stretched as a whole, S_c -> |factor_c| S_c.
    """
    if not isinstance(layer, BNLayer):
        raise TypeError(f"layer must be a BNLayer (from bn_layer), got {type(layer).__name__}")
    bits = check_bits(bits)
    per_channel = check_bool(per_channel, "per_channel")
    w_fold, _ = layer.folded()
    right = fake_quantize(w_fold, weight_qparams(w_fold, bits, per_channel=per_channel))
    fq_w = fake_quantize(layer.weight, weight_qparams(layer.weight, bits, per_channel=per_channel))
    trained = fq_w * layer.factor.reshape((-1,) + (1,) * (fq_w.ndim - 1))
    qp = weight_qparams(trained, bits, per_channel=per_channel)
    deployed = fake_quantize(trained, qp)
    return OrderComparison(bits, per_channel, w_fold, right, trained, deployed, qp.scale)


# ---------------------------------------------------------------------------------- training-time fold
@dataclass(frozen=True, eq=False)
class BNCorrection:
    """A few training-mode forward passes of ``qlearn.qat_layers.QATConvBN`` on real activations (no SGD step).

    Arrays have one row per forward pass (``steps``):
    batch_stats  (steps,) bool   BN used the batch's statistics (True until ``freeze_step``)
    correction   (steps, C)      sigma_c / sigma_B,c applied to the output (Eq. 61); 1 once frozen
    float_check  (steps,)        max |QATConvBN(x) - reference| with weight quantization off: the
                                 reference is BatchNorm in training mode (batch statistics) before the
                                 freeze, in eval mode (moving averages) after it. Float rounding only.
    train_vs_infer (steps,)      mean |y_train - y_infer| / mean |y_infer| with weights quantized:
                                 how far the training graph (61) is from the inference graph (62) (Eq. 44)
    running_var_change (steps,)  max_c |change of the running variance| in this pass (0 once frozen)
    """

    name: str
    freeze_step: int
    bits: int
    per_channel: bool
    batch_stats: np.ndarray
    correction: np.ndarray
    float_check: np.ndarray
    train_vs_infer: np.ndarray
    running_var_change: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.batch_stats.shape[0])


def _layer_inputs(lesson: LessonModel, name: str, images: torch.Tensor) -> torch.Tensor:
    """What the block ``name`` of the float model receives for ``images`` (eval mode)."""
    seen: list[torch.Tensor] = []
    block = lesson.model.get_submodule(name)
    handle = block.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    was_training = lesson.model.training
    try:
        lesson.model.eval()
        with torch.no_grad():
            lesson.model(images)
    finally:
        handle.remove()
        lesson.model.train(was_training)
    return seen[0]


def bn_correction(
    lesson: LessonModel, name: str | None = None, *, steps: int = 6, freeze_step: int = 3,
    batch_size: int = 32, bits: int = 4, per_channel: bool = False,
) -> BNCorrection:
    """Run ``steps`` training-mode forward passes of a ``QATConvBN`` copy of layer ``name``, freezing BN
    after ``freeze_step`` of them, on consecutive training batches of the lesson data (no weight update).

    Two copies run in lock step: one with weight fake-quantization off (to check Eq. 61 against
    PyTorch's BatchNorm exactly) and one with ``bits``-bit weights (to measure Eq. 44). Their BN
    statistics evolve identically, since both are computed from the float convolution (Eq. 58).
    The lesson model is not modified.
    """
    check_lesson(lesson)
    name = widest_spread_layer(lesson) if name is None else name
    layer = bn_layer(lesson, name)  # raises for a name without BN
    for label, v, lo in (("steps", steps, 1), ("freeze_step", freeze_step, 0), ("batch_size", batch_size, 2)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{label} must be an integer >= {lo}, got {v!r}")
    bits = check_bits(bits)
    if bits > 8:
        raise ValueError(f"bits must be between 2 and 8 (weights are stored in int8), got {bits}")
    per_channel = check_bool(per_channel, "per_channel")
    n_images = int(steps) * int(batch_size)
    x_all = lesson.data.x_train
    if n_images > x_all.shape[0]:
        raise ValueError(f"steps x batch_size = {n_images} is more than the {x_all.shape[0]} training images")

    def make(quant: bool) -> QATConvBN:
        act = ActFakeQuant(8)
        act.enabled = False  # look at the conv + BN output itself, not its uint8 grid
        m = QATConvBN(copy.deepcopy(layer.conv), copy.deepcopy(layer.bn), False, act, weight_bits=bits,
                      per_channel=per_channel, freeze_step=int(freeze_step))
        m.weight_quant = quant
        return m

    m_float, m_quant = make(False), make(True)
    used, corr, check, gap, dvar = [], [], [], [], []
    with torch.no_grad(), one_thread():
        inputs = _layer_inputs(lesson, name, x_all[:n_images])  # (N, Cin, H, W) float32
        for i in range(int(steps)):
            x = inputs[i * batch_size : (i + 1) * batch_size]
            bn = m_float.bn
            y_infer = m_quant.eval()(x)  # Eq. 62: what the integer model computes (no state change)
            var_before = bn.running_var.clone()
            tracked = int(bn.num_batches_tracked)
            z = F.conv2d(x, m_float.conv.weight, None, m_float.conv.stride, m_float.conv.padding,
                         m_float.conv.dilation, m_float.conv.groups)  # the float conv (Eq. 58)
            var_b = torch.var(z, dim=(0, 2, 3), unbiased=False)
            y_float = m_float.train()(x)
            y_train = m_quant.train()(x)
            batch = int(bn.num_batches_tracked) > tracked
            if batch:
                ref = F.batch_norm(z, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
                c = torch.sqrt(bn.running_var + bn.eps) / torch.sqrt(var_b + bn.eps)  # sigma / sigma_B
            else:
                ref = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
                c = torch.ones_like(var_b)
            used.append(batch)
            corr.append(c.double().numpy())
            check.append(float((y_float - ref).abs().max()))
            gap.append(float((y_train - y_infer).abs().mean() / y_infer.abs().mean().clamp_min(1e-12)))
            dvar.append(float((bn.running_var - var_before).abs().max()))
    return BNCorrection(name, int(freeze_step), bits, per_channel, np.array(used), np.array(corr),
                        np.array(check), np.array(gap), np.array(dvar))


def median_factor_channel(layer: BNLayer) -> int:
    """The channel with the median fold factor: an ordinary channel, neither the widest nor the narrowest."""
    a = np.abs(layer.factor)
    return int(np.argsort(a, kind="stable")[len(a) // 2])
