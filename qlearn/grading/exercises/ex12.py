"""Exercise 12: packing int4 codes into bytes -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.grading.exercises._common import _st, ints_equal
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.packing import pack, unpack

EXERCISE = Exercise("ex12", "ex12_pack_int4.ipynb", "Packing int4 codes into bytes",
                    "notebooks/10_formats_granularity.ipynb")


def _pack_oracle(codes: np.ndarray) -> np.ndarray:
    return pack(codes, 4, signed=True)


def _unpack_oracle(packed: np.ndarray, count: int) -> np.ndarray:
    return unpack(packed, 4, count, signed=True)


def _dtype_and_values(dtype: Any) -> Callable[[Any, Any, tuple], str | None]:
    """Integer arrays equal element by element, of exactly ``dtype`` (a byte is a uint8, a code an int8)."""
    values = ints_equal()
    want = np.dtype(dtype)

    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        why = values(expected, actual, args)
        if why is None and np.asarray(actual).dtype != want:
            return f"the values are right but the dtype is {np.asarray(actual).dtype}; the contract asks for {want}"
        return why

    return compare


def _codes(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int8)


def _strategy_codes() -> Any:
    st = _st()
    code = st.one_of(st.integers(-8, 7), st.sampled_from([-8, -1, 0, 7]))
    return st.tuples(st.lists(code, max_size=33).map(lambda v: np.array(v, dtype=np.int8)))


def _strategy_packed() -> Any:
    return _strategy_codes().map(lambda a: (_pack_oracle(a[0]), int(a[0].size)))


EX12 = [
    Task(
        "task_12_1", "pack_int4", ("codes",),
        "pack signed int4 codes two per byte, low nibble first", "ex12", EXERCISE.lesson,
        oracle=_pack_oracle, compare=_dtype_and_values(np.uint8),
        fixed=(
            Case("four codes", (_codes(1, 2, 3, 4),)),
            Case("negative codes", (_codes(-1, -8, 5, -3),)),
        ),
        edge=(
            Case("an odd number of codes", (_codes(1, 2, 3),),
                 "n codes take ceil(n / 2) bytes: pad the last byte's high nibble with 0"),
            Case("-1 in the low nibble", (_codes(-1, 0),),
                 "mask each code to 4 bits (code & 0xF) before combining: -1 is 0b1111, not 0b11111111"),
            Case("the ends of the range", (_codes(-8, 7, 7, -8),)),
            Case("no codes", (_codes(),), "no codes: an empty uint8 array"),
            Case("a code of 8 is out of range", (np.array([8], np.int16),), "raise ValueError for a code outside [-8, 7]"),
            Case("a code of -9 is out of range", (np.array([0, -9], np.int16),), "raise ValueError for a code outside [-8, 7]"),
        ),
        strategy=_strategy_codes,
        hint="byte j = (codes[2j] & 0xF) | ((codes[2j+1] & 0xF) << 4), a missing last code counting as 0; uint8 (Eq. 78)",
        forbidden=("qlearn.packing.pack", "qlearn.packing.unpack"),
    ),
    Task(
        "task_12_2", "unpack_int4", ("packed", "count"),
        "unpack count signed int4 codes from bytes", "ex12", EXERCISE.lesson,
        oracle=_unpack_oracle, compare=_dtype_and_values(np.int8),
        fixed=(
            Case("four codes", (np.array([0x21, 0x43], np.uint8), 4)),
            Case("negative codes", (_pack_oracle(_codes(-1, -8, 5, -3)), 4)),
        ),
        edge=(
            Case("an odd count", (np.array([0x21, 0x03], np.uint8), 3), "the last byte holds one code: read only its low nibble"),
            Case("nibbles of 8..15 are negative", (np.array([0xF8, 0x79], np.uint8), 4),
                 "sign-extend: a nibble v >= 8 is the code v - 16 (two's complement in 4 bits)"),
            Case("count 0", (np.zeros(0, np.uint8), 0), "no codes: an empty int8 array"),
            Case("too few bytes for count", (np.array([0x21], np.uint8), 3),
                 "raise ValueError when packed.size != ceil(count / 2)"),
            Case("too many bytes for count", (np.array([0x21, 0x43, 0x00], np.uint8), 4),
                 "raise ValueError when packed.size != ceil(count / 2)"),
        ),
        strategy=_strategy_packed,
        hint="low = packed & 0xF, high = packed >> 4, interleaved (low of byte j is code 2j), the first count kept; "
        "a nibble v >= 8 is v - 16; int8 (Eq. 78)",
        forbidden=("qlearn.packing.pack", "qlearn.packing.unpack"),
    ),
]


def _pack_variant(codes: np.ndarray, *, high_first: bool = False, mask_low: bool = True, drop_odd: bool = False) -> np.ndarray:
    c = np.asarray(codes).astype(np.int64)
    if c.size and (c.min() < -8 or c.max() > 7):
        raise ValueError("code out of range")
    if c.size % 2:
        c = c[:-1] if drop_odd else np.append(c, 0)
    lo, hi = (c[1::2], c[0::2]) if high_first else (c[0::2], c[1::2])
    return (((lo & 0xF) if mask_low else lo) | ((hi & 0xF) << 4)).astype(np.uint8)


def _unpack_variant(packed: np.ndarray, count: int, *, sign: bool = True, high_first: bool = False) -> np.ndarray:
    if packed.size != (count + 1) // 2:
        raise ValueError("wrong count")
    lo, hi = packed.astype(np.int64) & 0xF, packed.astype(np.int64) >> 4
    both = np.stack([hi, lo] if high_first else [lo, hi], axis=1).reshape(-1)[:count]
    return (np.where(both >= 8, both - 16, both) if sign else both).astype(np.int8)


# The classic mistakes: known-wrong versions of the tasks' functions (tried in this order, ``judge.diagnose``).
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_12_1": (
        Bug("the first code in the high nibble", lambda c: _pack_variant(c, high_first=True),
            "code 2j goes in the LOW nibble (bits 0-3) of byte j, code 2j+1 in the high nibble"),
        Bug("the low code not masked to 4 bits", lambda c: _pack_variant(c, mask_low=False),
            "a negative code has all its upper bits set: mask with & 0xF before OR-ing the two nibbles"),
        Bug("an odd last code dropped", lambda c: _pack_variant(c, drop_odd=True),
            "n codes take ceil(n / 2) bytes: the last odd code gets a byte of its own, high nibble 0"),
    ),
    "task_12_2": (
        Bug("no sign extension", lambda p, n: _unpack_variant(p, n, sign=False),
            "a nibble v in 8..15 stands for the negative code v - 16 (two's complement in 4 bits)"),
        Bug("the high nibble read first", lambda p, n: _unpack_variant(p, n, high_first=True),
            "the low nibble of byte j is code 2j, the high nibble code 2j+1"),
    ),
}


TASKS = EX12
