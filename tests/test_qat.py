"""qlearn.qat: fake quant + STE against torch's fake-quant ops and hand-derived gradients, EMA ranges
against the core's EMARange, the folded Conv+BN training graph against BatchNorm and torch.ao's
ConvBn2d, prepare_qat on both MobileNets, and a test for each bad input."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlearn.bn_fold import fuse_conv_bn
from qlearn.fake_quant import ActFakeQuant, fake_quant_ste, weight_scale
from qlearn.integer import avg_pool
from qlearn.models import ConvBNReLU, mobilenet_v1, mobilenet_v2
from qlearn.qat import FakeQuantMobileNet, QATInvertedResidual, prepare_qat
from qlearn.qat_layers import QATAdd, QATAvgPool, QATConfig, QATConvBN, QATLinear, set_quantization
from qlearn.qparams import qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import EMARange, mse_range

FAST = settings(max_examples=40, deadline=None, derandomize=True)



# ------------------------------------------------------------------------------------ fake_quant_ste
@FAST
@given(
    lo=st.floats(-10, 0), width=st.floats(1e-3, 20), bits=st.integers(2, 8),
    seed=st.integers(0, 2**16), spread=st.floats(0.1, 3),
)
def test_fake_quant_per_tensor_forward_equals_torch(lo, width, bits, seed, spread):
    qp = qparams_from_range(lo, lo + width, bits)
    scale32 = float(torch.tensor(qp.scale, dtype=torch.float32))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(500, generator=g) * spread * width + lo + width / 2)
    ours = fake_quant_ste(x, scale32, qp.zero_point, qp.qmin, qp.qmax)
    theirs = torch.fake_quantize_per_tensor_affine(x, scale32, qp.zero_point, qp.qmin, qp.qmax)
    assert torch.equal(ours, theirs)


@FAST
@given(channels=st.integers(1, 8), bits=st.integers(2, 8), seed=st.integers(0, 2**16), axis=st.integers(0, 2))
def test_fake_quant_per_channel_forward_equals_torch(channels, bits, seed, axis):
    g = torch.Generator().manual_seed(seed)
    shape = [3, 4, 5]
    shape[axis] = channels
    x = torch.randn(*shape, generator=g) * 2
    scale = torch.rand(channels, generator=g) * 0.2 + 1e-3
    qmax = 2 ** (bits - 1) - 1
    zp = torch.randint(-qmax, qmax + 1, (channels,), generator=g)
    ours = fake_quant_ste(x, scale, zp, -qmax, qmax, axis=axis)
    theirs = torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), axis, -qmax, qmax)
    assert torch.equal(ours, theirs)


def test_fake_quant_agrees_with_numpy_core_away_from_ties():
    qp = qparams_from_range(-2.0, 3.0, 8)
    x = torch.linspace(-3, 4, 5001)
    ours = fake_quant_ste(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax).double().numpy()
    ref = fake_quantize(x.double().numpy(), qp)
    frac = np.abs((x.double().numpy() / qp.scale) % 1.0 - 0.5)
    keep = frac > 1e-3
    assert keep.mean() > 0.99
    np.testing.assert_allclose(ours[keep], ref[keep], atol=1e-6)


@FAST
@given(lo=st.floats(-5, 0), width=st.floats(0.05, 10), bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_ste_gradient_is_one_inside_zero_outside(lo, width, bits, seed):
    qp = qparams_from_range(lo, lo + width, bits)
    s, z = float(torch.tensor(qp.scale, dtype=torch.float32)), qp.zero_point
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(400, generator=g) * 3 - 1) * width + lo
    lo_real = torch.tensor((qp.qmin - z) * s, dtype=torch.float32)
    hi_real = torch.tensor((qp.qmax - z) * s, dtype=torch.float32)
    x = torch.cat([x, lo_real[None], hi_real[None]]).requires_grad_(True)  # both boundaries included
    upstream = torch.randn(x.shape, generator=g)
    fake_quant_ste(x, s, z, qp.qmin, qp.qmax).backward(upstream)
    inside = (x.detach() >= lo_real) & (x.detach() <= hi_real)  # hand-derived (Eq. 52)
    assert torch.equal(x.grad, upstream * inside)
    assert x.grad[-1] == upstream[-1] and x.grad[-2] == upstream[-2]


def test_ste_gradient_boundaries_exactly():
    s, z = 0.5, 2  # grid [-1, 1.5] for qmin=0, qmax=5
    x = torch.tensor([-1.0 - 1e-3, -1.0, 0.3, 1.5, 1.5 + 1e-3, 7.0], requires_grad=True)
    fake_quant_ste(x, s, z, 0, 5).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_ste_gradient_agrees_with_torch_away_from_half_step_outside():
    s, z, qmin, qmax = 0.1, 10, 0, 255
    x = torch.linspace(-3, 28, 3001, requires_grad=True)
    fake_quant_ste(x, s, z, qmin, qmax).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(x2, s, z, qmin, qmax).sum().backward()
    lo, hi = (qmin - z) * s, (qmax - z) * s
    xd = x.detach()
    far = ((xd - lo).abs() > s) & ((xd - hi).abs() > s)  # torch decides "inside" after rounding
    assert torch.equal(x.grad[far], x2.grad[far])
    assert x.grad.sum() > 0 and (x.grad == 0).any()


def test_ste_per_channel_gradient():
    x = torch.tensor([[-2.0, 0.0, 2.0], [-0.2, 0.0, 0.2]], requires_grad=True)
    fake_quant_ste(x, torch.tensor([0.01, 0.01]), 0, -127, 127, axis=0).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def test_no_gradient_flows_to_scale():
    s = torch.tensor(0.1, requires_grad=True)
    x = torch.randn(10, requires_grad=True)
    fake_quant_ste(x, s, 0, -127, 127).sum().backward()
    assert s.grad is None


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(x=np.ones(3)), TypeError),
        (dict(x=torch.ones(3, dtype=torch.int32)), TypeError),
        (dict(qmin=5, qmax=5), ValueError),
        (dict(qmin=0.0), TypeError),
        (dict(scale=0.0), ValueError),
        (dict(scale=-1.0), ValueError),
        (dict(scale=float("nan")), ValueError),
        (dict(zero_point=1.5), TypeError),
        (dict(zero_point=300), ValueError),
        (dict(scale=torch.ones(4)), ValueError),  # array scale without axis
        (dict(scale=torch.ones(4), axis=0), ValueError),  # wrong channel count (x has 3 rows)
        (dict(scale=torch.ones(3), axis=5), ValueError),
        (dict(scale=torch.ones(3), axis=1.0), TypeError),
        (dict(scale=torch.ones(3), zero_point=torch.zeros(2, dtype=torch.int64), axis=0), ValueError),
    ],
)
def test_fake_quant_bad_inputs(kwargs, err):
    args = dict(x=torch.ones(3, 2), scale=0.1, zero_point=0, qmin=0, qmax=255)
    args.update(kwargs)
    with pytest.raises(err):
        fake_quant_ste(args["x"], args["scale"], args["zero_point"], args["qmin"], args["qmax"], axis=args.get("axis"))


# ------------------------------------------------------------------------------------ weight scales
@FAST
@given(seed=st.integers(0, 2**16), bits=st.integers(2, 8), per_channel=st.booleans())
def test_minmax_weight_scale_equals_core_symmetric_narrow(seed, bits, per_channel):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 3, 3, 3, generator=g) * (torch.rand(6, 1, 1, 1, generator=g) * 3 + 0.01)
    s = weight_scale(w, bits, per_channel=per_channel)
    wd = w.double().numpy()
    if per_channel:
        flat = wd.reshape(6, -1)
        qp = qparams_from_range(flat.min(1), flat.max(1), bits, symmetric=True, signed=True, narrow_range=True, axis=0)
    else:
        qp = qparams_from_range(wd.min(), wd.max(), bits, symmetric=True, signed=True, narrow_range=True)
    np.testing.assert_allclose(s.double().numpy(), qp.scale, rtol=1e-6)
    assert qp.zero_point is not None and np.all(np.asarray(qp.zero_point) == 0)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_mse_weight_scale_close_to_core_mse_range_and_beats_minmax(per_channel, bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 64, generator=g) ** 3  # heavy tails: clipping pays off
    qmax = 2 ** (bits - 1) - 1

    def err(scale):
        s = scale.reshape(-1, 1) if per_channel else scale
        return ((torch.clamp(torch.round(w / s), -qmax, qmax) * s - w) ** 2).mean().item()

    s_mse = weight_scale(w, bits, per_channel=per_channel, method="mse")
    s_mm = weight_scale(w, bits, per_channel=per_channel, method="minmax")
    lo, hi = mse_range(w.double().numpy(), bits, 0 if per_channel else None, symmetric=True, signed=True, narrow_range=True)
    s_core = torch.tensor(np.maximum(-np.asarray(lo), np.asarray(hi)) / qmax, dtype=torch.float32)
    assert err(s_mse) <= err(s_mm)
    assert err(s_mse) <= err(s_core) * 1.001 + 1e-12
    assert bool(torch.all(s_mse <= s_mm * (1 + 1e-6)))


def test_weight_scale_zero_channel_and_bad_inputs():
    w = torch.zeros(2, 3)
    w[1] = 1.0
    s = weight_scale(w, 8)
    assert s[0] == 1.0 and abs(s[1].item() - 1 / 127) < 1e-8
    with pytest.raises(TypeError):
        weight_scale(np.ones((2, 2)), 8)
    with pytest.raises(ValueError):
        weight_scale(torch.ones(2, 2), 8, method="percentile")
    with pytest.raises(ValueError):
        weight_scale(torch.ones(2, 2), 1)
    with pytest.raises(ValueError):
        weight_scale(torch.ones(0), 8)


# ------------------------------------------------------------------------------------ activations
def test_ema_range_matches_core_emarange():
    g = torch.Generator().manual_seed(0)
    aq = ActFakeQuant(8, decay=0.9).train()
    ref = EMARange(decay=0.9)
    for i in range(6):
        x = torch.randn(4, 5, generator=g) * (i + 1) + i
        aq(x)
        lo, hi = ref.update(x.double().numpy())
    assert abs(aq.lo.item() - lo) < 1e-5 * max(1, abs(lo)) and abs(aq.hi.item() - hi) < 1e-5 * max(1, abs(hi))
    assert aq.count.item() == 6 and aq.step.item() == 6


def test_act_quant_delay_then_quantized_and_eval_uses_stored_range():
    aq = ActFakeQuant(8, decay=0.5, delay=2).train()
    x = torch.linspace(-1, 3, 101)
    assert torch.equal(aq(x), x) and torch.equal(aq(x), x)  # steps 1, 2: observe only (Eq. 56)
    y = aq(x)  # step 3: quantized
    qp = aq.qparams()
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, 0, 255))
    assert not torch.equal(y, x)
    aq.eval()
    before = (aq.lo.clone(), aq.hi.clone(), aq.count.clone())
    z = aq(x * 10)  # eval: no range update, quantized with the stored range
    assert torch.equal(aq.lo, before[0]) and torch.equal(aq.hi, before[1]) and torch.equal(aq.count, before[2])
    assert z.max().item() == pytest.approx(qp.real_range[1], rel=1e-6)


def test_act_quant_qparams_are_core_nudged_and_float32():
    aq = ActFakeQuant(8).train()
    aq(torch.tensor([-0.3, 2.7]))
    qp = aq.qparams()
    core = qparams_from_range(-0.3, 2.7, 8)
    assert qp.zero_point == core.zero_point
    assert qp.scale == float(torch.tensor(core.scale, dtype=torch.float32))


def test_act_quant_fixed_input_range_and_no_range_yet():
    inp = ActFakeQuant(8, fixed_range=(0.0, 1.0)).train()
    qp = inp.qparams()
    assert qp.zero_point == 0 and qp.scale == float(torch.tensor(1 / 255, dtype=torch.float32))
    inp(torch.rand(3) * 5)
    assert inp.lo.item() == 0.0 and inp.hi.item() == 1.0  # never updated
    fresh = ActFakeQuant(8).eval()
    x = torch.randn(5)
    assert torch.equal(fresh(x), x)  # nothing observed: identity
    with pytest.raises(ValueError, match="seen no data"):
        fresh.qparams()


def test_act_quant_calibrating_is_running_minmax_and_passthrough():
    aq = ActFakeQuant(8).eval()
    aq.calibrating = True
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([-2.0, 0.5])
    assert torch.equal(aq(a), a) and torch.equal(aq(b), b)
    assert aq.lo.item() == -2.0 and aq.hi.item() == 1.0


@pytest.mark.parametrize(
    "kwargs, err",
    [(dict(bits=9), ValueError), (dict(bits=1), ValueError), (dict(bits=8.0), TypeError),
     (dict(decay=1.0), ValueError), (dict(decay="x"), ValueError), (dict(delay=-1), ValueError),
     (dict(delay=1.5), TypeError), (dict(fixed_range=(1.0, 0.0)), ValueError)],
)
def test_act_quant_bad_arguments(kwargs, err):
    with pytest.raises(err):
        ActFakeQuant(**kwargs)


def test_act_quant_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        ActFakeQuant(8).train()(torch.tensor([0.0, float("nan")]))


# ------------------------------------------------------------------------------------ Conv + BN
def _trained_block(relu6=True, groups=1, seed=0, cin=4, cout=6):
    torch.manual_seed(seed)
    if groups > 1:
        cin = cout
    block = ConvBNReLU(cin, cout, 3, stride=1, groups=groups, relu6=relu6)
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 2.0)
        block.bn.bias.uniform_(-0.5, 0.5)
        block.bn.running_mean.uniform_(-0.3, 0.3)
        block.bn.running_var.uniform_(0.5, 2.0)
    return block


def _qat_block(block, freeze=None, bits=8, per_channel=True):
    b = copy.deepcopy(block)
    return QATConvBN(b.conv, b.bn, b.relu6, ActFakeQuant(8), weight_bits=bits, per_channel=per_channel, freeze_step=freeze)


@pytest.mark.parametrize("relu6, groups", [(True, 1), (False, 1), (True, 6)])
def test_folded_training_equals_batchnorm_when_quantization_is_off(relu6, groups):
    block = _trained_block(relu6, groups)
    qb = _qat_block(block)
    set_quantization(qb, weights=False, activations=False)
    ref = copy.deepcopy(block).train()
    qb.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, block.conv.in_channels, 7, 7, generator=g)
        torch.testing.assert_close(qb(x), ref(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(qb.bn.running_mean, ref.bn.running_mean)
    torch.testing.assert_close(qb.bn.running_var, ref.bn.running_var)
    assert qb.bn.num_batches_tracked == ref.bn.num_batches_tracked == 3


def test_folded_training_graph_matches_hand_formula_float64():
    block = _trained_block()
    qb = _qat_block(block).double().train()
    qb.act.enabled = False
    x = torch.randn(8, 4, 6, 6, dtype=torch.float64)
    rm, rv = block.bn.running_mean.double().clone(), block.bn.running_var.double().clone()
    y = qb(x)
    # Eq. 58-61 by hand
    w, gamma, beta, eps, mom = block.conv.weight.double(), block.bn.weight.double(), block.bn.bias.double(), 1e-5, 0.1
    z = F.conv2d(x, w, None, 1, 1)
    mu, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    n = z.numel() / z.shape[1]
    rm, rv = (1 - mom) * rm + mom * mu, (1 - mom) * rv + mom * var * n / (n - 1)
    sigma, sigma_b = torch.sqrt(rv + eps), torch.sqrt(var + eps)
    w_fold = w * (gamma / sigma).reshape(-1, 1, 1, 1)
    s = w_fold.reshape(6, -1).abs().amax(1) / 127
    w_q = torch.clamp(torch.round(w_fold / s.reshape(-1, 1, 1, 1)), -127, 127) * s.reshape(-1, 1, 1, 1)
    ref = F.conv2d(x, w_q, None, 1, 1) * (sigma / sigma_b).reshape(1, -1, 1, 1) + (beta - gamma * mu / sigma_b).reshape(1, -1, 1, 1)
    torch.testing.assert_close(y, torch.clamp(ref, 0, 6))
    torch.testing.assert_close(qb.bn.running_var, rv)


@pytest.mark.parametrize("per_channel", [True, False])
def test_frozen_conv_bn_equals_torch_ao_convbn2d(per_channel):
    from torch.ao.nn.intrinsic.qat import ConvBn2d
    from torch.ao.quantization import FakeQuantize, MinMaxObserver, PerChannelMinMaxObserver, QConfig

    block = _trained_block(relu6=False)
    if per_channel:
        wfq = FakeQuantize.with_args(observer=PerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                                     dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    else:
        wfq = FakeQuantize.with_args(observer=MinMaxObserver, quant_min=-127, quant_max=127,
                                     dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    ao = ConvBn2d(4, 6, 3, padding=1, bias=False, qconfig=QConfig(activation=nn.Identity, weight=wfq))
    ao.weight.data.copy_(block.conv.weight)
    ao.bn.load_state_dict(block.bn.state_dict())
    ao.freeze_bn_stats()
    ao.eval()
    qb = _qat_block(block, per_channel=per_channel).eval()
    qb.act.enabled = False
    x = torch.randn(5, 4, 6, 6)
    torch.testing.assert_close(qb(x), ao(x), rtol=1e-4, atol=1e-5)


def test_bn_freezes_after_freeze_step():
    block = _trained_block()
    qb = _qat_block(block, freeze=2).train()
    qb.act.enabled = False
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(8, 4, 5, 5, generator=g) for _ in range(4)]
    qb(xs[0])
    rv1 = qb.bn.running_var.clone()
    qb(xs[1])
    assert not torch.equal(qb.bn.running_var, rv1)  # steps 1, 2: batch statistics, stats move
    assert qb.frozen
    rv2 = qb.bn.running_var.clone()
    y_train = qb(xs[2])  # step 3: frozen
    assert torch.equal(qb.bn.running_var, rv2)
    y_eval = copy.deepcopy(qb).eval()(xs[2])
    torch.testing.assert_close(y_train, y_eval)


def test_freeze_zero_uses_moving_averages_from_the_start():
    block = _trained_block()
    qb = _qat_block(block, freeze=0).train()
    rv = qb.bn.running_var.clone()
    qb(torch.randn(4, 4, 5, 5))
    assert torch.equal(qb.bn.running_var, rv)


def test_gradients_reach_weights_gamma_beta():
    qb = _qat_block(_trained_block()).train()
    qb(torch.randn(4, 4, 5, 5)).sum().backward()
    for p in (qb.conv.weight, qb.bn.weight, qb.bn.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_eval_weights_are_on_the_int8_grid_per_channel_and_per_tensor():
    block = _trained_block()
    for per_channel in (True, False):
        qb = _qat_block(block, per_channel=per_channel).eval()
        w_fold, _ = qb.folded()
        w_hat, s = qb._fake_quant_weight(w_fold)
        codes = w_hat / (s.reshape(-1, 1, 1, 1) if per_channel else s)
        torch.testing.assert_close(codes, torch.round(codes), rtol=0, atol=1e-4)
        assert codes.abs().max() <= 127 + 1e-4
        assert s.ndim == (1 if per_channel else 0)


def test_qatconvbn_bad_construction():
    conv = nn.Conv2d(2, 3, 3, bias=True)
    with pytest.raises(ValueError, match="without bias"):
        QATConvBN(conv, nn.BatchNorm2d(3), True, ActFakeQuant())
    with pytest.raises(TypeError):
        QATConvBN(nn.Linear(2, 3), nn.BatchNorm2d(3), True, ActFakeQuant())
    with pytest.raises(ValueError):
        QATConvBN(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(4), True, ActFakeQuant())
    with pytest.raises(ValueError, match="int_params|prepare_qat"):
        QATConvBN(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), True, ActFakeQuant()).int_params()


# ------------------------------------------------------------------------------------ add, pool, linear
def test_add_quantizes_the_sum():
    add = QATAdd(ActFakeQuant(8)).train()
    a, b = torch.randn(10), torch.randn(10)
    y = add(a, b)
    qp = add.act.qparams()
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(a + b, qp.scale, qp.zero_point, 0, 255))


def test_avg_pool_rounds_like_the_integer_kernel():
    inq = ActFakeQuant(8).train()
    x = inq(torch.rand(3, 5, 4, 4) * 4 - 0.5)  # on the grid, zero point > 0
    pool = QATAvgPool()
    pool.link_input(inq)
    inq.eval()
    y = pool(x)
    qp = inq.qparams()
    codes = torch.round(x / qp.scale + qp.zero_point).numpy().astype(np.uint8)
    ref = (avg_pool(codes).astype(np.float64) - qp.zero_point) * qp.scale  # the integer kernel (Eq. 68)
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(y, x.mean((2, 3)), atol=1e-9)  # the rounding is real
    inq.enabled = False
    torch.testing.assert_close(pool(x), x.mean((2, 3)))
    with pytest.raises(TypeError):
        pool.link_input(nn.Identity())


def test_linear_eval_forward_by_hand():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    inq = ActFakeQuant(8, fixed_range=(0.0, 2.0))
    ql = QATLinear(copy.deepcopy(lin), ActFakeQuant(8))
    ql.link_input(inq)
    x = inq(torch.rand(5, 6) * 2)
    ql.train()(x)  # set the output range
    ql.eval()
    y = ql(x)
    s_in = inq.qparams().scale
    lin.requires_grad_(False)
    s_w = lin.weight.abs().amax(1) / 127
    w_hat = torch.fake_quantize_per_channel_affine(lin.weight, s_w, torch.zeros(4, dtype=torch.int32), 0, -127, 127)
    b_hat = torch.round(lin.bias / (s_in * s_w)) * (s_in * s_w)
    qp = ql.act.qparams()
    ref = torch.fake_quantize_per_tensor_affine(F.linear(x, w_hat, b_hat), qp.scale, qp.zero_point, 0, 255)
    torch.testing.assert_close(y.detach(), ref, rtol=0, atol=qp.scale * 1.001)  # at most one step (float rounding)
    assert (y != ref).float().mean() < 0.05


# ------------------------------------------------------------------------------------ prepare_qat
@pytest.mark.parametrize("factory", [mobilenet_v1, mobilenet_v2])
def test_prepare_qat_structure_and_original_untouched(factory):
    torch.manual_seed(0)
    model = factory(width=0.25, input_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qat = prepare_qat(model, QATConfig(weight_bits=4))
    assert isinstance(qat, FakeQuantMobileNet) and qat.training
    n_conv = sum(isinstance(m, ConvBNReLU) for m in model.modules())
    assert sum(isinstance(m, QATConvBN) for m in qat.modules()) == n_conv
    n_res = sum(getattr(m, "use_res", False) for m in model.modules() if not isinstance(m, QATInvertedResidual))
    assert sum(isinstance(m, QATAdd) for m in qat.modules()) == n_res
    assert all(m.weight_bits == 4 for m in qat.modules() if isinstance(m, (QATConvBN, QATLinear)))
    assert qat.config == model.config
    qat(torch.rand(4, 1, 16, 16))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # deep copy: the float model is unchanged
    # every layer is linked to the quantizer of the tensor it reads
    convs = [m for m in qat.modules() if isinstance(m, QATConvBN)]
    assert convs[0].input_quant is qat.input_quant
    assert qat.classifier.input_quant is qat.pool.input_quant


@pytest.mark.parametrize("factory", [mobilenet_v1, mobilenet_v2])
def test_prepare_qat_with_quantization_off_equals_float_eval(factory):
    torch.manual_seed(1)
    model = factory(width=0.25, input_size=16)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 16, 16))  # non-trivial BN statistics
    model.eval()
    qat = set_quantization(prepare_qat(model), weights=False, activations=False).eval()
    x = torch.rand(8, 1, 16, 16)
    torch.testing.assert_close(qat(x), model(x), rtol=1e-4, atol=1e-5)


def test_prepare_qat_8bit_close_to_float_and_deepcopy_keeps_links():
    torch.manual_seed(2)
    model = mobilenet_v2(width=0.25, input_size=16).eval()
    qat = prepare_qat(model, QATConfig(freeze_bn_step=0))  # BN frozen: the fold uses the float model's stats
    x = torch.rand(32, 1, 16, 16)
    with torch.no_grad():
        qat.train()(x)  # sets every activation range from this batch
    qat2 = copy.deepcopy(qat).eval()
    convs = [m for m in qat2.modules() if isinstance(m, QATConvBN)]
    assert convs[0].input_quant is qat2.input_quant  # links follow the copy
    assert qat2.pool.input_quant is qat2.features[-1].act
    y_q, y_f = qat2(x), model(x)
    sqnr = 10 * torch.log10((y_f**2).mean() / ((y_q - y_f) ** 2).mean())
    assert sqnr > 15, sqnr  # 8-bit weights and activations: close to float


def test_qat_training_is_deterministic():
    from qlearn.train import TrainConfig, train

    def run():
        torch.manual_seed(0)
        model = mobilenet_v1(width=0.25, input_size=16)
        qat = prepare_qat(model, QATConfig(freeze_bn_step=2, act_quant_delay=1))
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(48, 1, 16, 16, generator=g), torch.randint(0, 10, (48,), generator=g)
        train(qat, x, y, TrainConfig(epochs=1, batch_size=16, lr=1e-3, schedule="constant"), progress=False)
        return qat.eval()(x)

    assert torch.equal(run(), run())


def test_prepare_qat_bad_inputs():
    with pytest.raises(TypeError, match="MobileNet"):
        prepare_qat(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(TypeError, match="QATConfig"):
        prepare_qat(mobilenet_v1(width=0.25), {"weight_bits": 8})
    from qlearn.bn_fold import fuse_model

    with pytest.raises(ValueError, match="BatchNorm"):
        prepare_qat(fuse_model(mobilenet_v1(width=0.25)))


@pytest.mark.parametrize(
    "kwargs, err",
    [(dict(weight_bits=9), ValueError), (dict(weight_bits=1), ValueError), (dict(weight_bits=8.0), TypeError),
     (dict(act_bits=16), ValueError), (dict(per_channel=1), TypeError), (dict(weight_range="percentile"), ValueError),
     (dict(ema_decay=1.0), ValueError), (dict(act_quant_delay=-1), ValueError), (dict(freeze_bn_step=1.5), TypeError),
     (dict(input_range=(1.0, 0.0)), ValueError), (dict(input_range=(0.0,)), TypeError),
     (dict(input_range=("a", "b")), TypeError)],
)
def test_qatconfig_bad_values(kwargs, err):
    with pytest.raises(err):
        QATConfig(**kwargs)


def test_set_quantization_bad_values():
    with pytest.raises(TypeError):
        set_quantization(nn.Identity(), weights=1)


def test_fuse_conv_bn_agrees_with_qat_fold_in_eval():
    block = _trained_block().eval()
    qb = _qat_block(block).eval()
    w_fold, b_fold = qb.folded()
    fused = fuse_conv_bn(block.conv, block.bn)
    torch.testing.assert_close(w_fold, fused.weight)
    torch.testing.assert_close(b_fold, fused.bias)


def test_load_qat_state_round_trip(tmp_path):
    from qlearn.checkpoints import save_checkpoint  # the format the pipeline uses
    from qlearn.qat import load_qat_state

    torch.manual_seed(0)
    model = mobilenet_v2(width=0.25, input_size=16)
    cfg = QATConfig(weight_bits=4, freeze_bn_step=1)
    qat = prepare_qat(model, cfg)
    with torch.no_grad():
        qat(torch.rand(8, 1, 16, 16))
        qat(torch.rand(8, 1, 16, 16))
    qat.eval()
    path = save_checkpoint(tmp_path / "qat.pt", qat, extra={"qat_config": cfg.to_dict()})
    payload = torch.load(path, weights_only=True)
    back = load_qat_state(payload["config"], payload["extra"]["qat_config"], payload["state_dict"])
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(back(x), qat(x))
    assert back.features[0].step.item() == 2
    with pytest.raises(ValueError, match="does not fit"):
        load_qat_state(payload["config"], QATConfig(), {k: v for k, v in payload["state_dict"].items() if "lo" not in k})
    with pytest.raises(ValueError, match="unknown or missing"):
        load_qat_state(payload["config"], {"bits": 8}, payload["state_dict"])
    with pytest.raises(TypeError):
        load_qat_state(payload["config"], cfg, [1, 2])
