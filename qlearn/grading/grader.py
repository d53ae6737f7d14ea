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
returned or raised, and ``qlearn.grading.outcomes.grade_report`` compares that with the oracle and
awards the points. Nothing a submission writes or patches can raise its score.

When the sandboxed process dies or is killed (an infinite loop that ignores the per-cell alarm,
``os._exit``, a segfault), its last event says which cell or task was running: that one is skipped (and
scored 0 if it was a task) and the notebook runs again, up to ``--max-restarts`` times. So a submission
is graded as far as it goes, the feedback says what happened, and the batch carries on: a notebook that
cannot even be read becomes a row with 0 points and a note; Ctrl-C writes the grades finished so far.

Output: the CSV (one row per submission, one column per task with its points, then total, possible
and notes; names unique, fields a spreadsheet would evaluate escaped) and a feedback file per
submission (``<out stem>_feedback/<name>.txt`` unless ``--feedback`` says otherwise).

This module is the command line and ``grade_folder``; the work is done by

    limits           Limits: the bounds on every notebook run
    batch            the class folder: find_submissions, unique names, grade_submissions (a thread pool)
    notebook_grader  one notebook: sandboxed runs, restarts past crashes, verdicts (grade_notebook)
    events           the child's channel, read strictly (shape and sequence of every event)
    report           the CSV and the feedback files (written atomically)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qlearn._checks import check_number
from qlearn.grading import sandbox as _sandbox
from qlearn.grading.batch import SubmissionGrade, find_submissions, grade_submissions
from qlearn.grading.limits import Limits
from qlearn.grading.report import columns, write_csv, write_feedback
from qlearn.grading.tasks import tasks

__all__ = ["grade_folder", "main", "UNSAFE_WARNING"]


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
    write_csv(done, columns(done, tasks_only), out)
    write_feedback(done, fdir)
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
    parser.add_argument("--task-timeout", type=float, default=d.task_timeout,
                        help=f"seconds per group of a task's cases (default {d.task_timeout:g})")
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
