"""Per-group (block) quantization: one scale per tensor, per output channel, or per group of inputs.

Row c of a weight tensor reshaped to (C, K) (K inputs per output channel) is cut into G = ceil(K / g)
consecutive groups of g inputs, the last one shorter when g does not divide K, and each group gets its
own (S, Z) from its own min/max (Eqs. 4-8 per group, Eq. 76). g = K is per-channel; one group for the
whole tensor is per-tensor. The scales are stored too, which costs bits per weight (Eq. 77). Weights are
symmetric, signed, narrow range (Eq. 8) unless ``symmetric=False`` (asymmetric uint, Eqs. 4-6).
Used by notebook 10 (``qlearn.lessons.formats_granularity``) and notebook 11's weight-only schemes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn._checks import as_float_array, check_bits, check_bool, check_int
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, quantize
from qlearn.ranges import minmax_range

__all__ = ["GroupQuant", "quantize_groups", "fake_quant_granular", "bits_per_weight", "check_granularity",
           "weight_format"]


def check_granularity(granularity: Any) -> Any:
    if granularity in ("per-tensor", "per-channel"):
        return granularity
    if isinstance(granularity, str):
        raise ValueError(f"granularity must be 'per-tensor', 'per-channel' or a group size >= 1, got {granularity!r}")
    return check_int(granularity, "granularity", minimum=1)


def weight_format(symmetric: bool) -> dict:
    """qlearn's weights: signed narrow range, Z = 0 (Eq. 8); asymmetric: uint over [min, max] (Eqs. 4-6)."""
    return dict(symmetric=True, signed=True, narrow_range=True) if symmetric else dict(symmetric=False)


@dataclass(frozen=True, eq=False)
class GroupQuant:
    """Weights (C, ...) quantized with one (S, Z) per group of ``group_size`` inputs of each output channel.

    Row c of ``w.reshape(C, K)`` is cut into G = ceil(K / group_size) consecutive groups (the last one
    shorter when group_size does not divide K). ``qparams`` has one entry per group, (C * G,) along axis 0;
    ``codes`` is (C, K) in ``qparams.dtype``; ``w_hat`` = S_cg (q - Z_cg), the shape of ``w`` (Eq. 76).
    """

    bits: int
    group_size: int
    symmetric: bool
    qparams: QParams
    codes: np.ndarray
    w_hat: np.ndarray

    @property
    def groups_per_row(self) -> int:
        return int(self.qparams.scale.shape[0] // self.codes.shape[0])


def quantize_groups(w: Any, bits: int, group_size: int, *, symmetric: bool = True) -> GroupQuant:
    """Per-group (block) quantization of ``w`` (Cout, ...) along its flattened input dimension (Eq. 76)."""
    arr = as_float_array(w, "w")
    if arr.ndim < 2:
        raise ValueError(f"w must be (Cout, ...) with at least one input per output channel, got shape {arr.shape}")
    bits = check_bits(bits)
    group_size = check_int(group_size, "group_size", minimum=1)
    symmetric = check_bool(symmetric, "symmetric")
    rows = arr.reshape(arr.shape[0], -1)  # (C, K) float64
    c, k = rows.shape
    g = min(group_size, k)
    n_groups = -(-k // g)
    # zero padding does not move a group's range: Eq. 4 widens every range to contain 0 anyway
    blocks = np.pad(rows, ((0, 0), (0, n_groups * g - k))).reshape(c * n_groups, g)  # (C*G, g)
    lo, hi = minmax_range(blocks, axis=0)
    qp = qparams_from_range(lo, hi, bits, axis=0, **weight_format(symmetric))
    codes = quantize(blocks, qp)  # (C*G, g), Eq. 9
    w_hat = dequantize(codes, qp).reshape(c, n_groups * g)[:, :k].reshape(arr.shape)
    return GroupQuant(bits, g, symmetric, qp, codes.reshape(c, n_groups * g)[:, :k], w_hat)


def fake_quant_granular(w: Any, bits: int, granularity: Any, *, symmetric: bool = True) -> np.ndarray:
    """``w`` fake-quantized with one scale per tensor, per output channel, or per group (an int)."""
    granularity = check_granularity(granularity)
    if granularity == "per-tensor":
        arr = as_float_array(w, "w")
        qp = qparams_from_range(*minmax_range(arr), check_bits(bits), **weight_format(check_bool(symmetric, "symmetric")))
        return fake_quantize(arr, qp)
    size = np.prod(np.shape(w)[1:], dtype=np.int64) if granularity == "per-channel" else granularity
    return quantize_groups(w, bits, int(size), symmetric=symmetric).w_hat


def bits_per_weight(shape: tuple[int, ...], bits: int, granularity: Any, *, scale_bits: int = 16,
                    zero_point_bits: int = 0) -> float:
    """Storage per weight including the scales (and zero points): b + G (s + z) / n (Eq. 77).

    n weights in ``shape`` (Cout, ...), G scales: 1 per tensor, Cout per channel, Cout ceil(K / g) per group.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (Cout, ...) with positive sides, got {shape}")
    bits = check_int(bits, "bits", minimum=1, maximum=16)
    granularity = check_granularity(granularity)
    scale_bits = check_int(scale_bits, "scale_bits", minimum=0)
    zero_point_bits = check_int(zero_point_bits, "zero_point_bits", minimum=0)
    c, n = shape[0], int(np.prod(shape))
    k = n // c
    scales = 1 if granularity == "per-tensor" else c if granularity == "per-channel" else c * -(-k // min(granularity, k))
    return (n * bits + scales * (scale_bits + zero_point_bits)) / n
