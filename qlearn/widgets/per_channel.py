"""Notebook 03's explorers: one scale per tensor, or one scale per output channel?

``seed_channels_explorer`` shows the seed's three channels on one grid (per-tensor) or three
(per-channel); ``layer_explorer`` a folded layer of the lesson model, channel by channel, and the
model's accuracy. What they measure (``compare_schemes``, ``quantized_weight_accuracy``,
``weight_bits_curves``, ...) is in ``qlearn.lessons.per_channel``; this module holds the sliders
and the figures.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qlearn.lessons.lesson_model import LessonModel, lesson_model
from qlearn.lessons.per_channel import (
    SEED_RANGES,
    compare_schemes,
    quantized_weight_accuracy,
    seed_channel_weights,
    weight_bits_curves,
    widest_spread_layer,
)
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider
from qlearn.widgets.limits import set_limits

__all__ = [
    "SeedChannelsExplorer",
    "seed_channels_explorer",
    "LayerExplorer",
    "layer_explorer",
]

TENSOR_COLOR = "#d62728"  # per-tensor: red, as the grid of notebook 01
CHANNEL_COLOR = "#2ca02c"  # per-channel: green
BITS_RANGE = (2, 8)

class SeedChannelsExplorer(Explorer):
    """Notebook 03, part 1: the seed's three channels on one grid (per-tensor) or three (per-channel)."""

    title_text = "Per-tensor vs per-channel: three output channels"
    figsize = (11.0, 3.6)

    def __init__(self, bits: int = 3, symmetric: bool = True, n: int = 2000, seed: int = 0) -> None:
        self.w = seed_channel_weights(n, seed)  # (3, n)
        controls = {
            "bits": int_slider("bits", bits, *BITS_RANGE),
            "symmetric": widgets.Checkbox(symmetric, description="symmetric weights, Z = 0", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_grid, self.ax_mse = fig.subplots(1, 2, width_ratios=[1.6, 1.0])
        ax = self.ax_grid
        self.rows = np.arange(len(SEED_RANGES))[::-1].astype(float)  # channel 0 at the top
        for c, (lo, hi) in enumerate(SEED_RANGES):
            y = self.rows[c]
            ax.add_patch(_rect(lo, y - 0.06, hi - lo, 0.12, "#9ecae1"))
            ax.text(-5.2, y, f"ch {c}\n[{lo}, {hi}]", va="center", ha="left", fontsize="small")
        self.t_ticks = LineCollection([], colors=TENSOR_COLOR, linewidths=1.0, label="per-tensor grid")
        self.c_ticks = LineCollection([], colors=CHANNEL_COLOR, linewidths=1.0, label="per-channel grid")
        ax.add_collection(self.t_ticks)
        ax.add_collection(self.c_ticks)
        ax.set(xlim=(-5.3, 5.0), ylim=(-0.7, len(SEED_RANGES) - 0.3), yticks=[], xlabel="weight value",
               title="the grids each channel is rounded to")
        ax.legend(loc="upper right", ncols=2)
        x = np.arange(len(SEED_RANGES))
        self.bars_t = self.ax_mse.bar(x - 0.2, np.ones(3), 0.4, color=TENSOR_COLOR, label="per-tensor")
        self.bars_c = self.ax_mse.bar(x + 0.2, np.ones(3), 0.4, color=CHANNEL_COLOR, label="per-channel")
        (self.pred,) = self.ax_mse.plot(x - 0.2, np.ones(3), "k_", ms=22, mew=2, label="Eq. 19 prediction")
        self.ax_mse.set(yscale="log", xticks=x, xticklabels=[f"ch {c}" for c in x], ylabel="MSE",
                        title="quantization MSE per channel")
        self.ax_mse.legend(loc="upper left")

    def render(self, bits: int, symmetric: bool) -> dict:
        cmp = compare_schemes(self.w, bits, symmetric=symmetric)
        t_segs, c_segs = [], []
        qc = cmp.per_channel
        for c in range(cmp.channels):
            y = self.rows[c]
            g_t = cmp.per_tensor.scale * (np.arange(cmp.per_tensor.qmin, cmp.per_tensor.qmax + 1) - cmp.per_tensor.zero_point)
            g_c = qc.scale[c] * (np.arange(qc.qmin, qc.qmax + 1) - qc.zero_point[c])
            t_segs += [[(g, y + 0.08), (g, y + 0.32)] for g in g_t if -5.3 <= g <= 5.0]
            c_segs += [[(g, y - 0.32), (g, y - 0.08)] for g in g_c if -5.3 <= g <= 5.0]
        self.t_ticks.set_segments(t_segs)
        self.c_ticks.set_segments(c_segs)
        for bars, values in ((self.bars_t, cmp.mse_tensor), (self.bars_c, cmp.mse_channel)):
            for bar, v in zip(bars, values):
                bar.set_height(v)
        predicted = cmp.mse_channel * cmp.predicted_ratio
        self.pred.set_ydata(predicted)
        top = max(cmp.mse_tensor.max(), predicted.max()) * 3.0
        bottom = min(cmp.mse_channel.min(), cmp.mse_tensor.min()) / 3.0
        set_limits(self.ax_mse, "y", bottom, top)
        numbers: dict[str, Any] = {"per-tensor scale S": cmp.per_tensor.scale}
        for c in range(cmp.channels):
            numbers[f"ch {c}: per-channel scale S_c"] = float(qc.scale[c])
        for c in range(cmp.channels):
            numbers[f"ch {c}: grid points in its range (tensor / channel)"] = (
                f"{cmp.levels_tensor[c]} / {cmp.levels_channel[c]}"
            )
        for c in range(cmp.channels):
            numbers[f"ch {c}: MSE per-tensor"] = float(cmp.mse_tensor[c])
            numbers[f"ch {c}: MSE per-channel"] = float(cmp.mse_channel[c])
            numbers[f"ch {c}: MSE ratio measured"] = float(cmp.mse_ratio[c])
            numbers[f"ch {c}: MSE ratio Eq. 19 (S/S_c)^2"] = float(cmp.predicted_ratio[c])
        return numbers


def _rect(x: float, y: float, w: float, h: float, color: str) -> Rectangle:
    return Rectangle((x, y), w, h, color=color, alpha=0.8)


def seed_channels_explorer(**kwargs: Any) -> SeedChannelsExplorer:
    """Notebook 03: the seed's three channels; slide the bits, switch symmetric/asymmetric."""
    return SeedChannelsExplorer(**kwargs)


# ---------------------------------------------------------------------------------- layer explorer
class LayerExplorer(Explorer):
    """Notebook 03, part 2: a real folded layer, channel by channel, and the model's accuracy."""

    title_text = "A trained MobileNet after BN folding: per-tensor vs per-channel weights"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, layer: str | None = None, bits: int = 4) -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        if not isinstance(self.lesson, LessonModel):
            raise TypeError(f"lesson must be a LessonModel, got {type(self.lesson).__name__}")
        layer = widest_spread_layer(self.lesson) if layer is None else layer
        self.lesson.layer(layer)  # raises for an unknown name
        self.bits_axis = np.arange(BITS_RANGE[0], BITS_RANGE[1] + 1)
        self.curves = weight_bits_curves(self.lesson, *BITS_RANGE)  # {per_channel: accuracy per bit width}
        options = [(l.label, name) for name, l in self.lesson.layers.items()]
        controls = {
            "layer": widgets.Dropdown(options=options, value=layer, description="layer",
                                      layout=widgets.Layout(width="360px")),
            "bits": int_slider("weight bits", bits, *BITS_RANGE),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_rng, self.ax_sqnr, self.ax_acc = fig.subplots(1, 3)
        self.range_bars = self.ax_rng.stairs([1.0], [-0.5, 0.5], fill=True, color="#6baed6", baseline=1e-30)
        self.t_line = self.ax_rng.axhline(1.0, color=TENSOR_COLOR, ls="--", lw=1.2, label="per-tensor max|w|")
        self.ax_rng.set(yscale="log", xlabel="output channel (sorted by range)", ylabel="max |w_c|",
                        title="folded weight range per channel")
        self.ax_rng.legend(loc="upper right")
        (self.sq_t,) = self.ax_sqnr.plot([], [], ".-", color=TENSOR_COLOR, ms=3, lw=0.8, label="per-tensor")
        (self.sq_c,) = self.ax_sqnr.plot([], [], ".-", color=CHANNEL_COLOR, ms=3, lw=0.8, label="per-channel")
        self.ax_sqnr.set(xlabel="output channel (sorted by range)", ylabel="SQNR (dB)", title="error per channel")
        self.ax_sqnr.legend(loc="lower left")
        b = self.bits_axis
        self.ax_acc.plot(b, 100 * self.curves[False], "o-", color=TENSOR_COLOR, label="all layers, per-tensor")
        self.ax_acc.plot(b, 100 * self.curves[True], "o-", color=CHANNEL_COLOR, label="all layers, per-channel")
        (self.one_t,) = self.ax_acc.plot([], [], "s", mfc="none", ms=9, color=TENSOR_COLOR, label="this layer only, per-tensor")
        (self.one_c,) = self.ax_acc.plot([], [], "D", mfc="none", ms=9, color=CHANNEL_COLOR, label="this layer only, per-channel")
        self.v_bits = self.ax_acc.axvline(4, color="gray", lw=0.8)
        self.ax_acc.axhline(100 * self.lesson.float_acc, color="gray", ls=":", label="float")
        self.ax_acc.set(xlabel="weight bits", ylabel="test accuracy (%)", ylim=(0, 102), xticks=b,
                        title="model accuracy (weights only quantized)")
        self.ax_acc.legend(loc="lower right")

    def render(self, layer: str, bits: int) -> dict:
        lay = self.lesson.layer(layer)
        cmp = compare_schemes(lay.weight, bits, symmetric=True)
        absmax = np.maximum(np.abs(cmp.channel_lo), np.abs(cmp.channel_hi))
        order = np.argsort(-absmax, kind="stable")
        x = np.arange(lay.channels)
        # one filled step artist for all channels (cheaper to redraw than a bar per channel)
        self.range_bars.set_data(np.maximum(absmax[order], 1e-30), np.arange(lay.channels + 1) - 0.5)
        self.t_line.set_ydata([absmax.max()] * 2)
        finite = absmax[absmax > 0]
        set_limits(self.ax_rng, "x", -1, lay.channels)
        set_limits(self.ax_rng, "y", finite.min() / 2.0, finite.max() * 2.0)
        self.sq_t.set_data(x, cmp.sqnr_tensor[order])
        self.sq_c.set_data(x, cmp.sqnr_channel[order])
        both = np.concatenate([cmp.sqnr_tensor, cmp.sqnr_channel])
        both = both[np.isfinite(both)]
        set_limits(self.ax_sqnr, "x", -1, lay.channels)
        set_limits(self.ax_sqnr, "y", min(both.min(), 0.0) - 2.0, both.max() + 3.0)
        only_t = quantized_weight_accuracy(self.lesson, bits, per_channel=False, layers=(layer,))
        only_c = quantized_weight_accuracy(self.lesson, bits, per_channel=True, layers=(layer,))
        self.one_t.set_data([bits], [100 * only_t])
        self.one_c.set_data([bits], [100 * only_c])
        self.v_bits.set_xdata([bits, bits])
        i = int(bits - self.bits_axis[0])
        sq_t = cmp.sqnr_tensor[~np.isnan(cmp.sqnr_tensor)]  # all-zero channels carry no signal
        sq_c = cmp.sqnr_channel[~np.isnan(cmp.sqnr_channel)]
        return {
            "layer": lay.label,
            "channel range spread max/min": float(finite.max() / finite.min()),
            "per-tensor scale S": cmp.per_tensor.scale,
            "per-channel scales S_c": f"{cmp.per_channel.scale.min():.3g} .. {cmp.per_channel.scale.max():.3g}",
            "median channel SQNR per-tensor (dB)": float(np.median(sq_t)),
            "median channel SQNR per-channel (dB)": float(np.median(sq_c)),
            "worst channel SQNR per-tensor (dB)": float(np.min(sq_t)),
            "worst channel SQNR per-channel (dB)": float(np.min(sq_c)),
            "float accuracy": self.lesson.float_acc,
            "accuracy, all layers per-tensor": float(self.curves[False][i]),
            "accuracy, all layers per-channel": float(self.curves[True][i]),
            "accuracy, this layer only per-tensor": only_t,
            "accuracy, this layer only per-channel": only_c,
        }


def layer_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> LayerExplorer:
    """Notebook 03: choose a folded layer of the lesson model, slide the weight bits.

    Trains the lesson model on first use (about 10 s, cached in ``cache_dir()``).
    """
    return LayerExplorer(lesson, **kwargs)
