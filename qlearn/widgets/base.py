"""The pattern every explorer follows: controls -> numbers + one figure, redrawn in place.

An explorer is an ``ipywidgets.VBox`` holding

    title     HTML           what the explorer shows
    controls  dict[str, W]   sliders, dropdowns, checkboxes (``explorer.controls["bits"].value = 4``)
    image     FrameView      the figure (``image.value``: JPEG, see below) and the numbers as a small
                             table under it (``image.readout``: HTML), re-rendered after every change
    numbers   dict           the same numbers as floats, for tests and for the learner's own code

Why a picture drawn by matplotlib rather than an interactive backend: it renders identically in
JupyterLab, Voila (lecture mode) and a headless test, and the figure and its artists are built once
(``build``) and only updated (``render``), so a slider move costs one computation, at most one Agg
draw and one fast image encoding. ``FrameView`` (``qlearn.widgets.frames``) is a small anywidget: its
JavaScript ships with the package, so it needs no build and no network.

What makes a slider answer quickly (``_update``, timed per step in ``timings``):

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
- the next step drawn ahead: while a page shows the explorer, the kernel draws the pictures one slider
  step away and sends them to the page, which shows such a step at once, without a round trip
  (``qlearn.widgets.frames``); drawn ahead at idle, one frame per turn of the event loop, so a real
  change waits for at most one frame;
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
from typing import Any

import ipywidgets as widgets
import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from qlearn.widgets.controls import format_table, format_value
from qlearn.widgets.frames import DRAW_AHEAD, FrameCache, FrameView, control_key, neighbour_states, state_key
from qlearn.widgets.limits import limits_restore, limits_snapshot
from qlearn.widgets.text_cache import canvas_class

JPEG_QUALITY = 95  # with subsampling=0 (full-resolution colour): no visible ringing around text or lines
THROTTLE_S = 0.03  # a browser change this soon after the last redraw waits, collapsed with the ones behind it
DRAG_GAP_S, DRAG_HOLD_S = 0.3, 0.25  # changes this close are a drag: draw nothing ahead until it has rested this long

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
        self.last_update_held = False
        self._pending = False  # a browser change waits for the throttled redraw
        self._timer: Any = None
        self._last_update_end = 0.0
        self._last_change = -1.0  # perf_counter() of the last _update
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
        self._rgb_key: str | None = None  # the state _rgb shows, and the one the figure's artists hold
        self._figure_key: str | None = None
        self._frames = FrameCache()  # drawn frames, kept while a page shows the explorer
        self._live = False  # a page shows it (its view said "ready"): draw ahead
        self._ahead: list[tuple[str, str, Any]] = []  # (key, control, value) still to draw ahead
        self._sent: set[str] = set()  # keys the page was sent since its view appeared
        self._parts: list[Any] = []  # control_key of every control at the last update
        self._moved: tuple[str | None, int] = (None, 1)  # the control moved last, and which way
        self.image = FrameView(list(controls.values()),
                               layout=widgets.Layout(width="100%", max_width=f"{DISPLAY['width_px']}px"))
        self.image.on_ready(self._view_ready)
        self.title = widgets.HTML(f"<h3 style='margin:4px 0'>{html.escape(title or self.title_text)}</h3>")
        box = widgets.HBox(
            list(controls.values()), layout=widgets.Layout(flex_flow="row wrap", align_items="center")
        )
        super().__init__([self.title, box, self.image])
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
            self._update()
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
            self._update()
        except Exception:  # a callback of the event loop: show the error where the learner looks
            error = f"<pre style='color:#b00'>{html.escape(traceback.format_exc())}</pre>"
            self._frames.clear()
            self._sent = set()
            self.image.show("error", self.image.value, error, new_generation=True)
            raise

    def update(self) -> None:
        """Recompute and redraw for the current control values, after a change the controls do not show.

        (New data, another run.) Frames drawn before are dropped, here and in the page.
        """
        self._frames.clear()
        self._sent, self._ahead = set(), []  # the page drops its frames too (a new generation)
        self._update(new_generation=True)

    def _update(self, *, new_generation: bool = False) -> None:
        """Recompute, redraw the figure in place and refresh the readout (a frame drawn ahead if there is one)."""
        t0 = time.perf_counter()
        self._pending = False
        parts = [control_key(c) for c in self.controls.values()]
        key = state_key(parts)
        self._note_move(parts)
        held = self._frames.get(key) if self._live else None
        self.last_update_held = held is not None  # this step's frame had been drawn ahead
        if held is not None:  # drawn ahead: no computation, no draw
            jpeg, numbers, readout = held
            self._numbers = dict(numbers)
            t1 = t2 = t3 = time.perf_counter()
        else:
            with mpl.rc_context(self._rc):
                self._numbers = self.render(**self.values)
                t1 = time.perf_counter()
                rgb = self._draw()
            t2 = time.perf_counter()
            self._rgb = rgb.copy()  # the canvas is drawn over by the next change (and by savefig)
            self._rgb_key = self._figure_key = key
            jpeg = _jpeg(self._rgb)
            readout = format_table(self._numbers)
            t3 = time.perf_counter()
            if self._live:
                self._frames.put(key, jpeg, self._numbers, readout)
            self.redraws += 1
        self.image.show(key, jpeg, readout, new_generation=new_generation)  # sent now (binary, no base64)
        self._sent.add(key)
        t4 = time.perf_counter()
        self._last_update_end = t4
        self.last_render_seconds = t4 - t0
        self.timings = {"compute": t1 - t0, "draw": t2 - t1, "encode": t3 - t2, "send": t4 - t3, "total": t4 - t0}
        if self._live:  # a change soon after the last one is part of a drag: let it end before drawing ahead
            self._plan_ahead(first=True, hold_s=DRAG_HOLD_S if t0 - self._last_change < DRAG_GAP_S else 0.0)
        self._last_change = t0

    # ------------------------------------------------------------------ drawing the next steps ahead
    def _note_move(self, parts: list[Any]) -> None:
        """Remember which control moved since the last update, and which way (to draw its next step first)."""
        for name, old, new in zip(self.controls, self._parts, parts):
            if old != new:
                down = isinstance(old, (int, float)) and isinstance(new, (int, float)) and new < old
                self._moved = (name, -1 if down else 1)
                break
        self._parts = parts

    def _view_ready(self) -> None:
        """A page shows the explorer: from now on frames are kept and the next steps drawn ahead."""
        self._live = DRAW_AHEAD.enabled
        self._sent = {self.image.key}
        self._plan_ahead(first=False)

    def _plan_ahead(self, *, first: bool, hold_s: float = 0.0) -> None:
        """The next steps to draw, most likely first; the explorer changed last is served first."""
        self._ahead = neighbour_states(self.controls, *self._moved)
        DRAW_AHEAD.want(self, _running_loop(), first=first, hold_s=hold_s)

    def draw_one_ahead(self) -> bool:
        """Draw (or send) one frame the page may need next; False when there is nothing left to do."""
        if self._pending or self._timer is not None:
            return False  # a real change waits: it goes first, and plans the next steps again
        while self._ahead:
            key, name, value = self._ahead.pop(0)
            if key in self._sent:
                continue
            held = self._frames.get(key)
            if held is None:
                snapshot = limits_snapshot(self.fig)
                self._figure_key = None  # the figure leaves the current state (_current_figure brings it back)
                changed, self._changed_control = self._changed_control, self.controls[name]
                try:
                    with mpl.rc_context(self._rc):
                        numbers = self.render(**{**self.values, name: value})
                        rgb = self._draw()  # as a real step of that control is drawn: blitted where it applies
                    held = (_jpeg(rgb), numbers, format_table(numbers))
                finally:
                    limits_restore(snapshot)  # as if drawn from the current state, like a real step
                    self._changed_control = changed
                self._frames.put(key, *held)
            jpeg, _, readout = held
            self.image.push(key, jpeg, readout)
            self._sent.add(key)
            return True
        return False

    def _current_figure(self) -> None:
        """Bring the figure (and ``_rgb``) back to the controls' values if a frame drawn ahead or held changed it."""
        key = state_key([control_key(c) for c in self.controls.values()])
        if self._rgb_key == key and self._figure_key == key:
            return
        with mpl.rc_context(self._rc):
            self.render(**self.values)
            self.fig.canvas.draw()
        self._rgb = np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()
        self._rgb_key = self._figure_key = key
        self._background, self._background_key, self._last_key = None, None, None

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
        self._current_figure()
        buf = io.BytesIO()
        Image.fromarray(self._rgb).save(buf, format="png", optimize=False)
        return buf.getvalue()

    def save(self, path: str) -> None:
        """Write the current figure to ``path`` (PNG/SVG/PDF by extension)."""
        self._current_figure()
        self.fig.savefig(path, dpi=110)


def _jpeg(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> JPEG at JPEG_QUALITY, full-resolution colour (4:4:4)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="jpeg", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of a live kernel (comm messages are handled inside it), or None (plain Python)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
