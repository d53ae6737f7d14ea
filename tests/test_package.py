"""The top-level package: exports, lazy torch imports, and the command-line entry point."""
import subprocess
import sys

import pytest

import qlearn


def test_import_qlearn_does_not_import_torch():
    code = "import sys, qlearn; qlearn.quantize; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", sorted(qlearn.__all__))
def test_every_exported_name_resolves(name):
    assert getattr(qlearn, name) is not None
    assert name in dir(qlearn)


def test_lazy_names_are_the_submodule_objects():
    from qlearn.bn_fold import fuse_conv_bn
    from qlearn.grading import check
    from qlearn.qat import prepare_qat

    assert qlearn.fuse_conv_bn is fuse_conv_bn and qlearn.check is check and qlearn.prepare_qat is prepare_qat


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        qlearn.nope  # noqa: B018


def test_cli_without_a_command_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "qlearn"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    for command in ("pipeline", "figures", "grade", "lecture"):
        assert command in text


# ---------------------------------------------------------------------------------- packaging
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn", "IPython": "ipython", "PIL": "pillow", "yaml": "pyyaml"}
# imported by qlearn but installed by a declared dependency (matplotlib brings Pillow)
INDIRECT = {"pillow": "matplotlib"}


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower())  # PEP 503


def test_every_third_party_import_is_declared():
    import ast

    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs}
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for path in (ROOT / "qlearn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top in stdlib or top == "qlearn":
                    continue
                dist = _name(DIST.get(top, top))
                if dist not in declared and INDIRECT.get(dist) not in declared:
                    missing.setdefault(dist, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_requirements_pin_every_core_dependency_and_install_the_extras():
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    pins = {_name(l): l for l in lines if not l.startswith("-e")}
    assert all("==" in p for p in pins.values()), "requirements.txt pins exact versions"
    core = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    assert core <= set(pins), f"not pinned: {core - set(pins)}"
    assert pins["torch"] == "torch==2.13.0"  # the CPU wheel; a looser pin pulls a CUDA build
    editable = [l for l in lines if l.startswith("-e")]
    assert editable == ["-e .[notebooks,lecture,grading,onnx,imagenet]"]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_command():
    import re

    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert commands == ["pip install -r requirements.txt && jupyter lab notebooks/",
                        'pip install -r requirements.txt -e ".[test]" && python -m pytest']
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pip install -q -r requirements.txt -e ".[test]" && python -m pytest -q' in ci


def test_console_script_is_the_module_entry_point():
    assert _pyproject()["project"]["scripts"]["qlearn"] == "qlearn.__main__:main"
