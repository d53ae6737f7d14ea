"""Exercise 3: per-channel -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.grading.exercises._common import (
    _NP_RULES,
    _ROUNDING_BUGS,
    _rng_array,
    _shape,
    _st,
    _with,
    floats_close,
    ints_equal,
    tuple_of,
)
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import quantize
from qlearn.ranges import minmax_range

EXERCISE = Exercise("ex3", "ex3_per_channel.ipynb", "Per-channel quantization parameters",
                    "notebooks/03_per_channel.ipynb")


def _per_channel_minmax_oracle(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    return minmax_range(w, axis)


def _strategy_per_channel_minmax() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        shape = d(_shape(1, 4, 4))
        w = _rng_array(d(st.integers(0, 2**32 - 1)), shape, -3.0, 3.0)
        return (w, d(st.integers(-len(shape), len(shape) - 1)))

    return draw()


def _symmetric_scales_oracle(w: np.ndarray) -> np.ndarray:
    lo, hi = minmax_range(w, 0)
    return qparams_from_range(lo, hi, 8, symmetric=True, signed=True, narrow_range=True, axis=0).scale


def _strategy_symmetric_scales() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        shape = d(_shape(2, 4, 4))
        w = _rng_array(d(st.integers(0, 2**32 - 1)), shape, -1.0, 1.0)
        w *= np.logspace(-3, 2, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))  # channel ranges differ
        w[: d(st.integers(0, 1))] = 0.0  # sometimes an all-zero channel
        return (w,)

    return draw()


def _quantize_per_channel_oracle(w: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    return quantize(w, QParams(scales, np.zeros(len(scales), dtype=np.int64), -127, 127, axis))


def _per_channel_quotient(args: tuple) -> np.ndarray:
    w, scales, axis = args
    shape = [1] * w.ndim
    shape[axis] = -1
    return w / np.asarray(scales).reshape(shape)


def _strategy_quantize_per_channel() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        shape = d(_shape(2, 4, 4))
        axis = d(st.integers(-len(shape), len(shape) - 1))
        seed = d(st.integers(0, 2**32 - 1))
        w = _rng_array(seed, shape, -2.0, 2.0)
        scales = _rng_array(d(st.integers(0, 2**32 - 1)), (shape[axis],), 1e-3, 3e-2)
        if d(st.integers(0, 2)):  # two draws in three: exact ties w/S_c = k + 1/2 of both signs
            rng = np.random.default_rng(seed + 1)
            scales = 2.0 ** -rng.integers(5, 10, shape[axis])
            bshape = [1] * len(shape)
            bshape[axis] = -1
            k = rng.integers(-130, 130, size=shape)
            w = np.where(rng.random(shape) < 0.6, (k + 0.5) * scales.reshape(bshape), w)
        return (w, scales, axis)

    return draw()


_W34 = np.array([[0.5, -1.0, 0.25, 2.0], [3.0, 0.0, -6.0, 1.5], [-0.1, 0.2, 0.05, 0.0]])


EX3 = [
    Task(
        "task_3_1", "per_channel_minmax", ("w", "axis"),
        "min and max of every channel", "ex3", EXERCISE.lesson,
        oracle=_per_channel_minmax_oracle,
        compare=tuple_of(("lo", "hi"), (floats_close(0.0, 0.0), floats_close(0.0, 0.0))),
        fixed=(
            Case("a 3x4 matrix, channels on axis 0", (_W34, 0)),
            Case("the same matrix, channels on axis 1", (_W34, 1)),
        ),
        edge=(
            Case("conv weights (Cout, Cin, kh, kw), axis 0", (_rng_array(1, (4, 2, 3, 3), -1, 1), 0),
                 "reduce over every axis except the channel axis, e.g. move it first and reshape to (C, -1)"),
            Case("a negative axis", (_W34, -1), "axis=-1 is the last axis, as in numpy"),
            Case("a single channel", (np.array([[3.0, -1.0, 2.0]]), 0)),
            Case("a constant channel", (np.array([[2.0, 2.0], [-1.0, 5.0]]), 0)),
        ),
        strategy=_strategy_per_channel_minmax,
        hint="one (min, max) pair per index along `axis`, reducing over all other axes (Eq. 13)",
        forbidden=("qlearn.ranges.minmax_range",),
    ),
    Task(
        "task_3_2", "symmetric_channel_scales", ("w",),
        "symmetric int8 scale per output channel", "ex3", EXERCISE.lesson,
        oracle=_symmetric_scales_oracle, compare=floats_close(1e-12, 0.0),
        fixed=(
            Case("a 3x4 matrix", (_W34,)),
            Case("conv weights (4, 2, 3, 3)", (_rng_array(2, (4, 2, 3, 3), -0.5, 0.5),)),
        ),
        edge=(
            Case("an all-zero channel", (np.array([[0.0, 0.0], [1.0, -2.0]]),),
                 "a channel of zeros has max|w| = 0: the contract says S = 1 for it, so nothing divides by zero"),
            Case("a channel of negative values only", (np.array([[-3.0, -1.0], [1.0, 2.0]]),),
                 "use max(|min|, |max|) of the channel: -3 needs S = 3/127, not 1/127 (Eq. 8)"),
            Case("channel ranges differing by 10^6", (np.array([[1e-4, -2e-4], [50.0, 120.0]]),)),
        ),
        strategy=_strategy_symmetric_scales,
        hint="S_c = max(|w_c|) / 127 for channel c along axis 0 (narrow int8 [-127, 127], Z = 0; Eq. 8)",
        forbidden=("qlearn.qparams.qparams_from_range", "qlearn.ranges.minmax_range"),
    ),
    Task(
        "task_3_3", "quantize_per_channel", ("w", "scales", "axis"),
        "quantize with one scale per channel", "ex3", EXERCISE.lesson,
        oracle=_quantize_per_channel_oracle, compare=ints_equal(_per_channel_quotient),
        fixed=(
            Case("a 3x4 matrix, channels on axis 0", (_W34, np.array([2.0, 6.0, 0.2]) / 127, 0)),
            Case("a 3x4 matrix, channels on axis 1", (_W34, np.array([3.0, 1.0, 6.0, 2.0]) / 127, 1)),
        ),
        edge=(
            Case("a square matrix: broadcasting along the wrong axis goes unnoticed",
                 (np.arange(9.0).reshape(3, 3), np.array([1.0, 2.0, 4.0]), 0),
                 "scales of shape (C,) broadcast against the LAST axis; reshape them to (C, 1, ...) "
                 "with C at `axis` first"),
            Case("ties: w/S = k + 1/2", (np.array([[0.5, 1.5, 2.5], [-0.5, -1.5, -2.5]]), np.array([1.0, 1.0]), 0),
                 "round half to even (np.rint): 2.5 -> 2, -0.5 -> 0"),
            Case("clamping to the narrow range [-127, 127]", (np.array([[-1000.0, 1000.0]]), np.array([1.0]), 0),
                 "weights use the narrow range: the smallest code is -127, not -128"),
            Case("conv weights, axis 0", (_rng_array(3, (2, 2, 2, 2), -1, 1), np.array([1 / 127, 0.5 / 127]), 0)),
        ),
        strategy=_strategy_quantize_per_channel,
        hint="q = clamp(round(w / S_c), -127, 127) with S_c broadcast along `axis` (Eq. 9, per channel)",
        forbidden=("qlearn.quantize.quantize",),
    ),
]


def _pc_rule(rnd: Callable[[Any], np.ndarray]) -> Callable[..., np.ndarray]:
    def quantize_per_channel(w: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * w.ndim
        shape[axis] = -1
        return np.clip(rnd(w / np.asarray(scales).reshape(shape)), -127, 127).astype(np.int64)

    return quantize_per_channel


def _per_channel_rint(w: np.ndarray, scales: np.ndarray, axis: int, qmin: int) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.rint(w / np.asarray(scales).reshape(shape)), qmin, 127).astype(np.int64)


def _sym_scales(w: np.ndarray, levels: int, absolute: bool = True) -> np.ndarray:
    f = w.reshape(len(w), -1)
    m = np.abs(f).max(1) if absolute else f.max(1)
    return np.where(m > 0, m / levels, 1.0)


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_3_1": (
        Bug("reduced along `axis` instead of over the other axes", lambda w, axis: (w.min(axis=axis), w.max(axis=axis)),
            "reduce over every axis except `axis`: one (min, max) per channel"),
    ),
    "task_3_2": (
        Bug("divided by 128", lambda w: _sym_scales(w, 128), "the narrow int8 grid is [-127, 127]: S = max|w| / 127"),
        Bug("max(w) instead of max(|w|)", lambda w: _sym_scales(w, 127, absolute=False),
            "use the largest magnitude max(|min|, |max|) (Eq. 8)"),
    ),
    "task_3_3": (
        Bug("scales broadcast along the last axis", lambda w, sc, axis: np.clip(np.rint(w / sc), -127, 127).astype(np.int64),
            "scales of shape (C,) broadcast against the LAST axis; reshape them to (C, 1, ...) with C at `axis` before dividing"),
        Bug("clamped to [-128, 127]", lambda w, sc, axis: _per_channel_rint(w, sc, axis, -128),
            "weights use the narrow range [-127, 127]"),
    ) + _with(_ROUNDING_BUGS, _pc_rule, _NP_RULES),
}


TASKS = EX3
