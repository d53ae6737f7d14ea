"""Deterministic float training, evaluation and safe checkpoints.

The float model is the starting point of everything in the paper: post-training quantization
calibrates it, quantization-aware training fine-tunes it (paper Sec. 3). This module trains any
``nn.Module`` that maps images to logits with mini-batch SGD-style optimisation, the same way every
time for the same seed: the seed fixes the initial weights (set it before building the model with
``seed_everything``), the order of the mini-batches, and nothing else is random.

Checkpoints are written with ``torch.save`` and read with ``torch.load(weights_only=True)``, which
only rebuilds tensors and plain containers (a checkpoint cannot run code when loaded). A checkpoint
stores the model's ``config`` so that ``load_checkpoint`` can rebuild the architecture, and loading
into a different architecture is an error that says which tensors do not fit.
"""
from __future__ import annotations

import math
import hashlib
import os
import numbers
import pickle
import random
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qlearn._checks import check_int, check_seed

__all__ = [
    "cache_dir",
    "TrainConfig",
    "TrainResult",
    "seed_everything",
    "train",
    "train_stream",
    "evaluate",
    "predict",
    "save_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "qlearn-checkpoint-v1"
SCHEDULES = ("onecycle", "cosine", "constant")
TRAIN_SEED_MAX = 2**40  # TrainConfig.seed: seed * 100003 + epoch stays far below torch's 2^64 limit


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of ``train``.

    epochs, batch_size : passes over the training set and images per step
    lr                 : peak learning rate (AdamW); ``schedule`` shapes it over the steps:
                         'onecycle' (warm up then anneal; float training from scratch; a run of
                         fewer than 5 steps has no room to warm up and keeps lr constant),
                         'cosine' (anneal from lr; fine-tuning, e.g. QAT), 'constant'
    weight_decay       : AdamW's decoupled weight decay
    seed               : fixes the mini-batch order (the model's initial weights are fixed by
                         calling ``seed_everything(seed)`` before building it)
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        # the epoch generator is seeded with seed * 100003 + epoch, which torch needs below 2^64
        check_seed(self.seed, "seed", maximum=TRAIN_SEED_MAX)
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
        if self.lr == 0:
            raise ValueError("lr must be positive")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass
class TrainResult:
    """What ``train`` did: per-epoch mean loss, training accuracy, test accuracy, and the time it took."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0  # train_stream: epochs restored from a saved state (0: trained from the start)

    @property
    def final_test_acc(self) -> float | None:
        return self.history[-1].get("test_acc") if self.history else None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (same seed -> same initial weights).

    ``seed`` is an integer in [0, 2^32 - 1], the range numpy's seeding accepts.
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_xy(x: Any, y: Any | None, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.ndim != 4:
        raise TypeError(f"{name} images must be a float tensor (N, C, H, W), got {type(x).__name__} {getattr(x, 'shape', '')}")
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
        raise TypeError(f"{name} labels must be an int64 tensor (N,), got {type(y).__name__} {getattr(y, 'dtype', '')}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, num_classes) of ``model`` in eval mode; the model's mode is restored afterwards."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    _check_xy(x, None, "x")
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (eval mode) on images ``x`` with labels ``y``."""
    _check_xy(x, y, "evaluation data")
    return float((predict(model, x, batch_size=batch_size).argmax(1) == y).double().mean())


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        if total < 5:  # too short for a warm-up phase (OneCycleLR divides by its length): constant lr
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any, epoch: int, step: int) -> None:
    """One optimiser and schedule step on ``loss``; a non-finite loss stops training with a clear error."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training diverged at epoch {epoch}, step {step} (loss {loss.item()}); lower lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def train(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with AdamW and cross-entropy; returns the per-epoch history.

    Each epoch visits the training images in an order drawn from a generator seeded with
    (config.seed, epoch), so the run does not depend on any global random state. With
    ``x_test``/``y_test`` the test accuracy is recorded after every epoch. ``on_step(step)`` is
    called after each optimiser step (QAT uses it to schedule BN freezing and quantizer delays).
    A tqdm progress bar shows the epochs unless ``progress=False``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    _check_xy(x_train, y_train, "training data")
    if (x_test is None) != (y_test is None):
        raise ValueError("pass both x_test and y_test, or neither")
    if x_test is not None:
        _check_xy(x_test, y_test, "test data")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = _scheduler(opt, config, config.epochs * steps_per_epoch)
    result = TrainResult()
    start = time.perf_counter()
    step = 0
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb, yb = x_train[idx], y_train[idx]  # (B, C, H, W) float32, (B,) int64
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            _step(loss, opt, sched, epoch, step)
            step += 1
            if on_step is not None:
                on_step(step)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        row = {"epoch": epoch + 1, "loss": loss_sum / n, "train_acc": correct / n}
        if x_test is not None:
            row["test_acc"] = evaluate(model, x_test, y_test)
        result.history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
    model.train(False)
    result.seconds = time.perf_counter() - start
    return result


TRAIN_STATE_FORMAT = "qlearn-train-state-v1"


def _save_state(path: Path, payload: dict) -> None:
    """torch.save into ``path`` atomically: a reader (or a resume after a crash) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, key: str) -> dict | None:
    """The training state in ``path`` (weights-only loading), or None if there is none; a state saved
    for other settings (``key`` differs) is refused with a ValueError."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or garbage file
        raise ValueError(f"resume state {path} is corrupt ({type(exc).__name__}: {exc}); delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(f"{path} is not a qlearn training state; delete it to start afresh")
    if state.get("key") != key:
        raise ValueError(f"resume state {path} was saved by a run with other settings; delete it or run without --resume")
    return state


def train_stream(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    world: Any = None,
    workers: int = 0,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
    amp: bool = False,
    state_path: str | Path | None = None,
    state_key: str = "",
    resume: bool = False,
) -> TrainResult:
    """``train`` for a ``Dataset`` read by a DataLoader (worker processes), on one process or several.

    dataset  : items (image (C, H, W) float32, int64 label); a ``FolderDataset`` streams from disk,
               a ``TensorDataset`` wraps in-memory tensors. ``set_epoch(e)`` is called on it (if it has
               one) before epoch e, for seeded augmentation.
    world    : ``qlearn.distributed.World`` (None: one process). With several processes the model is
               wrapped in DistributedDataParallel, each process reads its ``ShardSampler`` share,
               ``config.batch_size`` is the *global* batch (each process takes batch_size / size), the
               gradients are averaged, and the float buffers (BN running averages) are averaged after
               every epoch. With one process the batches are exactly ``train``'s.
    amp      : bfloat16 autocast on CUDA (float training only; CPU ignores it).
    state_path, state_key, resume : after every epoch the model, optimiser, scheduler and history are
               saved to ``state_path`` (by rank 0, atomically); with ``resume`` a state saved there with the
               same ``state_key`` is loaded and training continues after its last finished epoch.
               ``result.resumed_from`` is that epoch count (0: from the start).
    """
    from torch.utils.data import DataLoader

    from qlearn.distributed import SINGLE, ShardSampler, all_reduce_sum, average_buffers

    world = SINGLE if world is None else world
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    n = len(dataset)
    if n == 0:
        raise ValueError("training data is empty")
    if config.batch_size % world.size:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) must be a multiple of the "
                         f"number of processes {world.size}")
    local_batch = config.batch_size // world.size
    workers = check_int(workers, "workers", minimum=0, maximum=256)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    device = next(iter(params)).device
    sampler = ShardSampler(n, world, config.seed)
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)  # the same on every process: ShardSampler pads to equal shares
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = _scheduler(opt, config, config.epochs * steps_per_epoch)
    net: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # buffers are not broadcast from rank 0 at every forward: they are averaged (BN) or synced
        # inside the forward (QAT's StatSync), so every process keeps its own, identical, copy
        import inspect

        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})  # the name changed in newer PyTorch
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
    result = TrainResult()
    start_epoch, step = 0, 0
    path = Path(state_path) if state_path is not None else None
    if path is not None and resume:
        state = _load_state(path, state_key)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, step, result.history = int(state["epoch"]), int(state["step"]), list(state["history"])
            result.resumed_from = start_epoch
    autocast = amp and device.type == "cuda"
    start = time.perf_counter()
    bar = tqdm(range(start_epoch, config.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        net.train()
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in loader:  # (b, C, H, W) float32, (b,) int64; b = batch_size / processes
            xb, yb = xb.to(device, non_blocking=True), torch.as_tensor(yb, dtype=torch.int64).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                logits = net(xb)
                loss = F.cross_entropy(logits.float(), yb)
            _step(loss, opt, sched, epoch, step)  # DDP: gradients averaged over the processes in backward
            step += 1
            if on_step is not None:
                on_step(step)
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        average_buffers(model, world)  # BN running averages: the same on every process
        loss_sum, correct, seen = all_reduce_sum([loss_sum, float(correct), float(seen)], world, device)
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen}
        result.history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if path is not None and world.main:
            _save_state(path, {"format": TRAIN_STATE_FORMAT, "key": state_key, "epoch": epoch + 1, "step": step,
                               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "history": result.history})
    model.train(False)
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- checkpoints
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
                "was run. Use only checkpoints written by qlearn.train.save_checkpoint"
            ) from None
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint (unreadable pickle)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a qlearn checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "write checkpoints with qlearn.train.save_checkpoint"
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
    from qlearn.models import build_model

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
                "wrong shapes " + ", ".join(f"{k}: saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
            )
        raise ValueError(f"checkpoint {path} does not fit this model: " + "; ".join(parts))
    model.load_state_dict(state)
    model.eval()
    return model, dict(payload["extra"])
