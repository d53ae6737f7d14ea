"""Claims tests for notebooks 00, 01, 02 and 07: every statement their prose makes about a computed
result, asserted by calling the same package functions the notebook (or its explorer) calls.

Statements that depend on float32 training (notebook 07's training add) are not here: the notebook
renders them from its own results (display(Markdown(...))). Everything here is numpy float64 or
integer arithmetic on seeded data, so it must hold on every machine; the thresholds are the words of
the prose ("about 4x", "well over 10 dB"), not one machine's digits.
Each test names the notebook cell whose sentence it checks.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import qlearn
from qlearn.distributions import DISTRIBUTIONS, sample
from qlearn.lessons.error_analysis import clipping_curves, error_vs_bits
from qlearn.lessons.skip_connections import RATIO_GRID, add_experiment, concat_experiment, ratio_sweep
from qlearn.widgets.basics import quantize_explorer

INT16_MAX = np.iinfo(np.int16).max


def _percent(text: str) -> float:
    """'2.25 %' -> 2.25 (the explorers format shares as text)."""
    return float(text.split("%")[0])


@pytest.fixture(scope="module")
def explorer():
    """The explorer of notebooks 00 and 01, with their starting state (3 bits, range [-2, 3])."""
    e = quantize_explorer(bits=3, lo=-2.0, hi=3.0)
    yield e
    e.close()


def _sweep(e, lo: float, hi: float, bits=range(3, 9)) -> dict[int, dict]:
    e.controls["symmetric"].value = e.controls["signed"].value = e.controls["narrow"].value = False
    e.controls["range"].value = (lo, hi)
    out = {}
    for b in bits:
        e.controls["bits"].value = b
        out[b] = dict(e.numbers)
    return out


# ----------------------------------------------------------------------------- notebooks 00 and 01
def test_00_01_rounding_falls_4x_per_bit_total_stops_at_clipping(explorer):
    """00 cell-05 item 1, 01 cell-12 item 1: the rounding part falls about 4x per bit, tracking S^2/12;
    S about halves per bit; the total stops falling near 0.006 (from about 6 bits), because about 2 %
    of the data lies outside [-2, 3] and at 8 bits clipping, not rounding, is the error left."""
    n = _sweep(explorer, -2.0, 3.0)
    for b in range(3, 8):
        ratio = n[b]["  of which rounding"] / n[b + 1]["  of which rounding"]
        assert 3.5 < ratio < 5.0, (b, ratio)
        assert 1.9 < n[b]["scale S"] / n[b + 1]["scale S"] < 2.5
    for b in range(4, 9):
        model = n[b]["S^2/12 (uniform-noise model)"]
        assert abs(n[b]["  of which rounding"] / model - 1) < 0.1, b
    assert 0.0055 < n[8]["MSE (measured)"] < 0.0065  # "near 0.006"
    assert n[8]["  of which clipping"] > 0.9 * n[8]["MSE (measured)"]
    assert n[8]["MSE (measured)"] > 0.85 * n[6]["MSE (measured)"]  # stopped falling from ~6 bits
    assert all(1.5 < _percent(n[b]["clipped values"]) < 3.0 for b in (6, 7, 8))  # "about 2 %"


def test_01_wide_range_falls_4x_and_6db_per_bit(explorer):
    """01 cell-12 item 1: on [-4, 4] the total falls about 4x (about 6 dB of SQNR) per bit again."""
    n = _sweep(explorer, -4.0, 4.0)
    for b in range(3, 8):
        assert 3.5 < n[b]["MSE (measured)"] / n[b + 1]["MSE (measured)"] < 5.0, b
        assert 5.5 < n[b + 1]["SQNR (dB)"] - n[b]["SQNR (dB)"] < 7.0, b


def test_00_01_narrow_range_clipping_takes_over(explorer):
    """00 cell-05 item 2, 01 cell-12 item 2: on [-1, 1] S shrinks and the rounding part falls, but the
    clipping part takes over and the total is worse than on [-2, 3]."""
    wide = _sweep(explorer, -2.0, 3.0)
    narrow = _sweep(explorer, -1.0, 1.0)
    for b in range(3, 9):
        assert narrow[b]["scale S"] < wide[b]["scale S"]
        assert narrow[b]["  of which rounding"] < wide[b]["  of which rounding"]
        assert narrow[b]["  of which clipping"] > 10 * narrow[b]["  of which rounding"]
        assert narrow[b]["MSE (measured)"] > wide[b]["MSE (measured)"]


def test_01_range_is_widened_to_contain_zero(explorer):
    """01 cell-12 item 3: [0.5, 3] is widened to include 0 (Eq. 4): the grid covers [0, 3]."""
    n = _sweep(explorer, 0.5, 3.0, bits=[3, 8])
    assert all(v["grid covers"] == "[0.0000, 3.0000]" for v in n.values())
    qp = qlearn.qparams_from_range(0.5, 3.0, 8)
    assert qp.zero_point == 0 and qp.real_range[0] == 0.0


@pytest.mark.parametrize("signed, narrow, zero_point, codes", [
    (True, False, 0, "[-128, 127]"),
    (True, True, 0, "[-127, 127]"),   # 01 cell-12 item 4: the int8 weight codes [-127, 127]
    (False, False, 128, "[0, 255]"),  # 01 cell-12 item 5: unsigned symmetric -> Z = 128
])
def test_00_01_symmetric_zero_points(explorer, signed, narrow, zero_point, codes):
    """00 cell-05 item 3, 01 cell-12 items 4-5: ticking symmetric (and signed) sets Z as stated."""
    explorer.controls["range"].value = (-2.0, 3.0)
    explorer.controls["bits"].value = 8
    explorer.controls["symmetric"].value = True
    explorer.controls["signed"].value = signed
    explorer.controls["narrow"].value = narrow
    assert explorer.numbers["zero point Z"] == zero_point
    assert explorer.numbers["integers q"].startswith(codes)
    explorer.controls["symmetric"].value = explorer.controls["signed"].value = explorer.controls["narrow"].value = False


def test_00_int8_weights_4x_smaller_within_half_a_step():
    """00 cell-06/07: int8 weights are four times smaller and every weight is within S/2."""
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 0.05, size=(64, 32, 3, 3)).astype(np.float32)
    qp = qlearn.qparams_from_range(float(w.min()), float(w.max()), 8, symmetric=True, signed=True, narrow_range=True)
    w_int8 = qlearn.quantize(w, qp)
    assert w_int8.dtype == np.int8 and w.nbytes == 4 * w_int8.nbytes
    assert qp.zero_point == 0 and w_int8.min() >= -127
    # oracle: float64 arithmetic on the codes, not qlearn.dequantize
    err = np.abs(w_int8.astype(np.float64) * qp.scale - w.astype(np.float64))
    assert err.max() <= qp.scale / 2 * (1 + 1e-6)


def test_01_worked_range_minus10_30():
    """01 cell-04: S = 40/255, Z = round(63.75) = 64, a quarter-step shift, grid [-10.04, 29.96]."""
    qp = qlearn.qparams_from_range(-10.0, 30.0, bits=8)
    assert qp.scale == pytest.approx(40 / 255, rel=1e-12)
    assert 10.0 / (40 / 255) == pytest.approx(63.75)
    assert qp.zero_point == 64
    lo, hi = qp.real_range
    assert lo == pytest.approx(-64 * 40 / 255) and round(lo, 2) == -10.04 and round(hi, 2) == 29.96
    assert (lo - -10.0) / qp.scale == pytest.approx(-0.25)  # moved by a quarter step


def test_01_rows_of_the_round_trip():
    """01 cell-06: 0.0 comes back exactly (q = Z = 64); inside the grid the error is at most
    S/2 = 0.078; 35.0 is clamped to q = 255, i.e. 29.96."""
    qp = qlearn.qparams_from_range(-10.0, 30.0, bits=8)
    x = np.array([-10.0, -0.1, 0.0, 0.07, 1.0, 29.9, 35.0])
    q = qlearn.quantize(x, qp)
    back = (q.astype(np.float64) - 64) * (40 / 255)  # float64 oracle of Eq. 1
    assert q[2] == 64 and back[2] == 0.0
    inside = x <= qp.real_range[1]
    assert np.all(np.abs(back - x)[inside] <= qp.scale / 2 + 1e-12) and round(qp.scale / 2, 3) == 0.078
    assert q[-1] == 255 and round(back[-1], 2) == 29.96


def test_01_seed_worked_example_three_ways():
    """01 cells 07-09 and docs/equations.md Eq. 12: 1.0 (Eq. 12 alone), 1.0064 (the blog's rounded s),
    1.00588 (the paper, with the nudge of Sec. 3.1); 238 exactly, 181.33, Z = 181, [-3.194, 1.306],
    56.67 -> 57 steps."""
    a, b, n, r = -3.2, 1.3, 256, 1.0
    s = qlearn.paper_scale(a, b, n)
    assert s == pytest.approx(4.5 / 255, rel=1e-15) and round(s, 4) == 0.0176
    assert (r - a) / s == pytest.approx(238.0, abs=1e-9)
    assert qlearn.paper_fake_quant(r, a, b, n) == pytest.approx(1.0, abs=1e-12)
    assert round((r - a) / 0.0176) == 239 and round(239 * 0.0176 + a, 4) == 1.0064
    assert round((0 - a) / s, 2) == 181.33
    qp = qlearn.qparams_from_range(a, b, 8)
    assert qp.zero_point == 181
    lo, hi = qp.real_range
    assert (round(lo, 3), round(hi, 3)) == (-3.194, 1.306)
    assert round(r / qp.scale, 2) == 56.67
    nudged = qlearn.fake_quantize(r, qp)
    assert nudged == pytest.approx(57 * 4.5 / 255, rel=1e-12) and round(nudged, 5) == 1.00588


def test_01_int16_pairs_of_products():
    """01 cell-14: two products of int8 codes fit in int16 only without -128 (paper Appendix B)."""
    assert 2 * 127 * 128 == 32_512 <= INT16_MAX < 32_768 == 2 * 128 * 128


def test_01_weights_cell():
    """01 cell-15: symmetric narrow int8 codes within [-127, 127] and max |w - w_hat| <= S/2."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, size=(8, 16))
    wq = qlearn.qparams_from_range(*qlearn.minmax_range(w), 8, symmetric=True, signed=True, narrow_range=True)
    w_int = qlearn.quantize(w, wq)
    assert w_int.dtype == np.int8 and -127 <= w_int.min() and w_int.max() <= 127
    assert max(abs(int(w_int.min())), int(w_int.max())) == 127  # the largest weight uses the last code
    assert np.abs(w_int * wq.scale - w).max() <= wq.scale / 2 * (1 + 1e-9)


# ----------------------------------------------------------------------------- notebook 02
def test_02_uniform_model_and_6db_per_bit():
    """02 cell-04: for uniform data the S^2/12 model is almost exact at every bit width and the SQNR
    climbs about 6 dB per bit; the loop of cell-03 recomputed with an independent float64 oracle."""
    x = sample("uniform", 200_000, seed=0)
    sq = []
    for bits in range(2, 11):
        qp = qlearn.qparams_from_range(*qlearn.minmax_range(x), bits)
        x_hat = qlearn.fake_quantize(x, qp)
        e = x_hat - x
        assert abs(np.mean(e * e) / (qp.scale**2 / 12) - 1) < 0.03, bits
        sq.append(10 * math.log10(np.sum(x * x) / np.sum(e * e)))
    steps = np.diff(sq)
    assert np.all((steps[1:] > 5.8) & (steps[1:] < 6.8)), steps  # from 3 bits on
    assert 5.8 < steps[0] < 7.5  # 2 -> 3 bits: the first step is a little larger


@pytest.mark.parametrize("dist", ["laplace", "student-t"])
def test_02_peaked_data_breaks_the_model_at_low_bits(dist):
    """02 cell-04: peaked data breaks the uniform-noise model at low bit widths."""
    c = error_vs_bits(dist, "min/max")
    assert c["mse"][0] / c["model"][0] < 0.5  # 2 bits: far below S^2/12 (values crowd around 0)


def test_02_every_bit_6db_once_there_are_enough_bits():
    """02 cell-05: with min/max ranges the heavy tails start lower and their first bits buy less than
    6 dB; from 6 bits on every bit buys about 6 dB, for all four distributions."""
    curves = {d: error_vs_bits(d, "min/max") for d in DISTRIBUTIONS}
    bits = curves["uniform"]["bits"]
    for d, c in curves.items():
        steps = np.diff(c["sqnr"])[bits[:-1] >= 6]
        assert np.all((steps > 5.7) & (steps < 6.4)), (d, steps)
    assert curves["student-t"]["sqnr"][0] < curves["laplace"]["sqnr"][0] < curves["uniform"]["sqnr"][0]
    assert np.diff(curves["student-t"]["sqnr"])[0] < 3.0  # the first bits buy much less


def test_02_student_t_well_over_10db_below_uniform():
    """02 cell-07 item 1: at the same bit width (3 bits or more) student-t is well over 10 dB below."""
    u, t = error_vs_bits("uniform", "min/max"), error_vs_bits("student-t", "min/max")
    gap = (u["sqnr"] - t["sqnr"])[u["bits"] >= 3]
    assert np.all(gap > 12.0), gap


def test_02_percentile_helps_low_bits_and_flattens():
    """02 cell-07 item 2: student-t with percentile 99.9: higher SQNR at low bits (up to 6), a flat
    curve at high bits where the clipping part no longer shrinks."""
    mm, pc = error_vs_bits("student-t", "min/max"), error_vs_bits("student-t", "percentile 99.9")
    low = pc["bits"] <= 6
    assert np.all(pc["sqnr"][low] > mm["sqnr"][low])
    assert np.all(np.diff(pc["sqnr"])[pc["bits"][:-1] >= 8] < 0.5)
    clip = pc["clipping"][pc["bits"] >= 8]
    assert np.all(np.abs(np.diff(clip)) < 0.05 * clip[:-1])


def test_02_measured_over_model():
    """02 cell-07 item 3: measured/model close to 1 for min/max ranges from 6 bits up (from 3 bits for
    uniform and Gaussian); far from 1 once clipping dominates (percentile ranges at 8 bits)."""
    for d in DISTRIBUTIONS:
        c = error_vs_bits(d, "min/max")
        first = 3 if d in ("uniform", "gaussian") else 6
        ratio = (c["mse"] / c["model"])[c["bits"] >= first]
        assert np.all(np.abs(ratio - 1) < 0.1), (d, ratio)
    for d in ("gaussian", "laplace", "student-t"):
        c = error_vs_bits(d, "percentile 99.9")
        ratio = c["mse"] / c["model"]
        assert ratio[c["bits"] == 8][0] > 5 and np.all(ratio[c["bits"] >= 10] > 50), d


def _best_c(dist: str, bits: int) -> tuple[float, float, int, int]:
    c = clipping_curves(dist, bits)
    i = int(np.argmin(c["total"]))
    return float(c["c"][i]), float(c["c"][-1]), i, len(c["c"])


def test_02_clipping_tradeoff():
    """02 cell-12: the total has a minimum inside the range (items 1); the best c moves right from 4
    to 8 bits (item 2); uniform: the best c is min/max itself; student-t at 4 bits: about an eighth of
    max |x| (item 3)."""
    for d in ("gaussian", "laplace", "student-t"):
        b4, cmax, i, n = _best_c(d, 4)
        b8, _, _, _ = _best_c(d, 8)
        assert 0 < i < n - 1 and b8 > b4, d
    for bits in (4, 8):
        best, cmax, i, n = _best_c("uniform", bits)
        assert i == n - 1 and best == cmax
    best, cmax, _, _ = _best_c("student-t", 4)
    assert 0.08 < best / cmax < 0.2


def test_02_curves_rounding_falls_clipping_rises():
    """02 cell-12 item 1: as c narrows, the rounding curve falls and the clipping curve rises."""
    c = clipping_curves("laplace", 4)
    # c grows -> clipping shrinks (up to wiggles where "outside" means beyond half a step of the grid)
    assert np.all(np.diff(c["clipping"]) < 1e-4) and c["clipping"][0] > 1000 * c["clipping"][-4]
    assert np.all(np.diff(c["rounding"]) > 0) and c["rounding"][-1] > 10 * c["rounding"][0]


def test_02_ema_clips_a_little():
    """02 cell-15: the EMA of per-batch extremes lies inside the whole tensor's extremes, so it clips a
    little (like a soft percentile), far less than the MSE-optimal range."""
    xt = sample("student-t", 200_000, seed=0)
    ema = qlearn.EMARange(decay=0.9)
    for batch in np.array_split(xt, 50):
        ema.update(batch)
    lo, hi = ema.range
    assert xt.min() < lo < 0 < hi < xt.max()
    p_ema = qlearn.error_breakdown(xt, qlearn.qparams_from_range(lo, hi, 4))
    p_mm = qlearn.error_breakdown(xt, qlearn.qparams_from_range(*qlearn.minmax_range(xt), 4))
    assert p_ema.clipping_mse > 0 and p_ema.clipped_fraction < 0.001
    assert p_ema.total_mse < p_mm.total_mse


# ----------------------------------------------------------------------------- notebook 07
def test_07_requantized_add_within_half_a_step():
    """07 cell-04: the re-quantized add is within S3/2 = 0.039 of the sum of the dequantized inputs
    (and of the real sum up to the inputs' own rounding); adding codes naively is far off."""
    from qlearn.lessons.skip_connections import naive_add

    a = np.array([-1.0, -0.3, 0.0, 0.45, 1.2])
    b = np.array([2.0, -3.1, 0.7, 0.0, -1.5])
    a_qp, b_qp = qlearn.qparams_from_range(-2.0, 2.0, 8), qlearn.qparams_from_range(-8.0, 8.0, 8)
    out_qp = qlearn.qparams_from_range(-10.0, 10.0, 8)
    assert b_qp.scale == pytest.approx(4 * a_qp.scale) and round(out_qp.scale / 2, 3) == 0.039
    a_q, b_q = qlearn.quantize(a, a_qp), qlearn.quantize(b, b_qp)
    ra = (a_q.astype(np.float64) - a_qp.zero_point) * a_qp.scale
    rb = (b_q.astype(np.float64) - b_qp.zero_point) * b_qp.scale
    q3 = qlearn.quantize(ra + rb, out_qp)
    r3 = (q3.astype(np.float64) - out_qp.zero_point) * out_qp.scale
    assert np.all(np.abs(r3 - (ra + rb)) <= out_qp.scale / 2 + 1e-12)
    assert np.all(np.abs(r3 - (a + b)) <= (out_qp.scale + a_qp.scale + b_qp.scale) / 2 + 1e-12)
    wrong = naive_add(a_q, a_qp.zero_point, b_q, b_qp.zero_point, out_qp.zero_point)
    r_wrong = (wrong.astype(np.float64) - out_qp.zero_point) * out_qp.scale
    assert np.abs(r_wrong - (a + b)).max() > 10 * out_qp.scale


def test_07_integer_add_bit_exact_with_20_bits_naive_off_everywhere():
    """07 cell-10 item 1 and Summary: with 20 bits of headroom the integer add is bit-exact at every
    ratio 1/32..32; the naive sum is far off at every ratio, 1 included."""
    sweep = ratio_sweep(20, 4096, 0)
    assert np.all(sweep["exact"] == 1.0) and np.all(sweep["worst"] == 0)
    for r in RATIO_GRID:
        assert np.abs(add_experiment(float(r)).naive_lsb_error).max() > 10, r


def test_07_larger_scale_gets_one_half():
    """07 cell-10 item 2: the input with the larger scale gets m0 = 2^30 with shift 0, exactly 1/2."""
    for r in RATIO_GRID:
        e = add_experiment(float(r))
        m = e.mult
        big = (m.a_m0, m.a_shift) if e.a_qp.scale >= e.b_qp.scale else (m.b_m0, m.b_shift)
        assert big == (2**30, 0), r
        assert big[0] * 2.0 ** (big[1] - 31) == 0.5


@pytest.mark.parametrize("left_shift", [2, 8])
def test_07_little_headroom_off_by_at_most_one(left_shift):
    """07 cell-10 item 3 and Summary: with little headroom outputs start to differ, never by more than
    one LSB."""
    sweep = ratio_sweep(left_shift, 4096, 0)
    assert sweep["exact"].min() < 1.0 and sweep["worst"].max() == 1


def test_07_rms_error_about_04_lsb():
    """07 cell-10 item 4: the RMS error against the real a + b stays about 0.4 LSB at every ratio."""
    for r in RATIO_GRID:
        e = add_experiment(float(r))
        rms = float(np.sqrt(np.mean(e.error_vs_real_lsb(e.q_int) ** 2)))
        assert 0.35 < rms < 0.5, (r, rms)


def test_07_concat_claims():
    """07 cell-14: at ratio 8 re-quantizing costs at least the shared grid's error and about a fifth of
    the codes move by one LSB (never more); at ratio 1 nothing changes; at 4 bits b gets few levels."""
    c8 = concat_experiment(8.0)
    assert c8.mse("requant") >= c8.mse("shared") > c8.mse("own")
    assert 0.15 < c8.double_rounding_fraction < 0.25
    assert np.abs(c8.b_requant.astype(int) - c8.b_shared.astype(int)).max() == 1
    c1 = concat_experiment(1.0)
    assert c1.double_rounding_fraction == 0.0 and c1.mse("requant") == c1.mse("shared")
    c4 = concat_experiment(8.0, bits=4)
    assert c4.b.max() / c4.out_qp.scale < 3  # b spans fewer than 3 steps of the shared 4-bit grid


# ----------------------------------------------------------------------------- "Predict, then slide" answers
def test_00_q_five_bits_divide_rounding_by_about_1000_not_the_total(explorer):
    """00 cell-03 answer: 3 -> 8 bits divides the rounding MSE by about 4^5 ~ 1000; the total does not
    follow (it stops near 0.006, see the test above)."""
    n = _sweep(explorer, -2.0, 3.0, bits=[3, 8])
    rounding = n[3]["  of which rounding"] / n[8]["  of which rounding"]
    total = n[3]["MSE (measured)"] / n[8]["MSE (measured)"]
    assert 4**5 / 2 < rounding < 4**5 * 2, rounding
    assert total < rounding / 20, (total, rounding)


def test_01_q_round_trip_35_moves_most():
    """01 cell-04 answer: 0.0 exact; 35.0 moves the most, more than 5 away (clamped to 29.96)."""
    qp = qlearn.qparams_from_range(-10.0, 30.0, bits=8)
    x = np.array([-10.0, -0.1, 0.0, 0.07, 1.0, 29.9, 35.0])
    err = np.abs((qlearn.quantize(x, qp).astype(np.float64) - qp.zero_point) * qp.scale - x)  # float64 oracle
    assert err[2] == 0.0 and int(np.argmax(err)) == 6 and err[6] > 5 and np.sort(err)[-2] <= qp.scale / 2 + 1e-12


def test_01_q_four_more_bits_divide_mse_by_about_256(explorer):
    """01 cell-10 answer (1): on [-4, 4], 4 -> 8 bits divides S by 16, the MSE by about 270 (4^4 = 256),
    and the SQNR gains about 24 dB."""
    n = _sweep(explorer, -4.0, 4.0, bits=[4, 8])
    assert n[4]["scale S"] / n[8]["scale S"] == pytest.approx(255 / 15, rel=1e-12)  # (2^8 - 1)/(2^4 - 1) ~ 16
    ratio = n[4]["MSE (measured)"] / n[8]["MSE (measured)"]
    assert 245 < ratio < 295, ratio  # "about 270x"
    assert 23.0 < n[8]["SQNR (dB)"] - n[4]["SQNR (dB)"] < 25.5


def test_01_q_symmetric_grid_wastes_half_the_codes_on_relu_outputs(explorer):
    """01 cell-10 answer (2): on [0, 3] at 8 bits a symmetric signed grid doubles S (0.0118 -> 0.0235)
    and, by S^2/12, about quadruples the rounding error of non-negative values."""
    explorer.controls["range"].value = (0.0, 3.0)
    explorer.controls["bits"].value = 8
    s = {}
    for sym in (False, True):
        explorer.controls["symmetric"].value = explorer.controls["signed"].value = sym
        s[sym] = explorer.numbers["scale S"]
    explorer.controls["symmetric"].value = explorer.controls["signed"].value = False
    assert (round(s[False], 4), round(s[True], 4)) == (0.0118, 0.0235)
    assert s[True] / s[False] == pytest.approx(2.0, rel=1e-9)
    # oracle: float64 rounding error of ReLU-like data U(0, 3) on both grids
    x = np.random.default_rng(0).uniform(0.0, 3.0, 200_000)
    mse = {}
    for sym in (False, True):
        qp = qlearn.qparams_from_range(0.0, 3.0, 8, symmetric=sym, signed=sym)
        assert qp.scale == pytest.approx(s[sym], rel=1e-12)
        q = np.clip(np.rint(x / qp.scale) + qp.zero_point, qp.qmin, qp.qmax)
        mse[sym] = np.mean(((q - qp.zero_point) * qp.scale - x) ** 2)
    assert 3.6 < mse[True] / mse[False] < 4.4


def test_02_q_four_more_bits_on_uniform_data():
    """02 cell-02 answer: 4 -> 8 bits on uniform data divides the MSE by (255/15)^2 ~ 289, +24 dB."""
    x = sample("uniform", 200_000, seed=0)
    out = {}
    for bits in (4, 8):
        qp = qlearn.qparams_from_range(*qlearn.minmax_range(x), bits)
        e = qlearn.fake_quantize(x, qp) - x
        out[bits] = (np.mean(e * e), 10 * math.log10(np.sum(x * x) / np.sum(e * e)))
    assert abs(out[4][0] / out[8][0] / (255 / 15) ** 2 - 1) < 0.03
    assert 23.5 < out[8][1] - out[4][1] < 25.5


def test_02_q_laplace_best_clip_well_inside():
    """02 cell-09 answer: for Laplace at 4 bits the best c lies well inside min/max."""
    best, cmax, _, _ = _best_c("laplace", 4)
    assert best / cmax < 0.5
