"""One thread for torch and for numpy's BLAS: the one thread-limiting context of the package.

Why one thread: the same seed then gives the same weights whatever the core count, and the small
models of the lessons run fastest so (threads only contend on tensors this size). torch's intra-op
pool is set with ``torch.set_num_threads``; numpy's BLAS (OpenBLAS/MKL) and OpenMP pools through
``threadpoolctl``, the well-kept library scikit-learn already installs.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from threadpoolctl import ThreadpoolController

__all__ = ["one_thread"]


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    # Scanning the loaded libraries costs a few ms: once per process, not once per slider change.
    return ThreadpoolController()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the body with torch and BLAS on one thread; the previous settings come back even on error."""
    before = torch.get_num_threads()
    with _controller().limit(limits=1, user_api="blas"):
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)
