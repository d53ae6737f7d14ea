"""Notebook 04: outliers and range setting. What the lesson measures.

A uniform grid spends its 2^b levels evenly over [lo, hi]. With min/max ranges (Eq. 13) one value far
out in the tail sets the range for the whole tensor: the step S grows with the outlier's magnitude m,
and every ordinary value shares a handful of grid points (Eq. 71). Clipping the range (a percentile,
the MSE-optimal range of Eq. 15) gives the bulk its levels back at the price of a clipping error on
the outliers (Eq. 14); the exponential moving average of per-batch extremes (Eq. 16), the paper's rule
for activations, lands in between because rare outliers rarely make it into a batch's extreme.

This module holds the synthetic experiment (Gaussian values with a fraction of outliers, four range
rules side by side: ``with_outliers``, ``compare_ranges``, ``outlier_experiment``) and post-training
quantization of the lesson model's weights and activations with the same rules
(``activation_ranges``, ``quantized_activation_accuracy``, ``model_accuracy``, ``range_rule_curves``).
Every range comes from ``qlearn.ranges`` (``range_for``, ``weight_qparams``). The explorers of
notebook 04 are in ``qlearn.widgets.outliers``.
"""
from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qlearn._checks import as_float_array, check_bits
from qlearn.error import ErrorBreakdown, error_breakdown
from qlearn.lessons.lesson_model import LessonModel, cached_results, check_lesson
from qlearn.lessons.per_channel import WEIGHT_METHODS, quantized_weight_accuracy
from qlearn.models import ConvBNReLU
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import EMARange, range_for
from qlearn.threads import one_thread
from qlearn.train import evaluate

__all__ = [
    "OUTLIER_METHODS",
    "BULK_SIGMA",
    "with_outliers",
    "RangeResult",
    "compare_ranges",
    "outlier_experiment",
    "ACTIVATION_METHODS",
    "activation_ranges",
    "quantized_activation_accuracy",
    "MODEL_VIEWS",
    "view_methods",
    "model_accuracy",
    "range_rule_curves",
]

#: The four range rules compared on synthetic outliers (labels of ``qlearn.ranges.RANGE_METHODS``).
OUTLIER_METHODS = ("min/max", "percentile 99.9", "MSE-optimal", "EMA of batch min/max")
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
    methods: tuple[str, ...] = OUTLIER_METHODS,
) -> list[RangeResult]:
    """Apply each range rule (``range_for``) to ``x`` at ``bits``; measure the error on the bulk and the outliers.

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
def outlier_experiment(
    n: int, magnitude: float, fraction: float, bits: int, symmetric: bool, seed: int,
) -> tuple[np.ndarray, np.ndarray, list[RangeResult]]:
    """``with_outliers(n, magnitude, fraction, seed)`` and ``compare_ranges`` on it: (x, is_outlier, results).

    Cached per argument set (the outlier explorer calls it on every slider move).
    """
    x, mask = with_outliers(n, magnitude, fraction, seed)
    return x, mask, compare_ranges(x, bits, outliers=mask, symmetric=symmetric)


# ---------------------------------------------------------------------------------- a real model
ACTIVATION_METHODS = ("min/max", "percentile 99.99", "MSE-optimal", "EMA of batch min/max")
CALIB_IMAGES, CALIB_BATCH, MSE_SAMPLE = 256, 32, 20_000


def _block_modules(lesson: LessonModel) -> dict[str, torch.nn.Module]:
    """The ConvBNReLU blocks of the folded model: their outputs are the activations we quantize."""
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
    subsample of 20,000 of them (all three by ``range_for``); EMA of batch min/max (Eq. 16, decay 0.9)
    over the 8 calibration batches in order, the stream the model saw.
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
        allv = np.concatenate(batches).astype(np.float64)  # (256*C*H*W,) this block's calibration values
        if method == "EMA of batch min/max":  # the real batches, not range_for's even cut of the values
            ema = EMARange(decay=0.9)
            for b in batches:
                ema.update(b)
            ranges[name] = ema.range
        elif method == "MSE-optimal":
            sample = allv if allv.size <= MSE_SAMPLE else rng.choice(allv, MSE_SAMPLE, replace=False)
            ranges[name] = range_for(sample, method, bits)
        else:
            ranges[name] = range_for(allv, method, bits)
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
    check_lesson(lesson)
    bits = check_bits(bits)
    key = ("act-acc", method, bits)
    if key not in lesson.cache:
        ranges = activation_ranges(lesson, method, bits)
        qps = {n: qparams_from_range(lo, hi, bits) for n, (lo, hi) in ranges.items()}
        with _quantized_activations(lesson, qps), one_thread():
            lesson.cache[key] = evaluate(lesson.folded, lesson.data.x_test, lesson.data.y_test)
    return lesson.cache[key]


MODEL_VIEWS = ("weights, per-tensor", "weights, per-channel", "activations")


def view_methods(view: str) -> tuple[str, ...]:
    """The range rules compared for one of ``MODEL_VIEWS``: ACTIVATION_METHODS or WEIGHT_METHODS."""
    if view not in MODEL_VIEWS:
        raise ValueError(f"view must be one of {MODEL_VIEWS}, got {view!r}")
    return ACTIVATION_METHODS if view == "activations" else WEIGHT_METHODS


def model_accuracy(lesson: LessonModel, view: str, method: str, bits: int) -> float:
    """Test accuracy of the lesson model with ``view`` quantized to ``bits`` by the range rule ``method``.

    "activations": ``quantized_activation_accuracy``; "weights, per-tensor" / "weights, per-channel":
    ``quantized_weight_accuracy`` (``qlearn.lessons.per_channel``). Cached in ``lesson.cache``.
    """
    if view == "activations":
        return quantized_activation_accuracy(lesson, bits, method)
    return quantized_weight_accuracy(lesson, bits, per_channel=view.endswith("per-channel"), method=method)


def range_rule_curves(
    lesson: LessonModel, lowest: int = 2, highest: int = 8, *, progress: bool = False,
) -> dict[tuple[str, str], np.ndarray]:
    """(view, method) -> accuracy for ``lowest..highest`` bits, for every view and its range rules.

    Each value is a (highest - lowest + 1,) float64 array of ``model_accuracy``; stored once beside
    the lesson model (``cached_results``, file "range-rules-<lowest>-<highest>-v1"), shipped for the
    default model. ``progress`` shows a tqdm bar over the (view, method) pairs while computing.
    """
    check_lesson(lesson)
    lowest, highest = check_bits(lowest, "lowest"), check_bits(highest, "highest")
    if lowest > highest:
        raise ValueError(f"lowest must be <= highest, got {lowest} and {highest}")
    jobs = [(v, m) for v in MODEL_VIEWS for m in view_methods(v)]

    def sweep() -> dict[str, list[float]]:
        bar = tqdm(jobs, desc="accuracy under each range rule", disable=not progress, leave=False)
        return {f"{v} | {m}": [model_accuracy(lesson, v, m, b) for b in range(lowest, highest + 1)]
                for v, m in bar}

    stored = cached_results(lesson, f"range-rules-{lowest}-{highest}-v1", sweep)
    return {(v, m): np.asarray(stored[f"{v} | {m}"]) for v, m in jobs}
