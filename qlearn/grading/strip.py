"""Make the student version of an exercise notebook from its solution version.

Instructors edit only the solution notebooks (notebooks/exercises/solutions/); the student notebooks
(notebooks/exercises/) are generated from them, so the two never drift. The tag scheme (compatible
with nbgrader's markers):

* In a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (markers included)
  become one line, indented like the BEGIN marker:
      inside a function:   raise NotImplementedError("Task 1.2: replace this line with your code")
      at the top level:    # YOUR CODE HERE      (so the student notebook still runs top to bottom)
* A cell tagged ``solution`` is replaced as a whole: code by ``# YOUR CODE HERE``, markdown by
  ``YOUR ANSWER HERE``.
* A cell tagged ``instructor`` (notes for instructors) is removed.
* Outputs and execution counts are cleared; the notebook metadata records ``"version": "student"``.

Command line:
    python -m qlearn.grading.strip [SOLUTIONS_DIR] [--out STUDENT_DIR] [--check]
``--check`` writes nothing and exits with status 1 if a student notebook is missing or out of date.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["StripError", "strip_source", "strip_notebook", "student_text", "main"]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS_DIR = ROOT / "notebooks" / "exercises" / "solutions"
STUDENT_DIR = ROOT / "notebooks" / "exercises"
_DEF_RE = re.compile(r"^\s*def\s+(\w+)\s*\(", re.M)


class StripError(ValueError):
    """A solution notebook whose markers do not pair up (the message names the cell and line)."""


def strip_source(source: str, *, where: str = "cell", task: str | None = None) -> str:
    """Replace every BEGIN/END SOLUTION block of one code cell's source by its stub line."""
    out: list[str] = []
    inside = False
    indent = ""
    for lineno, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise StripError(f"{where}, line {lineno}: {BEGIN} inside another solution block")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            continue
        if marker == END:
            if not inside:
                raise StripError(f"{where}, line {lineno}: {END} without a {BEGIN}")
            inside = False
            if indent:
                label = f"Task {task}: replace" if task else "Replace"
                out.append(f'{indent}raise NotImplementedError("{label} this line with your code")')
            else:
                out.append("# YOUR CODE HERE")
            continue
        if not inside:
            out.append(line)
    if inside:
        raise StripError(f"{where}: {BEGIN} without an {END}")
    return "\n".join(out)


def _task_numbers(nb: Any) -> dict[str, str]:
    """function name -> task number ('1.2'), read from the check cells (check("task_1_2", fn))."""
    numbers: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for m in re.finditer(r"""check\(\s*["']task_(\d+)_(\d+)["']\s*,\s*(\w+)""", cell.source):
            numbers[m.group(3)] = f"{m.group(1)}.{m.group(2)}"
    return numbers


def strip_notebook(nb: Any) -> Any:
    """The student version of a solution notebook (a new notebook; ``nb`` is not modified)."""
    student = copy.deepcopy(nb)
    numbers = _task_numbers(nb)
    cells = []
    for i, cell in enumerate(student.cells):
        tags = set(cell.get("metadata", {}).get("tags", []))
        where = f"cell {i} ({cell.get('id', '?')})"
        if "instructor" in tags:
            continue
        if "solution" in tags:
            cell.source = "# YOUR CODE HERE" if cell.cell_type == "code" else "YOUR ANSWER HERE"
        elif cell.cell_type == "code":
            defs = _DEF_RE.findall(cell.source)
            task = next((numbers[d] for d in defs if d in numbers), None)
            cell.source = strip_source(cell.source, where=where, task=task)
        elif BEGIN in cell.source:
            raise StripError(f"{where}: solution markers belong in code cells; tag a markdown cell 'solution'")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cells.append(cell)
    student.cells = cells
    meta = dict(student.metadata.get("qlearn", {}))
    meta["version"] = "student"
    student.metadata["qlearn"] = meta
    student.metadata.pop("widgets", None)
    return student


def student_text(solution_path: Path) -> str:
    """The exact text of the student notebook for ``solution_path`` (what gets committed)."""
    nb = nbformat.read(str(solution_path), as_version=4)
    text = nbformat.writes(strip_notebook(nb))
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlearn.grading.strip",
        description="Generate student exercise notebooks from the solution notebooks.",
    )
    parser.add_argument("solutions", nargs="?", type=Path, default=SOLUTIONS_DIR,
                        help="a solution notebook or a folder of them (default: notebooks/exercises/solutions)")
    parser.add_argument("--out", type=Path, default=STUDENT_DIR, help="folder for the student notebooks")
    parser.add_argument("--check", action="store_true", help="only report student notebooks that are out of date")
    args = parser.parse_args(argv)
    src: Path = args.solutions
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    paths = [src] if src.is_file() else sorted(src.glob("*.ipynb"))
    if not paths:
        print(f"error: no .ipynb files in {src}", file=sys.stderr)
        return 2
    if args.out.resolve() == (src if src.is_dir() else src.parent).resolve():
        print("error: --out must differ from the solutions folder (it would overwrite the solutions)", file=sys.stderr)
        return 2
    stale = []
    for path in paths:
        try:
            text = student_text(path)
        except StripError as exc:
            print(f"error: {path.name}: {exc}", file=sys.stderr)
            return 1
        target = args.out / path.name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(target)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
    if args.check and stale:
        print("out of date (run python -m qlearn.grading.strip):\n  " + "\n  ".join(map(str, stale)), file=sys.stderr)
        return 1
    if not stale:
        print(f"{len(paths)} student notebook(s) up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
