"""Notebook 08's explorers: M -> (M0, shift), one conv layer three ways, and the rounding of x * M.

What they show is computed in ``qlearn.lessons.integer_inference`` (``split_multiplier``,
``multiplier_error_curve``, ``conv_three_ways``, ``rounding_comparison``) and
``qlearn.lessons.pair_saturation`` (``pair_saturation_on_this_cpu``);
this module draws it: ``MultiplierExplorer``, ``ConvExplorer``, ``RoundingExplorer`` and the figure
of the int16-pair section, ``pair_saturation_figure``.
"""
from __future__ import annotations

import numbers
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qlearn._checks import check_open_interval
from qlearn.fixedpoint import multiply_by_quantized_multiplier
from qlearn.lessons.integer_inference import (
    ROUNDING_LABELS,
    conv_three_ways,
    multiplier_error_curve,
    rounding_comparison,
    split_multiplier,
)
from qlearn.lessons.pair_saturation import PairSaturation
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider
from qlearn.widgets.limits import set_limits

__all__ = [
    "pair_saturation_figure",
    "MultiplierExplorer",
    "multiplier_explorer",
    "ConvExplorer",
    "conv_explorer",
    "RoundingExplorer",
    "rounding_explorer",
]

FLOAT_COLOR = "#1f77b4"
FAKE_COLOR = "#ff7f0e"
INT_COLOR = "#2ca02c"
HALF_UP_COLOR = "#d62728"
SINGLE_COLOR = "#9467bd"
ROUNDING_COLORS = {"double": INT_COLOR, "double_half_up": HALF_UP_COLOR, "single": SINGLE_COLOR}


def pair_saturation_figure(result: PairSaturation) -> Figure:
    """Notebook 08, section 6. Left: the pair sums of ``pair_saturation_on_this_cpu`` against the int16
    range. Right: PyTorch x86's output codes against exact ones."""
    fig = Figure(figsize=(9.0, 3.4), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ps = result.pair_sums
    ax1.hist(ps, bins=80, color="0.55")
    for lim in (-32768, 32767):
        ax1.axvline(lim, color="C3", lw=1.2)
    ax1.axvspan(32767, max(ps.max(), 32768), color="C3", alpha=0.12)
    ax1.axvspan(min(ps.min(), -32769), -32768, color="C3", alpha=0.12)
    ax1.set_xlabel("a w + a' w'  (pair of uint8 x int8 products)")
    ax1.set_ylabel("pairs")
    ax1.set_title(f"{100 * np.mean(np.abs(ps) > 32767):.1f} % of pairs leave int16 (red)", fontsize=9)
    exact, x86 = result.scatter
    ax2.plot([0, 255], [0, 255], color="0.7", lw=0.8)
    ax2.scatter(exact.ravel(), x86.ravel(), s=2, alpha=0.3, color="C0")
    ax2.set_xlabel("exact output code (qlearn.integer.conv2d)")
    ax2.set_ylabel("PyTorch x86 output code")
    ax2.set_title("depthwise, 128 channels, 8-bit codes", fontsize=9)
    return fig


class MultiplierExplorer(Explorer):
    """Slide M (log scale): its M0 and shift, the relative error of M0 2^(shift-31), and x * M in integers."""

    title_text = "From a real multiplier M to an int32 M0 and a shift"
    figsize = (11.0, 3.4)

    def __init__(self, multiplier: float = 0.0123, x: int = 10000, *, lo: float = 1e-5, hi: float = 2.0) -> None:
        multiplier = check_open_interval(multiplier, "multiplier", 2.0**-31, 2.0**30)
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
            raise TypeError(f"x must be an integer accumulator value, got {x!r}")
        self.curve = multiplier_error_curve(lo, hi)
        if not lo <= multiplier <= hi:
            raise ValueError(f"multiplier must lie in the slider range [{lo:g}, {hi:g}], got {multiplier!r}")
        controls = {
            "multiplier": widgets.FloatLogSlider(
                value=multiplier, base=10, min=np.log10(lo), max=np.log10(hi), step=0.001,
                description="M = S1·S2/S3", readout_format=".4g", style={"description_width": "initial"},
                layout=widgets.Layout(width="420px"),
            ),
            "x": int_slider("accumulator x", int(x), -(2**20), 2**20, layout=widgets.Layout(width="380px")),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        c = self.curve
        self.ax_q, self.ax_err = fig.subplots(1, 2)
        ax = self.ax_q
        ax.semilogx(c["M"], c["m0"] / 2.0**31, color=FLOAT_COLOR, lw=1.0, label="M0 / 2^31 (paper's M0)")
        ax.set(ylim=(0.45, 1.05), xlabel="M", ylabel="M0 / 2^31", title="M = (M0 / 2^31) · 2^shift")
        self.ax_shift = ax.twinx()
        self.ax_shift.semilogx(c["M"], c["shift"], color="gray", lw=1.0, drawstyle="steps-post", label="shift")
        self.ax_shift.set_ylabel("shift (left if > 0)")
        self.ax_shift.yaxis.set_major_locator(MaxNLocator(integer=True))
        (self.q_dot,) = ax.plot([], [], "o", color=HALF_UP_COLOR, ms=7)
        self.v_q = ax.axvline(1.0, color=HALF_UP_COLOR, lw=0.8)
        ax.legend(loc="lower left")
        self.ax_shift.legend(loc="lower right")
        for a in (self.ax_q, self.ax_shift):
            a.minorticks_off()  # dozens of log minor ticks would double the cost of every redraw

        ax = self.ax_err
        ax.semilogx(c["M"], c["rel_error"], ".", ms=1.5, color=FLOAT_COLOR, label="(M0·2^(shift−31) − M) / M")
        ax.semilogx(c["M"], c["bound"], color="k", lw=0.8, label="± 2^-32 / q")
        ax.semilogx(c["M"], -c["bound"], color="k", lw=0.8)
        (self.err_dot,) = ax.plot([], [], "o", color=HALF_UP_COLOR, ms=7, label="your M")
        ax.set(xlabel="M", ylabel="relative error", title="error of the fixed-point multiplier (Eq. 31)",
               ylim=(-2.0**-30, 2.0**-30))
        ax.legend(loc="lower left")
        ax.minorticks_off()

    def render(self, multiplier: float, x: int) -> dict:
        s = split_multiplier(multiplier)
        self.q_dot.set_data([s.real], [s.m0_fraction])
        self.v_q.set_xdata([s.real, s.real])
        self.err_dot.set_data([s.real], [s.rel_error])
        try:
            y = int(multiply_by_quantized_multiplier(int(x), s.m0, s.shift))
            y_text: Any = y
            diff: Any = y - int(x) * s.approx
        except OverflowError:  # x * 2^shift left int32 (only for M >= 1 and huge x)
            y_text, diff = "overflow (x·2^shift > int32)", float("nan")
        return {
            "M (real)": s.real,
            "frexp: M = q·2^e, q": s.q,
            "frexp: e": s.e,
            "M0 = round(q·2^31) (int32)": s.m0,
            "shift (TFLite; > 0 shifts left)": s.shift,
            "paper: M0/2^31 in [0.5, 1)": s.m0_fraction,
            "paper: n = -shift": s.n,
            "M0·2^(shift−31)": s.approx,
            "relative error": s.rel_error,
            "bound 2^-32/q": s.bound,
            "x (int32 accumulator)": int(x),
            "x·M (real)": int(x) * s.real,
            "MBQM(x, M0, shift) (integer)": y_text,
            "MBQM − x·M0·2^(shift−31) (LSB)": diff,
        }


def multiplier_explorer(**kwargs: Any) -> MultiplierExplorer:
    """Notebook 08, part 1: a log slider over M and an accumulator slider x."""
    return MultiplierExplorer(**kwargs)


class ConvExplorer(Explorer):
    """One conv layer three ways (float, fake-quant, integer): scatter and histograms in output LSBs."""

    title_text = "One conv layer three ways: float reference, fake-quant, integer kernel"
    figsize = (12.0, 3.5)
    DIFF_VALUES = np.arange(-2, 3)
    ERR_EDGES = np.linspace(-3.0, 3.0, 121)

    def __init__(self, bits: int = 8, seed: int = 0, per_channel: bool = False) -> None:
        conv_three_ways(bits, seed, per_channel)  # validates the arguments before any widget exists
        controls = {
            "bits": int_slider("bits", int(bits), 2, 8),
            "seed": int_slider("seed", int(seed), 0, 9),
            "per_channel": widgets.Checkbox(bool(per_channel), description="per-channel weights", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_sc, self.ax_diff, self.ax_err = fig.subplots(1, 3)
        ax = self.ax_sc
        self.diag = ax.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)[0]
        self.scatter = ax.scatter([], [], s=2, color=INT_COLOR, alpha=0.4)
        ax.set(xlabel="float reference y", ylabel="integer output S3 (q − Z3)", title="integer vs float")
        ax = self.ax_diff
        self.bars = ax.bar(self.DIFF_VALUES, np.ones(self.DIFF_VALUES.size), width=0.7, color=INT_COLOR)
        ax.set(yscale="log", xticks=self.DIFF_VALUES, xlabel="q_int − q_fake (LSB)", ylabel="outputs",
               title="integer kernel vs fake-quant")
        ax.minorticks_off()
        self.bar_text = [ax.text(v, 1.0, "", ha="center", va="bottom", fontsize="small") for v in self.DIFF_VALUES]
        ax = self.ax_err
        zeros = np.zeros(self.ERR_EDGES.size - 1)
        self.h_fake = ax.stairs(zeros, self.ERR_EDGES, color=FAKE_COLOR, lw=1.5, label="fake-quant")
        self.h_int = ax.stairs(zeros, self.ERR_EDGES, color=INT_COLOR, lw=1.0, ls="--", label="integer")
        ax.set(xlabel="q − (y_float/S3 + Z3)  (LSB)", ylabel="outputs", title="error vs float reference")
        ax.legend(loc="upper left")

    def render(self, bits: int, seed: int, per_channel: bool) -> dict:
        r = conv_three_ways(bits, seed, per_channel)
        y = r.y_float.ravel()
        yq = r.out_qp.scale * (r.q_int.ravel().astype(np.float64) - r.out_qp.zero_point)
        lo, hi = float(min(y.min(), yq.min())), float(max(y.max(), yq.max()))
        pad = 0.05 * (hi - lo)
        self.scatter.set_offsets(np.column_stack([y, yq]))
        self.diag.set_data([lo, hi], [lo, hi])
        set_limits(self.ax_sc, "x", lo - pad, hi + pad)
        set_limits(self.ax_sc, "y", lo - pad, hi + pad)
        d = r.int_minus_fake.ravel()
        counts = np.array([np.count_nonzero(d == v) for v in self.DIFF_VALUES])
        for bar, c, t in zip(self.bars, counts, self.bar_text):
            bar.set_height(max(int(c), 1e-3))  # 0 would vanish on the log axis anyway
            t.set_position((t.get_position()[0], max(int(c), 1)))
            t.set_text(f"{100 * c / d.size:.2f}%" if c else "")
        set_limits(self.ax_diff, "y", 0.5, d.size * 3)
        e_fake = np.clip(r.err_fake.ravel(), self.ERR_EDGES[0], self.ERR_EDGES[-1])
        e_int = np.clip(r.err_int.ravel(), self.ERR_EDGES[0], self.ERR_EDGES[-1])
        h_fake = np.histogram(e_fake, self.ERR_EDGES)[0]
        h_int = np.histogram(e_int, self.ERR_EDGES)[0]
        self.h_fake.set_data(h_fake, self.ERR_EDGES)
        self.h_int.set_data(h_int, self.ERR_EDGES)
        set_limits(self.ax_err, "y", 0, 1.1 * max(h_fake.max(), h_int.max()))
        return r.summary()


def conv_explorer(**kwargs: Any) -> ConvExplorer:
    """Notebook 08, part 2: sliders for bits and seed, a switch for per-channel weights."""
    return ConvExplorer(**kwargs)


class RoundingExplorer(Explorer):
    """The last rounding of x * M three ways: error histograms, differences, and the bias of each."""

    title_text = "Rounding x·M: half-away vs half-up vs single rounding"
    figsize = (12.0, 3.5)
    ERR_EDGES = np.linspace(-0.75, 0.75, 61)

    def __init__(self, multiplier: float = 0.1234, spread: float = 1000.0, positive: bool = False,
                 seed: int = 0, n: int = 200_000) -> None:
        rounding_comparison(multiplier, spread, positive=positive, seed=seed, n=n)  # validate first
        self.n = n
        controls = {
            "multiplier": widgets.FloatLogSlider(
                value=multiplier, base=10, min=-3.0, max=np.log10(0.95), step=0.001, description="M",
                readout_format=".4g", style={"description_width": "initial"}, layout=widgets.Layout(width="360px"),
            ),
            "spread": widgets.FloatLogSlider(
                value=spread, base=10, min=1.0, max=5.0, step=0.01, description="accumulator spread σ",
                readout_format=".4g", style={"description_width": "initial"}, layout=widgets.Layout(width="360px"),
            ),
            "positive": widgets.Checkbox(bool(positive), description="positive accumulators only", indent=False),
            "seed": int_slider("seed", int(seed), 0, 9),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_h, self.ax_d, self.ax_m = fig.subplots(1, 3)
        zeros = np.zeros(self.ERR_EDGES.size - 1)
        self.hists = {
            mode: self.ax_h.stairs(zeros, self.ERR_EDGES, color=ROUNDING_COLORS[mode], lw=1.2, label=label)
            for mode, label in ROUNDING_LABELS.items()
        }
        self.ax_h.set(xlabel="result − x·M (LSB)", ylabel="outputs", title="error of each rounding")
        self.ax_h.legend(loc="lower center")
        vals = np.array([-1, 0, 1])
        self.diff_bars = {}
        for off, mode in ((-0.18, "double_half_up"), (0.18, "single")):
            self.diff_bars[mode] = self.ax_d.bar(vals + off, np.ones(3), width=0.34, color=ROUNDING_COLORS[mode],
                                                 label=ROUNDING_LABELS[mode])
        self.ax_d.set(yscale="log", xticks=vals, xlabel="result − half-away result (LSB)", ylabel="outputs",
                      title="differences from half-away")
        self.ax_d.minorticks_off()
        self.ax_d.legend(loc="upper left")
        modes = list(ROUNDING_LABELS)
        self.mean_bars = self.ax_m.bar(range(3), np.zeros(3), color=[ROUNDING_COLORS[m] for m in modes])
        self.ax_m.axhline(0.0, color="k", lw=0.6)
        self.mean_err = self.ax_m.errorbar(range(3), np.zeros(3), yerr=np.zeros(3), fmt="none", ecolor="k",
                                           capsize=4)  # updated in place by render (new artists: a full redraw)
        self.ax_m.set(xticks=range(3), xticklabels=["half-away", "half-up", "single"], ylabel="mean error (LSB)",
                      title="bias: mean(result − x·M) ± 2 s.e.")

    def render(self, multiplier: float, spread: float, positive: bool, seed: int) -> dict:
        rc = rounding_comparison(multiplier, spread, positive=positive, seed=seed, n=self.n)
        top = 1
        for mode, art in self.hists.items():
            h = np.histogram(np.clip(rc.errors[mode], self.ERR_EDGES[0], self.ERR_EDGES[-1]), self.ERR_EDGES)[0]
            art.set_data(h, self.ERR_EDGES)
            top = max(top, int(h.max()))
        set_limits(self.ax_h, "y", 0, 1.15 * top)
        for mode, bars in self.diff_bars.items():
            d = rc.differs(mode)
            for bar, v in zip(bars, (-1, 0, 1)):
                bar.set_height(max(int(np.count_nonzero(d == v)), 1e-3))
        set_limits(self.ax_d, "y", 0.5, rc.x.size * 40)  # room above the bars for the legend
        means = [rc.mean_error(m) for m in ROUNDING_LABELS]
        ses = [rc.standard_error(m) for m in ROUNDING_LABELS]
        for bar, m in zip(self.mean_bars, means):
            bar.set_height(m)
        low, high = np.subtract(means, 2 * np.asarray(ses)), np.add(means, 2 * np.asarray(ses))  # (3,) float
        _, (cap_low, cap_high), (bars,) = self.mean_err.lines  # errorbar's caps and its vertical bars
        cap_low.set_data(range(3), low)
        cap_high.set_data(range(3), high)
        bars.set_segments([[(i, lo), (i, hi)] for i, (lo, hi) in enumerate(zip(low, high))])
        lim = max(max(abs(v) + 2 * s for v, s in zip(means, ses)), 0.01) * 1.2
        set_limits(self.ax_m, "y", -lim, lim)
        neg_ties = rc.tie & (rc.x < 0)
        out: dict[str, Any] = {
            "M": rc.multiplier, "M0": rc.m0, "shift": rc.shift, "accumulators": int(rc.x.size),
            "ties of the 2nd rounding (fraction)": float(np.mean(rc.tie)),
            "negative ties (fraction)": float(np.mean(neg_ties)),
        }
        for mode, label in ROUNDING_LABELS.items():
            out[f"mean error, {label}"] = rc.mean_error(mode)
        out["standard error of a mean"] = ses[0]
        for mode, label in ROUNDING_LABELS.items():
            out[f"max |error|, {label}"] = float(np.abs(rc.errors[mode]).max())
        out["half-up ≠ half-away (fraction)"] = float(np.mean(rc.differs("double_half_up") != 0))
        out["single ≠ half-away (fraction)"] = float(np.mean(rc.differs("single") != 0))
        return out


def rounding_explorer(**kwargs: Any) -> RoundingExplorer:
    """Notebook 08, part 3: sliders for M, the accumulator spread and the seed; a positive-only switch."""
    return RoundingExplorer(**kwargs)
