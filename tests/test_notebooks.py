"""Every lesson notebook runs top to bottom, and is committed clean (no outputs, no widget state)."""
import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALL_NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def test_there_are_lesson_notebooks():
    assert len(LESSONS) >= 2


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_without_outputs_or_widget_state(path):
    nb = json.loads(path.read_text())
    outputs = sum(len(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")
    counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
    assert outputs == 0, f"{path.name} is committed with {outputs} outputs: clear them before committing"
    assert all(c is None for c in counts), f"{path.name} has execution counts: clear outputs"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} carries saved widget state"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_executes_top_to_bottom(path, tmp_path, record_property):
    nb = nbformat.read(path, as_version=4)
    env_dir = tmp_path / "mpl"
    env_dir.mkdir()
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    record_property("seconds", time.perf_counter() - t0)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "teaches" in first.source, "start with what the notebook teaches"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Try this" in text and "Summary" in text
