"""Notebook 13's layer-by-layer view: how far each runtime's codes are from qlearn's, layer after layer.

``qlearn.deploy.layer_codes`` runs every layer of the integer model on qlearn's engine, on ONNX Runtime
and on PyTorch's int8 kernels, each runtime fed either qlearn's own codes of the layer's inputs
("layer alone": that runtime's rounding only) or its own earlier outputs ("end to end": differences
compound). This module turns those rows into what the lesson shows: the differences in output LSBs
(steps of the layer's output scale, Eq. 69), their histogram, and the share of identical codes.
No widgets and no plotting here (``qlearn.widgets.deploy`` draws them).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qlearn.deploy import LayerCodes, layer_codes
from qlearn.lessons.mobilenet_pipeline import pipeline_run

__all__ = ["MODES", "MAX_IMAGES", "shipped_layer_codes", "check_rows", "differences", "identical_share",
           "difference_histogram", "largest_difference"]

MODES = ("layer alone", "end to end")
MAX_IMAGES = 200  # test images of the shipped quick run compared, when no rows are given


def shipped_layer_codes(max_images: int = MAX_IMAGES) -> list[LayerCodes]:
    """``layer_codes`` of the shipped quick run (the same on every machine) on its first test images."""
    run = pipeline_run(progress=False)
    return layer_codes(run, run.data.x_test[:max_images])


def check_rows(rows: Any) -> list[LayerCodes]:
    """``rows`` as ``qlearn.deploy.layer_codes`` returns them (a non-empty list of ``LayerCodes``), else TypeError."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, LayerCodes) for r in rows):
        raise TypeError("rows must be the list that qlearn.deploy.layer_codes returns")
    return rows


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def differences(row: LayerCodes, engine: str, mode: str) -> np.ndarray:
    """Runtime code minus qlearn code for every output code of the layer: flat int64, in output LSBs."""
    got = row.alone[engine] if _check_mode(mode) == "layer alone" else row.end_to_end[engine]
    return (got - row.ours).ravel()  # int64 - int64: codes are 0..255, no overflow


def identical_share(row: LayerCodes, engine: str, mode: str) -> float:
    """Fraction of the layer's output codes on which ``engine`` equals qlearn exactly."""
    return float(np.mean(differences(row, engine, mode) == 0))


def difference_histogram(diff: np.ndarray, k: int) -> np.ndarray:
    """Share of codes at each difference -k..k (shape (2k + 1,), float64; sums to 1 when |diff| <= k)."""
    d = np.asarray(diff, dtype=np.int64)
    if d.size and int(np.abs(d).max()) > k:
        raise ValueError(f"k must be at least the largest |difference| {int(np.abs(d).max())}, got {k}")
    return np.bincount(d + k, minlength=2 * k + 1) / float(max(d.size, 1))


def largest_difference(rows: list[LayerCodes]) -> int:
    """Largest |runtime - qlearn| code difference over every layer, runtime and mode."""
    return max(int(np.abs(d - r.ours).max()) for r in rows for d in (*r.alone.values(), *r.end_to_end.values()))
