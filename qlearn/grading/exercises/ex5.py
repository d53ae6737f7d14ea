"""Exercise 5: batch-norm folding -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from qlearn.grading.exercises._common import _st, floats_close, tuple_of
from qlearn.grading.spec import Bug, Case, Exercise, Task

EXERCISE = Exercise("ex5", "ex5_bn_folding.ipynb", "Batch-norm folding",
                    "notebooks/05_bn_folding.ipynb")


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
        "batch norm in inference mode, NCHW", "ex5", EXERCISE.lesson,
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
        "fold batch norm into the weights and bias", "ex5", EXERCISE.lesson,
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


BUGS: dict[str, tuple[Bug, ...]] = {}  # none registered yet: the edge cases' hints serve


TASKS = EX5
