"""Exercise 4: range estimators -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from qlearn.grading.exercises._common import _shape, _st, floats_close, tuple_of
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.qparams import qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import percentile_range as _percentile_range

EXERCISE = Exercise("ex4", "ex4_range_estimators.ipynb", "Range estimators: percentile and MSE search",
                    "notebooks/04_outliers_ranges.ipynb")


def _strategy_percentile() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        x = np.random.default_rng(d(st.integers(0, 2**32 - 1))).standard_t(3, size=d(_shape(1, 2, 12))) * 5
        pct = d(st.one_of(st.sampled_from([50.0, 90.0, 99.0, 99.9, 100.0]), st.floats(50.0, 100.0)))
        return (x, pct)

    return draw()


def _candidate_mse(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    qp = qparams_from_range(lo, hi, bits)
    return float(np.mean((fake_quantize(x, qp) - x) ** 2))


def _best_range_oracle(x: np.ndarray, bits: int, alphas: list[float]) -> tuple[float, float]:
    lo0, hi0 = min(float(np.min(x)), 0.0), max(float(np.max(x)), 0.0)
    errors = [_candidate_mse(x, a * lo0, a * hi0, bits) for a in alphas]
    best = alphas[int(np.argmin(errors))]  # argmin: the first of equal errors
    return best * lo0, best * hi0


def _compare_best_range(expected: Any, actual: Any, args: tuple) -> str | None:
    close = tuple_of(("lo", "hi"), (floats_close(1e-12, 1e-15), floats_close(1e-12, 1e-15)))
    why = close(expected, actual, args)
    if why is None:
        return None
    x, bits, alphas = args
    try:
        lo, hi = float(actual[0]), float(actual[1])
        mine, best = _candidate_mse(x, lo, hi, bits), _candidate_mse(x, *expected, bits)
    except Exception:
        return why
    if mine <= best * (1 + 1e-9) + 1e-300:  # another alpha with the same error (to float rounding)
        return None
    return f"{why}. Your range gives MSE {mine:.6g}; the best candidate gives {best:.6g}"


def _strategy_best_range() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        x = rng.standard_normal(d(st.integers(1, 60)))
        if d(st.booleans()):
            x[0] = d(st.floats(5.0, 100.0))  # an outlier
        alphas = d(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=6))
        return (x, d(st.integers(2, 8)), alphas)

    return draw()


_GAUSS = np.random.default_rng(0).standard_normal(400)


_OUTLIER = np.concatenate([_GAUSS, [40.0]])


EX4 = [
    Task(
        "task_4_1", "percentile_range", ("x", "pct"),
        "the (100 - p)-th and p-th percentiles", "ex4", EXERCISE.lesson,
        oracle=_percentile_range,
        compare=tuple_of(("lo", "hi"), (floats_close(1e-12, 1e-12), floats_close(1e-12, 1e-12))),
        fixed=(
            Case("400 Gaussian values, 99th percentile", (_GAUSS, 99.0)),
            Case("0..100, 90th percentile", (np.arange(101.0), 90.0)),
        ),
        edge=(
            Case("pct = 100 is min/max", (_OUTLIER, 100.0)),
            Case("pct = 50: both ends at the median", (np.array([1.0, 5.0, 2.0, 8.0]), 50.0),
                 "np.percentile interpolates linearly between neighbours (its default)"),
            Case("pct = 49 is invalid", (np.arange(5.0), 49.0), "raise ValueError for pct outside [50, 100]"),
            Case("a 2-D array (all values count)", (np.arange(12.0).reshape(3, 4), 75.0),
                 "take the percentiles of all values, not per row"),
        ),
        strategy=_strategy_percentile,
        hint="lo, hi = np.percentile(x, [100 - pct, pct]) over all values (Eq. 13's clipping variant)",
        forbidden=("qlearn.ranges.percentile_range",),
    ),
    Task(
        "task_4_2", "best_clipping_range", ("x", "bits", "alphas"),
        "search the clipping range with the least MSE", "ex4", EXERCISE.lesson,
        oracle=_best_range_oracle, compare=_compare_best_range,
        fixed=(
            Case("400 Gaussian values, 4 bits", (_GAUSS, 4, [0.25, 0.5, 0.75, 1.0])),
            Case("the same values, 8 bits", (_GAUSS, 8, [0.25, 0.5, 0.75, 1.0])),
        ),
        edge=(
            Case("one outlier at 40: clipping it is worth it", (_OUTLIER, 4, [1.0, 0.5, 0.2, 0.1, 0.05]),
                 "compare the MSE of every candidate; the widest range is rarely the best"),
            Case("all-zero data", (np.zeros(5), 8, [0.5, 1.0]),
                 "lo0 = min(min(x), 0) and hi0 = max(max(x), 0) are both 0 here; qparams_from_range handles it"),
            Case("alphas in any order", (_GAUSS, 3, [1.0, 0.1, 0.6, 0.3]),
                 "return the candidate with the smallest MSE, whatever its position"),
            Case("a single candidate", (_GAUSS, 8, [1.0]), "with one alpha, return (alpha lo0, alpha hi0)"),
        ),
        strategy=_strategy_best_range,
        hint="for each alpha: range (alpha lo0, alpha hi0), MSE of fake_quantize with "
        "qparams_from_range(alpha lo0, alpha hi0, bits); keep the first smallest (Eq. 15)",
        forbidden=("qlearn.ranges.mse_range",),
    ),
]


BUGS: dict[str, tuple[Bug, ...]] = {}  # none registered yet: the edge cases' hints serve


TASKS = EX4
