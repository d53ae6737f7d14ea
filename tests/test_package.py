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
