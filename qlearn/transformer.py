"""A small ViT-style transformer over the 8x8 digits: the model of notebook 11 and its cache.

Each 8x8 image is cut into 16 patches of 2x2 pixels (the tokens). A linear patch embedding, a learned
class token and learned positions feed ``depth`` pre-LayerNorm blocks

    h = h + proj(attention(qkv(LN1(h))))          multi-head self-attention
    h = h + fc2(GELU(fc1(LN2(h))))                 the MLP

and a LayerNorm + linear head reads the class token. Every ``nn.Linear`` is called through
``TinyViT.linear(name, module, x)``, so a lesson can replace one layer's arithmetic (fake
quantization, SmoothQuant, an integer kernel) without touching the model: ``forward(x, hook=fn)``
calls ``fn(name, module, x)`` for every linear layer instead of ``module(x)``.

Like the lesson MobileNet (``qlearn.lessons.lesson_model``), the trained weights ship with qlearn
(``qlearn/shipped``, sha256-checked, made by ``python -m qlearn ship-models --only transformer``) so
every learner reads the same model; ``transformer_model(retrain=True)`` trains it on this CPU (one
thread, fixed seed; about half a minute) into the cache folder.
"""
from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qlearn.checkpoints import load_checkpoint
from qlearn.data import load_digits_data
from qlearn.threads import one_thread
from qlearn.train import TrainConfig, evaluate, seed_everything, train
from qlearn.trained_once import load_or_train, memo_model

__all__ = ["TransformerConfig", "TinyViT", "TransformerModel", "transformer_model", "patches"]

Hook = Callable[[str, nn.Linear, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TransformerConfig:
    """The transformer of notebook 11 (trains in well under a minute on one CPU core)."""

    dim: int = 32  # token width d
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads (d / heads = 8 features each)
    mlp: int = 64  # hidden width of the MLP
    patch: int = 2  # patch side in pixels: (8 / patch)^2 = 16 tokens of patch^2 pixels
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "mlp", "patch", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if 8 % self.patch:
            raise ValueError(f"patch must divide the 8-pixel image side, got {self.patch}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not 0 < self.lr < 1:
            raise ValueError(f"lr must be a number in (0, 1), got {self.lr!r}")

    @property
    def tokens(self) -> int:
        return (8 // self.patch) ** 2

    @property
    def key(self) -> str:
        """File-name-safe identity: every field that changes the weights."""
        return (f"transformer-vit-d{self.dim}-L{self.depth}-h{self.heads}-m{self.mlp}-p{self.patch}"
                f"-e{self.epochs}-lr{self.lr:g}-b{self.batch_size}-seed{self.seed}")


def patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 1, 8, 8) images -> (N, T, patch^2) tokens, row-major patches (T = (8 / patch)^2)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"x must be a (N, 1, 8, 8) tensor of digits, got {getattr(x, 'shape', type(x).__name__)}")
    n, p = x.shape[0], patch
    t = x.reshape(n, 8 // p, p, 8 // p, p).permute(0, 1, 3, 2, 4)  # (N, rows, cols, p, p)
    return t.reshape(n, (8 // p) ** 2, p * p)


class Block(nn.Module):
    """One pre-LayerNorm transformer block: attention then MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, h: torch.Tensor, linear: Callable[[str, nn.Linear, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        n, t, d = h.shape
        qkv = linear("qkv", self.qkv, self.ln1(h))  # (N, T, 3d)
        q, k, v = qkv.reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (N, H, T, d/H) each
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)  # (N, H, T, T)
        o = (att @ v).transpose(1, 2).reshape(n, t, d)  # heads concatenated: (N, T, d)
        h = h + linear("proj", self.proj, o)
        return h + linear("fc2", self.fc2, F.gelu(linear("fc1", self.fc1, self.ln2(h))))


class TinyViT(nn.Module):
    """Patch embedding + class token + positions -> ``depth`` blocks -> LayerNorm -> linear head."""

    def __init__(self, config: TransformerConfig, num_classes: int = 10) -> None:
        super().__init__()
        c = config
        self.patch = c.patch
        self.config = {"arch": "tiny_vit", "dim": c.dim, "depth": c.depth, "heads": c.heads, "mlp": c.mlp,
                       "patch": c.patch, "num_classes": int(num_classes)}
        self.embed = nn.Linear(c.patch * c.patch, c.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, c.tokens + 1, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.depth))
        self.ln = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, num_classes)

    def linears(self) -> dict[str, nn.Linear]:
        """The linear layers inside the blocks, by name ("blocks.0.qkv", ...): what the lesson quantizes."""
        return {f"blocks.{i}.{n}": getattr(b, n) for i, b in enumerate(self.blocks) for n in ("qkv", "proj", "fc1", "fc2")}

    def forward(self, x: torch.Tensor, hook: Hook | None = None) -> torch.Tensor:
        """(N, 1, 8, 8) images in [0, 1] -> (N, classes) logits; ``hook(name, module, x)`` runs each block linear."""
        tok = self.embed(patches(x, self.patch).to(self.embed.weight.dtype))  # (N, T, d)
        h = torch.cat([self.cls.expand(tok.shape[0], -1, -1), tok], dim=1) + self.pos  # (N, T + 1, d)
        for i, block in enumerate(self.blocks):
            def linear(name: str, module: nn.Linear, inp: torch.Tensor, i: int = i) -> torch.Tensor:
                return module(inp) if hook is None else hook(f"blocks.{i}.{name}", module, inp)
            h = block(h, linear)
        return self.head(self.ln(h[:, 0]))


@dataclass(eq=False)
class TransformerModel:
    """The trained transformer, its data, its float accuracy and where its weights came from.

    ``path``, ``shipped`` and ``cache`` follow ``LessonModel``, so ``cached_results`` stores results
    beside this checkpoint exactly as it does for the lesson MobileNet.
    """

    config: TransformerConfig
    model: TinyViT
    data: Any  # qlearn.data.ImageData, 8x8 images
    float_acc: float
    path: Path | None = None
    shipped: bool = False
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def linears(self) -> dict[str, nn.Linear]:
        return self.model.linears()


def _evaluate(model: TinyViT, data: Any) -> float:
    with one_thread():
        return evaluate(model, data.x_test, data.y_test)


def _train(config: TransformerConfig, data: Any, progress: bool) -> TinyViT:
    with one_thread():
        seed_everything(config.seed)
        model = TinyViT(config, data.num_classes)
        tc = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=1e-2,
                         seed=config.seed)
        train(model, data.x_train, data.y_train, tc, progress=progress, desc=f"training the transformer ({config.key})")
    model.eval()
    return model


def _read(config: TransformerConfig, path: Path, data: Any, *, cached: bool) -> TinyViT | None:
    """The model in checkpoint ``path``; a cached file that is unreadable or of another config gives None."""
    try:
        model, extra = load_checkpoint(path, TinyViT(config, data.num_classes))
    except (ValueError, OSError, RuntimeError, EOFError) as e:
        if not cached:
            raise
        print(f"qlearn: the cached transformer {path} is unreadable ({e}); training it again", file=sys.stderr)
        return None
    if extra.get("transformer_key") != config.key:
        if not cached:
            raise ValueError(f"{path} is not the transformer {config.key} (it says {extra.get('transformer_key')!r})")
        print(f"qlearn: the cached transformer {path} is not {config.key}; training it again", file=sys.stderr)
        return None
    return model


def _load_or_train(config: TransformerConfig, directory: Path | None, progress: bool, retrain: bool) -> TransformerModel:
    """Shipped model (``directory`` None, not ``retrain``) > cached checkpoint > trained now and cached."""
    data = load_digits_data(8, seed=config.seed)  # (N, 1, 8, 8) in [0, 1]; 1,257 train / 540 test
    found = load_or_train(config.key, directory, retrain, key_name="transformer_key",
                          read=lambda path, cached: _read(config, path, data, cached=cached),
                          train=lambda: _train(config, data, progress))
    return TransformerModel(config, found.model, data, _evaluate(found.model, data), found.path, shipped=found.shipped)


_MODELS: dict[tuple[TransformerConfig, str], TransformerModel] = {}


def transformer_model(config: TransformerConfig | None = None, *, directory: str | Path | None = None,
                      progress: bool = True, retrain: bool = False) -> TransformerModel:
    """The small trained transformer of notebook 11: the one shipped with qlearn, unless asked otherwise.

    As ``lesson_model``: by default every learner gets the shipped, sha256-checked weights;
    ``retrain=True`` trains on this CPU (fixed seed, one thread) and caches the checkpoint as
    ``<cache_dir()>/<config.key>.pt`` (or in ``directory``); one object per (config, folder) per process.
    """
    return memo_model(_MODELS, config, TransformerConfig, directory, progress, retrain, _load_or_train)
