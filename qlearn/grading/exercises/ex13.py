"""Exercise 13: per-token quantization and SmoothQuant's scales -- its tasks (``TASKS``) and their classic
mistakes (``BUGS``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.grading.exercises._common import (
    _NP_RULES,
    _ROUNDING_BUGS,
    _rng_array,
    _st,
    _with,
    floats_close,
    ints_equal,
    tuple_of,
)
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.quantize import quantize
from qlearn.ranges import weight_qparams

EXERCISE = Exercise("ex13", "ex13_smoothquant.ipynb", "Per-token quantization and SmoothQuant's scales",
                    "notebooks/11_transformer.ipynb")


def _per_token_oracle(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    # per token = one symmetric narrow-range scale per row: exactly weight_qparams' per-channel rule on axis 0
    qp = weight_qparams(x, bits, per_channel=True)
    return np.asarray(quantize(x, qp), dtype=np.int64), np.asarray(qp.scale, dtype=np.float64)


def _per_token_quotient(args: tuple) -> np.ndarray:
    x, bits = args
    m = np.abs(x).max(axis=1, keepdims=True)
    return x / np.where(m > 0, m / (2 ** (bits - 1) - 1), 1.0)


def _strategy_per_token() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        t, c = d(st.integers(1, 6)), d(st.integers(1, 8))
        x = _rng_array(d(st.integers(0, 2**32 - 1)), (t, c), -4.0, 4.0)
        x *= np.logspace(-2, 2, t)[:, None]  # token ranges differ by orders of magnitude
        bits = d(st.sampled_from([8, 8, 4, 6, 2]))
        if d(st.integers(0, 1)) == 0:
            # exact ties: a token whose max |x| is qmax * 2^e has S = 2^e exactly, so x / S = k + 1/2 exactly
            qmax, row = 2 ** (bits - 1) - 1, d(st.integers(0, t - 1))
            halves = np.array([d(st.integers(-qmax, qmax - 1)) + 0.5 for _ in range(c)])
            x[row] = np.concatenate([[float(qmax)], halves[1:]]) * 2.0 ** d(st.integers(-6, 6))
        if d(st.integers(0, 3)) == 0:
            x[d(st.integers(0, t - 1))] = 0.0  # sometimes an all-zero token (e.g. padding)
        return (x, bits)

    return draw()


def _smooth_oracle(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    from qlearn.lessons.transformer import smooth_scales

    return smooth_scales(x_absmax, w_absmax, alpha)


def _strategy_smooth() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        n = d(st.integers(1, 8))
        xa = _rng_array(d(st.integers(0, 2**32 - 1)), (n,), 0.01, 100.0)
        wa = _rng_array(d(st.integers(0, 2**32 - 1)), (n,), 0.001, 2.0)
        if d(st.integers(0, 3)) == 0:
            xa[d(st.integers(0, n - 1))] = 0.0  # a dead channel
        return (xa, wa, d(st.sampled_from([0.0, 0.5, 1.0, 0.25, 0.8])))

    return draw()


_X = np.array([[0.5, -1.0, 0.25, 2.0], [30.0, 0.0, -60.0, 15.0], [-0.01, 0.02, 0.005, 0.0]])


EX13 = [
    Task(
        "task_13_1", "per_token_quantize", ("x", "bits"),
        "symmetric per-token (absmax) quantization of activations", "ex13", EXERCISE.lesson,
        oracle=_per_token_oracle,
        compare=tuple_of(("codes", "scales"), (ints_equal(_per_token_quotient), floats_close(1e-12, 0.0))),
        fixed=(
            Case("three tokens of very different size, 8 bits", (_X, 8)),
            Case("the same tokens at 4 bits", (_X, 4)),
        ),
        edge=(
            Case("an all-zero token", (np.array([[1.0, -2.0], [0.0, 0.0]]), 8),
                 "a token of zeros gets scale 1 (0 stays exact) instead of a division by zero"),
            Case("a token with its largest value negative", (np.array([[-3.0, 1.0, 2.0]]), 8),
                 "the scale comes from the largest MAGNITUDE: max|x| over the token"),
            Case("exact ties k + 1/2", (np.array([[127.0, 0.5, -0.5, 2.5, -1.5]]), 8),
                 "round half to even: 0.5 -> 0, 2.5 -> 2, -1.5 -> -2"),
            Case("one token, one channel", (np.array([[-0.75]]), 2), "at 2 bits the grid is [-1, 1]"),
        ),
        strategy=_strategy_per_token,
        hint="S_t = max_j |x[t, j]| / (2^(b-1) - 1) per row (1 for an all-zero row); "
        "codes = clamp(round(x / S_t), -(2^(b-1) - 1), 2^(b-1) - 1) as int64 (Eq. 80)",
        forbidden=("qlearn.ranges.weight_qparams", "qlearn.quantize.quantize", "qlearn.qparams.qparams_from_range"),
    ),
    Task(
        "task_13_2", "smoothquant_scales", ("x_absmax", "w_absmax", "alpha"),
        "SmoothQuant's migration scales s_j", "ex13", EXERCISE.lesson,
        oracle=_smooth_oracle, compare=floats_close(1e-12, 0.0),
        fixed=(
            Case("four channels, alpha 0.5", (np.array([1.0, 4.0, 100.0, 0.25]), np.array([0.5, 0.25, 0.1, 1.0]), 0.5)),
            Case("alpha 0.8", (np.array([2.0, 30.0]), np.array([0.2, 0.05]), 0.8)),
        ),
        edge=(
            Case("alpha 0: only the weights decide", (np.array([2.0, 30.0]), np.array([0.2, 0.05]), 0.0),
                 "alpha = 0 gives s_j = 1 / max|W_j| (x^0 = 1)"),
            Case("alpha 1: only the activations decide", (np.array([2.0, 30.0]), np.array([0.2, 0.05]), 1.0),
                 "alpha = 1 gives s_j = max|X_j| (w^0 = 1)"),
            Case("a dead channel", (np.array([0.0, 3.0]), np.array([0.5, 0.5]), 0.5),
                 "a channel whose max|X_j| or max|W_j| is 0 gets s_j = 1: nothing to migrate, and no 0 or inf scale"),
            Case("lengths that differ", (np.ones(3), np.ones(2), 0.5), "raise ValueError when the lengths differ"),
            Case("alpha outside [0, 1]", (np.ones(2), np.ones(2), 1.5), "raise ValueError for alpha outside [0, 1]"),
        ),
        strategy=_strategy_smooth,
        hint="s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), and 1 where either maximum is 0 (Eq. 83)",
        forbidden=("qlearn.lessons.transformer.smooth_scales",),
    ),
]


def _pt_rule(rnd: Callable[[Any], np.ndarray]) -> Callable[..., tuple]:
    def per_token_quantize(x: np.ndarray, bits: int) -> tuple:
        m = np.abs(x).max(axis=1)
        s = np.where(m > 0, m / (2 ** (bits - 1) - 1), 1.0)
        q = np.clip(rnd(x / s[:, None]), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        return q.astype(np.int64), s

    return per_token_quantize


def _per_channel_instead(x: np.ndarray, bits: int) -> tuple:
    codes, scales = _pt_rule(np.rint)(x.T, bits)
    return codes.T, scales


def _full_range(x: np.ndarray, bits: int) -> tuple:
    m = np.abs(x).max(axis=1)
    s = np.where(m > 0, m / 2 ** (bits - 1), 1.0)
    return np.clip(np.rint(x / s[:, None]), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype(np.int64), s


def _smooth_variant(xa: np.ndarray, wa: np.ndarray, alpha: float, *, swapped: bool = False, guard: bool = True) -> np.ndarray:
    if len(xa) != len(wa) or not 0 <= alpha <= 1:
        raise ValueError("bad input")
    a = 1.0 - alpha if swapped else alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(xa, a) / np.power(wa, 1.0 - a)
    if guard:
        s = np.where((xa > 0) & (wa > 0), s, 1.0)
    return s


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_13_1": (
        Bug("one scale per channel (column) instead of per token (row)", _per_channel_instead,
            "per-token means one scale per ROW of x: reduce max|x| over axis 1"),
        Bug("the full range [-2^(b-1), 2^(b-1) - 1]", _full_range,
            "symmetric absmax quantization uses the narrow grid: S = max|x| / (2^(b-1) - 1), codes in [-127, 127] at 8 bits"),
    ) + _with(_ROUNDING_BUGS, _pt_rule, _NP_RULES),
    "task_13_2": (
        Bug("alpha and 1 - alpha swapped", lambda xa, wa, a: _smooth_variant(xa, wa, a, swapped=True),
            "alpha is the exponent of max|X_j| (the activations' side), 1 - alpha that of max|W_j|"),
        Bug("no guard for a zero maximum", lambda xa, wa, a: _smooth_variant(xa, wa, a, guard=False),
            "where max|X_j| or max|W_j| is 0, use s_j = 1"),
    ),
}


TASKS = EX13
