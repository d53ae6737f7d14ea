"""Notebook 11: explorers over the transformer's quantization results (``qlearn.lessons.transformer``).

* ``granularity_explorer``: W8A8 / W6A6 / W4A4 with per-tensor or per-channel weights and static,
  dynamic per-tensor or dynamic per-token activations; or weight-only W{b}A16 with group-wise scales.
* ``outlier_explorer``: the per-channel activation ranges max|X_j| of each block linear's input, with
  or without the injected outlier channel.
* ``smoothquant_explorer``: SmoothQuant's alpha slider (Eq. 83) against SQNR and accuracy, and the
  LLM.int8-style decomposition (Eq. 82) beside it.

The sweeps are read from ``cached_results`` (shipped with the shipped model), so a slider only looks
numbers up; the outlier view computes ranges on 256 calibration images once per model.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn.lessons.transformer import (
    ACT_MODES,
    ALPHAS,
    GRAN_BITS,
    KEEPS,
    OUTLIER_CHANNEL,
    OUTLIER_LAYER,
    SMOOTH_BITS,
    WEIGHT_GRANULARITIES,
    WEIGHT_ONLY_BITS,
    channel_absmax,
    granularity_results,
    outlier_ratio,
    smoothquant_results,
    weight_only_results,
    with_outlier,
)
from qlearn.transformer import TransformerModel, transformer_model
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import slider

__all__ = ["GranularityExplorer", "granularity_explorer", "OutlierExplorer", "outlier_explorer",
           "SmoothQuantExplorer", "smoothquant_explorer"]

COLORS = {"static per-tensor": "#d62728", "dynamic per-tensor": "#ff7f0e", "dynamic per-token": "#2ca02c",
          "per-tensor": "#d62728", "per-channel": "#1f77b4", "group 16": "#9467bd", "group 8": "#2ca02c"}


def _model(tm: TransformerModel | None) -> TransformerModel:
    tm = transformer_model() if tm is None else tm
    if not isinstance(tm, TransformerModel):
        raise TypeError(f"tm must be a TransformerModel (qlearn.transformer.transformer_model()), got {type(tm).__name__}")
    return tm


class GranularityExplorer(Explorer):
    """W{b}A{b} granularities (left) and weight-only W{b}A16 with groups (right)."""

    title_text = "Granularity and bits: per-tensor, per-channel, per-token, per-group"
    figsize = (11.0, 3.8)

    def __init__(self, tm: TransformerModel | None = None, bits: int = 4, weights: str = "per-channel",
                 activations: str = "dynamic per-token", wo_bits: int = 3) -> None:
        self.tm = _model(tm)
        if bits not in GRAN_BITS or wo_bits not in WEIGHT_ONLY_BITS:
            raise ValueError(f"bits must be one of {GRAN_BITS} and wo_bits one of {WEIGHT_ONLY_BITS}")
        if weights not in ("per-tensor", "per-channel") or activations not in ACT_MODES:
            raise ValueError(f"weights must be 'per-tensor' or 'per-channel', activations one of {ACT_MODES}")
        self.gran = granularity_results(self.tm)
        self.wo = weight_only_results(self.tm)
        controls = {
            "bits": widgets.Dropdown(options=list(GRAN_BITS), value=bits, description="W/A bits"),
            "weights": widgets.Dropdown(options=["per-tensor", "per-channel"], value=weights, description="weights"),
            "activations": widgets.Dropdown(options=list(ACT_MODES), value=activations, description="activations"),
            "wo_bits": widgets.Dropdown(options=list(WEIGHT_ONLY_BITS), value=wo_bits, description="W-only bits"),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_a, self.ax_w = fig.subplots(1, 2)
        self.bars = self.ax_a.bar(np.arange(6), np.ones(6), 0.7)
        self.ax_a.axhline(100 * self.tm.float_acc, color="gray", ls=":")
        short = {"static per-tensor": "static\ntensor", "dynamic per-tensor": "dynamic\ntensor",
                 "dynamic per-token": "dynamic\ntoken"}
        labels = [f"W {w[4:]}\nA {short[a]}" for w in ("per-tensor", "per-channel") for a in ACT_MODES]
        self.ax_a.set_xticks(np.arange(6), labels, fontsize="x-small")
        self.ax_a.set(ylabel="test accuracy (%)", ylim=(80, 100))
        self.lines = {}
        for g in WEIGHT_GRANULARITIES:
            (self.lines[g],) = self.ax_w.plot(self.wo[f"bpw | {g}"], 100 * np.asarray(self.wo[f"acc | {g}"]), "o-",
                                              color=COLORS[g], label=g)
        (self.marker,) = self.ax_w.plot([], [], "ks", ms=10, mfc="none", mew=2)
        self.ax_w.axhline(100 * self.tm.float_acc, color="gray", ls=":", label="float")
        self.ax_w.set(xlabel="bits per weight (codes + fp16 scales)", ylabel="test accuracy (%)", ylim=(0, 102),
                      title="weight-only W{b}A16")
        self.ax_w.legend(loc="lower right", fontsize="small")

    def render(self, bits: int, weights: str, activations: str, wo_bits: int) -> dict[str, Any]:
        i = list(GRAN_BITS).index(bits)
        accs = [self.gran[f"acc | {w} | {a}"][i] for w in ("per-tensor", "per-channel") for a in ACT_MODES]
        k = ("per-tensor", "per-channel").index(weights) * 3 + list(ACT_MODES).index(activations)
        for j, (bar, a) in enumerate(zip(self.bars, accs)):
            bar.set_height(100 * a)
            bar.set_color(COLORS[ACT_MODES[j % 3]])
            bar.set_alpha(1.0 if j == k else 0.45)
        self.ax_a.set_title(f"W{bits}A{bits}, every block linear")
        j = list(WEIGHT_ONLY_BITS).index(wo_bits)
        self.marker.set_data([self.wo[f"bpw | {weights}"][j]], [100 * self.wo[f"acc | {weights}"][j]])
        return {
            "float accuracy": self.tm.float_acc,
            f"W{bits}A{bits} accuracy ({weights} weights, {activations})": self.gran[f"acc | {weights} | {activations}"][i],
            "blocks.0.fc1 output SQNR (dB)": self.gran[f"sqnr | {weights} | {activations}"][i],
            **{f"W{wo_bits}A16 accuracy, {g}": self.wo[f"acc | {g}"][j] for g in WEIGHT_GRANULARITIES},
            f"bits per weight, W{wo_bits} {weights}": self.wo[f"bpw | {weights}"][j],
        }


def granularity_explorer(tm: TransformerModel | None = None, **kwargs: Any) -> GranularityExplorer:
    """Notebook 11: accuracy under each weight/activation granularity, and weight-only groups."""
    return GranularityExplorer(tm, **kwargs)


class OutlierExplorer(Explorer):
    """max|X_j| of every input channel of one block linear, on 256 calibration images."""

    title_text = "Activation ranges per input channel: outlier channels?"
    figsize = (11.0, 3.4)

    def __init__(self, tm: TransformerModel | None = None, layer: str = OUTLIER_LAYER, injected: bool = False) -> None:
        self.tm = _model(tm)
        self.models = {False: self.tm, True: with_outlier(self.tm)}
        self.absmax = {k: channel_absmax(m) for k, m in self.models.items()}
        if layer not in self.absmax[False]:
            raise ValueError(f"layer must be one of {list(self.absmax[False])}, got {layer!r}")
        controls = {
            "layer": widgets.Dropdown(options=list(self.absmax[False]), value=layer, description="layer input"),
            "injected": widgets.Checkbox(value=bool(injected), description=f"inject an outlier ({OUTLIER_LAYER}, ch {OUTLIER_CHANNEL})"),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax = fig.subplots()
        self.bars = self.ax.bar(np.arange(64), np.zeros(64), 0.8, color="#1f77b4")
        self.median = self.ax.axhline(1, color="gray", ls=":", label="median channel")
        self.ax.set(xlabel="input channel j", ylabel="max |X_j| (log)", yscale="log")
        self.ax.legend(loc="upper right")

    def render(self, layer: str, injected: bool) -> dict[str, Any]:
        a = self.absmax[bool(injected)][layer]
        for j, bar in enumerate(self.bars):
            bar.set_height(a[j] if j < len(a) else 0.0)
            bar.set_visible(j < len(a))
        self.ax.set_xlim(-1, len(a))
        self.ax.set_ylim(0.1, 200)
        self.median.set_ydata([np.median(a)] * 2)
        self.ax.set_title(f"{layer} input ({len(a)} channels){' with the injected outlier' if injected else ''}")
        return {"channels": int(len(a)), "largest max|X_j|": float(a.max()), "median max|X_j|": float(np.median(a)),
                "largest / median": outlier_ratio(a), "widest channel": int(np.argmax(a))}


def outlier_explorer(tm: TransformerModel | None = None, **kwargs: Any) -> OutlierExplorer:
    """Notebook 11: per-channel activation ranges of each block linear's input."""
    return OutlierExplorer(tm, **kwargs)


class SmoothQuantExplorer(Explorer):
    """SmoothQuant's alpha against blocks.0.fc1's SQNR (left) and accuracy (right), per-tensor W{b}A{b}."""

    title_text = "SmoothQuant: divide activations by s, multiply weights by s"
    figsize = (11.0, 3.6)

    def __init__(self, tm: TransformerModel | None = None, alpha: float = 0.5, bits: int = 4, injected: bool = True) -> None:
        self.tm = _model(tm)
        if bits not in SMOOTH_BITS:
            raise ValueError(f"bits must be one of {SMOOTH_BITS}, got {bits!r}")
        self.res = smoothquant_results(self.tm)
        controls = {
            "alpha": slider("alpha", float(alpha), 0.0, 1.0, 0.1),
            "bits": widgets.Dropdown(options=list(SMOOTH_BITS), value=bits, description="W/A bits"),
            "injected": widgets.Checkbox(value=bool(injected), description="injected outlier"),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_s, self.ax_a = fig.subplots(1, 2)
        (self.sqnr,) = self.ax_s.plot(ALPHAS, np.zeros(len(ALPHAS)), "o-", color="#1f77b4", label="SmoothQuant")
        self.keep_s = self.ax_s.axhline(0, color="#2ca02c", ls="--", label="LLM.int8: 1 channel in fp16")
        self.none_s = self.ax_s.axhline(0, color="#d62728", ls=":", label="no smoothing")
        (self.acc,) = self.ax_a.plot(ALPHAS, np.zeros(len(ALPHAS)), "o-", color="#1f77b4")
        self.keep_a = self.ax_a.axhline(0, color="#2ca02c", ls="--")
        self.ax_a.axhline(100 * self.tm.float_acc, color="gray", ls=":", label="float")
        self.v = [ax.axvline(0.5, color="gray", lw=0.8) for ax in (self.ax_s, self.ax_a)]
        self.ax_s.set(xlabel="alpha", ylabel="SQNR of blocks.0.fc1 (dB)")
        self.ax_a.set(xlabel="alpha", ylabel="test accuracy (%)", ylim=(0, 102))
        self.ax_s.legend(loc="center right", fontsize="small")

    def render(self, alpha: float, bits: int, injected: bool) -> dict[str, Any]:
        label = "outlier" if injected else "trained"
        sq, ac = np.asarray(self.res[f"sqnr | {label} | {bits}"]), np.asarray(self.res[f"acc | {label} | {bits}"])
        i = int(round(alpha * 10))
        keep1 = list(KEEPS).index(1)
        self.sqnr.set_ydata(sq)
        self.acc.set_ydata(100 * ac)
        self.keep_s.set_ydata([self.res[f"keep sqnr | {label} | {bits}"][keep1]] * 2)
        self.none_s.set_ydata([self.res[f"keep sqnr | {label} | {bits}"][0]] * 2)
        self.keep_a.set_ydata([100 * self.res[f"keep acc | {label} | {bits}"][keep1]] * 2)
        lo = min(sq.min(), self.res[f"keep sqnr | {label} | {bits}"][0]) - 3
        self.ax_s.set_ylim(lo, max(sq.max(), self.res[f"keep sqnr | {label} | {bits}"][keep1]) + 3)
        for v in self.v:
            v.set_xdata([alpha, alpha])
        self.ax_s.set_title(f"W{bits}A{bits} per-tensor, static{' + outlier' if injected else ''}")
        return {
            "alpha": float(alpha), "SQNR (dB)": float(sq[i]), "accuracy": float(ac[i]),
            "SQNR without smoothing (dB)": self.res[f"keep sqnr | {label} | {bits}"][0],
            "accuracy without smoothing": self.res[f"keep acc | {label} | {bits}"][0],
            "best alpha (SQNR)": float(ALPHAS[int(np.argmax(sq))]),
            "LLM.int8, 1 channel fp16: SQNR (dB)": self.res[f"keep sqnr | {label} | {bits}"][keep1],
            "LLM.int8, 1 channel fp16: accuracy": self.res[f"keep acc | {label} | {bits}"][keep1],
        }


def smoothquant_explorer(tm: TransformerModel | None = None, **kwargs: Any) -> SmoothQuantExplorer:
    """Notebook 11: SmoothQuant's alpha slider on SQNR and accuracy, with LLM.int8 for comparison."""
    return SmoothQuantExplorer(tm, **kwargs)
