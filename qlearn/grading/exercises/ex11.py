"""Exercise 11: one folded layer to integers -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.fixedpoint import INT32_MAX, INT32_MIN
from qlearn.fixedpoint import quantize_multiplier as _quantize_multiplier
from qlearn.grading.exercises._common import (
    _NP_RULES,
    _RULE_NAMES,
    _dyadic_scale,
    _half_away,
    _rng_array,
    _st,
    floats_close,
    int_scalar,
    ints_equal,
    tuple_of,
)
from qlearn.grading.exercises.ex3 import _W34
from qlearn.grading.exercises.ex7 import _qm_rule
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.layer_integers import activation_range, quantize_bias, requant_multiplier
from qlearn.qparams import qparams_from_range
from qlearn.quantize import quantize
from qlearn.ranges import minmax_range

EXERCISE = Exercise("ex11", "ex11_convert_layer.ipynb", "One folded layer converted to integers",
                    "notebooks/09_mobilenet_pipeline.ipynb")


def _int_layer_oracle(w: np.ndarray, b: np.ndarray, in_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = minmax_range(w, 0)
    qp = qparams_from_range(lo, hi, 8, symmetric=True, signed=True, narrow_range=True, axis=0)
    w_q = quantize(w, qp).astype(np.int8)  # (Cout, ...) in [-127, 127]
    return w_q, quantize_bias(b, in_scale, qp.scale), np.asarray(qp.scale, dtype=np.float64)


def _w_quotient(args: tuple) -> np.ndarray:
    w = np.asarray(args[0], dtype=np.float64)
    s = _int_layer_oracle(*args)[2]
    return w / s.reshape((-1,) + (1,) * (w.ndim - 1))


def _b_quotient(args: tuple) -> np.ndarray:
    return np.asarray(args[1], dtype=np.float64) / (args[2] * _int_layer_oracle(*args)[2])


def _typed(dtype: str, inner: Callable[[Any, Any, tuple], str | None]) -> Callable[[Any, Any, tuple], str | None]:
    """``inner``, and the answer must have exactly this dtype (the integer engine's types)."""

    def compare(expected: Any, actual: Any, args: tuple) -> str | None:
        why = inner(expected, actual, args)
        if why is None and np.asarray(actual).dtype != np.dtype(dtype):
            return f"the values are right but the dtype is {np.asarray(actual).dtype}; the contract asks for {dtype}"
        return why

    return compare


def _int_layer_compare(expected: Any, actual: Any, args: tuple) -> str | None:
    return tuple_of(("w_q", "bias_q", "w_scale"),
                    (_typed("int8", ints_equal(_w_quotient)), _typed("int32", ints_equal(_b_quotient)),
                     floats_close(1e-12, 0.0)))(expected, actual, args)


def _strategy_int_layer() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        c = d(st.integers(1, 4))
        shape = (c, d(st.integers(1, 3))) + ((d(st.integers(1, 3)),) * 2 if d(st.booleans()) else ())
        in_scale = d(st.floats(1e-3, 0.1))
        if d(st.integers(0, 2)):  # two draws in three: exact ties w/S_c = k + 1/2 and b/(S_in S_c) = k + 1/2
            in_scale = _dyadic_scale(d)
            s = 2.0 ** -rng.integers(6, 12, c)  # (C,) the channel scales to be
            k = rng.integers(-127, 127, size=shape)
            w = (k + 0.5) * s.reshape((-1,) + (1,) * (len(shape) - 1))
            w.reshape(c, -1)[:, 0] = 127 * s * rng.choice([-1.0, 1.0], c)  # max|w_c| = 127 S_c exactly
            b = (rng.integers(-5000, 5000, c) + 0.5) * in_scale * s
            return (w, b, in_scale)
        w = rng.normal(0.0, 0.5, shape)
        b = rng.normal(0.0, 0.5, c)
        return (w, b, in_scale)

    return draw()


def _requant_oracle(in_scale: float, w_scale: np.ndarray, out_scale: float, out_zp: int, relu6: bool) -> tuple:
    m0, shift = requant_multiplier(in_scale, np.asarray(w_scale, dtype=np.float64), out_scale)
    if not isinstance(relu6, (bool, np.bool_)):
        raise TypeError(f"relu6 must be True or False, got {relu6!r}")
    act_min, act_max = activation_range("relu6" if relu6 else None, out_scale, out_zp)  # uint8 output
    return np.asarray(m0, dtype=np.int64), np.asarray(shift, dtype=np.int64), int(act_min), int(act_max)


def _strategy_requant() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        c = d(st.integers(1, 4))
        relu6 = d(st.booleans())
        branch = d(st.integers(0, 2))
        if branch == 1:  # 6 / S_out = k + 1/2 exactly: the ReLU6 bound rounds a half
            k6 = d(st.integers(3, 200))
            while 6.0 / (6.0 / (k6 + 0.5)) != k6 + 0.5:
                k6 += 1
            return (d(st.floats(1e-3, 0.1)), rng.uniform(1e-4, 1e-2, c), 6.0 / (k6 + 0.5), d(st.integers(0, 60)), True)
        if branch == 2:  # powers of two for S_in, S_out: M = S_in S_w / S_out is exact and q 2^31 = k + 1/2
            in_scale, out_scale = 2.0 ** -d(st.integers(4, 10)), 2.0 ** -d(st.integers(1, 6))
            m = (rng.integers(2**30, 2**31, c) + 0.5) * 2.0 ** (-rng.integers(5, 15, c) - 31)
            return (in_scale, m * out_scale / in_scale, out_scale, d(st.integers(0, 255)), relu6)
        in_scale = d(st.floats(1e-3, 0.1))
        out_scale = d(st.floats(1e-3, 0.5))
        w_scale = rng.uniform(1e-4, 1e-2, c)
        return (in_scale, w_scale, out_scale, d(st.integers(0, 255)), relu6)

    return draw()


_SW = np.array([0.004, 0.0125, 0.0007])


EX11 = [
    Task(
        "task_11_1", "int_weights_and_bias", ("w", "b", "in_scale"),
        "int8 per-channel weights and int32 bias of a folded layer", "ex11", EXERCISE.lesson,
        oracle=_int_layer_oracle, compare=_int_layer_compare,
        fixed=(
            Case("a 3x4 linear layer", (_W34, np.array([0.5, -0.25, 1.0]), 0.02)),
            Case("conv weights (2, 2, 3, 3)", (_rng_array(4, (2, 2, 3, 3), -0.4, 0.4), np.array([0.1, -0.3]), 0.05)),
        ),
        edge=(
            Case("the bias scale is S_in S_w", (np.array([[1.27, -0.5], [0.254, 0.1]]), np.array([0.3, -0.3]), 0.5),
                 "bias_q = round(b / (S_in S_w,c)): the accumulator's scale is the product of input and weight scales (Eq. 24)"),
            Case("an all-zero channel", (np.array([[0.0, 0.0], [1.0, -2.0]]), np.array([0.0, 1.0]), 0.1),
                 "a channel of zeros gets S = 1 (nothing divides by zero); its codes are 0"),
            Case("ties: w/S = k + 1/2 and b/(S_in S_w) = k + 1/2",
                 (np.array([[127.0, 0.5, -2.5, 1.5]]) / 128, np.array([2.5 * 0.5 / 128]), 0.5),
                 "round half to even (np.rint) for weights and bias alike: 0.5 -> 0, -2.5 -> -2, 1.5 -> 2, 2.5 -> 2"),
            Case("a channel of negative weights only", (np.array([[-3.0, -1.0], [1.0, 2.0]]), np.zeros(2), 0.1),
                 "S_c = max|w_c| / 127: -3 needs S = 3/127 (Eq. 8)"),
            Case("a bias beyond int32 is refused", (np.array([[1e-6, 0.0]]), np.array([1e6]), 1e-6),
                 "raise OverflowError when a bias code leaves int32 (its scale S_in S_w is far too small)"),
        ),
        strategy=_strategy_int_layer,
        hint="S_c = max|w_c| / 127 (1 for a zero channel); w_q = clamp(round(w / S_c), -127, 127) as int8; "
        "bias_q = round(b / (S_in S_c)) as int32 (Eqs. 8, 9, 24)",
        forbidden=("qlearn.layer_integers.quantize_bias", "qlearn.quantize.quantize", "qlearn.qparams.qparams_from_range",
                   "qlearn.convert.convert"),
    ),
    Task(
        "task_11_2", "requant_and_clamp", ("in_scale", "w_scale", "out_scale", "out_zp", "relu6"),
        "the per-channel M0 and shift, and the clamp of a fused ReLU6", "ex11", EXERCISE.lesson,
        oracle=_requant_oracle,
        compare=tuple_of(("m0", "shift", "act_min", "act_max"), (ints_equal(), ints_equal(), int_scalar(), int_scalar())),
        fixed=(
            Case("three channels, ReLU6", (0.02, _SW, 0.05, 0, True)),
            Case("three channels, no activation", (0.02, _SW, 0.05, 128, False)),
        ),
        edge=(
            Case("M = S_in S_w / S_out", (0.5, np.array([0.25]), 0.5, 0, False),
                 "the multiplier is the product of the input and weight scales over the output scale (Eq. 22): 0.25 here"),
            Case("ReLU6 clamps at Z and Z + round(6 / S)", (0.02, _SW, 0.05, 10, True),
                 "act_min = max(0, Z), act_max = min(255, Z + round(6 / S_out)): 0 and 6 are real values, Z is the code of 0"),
            Case("ReLU6 beyond the uint8 grid", (0.02, _SW, 0.01, 0, True), "cap act_max at 255"),
            Case("a tie in 6 / S = 40.5", (0.02, _SW, 6.0 / 40.5, 0, True),
                 "round(6 / S) rounds half away from zero (TFLite): 40.5 -> 41, where np.round and round() give 40"),
            Case("a tie in the multiplier: q 2^31 = 2^30 + 1/2", (1.0, np.array([0.5 + 2.0**-32]), 1.0, 0, False),
                 "quantize_multiplier rounds q 2^31 half away from zero: 2^30 + 0.5 -> 2^30 + 1"),
            Case("a multiplier too large for int32", (1.0, np.array([2.0**31]), 1.0, 0, False),
                 "raise ValueError when a shift would exceed 30 (M >= 2^30)"),
        ),
        strategy=_strategy_requant,
        hint="M_c = S_in S_w,c / S_out -> (m0_c, shift_c) by quantize_multiplier (Eqs. 22-23); ReLU6: "
        "[max(0, Z), min(255, Z + round_half_away(6 / S_out))], else [0, 255] (Eq. 37)",
        forbidden=("qlearn.layer_integers.requant_multiplier", "qlearn.layer_integers.activation_range", "qlearn.convert.convert"),
    ),
]


def _int_layer_variant(w: np.ndarray, b: np.ndarray, in_scale: float, *, bias_scale_in: bool = True,
                       per_channel: bool = True, rnd: Callable[[Any], np.ndarray] = np.rint) -> tuple:
    w = np.asarray(w, dtype=np.float64)
    absmax = np.abs(w.reshape(len(w), -1)).max(1) if per_channel else np.full(len(w), np.abs(w).max())
    s = np.where(absmax > 0, absmax / 127, 1.0)
    w_q = np.clip(rnd(w / s.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
    bq = rnd(np.asarray(b, dtype=np.float64) / ((in_scale if bias_scale_in else 1.0) * s))
    if bq.min() < INT32_MIN or bq.max() > INT32_MAX:
        raise OverflowError("bias")
    return w_q, bq.astype(np.int32), s


def _requant_variant(in_scale: float, w_scale: np.ndarray, out_scale: float, out_zp: int, relu6: bool, *,
                     zp_in_clamp: bool = True, cap: bool = True, rule: str = "half_away") -> tuple:
    m = in_scale * np.asarray(w_scale, dtype=np.float64) / out_scale
    qm = _quantize_multiplier if rule == "half_away" else _qm_rule(rule)
    pairs = [qm(float(v)) for v in m]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    shift = np.array([p[1] for p in pairs], dtype=np.int64)
    if shift.max() > 30:
        raise ValueError("M too large")
    if not relu6:
        return m0, shift, 0, 255
    v = 6.0 / out_scale
    six = int({"half_away": _half_away, "half_even": np.rint, "floor": np.floor, "trunc": np.trunc}[rule](v))
    z = out_zp if zp_in_clamp else 0
    hi = z + six
    return m0, shift, max(0, z), min(255, hi) if cap else hi


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_11_1": (
        Bug("the bias on the weights' scale S_w alone", lambda w, b, si: _int_layer_variant(w, b, si, bias_scale_in=False),
            "the bias is added to the accumulator, whose scale is S_in S_w: bias_q = round(b / (S_in S_w,c)) (Eq. 24)"),
        Bug("one scale for the whole tensor", lambda w, b, si: _int_layer_variant(w, b, si, per_channel=False),
            "one scale per OUTPUT channel: the maximum over axis 0's slices, not over the whole tensor"),
    ) + tuple(Bug(_RULE_NAMES[r], (lambda f: lambda w, b, si: _int_layer_variant(w, b, si, rnd=f))(f),  # noqa: B023 (bound by the call)
                  "round half to even (np.rint) for weights and bias: 2.5 -> 2, -2.5 -> -2")
              for r, f in _NP_RULES.items()),
    "task_11_2": (
        Bug("M = S_w / S_out (S_in left out)", lambda si, sw, so, z, r6: _requant_variant(1.0, sw, so, z, r6),
            "the accumulator's scale is S_in S_w: M = S_in S_w / S_out (Eq. 22)"),
        Bug("the ReLU6 clamp without the zero point", lambda si, sw, so, z, r6: _requant_variant(si, sw, so, z, r6, zp_in_clamp=False),
            "real 0 is the code Z and real 6 the code Z + round(6 / S): clamp to [Z, Z + round(6 / S)]"),
        Bug("act_max not capped at 255", lambda si, sw, so, z, r6: _requant_variant(si, sw, so, z, r6, cap=False),
            "act_max = min(255, Z + round(6 / S)): the clamp must stay on the uint8 grid"),
    ) + tuple(Bug(_RULE_NAMES[r], (lambda r: lambda si, sw, so, z, r6: _requant_variant(si, sw, so, z, r6, rule=r))(r),  # noqa: B023
                  "TFLite rounds half away from zero, both q 2^31 in quantize_multiplier and 6 / S in the ReLU6 bound")
              for r in ("half_even", "floor", "trunc")),
}


TASKS = EX11
