"""``ImageData``: a train/test split of images in [0, 1] with integer labels -- what every loader returns.

The in-memory loaders (``qlearn.data``: digits, MNIST, CIFAR-10) return it as is; ``qlearn.folder_data``
returns its subclass ``FolderData``, whose training split is streamed from disk.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

__all__ = ["ImageData"]


@dataclass(frozen=True, eq=False)
class ImageData:
    """A train/test split of images in [0, 1] with integer labels.

    x_train, x_test : (N, C, H, W) float32 in [0, 1]
    y_train, y_test : (N,) int64 in [0, num_classes)
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[-1])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> ImageData:
        """The first ``n_train`` / ``n_test`` examples (the split order is already shuffled)."""
        def take(x: torch.Tensor, y: torch.Tensor, n: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
            if n is None:
                return x, y
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {n!r}")
            return x[:n], y[:n]

        xtr, ytr = take(self.x_train, self.y_train, n_train, "n_train")
        xte, yte = take(self.x_test, self.y_test, n_test, "n_test")
        return ImageData(self.name, xtr, ytr, xte, yte, self.classes)

    def __repr__(self) -> str:
        return (
            f"ImageData({self.name!r}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, "
            f"{self.num_classes} classes)"
        )
