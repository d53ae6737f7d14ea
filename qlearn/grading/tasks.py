"""The exercise tasks: for each, the function a learner writes, qlearn's oracle and the cases.

Exercise notebooks (notebooks/exercises/) and the tasks they hold:

    ex1  quantize / dequantize, the nudged zero point     task_1_1 .. task_1_3   (Eqs. 1-9)
    ex2  error analysis: SQNR, rounding vs clipping       task_2_1 .. task_2_2   (Eqs. 14, 18)
    ex3  per-channel parameters                           task_3_1 .. task_3_3   (Eqs. 8, 13)
    ex4  range estimators: percentile and MSE search      task_4_1 .. task_4_2   (Eq. 15)
    ex5  batch-norm folding                               task_5_1 .. task_5_2   (Eqs. 40-42)
    ex6  the straight-through estimator (STE)             task_6_1 .. task_6_2   (Eqs. 50-52)
    ex7  quantize_multiplier and the fixed-point multiply task_7_1 .. task_7_4   (Eqs. 23-30)
    ex8  an integer convolution layer                     task_8_1 .. task_8_2   (Eqs. 20-25)

Every oracle is an adapter from the task's signature to qlearn's own implementation (or, where qlearn
has no such function, to PyTorch's op). Each ``compare`` returns None when the learner's answer agrees
with the oracle, else one sentence saying how it differs. Edge cases carry the hint for the bug they
catch. Generated inputs come from hypothesis strategies; arrays are drawn from a seeded numpy
generator (``_rng_array``) so that hypothesis shrinks shapes and seeds, which keeps failing examples
small and readable.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from qlearn.error import error_breakdown, sqnr_db as _sqnr_db
from qlearn.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier as _mbqm,
    quantize_multiplier as _quantize_multiplier,
    rounding_divide_by_pot as _rdbpot,
    saturating_rounding_doubling_high_mul as _srdhm,
)
from qlearn.grading.checks import Case, ContractError, Task, fmt
from qlearn.integer import conv2d as _conv2d, conv2d_accumulator as _conv2d_accumulator
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, quantize
from qlearn.ranges import minmax_range, percentile_range as _percentile_range

__all__ = ["TASKS", "EXERCISES", "LESSONS"]

LESSONS = {  # the lesson notebook each exercise practises (named in failure reports)
    "ex1": "notebooks/01_quantize_dequantize.ipynb",
    "ex2": "notebooks/02_error_analysis.ipynb",
    "ex3": "notebooks/03_per_channel.ipynb",
    "ex4": "notebooks/04_outliers_ranges.ipynb",
    "ex5": "notebooks/05_bn_folding.ipynb",
    "ex6": "notebooks/06_qat.ipynb",
    "ex7": "notebooks/08_integer_inference.ipynb",
    "ex8": "notebooks/08_integer_inference.ipynb",
}

# exercise id -> (notebook file name, title)
EXERCISES = {
    "ex1": ("ex1_quantize_dequantize.ipynb", "Quantize, dequantize and the nudged zero point"),
    "ex2": ("ex2_error_analysis.ipynb", "Error analysis: SQNR, rounding and clipping"),
    "ex3": ("ex3_per_channel.ipynb", "Per-channel quantization parameters"),
    "ex4": ("ex4_range_estimators.ipynb", "Range estimators: percentile and MSE search"),
    "ex5": ("ex5_bn_folding.ipynb", "Batch-norm folding"),
    "ex6": ("ex6_ste_fake_quant.ipynb", "Fake quantization with a straight-through gradient"),
    "ex7": ("ex7_fixed_point.ipynb", "quantize_multiplier and the fixed-point multiply"),
    "ex8": ("ex8_integer_conv.ipynb", "An integer-only convolution layer"),
}


# ==================================================================================== comparisons
def _array(actual: Any, what: str) -> tuple[np.ndarray | None, str | None]:
    if actual is None:
        return None, f"returned None: did you forget the `return` statement? Expected {what}"
    if type(actual).__module__.startswith("torch") and hasattr(actual, "detach"):
        actual = actual.detach().cpu().numpy()
    try:
        arr = np.asarray(actual)
    except Exception:
        return None, f"returned {type(actual).__name__}, which is not {what}"
    if arr.dtype == object:
        return None, f"returned {type(actual).__name__} of mixed objects, not {what}"
    return arr, None


def _diff_text(bad: np.ndarray, exp: np.ndarray, act: np.ndarray) -> str:
    idx = np.argwhere(bad)
    first = tuple(int(i) for i in idx[0])
    where = f"at index {first[0] if len(first) == 1 else first}" if first else "the value"
    more = f"; {len(idx) - 1} more element(s) differ" if len(idx) > 1 else ""
    return f"{where}: expected {fmt(exp[first])}, got {fmt(act[first])}{more}"


def _near_half(quotient: np.ndarray) -> np.ndarray:
    """Where x/S is within a rounding error of k + 1/2 (either neighbour is then acceptable)."""
    frac = np.abs(quotient - np.floor(quotient) - 0.5)
    return frac <= 1e-9 * np.maximum(1.0, np.abs(quotient))


def ints_equal(tie_quotient: Callable[[tuple], np.ndarray] | None = None) -> Callable[[Any, Any, tuple], str | None]:
    """Integer arrays with equal values (any integer dtype) and the same shape.

    ``tie_quotient(args)`` gives the real x/S behind each element: where it lies within a float
    rounding error of a half-integer but is not exactly one, either neighbour is accepted (dividing
    by S and multiplying by 1/S may round such a value differently; exact ties must match).
    """

    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        exp = np.asarray(expected)
        act, problem = _array(actual, f"an integer array of shape {exp.shape}")
        if problem:
            return problem
        if act.dtype.kind not in "iu":
            return (
                f"returned dtype {act.dtype}; the contract asks for integers: round first, then convert "
                "with .astype(np.int64) (quantized values are integers)"
            )
        if act.shape != exp.shape:
            return f"returned shape {act.shape}, expected {exp.shape}"
        bad = act.astype(np.int64) != exp.astype(np.int64)
        if bad.any() and tie_quotient is not None:
            q = np.broadcast_to(tie_quotient(args), exp.shape)
            exact_tie = (q - np.floor(q)) == 0.5
            lenient = _near_half(q) & ~exact_tie & (np.abs(act.astype(np.int64) - exp.astype(np.int64)) == 1)
            bad &= ~lenient
        if bad.any():
            return _diff_text(bad, exp, act)
        return None

    return compare


def floats_close(rtol: float = 1e-10, atol: float = 1e-12) -> Callable[[Any, Any, tuple], str | None]:
    """Float arrays (or scalars) equal to within rtol/atol, same shape; inf must match inf."""

    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        exp = np.asarray(expected, dtype=np.float64)
        act, problem = _array(actual, f"a float array of shape {exp.shape}" if exp.ndim else "a float")
        if problem:
            return problem
        if act.dtype.kind not in "fiu" or act.dtype == bool:
            return f"returned dtype {act.dtype}, expected real numbers (float64)"
        if exp.ndim and act.dtype.kind != "f":
            return f"returned dtype {act.dtype}; real values need a float array (float64), not integers"
        if act.shape != exp.shape:
            return f"returned shape {act.shape}, expected {exp.shape}"
        act = act.astype(np.float64)
        ok = np.isclose(act, exp, rtol=rtol, atol=atol) | ((act == exp) & np.isinf(exp))
        if not ok.all():
            return _diff_text(~ok, exp, act)
        return None

    return compare


def int_scalar() -> Callable[[Any, Any, tuple], str | None]:
    """A Python int (or numpy integer) equal to the expected one."""

    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        if isinstance(actual, (bool, np.bool_)) or not isinstance(actual, (int, np.integer)):
            if isinstance(actual, (float, np.floating)):
                return (
                    f"returned a float ({actual!r}); integer arithmetic returns an int: use >>, // or int() "
                    "instead of / (a float cannot hold every int32 exactly through a division)"
                )
            return f"returned {type(actual).__name__} {fmt(actual, 80)}, expected an int"
        if int(actual) != int(expected):
            return f"expected {int(expected)}, got {int(actual)} (off by {int(actual) - int(expected)})"
        return None

    return compare


def tuple_of(names: tuple[str, ...], parts: tuple[Callable[[Any, Any, tuple], str | None], ...]) -> Callable[[Any, Any, tuple], str | None]:
    """A tuple such as (scale, zero_point), each part compared by its own rule."""

    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        want = f"a tuple ({', '.join(names)})"
        if not isinstance(actual, (tuple, list)):
            return f"returned {type(actual).__name__} {fmt(actual, 80)}; expected {want}"
        if len(actual) != len(names):
            return f"returned {len(actual)} value(s); expected {want}"
        for name, part, e, a in zip(names, parts, expected, actual):
            why = part(e, a, args)
            if why:
                return f"{name}: {why}"
        return None

    return compare


# ==================================================================================== strategies
def _st() -> Any:
    from hypothesis import strategies as st

    return st


def _rng_array(seed: int, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """A float64 array uniform in [lo, hi) from a seeded generator (hypothesis shrinks the seed)."""
    return np.random.default_rng(seed).uniform(lo, hi, size=shape)


def _grid(signed: bool, bits: int) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _magnitude(lo: float = 1e-6, hi: float = 1e4) -> Any:
    """0, or a float of magnitude in [lo, hi] with either sign (no subnormal-sized ranges)."""
    st = _st()
    pos = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    return st.one_of(st.just(0.0), pos, pos.map(lambda v: -v))


def _shape(min_dims: int, max_dims: int, max_side: int = 5) -> Any:
    st = _st()
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


# ==================================================================================== ex1: quantize / dequantize
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
    return st.tuples(_magnitude(), _magnitude(), st.integers(2, 16)).map(
        lambda t: (min(t[0], t[1]), max(t[0], t[1]), t[2])
    )


def _quantize_oracle(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    return quantize(x, QParams(scale, zero_point, qmin, qmax))


def _strategy_quantize() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        qmin, qmax = _grid(d(st.booleans()), d(st.integers(2, 16)))
        zp = d(st.integers(qmin, qmax))
        scale = d(st.floats(1e-3, 10.0))
        x = _rng_array(d(st.integers(0, 2**32 - 1)), d(_shape(1, 2, 8)), -1e3, 1e3)
        x[: d(st.integers(0, x.shape[0]))] *= 1e-2 * scale  # some values near zero, where the grid is fine
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
        "scale and nudged zero point of an unsigned grid", "ex1", LESSONS["ex1"],
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
        "quantize: q = clamp(round(x / S) + Z, qmin, qmax)", "ex1", LESSONS["ex1"],
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
        "dequantize: r = S (q - Z)", "ex1", LESSONS["ex1"],
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


# ==================================================================================== ex2: error analysis
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
        "signal-to-quantization-noise ratio in dB", "ex2", LESSONS["ex2"],
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
        "split the fake-quantization MSE into rounding and clipping", "ex2", LESSONS["ex2"],
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


# ==================================================================================== ex3: per-channel
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
        w = _rng_array(d(st.integers(0, 2**32 - 1)), shape, -2.0, 2.0)
        scales = _rng_array(d(st.integers(0, 2**32 - 1)), (shape[axis],), 1e-3, 3e-2)
        return (w, scales, axis)

    return draw()


_W34 = np.array([[0.5, -1.0, 0.25, 2.0], [3.0, 0.0, -6.0, 1.5], [-0.1, 0.2, 0.05, 0.0]])

EX3 = [
    Task(
        "task_3_1", "per_channel_minmax", ("w", "axis"),
        "min and max of every channel", "ex3", LESSONS["ex3"],
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
        "symmetric int8 scale per output channel", "ex3", LESSONS["ex3"],
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
        "quantize with one scale per channel", "ex3", LESSONS["ex3"],
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


# ==================================================================================== ex4: range estimators
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
        "the (100 - p)-th and p-th percentiles", "ex4", LESSONS["ex4"],
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
        "search the clipping range with the least MSE", "ex4", LESSONS["ex4"],
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


# ==================================================================================== ex5: batch-norm folding
def _bn_eval_oracle(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in (z, mean, var, gamma, beta)]
    return F.batch_norm(t[0], t[1], t[2], t[3], t[4], training=False, eps=eps).numpy()


def _fold_oracle(w: np.ndarray, b: Any, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> Any:
    from qlearn.bn_fold import fold_bn

    return fold_bn(w, b, gamma, beta, mean, var, eps)


def _bn_params(rng: np.random.Generator, c: int) -> tuple[np.ndarray, ...]:
    gamma = rng.uniform(-2.0, 2.0, c)
    beta = rng.uniform(-1.0, 1.0, c)
    mean = rng.uniform(-1.0, 1.0, c)
    var = rng.uniform(0.0, 4.0, c)
    return gamma, beta, mean, var


def _strategy_bn_eval() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        n, c, h, w = d(st.integers(1, 2)), d(st.integers(1, 4)), d(st.integers(1, 4)), d(st.integers(1, 4))
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        z = rng.normal(0.0, 2.0, (n, c, h, w))
        return (z, *_bn_params(rng, c), d(st.sampled_from([1e-5, 1e-3, 0.1])))

    return draw()


def _strategy_fold() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        c = d(st.integers(1, 4))
        shape = (c, d(st.integers(1, 3))) + ((d(st.integers(1, 3)),) * 2 if d(st.booleans()) else ())
        w = rng.normal(0.0, 0.5, shape)
        b = rng.normal(0.0, 0.5, c) if d(st.booleans()) else None
        return (w, b, *_bn_params(rng, c), d(st.sampled_from([1e-5, 1e-3])))

    return draw()


def _bn_case(seed: int, shape: tuple[int, ...]) -> tuple:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 2.0, shape), *_bn_params(rng, shape[1]), 1e-5)


def _fold_case(seed: int, shape: tuple[int, ...], bias: bool = True, var: Any = None) -> tuple:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.5, shape)
    b = rng.normal(0.0, 0.5, shape[0]) if bias else None
    gamma, beta, mean, v = _bn_params(rng, shape[0])
    return (w, b, gamma, beta, mean, v if var is None else var, 1e-5)


EX5 = [
    Task(
        "task_5_1", "batchnorm_inference", ("z", "gamma", "beta", "mean", "var", "eps"),
        "batch norm in inference mode, NCHW", "ex5", LESSONS["ex5"],
        oracle=_bn_eval_oracle, compare=floats_close(1e-10, 1e-12),
        fixed=(
            Case("a batch (2, 3, 4, 4)", _bn_case(0, (2, 3, 4, 4))),
            Case("one channel", _bn_case(1, (1, 1, 2, 2))),
        ),
        edge=(
            Case("C equals W: (1, 3, 2, 3)", _bn_case(2, (1, 3, 2, 3)),
                 "gamma of shape (C,) broadcasts against the LAST axis (W); reshape it to (1, C, 1, 1)"),
            Case("a zero variance", (np.ones((1, 2, 1, 1)), np.array([1.0, 2.0]), np.zeros(2), np.zeros(2), np.zeros(2), 1e-3),
                 "divide by sqrt(var + eps), with eps inside the square root"),
            Case("1x1 feature maps", _bn_case(3, (4, 2, 1, 1))),
        ),
        strategy=_strategy_bn_eval,
        hint="y = gamma (z - mean) / sqrt(var + eps) + beta, per channel on axis 1 (Eq. 40)",
    ),
    Task(
        "task_5_2", "fold_bn", ("w", "b", "gamma", "beta", "mean", "var", "eps"),
        "fold batch norm into the weights and bias", "ex5", LESSONS["ex5"],
        oracle=_fold_oracle,
        compare=tuple_of(("w_fold", "b_fold"), (floats_close(1e-10, 1e-12), floats_close(1e-10, 1e-12))),
        fixed=(
            Case("conv weights (2, 1, 2, 2) with a bias", _fold_case(0, (2, 1, 2, 2))),
            Case("conv weights (3, 2, 3, 3) with a bias", _fold_case(1, (3, 2, 3, 3))),
        ),
        edge=(
            Case("no bias (b is None)", _fold_case(2, (2, 2, 1, 1), bias=False),
                 "a conv without bias has b = 0: b_fold = beta - mean gamma / sqrt(var + eps)"),
            Case("a square linear weight (3, 3)", _fold_case(3, (3, 3)),
                 "the factor gamma / sqrt(var + eps) scales OUTPUT channels (axis 0): reshape it to "
                 "(C, 1, ...) -- with a (C, C) weight, broadcasting along the last axis goes unnoticed"),
            Case("a zero variance", _fold_case(4, (2, 3), var=np.zeros(2)), "eps goes inside the square root"),
            Case("negative gammas", (np.ones((2, 1)), np.ones(2), np.array([-1.0, -0.5]), np.zeros(2), np.zeros(2), np.ones(2), 1e-5)),
        ),
        strategy=_strategy_fold,
        hint="w_fold = w * gamma / sqrt(var + eps) per output channel; b_fold = beta + (b - mean) gamma / "
        "sqrt(var + eps) (Eqs. 41-42)",
        forbidden=("qlearn.bn_fold.fold_bn", "qlearn.bn_fold.fuse_conv_bn"),
    ),
]


# ==================================================================================== ex6: STE
def _upstream(shape: tuple[int, ...]) -> np.ndarray:
    """The gradient fed into backward(): distinct values, so a permuted or scaled gradient shows."""
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(1, n + 1, dtype=np.float64) * 0.5).reshape(shape)


def _call_with_backward(fn: Callable[..., Any], args: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Run fn on a tensor x that requires grad, backpropagate a fixed upstream gradient.

    Returns (forward values, d loss / d x) as float64 arrays.
    """
    import torch

    x = torch.tensor(args[0], dtype=torch.float64, requires_grad=True)
    y = fn(x, *args[1:])
    if not isinstance(y, torch.Tensor):
        raise ContractError(f"returned {type(y).__name__}; the contract asks for a torch tensor")
    if tuple(y.shape) != tuple(x.shape):
        raise ContractError(f"returned shape {tuple(y.shape)}, expected the shape of x {tuple(x.shape)}")
    if not y.requires_grad:
        raise ContractError(
            "the output is cut from the autograd graph (no gradient reaches x): .detach(), .item(), "
            ".numpy() or torch.tensor(...) on the way drop the gradient; keep it a torch expression of x"
        )
    y.backward(torch.from_numpy(_upstream(tuple(x.shape))))
    if x.grad is None:
        raise ContractError("no gradient reached x after backward()")
    return y.detach().numpy().astype(np.float64), x.grad.numpy().copy()


def _round_ste_oracle(x: Any) -> Any:
    import torch

    return x + (torch.round(x) - x).detach()


def _fake_quant_ste_oracle(x: Any, scale: float, zero_point: int, qmin: int, qmax: int) -> Any:
    from qlearn.qat import fake_quant_ste

    return fake_quant_ste(x, scale, zero_point, qmin, qmax)


def _compare_ste(quotient: Callable[[tuple], np.ndarray] | None) -> Callable[[Any, Any, tuple], str | None]:
    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        (y_exp, g_exp), (y_act, g_act) = expected, actual
        step = 1.0 if quotient is None else args[1]
        ok = np.isclose(y_act, y_exp, rtol=1e-12, atol=1e-12 * step)
        if quotient is not None and not ok.all():  # near-ties may round either way (x/S vs x*(1/S))
            q = quotient(args)
            ok |= _near_half(q) & ((q - np.floor(q)) != 0.5) & np.isclose(np.abs(y_act - y_exp), step, rtol=1e-9)
        if not ok.all():
            return "forward values " + _diff_text(~ok, y_exp, y_act)
        okg = g_act == g_exp
        if quotient is not None and not okg.all():  # at the very ends, accept either side of a float rounding
            x, scale, zp, qmin, qmax = args
            ends = np.isclose(x, (qmin - zp) * scale, rtol=1e-12, atol=0) | np.isclose(x, (qmax - zp) * scale, rtol=1e-12, atol=0)
            okg |= ends & ~((x == (qmin - zp) * scale) | (x == (qmax - zp) * scale))
        if not okg.all():
            return "gradient d(out)/dx " + _diff_text(~okg, g_exp, g_act)
        return None

    return compare


def _call_ste(fn: Callable[..., Any], args: tuple) -> tuple[np.ndarray, np.ndarray]:
    return _call_with_backward(fn, args)


def _strategy_round_ste() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        x = _rng_array(d(st.integers(0, 2**32 - 1)), d(_shape(1, 2, 8)), -20.0, 20.0)
        k = d(st.integers(0, min(2, x.shape[0])))
        x[:k] = np.floor(x[:k]) + 0.5  # some exact halves
        return (x,)

    return draw()


def _strategy_fake_quant_ste() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        qmin, qmax = _grid(d(st.booleans()), d(st.integers(2, 8)))
        zp = d(st.integers(qmin, qmax))
        scale = d(st.floats(1e-3, 10.0))
        lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
        x = _rng_array(d(st.integers(0, 2**32 - 1)), d(_shape(1, 2, 8)), lo - 3 * scale, hi + 3 * scale)
        if d(st.booleans()):
            x.flat[0] = d(st.sampled_from([lo, hi]))  # exactly at an end
        return (x, scale, zp, qmin, qmax)

    return draw()


EX6 = [
    Task(
        "task_6_1", "round_ste", ("x",),
        "round with a straight-through gradient", "ex6", LESSONS["ex6"],
        oracle=_round_ste_oracle, compare=_compare_ste(None), call=_call_ste,
        fixed=(
            Case("five values", (np.array([-1.7, -0.2, 0.3, 1.49, 3.8]),)),
            Case("a 2-D tensor", (np.array([[0.4, 1.6], [-2.2, 7.9]]),)),
        ),
        edge=(
            Case("ties: k + 1/2", (np.array([0.5, 1.5, 2.5, -0.5, -2.5]),),
                 "torch.round rounds half to even (2.5 -> 2); torch.floor(x + 0.5) does not"),
            Case("the gradient is the identity", (np.array([0.1, 0.9, 5.0]),),
                 "torch.round alone has gradient 0 everywhere; the STE trick is x + (torch.round(x) - x).detach()"),
            Case("a single value", (np.array([2.0]),)),
        ),
        strategy=_strategy_round_ste,
        hint="forward torch.round(x), backward identity: x + (torch.round(x) - x).detach() (Eq. 52)",
    ),
    Task(
        "task_6_2", "fake_quant_ste", ("x", "scale", "zero_point", "qmin", "qmax"),
        "fake quantization with a clipped straight-through gradient", "ex6", LESSONS["ex6"],
        oracle=_fake_quant_ste_oracle, compare=_compare_ste(_quotient_x_scale), call=_call_ste,
        fixed=(
            Case("values inside and outside [0, 2.55]", (np.array([-1.0, 0.0, 0.123, 1.0, 2.55, 3.0]), 0.01, 0, 0, 255)),
            Case("a signed grid", (np.array([-2.0, -0.26, 0.26, 2.0]), 0.125, 0, -8, 7)),
        ),
        edge=(
            Case("ties: x/S = k + 1/2", (np.array([0.5, 1.5, 2.5]), 1.0, 0, 0, 15),
                 "round half to even (torch.round), as PyTorch's fake-quant does"),
            Case("exactly at both ends of the grid", (np.array([-2.0, 1.75]), 0.25, 8, 0, 15),
                 "the gradient is 1 on the closed interval [S (qmin - Z), S (qmax - Z)], ends included"),
            Case("just outside the ends, within half a step", (np.array([-2.1, 1.85]), 0.25, 8, 0, 15),
                 "there the clamp is active, so the gradient is 0, although round(x/S) + Z is still "
                 "inside [qmin, qmax]: decide 'inside' on x, not on the rounded value (Eq. 52)"),
            Case("far outside", (np.array([-100.0, 100.0]), 0.25, 8, 0, 15), "clamped values get gradient 0"),
        ),
        strategy=_strategy_fake_quant_ste,
        hint="forward S (clamp(round(x/S) + Z, qmin, qmax) - Z); gradient 1 where S (qmin - Z) <= x <= "
        "S (qmax - Z), else 0 (Eqs. 50-52)",
        forbidden=("qlearn.qat.fake_quant_ste",),
    ),
]


# ==================================================================================== ex7: fixed point
def _int32() -> Any:
    st = _st()
    return st.integers(INT32_MIN, INT32_MAX)


def _strategy_mbqm() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        shift = d(st.integers(-31, 8))
        m0 = d(st.one_of(st.integers(2**30, INT32_MAX), st.just(0), st.just(2**30)))
        left = max(shift, 0)
        x = d(st.integers(INT32_MIN >> left, INT32_MAX >> left))
        return (x, m0, shift)

    return draw()


EX7 = [
    Task(
        "task_7_1", "srdhm", ("a", "b"),
        "SaturatingRoundingDoublingHighMul (ARM SQRDMULH)", "ex7", LESSONS["ex7"],
        oracle=_srdhm, compare=int_scalar(),
        fixed=(
            Case("0.5 as a fraction: (2^15, 2^15)", (2**15, 2**15)),
            Case("(2^30, 2^30) = 0.5 * 0.5 in Q31", (2**30, 2**30)),
            Case("a typical accumulator times a multiplier", (12345678, 1518500250)),
        ),
        edge=(
            Case("INT32_MIN * INT32_MIN saturates", (INT32_MIN, INT32_MIN),
                 "(-1) * (-1) = +1 does not fit Q31: return INT32_MAX = 2^31 - 1"),
            Case("a negative tie: -101 * 2^30 / 2^31 = -50.5", (-101, 2**30),
                 "ties go toward +inf (-50.5 -> -50): nudge = 1 - 2^30 for a negative product, then "
                 "truncate toward zero like C's '/', not floor like Python's '//'"),
            Case("a positive tie: 101 * 2^30 / 2^31 = 50.5", (101, 2**30), "nudge = 2^30 for a non-negative product"),
            Case("-0.5 rounds to 0", (-(2**15), 2**15)),
            Case("INT32_MIN * 1", (INT32_MIN, 1)),
            Case("INT32_MIN * INT32_MAX", (INT32_MIN, INT32_MAX)),
        ),
        strategy=lambda: _st().tuples(_int32(), _int32()),
        hint="SRDHM(a, b) = trunc((a b + nudge) / 2^31), nudge = 2^30 if a b >= 0 else 1 - 2^30, and "
        "INT32_MIN * INT32_MIN -> INT32_MAX (Eq. 27)",
        forbidden=("qlearn.fixedpoint.saturating_rounding_doubling_high_mul",),
    ),
    Task(
        "task_7_2", "rounding_divide_by_pot", ("x", "exponent"),
        "RoundingDivideByPOT: x / 2^exponent, ties away from zero", "ex7", LESSONS["ex7"],
        oracle=_rdbpot, compare=int_scalar(),
        fixed=(
            Case("100 / 2^3 = 12.5", (100, 3)),
            Case("1000 / 2^4 = 62.5", (1000, 4)),
            Case("7 / 2^1", (7, 1)),
        ),
        edge=(
            Case("a negative tie: -12 / 8 = -1.5", (-12, 3),
                 "ties go away from zero: -1.5 -> -2; (x + 4) >> 3 gives -1 (half up), and Python's "
                 "round(-1.5) gives -2 but round(-2.5) gives -2 as well (half to even)"),
            Case("a positive tie: 12 / 8 = 1.5", (12, 3)),
            Case("5 / 2 = 2.5", (5, 1), "2.5 -> 3 (away from zero), where round() gives 2"),
            Case("-5 / 2 = -2.5", (-5, 1)),
            Case("INT32_MIN / 2^31 = -1", (INT32_MIN, 31)),
            Case("INT32_MAX / 2^31 ~ 1", (INT32_MAX, 31)),
            Case("exponent 0", (-7, 0), "dividing by 2^0 = 1 changes nothing"),
        ),
        strategy=lambda: _st().tuples(_int32(), _st().integers(0, 31)),
        hint="mask = 2^e - 1, remainder = x & mask, threshold = (mask >> 1) + (1 if x < 0 else 0), "
        "result = (x >> e) + (1 if remainder > threshold else 0) (Eq. 28)",
        forbidden=("qlearn.fixedpoint.rounding_divide_by_pot",),
    ),
    Task(
        "task_7_3", "quantize_multiplier", ("m",),
        "a real multiplier as (m0, shift), M = m0 2^(shift - 31)", "ex7", LESSONS["ex7"],
        oracle=_quantize_multiplier, compare=tuple_of(("m0", "shift"), (int_scalar(), int_scalar())),
        fixed=(
            Case("M = 0.25", (0.25,)),
            Case("M = 1.25", (1.25,)),
            Case("M = 0.00097656", (0.00097656,)),
        ),
        edge=(
            Case("M = 0", (0.0,), "M = 0 gives (0, 0)"),
            Case("rounding up to 2^31: M = 0.5 - 1e-10", (0.5 - 1e-10,),
                 "q 2^31 rounds to 2^31, which does not fit int32: use m0 = 2^30 and add 1 to the shift"),
            Case("a tiny multiplier: 2^-33", (2.0**-33,), "shift < -31: flush to (0, 0)"),
            Case("M = 1.0", (1.0,)),
            Case("a tie: q 2^31 = 2^30 + 1/2", (0.5 + 2.0**-32,),
                 "round half away from zero (TfLiteRound): 2^30 + 0.5 -> 2^30 + 1, where np.round gives 2^30"),
            Case("a negative multiplier is invalid", (-0.5,), "raise ValueError for M < 0"),
        ),
        strategy=lambda: _st().one_of(_st().floats(0.0, 1.0), _st().floats(1e-12, 1e6)).map(lambda m: (m,)),
        hint="(q, e) = math.frexp(M); m0 = round_half_away(q 2^31); if m0 == 2^31: m0 = 2^30, e += 1; "
        "if e < -31: (0, 0); shift = e (Eq. 23)",
        forbidden=("qlearn.fixedpoint.quantize_multiplier",),
    ),
    Task(
        "task_7_4", "multiply_by_quantized_multiplier", ("x", "m0", "shift"),
        "x * M in integers, TFLite's double rounding", "ex7", LESSONS["ex7"],
        oracle=_mbqm, compare=int_scalar(),
        fixed=(
            Case("10000 * 0.00097656", (10000, 2147478150, -10)),
            Case("100 * 1.25", (100, 1342177280, 1)),
            Case("-3000 * 0.375", (-3000, 1610612736, -1)),
        ),
        edge=(
            Case("double rounding: 5 * 0.25", (5, 2**30, -1),
                 "TFLite rounds twice: SRDHM(5, 2^30) = round(2.5) = 3, then RoundingDivideByPOT(3, 1) = 2, "
                 "although 5 * 0.25 = 1.25 would round to 1; chain your srdhm and rounding_divide_by_pot"),
            Case("a negative tie in the shift: -12 * 0.125", (-12, 2**30, -2),
                 "the last step is RoundingDivideByPOT: -1.5 -> -2 (away from zero)"),
            Case("INT32_MIN * 0.5", (INT32_MIN, 2**30, 0)),
            Case("x * 2^shift overflows int32", (2**30, 2**30, 2),
                 "for shift > 0 first compute x * 2^shift; if it leaves int32, raise OverflowError"),
            Case("m0 = 0", (12345, 0, 0)),
        ),
        strategy=_strategy_mbqm,
        hint="left = max(shift, 0), right = max(-shift, 0): rounding_divide_by_pot(srdhm(x * 2^left, m0), "
        "right) (Eq. 30)",
        forbidden=("qlearn.fixedpoint.multiply_by_quantized_multiplier",),
    ),
]


# ==================================================================================== ex8: integer conv
def _acc_oracle(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray, stride: int, padding: int) -> np.ndarray:
    return _conv2d_accumulator(x_q, x_zp, w_q, bias_q, stride=stride, padding=padding)


def _qconv_oracle(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray, m0: int, shift: int,
                  out_zp: int, stride: int, padding: int, act_min: int, act_max: int) -> np.ndarray:
    return _conv2d(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, stride=stride, padding=padding,
                   act_min=act_min, act_max=act_max)


def _conv_inputs(seed: int, n: int, cin: int, hw: tuple[int, int], cout: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, cin, *hw), dtype=np.uint8)
    w = rng.integers(-127, 128, size=(cout, cin, k, k), dtype=np.int8)
    b = rng.integers(-5000, 5000, size=cout, dtype=np.int32)
    return x, w, b


def _strategy_conv(full: bool) -> Callable[[], Any]:
    def strategy() -> Any:
        st = _st()

        @st.composite
        def draw(d: Any) -> tuple:
            k = d(st.integers(1, 3))
            padding = d(st.integers(0, 1))
            hw = (d(st.integers(max(1, k - 2 * padding), 6)), d(st.integers(max(1, k - 2 * padding), 6)))
            x, w, b = _conv_inputs(d(st.integers(0, 2**32 - 1)), d(st.integers(1, 2)), d(st.integers(1, 3)), hw,
                                   d(st.integers(1, 3)), k)
            x_zp, stride = d(st.integers(0, 255)), d(st.integers(1, 2))
            if not full:
                return (x, x_zp, w, b, stride, padding)
            m0, shift = _quantize_multiplier(d(st.floats(1e-5, 1e-2)))
            out_zp = d(st.integers(0, 255))
            act_min = d(st.integers(0, 255))
            act_max = d(st.integers(act_min, 255))
            return (x, x_zp, w, b, m0, shift, out_zp, stride, padding, act_min, act_max)

        return draw()

    return strategy


_X1, _W1, _B1 = _conv_inputs(0, 1, 1, (4, 4), 1, 2)
_X2, _W2, _B2 = _conv_inputs(1, 2, 3, (5, 5), 2, 3)
_M0, _SHIFT = _quantize_multiplier(0.002)

EX8 = [
    Task(
        "task_8_1", "conv_accumulator", ("x_q", "x_zp", "w_q", "bias_q", "stride", "padding"),
        "the int32 accumulator of a quantized convolution", "ex8", LESSONS["ex8"],
        oracle=_acc_oracle, compare=ints_equal(),
        fixed=(
            Case("a 4x4 image, one 2x2 kernel", (_X1, 128, _W1, _B1, 1, 0)),
            Case("a batch of 2, 3 -> 2 channels, 3x3 kernels", (_X2, 100, _W2, _B2, 1, 0)),
        ),
        edge=(
            Case("padding 1: pad with the zero point", (_X2, 100, _W2, _B2, 1, 1),
                 "padded pixels must be the real value 0, i.e. the code x_zp: pad x_q - x_zp with 0 "
                 "(np.pad pads with 0 by default), not x_q"),
            Case("uint8 codes below the zero point", (np.zeros((1, 1, 2, 2), np.uint8), 200, np.ones((1, 1, 2, 2), np.int8), np.zeros(1, np.int32), 1, 0),
                 "x_q - x_zp on uint8 wraps around (0 - 200 = 56): convert to int32 first"),
            Case("large sums overflow int16", (np.full((1, 3, 3, 3), 255, np.uint8), 0, np.full((1, 3, 3, 3), 127, np.int8), np.zeros(1, np.int32), 1, 0),
                 "27 products of 255 * 127 sum to 874395: accumulate in int32 (or int64)"),
            Case("stride 2", (_X2, 0, _W2, _B2, 2, 0), "output size (H + 2 pad - k) // stride + 1"),
        ),
        strategy=_strategy_conv(False),
        hint="acc[n, o, i, j] = bias_q[o] + sum_{c,u,v} (x_pad[n, c, i s + u, j s + v] - x_zp) w_q[o, c, u, v] "
        "in int32 (Eq. 25)",
        forbidden=("qlearn.integer.conv2d_accumulator", "qlearn.integer.conv2d"),
    ),
    Task(
        "task_8_2", "quantized_conv2d",
        ("x_q", "x_zp", "w_q", "bias_q", "m0", "shift", "out_zp", "stride", "padding", "act_min", "act_max"),
        "a whole quantized convolution: accumulate, requantize, clamp", "ex8", LESSONS["ex8"],
        oracle=_qconv_oracle, compare=ints_equal(),
        fixed=(
            Case("a 4x4 image, one 2x2 kernel", (_X1, 128, _W1, _B1, _M0, _SHIFT, 10, 1, 0, 0, 255)),
            Case("a batch of 2, 3 -> 2 channels", (_X2, 100, _W2, _B2, _M0, _SHIFT, 128, 1, 1, 0, 255)),
        ),
        edge=(
            Case("a ReLU6-style clamp", (_X2, 100, _W2, _B2, _M0, _SHIFT, 20, 1, 0, 20, 80),
                 "clamp q3 to [act_min, act_max] after adding out_zp"),
            Case("outputs that saturate at 0 and 255", (_X2, 100, _W2, _B2, *_quantize_multiplier(0.05), 128, 1, 0, 0, 255),
                 "clip to [act_min, act_max] before converting to uint8, or 256 wraps to 0"),
            Case("negative accumulators", (np.zeros((1, 1, 3, 3), np.uint8), 255, np.ones((1, 1, 3, 3), np.int8), np.zeros(1, np.int32), _M0, _SHIFT, 200, 1, 0, 0, 255)),
            Case("a tie in the requantization: acc * M = -10 * 0.25 = -2.5", (np.zeros((1, 1, 1, 1), np.uint8), 10, np.ones((1, 1, 1, 1), np.int8), np.zeros(1, np.int32), 2**30, -1, 100, 1, 0, 0, 255),
                 "rescale with multiply_by_quantized_multiplier, which rounds -2.5 away from zero to -3; "
                 "np.round gives -2 (half to even) and float arithmetic is not what the device does"),
            Case("double rounding: acc * M = 5 * 0.25 = 1.25", (np.zeros((1, 1, 1, 1), np.uint8), 251, np.full((1, 1, 1, 1), -1, np.int8), np.zeros(1, np.int32), 2**30, -1, 100, 1, 0, 0, 255),
                 "the device rounds twice (2.5 -> 3, then 3/2 = 1.5 -> 2), so 1.25 becomes 2, not 1: use "
                 "multiply_by_quantized_multiplier, not floats"),
        ),
        strategy=_strategy_conv(True),
        hint="q3 = clamp(out_zp + multiply_by_quantized_multiplier(acc, m0, shift), act_min, act_max) as "
        "uint8 (Eqs. 21, 30)",
        forbidden=("qlearn.integer.conv2d", "qlearn.integer.conv2d_accumulator", "qlearn.integer.requantize"),
    ),
]


TASKS: dict[str, Task] = {t.task_id: t for t in EX1 + EX2 + EX3 + EX4 + EX5 + EX6 + EX7 + EX8}
