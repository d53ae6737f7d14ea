"""Notebook 09: the cached quick pipeline run, the results it reports, and its two explorers.

Everything runs on a *tiny* pipeline (4 float epochs, 100 test images, PTQ at 8 and 4 bits, QAT at 8)
written into a temporary cache, so the file runs in seconds; the notebook's own quick run is exercised
by tests/test_notebooks.py. Oracles: the checkpoints re-evaluated with plain torch, a float64
reference of each integer layer, ``torch.nn.utils.fusion.fuse_conv_bn_eval`` for the folded weights,
and the report read back from disk with ``json``.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qlearn.lessons.mobilenet_pipeline as L
import qlearn.pipeline.runs as P
import qlearn.widgets.pipeline as W
from qlearn.convert import quantize_input
from qlearn.models import ConvBNReLU
from qlearn.train import evaluate

TINY = replace(P.PRESETS["quick"], float_epochs=4, n_test=100, ptq_bits=(8, 4), qat_bits=(8,), calib_batches=1,
               qat_epochs=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline-cache")


@pytest.fixture(scope="module")
def stages(cache) -> list[str]:
    """Fill the cache once (the stages the run reported are recorded through run_pipeline's hook)."""
    seen: list[str] = []
    real = P.run_pipeline

    def recording(cfg, out, *, on_stage=None):
        def hook(name: str) -> None:
            seen.append(name)
            on_stage(name)
        return real(cfg, out, on_stage=hook)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P, "run_pipeline", recording)
        P.cached_quick_run(directory=cache, config=TINY, progress=False)
    return seen


@pytest.fixture(scope="module")
def run(cache, stages) -> P.PipelineRun:
    return W.pipeline_run(directory=cache, config=TINY, progress=False)


def _report_on_disk(run: P.PipelineRun) -> dict:
    return json.loads((run.directory / "report.json").read_text())


# ---------------------------------------------------------------------------------- the cache
def test_the_cache_is_filled_once_and_then_read(cache, stages, run):
    assert stages == ["float", "ptq", "qat", "integer", "figures", "done"]
    folder = P.quick_run_dir(directory=cache, config=TINY)
    assert run.directory == folder and folder.name.startswith("quick-mobilenet_v2-seed0-")
    stamp = (folder / "report.json").stat().st_mtime_ns
    again = P.cached_quick_run(directory=cache, config=TINY, progress=False)
    assert (folder / "report.json").stat().st_mtime_ns == stamp  # read, not run again
    assert again["directory"] == str(folder)
    assert {k: v for k, v in again.items() if k != "directory"} == _report_on_disk(run)
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folders left behind
    assert W.pipeline_run(directory=cache, config=TINY, progress=False) is run  # one object per process


def test_other_settings_other_folder(cache):
    base = P.quick_run_dir(directory=cache, config=TINY)
    assert P.quick_run_dir(directory=cache, config=TINY) == base
    assert P.quick_run_dir(directory=cache, config=replace(TINY, float_epochs=5)) != base
    assert P.quick_run_dir(seed=1, directory=cache, config=TINY) != base
    assert "mobilenet_v1" in P.quick_run_dir("mobilenet_v1", directory=cache, config=TINY).name


def test_a_corrupt_cache_is_run_again_with_the_same_numbers(tmp_path, run):
    """A broken report.json is not trusted: the run is repeated, and the same seed gives the same numbers."""
    folder = P.quick_run_dir(directory=tmp_path, config=TINY)
    folder.mkdir(parents=True)
    (folder / "report.json").write_text("{ not json")
    report = P.cached_quick_run(directory=tmp_path, config=TINY, progress=False)
    before = _report_on_disk(run)
    for key in ("float_acc", "ptq", "qat", "integer", "weight_ranges", "float_history"):
        assert report[key] == before[key], key
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


# ---------------------------------------------------------------------------------- models and results
def test_loaded_models_reproduce_the_report(run):
    """Independent re-evaluation: float, QAT and the integer engine's own uint8 argmax."""
    rep = _report_on_disk(run)
    x, y = run.data.x_test, run.data.y_test
    assert x.shape[0] == rep["n_test"] == 100
    assert evaluate(run.float_model, x, y) == pytest.approx(rep["float_acc"])
    assert evaluate(run.qat8, x, y) == pytest.approx(rep["qat"]["8"])
    q = run.integer_model.run(quantize_input(run.qat8, x))
    assert q.dtype == np.uint8
    assert float((q.argmax(1) == y.numpy()).mean()) == pytest.approx(rep["integer"]["acc"])


def test_results_and_logit_sqnr_against_an_independent_computation(run):
    rep = _report_on_disk(run)
    res = L.results(run)
    x = run.data.x_test
    with torch.no_grad():
        f = run.float_model(x).double().numpy()
        fq = run.qat8.eval()(x).double().numpy()
    qo = run.integer_model.output_qparams
    ints = qo.scale * (run.integer_model.run(quantize_input(run.qat8, x)).astype(np.float64) - qo.zero_point)

    def sqnr(ref, approx):  # Eq. 18, written out
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((approx - ref) ** 2))

    assert res["logit SQNR integer vs fake-quant (dB)"] == pytest.approx(sqnr(fq, ints), rel=1e-6)
    assert res["logit SQNR integer vs float (dB)"] == pytest.approx(sqnr(f, ints), rel=1e-6)
    assert res["logit SQNR fake-quant vs float (dB)"] == pytest.approx(sqnr(f, fq), rel=1e-6)
    assert res["float"] == rep["float_acc"] and res["integer engine"] == rep["integer"]["acc"]
    assert res["PTQ 4-bit per-tensor"] == rep["ptq"]["per_tensor_minmax"]["4"]
    assert res["PTQ 8-bit per-channel"] == rep["ptq"]["per_channel_minmax"]["8"]
    assert res["QAT 8-bit"] == rep["qat"]["8"] and "QAT 4-bit" not in res
    md = L.results_markdown(run)
    assert f"{100 * rep['integer']['acc']:.2f} %" in md and f"{rep['integer']['max_lsb_diff']} LSB" in md
    assert md.count("| 2 PTQ |") == 4


def _reference_layer(layer, inputs: list[np.ndarray]) -> np.ndarray:
    """Float64 reference of one integer conv/linear layer: clamp(round(M acc) + Z_out), M = S_in S_w / S_out."""
    x = torch.from_numpy(inputs[0].astype(np.float64) - layer.in_zp)
    w = torch.from_numpy(np.asarray(layer.w_q, dtype=np.float64))
    if w.ndim == 4:
        acc = F.conv2d(x, w, None, layer.stride, layer.padding, 1, layer.groups)
        shape = (1, -1, 1, 1)
    else:
        acc = x @ w.T
        shape = (1, -1)
    acc = acc + torch.from_numpy(np.asarray(layer.bias_q, dtype=np.float64)).reshape(shape)
    m = layer.in_scale * np.broadcast_to(np.asarray(layer.w_scale, dtype=np.float64), (w.shape[0],)) / layer.out_scale
    q = np.rint(acc.numpy() * m.reshape(shape)) + layer.out_zp
    return np.clip(q, layer.act_min, layer.act_max)


def test_layer_agreement_against_a_float64_reference(run):
    rows = L.layer_agreement(run)
    assert [r.name for r in rows] == [l.name for l in run.integer_model.layers]
    codes = {"input": quantize_input(run.qat8, run.data.x_test).astype(np.int64)}
    for row in rows:
        codes[row.name] = row.q_fake
    checked = 0
    for row in rows:
        if row.kind in ("conv", "depthwise conv", "linear"):
            ref = _reference_layer(row.layer, [codes[i] for i in row.layer.inputs])
            diff = np.abs(row.q_alone - ref)
            assert diff.max() <= 1, row.name  # M0 is M to 31 bits; ties may round the other way
            assert np.mean(diff == 0) > 0.99, row.name
            checked += 1
        assert row.max_lsb_alone <= 1, row.name  # one layer's own integer arithmetic: within an LSB
    assert checked >= 20
    # the last layer end to end is the report's logit comparison (same 100 images)
    rep = _report_on_disk(run)
    assert rows[-1].exact_end_to_end == pytest.approx(rep["integer"]["exact_output_fraction"])
    assert rows[-1].max_lsb_end_to_end == rep["integer"]["max_lsb_diff"]
    q_int = run.integer_model.run(quantize_input(run.qat8, run.data.x_test)).astype(np.int64)
    np.testing.assert_array_equal(rows[-1].q_int, q_int)
    with torch.no_grad():
        fq = run.qat8(run.data.x_test).double().numpy()
    qo = run.integer_model.output_qparams
    np.testing.assert_array_equal(rows[-1].q_fake, np.rint(fq / qo.scale).astype(np.int64) + qo.zero_point)


# ---------------------------------------------------------------------------------- explorer 1: bits
def test_pipeline_explorer_numbers_follow_the_slider(run):
    rep = _report_on_disk(run)
    e = W.pipeline_explorer(run)
    assert e.controls["bits"].options == (8, 4) and e.numbers["weight bits"] == 8
    png8, n8 = e.image.value, dict(e.numbers)
    e.controls["bits"].value = 4
    assert e.numbers != n8 and e.image.value != png8 and e.redraws == 2
    for bits, numbers in ((8, n8), (4, e.numbers)):
        assert numbers["PTQ per-tensor min/max"] == rep["ptq"]["per_tensor_minmax"][str(bits)]
        assert numbers["PTQ per-channel MSE"] == rep["ptq"]["per_channel_mse"][str(bits)]
        assert numbers["integer engine (8-bit QAT)"] == rep["integer"]["acc"]
    assert n8["QAT per-channel"] == rep["qat"]["8"]
    assert e.numbers["QAT per-channel"].startswith("not run")


def test_pipeline_explorer_grid_levels_against_torch_fusion(run):
    """The narrowest folded channel's per-tensor levels (Eq. 70), from PyTorch's own conv-BN fusion."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    name = _report_on_disk(run)["weight_ranges"]["max_spread_layer"]
    block = dict(run.float_model.named_modules())[name]
    assert isinstance(block, ConvBNReLU)
    conv, bn = [m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    w = fuse_conv_bn_eval(conv.eval(), bn.eval()).weight.detach().double()
    absmax = w.abs().flatten(1).max(1).values.numpy()  # (Cout,)
    e = W.pipeline_explorer(run, bits=4)
    for bits in (4, 8):
        e.controls["bits"].value = bits
        qmax = 2 ** (bits - 1) - 1
        step = absmax.max() / qmax
        levels = sum(1 for k in range(-qmax, qmax + 1) if abs(k * step) <= absmax.min() * (1 + 1e-9))
        assert e.numbers[f"{name}: narrowest channel's levels, per-tensor"] == levels
        assert e.numbers[f"{name}: every channel's levels, per-channel"] == 2 * qmax + 1


@pytest.fixture(scope="module")
def bits_explorer(run) -> W.PipelineExplorer:
    return W.PipelineExplorer(run)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(moves=st.lists(st.sampled_from([8, 4]), min_size=1, max_size=4))
def test_pipeline_explorer_any_slider_path_shows_the_report(run, bits_explorer, moves):
    rep = run.report
    e = bits_explorer
    for bits in moves:
        e.controls["bits"].value = bits
    b = str(moves[-1])
    assert e.numbers["weight bits"] == moves[-1]
    assert e.numbers["PTQ per-channel min/max"] == rep["ptq"]["per_channel_minmax"][b]
    assert e.numbers["PTQ per-tensor MSE"] == rep["ptq"]["per_tensor_mse"][b]


# ---------------------------------------------------------------------------------- explorer 2: layers
def test_integer_layer_explorer_numbers_follow_the_slider(run):
    e = W.integer_layer_explorer(run)
    n0, png0 = dict(e.numbers), e.image.value
    assert n0["layer"] == "0: features.0" and n0["kind"] == "conv"
    e.controls["layer"].value = 5
    assert e.numbers != n0 and e.image.value != png0
    layer = run.integer_model.layers[5]
    m0, shift = np.asarray(layer.m0, np.int64), np.asarray(layer.shift, np.int64)
    assert e.numbers["M0 (int32)"] == f"{m0.min()} .. {m0.max()}"
    assert e.numbers["output zero point Z3"] == layer.out_zp
    m_exact = layer.in_scale * np.asarray(layer.w_scale) / layer.out_scale
    assert np.max(np.abs(m0 * 2.0 ** (shift.astype(np.float64) - 31) / m_exact - 1)) < 2.0 ** -30  # Eq. 23
    add = W.integer_layer_explorer(run, layer="features.1.add")
    assert add.numbers["kind"] == "add" and add.numbers["input zero point(s)"].count(",") == 1
    pool = W.integer_layer_explorer(run, layer="pool")
    assert pool.numbers["M0 (int32)"] == "-"


@pytest.fixture(scope="module")
def layers_explorer(run) -> W.IntegerLayerExplorer:
    return W.IntegerLayerExplorer(run)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(index=st.integers(0, 27))
def test_integer_layer_explorer_shares_match_the_codes(run, layers_explorer, index):
    e = layers_explorer
    e.controls["layer"].value = index
    row = L.layer_agreement(run)[index]
    assert e.numbers["identical codes, end to end"] == pytest.approx(np.mean(row.q_int == row.q_fake))
    assert e.numbers["identical codes, this layer alone"] == pytest.approx(np.mean(row.q_alone == row.q_fake))
    assert e.numbers["max |q_int - q_fake|, end to end (LSB)"] == int(np.abs(row.q_int - row.q_fake).max())
    assert e.numbers["output codes compared"] == row.q_fake.size


# ---------------------------------------------------------------------------------- re-run, figures
def test_runner_reruns_and_refreshes_linked_explorers(run):
    e1, e2 = W.pipeline_explorer(run), W.integer_layer_explorer(run, layer=3)
    e1.controls["bits"].value = 4
    before1, before2 = dict(e1.numbers), dict(e2.numbers)
    stamp = (run.directory / "report.json").stat().st_mtime_ns
    runner = W.pipeline_runner(e1, e2, directory=run.directory.parent, config=TINY)
    new = runner.run(rerun=True)
    assert (run.directory / "report.json").stat().st_mtime_ns != stamp  # it really ran again
    assert new is not run and e1.run is new and e2.run is new and runner.result is new
    assert e1.numbers == before1 and e2.numbers == before2  # same seed, same numbers
    assert not runner.button.disabled


def test_static_figures_and_no_argument_explorers(run, monkeypatch):
    from matplotlib.figure import Figure

    from qlearn import figures

    for make in (W.accuracy_figure, W.weight_ranges_figure, W.logits_figure):
        fig = make(run)
        assert isinstance(fig, Figure)
        assert W.show_figure(fig).data[:8] == b"\x89PNG\r\n\x1a\n"
    names = {s.name: s for s in figures.all_specs()}
    for name in ("09_pipeline.png", "09_integer_layers.png"):
        assert name in names and figures._no_required_args(names[name].factory())
    monkeypatch.setattr(W, "pipeline_run", lambda *a, **k: run)  # the no-argument form, on the tiny run
    assert figures.render(names["09_pipeline.png"]).get_size_inches()[0] * figures.DPI >= 600
    assert isinstance(W.integer_layer_explorer().run, P.PipelineRun)


# ---------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_clear_message(run, tmp_path):
    with pytest.raises(ValueError, match="model must be one of"):
        P.cached_quick_run("resnet50", directory=tmp_path)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        P.cached_quick_run(seed=-1, directory=tmp_path)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        P.cached_quick_run(seed=True, directory=tmp_path)
    with pytest.raises(TypeError, match="rerun must be True or False"):
        P.cached_quick_run(rerun="yes", directory=tmp_path)
    with pytest.raises(TypeError, match="progress must be True or False"):
        P.cached_quick_run(progress=1, directory=tmp_path)
    with pytest.raises(TypeError, match="directory must be a folder path"):
        P.cached_quick_run(directory=3)
    with pytest.raises(TypeError, match="config must be a PipelineConfig"):
        P.cached_quick_run(config="quick", directory=tmp_path)
    with pytest.raises(ValueError, match="qat_bits must include 8"):
        P.cached_quick_run(config=replace(TINY, qat_bits=(4,)), directory=tmp_path)
    with pytest.raises(TypeError, match="on_stage must be a function"):
        P.run_pipeline(TINY, tmp_path, on_stage="float")
    with pytest.raises(FileNotFoundError, match="holds no report.json"):
        P.load_run(tmp_path / "nothing")
    with pytest.raises(TypeError, match="directory must be the folder"):
        P.load_run(42)
    assert list(tmp_path.iterdir()) == []  # nothing was run or written
    with pytest.raises(TypeError, match="run must be a PipelineRun"):
        W.pipeline_explorer("run")
    with pytest.raises(TypeError, match="run must be a PipelineRun"):
        L.results({"float_acc": 1.0})
    with pytest.raises(ValueError, match="bits must be one of the run's weight bit widths"):
        W.pipeline_explorer(run, bits=6)
    with pytest.raises(ValueError, match="no integer layer named"):
        W.integer_layer_explorer(run, layer="features.99")
    with pytest.raises(ValueError, match="index 0..27"):
        W.integer_layer_explorer(run, layer=28)
    with pytest.raises(ValueError, match="images must be a positive integer"):
        L.logit_comparison(run, images=0)
    with pytest.raises(ValueError, match="images must be a positive integer"):
        L.layer_agreement(run, images=2.5)
    with pytest.raises(TypeError, match="matplotlib Figure"):
        W.show_figure(b"png")
    with pytest.raises(TypeError, match="cannot show another run"):
        W.pipeline_runner(object())


def test_a_read_only_cache_runs_into_a_temporary_folder(tmp_path, monkeypatch):
    """Where the cache cannot be written, the run still happens (elsewhere) instead of failing."""
    if os.geteuid() == 0:  # root ignores permissions: simulate the failure instead
        def refuse(*args, **kwargs):
            raise PermissionError("read-only")
        real = P.tempfile.mkdtemp
        monkeypatch.setattr(P.tempfile, "mkdtemp", lambda *a, **k: refuse() if k.get("dir") else real(*a, **k))
    else:
        tmp_path.chmod(0o500)
    tiny = replace(TINY, float_epochs=1, n_train=64, n_test=16, ptq_bits=(8,))
    report = P.cached_quick_run(directory=tmp_path / "cache", config=tiny, progress=False)
    folder = Path(report["directory"])
    try:
        assert tmp_path not in folder.parents and (folder / "report.json").is_file()
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        tmp_path.chmod(0o700)
