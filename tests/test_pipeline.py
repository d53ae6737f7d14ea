"""qlearn.pipeline: the --quick run end to end, its report, determinism, and refusing to overwrite."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qlearn.checkpoints import load_checkpoint
from qlearn.convert import convert, quantize_input
from qlearn.data import load_digits_data
from qlearn.pipeline import PRESETS, main, prepare_out_dir, run_pipeline
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["--model", "mobilenet_v2", "--out", str(out), "--quick", "--seed", "0", "--no-progress"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_quick_report_has_every_required_entry(quick_run):
    out, report = quick_run
    assert 0.0 <= report["float_acc"] <= 1.0
    assert set(report["ptq"]) == {"per_tensor_minmax", "per_tensor_mse", "per_channel_minmax", "per_channel_mse"}
    for accs in report["ptq"].values():
        assert set(accs) == {"8", "6", "5", "4"} and all(0.0 <= a <= 1.0 for a in accs.values())
    assert set(report["qat"]) == {"8", "4"}
    ig = report["integer"]
    for key in ("acc", "top1_agreement_with_fake_quant", "exact_output_fraction", "max_lsb_diff"):
        assert key in ig
    assert 0.0 <= ig["exact_output_fraction"] <= 1.0 and ig["max_lsb_diff"] >= 0
    assert set(report["seconds"]) >= {"data", "float", "ptq", "qat", "integer", "figures", "total"}
    assert report["seconds"]["total"] >= sum(v for k, v in report["seconds"].items() if k != "total") - 0.1
    for name in ("report.md", "float.pt", "qat8.pt", "qat4.pt", *report["figures"]):
        assert (out / name).is_file(), name
    for name in report["figures"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    assert "Integer engine" in md and "per_channel_minmax" in md and f"{100 * ig['acc']:.2f}" in md


def test_quick_run_is_a_working_quantized_model(quick_run):
    """Loose sanity on digits (a quick run is 6 epochs): every stage produced a real classifier."""
    _, report = quick_run
    assert report["float_acc"] > 0.8
    assert report["integer"]["acc"] > 0.8 and report["qat"]["8"] > 0.8
    assert report["integer"]["top1_agreement_with_fake_quant"] >= 0.97


def test_integer_accuracy_is_the_integer_engines_own(quick_run):
    """Rebuild the 8-bit QAT model from its checkpoint, convert it, and count the integer engine's hits."""
    out, report = quick_run
    float_model, _ = load_checkpoint(out / "float.pt")
    qs = report["qat_settings"]
    qcfg = QATConfig(weight_bits=8, per_channel=True, ema_decay=qs["ema_decay"],
                     act_quant_delay=qs["act_quant_delay"], freeze_bn_step=qs["freeze_bn_step"])
    qmodel, extra = load_checkpoint(out / "qat8.pt", prepare_qat(float_model, qcfg))
    assert extra["weight_bits"] == 8 and extra["qat_acc"] == report["qat"]["8"]
    integer_model = convert(qmodel.eval())
    data = load_digits_data(report["config"]["input_size"], seed=report["seed"]).subset(None, report["n_test"])
    q_out = integer_model.run(quantize_input(qmodel, data.x_test))  # uint8 (N, 10), integer arithmetic only
    assert q_out.dtype == np.uint8
    assert report["integer"]["acc"] == pytest.approx(float((q_out.argmax(1) == data.y_test.numpy()).mean()))


def test_same_seed_same_numbers(tmp_path):
    tiny = replace(PRESETS["quick"], n_train=256, n_test=64, float_epochs=2, ptq_bits=(8, 4), qat_epochs=1,
                   qat_bits=(8,), calib_batches=1, progress=False)
    reports = []
    for i in range(2):
        report = run_pipeline(tiny, prepare_out_dir(tmp_path / f"r{i}", overwrite=False))
        report.pop("seconds")  # wall times differ; every other number must not
        reports.append(report)
    assert reports[0] == reports[1]
    assert json.loads((tmp_path / "r0" / "report.json").read_text())["ptq"] == reports[0]["ptq"]
    other = run_pipeline(replace(tiny, seed=1), prepare_out_dir(tmp_path / "seed1", overwrite=False))
    assert other["float_history"] != reports[0]["float_history"]


def test_refuses_to_overwrite_a_previous_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text('{"precious": true}')
    assert main(["--out", str(out), "--quick", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "report.json").read_text() == '{"precious": true}'
    (tmp_path / "file").write_text("x")
    assert main(["--out", str(tmp_path / "file"), "--quick", "--no-progress"]) == 2
    with pytest.raises(FileExistsError):
        prepare_out_dir(out, overwrite=False)
    assert prepare_out_dir(out, overwrite=True) == out and (out / "report.json").exists()  # nothing deleted


@pytest.mark.parametrize("argv,message", [
    (["--device", "tpu"], "--device"),
    (["--dataset", "mnist"], "folder"),
])
def test_bad_options_give_clear_errors(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path / "o"), "--quick", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--quick"],  # --out is required
    ["--out", "x", "--model", "resnet50"],
    ["--out", "x", "--epochs", "0"],
    ["--out", "x", "--seed", "abc"],
])
def test_bad_command_lines_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_cuda_request_without_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    assert main(["--out", str(tmp_path / "o"), "--quick", "--device", "cuda", "--no-progress"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before anything is written


# ---------------------------------------------------------------------------------- issue 15: the command line
TINY = replace(PRESETS["quick"], n_train=64, n_test=16, float_epochs=1, ptq_bits=(8,), qat_bits=(8,), qat_epochs=1,
               calib_batches=1, progress=False)


def _no_work(monkeypatch):
    """Make any data loading fail loudly: argument errors must come before the first stage."""
    import qlearn.pipeline.run as P

    def refuse(*args, **kwargs):
        raise AssertionError("the data stage ran before the arguments were checked")

    monkeypatch.setattr(P, "load_dataset", refuse)


def _one_line_error(capsys, *names: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("pipeline: error: "), err
    assert "Traceback" not in err and captured.out == ""
    for name in names:
        assert name in err, (name, err)
    return err


@pytest.mark.parametrize("args,names", [
    (["--out", "{file}/run"], ["--out", "is a file, not a folder"]),
    (["--out", "{file}/deeper/run"], ["--out", "is a file, not a folder"]),
    (["--out", "{file}"], ["--out", "is a file, not a folder"]),
    (["--out", "{tmp}/o", "--seed", "-1"], ["--seed"]),
    (["--out", "{tmp}/o", "--seed", str(2**64)], ["--seed", "4294967295"]),
    (["--out", "{tmp}/o", "--dataset", "mnist", "--data-dir", "{file}"], ["--data-dir", "is a file, not a folder"]),
    (["--out", "{tmp}/o", "--dataset", "cifar10", "--data-dir", "{tmp}/missing"], ["--data-dir", "does not exist"]),
    (["--out", "{tmp}/o", "--dataset", "mnist"], ["--data-dir"]),
    (["--out", "{tmp}/o", "--data-dir", "{file}"], ["--data-dir"]),
    (["--out", "{tmp}/o", "--device", "tpu"], ["--device"]),
    (["--out", "{tmp}/foreign", "--overwrite"], ["--out", "notes.txt"]),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, args, names):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    _no_work(monkeypatch)
    argv = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    assert main([*argv, "--quick", "--no-progress"]) == 2
    _one_line_error(capsys, *names)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder (nor temporary one) left behind
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_a_read_only_place_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import errno

    import qlearn.pipeline.run as P

    _no_work(monkeypatch)
    if os.geteuid() != 0:  # a real read-only folder (root would ignore the permission bits)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["--out", str(ro / "run"), "--quick", "--no-progress"]) == 2
            _one_line_error(capsys, "--out", "cannot write")
        finally:
            ro.chmod(0o700)
    monkeypatch.setattr(P.os, "access", lambda *a, **k: False)  # what access() says on a read-only mount
    assert main(["--out", str(tmp_path / "a" / "run"), "--quick", "--no-progress"]) == 2
    _one_line_error(capsys, "--out", "read-only file system or no permission")
    monkeypatch.undo()
    _no_work(monkeypatch)

    def erofs(*args, **kwargs):  # a read-only file system that access() did not report
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(P.tempfile, "mkdtemp", erofs)
    assert main(["--out", str(tmp_path / "a" / "b" / "run"), "--quick", "--no-progress"]) == 2
    _one_line_error(capsys, "--out", "Read-only file system")
    assert not (tmp_path / "a").exists()  # the parent folders made for it are gone again


def test_a_bad_seed_from_a_real_process_is_one_line(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "qlearn", "pipeline", "--quick", "--no-progress", "--out", str(out),
                           "--seed", "-5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--seed" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _interrupt_after_float(monkeypatch):
    """Stop the run in the PTQ stage, after float.pt has been written: the worst moment for a mixture."""
    import qlearn.ptq

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qlearn.ptq, "ptq_sweep", interrupted)


def test_an_interrupted_fresh_run_leaves_nothing(tmp_path, monkeypatch, capsys):
    from qlearn.pipeline import write_run

    _interrupt_after_float(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_run(TINY, tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []  # no partial run, no temporary folder, no parent made for it
    assert main(["--out", str(tmp_path / "run"), "--quick", "--epochs", "1", "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_run_only_when_the_new_one_is_complete(tmp_path, monkeypatch):
    from qlearn.pipeline import load_run, write_run

    out = tmp_path / "run"
    first = write_run(TINY, out)
    old = _snapshot(out)
    assert set(old) == {"report.json", "report.md", "float.pt", "qat8.pt", *first["figures"]}
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_run(TINY, out)
    with monkeypatch.context() as mp:  # interrupted while replacing: the old run stays whole
        _interrupt_after_float(mp)
        with pytest.raises(KeyboardInterrupt):
            write_run(replace(TINY, seed=1), out, overwrite=True)
    assert _snapshot(out) == old and [p.name for p in tmp_path.iterdir()] == ["run"]
    second = write_run(replace(TINY, seed=1), out, overwrite=True)
    assert second["seed"] == 1 and json.loads((out / "report.json").read_text())["seed"] == 1
    assert _snapshot(out)["float.pt"] != old["float.pt"] and [p.name for p in tmp_path.iterdir()] == ["run"]
    assert load_run(out).report["seed"] == 1


def test_load_run_refuses_checkpoints_from_another_run(tmp_path):
    from qlearn.pipeline import load_run, write_run

    a, b = tmp_path / "a", tmp_path / "b"
    report = write_run(TINY, a)
    write_run(replace(TINY, seed=1), b)
    import hashlib

    for name, digest in report["checkpoints"].items():  # the recorded hashes are the files' own
        assert hashlib.sha256((a / name).read_bytes()).hexdigest() == digest
    assert load_run(a).report["seed"] == 0
    a_float = (a / "float.pt").read_bytes()
    (a / "float.pt").write_bytes((b / "float.pt").read_bytes())  # what an interrupted in-place overwrite left
    with pytest.raises(ValueError, match="float.pt does not belong to"):
        load_run(a)
    stale = json.loads((b / "report.json").read_text())
    hashes = stale.pop("checkpoints")  # a report from before the hashes were recorded: still checked
    (b / "report.json").write_text(json.dumps(stale))
    assert load_run(b).report["seed"] == 1
    b_float, b_qat8 = (b / "float.pt").read_bytes(), (b / "qat8.pt").read_bytes()
    (b / "qat8.pt").write_bytes((a / "qat8.pt").read_bytes())
    with pytest.raises(ValueError, match="qat8.pt does not belong to"):
        load_run(b)
    (b / "qat8.pt").write_bytes(b_qat8)
    (b / "float.pt").write_bytes(a_float)
    with pytest.raises(ValueError, match="float.pt does not belong to .*seed"):
        load_run(b)
    (b / "float.pt").write_bytes(b_float)
    (b / "qat8.pt").unlink()
    stale["checkpoints"] = hashes
    (b / "report.json").write_text(json.dumps(stale))
    with pytest.raises(FileNotFoundError, match="qat8.pt is missing"):
        load_run(b)
