"""What an exercise task is: the types an exercise module declares its tasks with.

An exercise module (``qlearn/grading/exercises/exN.py``) imports only this module (and ``formatting``
for its messages): it declares its ``EXERCISE`` (an ``Exercise``), its ``TASKS`` (``Task`` entries,
each with its ``Case`` lists) and its ``BUGS`` (classic mistakes as ``Bug`` entries). The registry
(``qlearn.grading.tasks``) collects them; the check engine (``qlearn.grading.checks``) runs them.
Nothing here imports the registry or the engine, so the dependencies point one way:

    spec, formatting  <-  exercises/exN  <-  tasks (registry)  <-  checks, outcomes, grader
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Exercise", "Case", "Bug", "Task", "ContractError", "call_positional", "PROFILES", "GROUPS",
           "DEFAULT_TIME_LIMIT"]

# Generated (hypothesis) cases per task: the notebook runs a quick sample, the grader a larger one.
PROFILES = {"notebook": 25, "grade": 60}
DEFAULT_TIME_LIMIT = 60.0  # seconds per group of cases; an infinite loop fails instead of hanging
GROUPS = ("fixed", "edge", "generated")  # the three groups of cases of every task, in the order they run


class ContractError(Exception):
    """Raised by a task's ``call`` when the learner's answer breaks the contract in a way a value
    comparison cannot describe (e.g. an STE output cut from the autograd graph); the message says how."""


@dataclass(frozen=True)
class Exercise:
    """One exercise notebook: its id ("ex3"), the notebook's file name under notebooks/exercises/,
    its title, and the lesson notebook it practises (named in failure reports)."""

    id: str
    notebook: str
    title: str
    lesson: str


@dataclass(frozen=True)
class Case:
    """One input: ``args`` are the positional arguments, in the order of ``Task.params``."""

    label: str
    args: tuple
    hint: str = ""


@dataclass(frozen=True)
class Bug:
    """A classic mistake for a task, as a known-wrong function with the task's signature.

    When a learner's answer differs from the oracle on a case, the check runs each of the task's bugs
    on that case; if the learner's answer equals a bug's answer (and the bug's answer is wrong there),
    the hint names that mistake instead of the case's generic hint.
    """

    name: str  # e.g. "round half up: np.floor(v + 0.5)"
    fn: Callable[..., Any]
    hint: str  # what to do instead


def call_positional(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


@dataclass(frozen=True)
class Task:
    """One exercise task: the function a learner writes, its oracle and its cases.

    oracle   : a function with the learner's signature, built from qlearn's implementation.
    compare  : (expected, actual, args) -> None when they agree, else a sentence saying why not.
    strategy : () -> a hypothesis strategy of argument tuples (built lazily: hypothesis is imported
               only when a check runs).
    call     : how to call a function on the arguments (default: fn(*args)); the STE tasks use it
               to run the backward pass too.
    forbidden: dotted names of qlearn functions the learner must not call (the oracle itself):
               calling them would make the check compare qlearn with qlearn.
    bugs     : the task's classic mistakes (``Bug``), used to name the mistake behind a wrong answer.
    """

    task_id: str
    function: str
    params: tuple[str, ...]
    title: str
    exercise: str
    lesson: str
    oracle: Callable[..., Any]
    compare: Callable[[Any, Any, tuple], str | None]
    fixed: tuple[Case, ...]
    edge: tuple[Case, ...]
    strategy: Callable[[], Any]
    hint: str
    call: Callable[[Callable[..., Any], tuple], Any] = call_positional
    forbidden: tuple[str, ...] = ()
    points: tuple[int, int, int] = (1, 1, 1)  # fixed, edge, generated
    bugs: tuple[Bug, ...] = ()  # classic mistakes, tried in this order to diagnose a wrong answer

    @property
    def max_points(self) -> int:
        return sum(self.points)

    @property
    def number(self) -> str:
        """'task_3_2' -> '3.2' (how the notebooks name it)."""
        return self.task_id.removeprefix("task_").replace("_", ".")
