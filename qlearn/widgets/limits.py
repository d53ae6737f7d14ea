"""Axes limits that hold still while a slider moves, so a step seldom redraws an axes.

``set_limits`` is what every explorer calls instead of ``set_xlim``/``set_ylim`` per change;
``limits_snapshot``/``limits_restore`` let a frame drawn ahead (``qlearn.widgets.frames``) leave the
limits as the current picture has them.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from matplotlib.figure import Figure

LIMIT_FILL = 0.6  # set_limits keeps an axes' limits while the data still spans this fraction of them

_HELD_LIMITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # axes -> {"x"/"y": limits set_limits set}


def set_limits(ax: Any, axis: str, lo: float, hi: float, *, fill: float = LIMIT_FILL) -> None:
    """Show at least ``[lo, hi]`` on ``ax``'s ``axis`` ("x" or "y"), keeping the shown limits while they fit.

    The shown limits are kept while they contain ``[lo, hi]`` and ``[lo, hi]`` fills at least ``fill`` of
    them (in log units on a log axis); a small step beyond them grows them just enough (so the step back
    keeps them); otherwise they become exactly ``(lo, hi)``. An explorer's first
    picture (its default state, the committed figure) is therefore the same as with ``set_xlim``/``set_ylim``;
    a slider step that changes the data only a little leaves the axes, its ticks and labels as they were,
    so only the data artists are redrawn over the saved background (``Explorer._draw``): about a tenth of
    the cost of redrawing the axes. A large change still rescales the axes, as the lesson asks.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    get, put = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    scale = ax.get_xscale() if axis == "x" else ax.get_yscale()
    shown = tuple(get())
    held = _HELD_LIMITS.setdefault(ax, {})
    held_before = held.get(axis) == shown  # only limits this function set are kept (never build's or autoscale's)
    held_before = held_before and bool(np.isfinite(lo) and np.isfinite(hi) and lo < hi)  # else as set_xlim would
    if held_before and scale == "log":
        held_before = min(lo, *shown) > 0
    if held_before:
        log = scale == "log"  # compare spans in the axis' own units
        (a, b), (c, d) = sorted(np.log10(shown) if log else shown), ((np.log10(lo), np.log10(hi)) if log else (lo, hi))
        if a <= c and d <= b and (d - c) >= fill * (b - a):
            return  # the shown limits still fit: keep them
        u, v = min(a, c), max(b, d)  # the shown limits grown just enough to hold the data
        if (d - c) >= fill * (v - u):  # a small step out: grow, so that stepping back keeps them
            lo, hi = (10.0**u, 10.0**v) if log else (u, v)
    put(lo, hi)
    held[axis] = tuple(get())


def limits_snapshot(fig: Figure) -> list[tuple[Any, tuple, tuple, dict]]:
    """Every axes' limits and what ``set_limits`` holds: drawing a frame ahead must not move them."""
    return [(ax, ax.get_xlim(), ax.get_ylim(), dict(_HELD_LIMITS.get(ax, {}))) for ax in fig.axes]


def limits_restore(snapshot: list[tuple[Any, tuple, tuple, dict]]) -> None:
    for ax, xlim, ylim, held in snapshot:
        ax.set_xlim(xlim, auto=None)
        ax.set_ylim(ylim, auto=None)
        _HELD_LIMITS[ax] = held
