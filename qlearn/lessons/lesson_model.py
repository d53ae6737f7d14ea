"""The lesson model: the small MobileNet of notebooks 03-06 and 10, and its cache.

A small MobileNet v1 trained once on the bundled digits, deterministically (fixed seed, one thread),
shipped with qlearn (``qlearn/shipped``, sha256-checked) and otherwise cached under
``~/.cache/qlearn`` (``lesson_model``), with its BN-folded weights (``FoldedLayer``). Results the
lessons compute from it are cached beside it (``cached_results``). ``swapped_weights`` lends the
model other (e.g. fake-quantized) folded weights for a ``with`` block and restores them after.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qlearn.bn_fold import fuse_model
from qlearn.checkpoints import cache_dir, load_checkpoint
from qlearn.data import ImageData, load_digits_data
from qlearn.files import atomic_write_text
from qlearn.models import MODELS, ConvBNReLU
from qlearn.shipped import shipped_file
from qlearn.threads import one_thread
from qlearn.train import TrainConfig, evaluate, seed_everything, train
from qlearn.trained_once import load_or_train, memo_model

__all__ = ["LessonConfig", "FoldedLayer", "LessonModel", "lesson_model", "check_lesson", "cached_results", "swapped_weights",
           "cache_dir"]


# ---------------------------------------------------------------------------------- the lesson model
@dataclass(frozen=True)
class LessonConfig:
    """The small model notebooks 03 and 04 look inside (trains in ~10 s on one CPU core)."""

    arch: str = "mobilenet_v1"
    width: float = 0.5
    input_size: int = 16
    epochs: int = 15
    lr: float = 1e-2
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in MODELS:
            raise ValueError(f"arch must be one of {sorted(MODELS)}, got {self.arch!r}")
        for name in ("input_size", "epochs", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")

    @property
    def key(self) -> str:
        """File-name-safe identity of the model: every field that changes its weights."""
        return (
            f"lesson-{self.arch}-w{self.width:g}-in{self.input_size}-e{self.epochs}-lr{self.lr:g}"
            f"-b{self.batch_size}-seed{self.seed}"
        )


@dataclass(frozen=True, eq=False)
class FoldedLayer:
    """One BN-folded layer of the lesson model: its weights as the integer model would see them."""

    name: str  # module path, e.g. "features.4.dw"
    kind: str  # "conv", "depthwise" or "linear"
    module: nn.Module  # the folded nn.Conv2d / nn.Linear inside ``LessonModel.folded``
    weight: np.ndarray  # (Cout, ...) float64, a copy of the folded float weights

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def label(self) -> str:
        shape = "x".join(str(s) for s in self.weight.shape)
        return f"{self.name} ({self.kind}, {shape})"


@dataclass(eq=False)
class LessonModel:
    """The trained float model, its BN-folded copy (Eq. 43), the data and the float accuracy."""

    config: LessonConfig
    model: nn.Module
    folded: nn.Module
    data: Any  # qlearn.data.ImageData
    float_acc: float
    layers: dict[str, FoldedLayer] = field(default_factory=dict)
    path: Path | None = None  # its checkpoint (shipped, cached, or None: in memory only)
    shipped: bool = False  # True: the model shipped with qlearn (qlearn.shipped), the lessons' default
    cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_model(cls, model: nn.Module, data: Any, config: LessonConfig | None = None) -> LessonModel:
        """Wrap any trained qlearn MobileNet and its ImageData (no cache): fold BN, measure accuracy."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module (a qlearn MobileNet), got {type(model).__name__}")
        if not isinstance(data, ImageData):
            raise TypeError(f"data must be a qlearn.data.ImageData, got {type(data).__name__}")
        return _build_lesson(config or LessonConfig(), model, data, None)

    def layer(self, name: str) -> FoldedLayer:
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; the lesson model has {', '.join(self.layers)}")
        return self.layers[name]


def check_lesson(lesson: Any) -> LessonModel:
    """``lesson`` itself if it is a ``LessonModel``, else a TypeError naming the argument."""
    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    return lesson


def _folded_layers(folded: nn.Module) -> dict[str, FoldedLayer]:
    layers: dict[str, FoldedLayer] = {}
    for name, module in folded.named_modules():
        if isinstance(module, ConvBNReLU):
            conv = module.conv
            kind = "depthwise" if conv.groups > 1 and conv.groups == conv.in_channels else "conv"
            layers[name] = FoldedLayer(name, kind, conv, conv.weight.detach().double().numpy().copy())
        elif isinstance(module, nn.Linear):
            layers[name] = FoldedLayer(name, "linear", module, module.weight.detach().double().numpy().copy())
    return layers


def _build_lesson(config: LessonConfig, model: nn.Module, data: Any, path: Path | None, *,
                  shipped: bool = False) -> LessonModel:
    model.eval()
    folded = fuse_model(model)
    with one_thread():
        acc = evaluate(folded, data.x_test, data.y_test)
    return LessonModel(config, model, folded, data, acc, _folded_layers(folded), path, shipped=shipped)


_LESSONS: dict[tuple[LessonConfig, str], LessonModel] = {}  # one object per (config, folder) per process


def _read_cached(config: LessonConfig, path: Path) -> nn.Module | None:
    """The model in a cached checkpoint ``path`` if it is readable and is this config's model, else None.

    A corrupt file, or one that holds another architecture under this key, is reported in one line and
    trained again (and overwritten), rather than failing every later call.
    """
    try:
        model, extra = load_checkpoint(path)
    except (ValueError, OSError, RuntimeError, EOFError) as e:
        print(f"qlearn: the cached lesson model {path} is unreadable ({e}); training it again", file=sys.stderr)
        return None
    arch = dict(getattr(model, "config", {}) or {}).get("arch")
    if extra.get("lesson_key") != config.key or (arch is not None and arch != config.arch):
        print(f"qlearn: the cached lesson model {path} is not {config.key} (it says {extra.get('lesson_key')!r}, "
              f"arch {arch!r}); training it again", file=sys.stderr)
        return None
    return model


def _train(config: LessonConfig, data: Any, progress: bool) -> nn.Module:
    with one_thread():
        seed_everything(config.seed)
        model = MODELS[config.arch](data.num_classes, width=config.width, input_size=config.input_size,
                                    in_channels=data.in_channels)
        tc = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
        train(model, data.x_train, data.y_train, tc, progress=progress, desc=f"training the lesson model ({config.key})")
    return model


def _load_or_train(config: LessonConfig, directory: Path | None, progress: bool, retrain: bool) -> LessonModel:
    """Shipped model (``directory`` None, not ``retrain``) > cached checkpoint > trained now and cached."""
    data = load_digits_data(config.input_size, seed=config.seed)
    found = load_or_train(
        config.key, directory, retrain, key_name="lesson_key",
        read=lambda path, cached: _read_cached(config, path) if cached else load_checkpoint(path)[0],
        train=lambda: _train(config, data, progress))
    return _build_lesson(config, found.model, data, found.path, shipped=found.shipped)


def lesson_model(config: LessonConfig | None = None, *, directory: str | Path | None = None,
                 progress: bool = True, retrain: bool = False) -> LessonModel:
    """The small trained MobileNet of notebooks 03-06: the one shipped with qlearn, unless asked otherwise.

    By default (``directory=None``, ``retrain=False``) every learner gets the same weights: the
    checkpoint in ``qlearn/shipped`` (sha256-checked, weights-only loading; ``qlearn.shipped``). Seeded
    training is deterministic on one machine but gives slightly different weights on another CPU, so
    ``retrain=True`` trains the model on this CPU (about ten seconds on one core: ``config.seed`` fixes the
    initial weights and the batch order; one thread) and caches it as ``<cache_dir()>/<config.key>.pt``
    (or in ``directory``); later calls with ``directory`` read that cache. A corrupt cached checkpoint, or
    one of another model, is trained again with a one-line message. Within one Python process the same
    object is returned for the same (config, folder), until ``retrain=True`` replaces it.
    """
    return memo_model(_LESSONS, config, LessonConfig, directory, progress, retrain, _load_or_train)


def _results_file(lesson: LessonModel, name: str) -> tuple[Path | None, Path | None]:
    """(shipped results file or None, the file to read and write otherwise or None)."""
    if lesson.path is None:
        return None, None
    file_name = f"{lesson.path.stem}.{name}.json"
    if lesson.shipped:
        return shipped_file(file_name), cache_dir() / file_name
    return None, lesson.path.with_name(file_name)


def cached_results(lesson: LessonModel, name: str, compute: Any) -> dict[str, list[float]]:
    """``compute()`` (a dict of name -> list of floats), stored once beside the lesson model's checkpoint.

    Accuracy sweeps and short training runs take seconds to a minute; the notebooks read them back in
    milliseconds. For the shipped lesson model the results ship too (computed once by
    ``python -m qlearn ship-models``), so every learner reads the same numbers; a result that is not
    shipped is computed and kept in the cache folder. The file is ``<checkpoint stem>.<name>.json``;
    ``name`` should carry a version (e.g. "range-rules-v1") so that a changed computation gets a new
    file. A result whose file cannot be read or written is computed.
    """
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name must be a short file-name-safe string like 'range-rules-v1', got {name!r}")
    key = ("results", name)
    if key in lesson.cache:
        return lesson.cache[key]
    shipped, path = _results_file(lesson, name)
    result = None
    for candidate in (shipped, path):
        if candidate is not None and candidate.is_file():
            try:
                result = json.loads(candidate.read_text())
            except (OSError, ValueError):
                result = None
            if isinstance(result, dict):
                break
    if not isinstance(result, dict):
        result = {str(k): [float(v) for v in vals] for k, vals in compute().items()}
        if path is not None:
            try:
                atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True))
            except OSError:
                pass  # a read-only cache: compute again next session
    lesson.cache[key] = result
    return result


@contextlib.contextmanager
def swapped_weights(layers: list[FoldedLayer], new: list[np.ndarray]) -> Iterator[None]:
    """Temporarily replace the folded layers' weights (the model is restored even on error)."""
    saved = [layer.module.weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer, w in zip(layers, new):
                layer.module.weight.copy_(torch.from_numpy(w).to(layer.module.weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for layer, w in zip(layers, saved):
                layer.module.weight.copy_(w)
