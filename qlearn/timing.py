"""Timing: the one timer of the package (benchmarks, the deployment lesson, the pipeline's stages).

All times are wall-clock ``time.perf_counter`` differences. ``measure`` times one callable;
``interleaved`` times several in alternating rounds (fair on a busy machine: a neighbour's load
falls on every contender alike); ``Stopwatch`` adds up named stages of a longer run.
"""
from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qlearn._checks import check_int

__all__ = ["Latency", "measure", "interleaved", "Stopwatch"]


@dataclass(frozen=True)
class Latency:
    """Wall-clock times of repeated calls, in milliseconds: median, 95th percentile, min and count."""

    median_ms: float
    p95_ms: float
    min_ms: float
    repeats: int

    @classmethod
    def from_seconds(cls, seconds: Any) -> Latency:
        ms = 1000.0 * np.asarray(seconds, dtype=np.float64)
        return cls(float(np.median(ms)), float(np.percentile(ms, 95)), float(ms.min()), int(ms.size))

    def to_dict(self) -> dict:
        return asdict(self)


def _check_callable(fn: Any, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable taking no arguments, got {type(fn).__name__}")


def measure(fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 2, min_seconds: float = 0.0) -> Latency:
    """Call ``fn()`` ``warmup`` times untimed, then time it ``repeats`` times (more while the timed total
    is below ``min_seconds``, at most 100 x repeats)."""
    _check_callable(fn, "fn")
    repeats = check_int(repeats, "repeats", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, numbers.Real) or min_seconds < 0:
        raise ValueError(f"min_seconds must be a number >= 0, got {min_seconds!r}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or (total < min_seconds and len(times) < 100 * repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return Latency.from_seconds(times)


def interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int, rounds: int = 5,
                warmup: int = 2) -> dict[str, Latency]:
    """Time each of ``fns`` about ``repeats`` times in ``rounds`` alternating rounds, after ``warmup`` calls each."""
    if not isinstance(fns, dict) or not fns:
        raise TypeError("fns must be a non-empty dict of name -> callable")
    for name, fn in fns.items():
        _check_callable(fn, f"fns[{name!r}]")
    repeats = check_int(repeats, "repeats", minimum=1)
    rounds = check_int(rounds, "rounds", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: Latency.from_seconds(ts) for name, ts in times.items()}


class Stopwatch:
    """Wall time per named stage, in seconds (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def time(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` timed as stage ``name``; returns its result."""
        with self.stage(name):
            return fn(*args, **kwargs)
