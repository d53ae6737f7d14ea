"""Fixtures of the browser suite: one JupyterLab server and one Chromium per test session.

Missing Chromium/Playwright skips these tests with an install hint on a developer's machine, and
fails them in CI (CI=true). Every server started here is stopped by its process-group id at teardown.
A test that fails leaves a screenshot (``test-artifacts/<test>-FAILED.png``) and the server logs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # browser_helpers, whatever pytest's import mode
import browser_helpers as bh  # noqa: E402


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)  # lets the page fixture see a failure


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """One temporary folder for every Jupyter/IPython/matplotlib folder of this test run."""
    return tmp_path_factory.mktemp("qlearn-browser")


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium (fresh temporary profile, removed on close) via Playwright."""
    bh.require()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=bh.find_chromium(), headless=True, args=bh.CHROMIUM_ARGS)
    except BaseException:
        pw.stop()
        raise
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture(scope="session")
def voila_ready(browser):
    """Lecture pages also need Voila (skip or fail like the browser itself)."""
    bh.require(voila=True)


@pytest.fixture(scope="session")
def lab_root(run_dir) -> Path:
    """JupyterLab's root: ``notebooks`` links to the lessons, ``selftest`` holds generated notebooks.

    Serving through a link keeps the repository untouched (checkpoints go to run_dir, autosave is
    off) while the kernel's working folder is the real notebooks/ folder, as for a learner.
    """
    root = run_dir / "lab-root"
    (root / "selftest").mkdir(parents=True)
    (root / "notebooks").symlink_to(bh.notebooks_dir(), target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def lab_server(run_dir, lab_root, browser):
    """One JupyterLab server for the whole session (starting one costs seconds on 2 cores)."""
    server = bh.start_jupyterlab(run_dir / "lab", lab_root)
    yield server
    try:
        bh.shutdown_kernels(server.url)
    finally:
        server.stop()


@pytest.fixture
def page(browser, request):
    """A fresh browser context and page; collects page errors; screenshots the page on failure."""
    context = browser.new_context(viewport=bh.VIEWPORT)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.page_errors = []  # uncaught JavaScript exceptions
    pg.console_errors = []
    pg.on("pageerror", lambda err: pg.page_errors.append(str(err)))
    pg.on("console", lambda msg: msg.type == "error" and pg.console_errors.append(msg.text))
    yield pg
    bh.save_failure_artifacts(pg, request)
    context.close()

