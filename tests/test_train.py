"""qlearn.train: deterministic training, evaluation oracles, and safe checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlearn.checkpoints import load_checkpoint, save_checkpoint
from qlearn.data import load_digits_data
from qlearn.models import mobilenet_v1, mobilenet_v2
from qlearn.train import (
    TrainConfig,
    evaluate,
    predict,
    seed_everything,
    train,
)


@pytest.fixture(scope="module")
def small():
    return load_digits_data(16).subset(256, 128)


def _tiny(builder=mobilenet_v1, seed: int = 0):
    seed_everything(seed)
    return builder(width=0.25, input_size=16)


def test_same_seed_same_weights_and_history(small):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=5e-3, seed=3)
    runs = []
    for _ in range(2):
        model = _tiny(mobilenet_v2)
        result = train(model, small.x_train, small.y_train, cfg, x_test=small.x_test, y_test=small.y_test, progress=False)
        runs.append((model.state_dict(), result.history))
    (sd1, h1), (sd2, h2) = runs
    assert h1 == h2 and len(h1) == 2 and set(h1[0]) == {"epoch", "loss", "train_acc", "test_acc"}
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    other = _tiny(mobilenet_v2)
    train(other, small.x_train, small.y_train, TrainConfig(epochs=2, batch_size=64, lr=5e-3, seed=4), progress=False)
    assert not all(torch.equal(sd1[k], other.state_dict()[k]) for k in sd1)


def test_training_learns(small):
    model = _tiny()
    before = evaluate(model, small.x_test, small.y_test)
    result = train(model, small.x_train, small.y_train, TrainConfig(epochs=8, batch_size=32, lr=1e-2), progress=False)
    after = evaluate(model, small.x_test, small.y_test)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    assert after > 0.6 > before + 0.2 and not model.training and result.seconds > 0


def test_on_step_counts_optimizer_steps(small):
    steps: list[int] = []
    train(_tiny(), small.x_train[:100], small.y_train[:100], TrainConfig(epochs=2, batch_size=32), progress=False, on_step=steps.append)
    assert steps == list(range(1, 2 * 4 + 1))  # ceil(100 / 32) = 4 steps per epoch


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), n=st.integers(1, 40), classes=st.integers(2, 5), bs=st.integers(1, 50))
def test_evaluate_and_predict_match_manual_oracle(seed, n, classes, bs):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, classes))
    x = torch.randn(n, 1, 3, 4, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    with torch.no_grad():
        w, b = model[1].weight.double(), model[1].bias.double()
        logits = x.reshape(n, 12).double() @ w.T + b
    manual = sum(int(logits[i].argmax() == y[i]) for i in range(n)) / n
    assert evaluate(model, x, y, batch_size=bs) == pytest.approx(manual)
    torch.testing.assert_close(predict(model, x, batch_size=bs).double(), logits, rtol=1e-5, atol=1e-5)


def test_predict_restores_mode_and_uses_eval_bn(small):
    model = _tiny()
    model.train()
    out = predict(model, small.x_test[:8])
    assert model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(out, model(small.x_test[:8]))


class _NaN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return torch.full((x.shape[0], 3), float("nan")) * self.w


def test_divergence_is_an_error():
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(_NaN(), x, y, TrainConfig(epochs=1), progress=False)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(epochs=0), ValueError), (dict(epochs=1.5), TypeError), (dict(batch_size=0), ValueError),
    (dict(lr=0.0), ValueError), (dict(lr=float("nan")), ValueError), (dict(lr=-1.0), ValueError),
    (dict(weight_decay=-1.0), ValueError), (dict(schedule="step"), ValueError), (dict(seed=None), TypeError),
])
def test_bad_config(kwargs, exc):
    with pytest.raises(exc):
        TrainConfig(**kwargs)


def test_bad_training_input(small):
    model = _tiny()
    x, y = small.x_train[:8], small.y_train[:8]
    cases = [
        (lambda: train("model", x, y, progress=False), TypeError),
        (lambda: train(model, x, y, {"epochs": 1}, progress=False), TypeError),
        (lambda: train(model, x.numpy(), y, progress=False), TypeError),
        (lambda: train(model, x, y.float(), progress=False), TypeError),
        (lambda: train(model, x, y[:5], progress=False), ValueError),
        (lambda: train(model, x[:0], y[:0], progress=False), ValueError),
        (lambda: train(model, x, y, x_test=x, progress=False), ValueError),
        (lambda: evaluate(model, x[0], y), TypeError),
        (lambda: predict(model, x.to(torch.int64)), TypeError),
        (lambda: seed_everything(1.0), TypeError),
    ]
    for call, exc in cases:
        with pytest.raises(exc):
            call()


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, small):
    model = _tiny(mobilenet_v2)
    train(model, small.x_train[:64], small.y_train[:64], TrainConfig(epochs=1), progress=False)
    path = save_checkpoint(tmp_path / "sub" / "float.pt", model, extra={"float_acc": 0.5, "note": "x"})
    rebuilt, extra = load_checkpoint(path)
    assert extra == {"float_acc": 0.5, "note": "x"} and rebuilt.config == model.config and not rebuilt.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(small.x_test[:16]), model(small.x_test[:16]))
    into = _tiny(mobilenet_v2, seed=9)
    loaded, _ = load_checkpoint(path, into)
    assert loaded is into and all(torch.equal(a, b) for a, b in zip(into.state_dict().values(), model.state_dict().values()))


def test_checkpoint_errors(tmp_path):
    model = _tiny()
    good = save_checkpoint(tmp_path / "good.pt", model)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    raw = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a qlearn checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled object, not plain data
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "module.pt")
    with pytest.raises(ValueError, match="different model"):
        load_checkpoint(good, mobilenet_v2(width=0.25, input_size=16))
    with pytest.raises(ValueError, match="different model"):
        load_checkpoint(good, mobilenet_v1(width=0.5, input_size=16))
    stripped = torch.load(good, weights_only=True)
    stripped["config"] = {}
    torch.save(stripped, tmp_path / "noconfig.pt")
    with pytest.raises(ValueError, match="stores no model config"):
        load_checkpoint(tmp_path / "noconfig.pt")
    plain = nn.Sequential(nn.Conv2d(1, 2, 3))  # no config: only the tensors are compared
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(good, plain)
    stripped = torch.load(good, weights_only=True)
    stripped["state_dict"]["classifier.weight"] = torch.zeros(3, 3)
    torch.save(stripped, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="wrong shapes.*classifier.weight"):
        load_checkpoint(tmp_path / "shape.pt")
    stripped["state_dict"] = "nope"
    torch.save(stripped, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="state_dict"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", model, extra=[1])
    with pytest.raises(TypeError, match=r"extra\['acc'\] is a float64"):
        save_checkpoint(tmp_path / "x.pt", model, extra={"acc": np.float64(0.5)})
    with pytest.raises(TypeError, match="str keys"):
        save_checkpoint(tmp_path / "x.pt", model, extra={(1, 2): 0})
    save_checkpoint(tmp_path / "qat.pt", model, extra={"kind": "qat", "bits": [8, 4], "none": None})
    with pytest.raises(ValueError, match="prepare_qat"):
        load_checkpoint(tmp_path / "qat.pt")
    assert load_checkpoint(tmp_path / "qat.pt", _tiny())[1] == {"kind": "qat", "bits": [8, 4], "none": None}
    with pytest.raises(TypeError):
        load_checkpoint(good, "model")


def test_onecycle_shorter_than_its_warm_up_runs_at_the_constant_rate():
    # OneCycleLR divides by the length of its warm-up (0.25 * steps - 1): 4 steps used to crash
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,))
    for epochs in (1, 4, 5):
        result = train(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), x, y,
                       TrainConfig(epochs=epochs, batch_size=8), progress=False)
        assert len(result.history) == epochs
    assert _lr_schedule(TrainConfig(batch_size=8, lr=0.01), steps=4) == [0.01] * 4
    ramp = _lr_schedule(TrainConfig(batch_size=8, lr=0.01), steps=8)
    assert ramp[0] < 0.001 and max(ramp) == pytest.approx(0.01)


def _lr_schedule(cfg, steps):
    from qlearn.train import _scheduler

    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = _scheduler(opt, cfg, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs
