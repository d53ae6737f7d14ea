"""The generated cases: inputs drawn by hypothesis from a fixed seed, the same on every run.

``run_seeded`` runs a body on a task's hypothesis strategy under the settings every check uses (seed
from the task id and the profile, no database, no deadline, no health checks); ``generated_cases``
draws the inputs once (no shrinking) and caches them for the grader, which sends them to the sandbox;
``cases_for`` gives the three groups of cases of a task as the grader runs them.
"""
from __future__ import annotations

import copy
import threading
import zlib
from collections.abc import Callable
from typing import Any

from qlearn.grading.spec import PROFILES, Case, Task

__all__ = ["run_seeded", "generated_cases", "cases_for"]

_GENERATED: dict[tuple[str, str, int], tuple[tuple, ...]] = {}
_GENERATED_LOCK = threading.Lock()


def run_seeded(task: Task, profile: str, examples: int, body: Callable[[tuple], Any], *, shrink: bool) -> None:
    """Call ``body(args)`` on up to ``examples`` argument tuples drawn from ``task.strategy()``, seeded
    by (task id, profile); with ``shrink`` hypothesis simplifies an input on which ``body`` raises,
    and the exception propagates. Hypothesis prints nothing."""
    # hypothesis is imported here, when generated cases are needed: ``from qlearn.grading import check``
    # in a notebook, and the grader's registry, stay free of it (it is the optional "grading" extra)
    from hypothesis import HealthCheck, Phase, given, reporting, seed, settings

    phases = (Phase.generate, Phase.shrink) if shrink else (Phase.generate,)

    @seed(zlib.crc32(f"{task.task_id}:{profile}".encode()))
    @settings(
        max_examples=examples, database=None, deadline=None, derandomize=False,
        suppress_health_check=list(HealthCheck), phases=phases,
        print_blob=False, report_multiple_bugs=False,
    )
    @given(task.strategy())
    def run(args: tuple) -> None:
        body(args)

    with reporting.with_reporter(lambda *a, **k: None):
        run()


def generated_cases(task: Task, profile: str, examples: int) -> tuple[tuple, ...]:
    """The argument tuples ``run_check`` feeds a function that passes (same seed, same settings):
    drawn once per (task, profile, examples) and cached."""
    key = (task.task_id, profile, examples)
    with _GENERATED_LOCK:  # hypothesis is not meant to run in several threads at once
        if key not in _GENERATED:
            found: list[tuple] = []
            run_seeded(task, profile, examples, lambda args: found.append(copy.deepcopy(tuple(args))), shrink=False)
            _GENERATED[key] = tuple(found)
        return _GENERATED[key]


def cases_for(task: Task, profile: str = "grade", examples: int | None = None) -> dict[str, list[Case]]:
    """The three groups of cases of ``task`` as the grader runs them."""
    n_gen = PROFILES[profile] if examples is None else examples
    gen = generated_cases(task, profile, n_gen)
    return {
        "fixed": list(task.fixed),
        "edge": list(task.edge),
        "generated": [Case(f"generated input {k} (hypothesis, fixed seed)", args) for k, args in enumerate(gen, 1)],
    }
