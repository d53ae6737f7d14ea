"""Issue 15 (library part): bad input gets a clear error that names the argument, never garbage.

Each row is (call, exception type, the argument's name as it must appear in the message). Where a
fix computes instead of refusing (``sqnr_db`` at the ends of float64), the result is compared with an
independent oracle. Checkpoints and the IDX reader are checked on files written here.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import struct
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlearn import _checks
from qlearn import fixedpoint as fp
from qlearn.bn_fold import fold_bn, fuse_conv_bn, fuse_model
from qlearn.checkpoints import load_checkpoint, save_checkpoint
from qlearn.data import load_cifar10, load_mnist, read_idx
from qlearn.error import sqnr_db
from qlearn.fake_quant import fake_quant_ste, weight_scale
from qlearn.models import mobilenet_v1
from qlearn.qat_layers import QATConfig
from qlearn.qparams import integer_limits, qparams_from_range
from qlearn.quantize import paper_scale
from qlearn.ranges import GRID_MAX, EMARange, mse_range
from qlearn.train import TrainConfig, seed_everything

FAST = settings(max_examples=60, deadline=None, derandomize=True)
X = np.linspace(-1.0, 1.0, 101)
NAN = float("nan")


def _ema_3_then_4() -> None:
    ema = EMARange(axis=0)
    ema.update(np.ones((3, 5)))
    ema.update(np.ones((4, 5)))


def _bn(var: float) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_var[1] = var
    return conv, bn


def _fold_torch(**bad: torch.Tensor) -> None:
    args = dict(w=torch.ones(3, 2), b=torch.zeros(3), gamma=torch.ones(3), beta=torch.zeros(3),
                mean=torch.zeros(3), var=torch.ones(3))
    args.update(bad)
    fold_bn(**args)


def _fuse_model_with_bad_var() -> None:
    model = mobilenet_v1(10, width=0.25, input_size=16)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var[0] = float("inf")
    fuse_model(model)


I32 = np.ones(3, dtype=np.int32)

CASES = [
    # booleans are booleans: a non-empty string is truthy, so 'False' would have meant True
    ("narrow_range='False'", lambda: qparams_from_range(-1, 1, narrow_range="False"), TypeError, "narrow_range"),
    ("signed='no'", lambda: qparams_from_range(-1, 1, signed="no"), TypeError, "signed"),
    ("symmetric=1", lambda: qparams_from_range(-1, 1, symmetric=1), TypeError, "symmetric"),
    ("integer_limits signed", lambda: integer_limits(8, signed="yes"), TypeError, "signed"),
    ("mse_range signed", lambda: mse_range(X, 8, signed="no"), TypeError, "signed"),
    ("mse_range symmetric", lambda: mse_range(X, 8, symmetric="True"), TypeError, "symmetric"),
    ("weight_scale per_channel", lambda: weight_scale(torch.ones(2, 3), per_channel="yes"), TypeError, "per_channel"),
    # ranges whose width overflows float64
    ("paper_scale inf", lambda: paper_scale(-1e308, 1e308, 256), ValueError, "b - a"),
    ("qparams_from_range too wide", lambda: qparams_from_range(-1e308, 1e308), ValueError, "hi - lo"),
    # documented upper bounds on grids and sizes
    ("mse_range grid 10**6", lambda: mse_range(X, 8, grid=10**6), ValueError, "grid"),
    ("mse_range grid float", lambda: mse_range(X, 8, grid=64.0), TypeError, "grid"),
    ("weight_scale grid", lambda: weight_scale(torch.ones(2, 3), method="mse", grid=10**6), ValueError, "grid"),
    ("paper_scale n huge", lambda: paper_scale(0.0, 1.0, 2**40), ValueError, "n must"),
    ("paper_scale n bool", lambda: paper_scale(0.0, 1.0, True), TypeError, "n is"),
    # NaN / inf in torch batch-norm statistics (the numpy path already refuses them)
    ("fold_bn torch var NaN", lambda: _fold_torch(var=torch.tensor([1.0, NAN, 1.0])), ValueError, "var"),
    ("fold_bn torch var inf", lambda: _fold_torch(var=torch.tensor([1.0, math.inf, 1.0])), ValueError, "var"),
    ("fold_bn torch gamma NaN", lambda: _fold_torch(gamma=torch.tensor([1.0, NAN, 1.0])), ValueError, "gamma"),
    ("fold_bn torch w inf", lambda: _fold_torch(w=torch.full((3, 2), -math.inf)), ValueError, "w "),
    ("fuse_conv_bn var NaN", lambda: fuse_conv_bn(*_bn(NAN)), ValueError, "bn.running_var"),
    ("fuse_conv_bn var inf", lambda: fuse_conv_bn(*_bn(math.inf)), ValueError, "bn.running_var"),
    ("fuse_model var inf", _fuse_model_with_bad_var, ValueError, "bn.running_var"),
    # fake quant must not pass NaN through silently
    ("fake_quant_ste NaN", lambda: fake_quant_ste(torch.tensor([0.5, NAN]), 0.1, 0, 0, 255), ValueError, "x"),
    ("fake_quant_ste inf", lambda: fake_quant_ste(torch.tensor([math.inf]), 0.1, 0, 0, 255), ValueError, "x"),
    # fixed point: Python ints beyond int64, mismatched shapes
    ("SRDHM a 2**70", lambda: fp.saturating_rounding_doubling_high_mul(2**70, 1), ValueError, "a must fit int32"),
    ("SRDHM b -2**64", lambda: fp.saturating_rounding_doubling_high_mul(1, -(2**64)), ValueError, "b must fit int32"),
    ("SRDHM shapes", lambda: fp.saturating_rounding_doubling_high_mul(I32, np.ones(4, np.int32)), ValueError, "a and b"),
    ("RDBPOT exponent 2**80", lambda: fp.rounding_divide_by_pot(5, 2**80), ValueError, "exponent"),
    ("RDBPOT x 2**63", lambda: fp.rounding_divide_by_pot(2**63, 1), ValueError, "x must fit int32"),
    ("RDBPOT shapes", lambda: fp.rounding_divide_by_pot(I32, np.ones(2, np.int64)), ValueError, "x and exponent"),
    ("half-up shapes", lambda: fp.rounding_shift_right_half_up(I32, np.ones(2, np.int64)), ValueError, "exponent"),
    ("MBQM m0 2**64", lambda: fp.multiply_by_quantized_multiplier(1, 2**64, 0), ValueError, "m0"),
    ("MBQM shift 2**65", lambda: fp.multiply_by_quantized_multiplier(1, 2**30, 2**65), ValueError, "shift"),
    ("MBQM shapes", lambda: fp.multiply_by_quantized_multiplier(np.ones((2, 3), np.int32), np.full(2, 2**30, np.int32), 0),
     ValueError, "m0"),
    ("multiplier_value shapes", lambda: fp.multiplier_value(np.full(3, 2**30, np.int32), np.zeros(2, np.int64)),
     ValueError, "shift"),
    ("multiplier_value shift 2**100", lambda: fp.multiplier_value(2**30, -(2**100)), ValueError, "shift"),
    # EMA ranges: the channel count may not change under it
    ("EMARange 3 then 4 channels", _ema_3_then_4, ValueError, "channels"),
    ("EMARange axis str", lambda: EMARange(axis="0"), TypeError, "axis"),
    # seeds have a documented range
    ("seed_everything 2**64", lambda: seed_everything(2**64), ValueError, "seed"),
    ("seed_everything -1", lambda: seed_everything(-1), ValueError, "seed"),
    ("seed_everything 1.0", lambda: seed_everything(1.0), TypeError, "seed"),
    ("TrainConfig seed 2**64", lambda: TrainConfig(seed=2**64), ValueError, "seed"),
    ("TrainConfig epochs", lambda: TrainConfig(epochs=True), TypeError, "epochs"),
    ("QATConfig freeze_bn_step", lambda: QATConfig(freeze_bn_step=-1), ValueError, "freeze_bn_step"),
]


@pytest.mark.parametrize("call,exc,name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    assert name in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_the_bool_check_lets_real_flags_through():
    assert qparams_from_range(-1, 1, narrow_range=np.bool_(True), signed=True).qmin == -127
    assert _checks.check_bool(np.bool_(False), "flag") is False
    assert mse_range(X, 8, grid=GRID_MAX) == mse_range(X, 8, grid=GRID_MAX)  # the bound itself is allowed


# ---------------------------------------------------------------------------------- sqnr_db at the ends of float64
def _sqnr_decimal(x: list[float], x_hat: list[float]) -> float:
    """Oracle: exact decimal arithmetic (no overflow, no underflow), then 10 log10 of the ratio."""
    getcontext().prec = 50
    xs = [Decimal(v) for v in x]
    es = [Decimal(h) - Decimal(v) for v, h in zip(x, x_hat)]
    ratio = sum(v * v for v in xs) / sum(e * e for e in es)
    return float(10 * ratio.log10())


@pytest.mark.parametrize("x,x_hat", [
    ([1e200], [3e200]),  # squares overflow to inf: the naive formula gives inf / inf = NaN
    ([1e-200], [2e-200]),  # squares underflow to 0: the naive formula says "x is all zeros"
    ([1e-200, -3e-200], [1.5e-200, -3.1e-200]),
    ([1e308, -1e308], [-1e308, 1e308]),  # even x_hat - x overflows
    ([1.0, 2.0, -3.0], [1.1, 1.9, -3.05]),
])
def test_sqnr_db_is_robust_at_the_ends_of_float64(x, x_hat):
    assert sqnr_db(x, x_hat) == pytest.approx(_sqnr_decimal(x, x_hat), rel=1e-12, abs=1e-9)


@FAST
@given(st.lists(st.floats(-10, 10).filter(lambda v: abs(v) > 1e-3), min_size=1, max_size=20),
       st.floats(1e-3, 1.0), st.sampled_from([1e-250, 1e-100, 1.0, 1e100, 1e250]))
def test_sqnr_db_is_scale_invariant(x, noise, k):
    """SQNR is a ratio: scaling x and x_hat by k (even 1e250, whose squares overflow) changes nothing."""
    x = np.array(x)
    x_hat = x + noise * np.sign(x)
    assert sqnr_db(k * x, k * x_hat) == pytest.approx(_sqnr_decimal(list(x), list(x_hat)), rel=1e-9, abs=1e-9)


def test_sqnr_db_still_refuses_a_zero_signal_and_reports_exactness():
    with pytest.raises(ValueError, match="x is all zeros"):
        sqnr_db([0.0, 0.0], [1.0, 0.0])
    assert sqnr_db([1e-300, 2e-300], [1e-300, 2e-300]) == math.inf


# ---------------------------------------------------------------------------------- files
def test_idx_header_that_overflows_int64_names_the_file(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x04" + struct.pack(">4I", *[0xFFFFFFFF] * 4) + bytes(16))
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        read_idx(path)
    assert "corrupt or truncated" in str(info.value)
    # 2^16 * 2^16 * 2^16 * 2^16 = 2^64 wraps to 0 in int64: an empty body used to pass the size check
    # and fail later in numpy's reshape, without the file's name
    wrap = tmp_path / "wrap-idx3-ubyte"
    assert int(np.prod(np.array([2**16] * 4, dtype=np.int64))) == 0
    wrap.write_bytes(b"\x00\x00\x08\x04" + struct.pack(">4I", *[2**16] * 4))
    with pytest.raises(ValueError, match=re.escape(str(wrap)) + ".*corrupt or truncated"):
        read_idx(wrap)


@pytest.mark.parametrize("loader", [load_mnist, load_cifar10])
def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path, loader):
    f = tmp_path / "data.bin"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        loader(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loader(tmp_path / "missing")


class _Evil:
    def __reduce__(self):  # runs os.system on a plain torch.load
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_a_malicious_checkpoint_is_called_what_it_is(tmp_path, zipfile_format):
    path = tmp_path / "evil.pt"
    torch.save({"format": "qlearn-checkpoint-v1", "x": _Evil()}, path,
               _use_new_zipfile_serialization=zipfile_format)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "weights_only" in message and "objects other than tensors" in message and "system" in message
    assert "corrupt" not in message
    # and a plain garbage pickle is still "corrupt"
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2], protocol=2)[:-1])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_good_checkpoints_still_load(tmp_path):
    model = mobilenet_v1(10, width=0.25, input_size=16)
    save_checkpoint(tmp_path / "ok.pt", model, extra={"seed": 0})
    _, extra = load_checkpoint(tmp_path / "ok.pt")
    assert extra == {"seed": 0}
