"""Notebook 03: one scale per tensor, or one scale per output channel?

A weight tensor's output channels need not agree about their range. With one (S, Z) for the whole
tensor (per-tensor), the step S is set by the widest channel, and a channel with a small range gets
only a few grid points: its error is that of the wide channel, its signal is small, its SQNR is poor.
With one S_c per output channel (per-channel; Eq. 13 per channel) every channel gets all 2^b levels
over its own range. Per-tensor, channel c keeps only the few grid points that fall inside its range
(Eq. 70), and its MSE grows by about (S_tensor / S_c)^2 (Eq. 19).

Batch-norm folding (Eq. 41) makes this worse in real networks: it multiplies each output channel by
its own gamma_c / sigma_c, so the folded channel ranges of a MobileNet can differ by orders of
magnitude (depthwise layers especially, where each channel sees one input channel only).

This module holds

* the seed's three-channel example (ranges [-2.3, 2.1], [-0.7, 0.5], [-4.7, 3.8]) and
  ``compare_schemes``, which measures per-channel error under both schemes;
* the *lesson model*: a small MobileNet v1 trained once on the bundled digits, deterministically,
  and cached under ``~/.cache/qlearn`` (``lesson_model``), with its BN-folded weights;
* weight-only quantization of that model (``weight_qparams``, ``quantized_weight_accuracy``),
  shared with notebook 04;
* the two explorers of notebook 03: ``seed_channels_explorer`` and ``layer_explorer``.
"""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from typing import Any, Iterator

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from qlearn._checks import as_float_array, check_axis, check_bits
from qlearn.lessons.lesson_model import (
    FoldedLayer,
    LessonConfig,
    LessonModel,
    cache_dir,
    cached_results,
    lesson_model,
)
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import minmax_range, weight_qparams
from qlearn.threads import one_thread
from qlearn.widgets.base import Explorer, int_slider

__all__ = [
    "SEED_RANGES",
    "seed_channel_weights",
    "SchemeComparison",
    "compare_schemes",
    "channel_sqnr_db",
    "LessonConfig",
    "LessonModel",
    "FoldedLayer",
    "cache_dir",
    "lesson_model",
    "cached_results",
    "widest_spread_layer",
    "WEIGHT_METHODS",
    "weight_qparams",
    "quantized_weight_accuracy",
    "SeedChannelsExplorer",
    "seed_channels_explorer",
    "LayerExplorer",
    "layer_explorer",
]

TENSOR_COLOR = "#d62728"  # per-tensor: red, as the grid of notebook 01
CHANNEL_COLOR = "#2ca02c"  # per-channel: green
BITS_RANGE = (2, 8)

# ---------------------------------------------------------------------------------- the seed example
#: The seed's three output channels: each (lo, hi) is the min/max of one channel's weights.
SEED_RANGES: tuple[tuple[float, float], ...] = ((-2.3, 2.1), (-0.7, 0.5), (-4.7, 3.8))


def seed_channel_weights(n: int = 2000, seed: int = 0) -> np.ndarray:
    """(3, n) float64 weights, channel c uniform on SEED_RANGES[c] with both ends present exactly.

    So ``minmax_range(w, axis=0)`` returns exactly the seed's ranges.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (each channel needs its two end points), got {n!r}")
    rng = np.random.default_rng(seed)
    w = np.empty((len(SEED_RANGES), int(n)))
    for c, (lo, hi) in enumerate(SEED_RANGES):
        w[c] = rng.uniform(lo, hi, int(n))
        w[c, 0], w[c, 1] = lo, hi
    return w


def _weight_format(bits: int, symmetric: bool) -> dict:
    """qlearn's weight format when symmetric: signed, narrow range, Z = 0 (docs/conventions.md)."""
    if symmetric:
        return dict(symmetric=True, signed=True, narrow_range=True)
    return dict(symmetric=False, signed=False, narrow_range=False)


def channel_sqnr_db(w: np.ndarray, w_hat: np.ndarray) -> np.ndarray:
    """SQNR of each channel (axis 0) in dB: 10 log10(sum w_c^2 / sum (w_hat_c - w_c)^2) (Eq. 18).

    (C,) float64; +inf for a channel reproduced exactly, NaN for an all-zero channel (no signal).
    """
    a = as_float_array(w, "w")
    b = as_float_array(w_hat, "w_hat")
    if a.shape != b.shape:
        raise ValueError(f"w and w_hat must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 1:
        raise ValueError("w must have a channel axis (axis 0)")
    signal = np.sum(a.reshape(a.shape[0], -1) ** 2, axis=1)
    noise = np.sum((b - a).reshape(a.shape[0], -1) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(signal / noise)
    out[signal == 0] = np.nan
    return out


@dataclass(frozen=True, eq=False)
class SchemeComparison:
    """Per-tensor against per-channel quantization of one weight tensor, channel by channel.

    Arrays are (C,) over the channel axis. ``predicted_ratio`` is (S_tensor / S_c)^2, the MSE
    ratio the uniform-noise model S^2/12 predicts (Eqs. 17, 19, 70); ``mse_ratio`` is measured.
    """

    bits: int
    symmetric: bool
    per_tensor: QParams
    per_channel: QParams
    channel_lo: np.ndarray
    channel_hi: np.ndarray
    mse_tensor: np.ndarray
    mse_channel: np.ndarray
    sqnr_tensor: np.ndarray
    sqnr_channel: np.ndarray
    levels_tensor: np.ndarray  # grid points of the per-tensor grid inside each channel's range
    levels_channel: np.ndarray

    @property
    def mse_ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.mse_tensor / self.mse_channel

    @property
    def predicted_ratio(self) -> np.ndarray:
        return (self.per_tensor.scale / self.per_channel.scale) ** 2

    @property
    def channels(self) -> int:
        return int(self.channel_lo.shape[0])


def _levels_inside(qp: QParams, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many grid points S (q - Z), q in [qmin, qmax], fall inside [lo_c, hi_c] for each c (Eq. 70)."""
    scale = np.broadcast_to(np.asarray(qp.scale, dtype=np.float64), lo.shape)
    zp = np.broadcast_to(np.asarray(qp.zero_point, dtype=np.float64), lo.shape)
    q_lo = np.maximum(np.ceil(lo / scale - 1e-9) + zp, qp.qmin)
    q_hi = np.minimum(np.floor(hi / scale + 1e-9) + zp, qp.qmax)
    return np.maximum(q_hi - q_lo + 1, 0).astype(np.int64)


def compare_schemes(w: Any, bits: int, *, axis: int = 0, symmetric: bool = True) -> SchemeComparison:
    """Quantize ``w`` with min/max ranges per tensor and per channel along ``axis``; compare channels.

    per-tensor : one range (Eq. 13 over the whole tensor) -> one (S, Z)
    per-channel: one range per channel c (Eq. 13 over channel c) -> (S_c, Z_c)
    symmetric=True is qlearn's weight format (signed, narrow range, Z = 0, S = max|w| / (2^(b-1) - 1),
    Eq. 8: Krishnamoorthi 2018 and the TFLite int8 spec, with the paper's [-127, 127] of Sec. 3.1);
    symmetric=False is asymmetric uint (Eqs. 4-6), the paper's own a := min w, b := max w.
    """
    arr = as_float_array(w, "w")
    if arr.ndim < 2:
        raise ValueError(f"w needs a channel axis and at least one value per channel, got shape {arr.shape}")
    ax = check_axis(axis, arr.ndim)
    bits = check_bits(bits)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")
    fmt = _weight_format(bits, symmetric)
    chan = np.moveaxis(arr, ax, 0)  # (C, ...) float64
    lo_c, hi_c = minmax_range(chan, axis=0)
    qp_t = qparams_from_range(*minmax_range(chan), bits, **fmt)
    qp_c = qparams_from_range(lo_c, hi_c, bits, axis=0, **fmt)
    fq_t = fake_quantize(chan, qp_t)
    fq_c = fake_quantize(chan, qp_c)
    flat = chan.reshape(chan.shape[0], -1)
    mse_t = np.mean((fq_t.reshape(flat.shape) - flat) ** 2, axis=1)
    mse_c = np.mean((fq_c.reshape(flat.shape) - flat) ** 2, axis=1)
    return SchemeComparison(
        bits=bits, symmetric=symmetric, per_tensor=qp_t, per_channel=qp_c,
        channel_lo=lo_c, channel_hi=hi_c, mse_tensor=mse_t, mse_channel=mse_c,
        sqnr_tensor=channel_sqnr_db(chan, fq_t), sqnr_channel=channel_sqnr_db(chan, fq_c),
        levels_tensor=_levels_inside(qp_t, lo_c, hi_c), levels_channel=_levels_inside(qp_c, lo_c, hi_c),
    )


class SeedChannelsExplorer(Explorer):
    """Notebook 03, part 1: the seed's three channels on one grid (per-tensor) or three (per-channel)."""

    title_text = "Per-tensor vs per-channel: three output channels"
    figsize = (11.0, 3.6)

    def __init__(self, bits: int = 3, symmetric: bool = True, n: int = 2000, seed: int = 0) -> None:
        self.w = seed_channel_weights(n, seed)  # (3, n)
        controls = {
            "bits": int_slider("bits", bits, *BITS_RANGE),
            "symmetric": widgets.Checkbox(symmetric, description="symmetric weights, Z = 0", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        from matplotlib.collections import LineCollection

        self.ax_grid, self.ax_mse = fig.subplots(1, 2, width_ratios=[1.6, 1.0])
        ax = self.ax_grid
        self.rows = np.arange(len(SEED_RANGES))[::-1].astype(float)  # channel 0 at the top
        for c, (lo, hi) in enumerate(SEED_RANGES):
            y = self.rows[c]
            ax.add_patch(_rect(lo, y - 0.06, hi - lo, 0.12, "#9ecae1"))
            ax.text(-5.2, y, f"ch {c}\n[{lo}, {hi}]", va="center", ha="left", fontsize="small")
        self.t_ticks = LineCollection([], colors=TENSOR_COLOR, linewidths=1.0, label="per-tensor grid")
        self.c_ticks = LineCollection([], colors=CHANNEL_COLOR, linewidths=1.0, label="per-channel grid")
        ax.add_collection(self.t_ticks)
        ax.add_collection(self.c_ticks)
        ax.set(xlim=(-5.3, 5.0), ylim=(-0.7, len(SEED_RANGES) - 0.3), yticks=[], xlabel="weight value",
               title="the grids each channel is rounded to")
        ax.legend(loc="upper right", ncols=2)
        x = np.arange(len(SEED_RANGES))
        self.bars_t = self.ax_mse.bar(x - 0.2, np.ones(3), 0.4, color=TENSOR_COLOR, label="per-tensor")
        self.bars_c = self.ax_mse.bar(x + 0.2, np.ones(3), 0.4, color=CHANNEL_COLOR, label="per-channel")
        (self.pred,) = self.ax_mse.plot(x - 0.2, np.ones(3), "k_", ms=22, mew=2, label="Eq. 19 prediction")
        self.ax_mse.set(yscale="log", xticks=x, xticklabels=[f"ch {c}" for c in x], ylabel="MSE",
                        title="quantization MSE per channel")
        self.ax_mse.legend(loc="upper left")

    def render(self, bits: int, symmetric: bool) -> dict:
        cmp = compare_schemes(self.w, bits, symmetric=symmetric)
        t_segs, c_segs = [], []
        qc = cmp.per_channel
        for c in range(cmp.channels):
            y = self.rows[c]
            g_t = cmp.per_tensor.scale * (np.arange(cmp.per_tensor.qmin, cmp.per_tensor.qmax + 1) - cmp.per_tensor.zero_point)
            g_c = qc.scale[c] * (np.arange(qc.qmin, qc.qmax + 1) - qc.zero_point[c])
            t_segs += [[(g, y + 0.08), (g, y + 0.32)] for g in g_t if -5.3 <= g <= 5.0]
            c_segs += [[(g, y - 0.32), (g, y - 0.08)] for g in g_c if -5.3 <= g <= 5.0]
        self.t_ticks.set_segments(t_segs)
        self.c_ticks.set_segments(c_segs)
        for bars, values in ((self.bars_t, cmp.mse_tensor), (self.bars_c, cmp.mse_channel)):
            for bar, v in zip(bars, values):
                bar.set_height(v)
        predicted = cmp.mse_channel * cmp.predicted_ratio
        self.pred.set_ydata(predicted)
        top = max(cmp.mse_tensor.max(), predicted.max()) * 3.0
        bottom = min(cmp.mse_channel.min(), cmp.mse_tensor.min()) / 3.0
        self.ax_mse.set_ylim(bottom, top)
        numbers: dict[str, Any] = {"per-tensor scale S": cmp.per_tensor.scale}
        for c in range(cmp.channels):
            numbers[f"ch {c}: per-channel scale S_c"] = float(qc.scale[c])
        for c in range(cmp.channels):
            numbers[f"ch {c}: grid points in its range (tensor / channel)"] = (
                f"{cmp.levels_tensor[c]} / {cmp.levels_channel[c]}"
            )
        for c in range(cmp.channels):
            numbers[f"ch {c}: MSE per-tensor"] = float(cmp.mse_tensor[c])
            numbers[f"ch {c}: MSE per-channel"] = float(cmp.mse_channel[c])
            numbers[f"ch {c}: MSE ratio measured"] = float(cmp.mse_ratio[c])
            numbers[f"ch {c}: MSE ratio Eq. 19 (S/S_c)^2"] = float(cmp.predicted_ratio[c])
        return numbers


def _rect(x: float, y: float, w: float, h: float, color: str):  # type: ignore[no-untyped-def]
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, color=color, alpha=0.8)


def seed_channels_explorer(**kwargs: Any) -> SeedChannelsExplorer:
    """Notebook 03: the seed's three channels; slide the bits, switch symmetric/asymmetric."""
    return SeedChannelsExplorer(**kwargs)


# ---------------------------------------------------------------------------------- weight-only PTQ
#: Weight range rules: the range of each tensor (or channel) that the symmetric grid covers.
WEIGHT_METHODS = ("min/max", "percentile 99.9", "percentile 99", "MSE-optimal")


@contextlib.contextmanager
def _swapped_weights(layers: list[FoldedLayer], new: list[np.ndarray]) -> Iterator[None]:
    """Temporarily replace the folded layers' weights (the model is restored even on error)."""
    saved = [layer.module.weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer, w in zip(layers, new):
                layer.module.weight.copy_(torch.from_numpy(w).to(layer.module.weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for layer, w in zip(layers, saved):
                layer.module.weight.copy_(w)


def quantized_weight_accuracy(
    lesson: LessonModel, bits: int, *, per_channel: bool, method: str = "min/max",
    layers: tuple[str, ...] | None = None,
) -> float:
    """Test accuracy of the folded lesson model with the weights of ``layers`` fake-quantized.

    Weight-only post-training quantization: every listed layer's folded weights go through
    ``fake_quantize`` with ``weight_qparams(w, bits, per_channel=..., method=...)`` (Eq. 10);
    activations and biases stay float, so the number isolates what the weight grid costs.
    ``layers=None`` quantizes every conv and the classifier. Cached per argument set.
    """
    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    bits = check_bits(bits)
    names = tuple(lesson.layers) if layers is None else tuple(layers)
    chosen = [lesson.layer(n) for n in names]
    key = (bits, bool(per_channel), method, names)
    if key not in lesson.cache:
        from qlearn.train import evaluate

        new = [fake_quantize(l.weight, weight_qparams(l.weight, bits, per_channel=per_channel, method=method))
               for l in chosen]
        with _swapped_weights(chosen, new), one_thread():
            lesson.cache[key] = evaluate(lesson.folded, lesson.data.x_test, lesson.data.y_test)
    return lesson.cache[key]


def widest_spread_layer(lesson: LessonModel, kind: str | None = "depthwise") -> str:
    """Name of the layer (of ``kind``, or any) whose channel ranges max|w_c| differ the most."""
    def spread(layer: FoldedLayer) -> float:
        a = np.abs(layer.weight.reshape(layer.channels, -1)).max(axis=1)
        return float(a.max() / max(a.min(), 1e-12))

    candidates = [l for l in lesson.layers.values() if kind is None or l.kind == kind] or list(lesson.layers.values())
    return max(candidates, key=spread).name


# ---------------------------------------------------------------------------------- layer explorer
class LayerExplorer(Explorer):
    """Notebook 03, part 2: a real folded layer, channel by channel, and the model's accuracy."""

    title_text = "A trained MobileNet after BN folding: per-tensor vs per-channel weights"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, layer: str | None = None, bits: int = 4) -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        if not isinstance(self.lesson, LessonModel):
            raise TypeError(f"lesson must be a LessonModel, got {type(self.lesson).__name__}")
        layer = widest_spread_layer(self.lesson) if layer is None else layer
        self.lesson.layer(layer)  # raises for an unknown name
        self.bits_axis = np.arange(BITS_RANGE[0], BITS_RANGE[1] + 1)
        def sweep() -> dict[str, list[float]]:
            return {
                name: [quantized_weight_accuracy(self.lesson, int(b), per_channel=pc) for b in self.bits_axis]
                for name, pc in (("per-tensor", False), ("per-channel", True))
            }

        stored = cached_results(self.lesson, f"weight-bits-{self.bits_axis[0]}-{self.bits_axis[-1]}-v1", sweep)
        self.curves = {False: np.asarray(stored["per-tensor"]), True: np.asarray(stored["per-channel"])}
        options = [(l.label, name) for name, l in self.lesson.layers.items()]
        controls = {
            "layer": widgets.Dropdown(options=options, value=layer, description="layer",
                                      layout=widgets.Layout(width="360px")),
            "bits": int_slider("weight bits", bits, *BITS_RANGE),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_rng, self.ax_sqnr, self.ax_acc = fig.subplots(1, 3)
        self.range_bars = self.ax_rng.stairs([1.0], [-0.5, 0.5], fill=True, color="#6baed6", baseline=1e-30)
        self.t_line = self.ax_rng.axhline(1.0, color=TENSOR_COLOR, ls="--", lw=1.2, label="per-tensor max|w|")
        self.ax_rng.set(yscale="log", xlabel="output channel (sorted by range)", ylabel="max |w_c|",
                        title="folded weight range per channel")
        self.ax_rng.legend(loc="upper right")
        (self.sq_t,) = self.ax_sqnr.plot([], [], ".-", color=TENSOR_COLOR, ms=3, lw=0.8, label="per-tensor")
        (self.sq_c,) = self.ax_sqnr.plot([], [], ".-", color=CHANNEL_COLOR, ms=3, lw=0.8, label="per-channel")
        self.ax_sqnr.set(xlabel="output channel (sorted by range)", ylabel="SQNR (dB)", title="error per channel")
        self.ax_sqnr.legend(loc="lower left")
        b = self.bits_axis
        self.ax_acc.plot(b, 100 * self.curves[False], "o-", color=TENSOR_COLOR, label="all layers, per-tensor")
        self.ax_acc.plot(b, 100 * self.curves[True], "o-", color=CHANNEL_COLOR, label="all layers, per-channel")
        (self.one_t,) = self.ax_acc.plot([], [], "s", mfc="none", ms=9, color=TENSOR_COLOR, label="this layer only, per-tensor")
        (self.one_c,) = self.ax_acc.plot([], [], "D", mfc="none", ms=9, color=CHANNEL_COLOR, label="this layer only, per-channel")
        self.v_bits = self.ax_acc.axvline(4, color="gray", lw=0.8)
        self.ax_acc.axhline(100 * self.lesson.float_acc, color="gray", ls=":", label="float")
        self.ax_acc.set(xlabel="weight bits", ylabel="test accuracy (%)", ylim=(0, 102), xticks=b,
                        title="model accuracy (weights only quantized)")
        self.ax_acc.legend(loc="lower right")

    def render(self, layer: str, bits: int) -> dict:
        lay = self.lesson.layer(layer)
        cmp = compare_schemes(lay.weight, bits, symmetric=True)
        absmax = np.maximum(np.abs(cmp.channel_lo), np.abs(cmp.channel_hi))
        order = np.argsort(-absmax, kind="stable")
        x = np.arange(lay.channels)
        # one filled step artist for all channels (cheaper to redraw than a bar per channel)
        self.range_bars.set_data(np.maximum(absmax[order], 1e-30), np.arange(lay.channels + 1) - 0.5)
        self.t_line.set_ydata([absmax.max()] * 2)
        finite = absmax[absmax > 0]
        self.ax_rng.set_xlim(-1, lay.channels)
        self.ax_rng.set_ylim(finite.min() / 2.0, finite.max() * 2.0)
        self.sq_t.set_data(x, cmp.sqnr_tensor[order])
        self.sq_c.set_data(x, cmp.sqnr_channel[order])
        both = np.concatenate([cmp.sqnr_tensor, cmp.sqnr_channel])
        both = both[np.isfinite(both)]
        self.ax_sqnr.set_xlim(-1, lay.channels)
        self.ax_sqnr.set_ylim(min(both.min(), 0.0) - 2.0, both.max() + 3.0)
        only_t = quantized_weight_accuracy(self.lesson, bits, per_channel=False, layers=(layer,))
        only_c = quantized_weight_accuracy(self.lesson, bits, per_channel=True, layers=(layer,))
        self.one_t.set_data([bits], [100 * only_t])
        self.one_c.set_data([bits], [100 * only_c])
        self.v_bits.set_xdata([bits, bits])
        i = int(bits - self.bits_axis[0])
        sq_t = cmp.sqnr_tensor[~np.isnan(cmp.sqnr_tensor)]  # all-zero channels carry no signal
        sq_c = cmp.sqnr_channel[~np.isnan(cmp.sqnr_channel)]
        return {
            "layer": lay.label,
            "channel range spread max/min": float(finite.max() / finite.min()),
            "per-tensor scale S": cmp.per_tensor.scale,
            "per-channel scales S_c": f"{cmp.per_channel.scale.min():.3g} .. {cmp.per_channel.scale.max():.3g}",
            "median channel SQNR per-tensor (dB)": float(np.median(sq_t)),
            "median channel SQNR per-channel (dB)": float(np.median(sq_c)),
            "worst channel SQNR per-tensor (dB)": float(np.min(sq_t)),
            "worst channel SQNR per-channel (dB)": float(np.min(sq_c)),
            "float accuracy": self.lesson.float_acc,
            "accuracy, all layers per-tensor": float(self.curves[False][i]),
            "accuracy, all layers per-channel": float(self.curves[True][i]),
            "accuracy, this layer only per-tensor": only_t,
            "accuracy, this layer only per-channel": only_c,
        }


def layer_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> LayerExplorer:
    """Notebook 03: choose a folded layer of the lesson model, slide the weight bits.

    Trains the lesson model on first use (about 10 s, cached in ``cache_dir()``).
    """
    return LayerExplorer(lesson, **kwargs)
