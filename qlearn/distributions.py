"""Synthetic data with the shapes real tensors have, each scaled to zero mean and unit variance.

gaussian  : N(0, 1)                               weights of a well-behaved layer
uniform   : U(-sqrt 3, sqrt 3)                    the best case for a uniform grid
laplace   : Laplace(0, 1/sqrt 2)                  peaked weights, heavier tails
student-t : t(3) * sqrt(1/3)                      heavy tails: a few large outliers
"""
from __future__ import annotations

import numbers

import numpy as np

DISTRIBUTIONS = ("gaussian", "uniform", "laplace", "student-t")


def sample(name: str, n: int = 100_000, seed: int = 0) -> np.ndarray:
    """``n`` float64 samples of the named distribution (unit variance), reproducible from ``seed``."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        return rng.standard_normal(n)
    if name == "uniform":
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), n)
    if name == "laplace":
        return rng.laplace(0.0, 1.0 / np.sqrt(2.0), n)
    return rng.standard_t(3, n) * np.sqrt(1.0 / 3.0)
