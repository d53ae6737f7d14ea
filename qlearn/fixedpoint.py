"""Fixed-point multiplication: how an integer-only device multiplies by a real number M.

A quantized layer must rescale its int32 accumulator by the real multiplier M = S1 S2 / S3
(paper Sec. 2.2, Eq. 5 there; our Eq. 22). Integer hardware cannot hold M, so it is written as

    M = M0 * 2^(shift - 31),   M0 an int32 in [2^30, 2^31), i.e. M0 / 2^31 in [0.5, 1)   (Eq. 23)

and x * M is computed with two integer steps (Eq. 27-30):

1. ``saturating_rounding_doubling_high_mul(x, M0)``: (x * M0) / 2^31 rounded to nearest — the ARM
   instruction SQRDMULH (gemmlowp ``SaturatingRoundingDoublingHighMul``), a 32x32 -> 64-bit product
   of which the high 32 bits (doubled) are kept.
2. ``rounding_divide_by_pot(y, -shift)``: y / 2^(-shift) rounded to nearest, ties away from zero
   (gemmlowp ``RoundingDivideByPOT``), a rounding arithmetic right shift.

``multiply_by_quantized_multiplier`` chains them exactly as TensorFlow Lite does
(``MultiplyByQuantizedMultiplier`` in tensorflow/lite/kernels/internal/common.h, default
"double rounding" build), and ``quantize_multiplier`` is TFLite's ``QuantizeMultiplier``
(quantization_util.cc). All functions are vectorised over numpy integer arrays (computed in int64
and checked to fit int32), accept Python ints, and are bit-exact with the C++ (see the tests: the
published vectors and a Python big-integer reference over the whole int32 range).

Rounding, with worked numbers
-----------------------------
* SRDHM rounds ties *upward* (toward +inf): SRDHM(-101, 2^30) = round(-101 / 2) = -50.5 -> -50, but
  SRDHM(101, 2^30) = 50.5 -> 51. A tie needs x * M0 = odd * 2^30, which is rare for real data.
* RDBPOT rounds ties *away from zero*: -12 / 2^3 = -1.5 -> -2, and 12 / 2^3 = 1.5 -> 2.
  A plain "rounding shift" (x + 2^(e-1)) >> e — ARM's SRSHR, ``rounding_shift_right_half_up``
  here — rounds ties upward: -12 -> (-12 + 4) >> 3 = -1. That is biased: over a symmetric spread of
  values every tie moves the same way (+1/2 on average at ties), so the mean of the outputs drifts
  upward. gemmlowp adds a one-bit fixup (the threshold below) to break ties symmetrically, which is
  why the paper (Appendix B) warns against the plain round-half-up shift.
* ``rounding="single"`` is TFLite's newer TFLITE_SINGLE_ROUNDING build: one 64-bit product, one
  rounding, (x * M0 + 2^(30 - shift)) >> (31 - shift), ties upward. It can differ from the double
  rounding by 1 LSB (the first rounding of SRDHM can push a value onto a tie of the second).
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from qlearn._checks import as_float_array, check_broadcast

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "Int32OverflowError",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "rounding_shift_right_half_up",
    "quantize_multiplier",
    "multiplier_value",
    "multiply_by_quantized_multiplier",
    "ROUNDING_MODES",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
ROUNDING_MODES = ("double", "double_half_up", "single")


class Int32OverflowError(OverflowError):
    """An int32 value (an accumulator, or x shifted left) left [-2^31, 2^31 - 1].

    Integer hardware would wrap around silently (and in C it is undefined behaviour); qlearn stops
    and says where instead.
    """


# ------------------------------------------------------------------------------------ input checks
def _int32_operand(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """Return (int64 array holding int32 values, was_scalar). Floats are a TypeError."""
    if isinstance(x, bool) or isinstance(x, np.bool_):
        raise TypeError(f"{name} must be an int32 integer (or an integer array), got a bool")
    if isinstance(x, numbers.Integral):
        value = int(x)  # a Python int may exceed int64: compare it exactly before converting
        if not INT32_MIN <= value <= INT32_MAX:
            raise ValueError(f"{name} must fit int32 [{INT32_MIN}, {INT32_MAX}], got {value}")
        arr, scalar = np.asarray(value, dtype=np.int64), True
    elif isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(
                f"{name} must be an integer array (int32 or narrower), got dtype {x.dtype}; "
                "fixed-point arithmetic works on integers only (quantize real values first)"
            )
        if x.dtype == np.uint64 and x.size and x.max() > INT32_MAX:
            raise ValueError(f"{name} holds values above the int32 maximum {INT32_MAX}")
        arr, scalar = x.astype(np.int64, copy=False), False
    else:
        raise TypeError(
            f"{name} must be a Python int or a numpy integer array, got {type(x).__name__}"
        )
    if arr.size and (arr.min() < INT32_MIN or arr.max() > INT32_MAX):
        raise ValueError(
            f"{name} must fit int32 [{INT32_MIN}, {INT32_MAX}], got values in "
            f"[{arr.min()}, {arr.max()}]"
        )
    return arr, scalar


def _exponent(e: Any, name: str, lo: int, hi: int) -> np.ndarray:
    if isinstance(e, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer in [{lo}, {hi}], got a bool")
    if isinstance(e, numbers.Integral):
        if not lo <= int(e) <= hi:  # exact for any Python int, before int64 could overflow
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got {int(e)}")
        arr = np.asarray(int(e), dtype=np.int64)
    elif isinstance(e, np.ndarray) and np.issubdtype(e.dtype, np.integer):
        if e.dtype == np.uint64 and e.size and e.max() > hi:
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got values up to {e.max()}")
        arr = e.astype(np.int64)
    else:
        raise TypeError(f"{name} must be an integer (or integer array) in [{lo}, {hi}], got {e!r}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]")
    return arr


def _out(result: np.ndarray, scalar: bool) -> Any:
    """int32 array out, or a Python int when every input was a scalar."""
    if scalar:
        return int(result)
    return result.astype(np.int32)


# ------------------------------------------------------------------------------------ primitives
def saturating_rounding_doubling_high_mul(a: Any, b: Any) -> Any:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` = ARM SQRDMULH (Eq. 27).

        SRDHM(a, b) = trunc((a b + nudge) / 2^31),   nudge = 2^30 if a b >= 0 else 1 - 2^30

    i.e. a b / 2^31 rounded to nearest with ties toward +inf, for int32 a, b. Reading a and b as
    fixed-point fractions a / 2^31, b / 2^31 in [-1, 1), it is their product in the same format.
    The one product that does not fit, INT32_MIN * INT32_MIN = (-1) (-1) = +1, saturates to
    INT32_MAX. Worked numbers: SRDHM(2^15, 2^15) = 2^30 / 2^31 = 0.5 -> 1;
    SRDHM(-2^15, 2^15) = -0.5 -> 0; SRDHM(-101, 2^30) = -50.5 -> -50.

    a, b: Python ints or integer arrays (broadcast) holding int32 values. Returns int32 (or int).
    """
    a64, sa = _int32_operand(a, "a")
    b64, sb = _int32_operand(b, "b")
    check_broadcast(a=a64, b=b64)
    return _out(_srdhm(a64, b64), sa and sb)


def _srdhm(a64: np.ndarray, b64: np.ndarray) -> np.ndarray:
    """SRDHM on int64 arrays already known to hold int32 values (branch-free, as SIMD code is).

    Written with in-place operations on one scratch array: the same formula as the docstring above.
    """
    num = np.asarray(a64 * b64)  # a b in int64: |a b| <= 2^62, no overflow
    neg = num >> 63  # -1 where a b < 0, else 0
    neg &= 2**31 - 1  # 2^31 - 1 where a b < 0, else 0
    num += 1 << 30
    num -= neg  # + nudge: 2^30 if a b >= 0, else 1 - 2^30
    # C's '/' truncates toward zero but '>>' floors; adding 2^31 - 1 to a negative numerator first
    # turns the floor into a truncation (exactly what a compiler emits for num / 2^31).
    fix = num >> 63
    fix &= 2**31 - 1
    num += fix
    num >>= 31
    # Only INT32_MIN * INT32_MIN = 2^62 gives 2^31 here (every other |a b| < 2^62 gives at most
    # 2^31 - 1), so clamping at INT32_MAX is exactly gemmlowp's saturation.
    return np.minimum(num, INT32_MAX, out=num)


def rounding_divide_by_pot(x: Any, exponent: Any) -> Any:
    """gemmlowp ``RoundingDivideByPOT``: x / 2^exponent, round to nearest, ties away from zero (Eq. 28).

        mask      = 2^exponent - 1
        remainder = x & mask                       (x mod 2^exponent, in [0, mask])
        threshold = (mask >> 1) + (1 if x < 0 else 0)
        result    = (x >> exponent) + (1 if remainder > threshold else 0)

    ``x >> exponent`` floors; adding one when the remainder is above half rounds to nearest. For
    negative x the threshold is one higher, so an exact half (remainder == mask/2 + 1/2) stays on
    the floor, which for negatives is *away* from zero.
    Worked: -12 / 8 = -1.5: -12 >> 3 = -2, remainder 4, threshold 3 + 1 = 4, 4 > 4 is false -> -2.
            5 / 2 = 2.5: 5 >> 1 = 2, remainder 1 > threshold 0 -> 3.   -5 / 2 -> -3.

    x: int32 values; exponent: int (or integer array, broadcast) in [0, 31]. Returns int32 (or int).
    """
    x64, sx = _int32_operand(x, "x")
    e = _exponent(exponent, "exponent", 0, 31)
    check_broadcast(x=x64, exponent=e)
    return _out(_rdbpot(x64, e), sx and e.ndim == 0)


def _rdbpot(x64: np.ndarray, e: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT on int64 arrays holding int32 values, e in [0, 31]."""
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask  # two's complement '&' on int64 gives the int32 bits, as mask < 2^31
    threshold = (mask >> 1) + (x64 < 0)
    result = x64 >> e
    result += remainder > threshold
    return result


def rounding_shift_right_half_up(x: Any, exponent: Any) -> Any:
    """The plain rounding shift (x + 2^(exponent-1)) >> exponent (ARM SRSHR): ties toward +inf.

    For comparison only (notebook 08, Eq. 29): -12 / 8 = -1.5 -> -1 here but -2 with
    ``rounding_divide_by_pot``. Computed in int64, so the "+ 2^(e-1)" cannot overflow.
    """
    x64, sx = _int32_operand(x, "x")
    e = _exponent(exponent, "exponent", 0, 31)
    check_broadcast(x=x64, exponent=e)
    return _out(_half_up(x64, e), sx and e.ndim == 0)


def _half_up(x64: np.ndarray, e: np.ndarray) -> np.ndarray:
    half = np.where(e > 0, np.int64(1) << np.maximum(e - 1, 0), 0)
    return (x64 + half) >> e  # int64: no overflow of the "+ half"


# ------------------------------------------------------------------------------------ multipliers
def quantize_multiplier(real_multiplier: Any) -> tuple[Any, Any]:
    """TFLite ``QuantizeMultiplier``: a real M >= 0 as (m0, shift) with M ~= m0 * 2^(shift - 31) (Eq. 23).

        (q, e) = frexp(M)                  M = q 2^e, q in [0.5, 1)
        m0     = round_half_away(q 2^31)   in [2^30, 2^31]
        if m0 == 2^31: m0 = 2^30, e += 1   (q rounded up to 1.0; keep m0 in int32)
        shift  = e                          positive = left shift, negative = right shift
        if shift < -31: (m0, shift) = (0, 0)   flush M < ~2^-32 to zero (its product is 0 anyway)
        M == 0 -> (0, 0)

    Worked: M = 0.25 = 0.5 * 2^-1 -> (2^30, -1). M = 1.25 = 0.625 * 2^1 -> (1342177280, 1).
    M = 0.5 - 1e-10 = 0.9999999998 * 2^-1: q 2^31 = 2147483647.57 rounds to 2^31, so -> (2^30, 0).
    M = 2^-33 = 0.5 * 2^-32 -> shift -32 < -31 -> (0, 0).
    The relative error of the approximation is at most 2^-31 / 0.5 = 2^-30 (Eq. 31).

    Inputs TFLite leaves undefined are refused: a negative M raises ValueError (a ratio of scales is
    never negative; TFLite's single-rounding build DCHECKs M >= 0 too), and NaN/inf raise ValueError
    (std::frexp would return them unchanged and the cast to int64 is undefined behaviour).
    Multipliers >= 2^30 give shift >= 31, as in TFLite's double-rounding build; such a shift is then
    refused by ``multiply_by_quantized_multiplier`` (it would shift an int32 by 31 or more).

    ``real_multiplier``: a float, or a float array (per-channel). Returns (int, int) for a scalar,
    (int32 array, int32 array) for an array.
    """
    if isinstance(real_multiplier, (bool, np.bool_)):
        raise TypeError("real_multiplier must be a real number, got a bool")
    m = as_float_array(real_multiplier, "real_multiplier")
    if np.any(m < 0):
        raise ValueError(
            f"real_multiplier must be >= 0 (it is a ratio of scales S1 S2 / S3), got {real_multiplier!r}"
        )
    q, e = np.frexp(m)  # q in [0.5, 1) (0 for m == 0), m = q 2^e exactly
    e = e.astype(np.int64)
    q_fixed = np.floor(q * 2.0**31 + 0.5).astype(np.int64)  # q >= 0: half-up == TfLiteRound (half away)
    carry = q_fixed == 2**31
    q_fixed = np.where(carry, q_fixed // 2, q_fixed)
    e = np.where(carry, e + 1, e)
    flush = (e < -31) | (q_fixed == 0)
    q_fixed = np.where(flush, 0, q_fixed)
    e = np.where(flush, 0, e)
    if m.ndim == 0:
        return int(q_fixed), int(e)
    return q_fixed.astype(np.int32), e.astype(np.int32)


def multiplier_value(m0: Any, shift: Any) -> Any:
    """The real number m0 * 2^(shift - 31) that (m0, shift) stands for (float64, exact)."""
    m, sm = _int32_operand(m0, "m0")
    s = _exponent(shift, "shift", -1100, 1100)
    check_broadcast(m0=m, shift=s)
    out = np.ldexp(m.astype(np.float64), (s - 31).astype(np.int64))
    return float(out) if sm and np.ndim(shift) == 0 else out


def multiply_by_quantized_multiplier(x: Any, m0: Any, shift: Any, *, rounding: str = "double") -> Any:
    """TFLite ``MultiplyByQuantizedMultiplier``: round(x * m0 * 2^(shift - 31)) in integers (Eq. 30).

    rounding="double" (TFLite's default build, gemmlowp):
        left  = max(shift, 0),  right = max(-shift, 0)
        result = RoundingDivideByPOT(SRDHM(x * 2^left, m0), right)
    rounding="double_half_up": as above but the last step is the plain half-up rounding shift
        (what a naive ARM SRSHR would give; for the rounding comparison of notebook 08).
    rounding="single" (TFLITE_SINGLE_ROUNDING):
        result = (x * m0 + 2^(30 - shift)) >> (31 - shift)       one rounding, ties toward +inf

    Worked: quantize_multiplier(0.00097656) = (2147478150, -10), since 0.00097656 = 0.99999... * 2^-10.
    x = 10000: SRDHM(10000, 2147478150) = round(10000 * 0.9999972) = round(9999.97) = 10000, then
    RoundingDivideByPOT(10000, 10) = round(9.765625) = 10 (the float product is 9.7656 -> 10).

    x: int32 values (any shape); m0: int32 in [0, 2^31 - 1]; shift: int in [-31, 30]; m0 and shift
    may be arrays broadcasting against x (per-channel). x * 2^left must fit int32, else
    ``Int32OverflowError`` (C would wrap it silently). Returns int32 (or int for all-scalar input).
    """
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    x64, sx = _int32_operand(x, "x")
    m64, sm = _int32_operand(m0, "m0")
    if m64.size and m64.min() < 0:
        raise ValueError(
            f"m0 must be in [0, 2^31 - 1] (a non-negative fixed-point multiplier from "
            f"quantize_multiplier), got {m64.min()}"
        )
    s = _exponent(shift, "shift", -31, 30)
    check_broadcast(x=x64, m0=m64, shift=s)
    scalar = sx and sm and np.ndim(shift) == 0
    if rounding == "single":
        total = 31 - s  # in [1, 62]
        result = (x64 * m64 + (np.int64(1) << (total - 1))) >> total  # |x m0| < 2^62, + 2^61 < 2^63
        if result.size and (result.min() < INT32_MIN or result.max() > INT32_MAX):
            raise Int32OverflowError(
                "x * M does not fit int32 (single-rounding MultiplyByQuantizedMultiplier); "
                "the multiplier is too large for these values"
            )
        return _out(result, scalar)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    shifted = x64 << left if left.any() else x64  # int64: |x| 2^30 < 2^61, exact
    if left.any() and shifted.size and (shifted.min() < INT32_MIN or shifted.max() > INT32_MAX):
        bad = int(np.abs(shifted).max())
        raise Int32OverflowError(
            f"x * 2^shift overflows int32 (|value| up to {bad} > 2^31 - 1) before the fixed-point "
            "multiply; TFLite would wrap this silently. Use a smaller multiplier or smaller inputs."
        )
    high = _srdhm(shifted, m64)  # int32 values
    result = _rdbpot(high, right) if rounding == "double" else _half_up(high, right)
    return _out(result, scalar)
