"""Batch grading: ``python -m qlearn grade SUBMISSIONS_DIR --out grades.csv``.

SUBMISSIONS_DIR holds one entry per submission: a notebook (``alice.ipynb``), or a folder of notebooks
(``alice/ex1_quantize_dequantize.ipynb``, ``alice/ex3_per_channel.ipynb``, ...). Each notebook runs
in a bubblewrap sandbox of its own (``qlearn.grading.sandbox``: no network, no other process, no
file of this machine but the system, Python and qlearn read-only, a private scratch folder holding
only its copy of the notebook) under hard limits on memory, processes, file size and CPU time, and
a wall-clock limit (``--time-limit``) kept here. Without bubblewrap the grader stops and says how to
install it; ``--unsafe-no-sandbox`` grades without one, and says what that risks.

Scores are computed here, never in the sandbox: this process sends the sandbox the inputs of every
case, the sandbox sends back, as plain data (``qlearn.grading.wire``), what the learner's functions
returned or raised, and ``qlearn.grading.checks.grade_report`` compares that with the oracle and
awards the points. Nothing a submission writes or patches can raise its score.

When the sandboxed process dies or is killed (an infinite loop that ignores the per-cell alarm,
``os._exit``, a segfault), its last event says which cell or task was running: that one is skipped (and
scored 0 if it was a task) and the notebook runs again, up to ``--max-restarts`` times. So a submission
is graded as far as it goes, the feedback says what happened, and the batch carries on: a notebook that
cannot even be read becomes a row with 0 points and a note; Ctrl-C writes the grades finished so far.

Output: the CSV (one row per submission, one column per task with its points, then total, possible
and notes; names unique, fields a spreadsheet would evaluate escaped) and a feedback file per
submission (``<out stem>_feedback/<name>.txt`` unless ``--feedback`` says otherwise).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qlearn.grading import sandbox as _sandbox, wire
from qlearn.grading.checks import GROUPS, CheckResult, cases_for, grade_report, tasks
from qlearn.grading.notebook import NotebookError, code_cells, exercise_of, read_notebook, tasks_for

__all__ = ["Limits", "NotebookGrade", "SubmissionGrade", "grade_notebook", "grade_submissions", "grade_folder",
           "find_submissions", "csv_safe", "main"]


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


def check_number(value: Any, name: str, low: float, high: float, integer: bool) -> Any:
    """``value`` if it is a finite number in [low, high] (an int where ``integer``), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


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


@dataclass
class SubmissionGrade:
    name: str
    notebooks: list[NotebookGrade] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    complete: bool = True  # False: the batch was interrupted before all its notebooks were graded

    def scores(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for nb in self.notebooks:
            for tid, r in nb.results.items():
                out[tid] = max(out.get(tid, 0), r.points)  # a task submitted twice counts once, best
        return out


class Interrupted(Exception):
    """Raised inside a notebook's grading when the batch is being stopped (Ctrl-C)."""


# ------------------------------------------------------------------------------------ one notebook
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


_EVENT_KEYS = {"ready": (), "done": (), "alarm": (), "cell_start": ("cell",), "cell_end": ("cell", "status", "error"),
               "task_start": ("task",), "task_result": ("task", "report")}


def _valid_event(ev: Any, task_ids: set[str]) -> bool:
    """The shape of an event from the (untrusted) child; anything else is ignored."""
    if not isinstance(ev, dict) or ev.get("event") not in _EVENT_KEYS:
        return False
    kind = ev["event"]
    if any(k not in ev for k in _EVENT_KEYS[kind]):
        return False
    if "cell" in ev and (type(ev["cell"]) is not int):
        return False
    if kind == "cell_end" and not (isinstance(ev["status"], str) and (ev["error"] is None or isinstance(ev["error"], str))):
        return False
    if "task" in ev and ev["task"] not in task_ids:
        return False
    return True


class _Stream:
    """Reads the child's channel (its stdout pipe) without blocking: complete JSON lines, each parsed
    strictly; a line over ``wire.MAX_MESSAGE_BYTES`` marks the stream as broken."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.broken = False
        self.garbage = 0

    def read(self, timeout: float) -> list[Any]:
        if self.eof:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        out: list[Any] = []
        if not ready:
            return out
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.eof = True
        self.buf += chunk
        while b"\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            try:
                out.append(wire.loads(line))
            except wire.WireError:
                self.garbage += 1
        if len(self.buf) > wire.MAX_MESSAGE_BYTES:
            self.broken = True
            self.buf.clear()
        return out


def _in_sequence(ev: dict, running: tuple[str, Any] | None) -> bool:
    """Whether ``ev`` can come next from the runner, given the step that is ``running``: a cell or a
    task only starts when nothing runs, and only the running one can end. A learner's forged event out
    of turn is ignored (and one in turn can only say what a learner's own code could do anyway)."""
    kind = ev["event"]
    if kind in ("ready", "alarm"):
        return True
    if kind in ("cell_start", "task_start", "done"):
        return running is None
    if kind == "cell_end":
        return running == ("cell", ev["cell"])
    return running == ("task", ev["task"])  # task_result


def _watch(proc: subprocess.Popen, stream: _Stream, limits: Limits, task_ids: set[str],
           cancel: threading.Event | None) -> tuple[list[dict], str | None]:
    """Collect the child's events until it ends; kill it at the wall-clock limit, or ``limits.grace``
    seconds after a time limit fired inside it without the cell or task ending (code that swallows
    the timeout), or when its channel breaks, or when the batch is cancelled. Returns the valid events,
    in sequence, and why it was killed (None: it ended by itself)."""
    start = time.monotonic()
    alarm_at: float | None = None
    events: list[dict] = []
    running: tuple[str, Any] | None = None
    while True:
        for ev in stream.read(0.1):
            if not _valid_event(ev, task_ids) or not _in_sequence(ev, running):
                stream.garbage += 1
                continue
            kind = ev["event"]
            if kind in ("cell_start", "task_start"):
                running = (kind[:4], ev["cell" if kind == "cell_start" else "task"])
            elif kind in ("cell_end", "task_result"):
                running = None
            events.append(ev)
            alarm_at = (alarm_at or time.monotonic()) if kind == "alarm" else None  # progress resets
            if kind == "done":
                return events, None
        if stream.eof and proc.poll() is not None:
            return events, None
        now = time.monotonic()
        if cancel is not None and cancel.is_set():
            return events, "cancel"
        if stream.broken:
            return events, "channel"
        if now - start > limits.time_limit:
            return events, "time"
        if alarm_at is not None and now - alarm_at > limits.grace:
            return events, "alarm"


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


def _decode_report(report: Any) -> Any:
    """A task_result's report, decoded from plain data; a malformed piece becomes a missing answer."""
    if not isinstance(report, dict):
        return None
    if "error" in report:
        return {"error": str(report["error"])[:2000], "status": report.get("status")}
    groups = report.get("groups") if isinstance(report.get("groups"), dict) else {}
    out: dict[str, Any] = {}
    for name in GROUPS:
        g = groups.get(name)
        if g == "timeout":
            out[name] = "timeout"
        elif isinstance(g, list):
            decoded = []
            for item in g[: 100_000]:
                try:
                    decoded.append(wire.decode_outcome(item))
                except (wire.WireError, RecursionError, ValueError, TypeError):
                    decoded.append(None)  # judged as "no answer for this case"
            out[name] = decoded
    return {"first": report.get("first"), "groups": out}


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
    (``Interrupted`` when ``cancel`` is set)."""
    t0 = time.perf_counter()
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
                stream = _Stream(proc.stdout.fileno())
                try:
                    events, killed = _watch(proc, stream, limits, set(task_ids), cancel)
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
                    done[tid] = grade_report(registry[tid], _decode_report(ev["report"]), case_sets[tid],
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
    grade.seconds = time.perf_counter() - t0
    return grade


def _note_cell(grade: NotebookGrade, noted: set, index: int, numbers: dict[int, int], sources: dict[int, str],
               status: str, error: str) -> None:
    """One note per (cell, status): a re-run meets the same failing cells again."""
    if (index, status) in noted:
        return
    noted.add((index, status))
    what = {"error": "raised", "timeout": "timed out", "crash": "stopped the notebook"}.get(status, status)
    grade.notes.append(f"code cell {numbers.get(index, '?')} (`{_first_line(sources.get(index, ''))}`) {what}: {error}")


# ------------------------------------------------------------------------------------ a batch
_UNSAFE_CHARS = re.compile(r"[^\w.\-+=@ ()\[\],'&!~#%]")


def _safe_name(name: str) -> str:
    """A submission name fit for a feedback file name and a CSV cell (control characters and
    separators replaced by "_", at most 100 characters)."""
    out = _UNSAFE_CHARS.sub("_", name)[:100].strip()
    return out if out and out not in (".", "..") else "_"


def find_submissions(folder: Path) -> list[tuple[str, list[Path]]]:
    """(name, notebooks) per submission: each .ipynb file, and each folder holding notebooks. Names
    are unique (ignoring case, as some file systems do): a name that repeats gets "-2", "-3", ..."""
    out: list[tuple[str, list[Path]]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.suffix == ".ipynb" and (entry.is_symlink() or entry.is_file()):
            out.append((entry.stem, [entry]))  # a symbolic link is listed, and graded 0 with a note
        elif entry.is_dir() and not entry.is_symlink():
            nbs = []
            for dirpath, dirnames, filenames in os.walk(entry, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if d != ".ipynb_checkpoints")
                nbs += [Path(dirpath) / f for f in filenames if f.endswith(".ipynb")]
            if nbs:
                out.append((entry.name, sorted(nbs)))
    return out


def _unique_names(subs: list[tuple[str, list[Path]]], folder: Path) -> list[tuple[str, list[str]]]:
    """(unique safe name, notes) for each submission, in order."""
    taken: set[str] = set()
    by_base: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(subs):
        by_base.setdefault(_safe_name(name).casefold(), []).append(i)
    names: list[tuple[str, list[str]]] = []
    for i, (name, paths) in enumerate(subs):
        base = _safe_name(name)
        unique, k = base, 1
        while unique.casefold() in taken:
            k += 1
            unique = f"{base}-{k}"
        taken.add(unique.casefold())
        notes = []
        same = by_base[base.casefold()]
        if len(same) > 1:
            entries = ", ".join(_entry(subs[j][1], folder) for j in same)
            notes.append(f"{len(same)} submissions share the name {base!r} ({entries}); this one "
                         f"({_entry(paths, folder)}) is listed as {unique!r}")
        elif base != name:
            notes.append(f"the name {name!r} is listed as {base!r} (characters unfit for a file name replaced)")
        names.append((unique, notes))
    return names


def _entry(paths: list[Path], folder: Path) -> str:
    rel = paths[0].relative_to(folder)
    return str(rel) if len(rel.parts) == 1 else rel.parts[0] + "/"


def grade_submissions(folder: Path, limits: Limits, jobs: int = 1, progress: bool = True, sandboxed: bool = True,
                      cancel: threading.Event | None = None) -> list[SubmissionGrade]:
    """Grade every submission; on Ctrl-C (KeyboardInterrupt) stop the running sandboxes and return
    what finished, with ``complete=False`` on the submissions that did not."""
    subs = find_submissions(folder)
    names = _unique_names(subs, folder)
    grades = [SubmissionGrade(name, notes=list(notes)) for name, notes in names]
    work = [(si, path) for si, (_, paths) in enumerate(subs) for path in paths]
    pending = {si: len(paths) for si, (_, paths) in enumerate(subs)}
    cancel = cancel or threading.Event()

    def one(item: tuple[int, Path]) -> tuple[int, NotebookGrade]:
        si, path = item
        rel = str(path.relative_to(folder))
        try:
            return si, grade_notebook(path, rel, limits, sandboxed=sandboxed, cancel=cancel)
        except Interrupted:
            raise
        except Exception as exc:  # a bug of the grader itself: this notebook gets a note, the batch goes on
            return si, NotebookGrade(rel, None, notes=[f"could not be graded (an error in the grader, please "
                                                       f"report it): {type(exc).__name__}: {str(exc)[:200]}"])

    from tqdm.auto import tqdm

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    bar = tqdm(total=len(work), desc="grading", unit="notebook", disable=not progress, file=sys.stderr)
    futures = {pool.submit(one, item) for item in work}
    try:
        while futures:
            finished, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    si, nbgrade = fut.result()
                except Interrupted:
                    continue
                grades[si].notebooks.append(nbgrade)
                pending[si] -= 1
                bar.update(1)
    except KeyboardInterrupt:
        cancel.set()  # every running sandbox is killed within 0.1 s
        for fut in futures:
            fut.cancel()
    finally:
        pool.shutdown(wait=True)
        bar.close()
    for si, g in enumerate(grades):
        g.notebooks.sort(key=lambda n: n.path)
        g.complete = pending[si] == 0
    return grades


def _columns(grades: list[SubmissionGrade], only: list[str] | None) -> list[str]:
    if only:
        return only
    seen = {tid for g in grades for nb in g.notebooks for tid in nb.results}
    return [tid for tid in tasks() if tid in seen]


def csv_safe(value: Any) -> Any:
    """A CSV field a spreadsheet will show as text: a string starting with = + - @ tab or CR (a
    formula to Excel, LibreOffice and Google Sheets) gets a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_csv(grades: list[SubmissionGrade], columns: list[str], path: Path) -> None:
    registry = tasks()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["submission", *columns, "total", "possible", "notes"])
        for g in grades:
            scores = g.scores()
            attempted = {tid for nb in g.notebooks for tid in nb.results}
            row = [scores[c] if c in attempted else "" for c in columns]
            possible = sum(registry[c].max_points for c in columns if c in attempted)
            notes = [n for nb in g.notebooks for n in nb.notes] + g.notes
            w.writerow([csv_safe(g.name), *row, sum(scores.get(c, 0) for c in columns), possible,
                        csv_safe(" | ".join(notes))])


def feedback_text(g: SubmissionGrade) -> str:
    lines = [f"Feedback for {g.name}", "=" * (13 + len(g.name)), ""]
    if g.notes:
        lines += [f"Note: {n}" for n in g.notes] + [""]
    if not g.notebooks:
        lines.append("No notebook was found in this submission.")
    total = possible = 0
    for nb in g.notebooks:
        got, of = nb.points, sum(r.max_points for r in nb.results.values())
        total, possible = total + got, possible + of
        title = f"{nb.path}" + (f" (exercise {nb.exercise[2:]})" if nb.exercise else "")
        lines += [f"{title}: {got}/{of} points", "-" * 60]
        if nb.notes:
            lines.append("While running your notebook:")
            lines += [f"  * {n}" for n in nb.notes]
            lines.append("")
        for r in nb.results.values():
            lines.append(r.report())
            lines.append("")
    lines.append(f"Total: {total}/{possible} points")
    return "\n".join(lines) + "\n"


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def grade_folder(folder: Path, out: Path, feedback_dir: Path | None = None, limits: Limits | None = None,
                 jobs: int = 1, tasks_only: list[str] | None = None, progress: bool = True,
                 sandboxed: bool = True) -> list[SubmissionGrade]:
    """Grade every submission in ``folder``; write the CSV and the feedback files; return the grades.

    ``sandboxed=False`` runs submissions without bubblewrap (see ``--unsafe-no-sandbox``). After an
    interruption (Ctrl-C) the CSV and feedback hold the submissions finished so far; the returned list
    still has the others, with ``complete=False``."""
    limits = limits or Limits()
    check_number(jobs, "--jobs", 1, 256, True)
    fdir = feedback_dir or out.with_name(out.stem + "_feedback")
    if sandboxed:
        _sandbox.available()  # SandboxUnavailable: says how to install bubblewrap
        for visible in _sandbox.visible_sources():
            for what, p in (("the submissions folder", folder), ("the CSV", out), ("the feedback folder", fdir)):
                if _inside(p, visible):
                    raise ValueError(f"{what} {p} lies inside {visible}, which every sandbox can read; "
                                     "put it elsewhere")
    grades = grade_submissions(folder, limits, jobs=jobs, progress=progress, sandboxed=sandboxed)
    done = [g for g in grades if g.complete]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(done, _columns(done, tasks_only), out)
    fdir.mkdir(parents=True, exist_ok=True)
    for g in done:
        (fdir / f"{g.name}.txt").write_text(feedback_text(g), encoding="utf-8")
    return grades


UNSAFE_WARNING = (
    "WARNING: --unsafe-no-sandbox: every submission runs as you, with your files, your network and your "
    "processes within its reach; it can read the other submissions and the solutions, change them and "
    "the grader, and kill the grader. Scores are still computed by the grader, but use this only for "
    "code you trust (your own tests), never for a class."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlearn grade",
        description="Grade a folder of exercise submissions (each notebook in its own bubblewrap sandbox).",
    )
    parser.add_argument("submissions", type=Path, help="folder with one .ipynb (or one folder of them) per student")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write (default grades.csv)")
    parser.add_argument("--feedback", type=Path, default=None, help="folder for the feedback files (default <out>_feedback/)")
    d = Limits()
    parser.add_argument("--time-limit", type=float, default=d.time_limit, help=f"seconds per notebook run (default {d.time_limit:g})")
    parser.add_argument("--cell-timeout", type=float, default=d.cell_timeout, help=f"seconds per code cell (default {d.cell_timeout:g})")
    parser.add_argument("--task-timeout", type=float, default=d.task_timeout, help=f"seconds per group of a task's cases (default {d.task_timeout:g})")
    parser.add_argument("--memory-mb", type=int, default=d.memory_mb, help=f"memory limit per notebook in MiB (default {d.memory_mb})")
    parser.add_argument("--max-restarts", type=int, default=d.max_restarts, help=f"re-runs after a crash (default {d.max_restarts})")
    parser.add_argument("--examples", type=int, default=None, help="generated (hypothesis) cases per task (default 60)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="notebooks graded at once (default: up to 2)")
    parser.add_argument("--tasks", default=None, help="comma-separated task ids for the CSV columns (default: those found)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="grade without bubblewrap: submissions run with YOUR rights (files, network, processes); "
                             "only for code you trust")
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        print(f"error: {args.submissions} is not a folder", file=sys.stderr)
        return 2
    only = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if only:
        unknown = [t for t in only if t not in tasks()]
        if unknown:
            print(f"error: unknown task(s) {', '.join(unknown)}; known: {', '.join(tasks())}", file=sys.stderr)
            return 2
    try:
        check_number(args.jobs, "--jobs", 1, 256, True)
        limits = Limits(args.time_limit, args.cell_timeout, args.task_timeout, args.memory_mb, args.max_restarts,
                        examples=args.examples)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not find_submissions(args.submissions):
        print(f"error: no .ipynb submissions in {args.submissions}", file=sys.stderr)
        return 2
    if args.unsafe_no_sandbox:
        print(UNSAFE_WARNING, file=sys.stderr)
    else:
        try:
            _sandbox.available()
        except _sandbox.SandboxUnavailable as exc:
            print(f"error: {exc}.\nTo grade anyway, without a sandbox, pass --unsafe-no-sandbox: "
                  "every submission then runs with your rights (it can read and change your files, the other "
                  "submissions and the grades, and use the network).", file=sys.stderr)
            return 2
    try:
        grades = grade_folder(args.submissions, args.out, args.feedback, limits, args.jobs, only,
                              progress=not args.quiet, sandboxed=not args.unsafe_no_sandbox)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fdir = args.feedback or args.out.with_name(args.out.stem + "_feedback")
    missing = [g.name for g in grades if not g.complete]
    if missing:
        print(f"interrupted: wrote the {len(grades) - len(missing)} submission(s) graded so far to {args.out} "
              f"(feedback in {fdir}/); not graded: {', '.join(missing)}", file=sys.stderr)
        return 130
    print(f"graded {len(grades)} submission(s): {args.out} and feedback in {fdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
