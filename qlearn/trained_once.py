"""A model trained once: the shipped copy, else the learner's cached one, else trained now and cached.

The lessons' models (the lesson MobileNet of notebooks 03-06, notebook 11's transformer) are found in
this order, each a checkpoint named ``<config.key>.pt``:

    1. shipped with qlearn (``qlearn.shipped``, sha256-checked) -- unless a folder or a retrain is asked for;
    2. cached by an earlier session (``<cache_dir()>/<key>.pt`` or ``<directory>/<key>.pt``);
    3. trained now, then cached (written beside and renamed; results computed from an older model with
       the same key, ``<key>.*.json``, are deleted with it). A read-only home keeps it in memory only.

Each model is built once per (config, folder) per Python process (``memo_model``).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from qlearn._checks import check_bool
from qlearn.checkpoints import cache_dir, save_checkpoint
from qlearn.files import atomic_path
from qlearn.shipped import shipped_file

__all__ = ["Found", "load_or_train", "memo_model"]

T = TypeVar("T")


class Found:
    """Where a model came from: ``path`` (None: in memory only) and whether it is the shipped copy."""

    __slots__ = ("model", "path", "shipped")

    def __init__(self, model: nn.Module, path: Path | None, shipped: bool) -> None:
        self.model, self.path, self.shipped = model, path, shipped


def load_or_train(key: str, directory: Path | None, retrain: bool, *, read: Callable[[Path, bool], nn.Module | None],
                  train: Callable[[], nn.Module], key_name: str) -> Found:
    """Steps 1-3 above. ``read(path, cached)`` loads a checkpoint (for a cached one: None if it is
    unreadable or holds another model); ``train()`` trains a new one; ``key_name`` labels the key in
    the checkpoint's extra data."""
    if directory is None and not retrain:
        shipped = shipped_file(f"{key}.pt")  # sha256-checked
        if shipped is not None:
            return Found(read(shipped, False), shipped, True)
    path: Path | None = (cache_dir() if directory is None else directory) / f"{key}.pt"
    model = read(path, True) if path.is_file() and not retrain else None
    if model is not None:
        return Found(model, path, False)
    model = train()
    try:  # write beside, then rename: a process reading the cache never sees half a file
        with atomic_path(path) as tmp:
            save_checkpoint(tmp, model, extra={key_name: key})
        for stale in path.parent.glob(f"{path.stem}.*.json"):  # results of the model this one replaces
            stale.unlink(missing_ok=True)
    except OSError:  # a read-only home: keep the model in memory, train again next session
        path = None
    return Found(model, path, False)


def memo_model(memo: dict, config: Any, config_type: type, directory: Any, progress: Any, retrain: Any,
               build: Callable[[Any, Path | None, bool, bool], T]) -> T:
    """``build(config, folder, progress, retrain)`` once per (config, folder) in this process.

    ``config`` None means ``config_type()``. The shipped model is the default; ``retrain=True`` with no
    folder replaces it for the rest of the process.
    """
    if config is None:
        config = config_type()
    if not isinstance(config, config_type):
        raise TypeError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    if directory is not None and not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a folder path or None, got {type(directory).__name__}")
    progress, retrain = check_bool(progress, "progress"), check_bool(retrain, "retrain")
    folder = None if directory is None else Path(directory)
    key = (config, "shipped" if folder is None and not retrain else str(folder or cache_dir()))
    if retrain or key not in memo:
        memo[key] = build(config, folder, progress, retrain)
        if retrain and folder is None:  # the default model in this process is now the retrained one
            memo[(config, "shipped")] = memo[key]
    return memo[key]
