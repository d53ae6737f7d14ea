"""Distributed: training images per second of the pipeline on 1 and 2 processes (torchrun + DDP, gloo).

The same quick pipeline (``python -m qlearn pipeline --quick --dataset folder``) on a generated image
folder, started by ``torchrun --standalone --nproc_per_node N ... --distributed`` for N = 1 and 2, one
torch thread per process; images/s of the float and QAT stages from each run's report
(``qlearn.pipeline.throughput``: training images of all processes over the stage's wall time) and
their ratio (2 processes / 1). Both runs use the same global batch, so they train the same function.

On a 2-core CPU the ratio is bounded by 2; the QAT stage all-reduces its batch statistics inside
every forward pass (``qlearn.distributed.StatSync``), many small messages, so it gains less than
float training, which all-reduces only the gradients once per step.

Standalone::

    python -m benchmarks.bench_distributed [--quick]      # prints run()'s dict as JSON
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def settings(quick: bool) -> dict[str, Any]:
    if quick:  # a smoke run: seconds per process count
        return {"per_class": 32, "val_per_class": 8, "epochs": 2, "qat_epochs": 1, "batch_size": 16}
    return {"per_class": 200, "val_per_class": 25, "epochs": 4, "qat_epochs": 1, "batch_size": 32}


def _run_pipeline(nproc: int, folder: Path, out: Path, s: dict[str, Any]) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "qlearn", "pipeline", "--quick", "--dataset", "folder", "--data-dir", str(folder),
           "--epochs", str(s["epochs"]), "--qat-epochs", str(s["qat_epochs"]), "--batch-size", str(s["batch_size"]),
           "--out", str(out), "--no-progress", "--distributed"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text())


def run(quick: bool = False) -> dict[str, Any]:
    """Images/s of the float and QAT stages with 1 and 2 processes, and the ratio; accuracies beside."""
    from benchmarks.common import machine
    from qlearn.folder_data import make_color_folder
    from qlearn.pipeline import throughput

    s = settings(quick)
    result: dict[str, Any] = {"machine": machine(), "settings": s, "processes": {}}
    with tempfile.TemporaryDirectory(prefix="qlearn-bench-ddp-") as work:
        folder = make_color_folder(Path(work) / "images", s["per_class"], s["val_per_class"], classes=4, noise=40.0)
        for nproc in (1, 2):
            report = _run_pipeline(nproc, folder, Path(work) / f"run{nproc}", s)
            result["processes"][nproc] = {
                "world_size": report["world_size"],
                "images_per_s": throughput(report),
                "seconds": report["seconds"],
                "float_acc": report["float_acc"],
                "qat8_acc": report["qat"]["8"],
                "integer_acc": report["integer"]["acc"],
                "n_train": report["n_train"],
                "identical_integer_model_on_all_ranks": report["distributed"]["identical_on_all_ranks"],
            }
    one, two = (result["processes"][n]["images_per_s"] for n in (1, 2))
    result["ratio_2_over_1"] = {k: round(two[k] / one[k], 2) if one.get(k) and two.get(k) else None for k in one}
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # `python benchmarks/bench_distributed.py` as well as `python -m ...`
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
