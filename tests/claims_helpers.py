"""Shared by the claims tests: margins counted in test images, so that they read like the prose."""
from __future__ import annotations

from typing import Any


def images(model: Any, n: float) -> float:
    """n test images as a fraction of ``model``'s test split (a lesson model or the transformer)."""
    return n / len(model.data.y_test)
