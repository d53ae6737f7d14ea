"""The verdict on one case: call a function on a copy of the inputs (``invoke``), compare what it did
with the oracle's answer (``judge``) and name the classic mistake behind a wrong answer (``diagnose``).

``judge`` and ``diagnose`` run only trusted code (the oracle, the comparison, the task's own bug
functions): the grader runs them in its own process on outcomes that came back from the sandbox.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn.grading.formatting import fmt, fmt_args
from qlearn.grading.results import Failure
from qlearn.grading.spec import Case, ContractError, Task
from qlearn.grading.timeouts import CheckTimeout

__all__ = ["Raised", "Outcome", "expected_answer", "inputs_changed", "invoke", "judge", "diagnose", "run_case"]


class Raised:
    """The outcome 'this call raised': the oracle's answer for inputs the contract refuses."""

    def __init__(self, exc: BaseException) -> None:
        # the contract names a built-in type: qlearn's Int32OverflowError counts as OverflowError
        self.type = next(c for c in type(exc).__mro__ if c.__module__ == "builtins")
        self.text = str(exc)

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 120 else self.text[:117] + "..."
        return f"raises {self.type.__name__} (qlearn says: {text})"


def expected_answer(task: Task, args: tuple) -> Any:
    try:
        return task.call(task.oracle, copy.deepcopy(args))
    except (ValueError, TypeError, OverflowError, ZeroDivisionError) as exc:
        return Raised(exc)


def inputs_changed(before: tuple, after: tuple, params: Sequence[str]) -> str | None:
    for name, a, b in zip(params, before, after):
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                return name
    return None


@dataclass
class Outcome:
    """What one call of a learner's function did: it returned ``value`` or raised ``error``;
    ``changed`` names an input array it modified in place (None: it left its inputs alone)."""

    value: Any = None
    error: BaseException | None = None
    changed: str | None = None


def invoke(task: Task, fn: Callable[..., Any], args: tuple) -> Outcome:
    """Call ``fn`` on a copy of ``args`` (through ``task.call``). Learner errors become an Outcome;
    a time limit (``CheckTimeout``) and KeyboardInterrupt propagate."""
    given = copy.deepcopy(args)
    try:
        value = task.call(fn, given)
    except (CheckTimeout, KeyboardInterrupt):
        raise
    except (ContractError, SystemExit, Exception) as exc:
        return Outcome(error=exc)
    return Outcome(value=value, changed=inputs_changed(args, given, task.params))


def judge(task: Task, case: Case, expected: Any, outcome: Outcome) -> Failure | None:
    """None if ``outcome`` agrees with the oracle's ``expected`` answer on ``case``; else the failure.

    This is the whole verdict on one case; the grader runs it in its own process on outcomes that
    came back from the sandboxed submission as plain data (see ``grade_report``)."""
    hint = case.hint or task.hint

    def failure(actual: str, why: str, h: str = hint) -> Failure:
        return Failure(case.label, fmt_args(task, case.args), fmt(expected), actual, why, h)

    exc = outcome.error
    if isinstance(exc, ContractError):
        return failure("(see why)", str(exc))
    if isinstance(exc, SystemExit):
        return failure(f"SystemExit({exc.code!r})", "the function called sys.exit() / exit(); it should return its answer")
    if exc is not None:  # the learner's bug: report it as a failed case
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(expected, Raised) and isinstance(exc, expected.type):
            return None
        if isinstance(expected, Raised):
            return failure(f"raised {text}", f"the contract asks for {expected.type.__name__} here, not {type(exc).__name__}")
        return failure(f"raised {text}", f"the function raised {type(exc).__name__} on a valid input: {exc}")
    actual = outcome.value
    if isinstance(expected, Raised):
        return failure(fmt(actual), f"this input is invalid: the contract asks you to raise {expected.type.__name__}")
    why = task.compare(expected, actual, case.args)
    if why is None and outcome.changed is not None:
        why = f"the answer is right, but the function modified its input {outcome.changed!r} in place; work on a copy"
    if why is None:
        return None
    return failure(fmt(actual), why, diagnose(task, case, expected, actual) or hint)


def diagnose(task: Task, case: Case, expected: Any, actual: Any) -> str | None:
    """The hint of the first classic mistake (``task.bugs``) whose answer on ``case`` is wrong and
    equals the learner's ``actual`` answer; None when no registered mistake explains it.

    Runs only trusted code (the task's own bug functions) on the case's inputs: the grader calls it
    in its own process on answers that came back from the sandbox as plain data."""
    for bug in task.bugs:
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrong = task.call(bug.fn, copy.deepcopy(case.args))
                if task.compare(expected, wrong, case.args) is None:
                    continue  # this mistake does not show on this case
                if task.compare(wrong, actual, case.args) is not None:
                    continue  # the learner's answer is not this mistake's answer
        except Exception:  # a bug variant that cannot run on these inputs explains nothing
            continue
        return f"your answer is exactly what a classic mistake gives ({bug.name}): {bug.hint}"
    return None


def run_case(task: Task, fn: Callable[..., Any], case: Case) -> Failure | None:
    """None if ``fn`` agrees with the oracle on ``case``; else what went wrong."""
    expected = expected_answer(task, case.args)
    return judge(task, case, expected, invoke(task, fn, case.args))
