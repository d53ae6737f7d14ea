"""Explorers for notebooks 01 (quantize/dequantize) and 02 (error analysis).

What the notebooks measure is in ``qlearn.lessons``: the grid and its error for 01
(``quantize_dequantize``), ``error_vs_bits``, ``clipping_curves`` and the cached sample tensors for 02
(``error_analysis``); this module holds the sliders and the figures that show it.
"""
from __future__ import annotations

import threading
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qlearn._checks import as_float_array
from qlearn.distributions import DISTRIBUTIONS, sample
from qlearn.error import error_breakdown
from qlearn.lessons.error_analysis import BITS, ERROR_METHODS, clipping_curves, error_vs_bits, sample_data
from qlearn.lessons.quantize_dequantize import grid_values, quantize_report
from qlearn.qparams import qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider
from qlearn.widgets.limits import set_limits

GRID_COLOR = "#d62728"
CLIP_COLOR = "#ff7f0e"


class QuantizeExplorer(Explorer):
    """Notebook 01: the grid of r = S (q - Z) over a histogram, the transfer function and the error."""

    title_text = "Quantize and dequantize: r = S (q - Z)"
    figsize = (11.0, 3.4)

    def __init__(
        self, x: Any = None, *, n: int = 1_000_000, seed: int = 0, bits: int = 3,
        lo: float = -2.0, hi: float = 3.0,
    ) -> None:
        self.x = sample("gaussian", n, seed) if x is None else as_float_array(x, "x").ravel()
        self.hist, self.edges = np.histogram(self.x, bins=160)
        controls = {
            "bits": int_slider("bits", bits, 2, 8),
            "range": widgets.FloatRangeSlider(
                value=(lo, hi), min=-5.0, max=5.0, step=0.05, description="range [a, b]",
                style={"description_width": "initial"}, layout=widgets.Layout(width="380px"),
            ),
            "symmetric": widgets.Checkbox(False, description="symmetric", indent=False),
            "signed": widgets.Checkbox(False, description="signed", indent=False),
            "narrow": widgets.Checkbox(False, description="narrow range", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_hist, self.ax_map, self.ax_err = fig.subplots(1, 3)
        ax = self.ax_hist
        ax.stairs(self.hist, self.edges, fill=True, color="#9ecae1", label="values of x")
        self.grid_lines = LineCollection([], colors=GRID_COLOR, linewidths=0.7, alpha=0.8,
                                         transform=ax.get_xaxis_transform(), label="grid S(q - Z)")
        ax.add_collection(self.grid_lines)
        self.clip_lo = Rectangle((0, 0), 0, 1, transform=ax.get_xaxis_transform(), color=CLIP_COLOR, alpha=0.25)
        self.clip_hi = Rectangle((0, 0), 0, 1, transform=ax.get_xaxis_transform(), color=CLIP_COLOR, alpha=0.25,
                                 label="clipped")
        ax.add_patch(self.clip_lo)
        ax.add_patch(self.clip_hi)
        ax.set(xlim=(-5, 5), title="values and the grid", xlabel="real value r")
        ax.legend(loc="upper left")
        self.r = np.linspace(-5.0, 5.0, 4001)
        self.ax_map.plot(self.r, self.r, "--", color="gray", lw=0.8)
        (self.stairs_line,) = self.ax_map.plot([], [], color=GRID_COLOR, lw=1.2)
        self.ax_map.set(xlim=(-5, 5), ylim=(-5.2, 5.2), title="fake_quantize(r)", xlabel="r")
        (self.err_line,) = self.ax_err.plot([], [], color="#2ca02c", lw=1.0)
        self.band = self.ax_err.axhspan(-0.5, 0.5, color="gray", alpha=0.15, label="±S/2")
        self.ax_err.set(xlim=(-5, 5), title="error fake_quantize(r) - r", xlabel="r")
        self.ax_err.legend(loc="upper left")

    def render(self, bits: int, range: tuple[float, float], symmetric: bool, signed: bool, narrow: bool) -> dict:
        qp = qparams_from_range(range[0], range[1], bits, symmetric=symmetric, signed=signed, narrow_range=narrow)
        glo, ghi = qp.real_range
        grid = grid_values(qp)
        top = 1.0 if qp.num_levels <= 32 else 0.06  # dense grids: short ticks, so the data stays visible
        self.grid_lines.set_segments([[(g, 0.0), (g, top)] for g in grid])
        self.clip_lo.set_bounds(-5.0, 0.0, max(glo + 5.0, 0.0), 1.0)
        self.clip_hi.set_bounds(ghi, 0.0, max(5.0 - ghi, 0.0), 1.0)
        self.stairs_line.set_data(self.r, fake_quantize(self.r, qp))
        err = fake_quantize(self.r, qp) - self.r
        self.err_line.set_data(self.r, err)
        self.band.set_y(-qp.scale / 2)
        self.band.set_height(qp.scale)
        set_limits(self.ax_err, "y", -max(1.5 * qp.scale, 0.05), max(1.5 * qp.scale, 0.05))

        report = quantize_report(self.x, qp)
        parts = report.breakdown
        return {
            "scale S": qp.scale,
            "zero point Z": qp.zero_point,
            "integers q": f"[{qp.qmin}, {qp.qmax}]  ({qp.num_levels} levels, {qp.dtype})",
            "grid covers": f"[{glo:.4f}, {ghi:.4f}]",
            "MSE (measured)": parts.total_mse,
            "  of which rounding": parts.rounding_mse,
            "  of which clipping": parts.clipping_mse,
            "S^2/12 (uniform-noise model)": report.model_mse,
            "max |error| inside the grid": report.max_error_inside,
            "S/2": qp.scale / 2,
            "clipped values": f"{100 * parts.clipped_fraction:.2f} %",
            "SQNR (dB)": report.sqnr_db,
        }


def quantize_explorer(x: Any = None, **kwargs: Any) -> QuantizeExplorer:
    """Notebook 01's explorer: sliders for bits and [a, b], switches for symmetric/signed/narrow.

    ``x`` defaults to 1,000,000 standard-normal values. Returns the widget; display it in a notebook.
    """
    return QuantizeExplorer(x, **kwargs)


# ---------------------------------------------------------------------------------------- notebook 02
class ErrorVsBitsExplorer(Explorer):
    """Notebook 02: error vs bit width, the S^2/12 model beside measurement, ~6 dB of SQNR per bit."""

    title_text = "Error vs bits: measurement against the S²/12 model"
    figsize = (10.0, 3.4)

    def __init__(self, dist: str = "gaussian", bits: int = 4, n: int = 200_000, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "dist": widgets.Dropdown(options=DISTRIBUTIONS, value=dist, description="data"),
            "method": widgets.Dropdown(options=ERROR_METHODS, value="min/max", description="range"),
            "bits": int_slider("bits", bits, int(BITS[0]), int(BITS[-1])),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_mse, self.ax_sqnr = fig.subplots(1, 2)
        (self.l_mse,) = self.ax_mse.semilogy([], [], "o-", label="measured MSE")
        (self.l_model,) = self.ax_mse.semilogy([], [], "k--", label="S²/12 model")
        (self.m_mse,) = self.ax_mse.semilogy([], [], "o", ms=12, mfc="none", color=GRID_COLOR)
        self.ax_mse.set(xlabel="bits", ylabel="MSE", title="quantization MSE")
        self.ax_mse.legend()
        (self.l_sqnr,) = self.ax_sqnr.plot([], [], "o-", label="measured SQNR")
        (self.l_ref,) = self.ax_sqnr.plot([], [], "k--", label="6.02 dB per bit")
        (self.m_sqnr,) = self.ax_sqnr.plot([], [], "o", ms=12, mfc="none", color=GRID_COLOR)
        self.ax_sqnr.set(xlabel="bits", ylabel="dB", title="SQNR")
        self.ax_sqnr.legend()

    def render(self, dist: str, method: str, bits: int) -> dict:
        c = error_vs_bits(dist, method, self.n, self.seed)
        i = int(bits - BITS[0])
        self.l_mse.set_data(c["bits"], c["mse"])
        self.l_model.set_data(c["bits"], c["model"])
        self.m_mse.set_data([bits], [c["mse"][i]])
        self.ax_mse.relim()
        self.ax_mse.autoscale_view()
        ref = c["sqnr"][i] + 20 * np.log10(2) * (c["bits"] - bits)
        self.l_sqnr.set_data(c["bits"], c["sqnr"])
        self.l_ref.set_data(c["bits"], ref)
        self.m_sqnr.set_data([bits], [c["sqnr"][i]])
        self.ax_sqnr.relim()
        self.ax_sqnr.autoscale_view()
        slope = np.polyfit(c["bits"][2:], c["sqnr"][2:], 1)[0]
        return {
            "scale S": float(c["scale"][i]),
            "MSE (measured)": float(c["mse"][i]),
            "S^2/12 (model)": float(c["model"][i]),
            "measured / model": float(c["mse"][i] / c["model"][i]),
            "clipping part of MSE": float(c["clipping"][i]),
            "SQNR (dB)": float(c["sqnr"][i]),
            "SQNR slope, 4-12 bits (dB/bit)": float(slope),
        }


def error_vs_bits_explorer(**kwargs: Any) -> ErrorVsBitsExplorer:
    """Notebook 02: choose a distribution and a range rule, slide the bit width."""
    return ErrorVsBitsExplorer(**kwargs)


class ClippingExplorer(Explorer):
    """Notebook 02: rounding error shrinks and clipping error grows as the range narrows."""

    title_text = "Rounding vs clipping: where should the range end?"
    figsize = (10.0, 3.4)

    def __init__(self, dist: str = "laplace", bits: int = 4, clip: float = 3.0, n: int = 200_000, seed: int = 0):
        self.n, self.seed = n, seed
        self.hist_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        controls = {
            "dist": widgets.Dropdown(options=DISTRIBUTIONS, value=dist, description="data"),
            "bits": int_slider("bits", bits, 2, 8),
            "clip": widgets.FloatLogSlider(
                value=clip, base=10, min=np.log10(0.25), max=np.log10(30.0), step=0.01,
                description="clip range c (σ)", style={"description_width": "initial"},
            ),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_c, self.ax_h = fig.subplots(1, 2)
        (self.l_r,) = self.ax_c.loglog([], [], label="rounding")
        (self.l_c,) = self.ax_c.loglog([], [], label="clipping")
        (self.l_t,) = self.ax_c.loglog([], [], "k", lw=2, label="total")
        self.v_now = self.ax_c.axvline(1.0, color=GRID_COLOR, lw=1.2, label="your c")
        self.v_best = self.ax_c.axvline(1.0, color="gray", ls=":", label="best c")
        self.ax_c.set(xlabel="clip range c (in σ)", ylabel="MSE", title="error parts vs range")
        self.ax_c.legend(loc="lower left")
        self.hist_artist, self.hist_dist = None, None
        self.h_lo = self.ax_h.axvline(-1.0, color=CLIP_COLOR, lw=1.5)
        self.h_hi = self.ax_h.axvline(1.0, color=CLIP_COLOR, lw=1.5)
        self.ax_h.set(yscale="log", title="data and the clip range", xlabel="value")

    def render(self, dist: str, bits: int, clip: float) -> dict:
        cur = clipping_curves(dist, bits, self.n, self.seed)
        for line, key in ((self.l_r, "rounding"), (self.l_c, "clipping"), (self.l_t, "total")):
            y = np.where(cur[key] > 0, cur[key], np.nan)
            line.set_data(cur["c"], y)
        best = float(cur["c"][np.argmin(cur["total"])])
        self.v_now.set_xdata([clip, clip])
        self.v_best.set_xdata([best, best])
        self.ax_c.relim()
        self.ax_c.autoscale_view()
        if dist not in self.hist_cache:
            self.hist_cache[dist] = np.histogram(sample_data(dist, self.n, self.seed), bins=200)
            self._prefetch(dist)
        if dist != self.hist_dist:  # the histogram changes with the data only: bits and clip leave it alone
            hist, edges = self.hist_cache[dist]
            if self.hist_artist is not None:
                self.hist_artist.remove()
            self.hist_artist = self.ax_h.stairs(hist, edges, fill=True, color="#9ecae1")
            self.hist_dist = dist
        self.h_lo.set_xdata([-clip, -clip])
        self.h_hi.set_xdata([clip, clip])
        self.ax_h.relim()
        self.ax_h.autoscale_view()
        x = sample_data(dist, self.n, self.seed)
        qp = qparams_from_range(-clip, clip, bits)
        parts = error_breakdown(x, qp)
        return {
            "clip range c": float(clip),
            "scale S": qp.scale,
            "rounding MSE": parts.rounding_mse,
            "clipping MSE": parts.clipping_mse,
            "total MSE": parts.total_mse,
            "clipped values": f"{100 * parts.clipped_fraction:.3f} %",
            "best c on the curve": best,
            "min/max c (no clipping)": float(np.abs(x).max()),
        }

    def _prefetch(self, dist: str) -> None:
        """Compute this distribution's curves for every bit width in a background thread (cached by
        ``clipping_curves``), so the first move of the bits slider does not wait ~0.4 s for 60 breakdowns."""
        bits = range(self.controls["bits"].min, self.controls["bits"].max + 1)
        n, seed = self.n, self.seed

        def work() -> None:
            for b in bits:
                clipping_curves(dist, b, n, seed)

        threading.Thread(target=work, name="qlearn-clipping-curves", daemon=True).start()


def clipping_explorer(**kwargs: Any) -> ClippingExplorer:
    """Notebook 02: slide the clip range and watch rounding trade against clipping."""
    return ClippingExplorer(**kwargs)
