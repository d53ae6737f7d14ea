"""How values appear in a verdict: short, exact reprs of inputs, expected and actual answers.

Shared by the check engine and by the exercise modules' comparisons (their "why" sentences), so it
imports nothing of the grading package but the task type.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qlearn.grading.spec import Task

__all__ = ["fmt", "fmt_args"]


def fmt(value: Any, limit: int = 400) -> str:
    """A short, exact repr: shortest round-trip floats, long arrays summarised."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):  # no torch import needed
        return "tensor " + fmt(value.detach().cpu().numpy(), limit)
    if isinstance(value, tuple):
        text = "(" + ", ".join(fmt(v, limit) for v in value) + ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, np.ndarray):
        dtype = "" if value.dtype in (np.float64, np.int64) else f", dtype={value.dtype}"
        if value.size <= 24:  # exact: every element with its shortest round-trip repr
            text = f"array({value.tolist()!r}{dtype})"
        else:
            with np.printoptions(threshold=24, edgeitems=3, floatmode="unique", linewidth=10**6):
                text = " ".join(repr(value).split())
    elif isinstance(value, (float, np.floating)):
        text = repr(float(value))
    elif isinstance(value, np.integer):
        text = f"{int(value)} ({type(value).__name__})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def fmt_args(task: Task, args: tuple) -> str:
    return ", ".join(f"{name}={fmt(v, 200)}" for name, v in zip(task.params, args))
