"""The benchmark suite runs end to end (quick mode) and writes a complete results file where it is told
(never over the committed record unless --record); the deployment glue (qlearn.torch_int8) hands qlearn's
integers to the PyTorch int8 engine that computes them correctly, and says which and why.

No test here asserts a time: speed is what the benchmarks report, not what tests check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.agreement import code_agreement
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear
from qlearn.integer_model import IntegerModel
from qlearn.layer_integers import requant_multiplier
from qlearn.qparams import QParams
from qlearn.timing import Latency, measure
from qlearn.torch_int8 import (
    Int16SaturationWarning,
    choose_engine,
    pair_sum_bounds,
    to_torch_int8,
)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("sliders", "notebooks", "pipeline", "engine", "latency", "onnx", "imagenet", "grading", "distributed")


# ------------------------------------------------------------------------------ quick run, end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, MPLBACKEND="Agg", QLEARN_CACHE_DIR=str(out / "cache"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return out, proc


def test_quick_run_succeeds(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_quick_run_writes_a_complete_results_file(quick_run):
    out, _ = quick_run
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == "qlearn-benchmarks-v1" and res["quick"] is True
    m = res["machine"]
    for key in ("date", "cpu_model", "logical_cpus", "ram_gib", "load_average_at_start", "os"):
        assert m[key] not in (None, "", []), key
    assert m["ram_gib"] > 0 and m["logical_cpus"] >= 1
    for lib in ("python", "numpy", "torch", "matplotlib"):
        assert m["versions"][lib]
    assert set(m["int8_features"]) == {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"}
    assert set(res["sections"]) == set(SECTIONS)
    for name, sec in res["sections"].items():
        assert sec["error"] is None, f"{name}: {sec['error']}"
        assert sec["result"], name
        assert sec["seconds"] >= 0

    # every explorer in qlearn.widgets was found and moved
    from benchmarks.bench_sliders import discover

    sl = res["sections"]["sliders"]["result"]
    assert {r["explorer"] for r in sl["explorers"]} == set(discover())
    for r in sl["explorers"]:
        assert "error" not in r, r
        assert r["changes"] >= 1 and r["median_ms"] <= r["p95_ms"] <= r["max_ms"]
    assert any(r["data"] == 1_000_000 for r in sl["explorers"])

    nb = res["sections"]["notebooks"]["result"]
    assert nb["executed"] and all(r["error"] is None for r in nb["notebooks"])

    pipe = res["sections"]["pipeline"]["result"]["models"]
    assert set(pipe) == {"mobilenet_v1", "mobilenet_v2"}
    for r in pipe.values():
        assert {"float", "ptq", "qat", "integer", "total"} <= set(r["pipeline_seconds"])
        flows = r["qat8_flow_vs_pytorch"]
        for who in ("qlearn", "pytorch"):
            assert set(flows["seconds"][who]) == {"prepare", "train", "convert", "evaluate", "total"}
        for acc in flows["accuracy"].values():
            assert 0.0 <= acc <= 1.0

    eng = res["sections"]["engine"]["result"]
    for rows in eng["models"].values():
        assert len(rows) == 2  # two batch sizes
        for row in rows.values():
            assert set(row) == {"qlearn integer", "torch float", "torch int8", "torch int8 (own QAT)"}
            assert row["torch float"]["speedup_vs_torch_float"] == pytest.approx(1.0)
    assert len(eng["layers"]) >= 1
    for d in eng["deployment"].values():  # which deployment path ran, and why
        assert d["engine"] in ("qnnpack", "x86") and d["reason"].startswith(d["engine"] + ":")

    lat = res["sections"]["latency"]["result"]
    assert len(lat["points"]) >= 2
    for p in lat["points"]:
        ag = p["agreement_vs_qlearn"]
        assert 0.0 <= ag["exact_output_fraction"] <= 1.0 and 0.0 <= ag["top1_agreement"] <= 1.0
        assert p["float_ms"] > 0 and p["int8_ms"] > 0
        assert p["engine"] in ("qnnpack", "x86") and p["engine_reason"].startswith(p["engine"] + ":")
        # 8-bit QAT integers can saturate x86's int16 pairs, so the exact engine ran
        assert p["engine"] == "qnnpack" and "32767" in p["engine_reason"]

    h = res["headlines"]
    for key in ("int8_vs_float_latency_speedup_geomean", "integer_minus_float_accuracy_points",
                "qlearn_qat8_flow_vs_pytorch_time_ratio", "slider_p95_ms_worst", "notebooks_total_seconds"):
        assert key in h, key


def test_quick_run_writes_markdown_and_figure(quick_run):
    out, _ = quick_run
    md = (out / "RESULTS.md").read_text()
    for heading in ("## Headline ratios", "## Slider response", "## Notebook suite", "## Pipeline",
                    "## Integer engine", "## Latency vs accuracy"):
        assert heading in md
    assert "**Machine**" in md and "**Versions**" in md and "**int8 features**" in md
    assert "qnnpack" in md
    png = (out / "latency_vs_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # a run with --out leaves the committed figure alone
    res = json.loads((out / "results.json").read_text())
    assert Path(res["figure"]).resolve() == (out / "latency_vs_accuracy.png").resolve()


def test_results_go_to_the_committed_record_only_with_record(tmp_path):
    """No flag: runs/benchmarks/ (git-ignored); --out: there; --record (full runs only): the committed files."""
    from benchmarks.run import destinations, parse_args

    committed = {ROOT / "benchmarks", ROOT / "figures" / "latency_vs_accuracy.png"}
    for argv in ([], ["--quick"], ["--only", "latency"], ["--quick", "--out", str(tmp_path)]):
        out, fig = destinations(parse_args(argv))
        assert not ({out, fig} & committed), argv
        assert fig.parent == out
    assert destinations(parse_args([]))[0] == ROOT / "runs" / "benchmarks"
    assert "runs/" in (ROOT / ".gitignore").read_text().split()
    assert set(destinations(parse_args(["--record"]))) == committed
    for argv in (["--record", "--quick"], ["--record", "--only", "latency"], ["--record", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit):
            parse_args(argv)


# ------------------------------------------------------------------------------ qlearn.torch_int8
ACTS = {"relu": (10, 10), "none": (7, 0), "floor": (7, 3)}  # first conv: (out zero point, act_min)


def _small_model(seed: int, act: str = "relu", act_max: int = 255, residual: bool = False,
                 seven_bit: bool = False) -> IntegerModel:
    """input (N, 3, 6, 6) uint8 -> conv 3x3 -> [conv 1x1 + add] -> pool -> linear (5 classes).

    act: "relu" clamps at the zero point (ConvReLU2d), "none" not at all, "floor" at a code above
    qmin that is not the zero point (an extra clamp module). seven_bit: every tensor that feeds a conv
    or linear layer holds codes 0..127 (7-bit activations)."""
    zp1, lo1 = ACTS[act]
    top = 127 if seven_bit else 255
    act_max = min(act_max, top)
    rng = np.random.default_rng(seed)
    s_in, s1 = 1 / 255, 0.05
    w1 = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    sw1 = rng.uniform(0.001, 0.004, 8)
    m0, sh = requant_multiplier(s_in, sw1, s1)
    layers = [QConv2d("c1", ("input",), w1, rng.integers(-500, 500, 8).astype(np.int32), 0, zp1,
                      m0, sh, padding=1, act_min=lo1, act_max=act_max,
                      in_scale=s_in, w_scale=sw1, out_scale=s1)]
    prev, prev_scale, prev_zp = "c1", s1, layers[0].out_zp
    if residual:
        w2 = rng.integers(-127, 128, (8, 8, 1, 1)).astype(np.int8)
        sw2 = rng.uniform(0.002, 0.006, 8)
        m0b, shb = requant_multiplier(s1, sw2, 0.06)
        layers.append(QConv2d("c2", ("c1",), w2, rng.integers(-300, 300, 8).astype(np.int32), prev_zp, 120, m0b, shb,
                              act_min=0, act_max=255, in_scale=s1, w_scale=sw2, out_scale=0.06))
        layers.append(QAdd.from_scales("add", ("c1", "c2"), s1, prev_zp, 0.06, 120, 0.1, 60, act_min=0, act_max=top))
        prev, prev_scale, prev_zp = "add", 0.1, 60
    layers.append(QGlobalAvgPool("pool", (prev,), scale=prev_scale, zero_point=prev_zp))
    wl = rng.integers(-127, 128, (5, 8)).astype(np.int8)
    swl = rng.uniform(0.005, 0.02, 5)
    m0l, shl = requant_multiplier(prev_scale, swl, 0.2)
    layers.append(QLinear("fc", ("pool",), wl, rng.integers(-200, 200, 5).astype(np.int32), prev_zp, 128, m0l, shl,
                          in_scale=prev_scale, w_scale=swl, out_scale=0.2))
    return IntegerModel(layers, QParams(s_in, 0, 0, top), QParams(0.2, 128, 0, 255), input_shape=(1, 3, 6, 6))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), act=st.sampled_from(sorted(ACTS)), residual=st.booleans(),
       act_max=st.sampled_from([255, 60]), seven_bit=st.booleans())
def test_torch_int8_follows_qlearn_within_one_lsb_per_layer(seed, act, residual, act_max, seven_bit):
    """Oracle: qlearn's integer engine. engine="auto" picks qnnpack for full-range codes and x86 for
    7-bit ones; either way every layer, fed qlearn's codes, is within 1 LSB on any CPU."""
    im = _small_model(seed, act=act, act_max=act_max, residual=residual, seven_bit=seven_bit)
    tm = to_torch_int8(im)
    assert tm.engine == ("x86" if seven_bit else "qnnpack"), tm.engine_reason
    top = im.input_qparams.qmax
    x_q = (np.random.default_rng(seed + 1).integers(0, top + 1, (4, 3, 6, 6))).astype(np.uint8)
    ours = im.layer_outputs(x_q)
    same = []
    for layer in im.layers:
        got = tm.run_layer(layer.name, *(ours[i] for i in layer.inputs)).astype(np.int64)
        assert got.shape == ours[layer.name].shape
        assert np.abs(got - ours[layer.name]).max() <= 1, layer.name
        same.append((got == ours[layer.name]).mean())
    assert np.mean(same) >= 0.9
    # the clamp of the first conv is honoured exactly: never outside [act_min, act_max]
    c1 = tm.run_layer("c1", x_q)
    assert ACTS[act][1] <= int(c1.min()) and int(c1.max()) <= act_max


@pytest.mark.parametrize("seven_bit", [False, True])
def test_torch_int8_end_to_end_codes_and_float_forward(seven_bit):
    im = _small_model(3, residual=True, seven_bit=seven_bit)
    tm = to_torch_int8(im)
    x_q = np.random.default_rng(0).integers(0, 128, (16, 3, 6, 6)).astype(np.uint8)
    ours, theirs = im.run(x_q), tm.run_codes(x_q)
    assert theirs.dtype == np.uint8 and theirs.shape == ours.shape == (16, 5)
    ag = code_agreement(ours, theirs)
    assert ag.max_lsb_diff <= 3  # 1-LSB roundings, compounded over four layers
    # the float forward = quantize (input qparams) -> same graph -> dequantize (output qparams)
    x = torch.from_numpy(x_q.astype(np.float32) / 255.0)
    y = tm(x).numpy()
    np.testing.assert_allclose(y, 0.2 * (theirs.astype(np.float64) - 128), rtol=0, atol=1e-6)


def test_torch_int8_weights_are_handed_over_exactly():
    im = _small_model(5)
    tm = to_torch_int8(im)
    w = tm.ops["c1"].weight()
    np.testing.assert_array_equal(w.int_repr().numpy(), im["c1"].w_q)
    np.testing.assert_allclose(w.q_per_channel_scales().numpy(), im["c1"].w_scale)


def test_auto_engine_is_chosen_from_the_integers():
    full, seven = _small_model(0, residual=True), _small_model(0, residual=True, seven_bit=True)
    b = pair_sum_bounds(full)
    assert set(b) == {"c1", "c2", "fc"}
    assert b["c1"]["act_max"] == 255 and b["c1"]["max_pair_sum"] > 32767
    assert all(v["act_max"] <= 127 and v["max_pair_sum"] <= 32767 for v in pair_sum_bounds(seven).values())
    engine, reason = choose_engine(full)
    assert engine == "qnnpack" and "'c1'" in reason and "32767" in reason
    engine, reason = choose_engine(seven)
    assert engine == "x86" and "32767" in reason
    tm = to_torch_int8(full)
    assert (tm.engine, tm.engine_reason) == choose_engine(full)
    assert tm.cpu["source"] and set(tm.cpu) >= {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"}
    # 7-bit weights (|w| <= 64) with full-range codes: x86 too
    small_w = _small_model(0)
    for layer in small_w.layers:
        if isinstance(layer, (QConv2d, QLinear)):
            object.__setattr__(layer, "w_q", (layer.w_q // 2).astype(np.int8))  # |w| <= 64
    assert choose_engine(small_w)[0] == "x86"


def test_explicit_x86_with_full_range_integers_warns_loudly():
    old = torch.backends.quantized.engine
    with pytest.warns(Int16SaturationWarning, match="32767"):
        tm = to_torch_int8(_small_model(0), engine="x86")
    assert tm.engine == "x86" and "WARNING" in tm.engine_reason
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int16SaturationWarning)
        to_torch_int8(_small_model(0, seven_bit=True), engine="x86")  # nothing can saturate: no warning
        to_torch_int8(_small_model(0), engine="qnnpack")
    assert torch.backends.quantized.engine == old  # set only while building and running


def test_qnnpack_clamp_on_channels_last_output_is_exact():
    """qnnpack convs return channels-last tensors, and its quantized clamp gets those wrong unless they are
    made contiguous: a conv whose clamp floor is no zero point (an extra clamp module) shows it."""
    im = _small_model(0, act="floor", act_max=60, residual=True)
    tm = to_torch_int8(im, engine="qnnpack")
    x_q = np.random.default_rng(0).integers(0, 256, (4, 3, 6, 6)).astype(np.uint8)
    ours = im.layer_outputs(x_q)
    got = tm.run_layer("c1", x_q).astype(np.int64)
    assert np.abs(got - ours["c1"]).max() <= 1
    assert got.min() >= ACTS["floor"][1] and got.max() <= 60


def test_to_torch_int8_rejects_bad_input():
    with pytest.raises(TypeError, match="IntegerModel"):
        to_torch_int8("not a model")
    with pytest.raises(ValueError, match="engine"):
        to_torch_int8(_small_model(0), engine="no-such-engine")
    with pytest.raises(TypeError, match="engine"):
        to_torch_int8(_small_model(0), engine=3)
    tm = to_torch_int8(_small_model(0))
    with pytest.raises(TypeError, match="uint8"):
        tm.run_codes(np.zeros((1, 3, 6, 6), dtype=np.float32))
    with pytest.raises(TypeError, match="float"):
        tm(torch.zeros((1, 3, 6, 6), dtype=torch.int64))
    with pytest.raises(ValueError, match="no layer"):
        tm.run_layer("nope", np.zeros((1, 3, 6, 6), np.uint8))
    with pytest.raises(ValueError, match="input"):
        tm.run_layer("c1")
    signed = _small_model(0)
    signed.output_qparams = QParams(0.2, 0, -128, 127)
    with pytest.raises(ValueError, match="uint8"):
        to_torch_int8(signed)


def test_code_agreement_against_hand_counts():
    a = np.array([[1, 5, 2], [7, 0, 0]], dtype=np.uint8)
    b = np.array([[1, 4, 2], [6, 9, 0]], dtype=np.uint8)
    ag = code_agreement(a, b)
    assert ag.n == 2
    assert ag.top1_agreement == 0.5  # row 0: class 1 both; row 1: class 0 vs class 1
    assert ag.exact_output_fraction == pytest.approx(3 / 6)
    assert ag.max_lsb_diff == 9
    assert ag.to_dict()["max_lsb_diff"] == 9


def test_code_agreement_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        code_agreement(np.zeros((2, 3), np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        code_agreement(np.zeros(3, np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(TypeError, match="integer"):
        code_agreement(np.zeros((2, 3)), np.zeros((2, 3)))


def test_timing_measure_counts_calls_and_orders_statistics():
    calls = []
    lat = measure(lambda: calls.append(1), repeats=7, warmup=3)
    assert isinstance(lat, Latency)
    assert len(calls) == 10 and lat.repeats == 7
    assert 0 <= lat.min_ms <= lat.median_ms <= lat.p95_ms
    assert set(lat.to_dict()) == {"median_ms", "p95_ms", "min_ms", "repeats"}


def test_timing_measure_rejects_bad_input():
    with pytest.raises(TypeError, match="callable"):
        measure(3)
    for kw, error in (({"repeats": 0}, ValueError), ({"repeats": 2.5}, TypeError), ({"warmup": -1}, ValueError),
                      ({"repeats": True}, TypeError), ({"min_seconds": -1.0}, ValueError)):
        with pytest.raises(error, match=next(iter(kw))):
            measure(lambda: None, **kw)


def test_control_values_move_every_kind_of_control():
    import ipywidgets as widgets

    from benchmarks.bench_sliders import control_values

    s = widgets.IntSlider(value=4, min=2, max=8)
    seq = control_values(s, 3)
    assert seq[-1] == 4 and all(2 <= v <= 8 for v in seq) and all(a != b for a, b in zip([4] + seq, seq))
    r = widgets.FloatRangeSlider(value=(-2.0, 3.0), min=-5.0, max=5.0, step=0.05)
    seq = control_values(r, 2)
    assert seq[-1] == (-2.0, 3.0) and all(lo < hi for lo, hi in seq)
    assert control_values(widgets.Checkbox(False), 3) == [True, False]
    d = widgets.Dropdown(options=[("a", 1), ("b", 2), ("c", 3)], value=2)
    assert control_values(d, 5) == [1, 3, 2]
    assert control_values(widgets.HTML("x"), 3) == []
