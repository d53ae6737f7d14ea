"""Notebook 13: a layer slider through the integer model on three engines (qlearn, ONNX Runtime, PyTorch int8).

The computations are ``qlearn.deploy.layer_codes`` and ``qlearn.lessons.deploy``; this module only
draws them. Left: for the chosen layer, how many output codes of each runtime differ from qlearn's by
0, +-1, +-2 ... LSB (Eq. 69), fed qlearn's own input codes ("layer alone": that runtime's rounding
only) or its own earlier outputs ("end to end": the differences compound). Right: the share of
identical codes in every layer.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn.lessons.deploy import (
    MODES,
    check_rows,
    difference_histogram,
    differences,
    identical_share,
    largest_difference,
    shipped_layer_codes,
)
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider

__all__ = ["DeployLayerExplorer", "engines_explorer", "ENGINE_COLORS"]

ENGINE_COLORS = {"ONNX Runtime": "#1f77b4", "PyTorch int8": "#ff7f0e"}


class DeployLayerExplorer(Explorer):
    """Step through the layers; compare each runtime's codes with qlearn's, alone or end to end."""

    title_text = "One set of integers, three engines: each runtime's codes minus qlearn's, layer by layer"
    figsize = (12.0, 3.8)

    def __init__(self, rows: list | None = None, layer: int | str = 0, mode: str = "layer alone") -> None:
        # default: the shipped quick run (the same on every machine), its first test images
        rows = check_rows(shipped_layer_codes() if rows is None else rows)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.rows = rows
        self.names = [r.name for r in rows]
        if isinstance(layer, str):
            if layer not in self.names:
                raise ValueError(f"no layer named {layer!r}; layers: {self.names}")
            layer = self.names.index(layer)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(rows):
            raise ValueError(f"layer must be a layer name or an index 0..{len(rows) - 1}, got {layer!r}")
        self.engines = list(rows[0].alone)
        # fixed axes for every layer (only the bars move with the slider, so a change can be blitted)
        self.k = max(2, largest_difference(rows))
        self.floor = 0.3 / max(r.ours.size for r in rows)
        controls = {
            "layer": int_slider("layer #", int(layer), 0, len(rows) - 1),
            "mode": widgets.ToggleButtons(options=list(MODES), value=mode, description="inputs",
                                          style={"description_width": "initial"}),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        from matplotlib.ticker import MaxNLocator

        self.ax_d, self.ax_all = fig.subplots(1, 2, width_ratios=[1.0, 1.3])
        self.stairs = {}
        for k, engine in enumerate(self.engines):
            self.stairs[engine] = self.ax_d.stairs([1.0], [-0.5, 0.5], color=ENGINE_COLORS.get(engine, f"C{k}"),
                                                   lw=2 + 2 * (k == 0), alpha=0.8, label=engine, baseline=None)
        self.ax_d.set(yscale="log", xlabel="runtime code - qlearn code (output LSBs)", ylabel="share of output codes")
        self.ax_d.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax_d.legend(loc="upper right")
        x = np.arange(len(self.rows))
        self.lines = {}
        for k, engine in enumerate(self.engines):
            color = ENGINE_COLORS.get(engine, f"C{k}")
            self.lines[engine] = self.ax_all.plot(x, np.zeros(len(x)), ".-" if k == 0 else ".--", color=color,
                                                  lw=3 if k == 0 else 1.5, label=engine)[0]
        self.v_layer = self.ax_all.axvline(0, color="gray", lw=0.8)
        self.ax_all.set(xlabel="layer #", ylabel="identical codes (%)", ylim=(0, 102))
        self.ax_all.legend(loc="lower left")

    def render(self, layer: int, mode: str) -> dict:
        row = self.rows[int(layer)]
        diffs = {e: differences(row, e, mode) for e in self.engines}
        k = self.k
        edges = np.arange(-k, k + 2) - 0.5
        total = float(row.ours.size)
        for e, d in diffs.items():
            h = difference_histogram(d, k)
            self.stairs[e].set_data(np.maximum(h, self.floor / 10), edges)  # empty bins below the axis (log)
        self.ax_d.set_xlim(-k - 0.5, k + 0.5)
        self.ax_d.set_ylim(self.floor, 2.0)
        self.ax_d.set_title(f"this layer, {mode}", fontsize="medium")
        for e in self.engines:
            self.lines[e].set_ydata([100 * identical_share(r, e, mode) for r in self.rows])
        self.ax_all.set_title(f"every layer, {mode}", fontsize="medium")
        self.v_layer.set_xdata([layer, layer])
        out: dict[str, Any] = {"layer": f"{layer}: {row.name}", "kind": row.kind, "output codes": int(total)}
        for e, d in diffs.items():
            out[f"{e}: identical codes"] = float(np.mean(d == 0))
            out[f"{e}: max |difference| (LSB)"] = int(np.abs(d).max())
        return out


def engines_explorer(rows: list | None = None, **kwargs: Any) -> DeployLayerExplorer:
    """Notebook 13: ``rows`` from ``qlearn.deploy.layer_codes(run, images)`` (default: the shipped quick run)."""
    return DeployLayerExplorer(rows, **kwargs)
