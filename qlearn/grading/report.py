"""What the grader writes: the grades CSV and one feedback file per submission.

The CSV has one row per submission, one column per task with its points, then total, possible and
notes; fields a spreadsheet would evaluate as a formula are escaped (``csv_safe``). Every file is
written atomically (``qlearn.files``): a crash or Ctrl-C never leaves half a file behind.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from qlearn.files import atomic_path, atomic_write_text
from qlearn.grading.batch import SubmissionGrade
from qlearn.grading.tasks import tasks

__all__ = ["columns", "csv_safe", "write_csv", "feedback_text", "write_feedback"]


def columns(grades: list[SubmissionGrade], only: list[str] | None) -> list[str]:
    """The CSV's task columns: ``only``, else every task some notebook was graded on, in registry order."""
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
    """The grades as a CSV: one row per submission, one column per task, then total, possible and notes.
    Written atomically: an interrupted write leaves the previous file (or none), never half a table."""
    registry = tasks()
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
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
    """The feedback file of one submission: its notes, then every notebook's verdicts and points."""
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


def write_feedback(grades: list[SubmissionGrade], folder: Path) -> None:
    """One feedback file per submission, ``folder/<name>.txt``, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for g in grades:
        atomic_write_text(folder / f"{g.name}.txt", feedback_text(g))
