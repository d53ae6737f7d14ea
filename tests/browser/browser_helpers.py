"""What the browser tests do, in small named steps: servers, JupyterLab actions, slider checks.

Servers (JupyterLab, Voila) run as child processes in their own process group, with every Jupyter
and matplotlib folder isolated under one temporary directory, and are stopped by process id.
Pages are driven by Playwright (Python) on the system's Chromium; nothing is downloaded.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"  # screenshots and server logs (ignored by git)
LESSON_GLOB = "[0-9][0-9]_*.ipynb"

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 900}

# JupyterLab user settings written for the test run: no news pop-up over the page, every cell in
# the DOM (no virtual scrolling, so the first slider can be found), and never save the lessons.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}

INSTALL_HINT = (
    "Install what is missing with `sudo bash .ci/install_browser.sh` (Debian/Ubuntu: apt-get install chromium) "
    "and `pip install playwright voila`. Do not run `playwright install`: the tests drive the system "
    "Chromium (set QLEARN_CHROMIUM=/path/to/chromium to use another build)."
)


def seconds(name: str, default: float) -> float:
    """A timeout from the environment (e.g. QLEARN_RUN_ALL_TIMEOUT=600 on a slow machine)."""
    return float(os.environ.get(name, default))


# ----------------------------------------------------------------------------- what to test
def notebooks_dir() -> Path:
    """The lesson folder: notebooks/, or QLEARN_NOTEBOOKS_DIR (to try the suite on other notebooks)."""
    return Path(os.environ.get("QLEARN_NOTEBOOKS_DIR") or REPO_ROOT / "notebooks").resolve()


def lesson_notebooks() -> list[Path]:
    """Every lesson notebook NN_*.ipynb, so notebooks added later are tested automatically."""
    return sorted(notebooks_dir().glob(LESSON_GLOB))


def slider_sources(path: Path) -> list[str]:
    """Code cells that make a slider: an ipywidgets slider, ``interact``, or a qlearn explorer.

    A quick static check with a clear message; the browser test is the real one.
    """
    nb = json.loads(path.read_text(encoding="utf-8"))
    pattern = re.compile(r"slider|interact|explorer", re.IGNORECASE)
    out = []
    for cell in nb.get("cells", []):
        src = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "code" and pattern.search(src):
            out.append(src)
    return out


def find_chromium() -> str | None:
    """Path of the system Chromium: $QLEARN_CHROMIUM, else `chromium` / `chromium-browser` on PATH."""
    explicit = os.environ.get("QLEARN_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_tools(*, voila: bool = False) -> list[str]:
    """What the browser suite needs and this machine lacks (empty list: all there)."""
    import importlib.util

    missing = []
    if find_chromium() is None:
        missing.append("Chromium (Debian package `chromium`)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the Python package `playwright`")
    if importlib.util.find_spec("jupyterlab") is None:
        missing.append("the Python package `jupyterlab`")
    if voila and importlib.util.find_spec("voila") is None:
        missing.append("the Python package `voila`")
    return missing


def require(*, voila: bool = False) -> None:
    """Skip (developer machine) or fail (CI=true) when the browser tooling is missing."""
    import pytest

    missing = missing_tools(voila=voila)
    if not missing:
        return
    message = f"browser tests need {', '.join(missing)}. {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so this is an error, not a skip: {message}", pytrace=False)
    pytest.skip(message)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120]


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(run_dir: Path) -> dict[str, str]:
    """Environment for servers and kernels: every Jupyter/IPython/matplotlib folder under run_dir."""
    dirs = {
        "JUPYTER_CONFIG_DIR": "jupyter-config", "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "JUPYTER_DATA_DIR": "jupyter-data", "IPYTHONDIR": "ipython", "MPLCONFIGDIR": "matplotlib",
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings", "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
        "TMPDIR": "tmp",  # Voila keeps kernel connection files here
    }
    env = dict(os.environ)
    for var, sub in dirs.items():
        path = run_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    for rel, content in LAB_SETTINGS.items():
        target = run_dir / "lab-settings" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # quiet kernel start-up warning
    env.pop("MPLBACKEND", None)  # the notebooks choose their own backend
    return env


@dataclass
class Server:
    """A server child process in its own process group; ``stop()`` ends the group by its id."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    run_dir: Path  # kernels it starts carry this path in their command line (connection file)
    url: str = ""

    @classmethod
    def start(cls, name: str, cmd: list[str], *, env: dict[str, str], cwd: Path, run_dir: Path) -> Server:
        ARTIFACTS.mkdir(exist_ok=True)
        log_path = ARTIFACTS / f"{safe_name(name)}.log"
        log = open(log_path, "wb")
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()  # the child holds its own copy
        return cls(name, proc, log_path, run_dir)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}")

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the server's log shows ``pattern`` (e.g. the URL it serves)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            match = re.search(pattern, self.log_path.read_text(errors="replace"))
            if match:
                return match
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not log {pattern!r} within {timeout:.0f} s:\n{self.log_tail()}")

    def wait_for_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} did not answer {url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group (the server shuts its kernels down), SIGKILL what is left."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        for pid in kernel_pids(self.run_dir):  # kernels run in their own sessions: end leftovers by id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def kernel_pids(run_dir: Path) -> list[int]:
    """Live processes whose command line names a file under run_dir (our kernels' connection files)."""
    marker = (str(run_dir) + os.sep).encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def start_jupyterlab(run_dir: Path, root_dir: Path) -> Server:
    """JupyterLab on 127.0.0.1, free port, no token or password, app exposed as window.jupyterapp."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        "--IdentityProvider.token=", "--PasswordIdentityProvider.hashed_password=",
        f"--ServerApp.root_dir={root_dir}",
        f"--FileCheckpoints.checkpoint_dir={run_dir / 'checkpoints'}",  # absolute: never in the repo
        "--LabApp.expose_app_in_browser=True",  # lets the test run the `runmenu:run-all` command
        "--LabApp.news_url=None",
    ]
    server = Server.start("jupyterlab-server", cmd, env=isolated_env(run_dir), cwd=root_dir, run_dir=run_dir)
    server.url = f"http://127.0.0.1:{port}"
    try:
        server.wait_for_http(server.url + "/api/status", timeout=seconds("QLEARN_SERVER_TIMEOUT", 90))
    except BaseException:
        server.stop()
        raise
    return server


def start_lecture(run_dir: Path, key: str, notebooks: Path) -> Server:
    """``python -m qlearn lecture NN --no-browser`` (the documented command), on a free port."""
    cmd = [sys.executable, "-m", "qlearn", "lecture", key, "--no-browser", "--show-tracebacks",
           "--port", str(free_port()), "--notebooks-dir", str(notebooks)]
    server = Server.start(f"lecture-{key}-voila", cmd, env=isolated_env(run_dir), cwd=REPO_ROOT, run_dir=run_dir)
    try:  # Voila moves to another port if ours was taken meanwhile: read the one it serves
        match = server.wait_for_log(r"running at:\s*(http://127\.0\.0\.1:\d+/)", timeout=seconds("QLEARN_SERVER_TIMEOUT", 90))
    except BaseException:
        server.stop()
        raise
    server.url = match.group(1)
    return server


def shutdown_kernels(base_url: str) -> int:
    """Shut every kernel of the JupyterLab server down through its REST API; returns how many.

    Without a token the server still checks XSRF on DELETE: take the ``_xsrf`` cookie from a page
    load and send it back as the ``X-XSRFToken`` header, as JupyterLab itself does.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base_url + "/lab", timeout=30).close()
    xsrf = next((c.value for c in jar if c.name == "_xsrf"), "")
    with opener.open(base_url + "/api/kernels", timeout=30) as resp:
        kernels = json.load(resp)
    for k in kernels:
        req = urllib.request.Request(f"{base_url}/api/kernels/{k['id']}", method="DELETE",
                                     headers={"X-XSRFToken": xsrf})
        opener.open(req, timeout=60).close()
    return len(kernels)


# ----------------------------------------------------------------------------- page state
# Text and image digests of the outputs around a slider: the slider's cell and the next cell.
# The slider's own readout and labels are removed first, so "the numbers changed" means the
# callback printed new numbers, not that the slider shows a new value. Images are hashed from
# their bytes (ipywidgets' Image uses a fresh blob: URL on every update, even for equal bytes).
SNAPSHOT_JS = r"""
async (handle) => {
  const cell = handle.closest('.jp-Cell');
  const scope = [];
  if (cell) {
    scope.push(cell);
    let next = cell.nextElementSibling;
    while (next && !next.matches('.jp-Cell')) next = next.nextElementSibling;
    if (next) scope.push(next);
  } else {
    scope.push(document.body);
  }
  const fnv = (bytes) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193) >>> 0; }
    return bytes.length + ':' + h.toString(16);
  };
  const enc = new TextEncoder();
  const texts = [], images = [];
  for (const el of scope) {
    const area = el.querySelector('.jp-Cell-outputArea') || el;
    const clone = area.cloneNode(true);
    clone.querySelectorAll('.widget-readout, .widget-label, .jp-InputArea, .jp-InputPrompt, .jp-OutputPrompt, style, script')
         .forEach(n => n.remove());
    texts.push(clone.textContent);
    for (const img of area.querySelectorAll('img')) {
      const src = img.getAttribute('src') || '';
      if (src.startsWith('blob:')) {
        try { images.push(fnv(new Uint8Array(await (await fetch(src)).arrayBuffer()))); }
        catch (e) { images.push('unreadable ' + src); }
      } else {
        images.push(fnv(enc.encode(src)));
      }
    }
    for (const svg of area.querySelectorAll('.jp-RenderedSVG')) images.push(fnv(enc.encode(svg.innerHTML)));
    for (const c of area.querySelectorAll('canvas')) {
      try { images.push(fnv(enc.encode(c.toDataURL()))); } catch (e) { images.push('canvas'); }
    }
  }
  return {text: texts.join('\n'), images: images, value: handle.getAttribute('aria-valuenow')};
}
"""

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|There was an error when executing cell"
                       r"|Error displaying widget|Failed to load model class")


@dataclass
class Snapshot:
    text: str
    images: list[str]
    value: str | None

    @property
    def numbers(self) -> list[str]:
        return NUMBER.findall(self.text)

    @classmethod
    def take(cls, handle: Any) -> Snapshot:
        raw = handle.evaluate(SNAPSHOT_JS)
        return cls(raw["text"], list(raw["images"]), raw["value"])


@dataclass
class SliderCheck:
    """What happened when the first slider was moved; ``problems()`` lists what is wrong."""

    before: Snapshot
    after: Snapshot
    keys: list[str]
    page_errors: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.before.value == self.after.value:
            out.append(f"the slider did not move (aria-valuenow stayed {self.before.value} after {self.keys})")
        if self.before.numbers == self.after.numbers:
            out.append(f"the numbers next to the slider did not change: {self.after.numbers[:12]}")
        if not self.after.images:
            out.append("no plot image next to the slider")
        elif self.before.images == self.after.images:
            out.append("the plot image did not change")
        out += [f"page error: {e}" for e in self.page_errors]
        out += [f"Python error in the outputs:\n{t}" for t in self.tracebacks]
        return out


def tracebacks_on_page(page: Any) -> list[str]:
    """Output areas that show a Python traceback or a widget that failed to render."""
    texts = page.locator(".jp-OutputArea-output").all_inner_texts()
    return [t[:1500] for t in texts if TRACEBACK.search(t)]


def first_slider(page: Any, timeout_s: float) -> Any:
    """The first ipywidgets slider handle of the page (noUiSlider, with aria-valuenow)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    handle = page.locator(".widget-slider .noUi-handle").first
    try:
        handle.wait_for(state="visible", timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        errors = tracebacks_on_page(page)
        raise AssertionError(
            f"no ipywidgets slider (.widget-slider .noUi-handle) appeared within {timeout_s:.0f} s; every "
            "lesson notebook needs one" + (f". Python errors on the page:\n{errors[0]}" if errors else "")
        ) from None
    return handle


def settle(handle: Any, quiet_s: float = 0.75, timeout_s: float = 30.0, busy: Any = None) -> Snapshot:
    """Wait until the outputs near the slider stop changing (and ``busy()`` is false); return them."""
    last = Snapshot.take(handle)
    stable_since = time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = Snapshot.take(handle)
        if now != last or (busy is not None and busy()):
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            break
    return last


def move_first_slider(page: Any, *, page_errors: list[str], busy: Any = None,
                      change_timeout_s: float = 60.0) -> tuple[SliderCheck, Any]:
    """Focus the first slider handle, press End (Home if already at the end), record the effect."""
    handle = first_slider(page, timeout_s=30)
    handle.scroll_into_view_if_needed()
    before = settle(handle, busy=busy)
    at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    keys = ["Home"] if at_max else ["End"]
    handle.focus()
    for key in keys:
        page.keyboard.press(key)
    deadline = time.monotonic() + change_timeout_s
    while time.monotonic() < deadline:  # both the numbers and the picture must follow the slider
        now = Snapshot.take(handle)
        if now.numbers != before.numbers and now.images != before.images:
            break
        time.sleep(0.25)
    after = settle(handle, busy=busy)
    check = SliderCheck(before, after, keys, list(page_errors), tracebacks_on_page(page))
    return check, handle


# ----------------------------------------------------------------------------- frames drawn ahead
# One arrow key on a slider handle of an explorer (qlearn.widgets.frames): were the new picture and its
# numbers on the page before the key's event handler returned, i.e. taken from the frames the kernel
# drew ahead, with no round trip? (Only a hit can change them that fast.)
STEP_FROM_PAGE_JS = r"""
(handle, key) => {
  const view = handle.closest('.widget-vbox').querySelector('[data-frames]');
  const img = view.querySelector('img.qlearn-frame'), table = view.querySelector('.qlearn-readout');
  const before = [img.getAttribute('src'), table.innerHTML];
  handle.dispatchEvent(new KeyboardEvent('keydown', {key: key, bubbles: true, cancelable: true}));
  return {picture: img.getAttribute('src') !== before[0], numbers: table.innerHTML !== before[1],
          frames: Number(view.dataset.frames)};
}
"""
FRAMES_HELD_JS = "(h) => Number(h.closest('.widget-vbox').querySelector('[data-frames]').dataset.frames)"


def steady(read: Any, *, quiet_s: float, timeout_s: float, ok: Any = lambda value: True) -> tuple[Any, bool]:
    """Poll ``read()`` until its value has stayed the same (and ``ok``) for ``quiet_s``: (value, steady)."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif ok(value) and time.monotonic() - since >= quiet_s:
            return value, True
        time.sleep(0.1)
    return last, False


def frames_settled(handle: Any, quiet_s: float = 1.5, timeout_s: float = 60.0) -> int:
    """Wait until the page's count of frames held for this handle's explorer stops growing."""
    n, ok = steady(lambda: handle.evaluate(FRAMES_HELD_JS), quiet_s=quiet_s, timeout_s=timeout_s, ok=lambda n: n >= 3)
    if not ok:
        raise AssertionError(f"the page holds {n} frames after {timeout_s:.0f} s: nothing was drawn ahead")
    return n


def step_from_page(handle: Any, what: str) -> None:
    """One step of this slider (right, or left at its end) must be shown by the page from its frames."""
    frames_settled(handle)
    at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    out = handle.evaluate(STEP_FROM_PAGE_JS, "ArrowLeft" if at_max else "ArrowRight")
    assert out["picture"] and out["numbers"], (
        f"{what}: one step was not shown from the frames drawn ahead ({out['frames']} held): "
        "the page and the kernel disagree on the key")


# ----------------------------------------------------------------------------- JupyterLab
LAB_RUN_FINISHED_JS = r"""
() => {
  const bar = document.querySelector('#jp-main-statusbar');
  if (!bar || !/\bIdle\b/.test(bar.innerText)) return false;
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
      .map(p => p.innerText.trim());
  if (prompts.some(p => p.includes('*'))) return false;
  return prompts.some(p => /\[\d+\]/.test(p));
}
"""


def lab_busy(page: Any) -> bool:
    """True while the status bar does not read Idle (kernel busy, starting or restarting)."""
    text = page.locator("#jp-main-statusbar").inner_text()
    return re.search(r"\bIdle\b", text) is None


def lab_open_notebook(page: Any, base_url: str, api_path: str, timeout_s: float) -> None:
    """Open a notebook in a fresh workspace and wait for its kernel to be Idle."""
    workspace = safe_name(Path(api_path).stem)
    page.goto(f"{base_url}/lab/workspaces/{workspace}/tree/{api_path}?reset", timeout=timeout_s * 1000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
    page.evaluate("() => window.jupyterapp && window.jupyterapp.shell.collapseLeft()")  # room for the notebook
    deadline = time.monotonic() + timeout_s
    while lab_busy(page):
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():  # "Select Kernel" if the notebook names an unknown kernel: take the default
            dialog.first.click()
        if time.monotonic() > deadline:
            raise TimeoutError(f"kernel of {api_path} not Idle after {timeout_s:.0f} s: "
                               f"{page.locator('#jp-main-statusbar').inner_text()!r}")
        time.sleep(0.25)


def lab_run_all(page: Any, timeout_s: float) -> None:
    """Run > Run All Cells (command `runmenu:run-all`), then wait for Idle with every cell run."""
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands.isEnabled('runmenu:run-all')",
                           timeout=30_000)
    # not awaited: the command's promise settles later than the run itself
    page.evaluate("() => { window.jupyterapp.commands.execute('runmenu:run-all'); }")
    deadline = time.monotonic() + timeout_s
    done_twice = 0
    while done_twice < 2:  # Idle twice, half a second apart: the queue is really empty
        if time.monotonic() > deadline:
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            raise TimeoutError(f"Run All did not finish in {timeout_s:.0f} s; prompts: {prompts}")
        done_twice = done_twice + 1 if page.evaluate(LAB_RUN_FINISHED_JS) else 0
        time.sleep(0.5)


def screenshot(page: Any, name: str, element: Any = None) -> list[Path]:
    """Save the viewport (and one element, e.g. the slider's cell) under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    paths = [ARTIFACTS / f"{safe_name(name)}.png"]
    if element is not None:  # the element's top at the top of the viewport: widget, plot, numbers
        element.evaluate("e => e.scrollIntoView({block: 'start'})")
        time.sleep(0.2)
    page.screenshot(path=str(paths[0]))
    if element is not None:
        paths.append(ARTIFACTS / f"{safe_name(name)}-cell.png")
        try:
            element.screenshot(path=str(paths[1]), timeout=10_000)
        except Exception:  # the viewport shot above is the one that matters
            paths.pop()
    return paths


def save_failure_artifacts(pg, request) -> None:
    """If the test failed: a screenshot and the browser console, once per test (first call wins).

    Fixtures that tear something down before ``page`` does (a kernel, a server) call this first,
    so the screenshot shows the page as the failing test left it.
    """
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    if not failed or getattr(pg, "failure_saved", False):
        return
    pg.failure_saved = True
    name = safe_name(request.node.name)
    try:
        screenshot(pg, f"{name}-FAILED")
    except Exception as exc:  # a crashed page cannot be photographed; say so in the artifacts
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"{name}-FAILED.txt").write_text(f"no screenshot: {exc}\n")
    if pg.console_errors:
        (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(pg.console_errors))
