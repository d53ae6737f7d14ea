"""Notebook 03: one scale per tensor, or one scale per output channel? What the lesson measures.

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
* weight-only quantization of the lesson model (``qlearn.lessons.lesson_model``) with
  ``qlearn.ranges.weight_qparams``: ``quantized_weight_accuracy`` (shared with notebook 04) and
  ``weight_bits_curves``, the accuracy-vs-bits sweep the notebook plots;
* ``widest_spread_layer``, the layer the notebooks 03 and 05 open on.

The explorers that show these numbers are in ``qlearn.widgets.per_channel``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn._checks import as_float_array, check_axis, check_bits, check_bool
from qlearn.lessons.lesson_model import FoldedLayer, LessonModel, cached_results, check_lesson, swapped_weights
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import RANGE_METHODS, minmax_range, parse_range_method, weight_qparams
from qlearn.threads import one_thread
from qlearn.train import evaluate

__all__ = [
    "SEED_RANGES",
    "seed_channel_weights",
    "SchemeComparison",
    "compare_schemes",
    "channel_sqnr_db",
    "WEIGHT_METHODS",
    "quantized_weight_accuracy",
    "weight_bits_curves",
    "widest_spread_layer",
]

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
    symmetric = check_bool(symmetric, "symmetric")
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


# ---------------------------------------------------------------------------------- weight-only PTQ
#: Weight range rules: the range of each tensor (or channel) that the symmetric grid covers. Every rule
#: of ``qlearn.ranges.RANGE_METHODS`` but the EMA, which averages a stream of activation batches.
WEIGHT_METHODS: tuple[str, ...] = tuple(m for m in RANGE_METHODS if parse_range_method(m)[0] != "ema")


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
    check_lesson(lesson)
    bits = check_bits(bits)
    names = tuple(lesson.layers) if layers is None else tuple(layers)
    chosen = [lesson.layer(n) for n in names]
    key = (bits, bool(per_channel), method, names)
    if key not in lesson.cache:
        new = [fake_quantize(l.weight, weight_qparams(l.weight, bits, per_channel=per_channel, method=method))
               for l in chosen]
        with swapped_weights(chosen, new), one_thread():
            lesson.cache[key] = evaluate(lesson.folded, lesson.data.x_test, lesson.data.y_test)
    return lesson.cache[key]


def widest_spread_layer(lesson: LessonModel, kind: str | None = "depthwise") -> str:
    """Name of the layer (of ``kind``, or any) whose channel ranges max|w_c| differ the most."""
    def spread(layer: FoldedLayer) -> float:
        a = np.abs(layer.weight.reshape(layer.channels, -1)).max(axis=1)
        return float(a.max() / max(a.min(), 1e-12))

    candidates = [l for l in lesson.layers.values() if kind is None or l.kind == kind] or list(lesson.layers.values())
    return max(candidates, key=spread).name


def weight_bits_curves(lesson: LessonModel, lowest: int = 2, highest: int = 8) -> dict[bool, np.ndarray]:
    """Accuracy with every layer's weights quantized, for ``lowest..highest`` bits: per_channel -> array.

    ``{False: per-tensor, True: per-channel}``, each a (highest - lowest + 1,) float64 array of
    ``quantized_weight_accuracy(lesson, b, per_channel=...)``; stored once beside the lesson model
    (``cached_results``, file "weight-bits-<lowest>-<highest>-v1"), shipped for the default model.
    """
    check_lesson(lesson)
    lowest, highest = check_bits(lowest, "lowest"), check_bits(highest, "highest")
    if lowest > highest:
        raise ValueError(f"lowest must be <= highest, got {lowest} and {highest}")
    bits_axis = range(lowest, highest + 1)

    def sweep() -> dict[str, list[float]]:
        return {
            name: [quantized_weight_accuracy(lesson, b, per_channel=pc) for b in bits_axis]
            for name, pc in (("per-tensor", False), ("per-channel", True))
        }

    stored = cached_results(lesson, f"weight-bits-{lowest}-{highest}-v1", sweep)
    return {False: np.asarray(stored["per-tensor"]), True: np.asarray(stored["per-channel"])}
