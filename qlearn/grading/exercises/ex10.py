"""Exercise 10: the re-quantized add -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from qlearn.fixedpoint import (
    multiply_by_quantized_multiplier as _mbqm,
)
from qlearn.fixedpoint import (
    quantize_multiplier as _quantize_multiplier,
)
from qlearn.grading.exercises._common import _shape, _st, int_scalar, ints_equal, tuple_of
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.integer import add
from qlearn.layer_integers import add_multipliers

EXERCISE = Exercise("ex10", "ex10_quantized_add.ipynb", "The re-quantized add of a skip connection",
                    "notebooks/07_skip_connections.ipynb")


_ADD_PARAMS = ("a_q", "a_zp", "a_m0", "a_shift", "b_q", "b_zp", "b_m0", "b_shift", "out_zp", "out_m0", "out_shift", "left_shift")


def _add_oracle(a_q: np.ndarray, a_zp: int, a_m0: int, a_shift: int, b_q: np.ndarray, b_zp: int, b_m0: int, b_shift: int,
                out_zp: int, out_m0: int, out_shift: int, left_shift: int) -> np.ndarray:
    return add(a_q, a_zp, a_m0, a_shift, b_q, b_zp, b_m0, b_shift, out_zp, out_m0, out_shift, left_shift=left_shift)


def _add_case(seed: int, shape: tuple[int, ...], sa: float, sb: float, so: float, zps: tuple[int, int, int], left: int = 20) -> tuple:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = rng.integers(0, 256, size=shape, dtype=np.uint8)
    m = add_multipliers(sa, sb, so, left_shift=left)
    return (a, zps[0], m.a_m0, m.a_shift, b, zps[1], m.b_m0, m.b_shift, zps[2], m.out_m0, m.out_shift, left)


def _strategy_add() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        sa, sb = d(st.floats(1e-3, 1.0)), d(st.floats(1e-3, 1.0))
        so = d(st.floats(max(sa, sb) / 2, 2 * (sa + sb)))  # the sum's range: neither much finer nor coarser
        zps = (d(st.integers(0, 255)), d(st.integers(0, 255)), d(st.integers(0, 255)))
        return _add_case(d(st.integers(0, 2**32 - 1)), d(_shape(1, 2, 6)), sa, sb, so, zps, d(st.sampled_from([20, 20, 15, 22])))

    return draw()


def _add_multipliers_oracle(a_scale: float, b_scale: float, out_scale: float, left_shift: int) -> tuple[int, ...]:
    m = add_multipliers(a_scale, b_scale, out_scale, left_shift=left_shift)
    return (m.a_m0, m.a_shift, m.b_m0, m.b_shift, m.out_m0, m.out_shift)


EX10 = [
    Task(
        "task_10_1", "add_multipliers", ("a_scale", "b_scale", "out_scale", "left_shift"),
        "the three fixed-point multipliers of the quantized add", "ex10", EXERCISE.lesson,
        oracle=_add_multipliers_oracle,
        compare=tuple_of(("a_m0", "a_shift", "b_m0", "b_shift", "out_m0", "out_shift"), (int_scalar(),) * 6),
        fixed=(
            Case("scales 0.05 and 0.1 -> 0.12", (0.05, 0.1, 0.12, 20)),
            Case("equal scales", (0.02, 0.02, 0.04, 20)),
        ),
        edge=(
            Case("the larger scale comes second", (0.3, 0.01, 0.3, 20),
                 "the common scale is T = 2 max(Sa, Sb), whichever input has it: Ma = Sa / T and Mb = Sb / T"),
            Case("left_shift 0", (0.05, 0.1, 0.25, 0), "Mout = T / (2^left_shift S_out): with left_shift 0 that is T / S_out"),
            Case("an output multiplier >= 1 is refused", (0.5, 0.5, 1e-9, 20),
                 "raise ValueError when T / (2^left_shift S_out) >= 1"),
            Case("a scale of 0 is invalid", (0.0, 0.1, 0.1, 20), "raise ValueError for a scale <= 0"),
        ),
        strategy=lambda: _st().tuples(_st().floats(1e-4, 10.0), _st().floats(1e-4, 10.0), _st().floats(1e-3, 10.0),
                                      _st().sampled_from([15, 20, 22])),
        hint="T = 2 max(Sa, Sb); (a_m0, a_shift) = quantize_multiplier(Sa / T), likewise b; "
        "(out_m0, out_shift) = quantize_multiplier(T / (2^left_shift S_out)) (Eq. 33)",
        forbidden=("qlearn.layer_integers.add_multipliers",),
    ),
    Task(
        "task_10_2", "quantized_add", _ADD_PARAMS,
        "add two uint8 tensors with different scales in integers (TFLite ADD)", "ex10", EXERCISE.lesson,
        oracle=_add_oracle, compare=ints_equal(),
        fixed=(
            Case("a 2x3 pair, scales 0.05 and 0.1 -> 0.12", _add_case(0, (2, 3), 0.05, 0.1, 0.12, (128, 100, 120))),
            Case("equal scales", _add_case(1, (5,), 0.02, 0.02, 0.04, (10, 200, 128))),
        ),
        edge=(
            Case("sums that saturate at 0 and 255",
                 (np.array([0, 255, 255], np.uint8), 128, *_add_multipliers_oracle(0.1, 0.1, 0.05, 20)[:2],
                  np.array([0, 255, 200], np.uint8), 128, *_add_multipliers_oracle(0.1, 0.1, 0.05, 20)[2:4],
                  128, *_add_multipliers_oracle(0.1, 0.1, 0.05, 20)[4:], 20),
                 "clamp to [0, 255] before converting to uint8, or 256 wraps to 0 and -1 to 255"),
            Case("codes below their zero points", _add_case(2, (4,), 0.03, 0.5, 0.6, (250, 240, 30)),
                 "centre in int32: a_q - a_zp on uint8 wraps around"),
            Case("very different scales (0.001 and 0.5)", _add_case(3, (6,), 0.001, 0.5, 0.5, (128, 128, 128)),
                 "rescale each input by its own (m0, shift) before adding: codes on different scales cannot be added"),
            Case("left_shift 0: the headroom matters", _add_case(4, (8,), 0.05, 0.07, 0.2, (128, 128, 128), left=0)),
            Case("shapes that differ", (np.zeros(2, np.uint8), 0, 2**30, 0, np.zeros(3, np.uint8), 0, 2**30, 0, 0, 2**30, 0, 20),
                 "raise ValueError when a_q and b_q differ in shape"),
        ),
        strategy=_strategy_add,
        hint="a' = mbqm((a_q - a_zp) 2^left_shift, a_m0, a_shift), likewise b'; "
        "q = clamp(out_zp + mbqm(a' + b', out_m0, out_shift), 0, 255) as uint8 (Eqs. 32-34)",
        forbidden=("qlearn.integer.add", "qlearn.integer_layers.QAdd"),
    ),
]


def _add_mult_variant(sa: float, sb: float, so: float, ls: int, *, factor: float = 2.0, headroom: bool = True) -> tuple[int, ...]:
    if min(sa, sb, so) <= 0:
        raise ValueError("scale")
    t = factor * max(sa, sb)
    out = t / (((1 << ls) if headroom else 1) * so)
    if out >= 1.0:
        raise ValueError("Mout >= 1")
    return (*_quantize_multiplier(sa / t), *_quantize_multiplier(sb / t), *_quantize_multiplier(out))


def _add_variant(a_q, a_zp, a_m0, a_shift, b_q, b_zp, b_m0, b_shift, out_zp, out_m0, out_shift, left_shift, *,
                 clamp: bool = True, shift_inputs: bool = True, in_floats: bool = False) -> np.ndarray:
    if a_q.shape != b_q.shape:
        raise ValueError("shapes differ")
    ls = left_shift if shift_inputs else 0
    a = (a_q.astype(np.int64) - a_zp) << ls
    b = (b_q.astype(np.int64) - b_zp) << ls
    if in_floats:
        mo = out_m0 * 2.0 ** (out_shift - 31)
        real = a * (a_m0 * 2.0 ** (a_shift - 31)) * mo + b * (b_m0 * 2.0 ** (b_shift - 31)) * mo
        q = np.rint(real).astype(np.int64) + out_zp
    else:
        total = _mbqm(a, a_m0, a_shift).astype(np.int64) + _mbqm(b, b_m0, b_shift).astype(np.int64)
        q = _mbqm(total, out_m0, out_shift).astype(np.int64) + out_zp
    return (np.clip(q, 0, 255) if clamp else q).astype(np.uint8)


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_10_1": (
        Bug("the common scale T = max(Sa, Sb)", lambda sa, sb, so, ls: _add_mult_variant(sa, sb, so, ls, factor=1.0),
            "T = 2 max(Sa, Sb), so that both input multipliers are at most 1/2 (Eq. 33)"),
        Bug("2^left_shift left out of the output multiplier", lambda sa, sb, so, ls: _add_mult_variant(sa, sb, so, ls, headroom=False),
            "the inputs were shifted left by left_shift bits, so Mout = T / (2^left_shift S_out) takes them back"),
    ),
    "task_10_2": (
        Bug("the codes added without rescaling",
            lambda *a: np.clip((a[0].astype(np.int64) - a[1]) + (a[4].astype(np.int64) - a[5]) + a[8], 0, 255).astype(np.uint8),
            "codes on different scales cannot be added: rescale each centred input with its own (m0, shift) first"),
        Bug("no clamp before converting to uint8", lambda *a: _add_variant(*a, clamp=False),
            "clamp to [0, 255] before astype(np.uint8), or 256 wraps to 0 and -1 to 255"),
        Bug("the left shift left out", lambda *a: _add_variant(*a, shift_inputs=False),
            "shift the centred inputs left by left_shift before rescaling them (the output multiplier expects it)"),
        Bug("one rounding in floating point", lambda *a: _add_variant(*a, in_floats=True),
            "TFLite rescales in integers, three roundings: use multiply_by_quantized_multiplier for each step"),
    ),
}


TASKS = EX10
