"""Slider to picture, end to end: every explorer in JupyterLab in headless Chromium, as a learner sees it.

``bench_sliders`` times the kernel alone. This benchmark times the whole path a learner waits for:
the key press on a slider handle, the widget message to the kernel, the recomputation and redraw,
the JPEG encoding, the message back, and the browser decoding and painting the new image -- or, for a
step the kernel drew ahead, the page showing the frame it already holds.

How: a generated notebook (in a temporary JupyterLab root, never in the repository) builds every
``*_explorer`` of ``qlearn.widgets`` (discovered as in ``bench_sliders``; 10^6 samples where an explorer
takes data, the shipped lesson model and pipeline run otherwise) and displays it. After Run All, for
each explorer and each of its sliders, a script in the page focuses the handle, dispatches one arrow
key, and waits until the explorer's <img> shows new bytes, is decoded, and two animation frames have
passed (the frame that paints it); that interval is one sample. Then each dropdown is moved the same
way (the next or previous option), reported apart ("dropdowns"), so explorers without a slider are
measured too. Moves are spaced so each is measured
alone (``PAUSE_S``). The kernel logs each redraw's own breakdown (``Explorer.timings``: compute,
draw, encode, send; older code only a total) to a JSON-lines file; "transfer" below is the browser
time minus the kernel's, i.e. the widget protocol, the websocket and the browser's decode and paint.

Frames drawn ahead (``qlearn.widgets.frames``): after Run All the benchmark waits until the kernel has
drawn the next steps of every explorer (the page's frame counts stop growing), as a learner reads before
moving a slider; ``drawn_ahead_share`` is the share of the kernel's updates whose frame had been drawn
ahead. ``--no-draw-ahead`` (``QLEARN_DRAW_AHEAD=0``) measures the ordinary path alone: what a jump, or a
step the kernel had no time to draw, costs.

A burst test then presses an arrow key ``BURST`` times, ``BURST_GAP_MS`` apart (a fast drag), and
records how many frames the kernel drew, how many pictures the page showed, and how long after the
last key the last picture arrived. (The page side of ipywidgets already keeps one message per widget
in flight and sends only the newest value after it, so a burst never reaches the kernel as 10 messages.)

    python -m benchmarks.bench_browser_sliders [--moves 8] [--no-draw-ahead] [--out results.json]

Needs what the browser tests need (Chromium, Playwright, JupyterLab; see tests/browser/).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))
import browser_helpers as bh  # noqa: E402

PAUSE_S = 0.35       # quiet time between two measured moves
MOVE_TIMEOUT_S = 10.0
BURST = 10
BURST_GAP_MS = 30

SETUP_CELL = """\
import json, os, time
os.environ["QLEARN_DRAW_AHEAD"] = {draw_ahead!r}  # read when qlearn.widgets is first imported
import numpy as np
import matplotlib
matplotlib.use("Agg")
from benchmarks.bench_sliders import discover
LOG = {log!r}
X = np.random.default_rng(0).standard_normal(1_000_000)  # (1e6,) float64, as in bench_sliders

def _logged(name, ex):
    method = "_update" if hasattr(ex, "_update") else "update"  # older code: update() did every redraw
    original = getattr(ex, method)
    def update(*args, **kwargs):
        t0 = time.perf_counter()
        original(*args, **kwargs)
        wall = time.perf_counter() - t0
        timings = dict(getattr(ex, "timings", None) or {{}})
        timings.setdefault("total", getattr(ex, "last_render_seconds", wall))
        timings["held"] = float(getattr(ex, "last_update_held", False))  # 1: the frame had been drawn ahead
        with open(LOG, "a") as f:
            f.write(json.dumps({{"explorer": name, "t": time.time(), **timings}}) + "\\n")
    setattr(ex, method, update)  # the instance attribute wins over the method: every redraw is logged
    return ex

def make(name):
    import inspect
    factory = discover()[name]
    params = inspect.signature(factory).parameters
    kwargs = {{"x": X}} if "x" in params else {{}}
    return _logged(name, factory(**kwargs))
"""

# In the page: one key on a slider handle (or the next/previous option of a dropdown), then wait for the
# explorer's picture to change and be painted.
MOVE_JS = r"""
async (box, [kind, index, key, timeoutMs]) => {
  const img = box.querySelector('img.qlearn-frame') || box.querySelector('img');  // FrameView's picture
  const handle = kind === 'slider' ? box.querySelectorAll('.widget-slider')[index].querySelector('.noUi-handle') : null;
  const select = kind === 'dropdown' ? box.querySelectorAll('.widget-dropdown select')[index] : null;
  if (!(handle || select) || !img) return {error: 'no control or image'};
  const before = img.getAttribute('src');
  const t0 = performance.now();
  if (handle) {
    handle.dispatchEvent(new KeyboardEvent('keydown', {key: key, bubbles: true, cancelable: true}));
  } else {  // the next (ArrowRight) or previous option, as a learner picks it
    select.selectedIndex += key === 'ArrowRight' ? 1 : -1;
    select.dispatchEvent(new Event('change', {bubbles: true}));
  }
  const changed = await new Promise((resolve) => {
    if (img.getAttribute('src') !== before) return resolve(true);
    const timer = setTimeout(() => { obs.disconnect(); resolve(false); }, timeoutMs);
    const obs = new MutationObserver(() => {
      if (img.getAttribute('src') !== before) { clearTimeout(timer); obs.disconnect(); resolve(true); }
    });
    obs.observe(img, {attributes: true, attributeFilter: ['src']});
  });
  if (!changed) return {error: 'no new picture', value: handle.getAttribute('aria-valuenow')};
  const tSrc = performance.now();
  try { await img.decode(); } catch (e) {}
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return {ms: performance.now() - t0, src_ms: tSrc - t0, value: handle ? handle.getAttribute('aria-valuenow') : select.value};
}
"""

BURST_JS = r"""
async (box, [index, key, n, gapMs, quietMs]) => {
  const handle = box.querySelectorAll('.widget-slider')[index].querySelector('.noUi-handle');
  const img = box.querySelector('img.qlearn-frame') || box.querySelector('img');
  let frames = 0, last = performance.now();
  const obs = new MutationObserver(() => { frames += 1; last = performance.now(); });
  obs.observe(img, {attributes: true, attributeFilter: ['src']});
  for (let i = 0; i < n; i++) {
    handle.dispatchEvent(new KeyboardEvent('keydown', {key: key, bubbles: true, cancelable: true}));
    await new Promise((r) => setTimeout(r, gapMs));
  }
  const tKeys = performance.now();
  while (performance.now() - Math.max(last, tKeys) < quietMs) await new Promise((r) => setTimeout(r, 20));
  obs.disconnect();
  return {frames: frames, settle_ms: Math.max(0, last - tKeys) + gapMs};
}
"""


def _notebook(names: list[str], log: Path, draw_ahead: bool) -> dict:
    cells = [SETUP_CELL.format(log=str(log), draw_ahead="1" if draw_ahead else "0")]
    cells += [f"ex_{i} = make({name!r})\nex_{i}" for i, name in enumerate(names)]
    return {
        "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
                  for s in cells],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=float)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max())}


def _kernel_breakdown(lines: list[dict]) -> dict[str, float]:
    keys = sorted({k for row in lines for k in row if k not in ("explorer", "t", "held")})
    out = {f"{k}_ms": 1000 * float(np.median([row[k] for row in lines if k in row])) for k in keys}
    if any("held" in row for row in lines):  # the share of kernel updates whose frame had been drawn ahead
        out["drawn_ahead_share"] = float(np.mean([row.get("held", 0.0) for row in lines]))
    return out


def _measure_explorer(page: Any, box: Any, moves: int, redraws: Any) -> tuple[dict[str, list[float]], list[str], dict | None]:
    """Move every slider, then every dropdown, of one explorer ``moves`` times; browser ms per move, by kind."""
    samples: dict[str, list[float]] = {"slider": [], "dropdown": []}
    errors: list[str] = []
    burst = None
    sliders = box.locator(".widget-slider")
    for s in range(sliders.count()):
        handle = sliders.nth(s).locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        for m in range(moves):
            now, hi, lo = (handle.get_attribute(a) for a in ("aria-valuenow", "aria-valuemax", "aria-valuemin"))
            up = (m // 2) % 2 == 0  # two up, two down: stays near the default value
            key = "ArrowRight" if (up and now != hi) or now == lo else "ArrowLeft"
            _move(box, "slider", s, key, samples, errors, m)
        if s == 0:  # a fast drag on the first slider: frames drawn, time to the last picture
            before = redraws()
            burst = box.evaluate(BURST_JS, [s, "ArrowRight" if handle.get_attribute("aria-valuenow")
                                               != handle.get_attribute("aria-valuemax") else "ArrowLeft",
                                               BURST, BURST_GAP_MS, 1500])
            burst["kernel_redraws"] = redraws() - before
            time.sleep(PAUSE_S)
    selects = box.locator(".widget-dropdown select")
    for s in range(selects.count()):
        select = selects.nth(s)
        select.scroll_into_view_if_needed()
        n = select.locator("option").count()
        for m in range(min(moves, 2 * (n - 1))):  # as on a slider: two on, two back, within the options
            i = select.evaluate("e => e.selectedIndex")
            up = (m // 2) % 2 == 0
            key = "ArrowRight" if (up and i < n - 1) or i == 0 else "ArrowLeft"
            _move(box, "dropdown", s, key, samples, errors, m)
    return samples, errors, burst


def _move(box: Any, kind: str, index: int, key: str, samples: dict, errors: list, m: int) -> None:
    out = box.evaluate(MOVE_JS, [kind, index, key, MOVE_TIMEOUT_S * 1000])
    if "ms" in out:
        samples[kind].append(out["ms"])
    else:
        errors.append(f"{kind} {index} move {m}: {out.get('error')}")
    time.sleep(PAUSE_S)


def _settle(page: Any, quiet_s: float = 3.0, timeout_s: float = 240.0) -> float:
    """Wait until the kernel has drawn ahead for every explorer (the page's frame counts stop growing).

    A learner reads the explorer before moving it; the benchmark measures that steady state, not the
    first seconds after Run All, when every explorer of the notebook draws its next steps at once.
    Returns the seconds waited.
    """
    t0 = time.monotonic()
    bh.steady(lambda: page.evaluate("() => [...document.querySelectorAll('[data-frames]')]"
                                    ".reduce((s, e) => s + Number(e.dataset.frames), 0)"),
              quiet_s=quiet_s, timeout_s=timeout_s)
    return time.monotonic() - t0


def run(*, moves: int = 8, only: list[str] | None = None, screenshots: bool = False, draw_ahead: bool = True) -> dict:
    missing = bh.missing_tools()
    if missing:
        raise SystemExit(f"bench_browser_sliders needs {', '.join(missing)}. {bh.INSTALL_HINT}")
    from playwright.sync_api import sync_playwright

    from benchmarks.bench_sliders import discover
    from benchmarks.common import machine

    names = [n for n in discover() if not only or any(o in n for o in only)]
    host = machine()  # load average at the start; the one at the end is added below
    with tempfile.TemporaryDirectory(prefix="qlearn-bench-browser-") as tmp:
        run_dir = Path(tmp)
        root = run_dir / "lab-root"
        root.mkdir()
        (root / "benchmarks").symlink_to(REPO_ROOT / "benchmarks", target_is_directory=True)
        log = run_dir / "kernel-timings.jsonl"
        (root / "explorers.ipynb").write_text(json.dumps(_notebook(names, log, draw_ahead)))
        server = bh.start_jupyterlab(run_dir / "lab", root)
        pw = sync_playwright().start()
        results: dict[str, Any] = {}
        try:
            browser = pw.chromium.launch(executable_path=bh.find_chromium(), headless=True, args=bh.CHROMIUM_ARGS)
            context = browser.new_context(viewport=bh.VIEWPORT)
            context.set_default_timeout(60_000)
            page = context.new_page()
            bh.lab_open_notebook(page, server.url, "explorers.ipynb", timeout_s=120)
            bh.lab_run_all(page, timeout_s=600)
            errors = bh.tracebacks_on_page(page)
            if errors:
                raise RuntimeError(f"the explorers notebook failed:\n{errors[0]}")
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            time.sleep(2.0)
            settle_s = _settle(page) if draw_ahead else 0.0
            for i, name in enumerate(names):
                box = cells.nth(i + 1).locator(".jp-OutputArea").first
                if log.exists():
                    log.write_text("")  # build-time redraws are not slider moves
                if screenshots:  # what the learner sees: the explorer once, at its default values
                    box.scroll_into_view_if_needed()
                    bh.ARTIFACTS.mkdir(exist_ok=True)
                    box.screenshot(path=str(bh.ARTIFACTS / f"bench-browser-{bh.safe_name(name)}.png"))
                samples, errs, burst = _measure_explorer(
                    page, box, moves, lambda: len(log.read_text().splitlines()) if log.exists() else 0)
                lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
                kernel_ms = [1000 * row["total"] for row in lines]
                entry = {**_stats(samples["slider"]), "samples_ms": [round(x, 1) for x in samples["slider"]],
                         "dropdowns": {**_stats(samples["dropdown"]),
                                       "samples_ms": [round(x, 1) for x in samples["dropdown"]]},
                         "kernel": {**_kernel_breakdown(lines), **_stats(kernel_ms)},
                         "burst": {"keys": BURST, "gap_ms": BURST_GAP_MS,
                                   "kernel_redraws": burst and burst["kernel_redraws"],
                                   "pictures_shown": burst and burst["frames"],
                                   "last_picture_after_last_key_ms": burst and burst["settle_ms"]},
                         "errors": errs, "kernel_rows": lines}  # every update the kernel logged, in order
                if entry.get("median_ms") is not None and entry["kernel"].get("median_ms") is not None:
                    entry["transfer_median_ms"] = entry["median_ms"] - entry["kernel"]["median_ms"]
                results[name] = entry
                dd = entry["dropdowns"]
                print(f"{name:45s} " + (f"median {entry['median_ms']:6.1f}  p95 {entry['p95_ms']:6.1f}  "
                      f"max {entry['max_ms']:6.1f} ms  kernel {entry['kernel'].get('median_ms', float('nan')):6.1f}"
                      if entry.get("n") else "no slider") + (f"  | dropdowns: median {dd['median_ms']:6.1f}  p95 "
                      f"{dd['p95_ms']:6.1f}  max {dd['max_ms']:6.1f} ms" if dd.get("n") else "")
                      + (f"  errors: {errs[:2]}" if errs else ""), flush=True)
            context.close()
            browser.close()
        finally:
            pw.stop()
            try:
                bh.shutdown_kernels(server.url)
            finally:
                server.stop()
    ok = [r for r in results.values() if r.get("n")]
    dd = [r["dropdowns"] for r in results.values() if r["dropdowns"].get("n")]
    return {
        "what": "key press on a slider handle (or a new dropdown option) -> new explorer image decoded and painted, "
                "JupyterLab + headless Chromium",
        "moves_per_slider": moves, "pause_s": PAUSE_S, "draw_ahead": draw_ahead,
        "settle_s": settle_s,
        "machine": {**host, "load_average_at_end": [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
                    if Path("/proc/loadavg").exists() else None},
        "explorers": results,
        "median_of_medians_ms": float(np.median([r["median_ms"] for r in ok])) if ok else float("nan"),
        "worst_median_ms": max((r["median_ms"] for r in ok), default=float("nan")),
        "worst_p95_ms": max((r["p95_ms"] for r in ok), default=float("nan")),
        "dropdowns_worst_median_ms": max((r["median_ms"] for r in dd), default=float("nan")),
        "dropdowns_worst_p95_ms": max((r["p95_ms"] for r in dd), default=float("nan")),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_browser_sliders", description=__doc__.splitlines()[0])
    p.add_argument("--moves", type=int, default=8, help="measured key presses per slider, and option changes per dropdown (default 8)")
    p.add_argument("--only", nargs="*", help="explorers whose name contains one of these")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--screenshots", action="store_true", help="save each explorer as shown under test-artifacts/")
    p.add_argument("--no-draw-ahead", action="store_true",
                   help="QLEARN_DRAW_AHEAD=0 in the kernel: every step takes the ordinary path (compute, draw, send)")
    args = p.parse_args(argv)
    result = run(moves=args.moves, only=args.only, screenshots=args.screenshots, draw_ahead=not args.no_draw_ahead)
    print(f"dropdowns: worst median {result['dropdowns_worst_median_ms']:.1f} ms, "
          f"worst p95 {result['dropdowns_worst_p95_ms']:.1f} ms")
    print(f"sliders: median of medians {result['median_of_medians_ms']:.1f} ms, worst median {result['worst_median_ms']:.1f} ms, "
          f"worst p95 {result['worst_p95_ms']:.1f} ms; load at start {result['machine'].get('load_average_at_start')}, "
          f"at end {result['machine'].get('load_average_at_end')}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
