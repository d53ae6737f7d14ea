"""Exercises graded by tests: in-notebook checks, pytest markers and batch grading for instructors.

What an exercise is, and the registry:
    spec      Task, Case, Bug, Exercise: the types an exercise module declares its tasks with
    exercises one module per exercise notebook (ex1 ... ex13): each task's function name, contract,
              oracle, cases, generators (biased to ties and grid ends) and classic mistakes
    tasks     the task registry: every ``exercises/ex<number>.py``, found and assembled

The check engine (``checks`` lists its modules):
    checks    ``check(task_id, fn)`` prints a verdict; ``run_check`` returns it
    outcomes  the grader's split: outcomes collected in the sandbox, judged in the grader

Grading a class (``grader`` lists its modules):
    strip     student notebooks generated from the solution notebooks (solutions removed)
    notebook  reading submissions: exercise, tasks, code cells (matched by function name)
    runner    one submission in one sandboxed process: runs its cells, calls its functions on the cases
    sandbox   the bubblewrap sandbox each submission runs in (no network, no other process, read-only system)
    wire      plain data between grader and sandbox (JSON lines, never pickle), parsed strictly
    grader    ``python -m qlearn grade SUBMISSIONS_DIR --out grades.csv`` (``main``): the scores are
              computed there, from the outcomes the sandbox returns

The guide for instructors is docs/instructors.md.
"""
from __future__ import annotations

from qlearn.grading.checks import check, run_check
from qlearn.grading.grader import main
from qlearn.grading.results import CheckResult

__all__ = ["check", "run_check", "CheckResult", "main"]
