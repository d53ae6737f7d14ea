"""The time limit of a check: ``time_limit(seconds)`` raises ``CheckTimeout`` in the running code.

Used by the notebook's check, by the grader's sandboxed runner (per cell and per group of cases) and
by the grader's own process (never around learner code there: it only judges plain data).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CheckTimeout", "time_limit", "on_timeout"]


class CheckTimeout(BaseException):
    """Raised inside a learner's code when a time limit runs out.

    A ``BaseException`` (like ``KeyboardInterrupt``), so ``except Exception`` in the learner's code
    does not swallow it.
    """



# Called (without arguments) whenever a time limit fires; the grader's runner sets it to record the
# moment, so that code which swallows the CheckTimeout is killed soon after instead of at the end.
on_timeout: Callable[[], None] | None = None


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``CheckTimeout`` in the running code after ``seconds`` (main thread of a POSIX process).

    Uses SIGALRM, which interrupts Python loops (``while True: pass``) but not a long C call, nor code
    that catches BaseException and carries on; the grader's kill of the whole process covers those.
    Elsewhere (another thread, Windows) this is a no-op.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        if on_timeout is not None:
            on_timeout()
        raise CheckTimeout(f"ran longer than {seconds:g} s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:  # an enclosing time_limit is running: re-arm what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))
