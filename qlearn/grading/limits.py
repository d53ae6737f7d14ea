"""The grader's limits on every notebook run: wall clock, per cell, per task, memory, restarts, ...

``Limits`` refuses anything outside its bounds (NaN included), naming the command-line option.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from qlearn._checks import check_number

__all__ = ["Limits"]


# option name, low, high, integer?  (the CLI and ``Limits`` refuse anything else, NaN included)
_BOUNDS = {
    "time_limit": ("--time-limit", 1.0, 86400.0, False),
    "cell_timeout": ("--cell-timeout", 0.1, 86400.0, False),
    "task_timeout": ("--task-timeout", 0.1, 86400.0, False),
    "memory_mb": ("--memory-mb", 512, 1 << 20, True),
    "max_restarts": ("--max-restarts", 0, 100, True),
    "grace": ("grace", 0.1, 3600.0, False),
    "examples": ("--examples", 1, 100_000, True),
    "file_mb": ("file_mb", 1, 1 << 20, True),
    "nproc": ("nproc", 8, 1 << 16, True),
    "scratch_mb": ("scratch_mb", 4, 1 << 20, True),
}


@dataclass
class Limits:
    time_limit: float = 120.0  # seconds of wall clock per run of one notebook
    cell_timeout: float = 30.0  # seconds per code cell
    task_timeout: float = 30.0  # seconds per group of a task's cases
    memory_mb: int = 2048  # address-space limit of the child (torch alone maps ~0.8 GB)
    max_restarts: int = 3  # re-runs after a crash or kill
    grace: float = 3.0  # seconds a cell or task may run on after its own time limit fired
    examples: int | None = None  # generated cases per task (None: the "grade" profile's number)
    file_mb: int = 64  # the largest file (or log) the child may write
    nproc: int = 256  # processes and threads the sandbox's user may have (torch starts a few threads)
    scratch_mb: int = 64  # size of each of the sandbox's tmpfs folders (/home/student, /tmp)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "examples":
                continue
            option, low, high, integer = _BOUNDS[f.name]
            if not integer and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            check_number(value, option, low, high, integer)
