"""Notebook 04: outliers and range setting.

A uniform grid spends its 2^b levels evenly over [lo, hi]. With min/max ranges (Eq. 13) one value far
out in the tail sets the range for the whole tensor: the step S grows with the outlier's magnitude m,
and every ordinary value shares a handful of grid points (Eq. 71). Clipping the range (a percentile,
the MSE-optimal range of Eq. 15) gives the bulk its levels back at the price of a clipping error on
the outliers (Eq. 14); the exponential moving average of per-batch extremes (Eq. 16), the paper's rule
for activations, lands in between because rare outliers rarely make it into a batch's extreme.

This module holds the synthetic experiment (Gaussian values with a fraction of outliers, four range
rules side by side), post-training quantization of the lesson model's activations with the same four
rules, and the explorers of notebook 04.
"""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from qlearn._checks import as_float_array, check_bits
from qlearn.error import ErrorBreakdown, error_breakdown
from qlearn.lessons.lesson_model import LessonModel, cached_results, lesson_model
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import EMARange, minmax_range, mse_range, percentile_range
from qlearn.threads import one_thread
from qlearn.widgets.base import Explorer, int_slider
from qlearn.widgets.per_channel import (
    WEIGHT_METHODS,
    quantized_weight_accuracy,
)

__all__ = [
    "RANGE_METHODS",
    "with_outliers",
    "range_for",
    "RangeResult",
    "compare_ranges",
    "ACTIVATION_METHODS",
    "activation_ranges",
    "quantized_activation_accuracy",
    "OutlierExplorer",
    "outlier_explorer",
    "ModelRangesExplorer",
    "model_ranges_explorer",
]

RANGE_METHODS = ("min/max", "percentile 99.9", "MSE-optimal", "EMA of batch min/max")
METHOD_COLORS = {
    "min/max": "#d62728",
    "percentile 99.9": "#ff7f0e",
    "percentile 99": "#bcbd22",
    "percentile 99.99": "#ff7f0e",
    "MSE-optimal": "#2ca02c",
    "EMA of batch min/max": "#1f77b4",
}
BULK_SIGMA = 3.0  # the "bulk" of a unit-variance tensor: |x| <= 3


def with_outliers(n: int = 20_000, magnitude: float = 20.0, fraction: float = 0.001, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n standard-normal values of which round(fraction n) are replaced by outliers of size ~ magnitude.

    Outliers are +-magnitude (1 + U(0, 0.1)) with random signs, at random positions (fixed by
    ``seed``). Returns (x (n,) float64, is_outlier (n,) bool). ``fraction`` may be 0.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 10:
        raise ValueError(f"n must be an integer >= 10, got {n!r}")
    for name, v in (("magnitude", magnitude), ("fraction", fraction)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
            raise TypeError(f"{name} must be a finite number, got {v!r}")
    if magnitude <= 0:
        raise ValueError(f"magnitude is in standard deviations and must be positive, got {magnitude}")
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"fraction must be in [0, 0.5] (a few outliers, not half the data), got {fraction}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(n))
    k = int(round(float(fraction) * n))
    idx = rng.choice(int(n), size=k, replace=False)
    signs = rng.choice([-1.0, 1.0], size=k)
    x[idx] = signs * float(magnitude) * (1.0 + 0.1 * rng.random(k))
    mask = np.zeros(int(n), dtype=bool)
    mask[idx] = True
    return x, mask


def range_for(
    x: Any, method: str, bits: int, *, symmetric: bool = False, batches: int = 40, decay: float = 0.9,
) -> tuple[float, float]:
    """The range [lo, hi] the rule ``method`` (one of RANGE_METHODS) picks for ``x``.

    min/max (Eq. 13); percentile p (the (100 - p)th and pth percentiles); MSE-optimal (Eq. 15, for
    ``bits`` and the format given by ``symmetric``); EMA of batch min/max (Eq. 16): ``x`` is cut
    into ``batches`` consecutive batches, as a stream of activations, averaged with ``decay``.
    """
    arr = as_float_array(x, "x").ravel()
    bits = check_bits(bits)
    if method == "min/max":
        return minmax_range(arr)
    if method.startswith("percentile"):
        return percentile_range(arr, float(method.split()[-1]))
    if method == "MSE-optimal":
        fmt = dict(symmetric=True, signed=True, narrow_range=True) if symmetric else {}
        return mse_range(arr, bits, **fmt)
    if method == "EMA of batch min/max":
        if isinstance(batches, bool) or not isinstance(batches, numbers.Integral) or not 1 <= batches <= arr.size:
            raise ValueError(f"batches must be an integer in [1, {arr.size}], got {batches!r}")
        ema = EMARange(decay=decay)
        for batch in np.array_split(arr, int(batches)):
            ema.update(batch)
        return ema.range
    raise ValueError(f"unknown range method {method!r}; choose one of {RANGE_METHODS}")


@dataclass(frozen=True)
class RangeResult:
    """What one range rule does to one tensor: its grid and its errors (Eq. 14)."""

    method: str
    lo: float
    hi: float
    qp: QParams
    breakdown: ErrorBreakdown  # over all values: rounding + clipping
    bulk_mse: float  # MSE over the ordinary values only (not outliers)
    outlier_mse: float  # MSE over the outliers only (NaN if there are none)
    bulk_levels: int  # grid points inside [-3, 3]: how many levels the bulk gets


def compare_ranges(
    x: Any, bits: int, *, outliers: Any = None, symmetric: bool = False,
    methods: tuple[str, ...] = RANGE_METHODS,
) -> list[RangeResult]:
    """Apply each range rule to ``x`` at ``bits`` and measure the error on the bulk and the outliers.

    ``outliers``: optional (n,) bool mask of the outlier positions (default: none are outliers).
    ``symmetric``: qlearn's weight format (signed, narrow range, Z = 0; Eq. 8; docs/conventions.md)
    instead of the paper's asymmetric uint.
    """
    arr = as_float_array(x, "x").ravel()
    bits = check_bits(bits)
    mask = np.zeros(arr.shape, dtype=bool) if outliers is None else np.asarray(outliers)
    if mask.dtype != bool or mask.shape != arr.shape:
        raise ValueError(f"outliers must be a bool mask with the shape of x {arr.shape}, got {mask.dtype} {mask.shape}")
    fmt = dict(symmetric=True, signed=True, narrow_range=True) if symmetric else {}
    out = []
    for method in methods:
        lo, hi = range_for(arr, method, bits, symmetric=symmetric)
        qp = qparams_from_range(lo, hi, bits, **fmt)
        err = (fake_quantize(arr, qp) - arr) ** 2
        grid = qp.scale * (np.arange(qp.qmin, qp.qmax + 1) - qp.zero_point)
        out.append(RangeResult(
            method, float(lo), float(hi), qp, error_breakdown(arr, qp),
            float(err[~mask].mean()) if (~mask).any() else float("nan"),
            float(err[mask].mean()) if mask.any() else float("nan"),
            int(np.count_nonzero(np.abs(grid) <= BULK_SIGMA + 1e-12)),
        ))
    return out


@lru_cache(maxsize=256)
def _cached_compare(n: int, magnitude: float, fraction: float, bits: int, symmetric: bool, seed: int) -> tuple:
    x, mask = with_outliers(n, magnitude, fraction, seed)
    return x, mask, compare_ranges(x, bits, outliers=mask, symmetric=symmetric)


class OutlierExplorer(Explorer):
    """Notebook 04, part 1: a few outliers, four range rules, rounding vs clipping."""

    title_text = "Outliers stretch the range: four ways to choose it"
    figsize = (12.0, 3.7)

    def __init__(self, magnitude: float = 20.0, fraction: float = 0.001, bits: int = 4, symmetric: bool = True,
                 n: int = 20_000, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "magnitude": widgets.FloatLogSlider(
                value=magnitude, base=10, min=np.log10(2.0), max=2.0, step=0.02,
                description="outlier size (σ)", style={"description_width": "initial"}),
            "fraction": widgets.FloatLogSlider(
                value=fraction, base=10, min=-4.0, max=-1.0, step=0.1, readout_format=".2%",
                description="outlier fraction", style={"description_width": "initial"}),
            "bits": int_slider("bits", bits, 2, 8),
            "symmetric": widgets.Checkbox(symmetric, description="symmetric (weights)", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_h, self.ax_e, self.ax_l = fig.subplots(1, 3, width_ratios=[1.5, 1.2, 1.0])
        self.hist_artist = None
        self.range_lines = {}
        for i, m in enumerate(RANGE_METHODS):
            y = 0.93 - 0.07 * i
            (line,) = self.ax_h.plot([], [], color=METHOD_COLORS[m], lw=3, solid_capstyle="butt",
                                     transform=self.ax_h.get_xaxis_transform(), label=m)
            self.range_lines[m] = (line, y)
        self.ax_h.set(yscale="log", xlabel="value (σ)", ylabel="count", title="data and the four ranges")
        self.ax_h.legend(loc="lower center")
        x = np.arange(len(RANGE_METHODS))
        self.bars_r = self.ax_e.bar(x - 0.2, np.ones(len(x)), 0.4, color="#9ecae1", label="rounding")
        self.bars_c = self.ax_e.bar(x + 0.2, np.ones(len(x)), 0.4, color="#ff7f0e", label="clipping")
        (self.bulk_pts,) = self.ax_e.plot(x, np.ones(len(x)), "k*", ms=9, label="MSE on the bulk")
        self.ax_e.set(yscale="log", xticks=x, ylabel="MSE (all values)", title="rounding vs clipping (Eq. 14)")
        self.ax_e.set_xticklabels(["min/max", "pct 99.9", "MSE-opt", "EMA"], fontsize="small")
        self.ax_e.legend(loc="upper right")
        self.bars_l = self.ax_l.bar(x, np.ones(len(x)), 0.6, color=[METHOD_COLORS[m] for m in RANGE_METHODS])
        self.ax_l.set(xticks=x, ylabel="grid points", title=f"levels inside the bulk |x| ≤ {BULK_SIGMA:g}σ")
        self.ax_l.set_xticklabels(["min/max", "pct 99.9", "MSE-opt", "EMA"], fontsize="small")
        self.level_text = [self.ax_l.text(i, 0, "", ha="center", va="bottom", fontsize="small") for i in x]

    def render(self, magnitude: float, fraction: float, bits: int, symmetric: bool) -> dict:
        x, mask, results = _cached_compare(self.n, float(magnitude), float(fraction), int(bits), bool(symmetric), self.seed)
        if self.hist_artist is not None:
            self.hist_artist.remove()
        span = 1.15 * max(np.abs(x).max(), BULK_SIGMA)
        hist, edges = np.histogram(x, bins=241, range=(-span, span))
        self.hist_artist = self.ax_h.stairs(np.maximum(hist, 0.8), edges, fill=True, color="#c6dbef", baseline=0.8)
        self.ax_h.set_xlim(-span, span)
        self.ax_h.set_ylim(0.8, hist.max() * 2.5)
        for r in results:
            line, y = self.range_lines[r.method]
            glo, ghi = r.qp.real_range
            line.set_data([glo, ghi], [y, y])
        for i, r in enumerate(results):
            self.bars_r[i].set_height(max(r.breakdown.rounding_mse, 1e-12))
            self.bars_c[i].set_height(max(r.breakdown.clipping_mse, 1e-12))
            self.bars_l[i].set_height(r.bulk_levels)
            self.level_text[i].set_position((i, r.bulk_levels))
            self.level_text[i].set_text(str(r.bulk_levels))
        self.bulk_pts.set_ydata([r.bulk_mse for r in results])
        vals = [v for r in results for v in (r.breakdown.rounding_mse, r.breakdown.clipping_mse, r.bulk_mse) if v > 0]
        self.ax_e.set_ylim(min(vals) / 3.0, max(vals) * 5.0)
        self.ax_l.set_ylim(0, max(r.bulk_levels for r in results) * 1.2 + 1)
        numbers: dict[str, Any] = {"outliers": f"{int(mask.sum())} of {mask.size} values"}
        for r in results:
            numbers[f"{r.method}: range"] = f"[{r.lo:.3f}, {r.hi:.3f}]"
            numbers[f"{r.method}: scale S"] = r.qp.scale
            numbers[f"{r.method}: rounding MSE"] = r.breakdown.rounding_mse
            numbers[f"{r.method}: clipping MSE"] = r.breakdown.clipping_mse
            numbers[f"{r.method}: MSE on the bulk"] = r.bulk_mse
            numbers[f"{r.method}: levels in the bulk"] = r.bulk_levels
        return numbers


def outlier_explorer(**kwargs: Any) -> OutlierExplorer:
    """Notebook 04: slide outlier size and fraction and the bits; compare four range rules."""
    return OutlierExplorer(**kwargs)


# ---------------------------------------------------------------------------------- a real model
ACTIVATION_METHODS = ("min/max", "percentile 99.99", "MSE-optimal", "EMA of batch min/max")
CALIB_IMAGES, CALIB_BATCH, MSE_SAMPLE = 256, 32, 20_000


def _block_modules(lesson: LessonModel) -> dict[str, torch.nn.Module]:
    """The ConvBNReLU blocks of the folded model: their outputs are the activations we quantize."""
    from qlearn.models import ConvBNReLU

    return {n: m for n, m in lesson.folded.named_modules() if isinstance(m, ConvBNReLU)}


def _calibration(lesson: LessonModel) -> dict[str, list[np.ndarray]]:
    """Each block's outputs on the first 256 training images, batch by batch ((B*C*H*W,) float32)."""
    cache = lesson.cache.setdefault("calibration", {})
    if cache:
        return cache
    blocks = _block_modules(lesson)
    out: dict[str, list[np.ndarray]] = {n: [] for n in blocks}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def fn(module, inputs, output):  # type: ignore[no-untyped-def]
            out[name].append(output.detach().numpy().ravel().copy())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in blocks.items()]
    x = lesson.data.x_train[:CALIB_IMAGES]
    try:
        with torch.no_grad(), one_thread():
            lesson.folded.eval()
            for i in range(0, x.shape[0], CALIB_BATCH):
                lesson.folded(x[i : i + CALIB_BATCH])
    finally:
        for h in handles:
            h.remove()
    cache.update(out)
    return cache


def activation_ranges(lesson: LessonModel, method: str, bits: int) -> dict[str, tuple[float, float]]:
    """Per-block activation range [lo, hi] from the calibration images, by the rule ``method``.

    min/max and percentile 99.99 over all calibration values; MSE-optimal (Eq. 15) on a fixed
    subsample of 20,000 of them; EMA of batch min/max (Eq. 16, decay 0.9) over the 8 batches in order.
    """
    if method not in ACTIVATION_METHODS:
        raise ValueError(f"method must be one of {ACTIVATION_METHODS}, got {method!r}")
    bits = check_bits(bits)
    key = ("act-ranges", method, bits if method == "MSE-optimal" else None)
    if key in lesson.cache:
        return lesson.cache[key]
    ranges = {}
    rng = np.random.default_rng(0)
    for name, batches in _calibration(lesson).items():
        allv = np.concatenate(batches).astype(np.float64)
        if method == "min/max":
            ranges[name] = minmax_range(allv)
        elif method == "percentile 99.99":
            ranges[name] = percentile_range(allv, 99.99)
        elif method == "MSE-optimal":
            sample = allv if allv.size <= MSE_SAMPLE else rng.choice(allv, MSE_SAMPLE, replace=False)
            ranges[name] = mse_range(sample, bits)
        else:
            ema = EMARange(decay=0.9)
            for b in batches:
                ema.update(b)
            ranges[name] = ema.range
    lesson.cache[key] = ranges
    return ranges


@contextlib.contextmanager
def _quantized_activations(lesson: LessonModel, qps: dict[str, QParams]) -> Iterator[None]:
    """Fake-quantize each block's output (Eq. 10) while inside the context (forward hooks)."""
    blocks = _block_modules(lesson)

    def hook(qp: QParams):  # type: ignore[no-untyped-def]
        def fn(module, inputs, output):  # type: ignore[no-untyped-def]
            fq = fake_quantize(output.detach().double().numpy(), qp)  # float64, on the uint grid
            return torch.from_numpy(fq).to(output.dtype)
        return fn

    handles = [blocks[n].register_forward_hook(hook(qp)) for n, qp in qps.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def quantized_activation_accuracy(lesson: LessonModel, bits: int, method: str) -> float:
    """Test accuracy with every block output fake-quantized to ``bits`` (uint, asymmetric; Eqs. 4-6, 10)
    on the range ``activation_ranges(lesson, method, bits)``; weights stay float. Cached."""
    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    bits = check_bits(bits)
    key = ("act-acc", method, bits)
    if key not in lesson.cache:
        from qlearn.train import evaluate

        ranges = activation_ranges(lesson, method, bits)
        qps = {n: qparams_from_range(lo, hi, bits) for n, (lo, hi) in ranges.items()}
        with _quantized_activations(lesson, qps), one_thread():
            lesson.cache[key] = evaluate(lesson.folded, lesson.data.x_test, lesson.data.y_test)
    return lesson.cache[key]


MODEL_VIEWS = ("weights, per-tensor", "weights, per-channel", "activations")


class ModelRangesExplorer(Explorer):
    """Notebook 04, part 2: range rules on the lesson model's folded weights and its activations."""

    title_text = "Range rules on a trained MobileNet: test accuracy"
    figsize = (11.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, view: str = "weights, per-tensor", bits: int = 4,
                 bits_range: tuple[int, int] = (2, 8), progress: bool = True) -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        if not isinstance(self.lesson, LessonModel):
            raise TypeError(f"lesson must be a LessonModel, got {type(self.lesson).__name__}")
        if view not in MODEL_VIEWS:
            raise ValueError(f"view must be one of {MODEL_VIEWS}, got {view!r}")
        if not (isinstance(bits_range, tuple) and len(bits_range) == 2):
            raise TypeError(f"bits_range must be a pair (lowest, highest), got {bits_range!r}")
        lo_bits, hi_bits = check_bits(bits_range[0], "bits_range[0]"), check_bits(bits_range[1], "bits_range[1]")
        if not lo_bits <= int(bits) <= hi_bits:
            raise ValueError(f"bits={bits} must lie in bits_range {bits_range}")
        self.bits_axis = np.arange(lo_bits, hi_bits + 1)
        jobs = [(v, m) for v in MODEL_VIEWS for m in self._methods(v)]

        def sweep() -> dict[str, list[float]]:
            bar = tqdm(jobs, desc="accuracy under each range rule", disable=not progress, leave=False)
            return {f"{v} | {m}": [self.accuracy(v, m, int(b)) for b in self.bits_axis] for v, m in bar}

        stored = cached_results(self.lesson, f"range-rules-{lo_bits}-{hi_bits}-v1", sweep)
        self.curves = {(v, m): np.asarray(stored[f"{v} | {m}"]) for v, m in jobs}
        controls = {
            "view": widgets.Dropdown(options=MODEL_VIEWS, value=view, description="quantize"),
            "bits": int_slider("bits", bits, int(self.bits_axis[0]), int(self.bits_axis[-1])),
        }
        super().__init__(controls)

    @staticmethod
    def _methods(view: str) -> tuple[str, ...]:
        return ACTIVATION_METHODS if view == "activations" else WEIGHT_METHODS

    def accuracy(self, view: str, method: str, bits: int) -> float:
        if view == "activations":
            return quantized_activation_accuracy(self.lesson, bits, method)
        return quantized_weight_accuracy(self.lesson, bits, per_channel=view.endswith("per-channel"), method=method)

    def build(self, fig: Figure) -> None:
        self.ax_acc, self.ax_bar = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
        self.lines = [self.ax_acc.plot([], [], "o-", ms=4)[0] for _ in range(4)]
        self.ax_acc.axhline(100 * self.lesson.float_acc, color="gray", ls=":", label="float")
        self.v_bits = self.ax_acc.axvline(4, color="gray", lw=0.8)
        self.ax_acc.set(xlabel="bits", ylabel="test accuracy (%)", ylim=(0, 102), xticks=self.bits_axis)
        self.legend = None
        self.bars = self.ax_bar.bar(np.arange(4), np.ones(4), 0.6)
        self.bar_text = [self.ax_bar.text(i, 0, "", ha="center", va="bottom", fontsize="small") for i in range(4)]
        self.ax_bar.set(ylabel="test accuracy (%)", ylim=(0, 110), xticks=np.arange(4))

    def render(self, view: str, bits: int) -> dict:
        methods = self._methods(view)
        i = int(bits - self.bits_axis[0])
        for line, m in zip(self.lines, methods):
            line.set_data(self.bits_axis, 100 * self.curves[(view, m)])
            line.set_color(METHOD_COLORS[m])
            line.set_label(m)
        if self.legend is not None:
            self.legend.remove()
        self.legend = self.ax_acc.legend(loc="lower right")
        self.v_bits.set_xdata([bits, bits])
        self.ax_acc.set_title(f"{view}: accuracy vs bits")
        accs = [float(self.curves[(view, m)][i]) for m in methods]
        for k, (bar, m, a) in enumerate(zip(self.bars, methods, accs)):
            bar.set_height(100 * a)
            bar.set_color(METHOD_COLORS[m])
            self.bar_text[k].set_position((k, 100 * a))
            self.bar_text[k].set_text(f"{100 * a:.1f}")
        self.ax_bar.set_xticks(np.arange(4), [m.replace("percentile", "pct").replace(" of batch min/max", "")
                                              for m in methods], fontsize="small")
        self.ax_bar.set_title(f"at {bits} bits")
        numbers: dict[str, Any] = {"quantized": view, "bits": int(bits), "float accuracy": self.lesson.float_acc}
        for m, a in zip(methods, accs):
            numbers[f"accuracy, {m}"] = a
        return numbers


def model_ranges_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> ModelRangesExplorer:
    """Notebook 04: accuracy of the lesson model under each range rule, for weights or activations."""
    return ModelRangesExplorer(lesson, **kwargs)
