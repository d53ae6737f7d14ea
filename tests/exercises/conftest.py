"""The exercise checks as pytest tests, one marker per task.

    pytest tests/exercises                                   every task, on the solution notebooks
    pytest tests/exercises -m task_3_2                        one task
    pytest tests/exercises -m task_3_2 --submission my.ipynb  your work: a notebook, a .py file or a
                                                              folder of them (repeatable)
    QLEARN_SUBMISSION=my.py pytest -m task_3_2                the same from the repository root
                                                              (several paths separated by ':')

Functions are found by name (``quantize_tensor`` for task_1_2, ...), in whichever file defines them.
Without a submission the tests check the solution notebooks in notebooks/exercises/solutions/, which
is how the test suite shows that every check passes on the solutions. Unlike the grader, these tests
run the code in the pytest process (meant for your own work, not for grading others').
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlearn.grading.checks import close_matches
from qlearn.grading.notebook import load_namespace
from qlearn.grading.tasks import EXERCISES, tasks

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--submission", action="append", default=[], metavar="PATH",
        help="check the functions in this notebook / .py file / folder instead of the solutions (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for tid, t in tasks().items():
        config.addinivalue_line("markers", f"{tid}: exercise task {t.number}, {t.function}: {t.title}")


def _submission_paths(config: pytest.Config) -> list[Path]:
    try:
        given = list(config.getoption("--submission") or [])
    except ValueError:  # this conftest was loaded after option parsing (run from the repository root)
        given = []
    env = os.environ.get("QLEARN_SUBMISSION", "")
    given += [p for p in env.split(os.pathsep) if p]
    paths: list[Path] = []
    for p in map(Path, given):
        if not p.exists():
            raise pytest.UsageError(f"--submission / QLEARN_SUBMISSION: {p} does not exist")
        paths += sorted(p.rglob("*.ipynb")) + sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return [p for p in paths if ".ipynb_checkpoints" not in p.parts]


@pytest.fixture(scope="session")
def task_function(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """task_id -> the submitted function for it (loading each file once, when first needed)."""
    custom = _submission_paths(request.config)
    cache: dict[Path, dict] = {}

    def namespace(path: Path) -> dict:
        if path not in cache:
            cache[path] = load_namespace(path)
        return cache[path]

    def lookup(task_id: str) -> Any:
        task = tasks()[task_id]
        paths = custom or [SOLUTIONS / EXERCISES[task.exercise][0]]
        defined: list[str] = []
        for path in paths:
            ns = namespace(path)
            fn = ns.get(task.function)
            if callable(fn) and not (getattr(fn, "__module__", "") or "").startswith("qlearn"):
                return fn
            defined += [n for n, v in ns.items() if callable(v) and not n.startswith("_")]
        close = close_matches(task.function, defined)
        also = f" (did you rename it to {' or '.join(close)}?)" if close else ""
        pytest.fail(f"no function named {task.function} in {', '.join(map(str, paths))}{also}", pytrace=False)

    return lookup
