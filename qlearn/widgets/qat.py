"""Notebook 06: quantization-aware training (QAT) -- the sliders and figures.

Three explorers over what ``qlearn.lessons.qat`` computes: the fake-quant staircase and its
straight-through gradient (Eqs. 50-52), an EMA activation range over the first training steps with a
quantization delay (Eqs. 55-56), and PTQ against QAT accuracy per weight bit width (paper Sec. 3).
The computations (``ste_curve``, ``ema_trace``, ``ptq_vs_qat``, ...) are re-exported here for the
notebook's import cell.
"""
from __future__ import annotations

import numbers
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn._checks import check_bits8
from qlearn.lessons.lesson_model import LessonModel, lesson_model
from qlearn.lessons.qat import (
    SIGNALS,
    activation_ranges_during_training,
    ema_trace,
    ptq_vs_qat,
    ste_curve,
)
from qlearn.qparams import qparams_from_range
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider, slider
from qlearn.widgets.limits import set_limits

__all__ = ["STEExplorer", "ste_explorer", "EMAExplorer", "ema_explorer", "PTQvsQATExplorer", "ptq_vs_qat_explorer"]

STE_COLOR = "#1f77b4"
PTQ_COLOR = "#d62728"
QAT_COLOR = "#2ca02c"
FINETUNE_COLOR = "#9467bd"


class STEExplorer(Explorer):
    """Notebook 06, part 1: the fake-quant staircase and the gradient the STE uses instead of its own."""

    title_text = "Fake quantization forward, straight-through gradient backward"
    figsize = (11.0, 3.5)
    X_SPAN = 2.5

    def __init__(self, bits: int = 3, lo: float = -1.0, hi: float = 1.0, n: int = 2001, seed: int = 0) -> None:
        bits = check_bits8(bits)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 11:
            raise ValueError(f"n must be an integer >= 11 (points on the x axis), got {n!r}")
        self.x = np.linspace(-self.X_SPAN, self.X_SPAN, int(n))  # (n,) float64
        self.sample = np.random.default_rng(seed).standard_normal(4096)  # activations ~ N(0, 1)
        controls = {
            "bits": int_slider("bits", bits, 2, 8),
            "lo": slider("range lo", lo, -2.0, 0.0, 0.05),
            "hi": slider("range hi", hi, 0.05, 2.0, 0.05),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_f, self.ax_g = fig.subplots(1, 2)
        for ax in (self.ax_f, self.ax_g):
            ax.axvspan(0, 0, color="#cfe2f3", label="representable range")
        self.span_f = self.ax_f.patches[-1]
        self.span_g = self.ax_g.patches[-1]
        self.ax_f.plot(self.x, self.x, ":", color="gray", lw=1, label="identity x")
        (self.stairs,) = self.ax_f.plot([], [], color=STE_COLOR, lw=1.4, label="x_hat = fake_quant(x) (Eq. 50)")
        self.ax_f.set(xlim=(-self.X_SPAN, self.X_SPAN), ylim=(-self.X_SPAN, self.X_SPAN), xlabel="x", ylabel="x_hat",
                      title="forward: a staircase")
        self.ax_f.legend(loc="upper left")
        self.ax_g.axhline(0, color="gray", lw=3, alpha=0.35, label="true derivative (0 almost everywhere)")
        (self.grad_line,) = self.ax_g.plot([], [], color=STE_COLOR, lw=1.6, label="STE gradient (Eq. 52)")
        self.ax_g.set(xlim=(-self.X_SPAN, self.X_SPAN), ylim=(-0.15, 1.35), xlabel="x", ylabel="d x_hat / d x",
                      title="backward: 1 inside the range, 0 outside")
        self.ax_g.legend(loc="upper left")

    def render(self, bits: int, lo: float, hi: float) -> dict:
        if not lo < hi:  # both sliders at 0 cannot happen (hi >= 0.05), kept for safety
            hi = lo + 0.05
        curve = ste_curve(self.x, bits, lo, hi)
        self.stairs.set_data(curve.x, curve.x_hat)
        self.grad_line.set_data(curve.x, curve.grad)
        for span in (self.span_f, self.span_g):
            span.set_x(curve.lo_real)
            span.set_width(curve.hi_real - curve.lo_real)
        s = ste_curve(self.sample, bits, lo, hi)
        inside = s.grad > 0
        err = s.x_hat - s.x
        qp = curve.qp
        return {
            "scale S": float(qp.scale),
            "zero point Z": int(qp.zero_point),
            "codes qmin..qmax": f"{qp.qmin}..{qp.qmax}",
            "grid levels": int(qp.qmax - qp.qmin + 1),
            "representable lo = S(qmin-Z)": curve.lo_real,
            "representable hi = S(qmax-Z)": curve.hi_real,
            "N(0,1) sample: share with gradient 1": float(np.mean(inside)),
            "N(0,1) sample: share clipped (gradient 0)": float(np.mean(~inside)),
            "N(0,1) sample: MSE": float(np.mean(err**2)),
            "N(0,1) sample: max |error| inside (<= S/2)": float(np.abs(err[inside]).max()) if inside.any() else 0.0,
        }


def ste_explorer(**kwargs: Any) -> STEExplorer:
    """Notebook 06: slide the bits and the range; see the staircase and its straight-through gradient."""
    return STEExplorer(**kwargs)


DECAYS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


class EMAExplorer(Explorer):
    """Notebook 06, part 2: an EMA range tracking the batch min/max of a network that is learning."""

    title_text = "Activation ranges during training: EMA of batch min/max, and the quantization delay"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, decay: float = 0.9, delay: int = 20,
                 signal: str = "logits (classifier output)") -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        self.stream = activation_ranges_during_training(self.lesson)
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {list(SIGNALS)}, got {signal!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        steps = len(next(iter(self.stream.values())))
        controls = {
            "decay": widgets.SelectionSlider(options=list(DECAYS), value=decay, description="EMA decay",
                                             style={"description_width": "initial"}),
            "delay": int_slider("quant delay (steps)", delay, 0, steps - 1),
            "signal": widgets.Dropdown(options=list(SIGNALS), value=signal, description="activation",
                                       layout=widgets.Layout(width="330px")),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_r, self.ax_s = fig.subplots(1, 2, width_ratios=[1.6, 1.0])
        self.delay_span = self.ax_r.axvspan(0, 1, color="#eeeeee", label="observing only (delay)")
        (self.b_hi,) = self.ax_r.plot([], [], ".", color="gray", ms=3, label="batch min / max")
        (self.b_lo,) = self.ax_r.plot([], [], ".", color="gray", ms=3)
        (self.e_hi,) = self.ax_r.plot([], [], color=STE_COLOR, lw=1.5, label="EMA range (Eq. 55)")
        (self.e_lo,) = self.ax_r.plot([], [], color=STE_COLOR, lw=1.5)
        (self.clip,) = self.ax_r.plot([], [], "x", color=PTQ_COLOR, ms=5, label="batch extreme clipped (quantized step)")
        self.ax_r.set(xlabel="training step", ylabel="activation value", title="range seen by the quantizer")
        self.ax_r.legend(loc="upper left")
        self.s_delay = self.ax_s.axvspan(0, 1, color="#eeeeee")
        (self.s_ema,) = self.ax_s.plot([], [], color=STE_COLOR, lw=1.5, label="S of the EMA range")
        (self.s_batch,) = self.ax_s.plot([], [], ".", color="gray", ms=3, label="S of the batch's own min/max")
        self.ax_s.set(xlabel="training step", ylabel="scale S (8 bits)", yscale="log", title="the quantization step")
        self.ax_s.legend(loc="upper right")

    def render(self, decay: float, delay: int, signal: str) -> dict:
        module = SIGNALS[signal]
        tr = ema_trace(self.stream[f"{module} min"], self.stream[f"{module} max"], decay, delay)
        t = np.arange(1, tr.steps + 1)
        self.delay_span.set_x(0.5)
        self.delay_span.set_width(max(delay, 0))
        self.s_delay.set_x(0.5)
        self.s_delay.set_width(max(delay, 0))
        self.b_hi.set_data(t, tr.batch_hi)
        self.b_lo.set_data(t, tr.batch_lo)
        self.e_hi.set_data(t, tr.ema_hi)
        self.e_lo.set_data(t, tr.ema_lo)
        clip = tr.clipped
        tol = 1e-6 * np.maximum(np.abs(tr.ema_hi), 1.0)
        hi_out = clip & (tr.batch_hi > tr.ema_hi + tol)  # mark the extreme that left the range
        lo_out = clip & (tr.batch_lo < tr.ema_lo - tol)
        self.clip.set_data(np.concatenate([t[hi_out], t[lo_out]]),
                           np.concatenate([tr.batch_hi[hi_out], tr.batch_lo[lo_out]]))
        vals = np.concatenate([tr.batch_lo, tr.batch_hi, tr.ema_lo, tr.ema_hi])
        pad = 0.05 * float(vals.max() - vals.min())
        self.ax_r.set_xlim(0, tr.steps + 1)
        set_limits(self.ax_r, "y", float(vals.min()) - pad, float(vals.max()) + pad)
        batch_s = np.array([qparams_from_range(a, b, 8).scale for a, b in zip(tr.batch_lo, tr.batch_hi)])
        self.s_ema.set_data(t, tr.scale)
        self.s_batch.set_data(t, batch_s)
        both = np.concatenate([tr.scale, batch_s])
        self.ax_s.set_xlim(0, tr.steps + 1)
        set_limits(self.ax_s, "y", both.min() / 1.5, both.max() * 1.5)
        first = tr.first_quantized_step
        after = tr.quantized
        worst = float(np.max(tr.batch_hi[after] / np.maximum(tr.ema_hi[after], 1e-12))) if after.any() else float("nan")
        i = (first or 1) - 1
        return {
            "EMA decay d": float(decay),
            "time constant 1/(1-d) (steps)": 1.0 / (1.0 - float(decay)),
            "quantization delay (steps)": int(delay),
            "first quantized step": first if first is not None else "none",
            "EMA range at that step": f"[{tr.ema_lo[i]:.3g}, {tr.ema_hi[i]:.3g}]",
            "batch range at that step": f"[{tr.batch_lo[i]:.3g}, {tr.batch_hi[i]:.3g}]",
            "quantized steps that clip the batch (min or max)": int(clip.sum()),
            "quantized steps": int(after.sum()),
            "worst batch max / EMA hi (quantized steps)": worst,
            "final EMA range": f"[{tr.ema_lo[-1]:.3g}, {tr.ema_hi[-1]:.3g}]",
            "final batch range": f"[{tr.batch_lo[-1]:.3g}, {tr.batch_hi[-1]:.3g}]",
        }


def ema_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> EMAExplorer:
    """Notebook 06: the EMA range of a real activation over the first training steps; slide decay and delay.

    The recorded stream (a few epochs of training from scratch, ~3 s) is cached beside the lesson model.
    """
    return EMAExplorer(lesson, **kwargs)


class PTQvsQATExplorer(Explorer):
    """Notebook 06, part 3: accuracy of PTQ and QAT at each weight bit width (cached runs)."""

    title_text = "Post-training quantization vs quantization-aware training (lesson model, digits)"
    figsize = (11.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, bits: int = 3, per_channel: bool = False) -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        self.results = ptq_vs_qat(self.lesson)
        options = sorted(int(b) for b in self.results["bits"])
        if bits not in options:
            raise ValueError(f"bits must be one of the computed bit widths {options}, got {bits!r}")
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
        controls = {
            "bits": widgets.SelectionSlider(options=options, value=bits, description="weight bits",
                                            style={"description_width": "initial"}),
            "per_channel": widgets.Checkbox(per_channel, description="per-channel weights", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_c, self.ax_b = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
        b = self.results["bits"]
        fl = 100 * float(self.results["float"][0])
        self.ax_c.axhline(fl, color="gray", ls=":", label="float")
        (self.l_ptq,) = self.ax_c.plot(b, b * 0, "o--", color=PTQ_COLOR, label="PTQ")
        (self.l_ft,) = self.ax_c.plot(b, b * 0, "s:", color=FINETUNE_COLOR, ms=4, label="float fine-tune, then PTQ")
        (self.l_qat,) = self.ax_c.plot(b, b * 0, "o-", color=QAT_COLOR, label="QAT fine-tune")
        self.v_bits = self.ax_c.axvline(4, color="gray", lw=0.8)
        self.ax_c.set(xlabel="weight bits (activations 8 bits)", ylabel="test accuracy (%)", ylim=(0, 102),
                      xticks=b, title="accuracy against weight bit width")
        self.ax_c.legend(loc="lower right")
        labels = ["float", "PTQ", "fine-tune\n+ PTQ", "QAT"]
        self.bars = self.ax_b.bar(range(4), np.ones(4), color=["gray", PTQ_COLOR, FINETUNE_COLOR, QAT_COLOR])
        self.bar_text = [self.ax_b.text(i, 0, "", ha="center", va="bottom", fontsize="medium") for i in range(4)]
        self.ax_b.set(xticks=range(4), xticklabels=labels, ylabel="test accuracy (%)", ylim=(0, 110))

    def render(self, bits: int, per_channel: bool) -> dict:
        r = self.results
        scheme = "per-channel" if per_channel else "per-tensor"
        ptq, ft, qat = (100 * r[f"{k} {scheme}"] for k in ("ptq", "finetuned", "qat"))
        self.l_ptq.set_ydata(ptq)
        self.l_ft.set_ydata(ft)
        self.l_qat.set_ydata(qat)
        self.v_bits.set_xdata([bits, bits])
        i = int(np.flatnonzero(r["bits"] == bits)[0])
        fl = 100 * float(r["float"][0])
        vals = [fl, float(ptq[i]), float(ft[i]), float(qat[i])]
        for bar, text, v in zip(self.bars, self.bar_text, vals):
            bar.set_height(v)
            text.set_y(v + 1)
            text.set_text(f"{v:.1f}")
        self.ax_b.set_title(f"{bits}-bit weights, {scheme}")
        lost = fl - vals[1]
        recovered = (vals[3] - vals[1]) / lost if lost > 0.5 else float("nan")
        return {
            "weight bits": int(bits),
            "weight scales": scheme,
            "float accuracy": fl / 100,
            "PTQ accuracy": vals[1] / 100,
            "float fine-tune + PTQ accuracy": vals[2] / 100,
            "QAT accuracy": vals[3] / 100,
            "PTQ loss (points)": lost,
            "share of the PTQ loss QAT recovers": recovered,
            "QAT minus (fine-tune + PTQ) (points)": vals[3] - vals[2],
            "QAT steps per run": int(r["qat steps"][0]),
        }


def ptq_vs_qat_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> PTQvsQATExplorer:
    """Notebook 06: PTQ vs QAT accuracy at 8, 4, 3, 2 weight bits (computed once, ~20 s, then cached)."""
    return PTQvsQATExplorer(lesson, **kwargs)
