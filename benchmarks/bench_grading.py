"""Grading: wall time of a class-sized batch, sandboxed, with a dozen attacks among the submissions.

Three runs of ``qlearn.grading.grader.grade_folder`` on the same machine:

    hostile_sandboxed   32 submissions: 20 honest ones (solutions, untouched stubs, partly right work of
                        exercises 1 and 7) and 12 attacks (forged events, a patched checker, a snoop
                        that writes into the project and the other submissions, a grader killer, a
                        limit lifter with setsid children and a connection attempt, an infinite loop,
                        a memory hog, malformed and deeply nested notebooks), in bubblewrap
    honest_sandboxed    the 20 honest submissions alone, in bubblewrap
    honest_unsandboxed  the same 20 with ``sandboxed=False`` (what the sandbox costs; the attacks are
                        never run unsandboxed)

Each run also checks the grades: every honest submission gets the same score in all three runs, and
every wrong or forged answer scores 0. The hostile notebooks are built by tests/test_grading_hostile.py
(imported from there, so the benchmark attacks exactly what the tests attack).

    python -m benchmarks.bench_grading [--quick] [--jobs 2] [--examples 20]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _hostile_module() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import test_grading_hostile as h  # noqa: E402 - the attacks the tests use
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return h


def build(folder: Path, port: int, quick: bool = False) -> tuple[Path, Path, dict[str, int]]:
    """Write the honest and the hostile submissions; returns (honest dir, all dir, expected totals of
    the honest ones)."""
    import nbformat

    h = _hostile_module()
    honest, everything = folder / "honest", folder / "all"
    honest.mkdir(parents=True)
    sols = ROOT / "notebooks" / "exercises" / "solutions"
    stus = ROOT / "notebooks" / "exercises"
    expected: dict[str, int] = {}
    n = 4 if quick else 20
    for i in range(n):
        kind = i % 4
        name = f"h{i:02d}"
        if kind == 0:
            shutil.copyfile(sols / "ex1_quantize_dequantize.ipynb", honest / f"{name}.ipynb")
            expected[name] = 9
        elif kind == 1:
            shutil.copyfile(sols / "ex7_fixed_point.ipynb", honest / f"{name}.ipynb")
            expected[name] = 12
        elif kind == 2:
            shutil.copyfile(stus / "ex1_quantize_dequantize.ipynb", honest / f"{name}.ipynb")
            expected[name] = 0
        else:  # partly right: round half up instead of half to even
            nb = h.replace_body(h.base(), "quantize_tensor",
                                 "q = np.floor(x / scale + 0.5) + zero_point\nreturn np.clip(q, qmin, qmax).astype(np.int64)")
            nbformat.write(nb, str(honest / f"{name}.ipynb"))
            expected[name] = 8
    shutil.copytree(honest, everything)
    attacks = {
        "x_forger": h._forger(), "x_patcher": h._patcher(), "x_snoop": h._snoop(everything), "x_killer": h._killer(),
        "x_limits": h._limits(port), "x_exercise_list": h._exercise_list(), "x_deep_expression": h._deep_expression(),
        "x_loop": h.replace_body(h.base(), "quantize_tensor", "while True:\n    pass"),
        "x_memory": h.insert_after(h.base(), "scale_and_zero_point", "big = bytearray(3 * 2**30)"),
    }
    if quick:
        attacks = {k: attacks[k] for k in ("x_forger", "x_killer")}
    for name, nb in attacks.items():
        nbformat.write(nb, str(everything / f"{name}.ipynb"))
    if not quick:
        h._malformed(everything)  # 4 more
        (everything / "m_cells_null.ipynb").unlink()  # keep 32 submissions: 20 honest + 12 attacks
    return honest, everything, expected


def _grade(folder: Path, out: Path, sandboxed: bool, jobs: int, examples: int) -> tuple[float, dict[str, dict]]:
    from qlearn.grading import grader

    limits = grader.Limits(time_limit=90, cell_timeout=10, task_timeout=10, memory_mb=2048, max_restarts=3, grace=2,
                           examples=examples)
    t0 = time.perf_counter()
    grader.grade_folder(folder, out, limits=limits, jobs=jobs, progress=False, sandboxed=sandboxed)
    seconds = time.perf_counter() - t0
    import csv

    with open(out, newline="", encoding="utf-8") as f:
        rows = {row["submission"]: row for row in csv.DictReader(f)}
    return seconds, rows


def run(quick: bool = False, jobs: int = 2, examples: int = 20) -> dict[str, Any]:
    h = _hostile_module()
    listener = h._Listener()
    results: dict[str, Any] = {"jobs": jobs, "examples": examples, "cpus": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
            honest, everything, expected = build(Path(tmp), listener.port, quick)
            runs = [("hostile_sandboxed", everything, True), ("honest_sandboxed", honest, True),
                    ("honest_unsandboxed", honest, False)]
            for label, folder, sandboxed in runs:
                n = len(list(folder.glob("*.ipynb")))
                seconds, rows = _grade(folder, Path(tmp) / f"{label}.csv", sandboxed, jobs, examples)
                wrong = {k: rows[k]["total"] for k, v in expected.items() if rows[k]["total"] != str(v)}
                forged = {k: rows[k]["task_1_2"] for k in ("x_forger", "x_patcher") if k in rows and rows[k]["task_1_2"] != "0"}
                results[label] = {"submissions": n, "seconds": round(seconds, 1),
                                  "seconds_per_submission": round(seconds / n, 2),
                                  "honest_scores_wrong": wrong, "forged_scores_nonzero": forged}
    finally:
        listener.close()
    results["connections_accepted"] = listener.accepted
    results["processes_left"] = h._token_processes()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_grading", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 honest submissions and 2 attacks")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--examples", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.jobs, args.examples), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
