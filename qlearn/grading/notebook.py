"""Reading submissions: which exercise a notebook is, which tasks it holds, and its code.

A submission is matched to tasks by the *names* of the functions it defines, never by cell position,
so reordered cells grade the same. The exercise a notebook belongs to is read from its metadata
(``metadata.qlearn.exercise``, written into every exercise notebook and kept by Jupyter when a learner
saves); when that is missing (cells pasted into a fresh notebook), from the task functions it defines.
"""
from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path
from typing import Any

from qlearn.grading.checks import deferred_checks
from qlearn.grading.tasks import tasks

__all__ = ["NotebookError", "read_notebook", "code_cells", "exercise_of", "tasks_for", "load_namespace"]


class NotebookError(ValueError):
    """A file that cannot be read as a Jupyter notebook (the message says why)."""


MAX_NOTEBOOK_BYTES = 50 * 2**20  # larger files are refused (the grader reads them into memory)


def read_notebook(path: Path | str) -> dict:
    """The notebook JSON as a dict, checked enough to be graded safely (nbformat validation is not
    required): a dict with a list of cells, each cell a dict whose ``source`` is text (a string or a
    list of strings). Anything else raises ``NotebookError`` saying what is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise NotebookError(f"{path.name} is {size / 2**20:.0f} MiB; notebooks over "
                                f"{MAX_NOTEBOOK_BYTES // 2**20} MiB are not graded (clear its outputs)")
        raw = path.read_bytes()
    except OSError as exc:
        raise NotebookError(f"cannot read {path.name}: {exc.strerror}") from None
    try:
        nb = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotebookError(f"{path.name} is not a Jupyter notebook (invalid JSON: {exc})") from None
    except RecursionError:
        raise NotebookError(f"{path.name} is not a Jupyter notebook (JSON nested too deeply)") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path.name} is not a Jupyter notebook (no list of cells)")
    if "metadata" in nb and not isinstance(nb["metadata"], dict):
        raise NotebookError(f"{path.name} is not a Jupyter notebook (its metadata is a "
                            f"{type(nb['metadata']).__name__}, not an object)")
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            raise NotebookError(f"{path.name} is not a Jupyter notebook (cell {i} is a {type(cell).__name__})")
        src = cell.get("source", "")
        if not (isinstance(src, str) or (isinstance(src, list) and all(isinstance(s, str) for s in src))):
            raise NotebookError(f"{path.name} is not a Jupyter notebook (the source of cell {i} is not text)")
    return nb


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """(index among all cells, source) of every code cell, in notebook order."""
    return [(i, _source(c)) for i, c in enumerate(nb["cells"]) if isinstance(c, dict) and c.get("cell_type") == "code"]


def _defined_names(nb: dict) -> set[str]:
    names: set[str] = set()
    for _, src in code_cells(nb):
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # broken, null bytes, nested too deeply
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def exercise_of(nb: dict) -> str | None:
    """'ex3' from the metadata, else the exercise whose task functions the notebook defines most of."""
    meta = nb.get("metadata", {})
    meta = meta.get("qlearn", {}) if isinstance(meta, dict) else {}
    ex = meta.get("exercise") if isinstance(meta, dict) else None
    known = {t.exercise for t in tasks().values()}
    if isinstance(ex, str) and ex in known:
        return ex
    defined = _defined_names(nb)
    counts: dict[str, int] = {}
    for t in tasks().values():
        if t.function in defined:
            counts[t.exercise] = counts.get(t.exercise, 0) + 1
    if not counts:
        return None
    return max(sorted(counts), key=lambda e: counts[e])


def tasks_for(exercise: str | None) -> list[str]:
    return [tid for tid, t in tasks().items() if t.exercise == exercise]


def load_namespace(path: Path | str) -> dict[str, Any]:
    """Run a notebook's code cells (or a .py file) in this process; return its global namespace.

    For pytest and for a learner's own shell, not for grading (the grader isolates every submission
    in its own process). A cell that raises is skipped, as when a learner runs the cells one by one;
    the notebook's own check() calls are deferred (they would repeat the tests' work).
    """
    path = Path(path)
    if path.suffix == ".py":
        with deferred_checks():
            return runpy.run_path(str(path), run_name="__submission__")
    nb = read_notebook(path)
    namespace: dict[str, Any] = {"__name__": "__submission__"}
    with deferred_checks():
        for index, src in code_cells(nb):
            try:
                exec(compile(src, f"{path.name}, cell {index}", "exec"), namespace)
            except Exception:  # the learner's error: this cell's definitions are simply missing
                continue
    return namespace
