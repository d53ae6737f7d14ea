"""Notebook 01/02 explorers driven headless: move a control, the numbers and the figure change and are right."""
import numpy as np
import pytest

import qlearn
from qlearn.distributions import DISTRIBUTIONS, sample
from qlearn.widgets import clipping_explorer, error_vs_bits_explorer, quantize_explorer


@pytest.fixture(scope="module")
def small_x():
    return sample("gaussian", 20_000, seed=1)


def test_quantize_explorer_numbers_follow_the_library(small_x):
    ex = quantize_explorer(small_x, bits=3, lo=-2.0, hi=3.0)
    png0, n0 = ex.image.value, dict(ex.numbers)
    ex.controls["bits"].value = 6
    assert ex.image.value != png0 and ex.numbers != n0 and ex.redraws == 2
    qp = qlearn.qparams_from_range(-2.0, 3.0, 6)
    parts = qlearn.error_breakdown(small_x, qp)
    assert ex.numbers["scale S"] == qp.scale
    assert ex.numbers["zero point Z"] == qp.zero_point
    assert ex.numbers["MSE (measured)"] == pytest.approx(parts.total_mse)
    assert ex.numbers["max |error| inside the grid"] <= ex.numbers["S/2"] + 1e-12
    assert "MSE (measured)" in ex.image.readout


def test_quantize_explorer_switches(small_x):
    ex = quantize_explorer(small_x)
    ex.controls["symmetric"].value = True
    ex.controls["signed"].value = True
    ex.controls["narrow"].value = True
    assert ex.numbers["zero point Z"] == 0
    assert ex.numbers["integers q"].startswith("[-3, 3]")
    ex.controls["range"].value = (0.5, 3.0)  # widened to contain 0
    ex.controls["symmetric"].value = False
    ex.controls["signed"].value = False
    ex.controls["narrow"].value = False
    assert ex.numbers["zero point Z"] == 0 and ex.numbers["grid covers"].startswith("[0.0000")


def test_error_vs_bits_explorer_tracks_the_model():
    ex = error_vs_bits_explorer(dist="uniform", bits=4, n=50_000)
    png0 = ex.image.value
    assert ex.numbers["measured / model"] == pytest.approx(1.0, abs=0.05)
    assert ex.numbers["SQNR slope, 4-12 bits (dB/bit)"] == pytest.approx(6.02, abs=0.2)
    ex.controls["bits"].value = 8
    assert ex.image.value != png0
    x = sample("uniform", 50_000, seed=0)
    qp = qlearn.qparams_from_range(*qlearn.minmax_range(x), 8)
    assert ex.numbers["MSE (measured)"] == pytest.approx(qlearn.mse(x, qlearn.fake_quantize(x, qp)))
    s8 = ex.numbers["SQNR (dB)"]
    ex.controls["dist"].value = "student-t"
    assert ex.numbers["SQNR (dB)"] < s8 - 10


def test_clipping_explorer_breakdown_and_best_clip():
    ex = clipping_explorer(dist="laplace", bits=4, clip=3.0, n=50_000)
    png0, total0 = ex.image.value, ex.numbers["total MSE"]
    ex.controls["clip"].value = 1.0
    assert ex.image.value != png0
    x = sample("laplace", 50_000, seed=0)
    parts = qlearn.error_breakdown(x, qlearn.qparams_from_range(-1.0, 1.0, 4))
    assert ex.numbers["clipping MSE"] == pytest.approx(parts.clipping_mse)
    assert ex.numbers["total MSE"] > total0  # c = 1 clips far too much
    best = ex.numbers["best c on the curve"]
    ex.controls["bits"].value = 8
    assert ex.numbers["best c on the curve"] > best  # more bits: clip less


def test_distributions_have_unit_variance_and_reject_bad_names():
    for name in DISTRIBUTIONS:
        assert np.var(sample(name, 200_000, seed=3)) == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="unknown distribution"):
        sample("cauchy")
    with pytest.raises(ValueError, match="positive"):
        sample("gaussian", 0)
