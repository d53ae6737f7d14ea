"""Lecture-demo mode in headless Chromium: `python -m qlearn lecture NN` serves a code-free page.

For the first two lesson notebooks: start the documented command (Voila) on a free port, load the
page (one retry: Voila can hang on a first load), check that no code is shown, move the first
slider with the keyboard and check that the numbers and the plot changed, with no page error and
no Python traceback; then one more step must be shown by the page from the frames drawn ahead.
Screenshot: test-artifacts/lecture-NN_name.png. The server is stopped by its process-group id
whatever happens (after the failure screenshot, if any).
"""
from __future__ import annotations

import json

import browser_helpers as bh
import pytest

pytestmark = pytest.mark.browser

LECTURE_SAMPLE = bh.lesson_notebooks()[:2]  # each costs a Voila start and a full run


def test_at_least_two_lessons_for_lecture_mode():
    assert len(LECTURE_SAMPLE) == 2, f"lecture mode is tested on two lessons; found {LECTURE_SAMPLE}"


def load_with_one_retry(page, url: str, timeout_s: float) -> int:
    """Open the page and wait for a slider; reload once if either times out. Returns attempts used.

    Voila sends the page while it runs the notebook, so the load itself covers the run (timeout_s);
    the widgets then render within seconds.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in (1, 2):
        try:
            if attempt == 1:
                page.goto(url, timeout=timeout_s * 1000)
            else:
                page.reload(timeout=timeout_s * 1000)
            bh.first_slider(page, timeout_s=30)
            return attempt
        except (PlaywrightTimeout, AssertionError) as err:
            if attempt == 2:
                raise AssertionError(f"lecture page {url} failed to load twice: {err}") from None
    raise AssertionError("unreachable")


def first_code_lines(path) -> list[str]:
    """The first line of each code cell (none may appear on a code-free page), unless a markdown
    cell or an output quotes it too."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    quoted = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] != "code")
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"]).strip().splitlines()
            lines += [ln.strip() for ln in src[:1]
                      if len(ln.strip()) > 12 and not ln.strip().startswith("#") and ln.strip() not in quoted]
    return lines


@pytest.fixture
def lecture_server(request, run_dir, voila_ready):
    """`python -m qlearn lecture NN --no-browser` for the lesson in request.param; stopped afterwards.

    The test requests it before ``page``, so it is torn down after the page: a failure screenshot
    still sees the live page.
    """
    path = request.param
    number = path.name[:2]
    server = bh.start_lecture(run_dir / f"lecture-{number}", number, bh.notebooks_dir())
    server.notebook = path
    yield server
    server.stop()


@pytest.mark.parametrize("lecture_server", LECTURE_SAMPLE, ids=lambda p: p.stem, indirect=True)
def test_first_slider_updates_numbers_and_plot_in_lecture_mode(lecture_server, page):
    path = lecture_server.notebook
    attempts = load_with_one_retry(page, lecture_server.url, timeout_s=bh.seconds("QLEARN_RUN_ALL_TIMEOUT", 300))
    code_inputs = page.locator(".jp-CodeCell .jp-InputArea, .jp-CodeCell .jp-Editor, .jp-CodeCell .highlight")
    assert code_inputs.count() == 0, "lecture mode must not show code cells"
    body = page.locator("body").inner_text()
    shown = [ln for ln in first_code_lines(path) if ln in body]
    assert not shown, f"code is visible on the lecture page: {shown}"
    check, handle = bh.move_first_slider(page, page_errors=page.page_errors)
    cell = handle.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')][1]")
    bh.screenshot(page, f"lecture-{path.stem}", element=cell)
    problems = check.problems()
    assert not problems, f"{path.name} in lecture mode (page loads: {attempts}):\n- " + "\n- ".join(problems)
    bh.step_from_page(handle, f"{path.name} in lecture mode")  # Voila gets the frames drawn ahead too


class FlakyPage:
    """A stand-in page whose first ``hangs`` loads time out, as Voila's first load sometimes does."""

    def __init__(self, hangs: int):
        self.hangs, self.loads = hangs, 0

    def _load(self, url=None, timeout=None):
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.loads += 1
        if self.loads <= self.hangs:
            raise PlaywrightTimeout(f"load {self.loads} hung")

    goto = _load
    reload = _load


@pytest.mark.parametrize("hangs, loads", [(0, 1), (1, 2), (2, 2), (5, 2)])
def test_page_load_is_retried_once_and_only_once(hangs, loads, monkeypatch):
    bh.require()
    monkeypatch.setattr(bh, "first_slider", lambda page, timeout_s: None)
    page = FlakyPage(hangs)
    if hangs < 2:
        assert load_with_one_retry(page, "http://x/", timeout_s=1) == loads
    else:
        with pytest.raises(AssertionError, match="failed to load twice"):
            load_with_one_retry(page, "http://x/", timeout_s=1)
    assert page.loads == loads
