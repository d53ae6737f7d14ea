"""Exercises graded by tests: in-notebook checks, pytest markers and batch grading for instructors.

    checks    ``check(task_id, fn)`` prints a verdict; ``run_check`` returns it (the engine)
    tasks     the task registry: each task's function name, contract, oracle and cases
    strip     student notebooks generated from the solution notebooks (solutions removed)
    notebook  reading submissions: exercise, tasks, code cells (matched by function name)
    runner    one submission in one child process, with time and memory limits
    grader    ``python -m qlearn grade SUBMISSIONS_DIR --out grades.csv`` (``main``)

The guide for instructors is docs/instructors.md.
"""
from __future__ import annotations

from qlearn.grading.checks import CheckResult, check, run_check


def main(argv: list[str] | None = None) -> int:
    """``python -m qlearn grade ...``: see ``qlearn.grading.grader``."""
    from qlearn.grading.grader import main as grader_main

    return grader_main(argv)


__all__ = ["check", "run_check", "CheckResult", "main"]
