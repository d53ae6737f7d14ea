"""Exercise 9: EMA ranges and a QAT step -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from qlearn.grading.exercises._common import _shape, _st, floats_close, tuple_of
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.ranges import EMARange

EXERCISE = Exercise("ex9", "ex9_ema_qat_step.ipynb", "EMA activation ranges and one QAT training step",
                    "notebooks/06_qat.ipynb")


def _ema_oracle(batches: list, decay: float) -> tuple[float, float]:
    ema = EMARange(decay)
    for b in batches:
        ema.update(b)
    lo, hi = ema.range  # ValueError when no batch came
    return float(lo), float(hi)


def _strategy_ema() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        n = d(st.integers(1, 6))
        drift = d(st.floats(-2.0, 2.0))
        batches = [rng.normal(drift * i, 1.0 + i, size=d(_shape(1, 2, 6))) for i in range(n)]
        decay = d(st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999]), st.floats(0.0, 0.999)))
        return (batches, decay)

    return draw()


def _qat_step_oracle(w: np.ndarray, x: np.ndarray, target: np.ndarray, scale: float, lr: float) -> np.ndarray:
    import torch

    from qlearn.fake_quant import fake_quant_ste

    wt = torch.tensor(np.asarray(w, dtype=np.float64), requires_grad=True)  # the float "shadow" weights
    w_hat = fake_quant_ste(wt, scale, 0, -127, 127)  # (out, in), on the narrow int8 grid
    y = torch.from_numpy(np.asarray(x, dtype=np.float64)) @ w_hat.T  # (N, out)
    loss = torch.mean((y - torch.from_numpy(np.asarray(target, dtype=np.float64))) ** 2)
    loss.backward()
    return (wt - lr * wt.grad).detach().numpy()


def _strategy_qat_step() -> Any:
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        out, inp, n = d(st.integers(1, 4)), d(st.integers(1, 4)), d(st.integers(1, 5))
        scale = d(st.floats(1e-3, 0.1))
        w = rng.uniform(-140.0, 140.0, (out, inp)) * scale  # some weights beyond the grid's ends
        x = rng.normal(0.0, 1.0, (n, inp))
        target = rng.normal(0.0, 1.0, (n, out))
        return (w, x, target, scale, d(st.sampled_from([0.0, 0.01, 0.1, 0.5])))

    return draw()


_WQ = np.array([[0.30, -0.52, 0.07], [1.40, 0.26, -0.11]])  # scale 0.01: one weight (1.40) beyond 1.27


_XQ = np.array([[1.0, 0.5, -2.0], [0.3, -1.0, 0.8], [2.0, 0.0, 1.0], [-0.5, 0.2, 0.1]])


_TQ = np.array([[0.2, 1.0], [-0.4, 0.1], [0.9, 2.1], [0.0, -0.5]])


EX9 = [
    Task(
        "task_9_1", "ema_range", ("batches", "decay"),
        "the EMA of the batch min and max (activation ranges in QAT)", "ex9", EXERCISE.lesson,
        oracle=_ema_oracle,
        compare=tuple_of(("lo", "hi"), (floats_close(1e-10, 1e-12), floats_close(1e-10, 1e-12))),
        fixed=(
            Case("three batches, decay 0.9", ([np.array([-1.0, 2.0]), np.array([-3.0, 1.0, 0.5]), np.array([0.0, 4.0])], 0.9)),
            Case("two 2-D batches, decay 0.5", ([np.arange(6.0).reshape(2, 3), -np.arange(4.0).reshape(2, 2)], 0.5)),
        ),
        edge=(
            Case("one batch: its own min and max", ([np.array([0.5, 3.0, -0.25])], 0.99),
                 "the first batch initialises the range to its own (min, max); it is not averaged with 0"),
            Case("the first batch initialises, the second is averaged", ([np.array([10.0, 20.0]), np.array([0.0, 0.0])], 0.9),
                 "lo <- decay lo + (1 - decay) min(batch): the OLD value gets the weight decay (Eq. 16)"),
            Case("decay 0: the last batch alone", ([np.array([-5.0, 5.0]), np.array([1.0, 2.0])], 0.0)),
            Case("positive activations: the range does not widen to 0", ([np.array([1.0, 2.0]), np.array([3.0, 6.0])], 0.5),
                 "the EMA tracks the batches' min and max as they are; widening to 0 happens later, in the scale"),
            Case("no batch at all", ([], 0.9), "with no batch there is no range: raise ValueError"),
            Case("decay 1 is invalid", ([np.array([1.0])], 1.0), "decay must lie in [0, 1): raise ValueError"),
        ),
        strategy=_strategy_ema,
        hint="first batch: (lo, hi) = (min, max); then lo = decay lo + (1 - decay) min(batch), likewise hi (Eq. 16)",
        forbidden=("qlearn.ranges.EMARange",),
    ),
    Task(
        "task_9_2", "qat_step", ("w", "x", "target", "scale", "lr"),
        "one QAT training step of a linear layer: fake-quantized forward, STE backward, SGD update", "ex9", EXERCISE.lesson,
        oracle=_qat_step_oracle, compare=floats_close(1e-9, 1e-12),
        fixed=(
            Case("a 2x3 layer, 4 samples", (_WQ, _XQ, _TQ, 0.01, 0.1)),
            Case("one output, one sample", (np.array([[0.5, -0.25]]), np.array([[1.0, 2.0]]), np.array([[1.0]]), 0.05, 0.5)),
        ),
        edge=(
            Case("weights beyond the grid get no gradient", (np.array([[2.0, -2.0, 0.5]]), np.ones((2, 3)), np.zeros((2, 1)), 0.01, 0.1),
                 "the STE passes the gradient only where S qmin <= w <= S qmax; the clamped weights keep their value"),
            Case("the float weights are updated, not the quantized ones",
                 (np.array([[0.123, -0.456]]), np.array([[1.0, -1.0]]), np.array([[0.0]]), 0.1, 0.01),
                 "w_new = w - lr grad on the float (shadow) weights w; the quantized w_hat is recomputed at the next step"),
            Case("lr = 0 leaves the weights", (_WQ, _XQ, _TQ, 0.01, 0.0)),
            Case("the loss is a mean over samples and outputs",
                 (np.array([[0.1], [0.2]]), np.array([[1.0], [2.0], [3.0]]), np.zeros((3, 2)), 0.001, 1.0),
                 "loss = mean((x w_hat^T - target)^2) over all N x out entries: divide the gradient by N out"),
            Case("a scale of 0 is invalid", (_WQ, _XQ, _TQ, 0.0, 0.1), "raise ValueError for scale <= 0"),
        ),
        strategy=_strategy_qat_step,
        hint="w_hat = fake_quant_ste(w) (Eqs. 50-52, Z = 0, [-127, 127]); loss = mean((x w_hat^T - target)^2); "
        "backward; return w - lr dloss/dw",
        forbidden=("qlearn.fake_quant.fake_quant_ste",),
    ),
]


def _ema_variant(batches: list, decay: float, *, start_at_zero: bool = False, swapped: bool = False,
                 widen: bool = False) -> tuple[float, float]:
    lo = hi = 0.0 if start_at_zero else None
    for b in batches:
        mn, mx = float(np.min(b)), float(np.max(b))
        if widen:
            mn, mx = min(mn, 0.0), max(mx, 0.0)
        if lo is None:
            lo, hi = mn, mx
        elif swapped:
            lo, hi = (1 - decay) * lo + decay * mn, (1 - decay) * hi + decay * mx
        else:
            lo, hi = decay * lo + (1 - decay) * mn, decay * hi + (1 - decay) * mx
    if lo is None:
        raise ValueError("no batch")
    return lo, hi


def _qat_variant(w: np.ndarray, x: np.ndarray, target: np.ndarray, scale: float, lr: float, *,
                 update_quantized: bool = False, clip_grad: bool = True, mean: bool = True) -> np.ndarray:
    import torch

    if not scale > 0:
        raise ValueError("scale")
    wt = torch.tensor(np.asarray(w, dtype=np.float64), requires_grad=True)
    q = torch.clamp(torch.round(wt / scale), -127, 127)
    inside = ((wt >= -127 * scale) & (wt <= 127 * scale)).to(wt.dtype) if clip_grad else torch.ones_like(wt)
    w_hat = (scale * q).detach() + (wt - wt.detach()) * inside
    err = (torch.from_numpy(np.asarray(x, dtype=np.float64)) @ w_hat.T - torch.from_numpy(np.asarray(target, dtype=np.float64))) ** 2
    (err.mean() if mean else err.sum()).backward()
    base = (scale * q) if update_quantized else wt
    return (base - lr * wt.grad).detach().numpy()


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_9_1": (
        Bug("the EMA started at (0, 0)", lambda bs, d: _ema_variant(bs, d, start_at_zero=True),
            "the first batch initialises the range to its own (min, max); starting at 0 drags the range toward 0 for many batches"),
        Bug("decay and 1 - decay swapped", lambda bs, d: _ema_variant(bs, d, swapped=True),
            "the OLD range keeps the weight decay: lo = decay lo + (1 - decay) min(batch) (Eq. 16)"),
        Bug("the range widened to contain 0", lambda bs, d: _ema_variant(bs, d, widen=True),
            "the EMA follows the batches' min and max as they are; widening to 0 belongs to the scale, later"),
    ),
    "task_9_2": (
        Bug("rounding without the straight-through trick (gradient 0, the weights never move)",
            lambda w, x, t, s, lr: np.array(w, dtype=np.float64),
            "torch.round has gradient 0: pass the gradient straight through, w_hat = (S q).detach() + (w - w.detach()) inside"),
        Bug("the quantized weights updated instead of the float ones",
            lambda w, x, t, s, lr: _qat_variant(w, x, t, s, lr, update_quantized=True),
            "return w - lr grad with the FLOAT weights w; w_hat is recomputed from them at the next step"),
        Bug("the gradient passed through the clamp as well", lambda w, x, t, s, lr: _qat_variant(w, x, t, s, lr, clip_grad=False),
            "the STE is the identity only inside [-127 S, 127 S]; where the clamp is active the gradient is 0 (Eq. 52)"),
        Bug("the loss summed instead of averaged", lambda w, x, t, s, lr: _qat_variant(w, x, t, s, lr, mean=False),
            "loss = mean((x w_hat^T - target)^2) over all N x out entries"),
    ),
}


TASKS = EX9
