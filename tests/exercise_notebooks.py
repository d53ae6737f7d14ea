"""Edit the exercise 1 solution notebook into test submissions (shared by the grading test files)."""
from pathlib import Path

import nbformat

SOL_EX1 = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "solutions" / "ex1_quantize_dequantize.ipynb"


def base():
    """A fresh copy of the exercise 1 solution notebook (full marks)."""
    return nbformat.read(str(SOL_EX1), as_version=4)


def cell_defining(nb, name):
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and f"def {name}(" in c.source)


def replace_body(nb, name, body):
    """Replace the solution part of ``name``'s body with ``body`` (indented one level)."""
    i = cell_defining(nb, name)
    src = nb.cells[i].source
    nb.cells[i].source = src[: src.index("    ### BEGIN SOLUTION")] + "\n".join("    " + l for l in body.splitlines())
    return nb


def insert_after(nb, name, code):
    """A new code cell right after the one that defines ``name``."""
    nb.cells.insert(cell_defining(nb, name) + 1, nbformat.v4.new_code_cell(code))
    return nb
