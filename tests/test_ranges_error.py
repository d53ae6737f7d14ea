"""Range estimators and error analysis against float64 references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qlearn.error import error_breakdown, max_abs_error, mse, sqnr_db, uniform_noise_mse
from qlearn.qparams import qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import EMARange, minmax_range, mse_range, percentile_range

FAST = settings(max_examples=100, deadline=None, derandomize=True)


def test_minmax_per_tensor_and_per_channel():
    x = np.arange(24.0).reshape(2, 3, 4) - 5
    assert minmax_range(x) == (-5.0, 18.0)
    lo, hi = minmax_range(x, axis=1)
    np.testing.assert_array_equal(lo, [x[:, c].min() for c in range(3)])
    np.testing.assert_array_equal(hi, [x[:, c].max() for c in range(3)])
    lo, hi = minmax_range(x, axis=-1)
    assert lo.shape == (4,)


def test_percentile_range_matches_numpy_and_100_is_minmax():
    x = np.random.default_rng(0).standard_t(3, size=10000)
    assert percentile_range(x, 99.0) == pytest.approx((np.percentile(x, 1), np.percentile(x, 99)))
    assert percentile_range(x, 100) == minmax_range(x)


def test_mse_range_beats_a_dense_brute_force_grid():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=5000)
    lo, hi = mse_range(x, 4)
    best = mse(x, fake_quantize(x, qparams_from_range(lo, hi, 4)))
    lo0, hi0 = x.min(), x.max()
    brute = min(
        mse(x, fake_quantize(x, qparams_from_range(a * lo0, a * hi0, 4))) for a in np.linspace(0.01, 1, 400)
    )
    assert best <= brute * 1.01
    assert best < mse(x, fake_quantize(x, qparams_from_range(lo0, hi0, 4)))  # clipping pays off at 4 bits


def test_mse_range_per_channel_equals_each_channel_alone():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 500)) * np.array([[0.1], [1.0], [10.0]])
    lo, hi = mse_range(x, 5, axis=0, symmetric=True, signed=True, narrow_range=True)
    for c in range(3):
        lc, hc = mse_range(x[c], 5, symmetric=True, signed=True, narrow_range=True)
        assert (lo[c], hi[c]) == pytest.approx((lc, hc))


def test_ema_range_follows_its_recurrence():
    rng = np.random.default_rng(3)
    ema = EMARange(decay=0.9)
    lo_ref = hi_ref = None
    for i in range(20):
        b = rng.normal(size=100) * (1 + i)
        lo, hi = ema.update(b)
        if lo_ref is None:
            lo_ref, hi_ref = b.min(), b.max()
        else:
            lo_ref = 0.9 * lo_ref + 0.1 * b.min()
            hi_ref = 0.9 * hi_ref + 0.1 * b.max()
        assert (lo, hi) == pytest.approx((lo_ref, hi_ref))
    assert ema.count == 20 and ema.range == (lo, hi)


def test_ema_default_decay_and_errors():
    assert EMARange().decay == 0.999
    with pytest.raises(ValueError, match="decay"):
        EMARange(decay=1.0)
    with pytest.raises(ValueError, match="no data"):
        _ = EMARange().range


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(-20, 20)), st.integers(2, 10))
def test_breakdown_parts_add_up_to_total_mse(x, bits):
    qp = qparams_from_range(-3.0, 4.0, bits)
    b = error_breakdown(x, qp)
    assert b.total_mse == pytest.approx(mse(x, fake_quantize(x, qp)), rel=1e-9, abs=1e-15)
    assert 0.0 <= b.clipped_fraction <= 1.0
    assert b.rounding_mse <= qp.scale**2 / 4 + 1e-12


def test_uniform_noise_model_and_six_db_per_bit():
    x = np.random.default_rng(4).uniform(-1, 1, size=200_000)
    sq = []
    for bits in range(4, 11):
        qp = qparams_from_range(-1.0, 1.0, bits)
        x_hat = fake_quantize(x, qp)
        assert mse(x, x_hat) == pytest.approx(uniform_noise_mse(qp.scale), rel=0.03)
        sq.append(sqnr_db(x, x_hat))
    slopes = np.diff(sq)
    assert np.allclose(slopes, 20 * np.log10(2), atol=0.3)


def test_error_metrics_reference_values():
    x, y = np.array([1.0, -2.0, 3.0]), np.array([1.5, -2.0, 2.0])
    assert mse(x, y) == pytest.approx((0.25 + 0 + 1) / 3)
    assert max_abs_error(x, y) == 1.0
    assert sqnr_db(x, y) == pytest.approx(10 * np.log10(14 / 1.25))
    assert sqnr_db(x, x) == float("inf")


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: minmax_range([]), ValueError, "empty"),
        (lambda: minmax_range([1.0, np.nan]), ValueError, "NaN"),
        (lambda: minmax_range(np.zeros((2, 3)), axis=2), ValueError, "does not exist"),
        (lambda: minmax_range(np.zeros((2, 3)), axis=1.0), TypeError, "axis"),
        (lambda: percentile_range([1.0, 2.0], 30), ValueError, "between 50 and 100"),
        (lambda: percentile_range([1.0, 2.0], "99"), TypeError, "pct"),
        (lambda: mse_range([1.0, 2.0], 1), ValueError, "between 2 and 16"),
        (lambda: mse([1.0], [1.0, 2.0]), ValueError, "same shape"),
        (lambda: sqnr_db([0.0, 0.0], [0.1, 0.0]), ValueError, "zero signal"),
        (lambda: uniform_noise_mse(0.0), ValueError, "positive"),
        (lambda: error_breakdown(np.array([np.inf]), qparams_from_range(-1, 1)), ValueError, "inf"),
        (lambda: minmax_range(np.array([True, False])), TypeError, "dtype"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
