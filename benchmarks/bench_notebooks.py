"""Notebook suite: wall time to execute each lesson notebook (notebooks/NN_*.ipynb) top to bottom.

Each notebook runs in a fresh kernel with nbclient, as the test suite runs it (kernel start-up
included, outputs discarded, the committed file untouched); the slowest cells are recorded so a slow
notebook points at its cause. Each runs twice: *cold*, with an empty qlearn cache (``QLEARN_CACHE_DIR``
pointing at a new folder: a learner's first visit, trained models trained), then *warm* (the same
folder: a second visit, trained models loaded). Quick mode executes only the first lesson notebook, cold.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]


def lessons(root: Path = ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: Path, timeout: int = 900) -> dict[str, Any]:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    cell_times: list[tuple[float, int, str]] = []
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    error = None
    start = float("nan")
    try:
        with client.setup_kernel():
            start = time.perf_counter() - t0
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                c0 = time.perf_counter()
                client.execute_cell(cell, index)
                first_line = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
                cell_times.append((time.perf_counter() - c0, index, first_line))
    except Exception as exc:  # report the failure, keep benchmarking the rest
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    seconds = time.perf_counter() - t0
    slowest = sorted(cell_times, reverse=True)[:3]
    return {
        "notebook": path.name,
        "seconds": round(seconds, 2),
        "kernel_start_s": round(start, 2),
        "code_cells": len(cell_times),
        "slowest_cells": [{"cell": i, "seconds": round(s, 2), "starts": src} for s, i, src in slowest],
        "error": error,
    }


@contextlib.contextmanager
def _env(name: str, value: str):  # type: ignore[no-untyped-def]
    """Set an environment variable for the kernels started inside the block."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run(*, quick: bool) -> dict:
    os.environ.setdefault("MPLBACKEND", "Agg")
    paths = lessons()
    chosen = paths[:1] if quick else paths
    results = []
    with tempfile.TemporaryDirectory(prefix="qlearn-nb-cache-") as cache, _env("QLEARN_CACHE_DIR", cache):
        for p in tqdm(chosen, desc="notebooks", leave=False):
            row = run_notebook(p)
            if not quick:
                warm = run_notebook(p)
                row["warm_seconds"] = warm["seconds"]
                row["warm_error"] = warm["error"]
            results.append(row)
    out = {
        "executed": [r["notebook"] for r in results],
        "skipped": [p.name for p in paths if p not in chosen],
        "notebooks": results,
        "total_seconds": round(sum(r["seconds"] for r in results), 2),
    }
    if not quick:
        out["total_warm_seconds"] = round(sum(r["warm_seconds"] for r in results), 2)
    return out
