"""A class folder: find the submissions, name them uniquely, grade every notebook, a few at a time.

SUBMISSIONS_DIR holds one entry per submission: a notebook (``alice.ipynb``), or a folder of notebooks
(``alice/ex1_quantize_dequantize.ipynb``, ...). Names are made fit for a file name and a CSV cell and
unique (ignoring case); notebooks are graded in a thread pool (``jobs`` at once), and Ctrl-C stops the
running sandboxes and keeps what finished.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from qlearn.grading.limits import Limits
from qlearn.grading.notebook_grader import Interrupted, NotebookGrade, grade_notebook

__all__ = ["SubmissionGrade", "find_submissions", "grade_submissions"]


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
    for name, paths in subs:
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
