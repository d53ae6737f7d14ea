"""Notebook 10: the explorers of per-group quantization and of mixed precision under a size budget.

The numbers come from ``qlearn.lessons.formats_granularity``; this module only draws them.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn.error import sqnr_db
from qlearn.lessons.formats_granularity import (
    GRANULARITIES,
    allocation_accuracy,
    bits_per_weight,
    fake_quant_granular,
    granular_accuracy,
    granularity_sweep,
    greedy_bits,
    mixed_precision_curves,
    weight_bytes,
)
from qlearn.lessons.lesson_model import LessonModel, check_lesson, lesson_model
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider, slider
from qlearn.widgets.limits import set_limits

__all__ = ["GroupSizeExplorer", "group_size_explorer", "MixedPrecisionExplorer", "mixed_precision_explorer"]

SWEEP_BITS = (2, 3, 4, 8)
BIT_COLORS = {2: "#d62728", 3: "#ff7f0e", 4: "#2ca02c", 8: "#1f77b4"}
GREEDY_COLOR, UNIFORM_COLOR = "#2ca02c", "#7f7f7f"


def _label(g: Any) -> str:
    return g if isinstance(g, str) else f"group {g}"


def _lesson(lesson: LessonModel | None) -> LessonModel:
    return check_lesson(lesson_model(progress=False) if lesson is None else lesson)


class GroupSizeExplorer(Explorer):
    """Per-tensor, per-channel or per-group scales on one folded layer: SQNR, bits per weight, accuracy."""

    title_text = "Granularity: one scale per tensor, per channel, or per group of inputs"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, layer: str = "features.5.pw", bits: int = 4,
                 granularity: Any = 32) -> None:
        self.lesson = _lesson(lesson)
        self.lesson.layer(layer)  # raises for an unknown name
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.sweep = granularity_sweep(self.lesson, SWEEP_BITS)
        self.x = np.arange(len(GRANULARITIES))
        controls = {
            "layer": widgets.Dropdown(options=[(l.label, n) for n, l in self.lesson.layers.items()], value=layer,
                                      description="layer", layout=widgets.Layout(width="360px")),
            "bits": int_slider("weight bits", bits, 2, 8),
            "granularity": widgets.Dropdown(options=[(_label(g), g) for g in GRANULARITIES], value=granularity,
                                            description="scales"),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_sqnr, self.ax_bpw, self.ax_acc = fig.subplots(1, 3)
        labels = [{"per-tensor": "tensor", "per-channel": "channel"}.get(g, f"g{g}") for g in GRANULARITIES]
        (self.sq_line,) = self.ax_sqnr.plot(self.x, np.zeros(len(self.x)), "o-", color="#6baed6")
        (self.sq_mark,) = self.ax_sqnr.plot([0], [0], "o", ms=11, mfc="none", mew=2, color="k")
        self.ax_sqnr.set(xticks=self.x, xticklabels=labels, ylabel="SQNR (dB)", title="this layer's weight SQNR")
        (self.b16,) = self.ax_bpw.plot(self.x, np.zeros(len(self.x)), "o-", color="#9467bd", label="fp16 scales")
        (self.b32,) = self.ax_bpw.plot(self.x, np.zeros(len(self.x)), "s--", color="#8c564b", label="fp32 scales")
        (self.b_mark,) = self.ax_bpw.plot([0], [0], "o", ms=11, mfc="none", mew=2, color="k")
        self.ax_bpw.set(xticks=self.x, xticklabels=labels, ylabel="bits per weight", title="storage, scales included")
        self.ax_bpw.legend(loc="upper left")
        for b in SWEEP_BITS:
            self.ax_acc.plot(self.x, 100 * np.asarray(self.sweep[str(b)]), "o-", color=BIT_COLORS[b], ms=4, label=f"{b} bits")
        self.ax_acc.axhline(100 * self.lesson.float_acc, color="gray", ls=":", label="float")
        (self.acc_mark,) = self.ax_acc.plot([0], [0], "D", ms=10, mfc="none", mew=2, color="k", label="chosen")
        self.ax_acc.set(xticks=self.x, xticklabels=labels, ylim=(0, 102), ylabel="test accuracy (%)",
                        title="model accuracy, all layers' weights")
        self.ax_acc.legend(loc="lower right", ncols=2)

    def render(self, layer: str, bits: int, granularity: Any) -> dict:
        w = self.lesson.layer(layer).weight
        sq = np.array([sqnr_db(w, fake_quant_granular(w, bits, g)) for g in GRANULARITIES])
        b16 = np.array([bits_per_weight(w.shape, bits, g, scale_bits=16) for g in GRANULARITIES])
        b32 = np.array([bits_per_weight(w.shape, bits, g, scale_bits=32) for g in GRANULARITIES])
        i = GRANULARITIES.index(granularity)
        self.sq_line.set_ydata(sq)
        self.sq_mark.set_data([i], [sq[i]])
        set_limits(self.ax_sqnr, "y", sq.min() - 3, sq.max() + 3)
        self.b16.set_ydata(b16)
        self.b32.set_ydata(b32)
        self.b_mark.set_data([i], [b16[i]])
        set_limits(self.ax_bpw, "y", bits - 0.2, max(b32.max(), bits + 1) + 0.2)
        acc = granular_accuracy(self.lesson, bits, granularity)
        self.acc_mark.set_data([i], [100 * acc])
        k = w[0].size
        return {
            "layer": self.lesson.layer(layer).label,
            "inputs per output channel K": int(k),
            "SQNR of this layer (dB)": float(sq[i]),
            "SQNR per-tensor / per-channel (dB)": f"{sq[0]:.1f} / {sq[1]:.1f}",
            "bits per weight, fp16 scales": float(b16[i]),
            "bits per weight, fp32 scales": float(b32[i]),
            "float accuracy": self.lesson.float_acc,
            "accuracy, all layers at this granularity": acc,
        }


def group_size_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> GroupSizeExplorer:
    """Notebook 10: choose a layer, the weight bits and the granularity (per-tensor, per-channel, group g)."""
    return GroupSizeExplorer(lesson, **kwargs)


class MixedPrecisionExplorer(Explorer):
    """Mixed precision: a greedy bit allocation under a size budget against uniform bit widths."""

    title_text = "Mixed precision: bits per layer under a size budget"
    figsize = (12.0, 3.8)

    def __init__(self, lesson: LessonModel | None = None, budget_kb: float = 15.0) -> None:
        self.lesson = _lesson(lesson)
        self.curves = mixed_precision_curves(self.lesson)
        lo, hi = self.curves["budget kb"][0], self.curves["budget kb"][-1]
        controls = {"budget_kb": slider("size budget (KB)", budget_kb, lo, hi, 0.5)}
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_plane, self.ax_bits = fig.subplots(1, 2, width_ratios=[1.0, 1.3])
        c = self.curves
        ax = self.ax_plane
        ax.plot(c["uniform kb"], 100 * np.asarray(c["uniform acc"]), "s--", color=UNIFORM_COLOR, label="uniform bits")
        for kb, acc, b in zip(c["uniform kb"], c["uniform acc"], c["uniform bits"]):
            ax.annotate(f"{b:g} bits", (kb, 100 * acc), textcoords="offset points", xytext=(4, -12), fontsize="small")
        ax.plot(c["greedy kb"], 100 * np.asarray(c["greedy acc"]), "o-", color=GREEDY_COLOR, ms=4, label="greedy, per budget")
        ax.axhline(100 * self.lesson.float_acc, color="gray", ls=":", label="float")
        self.v_budget = ax.axvline(c["budget kb"][0], color="k", lw=0.8)
        (self.mark,) = ax.plot([0], [0], "D", ms=10, mfc="none", mew=2, color="k", label="this budget")
        ax.set(xlabel="weight storage (KB: packed codes + fp32 scales)", ylabel="test accuracy (%)", ylim=(30, 102),
               xlim=(c["budget kb"][0] - 1.5, c["budget kb"][-1] + 2.5), title="accuracy against size")
        ax.legend(loc="lower right")
        names = list(self.lesson.layers)
        self.bars = self.ax_bits.bar(np.arange(len(names)), np.full(len(names), 8.0), color=GREEDY_COLOR)
        self.ax_bits.set(xticks=np.arange(len(names)), ylim=(0, 8.5), yticks=[2, 3, 4, 6, 8], ylabel="weight bits",
                         title="bits per layer (greedy allocation)")
        self.ax_bits.set_xticklabels([n.replace("features.", "f") for n in names], rotation=45, ha="right")

    def render(self, budget_kb: float) -> dict:
        alloc = greedy_bits(self.lesson, 1000 * budget_kb)
        size = weight_bytes(self.lesson, alloc) / 1000
        acc = allocation_accuracy(self.lesson, alloc)
        for bar, b in zip(self.bars, alloc.values()):
            bar.set_height(b)
        self.v_budget.set_xdata([budget_kb, budget_kb])
        self.mark.set_data([size], [100 * acc])
        c = self.curves
        fits = [i for i, kb in enumerate(c["uniform kb"]) if kb <= budget_kb]
        best = max(fits, key=lambda i: c["uniform acc"][i]) if fits else None
        return {
            "budget (KB)": float(budget_kb),
            "greedy size (KB)": float(size),
            "greedy accuracy": acc,
            "best uniform that fits": "none" if best is None else f"{c['uniform bits'][best]:g} bits, {c['uniform kb'][best]:.1f} KB",
            "its accuracy": float("nan") if best is None else float(c["uniform acc"][best]),
            "bits per layer": " ".join(str(b) for b in alloc.values()),
        }


def mixed_precision_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> MixedPrecisionExplorer:
    """Notebook 10: slide the size budget; the greedy allocation, its size and accuracy, against uniform bits."""
    return MixedPrecisionExplorer(lesson, **kwargs)
