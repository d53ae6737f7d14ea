"""Notebook 09: the whole paper on one small MobileNet -- float -> fold BN -> PTQ -> QAT -> integer engine.

The paper's recipe (Sec. 3 and 2.4, Fig. 1.1) in one run of ``qlearn.pipeline``: train a float
model; fold batch norm into the convolutions (Eq. 41); quantize it after training (PTQ: per-tensor
or per-channel weights, Eq. 53, at 8 to 4 bits); fine-tune it with simulated quantization (QAT,
Eqs. 55-63); convert it to integers -- int8 weights, int32 biases, one (M0, shift) per output channel
and a clamp per layer (Eqs. 65-67) -- and run it with integer arithmetic only. This module reads a
cached ``--quick`` run (``qlearn.pipeline.cached_quick_run``) so that the notebook opens in seconds,
and looks at it from three sides:

* ``results`` / ``results_markdown``: the results table (float, PTQ, QAT, integer accuracy, integer
  vs fake-quant agreement in output LSBs (Eq. 69), logit SQNR (Eq. 18));
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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from qlearn.error import sqnr_db
from qlearn.pipeline import (
    PipelineConfig,
    PipelineRun,
    cached_quick_run,
    folded_weight_ranges,
    load_run,
)
from qlearn.quantize import dequantize
from qlearn.shipped import shipped_dir, shipped_folder
from qlearn.threads import one_thread
from qlearn.widgets.base import Explorer, int_slider

__all__ = [
    "pipeline_run",
    "LogitComparison",
    "logit_comparison",
    "results",
    "results_markdown",
    "LayerAgreement",
    "layer_agreement",
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
MAX_IMAGES = 200  # test images the layer and logit comparisons run on


def _check_run(run: Any) -> PipelineRun:
    if not isinstance(run, PipelineRun):
        raise TypeError(f"run must be a PipelineRun (from pipeline_run() or qlearn.pipeline.load_run), "
                        f"got {type(run).__name__}")
    return run


# ---------------------------------------------------------------------------------- the cached run
_RUNS: dict[tuple[str, int], PipelineRun] = {}  # (folder, report.json mtime) -> loaded run, per process


def _shipped_run_dir(model: str, seed: int, config: PipelineConfig | None) -> Path | None:
    """The quick run shipped with qlearn for these settings (every file sha256-checked), or None."""
    from qlearn.pipeline import quick_run_dir

    name = quick_run_dir(model, seed, directory="pipeline", config=config).as_posix()
    return shipped_folder(name)


def pipeline_run(model: str = "mobilenet_v2", seed: int = 0, *, directory: str | Path | None = None,
                 progress: bool = True, rerun: bool = False, config: PipelineConfig | None = None) -> PipelineRun:
    """The quick pipeline run of ``model`` and ``seed``, read back into models (``load_run``).

    By default (no ``directory``, no ``rerun``) the run shipped with qlearn (``qlearn.shipped``):
    every learner reads the same models and numbers. Seeded training is deterministic on one machine
    but gives slightly different models on another CPU, so ``rerun=True`` runs the quick pipeline on
    this CPU (a progress bar; ``qlearn.pipeline.cached_quick_run``) into the cache folder, and its
    numbers differ a little from the shipped ones. With ``directory`` the run is read from (or made
    in) that cache folder. A cached run whose checkpoints cannot be read is run again, with a
    one-line message. Within one process the same run is returned until it is re-run.
    """
    folder = None
    if directory is None and not rerun:
        folder = _shipped_run_dir(model, seed, config)
    if folder is None:
        report = cached_quick_run(model, seed, directory=directory, progress=progress, rerun=rerun, config=config)
        folder = Path(report["directory"])
    key = (str(folder.resolve()), (folder / "report.json").stat().st_mtime_ns)
    if key not in _RUNS:
        try:
            _RUNS[key] = load_run(folder)
        except (ValueError, OSError, RuntimeError, EOFError, KeyError) as e:
            if rerun or folder.resolve().is_relative_to(shipped_dir().resolve()):
                raise
            print(f"qlearn: the cached run {folder} cannot be read back ({e}); running it again", file=sys.stderr)
            return pipeline_run(model, seed, directory=directory, progress=progress, rerun=True, config=config)
    return _RUNS[key]


# ---------------------------------------------------------------------------------- results table
@dataclass(frozen=True, eq=False)
class LogitComparison:
    """The three models' logits on the same test images, (N, classes) float64 each, and their SQNRs (Eq. 18).

    fake_quant : the 8-bit QAT model in eval mode (float arithmetic on the integer grids)
    integer    : the integer engine's uint8 logits, dequantized with the output (S, Z)
    sqnr_*     : 10 log10(sum ref^2 / sum (x - ref)^2) in dB, the first-named model as x
    """

    float_logits: np.ndarray
    fake_quant_logits: np.ndarray
    integer_logits: np.ndarray
    labels: np.ndarray

    @property
    def sqnr_integer_vs_fake_quant(self) -> float:
        return sqnr_db(self.fake_quant_logits, self.integer_logits)

    @property
    def sqnr_integer_vs_float(self) -> float:
        return sqnr_db(self.float_logits, self.integer_logits)

    @property
    def sqnr_fake_quant_vs_float(self) -> float:
        return sqnr_db(self.float_logits, self.fake_quant_logits)


def logit_comparison(run: PipelineRun, images: int = MAX_IMAGES) -> LogitComparison:
    """Float, fake-quant and integer-engine logits on the first ``images`` test images (cached per run)."""
    from qlearn.convert import quantize_input
    from qlearn.train import predict

    run = _check_run(run)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")
    key = ("logits", images)
    if key not in run.cache:
        x = run.data.x_test[:images]  # (N, C, H, W) float32 in [0, 1]
        with one_thread():
            f = predict(run.float_model, x).double().numpy()
            fq = predict(run.qat8, x).double().numpy()
            q = run.integer_model.run(quantize_input(run.qat8, x))  # (N, classes) uint8: integers only
        ints = np.asarray(dequantize(q, run.integer_model.output_qparams), dtype=np.float64)
        run.cache[key] = LogitComparison(f, fq, ints, run.data.y_test[:images].numpy())
    return run.cache[key]


def results(run: PipelineRun) -> dict[str, float]:
    """The notebook's results table as numbers: accuracies (fractions), agreement, LSBs, SQNRs (dB).

    Accuracies and the integer-vs-fake-quant agreement come from the run's report (the whole test
    split); the logit SQNRs are computed here from ``logit_comparison``.
    """
    run = _check_run(run)
    r = run.report
    ig = r["integer"]
    lc = logit_comparison(run)
    out = {"float": r["float_acc"]}
    for bits in sorted((int(b) for b in r["ptq"]["per_tensor_minmax"]), reverse=True):
        out[f"PTQ {bits}-bit per-tensor"] = r["ptq"]["per_tensor_minmax"][str(bits)]
        out[f"PTQ {bits}-bit per-channel"] = r["ptq"]["per_channel_minmax"][str(bits)]
    for bits, acc in sorted(r["qat"].items(), key=lambda kv: -int(kv[0])):
        out[f"QAT {bits}-bit"] = acc
    out.update({
        "integer engine": ig["acc"],
        "top-1 agreement integer vs fake-quant": ig["top1_agreement_with_fake_quant"],
        "identical output codes": ig["exact_output_fraction"],
        "max LSB difference": float(ig["max_lsb_diff"]),
        "logit SQNR integer vs fake-quant (dB)": lc.sqnr_integer_vs_fake_quant,
        "logit SQNR integer vs float (dB)": lc.sqnr_integer_vs_float,
        "logit SQNR fake-quant vs float (dB)": lc.sqnr_fake_quant_vs_float,
    })
    return out


def results_markdown(run: PipelineRun) -> str:
    """``results(run)`` as two Markdown tables: accuracies by stage, then how close the integer engine is."""
    run = _check_run(run)
    res = results(run)
    r = run.report
    n = r["n_test"]
    flt = res["float"]

    def acc_row(label: str, what: str, acc: float) -> str:
        wrong = round((1 - acc) * n)
        return f"| {label} | {what} | {100 * acc:.2f} % | {100 * (acc - flt):+.2f} | {wrong} |"

    lines = [
        f"**{r['model']} on {r['dataset']}**, {r['n_test']} test images, seed {r['seed']}"
        + (" (quick run)" if r.get("quick") else ""),
        "",
        "| stage | model | test accuracy | vs float (points) | misclassified |",
        "|---|---|---|---|---|",
        acc_row("1 float", "trained float model", flt),
    ]
    for key, acc in res.items():
        if key.startswith("PTQ "):
            bits, scheme = key.split()[1], key.split()[2]
            lines.append(acc_row("2 PTQ", f"{bits} weights {scheme} (min/max), 8-bit activations", acc))
    for key, acc in res.items():
        if key.startswith("QAT "):
            lines.append(acc_row("3 QAT", f"{key.split()[1]} weights per-channel, fine-tuned", acc))
    lines.append(acc_row("4 integer", "8-bit QAT model on the integer engine (integers only)", res["integer engine"]))
    lines += [
        "",
        "| integer engine vs the 8-bit fake-quant model | value |",
        "|---|---|",
        f"| same predicted class (top-1 agreement) | {100 * res['top-1 agreement integer vs fake-quant']:.2f} % |",
        f"| logits with identical uint8 codes | {100 * res['identical output codes']:.2f} % |",
        f"| largest logit difference | {int(res['max LSB difference'])} LSB |",
        f"| logit SQNR, integer vs fake-quant | {res['logit SQNR integer vs fake-quant (dB)']:.1f} dB |",
        f"| logit SQNR, integer vs float model | {res['logit SQNR integer vs float (dB)']:.1f} dB |",
        f"| logit SQNR, fake-quant vs float model | {res['logit SQNR fake-quant vs float (dB)']:.1f} dB |",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- layer by layer
@dataclass(frozen=True, eq=False)
class LayerAgreement:
    """One integer layer's output against the fake-quant model's, as codes on the layer's output grid.

    q_int   : the integer engine's output when the whole engine runs from the uint8 input (end to end)
    q_fake  : the fake-quant model's output at this layer, y / S_out + Z_out (exact: y is on the grid)
    q_alone : this integer layer run on the fake-quant model's codes of its inputs -- the difference
              q_alone - q_fake is what this layer's own integer arithmetic changes (Eq. 31), while
              q_int - q_fake also carries every earlier layer's differences (Eq. 69)
    All (N, ...) int64.
    """

    index: int
    name: str
    kind: str
    layer: Any
    q_int: np.ndarray
    q_fake: np.ndarray
    q_alone: np.ndarray

    @property
    def diff_end_to_end(self) -> np.ndarray:
        return self.q_int - self.q_fake

    @property
    def diff_alone(self) -> np.ndarray:
        return self.q_alone - self.q_fake

    @property
    def exact_end_to_end(self) -> float:
        return float(np.mean(self.diff_end_to_end == 0))

    @property
    def exact_alone(self) -> float:
        return float(np.mean(self.diff_alone == 0))

    @property
    def max_lsb_end_to_end(self) -> int:
        return int(np.abs(self.diff_end_to_end).max())

    @property
    def max_lsb_alone(self) -> int:
        return int(np.abs(self.diff_alone).max())


def _out_grid(layer: Any) -> tuple[float, int]:
    d = layer.describe()
    return float(d["out_scale"]), int(d["out_zp"])


def layer_agreement(run: PipelineRun, images: int = MAX_IMAGES) -> list[LayerAgreement]:
    """Every integer layer against the fake-quant model on the first ``images`` test images (cached per run).

    The fake-quant model's per-layer outputs come from forward hooks on its modules, which carry the
    integer layers' names (``qlearn.convert``); each lies on its layer's output grid, so dividing by
    S_out and adding Z_out recovers integer codes exactly (checked).
    """
    from qlearn.convert import quantize_input

    run = _check_run(run)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")
    key = ("layers", images)
    if key in run.cache:
        return run.cache[key]
    qat, engine = run.qat8, run.integer_model
    x = run.data.x_test[:images]
    x_q = quantize_input(qat, x)  # (N, C, H, W) uint8
    modules = dict(qat.named_modules())
    missing = [layer.name for layer in engine.layers if layer.name not in modules]
    if missing:
        raise ValueError(f"the QAT model has no modules named {missing}: the integer model was not converted from it")
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[layer.name].register_forward_hook(
            lambda module, inputs, output, name=layer.name: captured.__setitem__(name, output.detach())
        )
        for layer in engine.layers
    ]
    try:
        with one_thread(), torch.no_grad():
            qat.eval()(x)
            int_outs = engine.layer_outputs(x_q)  # name -> uint8 codes, integer arithmetic only
    finally:
        for h in hooks:
            h.remove()
    codes: dict[str, np.ndarray] = {"input": x_q.astype(np.int64)}
    rows = []
    for i, layer in enumerate(engine.layers):
        scale, zp = _out_grid(layer)
        y = captured[layer.name].double().numpy() / scale  # (N, ...) float64, integers up to float32 error
        q = np.rint(y)
        off = float(np.abs(y - q).max()) if y.size else 0.0
        if off > 0.05:
            raise ValueError(f"the fake-quant output of {layer.name!r} is not on its grid (off by {off:.3f} steps)")
        codes[layer.name] = q.astype(np.int64) + zp
        alone = layer(*(codes[src].astype(np.uint8) for src in layer.inputs))  # fed the fake-quant codes
        rows.append(LayerAgreement(i, layer.name, layer.describe()["kind"], layer,
                                   int_outs[layer.name].astype(np.int64), codes[layer.name],
                                   np.asarray(alone).astype(np.int64)))
    run.cache[key] = rows
    return rows


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
    """The report's accuracy vs weight bits (``qlearn.pipeline.figure_accuracy_vs_bits``), not saved."""
    from qlearn.pipeline import figure_accuracy_vs_bits

    return figure_accuracy_vs_bits(_check_run(run).report)


def weight_ranges_figure(run: PipelineRun) -> Figure:
    """Per-channel ranges of the folded float weights (Eq. 41; ``figure_weight_ranges``)."""
    from qlearn.pipeline import figure_weight_ranges

    return figure_weight_ranges(_folded_ranges(_check_run(run)))


def logits_figure(run: PipelineRun) -> Figure:
    """Float vs fake-quant vs integer-engine logits (``figure_logits``) on the compared test images."""
    from qlearn.pipeline import figure_logits

    lc = logit_comparison(_check_run(run))
    return figure_logits(lc.float_logits, lc.fake_quant_logits, lc.integer_logits)


def _folded_ranges(run: PipelineRun) -> list[dict]:
    if "ranges" not in run.cache:
        run.cache["ranges"] = folded_weight_ranges(run.float_model)
    return run.cache["ranges"]


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
        self.run = _check_run(run)
        self.report = run.report
        self.bits_options = _report_bits(self.report)
        ranges = _folded_ranges(run)
        self.range_layer = max(ranges, key=lambda r: r["spread"])
        lo, hi = np.array(self.range_layer["min"]), np.array(self.range_layer["max"])
        absmax = np.maximum(np.abs(lo), np.abs(hi))  # (C,) max |w_fold| per output channel
        order = np.argsort(-absmax, kind="stable")
        self.ch_lo, self.ch_hi, self.ch_absmax = lo[order], hi[order], absmax[order]

    def _on_change(self, change: dict) -> None:
        if not self._frozen:
            super()._on_change(change)

    def build(self, fig: Figure) -> None:
        from matplotlib.collections import LineCollection

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
            "QAT per-channel": qat[str(bits)] if str(bits) in qat else f"not run (QAT at {', '.join(sorted(qat, key=int, reverse=True))} bits)",
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
    import matplotlib as mpl

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


# ---------------------------------------------------------------------------------- explorer 2: layers
def _multipliers(layer: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(M, M0, shift, labels): one entry per output channel (conv, linear), per input (add), none (pool)."""
    from qlearn.fixedpoint import multiplier_value

    d = layer.describe()
    if "m0" not in d:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), []
    if d["kind"] == "add":
        m0 = np.array(d["m0"], dtype=np.int64)
        shift = np.array(d["shift"], dtype=np.int64)
        labels = ["a", "b", "out"]
    else:
        m0 = np.atleast_1d(np.asarray(layer.m0, dtype=np.int64))
        shift = np.broadcast_to(np.atleast_1d(np.asarray(layer.shift, dtype=np.int64)), m0.shape).copy()
        labels = []
    m = np.asarray(multiplier_value(m0, shift), dtype=np.float64)
    return m, m0, shift, labels


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
        self.run = _check_run(run)
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
        from matplotlib.ticker import MaxNLocator

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
        m, m0, shift, labels = _multipliers(row.layer)
        d = row.layer.describe()
        if m.size:
            self.m_stairs.set_data(m, np.arange(m.size + 1) - 0.5)
            self.m_stairs.set_visible(True)
            self.ax_m.set_xlim(-0.5, m.size - 0.5)
            self.ax_m.set_ylim(m.min() / 2.0, m.max() * 2.0)
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
        self.ax_d.set_xlim(-k - 0.5, k + 0.5)
        self.ax_d.set_ylim(floor, 2.0)
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
        from qlearn.models import MODELS

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
