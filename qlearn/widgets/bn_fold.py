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
sigma / sigma_B restores batch statistics until BN is frozen (Eqs. 58-62 and 44; ``qlearn.qat.QATConvBN``).

This module holds the measurements (``bn_layer``, ``fold_spread``, ``fold_vs_torch``,
``compare_fold_order``, ``bn_correction``) and the explorers ``bn_fold_explorer`` and
``fold_order_explorer``, all on the cached lesson model of notebook 03 (``lesson_model``).
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, replace
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from qlearn._checks import check_bits
from qlearn.bn_fold import fold_bn, fuse_conv_bn
from qlearn.lessons.lesson_model import LessonModel, lesson_model
from qlearn.quantize import fake_quantize
from qlearn.ranges import weight_qparams
from qlearn.threads import one_thread
from qlearn.widgets.base import Explorer, int_slider, slider
from qlearn.widgets.per_channel import (
    CHANNEL_COLOR,
    TENSOR_COLOR,
    compare_schemes,
    widest_spread_layer,
)

__all__ = [
    "BNLayer",
    "bn_layer",
    "bn_layer_names",
    "channel_spread",
    "FoldSpread",
    "fold_spread",
    "FoldCheck",
    "fold_vs_torch",
    "OrderComparison",
    "compare_fold_order",
    "BNCorrection",
    "bn_correction",
    "BNFoldExplorer",
    "bn_fold_explorer",
    "FoldOrderExplorer",
    "fold_order_explorer",
]

HIGHLIGHT = "#ff7f0e"  # the channel the learner is editing
FACTOR_COLOR = "#6baed6"


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

    def with_channel(self, channel: int, *, gamma_scale: float = 1.0, var_scale: float = 1.0) -> "BNLayer":
        """A copy with channel ``channel``'s gamma multiplied by ``gamma_scale`` and its running
        variance by ``var_scale`` (what-if: a channel whose BN learned a tiny variance)."""
        c = _check_channel(channel, self.channels)
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


def _check_channel(channel: Any, channels: int) -> int:
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral):
        raise TypeError(f"channel must be an integer output-channel index, got {channel!r}")
    if not 0 <= int(channel) < channels:
        raise ValueError(f"channel must be in 0..{channels - 1} (this layer has {channels} output channels), got {channel}")
    return int(channel)


def _check_lesson(lesson: Any) -> LessonModel:
    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    return lesson


def bn_layer_names(lesson: LessonModel) -> list[str]:
    """Names of the lesson model's layers that have a batch norm to fold (every conv; not the classifier)."""
    from qlearn.models import ConvBNReLU

    _check_lesson(lesson)
    return [n for n, m in lesson.model.named_modules() if isinstance(m, ConvBNReLU) and isinstance(m.bn, nn.BatchNorm2d)]


def bn_layer(lesson: LessonModel, name: str) -> BNLayer:
    """The conv + BN named ``name`` (e.g. "features.4.dw") of the lesson model's *float* model."""
    _check_lesson(lesson)
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
    from qlearn._checks import as_float_array

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
    from torch.nn.utils.fusion import fuse_conv_bn_eval

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
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
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
    """A few training-mode forward passes of ``qlearn.qat.QATConvBN`` on real activations (no SGD step).

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
    from qlearn.qat import ActFakeQuant, QATConvBN

    _check_lesson(lesson)
    name = widest_spread_layer(lesson) if name is None else name
    layer = bn_layer(lesson, name)  # raises for a name without BN
    for label, v, lo in (("steps", steps, 1), ("freeze_step", freeze_step, 0), ("batch_size", batch_size, 2)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{label} must be an integer >= {lo}, got {v!r}")
    bits = check_bits(bits)
    if bits > 8:
        raise ValueError(f"bits must be between 2 and 8 (weights are stored in int8), got {bits}")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
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


# ---------------------------------------------------------------------------------- explorer 1
def _default_channel(layer: BNLayer) -> int:
    """The channel with the median fold factor: an ordinary channel, neither the widest nor the narrowest."""
    a = np.abs(layer.factor)
    return int(np.argsort(a, kind="stable")[len(a) // 2])


class BNFoldExplorer(Explorer):
    """Notebook 05: edit one channel's BN (running variance, gamma), watch its folded range and the error."""

    title_text = "Batch-norm folding: one channel's variance sets its folded range"
    figsize = (12.0, 3.7)

    def __init__(self, lesson: LessonModel | None = None, layer: str | None = None, channel: int | None = None,
                 bits: int = 4) -> None:
        self.lesson = lesson_model() if lesson is None else _check_lesson(lesson)
        name = widest_spread_layer(self.lesson) if layer is None else layer
        self.layer = bn_layer(self.lesson, name)
        channel = _default_channel(self.layer) if channel is None else _check_channel(channel, self.layer.channels)
        bits = check_bits(bits)
        if bits > 8:
            raise ValueError(f"bits must be between 2 and 8, got {bits}")
        controls = {
            "log_var": slider("running var ×10^", 0.0, -4.0, 2.0, 0.25),
            "gamma": slider("gamma ×", 1.0, 0.25, 4.0, 0.25),
            "bits": int_slider("weight bits", bits, 2, 8),
            "channel": int_slider("channel", channel, 0, self.layer.channels - 1),
        }
        super().__init__(controls, title=f"{self.title_text} ({self.layer.name}, {self.layer.kind})")

    def build(self, fig: Figure) -> None:
        self.ax_f, self.ax_r, self.ax_s = fig.subplots(1, 3)
        C = self.layer.channels
        x = np.arange(C)
        edges = np.arange(C + 1) - 0.5
        self.f_bars = self.ax_f.stairs(np.ones(C), edges, fill=True, color=FACTOR_COLOR, baseline=1e-30)
        (self.f_mark,) = self.ax_f.plot([], [], "o", color=HIGHLIGHT, ms=7, label="edited channel")
        self.ax_f.set(yscale="log", xlim=(-1, C), xlabel="output channel", ylabel="|gamma_c| / sqrt(var_c + eps)",
                      title="fold factor per channel (Eq. 41)")
        self.ax_f.legend(loc="upper right")
        self.r_bars = self.ax_r.stairs(np.ones(C), edges, fill=True, color=FACTOR_COLOR, baseline=1e-30,
                                       label="after folding max|w_fold,c|")
        (self.r_before,) = self.ax_r.plot(x, np.ones(C), "_", color="k", ms=4, mew=1.2, label="before folding max|w_c|")
        (self.r_mark,) = self.ax_r.plot([], [], "o", color=HIGHLIGHT, ms=7)
        self.t_line = self.ax_r.axhline(1.0, color=TENSOR_COLOR, ls="--", lw=1.2, label="per-tensor max (sets S)")
        self.ax_r.set(yscale="log", xlim=(-1, C), xlabel="output channel", ylabel="max |w|",
                      title="channel ranges before / after fold")
        self.ax_r.legend(loc="upper right")
        (self.s_t,) = self.ax_s.plot(x, np.zeros(C), ".-", color=TENSOR_COLOR, ms=3, lw=0.8, label="per-tensor")
        (self.s_c,) = self.ax_s.plot(x, np.zeros(C), ".-", color=CHANNEL_COLOR, ms=3, lw=0.8, label="per-channel")
        self.s_mark = self.ax_s.axvline(0, color=HIGHLIGHT, lw=1.0)
        self.ax_s.set(xlim=(-1, C), xlabel="output channel", ylabel="SQNR (dB)",
                      title="quantized folded weights: SQNR")
        self.ax_s.legend(loc="lower left")

    def render(self, log_var: float, gamma: float, bits: int, channel: int) -> dict:
        edited = self.layer.with_channel(channel, gamma_scale=gamma, var_scale=10.0 ** log_var)
        spread = fold_spread(edited)
        w_fold, _ = edited.folded()
        cmp = compare_schemes(w_fold, bits, symmetric=True)
        check = fold_vs_torch(edited)
        C = edited.channels
        factor = np.abs(spread.factor)
        self.f_bars.set_data(factor)
        self.f_mark.set_data([channel], [factor[channel]])
        self.ax_f.set_ylim(factor.min() / 2.0, factor.max() * 2.0)
        self.r_bars.set_data(spread.absmax_after)
        self.r_before.set_ydata(spread.absmax_before)
        self.r_mark.set_data([channel], [spread.absmax_after[channel]])
        self.t_line.set_ydata([spread.absmax_after.max()] * 2)
        both = np.concatenate([spread.absmax_after, spread.absmax_before])
        both = both[both > 0]
        self.ax_r.set_ylim(both.min() / 2.0, both.max() * 2.0)
        self.s_t.set_ydata(cmp.sqnr_tensor)
        self.s_c.set_ydata(cmp.sqnr_channel)
        self.s_mark.set_xdata([channel, channel])
        sq = np.concatenate([cmp.sqnr_tensor, cmp.sqnr_channel])
        sq = sq[np.isfinite(sq)]
        self.ax_s.set_ylim(min(sq.min(), 0.0) - 2.0, sq.max() + 3.0)
        zeroed = fake_quantize(w_fold, cmp.per_tensor).reshape(C, -1)  # (C, k) per-tensor quantized
        all_zero = int(np.sum(np.all(zeroed == 0, axis=1) & np.any(w_fold.reshape(C, -1) != 0, axis=1)))
        c = channel
        return {
            f"ch {c}: gamma": float(edited.gamma[c]),
            f"ch {c}: running var": float(edited.var[c]),
            f"ch {c}: fold factor gamma/sqrt(var+eps)": float(edited.factor[c]),
            f"ch {c}: range before folding max|w_c|": float(spread.absmax_before[c]),
            f"ch {c}: folded range max|w_fold,c|": float(spread.absmax_after[c]),
            "channel spread before folding (max/min)": spread.spread_before,
            "channel spread after folding (max/min)": spread.spread_after,
            "per-tensor scale S": float(cmp.per_tensor.scale),
            f"ch {c}: per-channel scale S_c": float(cmp.per_channel.scale[c]),
            f"ch {c}: MSE per-tensor": float(cmp.mse_tensor[c]),
            f"ch {c}: MSE per-channel": float(cmp.mse_channel[c]),
            f"ch {c}: SQNR per-tensor (dB)": float(cmp.sqnr_tensor[c]),
            f"ch {c}: SQNR per-channel (dB)": float(cmp.sqnr_channel[c]),
            "median channel SQNR per-tensor (dB)": float(np.median(cmp.sqnr_tensor)),
            "median channel SQNR per-channel (dB)": float(np.median(cmp.sqnr_channel)),
            "channels rounded to all zeros, per-tensor": all_zero,
            "max |w_fold - torch fuse_conv_bn_eval|": check.weight_diff,
            "max |bn(conv(x)) - folded conv(x)|": check.output_diff,
            "max |bn(conv(x))| (for scale)": check.output_scale,
        }


def bn_fold_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> BNFoldExplorer:
    """Notebook 05: slide one channel's running variance and gamma; see the folded ranges and the error.

    Uses the cached lesson model (trained once, about 10 s). ``layer`` defaults to the depthwise layer
    with the widest folded spread, ``channel`` to its median channel.
    """
    return BNFoldExplorer(lesson, **kwargs)


# ---------------------------------------------------------------------------------- explorer 2
class FoldOrderExplorer(Explorer):
    """Notebook 05: fold then quantize (the integer model's weights) vs quantize then fold."""

    title_text = "Fold, then quantize -- or quantize, then fold?"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, layer: str | None = None, bits: int = 4,
                 per_channel: bool = False) -> None:
        self.lesson = lesson_model() if lesson is None else _check_lesson(lesson)
        name = widest_spread_layer(self.lesson) if layer is None else layer
        self.layer = bn_layer(self.lesson, name)
        self.channel = int(np.argmax(np.abs(self.layer.factor)))  # the most stretched channel
        bits = check_bits(bits)
        if bits > 8:
            raise ValueError(f"bits must be between 2 and 8, got {bits}")
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
        controls = {
            "bits": int_slider("weight bits", bits, 2, 8),
            "per_channel": widgets.Checkbox(per_channel, description="per-channel scales", indent=False),
        }
        super().__init__(controls, title=f"{self.title_text} ({self.layer.name})")

    def build(self, fig: Figure) -> None:
        from matplotlib.collections import LineCollection

        self.ax_g, self.ax_m = fig.subplots(1, 2, width_ratios=[1.5, 1.0])
        self.grid = LineCollection([], colors="#aaaaaa", linewidths=0.8, label="int grid of that row")
        self.ax_g.add_collection(self.grid)
        (self.p_float,) = self.ax_g.plot([], [], "|", color="k", ms=12, label="w_fold (float)")
        (self.p_right,) = self.ax_g.plot([], [], "|", color=CHANNEL_COLOR, ms=12, mew=2, label="fold, then quantize")
        (self.p_wrong,) = self.ax_g.plot([], [], "|", color=TENSOR_COLOR, ms=12, mew=2, label="quantize, then fold")
        self.ax_g.set(yticks=[0, 1, 2], yticklabels=["quantize → fold\n(trained)", "fold → quantize", "w_fold"],
                      ylim=(-0.6, 2.6), xlabel="weight value",
                      title=f"channel {self.channel} (largest fold factor) on the integer model's grid")
        self.ax_g.legend(loc="upper right", ncols=2)
        C = self.layer.channels
        edges = np.arange(C + 1) - 0.5
        self.m_bars = self.ax_m.stairs(np.zeros(C), edges, fill=True, color=TENSOR_COLOR,
                                       label="quantize → fold: deployed − trained")
        self.q_line = self.ax_m.stairs(np.zeros(C), edges, color=CHANNEL_COLOR, lw=1.2,
                                       label="quantization error fold → quantize")
        self.ax_m.set(xlim=(-1, C), xlabel="output channel", ylabel="MSE / LSB² of its grid",
                      title="train/deploy mismatch per channel")
        self.ax_m.legend(loc="upper right")

    def render(self, bits: int, per_channel: bool) -> dict:
        cmp = compare_fold_order(self.layer, bits, per_channel=per_channel)
        c = self.channel
        s = np.asarray(cmp.deployed_scale, dtype=np.float64)
        s_dep = float(s[c]) if s.ndim == 1 else float(s)  # grid the trained weights must be rounded to
        s_right = weight_qparams(cmp.w_fold, bits, per_channel=per_channel).scale
        s_right = float(np.asarray(s_right)[c]) if per_channel else float(s_right)
        row = lambda a: a[c].ravel()  # noqa: E731 -- channel c's weights, flat
        span = float(np.abs(np.concatenate([row(cmp.w_fold), row(cmp.trained), row(cmp.right)])).max()) * 1.15
        qmax = 2 ** (bits - 1) - 1
        ks = np.arange(-qmax, qmax + 1)
        segs = [[(k * s_right, 0.6), (k * s_right, 1.4)] for k in ks if abs(k * s_right) <= span]
        segs += [[(k * s_dep, -0.4), (k * s_dep, 0.4)] for k in ks if abs(k * s_dep) <= span]
        self.grid.set_segments(segs)
        n = row(cmp.w_fold).size
        self.p_float.set_data(row(cmp.w_fold), np.full(n, 2.0))
        self.p_right.set_data(row(cmp.right), np.full(n, 1.0))
        self.p_wrong.set_data(row(cmp.trained), np.full(n, 0.0))
        self.ax_g.set_xlim(-span, span)
        scale_all = s if s.ndim == 1 else np.full(self.layer.channels, float(s))
        lsb2 = scale_all**2
        mism = cmp.mismatch_per_channel / lsb2
        s_right_all = np.broadcast_to(np.asarray(weight_qparams(cmp.w_fold, bits, per_channel=per_channel).scale,
                                                 dtype=np.float64), (self.layer.channels,))
        qerr = np.mean(((cmp.right - cmp.w_fold).reshape(self.layer.channels, -1)) ** 2, axis=1) / s_right_all**2
        self.m_bars.set_data(mism)
        self.q_line.set_data(qerr)
        top = max(float(mism.max()), float(qerr.max()), 1e-3)
        self.ax_m.set_ylim(0, top * 1.25)
        return {
            "weight bits": bits,
            "scales": "per-channel" if per_channel else "per-tensor",
            "MSE fold → quantize (vs w_fold)": cmp.mse_right,
            "MSE quantize → fold, as deployed (vs w_fold)": cmp.mse_deployed,
            "train/deploy mismatch, fold → quantize (MSE)": cmp.right_mismatch,
            "train/deploy mismatch, quantize → fold (MSE)": cmp.mismatch,
            "mismatch / quantization MSE": cmp.mismatch / cmp.mse_right if cmp.mse_right > 0 else float("nan"),
            "quantize → fold weights off the grid": cmp.off_grid_fraction,
        }


def fold_order_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> FoldOrderExplorer:
    """Notebook 05: compare fold-then-quantize with quantize-then-fold at a chosen bit width and scheme."""
    return FoldOrderExplorer(lesson, **kwargs)
