"""The pattern every explorer follows: controls -> numbers + one figure, redrawn in place.

An explorer is an ``ipywidgets.VBox`` holding

    title     HTML           what the explorer shows
    controls  dict[str, W]   sliders, dropdowns, checkboxes (``explorer.controls["bits"].value = 4``)
    image     widgets.Image  the figure as PNG, re-rendered after every change
    readout   widgets.HTML   the numbers, as a small table
    numbers   dict           the same numbers as floats, for tests and for the learner's own code

Why a PNG in an Image widget rather than an interactive backend: it needs no extension, renders
identically in JupyterLab, Voila (lecture mode) and a headless test, and the figure and its artists
are built once (``build``) and only updated (``render``), so a slider move costs one computation
and one Agg draw.
"""
from __future__ import annotations

import html
import io
import time
from typing import Any

import ipywidgets as widgets
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class Explorer(widgets.VBox):
    """Base class: subclasses implement ``build(fig)`` once and ``render(**values) -> dict`` per change.

    ``render`` updates the artists made in ``build`` and returns the numbers to show (name -> value);
    ``rows`` (optional) orders and labels them.
    """

    title_text = ""
    figsize = (10.0, 3.6)
    dpi = 80

    def __init__(self, controls: dict[str, widgets.Widget], *, title: str | None = None) -> None:
        self.controls = controls
        self.numbers: dict[str, Any] = {}
        self.redraws = 0
        self.last_render_seconds = 0.0
        self.fig = Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        FigureCanvasAgg(self.fig)
        self.build(self.fig)
        self._layout_done = False
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="1100px"))
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

    def _on_change(self, change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Recompute, redraw the figure in place and refresh the readout."""
        t0 = time.perf_counter()
        self.numbers = self.render(**self.values)
        self.readout.value = format_table(self.numbers)
        if not self._layout_done:
            # lay the axes out once (constrained layout costs a full extra draw), then freeze them
            self.fig.canvas.draw()
            self.fig.set_layout_engine(None)
            self._layout_done = True
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=self.dpi)
        self.image.value = buf.getvalue()
        self.redraws += 1
        self.last_render_seconds = time.perf_counter() - t0

    def save(self, path: str) -> None:
        """Write the current figure to ``path`` (PNG/SVG/PDF by extension)."""
        self.fig.savefig(path, dpi=110)


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
