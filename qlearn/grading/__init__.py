"""Exercises graded by tests: in-notebook checks, pytest markers and batch grading for instructors.

    checks    ``check(task_id, fn)`` prints a verdict; ``run_check`` returns it (the engine)
    exercises one module per exercise notebook (ex1 ... ex11): each task's function name, contract,
              oracle, cases, generators (biased to ties and grid ends) and classic mistakes
    tasks     the task registry assembled from ``exercises``, and the comparison helpers
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

from qlearn.grading.checks import CheckResult, check, run_check


def main(argv: list[str] | None = None) -> int:
    """``python -m qlearn grade ...``: see ``qlearn.grading.grader``."""
    from qlearn.grading.grader import main as grader_main

    return grader_main(argv)


__all__ = ["check", "run_check", "CheckResult", "main"]
