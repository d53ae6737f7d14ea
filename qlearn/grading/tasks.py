"""The task registry: every exercise module under ``qlearn/grading/exercises/``, collected.

Exercise notebooks (notebooks/exercises/) and the tasks they hold:

    ex1  quantize / dequantize, the nudged zero point     task_1_1 .. task_1_3   (Eqs. 1-9)
    ex2  error analysis: SQNR, rounding vs clipping       task_2_1 .. task_2_2   (Eqs. 14, 18)
    ex3  per-channel parameters                           task_3_1 .. task_3_3   (Eqs. 8, 13)
    ex4  range estimators: percentile and MSE search      task_4_1 .. task_4_2   (Eq. 15)
    ex5  batch-norm folding                               task_5_1 .. task_5_2   (Eqs. 40-42)
    ex6  the straight-through estimator (STE)             task_6_1 .. task_6_2   (Eqs. 50-52)
    ex7  quantize_multiplier and the fixed-point multiply task_7_1 .. task_7_4   (Eqs. 23-30)
    ex8  an integer convolution layer                     task_8_1 .. task_8_2   (Eqs. 20-25)
    ex9  EMA activation ranges and one QAT step           task_9_1 .. task_9_2   (Eqs. 16, 50-52)
    ex10 the re-quantized add of a skip connection        task_10_1 .. task_10_2 (Eqs. 32-34)
    ex11 one folded layer converted to integers           task_11_1 .. task_11_2 (Eqs. 8-9, 22-24, 37)
    ex12 two int4 codes packed into a byte                task_12_1 .. task_12_2 (Eq. 78)
    ex13 per-token quantization, SmoothQuant's scales     task_13_1 .. task_13_2 (Eqs. 80, 83)

Adding an exercise is adding one module ``exercises/exN.py`` (see docs/instructors.md): this registry
imports every module of that package named ``ex<number>``, in numeric order, and reads its ``EXERCISE``
(``spec.Exercise``), ``TASKS`` and ``BUGS``. The exercise modules import only ``spec``, ``formatting``
and ``exercises._common``, never this module nor the check engine, so the dependencies point one way
(spec <- exercises <- tasks <- checks, outcomes, grader).

Every oracle is an adapter from the task's signature to qlearn's own implementation (or, where qlearn
has no such function, to PyTorch's op). Each ``compare`` returns None when the learner's answer agrees
with the oracle, else one sentence saying how it differs. Edge cases carry the hint for the bug they
catch; ``BUGS`` registers each task's classic mistakes as known-wrong functions, which let a failing
check name the mistake behind a wrong answer (``judge.diagnose``). Generated inputs come from
hypothesis strategies that lean toward each task's traps (exact ties k + 1/2 of both signs in every
task that names a rounding rule, ends of the grid, negative values); arrays are drawn from a seeded
numpy generator (``_common._rng_array``) so that hypothesis shrinks shapes and seeds, which keeps
failing examples small and readable.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import re
import types
from typing import Any

from qlearn.grading import exercises
from qlearn.grading.spec import Bug, Exercise, Task

__all__ = ["TASKS", "BUGS", "EXERCISES", "LESSONS", "MODULES", "tasks", "get_task", "exercise_modules"]

_MODULE_NAME = re.compile(r"ex(\d+)")


def exercise_modules() -> tuple[types.ModuleType, ...]:
    """Every ``qlearn.grading.exercises.ex<number>`` module, imported, in numeric order (ex2 before ex10)."""
    found = [(int(m.group(1)), info.name) for info in pkgutil.iter_modules(exercises.__path__)
             if (m := _MODULE_NAME.fullmatch(info.name))]
    return tuple(importlib.import_module(f"{exercises.__name__}.{name}") for _, name in sorted(found))


def _exercise(module: types.ModuleType) -> Exercise:
    """The module's ``EXERCISE``, checked against its file name and its tasks."""
    ex = getattr(module, "EXERCISE", None)
    short = module.__name__.rpartition(".")[2]
    if not isinstance(ex, Exercise) or ex.id != short:
        raise TypeError(f"{module.__name__} must define EXERCISE = Exercise({short!r}, notebook, title, lesson)")
    for t in module.TASKS:
        if not isinstance(t, Task) or t.exercise != ex.id:
            raise TypeError(f"{module.__name__}.TASKS must hold Task entries of exercise {ex.id!r}, got {t!r}")
    return ex


MODULES = exercise_modules()
_DECLARED = tuple(_exercise(m) for m in MODULES)

# exercise id -> (notebook file name, title); exercise id -> the lesson notebook it practises
EXERCISES: dict[str, tuple[str, str]] = {ex.id: (ex.notebook, ex.title) for ex in _DECLARED}
LESSONS: dict[str, str] = {ex.id: ex.lesson for ex in _DECLARED}

BUGS: dict[str, tuple[Bug, ...]] = {tid: bugs for m in MODULES for tid, bugs in m.BUGS.items()}

# every task, with its classic mistakes attached, in the order the exercises present them
TASKS: dict[str, Task] = {
    t.task_id: dataclasses.replace(t, bugs=BUGS.get(t.task_id, ())) for m in MODULES for t in m.TASKS
}


def tasks() -> dict[str, Task]:
    """Every task, by id ("task_1_1", ...), in the order the exercises present them."""
    return TASKS


def get_task(task_id: Any) -> Task:
    """The task named ``task_id`` (a ``Task`` is returned as it is); a clear error for anything else."""
    if isinstance(task_id, Task):
        return task_id
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a string such as 'task_1_2', got {task_id!r}")
    if task_id not in TASKS:
        close = difflib.get_close_matches(task_id, list(TASKS), n=3)
        also = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"there is no task {task_id!r}.{also} Tasks: {', '.join(TASKS)}")
    return TASKS[task_id]
