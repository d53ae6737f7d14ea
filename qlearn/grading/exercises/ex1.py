"""Exercise 1: quantize / dequantize -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.fixedpoint import INT32_MAX, INT32_MIN
from qlearn.grading.exercises._common import (
    _NP_RULES,
    _ROUNDING_BUGS,
    _RULE_NAMES,
    _dyadic_scale,
    _grid,
    _magnitude,
    _near_half,
    _rng_array,
    _shape,
    _st,
    _with,
    floats_close,
    int_scalar,
    ints_equal,
)
from qlearn.grading.formatting import fmt
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import dequantize, quantize

EXERCISE = Exercise("ex1", "ex1_quantize_dequantize.ipynb", "Quantize, dequantize and the nudged zero point",
                    "notebooks/01_quantize_dequantize.ipynb")


def _scale_zp_oracle(lo: float, hi: float, bits: int) -> tuple[float, int]:
    qp = qparams_from_range(lo, hi, bits)
    return qp.scale, qp.zero_point


def _zp_compare(expected: Any, actual: Any, args: tuple) -> str | None:
    lo, hi, bits = args
    why = int_scalar()(expected[1], actual, args)
    if why and "off by" in why:
        lo_, hi_ = min(lo, 0.0), max(hi, 0.0)
        s = (hi_ - lo_) / (2**bits - 1)
        if s > 0 and abs(int(actual) - int(expected[1])) == 1:
            z = -lo_ / s
            if (z - math.floor(z)) != 0.5 and _near_half(np.asarray(z)):
                return None  # a near-tie that float rounding can decide either way
    return why


def _compare_scale_zp(expected: Any, actual: Any, args: tuple) -> str | None:
    names = ("scale", "zero_point")
    if not isinstance(actual, (tuple, list)) or len(actual) != 2:
        return f"returned {fmt(actual, 80)}; expected a tuple (scale, zero_point)"
    why = floats_close(1e-12, 0.0)(expected[0], actual[0], args)
    if why:
        return f"{names[0]}: {why}"
    why = _zp_compare(expected, actual[1], args)
    return f"{names[1]}: {why}" if why else None


def _strategy_scale_zp() -> Any:
    st = _st()
    plain = st.tuples(_magnitude(), _magnitude(), st.integers(2, 16)).map(
        lambda t: (min(t[0], t[1]), max(t[0], t[1]), t[2])
    )

    @st.composite
    def tie(d: Any) -> tuple:  # qmin - lo'/S = k + 1/2 exactly: the nudge has to round a half
        bits = d(st.integers(2, 16))
        n = 2**bits - 1
        k = d(st.integers(0, n - 1))
        s = _dyadic_scale(d)
        return (-(k + 0.5) * s, (n - k - 0.5) * s, bits)

    return st.one_of(tie(), tie(), plain)


def _quantize_oracle(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    return quantize(x, QParams(scale, zero_point, qmin, qmax))


def _strategy_quantize() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        qmin, qmax = _grid(d(st.booleans()), d(st.integers(2, 16)))
        zp = d(st.integers(qmin, qmax))
        scale = d(st.floats(1e-3, 10.0))
        seed = d(st.integers(0, 2**32 - 1))
        x = _rng_array(seed, d(_shape(1, 2, 8)), -1e3, 1e3)
        x[: d(st.integers(0, x.shape[0]))] *= 1e-2 * scale  # some values near zero, where the grid is fine
        if d(st.integers(0, 2)):  # two draws in three: exact ties x/S = k + 1/2 of both signs, in the grid
            scale = _dyadic_scale(d)
            rng = np.random.default_rng(seed + 1)
            k = rng.integers(qmin - zp - 1, qmax - zp + 1, size=x.shape)
            x = np.where(rng.random(x.shape) < 0.6, (k + 0.5) * scale, rng.uniform(qmin - zp - 2, qmax - zp + 2, x.shape) * scale)
        return (x, scale, zp, qmin, qmax)

    return draw()


def _dequantize_oracle(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    info = np.iinfo(q.dtype)
    return dequantize(q, QParams(scale, zero_point, int(info.min), int(info.max)))


def _strategy_dequantize() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        dtype = np.dtype(d(st.sampled_from(["uint8", "int8", "int16", "int32"])))
        info = np.iinfo(dtype)
        shape = d(_shape(1, 2, 8))
        q = np.random.default_rng(d(st.integers(0, 2**32 - 1))).integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
        zp = d(st.integers(int(info.min), int(info.max)))
        return (q, d(st.floats(1e-6, 100.0)), zp)

    return draw()


def _quotient_x_scale(args: tuple) -> np.ndarray:
    return np.asarray(args[0], dtype=np.float64) / args[1]


_S_10_30 = 40.0 / 255.0


EX1 = [
    Task(
        "task_1_1", "scale_and_zero_point", ("lo", "hi", "bits"),
        "scale and nudged zero point of an unsigned grid", "ex1", EXERCISE.lesson,
        oracle=_scale_zp_oracle, compare=_compare_scale_zp,
        fixed=(
            Case("the lesson's range [-10, 30], 8 bits", (-10.0, 30.0, 8)),
            Case("[0, 1], 8 bits", (0.0, 1.0, 8)),
            Case("[-1, 3], 4 bits", (-1.0, 3.0, 4)),
        ),
        edge=(
            Case("a zero-width range [0, 0]", (0.0, 0.0, 8),
                 "with hi' - lo' = 0 the contract says S = 1 (and Z from Eq. 6): no division by zero"),
            Case("a range that does not contain 0: [2, 5]", (2.0, 5.0, 8),
                 "widen the range to contain 0 first: lo' = min(lo, 0), hi' = max(hi, 0) (Eq. 4)"),
            Case("an all-negative range [-4, -1]", (-4.0, -1.0, 8),
                 "widen to [lo, 0] first (Eq. 4); then Z lands on qmax"),
            Case("a tie: qmin - lo'/S = 2.5 exactly ([-1.25, 0.25], 2 bits)", (-1.25, 0.25, 2),
                 "np.round and round() send 2.5 to 2 (half to even); the nudged zero point rounds halves "
                 "up, as TensorFlow's std::round: int(np.floor(z + 0.5))"),
            Case("16 bits", (-1.0, 1.0, 16)),
            Case("lo > hi is not a range", (1.0, -1.0, 8), "raise ValueError when lo > hi"),
        ),
        strategy=_strategy_scale_zp,
        hint="S = (hi' - lo') / (qmax - qmin), Z = round_half_up(qmin - lo'/S) (Eqs. 4-6)",
        forbidden=("qlearn.qparams.qparams_from_range",),
    ),
    Task(
        "task_1_2", "quantize_tensor", ("x", "scale", "zero_point", "qmin", "qmax"),
        "quantize: q = clamp(round(x / S) + Z, qmin, qmax)", "ex1", EXERCISE.lesson,
        oracle=_quantize_oracle, compare=ints_equal(_quotient_x_scale),
        fixed=(
            Case("the lesson's values, range [-10, 30]",
                 (np.array([-10.0, -0.1, 0.0, 0.07, 1.0, 29.9, 35.0]), _S_10_30, 64, 0, 255)),
            Case("three values, S = 0.25", (np.array([0.0, 0.5, 1.0]), 0.25, 0, 0, 255)),
        ),
        edge=(
            Case("ties: x/S = k + 1/2", (np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), 1.0, 3, 0, 7),
                 "round half to even (np.rint or np.round): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2; np.floor(v + 0.5) is not it"),
            Case("values beyond both ends", (np.array([-1000.0, 1000.0]), 1.0, 128, 0, 255),
                 "clamp to [qmin, qmax] after adding Z and before converting to an integer dtype: "
                 "astype(np.uint8) turns 256 into 0 and -1 into 255"),
            Case("negative codes clamp to 0", (np.array([-3.0, -1.0]), 1.0, 2, 0, 255),
                 "clip first, convert after: converting -1 to uint8 wraps around to 255"),
            Case("a signed int8 grid", (np.array([-200.0, -1.2, 0.0, 1.2, 200.0]), 1.0, 0, -128, 127)),
            Case("a 2-D input keeps its shape", (np.array([[0.1, 0.2], [0.3, 0.4]]), 0.1, 0, 0, 255),
                 "work elementwise on the whole array; do not flatten it"),
        ),
        strategy=_strategy_quantize,
        hint="q = clamp(round(x / S) + Z, qmin, qmax) with round half to even (Eq. 9)",
        forbidden=("qlearn.quantize.quantize", "qlearn.quantize.fake_quantize"),
    ),
    Task(
        "task_1_3", "dequantize_tensor", ("q", "scale", "zero_point"),
        "dequantize: r = S (q - Z)", "ex1", EXERCISE.lesson,
        oracle=_dequantize_oracle, compare=floats_close(1e-12, 0.0),
        fixed=(
            Case("uint8 codes of the lesson's range", (np.array([0, 64, 70, 255], dtype=np.uint8), _S_10_30, 64)),
            Case("int64 codes", (np.array([0, 1, 2, 3]), 0.5, 1)),
        ),
        edge=(
            Case("uint8 codes below the zero point", (np.array([0, 3, 127], dtype=np.uint8), 0.5, 128),
                 "q - zero_point on a uint8 array wraps around (3 - 128 = 131 in uint8): convert q to "
                 "float64 (or int64) before subtracting"),
            Case("int8 codes, Z = 0", (np.array([-128, 0, 127], dtype=np.int8), 0.1, 0)),
            Case("int32 accumulators around INT32_MIN", (np.array([INT32_MIN, -1, INT32_MAX], dtype=np.int32), 1e-6, 5),
                 "INT32_MIN - 5 wraps around in int32: convert to float64 before subtracting"),
            Case("a 2-D input keeps its shape", (np.array([[1, 2], [3, 4]], dtype=np.uint8), 2.0, 0)),
        ),
        strategy=_strategy_dequantize,
        hint="r = S (q - Z), computed in float64 (Eq. 1)",
        forbidden=("qlearn.quantize.dequantize",),
    ),
]


def _q_rule(rnd: Callable[[Any], np.ndarray]) -> Callable[..., np.ndarray]:
    def quantize_tensor(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
        return np.clip(rnd(np.asarray(x, dtype=np.float64) / scale) + zero_point, qmin, qmax).astype(np.int64)

    return quantize_tensor


def _zp_rule(rnd: Callable[[Any], np.ndarray]) -> Callable[..., tuple]:
    def scale_and_zero_point(lo: float, hi: float, bits: int) -> tuple[float, int]:
        if lo > hi:
            raise ValueError("lo > hi")
        lo_, hi_ = min(lo, 0.0), max(hi, 0.0)
        s = (hi_ - lo_) / (2**bits - 1) if hi_ > lo_ else 1.0
        return s, int(np.clip(rnd(-lo_ / s), 0, 2**bits - 1))

    return scale_and_zero_point


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_1_1": (
        Bug(_RULE_NAMES["half_even"], _zp_rule(np.rint),
            "the nudged zero point rounds halves up (not to even), as TensorFlow's std::round: int(np.floor(z + 0.5))"),
        Bug(_RULE_NAMES["floor"], _zp_rule(np.floor), "round to the nearest integer, halves up: int(np.floor(z + 0.5))"),
        Bug("a range not widened to contain 0",
            lambda lo, hi, bits: ((hi - lo) / (2**bits - 1) or 1.0,
                                  int(np.floor(-lo / ((hi - lo) / (2**bits - 1) or 1.0) + 0.5))),
            "widen first, lo' = min(lo, 0) and hi' = max(hi, 0) (Eq. 4), so that the real 0 is on the grid"),
    ),
    "task_1_2": (
        Bug("the zero point left out", lambda x, s, z, qmin, qmax: np.clip(np.rint(x / s), qmin, qmax).astype(np.int64),
            "q = round(x / S) + Z: add the zero point before clamping (Eq. 9)"),
        Bug("converted to uint8 before clamping",
            lambda x, s, z, qmin, qmax: np.clip((np.rint(x / s) + z).astype(np.uint8), qmin, qmax).astype(np.int64),
            "clamp to [qmin, qmax] first, convert after: astype(np.uint8) turns 256 into 0 and -1 into 255"),
    ) + _with(_ROUNDING_BUGS, _q_rule, _NP_RULES),
    "task_1_3": (
        Bug("q - zero_point computed in uint8",
            lambda q, s, z: s * (q - np.asarray(z).astype(q.dtype)).astype(np.float64) if q.dtype.kind == "u" else s * (q - z),
            "convert q to float64 (or int64) before subtracting: 3 - 128 = 131 in uint8 arithmetic (it wraps around)"),
        Bug("the zero point left out", lambda q, s, z: s * q.astype(np.float64), "r = S (q - Z): subtract the zero point (Eq. 1)"),
        Bug("divided by the scale", lambda q, s, z: (q.astype(np.float64) - z) / s, "dequantizing multiplies by S: r = S (q - Z)"),
    ),
}


TASKS = EX1
