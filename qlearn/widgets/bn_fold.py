"""Notebook 05's explorers: batch-norm folding.

``bn_fold_explorer`` edits one channel's BN (running variance, gamma) and shows its folded range and
the quantization error (Eq. 41); ``fold_order_explorer`` compares fold-then-quantize with
quantize-then-fold on the integer model's grid. What they measure (``bn_layer``, ``fold_spread``,
``fold_vs_torch``, ``compare_fold_order``, ...) is in ``qlearn.lessons.bn_folding``; this module
holds the sliders and the figures.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from qlearn._checks import check_bits, check_bool, check_channel
from qlearn.lessons.bn_folding import (
    bn_layer,
    compare_fold_order,
    fold_spread,
    fold_vs_torch,
    median_factor_channel,
)
from qlearn.lessons.lesson_model import LessonModel, check_lesson, lesson_model
from qlearn.lessons.per_channel import compare_schemes, widest_spread_layer
from qlearn.quantize import fake_quantize
from qlearn.ranges import weight_qparams
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider, slider
from qlearn.widgets.limits import set_limits
from qlearn.widgets.per_channel import CHANNEL_COLOR, TENSOR_COLOR

__all__ = [
    "BNFoldExplorer",
    "bn_fold_explorer",
    "FoldOrderExplorer",
    "fold_order_explorer",
]

HIGHLIGHT = "#ff7f0e"  # the channel the learner is editing
FACTOR_COLOR = "#6baed6"


class BNFoldExplorer(Explorer):
    """Notebook 05: edit one channel's BN (running variance, gamma), watch its folded range and the error."""

    title_text = "Batch-norm folding: one channel's variance sets its folded range"
    figsize = (12.0, 3.7)

    def __init__(self, lesson: LessonModel | None = None, layer: str | None = None, channel: int | None = None,
                 bits: int = 4) -> None:
        self.lesson = lesson_model() if lesson is None else check_lesson(lesson)
        name = widest_spread_layer(self.lesson) if layer is None else layer
        self.layer = bn_layer(self.lesson, name)
        channel = median_factor_channel(self.layer) if channel is None else check_channel(channel, self.layer.channels)
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
        set_limits(self.ax_f, "y", factor.min() / 2.0, factor.max() * 2.0)
        self.r_bars.set_data(spread.absmax_after)
        self.r_before.set_ydata(spread.absmax_before)
        self.r_mark.set_data([channel], [spread.absmax_after[channel]])
        self.t_line.set_ydata([spread.absmax_after.max()] * 2)
        both = np.concatenate([spread.absmax_after, spread.absmax_before])
        both = both[both > 0]
        set_limits(self.ax_r, "y", both.min() / 2.0, both.max() * 2.0)
        self.s_t.set_ydata(cmp.sqnr_tensor)
        self.s_c.set_ydata(cmp.sqnr_channel)
        self.s_mark.set_xdata([channel, channel])
        sq = np.concatenate([cmp.sqnr_tensor, cmp.sqnr_channel])
        sq = sq[np.isfinite(sq)]
        set_limits(self.ax_s, "y", min(sq.min(), 0.0) - 2.0, sq.max() + 3.0)
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


class FoldOrderExplorer(Explorer):
    """Notebook 05: fold then quantize (the integer model's weights) vs quantize then fold."""

    title_text = "Fold, then quantize -- or quantize, then fold?"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, layer: str | None = None, bits: int = 4,
                 per_channel: bool = False) -> None:
        self.lesson = lesson_model() if lesson is None else check_lesson(lesson)
        name = widest_spread_layer(self.lesson) if layer is None else layer
        self.layer = bn_layer(self.lesson, name)
        self.channel = int(np.argmax(np.abs(self.layer.factor)))  # the most stretched channel
        bits = check_bits(bits)
        if bits > 8:
            raise ValueError(f"bits must be between 2 and 8, got {bits}")
        per_channel = check_bool(per_channel, "per_channel")
        controls = {
            "bits": int_slider("weight bits", bits, 2, 8),
            "per_channel": widgets.Checkbox(per_channel, description="per-channel scales", indent=False),
        }
        super().__init__(controls, title=f"{self.title_text} ({self.layer.name})")

    def build(self, fig: Figure) -> None:
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
        set_limits(self.ax_g, "x", -span, span)
        scale_all = s if s.ndim == 1 else np.full(self.layer.channels, float(s))
        lsb2 = scale_all**2
        mism = cmp.mismatch_per_channel / lsb2
        s_right_all = np.broadcast_to(np.asarray(weight_qparams(cmp.w_fold, bits, per_channel=per_channel).scale,
                                                 dtype=np.float64), (self.layer.channels,))
        qerr = np.mean(((cmp.right - cmp.w_fold).reshape(self.layer.channels, -1)) ** 2, axis=1) / s_right_all**2
        self.m_bars.set_data(mism)
        self.q_line.set_data(qerr)
        top = max(float(mism.max()), float(qerr.max()), 1e-3)
        set_limits(self.ax_m, "y", 0, top * 1.25)
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
