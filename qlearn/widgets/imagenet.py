"""Notebook 12's explorers: EfficientNet-Lite0, a real ImageNet network, under post-training quantization.

Every explorer draws from the results of ``qlearn.imagenet_ptq.cached_study`` (a JSON-able dict;
computed once, cached under ``qlearn.checkpoints.cache_dir()``), so a slider only redraws; what the lesson
reads off one layer is ``qlearn.lessons.imagenet_efficientnet``.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn.lessons.imagenet_efficientnet import layer_channels, quick_study
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider

__all__ = ["RangesExplorer", "VariantsExplorer", "CLEExplorer", "IntegerExplorer"]

TENSOR_COLOR, CHANNEL_COLOR, DEAD_COLOR = "#d95f02", "#1b9e77", "#7570b3"
METRICS = {"top-1 agreement (%)": "top1", "top-5 agreement (%)": "top5", "logit SQNR (dB)": "sqnr_db"}


def _pct_or_db(metric: str, v: float) -> float:
    return 100.0 * v if metric != "sqnr_db" else v


class RangesExplorer(Explorer):
    """The folded weight range max |w_fold[c]| of every output channel of one layer (log scale), its dead
    channels, and the weight SQNR of 8-bit per-tensor and per-channel quantization (Eqs. 18, 41, 53)."""

    title_text = "Folded channel ranges, layer by layer"
    figsize = (11.0, 3.6)

    def __init__(self, results: dict, layer: int = 0) -> None:
        self.rows = results["ranges"]
        controls = {"layer": int_slider("layer", layer, 0, len(self.rows) - 1)}
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax, self.ax_all = fig.subplots(1, 2, width_ratios=[1.7, 1.0])
        (self.live,) = self.ax.plot([], [], "o", ms=3, color=CHANNEL_COLOR, label="channel range")
        (self.dead,) = self.ax.plot([], [], "x", ms=6, color=DEAD_COLOR, label="dead (< 1e-3 of max)")
        self.ax.set(yscale="log", xlabel="output channel", ylabel="max |w_fold[c]|")
        self.ax.legend(loc="lower right")
        x = np.arange(len(self.rows))
        self.ax_all.plot(x, [r["sqnr_per_tensor"] for r in self.rows], ".-", color=TENSOR_COLOR, label="per-tensor")
        self.ax_all.plot(x, [r["sqnr_per_channel"] for r in self.rows], ".-", color=CHANNEL_COLOR, label="per-channel")
        (self.mark,) = self.ax_all.plot([0, 0], [0, 60], "k:", lw=1)
        self.ax_all.set(xlabel="layer", ylabel="8-bit weight SQNR (dB)", title="every layer")
        self.ax_all.legend(loc="lower left")

    def render(self, layer: int) -> dict:
        row = self.rows[layer]
        ch = layer_channels(row)
        r, dead = ch.ranges, ch.dead
        c = np.arange(len(r))
        floor = r[r > 0].min() / 3 if np.any(r > 0) else 1e-12
        self.live.set_data(c[~dead], r[~dead])
        self.dead.set_data(c[dead], np.where(r[dead] > 0, r[dead], floor))
        self.ax.set_xlim(-1, len(r))
        self.ax.set_ylim(floor / 3, r.max() * 3)
        self.ax.set_title(f"{row['name']}  {tuple(row['shape'])}")
        self.mark.set_xdata([layer, layer])
        return {"layer": row["name"], "channels": len(r), "dead channels": row["dead"],
                "spread of all ranges (max / min nonzero)": row["spread"],
                "spread without the dead channels": ch.live_spread,
                "8-bit weight SQNR per-tensor (dB)": row["sqnr_per_tensor"],
                "8-bit weight SQNR per-channel (dB)": row["sqnr_per_channel"]}


class VariantsExplorer(Explorer):
    """Whole-network PTQ variants against the float model: one metric for every variant, one highlighted."""

    title_text = "Whole-network PTQ on EfficientNet-Lite0"
    figsize = (11.0, 3.8)

    def __init__(self, results: dict, metric: str = "top-1 agreement (%)", variant: str | None = None) -> None:
        self.variants = results["variants"]
        names = list(self.variants)
        controls = {
            "metric": widgets.Dropdown(options=list(METRICS), value=metric, description="metric"),
            "variant": widgets.Dropdown(options=names, value=variant or names[0], description="variant"),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax = fig.subplots()
        n = len(self.variants)
        self.bars = self.ax.barh(np.arange(n), np.ones(n), color=[
            CHANNEL_COLOR if "per-channel" in v else TENSOR_COLOR for v in self.variants])
        self.ax.set(yticks=np.arange(n), yticklabels=list(self.variants))
        self.ax.invert_yaxis()

    def render(self, metric: str, variant: str) -> dict:
        key = METRICS[metric]
        vals = [_pct_or_db(key, v[key]) for v in self.variants.values()]
        for bar, v, name in zip(self.bars, vals, self.variants):
            bar.set_width(v)
            bar.set_edgecolor("black" if name == variant else "none")
            bar.set_linewidth(2.0 if name == variant else 0.0)
        lo = min(0.0, min(vals))
        self.ax.set_xlim(lo * 1.1, max(vals) * 1.1 + 1e-9)
        self.ax.set_xlabel(metric)
        v = self.variants[variant]
        out = {"variant": variant, "top-1 agreement (%)": 100 * v["top1"], "top-5 agreement (%)": 100 * v["top5"],
               "logit SQNR (dB)": v["sqnr_db"]}
        if "accuracy" in v:
            out["top-1 accuracy (%)"] = 100 * v["accuracy"]
        return out


class CLEExplorer(Explorer):
    """Cross-layer equalization: each layer's range spread before and after (left), and what CLE buys at
    W8 per-tensor measured against the ReLU model it preserves -- and what the ReLU costs (right)."""

    title_text = "Cross-layer equalization and bias correction"
    figsize = (11.0, 3.6)

    def __init__(self, results: dict, layer: int = 0) -> None:
        self.cle = results["cle"]
        self.spread = self.cle["spread"]
        controls = {"layer": int_slider("layer", layer, 0, len(self.spread) - 1)}
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax, self.ax_bar = fig.subplots(1, 2, width_ratios=[1.5, 1.0])
        x = np.arange(len(self.spread))
        self.ax.semilogy(x, [s["before"] for s in self.spread], ".-", color=TENSOR_COLOR, label="before CLE")
        self.ax.semilogy(x, [s["after"] for s in self.spread], ".-", color=CHANNEL_COLOR, label="after CLE")
        (self.mark,) = self.ax.plot([0, 0], [1, 1e3], "k:", lw=1)
        self.ax.set(xlabel="layer", ylabel="max / min channel range", title="range spread (dead channels zeroed)")
        self.ax.legend(loc="upper right")
        c = self.cle
        labels = ["ReLU model,\nper-tensor", "after CLE", "CLE + bias\ncorrection", "ReLU vs the\nReLU6 float"]
        vals = [c["relu_per_tensor"]["sqnr_db"], c["cle_per_tensor"]["sqnr_db"], c["cle_bc_per_tensor"]["sqnr_db"],
                c["relu_vs_relu6"]["sqnr_db"]]
        self.ax_bar.bar(np.arange(4), vals, color=[TENSOR_COLOR, CHANNEL_COLOR, CHANNEL_COLOR, DEAD_COLOR])
        self.ax_bar.set(xticks=np.arange(4), ylabel="logit SQNR (dB)", title="W8 per-tensor, weights only")
        self.ax_bar.set_xticklabels(labels, fontsize="small")

    def render(self, layer: int) -> dict:
        s = self.spread[layer]
        self.mark.set_xdata([layer, layer])
        c = self.cle
        return {"layer": s["name"], "spread before CLE": s["before"], "spread after CLE": s["after"],
                "ReLU model per-tensor: top-1 agreement (%)": 100 * c["relu_per_tensor"]["top1"],
                "after CLE: top-1 agreement (%)": 100 * c["cle_per_tensor"]["top1"],
                "CLE + bias correction: top-1 agreement (%)": 100 * c["cle_bc_per_tensor"]["top1"],
                "ReLU instead of ReLU6 vs float: top-1 agreement (%)": 100 * c["relu_vs_relu6"]["top1"]}


class IntegerExplorer(Explorer):
    """The integer engine against the fake-quant model: per conv layer, the largest output-code difference
    when the integer layer is fed the fake-quant model's own input codes (Eq. 69)."""

    title_text = "The integer engine on the converted 224 x 224 network"
    figsize = (11.0, 3.2)

    def __init__(self, results: dict, layer: int = 0) -> None:
        self.integer = results["integer"]
        self.names = list(self.integer["layer_lsb"])
        controls = {"layer": int_slider("layer", layer, 0, len(self.names) - 1)}
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax = fig.subplots()
        lsb = [self.integer["layer_lsb"][n] for n in self.names]
        self.ax.bar(np.arange(len(lsb)), lsb, color=CHANNEL_COLOR)
        (self.mark,) = self.ax.plot([0, 0], [0, 2], "k:", lw=1)
        self.ax.set(xlabel="conv layer", ylabel="max |q_int - q_fake| (LSB)", ylim=(0, 2),
                    title="each integer layer fed the fake-quant input codes")

    def render(self, layer: int) -> dict:
        self.mark.set_xdata([layer, layer])
        a = self.integer["agreement"]
        name = self.names[layer]
        return {"layer": name, "max difference in this layer (LSB)": self.integer["layer_lsb"][name],
                "crops run end to end": a["n"], "top-1 agreement with fake quant (%)": 100 * a["top1_agreement"],
                "logit codes identical (%)": 100 * a["exact_output_fraction"],
                "largest logit difference end to end (LSB)": a["max_lsb_diff"],
                "integer engine (images/s)": self.integer["images_per_s"]}


def variants_explorer(metric: str = "logit SQNR (dB)", **kwargs: Any) -> VariantsExplorer:
    """Notebook 12's whole-network PTQ explorer on the quick study (measured once on this CPU, then cached);
    by default the logit SQNR, which separates per-tensor from per-channel on a handful of crops."""
    return VariantsExplorer(quick_study(), metric=metric, **kwargs)
