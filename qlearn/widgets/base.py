"""The pattern every explorer follows: controls -> numbers + one figure, redrawn in place.

An explorer is an ``ipywidgets.VBox`` holding

    title     HTML           what the explorer shows
    controls  dict[str, W]   sliders, dropdowns, checkboxes (``explorer.controls["bits"].value = 4``)
    image     widgets.Image  the figure (JPEG, see below), re-rendered after every change
    readout   widgets.HTML   the numbers, as a small table
    numbers   dict           the same numbers as floats, for tests and for the learner's own code

Why an image in an Image widget rather than an interactive backend: it needs no extension, renders
identically in JupyterLab, Voila (lecture mode) and a headless test, and the figure and its artists
are built once (``build``) and only updated (``render``), so a slider move costs one computation,
at most one Agg draw and one fast image encoding.

What makes a slider answer quickly (``update``, timed per step in ``timings``):

- one draw per change: the layout is computed once, then frozen;
- blitting where it applies: an axes whose limits, ticks or texts did not move keeps its pixels, and
  only the artists the change touched (lines, bars, markers; matplotlib marks them stale) are drawn
  again, over a saved picture of everything else (the background); axes that moved are redrawn whole;
- limits that hold still: ``set_limits`` keeps an axes' limits while the new data still fills them well,
  so a slider step seldom moves an axes (the default picture is the same as with ``set_ylim``);
- text drawn from a cache: tick labels, legends and titles are most of a redraw; ``TextCacheRenderer``
  keeps the glyph bitmaps and layouts Agg made (pixel-identical), so a redraw rasterizes no text again;
- a cheap image: JPEG at quality ``JPEG_QUALITY`` without chroma subsampling (4:4:4), ~10x faster to
  encode than a PNG of the same figure; at this quality text and thin coloured lines stay crisp (compared
  side by side with the PNG at 2x zoom). The static copy for readers without a kernel is a lossless PNG;
- a fast drag shows the newest value, not a queue of stale frames. The browser side of ipywidgets
  already keeps one message per widget in flight and sends only the newest value after it; on the
  kernel side, a change from the browser that arrives within ``THROTTLE_S`` of the last redraw (a drag,
  or several widgets at once) is drawn once, with whatever else arrived meanwhile, by a trailing redraw.
  An isolated move is drawn at once. Changes made in Python (``explorer.controls["bits"].value = 4``,
  tests) redraw synchronously.

Display size (readable on a projector): the figure is drawn at the pixel width it is shown at
(``DISPLAY["width_px"]``), with fonts sized for that width. Lecture mode (``QLEARN_LECTURE=1`` in
the kernel's environment, or ``set_lecture_mode(True)`` before building an explorer) draws larger text
on a wider image.

Without a kernel (GitHub, nbviewer, an HTML export, paper) the widget cannot render; the explorer's
display data therefore also carries its default figure as a static ``image/png`` (``_repr_mimebundle_``).
JupyterLab and Voila show the live widget only; the static picture is what a reader without a kernel sees.
"""
from __future__ import annotations

import asyncio
import base64
import html
import io
import os
import time
import traceback
import weakref
from typing import Any

import ipywidgets as widgets
import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from qlearn.widgets.text_cache import canvas_class

JPEG_QUALITY = 95  # with subsampling=0 (full-resolution colour): no visible ringing around text or lines
THROTTLE_S = 0.03  # a browser change this soon after the last redraw waits, collapsed with the ones behind it
LIMIT_FILL = 0.6  # set_limits keeps an axes' limits while the data still spans this fraction of them

# Text sizes in points for a figure shown ``width_px`` pixels wide; a 12-inch figure shown at 1100 px
# gives 1 pt = 1.27 px, so 10.5 pt legend text is ~13 px on screen (the old 7 pt at 80 dpi: ~7 px).
NOTEBOOK = {"width_px": 1100, "font_size": 11.0, "legend_size": 10.0, "tick_size": 10.0}
LECTURE = {"width_px": 1500, "font_size": 13.0, "legend_size": 12.0, "tick_size": 12.0}
DISPLAY = dict(LECTURE if os.environ.get("QLEARN_LECTURE", "") not in ("", "0") else NOTEBOOK)


def set_lecture_mode(on: bool = True) -> None:
    """Larger text on a wider image for a projector (explorers built afterwards).

    Lecture mode is also switched on by ``QLEARN_LECTURE=1`` in the kernel's environment.
    """
    DISPLAY.clear()
    DISPLAY.update(LECTURE if on else NOTEBOOK)


def rc_display() -> dict[str, Any]:
    """matplotlib rc settings for explorers' figures at the current display size."""
    size, legend, tick = DISPLAY["font_size"], DISPLAY["legend_size"], DISPLAY["tick_size"]
    return {
        "font.size": size, "axes.titlesize": size + 1, "axes.labelsize": size,
        "xtick.labelsize": tick, "ytick.labelsize": tick, "legend.fontsize": legend,
        "legend.title_fontsize": legend, "figure.titlesize": size + 2,
    }


class Explorer(widgets.VBox):
    """Base class: subclasses implement ``build(fig)`` once and ``render(**values) -> dict`` per change.

    ``render`` updates the artists made in ``build`` and returns the numbers to show (name -> value);
    ``rows`` (optional) orders and labels them.
    """

    title_text = ""
    figsize = (10.0, 3.6)
    blit = True  # redraw only the artists a change touched when nothing else moved (False: always redraw all)

    def __init__(self, controls: dict[str, widgets.Widget], *, title: str | None = None) -> None:
        self.controls = controls
        self._numbers: dict[str, Any] = {}
        self.redraws = 0
        self.last_render_seconds = 0.0
        self.timings: dict[str, float] = {}  # seconds of the last update: compute, draw, encode, send, total
        self._pending = False  # a browser change waits for the throttled redraw
        self._timer: Any = None
        self._last_update_end = 0.0
        self._background: Any = None  # the picture without what the last change touched (see _draw)
        self._background_key: Any = None
        self._background_control: Any = None
        self._changed_control: Any = None
        self._redraw_axes: set[int] = set()
        self._top_legends: list[Any] = []
        self._last_key: Any = None
        self._axes_keys: list[tuple] = []
        self.dpi = DISPLAY["width_px"] / self.figsize[0]  # drawn at the pixel width it is shown at
        self._rc = rc_display()
        self.fig = Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        canvas_class()(self.fig)
        with mpl.rc_context(self._rc):
            self.build(self.fig)
        self._layout_done = False
        self._rgb = np.zeros((1, 1, 3), np.uint8)  # the current picture, (H, W, 3) uint8
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(width="100%", max_width=f"{DISPLAY['width_px']}px"))
        self.readout = widgets.HTML(layout=widgets.Layout(min_height="2em"))
        self.title = widgets.HTML(f"<h3 style='margin:4px 0'>{html.escape(title or self.title_text)}</h3>")
        box = widgets.HBox(
            list(controls.values()), layout=widgets.Layout(flex_flow="row wrap", align_items="center")
        )
        super().__init__([self.title, box, self.image, self.readout])
        for control in controls.values():
            control.observe(self._on_change, names="value")
        self.update()

    # ------------------------------------------------------------------ subclass API
    def build(self, fig: Figure) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self, **values: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ machinery
    @property
    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items()}

    @property
    def numbers(self) -> dict[str, Any]:
        """The numbers of the current control values (a throttled redraw still pending is done first)."""
        if self._pending:
            self._flush()
        return self._numbers

    @numbers.setter
    def numbers(self, value: dict[str, Any]) -> None:
        self._numbers = value

    def _on_change(self, change: dict) -> None:
        owner = change.get("owner")
        self._changed_control = owner
        from_browser = bool(getattr(owner, "_property_lock", None))  # set while applying a frontend message
        loop = _running_loop() if from_browser else None
        if loop is None:  # Python code or a test set the value: redraw now, synchronously
            self._cancel_timer()
            self.update()
            return
        self._pending = True
        if self._timer is not None:
            return  # a trailing redraw is already scheduled: it will draw the newest values
        wait = self._last_update_end + THROTTLE_S - time.perf_counter()
        if wait <= 0:
            self._flush()  # the first change of a burst is drawn at once
        else:
            self._timer = loop.call_later(wait, self._flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = False

    def _flush(self) -> None:
        self._cancel_timer()
        try:
            self.update()
        except Exception:  # a callback of the event loop: show the error where the learner looks
            self.readout.value = f"<pre style='color:#b00'>{html.escape(traceback.format_exc())}</pre>"
            raise

    def update(self) -> None:
        """Recompute, redraw the figure in place and refresh the readout."""
        t0 = time.perf_counter()
        self._pending = False
        with mpl.rc_context(self._rc):
            self._numbers = self.render(**self.values)
            t1 = time.perf_counter()
            rgb = self._draw()
        t2 = time.perf_counter()
        buf = io.BytesIO()
        self._rgb = rgb.copy()  # the canvas is drawn over by the next change (and by savefig)
        Image.fromarray(self._rgb).save(buf, format="jpeg", quality=JPEG_QUALITY, subsampling=0)
        jpeg = buf.getvalue()
        t3 = time.perf_counter()
        self.readout.value = format_table(self._numbers)
        self.image.value = jpeg  # sent to the browser now (a binary buffer, no base64)
        t4 = time.perf_counter()
        self.redraws += 1
        self._last_update_end = t4
        self.last_render_seconds = t4 - t0
        self.timings = {"compute": t1 - t0, "draw": t2 - t1, "encode": t3 - t2, "send": t4 - t3, "total": t4 - t0}

    def _draw(self) -> np.ndarray:
        """Draw what changed over a saved background; (H, W, 3) uint8 RGB, a view of the canvas.

        Per change, an axes whose limits, ticks or texts moved (``_axes_key``) is redrawn whole; in the
        other axes only the artists ``render`` touched (matplotlib marks them stale) are redrawn. The
        rest comes from a background drawn once without them, reused while the same slider moves.
        """
        canvas = self.fig.canvas
        axes = self.fig.axes
        if not self._layout_done:
            # lay the axes out once (constrained layout costs a full extra draw), then freeze them
            canvas.draw()
            self.fig.set_layout_engine(None)
            self._layout_done = True
            self._background, self._background_key, self._redraw_axes = None, None, set()
            self._axes_keys = [self._axes_key(ax) for ax in axes]
            return np.asarray(canvas.buffer_rgba())[..., :3]
        keys = [self._axes_key(ax) for ax in axes]
        figure_changed = any(a.stale for a in (*self.fig.texts, *self.fig.legends, *self.fig.images))
        if not self.blit or figure_changed or len(keys) != len(self._axes_keys):
            canvas.draw()
            self._background, self._background_key, self._axes_keys = None, None, keys
            return np.asarray(canvas.buffer_rgba())[..., :3]
        moved = {i for i, (k, old) in enumerate(zip(keys, self._axes_keys)) if k != old or self._frame_stale(axes[i])}
        self._axes_keys = keys
        if self._background_control is self._changed_control:
            moved |= self._redraw_axes  # the same slider again: it will move the same axes again
        bounds = [tuple(ax.get_position().bounds) for ax in axes]
        redraw = {j for i in moved for j in range(len(axes)) if bounds[j] == bounds[i]}  # twins go together
        changed = sorted((c for i, ax in enumerate(axes) if i not in redraw for c in self._stale_children(ax)),
                         key=lambda a: a.get_zorder())
        key = (tuple(sorted(redraw)), tuple(k for i, k in enumerate(keys) if i not in redraw), tuple(map(id, changed)))
        renderer = canvas.get_renderer()
        if key == self._background_key and self._background is not None:
            canvas.restore_region(self._background)  # the unchanged part of the picture
        elif key != self._last_key:
            # a new pattern of change: one plain draw. A background (which costs more than a plain draw)
            # is made only when the next change repeats this pattern, as moves of one slider do
            self._last_key = key
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., :3]
        else:
            # a legend stays in the background unless a changed artist runs under it (then it is drawn
            # on top of them each time, as matplotlib would: legends have a higher zorder than lines)
            extents = [a.get_window_extent(renderer) for a in changed]
            self._top_legends = [
                ax.get_legend() for i, ax in enumerate(axes)
                if i not in redraw and ax.get_legend() is not None
                and any(e.overlaps(ax.get_legend().get_window_extent(renderer)) for e in extents)]
            hidden = [*changed, *self._top_legends, *(axes[i] for i in sorted(redraw))]
            shown = [a.get_visible() for a in hidden]
            for artist in hidden:  # everything else, drawn once and kept as the background
                artist.set_visible(False)
            canvas.draw()
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            self._background_key, self._redraw_axes = key, redraw
            self._background_control = self._changed_control
            for artist, visible in zip(hidden, shown):
                artist.set_visible(visible)
        for artist in [*changed, *self._top_legends, *(axes[i] for i in sorted(redraw))]:
            artist.draw(renderer)  # touched artists, legends over them, then whole axes that moved
        return np.asarray(canvas.buffer_rgba())[..., :3]

    @staticmethod
    def _frame_stale(ax: Any) -> bool:
        """The axes' own frame changed (face colour, spines): the whole axes is redrawn.

        An invisible artist is never drawn, so it stays stale forever (a twin axes' patch): not counted.
        """
        return any(a.stale and a.get_visible() for a in (ax.patch, *ax.spines.values()))

    @staticmethod
    def _stale_children(ax: Any) -> list[Any]:
        """Artists inside ``ax`` that changed since the last draw (titles, axes, legend: see _axes_key).

        Titles are never hidden for a background: Axes.draw would move the visible ones off the figure.
        """
        skip = {id(ax.title), id(ax._left_title), id(ax._right_title), id(ax.xaxis), id(ax.yaxis),
                id(ax.get_legend()), id(ax.patch), *(id(s) for s in ax.spines.values())}
        return [c for c in ax.get_children() if c.stale and id(c) not in skip]

    @staticmethod
    def _axes_key(ax: Any) -> tuple:
        """What an axes' frame depends on: limits, scales, tick rules, titles, labels, legend texts."""
        texts: list[Any] = [t.get_text() for t in (ax.title, ax._left_title, ax._right_title,
                                                   ax.xaxis.label, ax.yaxis.label)]
        legend = ax.get_legend()
        if legend is not None:
            texts += [id(legend)] + [t.get_text() for t in legend.get_texts()]
        ticks = []
        for axis in (ax.xaxis, ax.yaxis):
            loc, fmt = axis.get_major_locator(), axis.get_major_formatter()
            ticks += [id(loc), id(fmt), tuple(np.ravel(getattr(loc, "locs", ()))), tuple(getattr(fmt, "seq", ()))]
        return (tuple(ax.get_xlim()), tuple(ax.get_ylim()), ax.get_xscale(), ax.get_yscale(), tuple(texts),
                tuple(map(str, ticks)), ax.get_visible())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        """The live widget, plus the current figure as a static PNG and the numbers as text.

        Frontends with a widget manager (JupyterLab, Voila) render the widget only; a notebook viewed
        without a kernel, or exported by nbconvert, shows the PNG (the explorer's default figure).
        """
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        if isinstance(bundle, tuple):  # (data, metadata)
            data, metadata = bundle
        else:
            data, metadata = bundle, {}
        data = dict(data)
        data["image/png"] = base64.b64encode(self.png()).decode("ascii")
        data["text/plain"] = f"{self.title_text or type(self).__name__}\n" + "\n".join(
            f"{k}: {format_value(v)}" for k, v in self.numbers.items())
        width, height = (int(round(v * self.dpi)) for v in self.figsize)
        metadata = {**metadata, "image/png": {"width": width, "height": height}}
        return data, metadata

    def png(self) -> bytes:
        """The current picture as a lossless PNG (what the static copy in the notebook holds)."""
        buf = io.BytesIO()
        Image.fromarray(self._rgb).save(buf, format="png", optimize=False)
        return buf.getvalue()

    def save(self, path: str) -> None:
        """Write the current figure to ``path`` (PNG/SVG/PDF by extension)."""
        self.fig.savefig(path, dpi=110)


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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of a live kernel (comm messages are handled inside it), or None (plain Python)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:d}"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.4g}" if (abs(v) >= 1e-3 or v == 0) else f"{v:.3e}"
    return html.escape(str(v))


def format_table(numbers: dict[str, Any]) -> str:
    """A compact two-column HTML table of name -> value (learner-readable, monospace numbers)."""
    cells = "".join(
        f"<tr><td style='padding:1px 10px 1px 0'>{html.escape(k)}</td>"
        f"<td style='font-family:monospace;text-align:right'>{format_value(v)}</td></tr>"
        for k, v in numbers.items()
    )
    return f"<table style='font-size:13px'>{cells}</table>"


def slider(description: str, value: float, lo: float, hi: float, step: float, **kw: Any) -> widgets.FloatSlider:
    """A FloatSlider with a readable label width (the shared look of every explorer)."""
    return widgets.FloatSlider(
        value=value, min=lo, max=hi, step=step, description=description,
        style={"description_width": "initial"}, continuous_update=kw.pop("continuous_update", True), **kw,
    )


def int_slider(description: str, value: int, lo: int, hi: int, **kw: Any) -> widgets.IntSlider:
    return widgets.IntSlider(
        value=value, min=lo, max=hi, description=description, style={"description_width": "initial"}, **kw
    )
