"""A run's folder on disk: which files a run writes, where ``--out`` may go, and whether a folder is whole.

A run folder holds ``report.json``, ``report.md``, ``float.pt``, ``qat<bits>.pt`` and three figures
(``RUN_FILES``). ``check_out_dir`` refuses a place a run cannot be written to before any work starts;
``verify_run`` refuses a folder whose checkpoints are not the ones its report recorded (sha256).
``resume_dir_for`` is where ``--resume`` keeps its per-epoch training states.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qlearn._checks import check_bool
from qlearn.checkpoints import file_sha256

__all__ = ["RUN_FILES", "check_out_dir", "prepare_out_dir", "resume_dir_for", "run_checkpoints", "checkpoint_mismatch",
           "verify_run"]

#: The files a run writes; ``--overwrite`` replaces a folder only if it holds nothing else.
RUN_FILES = ("report.json", "report.md", "float.pt", "accuracy_vs_bits.png", "weight_ranges.png", "logits.png")


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith("qat") and name.endswith(".pt") and name[3:-3].isdigit())


def check_out_dir(out: Any, overwrite: bool, *, flag: str = "--out") -> Path:
    """Check that a run can be written to ``out``, without creating or changing anything.

    Refused (with the path and the reason): ``out`` is a file; a folder above it is a file; the nearest
    existing folder above it cannot be written (read-only file system or no permission); ``out``
    already holds files and ``overwrite`` is False; with ``overwrite``, ``out`` holds files a run
    does not write (it would delete them).
    """
    if not isinstance(out, (str, Path)) or not str(out):
        raise TypeError(f"{flag} must be a folder path, got {out!r}")
    overwrite = check_bool(overwrite, "overwrite")
    path = Path(out)
    if path.is_symlink() and path.is_dir():
        path = Path(os.path.realpath(path))  # replace the folder it points to, not the link
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(f"{flag} {path} exists and is a file, not a folder; choose another directory")
        entries = sorted(p.name for p in path.iterdir())
        if entries and not overwrite:
            raise FileExistsError(
                f"{flag} {path} already holds a previous run; choose another directory or pass --overwrite "
                "(which replaces that run once the new one is complete)"
            )
        foreign = [name for name in entries if not _is_run_file(name)]
        if foreign:
            raise FileExistsError(
                f"{flag} {path} holds files a pipeline run does not write ({', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}); --overwrite replaces only a previous run: choose another directory"
            )
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent  # the nearest existing folder above ``out``
    if not parent.is_dir():
        raise NotADirectoryError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot write in {parent} (read-only file system or no permission)")
    return path


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Check ``out`` (``check_out_dir``) and create it, for ``run_pipeline`` to write into in place.

    Nothing is deleted; the command line (``write_run``) writes beside ``out`` and renames instead.
    """
    path = check_out_dir(out, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_dir_for(out: str | Path) -> Path:
    """Where ``--resume`` keeps the per-epoch training states of a run into ``out``: ``.<name>.resume`` beside it."""
    final = Path(out)
    return final.absolute().parent / f".{final.name}.resume"


def run_checkpoints(report: dict) -> list[str]:
    """The checkpoint files a run with this report wrote: float.pt and qat<bits>.pt."""
    return ["float.pt", *(f"qat{int(b)}.pt" for b in report.get("qat", {}))]


def checkpoint_mismatch(file: Path, report_path: Path, detail: str) -> ValueError:
    """The error for a checkpoint that is not the one ``report_path`` was written with."""
    return ValueError(
        f"{file} does not belong to {report_path}: {detail} (a mixed or partly replaced run folder); "
        "run the pipeline again with --overwrite"
    )


def verify_run(path: Path, report: dict) -> None:
    """Raise unless every checkpoint the report names is in ``path`` and is the one it recorded (sha256).

    Reports written before the hashes were recorded have no ``checkpoints`` entry; for them only the
    presence of the files is checked here (``load_run`` also compares what each checkpoint stores).
    """
    recorded = report.get("checkpoints")
    if recorded is not None and not isinstance(recorded, dict):
        raise ValueError(f"{path / 'report.json'} is corrupt: its 'checkpoints' entry is not a dict of sha256 hashes")
    for name in run_checkpoints(report):
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the run in {path} is incomplete")
        if recorded is not None and recorded.get(name) != file_sha256(file):
            raise checkpoint_mismatch(file, path / "report.json", "its sha256 differs from the one the report recorded")
