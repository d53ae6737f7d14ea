"""Notebook 07's explorers: the re-quantized add (Eqs. 72-73) and concatenation (Eq. 74), as sliders.

What they show is computed in ``qlearn.lessons.skip_connections`` (``add_experiment``,
``ratio_sweep``, ``concat_experiment``); this module draws it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn.lessons.skip_connections import RATIO_GRID, AddExperiment, add_experiment, concat_experiment, ratio_sweep
from qlearn.quantize import dequantize
from qlearn.widgets.base import Explorer
from qlearn.widgets.limits import set_limits

__all__ = [
    "IntegerAddExplorer",
    "integer_add_explorer",
    "ConcatExplorer",
    "concat_explorer",
]

INT_COLOR = "#2ca02c"
NAIVE_COLOR = "#d62728"
SHARED_COLOR = "#1f77b4"


@lru_cache(maxsize=64)
def _cached_add(ratio: float, left_shift: int, n: int, seed: int) -> AddExperiment:
    return add_experiment(ratio, n=n, left_shift=left_shift, seed=seed)


class IntegerAddExplorer(Explorer):
    """Notebook 07: the integer add with two input scales, its error in output LSBs."""

    title_text = "The re-quantized add: two input scales, one output grid"
    figsize = (12.0, 3.6)

    def __init__(self, scale_ratio: float = 4.0, left_shift: int = 20, n: int = 4096, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "ratio": widgets.FloatLogSlider(
                value=scale_ratio, base=2, min=-5, max=5, step=0.25, description="scale ratio S2/S1",
                style={"description_width": "initial"}),
            "left_shift": widgets.IntSlider(
                value=left_shift, min=2, max=22, description="left shift (headroom bits)",
                style={"description_width": "initial"}),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_sc, self.ax_h, self.ax_r = fig.subplots(1, 3)
        (self.pts_naive,) = self.ax_sc.plot([], [], ".", ms=2, color=NAIVE_COLOR, alpha=0.5, label="codes added naively")
        (self.pts_int,) = self.ax_sc.plot([], [], ".", ms=2, color=INT_COLOR, label="integer add (Eqs. 32-34)")
        (self.diag,) = self.ax_sc.plot([], [], ":", color="gray", lw=1)
        self.ax_sc.set(xlabel="real sum a + b", ylabel="dequantized output", title="output against the real sum")
        self.ax_sc.legend(loc="upper left", markerscale=4)
        self.lsb_values = np.arange(-3, 4)
        self.bars = self.ax_h.bar(self.lsb_values, np.ones(7), 0.7, color=INT_COLOR)
        self.bar_text = [self.ax_h.text(v, 0, "", ha="center", va="bottom", fontsize="small") for v in self.lsb_values]
        self.ax_h.set(xticks=self.lsb_values, xlabel="q_int - q_exact (output LSBs)", ylabel="% of values",
                      ylim=(0, 115), title="integer add vs exact re-quantized add")
        (self.l_exact,) = self.ax_r.semilogx([], [], "-", color=INT_COLOR, base=2, label="% exact")
        self.m_exact = self.ax_r.plot([], [], "o", ms=9, mfc="none", color="black")[0]
        self.ax_r.set(xlabel="scale ratio S2/S1", ylabel="% bit-exact", ylim=(0, 105),
                      title="exactness across scale ratios")
        self.ax_r2 = self.ax_r.twinx()
        (self.l_worst,) = self.ax_r2.semilogx([], [], "--", color="gray", base=2, label="max |error| (LSB)")
        self.ax_r2.set_ylabel("max |error| (LSB)")
        self.ax_r.legend(handles=[self.l_exact, self.l_worst], loc="lower left")

    def render(self, ratio: float, left_shift: int) -> dict:
        e = _cached_add(float(ratio), int(left_shift), self.n, self.seed)
        real = e.a + e.b
        k = slice(0, min(1500, e.a.size))
        self.pts_int.set_data(real[k], dequantize(e.q_int, e.out_qp)[k])
        self.pts_naive.set_data(real[k], dequantize(e.q_naive, e.out_qp)[k])
        lim = (float(real.min()) * 1.1, float(real.max()) * 1.1)
        self.diag.set_data(lim, lim)
        set_limits(self.ax_sc, "x", *lim)
        set_limits(self.ax_sc, "y", *lim)
        err = e.lsb_error
        for bar, txt, v in zip(self.bars, self.bar_text, self.lsb_values):
            pct = 100.0 * float(np.mean(np.clip(err, -3, 3) == v))
            bar.set_height(pct)
            txt.set_position((v, pct))
            txt.set_text(f"{pct:.1f}" if pct > 0 else "")
        sweep = ratio_sweep(int(left_shift), self.n, self.seed)
        self.l_exact.set_data(sweep["ratio"], 100 * sweep["exact"])
        self.l_worst.set_data(sweep["ratio"], sweep["worst"])
        set_limits(self.ax_r, "x", RATIO_GRID[0], RATIO_GRID[-1])
        set_limits(self.ax_r2, "y", 0, max(2, int(sweep["worst"].max()) + 1))
        self.m_exact.set_data([ratio], [100 * e.exact_fraction])
        m = e.mult
        real_err = e.error_vs_real_lsb(e.q_int)
        return {
            "S1 (a), Z1": f"{e.a_qp.scale:.5g}, {e.a_qp.zero_point}",
            "S2 (b), Z2": f"{e.b_qp.scale:.5g}, {e.b_qp.zero_point}",
            "S3 (sum), Z3": f"{e.out_qp.scale:.5g}, {e.out_qp.zero_point}",
            "S1/S3, S2/S3 (Eq. 72)": f"{e.a_qp.scale / e.out_qp.scale:.5f}, {e.b_qp.scale / e.out_qp.scale:.5f}",
            "a: (m0, shift)": f"({m.a_m0}, {m.a_shift})",
            "b: (m0, shift)": f"({m.b_m0}, {m.b_shift})",
            "out: (m0, shift)": f"({m.out_m0}, {m.out_shift})",
            "bit-exact with the re-quantized add": f"{100 * e.exact_fraction:.2f} %",
            "max |q_int - q_exact| (LSB)": int(np.abs(err).max()),
            "mean q_int - q_exact (LSB)": float(err.mean()),
            "max |naive - exact| (LSB)": int(np.abs(e.naive_lsb_error).max()),
            "RMS error vs real a + b (LSB)": float(np.sqrt(np.mean(real_err**2))),
        }


def integer_add_explorer(**kwargs: Any) -> IntegerAddExplorer:
    """Notebook 07: slide the ratio of the two input scales and the fixed-point headroom."""
    return IntegerAddExplorer(**kwargs)


class ConcatExplorer(Explorer):
    """Notebook 07: concatenating a small-range tensor onto a large-range one."""

    title_text = "Concatenation: one shared grid, or re-quantize?"
    figsize = (11.0, 3.4)

    def __init__(self, range_ratio: float = 8.0, bits: int = 8, n: int = 4096, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "ratio": widgets.FloatLogSlider(
                value=range_ratio, base=2, min=0, max=6, step=0.25, description="range ratio a/b",
                style={"description_width": "initial"}),
            "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits",
                                      style={"description_width": "initial"}),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        from matplotlib.collections import LineCollection

        self.ax_g, self.ax_m, self.ax_d = fig.subplots(1, 3, width_ratios=[1.4, 1.0, 1.0])
        self.own_ticks = LineCollection([], colors=INT_COLOR, linewidths=0.8, label="b's own grid")
        self.shared_ticks = LineCollection([], colors=SHARED_COLOR, linewidths=0.8, label="shared (output) grid")
        self.ax_g.add_collection(self.own_ticks)
        self.ax_g.add_collection(self.shared_ticks)
        self.ax_g.set(ylim=(0, 1), yticks=[], xlabel="value of b", title="the grids b can live on")
        self.ax_g.legend(loc="center right")
        labels = ["own grid\n(before concat)", "shared grid\n(direct)", "own, then\nre-quantized"]
        self.mse_bars = self.ax_m.bar(np.arange(3), np.ones(3), 0.6, color=[INT_COLOR, SHARED_COLOR, NAIVE_COLOR])
        self.ax_m.set(yscale="log", xticks=np.arange(3), ylabel="MSE of b", title="error of the small tensor")
        self.ax_m.set_xticklabels(labels, fontsize="small")
        self.d_bars = self.ax_d.bar([-1, 0, 1], np.ones(3), 0.6, color=NAIVE_COLOR)
        self.d_text = [self.ax_d.text(v, 0, "", ha="center", va="bottom", fontsize="small") for v in (-1, 0, 1)]
        self.ax_d.set(xticks=[-1, 0, 1], ylim=(0, 115), xlabel="re-quantized - direct (LSB)", ylabel="% of values",
                      title="double rounding")

    def render(self, ratio: float, bits: int) -> dict:
        e = concat_experiment(float(ratio), bits=int(bits), n=self.n, seed=self.seed)
        bmax = 6.0 / e.range_ratio
        own = e.b_qp.scale * (np.arange(e.b_qp.qmin, e.b_qp.qmax + 1) - e.b_qp.zero_point)
        shared = e.out_qp.scale * (np.arange(e.out_qp.qmin, e.out_qp.qmax + 1) - e.out_qp.zero_point)
        shared = shared[shared <= bmax * 1.05]
        self.own_ticks.set_segments([[(g, 0.05), (g, 0.45)] for g in own])
        self.shared_ticks.set_segments([[(g, 0.55), (g, 0.95)] for g in shared])
        set_limits(self.ax_g, "x", -0.02 * bmax, bmax * 1.05)
        mses = [e.mse("own"), e.mse("shared"), e.mse("requant")]
        for bar, v in zip(self.mse_bars, mses):
            bar.set_height(v)
        set_limits(self.ax_m, "y", min(mses) / 3, max(mses) * 3)
        diff = e.b_requant.astype(np.int64) - e.b_shared.astype(np.int64)
        for bar, txt, v in zip(self.d_bars, self.d_text, (-1, 0, 1)):
            pct = 100.0 * float(np.mean(diff == v))
            bar.set_height(pct)
            txt.set_position((v, pct))
            txt.set_text(f"{pct:.1f}")
        return {
            "b's own scale S_b": e.b_qp.scale,
            "shared scale S_out": e.out_qp.scale,
            "grid points for b: own / shared": f"{len(own)} / {int(np.count_nonzero(shared <= bmax + 1e-12))}",
            "MSE of b, own grid": mses[0],
            "MSE of b, shared grid (concat = copy)": mses[1],
            "MSE of b, re-quantized": mses[2],
            "re-quantize multiplier S_b/S_out: (m0, shift)": f"({e.m0}, {e.shift})",
            "codes changed by double rounding": f"{100 * e.double_rounding_fraction:.2f} %",
            "max |re-quantized - direct| (LSB)": int(np.abs(diff).max()),
            "multiplies for the concat: shared / separate": f"0 / {e.b.size}",
        }


def concat_explorer(**kwargs: Any) -> ConcatExplorer:
    """Notebook 07: slide how much smaller b's range is than a's."""
    return ConcatExplorer(**kwargs)
