"""Exercise 2: error analysis -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from qlearn.error import error_breakdown
from qlearn.error import sqnr_db as _sqnr_db
from qlearn.grading.exercises._common import _grid, _rng_array, _shape, _st, floats_close, tuple_of
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize

EXERCISE = Exercise("ex2", "ex2_error_analysis.ipynb", "Error analysis: SQNR, rounding and clipping",
                    "notebooks/02_error_analysis.ipynb")


def _strategy_sqnr() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        shape = d(_shape(1, 2, 8))
        x = _rng_array(d(st.integers(0, 2**32 - 1)), shape, -100.0, 100.0)
        x[: d(st.integers(0, 1))] = 0.0
        noise_scale = d(st.sampled_from([0.0, 1e-3, 0.1, 10.0]))
        noise = _rng_array(d(st.integers(0, 2**32 - 1)), shape, -noise_scale, noise_scale)
        return (x, x + noise)

    return draw()


def _breakdown_oracle(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> tuple[float, float]:
    b = error_breakdown(x, QParams(scale, zero_point, qmin, qmax))
    return b.rounding_mse, b.clipping_mse


def _strategy_breakdown() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        qmin, qmax = _grid(d(st.booleans()), d(st.integers(2, 8)))
        zp = d(st.integers(qmin, qmax))
        scale = d(st.floats(1e-3, 10.0))
        lo, hi = scale * (qmin - zp), scale * (qmax - zp)
        width = hi - lo
        x = _rng_array(d(st.integers(0, 2**32 - 1)), d(_shape(1, 1, 30)), lo - 0.5 * width, hi + 0.5 * width)
        return (x, scale, zp, qmin, qmax)

    return draw()


_BOUNDARY = 0.1 * (63 - 20 + 0.5)  # S (qmax - Z + 1/2) for S = 0.1, Z = 20, qmax = 63


EX2 = [
    Task(
        "task_2_1", "sqnr_db", ("x", "x_hat"),
        "signal-to-quantization-noise ratio in dB", "ex2", EXERCISE.lesson,
        oracle=_sqnr_db, compare=floats_close(1e-9, 1e-9),
        fixed=(
            Case("four values with small errors", (np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.1, 1.9, 3.0, 4.2]))),
            Case("a sine and its 8-bit fake-quantization",
                 (np.sin(np.linspace(0, 6, 50)), fake_quantize(np.sin(np.linspace(0, 6, 50)), qparams_from_range(-1, 1)))),
        ),
        edge=(
            Case("an exact reconstruction (no noise)", (np.array([1.0, -2.0]), np.array([1.0, -2.0])),
                 "no noise means an infinite SQNR: return float('inf') instead of dividing by zero"),
            Case("an all-zero signal", (np.zeros(3), np.array([0.1, 0.0, 0.0])),
                 "the ratio means nothing for a zero signal: the contract asks for ValueError"),
            Case("shapes that differ", (np.ones(3), np.ones(4)), "raise ValueError when x and x_hat differ in shape"),
            Case("2-D arrays", (np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.5], [3.0, 4.0]]))),
        ),
        strategy=_strategy_sqnr,
        hint="SQNR = 10 log10(sum x^2 / sum (x_hat - x)^2) (Eq. 18)",
        forbidden=("qlearn.error.sqnr_db",),
    ),
    Task(
        "task_2_2", "rounding_and_clipping_mse", ("x", "scale", "zero_point", "qmin", "qmax"),
        "split the fake-quantization MSE into rounding and clipping", "ex2", EXERCISE.lesson,
        oracle=_breakdown_oracle,
        compare=tuple_of(("rounding_mse", "clipping_mse"), (floats_close(1e-9, 1e-15), floats_close(1e-9, 1e-15))),
        fixed=(
            Case("six values, grid [-2, 4.3]", (np.array([-3.0, -0.2, 0.0, 0.33, 1.7, 5.0]), 0.1, 20, 0, 63)),
            Case("a ramp across the grid", (np.linspace(-3.0, 6.0, 31), 0.1, 20, 0, 63)),
        ),
        edge=(
            Case("nothing clipped", (np.array([-1.0, 0.04, 2.0]), 0.1, 20, 0, 63), "then clipping_mse is 0.0"),
            Case("everything clipped", (np.array([-50.0, 50.0]), 0.1, 20, 0, 63), "then rounding_mse is 0.0"),
            Case("a value exactly half a step beyond the end", (np.array([_BOUNDARY, 0.0]), 0.1, 20, 0, 63),
                 "clipped means x < S (qmin - Z - 1/2) or x > S (qmax - Z + 1/2), strictly; compute the "
                 "bounds exactly like that"),
            Case("both MSEs divide by all N values", (np.array([0.04, 0.0, 9.0, 9.0]), 0.1, 20, 0, 63),
                 "each part is a sum over its own values divided by N (all values), so that the parts add "
                 "up to the total MSE (Eq. 14)"),
        ),
        strategy=_strategy_breakdown,
        hint="fake-quantize x, then sum the squared errors of clipped and unclipped values separately, "
        "each divided by N (Eq. 14)",
        forbidden=("qlearn.error.error_breakdown",),
    ),
]


def _own_count_mse(x: np.ndarray, s: float, z: int, qmin: int, qmax: int) -> tuple[float, float]:
    q = np.clip(np.rint(x / s) + z, qmin, qmax)
    e = (s * (q - z) - x) ** 2
    c = (x < s * (qmin - z - 0.5)) | (x > s * (qmax - z + 0.5))
    return (float(e[~c].mean()) if (~c).any() else 0.0, float(e[c].mean()) if c.any() else 0.0)


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_2_1": (
        Bug("20 log10 (an amplitude ratio)", lambda x, xh: 20 * math.log10(np.sum(x**2) / np.sum((xh - x) ** 2)),
            "the sums are of squares (powers) already: SQNR = 10 log10(sum x^2 / sum e^2)"),
        Bug("the natural logarithm", lambda x, xh: 10 * math.log(np.sum(x**2) / np.sum((xh - x) ** 2)), "decibels use log10"),
    ),
    "task_2_2": (
        Bug("each MSE divided by its own count", lambda x, s, z, qmin, qmax: _own_count_mse(x, s, z, qmin, qmax),
            "each part is its sum of squared errors divided by N (all values), so that the two parts add up to the total MSE (Eq. 14)"),
    ),
}


TASKS = EX2
