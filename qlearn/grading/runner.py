"""One submission, one process: run a notebook's code cells, then call its task functions on the cases.

The grader starts this module as ``python -s -m qlearn.grading.runner --stdin``, inside the bubblewrap
sandbox of ``qlearn.grading.sandbox`` (or, with ``--unsafe-no-sandbox``, as a plain child process).
Protocol, all plain data (``qlearn.grading.wire``: JSON lines, never pickle):

    stdin    the job, one JSON object, read whole before any learner code runs, then closed: the
             notebook's code cells, the cells to skip, the limits, and for every task the argument
             tuples of its fixed, edge and generated cases (inputs only: no expected answer)
    fd 1     the channel back to the grader: events (``ready``, ``cell_start``, ``cell_end``,
             ``alarm``, ``task_start``, ``task_result``, ``done``). Before learner code runs, fd 1
             is moved to a private descriptor and fd 1 becomes a copy of fd 2 (the log), so
             ``print`` in a cell goes to the log
    fd 2     the log (tracebacks, the learner's prints); its last line explains a crash

A ``task_result`` holds what each call of the learner's function *returned or raised*; it holds no
verdict and no points. The grader compares it with the oracle in its own process, so nothing this
process does (patching ``qlearn.grading.checks``, replacing an oracle, writing fake events on any
descriptor) can raise a score: a forged event can only claim other outputs, as a different function
would have returned.

Before any learner code runs, the process sets HARD resource limits (soft = hard; without a
capability they cannot be raised again, and the sandbox has none):

    RLIMIT_AS     address space (the memory limit): a huge allocation raises MemoryError
    RLIMIT_FSIZE  the size of any file it writes (a print loop cannot fill the disk)
    RLIMIT_NPROC  processes and threads (no fork bomb)
    RLIMIT_CPU    CPU seconds (a backstop behind the grader's wall-clock limit)
    RLIMIT_CORE   0: a crash leaves no core dump

The cells run in an IPython shell (magics and ``display`` work as in Jupyter) with a time limit per
cell; a cell that raises is recorded and the next one runs, as nbgrader does. Then every task of the
notebook's exercise is called, each group of cases with its own time limit, on the function found
*by name*. Every step is sent the moment it starts and ends, so that when this process dies
(``os._exit``, a segfault, the memory limit, the grader's wall-clock kill) the grader knows the cell
or task that was running, skips it and runs the notebook again.
"""
from __future__ import annotations

import os
import resource
import signal
import sys
import traceback
from typing import Any

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from qlearn.grading import timeouts, wire
from qlearn.grading.checks import close_matches, deferred_checks
from qlearn.grading.outcomes import collect_outcomes
from qlearn.grading.precheck import resolve
from qlearn.grading.spec import GROUPS
from qlearn.grading.tasks import get_task, tasks
from qlearn.grading.timeouts import CheckTimeout, time_limit

__all__ = ["main", "MAX_JOB_BYTES"]

MAX_JOB_BYTES = 512 * 2**20


class _Channel:
    """The grader's channel: one JSON line per event, written at once (a later crash cannot lose it)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def emit(self, **event: Any) -> None:
        data = memoryview(wire.dumps(event))
        while data:
            data = data[os.write(self._fd, data):]


def _hard(kind: int, value: int) -> None:
    """Set soft and hard limit of ``kind`` to ``value`` (or lower, if the hard limit already is)."""
    _, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))


def _set_limits(job: dict) -> None:
    _hard(resource.RLIMIT_AS, int(job["memory_mb"]) * 2**20)
    _hard(resource.RLIMIT_FSIZE, int(job.get("file_mb", 64)) * 2**20)
    _hard(resource.RLIMIT_CORE, 0)
    _hard(resource.RLIMIT_CPU, int(job.get("cpu_s", 600)))
    if job.get("nproc"):
        _hard(resource.RLIMIT_NPROC, int(job["nproc"]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead of killing us


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _shell() -> Any:
    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    shell.user_ns["__name__"] = "__main__"
    return shell


def run_job(job: dict, channel: _Channel) -> None:
    timeouts.on_timeout = lambda: channel.emit(event="alarm")  # the grader kills us if we do not stop soon
    # Bound here, before learner code runs: a cell that rebinds outcomes.collect_outcomes or
    # wire.encode_outcome does not change what this loop calls. (Not a security boundary: the verdict
    # is the grader's, computed outside from the outcomes alone.)
    collect, encode_outcome, emit = collect_outcomes, wire.encode_outcome, channel.emit

    task_jobs = [t for t in job["tasks"] if t["id"] not in set(job.get("skip_tasks", []))]
    cases = {t["id"]: {g: [tuple(wire.decode(a)) for a in t[g]] for g in GROUPS} for t in task_jobs}
    for t in task_jobs:  # resolve the oracles' modules before learner code runs, and torch's import
        for name in get_task(t["id"]).forbidden:  # time is not charged to a cell
            resolve(name)

    shell = _shell()
    skip = set(job.get("skip_cells", []))
    with deferred_checks():
        for index, src in job["cells"]:
            if index in skip or not src.strip():
                continue
            channel.emit(event="cell_start", cell=index)
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
            channel.emit(event="cell_end", cell=index, status=status, error=error)
            sys.stdout.flush()

    namespace = shell.user_ns
    task_names = {t.function for t in tasks().values()}
    defined = [n for n, v in namespace.items() if callable(v) and not n.startswith("_") and n not in task_names]
    for t in task_jobs:
        tid = t["id"]
        task = get_task(tid)
        emit(event="task_start", task=tid)
        fn = namespace.get(task.function)
        if fn is None:
            close = close_matches(task.function, defined)
            hint = f" Did you rename it to {' or '.join(close)}?" if close else ""
            report: dict = {"status": "not found", "error": (
                f"no function named {task.function} was defined when the notebook ran (the grader finds "
                f"tasks by function name; keep the stub's name).{hint}"
            )}
        else:
            try:
                report = collect(task, fn, cases[tid], job["task_timeout"], encode=encode_outcome)
            except (KeyboardInterrupt, CheckTimeout):
                raise
            except BaseException as exc:  # a failure of the check machinery itself: report, carry on
                report = {"error": f"the check could not run: {_short_error(exc)}"}
                traceback.print_exc()
        emit(event="task_result", task=tid, report=report)
    emit(event="done")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process (``python -m qlearn.grading.runner --stdin``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--stdin"]:
        print("usage: python -m qlearn.grading.runner --stdin (started by the grader; the job comes on stdin)",
              file=sys.stderr)
        return 2
    raw = sys.stdin.buffer.read(MAX_JOB_BYTES + 1)
    job = wire.loads(raw.strip(), limit=MAX_JOB_BYTES)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the learner's code reads nothing of the job
    channel = _Channel(os.dup(1))  # the channel moves off fd 1 (not inherited by subprocesses) ...
    sys.stdout.flush()
    os.dup2(2, 1)  # ... and fd 1 joins the log: print() in a cell cannot interleave with events
    _set_limits(job)
    channel.emit(event="ready")
    run_job(job, channel)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit handlers a submission may have registered


if __name__ == "__main__":
    sys.exit(main())
