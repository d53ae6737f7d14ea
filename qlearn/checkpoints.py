"""Safe checkpoints: a model's weights and plain data on disk, and the files around them.

A checkpoint is written with ``torch.save`` and read with ``torch.load(weights_only=True)``, which
only rebuilds tensors and plain containers (a checkpoint cannot run code when loaded). It stores the
model's ``config`` so that ``load_checkpoint`` can rebuild the architecture
(``qlearn.models.build_model``), and loading into a different architecture is an error that says
which tensors do not fit. Beside them: ``file_sha256`` (the fingerprint of a checkpoint or a shipped
model) and ``cache_dir`` (the one folder where the suite caches what it trains).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qlearn.models import build_model

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "file_sha256", "cache_dir"]

CHECKPOINT_FORMAT = "qlearn-checkpoint-v1"


def _check_plain(value: Any, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` rebuilds: numbers, str, None, lists, dicts, tensors."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return  # exact types: numpy's float64 subclasses float but is pickled as a numpy object
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; a checkpoint holds only numbers, strings, None, lists, "
        "dicts and tensors (convert numpy values with float() / int() / .tolist())"
    )


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (checkpoints, shipped models), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """The suite's one cache folder (lesson models, quick pipeline runs): $QLEARN_CACHE_DIR, else
    $XDG_CACHE_HOME/qlearn, else ~/.cache/qlearn. Deleting it is always safe: everything is rebuilt."""
    env = os.environ.get("QLEARN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qlearn"


def save_checkpoint(path: str | Path, model: nn.Module, *, extra: dict | None = None) -> Path:
    """Write ``model``'s weights, its ``config`` (if it has one) and ``extra`` plain data to ``path``.

    ``extra`` may hold only numbers, strings, None, lists, dicts and tensors (what weights_only
    loading accepts), e.g. {'float_acc': 0.98, 'seed': 0}; anything else is a TypeError now rather
    than an unloadable file later. ``extra['kind'] = 'qat'`` marks a QAT model (it cannot be rebuilt
    from the float config alone).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of plain data, got {type(extra).__name__}")
    _check_plain(extra or {}, "extra")
    config = dict(getattr(model, "config", {}) or {})
    _check_plain(config, "model.config")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    torch.save(payload, path)
    return path


def _read_payload(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        # torch names the refused class or function: "Unsupported global: GLOBAL os.system was not an
        # allowed global" (older) or "unsupported GLOBAL posix.system whose module posix is blocked".
        found = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", message, flags=re.IGNORECASE)
        if found:  # a pickled class or function: refused, never run
            raise ValueError(
                f"checkpoint {path} holds objects other than tensors and plain data (it asks for "
                f"{found.group(1)}), which weights_only loading refuses; it was not loaded and nothing in it "
                "was run. Use only checkpoints written by qlearn.checkpoints.save_checkpoint"
            ) from None
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint (unreadable pickle)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a qlearn checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "write checkpoints with qlearn.checkpoints.save_checkpoint"
        )
    for key, kind in (("config", dict), ("state_dict", dict), ("extra", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"checkpoint {path} is corrupt: its {key!r} entry is missing or not a {kind.__name__}")
    return payload


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint written by ``save_checkpoint``; returns (model in eval mode, extra).

    Without ``model`` the architecture is rebuilt from the stored config (qlearn.models.build_model).
    With ``model`` its config (if any) must match the stored one, and every tensor must fit: missing,
    unexpected or wrongly shaped entries raise ValueError naming them.
    """
    path = Path(path)
    payload = _read_payload(path)
    config, state = payload["config"], payload["state_dict"]
    if model is None:
        if not config:
            raise ValueError(f"checkpoint {path} stores no model config; pass the model to load into")
        if payload["extra"].get("kind") == "qat":
            raise ValueError(
                f"checkpoint {path} holds a QAT model: build it first with qlearn.qat.prepare_qat(float_model, "
                "QATConfig(...)) using the settings it was trained with, and pass it as `model`"
            )
        model = build_model(config)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module or None, got {type(model).__name__}")
    else:
        mine = dict(getattr(model, "config", {}) or {})
        if mine and config and mine != config:
            diff = {k: (config.get(k), mine.get(k)) for k in set(mine) | set(config) if mine.get(k) != config.get(k)}
            raise ValueError(f"checkpoint {path} was saved from a different model: (saved, given) = {diff}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(
                "wrong shapes "
                + ", ".join(f"{k}: saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
            )
        raise ValueError(f"checkpoint {path} does not fit this model: " + "; ".join(parts))
    model.load_state_dict(state)
    model.eval()
    return model, dict(payload["extra"])
