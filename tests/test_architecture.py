"""The package's shape (issue: one concept per module): sizes, layers, no import loops, lessons without UI.

These read the source with ``ast`` (no execution), except the UI check, which imports every lesson
module in a fresh interpreter and looks at ``sys.modules``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "qlearn"
MAX_LINES = 500

#: Local (function-level) imports of qlearn's own modules that are there on purpose, with the reason.
LOCAL_IMPORTS_ALLOWED = {
    # the pipeline's figures stage draws with matplotlib; importing it at the top would pull matplotlib
    # into every lesson that loads a pipeline run
    ("qlearn.pipeline.run", "qlearn.pipeline.drawing"),
    # the grader's process stays free of torch (qlearn.grading.wire); these oracles run on torch, so an
    # exercise module imports their qlearn module only when a check calls the oracle
    ("qlearn.grading.exercises.ex5", "qlearn.bn_fold"),
    ("qlearn.grading.exercises.ex6", "qlearn.fake_quant"),
    ("qlearn.grading.exercises.ex9", "qlearn.fake_quant"),
    ("qlearn.grading.exercises.ex13", "qlearn.lessons.transformer"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(qlearn/benchmarks modules imported at module level, those imported inside functions)."""
    tree = ast.parse(MODULES[name].read_text())
    top_nodes = set()
    for node in tree.body:
        top_nodes.add(node)
        if isinstance(node, (ast.If, ast.Try)):  # e.g. `if TYPE_CHECKING:` / optional-import blocks
            for child in ast.walk(node):
                top_nodes.add(child)
    top, local = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        targets = {t for t in targets if t.split(".")[0] in ("qlearn", "benchmarks")}
        # a target that is a module (not a name inside one), and not one of this module's own packages
        targets = {t for t in targets if (t in MODULES or t.startswith("benchmarks")) and not name.startswith(t + ".")
                   and t != name}
        (top if node in top_nodes else local).update(targets)
    return top, local


IMPORTS = {name: _imports(name) for name in MODULES}


def test_no_module_over_the_size_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_no_import_loop():
    graph = {name: {t for t in IMPORTS[name][0] if t in MODULES} for name in MODULES}
    state: dict[str, int] = {}
    loops = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                loops.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [])
    assert not loops, f"import loops: {loops}"


def _layer(name: str) -> str:
    for prefix in ("qlearn.widgets", "qlearn.lessons", "qlearn.pipeline", "qlearn.grading"):
        if name == prefix or name.startswith(prefix + "."):
            return prefix.split(".")[1]
    if name in ("qlearn.figures", "qlearn.lecture", "qlearn.__main__", "qlearn.ship"):
        return "tools"
    return "core"


# which layers each layer may import (module level or local): dependencies point down only
ALLOWED = {
    "core": {"core"},
    "lessons": {"core", "lessons", "pipeline"},
    "pipeline": {"core", "pipeline"},
    "widgets": {"core", "lessons", "pipeline", "widgets"},
    "grading": {"core", "lessons", "grading"},
    "tools": {"core", "lessons", "pipeline", "widgets", "grading", "tools"},
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_dependencies_point_down(name):
    top, local = IMPORTS[name]
    bad = sorted(t for t in top | local if t.startswith("benchmarks") or _layer(t) not in ALLOWED[_layer(name)])
    assert not bad, f"{name} ({_layer(name)}) must not import {bad}"


def test_imports_of_qlearn_modules_are_at_the_top():
    local = sorted((name, t) for name in MODULES for t in IMPORTS[name][1]
                   if (name, t) not in LOCAL_IMPORTS_ALLOWED and t not in IMPORTS[name][0])
    assert not local, f"move these imports to the top of the module: {local}"


def test_lessons_import_no_ui():
    lessons = sorted(n for n in MODULES if n.startswith("qlearn.lessons."))
    code = ("import sys\n" + "".join(f"import {n}\n" for n in lessons)
            + "ui = sorted(m for m in ('ipywidgets', 'matplotlib', 'IPython.display') if m in sys.modules)\n"
            "print(','.join(ui))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"qlearn.lessons pulls in UI modules: {out.stdout.strip()}"


def test_widgets_hold_no_lesson_computation():
    """A widget module defines explorers, their factories and drawing helpers; result types are the lessons'."""
    for name in sorted(n for n in MODULES if n.startswith("qlearn.widgets.")):
        tree = ast.parse(MODULES[name].read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                decorators = {ast.unparse(d).split("(")[0] for d in node.decorator_list}
                assert not decorators & {"dataclass", "dataclasses.dataclass"}, (
                    f"{name}.{node.name} is a result type: it belongs in qlearn.lessons")


def test_readme_package_table_names_every_module():
    """A newcomer finds every core module, and for each notebook its lesson and widget module, in README."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The package"):]
    named = set(re.findall(r"`([a-z_0-9]+)/?`", section))
    core = {p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__")} | {"pipeline", "grading"}
    lessons = {p.stem for p in (PKG / "lessons").glob("*.py") if p.stem != "__init__"}
    widgets = {p.stem for p in (PKG / "widgets").glob("*.py") if p.stem not in ("__init__", "base")}
    assert not (core | lessons | widgets) - named, f"not in README's package section: {sorted((core | lessons | widgets) - named)}"
