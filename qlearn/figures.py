"""``python -m qlearn figures [--out DIR]``: regenerate every figure in ``figures/`` from code.

Each figure is an explorer of a lesson notebook in its *default state* -- exactly what the notebook
shows before the learner touches a slider -- or any callable returning a matplotlib ``Figure``.
``FIGURES`` is the registry: one line per figure, ``FigureSpec(file name, "module:function",
notebook)``. Explorers that are not registered are found anyway: every public ``*_explorer``
function of a ``qlearn.widgets`` module that can be called without arguments is drawn as
``<module>_<name>.png``, so a new lesson's figures appear without editing this file (register them
to give them a better name).

The PNGs are the same on every machine: the data are seeded, the lesson model and the quick pipeline
run are the ones shipped with qlearn (``qlearn.shipped``; a model trained here would differ a little
on another CPU), and the files carry fixed metadata (no software version, no date), so two runs write
byte-identical files. The one figure in ``figures/`` that depends on timing, ``latency_vs_accuracy.png``,
belongs to the benchmarks: ``python -m benchmarks --record`` draws it, and
``python -m benchmarks.bench_latency_accuracy --redraw`` redraws it from ``benchmarks/results.json``.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from qlearn import widgets
from qlearn.widgets.base import Explorer

__all__ = ["FigureSpec", "FIGURES", "DPI", "all_specs", "render", "write_figures", "default_out_dir", "main"]

DPI = 110
#: PNG text chunks written into every figure: fixed, so the bytes do not depend on the run.
METADATA_SOFTWARE = "qlearn (python -m qlearn figures)"


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file name in ``figures/``, what draws it, and the notebook that shows it.

    ``make`` is ``"package.module:function"`` (imported only when drawn) or a callable; called with
    no arguments it returns an ``Explorer`` (its figure is saved) or a matplotlib ``Figure``.
    """

    name: str
    make: str | Callable[[], Any]
    notebook: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.endswith(".png") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"a figure name is a plain file name ending in .png, got {self.name!r}")
        if isinstance(self.make, str):
            if self.make.count(":") != 1:
                raise ValueError(f"make must look like 'package.module:function', got {self.make!r}")
        elif not callable(self.make):
            raise TypeError(f"make must be 'package.module:function' or a callable, got {type(self.make).__name__}")

    def factory(self) -> Callable[[], Any]:
        if callable(self.make):
            return self.make
        module, func = self.make.split(":")
        return getattr(importlib.import_module(module), func)

    @property
    def target(self) -> str:
        """'module:function' of the factory (for matching discovered explorers)."""
        if isinstance(self.make, str):
            return self.make
        return f"{getattr(self.make, '__module__', '?')}:{getattr(self.make, '__qualname__', '?')}"


# The registry. A new lesson adds its figures here, one line each.
FIGURES: list[FigureSpec] = [
    FigureSpec("01_quantize.png", "qlearn.widgets.basics:quantize_explorer", "01"),
    FigureSpec("02_error_vs_bits.png", "qlearn.widgets.basics:error_vs_bits_explorer", "02"),
    FigureSpec("02_clipping.png", "qlearn.widgets.basics:clipping_explorer", "02"),
    FigureSpec("03_seed_channels.png", "qlearn.widgets.per_channel:seed_channels_explorer", "03"),
    FigureSpec("03_layer_per_channel.png", "qlearn.widgets.per_channel:layer_explorer", "03"),
    FigureSpec("04_outliers.png", "qlearn.widgets.outliers:outlier_explorer", "04"),
    FigureSpec("04_model_ranges.png", "qlearn.widgets.outliers:model_ranges_explorer", "04"),
    FigureSpec("05_bn_fold.png", "qlearn.widgets.bn_fold:bn_fold_explorer", "05"),
    FigureSpec("05_fold_order.png", "qlearn.widgets.bn_fold:fold_order_explorer", "05"),
    FigureSpec("06_ste.png", "qlearn.widgets.qat:ste_explorer", "06"),
    FigureSpec("06_ema.png", "qlearn.widgets.qat:ema_explorer", "06"),
    FigureSpec("06_ptq_vs_qat.png", "qlearn.widgets.qat:ptq_vs_qat_explorer", "06"),
    FigureSpec("07_integer_add.png", "qlearn.widgets.skip:integer_add_explorer", "07"),
    FigureSpec("07_concat.png", "qlearn.widgets.skip:concat_explorer", "07"),
    FigureSpec("08_multiplier.png", "qlearn.widgets.integer_explorers:multiplier_explorer", "08"),
    FigureSpec("08_rounding.png", "qlearn.widgets.integer_explorers:rounding_explorer", "08"),
    FigureSpec("08_conv.png", "qlearn.widgets.integer_explorers:conv_explorer", "08"),
    FigureSpec("09_pipeline.png", "qlearn.widgets.pipeline:pipeline_explorer", "09"),
    FigureSpec("09_integer_layers.png", "qlearn.widgets.pipeline:integer_layer_explorer", "09"),
    FigureSpec("10_group_size.png", "qlearn.widgets.formats_granularity:group_size_explorer", "10"),
    FigureSpec("10_mixed_precision.png", "qlearn.widgets.formats_granularity:mixed_precision_explorer", "10"),
    FigureSpec("11_granularity.png", "qlearn.widgets.transformer:granularity_explorer", "11"),
    FigureSpec("11_outliers.png", "qlearn.widgets.transformer:outlier_explorer", "11"),
    FigureSpec("11_smoothquant.png", "qlearn.widgets.transformer:smoothquant_explorer", "11"),
    FigureSpec("12_imagenet_variants.png", "qlearn.widgets.imagenet:variants_explorer", "12"),
    FigureSpec("13_engines.png", "qlearn.widgets.deploy:engines_explorer", "13"),
]
#: Figures drawn from float ImageNet inference measured on this CPU: their last bits (and so a bar's
#: height by a pixel) can differ between CPUs, so the committed copy is compared by size only.
MEASURED_HERE = {"12_imagenet_variants.png"}


def _no_required_args(func: Callable) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    )


def discovered_specs(registered: list[FigureSpec]) -> list[FigureSpec]:
    """``*_explorer`` functions of ``qlearn.widgets.*`` modules that the registry does not list."""
    known = {s.target for s in registered}
    names = {s.name for s in registered}
    found = []
    for info in sorted(pkgutil.iter_modules(widgets.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        modname = f"{widgets.__name__}.{info.name}"
        module = importlib.import_module(modname)
        for attr, func in sorted(vars(module).items()):
            if not (attr.endswith("_explorer") and not attr.startswith("_") and inspect.isfunction(func)):
                continue
            if func.__module__ != modname or f"{modname}:{attr}" in known or not _no_required_args(func):
                continue
            name = f"{info.name}_{attr[: -len('_explorer')]}.png"
            if name not in names:
                found.append(FigureSpec(name, f"{modname}:{attr}", ""))
                names.add(name)
    return found


def all_specs() -> list[FigureSpec]:
    """The registry followed by the discovered explorers: every figure ``main`` writes."""
    return list(FIGURES) + discovered_specs(FIGURES)


def render(spec: FigureSpec) -> Figure:
    """Draw one figure: the explorer's figure in its default state, or the returned Figure."""
    obj = spec.factory()()
    if isinstance(obj, Explorer):
        return obj.fig
    if isinstance(obj, Figure):
        return obj
    raise TypeError(f"{spec.target} returned {type(obj).__name__}; a figure factory returns an Explorer or a Figure")


def save_png(fig: Figure, path: Path, title: str) -> None:
    """PNG with fixed text chunks (no matplotlib version, no date): same figure, same bytes."""
    metadata = {"Software": METADATA_SOFTWARE, "Title": title}
    fig.savefig(path, format="png", dpi=DPI, metadata=metadata)


def write_figures(out: Path, specs: list[FigureSpec], *, progress: bool = True) -> tuple[list[Path], list[str]]:
    """Draw and save every spec into ``out``; returns (written paths, error messages)."""
    out.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    for spec in tqdm(specs, desc="figures", disable=not progress, leave=False):
        try:
            fig = render(spec)
            path = out / spec.name
            save_png(fig, path, spec.name[: -len(".png")])
            written.append(path)
        except Exception as exc:  # report every failing figure, then fail the command
            errors.append(f"{spec.name} ({spec.target}): {type(exc).__name__}: {exc}")
    return written, errors


def default_out_dir() -> Path:
    """``figures/`` of the source checkout qlearn is imported from, else ``./figures``."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "figures"
    return Path.cwd() / "figures"


def _rerun_with_fixed_hash_seed(argv: list[str]) -> int | None:
    """Run this command again under PYTHONHASHSEED=0 unless it already is (returns its exit code).

    Python randomises string hashing per process, and some drawing paths depend on set/dict order
    of strings (seen in practice: tick drawing of one explorer moved by a pixel between runs). A
    fixed hash seed takes that out, so the bytes depend on the code and data alone.
    """
    if os.environ.get("PYTHONHASHSEED") == "0":
        return None
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-m", "qlearn.figures", *argv], env=env).returncode


def main(argv: list[str]) -> int:
    rerun = _rerun_with_fixed_hash_seed(argv)
    if rerun is not None:
        return rerun
    parser = argparse.ArgumentParser(
        prog="python -m qlearn figures",
        description="Regenerate every lesson figure (each explorer in its default state) as PNG.",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: figures/ of the checkout)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="draw only these figures (file names)")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    specs = all_specs()
    if args.list:
        for s in specs:
            print(f"{s.name:32s} {s.target}" + (f"  (notebook {s.notebook})" if s.notebook else ""))
        return 0
    if args.only:
        by_name = {s.name: s for s in specs}
        unknown = [n for n in args.only if n not in by_name]
        if unknown:
            print(f"unknown figure(s) {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
        specs = [by_name[n] for n in args.only]
    out = args.out if args.out is not None else default_out_dir()
    if out.exists() and not out.is_dir():
        print(f"--out {out} exists and is not a folder", file=sys.stderr)
        return 2
    start = time.perf_counter()
    written, errors = write_figures(out, specs, progress=not args.quiet)
    for path in written:
        print(path)
    print(f"{len(written)} figure(s) written to {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if errors:
        print("failed:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
