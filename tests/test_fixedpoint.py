"""qlearn.fixedpoint against published vectors and a slow Python big-integer reference.

The references below transcribe the C++ of gemmlowp fixedpoint.h and TFLite quantization_util.cc /
common.h line by line on Python ints (unbounded, so nothing can overflow or wrap), with C's
truncating division written out. A second, independent family of references states what the
operations *mean* (exact rational rounding) and checks the C transcription against it.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    Int32OverflowError,
    multiplier_value,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    rounding_shift_right_half_up,
    saturating_rounding_doubling_high_mul,
)

SRDHM = saturating_rounding_doubling_high_mul
RDBPOT = rounding_divide_by_pot
MBQM = multiply_by_quantized_multiplier
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
int32s = st.integers(INT32_MIN, INT32_MAX)


# ----------------------------------------------------------------------------- big-int references
def c_div(a: int, b: int) -> int:
    """C integer division: truncate toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul<int32_t>, transcribed."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def ref_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT, transcribed (Python's & and >> act on two's complement)."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def round_half_away(f: Fraction) -> int:
    n = math.floor(abs(f) + Fraction(1, 2))
    return n if f >= 0 else -n


def ref_quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier on exact rationals: frexp by search, TfLiteRound = half away."""
    if m == 0:
        return 0, 0
    f = Fraction(m)
    e = 0
    while f / Fraction(2) ** e >= 1:
        e += 1
    while f / Fraction(2) ** e < Fraction(1, 2):
        e -= 1
    q_fixed = round_half_away(f / Fraction(2) ** e * 2**31)
    if q_fixed == 2**31:
        q_fixed //= 2
        e += 1
    if e < -31:
        return 0, 0
    return q_fixed, e


def ref_mbqm(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier (double rounding), transcribed."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return ref_rdbpot(ref_srdhm(x * (1 << left), m0), right)


# ----------------------------------------------------------------------------- published vectors
@pytest.mark.parametrize(
    "a, b, expected",
    [
        (INT32_MIN, INT32_MIN, INT32_MAX),  # (-1)(-1) = 1 saturates
        (2**15, 2**15, 1),  # 0.5 -> 1: ties go up
        (-(2**15), 2**15, 0),  # -0.5 -> 0: ties go up
        (-101, 2**30, -50),  # -50.5 -> -50
        (101, 2**30, 51),
        (INT32_MAX, INT32_MAX, INT32_MAX - 1),
        (INT32_MIN, INT32_MAX, -INT32_MAX),
        (0, INT32_MIN, 0),
    ],
)
def test_srdhm_vectors(a, b, expected):
    assert SRDHM(a, b) == expected
    assert SRDHM(np.array([a], np.int32), np.array([b], np.int32)).tolist() == [expected]


@pytest.mark.parametrize(
    "x, e, expected",
    [(-12, 3, -2), (12, 3, 2), (5, 1, 3), (-5, 1, -3), (4, 1, 2), (-4, 1, -2), (7, 0, 7),
     (INT32_MIN, 31, -1), (INT32_MAX, 31, 1), (-(2**30), 31, -1), (2**30 - 1, 31, 0), (-(2**30) + 1, 31, 0)],
)
def test_rdbpot_vectors(x, e, expected):
    assert RDBPOT(x, e) == expected


@pytest.mark.parametrize(
    "m, expected",
    [
        # the issue's vectors
        (0.25, (1073741824, -1)),
        (0.5 - 1e-10, (1073741824, 0)),
        (2**-33, (0, 0)),
        (1.25, (1342177280, 1)),
        # TFLite quantization_util_test.cc (QuantizeMultiplierSmallerThanOneExp / GreaterThanOne)
        (0.5 - 5e-9, (2147483627, -1)),
        (0.5, (1073741824, 0)),
        (0.75, (1610612736, 0)),
        (1 - 1e-9, (2147483646, 0)),
        (1 + 1e-11, (1073741824, 1)),
        (1.5, (1610612736, 1)),
        (1.75, (1879048192, 1)),
        (2 - 1e-9, (2147483647, 1)),
        (2 - 1e-11, (1073741824, 2)),
        (2.0, (1073741824, 2)),
        (0.0, (0, 0)),
        (0.125, (1073741824, -2)),
        (4.0, (1073741824, 3)),
        # the flush-to-zero edge (QuantizeMultiplierUnderflow)
        (2.0**-31, (1073741824, -30)),
        (2.0**-32, (1073741824, -31)),
        (0.99 * 2.0**-32, (0, 0)),
    ],
)
def test_quantize_multiplier_vectors(m, expected):
    assert quantize_multiplier(m) == expected
    assert ref_quantize_multiplier(m) == expected  # the reference agrees with the published numbers


def test_issue_mbqm_vector():
    assert MBQM(10000, *quantize_multiplier(0.00097656)) == 10
    assert ref_mbqm(10000, *quantize_multiplier(0.00097656)) == 10


# ----------------------------------------------------------------------------- references meaning
@given(int32s, int32s)
@SETTINGS
def test_srdhm_is_round_half_up_of_ab_over_2_31(a, b):
    """Independent meaning: SRDHM = floor(a b / 2^31 + 1/2), except the one saturating case."""
    meaning = INT32_MAX if a == b == INT32_MIN else math.floor(Fraction(a * b, 2**31) + Fraction(1, 2))
    assert ref_srdhm(a, b) == meaning


@given(int32s, st.integers(0, 31))
@SETTINGS
def test_rdbpot_is_round_half_away(x, e):
    assert ref_rdbpot(x, e) == round_half_away(Fraction(x, 2**e))


# ----------------------------------------------------------------------------- library vs reference
@given(int32s, int32s)
@SETTINGS
def test_srdhm_matches_reference(a, b):
    assert SRDHM(a, b) == ref_srdhm(a, b)


@given(int32s, st.integers(0, 31))
@SETTINGS
def test_rdbpot_matches_reference(x, e):
    assert RDBPOT(x, e) == ref_rdbpot(x, e)


@given(int32s, st.integers(0, 31))
@SETTINGS
def test_half_up_shift_differs_only_on_negative_ties(x, e):
    up = rounding_shift_right_half_up(x, e)
    assert up == math.floor(Fraction(x, 2**e) + Fraction(1, 2))
    is_negative_tie = e > 0 and x < 0 and Fraction(x, 2**e).denominator == 2
    assert (up != RDBPOT(x, e)) == is_negative_tie


@given(st.floats(0.0, 2.0**29, allow_nan=False, allow_infinity=False))
@SETTINGS
def test_quantize_multiplier_matches_reference(m):
    m0, shift = quantize_multiplier(m)
    assert (m0, shift) == ref_quantize_multiplier(m)
    if m0:
        assert 2**30 <= m0 < 2**31
        # relative error of the approximation (Eq. 31): at most 2^-31 / 0.5 = 2^-30
        assert abs(Fraction(m0) * Fraction(2) ** (shift - 31) - Fraction(m)) <= Fraction(m) * Fraction(1, 2**30)


@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=20))
@settings(max_examples=50, deadline=None, derandomize=True)
def test_quantize_multiplier_vectorised(ms):
    m0, shift = quantize_multiplier(np.array(ms))
    assert m0.dtype == np.int32 and shift.dtype == np.int32
    assert list(zip(m0.tolist(), shift.tolist())) == [quantize_multiplier(m) for m in ms]


@st.composite
def mbqm_case(draw):
    shift = draw(st.integers(-31, 30))
    m0 = draw(st.one_of(st.integers(2**30, INT32_MAX), st.integers(0, INT32_MAX)))
    limit = INT32_MAX >> max(shift, 0)  # x * 2^left must fit int32
    x = draw(st.integers(-limit - 1 if shift <= 0 else -limit, limit))
    return x, m0, shift


@given(mbqm_case())
@SETTINGS
def test_mbqm_matches_reference(case):
    x, m0, shift = case
    got = MBQM(x, m0, shift)
    assert got == ref_mbqm(x, m0, shift)
    # and it is within one LSB of the exact product x M
    assert abs(Fraction(got) - Fraction(x * m0) * Fraction(2) ** (shift - 31)) <= 1


@given(mbqm_case())
@SETTINGS
def test_single_rounding_is_one_rounding(case):
    x, m0, shift = case
    exact = Fraction(x * m0) * Fraction(2) ** (shift - 31)
    single = MBQM(x, m0, shift, rounding="single")
    assert single == math.floor(exact + Fraction(1, 2))
    assert abs(single - MBQM(x, m0, shift)) <= 1


def test_mbqm_vectorised_per_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**20), 2**20, size=(3, 4, 5), dtype=np.int32)
    m0, shift = quantize_multiplier(rng.uniform(1e-4, 3.0, 4))
    got = MBQM(x, m0[None, :, None], shift[None, :, None])
    assert got.dtype == np.int32 and got.shape == x.shape
    want = [[[ref_mbqm(int(x[i, c, j]), int(m0[c]), int(shift[c])) for j in range(5)] for c in range(4)]
            for i in range(3)]
    assert got.tolist() == want


def test_rounding_modes_differ_where_documented():
    # -12 / 8 through the multiplier M = 1/8: half-away gives -2, the plain half-up shift -1.
    m0, shift = quantize_multiplier(0.125)  # (2^30, -2): SRDHM(-12, 2^30) = -6, then -6 / 4 = -1.5
    assert MBQM(-12, m0, shift) == -2
    assert MBQM(-12, m0, shift, rounding="double_half_up") == -1
    assert MBQM(-12, m0, shift, rounding="single") == -1  # one rounding, ties up


def test_half_up_is_biased_half_away_is_not():
    """Why the paper's Appendix B rejects round-half-up: over symmetric data its mean error is > 0."""
    x = np.arange(-4096, 4097, dtype=np.int32)  # symmetric around 0
    exact = x / 8.0
    err_away = np.asarray(RDBPOT(x, 3)) - exact
    err_up = np.asarray(rounding_shift_right_half_up(x, 3)) - exact
    assert abs(err_away.mean()) < 1e-12
    assert err_up.mean() > 0.05  # every tie moved up: +1/2 on the 1/8 of values that are ties


def test_multiplier_value():
    assert multiplier_value(1073741824, -1) == 0.25
    assert multiplier_value(*quantize_multiplier(1.25)) == 1.25
    np.testing.assert_array_equal(multiplier_value(np.array([2**30, 2**30]), np.array([0, 1])), [0.5, 1.0])


def test_scalar_in_scalar_out_array_in_int32_out():
    assert isinstance(SRDHM(3, 5), int)
    assert SRDHM(np.int32(3), np.int64(5)) == 0
    out = RDBPOT(np.array([5, -5], dtype=np.int64), np.array([1, 1]))
    assert out.dtype == np.int32 and out.tolist() == [3, -3]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [SRDHM, RDBPOT])
def test_float_arrays_refused(fn):
    with pytest.raises(TypeError, match="integer"):
        fn(np.array([1.0, 2.0]), 1)
    with pytest.raises(TypeError):
        fn(1.5, 1)
    with pytest.raises(TypeError):
        fn([1, 2], 1)  # a list is not an array: be explicit
    with pytest.raises(TypeError):
        fn(True, 1)


def test_values_outside_int32_refused():
    with pytest.raises(ValueError, match="int32"):
        SRDHM(2**31, 1)
    with pytest.raises(ValueError, match="int32"):
        RDBPOT(np.array([INT32_MIN - 1], dtype=np.int64), 1)
    with pytest.raises(ValueError, match="int32"):
        MBQM(1, 2**31, 0)


@pytest.mark.parametrize("e", [-1, 32])
def test_exponent_range(e):
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        RDBPOT(5, e)


def test_exponent_type():
    with pytest.raises(TypeError):
        RDBPOT(5, 1.0)


@pytest.mark.parametrize("bad", [-0.5, -1e-30])
def test_negative_multiplier_refused(bad):
    with pytest.raises(ValueError, match=">= 0"):
        quantize_multiplier(bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_multiplier_refused(bad):
    with pytest.raises(ValueError):
        quantize_multiplier(bad)


def test_non_numeric_multiplier_refused():
    with pytest.raises(TypeError):
        quantize_multiplier("0.5")
    with pytest.raises(TypeError):
        quantize_multiplier(True)


def test_huge_multiplier_gives_tflite_shift_but_mbqm_refuses_it():
    m0, shift = quantize_multiplier(2.0**31)
    assert (m0, shift) == (2**30, 32)  # TFLite's double-rounding build returns this unchanged
    with pytest.raises(ValueError, match=r"\[-31, 30\]"):
        MBQM(1, m0, shift)


def test_mbqm_bad_multipliers():
    with pytest.raises(ValueError, match="m0"):
        MBQM(5, -3, 0)
    with pytest.raises(ValueError, match="shift"):
        MBQM(5, 2**30, -32)
    with pytest.raises(ValueError, match="rounding"):
        MBQM(5, 2**30, 0, rounding="nearest")


def test_mbqm_left_shift_overflow_is_reported():
    m0, shift = quantize_multiplier(1000.0)  # shift 10: x * 2^10 must fit int32
    assert MBQM(2**20, m0, shift) == 2**20 * 1000  # 2^30 fits, and M = 1000 is exact
    with pytest.raises(Int32OverflowError, match="overflows int32"):
        MBQM(np.array([1, 2**21], dtype=np.int32), m0, shift)


def test_single_rounding_overflow_is_reported():
    with pytest.raises(Int32OverflowError):
        MBQM(INT32_MAX, INT32_MAX, 30, rounding="single")
