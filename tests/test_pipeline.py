"""qlearn.pipeline: the --quick run end to end, its report, determinism, and refusing to overwrite."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qlearn.convert import convert, quantize_input
from qlearn.data import load_digits_data
from qlearn.pipeline import PRESETS, main, prepare_out_dir, run_pipeline
from qlearn.qat import QATConfig, prepare_qat
from qlearn.train import load_checkpoint

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
