"""Grading one notebook: run it in its sandbox, restart it past crashes, judge what comes back.

Each run starts ``qlearn.grading.runner`` in a bubblewrap sandbox (``qlearn.grading.sandbox``; or, with
``--unsafe-no-sandbox``, as a plain child process), sends it the job (the notebook's code cells and the
inputs of every case) and reads its events (``qlearn.grading.events``). When the child dies or is
killed, its last event says which cell or task was running: that one is skipped (and scored 0 if it
was a task) and the notebook runs again, up to ``Limits.max_restarts`` times. The verdict on every
task is computed here, from the outcomes alone (``qlearn.grading.outcomes.grade_report``).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlearn.grading import sandbox as _sandbox
from qlearn.grading import wire
from qlearn.grading.events import Stream, decode_report, watch
from qlearn.grading.generated import cases_for
from qlearn.grading.limits import Limits
from qlearn.grading.notebook import NotebookError, code_cells, exercise_of, read_notebook, tasks_for
from qlearn.grading.outcomes import grade_report
from qlearn.grading.results import CheckResult
from qlearn.grading.spec import GROUPS
from qlearn.grading.tasks import tasks
from qlearn.timing import Stopwatch

__all__ = ["NotebookGrade", "Interrupted", "grade_notebook"]


@dataclass
class NotebookGrade:
    """What grading one notebook found."""

    path: str  # relative to the submissions folder
    exercise: str | None
    results: dict[str, CheckResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # execution notes: errors, crashes, timeouts
    seconds: float = 0.0

    @property
    def points(self) -> int:
        return sum(r.points for r in self.results.values())


class Interrupted(Exception):
    """Raised inside a notebook's grading when the batch is being stopped (Ctrl-C)."""


def _child_env(workdir: Path) -> dict[str, str]:
    """The environment of an unsandboxed child (``--unsafe-no-sandbox``)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "IPYTHONDIR": str(workdir / ".ipython"),
        "MPLCONFIGDIR": str(workdir / ".mpl"),
        "HOME": str(workdir),
        "QLEARN_GRADING": "1",
    })
    return env


def _death(returncode: int | None, killed: str | None, limits: Limits, sandboxed: bool) -> str:
    if killed == "time":
        return f"was still running after {limits.time_limit:g} s and was stopped (an infinite loop?)"
    if killed == "alarm":
        return (
            f"kept running after its time limit (does it catch every exception, e.g. `except:`?) and was "
            f"stopped {limits.grace:g} s later"
        )
    if killed == "channel":
        return "wrote a line of more than 64 MiB on the grading channel and was stopped"
    signum = None
    if returncode is not None and returncode < 0:
        signum = -returncode
    elif sandboxed and returncode is not None and 128 < returncode < 128 + 65:  # bwrap reports 128 + signal
        signum = returncode - 128
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        extra = ": the CPU-time limit" if name == "SIGXCPU" else ""
        return f"crashed ({name}{extra}; the kernel would have died)"
    return f"exited with code {returncode} (os._exit?)"


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _first_line(src: str) -> str:
    for line in src.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()[:60]
    return src.strip()[:60]


def _start(path: Path, workdir: Path, log, limits: Limits, sandboxed: bool) -> subprocess.Popen:
    common = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    if sandboxed:
        return _sandbox.popen(path, limits.scratch_mb, **common)
    scratch = workdir / "scratch"
    if not scratch.exists():
        scratch.mkdir()
    shutil.copyfile(path, scratch / "submission.ipynb")  # the child works on a copy in its own folder
    return subprocess.Popen([sys.executable, "-s", "-m", "qlearn.grading.runner", "--stdin"], cwd=scratch,
                            env=_child_env(scratch), **common)


def _send(proc: subprocess.Popen, data: bytes) -> threading.Thread:
    def write() -> None:
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (OSError, ValueError):  # the child died before reading it all
            pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def grade_notebook(path: Path, rel: str, limits: Limits, profile: str = "grade", sandboxed: bool = True,
                   cancel: threading.Event | None = None) -> NotebookGrade:
    """Grade one notebook in sandboxed child processes; never raises for anything the submission does
    (``Interrupted`` when ``cancel`` is set). ``seconds`` on the result is the wall time it took."""
    clock = Stopwatch()
    with clock.stage("notebook"):
        grade = _grade_notebook(path, rel, limits, profile, sandboxed, cancel)
    grade.seconds = clock.seconds["notebook"]
    return grade


def _grade_notebook(path: Path, rel: str, limits: Limits, profile: str = "grade", sandboxed: bool = True,
                   cancel: threading.Event | None = None) -> NotebookGrade:
    if path.is_symlink():
        return NotebookGrade(rel, None, notes=[f"{path.name} is a symbolic link: not graded (it could point at any "
                                                "file of this machine; submit the notebook itself)"])
    try:
        nb = read_notebook(path)
        exercise = exercise_of(nb)
        cells = code_cells(nb)
    except NotebookError as exc:
        return NotebookGrade(rel, None, notes=[str(exc)])
    grade = NotebookGrade(rel, exercise)
    if exercise is None:
        grade.notes.append("no exercise recognised (no qlearn metadata and no task function defined)")
        return grade
    task_ids = tasks_for(exercise)
    registry = tasks()
    case_sets = {tid: cases_for(registry[tid], profile, limits.examples) for tid in task_ids}
    task_jobs = [{"id": tid, **{g: [wire.encode(c.args) for c in case_sets[tid][g]] for g in GROUPS}} for tid in task_ids]
    sources = dict(cells)
    cell_number = {index: n for n, (index, _) in enumerate(cells, start=1)}
    skip_cells: list[int] = []
    done: dict[str, CheckResult] = {}
    noted: set[tuple[int, str]] = set()
    garbage = 0
    workdir = Path(tempfile.mkdtemp(prefix="qlearn-grade-"))  # the grader's own: logs (never visible inside)
    try:
        for attempt in range(limits.max_restarts + 1):
            job = {
                "cells": cells, "tasks": task_jobs, "skip_cells": skip_cells, "skip_tasks": sorted(done),
                "cell_timeout": limits.cell_timeout, "task_timeout": limits.task_timeout,
                "memory_mb": limits.memory_mb, "file_mb": limits.file_mb, "nproc": limits.nproc,
                "cpu_s": int(math.ceil(limits.time_limit)) + 10,
            }
            log_path = workdir / f"output{attempt}.log"
            with open(log_path, "wb") as log:
                proc = _start(path, workdir, log, limits, sandboxed)
                writer = _send(proc, wire.dumps(job))
                stream = Stream(proc.stdout.fileno())
                try:
                    events, killed = watch(proc, stream, limits, set(task_ids), cancel)
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # bwrap, and with it the sandbox's every process
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
                    proc.stdout.close()
                    writer.join(timeout=5)
            garbage += stream.garbage
            if killed == "cancel":
                raise Interrupted(rel)
            running: tuple[str, Any] | None = None
            finished = False
            for ev in events:
                kind = ev["event"]
                if kind == "cell_start":
                    running = ("cell", ev["cell"])
                elif kind == "task_start":
                    running = ("task", ev["task"])
                elif kind == "cell_end":
                    running = None
                    if ev["status"] != "ok":
                        _note_cell(grade, noted, ev["cell"], cell_number, sources, ev["status"][:20],
                                   (ev["error"] or "")[:400])
                elif kind == "task_result":
                    tid = ev["task"]
                    running = None
                    if tid in done:
                        continue
                    # the verdict is computed here, from the outcomes alone
                    done[tid] = grade_report(registry[tid], decode_report(ev["report"]), case_sets[tid],
                                             profile=profile, examples=limits.examples,
                                             time_limit_s=limits.task_timeout)
                elif kind == "done":
                    finished = True
            if finished:
                break
            death = _death(proc.returncode, killed, limits, sandboxed)
            if running is None:  # died outside any cell or task: while starting up, most likely
                last = _last_line(log_path)
                started = any(ev["event"] == "ready" for ev in events)
                when = "between two steps" if started else "before running any cell"
                advice = "" if started else " (if every submission shows this, raise --memory-mb or --time-limit)"
                grade.notes.append(f"the grading process {death} {when}{f' ({last})' if last else ''}; "
                                   f"what was not reached scores 0{advice}")
                break
            if running[0] == "cell":
                index = running[1]
                skip_cells.append(index)
                _note_cell(grade, noted, index, cell_number, sources, "crash",
                           f"the process {death}; the cell was skipped and the notebook run again")
            else:
                tid = running[1]
                t = registry[tid]
                done[tid] = CheckResult(
                    tid, t.function, t.title, 0, t.max_points, "error", profile,
                    message=f"while {t.function} was being checked, the process {death}. "
                    "Look for an infinite loop, os._exit, sys.exit or a huge allocation in it.",
                )
        else:
            grade.notes.append(f"gave up after {limits.max_restarts + 1} runs; tasks not reached score 0")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if garbage:
        grade.notes.append(f"the notebook's process wrote {garbage} line(s) that are not grading events on the "
                           "grading channel; they were ignored")
    for tid in task_ids:
        if tid not in done:
            t = registry[tid]
            done[tid] = CheckResult(tid, t.function, t.title, 0, t.max_points, "error", profile,
                                    message="not checked: the notebook did not get that far (see the notes above)")
    grade.results = {tid: done[tid] for tid in task_ids}
    for tid, r in grade.results.items():  # timeouts and crashes of a task also go into the CSV's notes
        slow = [g.name for g in r.groups if g.note.startswith("TIMED OUT")]
        if slow:
            grade.notes.append(f"{tid} {r.function}: the {slow[0]} cases timed out ({limits.task_timeout:g} s)")
        elif r.status == "error" and r.message.startswith(f"while {r.function} was being checked"):
            grade.notes.append(f"{tid} {r.function}: {r.message.split('. Look for')[0]}")
    return grade


def _note_cell(grade: NotebookGrade, noted: set, index: int, numbers: dict[int, int], sources: dict[int, str],
               status: str, error: str) -> None:
    """One note per (cell, status): a re-run meets the same failing cells again."""
    if (index, status) in noted:
        return
    noted.add((index, status))
    what = {"error": "raised", "timeout": "timed out", "crash": "stopped the notebook"}.get(status, status)
    grade.notes.append(f"code cell {numbers.get(index, '?')} (`{_first_line(sources.get(index, ''))}`) {what}: {error}")
