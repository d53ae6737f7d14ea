"""Notebook 09: the whole paper on one small MobileNet -- float -> fold BN -> PTQ -> QAT -> integer engine.

The explorers of notebook 09; what they show is computed in ``qlearn.lessons.mobilenet_pipeline``
(the cached ``--quick`` run, results table, logits and layer-by-layer agreement) from a run of
``qlearn.pipeline``. Three views:

* ``accuracy_figure`` / ``weight_ranges_figure`` / ``logits_figure``: the run's figures
  (``qlearn.pipeline.drawing``), shown inline with ``show_figure``;
* ``pipeline_explorer``: a weight-bits slider over the report's accuracy curves, with the per-tensor
  grid drawn over the folded weights of the layer whose channel ranges differ most;
* ``integer_layer_explorer``: a layer slider through the integer model -- each layer's multipliers,
  zero points and clamp, and its integer output against the fake-quant model's in output LSBs, both
  end to end (differences compound through the network) and for the layer alone (fed the fake-quant
  model's own input codes: what the layer's fixed-point arithmetic itself costs, Eq. 31).

``pipeline_runner`` is a "Re-run pipeline" button (model, seed) that re-runs the quick pipeline with a
progress bar and refreshes the explorers it is linked to.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib as mpl
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qlearn.lessons.mobilenet_pipeline import (
    check_run,
    folded_ranges,
    layer_agreement,
    logit_comparison,
    multipliers,
    pipeline_run,
)
from qlearn.models import MODELS
from qlearn.pipeline.config import PipelineConfig
from qlearn.pipeline.drawing import figure_accuracy_vs_bits, figure_logits, figure_weight_ranges
from qlearn.pipeline.runs import PipelineRun
from qlearn.widgets.base import Explorer
from qlearn.widgets.controls import int_slider
from qlearn.widgets.limits import set_limits

__all__ = [
    "show_figure",
    "accuracy_figure",
    "weight_ranges_figure",
    "logits_figure",
    "PipelineExplorer",
    "pipeline_explorer",
    "IntegerLayerExplorer",
    "integer_layer_explorer",
    "PipelineRunner",
    "pipeline_runner",
]

METHOD_LABELS = {  # report key -> label; colors as notebook 03 (per-tensor red, per-channel green)
    "per_tensor_minmax": ("PTQ per-tensor, min/max", "#d62728", "o--"),
    "per_tensor_mse": ("PTQ per-tensor, MSE", "#ff9896", "s--"),
    "per_channel_minmax": ("PTQ per-channel, min/max", "#2ca02c", "o-"),
    "per_channel_mse": ("PTQ per-channel, MSE", "#98df8a", "s-"),
}
QAT_COLOR = "black"
INTEGER_COLOR = "crimson"


# ---------------------------------------------------------------------------------- static figures
def show_figure(fig: Figure) -> Any:
    """A matplotlib Figure as an inline PNG (``IPython.display.Image``), without pyplot."""
    from IPython.display import Image

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return Image(data=buf.getvalue(), format="png")


def accuracy_figure(run: PipelineRun) -> Figure:
    """The report's accuracy vs weight bits (``qlearn.pipeline.drawing.figure_accuracy_vs_bits``), not saved."""
    return figure_accuracy_vs_bits(check_run(run).report)


def weight_ranges_figure(run: PipelineRun) -> Figure:
    """Per-channel ranges of the folded float weights (Eq. 41; ``figure_weight_ranges``)."""
    return figure_weight_ranges(folded_ranges(check_run(run)))


def logits_figure(run: PipelineRun) -> Figure:
    """Float vs fake-quant vs integer-engine logits (``figure_logits``) on the compared test images."""
    lc = logit_comparison(check_run(run))
    return figure_logits(lc.float_logits, lc.fake_quant_logits, lc.integer_logits)




# ---------------------------------------------------------------------------------- explorer 1: bits
def _report_bits(report: dict) -> list[int]:
    return sorted({int(b) for accs in report["ptq"].values() for b in accs}, reverse=True)


class PipelineExplorer(Explorer):
    """Notebook 09, part 1: slide the weight bits through the run's PTQ and QAT results.

    Left: test accuracy against weight bits for the four PTQ recipes, QAT and the integer engine,
    the chosen bit width marked. Right: the folded weights of the layer whose channel ranges differ
    most, one bar per output channel (sorted by range), with the per-tensor grid at the chosen bits
    (red lines, S = max|w| / (2^(b-1) - 1), Eq. 53) and the narrowest channel's own per-channel grid
    (green ticks).
    """

    title_text = "The pipeline's results: accuracy against weight bits, and the grid they buy"
    figsize = (12.0, 3.8)

    def __init__(self, run: PipelineRun | None = None, bits: int = 8) -> None:
        self._frozen = False
        self._load(pipeline_run() if run is None else run)
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in self.bits_options:
            raise ValueError(f"bits must be one of the run's weight bit widths {self.bits_options}, got {bits!r}")
        controls = {
            "bits": widgets.SelectionSlider(options=self.bits_options, value=bits, description="weight bits",
                                            style={"description_width": "initial"}),
        }
        super().__init__(controls)

    def _load(self, run: PipelineRun) -> None:
        self.run = check_run(run)
        self.report = run.report
        self.bits_options = _report_bits(self.report)
        ranges = folded_ranges(run)
        self.range_layer = max(ranges, key=lambda r: r["spread"])
        lo, hi = np.array(self.range_layer["min"]), np.array(self.range_layer["max"])
        absmax = np.maximum(np.abs(lo), np.abs(hi))  # (C,) max |w_fold| per output channel
        order = np.argsort(-absmax, kind="stable")
        self.ch_lo, self.ch_hi, self.ch_absmax = lo[order], hi[order], absmax[order]

    def _on_change(self, change: dict) -> None:
        if not self._frozen:
            super()._on_change(change)

    def build(self, fig: Figure) -> None:
        rep = self.report
        self.ax_acc, self.ax_w = fig.subplots(1, 2, width_ratios=[1.1, 1.0])
        ax = self.ax_acc
        self.dots = {}
        for method, accs in rep["ptq"].items():
            label, color, style = METHOD_LABELS.get(method, (method, "gray", ".-"))
            b = sorted(int(k) for k in accs)
            ax.plot(b, [100 * accs[str(k)] for k in b], style, color=color, label=label, ms=4, lw=1.2)
            (self.dots[method],) = ax.plot([], [], "o", color=color, ms=10, mfc="none", mew=2)
        if rep.get("qat"):
            b = sorted(int(k) for k in rep["qat"])  # only the bit widths QAT was run at: markers, no line between
            ax.plot(b, [100 * rep["qat"][str(k)] for k in b], "D", color=QAT_COLOR, ms=7, label="QAT per-channel")
            (self.dots["qat"],) = ax.plot([], [], "D", color=QAT_COLOR, ms=12, mfc="none", mew=2)
        ax.plot([8], [100 * rep["integer"]["acc"]], "*", color=INTEGER_COLOR, ms=14, label="integer engine (8-bit QAT)")
        ax.axhline(100 * rep["float_acc"], color="gray", ls=":", label="float")
        self.v_bits = ax.axvline(8, color="gray", lw=0.8)
        ax.set(xlabel="weight bits", ylabel="test accuracy (%)", xticks=self.bits_options,
               title=f"{rep['model']} on {rep['dataset']} ({rep['n_test']} test images)")
        ax.invert_xaxis()
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
        # right: the folded weights of the widest-spread layer and the grids
        axw = self.ax_w
        c = np.arange(len(self.ch_lo))
        axw.vlines(c, self.ch_lo, self.ch_hi, lw=3, color="#3182bd", label="channel range (folded)", zorder=2)
        self.grid_t = LineCollection([], colors="#d62728", linewidths=0.6, label="per-tensor grid", zorder=1)
        self.grid_c = LineCollection([], colors="#2ca02c", linewidths=1.2, label="per-channel grid, narrowest channel",
                                     zorder=3)
        axw.add_collection(self.grid_t)
        axw.add_collection(self.grid_c)
        bound = float(self.ch_absmax.max())
        axw.set(xlim=(-1, len(c)), ylim=(-1.1 * bound, 1.1 * bound), xlabel="output channel (sorted by range)",
                ylabel="folded weight value",
                title=f"{self.range_layer['layer']}: channel ranges differ x{self.range_layer['spread']:.1f}")
        axw.legend(loc="lower right")

    def render(self, bits: int) -> dict:
        rep = self.report
        for method, dot in self.dots.items():
            accs = rep["qat"] if method == "qat" else rep["ptq"][method]
            dot.set_data(([bits], [100 * accs[str(bits)]]) if str(bits) in accs else ([], []))
        self.v_bits.set_xdata([bits, bits])
        # grids: symmetric narrow-range int weights, codes -(2^(b-1)-1) .. 2^(b-1)-1 (Eq. 53)
        qmax = 2 ** (bits - 1) - 1
        n = len(self.ch_lo)
        s_t = float(self.ch_absmax.max()) / qmax
        self.grid_t.set_segments([[(-1, k * s_t), (n, k * s_t)] for k in range(-qmax, qmax + 1)])
        self.grid_t.set_alpha(min(0.8, 12.0 / qmax))  # 255 lines at 8 bits: a light band, bars stay visible
        last = n - 1  # the narrowest channel, at the right end
        s_c = float(self.ch_absmax[last]) / qmax
        self.grid_c.set_segments([[(last - 0.45, k * s_c), (last + 0.45, k * s_c)] for k in range(-qmax, qmax + 1)])
        levels_t = 2 * int(np.floor(self.ch_absmax[last] / s_t + 1e-9)) + 1  # codes k with |k S| <= max|w_c|
        qat = rep.get("qat", {})
        accs = {m: rep["ptq"][m][str(bits)] for m in rep["ptq"]}
        return {
            "weight bits": bits,
            "float accuracy": rep["float_acc"],
            "PTQ per-tensor min/max": accs.get("per_tensor_minmax", float("nan")),
            "PTQ per-tensor MSE": accs.get("per_tensor_mse", float("nan")),
            "PTQ per-channel min/max": accs.get("per_channel_minmax", float("nan")),
            "PTQ per-channel MSE": accs.get("per_channel_mse", float("nan")),
            "QAT per-channel": (qat[str(bits)] if str(bits) in qat
                                else f"not run (QAT at {', '.join(sorted(qat, key=int, reverse=True))} bits)"),
            "integer engine (8-bit QAT)": rep["integer"]["acc"],
            f"{self.range_layer['layer']}: narrowest channel's levels, per-tensor": levels_t,
            f"{self.range_layer['layer']}: every channel's levels, per-channel": 2 * qmax + 1,
        }

    def set_run(self, run: PipelineRun) -> None:
        """Show another run (``pipeline_runner`` calls this after a re-run)."""
        self._frozen = True
        try:
            self._load(run)
            slider = self.controls["bits"]
            keep = slider.value if slider.value in self.bits_options else self.bits_options[0]
            slider.options = self.bits_options
            slider.value = keep
            _rebuild(self)
        finally:
            self._frozen = False
        self.update()


def _rebuild(explorer: Explorer) -> None:
    """Draw an explorer's figure from scratch (new data, maybe another number of layers or channels)."""
    explorer.fig.clear()
    explorer.fig.set_layout_engine("constrained")
    with mpl.rc_context(explorer._rc):  # the explorers' text sizes (qlearn.widgets.base.rc_display)
        explorer.build(explorer.fig)
    explorer._layout_done = False


def pipeline_explorer(run: PipelineRun | None = None, **kwargs: Any) -> PipelineExplorer:
    """Notebook 09: slide the weight bits through the quick run's PTQ / QAT results.

    Reads the cached quick run (``pipeline_run()``); with a cold cache it runs the quick pipeline once.
    """
    return PipelineExplorer(run, **kwargs)


def _span(v: np.ndarray, fmt: str) -> str:
    if v.size == 0:
        return "-"
    lo, hi = v.min(), v.max()
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)} .. {format(hi, fmt)}"


class IntegerLayerExplorer(Explorer):
    """Notebook 09, part 2: a layer slider through the converted integer model.

    Left: the layer's requantization multipliers M = M0 2^(shift-31) (Eqs. 22-23, 66), one per output
    channel. Middle: how many of its output codes differ from the fake-quant model's by 0, +-1, +-2 ...
    LSB, end to end and for the layer alone (Eq. 69). Right: the share of identical codes, layer by
    layer, both ways.
    """

    title_text = "Inside the integer model: multipliers, zero points, and integer vs fake-quant in LSBs"
    figsize = (12.0, 3.8)

    def __init__(self, run: PipelineRun | None = None, layer: int | str = 0) -> None:
        self._frozen = False
        self._load(pipeline_run() if run is None else run)
        controls = {"layer": int_slider("layer #", self._index(layer), 0, len(self.rows) - 1)}
        super().__init__(controls)

    def _load(self, run: PipelineRun) -> None:
        self.run = check_run(run)
        self.rows = layer_agreement(run)
        self.names = [r.name for r in self.rows]

    def _index(self, layer: int | str) -> int:
        if isinstance(layer, str):
            if layer not in self.names:
                raise ValueError(f"no integer layer named {layer!r}; layers: {self.names}")
            return self.names.index(layer)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(self.rows):
            raise ValueError(f"layer must be a layer name or an index 0..{len(self.rows) - 1}, got {layer!r}")
        return int(layer)

    def _on_change(self, change: dict) -> None:
        if not self._frozen:
            super()._on_change(change)

    def build(self, fig: Figure) -> None:
        self.ax_m, self.ax_d, self.ax_all = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.2])
        self.m_stairs = self.ax_m.stairs([1.0], [-0.5, 0.5], fill=True, color="#9e9ac8", baseline=1e-30)
        self.m_text = self.ax_m.text(0.5, 0.5, "", transform=self.ax_m.transAxes, ha="center", va="center", fontsize="medium")
        self.ax_m.set(yscale="log", xlabel="output channel", ylabel="M = M0 2^(shift-31)")
        self.d_e2e = self.ax_d.stairs([1.0], [-0.5, 0.5], color="#d62728", lw=2, label="end to end", baseline=None)
        self.d_alone = self.ax_d.stairs([1.0], [-0.5, 0.5], fill=True, color="#2ca02c", alpha=0.5, label="this layer alone")
        self.ax_d.set(yscale="log", xlabel="q_int - q_fake (output LSBs)", ylabel="share of output codes",
                      title="integer vs fake-quant, this layer")
        self.ax_d.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax_d.legend(loc="upper right")
        x = np.arange(len(self.rows))
        self.ax_all.plot(x, [100 * r.exact_end_to_end for r in self.rows], ".-", color="#d62728", label="end to end")
        self.ax_all.plot(x, [100 * r.exact_alone for r in self.rows], ".-", color="#2ca02c", label="layer alone")
        self.v_layer = self.ax_all.axvline(0, color="gray", lw=0.8)
        self.ax_all.set(xlabel="layer #", ylabel="identical codes (%)", title="every layer", ylim=(0, 102))
        self.ax_all.legend(loc="lower left")

    def render(self, layer: int) -> dict:
        row = self.rows[int(layer)]
        m, m0, shift = multipliers(row.layer)
        labels = ["a", "b", "out"] if row.kind == "add" else []  # an add: inputs a and b, then the output
        d = row.layer.describe()
        if m.size:
            self.m_stairs.set_data(m, np.arange(m.size + 1) - 0.5)
            self.m_stairs.set_visible(True)
            self.ax_m.set_xlim(-0.5, m.size - 0.5)
            set_limits(self.ax_m, "y", m.min() / 2.0, m.max() * 2.0)
            if labels:  # an add: one multiplier per input and one for the output (Eq. 33)
                self.ax_m.set_xticks(range(m.size), labels)
                self.ax_m.set_xlabel("multiplier of input a, input b, output")
            else:
                ticks = np.unique(np.linspace(0, m.size - 1, min(m.size, 6)).round().astype(int))
                self.ax_m.set_xticks(ticks, [str(t) for t in ticks])
                self.ax_m.set_xlabel("output channel")
            self.m_text.set_text("")
        else:
            self.m_stairs.set_visible(False)
            self.m_text.set_text("no multiplier:\nthe pool keeps its input's (S, Z)")
            self.ax_m.set_xticks([])
            self.ax_m.set_xlabel("")
        self.ax_m.set_title(f"{row.name} ({row.kind})", fontsize="medium")
        e2e, alone = row.diff_end_to_end.ravel(), row.diff_alone.ravel()
        k = max(2, int(max(np.abs(e2e).max(), np.abs(alone).max())))
        edges = np.arange(-k, k + 2) - 0.5
        total = float(e2e.size)
        h_e2e = np.bincount(e2e + k, minlength=2 * k + 1) / total
        h_alone = np.bincount(alone + k, minlength=2 * k + 1) / total
        floor = 0.3 / total  # draw empty bins below the axis (log scale)
        self.d_e2e.set_data(np.maximum(h_e2e, floor / 10), edges)
        self.d_alone.set_data(np.maximum(h_alone, floor / 10), edges)
        set_limits(self.ax_d, "x", -k - 0.5, k + 0.5)
        set_limits(self.ax_d, "y", floor, 2.0)
        self.v_layer.set_xdata([layer, layer])
        if d["kind"] == "add":
            zin = f"{d['a_zp']}, {d['b_zp']}"
        else:
            zin = str(d["in_zp"])
        return {
            "layer": f"{layer}: {row.name}",
            "kind": row.kind,
            "input zero point(s)": zin,
            "output scale S3": float(d["out_scale"]),
            "output zero point Z3": int(d["out_zp"]),
            "clamp [act_min, act_max]": f"[{d['clamp'][0]}, {d['clamp'][1]}]",
            "M = M0 2^(shift-31)": _span(m, ".4g"),
            "M0 (int32)": _span(m0, "d"),
            "shift": _span(shift, "d"),
            "output codes compared": int(e2e.size),
            "identical codes, end to end": row.exact_end_to_end,
            "max |q_int - q_fake|, end to end (LSB)": row.max_lsb_end_to_end,
            "identical codes, this layer alone": row.exact_alone,
            "max |q_int - q_fake|, this layer alone (LSB)": row.max_lsb_alone,
        }

    def set_run(self, run: PipelineRun) -> None:
        """Show another run (``pipeline_runner`` calls this after a re-run)."""
        self._frozen = True
        try:
            self._load(run)
            slider = self.controls["layer"]
            slider.max = len(self.rows) - 1
            slider.value = min(slider.value, slider.max)
            _rebuild(self)
        finally:
            self._frozen = False
        self.update()


def integer_layer_explorer(run: PipelineRun | None = None, **kwargs: Any) -> IntegerLayerExplorer:
    """Notebook 09: step through the integer model's layers (the cached quick run's 8-bit QAT model)."""
    return IntegerLayerExplorer(run, **kwargs)


# ---------------------------------------------------------------------------------- re-run button
class PipelineRunner(widgets.VBox):
    """"Re-run pipeline": model, seed and a button; runs the quick pipeline with a progress bar.

    ``run(rerun=True)`` is what the button does: it replaces the cached run of that model and seed,
    loads it, prints the headline numbers and hands the new run to every linked explorer (``set_run``).
    """

    def __init__(self, explorers: tuple[Explorer, ...] = (), *, model: str = "mobilenet_v2", seed: int = 0,
                 directory: str | Path | None = None, config: PipelineConfig | None = None) -> None:
        for e in explorers:
            if not hasattr(e, "set_run"):
                raise TypeError(f"{type(e).__name__} cannot show another run (it has no set_run)")
        self.explorers = tuple(explorers)
        self.directory, self.config = directory, config
        self.result: PipelineRun | None = None
        self.model = widgets.Dropdown(options=sorted(MODELS), value=model, description="model")
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=10_000, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.button = widgets.Button(description="Re-run pipeline", button_style="warning", icon="refresh")
        self.output = widgets.Output()
        self.button.on_click(lambda _: self.run(rerun=True))
        super().__init__([widgets.HBox([self.model, self.seed, self.button]), self.output])

    def run(self, *, rerun: bool = True) -> PipelineRun:
        self.button.disabled = True
        self.output.clear_output()
        try:
            with self.output:
                run = pipeline_run(self.model.value, int(self.seed.value), directory=self.directory,
                                   progress=True, rerun=rerun, config=self.config)
                r = run.report
                print(f"{r['model']}, seed {r['seed']}: float {100 * r['float_acc']:.2f} %, "
                      f"integer engine {100 * r['integer']['acc']:.2f} %, "
                      f"top-1 agreement {100 * r['integer']['top1_agreement_with_fake_quant']:.2f} %; "
                      f"{r['seconds']['total']:.1f} s -> {run.directory}")
            for e in self.explorers:
                e.set_run(run)
        finally:
            self.button.disabled = False
        self.result = run
        return run


def pipeline_runner(*explorers: Explorer, **kwargs: Any) -> PipelineRunner:
    """A "Re-run pipeline" button that refreshes ``explorers`` with the new run."""
    return PipelineRunner(tuple(explorers), **kwargs)

