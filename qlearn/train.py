"""Deterministic float training and evaluation.

The float model is the starting point of everything in the paper: post-training quantization
calibrates it, quantization-aware training fine-tunes it (paper Sec. 3). This module trains any
``nn.Module`` that maps images to logits with mini-batch SGD-style optimisation, the same way every
time for the same seed: the seed fixes the initial weights (set it before building the model with
``seed_everything``), the order of the mini-batches, and nothing else is random. ``train`` reads
in-memory tensors; ``train_stream`` reads a ``Dataset`` through a DataLoader, on one process or
several (``qlearn.distributed``), and can resume from its saved training state. Saving and loading
a trained model is ``qlearn.checkpoints``.
"""
from __future__ import annotations

import inspect
import math
import numbers
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qlearn._checks import check_int, check_seed
from qlearn.distributed import SINGLE, ShardSampler, all_reduce_sum, average_buffers
from qlearn.files import atomic_path

__all__ = [
    "TrainConfig",
    "TrainResult",
    "seed_everything",
    "train",
    "train_stream",
    "evaluate",
    "predict",
]

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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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
        # buffers are not broadcast from rank 0 at every forward: they are averaged (BN) or synced
        # inside the forward (QAT's StatSync), so every process keeps its own, identical, copy
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
