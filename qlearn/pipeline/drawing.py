"""The pipeline's three figures, drawn with matplotlib on the Agg canvas (no pyplot, no global backend).

``accuracy_vs_bits.png`` (PTQ recipes, QAT and the integer engine against weight bits),
``weight_ranges.png`` (per-channel ranges of the folded weights, Eq. 41) and ``logits.png``
(float vs fake-quant vs integer-engine logits). Only the report stage imports this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["FIGURES", "figure_accuracy_vs_bits", "figure_weight_ranges", "figure_logits"]

#: The figure files a run writes (``report['figures']``), in this order.
FIGURES = ("accuracy_vs_bits.png", "weight_ranges.png", "logits.png")


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | None) -> Figure:
    if path is not None:
        fig.savefig(path)
    return fig


def figure_accuracy_vs_bits(report: dict, path: Path | None = None) -> Figure:
    """PTQ methods, QAT and the integer engine against weight bits; saved to ``path`` if given."""
    fig = _figure()
    ax = fig.add_subplot()
    styles = {"per_tensor_minmax": "o--", "per_tensor_mse": "s--", "per_channel_minmax": "o-", "per_channel_mse": "s-"}
    for method, accs in report["ptq"].items():
        bits = sorted(int(b) for b in accs)
        ax.plot(bits, [100 * accs[str(b)] for b in bits], styles.get(method, ".-"), label=f"PTQ {method.replace('_', ' ')}")
    if report.get("qat"):
        bits = sorted(int(b) for b in report["qat"])
        ax.plot(bits, [100 * report["qat"][str(b)] for b in bits], "D-", color="black", lw=2, ms=8, label="QAT (per-channel)")
    if report.get("integer"):
        ax.plot([8], [100 * report["integer"]["acc"]], "*", color="crimson", ms=16, label="integer engine (8-bit QAT)")
    ax.axhline(100 * report["float_acc"], color="gray", ls=":", label="float")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted({int(b) for accs in report["ptq"].values() for b in accs}))
    ax.invert_xaxis()
    ax.set_title(f"{report['model']} on {report['dataset']}: accuracy vs weight bits")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def figure_weight_ranges(ranges: list[dict], path: Path | None = None) -> Figure:
    """Folded weight range per channel of the widest-spread layer, and the spread of every layer."""
    fig = _figure(9.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    worst = max(ranges, key=lambda r: r["spread"])
    lo, hi = np.array(worst["min"]), np.array(worst["max"])
    ch = np.arange(len(lo))
    ax1.vlines(ch, lo, hi, lw=3, color="tab:blue", label="per-channel range")
    bound = max(abs(lo.min()), abs(hi.max()))
    ax1.axhline(bound, color="tab:red", ls="--", lw=1, label="per-tensor range (symmetric)")
    ax1.axhline(-bound, color="tab:red", ls="--", lw=1)
    ax1.set_xlabel("output channel")
    ax1.set_ylabel("folded weight value")
    ax1.set_title(f"{worst['layer']}: folded weights per channel (spread x{worst['spread']:.0f})", fontsize=9)
    ax1.legend(fontsize=8, loc="upper left")
    names = [r["layer"].replace("features.", "f.").replace(".layers", "") for r in ranges]
    colors = ["tab:orange" if r["depthwise"] else "tab:blue" for r in ranges]
    ax2.barh(np.arange(len(ranges)), [r["spread"] for r in ranges], color=colors)
    ax2.set_yticks(np.arange(len(ranges)), names, fontsize=6)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("max/min channel |w| (orange: depthwise)")
    ax2.set_title("spread of channel ranges per layer", fontsize=9)
    return _save(fig, path)


def figure_logits(
    float_logits: np.ndarray, fq_logits: np.ndarray, int_logits: np.ndarray, path: Path | None = None
) -> Figure:
    """Scatter of float vs fake-quant logits, and fake-quant vs integer-engine logits."""
    fig = _figure(9.0, 4.0)
    axes = fig.subplots(1, 2)
    pairs = [(float_logits, fq_logits, "float logit", "fake-quant logit (8-bit QAT)"),
             (fq_logits, int_logits, "fake-quant logit (8-bit QAT)", "integer-engine logit")]
    for ax, (a, b, xl, yl) in zip(axes, pairs):
        ax.scatter(a.ravel(), b.ravel(), s=3, alpha=0.4)
        lim = [min(a.min(), b.min()), max(a.max(), b.max())]
        ax.plot(lim, lim, color="gray", lw=1, ls=":")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    axes[0].set_title("QAT moves the logits: it is a fine-tuned model", fontsize=9)
    axes[1].set_title("integer engine vs fake-quant: on the diagonal", fontsize=9)
    return _save(fig, path)

