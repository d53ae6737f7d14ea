"""quantize / dequantize / fake_quantize against PyTorch's fake-quant ops, properties, the seed's example."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qlearn.error import mse
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, paper_fake_quant, paper_scale, quantize

FAST = settings(max_examples=150, deadline=None, derandomize=True)


def _not_a_tie(x, scale, zp):
    """Points where float32 and float64 may round a .5 tie differently are excluded from exact checks."""
    frac = np.abs((x / scale) % 1.0 - 0.5)
    return frac > 1e-4


@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (4, False), (6, True)])
def test_fake_quantize_per_tensor_matches_torch(bits, signed):
    rng = np.random.default_rng(bits)
    x = (rng.normal(size=4000) * 3).astype(np.float32).astype(np.float64)
    qp = qparams_from_range(-4.0, 5.0, bits, signed=signed)
    ours = fake_quantize(x, qp)
    theirs = torch.fake_quantize_per_tensor_affine(
        torch.tensor(x, dtype=torch.float32), qp.scale, qp.zero_point, qp.qmin, qp.qmax
    ).double().numpy()
    keep = _not_a_tie(x, qp.scale, qp.zero_point)
    assert keep.mean() > 0.99
    np.testing.assert_allclose(ours[keep], theirs[keep], atol=1e-5)


def test_fake_quantize_per_channel_matches_torch():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3, 3, 3)) * rng.uniform(0.01, 3, size=(6, 1, 1, 1))
    w = w.astype(np.float32).astype(np.float64)
    lo, hi = w.reshape(6, -1).min(1), w.reshape(6, -1).max(1)
    qp = qparams_from_range(lo, hi, 8, symmetric=True, signed=True, narrow_range=True, axis=0)
    ours = fake_quantize(w, qp)
    theirs = torch.fake_quantize_per_channel_affine(
        torch.tensor(w, dtype=torch.float32),
        torch.tensor(qp.scale, dtype=torch.float32),
        torch.tensor(qp.zero_point, dtype=torch.int32),
        0, qp.qmin, qp.qmax,
    ).double().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@FAST
@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-100, 100)),
    st.floats(-50, 0), st.floats(0, 50), st.integers(2, 16),
)
def test_inside_range_error_at_most_half_step(x, lo, hi, bits):
    qp = qparams_from_range(lo, hi, bits)
    rlo, rhi = qp.real_range
    inside = (x >= rlo) & (x <= rhi)
    err = np.abs(fake_quantize(x, qp) - x)
    assert np.all(err[inside] <= qp.scale / 2 * (1 + 1e-9) + 1e-12)


@FAST
@given(st.floats(-50, 50), st.floats(-50, 50), st.integers(2, 16), st.booleans(), st.booleans())
def test_zero_round_trips_exactly(a, b, bits, symmetric, signed):
    qp = qparams_from_range(min(a, b), max(a, b), bits, symmetric=symmetric, signed=signed)
    assert fake_quantize(0.0, qp) == 0.0
    assert quantize(0.0, qp) == qp.zero_point


@FAST
@given(st.floats(-50, -1e-3), st.floats(1e-3, 50), st.integers(2, 12), st.data())
def test_on_grid_values_round_trip_and_idempotence(lo, hi, bits, data):
    qp = qparams_from_range(lo, hi, bits)
    q = np.array(data.draw(st.lists(st.integers(qp.qmin, qp.qmax), min_size=1, max_size=30)))
    q = q.astype(qp.dtype)
    r = dequantize(q, qp)
    np.testing.assert_array_equal(quantize(r, qp), q)
    x = np.array(data.draw(st.lists(st.floats(-100, 100), min_size=1, max_size=30)))
    once = fake_quantize(x, qp)
    np.testing.assert_array_equal(fake_quantize(once, qp), once)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e4, 1e4)), st.integers(2, 16), st.booleans())
def test_quantize_stays_in_integer_range(x, bits, signed):
    qp = qparams_from_range(-1.0, 1.0, bits, signed=signed)
    q = quantize(x, qp)
    assert q.dtype == qp.dtype
    assert q.min() >= qp.qmin and q.max() <= qp.qmax


def test_per_channel_helps_the_small_channel_of_the_seed_example():
    # the seed: three output channels with ranges [-2.3, 2.1], [-0.7, 0.5], [-4.7, 3.8]
    rng = np.random.default_rng(0)
    ranges = np.array([[-2.3, 2.1], [-0.7, 0.5], [-4.7, 3.8]])
    w = np.stack([rng.uniform(a, b, size=2000) for a, b in ranges])  # (3, 2000)
    w[:, 0], w[:, 1] = ranges[:, 0], ranges[:, 1]
    bits = 4
    per_tensor = qparams_from_range(w.min(), w.max(), bits, symmetric=True, signed=True, narrow_range=True)
    per_channel = qparams_from_range(
        w.min(1), w.max(1), bits, symmetric=True, signed=True, narrow_range=True, axis=0
    )
    e_t = mse(w[1], fake_quantize(w, per_tensor)[1])
    e_c = mse(w[1], fake_quantize(w, per_channel)[1])
    assert e_c < e_t / 20  # 4.7 / 0.7 ~ 6.7x smaller step -> ~45x smaller MSE


def test_seed_worked_example():
    s = paper_scale(-3.2, 1.3, 256)
    assert s == pytest.approx(4.5 / 255) and round(s, 4) == 0.0176
    assert paper_fake_quant(1.0, -3.2, 1.3, 256) == pytest.approx(1.0, abs=1e-12)
    # the blog rounds s to 0.0176 first: 4.2 / 0.0176 = 238.6 -> 239 -> 1.0064
    assert round(239 * 0.0176 - 3.2, 4) == 1.0064
    # the nudged grid (0 exactly representable) moves the result to 1.00588
    qp = qparams_from_range(-3.2, 1.3)
    assert qp.zero_point == 181
    assert quantize(1.0, qp) == 238  # round(1.0 / S) + Z = 57 + 181
    assert fake_quantize(1.0, qp) == pytest.approx(1.0058823529, abs=1e-9)


def test_paper_fake_quant_clamps_and_matches_a_float64_loop():
    a, b, n = -1.5, 2.0, 16
    xs = np.linspace(-3, 3, 101)
    s = (b - a) / (n - 1)
    ref = [np.floor((min(max(x, a), b) - a) / s + 0.5) * s + a for x in xs]
    np.testing.assert_allclose(paper_fake_quant(xs, a, b, n), ref)


def test_scalar_in_scalar_out_and_empty_arrays():
    qp = qparams_from_range(-1.0, 1.0)
    assert np.ndim(quantize(0.3, qp)) == 0 and np.ndim(fake_quantize(0.3, qp)) == 0
    assert quantize(np.array([]), qp).shape == (0,)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda qp: quantize([1.0, np.nan], qp), ValueError, "NaN"),
        (lambda qp: fake_quantize([np.inf], qp), ValueError, "inf"),
        (lambda qp: quantize(["a"], qp), TypeError, "numbers"),
        (lambda qp: quantize([1.0], (0.1, 0)), TypeError, "QParams"),
        (lambda qp: dequantize(np.array([1.5]), qp), TypeError, "integer"),
        (lambda qp: dequantize(np.array([300]), qp), ValueError, "outside"),
        (lambda qp: paper_scale(1.0, -1.0, 256), ValueError, "a < b"),
        (lambda qp: paper_scale(-1.0, 1.0, 1), ValueError, "at least 2"),
        (lambda qp: paper_scale(-1.0, 1.0, 8.0), TypeError, "integer"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(qparams_from_range(-1.0, 1.0))


def test_per_channel_shape_mismatch_and_missing_axis():
    qp = QParams(np.array([0.1, 0.2]), np.array([0, 0]), -127, 127, axis=1)
    with pytest.raises(ValueError, match="channels"):
        quantize(np.zeros((2, 3)), qp)
    with pytest.raises(ValueError, match="does not exist"):
        quantize(np.zeros(2), qp)
    assert quantize(np.zeros((5, 2)), qp).shape == (5, 2)
