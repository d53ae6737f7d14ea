"""Notebook 04's explorers: outliers and range setting.

``outlier_explorer`` compares four range rules on Gaussian values with a few outliers;
``model_ranges_explorer`` the lesson model's accuracy under each rule, for its weights or its
activations. What they measure is in ``qlearn.lessons.outliers_ranges`` (ranges from
``qlearn.ranges``); this module holds the sliders, the colours and the figures.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn._checks import check_bits
from qlearn.lessons.lesson_model import LessonModel, check_lesson, lesson_model
from qlearn.lessons.outliers_ranges import (
    BULK_SIGMA,
    MODEL_VIEWS,
    OUTLIER_METHODS,
    outlier_experiment,
    range_rule_curves,
    view_methods,
)
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider
from qlearn.widgets.limits import set_limits

__all__ = [
    "METHOD_COLORS",
    "OutlierExplorer",
    "outlier_explorer",
    "ModelRangesExplorer",
    "model_ranges_explorer",
]

METHOD_COLORS = {
    "min/max": "#d62728",
    "percentile 99.9": "#ff7f0e",
    "percentile 99": "#bcbd22",
    "percentile 99.99": "#ff7f0e",
    "MSE-optimal": "#2ca02c",
    "EMA of batch min/max": "#1f77b4",
}


class OutlierExplorer(Explorer):
    """Notebook 04, part 1: a few outliers, four range rules, rounding vs clipping."""

    title_text = "Outliers stretch the range: four ways to choose it"
    figsize = (12.0, 3.7)

    def __init__(self, magnitude: float = 20.0, fraction: float = 0.001, bits: int = 4, symmetric: bool = True,
                 n: int = 20_000, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "magnitude": widgets.FloatLogSlider(
                value=magnitude, base=10, min=np.log10(2.0), max=2.0, step=0.02,
                description="outlier size (σ)", style={"description_width": "initial"}),
            "fraction": widgets.FloatLogSlider(
                value=fraction, base=10, min=-4.0, max=-1.0, step=0.1, readout_format=".2%",
                description="outlier fraction", style={"description_width": "initial"}),
            "bits": int_slider("bits", bits, 2, 8),
            "symmetric": widgets.Checkbox(symmetric, description="symmetric (weights)", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_h, self.ax_e, self.ax_l = fig.subplots(1, 3, width_ratios=[1.5, 1.2, 1.0])
        # the data's histogram, updated in place by render (241 bins; a new artist would force a full redraw)
        self.hist_artist = self.ax_h.stairs(np.full(241, 0.8), np.linspace(-1.0, 1.0, 242), fill=True,
                                            color="#c6dbef", baseline=0.8)
        self.range_lines = {}
        for i, m in enumerate(OUTLIER_METHODS):
            y = 0.93 - 0.07 * i
            (line,) = self.ax_h.plot([], [], color=METHOD_COLORS[m], lw=3, solid_capstyle="butt",
                                     transform=self.ax_h.get_xaxis_transform(), label=m)
            self.range_lines[m] = (line, y)
        self.ax_h.set(yscale="log", xlabel="value (σ)", ylabel="count", title="data and the four ranges")
        self.ax_h.legend(loc="lower center")
        x = np.arange(len(OUTLIER_METHODS))
        self.bars_r = self.ax_e.bar(x - 0.2, np.ones(len(x)), 0.4, color="#9ecae1", label="rounding")
        self.bars_c = self.ax_e.bar(x + 0.2, np.ones(len(x)), 0.4, color="#ff7f0e", label="clipping")
        (self.bulk_pts,) = self.ax_e.plot(x, np.ones(len(x)), "k*", ms=9, label="MSE on the bulk")
        self.ax_e.set(yscale="log", xticks=x, ylabel="MSE (all values)", title="rounding vs clipping (Eq. 14)")
        self.ax_e.set_xticklabels(["min/max", "pct 99.9", "MSE-opt", "EMA"], fontsize="small")
        self.ax_e.legend(loc="upper right")
        self.bars_l = self.ax_l.bar(x, np.ones(len(x)), 0.6, color=[METHOD_COLORS[m] for m in OUTLIER_METHODS])
        self.ax_l.set(xticks=x, ylabel="grid points", title=f"levels inside the bulk |x| ≤ {BULK_SIGMA:g}σ")
        self.ax_l.set_xticklabels(["min/max", "pct 99.9", "MSE-opt", "EMA"], fontsize="small")
        self.level_text = [self.ax_l.text(i, 0, "", ha="center", va="bottom", fontsize="small") for i in x]

    def render(self, magnitude: float, fraction: float, bits: int, symmetric: bool) -> dict:
        x, mask, results = outlier_experiment(self.n, float(magnitude), float(fraction), int(bits), bool(symmetric), self.seed)
        span = 1.15 * max(np.abs(x).max(), BULK_SIGMA)
        hist, edges = np.histogram(x, bins=241, range=(-span, span))
        self.hist_artist.set_data(np.maximum(hist, 0.8), edges)
        set_limits(self.ax_h, "x", -span, span)
        set_limits(self.ax_h, "y", 0.8, hist.max() * 2.5)
        for r in results:
            line, y = self.range_lines[r.method]
            glo, ghi = r.qp.real_range
            line.set_data([glo, ghi], [y, y])
        for i, r in enumerate(results):
            self.bars_r[i].set_height(max(r.breakdown.rounding_mse, 1e-12))
            self.bars_c[i].set_height(max(r.breakdown.clipping_mse, 1e-12))
            self.bars_l[i].set_height(r.bulk_levels)
            self.level_text[i].set_position((i, r.bulk_levels))
            self.level_text[i].set_text(str(r.bulk_levels))
        self.bulk_pts.set_ydata([r.bulk_mse for r in results])
        vals = [v for r in results for v in (r.breakdown.rounding_mse, r.breakdown.clipping_mse, r.bulk_mse) if v > 0]
        set_limits(self.ax_e, "y", min(vals) / 3.0, max(vals) * 5.0)
        set_limits(self.ax_l, "y", 0, max(r.bulk_levels for r in results) * 1.2 + 1)
        numbers: dict[str, Any] = {"outliers": f"{int(mask.sum())} of {mask.size} values"}
        for r in results:
            numbers[f"{r.method}: range"] = f"[{r.lo:.3f}, {r.hi:.3f}]"
            numbers[f"{r.method}: scale S"] = r.qp.scale
            numbers[f"{r.method}: rounding MSE"] = r.breakdown.rounding_mse
            numbers[f"{r.method}: clipping MSE"] = r.breakdown.clipping_mse
            numbers[f"{r.method}: MSE on the bulk"] = r.bulk_mse
            numbers[f"{r.method}: levels in the bulk"] = r.bulk_levels
        return numbers


def outlier_explorer(**kwargs: Any) -> OutlierExplorer:
    """Notebook 04: slide outlier size and fraction and the bits; compare four range rules."""
    return OutlierExplorer(**kwargs)


class ModelRangesExplorer(Explorer):
    """Notebook 04, part 2: range rules on the lesson model's folded weights and its activations."""

    title_text = "Range rules on a trained MobileNet: test accuracy"
    figsize = (11.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, view: str = "weights, per-tensor", bits: int = 4,
                 bits_range: tuple[int, int] = (2, 8), progress: bool = True) -> None:
        self.lesson = lesson_model() if lesson is None else check_lesson(lesson)
        if view not in MODEL_VIEWS:
            raise ValueError(f"view must be one of {MODEL_VIEWS}, got {view!r}")
        if not (isinstance(bits_range, tuple) and len(bits_range) == 2):
            raise TypeError(f"bits_range must be a pair (lowest, highest), got {bits_range!r}")
        lo_bits, hi_bits = check_bits(bits_range[0], "bits_range[0]"), check_bits(bits_range[1], "bits_range[1]")
        if not lo_bits <= int(bits) <= hi_bits:
            raise ValueError(f"bits={bits} must lie in bits_range {bits_range}")
        self.bits_axis = np.arange(lo_bits, hi_bits + 1)
        self.curves = range_rule_curves(self.lesson, lo_bits, hi_bits, progress=progress)
        controls = {
            "view": widgets.Dropdown(options=MODEL_VIEWS, value=view, description="quantize"),
            "bits": int_slider("bits", bits, int(self.bits_axis[0]), int(self.bits_axis[-1])),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_acc, self.ax_bar = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
        self.lines = [self.ax_acc.plot([], [], "o-", ms=4)[0] for _ in range(4)]
        self.ax_acc.axhline(100 * self.lesson.float_acc, color="gray", ls=":", label="float")
        self.v_bits = self.ax_acc.axvline(4, color="gray", lw=0.8)
        self.ax_acc.set(xlabel="bits", ylabel="test accuracy (%)", ylim=(0, 102), xticks=self.bits_axis)
        self.legend = None
        self.shown_view = None  # the view whose legend and bar labels are drawn (rebuilt when it changes)
        self.bars = self.ax_bar.bar(np.arange(4), np.ones(4), 0.6)
        self.bar_text = [self.ax_bar.text(i, 0, "", ha="center", va="bottom", fontsize="small") for i in range(4)]
        self.ax_bar.set(ylabel="test accuracy (%)", ylim=(0, 110), xticks=np.arange(4))

    def render(self, view: str, bits: int) -> dict:
        methods = view_methods(view)
        i = int(bits - self.bits_axis[0])
        if view != self.shown_view:  # new curves, legend and tick labels only when the view changes
            for line, m in zip(self.lines, methods):
                line.set_data(self.bits_axis, 100 * self.curves[(view, m)])
                line.set_color(METHOD_COLORS[m])
                line.set_label(m)
            if self.legend is not None:
                self.legend.remove()
            self.legend = self.ax_acc.legend(loc="lower right")
            self.ax_bar.set_xticks(np.arange(4), [m.replace("percentile", "pct").replace(" of batch min/max", "")
                                                  for m in methods], fontsize="small")
            self.shown_view = view
        self.v_bits.set_xdata([bits, bits])
        self.ax_acc.set_title(f"{view}: accuracy vs bits")
        accs = [float(self.curves[(view, m)][i]) for m in methods]
        for k, (bar, m, a) in enumerate(zip(self.bars, methods, accs)):
            bar.set_height(100 * a)
            bar.set_color(METHOD_COLORS[m])
            self.bar_text[k].set_position((k, 100 * a))
            self.bar_text[k].set_text(f"{100 * a:.1f}")
        self.ax_bar.set_title(f"at {bits} bits")
        numbers: dict[str, Any] = {"quantized": view, "bits": int(bits), "float accuracy": self.lesson.float_acc}
        for m, a in zip(methods, accs):
            numbers[f"accuracy, {m}"] = a
        return numbers


def model_ranges_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> ModelRangesExplorer:
    """Notebook 04: accuracy of the lesson model under each range rule, for weights or activations."""
    return ModelRangesExplorer(lesson, **kwargs)
