"""Notebook 08, section 6: int16 pair saturation, the paper's Appendix B constraint on today's CPUs.

The paper keeps int8 weights in [-127, 127] because a kernel may add pairs of int8 x int8 products
in int16 before widening to int32 (Appendix B; Eq. 75 of docs/equations.md). x86 CPUs without VNNI
do the same with uint8 activations (``qlearn.saturation`` emulates that arithmetic in numpy), and
with full-range 8-bit codes the pair sums no longer fit int16. ``pair_saturation_on_this_cpu`` runs
one conv layer and one depthwise layer exactly (``qlearn.integer.conv2d``), with int16 pair sums
(``qlearn.saturation.conv2d``), and by PyTorch's x86 and qnnpack int8 engines on the learner's CPU,
and counts where they differ; ``qlearn.widgets.integer_explorers.pair_saturation_figure`` draws it.

Deterministic (one seed in, the same numbers out) and cached.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from qlearn import saturation as sat
from qlearn._checks import check_seed
from qlearn.agreement import code_agreement
from qlearn.integer import conv2d
from qlearn.layer_integers import quantize_bias, requant_multiplier
from qlearn.torch_int8 import cpu_int8_features

__all__ = ["PairSaturation", "pair_saturation_on_this_cpu"]


@dataclass(frozen=True, eq=False)
class PairSaturation:
    """One conv layer on given codes: exact, int16 pairs (numpy), PyTorch x86 and qnnpack, side by side.

    rows: one dict per (layer, codes) case with the keys
      layer, codes ("8-bit 0..255" / "7-bit 0..127"), outputs, max_pair_sum,
      saturated (fraction of outputs whose int16 pairs lost something), emulated_vs_exact (max LSB),
      x86_vs_exact, x86_vs_emulated, qnnpack_vs_exact (each (max |diff| LSB, fraction identical)).
    cpu: the CPU's int8 features (``qlearn.torch_int8.cpu_int8_features``).
    pair_sums: every pair sum of the full-range depthwise layer (for the histogram).
    scatter: (exact codes, x86 codes) of the full-range depthwise layer.
    """

    rows: list
    cpu: dict
    pair_sums: np.ndarray
    scatter: tuple


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(max |a - b| in LSBs, fraction of identical codes) of two integer outputs, per image rows."""
    ag = code_agreement(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
    return ag.max_lsb_diff, ag.exact_output_fraction


def _torch_conv2d(engine: str, x: np.ndarray, zx: int, w: np.ndarray, bias_q: np.ndarray, s1: float,
                  s2: np.ndarray, s3: float, zo: int, padding: int, groups: int) -> np.ndarray:
    """PyTorch's quantized conv on the very same integers (no float round trip of the codes)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensor constructors are marked private
            qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(w), torch.from_numpy(s2),
                                                          torch.zeros(len(s2), dtype=torch.long), 0)
            qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), s1, zx)
        packed = torch.ops.quantized.conv2d_prepack(qw, torch.from_numpy((bias_q * s1 * s2).astype(np.float32)),
                                                    [1, 1], [padding] * 2, [1, 1], groups)
        return torch.ops.quantized.conv2d(qx, packed, s3, zo).int_repr().numpy()
    finally:
        torch.backends.quantized.engine = old


@lru_cache(maxsize=4)
def pair_saturation_on_this_cpu(seed: int = 0) -> PairSaturation:
    """A 3x3 conv (16 -> 16) and a depthwise 3x3 conv (128 channels), on random 8-bit and 7-bit codes.

    Each is computed four ways: exact (``qlearn.integer.conv2d``), with int16 pair sums
    (``qlearn.saturation.conv2d``), by PyTorch's x86 engine and by its qnnpack engine. Weights are
    random int8 in [-127, 127], per-channel scales; the input zero point is in the middle of the codes.
    """
    seed = check_seed(seed)
    rows, pair_sums, scatter = [], None, None
    for layer, (cin, cout, groups) in (("3x3 conv, 16 -> 16", (16, 16, 1)), ("depthwise 3x3, 128 channels", (128, 128, 128))):
        for codes, top in (("8-bit 0..255", 255), ("7-bit 0..127", 127)):
            rng = np.random.default_rng(seed)
            x = rng.integers(0, top + 1, (2, cin, 12, 12)).astype(np.uint8)   # (N, C, H, W) codes
            w = rng.integers(-127, 128, (cout, cin // groups, 3, 3)).astype(np.int8)
            s1, s3, zx, zo = 0.02, 0.06, top // 2, 97
            s2 = rng.uniform(0.002, 0.01, cout)                                # per-channel weight scales
            bias_q = quantize_bias(rng.normal(0, 0.5, cout), s1, s2)
            m0, shift = requant_multiplier(s1, s2, s3)
            args, kw = (x, zx, w, bias_q, m0, shift, zo), dict(padding=1, groups=groups)
            exact, emulated = conv2d(*args, **kw), sat.conv2d(*args, **kw)
            x86 = _torch_conv2d("x86", x, zx, w, bias_q, s1, s2, s3, zo, 1, groups)
            qnnpack = _torch_conv2d("qnnpack", x, zx, w, bias_q, s1, s2, s3, zo, 1, groups)
            rep = sat.saturation(x, w, x_zp=zx, **kw)
            rows.append({
                "layer": layer, "codes": codes, "outputs": rep.n_outputs, "max_pair_sum": rep.max_pair_sum,
                "saturated": rep.fraction, "emulated_vs_exact": _agreement(emulated, exact)[0],
                "x86_vs_exact": _agreement(x86, exact), "x86_vs_emulated": _agreement(x86, emulated),
                "qnnpack_vs_exact": _agreement(qnnpack, exact),
            })
            if groups > 1 and top == 255:
                cols = sat.im2col(x, zx, (3, 3), padding=1, groups=groups)
                wg = sat._conv_weights(w, groups)
                pair_sums = np.concatenate([sat._pair_sums(cols[:, g], wg[g]).ravel() for g in range(groups)])
                scatter = (exact, x86)
    return PairSaturation(rows, cpu_int8_features(), pair_sums, scatter)
