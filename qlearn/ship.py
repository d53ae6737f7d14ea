"""``python -m qlearn ship-models``: make the files shipped in ``qlearn/shipped`` from fixed seeds.

The lessons read trained models and their results from files made once, on one machine, and
shipped with qlearn (why, and how they are found and checked: ``qlearn.shipped``). This command
makes them, each on one thread from a fixed seed:

    the lesson model of notebooks 03-06 and the results its explorers read (accuracy sweeps, a
        recorded training run, PTQ against QAT), computed by ``qlearn.lessons``;
    notebook 10's sweeps on that lesson model (``--only formats`` computes just these, on the shipped
        lesson model);
    notebook 11's transformer and its sweeps (``--only transformer`` remakes just these);
    the quick pipeline run notebook 09 reads (``qlearn.pipeline.runs.cached_quick_run``).

Everything is made in a scratch folder and written with its sha256 manifest (``shipped.MANIFEST``):
``build`` swaps a complete new folder in; ``build_part`` replaces one part's files and their manifest
entries, keeping every other file's bytes. Building retrains everything (minutes).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy
import torch

from qlearn.checkpoints import file_sha256
from qlearn.files import atomic_path, atomic_write_text
from qlearn.lessons.formats_granularity import granularity_sweep, layer_sensitivity, mixed_precision_curves
from qlearn.lessons.lesson_model import LessonModel, lesson_model
from qlearn.lessons.outliers_ranges import range_rule_curves
from qlearn.lessons.per_channel import weight_bits_curves
from qlearn.lessons.qat import activation_ranges_during_training, ptq_vs_qat
from qlearn.lessons.transformer import granularity_results, smoothquant_results, weight_only_results
from qlearn.pipeline.runs import cached_quick_run
from qlearn.shipped import FORMAT, MANIFEST, SHIPPED_DIR, forget_verified, manifest
from qlearn.transformer import transformer_model

__all__ = ["build", "build_part", "build_transformer", "PARTS", "main"]

TRANSFORMER_PREFIX = "transformer-"  # the shipped files of notebook 11's transformer start with this
SHIPPED_RUN_FILES = ("report.json", "report.md", "float.pt", "qat4.pt", "qat8.pt")


def _lesson_results(directory: Path, progress: bool) -> list[Path]:
    """Train the lesson model into ``directory`` and fill its results the way notebooks 03-06 read them.

    Each call stores its result beside the checkpoint under the name the notebook's explorer reads
    (``cached_results``); the explorers call these same functions with these same arguments.
    """
    lesson = lesson_model(directory=directory, progress=progress, retrain=True)
    weight_bits_curves(lesson)  # notebook 03's accuracy sweep
    range_rule_curves(lesson, progress=progress)  # notebook 04's
    activation_ranges_during_training(lesson, progress=progress)  # notebook 06's EMA explorer
    ptq_vs_qat(lesson, progress=progress)  # notebook 06's PTQ-vs-QAT explorer
    _formats_sweeps(lesson)
    return sorted(directory.glob(f"{lesson.path.stem}*"))


def _formats_sweeps(lesson: LessonModel) -> None:
    """Notebook 10's three sweeps on the lesson model, stored under the names its lesson reads."""
    granularity_sweep(lesson)
    layer_sensitivity(lesson)
    mixed_precision_curves(lesson)


def _formats_results(directory: Path, progress: bool) -> list[Path]:
    """Notebook 10's sweeps on the *shipped* lesson model (not retrained), written to the cache folder."""
    lesson = lesson_model(progress=progress)
    if not lesson.shipped:
        raise RuntimeError("--only formats needs the shipped lesson model; run the full ship-models instead")
    before = set(directory.glob("*.json"))
    _formats_sweeps(lesson)
    return sorted(set(directory.glob(f"{lesson.path.stem}.*.json")) - before)


def _quick_run(directory: Path, progress: bool) -> Path:
    report = cached_quick_run("mobilenet_v2", 0, directory=directory / "pipeline", progress=progress, rerun=True)
    return Path(report["directory"])


def _transformer_results(directory: Path, progress: bool) -> list[Path]:
    """Train notebook 11's transformer into ``directory`` and fill the results its prose quotes."""
    tm = transformer_model(directory=directory, progress=progress, retrain=True)  # one thread, fixed seed
    granularity_results(tm)
    weight_only_results(tm)
    smoothquant_results(tm)
    return sorted(directory.glob(f"{tm.path.stem}*"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    return {"cpu": _cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "threads": 1}


@contextlib.contextmanager
def _build_env(scratch: Path, *, from_shipped: bool = False) -> Iterator[None]:
    """Build into ``scratch`` (the cache folder, so the learner's own cache is neither read nor written),
    from nothing shipped (``QLEARN_SHIPPED_DIR`` points at nothing) unless ``from_shipped``; both
    variables restored after."""
    old = {k: os.environ.get(k) for k in ("QLEARN_SHIPPED_DIR", "QLEARN_CACHE_DIR")}
    try:
        if not from_shipped:
            os.environ["QLEARN_SHIPPED_DIR"] = str(scratch / "none")
        os.environ["QLEARN_CACHE_DIR"] = str(scratch)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: The parts ``--only`` can remake: name -> (which shipped files belong to it, how to make them,
#: whether they are made from the shipped files (True) or from nothing (False)).
PARTS = {
    "transformer": (lambda name: name.startswith(TRANSFORMER_PREFIX), lambda d, p: _transformer_results(d, p), False),
    "formats": (lambda name: name.startswith("lesson-") and any(
        f".{tag}-" in name for tag in ("granularity", "layer-sensitivity", "mixed-precision")),
        lambda d, p: _formats_results(d, p), True),
}


def build_part(part: str, out: str | Path | None = None, *, progress: bool = True) -> Path:
    """Remake only the files of ``part`` (a key of ``PARTS``) in ``out`` (default qlearn/shipped).

    Every other shipped file keeps its bytes and its manifest entry; the part's old files are
    replaced, each written beside and renamed, and the manifest is rewritten last (atomically), with
    the machine that made them under ``parts[part]``.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
    owns, make, from_shipped = PARTS[part]
    out = SHIPPED_DIR if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = manifest(out) or {"format": FORMAT, "made_by": "python -m qlearn ship-models", "machine": _machine(), "files": {}}
    scratch = Path(tempfile.mkdtemp(prefix=f".shipped-{part}-", dir=out.parent))
    try:
        with _build_env(scratch, from_shipped=from_shipped):
            made = make(scratch, progress)
            files = {k: v for k, v in data["files"].items() if not owns(k)}
            for f in made:
                with atomic_path(out / f.name) as tmp:
                    shutil.copy2(f, tmp)
                files[f.name] = {"sha256": file_sha256(out / f.name), "bytes": (out / f.name).stat().st_size}
            stale = [k for k in data["files"] if owns(k) and k not in files]
            data["files"] = dict(sorted(files.items()))
            data.setdefault("parts", {})[part] = {
                "made_by": f"python -m qlearn ship-models --only {part}", "machine": _machine()}
            atomic_write_text(out / MANIFEST, json.dumps(data, indent=1, sort_keys=True) + "\n")
            for k in stale:
                (out / k).unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    forget_verified()
    return out


def build_transformer(out: str | Path | None = None, *, progress: bool = True) -> Path:
    """``build_part("transformer", ...)``: remake notebook 11's transformer and its results."""
    return build_part("transformer", out, progress=progress)


def build(out: str | Path | None = None, *, progress: bool = True) -> Path:
    """Make every shipped file from fixed seeds on one thread, in a scratch folder, then swap it in.

    The old folder is replaced only once the new one is complete (an interrupted build changes nothing).
    """
    out = SHIPPED_DIR if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".shipped-build-", dir=out.parent))
    stage = Path(tempfile.mkdtemp(prefix=".shipped-new-", dir=out.parent))
    try:
        with _build_env(scratch):
            for f in _lesson_results(scratch, progress):  # the lesson model trains on one thread
                shutil.copy2(f, stage / f.name)
            for f in _transformer_results(scratch, progress):  # notebook 11's transformer, one thread
                shutil.copy2(f, stage / f.name)
            run = _quick_run(scratch, progress)  # the quick preset runs on one thread too
            (stage / "pipeline" / run.name).mkdir(parents=True)
            for f in SHIPPED_RUN_FILES:
                shutil.copy2(run / f, stage / "pipeline" / run.name / f)
            files = {
                p.relative_to(stage).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                for p in sorted(stage.rglob("*")) if p.is_file()
            }
            (stage / MANIFEST).write_text(json.dumps({
                "format": FORMAT,
                "made_by": "python -m qlearn ship-models",
                "machine": _machine(),
                "files": files,
            }, indent=1, sort_keys=True) + "\n")
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=".shipped-old-", dir=out.parent))
                os.rename(out, old / "shipped")
                os.rename(stage, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(stage, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
    forget_verified()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlearn ship-models",
        description="Train the lesson model and the quick pipeline run from fixed seeds (one thread) and "
                    "write them, with their sha256 manifest, to qlearn/shipped/ (a few minutes).",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: qlearn/shipped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--only", choices=sorted(PARTS), default=None,
                        help="remake only these files (the other shipped files keep their bytes and hashes)")
    args = parser.parse_args(argv)
    if args.only is not None:
        out = build_part(args.only, args.out, progress=not args.no_progress)
    else:
        out = build(args.out, progress=not args.no_progress)
    files = manifest(out)["files"]
    print(f"wrote {len(files)} files ({sum(e['bytes'] for e in files.values()) / 1024:.0f} KiB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
