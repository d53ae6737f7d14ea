"""Notebook 12: EfficientNet-Lite0, a real ImageNet network, under post-training quantization.

The study itself -- folded channel ranges, whole-network PTQ variants, cross-layer equalization, the
integer engine on 224 x 224 crops -- is ``qlearn.imagenet_ptq.cached_study`` (computed once, cached as
JSON). This module adds what the lesson reads off one layer of it: which output channels are dead
(range below ``qlearn.equalization.DEAD_REL`` of the layer's largest, Eq. 41's folded weights) and how
wide the ranges of the live ones spread. No widgets and no plotting here (``qlearn.widgets.imagenet``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlearn.equalization import dead_channels
from qlearn.imagenet_ptq import QUICK, cached_study

__all__ = ["quick_study", "LayerChannels", "layer_channels"]


def quick_study(*, rerun: bool = False, progress: bool = False) -> dict:
    """The quick study of notebook 12 (``imagenet_ptq.QUICK``): measured once on this CPU, then cached
    (``rerun=True``: measure again; ``progress``: a progress bar while it measures)."""
    return cached_study(QUICK, rerun=rerun, progress=progress)


@dataclass(frozen=True, eq=False)
class LayerChannels:
    """One conv layer's output-channel ranges max |w_fold[c]| (C,) float64, its dead channels (C,) bool,
    and the spread max / min of the nonzero ranges of the live channels (1.0 when none)."""

    name: str
    ranges: np.ndarray
    dead: np.ndarray
    live_spread: float


def layer_channels(row: dict) -> LayerChannels:
    """``row``: one entry of the study's "ranges" list (``imagenet_ptq.layer_ranges``)."""
    if not isinstance(row, dict) or "ranges" not in row or "name" not in row:
        raise TypeError("row must be one entry of the study's 'ranges' list (qlearn.imagenet_ptq.layer_ranges)")
    r = np.asarray(row["ranges"], dtype=np.float64)
    dead = dead_channels(r)
    live = r[~dead & (r > 0)]
    return LayerChannels(str(row["name"]), r, dead, float(live.max() / live.min()) if live.size else 1.0)
