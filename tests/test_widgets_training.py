"""Notebook 05 (batch-norm folding) and 06 (quantization-aware training): explorers and measurements.

Oracles: PyTorch's ``fuse_conv_bn_eval``, ``nn.BatchNorm2d`` (its batch statistics and running-average
update), ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` (forward and backward), and
float64 formulas written out here. The model-based parts run on a tiny MobileNet trained for a second
in this file, so no test depends on the lesson-model cache.
"""
from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qlearn.data import load_digits_data
from qlearn.lessons import bn_folding as B
from qlearn.lessons import lesson_model as P
from qlearn.lessons import qat as LQ
from qlearn.models import mobilenet_v1
from qlearn.threads import one_thread
from qlearn.train import TrainConfig, seed_everything, train
from qlearn.widgets import bn_fold as BW
from qlearn.widgets import qat as Q

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_lesson() -> P.LessonModel:
    """A width-0.25 MobileNet v1 on 16x16 digits, 3 short epochs (about a second); no cache file."""
    cfg = P.LessonConfig(width=0.25, input_size=16, epochs=3, batch_size=32)
    data = load_digits_data(16).subset(300, 120)
    seed_everything(0)
    model = mobilenet_v1(width=0.25, input_size=16)
    with one_thread():
        train(model, data.x_train, data.y_train, TrainConfig(epochs=3, batch_size=32, lr=1e-2), progress=False)
    return P.LessonModel.from_model(model, data, cfg)


def _moved(ex, name, value):
    """Move one control; return (numbers before, png before)."""
    before, png = dict(ex.numbers), ex.image.value
    ex.controls[name].value = value
    return before, png


def _torch_weight_fq(w: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    """PyTorch's fake quant on the paper's symmetric narrow weight grid (max|w| / qmax), float64 out."""
    qmax = 2 ** (bits - 1) - 1
    t = torch.from_numpy(w).float()
    flat = np.abs(w.reshape(w.shape[0], -1))
    if per_channel:
        s = torch.from_numpy(flat.max(axis=1) / qmax).float()
        out = torch.fake_quantize_per_channel_affine(t, s, torch.zeros(len(s), dtype=torch.int32), 0, -qmax, qmax)
    else:
        out = torch.fake_quantize_per_tensor_affine(t, float(flat.max() / qmax), 0, -qmax, qmax)
    return out.double().numpy()


# ================================================================================== notebook 05
def test_bn_layer_reads_the_trained_modules(tiny_lesson):
    names = B.bn_layer_names(tiny_lesson)
    assert "classifier" not in names and names[0] == "features.0" and len(names) == len(tiny_lesson.layers) - 1
    layer = B.bn_layer(tiny_lesson, "features.1.dw")
    block = tiny_lesson.model.get_submodule("features.1.dw")
    assert layer.kind == "depthwise" and layer.channels == block.conv.out_channels
    np.testing.assert_array_equal(layer.weight, block.conv.weight.detach().double().numpy())
    np.testing.assert_array_equal(layer.var, block.bn.running_var.double().numpy())
    sigma = np.sqrt(block.bn.running_var.double().numpy() + block.bn.eps)
    np.testing.assert_allclose(layer.factor, block.bn.weight.detach().double().numpy() / sigma, rtol=1e-15)


def test_fold_matches_float64_formula_torch_fusion_and_the_lesson_fold(tiny_lesson):
    for name in ("features.0", "features.2.dw", "features.3.pw"):
        layer = B.bn_layer(tiny_lesson, name)
        w_fold, b_fold = layer.folded()
        # float64, written out: Eqs. 41-42 with b = 0
        f = layer.gamma / np.sqrt(layer.var + layer.eps)
        np.testing.assert_allclose(w_fold, layer.weight * f[:, None, None, None], rtol=1e-14)
        np.testing.assert_allclose(b_fold, layer.beta - layer.mean * f, rtol=1e-12, atol=1e-15)
        block = tiny_lesson.model.get_submodule(name)
        fused = fuse_conv_bn_eval(copy.deepcopy(block.conv).eval(), copy.deepcopy(block.bn).eval())
        np.testing.assert_allclose(w_fold, fused.weight.detach().double().numpy(), atol=1e-6)
        np.testing.assert_allclose(w_fold, tiny_lesson.layer(name).weight, atol=1e-6)  # the model's folded copy
        check = B.fold_vs_torch(layer)
        ref = np.abs(w_fold - fused.weight.detach().double().numpy()).max()
        assert check.weight_diff < 1e-6 and check.bias_diff < 1e-6 and ref < 1e-6
        assert check.output_diff <= 1e-6 * max(1.0, check.output_scale) * 10


def test_fold_vs_torch_output_check_can_fail(tiny_lesson):
    """The output check compares two real computations: a wrong fold would show."""
    layer = B.bn_layer(tiny_lesson, "features.0")
    check = B.fold_vs_torch(layer)
    conv, bn = layer.modules()
    x = torch.rand((4, conv.in_channels, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrong = nn.functional.conv2d(x, conv.weight * 1.01, None, conv.stride, conv.padding)  # a 1 % wrong fold
        gap = float((bn(conv(x)) - bn(wrong)).abs().max())
    assert gap > 100 * check.output_diff


def test_channel_spread_values_and_errors():
    w = np.array([[1.0, -2.0], [0.5, 0.25], [0.0, -4.0]])
    assert B.channel_spread(w) == pytest.approx(4.0 / 0.5)
    assert B.channel_spread(np.vstack([w, np.zeros((1, 2))])) == pytest.approx(8.0)  # zero channels ignored
    with pytest.raises(ValueError, match="output-channel axis"):
        B.channel_spread(np.ones(4))
    with pytest.raises(ValueError, match="all zeros"):
        B.channel_spread(np.zeros((3, 2)))
    with pytest.raises(TypeError):
        B.channel_spread("weights")


@SETTINGS
@given(st.integers(2, 12), st.floats(0.01, 100.0), st.integers(0, 10_000))
def test_spread_after_fold_is_the_factor_spread_times_at_most_the_spread_before(c, scale, seed):
    """max|w_fold,c| = |f_c| max|w_c|, so spread_after <= spread_before * factor spread (and = when w is flat)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, 3, 1, 1))
    f = rng.uniform(0.1, 10.0, c)
    after = w * f[:, None, None, None]
    assert B.channel_spread(after) <= B.channel_spread(w) * f.max() / f.min() * (1 + 1e-12)
    assert B.channel_spread(scale * w) == pytest.approx(B.channel_spread(w), rel=1e-12)
    flat = np.ones((c, 3, 1, 1))
    assert B.channel_spread(flat * f[:, None, None, None]) == pytest.approx(f.max() / f.min(), rel=1e-12)


def test_with_channel_edits_one_channel_only(tiny_lesson):
    layer = B.bn_layer(tiny_lesson, "features.2.dw")
    edited = layer.with_channel(3, gamma_scale=2.0, var_scale=1e-3)
    assert edited.gamma[3] == 2.0 * layer.gamma[3] and edited.var[3] == 1e-3 * layer.var[3]
    mask = np.arange(layer.channels) != 3
    np.testing.assert_array_equal(edited.gamma[mask], layer.gamma[mask])
    np.testing.assert_array_equal(edited.var[mask], layer.var[mask])
    assert edited.factor[3] == pytest.approx(2 * layer.gamma[3] / np.sqrt(1e-3 * layer.var[3] + layer.eps))
    np.testing.assert_array_equal(layer.var, tiny_lesson.model.get_submodule("features.2.dw").bn.running_var.double().numpy())
    with pytest.raises(ValueError, match="channel must be in 0.."):
        layer.with_channel(layer.channels)
    with pytest.raises(TypeError, match="channel must be an integer"):
        layer.with_channel(1.5)
    with pytest.raises(ValueError, match="var_scale must be a positive"):
        layer.with_channel(0, var_scale=0.0)
    with pytest.raises(ValueError, match="gamma_scale must be a positive"):
        layer.with_channel(0, gamma_scale=float("nan"))


def test_bn_layer_bad_input(tiny_lesson):
    with pytest.raises(ValueError, match="not a conv followed by batch norm"):
        B.bn_layer(tiny_lesson, "classifier")
    with pytest.raises(ValueError, match="features.0"):
        B.bn_layer(tiny_lesson, "features.99")
    with pytest.raises(TypeError, match="LessonModel"):
        B.bn_layer(object(), "features.0")
    with pytest.raises(TypeError, match="BNLayer"):
        B.fold_spread(np.ones((2, 2)))
    with pytest.raises(TypeError, match="BNLayer"):
        B.fold_vs_torch("features.0")


def test_fold_order_against_pytorch_fake_quant(tiny_lesson):
    layer = B.bn_layer(tiny_lesson, "features.1.dw")
    w_fold, _ = layer.folded()
    for per_channel in (False, True):
        cmp = B.compare_fold_order(layer, 4, per_channel=per_channel)
        np.testing.assert_allclose(cmp.right, _torch_weight_fq(w_fold, 4, per_channel), atol=1e-6)
        trained = _torch_weight_fq(layer.weight, 4, per_channel) * layer.factor[:, None, None, None]
        np.testing.assert_allclose(cmp.trained, trained, atol=1e-6)
        np.testing.assert_allclose(cmp.deployed, _torch_weight_fq(cmp.trained, 4, per_channel), atol=1e-6)
        assert cmp.right_mismatch == 0.0  # fold -> quantize is already on its grid
        assert cmp.mse_right == pytest.approx(np.mean((cmp.right - w_fold) ** 2))
    per_tensor = B.compare_fold_order(layer, 4, per_channel=False)
    per_channel = B.compare_fold_order(layer, 4, per_channel=True)
    assert per_tensor.mismatch > 0.1 * per_tensor.mse_right and per_tensor.off_grid_fraction > 0.3
    assert per_channel.mismatch < 1e-20 and per_channel.off_grid_fraction == 0.0


@SETTINGS
@given(st.integers(2, 8), st.integers(2, 6), st.integers(0, 10_000))
def test_quantize_then_fold_commutes_per_channel_but_not_per_tensor(bits, c, seed):
    """Per channel, min/max grids: fq(f_c w_c) = f_c fq(w_c) exactly (the grid scales with the channel)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, 1, 3, 3))
    gamma = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
    var = rng.uniform(1e-3, 2.0, c)
    layer = B.BNLayer("x", "depthwise", w, gamma, np.zeros(c), np.zeros(c), var, 1e-5,
                      nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c))
    pc = B.compare_fold_order(layer, bits, per_channel=True)
    np.testing.assert_allclose(pc.trained, pc.right, atol=1e-12 * np.abs(pc.w_fold).max())
    pt = B.compare_fold_order(layer, bits, per_channel=False)
    assert pt.mismatch >= 0 and pt.mse_deployed >= 0


def test_compare_fold_order_bad_input(tiny_lesson):
    layer = B.bn_layer(tiny_lesson, "features.0")
    with pytest.raises(ValueError, match="bits must be between"):
        B.compare_fold_order(layer, 1)
    with pytest.raises(TypeError, match="per_channel must be True or False"):
        B.compare_fold_order(layer, 4, per_channel="yes")
    with pytest.raises(TypeError, match="BNLayer"):
        B.compare_fold_order(layer.weight, 4)


def test_bn_correction_against_pytorch_batchnorm(tiny_lesson):
    name = "features.2.dw"
    res = B.bn_correction(tiny_lesson, name, steps=5, freeze_step=2, batch_size=24, bits=4)
    np.testing.assert_array_equal(res.batch_stats, [True, True, False, False, False])
    assert np.all(res.float_check < 1e-4)  # Eq. 61 is BatchNorm with batch statistics, then Eq. 62 eval
    np.testing.assert_array_equal(res.correction[2:], 1.0)
    np.testing.assert_array_equal(res.running_var_change[2:], 0.0)
    assert np.all(res.running_var_change[:2] > 0)
    assert np.all(res.train_vs_infer[:2] > 0) and np.all(res.train_vs_infer[2:] == 0.0)
    # oracle: nn.BatchNorm2d's own running-average update, and the batch std from torch.var
    block = copy.deepcopy(tiny_lesson.model.get_submodule(name))
    seen = []
    handle = tiny_lesson.model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        tiny_lesson.model.eval()(tiny_lesson.data.x_train[:120])
    handle.remove()
    bn = block.bn.train()
    for step in range(2):
        x = seen[0][step * 24 : (step + 1) * 24]
        z = block.conv(x).detach()
        bn(z)
        sigma = torch.sqrt(bn.running_var + bn.eps)
        sigma_b = torch.sqrt(torch.var(z, dim=(0, 2, 3), unbiased=False) + bn.eps)
        np.testing.assert_allclose(res.correction[step], (sigma / sigma_b).double().numpy(), rtol=1e-5)
    # the lesson model is untouched
    np.testing.assert_array_equal(B.bn_layer(tiny_lesson, name).var,
                                  tiny_lesson.model.get_submodule(name).bn.running_var.double().numpy())


def test_bn_correction_bad_input(tiny_lesson):
    with pytest.raises(ValueError, match="steps must be an integer"):
        B.bn_correction(tiny_lesson, "features.0", steps=0)
    with pytest.raises(ValueError, match="more than the"):
        B.bn_correction(tiny_lesson, "features.0", steps=20, batch_size=64)
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        B.bn_correction(tiny_lesson, "features.0", bits=12)
    with pytest.raises(ValueError, match="not a conv followed by batch norm"):
        B.bn_correction(tiny_lesson, "classifier")


def test_bn_fold_explorer_follows_oracles(tiny_lesson):
    ex = BW.bn_fold_explorer(tiny_lesson, layer="features.1.dw", channel=2, bits=4)
    block = tiny_lesson.model.get_submodule("features.1.dw")
    n0, png0 = _moved(ex, "log_var", 0.25)  # one keyboard step
    assert ex.image.value != png0 and ex.numbers != n0
    n1, png1 = _moved(ex, "log_var", 2.0)  # the End key
    assert ex.image.value != png1 and ex.numbers != n1
    bn = copy.deepcopy(block.bn).eval()
    with torch.no_grad():
        bn.running_var[2] *= 100.0
    fused = fuse_conv_bn_eval(copy.deepcopy(block.conv).eval(), bn)
    w = fused.weight.detach().double().numpy()
    g, v = float(bn.weight[2].detach()), float(bn.running_var[2])
    assert ex.numbers["ch 2: fold factor gamma/sqrt(var+eps)"] == pytest.approx(g / np.sqrt(v + bn.eps), rel=1e-6)
    assert ex.numbers["ch 2: folded range max|w_fold,c|"] == pytest.approx(np.abs(w[2]).max(), rel=1e-5)
    assert ex.numbers["per-tensor scale S"] == pytest.approx(np.abs(w).max() / 7, rel=1e-5)
    amax = np.abs(w.reshape(len(w), -1)).max(1)
    assert ex.numbers["channel spread after folding (max/min)"] == pytest.approx(amax.max() / amax.min(), rel=1e-5)
    fq_t, fq_c = _torch_weight_fq(w, 4, False), _torch_weight_fq(w, 4, True)
    assert ex.numbers["ch 2: MSE per-tensor"] == pytest.approx(np.mean((fq_t[2] - w[2]) ** 2), rel=1e-4, abs=1e-12)
    assert ex.numbers["ch 2: MSE per-channel"] == pytest.approx(np.mean((fq_c[2] - w[2]) ** 2), rel=1e-4, abs=1e-12)
    sq = [10 * np.log10(np.sum(w[k] ** 2) / np.sum((fq_c[k] - w[k]) ** 2)) for k in range(len(w))]
    assert ex.numbers["median channel SQNR per-channel (dB)"] == pytest.approx(np.median(sq), abs=1e-3)
    zeros = sum(bool(np.all(fq_t[k] == 0)) for k in range(len(w)))
    assert ex.numbers["channels rounded to all zeros, per-tensor"] == zeros
    assert ex.numbers["max |w_fold - torch fuse_conv_bn_eval|"] < 1e-6
    assert ex.numbers["max |bn(conv(x)) - folded conv(x)|"] < 1e-5 * max(1.0, ex.numbers["max |bn(conv(x))| (for scale)"])
    # a smaller variance stretches the channel: its folded range grows by sqrt(10^k)
    ex.controls["log_var"].value = 0.0
    r0 = ex.numbers["ch 2: folded range max|w_fold,c|"]
    ex.controls["log_var"].value = -2.0
    assert ex.numbers["ch 2: folded range max|w_fold,c|"] > 3 * r0
    ex.controls["gamma"].value = 2.0
    ex.controls["bits"].value = 3
    ex.controls["channel"].value = 0
    assert "ch 0: gamma" in ex.numbers and ex.redraws == 8
    assert B.bn_layer(tiny_lesson, "features.1.dw").var[2] == float(block.bn.running_var[2])  # model untouched


def test_fold_order_explorer_moves_and_matches(tiny_lesson):
    ex = BW.fold_order_explorer(tiny_lesson, bits=4)
    n0, png0 = _moved(ex, "bits", 5)
    assert ex.image.value != png0 and ex.numbers != n0
    cmp = B.compare_fold_order(ex.layer, 5, per_channel=False)
    assert ex.numbers["train/deploy mismatch, quantize → fold (MSE)"] == cmp.mismatch
    assert ex.numbers["MSE fold → quantize (vs w_fold)"] == cmp.mse_right
    ex.controls["per_channel"].value = True
    assert ex.numbers["train/deploy mismatch, quantize → fold (MSE)"] < 1e-20
    assert ex.numbers["quantize → fold weights off the grid"] == 0.0


def test_notebook05_explorers_bad_input(tiny_lesson):
    with pytest.raises(ValueError, match="channel must be in"):
        BW.bn_fold_explorer(tiny_lesson, layer="features.0", channel=999)
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        BW.bn_fold_explorer(tiny_lesson, bits=9)
    with pytest.raises(ValueError, match="not a conv followed by batch norm"):
        BW.fold_order_explorer(tiny_lesson, layer="classifier")
    with pytest.raises(TypeError, match="LessonModel"):
        BW.bn_fold_explorer("lesson")


# ================================================================================== notebook 06
def _away_from_ties(x: np.ndarray, s: float) -> np.ndarray:
    frac = np.abs(x / s - np.floor(x / s) - 0.5)
    return x[frac > 1e-6]


@SETTINGS
@given(st.integers(2, 8), st.floats(-2.0, -0.01), st.floats(0.01, 2.0))
def test_ste_curve_against_float64_formula(bits, lo, hi):
    qp_s = (max(hi, 0) - min(lo, 0)) / (2**bits - 1)  # Eqs. 4-5 written out
    zp = int(np.clip(np.floor(-min(lo, 0) / qp_s + 0.5), 0, 2**bits - 1))  # Eq. 6, half away from zero (>= 0)
    x = _away_from_ties(np.linspace(-3, 3, 1201), qp_s)
    c = LQ.ste_curve(x, bits, lo, hi)
    assert c.qp.scale == pytest.approx(qp_s, rel=1e-12) and c.qp.zero_point == zp
    ref = qp_s * (np.clip(np.rint(x / qp_s) + zp, 0, 2**bits - 1) - zp)
    np.testing.assert_allclose(c.x_hat, ref, rtol=0, atol=1e-12)
    lo_r, hi_r = qp_s * (0 - zp), qp_s * (2**bits - 1 - zp)
    np.testing.assert_array_equal(c.grad, ((x >= lo_r - 1e-12) & (x <= hi_r + 1e-12)).astype(float))
    assert c.lo_real == pytest.approx(lo_r) and c.hi_real == pytest.approx(hi_r)


def test_fake_quant_ste_matches_pytorch_forward_and_backward_away_from_the_ends():
    from qlearn.fake_quant import fake_quant_ste

    s, z = 0.05, 7
    x = torch.linspace(-1.0, 13.5, 3001)  # float32, well past both ends of [S(0-Z), S(255-Z)] = [-0.35, 12.4]
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya = fake_quant_ste(a, s, z, 0, 255)
    yb = torch.fake_quantize_per_tensor_affine(b, s, z, 0, 255)
    assert torch.equal(ya, yb)  # bit for bit (Eq. 50)
    ya.sum().backward()
    yb.sum().backward()
    lo, hi = s * (0 - z), s * (255 - z)
    far = ((x - lo).abs() > s / 2) & ((x - hi).abs() > s / 2)
    assert torch.equal(a.grad[far], b.grad[far])  # Eq. 52 = PyTorch's STE except within S/2 of the ends
    assert float(a.grad[(x > lo + s) & (x < hi - s)].min()) == 1.0 and float(a.grad[x < lo - s].max()) == 0.0


def test_ste_curve_bad_input():
    with pytest.raises(ValueError, match="lo < hi"):
        LQ.ste_curve([0.0, 1.0], 8, 1.0, 1.0)
    with pytest.raises(ValueError, match="between 2 and 8"):
        LQ.ste_curve([0.0], 9, -1.0, 1.0)
    with pytest.raises(TypeError, match="must be a finite number"):
        LQ.ste_curve([0.0], 8, "a", 1.0)
    with pytest.raises(TypeError):
        LQ.ste_curve("x", 8, -1.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        LQ.ste_curve([np.nan], 8, -1.0, 1.0)


def test_ste_explorer_first_slider_changes_numbers_and_image():
    ex = Q.ste_explorer()
    n0, png0 = _moved(ex, "bits", 4)  # one keyboard step
    assert ex.image.value != png0 and ex.numbers != n0
    assert ex.numbers["scale S"] == pytest.approx(2.0 / 15) and ex.numbers["grid levels"] == 16
    n1, png1 = _moved(ex, "bits", 8)  # the End key
    assert ex.image.value != png1 and ex.numbers["zero point Z"] == 128
    assert ex.numbers["N(0,1) sample: max |error| inside (<= S/2)"] <= ex.numbers["scale S"] / 2 + 1e-12
    inside = np.mean((ex.sample >= -128 * 2 / 255) & (ex.sample <= 127 * 2 / 255))
    assert ex.numbers["N(0,1) sample: share with gradient 1"] == pytest.approx(inside)
    ex.controls["hi"].value = 2.0
    assert ex.numbers["scale S"] == pytest.approx(3.0 / 255)
    with pytest.raises(ValueError):
        Q.ste_explorer(bits=1)


def _ema_reference(lo, hi, d):
    e_lo, e_hi = [lo[0]], [hi[0]]
    for a, b in zip(lo[1:], hi[1:]):
        e_lo.append(d * e_lo[-1] + (1 - d) * a)
        e_hi.append(d * e_hi[-1] + (1 - d) * b)
    return np.array(e_lo), np.array(e_hi)


@SETTINGS
@given(st.sampled_from(Q.DECAYS), st.integers(0, 30), st.integers(0, 10_000))
def test_ema_trace_against_float64_recursion(decay, delay, seed):
    rng = np.random.default_rng(seed)
    lo = -np.abs(rng.standard_normal(40)) * np.linspace(0.1, 5, 40)
    hi = np.abs(rng.standard_normal(40)) * np.linspace(0.1, 8, 40) + 0.01
    tr = LQ.ema_trace(lo, hi, decay, delay)
    e_lo, e_hi = _ema_reference(lo, hi, decay)
    np.testing.assert_allclose(tr.ema_lo, e_lo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tr.ema_hi, e_hi, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tr.quantized, np.arange(1, 41) > delay)
    assert tr.first_quantized_step == (delay + 1 if delay < 40 else None)
    assert not tr.clipped[: min(delay, 40)].any()
    np.testing.assert_allclose(tr.scale, (np.maximum(tr.ema_hi, 0) - np.minimum(tr.ema_lo, 0)) / 255, rtol=1e-5)


def test_ema_trace_bad_input():
    with pytest.raises(ValueError, match="decay"):
        LQ.ema_trace([0.0], [1.0], 1.0, 0)
    with pytest.raises(ValueError, match="same length"):
        LQ.ema_trace([0.0, 0.0], [1.0], 0.9, 0)
    with pytest.raises(ValueError, match="batch_lo <= batch_hi"):
        LQ.ema_trace([2.0], [1.0], 0.9, 0)
    with pytest.raises(ValueError, match="delay"):
        LQ.ema_trace([0.0], [1.0], 0.9, -1)


def test_activation_ranges_first_step_is_the_fresh_models_first_batch(tiny_lesson):
    from qlearn.models import MODELS

    stream = LQ.activation_ranges_during_training(tiny_lesson, epochs=1, progress=False)
    cfg, data = tiny_lesson.config, tiny_lesson.data
    steps = -(-data.x_train.shape[0] // cfg.batch_size)
    assert {k: len(v) for k, v in stream.items()} == {f"{m} {e}": steps for m in LQ.SIGNALS.values() for e in ("min", "max")}
    assert np.all(stream["classifier min"] <= stream["classifier max"])
    assert np.all(stream["features.3.pw min"] >= 0) and np.all(stream["features.3.pw max"] <= 6)  # ReLU6
    seed_everything(cfg.seed)
    model = MODELS[cfg.arch](data.num_classes, width=cfg.width, input_size=cfg.input_size, in_channels=1).train()
    order = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 100_003))
    with torch.no_grad():
        logits = model(data.x_train[order[: cfg.batch_size]])
    assert stream["classifier min"][0] == pytest.approx(float(logits.min()), rel=1e-5)
    assert stream["classifier max"][0] == pytest.approx(float(logits.max()), rel=1e-5)
    with pytest.raises(ValueError, match="epochs"):
        LQ.activation_ranges_during_training(tiny_lesson, epochs=0)


def test_ema_explorer_follows_ema_trace(tiny_lesson):
    ex = Q.ema_explorer(tiny_lesson, decay=0.9, delay=3)
    assert ex.numbers["first quantized step"] == 4
    n0, png0 = _moved(ex, "decay", 0.95)
    assert ex.image.value != png0 and ex.numbers != n0
    assert ex.numbers["time constant 1/(1-d) (steps)"] == pytest.approx(20.0)
    ex.controls["signal"].value = "ReLU6 output of features.3.pw"
    s = ex.stream
    tr = LQ.ema_trace(s["features.3.pw min"], s["features.3.pw max"], 0.95, 3)
    assert ex.numbers["quantized steps that clip the batch (min or max)"] == int(tr.clipped.sum())
    assert ex.numbers["final EMA range"] == f"[{tr.ema_lo[-1]:.3g}, {tr.ema_hi[-1]:.3g}]"
    with pytest.raises(ValueError, match="signal must be one of"):
        Q.ema_explorer(tiny_lesson, signal="nope")
    with pytest.raises(ValueError, match="decay must be one of"):
        Q.ema_explorer(tiny_lesson, decay=0.42)


def test_ptq_vs_qat_runs_are_the_library_runs(tiny_lesson):
    from qlearn.ptq import post_training_quantize
    from qlearn.qat import prepare_qat
    from qlearn.qat_layers import QATConfig
    from qlearn.train import evaluate

    recipe = LQ.QATRecipe(epochs=1, calib_images=128)
    res = LQ.ptq_vs_qat(tiny_lesson, bits=(4,), recipe=recipe, progress=False)
    d = tiny_lesson.data
    steps = -(-d.x_train.shape[0] // 64)
    assert res["qat steps"][0] == steps and res["float"][0] == tiny_lesson.float_acc
    for label, pc in (("per-tensor", False), ("per-channel", True)):
        with one_thread():
            ptq = evaluate(post_training_quantize(tiny_lesson.model, d.x_train[:128], QATConfig(weight_bits=4, per_channel=pc)),
                           d.x_test, d.y_test)
            seed_everything(0)
            m = prepare_qat(tiny_lesson.model, QATConfig(weight_bits=4, per_channel=pc, ema_decay=0.99,
                                                         freeze_bn_step=max(1, steps // 2)))
            train(m, d.x_train, d.y_train, TrainConfig(epochs=1, batch_size=64, lr=1e-3, schedule="cosine",
                                                       weight_decay=0.0, seed=0), progress=False)
            qat = evaluate(m, d.x_test, d.y_test)
        assert res[f"ptq {label}"][0] == ptq
        assert res[f"qat {label}"][0] == qat
        assert 0.0 <= res[f"finetuned {label}"][0] <= 1.0
    assert LQ.ptq_vs_qat(tiny_lesson, bits=(4,), recipe=recipe) is not res  # arrays rebuilt from the cache ...
    np.testing.assert_array_equal(LQ.ptq_vs_qat(tiny_lesson, bits=(4,), recipe=recipe)["qat per-tensor"],
                                  res["qat per-tensor"])  # ... without training again
    with pytest.raises(ValueError, match="weight bits must be between 2 and 8"):
        LQ.ptq_vs_qat(tiny_lesson, bits=(12,))
    with pytest.raises(TypeError, match="bits must be a non-empty tuple"):
        LQ.ptq_vs_qat(tiny_lesson, bits=4)
    with pytest.raises(TypeError, match="QATRecipe"):
        LQ.ptq_vs_qat(tiny_lesson, recipe={"epochs": 1})
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        LQ.QATRecipe(epochs=0)


def test_ptq_vs_qat_explorer_moves(tiny_lesson, monkeypatch):
    fake = {"bits": np.array([8.0, 4.0, 3.0, 2.0]), "float": np.array([0.9]), "qat steps": np.array([40.0]),
            "qat seconds": np.array([1.0])}
    for i, k in enumerate(("ptq", "finetuned", "qat")):
        for j, label in enumerate(("per-tensor", "per-channel")):
            fake[f"{k} {label}"] = np.array([0.9, 0.8, 0.5, 0.1]) + 0.01 * (3 * i + j)
    monkeypatch.setattr(Q, "ptq_vs_qat", lambda lesson, **kw: fake)
    ex = Q.ptq_vs_qat_explorer(tiny_lesson, bits=4)
    assert ex.numbers["PTQ accuracy"] == pytest.approx(0.8) and ex.numbers["QAT accuracy"] == pytest.approx(0.86)
    assert ex.numbers["share of the PTQ loss QAT recovers"] == pytest.approx(0.6)
    n0, png0 = _moved(ex, "bits", 3)
    assert ex.image.value != png0 and ex.numbers != n0 and ex.numbers["PTQ accuracy"] == pytest.approx(0.5)
    n1, png1 = _moved(ex, "per_channel", True)
    assert ex.image.value != png1 and ex.numbers["PTQ accuracy"] == pytest.approx(0.51)
    assert ex.numbers["QAT minus (fine-tune + PTQ) (points)"] == pytest.approx(100 * (0.55 - 0.52))
    with pytest.raises(ValueError, match="bits must be one of"):
        Q.ptq_vs_qat_explorer(tiny_lesson, bits=5)


def test_explorers_can_be_drawn_without_arguments():
    """``python -m qlearn figures`` calls every public ``*_explorer`` with no arguments."""
    for module in (BW, Q):
        found = [f for n, f in vars(module).items() if n.endswith("_explorer") and inspect.isfunction(f)]
        assert len(found) >= 2
        for f in found:
            assert all(p.default is not inspect.Parameter.empty or p.kind == p.VAR_KEYWORD
                       for p in inspect.signature(f).parameters.values()), f.__name__
