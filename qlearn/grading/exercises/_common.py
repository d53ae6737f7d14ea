"""What every exercise module shares: the comparisons, the hypothesis helpers and the wrong rounding
rules (the classic mistakes of every task that names a rounding rule)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.grading.formatting import fmt
from qlearn.grading.spec import Bug


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


# The wrong rounding rules a learner may reach for, as numpy functions of float values (the classic
# mistakes of every task that names a rounding rule), and the integer versions for x / 2^e.
def _half_up(v: Any) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5)


def _half_away(v: Any) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _py_round(v: Any) -> np.ndarray:
    """Python's round() element by element (half to even, like np.rint)."""
    return np.vectorize(lambda t: float(round(float(t))), otypes=[np.float64])(np.asarray(v, dtype=np.float64))


def _div_pot(x: int, e: int, rule: str) -> int:
    """x / 2^e rounded by ``rule`` in exact integers (e >= 0)."""
    if e == 0:
        return x
    floor, rem, half = x >> e, x & ((1 << e) - 1), 1 << (e - 1)
    if rule == "floor":
        return floor
    if rule == "trunc":
        return floor + (1 if x < 0 and rem else 0)
    if rule == "half_up":
        return (x + half) >> e
    if rule == "half_away":
        return floor + (1 if rem > half or (rem == half and x >= 0) else 0)
    if rule == "half_even":
        return floor + (1 if rem > half or (rem == half and floor % 2) else 0)
    raise ValueError(rule)


_RULE_NAMES = {
    "half_up": "round half up, np.floor(v + 0.5) or (x + 2^(e-1)) >> e",
    "half_away": "round half away from zero",
    "half_even": "round half to even, np.round / np.rint",
    "py_round": "Python's round(), which rounds half to even",
    "floor": "floor, np.floor or >> (toward -inf)",
    "trunc": "truncation toward zero, int() or astype(int)",
}


def _dyadic_scale(d: Any) -> float:
    """A scale 2^j: (k + 1/2) S, its quotient by S and its product with 1/S are all exact (exact ties
    whichever way a learner divides)."""
    st = _st()
    return 2.0 ** d(st.integers(-14, 3))


def _torch_rule(name: str) -> Callable[[Any], Any]:
    def rnd(v: Any) -> Any:
        import torch

        if name == "half_up":
            return torch.floor(v + 0.5)
        if name == "half_away":
            return torch.sign(v) * torch.floor(torch.abs(v) + 0.5)
        if name == "trunc":
            return torch.trunc(v)
        return torch.floor(v)

    return rnd


_HALF_EVEN_RULES = "round half to even (np.round, np.rint, torch.round or Python's round all do)"


_ROUNDING_BUGS = {  # tasks whose contract rounds half to even
    "half_up": Bug(_RULE_NAMES["half_up"], None, f"the contract asks to {_HALF_EVEN_RULES}: 2.5 -> 2, -2.5 -> -2"),
    "half_away": Bug(_RULE_NAMES["half_away"], None, f"the contract asks to {_HALF_EVEN_RULES}: 2.5 -> 2, not 3"),
    "floor": Bug(_RULE_NAMES["floor"], None, f"round to the NEAREST integer first; {_HALF_EVEN_RULES}"),
    "trunc": Bug(_RULE_NAMES["trunc"], None, f"astype(int) truncates toward zero: round first; {_HALF_EVEN_RULES}"),
}


def _with(rules: dict[str, Bug], make: Callable[[Any], Callable[..., Any]], fns: dict[str, Any]) -> tuple[Bug, ...]:
    return tuple(Bug(b.name, make(fns[name]), b.hint) for name, b in rules.items())


_NP_RULES = {"half_up": _half_up, "half_away": _half_away, "floor": np.floor, "trunc": np.trunc}


_TORCH_RULES = {n: _torch_rule(n) for n in ("half_up", "half_away", "floor", "trunc")}
