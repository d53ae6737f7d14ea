"""Exercise 6: STE -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.grading.exercises._common import (
    _ROUNDING_BUGS,
    _TORCH_RULES,
    _diff_text,
    _dyadic_scale,
    _grid,
    _near_half,
    _rng_array,
    _shape,
    _st,
    _with,
)
from qlearn.grading.exercises.ex1 import _quotient_x_scale
from qlearn.grading.spec import Bug, Case, ContractError, Exercise, Task

EXERCISE = Exercise("ex6", "ex6_ste_fake_quant.ipynb", "Fake quantization with a straight-through gradient",
                    "notebooks/06_qat.ipynb")


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
    from qlearn.fake_quant import fake_quant_ste

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
        seed = d(st.integers(0, 2**32 - 1))
        x = _rng_array(seed, d(_shape(1, 2, 8)), -20.0, 20.0)
        if d(st.integers(0, 2)):  # two draws in three: about half the values are exact halves k + 1/2
            halves = np.random.default_rng(seed + 1).random(x.shape) < 0.5
            x = np.where(halves, np.floor(x) + 0.5, x)
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
        seed = d(st.integers(0, 2**32 - 1))
        x = _rng_array(seed, d(_shape(1, 2, 8)), lo - 3 * scale, hi + 3 * scale)
        if d(st.integers(0, 2)):  # two draws in three: exact ties x/S = k + 1/2 of both signs
            scale = _dyadic_scale(d)
            lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
            rng = np.random.default_rng(seed + 1)
            k = rng.integers(qmin - zp - 1, qmax - zp + 1, size=x.shape)
            x = np.where(rng.random(x.shape) < 0.6, (k + 0.5) * scale, rng.uniform(lo - 3 * scale, hi + 3 * scale, x.shape))
        if d(st.booleans()):
            x.flat[0] = d(st.sampled_from([lo, hi]))  # exactly at an end
        return (x, scale, zp, qmin, qmax)

    return draw()


EX6 = [
    Task(
        "task_6_1", "round_ste", ("x",),
        "round with a straight-through gradient", "ex6", EXERCISE.lesson,
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
        "fake quantization with a clipped straight-through gradient", "ex6", EXERCISE.lesson,
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
        forbidden=("qlearn.fake_quant.fake_quant_ste",),
    ),
]


def _ste_rule(rnd: Callable[[Any], Any]) -> Callable[..., Any]:
    def round_ste(x: Any) -> Any:
        return x + (rnd(x) - x).detach()

    return round_ste


def _fq_ste_rule(rnd: Callable[[Any], Any]) -> Callable[..., Any]:
    def fake_quant_ste(x: Any, scale: float, zero_point: int, qmin: int, qmax: int) -> Any:
        q = (rnd(x / scale) + zero_point).clamp(qmin, qmax)
        inside = ((x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale)).to(x.dtype)
        return (scale * (q - zero_point)).detach() + (x - x.detach()) * inside

    return fake_quant_ste


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_6_1": (
        Bug("torch.round without the straight-through trick", lambda x: __import__("torch").round(x),
            "torch.round has gradient 0 everywhere: x + (torch.round(x) - x).detach() keeps the forward and passes the gradient"),
    ) + _with(_ROUNDING_BUGS, _ste_rule, _TORCH_RULES),
    "task_6_2": _with(_ROUNDING_BUGS, _fq_ste_rule, _TORCH_RULES),
}


TASKS = EX6
