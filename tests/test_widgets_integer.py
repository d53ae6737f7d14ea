"""Notebook 08's computations and explorers, checked against independent references.

Oracles: Python big integers and Fractions (M0/shift, the three roundings, the exact errors),
PyTorch's float64 conv2d (the float reference and an exact integer accumulator), and the
algebra of paper Eq. 7 (our Eq. 39). Explorers are driven headless: move a control, the figure
and the numbers change, and the numbers equal the library's.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from qlearn.layer_integers import requant_multiplier
from qlearn.lessons.integer_inference import (
    ROUNDING_LABELS,
    conv_three_ways,
    multiplier_error_curve,
    rounding_comparison,
    split_multiplier,
    tiny_integer_model,
    zero_point_terms,
)
from qlearn.lessons.pair_saturation import pair_saturation_on_this_cpu
from qlearn.quantize import dequantize, fake_quantize
from qlearn.widgets.integer_explorers import ConvExplorer, MultiplierExplorer, RoundingExplorer, pair_saturation_figure

SMALL = settings(max_examples=25, deadline=None, derandomize=True)


# ------------------------------------------------------------------------ big-integer references
def ref_split(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier by exact rationals: M = q 2^e, q in [1/2, 1), m0 = round_half_up(q 2^31)."""
    f = Fraction(m)
    e = 0
    while f >= Fraction(2) ** e:
        e += 1
    while f < Fraction(2) ** (e - 1):
        e -= 1
    m0 = math.floor(f / Fraction(2) ** e * 2**31 + Fraction(1, 2))
    if m0 == 2**31:
        m0, e = 2**30, e + 1
    return m0, e


def ref_srdhm(a: int, b: int) -> int:
    if a == b == -(2**31):
        return 2**31 - 1
    p = a * b
    num = p + (2**30 if p >= 0 else 1 - 2**30)
    return abs(num) // 2**31 * (1 if num >= 0 else -1)  # C division truncates toward zero


def round_half_away(f: Fraction) -> int:
    return math.floor(abs(f) + Fraction(1, 2)) * (1 if f >= 0 else -1)


def ref_mode(x: int, m0: int, shift: int, mode: str) -> int:
    """The three roundings of multiply_by_quantized_multiplier, from their definitions (shift <= 0)."""
    n = -shift
    if mode == "single":
        return math.floor(Fraction(x * m0, 2 ** (31 - shift)) + Fraction(1, 2))
    high = ref_srdhm(x, m0)
    if mode == "double":
        return round_half_away(Fraction(high, 2**n))
    return math.floor(Fraction(high, 2**n) + Fraction(1, 2))  # half-up


# ------------------------------------------------------------------------ M -> M0, shift
def test_split_multiplier_published_vectors():
    s = split_multiplier(0.25)
    assert (s.m0, s.shift, s.n, s.rel_error) == (2**30, -1, 1, 0.0) and s.m0_fraction == 0.5
    s = split_multiplier(1.25)
    assert (s.m0, s.shift) == (1342177280, 1)
    s = split_multiplier(0.5 - 1e-10)  # q 2^31 rounds up to 2^31: carried into the shift
    assert (s.m0, s.shift) == (2**30, 0)
    assert split_multiplier(0.00097656).m0 == 2147478150


@SMALL
@given(st.floats(min_value=2.0**-30, max_value=2.0**20, allow_nan=False, allow_infinity=False))
def test_split_multiplier_matches_exact_rationals(m):
    s = split_multiplier(m)
    assert (s.m0, s.shift) == ref_split(m) == tuple(quantize_multiplier(m))
    exact_rel = (Fraction(s.m0) * Fraction(2) ** (s.shift - 31) - Fraction(m)) / Fraction(m)
    assert s.rel_error == pytest.approx(float(exact_rel), rel=1e-6, abs=1e-25)
    assert abs(exact_rel) <= Fraction(1, 2**32) / Fraction(s.q) <= Fraction(1, 2**31)  # Eq. 31
    assert 2**30 <= s.m0 < 2**31 and 0.5 <= s.m0_fraction < 1.0


def test_multiplier_error_curve_stays_inside_its_bound():
    c = multiplier_error_curve(1e-5, 2.0, 500)
    assert c["M"].size == 500 and not c["rel_error"].flags.writeable
    assert np.all(np.abs(c["rel_error"]) <= c["bound"]) and np.all(c["bound"] <= 2.0**-31)
    assert np.all((c["m0"] >= 2**30) & (c["m0"] < 2**31))
    for i in (0, 137, 499):
        assert (int(c["m0"][i]), int(c["shift"][i])) == ref_split(float(c["M"][i]))
    assert np.ptp(c["rel_error"]) > 2.0**-33  # the error is not identically zero


def test_split_multiplier_refuses_bad_input():
    for bad, err in ((0.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                     (2.0**-40, ValueError), (2.0**31, ValueError), ("0.5", TypeError), (True, TypeError),
                     ([0.1, 0.2], ValueError)):
        with pytest.raises(err):
            split_multiplier(bad)
    with pytest.raises(ValueError, match="hi"):
        multiplier_error_curve(0.1, 0.01)


def test_multiplier_explorer_follows_the_library():
    ex = MultiplierExplorer(multiplier=0.0123, x=10000)
    png0, n0 = ex.image.value, dict(ex.numbers)
    assert n0["M0 = round(q·2^31) (int32)"] == quantize_multiplier(0.0123)[0]
    assert n0["MBQM(x, M0, shift) (integer)"] == 123
    ex.controls["multiplier"].value = 0.3
    m = ex.controls["multiplier"].value
    assert ex.image.value != png0 and ex.numbers != n0 and ex.redraws == 2
    m0, shift = quantize_multiplier(m)
    assert ex.numbers["M0 = round(q·2^31) (int32)"] == m0 == ref_split(m)[0]
    assert ex.numbers["shift (TFLite; > 0 shifts left)"] == shift and ex.numbers["paper: n = -shift"] == -shift
    assert abs(ex.numbers["relative error"]) <= ex.numbers["bound 2^-32/q"]
    ex.controls["x"].value = -12345
    y = ex.numbers["MBQM(x, M0, shift) (integer)"]
    assert y == multiply_by_quantized_multiplier(-12345, m0, shift) == ref_mode(-12345, m0, shift, "double")
    assert abs(ex.numbers["MBQM − x·M0·2^(shift−31) (LSB)"]) <= 0.5 + 2.0 ** (shift - 1)  # Eq. 31
    assert "relative error" in ex.image.readout


def test_multiplier_explorer_reports_overflow_and_refuses_bad_arguments():
    ex = MultiplierExplorer(multiplier=3000.0, x=2**20, hi=2.0**12)  # shift 12: x 2^12 > 2^31 - 1
    assert str(ex.numbers["MBQM(x, M0, shift) (integer)"]).startswith("overflow")
    with pytest.raises(ValueError, match="slider range"):
        MultiplierExplorer(multiplier=5.0)
    with pytest.raises(TypeError):
        MultiplierExplorer(x=1.5)


# ------------------------------------------------------------------------ Eq. 39
@SMALL
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(-128, 127)), min_size=1, max_size=40),
       st.integers(0, 255), st.integers(-128, 127))
def test_zero_point_terms_add_up(pairs, z1, z2):
    q1 = np.array([p[0] for p in pairs], dtype=np.uint8)
    q2 = np.array([p[1] for p in pairs], dtype=np.int8)
    t = zero_point_terms(q1, z1, q2, z2)
    want = int(np.sum((q1.astype(np.int64) - z1) * (q2.astype(np.int64) - z2)))
    assert t.total == t.direct == want and t.k == len(pairs)
    assert t.k_z1_z2 == len(pairs) * z1 * z2 and t.z1_sum_q2 == z1 * int(q2.astype(np.int64).sum())


def test_zero_point_terms_refuses_bad_input():
    q = np.array([1, 2, 3], dtype=np.uint8)
    with pytest.raises(TypeError):
        zero_point_terms(q.astype(float), 0, q, 0)
    with pytest.raises(ValueError, match="same"):
        zero_point_terms(q, 0, q[:2], 0)
    with pytest.raises(TypeError, match="z2"):
        zero_point_terms(q, 0, q, 0.5)


# ------------------------------------------------------------------------ one conv layer, three ways
def _torch_conv(x, w, b=None, stride=1, padding=1):
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float64))  # noqa: E731  (a writable copy)
    return torch.nn.functional.conv2d(t(x), t(w), None if b is None else t(b), stride=stride,
                                      padding=padding).numpy()


@pytest.mark.parametrize("bits,per_channel", [(8, False), (4, True), (2, False)])
def test_conv_three_ways_against_independent_references(bits, per_channel):
    r = conv_three_ways(bits, 1, per_channel)
    # float reference and fake-quant path: PyTorch's float64 conv
    np.testing.assert_allclose(r.y_float, _torch_conv(r.x, r.w, r.b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dequantize(r.x_q, r.x_qp), fake_quantize(r.x, r.x_qp), atol=1e-12)
    y_fake = _torch_conv(fake_quantize(r.x, r.x_qp), fake_quantize(r.w, r.w_qp), r.b)
    np.testing.assert_allclose(r.y_fake, y_fake, rtol=1e-12, atol=1e-12)
    # integer path: the accumulator is an exact integer conv of the centred input (zero padding
    # of x - Z1 is padding x with Z1, Eq. 38), requantized with big-integer arithmetic
    acc = _torch_conv(r.x_q.astype(np.int64) - r.x_qp.zero_point, r.w_q.astype(np.int64))
    acc = np.rint(acc).astype(np.int64) + r.bias_q.astype(np.int64)[None, :, None, None]
    np.testing.assert_array_equal(r.acc, acc)
    m0 = np.broadcast_to(np.asarray(r.m0), (r.w.shape[0],))
    shift = np.broadcast_to(np.asarray(r.shift), (r.w.shape[0],))
    ref = np.empty_like(acc)
    for (n, o, i, j), a in np.ndenumerate(acc):
        ref[n, o, i, j] = round_half_away(Fraction(ref_srdhm(int(a), int(m0[o])), 2 ** -int(shift[o])))
    ref = np.clip(ref + r.out_qp.zero_point, r.out_qp.qmin, r.out_qp.qmax)
    np.testing.assert_array_equal(r.q_int, ref)
    assert r.q_int.dtype == np.uint8 and r.q_int.max() <= 2**bits - 1


@SMALL
@given(st.integers(2, 8), st.integers(0, 5), st.booleans())
def test_integer_kernel_within_one_lsb_of_fake_quant(bits, seed, per_channel):
    r = conv_three_ways(bits, seed, per_channel)
    assert np.abs(r.int_minus_fake).max() <= 1
    s = r.summary()
    assert s["integer == fake-quant"] == np.mean(r.q_int == r.q_fake)
    m0, shift = requant_multiplier(r.x_qp.scale, r.w_qp.scale, r.out_qp.scale)
    np.testing.assert_array_equal(r.m0, m0)
    np.testing.assert_array_equal(r.shift, shift)
    # Before the last rounding the two paths differ only by the bias rounding (Eq. 24), M (b/(S1 S2) - q_bias):
    # fake quantization keeps the float bias, the integer kernel rounds it to the S1 S2 grid.
    m = np.asarray(r.multiplier, dtype=np.float64).reshape(-1, 1, 1) * np.ones((r.w.shape[0], 1, 1))
    bias_real = r.b / (r.x_qp.scale * np.asarray(r.w_qp.scale))
    fake_lsb = r.y_fake / r.out_qp.scale
    int_lsb = m[None] * r.acc
    np.testing.assert_allclose(fake_lsb - int_lsb, (m[:, 0, 0] * (bias_real - r.bias_q))[None, :, None, None]
                               * np.ones_like(fake_lsb), atol=1e-9 * max(1.0, np.abs(fake_lsb).max()))
    worst = 2.0**31 / 2.0 ** s["int32 headroom, worst case (bits)"]  # the Eq. 25 bound the summary uses
    assert np.abs(r.acc).max() <= worst * (1 + 1e-12) and worst < 2**31
    if bits >= 5:  # then M < 0.05 and the bias rounding costs < 0.025 LSB
        assert abs(s["mean |error| vs float, integer (LSB)"] - s["mean |error| vs float, fake-quant (LSB)"]) < 0.05


def test_conv_three_ways_is_deterministic_and_8_bits_agree_most():
    a = conv_three_ways(8, 3, False, size=8)
    b = conv_three_ways.__wrapped__(8, 3, False, size=8)  # bypass the cache: recomputed
    np.testing.assert_array_equal(a.q_int, b.q_int)
    np.testing.assert_array_equal(a.y_float, b.y_float)
    assert not np.array_equal(a.x, conv_three_ways(8, 4, False, size=8).x)
    assert conv_three_ways(8, 0).summary()["integer == fake-quant"] > 0.99
    with pytest.raises(ValueError):
        a.q_int[0, 0, 0, 0] = 1  # cached arrays are read-only


def test_conv_three_ways_refuses_bad_input():
    for kwargs, err in (({"bits": 9}, ValueError), ({"bits": 1}, ValueError), ({"bits": 4.0}, TypeError),
                        ({"seed": -1}, ValueError), ({"seed": "a"}, TypeError),
                        ({"per_channel": 1}, TypeError), ({"size": 2}, ValueError), ({"cin": 0}, ValueError)):
        with pytest.raises(err):
            conv_three_ways(**kwargs)
    with pytest.raises(ValueError):
        ConvExplorer(bits=9)


def test_conv_explorer_follows_the_library():
    ex = ConvExplorer(bits=8, seed=0)
    png0, n0 = ex.image.value, dict(ex.numbers)
    ex.controls["bits"].value = 4
    assert ex.image.value != png0 and ex.numbers != n0
    assert ex.numbers == conv_three_ways(4, 0, False).summary()
    r = conv_three_ways(4, 0, False)
    assert ex.numbers["M0"] == requant_multiplier(r.x_qp.scale, r.w_qp.scale, r.out_qp.scale)[0]
    png1 = ex.image.value
    ex.controls["per_channel"].value = True
    assert ex.image.value != png1 and ".." in ex.numbers["M0"]  # one M0 per output channel
    ex.controls["seed"].value = 2
    assert ex.numbers == conv_three_ways(4, 2, True).summary()


# ------------------------------------------------------------------------ rounding modes
def test_rounding_comparison_against_big_integers():
    rc = rounding_comparison(0.1234, 1000.0, seed=1, n=20_000)
    assert (rc.m0, rc.shift) == ref_split(0.1234)
    k = 31 - rc.shift
    for i in range(0, rc.x.size, 97):
        x = int(rc.x[i])
        for mode in ROUNDING_LABELS:
            got = int(rc.results[mode][i])
            assert got == ref_mode(x, rc.m0, rc.shift, mode), (x, mode)
            assert rc.errors[mode][i] == float(got - Fraction(x * rc.m0, 2**k))  # exact
        high = ref_srdhm(x, rc.m0)
        assert bool(rc.tie[i]) == (high % 2**rc.n == 2 ** (rc.n - 1))


def test_half_up_is_biased_and_half_away_is_not():
    rc = rounding_comparison(0.1234, 1000.0, seed=0, n=50_000)
    up, away, single = (rc.mean_error(m) for m in ("double_half_up", "double", "single"))
    se = rc.standard_error("double")
    neg_ties = rc.tie & (rc.x < 0)
    # half-up and half-away differ exactly at the negative ties, by one
    np.testing.assert_array_equal(rc.differs("double_half_up"), neg_ties.astype(np.int64))
    assert up - away == pytest.approx(np.mean(neg_ties), abs=1e-12)
    assert np.mean(rc.tie) == pytest.approx(2.0**-rc.n, abs=0.01)  # one value in 2^n meets a tie
    assert up > 0.04 and up > 20 * se  # about 2^-(n+1) = 1/16 LSB, far beyond noise
    assert abs(away) < 4 * se and abs(single) < 4 * se
    assert np.abs(rc.errors["single"]).max() <= 0.5
    assert np.abs(rc.errors["double"]).max() <= 0.5 + 2.0 ** -(rc.n + 1)  # Eq. 31


def test_positive_accumulators_make_half_up_and_half_away_equal():
    rc = rounding_comparison(0.1234, 1000.0, positive=True, seed=0, n=20_000)
    assert rc.x.min() >= 0
    np.testing.assert_array_equal(rc.results["double"], rc.results["double_half_up"])
    assert rc.mean_error("double") > 0.03  # with one-signed data half-away is biased too


def test_rounding_comparison_refuses_bad_input():
    for args, kwargs, err in (((1.0,), {}, ValueError), ((0.0,), {}, ValueError), ((float("inf"),), {}, ValueError),
                              (("x",), {}, TypeError), ((0.1, -5.0), {}, ValueError),
                              ((0.1,), {"positive": 1}, TypeError), ((0.1,), {"n": 1}, ValueError),
                              ((0.1,), {"seed": 1.5}, TypeError)):
        with pytest.raises(err):
            rounding_comparison(*args, **kwargs)


def test_rounding_explorer_follows_the_library():
    ex = RoundingExplorer(multiplier=0.1234, n=20_000)
    png0, n0 = ex.image.value, dict(ex.numbers)
    ex.controls["multiplier"].value = 0.02
    m = ex.controls["multiplier"].value
    assert ex.image.value != png0 and ex.numbers != n0
    rc = rounding_comparison(m, 1000.0, seed=0, n=20_000)
    assert (ex.numbers["M0"], ex.numbers["shift"]) == tuple(quantize_multiplier(m))
    for mode, label in ROUNDING_LABELS.items():
        assert ex.numbers[f"mean error, {label}"] == rc.mean_error(mode)
    png1 = ex.image.value
    ex.controls["positive"].value = True
    assert ex.image.value != png1 and ex.numbers["half-up ≠ half-away (fraction)"] == 0.0
    ex.controls["seed"].value = 3
    assert ex.numbers["accumulators"] == 20_000


# ------------------------------------------------------------------------ the tiny model
def test_tiny_integer_model_describes_itself_and_tracks_the_float_net():
    tm = tiny_integer_model(0)
    table = tm.model.describe()
    for token in ("conv1", "conv2", "M0", "shift", "(1, 8, 8, 8)", "(1, 4, 4, 4)", "uint8"):
        assert token in table
    conv1 = tm.model["conv1"]
    assert (conv1.m0, conv1.shift) == tuple(quantize_multiplier(tm.in_qp.scale * tm.w1_qp.scale / tm.h_qp.scale))
    assert conv1.bias_q.dtype == np.int32 and conv1.w_q.dtype == np.int8
    x = np.random.default_rng(5).uniform(0.0, 1.0, (4, 3, 8, 8))
    s = tm.out_qp.scale
    y_int = tm.model(x)
    assert np.abs(y_int - tm.fake_quant_forward(x)).max() <= 1.0001 * s
    err = np.abs(y_int - tm.float_forward(x)) / s  # in output LSBs: two layers of rounding
    assert err.mean() < 1.0 and err.max() <= 4.0
    np.testing.assert_allclose(tm.float_forward(x), _torch_conv(
        np.clip(_torch_conv(x, tm.w1, tm.b1), 0, 6), tm.w2, tm.b2, stride=2), atol=1e-12)
    with pytest.raises(ValueError, match="3-channel"):
        tm.float_forward(np.zeros((1, 2, 8, 8)))
    with pytest.raises(ValueError):
        tiny_integer_model(-1)


# ------------------------------------------------------------------------ int16 pairs (section 6)
def test_pair_saturation_on_this_cpu_follows_the_cpu_flags():
    """The notebook's table: exact vs int16 pairs vs PyTorch x86 / qnnpack. Oracles: qlearn.integer.conv2d
    (exact int64 sums), qlearn.saturation (pair arithmetic); which x86 result to expect is decided from
    the CPU flags (avx512_vnni -> exact oneDNN kernels below 100 groups; FBGEMM's depthwise kernel for
    128 channels saturates on every CPU; avx_vnni alone: either, tightly)."""
    from matplotlib.figure import Figure

    r = pair_saturation_on_this_cpu(0)
    close = lambda d: d[0] <= 1 and d[1] >= 0.99  # noqa: E731
    assert len(r.rows) == 4
    for row in r.rows:
        assert close(row["qnnpack_vs_exact"]), row  # qnnpack: exact sums with any codes
        if row["codes"].startswith("7-bit"):
            assert row["saturated"] == 0 and row["emulated_vs_exact"] == 0 and row["max_pair_sum"] <= 32767
            assert close(row["x86_vs_exact"]) and close(row["x86_vs_emulated"]), row
            continue
        assert row["saturated"] > 0 and row["emulated_vs_exact"] > 10 and row["max_pair_sum"] > 32767
        depthwise = row["layer"].startswith("depthwise")
        if depthwise or not (r.cpu["avx512_vnni"] or r.cpu["avx_vnni"]):
            assert close(row["x86_vs_emulated"]) and row["x86_vs_exact"][0] > 10, row
        elif r.cpu["avx512_vnni"]:
            assert close(row["x86_vs_exact"]), row
        else:
            assert close(row["x86_vs_emulated"]) or close(row["x86_vs_exact"]), row
    assert r.pair_sums.ndim == 1 and np.abs(r.pair_sums).max() == r.rows[2]["max_pair_sum"]
    fig = pair_saturation_figure(r)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
