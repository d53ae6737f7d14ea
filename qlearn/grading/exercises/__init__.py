"""The exercise tasks, one module per exercise notebook (``ex1`` .. ``ex11``); ``_common`` holds what they share.

Each module defines ``TASKS`` (its ``Task`` entries: the function a learner writes, qlearn's oracle, the
fixed, edge and generated cases) and ``BUGS`` (task id -> its classic mistakes as known-wrong functions,
``checks.Bug``). This package assembles them: ``TASKS`` (every task, with its mistakes attached, in the
order the exercises present them), ``BUGS``, ``EXERCISES`` and ``LESSONS``. ``qlearn.grading.tasks`` is
the public name of the registry.
"""
from __future__ import annotations

import dataclasses

from qlearn.grading.checks import Bug, Task
from qlearn.grading.exercises import ex1, ex2, ex3, ex4, ex5, ex6, ex7, ex8, ex9, ex10, ex11
from qlearn.grading.exercises._common import EXERCISES, LESSONS

__all__ = ["TASKS", "BUGS", "EXERCISES", "LESSONS", "MODULES"]

MODULES = (ex1, ex2, ex3, ex4, ex5, ex6, ex7, ex8, ex9, ex10, ex11)

BUGS: dict[str, tuple[Bug, ...]] = {tid: bugs for m in MODULES for tid, bugs in m.BUGS.items()}

TASKS: dict[str, Task] = {
    t.task_id: dataclasses.replace(t, bugs=BUGS.get(t.task_id, ())) for m in MODULES for t in m.TASKS
}
