"""The trained models the lessons read, shipped inside the package, and the command that makes them.

Seeded training is deterministic on one machine, but another CPU gives another model: its float
kernels add in another order (AVX2 vs AVX-512 vs AMX), the last bits of the first step differ, and
by the end of an epoch the weights do too. A lesson whose text discusses "the" model would then
discuss a different model on every learner's laptop. So the lessons start from files made once, by
one command, from fixed seeds, and shipped with qlearn:

    qlearn/shipped/
        MANIFEST.json                                     sha256 and size of every file below;
                                                          the command, machine and versions that made them
        lesson-mobilenet_v1-...-seed0.pt                  the lesson model (notebooks 03-06), weights only
        lesson-mobilenet_v1-...-seed0.<result>.json       what the lessons' explorers measure on it:
                                                          accuracy sweeps, short QAT runs (plain numbers)
        transformer-vit-...-seed0.pt, .<result>.json      notebook 11's transformer and its sweeps
                                                          (``--only transformer`` remakes just these)
        pipeline/quick-mobilenet_v2-seed0-<key>/          the quick pipeline run notebook 09 reads
            report.json, report.md, float.pt, qat4.pt, qat8.pt

Every file is checked against its sha256 before it is read (``shipped_file``); checkpoints are
then loaded with ``weights_only=True`` (``qlearn.train.load_checkpoint``). A learner can still
train on their own CPU (``lesson_model(retrain=True)``, notebook 09's ``RERUN``); the results go to
the cache folder (``qlearn.train.cache_dir``), never into the package.

``python -m qlearn ship-models`` rebuilds everything on one thread and rewrites the manifest.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from qlearn.train import file_sha256

__all__ = ["SHIPPED_DIR", "ShippedFileError", "shipped_dir", "shipped_file", "shipped_folder", "manifest", "build",
           "build_transformer", "main"]

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
MANIFEST = "MANIFEST.json"
FORMAT = 1


class ShippedFileError(ValueError):
    """A shipped file is missing or does not match the sha256 its manifest records."""


_VERIFIED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) -> checked, per process


def manifest(directory: str | Path | None = None) -> dict:
    """The manifest of the shipped files (``{}`` where nothing is shipped)."""
    path = (SHIPPED_DIR if directory is None else Path(directory)) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ShippedFileError(f"{path} is unreadable ({e}); reinstall qlearn or run `python -m qlearn ship-models`") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise ShippedFileError(f"{path} is not a qlearn manifest of format {FORMAT}")
    return data


def shipped_dir() -> Path:
    """``$QLEARN_SHIPPED_DIR`` (used while building and in tests), else the package's own folder."""
    env = os.environ.get("QLEARN_SHIPPED_DIR")
    return Path(env) if env else SHIPPED_DIR


def shipped_file(name: str) -> Path | None:
    """The verified path of the shipped file ``name`` (relative, '/'-separated), or None if not shipped.

    Raises ShippedFileError if the manifest lists it but the file is missing or its sha256 differs:
    a damaged install must not silently teach from other weights.
    """
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"name must be a relative path inside the shipped folder, got {name!r}")
    directory = shipped_dir()
    entry = manifest(directory).get("files", {}).get(name)
    if entry is None:
        return None
    path = directory / name
    try:
        st = path.stat()
    except OSError as e:
        raise ShippedFileError(f"shipped file {path} is missing; reinstall qlearn") from e
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        if st.st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256"):
            raise ShippedFileError(
                f"shipped file {path} does not match its sha256 in {MANIFEST}; reinstall qlearn "
                "(or, in a checkout, `git checkout qlearn/shipped`)"
            )
        _VERIFIED[key] = True
    return path


def shipped_folder(name: str) -> Path | None:
    """The verified folder ``name`` (every file the manifest lists under it checked), or None."""
    prefix = name.rstrip("/") + "/"
    files = [f for f in manifest(shipped_dir()).get("files", {}) if f.startswith(prefix)]
    if not files:
        return None
    for f in files:
        shipped_file(f)
    return shipped_dir() / name.rstrip("/")


# ---------------------------------------------------------------------------------- building
def _lesson_results(directory: Path, progress: bool) -> list[Path]:
    """Train the lesson model into ``directory`` and fill its results the way notebooks 03-06 read them."""
    from qlearn.lessons.lesson_model import lesson_model
    from qlearn.lessons.outliers_ranges import range_rule_curves
    from qlearn.lessons.per_channel import weight_bits_curves
    from qlearn.widgets.qat import activation_ranges_during_training, ema_explorer, ptq_vs_qat, ptq_vs_qat_explorer

    lesson = lesson_model(directory=directory, progress=progress, retrain=True)
    weight_bits_curves(lesson)  # notebook 03's accuracy sweep, stored under the name its explorer reads
    range_rule_curves(lesson, progress=progress)  # notebook 04's
    activation_ranges_during_training(lesson, progress=progress)
    ema_explorer(lesson)
    ptq_vs_qat(lesson, progress=progress)
    ptq_vs_qat_explorer(lesson)
    return sorted(directory.glob(f"{lesson.path.stem}*"))


def _quick_run(directory: Path, progress: bool) -> Path:
    from qlearn.pipeline.runs import cached_quick_run

    report = cached_quick_run("mobilenet_v2", 0, directory=directory / "pipeline", progress=progress, rerun=True)
    return Path(report["directory"])


def _transformer_results(directory: Path, progress: bool) -> list[Path]:
    """Train notebook 11's transformer into ``directory`` and fill the results its prose quotes."""
    from qlearn.lessons.transformer import granularity_results, smoothquant_results, weight_only_results
    from qlearn.transformer import transformer_model

    tm = transformer_model(directory=directory, progress=progress, retrain=True)  # one thread, fixed seed
    granularity_results(tm)
    weight_only_results(tm)
    smoothquant_results(tm)
    return sorted(directory.glob(f"{tm.path.stem}*"))


TRANSFORMER_PREFIX = "transformer-"  # the shipped files of notebook 11's transformer start with this


def _machine() -> dict:
    import numpy
    import torch

    return {"cpu": _cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "threads": 1}


def build_transformer(out: str | Path | None = None, *, progress: bool = True) -> Path:
    """Remake only the transformer's files in ``out`` (default qlearn/shipped) and their manifest entries.

    Every other shipped file keeps its bytes and its manifest entry; the transformer's old files are
    replaced, each written beside and renamed, and the manifest is rewritten last (atomically), with
    the machine that made them under ``parts["transformer"]``.
    """
    from qlearn.files import atomic_path, atomic_write_text

    out = SHIPPED_DIR if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = manifest(out) or {"format": FORMAT, "made_by": "python -m qlearn ship-models", "machine": _machine(), "files": {}}
    scratch = Path(tempfile.mkdtemp(prefix=".shipped-transformer-", dir=out.parent))
    old_env = {k: os.environ.get(k) for k in ("QLEARN_SHIPPED_DIR", "QLEARN_CACHE_DIR")}
    try:
        os.environ["QLEARN_SHIPPED_DIR"] = str(scratch / "none")
        os.environ["QLEARN_CACHE_DIR"] = str(scratch)
        made = _transformer_results(scratch, progress)
        files = {k: v for k, v in data["files"].items() if not k.startswith(TRANSFORMER_PREFIX)}
        for f in made:
            with atomic_path(out / f.name) as tmp:
                shutil.copy2(f, tmp)
            files[f.name] = {"sha256": file_sha256(out / f.name), "bytes": (out / f.name).stat().st_size}
        stale = [k for k in data["files"] if k.startswith(TRANSFORMER_PREFIX) and k not in files]
        data["files"] = dict(sorted(files.items()))
        data.setdefault("parts", {})["transformer"] = {
            "made_by": "python -m qlearn ship-models --only transformer", "machine": _machine()}
        atomic_write_text(out / MANIFEST, json.dumps(data, indent=1, sort_keys=True) + "\n")
        for k in stale:
            (out / k).unlink(missing_ok=True)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)
    _VERIFIED.clear()
    return out


SHIPPED_RUN_FILES = ("report.json", "report.md", "float.pt", "qat4.pt", "qat8.pt")


def build(out: str | Path | None = None, *, progress: bool = True) -> Path:
    """Make every shipped file from fixed seeds on one thread, in a scratch folder, then swap it in.

    The old folder is replaced only once the new one is complete (an interrupted build changes nothing).
    """
    out = SHIPPED_DIR if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".shipped-build-", dir=out.parent))
    stage = Path(tempfile.mkdtemp(prefix=".shipped-new-", dir=out.parent))
    old_env = {k: os.environ.get(k) for k in ("QLEARN_SHIPPED_DIR", "QLEARN_CACHE_DIR")}
    try:
        os.environ["QLEARN_SHIPPED_DIR"] = str(scratch / "none")  # build from nothing shipped
        os.environ["QLEARN_CACHE_DIR"] = str(scratch)
        for f in _lesson_results(scratch, progress):  # the lesson model trains on one thread
            shutil.copy2(f, stage / f.name)
        for f in _transformer_results(scratch, progress):  # notebook 11's transformer, one thread
            shutil.copy2(f, stage / f.name)
        run = _quick_run(scratch, progress)  # the quick preset runs on one thread too
        (stage / "pipeline" / run.name).mkdir(parents=True)
        for f in SHIPPED_RUN_FILES:
            shutil.copy2(run / f, stage / "pipeline" / run.name / f)
        import numpy
        import torch

        files = {
            p.relative_to(stage).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(stage.rglob("*")) if p.is_file()
        }
        (stage / MANIFEST).write_text(json.dumps({
            "format": FORMAT,
            "made_by": "python -m qlearn ship-models",
            "machine": {"cpu": _cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
                        "numpy": numpy.__version__, "threads": 1},
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
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
    _VERIFIED.clear()
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlearn ship-models",
        description="Train the lesson model and the quick pipeline run from fixed seeds (one thread) and "
                    "write them, with their sha256 manifest, to qlearn/shipped/ (a few minutes).",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: qlearn/shipped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--only", choices=("transformer",), default=None,
                        help="remake only these files (the other shipped files keep their bytes and hashes)")
    args = parser.parse_args(argv)
    if args.only == "transformer":
        out = build_transformer(args.out, progress=not args.no_progress)
    else:
        out = build(args.out, progress=not args.no_progress)
    files = manifest(out)["files"]
    print(f"wrote {len(files)} files ({sum(e['bytes'] for e in files.values()) / 1024:.0f} KiB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
