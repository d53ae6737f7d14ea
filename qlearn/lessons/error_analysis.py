"""Notebook 02: how the quantization error depends on the bit width and on the range.

- ``error_vs_bits``: measured MSE beside the uniform-noise model S^2/12 (Eq. 17) and the SQNR
  (Eq. 18) for 2..12 bits, with the range [lo, hi] picked once by a range rule (``qlearn.ranges``).
- ``clipping_curves``: rounding, clipping and total MSE (Eq. 14) as a symmetric clip range [-c, c]
  narrows: the trade-off an MSE-optimal range balances (Eq. 15).

Both are cached per argument set (``functools.lru_cache``), as are the sample tensors they measure
(``sample_data``): the explorers of notebook 02 call them on every slider move.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from qlearn.distributions import sample
from qlearn.error import error_breakdown, uniform_noise_mse
from qlearn.qparams import qparams_from_range
from qlearn.ranges import RANGE_METHODS, range_for

__all__ = ["BITS", "ERROR_METHODS", "sample_data", "error_vs_bits", "clipping_curves"]

#: The bit widths of notebook 02's curves.
BITS = np.arange(2, 13)
#: The range rules of notebook 02 (labels of ``qlearn.ranges.RANGE_METHODS``): min/max and two
#: percentiles, the rules whose range does not depend on the bit width.
ERROR_METHODS: tuple[str, ...] = RANGE_METHODS[:3]  # ("min/max", "percentile 99.9", "percentile 99")


@lru_cache(maxsize=16)
def sample_data(dist: str, n: int, seed: int) -> np.ndarray:
    """``qlearn.distributions.sample(dist, n, seed)``, cached: (n,) float64, the same array every call."""
    return sample(dist, n, seed)


@lru_cache(maxsize=32)
def error_vs_bits(dist: str, method: str, n: int = 200_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Measured MSE, the S^2/12 model and SQNR for 2..12 bits (cached per distribution and method).

    The range [lo, hi] is ``range_for(x, method)``, one range for every bit width; each entry is an
    (11,) array over ``BITS``: "bits", "scale" S, "mse" (measured, Eq. 14), "clipping" (its clipping
    part), "model" (S^2/12, Eq. 17) and "sqnr" (10 log10(mean x^2 / MSE) dB, Eq. 18).
    """
    x = sample_data(dist, n, seed)
    lo, hi = range_for(x, method)
    out: dict[str, list] = {"bits": [], "scale": [], "mse": [], "model": [], "sqnr": [], "clipping": []}
    for b in BITS:
        qp = qparams_from_range(lo, hi, int(b))
        parts = error_breakdown(x, qp)
        out["bits"].append(int(b))
        out["scale"].append(qp.scale)
        out["mse"].append(parts.total_mse)
        out["clipping"].append(parts.clipping_mse)
        out["model"].append(uniform_noise_mse(qp.scale))
        out["sqnr"].append(10 * np.log10(np.mean(x * x) / parts.total_mse))
    return {k: np.asarray(v) for k, v in out.items()}


@lru_cache(maxsize=64)
def clipping_curves(dist: str, bits: int, n: int = 200_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Rounding, clipping and total MSE as the symmetric clip range [-c, c] narrows (cached).

    60 values of c, geometrically spaced from 0.25 to max|x|; each entry is a (60,) array: "c",
    "rounding", "clipping", "total" (their sum, Eq. 14) and "fraction" (share of values clipped).
    """
    x = sample_data(dist, n, seed)
    cmax = float(np.abs(x).max())
    cs = np.geomspace(0.25, cmax, 60)
    rnd, clp, frac = [], [], []
    for c in cs:
        parts = error_breakdown(x, qparams_from_range(-c, c, bits))
        rnd.append(parts.rounding_mse)
        clp.append(parts.clipping_mse)
        frac.append(parts.clipped_fraction)
    rnd, clp = np.asarray(rnd), np.asarray(clp)
    return {"c": cs, "rounding": rnd, "clipping": clp, "total": rnd + clp, "fraction": np.asarray(frac)}
