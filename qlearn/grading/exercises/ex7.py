"""Exercise 7: fixed point -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
)
from qlearn.fixedpoint import (
    multiply_by_quantized_multiplier as _mbqm,
)
from qlearn.fixedpoint import (
    quantize_multiplier as _quantize_multiplier,
)
from qlearn.fixedpoint import (
    rounding_divide_by_pot as _rdbpot,
)
from qlearn.fixedpoint import (
    saturating_rounding_doubling_high_mul as _srdhm,
)
from qlearn.grading.exercises._common import (
    _RULE_NAMES,
    _div_pot,
    _half_away,
    _st,
    int_scalar,
    tuple_of,
)
from qlearn.grading.spec import Bug, Case, Exercise, Task

EXERCISE = Exercise("ex7", "ex7_fixed_point.ipynb", "quantize_multiplier and the fixed-point multiply",
                    "notebooks/08_integer_inference.ipynb")


def _int32() -> Any:
    st = _st()
    return st.integers(INT32_MIN, INT32_MAX)


def _strategy_mbqm() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        if d(st.integers(0, 2)):  # two draws in three: M = 2^-(r+1), so SRDHM is exact and the shift ties
            if d(st.booleans()):  # x = 4 v + 1, M = 1/4: SRDHM rounds x/2 up to a half, the shift rounds again
                return (4 * d(st.integers(0, 2**28)) + 1, 2**30, -1)
            r = d(st.integers(1, 12))
            u = d(st.integers(INT32_MIN >> r, INT32_MAX >> r)) | 1  # odd: x / 2^(r+1) = u / 2 is a half
            return (u << r, 2**30, -r)
        shift = d(st.integers(-31, 8))
        m0 = d(st.one_of(st.integers(2**30, INT32_MAX), st.just(0), st.just(2**30)))
        left = max(shift, 0)
        x = d(st.integers(INT32_MIN >> left, INT32_MAX >> left))
        return (x, m0, shift)

    return draw()


def _strategy_srdhm() -> Any:
    st = _st()
    half = st.tuples(st.integers(-(2**30), 2**30 - 1).map(lambda r: 2 * r + 1), st.sampled_from([2**30, -(2**30)]))
    # a b / 2^31 = k + 1/2 exactly for odd a and b = +-2^30 (either order): the tie rule decides
    return st.one_of(half, half.map(lambda t: (t[1], t[0])), st.tuples(_int32(), _int32()))


def _strategy_rdbpot() -> Any:
    st = _st()

    @st.composite
    def tie(d: Any) -> tuple:  # x = m 2^(e-1) with m odd: x / 2^e = m / 2 is a half
        e = d(st.integers(1, 31))
        m = d(st.integers(INT32_MIN >> (e - 1), INT32_MAX >> (e - 1))) | 1
        return (m << (e - 1), e)

    return st.one_of(tie(), tie(), st.tuples(_int32(), st.integers(0, 31)))


def _strategy_quantize_multiplier() -> Any:
    st = _st()
    # M = (k + 1/2) 2^(e-31) with k in [2^30, 2^31): q 2^31 = k + 1/2 exactly, so the tie rule decides m0
    tie = st.tuples(st.integers(2**30, 2**31 - 1), st.integers(-25, 10)).map(lambda t: ((t[0] + 0.5) * 2.0 ** (t[1] - 31),))
    plain = st.one_of(st.floats(0.0, 1.0), st.floats(1e-12, 1e6)).map(lambda m: (m,))
    return st.one_of(tie, tie, plain)


EX7 = [
    Task(
        "task_7_1", "srdhm", ("a", "b"),
        "SaturatingRoundingDoublingHighMul (ARM SQRDMULH)", "ex7", EXERCISE.lesson,
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
        strategy=_strategy_srdhm,
        hint="SRDHM(a, b) = trunc((a b + nudge) / 2^31), nudge = 2^30 if a b >= 0 else 1 - 2^30, and "
        "INT32_MIN * INT32_MIN -> INT32_MAX (Eq. 27)",
        forbidden=("qlearn.fixedpoint.saturating_rounding_doubling_high_mul",),
    ),
    Task(
        "task_7_2", "rounding_divide_by_pot", ("x", "exponent"),
        "RoundingDivideByPOT: x / 2^exponent, ties away from zero", "ex7", EXERCISE.lesson,
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
        strategy=_strategy_rdbpot,
        hint="mask = 2^e - 1, remainder = x & mask, threshold = (mask >> 1) + (1 if x < 0 else 0), "
        "result = (x >> e) + (1 if remainder > threshold else 0) (Eq. 28)",
        forbidden=("qlearn.fixedpoint.rounding_divide_by_pot",),
    ),
    Task(
        "task_7_3", "quantize_multiplier", ("m",),
        "a real multiplier as (m0, shift), M = m0 2^(shift - 31)", "ex7", EXERCISE.lesson,
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
        strategy=_strategy_quantize_multiplier,
        hint="(q, e) = math.frexp(M); m0 = round_half_away(q 2^31); if m0 == 2^31: m0 = 2^30, e += 1; "
        "if e < -31: (0, 0); shift = e (Eq. 23)",
        forbidden=("qlearn.fixedpoint.quantize_multiplier",),
    ),
    Task(
        "task_7_4", "multiply_by_quantized_multiplier", ("x", "m0", "shift"),
        "x * M in integers, TFLite's double rounding", "ex7", EXERCISE.lesson,
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
            Case("a positive tie in the shift: 20 * 0.125 = 2.5", (20, 2**30, -2),
                 "RoundingDivideByPOT sends 2.5 to 3 (away from zero), where round() and np.round give 2"),
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


def _srdhm_rule(rule: str) -> Callable[[int, int], int]:
    def srdhm(a: int, b: int) -> int:
        if a == b == INT32_MIN:
            return INT32_MAX
        if rule == "py_round":
            return int(round(a * b / 2**31))
        return _div_pot(a * b, 31, rule)

    return srdhm


def _rdbpot_rule(rule: str) -> Callable[[int, int], int]:
    def rounding_divide_by_pot(x: int, exponent: int) -> int:
        return int(round(x / 2**exponent)) if rule == "py_round" else _div_pot(x, exponent, rule)

    return rounding_divide_by_pot


def _qm_rule(rule: str) -> Callable[[float], tuple[int, int]]:
    def quantize_multiplier(m: float) -> tuple[int, int]:
        if m < 0:
            raise ValueError("m < 0")
        if m == 0:
            return 0, 0
        q, e = math.frexp(m)
        v = q * 2**31
        m0 = int(round(v)) if rule == "py_round" else (int(math.floor(v)) if rule in ("floor", "trunc") else int(np.rint(v)))
        if m0 == 2**31:
            m0, e = 2**30, e + 1
        return (0, 0) if e < -31 else (m0, e)

    return quantize_multiplier


def _mbqm_rule(rule: str) -> Callable[[int, int, int], int]:
    def multiply_by_quantized_multiplier(x: int, m0: int, shift: int) -> int:
        left, right = max(shift, 0), max(-shift, 0)
        y = x * 2**left
        if not INT32_MIN <= y <= INT32_MAX:
            raise OverflowError("x 2^shift leaves int32")
        return _rdbpot_rule(rule)(_srdhm(y, m0), right)

    return multiply_by_quantized_multiplier


def _mbqm_float(rnd: Callable[[Any], np.ndarray]) -> Callable[[int, int, int], int]:
    def multiply_by_quantized_multiplier(x: int, m0: int, shift: int) -> int:
        y = x * 2 ** max(shift, 0)
        if not INT32_MIN <= y <= INT32_MAX:
            raise OverflowError("x 2^shift leaves int32")
        return int(rnd(x * m0 * 2.0 ** (shift - 31)))

    return multiply_by_quantized_multiplier


_AWAY = "ties go away from zero (TFLite's rounding): -1.5 -> -2, 2.5 -> 3"


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_7_1": (
        Bug("ties away from zero", _srdhm_rule("half_away"),
            "SRDHM sends ties toward +inf (-50.5 -> -50): nudge = 1 - 2^30 for a negative product, then truncate toward zero"),
        Bug(_RULE_NAMES["half_even"], _srdhm_rule("half_even"), "ties go toward +inf: 50.5 -> 51, -50.5 -> -50"),
        Bug(_RULE_NAMES["py_round"], _srdhm_rule("py_round"), "ties go toward +inf, and a float cannot hold a b exactly: stay in integers"),
        Bug(_RULE_NAMES["floor"], _srdhm_rule("floor"), "round to nearest: add the nudge before dividing"),
        Bug(_RULE_NAMES["trunc"], _srdhm_rule("trunc"), "round to nearest: add the nudge before dividing"),
    ),
    "task_7_2": tuple(Bug(_RULE_NAMES[r], _rdbpot_rule(r), _AWAY) for r in ("half_up", "half_even", "py_round", "floor", "trunc")),
    "task_7_3": tuple(Bug(_RULE_NAMES[r], _qm_rule(r), "round q 2^31 half away from zero (TfLiteRound): 2^30 + 1/2 -> 2^30 + 1")
                      for r in ("half_even", "floor")),
    "task_7_4": (
        Bug("one rounding in floating point", _mbqm_float(_half_away),
            "TFLite rounds twice, in integers: rounding_divide_by_pot(srdhm(x 2^left, m0), right)"),
    ) + tuple(Bug(f"the last step rounded by {_RULE_NAMES[r]}", _mbqm_rule(r), "the last step is RoundingDivideByPOT: " + _AWAY)
              for r in ("half_up", "half_even", "py_round", "floor")),
}


TASKS = EX7
