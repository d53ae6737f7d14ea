"""What every explorer shares around its figure: sliders with readable labels, and the numbers table.

``slider``/``int_slider`` make the controls look alike in every lesson; ``format_table`` writes an
explorer's numbers (name -> value) as the small HTML table under its figure (``FrameView.readout``).
"""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets


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
