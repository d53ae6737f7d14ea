"""Agreement of two sets of integer output codes: the one measure of "how exact is this engine".

Two engines that should compute the same integers (qlearn's integer engine vs the fake-quant model
on the output grid, vs PyTorch int8, vs ONNX Runtime) are compared code by code, in output LSBs
(steps of the output scale S3, Eq. 69 of docs/equations.md): how many codes are identical, the
largest and mean |difference|, and how often the arg-max class is the same.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Agreement", "code_agreement"]


@dataclass(frozen=True)
class Agreement:
    """How closely engine ``a`` follows engine ``b`` on the same inputs (Eq. 69).

    n                     : number of inputs (rows)
    top1_agreement        : fraction of rows whose arg-max code is the same in both
    exact_output_fraction : fraction of output codes that are identical
    max_lsb_diff          : max |a - b| over all codes (output LSBs = output scale steps)
    mean_abs_lsb_diff     : mean |a - b|
    integer_acc / fake_quant_acc : top-1 accuracies of ``a`` and ``b``, when labels were given
    """

    n: int
    top1_agreement: float
    exact_output_fraction: float
    max_lsb_diff: int
    mean_abs_lsb_diff: float
    integer_acc: float | None = None
    fake_quant_acc: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def code_agreement(a: Any, b: Any, labels: Any = None) -> Agreement:
    """Compare two (N, classes) integer outputs code by code; top-1 accuracies when ``labels`` (N,) are given."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"outputs must both be non-empty (N, classes) of the same shape, got {a.shape} and {b.shape}")
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise TypeError(f"outputs must be integer codes, got {a.dtype} and {b.dtype}")
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    top_a, top_b = a.argmax(1), b.argmax(1)
    acc_a = acc_b = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (a.shape[0],):
            raise ValueError(f"labels must be one label per row ({a.shape[0]},), got shape {y.shape}")
        acc_a, acc_b = float((top_a == y).mean()), float((top_b == y).mean())
    return Agreement(
        n=int(a.shape[0]),
        top1_agreement=float((top_a == top_b).mean()),
        exact_output_fraction=float((diff == 0).mean()),
        max_lsb_diff=int(diff.max()),
        mean_abs_lsb_diff=float(diff.mean()),
        integer_acc=acc_a,
        fake_quant_acc=acc_b,
    )
