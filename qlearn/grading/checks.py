"""Checks for the exercise notebooks: compare a learner's function with qlearn's own (the oracle).

An exercise task asks for one function with a fixed name and signature, e.g. task "task_1_2" asks for
``quantize_tensor(x, scale, zero_point, qmin, qmax)``. ``check("task_1_2", quantize_tensor)`` calls it
on three groups of inputs and compares every answer with qlearn's own implementation:

    fixed      a few hand-picked, ordinary inputs (``Task.fixed``; not always the docstring's examples),
    edge       the inputs that catch the classic bugs: a zero-width range, ties in rounding,
               INT32_MIN, uint8 wrap-around, clamping at the ends, ...
    generated  inputs drawn by hypothesis from a fixed seed (the same inputs on every run), leaning
               toward the task's traps (exact ties, ends of the grid, negative values).

A group earns its point only if every case in it matches, so partly correct work earns partial credit.
For the first case of a group that does not match, the verdict shows the input, the expected and the
actual output, why they differ and a hint. The hint diagnoses when it can: the task's classic mistakes
(``Task.bugs``, known-wrong functions) run on the failing case, and if the learner's answer is exactly
one of theirs, the hint names that mistake (``diagnose``); otherwise it is the case's own hint. Every
verdict says how many cases of each kind ran. The notebook's check runs fewer generated cases than
the grader does (profile "notebook" vs "grade"), and its verdict says so: a pass in the notebook never
claims that every test the grader runs has passed.

``run_check`` returns a ``CheckResult`` without printing (pytest uses it); ``check`` prints the verdict.
The grader runs the same cases under the same rules, split across two processes (``outcomes``).

The engine, module by module (each imports only those above it):

    spec        Task, Case, Bug, Exercise: what an exercise module declares; PROFILES, GROUPS
    formatting  fmt: short, exact reprs for verdicts
    timeouts    time_limit, CheckTimeout
    results     CheckResult and its verdict text
    judge       one case: invoke the function, judge its outcome, diagnose the classic mistake
    precheck    can the function be checked at all? (signature, qlearn's own, a call of the oracle)
    generated   the hypothesis cases, from a fixed seed
    tasks       the registry: every exercise module of ``qlearn.grading.exercises``
    checks      this module: a whole check in one process (``run_check``, ``check``)
    outcomes    the grader's split: outcomes collected in the sandbox, judged in the grader
"""
from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from qlearn.grading.generated import run_seeded
from qlearn.grading.judge import run_case
from qlearn.grading.precheck import first_call, precheck, stub_message
from qlearn.grading.results import CheckResult, Failure, GroupResult, new_result
from qlearn.grading.spec import DEFAULT_TIME_LIMIT, PROFILES, Case, Task
from qlearn.grading.tasks import get_task
from qlearn.grading.timeouts import CheckTimeout, time_limit

__all__ = ["run_check", "check", "deferred_checks", "close_matches", "CheckResult", "PROFILES"]


# ------------------------------------------------------------------------------------ one check, one process
class _Mismatch(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.why)
        self.failure = failure


def _run_fixed(task: Task, fn: Callable[..., Any], name: str, cases: tuple[Case, ...], points: int) -> GroupResult:
    for i, case in enumerate(cases, start=1):
        f = run_case(task, fn, case)
        if f is not None:
            return GroupResult(name, 0, points, i, len(cases), False, f)
    return GroupResult(name, points, points, len(cases), len(cases), True)


def _run_generated(task: Task, fn: Callable[..., Any], examples: int, profile: str, points: int) -> GroupResult:
    state = {"ran": 0, "failing": False}

    def run(args: tuple) -> None:
        if not state["failing"]:
            state["ran"] += 1
        f = run_case(task, fn, Case("a generated input (hypothesis simplified it)", tuple(args)))
        if f is not None:
            state["failing"] = True
            raise _Mismatch(f)

    try:
        run_seeded(task, profile, examples, run, shrink=True)
    except _Mismatch as m:
        return GroupResult("generated", 0, points, state["ran"], examples, False, m.failure)
    return GroupResult("generated", points, points, state["ran"], examples, True)


def run_check(
    task_id: str | Task,
    fn: Any,
    *,
    profile: str = "grade",
    examples: int | None = None,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
) -> CheckResult:
    """Check ``fn`` against the oracle of task ``task_id``; return a ``CheckResult`` (prints nothing).

    profile  : "notebook" (quick: fewer generated cases) or "grade" (what the grader runs).
    examples : override the number of generated cases.
    time_limit_s : seconds allowed per group of cases (None: no limit).
    """
    task = get_task(task_id)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    n_gen = PROFILES[profile] if examples is None else examples
    if isinstance(n_gen, bool) or not isinstance(n_gen, int) or n_gen < 1:
        raise ValueError(f"examples must be a positive integer, got {examples!r}")
    result = new_result(task, profile, n_gen)
    problem = precheck(task, fn)
    if problem:
        result.status, result.message = "error", problem
        return result

    first = first_call(task, fn, time_limit_s)
    if first == "stub":
        result.status = "not implemented"
        result.message = stub_message(task)
        return result

    plan = [
        ("fixed", lambda pts: _run_fixed(task, fn, "fixed", task.fixed, pts)),
        ("edge", lambda pts: _run_fixed(task, fn, "edge", task.edge, pts)),
        ("generated", lambda pts: _run_generated(task, fn, n_gen, profile, pts)),
    ]
    timed_out = first == "timeout"
    if timed_out:
        result.groups.append(GroupResult(
            "fixed", 0, task.points[0], 0, len(task.fixed), False,
            note=f"TIMED OUT: the first fixed case took longer than {time_limit_s:g} s (an infinite loop?)",
        ))
        plan = plan[1:]
    for (name, run), pts in zip(plan, task.points[len(result.groups):]):
        if timed_out:
            result.groups.append(GroupResult(name, 0, pts, 0, 0, False, note="not run: an earlier group timed out"))
            continue
        try:
            with time_limit(time_limit_s):
                group = run(pts)
        except CheckTimeout:
            timed_out = True
            group = GroupResult(
                name, 0, pts, 0, 0, False,
                note=f"TIMED OUT: the {name} cases took longer than {time_limit_s:g} s (an infinite loop?)",
            )
        result.groups.append(group)
    result.points = sum(g.points for g in result.groups)
    result.status = "passed" if result.points == result.max_points else ("partial" if result.points else "failed")
    return result


# ------------------------------------------------------------------------------------ in the notebook
# Set by the grader and the pytest loader while they execute a notebook's cells: the notebook's own
# check() calls then only say that the checks run afterwards (no double work).
_DEFERRED = False


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    global _DEFERRED
    previous, _DEFERRED = _DEFERRED, True
    try:
        yield
    finally:
        _DEFERRED = previous


def check(task_id: str, fn: Any, *, examples: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> None:
    """Check your function for a task and print the verdict, e.g. ``check("task_1_2", quantize_tensor)``.

    Runs the task's fixed cases, its edge cases and ``examples`` generated ones (hypothesis, fixed
    seed; 25 by default) against qlearn's own implementation, and prints PASSED, or the first failing
    case of each group with the input, the expected and the actual output and a hint. Returns None
    (so a notebook shows the verdict once); ``run_check`` returns the result as an object.
    """
    if _DEFERRED:
        print(f"({task_id}: checked by the grader after the notebook has run)")
        return None
    result = run_check(task_id, fn, profile="notebook", examples=examples, time_limit_s=time_limit_s)
    print(result.report())
    return None


def close_matches(name: str, candidates: Sequence[str]) -> list[str]:
    """Names a learner may have renamed ``name`` to (for 'function not found' messages)."""
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
