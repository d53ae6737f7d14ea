"""Batch grading: ``python -m qlearn grade SUBMISSIONS_DIR --out grades.csv``.

SUBMISSIONS_DIR holds one entry per submission: a notebook (``alice.ipynb``), or a folder of notebooks
(``alice/ex1_quantize_dequantize.ipynb``, ``alice/ex3_per_channel.ipynb``, ...). Each notebook is
copied to a private temporary folder and run there by ``qlearn.grading.runner`` in a child process of
its own, with a wall-clock limit (``--time-limit``), a per-cell and per-task limit and a memory limit
(``--memory-mb``); nothing of the submission runs in the grader's process, and the submission file
itself is only ever read.

When the child dies or is killed (an infinite loop that ignores the per-cell alarm, ``os._exit``, a
segfault), its event file says which cell or task was running: that one is skipped (and scored 0 if it
was a task) and the notebook runs again, up to ``--max-restarts`` times. So a submission is graded as
far as it goes, the feedback says what happened, and the batch carries on.

Output: the CSV (one row per submission, one column per task with its points, then total, possible
and notes) and a feedback file per submission (``<out stem>_feedback/<name>.txt`` unless ``--feedback``
says otherwise).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlearn.grading.checks import CheckResult, tasks
from qlearn.grading.notebook import NotebookError, code_cells, exercise_of, read_notebook, tasks_for

__all__ = ["NotebookGrade", "SubmissionGrade", "grade_notebook", "grade_submissions", "main"]


@dataclass
class Limits:
    time_limit: float = 120.0  # seconds of wall clock per run of one notebook
    cell_timeout: float = 30.0  # seconds per code cell
    task_timeout: float = 30.0  # seconds per group of a task's cases
    memory_mb: int = 2048  # address-space limit of the child (torch alone maps ~0.8 GB)
    max_restarts: int = 3  # re-runs after a crash or kill
    grace: float = 3.0  # seconds a cell or task may run on after its own time limit fired
    examples: int | None = None  # generated cases per task (None: the "grade" profile's number)


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

    def scores(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for nb in self.notebooks:
            for tid, r in nb.results.items():
                out[tid] = max(out.get(tid, 0), r.points)  # a task submitted twice counts once, best
        return out


# ------------------------------------------------------------------------------------ one notebook
def _child_env(workdir: Path) -> dict[str, str]:
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


def _read_events(path: Path) -> list[dict]:
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the crash
                break
    return events


def _watch(proc: subprocess.Popen, events_path: Path, limits: Limits) -> str | None:
    """Wait for the child; kill it at the wall-clock limit, or ``limits.grace`` seconds after a time
    limit fired inside it without the cell or task ending (code that swallows the timeout).
    Returns None if it ended by itself, else why it was killed ("time" or "alarm")."""
    start = time.monotonic()
    alarm_at: float | None = None
    seen = 0
    while True:
        try:
            proc.wait(timeout=0.1)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - start > limits.time_limit:
            return "time"
        try:
            with open(events_path, "rb") as f:
                f.seek(seen)
                new = f.read()
        except FileNotFoundError:
            new = b""
        if b"\n" in new:
            complete = new[: new.rindex(b"\n") + 1]
            seen += len(complete)
            for line in complete.splitlines():
                alarm_at = (alarm_at or now) if b'"event": "alarm"' in line else None  # any progress resets
        if alarm_at is not None and now - alarm_at > limits.grace:
            return "alarm"


def _death(returncode: int | None, killed: str | None, limits: Limits) -> str:
    if killed == "time":
        return f"was still running after {limits.time_limit:g} s and was stopped (an infinite loop?)"
    if killed == "alarm":
        return (
            f"kept running after its time limit (does it catch every exception, e.g. `except:`?) and was "
            f"stopped {limits.grace:g} s later"
        )
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed ({name}; the kernel would have died)"
    return f"exited with code {returncode} (os._exit?)"


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _first_line(src: str) -> str:
    for line in src.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()[:60]
    return src.strip()[:60]


def grade_notebook(path: Path, rel: str, limits: Limits, profile: str = "grade") -> NotebookGrade:
    """Grade one notebook in child processes; never raises for anything the submission does."""
    t0 = time.perf_counter()
    try:
        nb = read_notebook(path)
    except NotebookError as exc:
        return NotebookGrade(rel, None, notes=[str(exc)])
    exercise = exercise_of(nb)
    grade = NotebookGrade(rel, exercise)
    if exercise is None:
        grade.notes.append("no exercise recognised (no qlearn metadata and no task function defined)")
        return grade
    task_ids = tasks_for(exercise)
    sources = dict(code_cells(nb))
    cell_number = {index: n for n, (index, _) in enumerate(code_cells(nb), start=1)}
    skip_cells: list[int] = []
    done: dict[str, CheckResult] = {}
    noted: set[tuple[int, str]] = set()
    workdir = Path(tempfile.mkdtemp(prefix="qlearn-grade-"))
    try:
        copy_path = workdir / "submission.ipynb"
        shutil.copyfile(path, copy_path)  # the child works on a copy in its own folder
        for attempt in range(limits.max_restarts + 1):
            events_path = workdir / f"events{attempt}.jsonl"
            job = {
                "notebook": str(copy_path), "events": str(events_path), "tasks": task_ids,
                "skip_cells": skip_cells, "skip_tasks": sorted(done), "profile": profile,
                "cell_timeout": limits.cell_timeout, "task_timeout": limits.task_timeout,
                "memory_mb": limits.memory_mb, "examples": limits.examples,
            }
            job_path = workdir / f"job{attempt}.json"
            job_path.write_text(json.dumps(job), encoding="utf-8")
            with open(workdir / f"output{attempt}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "qlearn.grading.runner", str(job_path)],
                    cwd=workdir, env=_child_env(workdir), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
                try:
                    killed = _watch(proc, events_path, limits)
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
            events = _read_events(events_path)
            running: tuple[str, Any] | None = None
            finished = False
            for ev in events:
                kind = ev.get("event")
                if kind == "cell_start":
                    running = ("cell", ev["cell"])
                elif kind == "task_start":
                    running = ("task", ev["task"])
                elif kind == "cell_end":
                    running = None
                    if ev["status"] != "ok":
                        _note_cell(grade, noted, ev["cell"], cell_number, sources, ev["status"], ev["error"])
                elif kind == "task_end":
                    running = None
                    done[ev["task"]] = CheckResult.from_dict(ev["result"])
                elif kind == "invalid":
                    grade.notes.append(ev["error"])
                elif kind == "done":
                    finished = True
            if finished:
                break
            death = _death(proc.returncode, killed, limits)
            if running is None:  # died outside any cell or task: while starting up, most likely
                last = _last_line(workdir / f"output{attempt}.log")
                when = "before running any cell" if not events else "between two steps"
                advice = " (if every submission shows this, raise --memory-mb or --time-limit)" if not events else ""
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
                t = tasks()[tid]
                done[tid] = CheckResult(
                    tid, t.function, t.title, 0, t.max_points, "error", profile,
                    message=f"while {t.function} was being checked, the process {death}. "
                    "Look for an infinite loop, os._exit, sys.exit or a huge allocation in it.",
                )
        else:
            grade.notes.append(f"gave up after {limits.max_restarts + 1} runs; tasks not reached score 0")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for tid in task_ids:
        if tid not in done:
            t = tasks()[tid]
            done[tid] = CheckResult(tid, t.function, t.title, 0, t.max_points, "error", profile,
                                    message="not checked: the notebook did not get that far (see the notes above)")
    grade.results = {tid: done[tid] for tid in task_ids}
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
def find_submissions(folder: Path) -> list[tuple[str, list[Path]]]:
    """(name, notebooks) per submission: each .ipynb file, and each folder holding notebooks."""
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            out.append((entry.stem, [entry]))
        elif entry.is_dir():
            nbs = sorted(p for p in entry.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if nbs:
                out.append((entry.name, nbs))
    return out


def grade_submissions(folder: Path, limits: Limits, jobs: int = 1, progress: bool = True) -> list[SubmissionGrade]:
    subs = find_submissions(folder)
    work = [(si, path) for si, (_, paths) in enumerate(subs) for path in paths]
    grades = [SubmissionGrade(name) for name, _ in subs]

    def one(item: tuple[int, Path]) -> tuple[int, NotebookGrade]:
        si, path = item
        return si, grade_notebook(path, str(path.relative_to(folder)), limits)

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        bar = tqdm(total=len(work), desc="grading", unit="notebook", disable=not progress, file=sys.stderr)
        for si, nbgrade in pool.map(one, work):
            grades[si].notebooks.append(nbgrade)
            bar.update(1)
        bar.close()
    for g in grades:
        g.notebooks.sort(key=lambda n: n.path)
    return grades


def _columns(grades: list[SubmissionGrade], only: list[str] | None) -> list[str]:
    if only:
        return only
    seen = {tid for g in grades for nb in g.notebooks for tid in nb.results}
    return [tid for tid in tasks() if tid in seen]


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
            w.writerow([g.name, *row, sum(scores.get(c, 0) for c in columns), possible, " | ".join(notes)])


def feedback_text(g: SubmissionGrade) -> str:
    lines = [f"Feedback for {g.name}", "=" * (13 + len(g.name)), ""]
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


def grade_folder(folder: Path, out: Path, feedback_dir: Path | None = None, limits: Limits | None = None,
                 jobs: int = 1, tasks_only: list[str] | None = None, progress: bool = True) -> list[SubmissionGrade]:
    """Grade every submission in ``folder``; write the CSV and the feedback files; return the grades."""
    limits = limits or Limits()
    grades = grade_submissions(folder, limits, jobs=jobs, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(grades, _columns(grades, tasks_only), out)
    fdir = feedback_dir or out.with_name(out.stem + "_feedback")
    fdir.mkdir(parents=True, exist_ok=True)
    for g in grades:
        (fdir / f"{g.name}.txt").write_text(feedback_text(g), encoding="utf-8")
    return grades


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlearn grade",
        description="Grade a folder of exercise submissions (each notebook in its own process).",
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
    for name, value, low in (("--time-limit", args.time_limit, 1), ("--cell-timeout", args.cell_timeout, 0.1),
                             ("--task-timeout", args.task_timeout, 0.1), ("--memory-mb", args.memory_mb, 512),
                             ("--jobs", args.jobs, 1), ("--max-restarts", args.max_restarts, 0),
                             ("--examples", args.examples if args.examples is not None else 1, 1)):
        if value < low:
            print(f"error: {name} must be at least {low}, got {value}", file=sys.stderr)
            return 2
    limits = Limits(args.time_limit, args.cell_timeout, args.task_timeout, args.memory_mb, args.max_restarts,
                    examples=args.examples)
    if not find_submissions(args.submissions):
        print(f"error: no .ipynb submissions in {args.submissions}", file=sys.stderr)
        return 2
    grades = grade_folder(args.submissions, args.out, args.feedback, limits, args.jobs, only, progress=not args.quiet)
    fdir = args.feedback or args.out.with_name(args.out.stem + "_feedback")
    print(f"graded {len(grades)} submission(s): {args.out} and feedback in {fdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
