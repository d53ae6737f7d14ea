"""qlearn.saturation: the int16 pair arithmetic against the exact int64 sum (oracle), the paper's
Appendix B argument as properties, and PyTorch's x86 int8 kernels predicted on the CPU at hand.

Which PyTorch path saturates is decided from the CPU's flags (qlearn.torch_int8.cpu_int8_features):
x86 routes convolutions to oneDNN's exact VNNI kernels only with avx512_vnni (and <= 100 groups);
otherwise FBGEMM adds pairs of uint8 x int8 products in int16 with saturation. FBGEMM's depthwise
kernel (PyTorch's choice for depthwise convs with more than 100 channels) does so on every CPU.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import saturation as sat
from qlearn.integer import conv2d, linear
from qlearn.layer_integers import quantize_bias, requant_multiplier
from qlearn.torch_int8 import cpu_int8_features

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")


# ----------------------------------------------------------------------------- reference
def loop_pair_dot(a, w):
    """Pair by pair on Python ints: the definition of vpmaddubsw (saturating) + vpmaddwd."""
    a, w = [int(v) for v in a], [int(v) for v in w]
    if len(a) % 2:
        a, w = a + [0], w + [0]
    return sum(min(32767, max(-32768, a[i] * w[i] + a[i + 1] * w[i + 1])) for i in range(0, len(a), 2))


def codes(draw, dtype, lo, hi, shape):
    seed = draw(st.integers(0, 2**31))
    return np.random.default_rng(seed).integers(lo, hi + 1, shape).astype(dtype)


@st.composite
def operands(draw, a_dtype=np.uint8, a_lo=0, a_hi=255, w_lo=-127, w_hi=127):
    n, out, k = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 40))
    return codes(draw, a_dtype, a_lo, a_hi, (n, k)), codes(draw, np.int8, w_lo, w_hi, (out, k))


# ----------------------------------------------------------------------------- the arithmetic
@given(operands())
@SETTINGS
def test_pair_dot_is_the_saturating_pair_loop(ops):
    a, w = ops
    got = sat.pair_dot(a, w)
    assert got.dtype == np.int64 and got.shape == (a.shape[0], w.shape[0])
    for i in range(a.shape[0]):
        for o in range(w.shape[0]):
            assert got[i, o] == loop_pair_dot(a[i], w[o])
    np.testing.assert_array_equal(sat.exact_dot(a, w), a.astype(np.int64) @ w.astype(np.int64).T)


def test_hand_examples():
    a = np.array([[255, 255]], np.uint8)
    w = np.array([[127, 127]], np.int8)
    assert sat.exact_dot(a, w)[0, 0] == 64770 and sat.pair_dot(a, w)[0, 0] == 32767
    assert sat.pair_dot(a, -w)[0, 0] == -32768
    # odd K: the last product is alone in its pair, and one product always fits int16
    assert sat.pair_dot(np.array([[255, 255, 255]], np.uint8), np.array([[127, 127, 127]], np.int8))[0, 0] == 32767 + 32385
    # the pairs are adjacent: (+, -) pairs cancel before any saturation
    assert sat.pair_dot(np.array([[255] * 4], np.uint8), np.array([[127, -127, 127, -127]], np.int8))[0, 0] == 0


@given(operands(a_hi=127))
@SETTINGS
def test_seven_bit_activations_never_saturate(ops):
    """codes 0..127 and |w| <= 127 (and -128): |pair| <= 2 * 127 * 128 = 32512 <= 32767."""
    a, w = ops
    np.testing.assert_array_equal(sat.pair_dot(a, w), sat.exact_dot(a, w))


@given(operands(w_lo=-64, w_hi=64))
@SETTINGS
def test_seven_bit_weights_never_saturate(ops):
    """full-range codes and |w| <= 64: |pair| <= 2 * 255 * 64 = 32640 <= 32767."""
    a, w = ops
    np.testing.assert_array_equal(sat.pair_dot(a, w), sat.exact_dot(a, w))


@given(operands(a_dtype=np.int8, a_lo=-128, a_hi=127))
@SETTINGS
def test_appendix_b_signed_int8_times_narrow_weights_never_overflows(ops):
    """The paper's case: int8 x int8 with weights in [-127, 127] -> |pair| <= 2 * 128 * 127 = 32512."""
    a, w = ops
    np.testing.assert_array_equal(sat.pair_dot(a, w), sat.exact_dot(a, w))


def test_appendix_b_the_code_minus_128_overflows():
    a = np.array([[-128, -128]], np.int8)
    w = np.array([[-128, -128]], np.int8)
    assert sat.exact_dot(a, w)[0, 0] == 32768
    assert sat.pair_dot(a, w)[0, 0] == 32767  # one LSB lost to saturation
    assert sat.max_pair_sum(w, 127, -128) == 32768 > sat.INT16_MAX
    assert sat.max_pair_sum(np.array([[-127, 127]], np.int8), 127, -128) == 32512 <= sat.INT16_MAX


@given(operands(), st.integers(0, 255))
@SETTINGS
def test_max_pair_sum_bounds_every_pair_and_is_attained(ops, act_max):
    a, w = ops
    a = np.minimum(a, act_max).astype(np.uint8)
    bound = sat.max_pair_sum(w, act_max)
    assert np.abs(sat._pair_sums(a, w)).max() <= bound
    if bound <= sat.INT16_MAX:
        np.testing.assert_array_equal(sat.pair_dot(a, w), sat.exact_dot(a, w))
    if w.shape[1] < 2:
        return
    # brute force over every pair of one channel's weights and codes at the ends of [0, act_max]
    wi = w.astype(np.int64)
    brute, attainable = 0, False
    for o in range(w.shape[0]):
        for i, j in itertools.combinations(range(w.shape[1]), 2):
            for ai, aj in itertools.product((0, act_max), repeat=2):
                brute = max(brute, abs(ai * wi[o, i] + aj * wi[o, j]))
        top = wi[o, np.argsort(np.abs(wi[o]))[-2:]]
        if act_max * np.abs(top).sum() == bound and top[0] * top[1] >= 0:
            attainable = True  # the two largest |w| share a sign: both codes at act_max reach the bound
    assert brute <= bound
    if attainable:
        assert brute == bound


# ----------------------------------------------------------------------------- layers
@st.composite
def conv_case(draw, a_hi=255):
    groups = draw(st.sampled_from([1, 2, 3]))
    cg, per = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3]))
    pad, stride = draw(st.integers(0, 1)), draw(st.integers(1, 2))
    h = draw(st.integers(max(1, k - 2 * pad), 6))
    x = codes(draw, np.uint8, 0, a_hi, (draw(st.integers(1, 2)), groups * cg, h, h))
    w = codes(draw, np.int8, -127, 127, (groups * per, cg, k, k))
    zx = draw(st.integers(0, a_hi))
    return dict(x=x, w=w, zx=zx, stride=stride, padding=pad, groups=groups)


def _requant_args(cout, seed=0):
    rng = np.random.default_rng(seed)
    s1, s2, s3 = 0.02, rng.uniform(0.002, 0.01, cout), 0.06
    m0, shift = requant_multiplier(s1, s2, s3)
    return quantize_bias(rng.normal(0, 0.5, cout), s1, s2), m0, shift, s1 * s2 / s3


@given(conv_case(a_hi=127))
@SETTINGS
def test_conv2d_equals_the_exact_kernel_when_nothing_can_saturate(c):
    bias, m0, shift, _ = _requant_args(c["w"].shape[0])
    kw = dict(stride=c["stride"], padding=c["padding"], groups=c["groups"])
    want = conv2d(c["x"], c["zx"], c["w"], bias, m0, shift, 90, **kw)
    np.testing.assert_array_equal(sat.conv2d(c["x"], c["zx"], c["w"], bias, m0, shift, 90, **kw), want)
    rep = sat.saturation(c["x"], c["w"], x_zp=c["zx"], **kw)
    assert rep.n_saturated == 0 and rep.max_acc_error == 0 and rep.max_pair_sum <= sat.INT16_MAX


@given(conv_case())
@SETTINGS
def test_saturation_report_counts_against_the_exact_sum(c):
    """Oracle: the exact accumulator (qlearn.integer.conv2d_accumulator, which subtracts the zero point
    first) against the emulation's accumulator, output by output."""
    from qlearn.integer import conv2d_accumulator

    w, x, zx = c["w"], c["x"], c["zx"]
    kw = dict(stride=c["stride"], padding=c["padding"], groups=c["groups"])
    bias, _, _, m = _requant_args(w.shape[0])
    exact = conv2d_accumulator(x, zx, w, None, **kw)
    paired = sat._conv_dots(x, w, zx, c["stride"], c["padding"], c["groups"], sat.pair_dot)
    paired = paired - zx * w.astype(np.int64).sum(axis=(1, 2, 3))[None, :, None, None]
    err = np.abs(exact - paired)
    rep = sat.saturation(x, w, x_zp=zx, multiplier=m, **kw)
    assert rep.n_outputs == exact.size
    assert rep.n_saturated == np.count_nonzero(err)
    assert rep.max_acc_error == err.max()
    assert rep.max_lsb_error == pytest.approx((err * m[None, :, None, None]).max())
    assert (rep.n_saturated > 0) <= (rep.max_pair_sum > sat.INT16_MAX)  # saturation needs a pair beyond int16
    assert 0.0 <= rep.fraction <= 1.0 and rep.to_dict()["fraction"] == rep.fraction


@given(operands(a_hi=127))
@SETTINGS
def test_linear_equals_the_exact_kernel_when_nothing_can_saturate(ops):
    x, w = ops
    bias, m0, shift, _ = _requant_args(w.shape[0], 1)
    want = linear(x, 7, w, bias, m0, shift, 128)
    np.testing.assert_array_equal(sat.linear(x, 7, w, bias, m0, shift, 128), want)


def test_linear_saturation_report_by_hand():
    x = np.array([[255, 255, 0, 0], [10, 10, 10, 10]], np.uint8)
    w = np.array([[127, 127, 1, 1]], np.int8)
    rep = sat.saturation(x, w, multiplier=0.01)
    assert (rep.n_outputs, rep.n_saturated, rep.max_acc_error, rep.max_pair_sum) == (2, 1, 64770 - 32767, 64770)
    assert rep.max_lsb_error == pytest.approx(320.03)


def test_im2col_order_is_channels_last():
    x = np.arange(2 * 2 * 2, dtype=np.uint8).reshape(1, 2, 2, 2)  # (N, C, H, W)
    cols = sat.im2col(x, 0, (1, 2))
    # one group, output (2, 1); the last axis runs (v, c) with c fastest
    assert cols.shape == (1, 1, 2, 1, 4)
    assert cols[0, 0, 0, 0].tolist() == [x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 0, 0, 1], x[0, 1, 0, 1]]


def test_bad_input():
    a, w = np.zeros((2, 4), np.uint8), np.zeros((3, 4), np.int8)
    with pytest.raises(TypeError, match="uint8 or int8"):
        sat.pair_dot(a.astype(np.int32), w)
    with pytest.raises(TypeError, match="a must be"):
        sat.pair_dot(a.astype(float), w)
    with pytest.raises(TypeError, match="int8 weights"):
        sat.pair_dot(a, w.astype(np.uint8))
    with pytest.raises(ValueError, match="same K"):
        sat.pair_dot(a, np.zeros((3, 5), np.int8))
    with pytest.raises(ValueError, match="x_q must be"):
        sat.saturation(np.zeros((2, 2, 2), np.uint8), w)
    with pytest.raises(ValueError, match="multiplier"):
        sat.saturation(a, w, multiplier=[1.0, 2.0])
    with pytest.raises(ValueError, match="multiplier"):
        sat.saturation(a, w, multiplier=-1.0)
    with pytest.raises(ValueError, match="input channels"):
        sat.conv2d(np.zeros((1, 3, 4, 4), np.uint8), 0, np.zeros((2, 2, 1, 1), np.int8), None, 2**30, 0, 0)
    with pytest.raises(ValueError, match="groups"):
        sat.conv2d(np.zeros((1, 4, 4, 4), np.uint8), 0, np.zeros((3, 2, 1, 1), np.int8), None, 2**30, 0, 0, groups=2)
    with pytest.raises(ValueError, match="act_min"):
        sat.max_pair_sum(w, 3, 5)
    with pytest.raises(ValueError, match="w_q"):
        sat.max_pair_sum(np.zeros(3, np.int8), 3)
    with pytest.raises(ValueError, match="x_zp"):
        sat.im2col(np.zeros((1, 1, 2, 2), np.uint8), 300, (1, 1))


# ----------------------------------------------------------------------------- PyTorch, on this CPU
CPU = cpu_int8_features()


def _torch_conv(engine, x, zx, w, bias_q, s1, s2, s3, zo, stride, pad, groups):
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(w), torch.from_numpy(s2),
                                                      torch.zeros(len(s2), dtype=torch.long), 0)
        packed = torch.ops.quantized.conv2d_prepack(qw, torch.from_numpy((bias_q * s1 * s2).astype(np.float32)),
                                                    [stride] * 2, [pad] * 2, [1, 1], groups)
        qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), s1, zx)
        return torch.ops.quantized.conv2d(qx, packed, s3, zo).int_repr().numpy()
    finally:
        torch.backends.quantized.engine = old


def _agree(a, b):
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return int(d.max()), float((d == 0).mean())


TORCH_CASES = {  # name: (cin, cout, k, stride, pad, groups)
    "depthwise 128 channels": (128, 128, 3, 1, 1, 128),
    "depthwise 128 channels, strided": (128, 128, 3, 2, 1, 128),
    "regular 3x3": (8, 16, 3, 1, 1, 1),
    "pointwise, odd K": (27, 16, 1, 1, 0, 1),
}


def _layer(case, top, seed=0):
    cin, cout, k, stride, pad, groups = TORCH_CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, top + 1, (2, cin, 10, 10)).astype(np.uint8)
    w = rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8)
    s1, s3, zx, zo = 0.02, 0.06, int(0.45 * top), 97
    s2 = rng.uniform(0.002, 0.01, cout)
    bias_q = quantize_bias(rng.normal(0, 0.5, cout), s1, s2)
    m0, shift = requant_multiplier(s1, s2, s3)
    kw = dict(stride=stride, padding=pad, groups=groups)
    args = (x, zx, w, bias_q, m0, shift, zo)
    torch_args = (x, zx, w, bias_q, s1, s2, s3, zo, stride, pad, groups)
    return args, kw, torch_args


def _x86_saturates(case):
    """Does PyTorch's x86 engine add pairs in int16 for this layer on this CPU? None = not known."""
    groups = TORCH_CASES[case][5]
    if groups > 100:  # FBGEMM's depthwise kernel, AVX2 code, on every x86 CPU
        return True
    if CPU["avx512_vnni"]:  # oneDNN's VNNI kernels (vpdpbusd: exact int32 sums)
        return False
    if CPU["avx_vnni"]:  # AVX-VNNI without AVX-512: FBGEMM's kernels; whether they use VNNI is version-dependent
        return None
    return True  # AVX2 / AVX-512 without VNNI: vpmaddubsw


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_x86_engine_full_range_codes_follow_the_emulation_where_it_saturates(case):
    """Full-range codes on x86: where the CPU adds pairs in int16, the emulation predicts PyTorch and the
    exact kernel is tens of LSB off; where it has VNNI, PyTorch is the exact kernel. Decided by the CPU's
    flags, never skipped."""
    args, kw, targs = _layer(case, 255)
    exact, emulated = conv2d(*args, **kw), sat.conv2d(*args, **kw)
    got = _torch_conv("x86", *targs)
    (d_emu, same_emu), (d_exact, same_exact) = _agree(got, emulated), _agree(got, exact)
    rep = sat.saturation(args[0], args[2], x_zp=args[1], **kw)
    print(f"{case} on {CPU}: torch x86 vs emulation {d_emu} LSB / {100 * same_emu:.2f} % identical; "
          f"vs exact {d_exact} LSB / {100 * same_exact:.2f} %; {rep.n_saturated}/{rep.n_outputs} outputs saturate")
    assert rep.n_saturated > 0 and _agree(emulated, exact)[0] > 10  # the inputs do saturate int16 pairs
    expect = _x86_saturates(case)
    if expect is None:  # decided by what this CPU did: one of the two, tightly
        assert (d_emu <= 1 and same_emu >= 0.99) or (d_exact <= 1 and same_exact >= 0.99)
    elif expect:
        assert d_emu <= 1 and same_emu >= 0.99
        assert d_exact > 10
    else:
        assert d_exact <= 1 and same_exact >= 0.99


@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("engine,top", [("x86", 127), ("qnnpack", 255)])
def test_exact_where_nothing_saturates_on_every_cpu(case, engine, top):
    """7-bit codes on x86 and full-range codes on qnnpack: PyTorch = the exact kernel = (for 7-bit
    codes) the emulation, within 1 LSB, on any CPU."""
    args, kw, targs = _layer(case, top, seed=1)
    exact = conv2d(*args, **kw)
    d, same = _agree(_torch_conv(engine, *targs), exact)
    assert d <= 1 and same >= 0.99, (engine, d, same)
    if top <= 127:
        np.testing.assert_array_equal(sat.conv2d(*args, **kw), exact)


def test_linear_emulation_predicts_torch_x86_where_it_saturates():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (16, 64)).astype(np.uint8)
    w = rng.integers(-127, 128, (10, 64)).astype(np.int8)
    s1, zx, s2, s3, zo = 0.03, 20, 0.004, 0.1, 128
    bias_q = quantize_bias(rng.normal(0, 1, 10), s1, s2)
    m0, shift = requant_multiplier(s1, s2, s3)
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(w), s2, 0)
        packed = torch.ops.quantized.linear_prepack(qw, torch.from_numpy((bias_q * s1 * s2).astype(np.float32)))
        got = torch.ops.quantized.linear(torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), s1, zx),
                                         packed, s3, zo).int_repr().numpy()
    finally:
        torch.backends.quantized.engine = old
    exact = linear(x, zx, w, bias_q, m0, shift, zo)
    emulated = sat.linear(x, zx, w, bias_q, m0, shift, zo)
    (d_emu, same_emu), (d_exact, same_exact) = _agree(got, emulated), _agree(got, exact)
    print(f"linear on {CPU}: vs emulation {d_emu} LSB / {same_emu:.4f}; vs exact {d_exact} LSB / {same_exact:.4f}")
    assert _agree(emulated, exact)[0] > 10
    if CPU["avx512_vnni"]:
        assert d_exact <= 1 and same_exact >= 0.99
    elif CPU["avx_vnni"]:
        assert (d_emu <= 1 and same_emu >= 0.99) or (d_exact <= 1 and same_exact >= 0.99)
    else:
        assert d_emu <= 1 and same_emu >= 0.99 and d_exact > 10


def test_cpu_features_are_read_from_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_int8\n\nprocessor\t: 1\n")
    f = cpu_int8_features.__wrapped__(str(info))
    assert f["avx2"] and f["avx512_vnni"] and f["amx_int8"] and not f["avx_vnni"]
    f = cpu_int8_features.__wrapped__(str(tmp_path / "missing"))
    assert not any(f[k] for k in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")) and "not readable" in f["source"]
