"""Slider response: from a control's value change to a redrawn figure, for every explorer in qlearn.widgets.

Explorers are discovered, not listed: every public function named ``*_explorer`` in a module of
``qlearn.widgets``. Each is built once (build time recorded), given a 1,000,000-element tensor if it
takes data (a parameter named ``x``) and the lesson model if it takes one (``lesson``, trained once
into the run's work folder, so a cold start is measured too). Then every control is set to a
sequence of values -- a sweep of a slider, every option of a dropdown, both states of a checkbox --
and ``control.value = v`` is timed: the Explorer recomputes and redraws synchronously inside that
assignment, so the time is what a learner waits for (the PNG's trip to the browser aside).

In the full run each explorer's sweep is repeated once more with the figure's leftover layout
engine removed (``_single_draw``): with matplotlib >= 3.6, ``Figure.set_layout_engine("none")``
installs a PlaceHolderLayoutEngine, and ``savefig`` draws a figure that has any layout engine twice.
The second number shows what one draw per change would give (a diagnosis; the explorers are not changed).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
from tqdm.auto import tqdm

DATA_SIZE = 1_000_000


def discover() -> dict[str, Callable[..., Any]]:
    """name -> factory, for every public ``*_explorer`` function defined in a qlearn.widgets module."""
    import qlearn.widgets as pkg

    found: dict[str, Callable[..., Any]] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"qlearn.widgets.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.endswith("_explorer") and not name.startswith("_") and fn.__module__ == module.__name__:
                found[f"{info.name}.{name}"] = fn
    return found


def _numeric_values(c: Any, k: int) -> list[Any]:
    lo, hi = c.min, c.max
    vals = np.linspace(lo, hi, k + 2)[1:-1] if k > 1 else np.array([(lo + hi) / 2])
    if isinstance(c, (widgets.IntSlider, widgets.BoundedIntText)):
        out = [int(round(v)) for v in vals]
    else:
        step = getattr(c, "step", None) or (hi - lo) / 100
        out = [float(lo + round((v - lo) / step) * step) for v in vals]
    return out + [c.value]  # and back where it started


def _range_values(c: Any, k: int) -> list[Any]:
    lo, hi = c.min, c.max
    span = hi - lo
    out = []
    for f in np.linspace(0.05, 0.35, k):
        a, b = lo + f * span, hi - 0.5 * f * span
        if isinstance(c, widgets.IntRangeSlider):
            a, b = int(round(a)), int(round(b))
        else:
            step = c.step or span / 100
            a, b = float(lo + round((a - lo) / step) * step), float(lo + round((b - lo) / step) * step)
        out.append((a, b))
    return out + [tuple(c.value)]


def control_values(c: Any, k: int) -> list[Any]:
    """The sequence of values a benchmark sets ``c`` to (each different from the one before)."""
    if isinstance(c, (widgets.IntRangeSlider, widgets.FloatRangeSlider)):
        vals = _range_values(c, k)
    elif isinstance(c, (widgets.IntSlider, widgets.FloatSlider, widgets.FloatLogSlider,
                        widgets.BoundedIntText, widgets.BoundedFloatText)):
        if isinstance(c, widgets.FloatLogSlider):
            vals = [float(c.base ** e) for e in np.linspace(c.min, c.max, k + 2)[1:-1]] + [c.value]
        else:
            vals = _numeric_values(c, k)
    elif isinstance(c, (widgets.Checkbox, widgets.ToggleButton)):
        vals = [not c.value, c.value]
    elif hasattr(c, "options"):  # Dropdown, ToggleButtons, RadioButtons, SelectionSlider
        options = list(c.options)
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        others = [v for v in values if v != c.value][:max(k, 1)]
        vals = others + [c.value]
    else:
        return []
    seq, prev = [], c.value
    for v in vals:  # drop repeats: setting the same value triggers nothing
        if v != prev:
            seq.append(v)
            prev = v
    return seq


def _lesson(work: Path, quick: bool) -> tuple[Any, float]:
    from qlearn.lessons.lesson_model import LessonConfig, lesson_model

    config = LessonConfig(width=0.25, input_size=8, epochs=1) if quick else LessonConfig()
    t0 = time.perf_counter()
    lesson = lesson_model(config, directory=work / "lesson-cache", progress=False)
    return lesson, time.perf_counter() - t0


def _sweep(explorer: Any, k: int, stages: dict[str, list[float]] | None = None
           ) -> tuple[list[float], list[float], dict[str, dict]]:
    """Set every control to its value sequence; (change times s, render times s, per-control summary).

    ``stages``, if given, collects each redraw's ``Explorer.timings`` (compute, draw, encode, send; s)."""
    changes: list[float] = []
    renders: list[float] = []
    per_control: dict[str, dict] = {}
    for cname, control in explorer.controls.items():
        times = []
        for v in control_values(control, k):
            before = explorer.redraws
            t0 = time.perf_counter()
            control.value = v
            dt = time.perf_counter() - t0
            if explorer.redraws > before:  # a value the control accepted and the explorer redrew for
                times.append(dt)
                renders.append(explorer.last_render_seconds)
                if stages is not None:
                    for stage, seconds in getattr(explorer, "timings", {}).items():
                        stages.setdefault(stage, []).append(seconds)
        if times:
            per_control[cname] = {"changes": len(times), "median_ms": 1000 * float(np.median(times)),
                                  "max_ms": 1000 * float(np.max(times))}
            changes += times
    return changes, renders, per_control


def _single_draw(explorer: Any) -> bool:
    """Drop the PlaceHolderLayoutEngine that ``set_layout_engine("none")`` leaves behind (matplotlib >= 3.6):
    while a figure has any layout engine, ``savefig`` draws it twice. True if there was one to drop."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    fig = getattr(explorer, "fig", None)
    if fig is None or not isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        return False
    fig.set_layout_engine(None)
    return True


def bench_explorer(name: str, factory: Callable[..., Any], kwargs: dict, k: int, ab: bool = False) -> dict:
    t0 = time.perf_counter()
    explorer = factory(**kwargs)
    build = time.perf_counter() - t0
    stages: dict[str, list[float]] = {}
    changes, renders, per_control = _sweep(explorer, k, stages)
    ms = 1000.0 * np.asarray(changes) if changes else np.array([np.nan])
    slowest = max(per_control, key=lambda c: per_control[c]["median_ms"]) if per_control else None
    fix: dict[str, Any] = {}
    if ab and _single_draw(explorer):  # the same sweep again with one draw per savefig (diagnosis only)
        again, _, _ = _sweep(explorer, k)
        if again:
            fix = {"median_ms_one_draw": 1000 * float(np.median(again)),
                   "p95_ms_one_draw": 1000 * float(np.percentile(again, 95))}
    return {
        "explorer": name,
        "class": type(explorer).__name__,
        "data": kwargs.get("x").size if "x" in kwargs else None,
        "build_s": build,
        "changes": len(changes),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(np.max(ms)),
        "render_median_ms": 1000 * float(np.median(renders)) if renders else float("nan"),
        "slowest_control": slowest,
        "stage_median_ms": {stage: 1000 * float(np.median(v)) for stage, v in stages.items() if stage != "total"},
        "controls": per_control,
        **fix,
    }


def run(work: Path, *, quick: bool, seed: int = 0, only: list[str] | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    k = 1 if quick else 6
    x = np.random.default_rng(seed).standard_normal(DATA_SIZE)  # (1e6,) float64
    factories = {n: f for n, f in discover().items() if not only or any(o in n for o in only)}
    lesson_seconds = None
    lesson = None
    results = []
    for name, factory in tqdm(factories.items(), desc="explorers", leave=False):
        params = inspect.signature(factory).parameters
        kwargs: dict[str, Any] = {}
        if "x" in params:
            kwargs["x"] = x
        if "lesson" in params:
            if lesson is None:
                lesson, lesson_seconds = _lesson(Path(work), quick)
            kwargs["lesson"] = lesson
        try:
            results.append(bench_explorer(name, factory, kwargs, k, ab=not quick))
        except Exception as exc:  # one broken explorer must not hide the others' numbers
            results.append({"explorer": name, "error": f"{type(exc).__name__}: {exc}"})
    ok = [r for r in results if "error" not in r]
    all_p95 = max((r["p95_ms"] for r in ok), default=float("nan"))
    worst = max(ok, key=lambda r: r["p95_ms"])["explorer"] if ok else None
    return {
        "values_per_control": k,
        "data_size": DATA_SIZE,
        "lesson_model_seconds": lesson_seconds,
        "lesson_model": "quick (width 0.25, 8x8, 1 epoch)" if quick else "notebook default (LessonConfig())",
        "explorers": results,
        "worst_p95_ms": all_p95,
        "worst_explorer": worst,
        "median_of_medians_ms": float(np.median([r["median_ms"] for r in ok])) if ok else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_sliders", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one value per control, the small lesson model")
    p.add_argument("--only", nargs="*", help="explorers whose name contains one of these")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qlearn-bench-sliders-") as work:
        result = run(Path(work), quick=args.quick, only=args.only)
    for r in result["explorers"]:
        if "error" in r:
            print(f"{r['explorer']:45s} {r['error']}")
            continue
        stages = "  ".join(f"{k} {v:5.1f}" for k, v in r["stage_median_ms"].items())
        print(f"{r['explorer']:45s} median {r['median_ms']:6.1f}  p95 {r['p95_ms']:6.1f} ms   ({stages})")
    print(f"median of medians {result['median_of_medians_ms']:.1f} ms, worst p95 {result['worst_p95_ms']:.1f} ms "
          f"({result['worst_explorer']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
