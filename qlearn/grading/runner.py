"""One submission, one process: run a notebook's code cells, then check its task functions.

The grader starts this module as ``python -m qlearn.grading.runner JOB.json`` in a fresh process (its
own session, so the grader can kill it with every child it spawned). Before any learner code runs,
the process limits itself:

    RLIMIT_AS     address space (the memory limit): a huge allocation raises MemoryError
    RLIMIT_FSIZE  the size of any file it writes (a print loop cannot fill the disk)
    RLIMIT_CORE   0: a crash leaves no core dump

The cells run in an IPython shell (magics and ``display`` work as in Jupyter) with a time limit per
cell; a cell that raises is recorded and the next one runs, as nbgrader does. Then every task of the
notebook's exercise is checked, each with its own time limit, on the function found *by name*.

Every step is appended to a JSON-lines event file the moment it starts and ends, so that when this
process dies (``os._exit``, a segfault, the memory limit, the grader's wall-clock kill) the grader
knows the cell or task that was running, skips it and runs the notebook again.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main"]


class _Events:
    """Append-only JSON lines, flushed at once (a later crash cannot lose them)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a", encoding="utf-8")

    def emit(self, **event: Any) -> None:
        self._f.write(json.dumps(event, default=str) + "\n")
        self._f.flush()


def _limit(kind: int, value: int) -> None:
    """Lower the soft limit of ``kind`` to ``value`` (never above the hard limit)."""
    _, hard = resource.getrlimit(kind)
    resource.setrlimit(kind, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


def _set_limits(memory_mb: int, file_mb: int) -> None:
    _limit(resource.RLIMIT_AS, memory_mb * 2**20)
    _limit(resource.RLIMIT_FSIZE, file_mb * 2**20)
    _limit(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead of killing us


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _shell() -> Any:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    shell.user_ns["__name__"] = "__main__"
    return shell


def run_job(job: dict) -> None:
    events = _Events(job["events"])
    _set_limits(int(job["memory_mb"]), int(job.get("file_mb", 64)))

    from qlearn.grading import checks
    from qlearn.grading.checks import CheckResult, CheckTimeout, close_matches, deferred_checks, get_task, run_check, time_limit
    from qlearn.grading.notebook import NotebookError, code_cells, read_notebook

    checks.on_timeout = lambda: events.emit(event="alarm")  # the grader kills us if we do not stop soon

    task_ids = [t for t in job["tasks"] if t not in set(job.get("skip_tasks", []))]
    for tid in task_ids:  # resolve the oracles' modules before learner code runs: it cannot patch them
        for name in get_task(tid).forbidden:  # first, and torch's import time is not charged to a cell
            checks._resolve(name)
    try:
        nb = read_notebook(job["notebook"])
    except NotebookError as exc:
        events.emit(event="invalid", error=str(exc))
        events.emit(event="done")
        return

    shell = _shell()
    skip = set(job.get("skip_cells", []))
    with deferred_checks():
        for index, src in code_cells(nb):
            if index in skip or not src.strip():
                continue
            events.emit(event="cell_start", cell=index)
            status, error = "ok", None
            try:
                with time_limit(job["cell_timeout"]):
                    result = shell.run_cell(src, store_history=False, silent=False)
                exc = result.error_before_exec or result.error_in_exec
            except CheckTimeout as e:  # the alarm landed outside the cell's own exec
                exc = e
            if isinstance(exc, CheckTimeout):
                status, error = "timeout", f"did not finish within {job['cell_timeout']:g} s"
            elif isinstance(exc, SystemExit):
                status, error = "error", f"called sys.exit({exc.code!r}); the rest of the notebook still ran"
            elif exc is not None:
                status, error = "error", _short_error(exc)
            events.emit(event="cell_end", cell=index, status=status, error=error)
            sys.stdout.flush()

    namespace = shell.user_ns
    task_names = {t.function for t in checks.tasks().values()}
    defined = [n for n, v in namespace.items() if callable(v) and not n.startswith("_") and n not in task_names]
    for tid in task_ids:
        task = get_task(tid)
        events.emit(event="task_start", task=tid)
        fn = namespace.get(task.function)
        if fn is None:
            close = close_matches(task.function, defined)
            hint = f" Did you rename it to {' or '.join(close)}?" if close else ""
            result = CheckResult(
                tid, task.function, task.title, 0, task.max_points, "not found", job["profile"],
                message=(
                    f"no function named {task.function} was defined when the notebook ran (the grader finds "
                    f"tasks by function name; keep the stub's name).{hint}"
                ),
            )
        else:
            try:
                result = run_check(tid, fn, profile=job["profile"], examples=job.get("examples"),
                                   time_limit_s=job["task_timeout"])
            except (KeyboardInterrupt, CheckTimeout):
                raise
            except BaseException as exc:  # a failure of the check machinery itself: report, carry on
                result = CheckResult(
                    tid, task.function, task.title, 0, task.max_points, "error", job["profile"],
                    message=f"the check could not run: {_short_error(exc)}",
                )
                traceback.print_exc()
        events.emit(event="task_end", task=tid, result=result.to_dict())
    events.emit(event="done")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process (``python -m qlearn.grading.runner JOB.json``)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m qlearn.grading.runner JOB.json (started by the grader)", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    run_job(job)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit handlers a submission may have registered


if __name__ == "__main__":
    sys.exit(main())
