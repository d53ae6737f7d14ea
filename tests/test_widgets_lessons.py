"""Notebook 03/04/07 explorers and the functions under them, driven headless.

Each explorer: move a control, the numbers and the PNG change, and the numbers are the library's (or an
independent oracle's: float64 written out, PyTorch's own fake-quant and quantized add). The model-based
explorers run on a tiny MobileNet trained for a few steps here, so no test depends on the cache.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.data import load_digits_data
from qlearn.error import error_breakdown, sqnr_db
from qlearn.lessons import lesson_model as M
from qlearn.lessons import outliers_ranges as O
from qlearn.lessons import per_channel as P
from qlearn.lessons import skip_connections as K
from qlearn.models import ConvBNReLU, mobilenet_v1
from qlearn.qparams import qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, quantize
from qlearn.ranges import EMARange, minmax_range, mse_range, range_for, weight_qparams
from qlearn.threads import one_thread
from qlearn.train import TrainConfig, evaluate, seed_everything, train
from qlearn.widgets import outliers as OW
from qlearn.widgets import per_channel as PW
from qlearn.widgets import skip as KW

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_lesson() -> M.LessonModel:
    """A width-0.25 MobileNet v1 on 16x16 digits, trained 3 short epochs (about a second)."""
    data = load_digits_data(16).subset(300, 120)
    seed_everything(0)
    model = mobilenet_v1(width=0.25, input_size=16)
    with one_thread():
        train(model, data.x_train, data.y_train, TrainConfig(epochs=3, batch_size=32, lr=1e-2), progress=False)
    return M.LessonModel.from_model(model, data)


def _torch_fq_weights(w: np.ndarray, bits: int, per_channel: bool) -> torch.Tensor:
    """Oracle: PyTorch's own fake-quant ops with the paper's symmetric narrow weight grid."""
    qmax = 2 ** (bits - 1) - 1
    t = torch.from_numpy(w)
    flat = np.abs(w.reshape(w.shape[0], -1))
    if per_channel:
        s = torch.from_numpy(flat.max(axis=1) / qmax)
        return torch.fake_quantize_per_channel_affine(t.float(), s.float(), torch.zeros(len(s), dtype=torch.int32), 0, -qmax, qmax)
    return torch.fake_quantize_per_tensor_affine(t.float(), float(flat.max() / qmax), 0, -qmax, qmax)


# ---------------------------------------------------------------------------------- notebook 03: seed
def test_seed_weights_have_the_seed_ranges_exactly():
    w = P.seed_channel_weights(500, seed=3)
    lo, hi = minmax_range(w, axis=0)
    assert w.shape == (3, 500)
    np.testing.assert_array_equal(lo, [r[0] for r in P.SEED_RANGES])
    np.testing.assert_array_equal(hi, [r[1] for r in P.SEED_RANGES])
    np.testing.assert_array_equal(w, P.seed_channel_weights(500, seed=3))
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        P.seed_channel_weights(1)


def test_compare_schemes_against_float64_written_out():
    w = P.seed_channel_weights(2000)
    for bits in (3, 8):
        cmp = P.compare_schemes(w, bits)
        qmax = 2 ** (bits - 1) - 1
        s_t = 4.7 / qmax  # the widest channel [-4.7, 3.8] sets the per-tensor scale (Eq. 8)
        s_c = np.array([2.3, 0.7, 4.7]) / qmax
        assert cmp.per_tensor.scale == pytest.approx(s_t, rel=1e-12)
        np.testing.assert_allclose(cmp.per_channel.scale, s_c, rtol=1e-12)
        for c in range(3):
            ref_t = np.mean((np.clip(np.rint(w[c] / s_t), -qmax, qmax) * s_t - w[c]) ** 2)
            ref_c = np.mean((np.clip(np.rint(w[c] / s_c[c]), -qmax, qmax) * s_c[c] - w[c]) ** 2)
            assert cmp.mse_tensor[c] == pytest.approx(ref_t, rel=1e-9)
            assert cmp.mse_channel[c] == pytest.approx(ref_c, rel=1e-9)
            assert cmp.sqnr_channel[c] == pytest.approx(sqnr_db(w[c], fake_quantize(w[c], qparams_from_range(
                w[c].min(), w[c].max(), bits, symmetric=True, signed=True, narrow_range=True))))
        np.testing.assert_allclose(cmp.predicted_ratio, (s_t / s_c) ** 2)
    # Eq. 19: at 8 bits the small channel's MSE grows by (4.7 / 0.7)^2 = 45, as measured
    cmp = P.compare_schemes(w, 8)
    assert cmp.predicted_ratio[1] == pytest.approx((4.7 / 0.7) ** 2)
    assert cmp.mse_ratio[1] == pytest.approx(cmp.predicted_ratio[1], rel=0.15)
    assert cmp.mse_ratio[2] == 1.0  # the widest channel gets the same grid either way


def test_compare_schemes_matches_pytorch_per_channel_fake_quant():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4, 3, 3)) * np.array([0.01, 0.1, 1, 2, 5, 0.3])[:, None, None, None]
    cmp = P.compare_schemes(w, 4)
    for pc, mse in ((False, cmp.mse_tensor), (True, cmp.mse_channel)):
        ref = _torch_fq_weights(w, 4, pc).double().numpy()
        ref_mse = np.mean((ref - w).reshape(6, -1) ** 2, axis=1)
        np.testing.assert_allclose(mse, ref_mse, rtol=1e-4)


@SETTINGS
@given(
    spread=st.floats(0.0, 3.0), bits=st.integers(2, 8), seed=st.integers(0, 100),
    symmetric=st.booleans(), axis=st.sampled_from([0, 1, -1]),
)
def test_compare_schemes_properties(spread, bits, seed, symmetric, axis):
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-spread, 0.0, 5)
    w = rng.normal(size=(5, 40)) * scales[:, None]
    w = np.moveaxis(w, 0, axis) if axis != 0 else w
    cmp = P.compare_schemes(w, bits, axis=axis, symmetric=symmetric)
    chan = np.moveaxis(w, axis, 0)
    fq_c = fake_quantize(chan, cmp.per_channel)
    # per-channel: every value within half a step of its own channel's grid (no clipping with min/max)
    assert np.all(np.abs(fq_c - chan) <= cmp.per_channel.scale[:, None] / 2 + 1e-12)
    assert np.all(cmp.per_channel.scale <= cmp.per_tensor.scale * (1 + 1e-12))
    if symmetric:
        assert np.all(cmp.predicted_ratio >= 1 - 1e-12)
        widest = int(np.argmax(np.abs(chan).max(axis=1)))
        assert cmp.mse_tensor[widest] == pytest.approx(cmp.mse_channel[widest])
    assert np.all(cmp.levels_channel >= 1) and np.all(cmp.levels_tensor >= 0)


def test_compare_schemes_rejects_bad_input():
    with pytest.raises(ValueError, match="channel axis"):
        P.compare_schemes(np.ones(5), 8)
    with pytest.raises(ValueError, match="bits"):
        P.compare_schemes(np.ones((2, 2)), 1)
    with pytest.raises(TypeError, match="symmetric"):
        P.compare_schemes(np.ones((2, 2)), 8, symmetric="yes")
    with pytest.raises(ValueError, match="axis=3"):
        P.compare_schemes(np.ones((2, 2)), 8, axis=3)
    with pytest.raises(ValueError, match="NaN"):
        P.compare_schemes(np.array([[1.0, np.nan]]), 8)


def test_channel_sqnr_db_oracle_zero_and_exact_channels():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 50))
    w[1] = 0.0
    w_hat = w + rng.normal(scale=0.01, size=w.shape)
    w_hat[1] = 0.0
    w_hat[2] = w[2]
    out = P.channel_sqnr_db(w, w_hat)
    assert out[0] == pytest.approx(sqnr_db(w[0], w_hat[0]))
    assert np.isnan(out[1]) and out[2] == np.inf
    with pytest.raises(ValueError, match="same shape"):
        P.channel_sqnr_db(w, w_hat[:2])


def test_seed_channels_explorer_follows_the_library():
    ex = PW.seed_channels_explorer(bits=3, n=500)
    png0, n0 = ex.image.value, dict(ex.numbers)
    assert n0["ch 1: grid points in its range (tensor / channel)"] == "1 / 6"  # 3 bits: [-3, 3] codes
    ex.controls["bits"].value = 8
    assert ex.image.value != png0 and ex.numbers != n0 and ex.redraws == 2
    cmp = P.compare_schemes(ex.w, 8)
    assert ex.numbers["per-tensor scale S"] == cmp.per_tensor.scale
    assert ex.numbers["ch 1: MSE per-channel"] == cmp.mse_channel[1]
    assert ex.numbers["ch 1: MSE ratio Eq. 19 (S/S_c)^2"] == pytest.approx(45.08, abs=0.01)
    ex.controls["symmetric"].value = False
    assert ex.numbers["per-tensor scale S"] == pytest.approx(8.5 / 255)  # asymmetric uint8 over [-4.7, 3.8]
    assert "MSE ratio measured" in ex.image.readout


# ---------------------------------------------------------------------------------- the lesson model
def test_lesson_model_trains_once_caches_and_reloads_identically(tmp_path):
    cfg = M.LessonConfig(width=0.25, input_size=8, epochs=1, batch_size=128)
    a = M.lesson_model(cfg, directory=tmp_path / "a", progress=False)
    assert M.lesson_model(cfg, directory=tmp_path / "a") is a  # same object within a process
    assert a.path == tmp_path / "a" / f"{cfg.key}.pt" and a.path.is_file()
    b = M.lesson_model(cfg, directory=tmp_path / "b", progress=False)  # trained again, elsewhere
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # deterministic training
    M._LESSONS.pop((cfg, str(tmp_path / "a")))
    c = M.lesson_model(cfg, directory=tmp_path / "a")  # from the checkpoint now
    assert c is not a and all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)
    assert c.float_acc == a.float_acc
    assert set(c.layers) == set(a.layers) and "classifier" in c.layers
    assert any(l.kind == "depthwise" for l in c.layers.values())


def test_lesson_model_bad_input():
    with pytest.raises(TypeError, match="LessonConfig"):
        M.lesson_model({"arch": "mobilenet_v1"})
    with pytest.raises(ValueError, match="arch"):
        M.LessonConfig(arch="resnet")
    with pytest.raises(ValueError, match="epochs"):
        M.LessonConfig(epochs=-1)
    with pytest.raises(TypeError, match="directory"):
        M.lesson_model(directory=3)
    with pytest.raises(TypeError, match="ImageData"):
        M.LessonModel.from_model(mobilenet_v1(), data=None)


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("QLEARN_CACHE_DIR", str(tmp_path / "q"))
    assert M.cache_dir() == tmp_path / "q"
    monkeypatch.delenv("QLEARN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert M.cache_dir() == tmp_path / "qlearn"


def test_folded_layers_are_the_folded_weights(tiny_lesson):
    from qlearn.bn_fold import fold_bn

    block = tiny_lesson.model.features[1].dw  # depthwise ConvBNReLU
    bn = block.bn
    w_ref, _ = fold_bn(block.conv.weight.detach().double().numpy(), None, bn.weight.detach().double().numpy(),
                       bn.bias.detach().double().numpy(), bn.running_mean.double().numpy(),
                       bn.running_var.double().numpy(), bn.eps)
    layer = tiny_lesson.layer("features.1.dw")
    assert layer.kind == "depthwise" and layer.channels == w_ref.shape[0]
    np.testing.assert_allclose(layer.weight, w_ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="unknown layer"):
        tiny_lesson.layer("features.99")


def test_weight_qparams_rules():
    rng = np.random.default_rng(2)
    w = rng.standard_t(3, size=(4, 200))
    for pc in (False, True):
        qp = weight_qparams(w, 6, per_channel=pc)
        ref = (np.abs(w).max(axis=1) if pc else np.abs(w).max()) / 31
        np.testing.assert_allclose(qp.scale, ref)
        assert np.all(qp.zero_point == 0) and (qp.qmin, qp.qmax) == (-31, 31)
    qp = weight_qparams(w, 6, per_channel=False, method="percentile 99")
    assert qp.scale == pytest.approx(max(-np.percentile(w, 1), np.percentile(w, 99)) / 31)
    lo, hi = mse_range(w, 4, symmetric=True, signed=True, narrow_range=True)
    assert weight_qparams(w, 4, per_channel=False, method="MSE-optimal").scale == pytest.approx(max(-lo, hi) / 7)
    with pytest.raises(ValueError, match="method"):
        weight_qparams(w, 4, per_channel=True, method="max")
    with pytest.raises(TypeError, match="per_channel"):
        weight_qparams(w, 4, per_channel=1)
    with pytest.raises(ValueError, match="per-channel weights need"):
        weight_qparams(w[0], 4, per_channel=True)


def test_quantized_weight_accuracy_matches_pytorch_fake_quant_and_restores(tiny_lesson):
    before = {k: v.clone() for k, v in tiny_lesson.folded.state_dict().items()}
    for bits, pc in ((3, False), (3, True), (8, True)):
        acc = P.quantized_weight_accuracy(tiny_lesson, bits, per_channel=pc)
        oracle = copy.deepcopy(tiny_lesson.folded)
        with torch.no_grad():
            for module in oracle.modules():
                if isinstance(module, ConvBNReLU):
                    module.conv.weight.copy_(_torch_fq_weights(module.conv.weight.double().numpy(), bits, pc))
            oracle.classifier.weight.copy_(_torch_fq_weights(oracle.classifier.weight.double().numpy(), bits, pc))
        assert acc == pytest.approx(evaluate(oracle, tiny_lesson.data.x_test, tiny_lesson.data.y_test), abs=1 / 120)
    after = tiny_lesson.folded.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is restored
    with pytest.raises(TypeError, match="LessonModel"):
        P.quantized_weight_accuracy(None, 4, per_channel=True)


def test_cached_results_writes_once_and_reads_back(tiny_lesson, tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"a": [0.5, 1 / 3]}

    lesson = M.LessonModel(tiny_lesson.config, tiny_lesson.model, tiny_lesson.folded, tiny_lesson.data,
                           tiny_lesson.float_acc, tiny_lesson.layers, tmp_path / "m.pt")
    assert M.cached_results(lesson, "test-v1", compute) == {"a": [0.5, 1 / 3]}
    assert json.loads((tmp_path / "m.test-v1.json").read_text()) == {"a": [0.5, 1 / 3]}
    lesson2 = M.LessonModel(lesson.config, lesson.model, lesson.folded, lesson.data, lesson.float_acc,
                            lesson.layers, tmp_path / "m.pt")
    assert M.cached_results(lesson2, "test-v1", compute) == {"a": [0.5, 1 / 3]} and len(calls) == 1
    with pytest.raises(ValueError, match="file-name-safe"):
        M.cached_results(lesson, "../x", compute)


def test_layer_explorer_numbers_follow_the_library(tiny_lesson):
    ex = PW.layer_explorer(tiny_lesson, layer="features.2.dw", bits=6)
    png0, n0 = ex.image.value, dict(ex.numbers)
    ex.controls["bits"].value = 3
    assert ex.image.value != png0 and ex.numbers != n0
    w = tiny_lesson.layer("features.2.dw").weight
    cmp = P.compare_schemes(w, 3)
    assert ex.numbers["per-tensor scale S"] == cmp.per_tensor.scale
    assert ex.numbers["median channel SQNR per-channel (dB)"] == pytest.approx(np.median(cmp.sqnr_channel))
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    assert ex.numbers["channel range spread max/min"] == pytest.approx(amax.max() / amax.min())
    assert ex.numbers["accuracy, this layer only per-tensor"] == P.quantized_weight_accuracy(
        tiny_lesson, 3, per_channel=False, layers=("features.2.dw",))
    assert ex.numbers["accuracy, all layers per-channel"] == P.quantized_weight_accuracy(tiny_lesson, 3, per_channel=True)
    png1 = ex.image.value
    ex.controls["layer"].value = "features.0"
    assert ex.image.value != png1 and ex.numbers["layer"].startswith("features.0 (conv")
    assert P.widest_spread_layer(tiny_lesson) in tiny_lesson.layers
    with pytest.raises(ValueError, match="unknown layer"):
        PW.layer_explorer(tiny_lesson, layer="nope")


# ---------------------------------------------------------------------------------- notebook 04
def test_with_outliers_count_size_and_determinism():
    x, mask = O.with_outliers(10_000, magnitude=15.0, fraction=0.002, seed=4)
    assert mask.sum() == 20 and np.all(np.abs(x[mask]) >= 15.0) and np.all(np.abs(x[mask]) <= 16.5)
    x2, mask2 = O.with_outliers(10_000, magnitude=15.0, fraction=0.002, seed=4)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(mask, mask2)
    assert O.with_outliers(100, fraction=0.0)[1].sum() == 0
    with pytest.raises(ValueError, match="fraction"):
        O.with_outliers(100, fraction=0.9)
    with pytest.raises(ValueError, match="magnitude"):
        O.with_outliers(100, magnitude=-1.0)
    with pytest.raises(TypeError, match="magnitude"):
        O.with_outliers(100, magnitude="big")
    with pytest.raises(ValueError, match="n must be"):
        O.with_outliers(5)


def test_range_rules_against_independent_references():
    x, _ = O.with_outliers(5000, magnitude=10.0, fraction=0.004, seed=1)
    assert range_for(x, "min/max", 4) == (x.min(), x.max())
    lo, hi = range_for(x, "percentile 99.9", 4)
    assert (lo, hi) == pytest.approx((np.percentile(x, 0.1), np.percentile(x, 99.9)))
    # EMA oracle: the recursion of Eq. 16 written out over 40 consecutive batches
    batches = np.array_split(x, 40)
    elo, ehi = batches[0].min(), batches[0].max()
    for b in batches[1:]:
        elo, ehi = 0.9 * elo + 0.1 * b.min(), 0.9 * ehi + 0.1 * b.max()
    assert range_for(x, "EMA of batch min/max", 4) == pytest.approx((elo, ehi))
    lo, hi = range_for(x, "MSE-optimal", 4)
    mse_opt = np.mean((fake_quantize(x, qparams_from_range(lo, hi, 4)) - x) ** 2)
    mse_mm = np.mean((fake_quantize(x, qparams_from_range(x.min(), x.max(), 4)) - x) ** 2)
    assert mse_opt <= mse_mm
    with pytest.raises(ValueError, match="unknown range method"):
        range_for(x, "median", 4)
    with pytest.raises(ValueError, match="batches"):
        range_for(x, "EMA of batch min/max", 4, batches=0)


def test_compare_ranges_errors_are_the_library_breakdown():
    x, mask = O.with_outliers(4000, magnitude=20.0, fraction=0.001, seed=2)
    for symmetric in (False, True):
        for r in O.compare_ranges(x, 4, outliers=mask, symmetric=symmetric):
            fq = fake_quantize(x, r.qp)
            assert r.breakdown == error_breakdown(x, r.qp)
            assert r.bulk_mse == pytest.approx(np.mean((fq - x)[~mask] ** 2))
            assert r.outlier_mse == pytest.approx(np.mean((fq - x)[mask] ** 2))
            grid = r.qp.scale * (np.arange(r.qp.qmin, r.qp.qmax + 1) - r.qp.zero_point)
            assert r.bulk_levels == np.count_nonzero(np.abs(grid) <= 3.0 + 1e-12)
    with pytest.raises(ValueError, match="bool mask"):
        O.compare_ranges(x, 4, outliers=np.zeros(3, dtype=bool))


@SETTINGS
@given(magnitude=st.floats(4.0, 100.0), fraction=st.floats(0.0, 0.02), bits=st.integers(2, 8), seed=st.integers(0, 50))
def test_outliers_coarsen_the_grid_for_the_bulk(magnitude, fraction, bits, seed):
    x, mask = O.with_outliers(2000, magnitude, fraction, seed)
    res = {r.method: r for r in O.compare_ranges(x, bits, outliers=mask, symmetric=True)}
    mm = res["min/max"]
    assert mm.breakdown.clipping_mse == 0.0  # min/max never clips
    assert mm.qp.scale == pytest.approx(np.abs(x).max() / (2 ** (bits - 1) - 1))  # the largest value sets S
    for r in res.values():  # narrower ranges (all inside min/max) give the bulk at least as many levels
        assert r.bulk_levels >= mm.bulk_levels


def test_outlier_explorer_follows_the_library():
    ex = OW.outlier_explorer(n=4000)
    png0 = ex.image.value
    # the default state teaches the lesson: min/max leaves the bulk a handful of levels
    assert ex.numbers["min/max: levels in the bulk"] <= 3
    assert ex.numbers["percentile 99.9: MSE on the bulk"] < ex.numbers["min/max: MSE on the bulk"] / 10
    ex.controls["magnitude"].value = 5.0
    assert ex.image.value != png0
    x, mask = O.with_outliers(4000, 5.0, ex.controls["fraction"].value, 0)
    res = {r.method: r for r in O.compare_ranges(x, 4, outliers=mask, symmetric=True)}
    for m in O.OUTLIER_METHODS:
        assert ex.numbers[f"{m}: scale S"] == res[m].qp.scale
        assert ex.numbers[f"{m}: clipping MSE"] == res[m].breakdown.clipping_mse
    ex.controls["symmetric"].value = False
    assert ex.numbers["min/max: scale S"] == pytest.approx((x.max() - x.min()) / 15)


def test_activation_ranges_and_accuracy_against_hooks_written_out(tiny_lesson):
    # independent calibration: run the folded model on the first 256 training images
    blocks = {n: m for n, m in tiny_lesson.folded.named_modules() if isinstance(m, ConvBNReLU)}
    seen: dict[str, list] = {n: [] for n in blocks}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen[n].append(o.detach().clone())) for n, m in blocks.items()]
    with torch.no_grad():
        for i in range(0, 256, 32):
            tiny_lesson.folded(tiny_lesson.data.x_train[i : i + 32])
    for h in hooks:
        h.remove()
    ranges = O.activation_ranges(tiny_lesson, "min/max", 4)
    for n, outs in seen.items():
        allv = torch.cat([o.flatten() for o in outs])
        assert ranges[n] == pytest.approx((float(allv.min()), float(allv.max())))
    ema = O.activation_ranges(tiny_lesson, "EMA of batch min/max", 4)
    for n, outs in seen.items():
        e = EMARange(0.9)
        for o in outs:
            e.update(o.double().numpy())
        assert ema[n] == pytest.approx(e.range, rel=1e-6)
    # accuracy oracle: PyTorch's fake_quantize_per_tensor_affine in forward hooks, same ranges
    acc = O.quantized_activation_accuracy(tiny_lesson, 3, "min/max")
    qps = {n: qparams_from_range(lo, hi, 3) for n, (lo, hi) in O.activation_ranges(tiny_lesson, "min/max", 3).items()}
    hooks = [blocks[n].register_forward_hook(
        lambda mod, i, o, qp=qp: torch.fake_quantize_per_tensor_affine(o, qp.scale, qp.zero_point, qp.qmin, qp.qmax))
        for n, qp in qps.items()]
    try:
        ref = evaluate(tiny_lesson.folded, tiny_lesson.data.x_test, tiny_lesson.data.y_test)
    finally:
        for h in hooks:
            h.remove()
    assert acc == pytest.approx(ref, abs=1 / 120)
    with pytest.raises(ValueError, match="method"):
        O.activation_ranges(tiny_lesson, "median", 4)


def test_model_ranges_explorer_follows_the_library(tiny_lesson):
    ex = OW.model_ranges_explorer(tiny_lesson, bits=4, bits_range=(2, 4), progress=False)
    png0 = ex.image.value
    for m in P.WEIGHT_METHODS:
        assert ex.numbers[f"accuracy, {m}"] == P.quantized_weight_accuracy(tiny_lesson, 4, per_channel=False, method=m)
    ex.controls["view"].value = "activations"
    assert ex.image.value != png0
    for m in O.ACTIVATION_METHODS:
        assert ex.numbers[f"accuracy, {m}"] == O.quantized_activation_accuracy(tiny_lesson, 4, m)
    png1 = ex.image.value
    ex.controls["bits"].value = 2
    assert ex.image.value != png1 and ex.numbers["bits"] == 2
    with pytest.raises(ValueError, match="view"):
        OW.model_ranges_explorer(tiny_lesson, view="biases", progress=False)
    with pytest.raises(ValueError, match="bits_range"):
        OW.model_ranges_explorer(tiny_lesson, bits=8, bits_range=(2, 4), progress=False)


# ---------------------------------------------------------------------------------- notebook 07
def _torch_quantized_add(e: K.AddExperiment) -> np.ndarray:
    """Oracle: PyTorch's own quantized add (x86 engine) on the same codes and parameters."""
    qa = torch._make_per_tensor_quantized_tensor(torch.from_numpy(e.a_q), e.a_qp.scale, e.a_qp.zero_point)
    qb = torch._make_per_tensor_quantized_tensor(torch.from_numpy(e.b_q), e.b_qp.scale, e.b_qp.zero_point)
    return torch.ops.quantized.add(qa, qb, e.out_qp.scale, e.out_qp.zero_point).int_repr().numpy()


@SETTINGS
@given(log_ratio=st.floats(-5.0, 5.0), left_shift=st.integers(8, 22), seed=st.integers(0, 100))
def test_integer_add_within_one_lsb_of_exact_and_of_pytorch(log_ratio, left_shift, seed):
    e = K.add_experiment(2.0**log_ratio, n=512, left_shift=left_shift, seed=seed)
    # the exact re-quantized add (Eq. 72) written out in float64
    exact = e.out_qp.zero_point + (e.a_qp.scale * (e.a_q.astype(np.int64) - e.a_qp.zero_point)
                                   + e.b_qp.scale * (e.b_q.astype(np.int64) - e.b_qp.zero_point)) / e.out_qp.scale
    assert np.all(np.abs(e.q_ref.astype(np.int64) - np.clip(exact, 0, 255)) <= 0.5 + 1e-9)
    assert np.abs(e.lsb_error).max() <= 1
    assert np.abs(e.q_int.astype(np.int64) - _torch_quantized_add(e)).max() <= 1
    assert e.q_int.dtype == np.uint8


def test_integer_add_is_bit_exact_with_20_bits_of_headroom_and_naive_add_is_wrong():
    for r in (1 / 16, 1.0, 4.0, 30.0):
        e = K.add_experiment(r, left_shift=20)
        assert e.exact_fraction == 1.0
    e = K.add_experiment(4.0, left_shift=2)
    assert e.exact_fraction < 0.95  # with little headroom the rescaled inputs lose bits
    assert np.abs(e.naive_lsb_error).max() > 20
    # naive addition is right exactly when the three scales agree
    q = np.array([10, 128, 200], dtype=np.uint8)
    assert np.array_equal(K.naive_add(q, 128, q, 128, 128), np.clip(2 * q.astype(int) - 128, 0, 255))
    ref_err = e.error_vs_real_lsb(e.q_int)
    assert ref_err == pytest.approx((dequantize(e.q_int, e.out_qp) - (e.a + e.b)) / e.out_qp.scale)


def test_add_experiment_bad_input():
    with pytest.raises(ValueError, match="scale_ratio"):
        K.add_experiment(0.0)
    with pytest.raises(TypeError, match="scale_ratio"):
        K.add_experiment("4")
    with pytest.raises(ValueError, match="left_shift"):
        K.add_experiment(2.0, left_shift=23)
    with pytest.raises(ValueError, match="n must be"):
        K.add_experiment(2.0, n=1)


def test_integer_add_explorer_follows_the_library():
    ex = KW.integer_add_explorer(scale_ratio=4.0, n=1024)
    png0 = ex.image.value
    ex.controls["ratio"].value = 0.25
    assert ex.image.value != png0
    e = K.add_experiment(0.25, n=1024)
    assert ex.numbers["max |q_int - q_exact| (LSB)"] == int(np.abs(e.lsb_error).max())
    assert ex.numbers["a: (m0, shift)"] == f"({e.mult.a_m0}, {e.mult.a_shift})"
    assert ex.numbers["bit-exact with the re-quantized add"] == f"{100 * e.exact_fraction:.2f} %"
    png1 = ex.image.value
    ex.controls["left_shift"].value = 4
    e4 = K.add_experiment(0.25, n=1024, left_shift=4)
    assert ex.image.value != png1
    assert ex.numbers["bit-exact with the re-quantized add"] == f"{100 * e4.exact_fraction:.2f} %"


def test_concat_requantize_against_written_out_rounding():
    for ratio in (3.0, 8.0, 40.0):
        e = K.concat_experiment(ratio, n=2000)
        assert np.array_equal(e.b_shared, quantize(e.b, e.out_qp))
        assert e.b_qp.zero_point == 0 and e.out_qp.zero_point == 0 and e.shift < 0
        # TFLite's requantize written out in Python integers (b >= 0, so every step is non-negative):
        # SRDHM(x, m0) = floor((x m0 + 2^30) / 2^31), then a rounding right shift by -shift
        n = -e.shift
        ref = [min(255, ((int(q) * e.m0 + 2**30) // 2**31 + (1 << (n - 1))) >> n) for q in e.b_own]
        assert e.b_requant.tolist() == ref
        # ... which is within one LSB of a single rounding of (q - Z_b) S_b / S_out
        single = np.floor(e.b_own.astype(np.float64) * e.b_qp.scale / e.out_qp.scale + 0.5)
        assert np.abs(e.b_requant - single).max() <= 1
        assert e.mse("own") < e.mse("shared") <= e.mse("requant") * 1.05
    same = K.concat_experiment(1.0, n=500)
    assert same.double_rounding_fraction == 0.0  # same grid: re-quantization is the identity
    with pytest.raises(ValueError, match="range_ratio"):
        K.concat_experiment(0.5)
    with pytest.raises(ValueError, match="bits"):
        K.concat_experiment(4.0, bits=9)


def test_concat_explorer_follows_the_library():
    ex = KW.concat_explorer(range_ratio=8.0, n=1000)
    png0 = ex.image.value
    e = K.concat_experiment(8.0, n=1000)
    assert ex.numbers["codes changed by double rounding"] == f"{100 * e.double_rounding_fraction:.2f} %"
    ex.controls["bits"].value = 4
    assert ex.image.value != png0
    e4 = K.concat_experiment(8.0, bits=4, n=1000)
    assert ex.numbers["MSE of b, re-quantized"] == e4.mse("requant")
    assert ex.numbers["shared scale S_out"] == pytest.approx(6.0 / 15)
