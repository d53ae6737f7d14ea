"""Explorers without a kernel, and the machinery that makes sliders answer fast (no timing here:
speed lives in benchmarks/bench_browser_sliders.py and benchmarks/bench_sliders.py).

- An executed lesson notebook exported to HTML by nbconvert, without widget state, carries each
  explorer's default figure as an <img> (the static ``image/png`` of ``Explorer._repr_mimebundle_``).
- The display data holds the live widget AND the PNG in ONE output, so JupyterLab (which renders one
  MIME type per output, the widget first) cannot show the figure twice.
- Blitting (redrawing only what a change touched) gives the picture a full redraw gives.
- Changes from Python redraw synchronously; a burst of changes from the browser is collapsed into
  the newest value.
"""
from __future__ import annotations

import asyncio
import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _full_redraw(ex) -> np.ndarray:
    """The same figure drawn from scratch by matplotlib (no blitting), as an (H, W, 3) array."""
    ex.fig.canvas.draw()
    return np.asarray(ex.fig.canvas.buffer_rgba())[..., :3].astype(np.int16)


# ----------------------------------------------------------------------------- without a kernel
def test_display_data_has_the_widget_a_png_and_text():
    from IPython.core.formatters import DisplayFormatter

    from qlearn.widgets import quantize_explorer

    ex = quantize_explorer(n=20_000, bits=3)
    data, metadata = DisplayFormatter().format(ex)
    assert WIDGET_VIEW in data, "the live widget must still be displayed"
    png = base64.b64decode(data["image/png"])
    assert png.startswith(b"\x89PNG")
    live = _pixels(ex.image.value)  # JPEG 4:4:4 at quality 95: within a few levels of the lossless PNG
    assert np.abs(_pixels(png) - live).mean() < 2.0, "the static PNG is the widget's current figure"
    assert "scale S" in data["text/plain"]
    w, h = Image.open(io.BytesIO(png)).size
    assert metadata["image/png"] == {"width": w, "height": h}


def test_executed_lesson_exported_to_html_shows_every_explorer_figure(tmp_path):
    """Notebook 01 executed as tests/test_notebooks.py does, exported by nbconvert's HTML exporter
    without widget state: every explorer it displays appears as a PNG <img> in the HTML."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    path = ROOT / "notebooks" / "01_quantize_dequantize.ipynb"
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert "widgets" not in nb.metadata
    explorer_outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                        if WIDGET_VIEW in o.get("data", {})]
    assert explorer_outputs, "notebook 01 displays at least one explorer"
    assert all("image/png" in o["data"] for o in explorer_outputs), "each explorer output carries a static PNG"
    body, _ = HTMLExporter().from_notebook_node(nb)
    (tmp_path / "01.html").write_text(body)
    for out in explorer_outputs:
        b64 = out["data"]["image/png"].replace("\n", "")
        assert b64[:200] in body.replace("\n", ""), "the explorer's PNG is in the HTML"
    images = re.findall(r'<img[^>]+src="data:image/png;base64,', body)
    assert len(images) >= len(explorer_outputs)


# ----------------------------------------------------------------------------- blitting
@pytest.mark.parametrize("moves", [
    [("bits", 4), ("bits", 5), ("bits", 6)],           # the grid changes, the error axis rescales
    [("symmetric", True), ("symmetric", False)],
])
def test_blitted_picture_equals_a_full_redraw(moves):
    from qlearn.widgets import quantize_explorer

    ex = quantize_explorer(n=20_000)
    for name, value in moves:
        ex.controls[name].value = value
        blitted = ex._rgb.astype(np.int16)  # what was encoded for the browser, before the lossy step
        full = _full_redraw(ex)
        assert blitted.shape == full.shape
        differ = np.abs(blitted - full).max(axis=2) > 48
        # changed artists are drawn over the background, not between other artists: a few pixels
        # where a line crosses another may differ; nothing else may
        assert differ.mean() < 0.003, f"{name}={value}: {100 * differ.mean():.2f} % of pixels differ"


def test_a_move_that_changes_only_data_is_blitted():
    """The pipeline explorer's bit slider moves only markers and grid lines inside fixed axes: the
    background made at the second move is reused for the third."""
    from qlearn.widgets.pipeline import pipeline_explorer

    ex = pipeline_explorer()
    slider = ex.controls["bits"]
    options = list(slider.options)
    ex.controls["bits"].value = options[1]  # a first move: one plain draw
    ex.controls["bits"].value = options[2]  # the same kind of move again: the background is made
    key = ex._background_key
    assert key is not None, "a change inside fixed axes should take the blit path"
    ex.controls["bits"].value = options[3]
    assert ex._background_key == key  # same background, only the changed artists redrawn
    np.testing.assert_array_less(np.abs(ex._rgb.astype(np.int16) - _full_redraw(ex)).max(axis=2).mean(), 1.0)


# ----------------------------------------------------------------------------- synchronous vs coalesced
def test_python_changes_redraw_synchronously():
    from qlearn.widgets import quantize_explorer

    ex = quantize_explorer(n=20_000, bits=3)
    png0, redraws = ex.image.value, ex.redraws
    ex.controls["bits"].value = 6
    assert ex.redraws == redraws + 1 and ex.image.value != png0
    assert ex.numbers["integers q"].startswith("[0, 63]")
    assert set(ex.timings) == {"compute", "draw", "encode", "send", "total"}


def _run_in_own_loop(coro):  # type: ignore[no-untyped-def]
    """asyncio.run on a thread of its own: an earlier test in this process (Playwright's sync API, the
    browser tests) may leave this thread's event loop marked as running."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_a_burst_from_the_browser_draws_the_newest_value_once():
    """Changes applied from frontend messages (property lock held, inside a running event loop) are
    throttled: the first draws at once, the rest of the burst collapses into one trailing redraw."""
    from qlearn.widgets import quantize_explorer

    ex = quantize_explorer(n=20_000, bits=3)
    slider = ex.controls["bits"]

    async def burst():
        await asyncio.sleep(0.1 + 2 * ex.last_render_seconds)  # the learner moves the slider a while after it showed
        start = ex.redraws
        for b in (4, 5, 6, 7, 8):
            with slider._lock_property(value=b):  # what ipywidgets does while applying a browser message
                slider.value = b
        drawn_during = ex.redraws - start
        await asyncio.sleep(0.5 + 2 * ex.last_render_seconds)
        return drawn_during, ex.redraws - start

    during, total = _run_in_own_loop(burst())
    assert during == 1, "the first change of a burst is drawn at once, the others wait"
    assert total == 2, "one trailing redraw for the rest of the burst"
    assert ex.numbers["integers q"].startswith("[0, 255]"), "the newest value is the one shown"


def test_numbers_read_during_a_pending_burst_are_current():
    from qlearn.widgets import quantize_explorer

    ex = quantize_explorer(n=20_000, bits=3)
    slider = ex.controls["bits"]

    async def burst():
        for b in (4, 5):
            with slider._lock_property(value=b):
                slider.value = b
        return ex.numbers["integers q"]  # reading the numbers draws the pending change first

    assert _run_in_own_loop(burst()).startswith("[0, 31]")


def test_lecture_mode_draws_larger_text_on_a_wider_image():
    from qlearn.widgets import base, quantize_explorer

    normal = quantize_explorer(n=20_000)
    base.set_lecture_mode(True)
    try:
        lecture = quantize_explorer(n=20_000)
    finally:
        base.set_lecture_mode(False)
    assert lecture.dpi * lecture.figsize[0] > normal.dpi * normal.figsize[0]
    tick = lambda ex: ex.ax_hist.xaxis.get_ticklabels()[0].get_fontsize()  # noqa: E731
    assert tick(lecture) > tick(normal) >= 10
    legend = lambda ex: ex.ax_hist.get_legend().get_texts()[0].get_fontsize()  # noqa: E731
    assert legend(lecture) > legend(normal) >= 10
