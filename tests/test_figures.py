"""``python -m qlearn figures``: every figure written, byte-identical on a second run; the registry's rules."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from qlearn import figures as F

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qlearn", "figures", "--out", str(out), "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_figures_command_writes_every_figure_identically_twice(tmp_path):
    """Two independent processes, side by side (the lesson-model cache is written atomically)."""
    first, second = tmp_path / "first", tmp_path / "second"
    runs = [_start(first), _start(second)]
    (out1, err1), (_, err2) = (p.communicate(timeout=900) for p in runs)
    assert runs[0].returncode == 0, err1
    assert runs[1].returncode == 0, err2
    expected = {s.name for s in F.all_specs()}
    assert {s.name for s in F.FIGURES} <= expected
    assert {p.name for p in first.iterdir()} == expected
    assert {p.name for p in second.iterdir()} == expected
    assert sorted(Path(line).name for line in out1.split()) == sorted(expected)
    for name in sorted(expected):
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        assert a.startswith(PNG_SIGNATURE), name
        assert a == b, f"{name} differs between two runs"
        with Image.open(first / name) as img:
            assert img.info.get("Software") == F.METADATA_SOFTWARE
            assert img.info.get("Title") == name[: -len(".png")]
            assert img.width >= 600 and img.height >= 200
    # the committed figures are these very figures (the shipped models make them the same on every machine);
    # latency_vs_accuracy.png belongs to the benchmarks (timings): python -m benchmarks.bench_latency_accuracy --redraw
    committed = ROOT / "figures"
    assert {p.name for p in committed.glob("*.png")} == expected | {"latency_vs_accuracy.png"}
    for name in sorted(expected):
        with Image.open(first / name) as new, Image.open(committed / name) as old:
            assert new.size == old.size, f"figures/{name} is stale: run `python -m qlearn figures`"
            if name in F.MEASURED_HERE:
                continue
            a = np.asarray(new.convert("RGB"), dtype=np.int16)
            b = np.asarray(old.convert("RGB"), dtype=np.int16)
            differ = np.mean(np.any(np.abs(a - b) > 8, axis=-1))  # share of pixels that visibly differ
            assert differ < 0.002, f"figures/{name} is stale ({100 * differ:.2f} % of pixels differ): run `python -m qlearn figures`"


def test_every_lesson_explorer_is_drawn():
    """All registered notebook explorers exist, and discovered ones need no arguments."""
    specs = F.all_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    for spec in specs:
        factory = spec.factory()
        assert callable(factory) and F._no_required_args(factory), spec.target
    targets = {s.target for s in specs}
    for required in ("qlearn.widgets.basics:quantize_explorer", "qlearn.widgets.per_channel:layer_explorer",
                     "qlearn.widgets.outliers:outlier_explorer", "qlearn.widgets.skip:integer_add_explorer"):
        assert required in targets


def test_list_only_and_bad_arguments(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # run in this process (no re-exec)
    assert F.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(s.name in out for s in F.all_specs())
    assert F.main(["--only", "no_such_figure.png", "--out", str(tmp_path)]) == 2
    assert "unknown figure" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert F.main(["--out", str(blocker), "--only", "07_concat.png"]) == 2
    assert F.main(["--out", str(tmp_path / "one"), "--only", "07_concat.png", "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["07_concat.png"]
    with pytest.raises(SystemExit):
        F.main(["--bogus"])


def test_figure_spec_and_render_rules():
    def make_figure() -> Figure:
        fig = Figure(figsize=(3, 2))
        FigureCanvasAgg(fig)
        fig.add_subplot().plot([0, 1], [1, 0])
        return fig

    spec = F.FigureSpec("x.png", make_figure)
    assert isinstance(F.render(spec), Figure) and spec.target.endswith("make_figure")
    with pytest.raises(TypeError, match="returns an Explorer or a Figure"):
        F.render(F.FigureSpec("y.png", lambda: 42))
    with pytest.raises(ValueError, match=".png"):
        F.FigureSpec("x.svg", make_figure)
    with pytest.raises(ValueError, match="plain file name"):
        F.FigureSpec("sub/x.png", make_figure)
    with pytest.raises(ValueError, match="module:function"):
        F.FigureSpec("x.png", "qlearn.widgets.basics.quantize_explorer")
    with pytest.raises(TypeError, match="callable"):
        F.FigureSpec("x.png", 3)


def test_failing_figure_is_reported_not_skipped(tmp_path):
    def broken():
        raise RuntimeError("boom")

    written, errors = F.write_figures(tmp_path, [F.FigureSpec("b.png", broken)], progress=False)
    assert written == [] and len(errors) == 1 and "boom" in errors[0]
