"""QParams and qparams_from_range: published vectors, a float64 reference, properties, bad input."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.qparams import QParams, integer_limits, qparams_from_range

FAST = settings(max_examples=200, deadline=None, derandomize=True)


@pytest.mark.parametrize(
    "lo, hi, scale, zp",
    [  # TensorFlow FakeQuantWithMinMaxArgs / gemmlowp doc vectors, uint8 [0, 255]
        (-10.0, 30.0, 0.156863, 64),
        (0.0, 30.0, 0.117647, 0),
        (-10.0, 0.0, 0.039216, 255),
        (-0.5, 127.0, 0.5, 1),  # TF fake_quant_ops_test: nudged min -0.5, max 127
    ],
)
def test_published_uint8_vectors(lo, hi, scale, zp):
    qp = qparams_from_range(lo, hi)
    assert qp.scale == pytest.approx(scale, abs=5e-7)
    assert qp.zero_point == zp
    assert (qp.qmin, qp.qmax) == (0, 255)


def reference_asymmetric(lo, hi, qmin, qmax):
    """Exact rational arithmetic version of Eqs. 4-6 (round half away from zero)."""
    lo, hi = min(Fraction(lo), 0), max(Fraction(hi), 0)
    s = (hi - lo) / (qmax - qmin)
    if s < Fraction(np.finfo(np.float64).tiny):  # zero-width or sub-normal range: S = 1
        s = Fraction(1)
    zr = qmin - lo / s
    z = int(zr + Fraction(1, 2)) if zr >= 0 else -int(-zr + Fraction(1, 2))
    return float(s), min(max(z, qmin), qmax)


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@FAST
@given(finite, finite, st.integers(2, 16), st.booleans())
def test_asymmetric_matches_rational_reference(a, b, bits, signed):
    lo, hi = min(a, b), max(a, b)
    qp = qparams_from_range(lo, hi, bits, signed=signed)
    qmin, qmax = integer_limits(bits, signed=signed)
    s_ref, z_ref = reference_asymmetric(lo, hi, qmin, qmax)
    assert qp.scale == pytest.approx(s_ref, rel=1e-12)
    # the float64 zero point may differ from the exact one only on an exact .5 tie
    assert abs(qp.zero_point - z_ref) <= 1


@FAST
@given(finite, finite, st.integers(2, 16), st.booleans(), st.booleans(), st.booleans())
def test_zero_is_exactly_representable(a, b, bits, symmetric, signed, narrow):
    qp = qparams_from_range(min(a, b), max(a, b), bits, symmetric=symmetric, signed=signed, narrow_range=narrow)
    assert qp.qmin <= qp.zero_point <= qp.qmax
    assert qp.scale * (qp.zero_point - qp.zero_point) == 0.0
    lo, hi = qp.real_range
    assert lo <= 0.0 <= hi


def test_weights_symmetric_narrow_int8():
    qp = qparams_from_range(-0.8, 0.5, 8, symmetric=True, signed=True, narrow_range=True)
    assert (qp.qmin, qp.qmax, qp.zero_point) == (-127, 127, 0)
    assert qp.scale == pytest.approx(0.8 / 127)
    assert qp.dtype == np.int8


def test_symmetric_unsigned_and_full_signed_follow_pytorch():
    import torch

    x = torch.tensor([-0.8, 0.5])
    for dtype, signed in ((torch.qint8, True), (torch.quint8, False)):
        obs = torch.ao.quantization.MinMaxObserver(dtype=dtype, qscheme=torch.per_tensor_symmetric)
        obs(x)
        s_t, z_t = obs.calculate_qparams()
        qp = qparams_from_range(-0.8, 0.5, 8, symmetric=True, signed=signed)
        assert qp.scale == pytest.approx(float(s_t), rel=1e-6)
        assert qp.zero_point == int(z_t)


def test_zero_width_range_is_valid():
    for kwargs in ({}, {"symmetric": True, "signed": True, "narrow_range": True}):
        qp = qparams_from_range(0.0, 0.0, **kwargs)
        assert np.isfinite(qp.scale) and qp.scale > 0
        assert qp.scale * (qp.zero_point - qp.zero_point) == 0.0


def test_constant_nonzero_tensor_range_widens_to_zero():
    qp = qparams_from_range(3.0, 3.0)
    assert qp.real_range == pytest.approx((0.0, 3.0))


def test_per_channel_parameters():
    lo = np.array([-2.3, -0.7, -4.7])
    hi = np.array([2.1, 0.5, 3.8])
    qp = qparams_from_range(lo, hi, axis=0)
    assert qp.per_channel and qp.scale.shape == (3,) and qp.zero_point.shape == (3,)
    for c in range(3):
        one = qparams_from_range(lo[c], hi[c])
        assert qp.scale[c] == one.scale and qp.zero_point[c] == one.zero_point


def test_integer_limits():
    assert integer_limits(8) == (0, 255)
    assert integer_limits(8, signed=True) == (-128, 127)
    assert integer_limits(8, signed=True, narrow_range=True) == (-127, 127)
    assert integer_limits(4) == (0, 15)
    assert integer_limits(16, signed=True) == (-32768, 32767)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((1.0, -1.0), {}, ValueError, "lo <= hi"),
        ((float("nan"), 1.0), {}, ValueError, "NaN"),
        ((-1.0, float("inf")), {}, ValueError, "inf"),
        ((-1.0, 1.0, 1), {}, ValueError, "between 2 and 16"),
        ((-1.0, 1.0, 17), {}, ValueError, "between 2 and 16"),
        ((-1.0, 1.0, 8.0), {}, TypeError, "integer"),
        (("a", 1.0), {}, TypeError, "string"),
        ((np.array([-1.0, -2.0]), np.array([1.0, 2.0])), {}, ValueError, "axis"),
        ((np.array([-1.0, -2.0]), np.array([1.0])), {"axis": 0}, ValueError, "same shape"),
        ((np.zeros((2, 2)), np.ones((2, 2))), {"axis": 0}, ValueError, "1-D"),
        ((-1.0, 1.0), {"axis": "0"}, TypeError, "axis"),
        ((np.array([], dtype=float), np.array([], dtype=float)), {"axis": 0}, ValueError, "empty"),
    ],
)
def test_bad_ranges_raise_clear_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        qparams_from_range(*args, **kwargs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(scale=0.0, zero_point=0, qmin=0, qmax=255), ValueError, "positive"),
        (dict(scale=-1.0, zero_point=0, qmin=0, qmax=255), ValueError, "positive"),
        (dict(scale=1.0, zero_point=300, qmin=0, qmax=255), ValueError, "zero_point"),
        (dict(scale=1.0, zero_point=0.5, qmin=0, qmax=255), TypeError, "integer"),
        (dict(scale=1.0, zero_point=0, qmin=10, qmax=5), ValueError, "below"),
        (dict(scale=np.ones(3), zero_point=0, qmin=0, qmax=255), ValueError, "axis"),
        (dict(scale=np.ones((3, 1)), zero_point=0, qmin=0, qmax=255, axis=0), ValueError, "1-D"),
        (dict(scale=float("nan"), zero_point=0, qmin=0, qmax=255), ValueError, "NaN"),
    ],
)
def test_bad_qparams_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QParams(**kwargs)


def test_qparams_equality_and_repr():
    a = qparams_from_range(-1.0, 1.0)
    b = qparams_from_range(-1.0, 1.0)
    assert a == b and a != qparams_from_range(-1.0, 2.0)
    assert "scale=" in repr(a) and "zero_point=" in repr(a)
