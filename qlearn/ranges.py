"""Range setting: which real interval [lo, hi] should the grid cover?

Every estimator returns ``(lo, hi)``: Python floats per-tensor (``axis=None``), or two (C,) float64
arrays when ``axis`` names the channel axis (one range per channel, reducing over all other axes).

- ``minmax_range``:     lo = min(x), hi = max(x). No clipping, but one outlier stretches the grid
                        for everybody (the paper's weights, Sec. 3, and its warning about outliers).
- ``percentile_range``: lo, hi = the (100 - p)-th and p-th percentiles. Clips the tails.
- ``mse_range``:        the range [alpha lo, alpha hi] (0 < alpha <= 1) whose fake-quantization MSE
                        is smallest (Eq. 15): the balance of rounding and clipping error.
- ``EMARange``:         exponential moving average of per-batch min/max (Eq. 16), the paper's
                        activation ranges during training (Sec. 3, "learning quantization ranges").
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from qlearn._checks import as_float_array, check_axis, check_bits, check_bool, check_int
from qlearn.qparams import QParams, integer_limits, qparams_from_range
from qlearn.quantize import fake_quantize

#: ``mse_range`` evaluates 2 * grid candidate ranges, each a fake-quantization of the whole tensor;
#: 1024 (16x the default) is already far finer than the error curve needs.
GRID_MAX = 1024
#: float64 values one step of the ``mse_range`` search fake-quantizes at once (candidates x tensor).
_SEARCH_VALUES = 2**20


def _channels_first(x: np.ndarray, axis: int | None) -> np.ndarray:
    """(C, M) view with the channel axis first, or (1, N) for per-tensor."""
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _out(lo: np.ndarray, hi: np.ndarray, axis: int | None) -> tuple[Any, Any]:
    if axis is None:
        return float(lo[0]), float(hi[0])
    return lo, hi


def _prepare(x: Any, axis: Any) -> tuple[np.ndarray, int | None]:
    arr = as_float_array(x, "x")
    ax = check_axis(axis, arr.ndim)
    if ax is not None and arr.shape[ax] == 0:
        raise ValueError("x has no channels along the requested axis")
    if ax is not None and arr.size // arr.shape[ax] == 0:
        raise ValueError("each channel of x is empty: a range needs at least one value per channel")
    return arr, ax


def minmax_range(x: Any, axis: int | None = None) -> tuple[Any, Any]:
    """(min(x), max(x)), per tensor or per channel along ``axis`` (Eq. 13)."""
    arr, ax = _prepare(x, axis)
    flat = _channels_first(arr, ax)  # (C, M)
    return _out(flat.min(axis=1), flat.max(axis=1), ax)


def percentile_range(x: Any, pct: float, axis: int | None = None) -> tuple[Any, Any]:
    """((100 - pct)-th percentile, pct-th percentile) of x; pct in [50, 100] (pct = 100 is min/max)."""
    if isinstance(pct, bool) or not isinstance(pct, numbers.Real):
        raise TypeError(f"pct must be a number between 50 and 100, got {pct!r}")
    if not 50.0 <= float(pct) <= 100.0 or not np.isfinite(pct):
        raise ValueError(f"pct must be between 50 and 100 (e.g. 99.9), got {pct}")
    arr, ax = _prepare(x, axis)
    flat = _channels_first(arr, ax)
    lo, hi = np.percentile(flat, [100.0 - float(pct), float(pct)], axis=1)
    return _out(lo, hi, ax)


def mse_range(
    x: Any,
    bits: int,
    axis: int | None = None,
    *,
    symmetric: bool = False,
    signed: bool = False,
    narrow_range: bool = False,
    grid: int = 64,
) -> tuple[Any, Any]:
    """The clipping range that minimises the fake-quantization MSE (Eq. 15).

    Candidates are the min/max range shrunk by alpha in (0, 1]: [alpha lo, alpha hi]. A coarse pass over
    ``grid`` values of alpha is refined by a second pass of ``grid`` values around the best one, for
    every channel at once; ``grid`` is an integer in [2, GRID_MAX = 1024]. Parameters are nudged exactly
    as ``qparams_from_range`` does, so the returned range gives the reported error when passed to it.
    Errors are float64 means over each channel. This is the one MSE search of qlearn: ``weight_qparams``
    (and through it QAT's ``qlearn.fake_quant.weight_scale``, Eq. 54) call it.
    """
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    grid = check_int(grid, "grid", minimum=2, maximum=GRID_MAX)
    arr, ax = _prepare(x, axis)
    flat = _channels_first(arr, ax)  # (C, M) float64
    lo0 = np.minimum(flat.min(axis=1), 0.0)
    hi0 = np.maximum(flat.max(axis=1), 0.0)
    integer_limits(bits, signed=signed, narrow_range=narrow_range)  # validates the flags' combination

    C, M = flat.shape
    # candidates per pass: K * C * M float64 values are fake-quantized at once (<= 8 MiB per array)
    chunk = max(1, _SEARCH_VALUES // (C * M))

    def errors_at(alphas: np.ndarray) -> np.ndarray:  # alphas (K, C) -> mse (K, C)
        K = alphas.shape[0]
        qp = qparams_from_range(  # one (S, Z) per (candidate, channel): K * C "channels"
            (alphas * lo0).ravel(), (alphas * hi0).ravel(), bits, symmetric=symmetric, signed=signed,
            narrow_range=narrow_range, axis=0,
        )
        tiled = np.broadcast_to(flat, (K, C, M)).reshape(K * C, M)  # every candidate sees the whole tensor
        return np.mean((fake_quantize(tiled, qp) - tiled) ** 2, axis=1).reshape(K, C)

    def search(alphas: np.ndarray) -> np.ndarray:  # alphas (K, C) -> best alpha (C,)
        errs = np.concatenate([errors_at(alphas[k : k + chunk]) for k in range(0, alphas.shape[0], chunk)])
        return alphas[np.argmin(errs, axis=0), np.arange(C)]

    coarse = np.repeat(np.linspace(1.0 / grid, 1.0, grid)[:, None], C, axis=1)  # (grid, C)
    best = search(coarse)
    step = 1.0 / grid
    fine = np.clip(best[None, :] + np.linspace(-step, step, grid)[:, None], step / grid, 1.0)
    best = search(np.concatenate([fine, best[None, :]]))  # the coarse winner stays a candidate
    return _out(best * lo0, best * hi0, ax)


class EMARange:
    """Activation ranges as the paper learns them (Sec. 3): an exponential moving average (Eq. 16)

        lo <- decay * lo + (1 - decay) * min(batch),   hi <- decay * hi + (1 - decay) * max(batch)

    The paper asks only for a decay "close to 1"; the default 0.999 is TensorFlow's reference default,
    not a value from the paper.
    The first batch initialises (lo, hi) to its own min/max. ``update(x)`` returns the new range;
    ``axis`` gives per-channel ranges. Smoothing keeps the range from jumping with every batch,
    which would make early activation quantization impossible (the seed's remark).
    """

    def __init__(self, decay: float = 0.999, axis: int | None = None) -> None:
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), e.g. 0.999, got {decay!r}")
        self.decay = float(decay)
        if axis is not None:
            check_int(axis, "axis")  # an integer (or None); whether it exists is checked per batch
        self.axis = None if axis is None else int(axis)
        self.lo: Any = None
        self.hi: Any = None
        self.count = 0

    def update(self, x: Any) -> tuple[Any, Any]:
        lo_b, hi_b = minmax_range(x, self.axis)
        if self.count and np.shape(lo_b) != np.shape(self.lo):
            raise ValueError(
                f"x has {np.size(lo_b)} channels along axis {self.axis} but this EMARange has averaged "
                f"{np.size(self.lo)}; use one EMARange per tensor (or a new one when the channel count changes)"
            )
        if self.count == 0:
            self.lo, self.hi = lo_b, hi_b
        else:
            d = self.decay
            self.lo = d * self.lo + (1.0 - d) * lo_b
            self.hi = d * self.hi + (1.0 - d) * hi_b
        self.count += 1
        return self.lo, self.hi

    @property
    def range(self) -> tuple[Any, Any]:
        if self.count == 0:
            raise ValueError("EMARange has seen no data yet: call update(x) with a batch first")
        return self.lo, self.hi

    def __repr__(self) -> str:
        return f"EMARange(decay={self.decay}, lo={self.lo}, hi={self.hi}, count={self.count})"


# ------------------------------------------------------------------ one vocabulary: name -> range
#: The range rules by name. Lessons show them under these labels; PTQ and QAT name them by the short
#: aliases. ``"percentile P"`` takes any P in [50, 100] (e.g. "percentile 99.9").
RANGE_METHODS = ("min/max", "percentile 99.9", "percentile 99", "MSE-optimal", "EMA of batch min/max")
_ALIASES = {"min/max": "minmax", "minmax": "minmax", "MSE-optimal": "mse", "mse": "mse",
            "EMA of batch min/max": "ema", "ema": "ema"}


def parse_range_method(method: Any) -> tuple[str, float | None]:
    """("minmax" | "percentile" | "mse" | "ema", pct or None) for a range rule's name.

    Accepts the labels of ``RANGE_METHODS`` ("min/max", "percentile 99.9", "MSE-optimal",
    "EMA of batch min/max") and the short names "minmax", "mse", "ema", "percentile P".
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a range rule's name such as 'min/max', got {type(method).__name__}")
    if method in _ALIASES:
        return _ALIASES[method], None
    parts = method.split()
    if len(parts) == 2 and parts[0] == "percentile":
        try:
            pct = float(parts[1])
        except ValueError:
            pct = float("nan")
        if 50.0 <= pct <= 100.0:
            return "percentile", pct
    raise ValueError(f"unknown range method {method!r}; choose one of {RANGE_METHODS} "
                     "(or 'minmax', 'mse', 'ema', 'percentile P' with P in [50, 100])")


def range_for(
    x: Any, method: str, bits: int = 8, *, axis: int | None = None, symmetric: bool = False,
    batches: int = 40, decay: float = 0.9, grid: int = 64,
) -> tuple[Any, Any]:
    """The range [lo, hi] that the rule ``method`` picks for ``x``: the one entry point name -> range.

    min/max (Eq. 13); percentile P (the (100 - P)th and Pth percentiles); MSE-optimal (Eq. 15, for
    ``bits`` and the symmetric signed narrow-range format when ``symmetric``, else uint8-style
    asymmetric); EMA of batch min/max (Eq. 16): ``x`` is cut into ``batches`` consecutive batches
    along axis 0 of its flattened values, as a stream of activations, averaged with ``decay``
    (per tensor only). ``axis`` gives one range per channel, as in ``minmax_range``.
    """
    kind, pct = parse_range_method(method)
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    if kind == "minmax":
        return minmax_range(x, axis)
    if kind == "percentile":
        return percentile_range(x, pct, axis)  # type: ignore[arg-type]
    if kind == "mse":
        fmt = dict(symmetric=True, signed=True, narrow_range=True) if symmetric else {}
        return mse_range(x, bits, axis, grid=grid, **fmt)
    if axis is not None:
        raise ValueError("the EMA rule gives one range per tensor here: pass axis=None")
    arr = as_float_array(x, "x").ravel()
    batches = check_int(batches, "batches", minimum=1, maximum=max(1, arr.size))
    ema = EMARange(decay=decay)
    for batch in np.array_split(arr, int(batches)):
        ema.update(batch)
    return ema.range


def weight_qparams(w: Any, bits: int = 8, *, per_channel: bool = True, method: str = "min/max",
                   grid: int = 64) -> QParams:
    """Symmetric narrow-range weight parameters from a range rule: the one weight-qparams function.

    The rule (``range_for``) picks [lo, hi] over the whole tensor or over each output channel
    (axis 0); then S = max(|lo|, |hi|) / (2^(b-1) - 1) and Z = 0, codes in [-(2^(b-1) - 1), 2^(b-1) - 1]
    ([-127, 127] at 8 bits). Symmetric per-channel int8 weights with Z = 0 are Krishnamoorthi 2018 /
    the TFLite int8 spec (docs/conventions.md); the paper itself keeps uint8 weights (Sec. 2.4) with
    codes avoiding -128 (Sec. 3.1, App. B). An all-zero channel gets S = 1 (0 stays exact).
    """
    arr = as_float_array(w, "w")
    bits = check_bits(bits)
    per_channel = check_bool(per_channel, "per_channel")
    if per_channel and arr.ndim < 2:
        raise ValueError(f"per-channel weights need a (Cout, ...) array, got shape {arr.shape}")
    if parse_range_method(method)[0] == "ema":
        raise ValueError("weights are fixed: use 'min/max', 'percentile P' or 'MSE-optimal', not the EMA rule")
    axis = 0 if per_channel else None
    lo, hi = range_for(arr, method, bits, axis=axis, symmetric=True, grid=grid)
    return qparams_from_range(lo, hi, bits, axis=axis, symmetric=True, signed=True, narrow_range=True)
