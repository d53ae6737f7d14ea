"""Every lesson notebook in JupyterLab, in headless Chromium, as a learner uses it.

For each notebooks/NN_*.ipynb (found by glob, so later notebooks are covered automatically):
open it, Run All Cells (`runmenu:run-all`), wait for the status bar to read Idle, move the FIRST
slider with the keyboard (focus the handle, End), and check that the numbers printed next to it
and the plot image changed, with no page error and no Python traceback. A screenshot after the
move lands in test-artifacts/lab-NN_name.png (and -cell.png: the slider's cell alone).
"""
from __future__ import annotations

import json
import textwrap

import browser_helpers as bh
import pytest

pytestmark = pytest.mark.browser

LESSONS = bh.lesson_notebooks()


def test_lesson_notebooks_are_found_and_each_has_a_slider():
    assert LESSONS, f"no lesson notebooks {bh.LESSON_GLOB} in {bh.notebooks_dir()}"
    without = [p.name for p in LESSONS if not bh.slider_sources(p)]
    assert not without, f"every lesson notebook needs at least one slider; none in {without}"


@pytest.fixture
def lab(lab_server, page, request):
    """The shared JupyterLab and a fresh page; the notebook's kernel is shut down afterwards."""
    yield lab_server, page
    bh.save_failure_artifacts(page, request)  # before the kernel goes away
    bh.shutdown_kernels(lab_server.url)


def open_and_run(page, server, api_path: str) -> None:
    bh.lab_open_notebook(page, server.url, api_path, timeout_s=bh.seconds("QLEARN_LOAD_TIMEOUT", 90))
    bh.lab_run_all(page, timeout_s=bh.seconds("QLEARN_RUN_ALL_TIMEOUT", 300))


def move_and_photograph(page, name: str, change_timeout_s: float = 60.0) -> bh.SliderCheck:
    check, handle = bh.move_first_slider(page, page_errors=page.page_errors,
                                         busy=lambda: bh.lab_busy(page), change_timeout_s=change_timeout_s)
    cell = handle.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')][1]")
    bh.screenshot(page, name, element=cell)
    return check


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_first_slider_updates_numbers_and_plot_in_jupyterlab(path, lab):
    server, page = lab
    open_and_run(page, server, f"notebooks/{path.name}")
    check = move_and_photograph(page, f"lab-{path.stem}")
    problems = check.problems()
    assert not problems, f"{path.name} in JupyterLab:\n- " + "\n- ".join(problems)


# ----------------------------------------------------------------------------- the check can fail
DEAD_SLIDER_CELL = textwrap.dedent("""\
    import io
    import ipywidgets as widgets
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3, 2)); fig.add_subplot().plot([0, 1], [1, 0])
    buf = io.BytesIO(); fig.savefig(buf, format="png"); png = buf.getvalue()
    s = widgets.IntSlider(value=3, min=0, max=9, description="dead")
    image = widgets.Image(value=png, format="png")
    numbers = widgets.HTML("mse = 0.125")
    def redraw(change):  # redraws, but nothing depends on the slider
        image.value = b""
        image.value = png  # same bytes, new blob: URL in the page
        numbers.value = "mse = 0.125"
    s.observe(redraw, "value")
    widgets.VBox([s, image, numbers])
""")


def test_the_check_reports_a_slider_that_changes_nothing(lab, lab_root):
    """A slider wired to nothing, then an error: the check must report all three problems."""
    server, page = lab
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": DEAD_SLIDER_CELL},
            {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
             "source": "raise RuntimeError('deliberate error for the self-test')"},
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (lab_root / "selftest" / "dead_slider.ipynb").write_text(json.dumps(nb))
    open_and_run(page, server, "selftest/dead_slider.ipynb")
    check = move_and_photograph(page, "selftest-dead_slider", change_timeout_s=5)
    problems = "\n".join(check.problems())
    assert check.before.value != check.after.value, "the keyboard should still move the slider"
    assert "numbers next to the slider did not change" in problems
    assert "plot image did not change" in problems
    assert "deliberate error for the self-test" in problems


# ----------------------------------------------------------------------------- steps drawn ahead
AHEAD_CELLS = [
    "import numpy as np\nfrom qlearn.widgets import clipping_explorer, quantize_explorer\n"
    "quantize_explorer(np.random.default_rng(0).standard_normal(20_000))",
    "clipping_explorer(n=20_000)",
]


def test_a_step_drawn_ahead_is_shown_by_the_page_itself(lab, lab_root):
    """Int, float-range and log sliders: the page and the kernel agree on the keys of the frames drawn ahead."""
    server, page = lab
    nb = {
        "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
                  for s in AHEAD_CELLS],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (lab_root / "selftest" / "drawn_ahead.ipynb").write_text(json.dumps(nb))
    open_and_run(page, server, "selftest/drawn_ahead.ipynb")
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    # (cell, slider index, what it is): quantize's bits (IntSlider) and range (FloatRangeSlider, low
    # handle), clipping's clip range (FloatLogSlider with a minimum off its step grid)
    for cell, index, what in ((0, 0, "IntSlider"), (0, 1, "FloatRangeSlider"), (1, 1, "FloatLogSlider")):
        slider = cells.nth(cell).locator(".jp-OutputArea .widget-slider").nth(index)
        bh.step_from_page(slider.locator(".noUi-handle").first, what)
    assert not bh.tracebacks_on_page(page)
