"""qlearn.integer: integer kernels vs an int64 loop reference (bit for bit), vs float (within 1 LSB),
and vs PyTorch's own quantized kernels (within 1 LSB); the IntegerModel container; bad input.

PyTorch is an oracle only where its hardware computes exactly, on every CPU: qnnpack with full-range
uint8 codes (exact int32 sums), x86 with 7-bit codes 0..127 (its int16 pair sums cannot saturate:
2 * 127 * 127 < 32767). Full-range codes on x86 are tests/test_saturation.py's subject.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.fixedpoint import INT32_MAX, INT32_MIN, Int32OverflowError, quantize_multiplier
from qlearn.integer import add, avg_pool, conv2d, conv2d_accumulator, linear, requantize
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear, QRequantize
from qlearn.integer_model import IntegerModel
from qlearn.layer_integers import activation_range, add_multipliers, quantize_bias, requant_multiplier
from qlearn.qparams import QParams

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
# PyTorch 2.13 marks its quantized tensor constructors deprecated; they are still the oracle here.
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")


# ----------------------------------------------------------------------------- references
def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_mbqm(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier on Python ints (gemmlowp SRDHM + RoundingDivideByPOT)."""
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    assert INT32_MIN <= a <= INT32_MAX
    if a == m0 == INT32_MIN:
        high = INT32_MAX
    else:
        ab = a * m0
        high = c_div(ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30)), 1 << 31)
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


def ref_conv_acc(x, zx, w, b, stride, pad, groups):
    """A plain loop over every output value, int64 sums: the definition of Eq. 25."""
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=zx)
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    acc = np.zeros((n, cout, ho, wo), dtype=np.int64)
    per_group = cout // groups
    for i in range(n):
        for o in range(cout):
            g = o // per_group
            for r in range(ho):
                for c in range(wo):
                    patch = xp[i, g * cg:(g + 1) * cg, r * stride:r * stride + kh, c * stride:c * stride + kw]
                    acc[i, o, r, c] = int(b[o]) + int(np.sum((patch - zx) * w[o].astype(np.int64)))
    return acc


def ref_requant(acc, m0, shift, zo, lo, hi, axis=1):
    m0 = np.broadcast_to(np.asarray(m0), (acc.shape[axis],))
    shift = np.broadcast_to(np.asarray(shift), (acc.shape[axis],))
    out = np.empty(acc.shape, dtype=np.int64)
    for idx in np.ndindex(acc.shape):
        c = idx[axis]
        out[idx] = min(hi, max(lo, zo + ref_mbqm(int(acc[idx]), int(m0[c]), int(shift[c]))))
    return out


def round_clamp(v, lo, hi):
    """Float reference: round half to even, then clamp (what quantizing the real result would give)."""
    return np.clip(np.rint(v), lo, hi).astype(np.int64)


# ----------------------------------------------------------------------------- random layers
@st.composite
def conv_case(draw):
    kind = draw(st.sampled_from(["regular", "depthwise", "grouped"]))
    if kind == "regular":
        groups, cg, per_group = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "depthwise":
        groups, cg, per_group = draw(st.integers(2, 4)), 1, draw(st.integers(1, 2))
    else:
        groups, cg, per_group = 2, draw(st.integers(2, 3)), draw(st.integers(1, 3))
    cin, cout = groups * cg, groups * per_group
    k = draw(st.sampled_from([1, 3]))
    pad = draw(st.integers(0, 2))
    stride = draw(st.integers(1, 2))
    h = draw(st.integers(max(1, k - 2 * pad), 6))
    wd = draw(st.integers(max(1, k - 2 * pad), 6))
    n = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    seed = draw(st.integers(0, 2**31))
    per_channel = draw(st.booleans())
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (n, cin, h, wd)).astype(dtype)
    zx = int(rng.integers(info.min, info.max + 1))
    w = rng.integers(-127, 128, (cout, cg, k, k)).astype(np.int8)
    b = rng.integers(-(2**16), 2**16, cout).astype(np.int32)
    s1 = float(rng.uniform(0.005, 0.05))
    s2 = rng.uniform(0.001, 0.02, cout) if per_channel else float(rng.uniform(0.001, 0.02))
    s3 = float(rng.uniform(0.01, 0.2))
    zo = int(rng.integers(info.min, info.max + 1))
    lo = int(rng.integers(info.min, zo + 1))
    hi = int(rng.integers(zo, info.max + 1))
    return dict(x=x, zx=zx, w=w, b=b, s1=s1, s2=s2, s3=s3, zo=zo, lo=lo, hi=hi, stride=stride, pad=pad,
                groups=groups)


@given(conv_case())
@SETTINGS
def test_conv2d_equals_int64_loop_reference(c):
    m0, shift = requant_multiplier(c["s1"], c["s2"], c["s3"])
    acc = conv2d_accumulator(c["x"], c["zx"], c["w"], c["b"], stride=c["stride"], padding=c["pad"],
                             groups=c["groups"])
    want_acc = ref_conv_acc(c["x"], c["zx"], c["w"], c["b"], c["stride"], c["pad"], c["groups"])
    np.testing.assert_array_equal(acc, want_acc)
    got = conv2d(c["x"], c["zx"], c["w"], c["b"], m0, shift, c["zo"], stride=c["stride"], padding=c["pad"],
                 groups=c["groups"], act_min=c["lo"], act_max=c["hi"])
    assert got.dtype == c["x"].dtype
    np.testing.assert_array_equal(got, ref_requant(want_acc, m0, shift, c["zo"], c["lo"], c["hi"]))


@given(conv_case())
@SETTINGS
def test_conv2d_within_one_lsb_of_float(c):
    """The float computation of the same quantized layer: torch conv2d on S (q - Z) in float64."""
    m0, shift = requant_multiplier(c["s1"], c["s2"], c["s3"])
    got = conv2d(c["x"], c["zx"], c["w"], c["b"], m0, shift, c["zo"], stride=c["stride"], padding=c["pad"],
                 groups=c["groups"], act_min=c["lo"], act_max=c["hi"])
    s2 = np.broadcast_to(np.asarray(c["s2"], dtype=np.float64), (c["w"].shape[0],))
    x_real = torch.from_numpy(c["s1"] * (c["x"].astype(np.float64) - c["zx"]))
    w_real = torch.from_numpy(s2[:, None, None, None] * c["w"].astype(np.float64))
    b_real = torch.from_numpy(c["s1"] * s2 * c["b"].astype(np.float64))
    y = torch.nn.functional.conv2d(x_real, w_real, b_real, stride=c["stride"], padding=c["pad"],
                                   groups=c["groups"]).numpy()
    want = round_clamp(y / c["s3"] + c["zo"], c["lo"], c["hi"])
    assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_depthwise_strided_padded_per_channel_example():
    """A MobileNet-like depthwise 3x3, stride 2, padding 1, per-channel, ReLU6 — bit exact vs the loop."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, 6, 9, 9)).astype(np.uint8)
    w = rng.integers(-127, 128, (6, 1, 3, 3)).astype(np.int8)
    b = rng.integers(-5000, 5000, 6).astype(np.int32)
    m0, shift = requant_multiplier(0.02, rng.uniform(0.002, 0.01, 6), 0.03)
    lo, hi = activation_range("relu6", 0.03, 5)
    got = conv2d(x, 128, w, b, m0, shift, 5, stride=2, padding=1, groups=6, act_min=lo, act_max=hi)
    acc = ref_conv_acc(x, 128, w, b, 2, 1, 6)
    assert got.shape == (2, 6, 5, 5)
    np.testing.assert_array_equal(got, ref_requant(acc, m0, shift, 5, lo, hi))
    assert got.min() >= 5 and got.max() <= 5 + 200  # ReLU6 clamp: 6 / 0.03 = 200 steps above Z


def test_padding_is_real_zero():
    """With x == Z everywhere the real input is 0, so the output is exactly the bias' image."""
    x = np.full((1, 2, 4, 4), 77, dtype=np.uint8)
    w = np.full((3, 2, 3, 3), 100, dtype=np.int8)
    b = np.array([0, 1000, -1000], dtype=np.int32)
    acc = conv2d_accumulator(x, 77, w, b, padding=2)
    assert np.all(acc == b[None, :, None, None])


# ----------------------------------------------------------------------------- linear
@given(st.integers(0, 2**31), st.sampled_from([np.uint8, np.int8]), st.booleans())
@SETTINGS
def test_linear_reference_and_float(seed, dtype, per_channel):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    n, fin, fout = int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 6))
    x = rng.integers(info.min, info.max + 1, (n, fin)).astype(dtype)
    zx, zo = (int(v) for v in rng.integers(info.min, info.max + 1, 2))
    w = rng.integers(-127, 128, (fout, fin)).astype(np.int8)
    b = rng.integers(-(2**15), 2**15, fout).astype(np.int32)
    s1, s3 = 0.02, float(rng.uniform(0.02, 0.5))
    s2 = rng.uniform(0.001, 0.02, fout) if per_channel else 0.01
    m0, shift = requant_multiplier(s1, s2, s3)
    got = linear(x, zx, w, b, m0, shift, zo)
    acc = np.array([[int(b[o]) + sum((int(x[i, j]) - zx) * int(w[o, j]) for j in range(fin))
                     for o in range(fout)] for i in range(n)], dtype=np.int64)
    np.testing.assert_array_equal(got, ref_requant(acc, m0, shift, zo, info.min, info.max))
    real = s1 * np.asarray(s2) * acc
    assert np.abs(got.astype(np.int64) - round_clamp(real / s3 + zo, info.min, info.max)).max() <= 1


# ----------------------------------------------------------------------------- add
def ref_add(a, za, b, zb, m, zo, lo, hi):
    out = np.empty(a.shape, dtype=np.int64)
    for idx in np.ndindex(a.shape):
        sa = ref_mbqm((int(a[idx]) - za) << m.left_shift, m.a_m0, m.a_shift)
        sb = ref_mbqm((int(b[idx]) - zb) << m.left_shift, m.b_m0, m.b_shift)
        out[idx] = min(hi, max(lo, zo + ref_mbqm(sa + sb, m.out_m0, m.out_shift)))
    return out


@given(st.integers(0, 2**31), st.sampled_from([np.uint8, np.int8]))
@SETTINGS
def test_add_reference_and_float(seed, dtype):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, (2, 3, 5)).astype(dtype)
    b = rng.integers(info.min, info.max + 1, (2, 3, 5)).astype(dtype)
    za, zb, zo = (int(v) for v in rng.integers(info.min, info.max + 1, 3))
    sa, sb = (float(v) for v in rng.uniform(0.005, 0.1, 2))
    so = float(rng.uniform(0.01, 0.2))
    m = add_multipliers(sa, sb, so)
    got = add(a, za, m.a_m0, m.a_shift, b, zb, m.b_m0, m.b_shift, zo, m.out_m0, m.out_shift)
    np.testing.assert_array_equal(got, ref_add(a, za, b, zb, m, zo, info.min, info.max))
    real = sa * (a.astype(np.float64) - za) + sb * (b.astype(np.float64) - zb)
    assert np.abs(got.astype(np.int64) - round_clamp(real / so + zo, info.min, info.max)).max() <= 1


def test_add_multipliers_follow_tflite():
    m = add_multipliers(0.1, 0.05, 0.2)
    assert (m.a_m0, m.a_shift) == quantize_multiplier(0.5)  # 0.1 / (2 * 0.1)
    assert (m.b_m0, m.b_shift) == quantize_multiplier(0.25)
    assert (m.out_m0, m.out_shift) == quantize_multiplier(0.2 / (2**20 * 0.2))
    assert m.left_shift == 20


# ----------------------------------------------------------------------------- avg pool, requantize
@given(st.integers(0, 2**31), st.sampled_from([np.uint8, np.int8]))
@SETTINGS
def test_avg_pool_is_round_half_away_of_exact_mean(seed, dtype):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    h, w = (int(v) for v in rng.integers(1, 6, 2))
    x = rng.integers(info.min, info.max + 1, (2, 3, h, w)).astype(dtype)
    got = avg_pool(x)
    assert got.shape == (2, 3) and got.dtype == dtype
    for i, c in np.ndindex(2, 3):
        mean = Fraction(int(x[i, c].astype(np.int64).sum()), h * w)
        n = math.floor(abs(mean) + Fraction(1, 2))
        assert int(got[i, c]) == (n if mean >= 0 else -n)
    assert avg_pool(x, keepdims=True).shape == (2, 3, 1, 1)


def test_avg_pool_ties():
    x = np.array([[[[1, 2]], [[-1, -2]]]], dtype=np.int8)  # means 1.5 and -1.5
    assert avg_pool(x).tolist() == [[2, -2]]


@given(st.integers(0, 2**31))
@SETTINGS
def test_requantize_reference_and_float(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (4, 7)).astype(np.uint8)
    zx, zo = (int(v) for v in rng.integers(0, 256, 2))
    s1, s3 = (float(v) for v in rng.uniform(0.01, 0.3, 2))
    m0, shift = requant_multiplier(s1, 1.0, s3)
    got = requantize(x, zx, m0, shift, zo)
    want = np.vectorize(lambda v: min(255, max(0, zo + ref_mbqm(int(v) - zx, m0, shift))))(x)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(np.int64) - round_clamp((x - float(zx)) * s1 / s3 + zo, 0, 255)).max() <= 1
    out8 = requantize(x, zx, m0, shift, 0, out_dtype=np.int8)
    assert out8.dtype == np.int8


def test_requantize_int32_accumulator_to_uint8():
    acc = np.array([-(2**20), 0, 123456, 2**30], dtype=np.int32)
    m0, shift = quantize_multiplier(2**-12)
    assert requantize(acc, 0, m0, shift, 10).tolist() == [0, 10, 10 + 30, 255]  # 123456/4096 = 30.1


# ----------------------------------------------------------------------------- helpers
def test_quantize_bias_and_activation_range():
    b = quantize_bias(np.array([0.5, -0.25, 0.0]), 0.5, np.array([0.01, 0.01, 0.02]))
    assert b.dtype == np.int32 and b.tolist() == [100, -50, 0]
    assert activation_range(None, 0.1, 3) == (0, 255)
    assert activation_range("relu", 0.1, 3) == (3, 255)
    assert activation_range("relu6", 0.1, 3) == (3, 63)
    assert activation_range("relu6", 0.01, 3) == (3, 255)
    assert activation_range("relu", 0.1, -5, dtype=np.int8) == (-5, 127)


def test_requant_multiplier_per_channel():
    m0, shift = requant_multiplier(0.5, np.array([0.25, 0.5]), 1.0)
    assert m0.tolist() == [2**30, 2**30] and shift.tolist() == [-2, -1]
    assert requant_multiplier(0.5, 0.25, 1.0) == (2**30, -2)


# ----------------------------------------------------------------------------- PyTorch oracle
@pytest.fixture
def x86_engine():
    yield from _use_engine("x86")


def _use_engine(engine):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.fail(f"this PyTorch build has no {engine!r} quantized engine (an x86 build has x86 and qnnpack)")
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    yield
    torch.backends.quantized.engine = old


# engine -> the highest activation code for which it computes the exact sum of products on any x86 CPU
EXACT_CODES = {"qnnpack": 255, "x86": 127}


@pytest.fixture(params=sorted(EXACT_CODES))
def exact_engine(request):
    """(engine, highest code): each engine on the inputs it computes exactly."""
    for _ in _use_engine(request.param):
        yield request.param, EXACT_CODES[request.param]


def _torch_qx(x, scale, zp):
    """The very same uint8 integers as a PyTorch quint8 tensor (no float round trip)."""
    q = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), scale, zp)
    assert np.array_equal(q.int_repr().numpy(), x)
    return q


def _torch_qw(w, s2):
    t = torch.from_numpy(w)
    if np.ndim(s2):
        q = torch._make_per_channel_quantized_tensor(t, torch.tensor(s2), torch.zeros(w.shape[0], dtype=torch.long), 0)
    else:
        q = torch._make_per_tensor_quantized_tensor(t, s2, 0)
    assert np.array_equal(q.int_repr().numpy(), w)
    return q


def _report(name, got, want, min_exact=0.99):
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    exact = float((diff == 0).mean())
    print(f"{name}: max |diff| = {diff.max()} LSB, exactly equal {100 * exact:.2f}%")
    assert diff.max() <= 1
    assert exact >= min_exact  # float32 rounding in PyTorch's requantization flips only rare near-ties
    return exact


CONV_CASES = {
    "regular 3x3": dict(cin=8, cout=16, k=3, stride=1, pad=1, groups=1, per_channel=False),
    "regular per-channel": dict(cin=8, cout=16, k=3, stride=1, pad=1, groups=1, per_channel=True),
    "strided, no padding": dict(cin=8, cout=8, k=3, stride=2, pad=0, groups=1, per_channel=True),
    "depthwise": dict(cin=16, cout=16, k=3, stride=1, pad=1, groups=16, per_channel=True),
    "depthwise strided": dict(cin=16, cout=16, k=3, stride=2, pad=1, groups=16, per_channel=False),
    "pointwise": dict(cin=32, cout=16, k=1, stride=1, pad=0, groups=1, per_channel=True),
    # > 100 channels: PyTorch's x86 engine runs FBGEMM's depthwise kernel (int16 pairs) on every CPU
    "depthwise 128 channels": dict(cin=128, cout=128, k=3, stride=1, pad=1, groups=128, per_channel=True),
}


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_vs_pytorch_quantized(case, relu, exact_engine):
    engine, top = exact_engine
    p = CONV_CASES[case]
    rng = np.random.default_rng(list(CONV_CASES).index(case))
    x = rng.integers(0, top + 1, (2, p["cin"], 10, 10)).astype(np.uint8)
    w = rng.integers(-127, 128, (p["cout"], p["cin"] // p["groups"], p["k"], p["k"])).astype(np.int8)
    s1, zx, s3, zo = 0.02, int(top * 0.45), 0.06, 97
    s2 = rng.uniform(0.002, 0.01, p["cout"]) if p["per_channel"] else 0.005
    bias_q = quantize_bias(rng.normal(0, 0.5, p["cout"]), s1, s2)
    m0, shift = requant_multiplier(s1, s2, s3)
    lo, hi = activation_range("relu" if relu else None, s3, zo)
    got = conv2d(x, zx, w, bias_q, m0, shift, zo, stride=p["stride"], padding=p["pad"], groups=p["groups"],
                 act_min=lo, act_max=hi)
    packed = torch.ops.quantized.conv2d_prepack(
        _torch_qw(w, s2), torch.from_numpy((bias_q * (s1 * np.asarray(s2))).astype(np.float32)),
        [p["stride"]] * 2, [p["pad"]] * 2, [1, 1], p["groups"])
    op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    want = op(_torch_qx(x, s1, zx), packed, s3, zo).int_repr().numpy()
    _report(f"conv {case} relu={relu} on {engine}, codes 0..{top}", got, want)


def test_linear_vs_pytorch_quantized(exact_engine):
    engine, top = exact_engine
    rng = np.random.default_rng(5)
    x = rng.integers(0, top + 1, (16, 64)).astype(np.uint8)
    w = rng.integers(-127, 128, (10, 64)).astype(np.int8)
    s1, zx, s2, s3, zo = 0.03, 20, 0.004, 0.1, 128
    bias_q = quantize_bias(rng.normal(0, 1, 10), s1, s2)
    m0, shift = requant_multiplier(s1, s2, s3)
    got = linear(x, zx, w, bias_q, m0, shift, zo)
    packed = torch.ops.quantized.linear_prepack(_torch_qw(w, s2), torch.from_numpy((bias_q * s1 * s2).astype(np.float32)))
    want = torch.ops.quantized.linear(_torch_qx(x, s1, zx), packed, s3, zo).int_repr().numpy()
    _report(f"linear on {engine}, codes 0..{top}", got, want)


def test_add_vs_pytorch_quantized(x86_engine):
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (2, 8, 6, 6)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 8, 6, 6)).astype(np.uint8)
    (sa, za), (sb, zb), (so, zo) = (0.05, 120), (0.02, 30), (0.06, 100)
    layer = QAdd.from_scales("add", ("a", "b"), sa, za, sb, zb, so, zo, act_min=0, act_max=255)
    got = layer(a, b)
    want = torch.ops.quantized.add(_torch_qx(a, sa, za), _torch_qx(b, sb, zb), so, zo).int_repr().numpy()
    # two rescalings (each input to the common scale, then the sum) give more near-ties than one
    _report("add", got, want, min_exact=0.95)


def test_avg_pool_vs_pytorch_quantized(x86_engine):
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (4, 16, 7, 7)).astype(np.uint8)
    want = torch.nn.functional.adaptive_avg_pool2d(_torch_qx(x, 0.05, 10), 1).int_repr().numpy()[:, :, 0, 0]
    _report("avg_pool", avg_pool(x), want)


# ----------------------------------------------------------------------------- IntegerModel
def _small_model():
    """conv(ReLU6) -> depthwise(ReLU6) -> 1x1 projection -> add(skip from conv) -> pool -> linear."""
    rng = np.random.default_rng(11)
    s_in, z_in = 1 / 255, 0
    s_a, z_a = 6 / 255, 0  # ReLU6 outputs
    s_p, z_p = 0.05, 128
    s_sum, z_sum = 0.08, 100
    s_out, z_out = 0.1, 128

    def conv(name, inputs, cin, cout, k, groups, s_x, z_x, s_y, z_y, act):
        w = rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8)
        s_w = rng.uniform(0.002, 0.01, cout)
        m0, shift = requant_multiplier(s_x, s_w, s_y)
        lo, hi = activation_range(act, s_y, z_y)
        return QConv2d(name, inputs, w, quantize_bias(rng.normal(0, 0.1, cout), s_x, s_w), z_x, z_y, m0, shift,
                       1, k // 2, groups, lo, hi, s_x, s_w, s_y)

    layers = [
        conv("stem", ("input",), 3, 8, 3, 1, s_in, z_in, s_a, z_a, "relu6"),
        conv("dw", ("stem",), 8, 8, 3, 8, s_a, z_a, s_a, z_a, "relu6"),
        conv("proj", ("dw",), 8, 8, 1, 1, s_a, z_a, s_p, z_p, None),
        QAdd.from_scales("skip", ("stem", "proj"), s_a, z_a, s_p, z_p, s_sum, z_sum),
        QGlobalAvgPool("pool", ("skip",), 0, 255, s_sum, z_sum),
    ]
    w = rng.integers(-127, 128, (5, 8)).astype(np.int8)
    m0, shift = requant_multiplier(s_sum, 0.01, s_out)
    layers.append(QLinear("fc", ("pool",), w, quantize_bias(rng.normal(0, 0.1, 5), s_sum, 0.01), z_sum, z_out,
                          m0, shift, 0, 255, s_sum, 0.01, s_out))
    return IntegerModel(layers, QParams(s_in, z_in, 0, 255), QParams(s_out, z_out, 0, 255), input_shape=(1, 3, 8, 8))


def test_integer_model_runs_and_describes():
    model = _small_model()
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8))
    logits = model(x)
    assert logits.shape == (2, 5) and logits.dtype == np.float64
    np.testing.assert_array_equal(model(x), logits)  # deterministic
    outs = model.layer_outputs(np.zeros((2, 3, 8, 8), dtype=np.uint8))
    assert list(outs) == ["input", "stem", "dw", "proj", "skip", "pool", "fc"]
    assert outs["pool"].shape == (2, 8) and all(v.dtype == np.uint8 for v in outs.values())
    np.testing.assert_array_equal(model.run(outs["input"]), outs["fc"])
    table = model.describe()
    for token in ("stem", "depthwise conv", "add", "global avg pool", "linear", "(1, 8, 8, 8)", "uint8", "M0"):
        assert token in table
    assert model["dw"].describe()["kind"] == "depthwise conv"


def test_integer_model_layer_chain_matches_kernels():
    model = _small_model()
    x = np.random.default_rng(1).integers(0, 256, (1, 3, 8, 8)).astype(np.uint8)
    outs = model.layer_outputs(x)
    stem = model["stem"]
    np.testing.assert_array_equal(
        outs["stem"],
        conv2d(x, stem.in_zp, stem.w_q, stem.bias_q, stem.m0, stem.shift, stem.out_zp, padding=1,
               act_min=stem.act_min, act_max=stem.act_max))
    np.testing.assert_array_equal(outs["skip"], model["skip"](outs["stem"], outs["proj"]))


def test_integer_model_requantize_layer():
    m0, shift = requant_multiplier(0.1, 1.0, 0.2)
    layer = QRequantize("rq", ("input",), 128, m0, shift, 128, in_scale=0.1, out_scale=0.2)
    model = IntegerModel([layer], QParams(0.1, 128, 0, 255), QParams(0.2, 128, 0, 255))
    x = np.array([[0, 128, 130, 255]], dtype=np.uint8)
    assert model.run(x).tolist() == [[64, 128, 129, 192]]  # (q - 128) / 2 + 128, ties away: 127/2 -> 64
    assert "requantize" in model.describe()


# ----------------------------------------------------------------------------- bad input
def _conv_args():
    x = np.zeros((1, 2, 4, 4), dtype=np.uint8)
    w = np.zeros((3, 2, 3, 3), dtype=np.int8)
    b = np.zeros(3, dtype=np.int32)
    return x, w, b


def test_kernels_refuse_float_arrays():
    x, w, b = _conv_args()
    with pytest.raises(TypeError, match="integer"):
        conv2d(x.astype(np.float32), 0, w, b, 2**30, 0, 0)
    with pytest.raises(TypeError, match="int8"):
        conv2d(x, 0, w.astype(np.float64), b, 2**30, 0, 0)
    with pytest.raises(TypeError):
        conv2d(x, 0, w, b.astype(np.float32), 2**30, 0, 0)
    with pytest.raises(TypeError):
        linear(np.zeros((1, 2)), 0, np.zeros((1, 2), np.int8), None, 2**30, 0, 0)
    with pytest.raises(TypeError):
        add(np.zeros(3), 0, 2**30, 0, np.zeros(3), 0, 2**30, 0, 0, 2**30, 0)
    with pytest.raises(TypeError):
        avg_pool(np.zeros((1, 1, 2, 2)))
    with pytest.raises(TypeError):
        requantize(np.zeros(3), 0, 2**30, 0, 0)


def test_kernels_refuse_wrong_dtypes():
    x, w, b = _conv_args()
    with pytest.raises(TypeError, match="uint8 or int8"):
        conv2d(x.astype(np.int32), 0, w, b, 2**30, 0, 0)
    with pytest.raises(TypeError, match="int8"):
        conv2d(x, 0, w.astype(np.int16), b, 2**30, 0, 0)
    with pytest.raises(TypeError, match="same dtype"):
        add(np.zeros(3, np.uint8), 0, 2**30, 0, np.zeros(3, np.int8), 0, 2**30, 0, 0, 2**30, 0)


def test_kernels_refuse_wrong_shapes():
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match="4 dimensions"):
        conv2d(x[0], 0, w, b, 2**30, 0, 0)
    with pytest.raises(ValueError, match="input channels"):
        conv2d(x, 0, w[:, :1], b, 2**30, 0, 0)
    with pytest.raises(ValueError, match="bias_q"):
        conv2d(x, 0, w, b[:2], 2**30, 0, 0)
    with pytest.raises(ValueError, match="per output channel"):
        conv2d(x, 0, w, b, np.full(2, 2**30), 0, 0)
    with pytest.raises(ValueError, match="groups"):
        conv2d(x, 0, w, b, 2**30, 0, 0, groups=2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d(x, 0, np.zeros((3, 2, 5, 5), np.int8), b, 2**30, 0, 0)
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, 0, w, b, 2**30, 0, 0, stride=0)
    with pytest.raises(ValueError, match="features"):
        linear(np.zeros((2, 3), np.uint8), 0, np.zeros((4, 5), np.int8), None, 2**30, 0, 0)
    with pytest.raises(ValueError, match="same shape"):
        add(np.zeros(3, np.uint8), 0, 2**30, 0, np.zeros(4, np.uint8), 0, 2**30, 0, 0, 2**30, 0)


def test_kernels_refuse_zero_points_and_clamps_out_of_range():
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match="x_zp"):
        conv2d(x, 256, w, b, 2**30, 0, 0)
    with pytest.raises(ValueError, match="out_zp"):
        conv2d(x, 0, w, b, 2**30, 0, -1)
    with pytest.raises(ValueError, match="x_zp"):
        conv2d(x.astype(np.int8), 128, w, b, 2**30, 0, 0)
    with pytest.raises(ValueError, match="act_min"):
        conv2d(x, 0, w, b, 2**30, 0, 0, act_min=10, act_max=5)
    with pytest.raises(ValueError, match="act_min"):
        conv2d(x, 0, w, b, 2**30, 0, 0, act_min=-1)
    with pytest.raises(TypeError):
        conv2d(x, 0.5, w, b, 2**30, 0, 0)


def test_kernels_refuse_multipliers_out_of_range():
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match="m0"):
        conv2d(x, 0, w, b, -1, 0, 0)
    with pytest.raises(ValueError, match="m0"):
        conv2d(x, 0, w, b, 2**31, 0, 0)
    with pytest.raises(ValueError, match="shift"):
        conv2d(x, 0, w, b, 2**30, 31, 0)
    with pytest.raises(ValueError, match="shift"):
        requantize(np.zeros(2, np.uint8), 0, 2**30, -40, 0)
    with pytest.raises(ValueError, match="too large"):
        requant_multiplier(1.0, 1.0, 1e-10)
    with pytest.raises(ValueError, match="positive"):
        requant_multiplier(0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="< 1"):
        add_multipliers(1.0, 1.0, 1e-9)


def test_int32_overflow_is_reported_not_wrapped():
    x = np.full((1, 1, 3, 3), 255, dtype=np.uint8)
    w = np.full((1, 1, 3, 3), 127, dtype=np.int8)
    b = np.array([INT32_MAX - 1000], dtype=np.int32)  # + 9 * 255 * 127 = 291465 overflows
    with pytest.raises(Int32OverflowError, match="overflow"):
        conv2d(x, 0, w, b, 2**30, 0, 0)
    with pytest.raises(Int32OverflowError):
        linear(np.full((1, 4), 255, np.uint8), 0, np.full((1, 4), 127, np.int8),
               np.array([INT32_MAX - 10], np.int32), 2**30, 0, 0)
    with pytest.raises(Int32OverflowError):
        quantize_bias(np.array([1.0]), 1e-6, 1e-6)
    with pytest.raises(Int32OverflowError):
        requantize(np.array([2**40], dtype=np.int64), 0, 2**30, 0, 0)
    with pytest.raises(ValueError, match="int32"):
        conv2d(x, 0, w, np.array([2**31], dtype=np.int64), 2**30, 0, 0)


def test_layers_and_model_refuse_bad_construction():
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match="name"):
        QConv2d("input", ("input",), w, b, 0, 0, 2**30, 0)
    with pytest.raises(ValueError, match="takes 1 input"):
        QConv2d("c", ("a", "b"), w, b, 0, 0, 2**30, 0)
    with pytest.raises(TypeError, match="int8"):
        QConv2d("c", ("input",), w.astype(np.float32), b, 0, 0, 2**30, 0)
    with pytest.raises(ValueError, match="takes 2 input"):
        QAdd.from_scales("s", ("input",), 0.1, 0, 0.1, 0, 0.1, 0)
    qp = QParams(0.1, 0, 0, 255)
    layer = QConv2d("c", ("input",), w, b, 0, 0, 2**30, 0, padding=1)
    with pytest.raises(ValueError, match="at least one layer"):
        IntegerModel([], qp, qp)
    with pytest.raises(ValueError, match="used twice"):
        IntegerModel([layer, layer], qp, qp)
    with pytest.raises(ValueError, match="no earlier layer"):
        IntegerModel([QConv2d("c", ("missing",), w, b, 0, 0, 2**30, 0)], qp, qp)
    with pytest.raises(TypeError, match="QParams"):
        IntegerModel([layer], 0.1, qp)
    model = IntegerModel([layer], qp, qp)
    with pytest.raises(TypeError, match="uint8"):
        model.run(x.astype(np.int8))
    with pytest.raises(TypeError):
        model.run(x.astype(np.float64))
    with pytest.raises(TypeError, match="one input"):
        layer(x, x)
