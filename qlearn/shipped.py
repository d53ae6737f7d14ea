"""The trained models the lessons read, shipped inside the package: where they are, and their sha256 check.

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
then loaded with ``weights_only=True`` (``qlearn.checkpoints.load_checkpoint``). A learner can still
train on their own CPU (``lesson_model(retrain=True)``, notebook 09's ``RERUN``); the results go to
the cache folder (``qlearn.checkpoints.cache_dir``), never into the package.

``python -m qlearn ship-models`` (``qlearn.ship``) rebuilds everything on one thread and rewrites
the manifest; this module only finds and verifies what it made.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from qlearn.checkpoints import file_sha256

__all__ = ["SHIPPED_DIR", "ShippedFileError", "shipped_dir", "shipped_file", "shipped_folder", "manifest",
           "forget_verified"]

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


def forget_verified() -> None:
    """Forget which files this process has checked, so the next read checks them again (after a rebuild)."""
    _VERIFIED.clear()
