"""qlearn.bn_fold: folding equals conv -> BN (eval), agrees with PyTorch's fuser, refuses bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qlearn.bn_fold import fold_bn, fuse_conv_bn, fuse_model
from qlearn.models import ConvBNReLU, mobilenet_v1, mobilenet_v2


def _random_bn(c: int, seed: int, affine: bool = True) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, affine=affine, eps=1e-3)
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) * 4 + 0.01)
    if affine:
        bn.weight.data.copy_(torch.randn(c, generator=g))
        bn.bias.data.copy_(torch.randn(c, generator=g))
    return bn.eval()


vec = lambda n, lo, hi: hnp.arrays(np.float64, n, elements=st.floats(lo, hi))  # noqa: E731


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), c=st.integers(1, 6), k=st.integers(1, 5), n=st.integers(1, 4))
def test_fold_bn_equals_bn_of_linear_layer(data, c, k, n):
    """Oracle: y = BN(x w^T + b) written out in float64 (Eq. 40) vs x w_fold^T + b_fold (Eq. 43)."""
    w = data.draw(vec((c, k), -3, 3))
    b = data.draw(vec(c, -3, 3))
    gamma, beta, mean = data.draw(vec(c, -3, 3)), data.draw(vec(c, -3, 3)), data.draw(vec(c, -3, 3))
    var = data.draw(vec(c, 0, 10))
    x = data.draw(vec((n, k), -5, 5))
    eps = 1e-5
    ref = gamma * (x @ w.T + b - mean) / np.sqrt(var + eps) + beta
    wf, bf = fold_bn(w, b, gamma, beta, mean, var, eps)
    assert wf.dtype == np.float64 and wf.shape == w.shape and bf.shape == (c,)
    np.testing.assert_allclose(x @ wf.T + bf, ref, rtol=1e-9, atol=1e-6)
    # no bias is the same as a zero bias
    wf0, bf0 = fold_bn(w, None, gamma, beta, mean, var, eps)
    np.testing.assert_array_equal(wf0, wf)
    np.testing.assert_allclose(bf0, fold_bn(w, np.zeros(c), gamma, beta, mean, var, eps)[1])


def test_fold_bn_formula_on_known_numbers():
    w = np.array([[1.0, -2.0], [0.5, 4.0]])
    wf, bf = fold_bn(w, [1.0, 0.0], gamma=[2.0, 1.0], beta=[0.0, 3.0], mean=[1.0, 2.0], var=[4.0, 0.25], eps=0.0 + 1e-12)
    np.testing.assert_allclose(wf, [[1.0, -2.0], [1.0, 8.0]])
    np.testing.assert_allclose(bf, [0.0, 3.0 - 4.0])


def test_fold_bn_torch_is_differentiable_and_matches_numpy():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    beta, mean = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    var = torch.rand(4, generator=g, dtype=torch.float64)
    wf, bf = fold_bn(w, None, gamma, beta, mean, var, 1e-5)
    assert isinstance(wf, torch.Tensor) and wf.dtype == torch.float64
    (wf.sum() + bf.sum()).backward()
    assert w.grad is not None and gamma.grad is not None
    w_np, gamma_np, beta_np, mean_np, var_np = (t.detach().numpy() for t in (w, gamma, beta, mean, var))
    wn, bn_ = fold_bn(w_np, None, gamma_np, beta_np, mean_np, var_np, 1e-5)
    np.testing.assert_allclose(wf.detach().numpy(), wn, rtol=1e-12)
    np.testing.assert_allclose(bf.detach().numpy(), bn_, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cin,cout,k,stride,groups,bias,affine", [
    (3, 8, 3, 1, 1, False, True),
    (4, 6, 1, 1, 1, True, True),
    (6, 6, 3, 2, 6, False, True),  # depthwise
    (4, 8, 3, 2, 2, True, False),
])
def test_fuse_conv_bn_matches_eval_and_pytorch(cin, cout, k, stride, groups, bias, affine):
    torch.manual_seed(cin * 10 + cout)
    conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=bias).eval()
    bn = _random_bn(cout, seed=cout, affine=affine)
    snapshot = lambda: [v.clone() for m in (conv, bn) for v in m.state_dict().values()]  # noqa: E731
    before = snapshot()
    fused = fuse_conv_bn(conv, bn)
    x = torch.randn(3, cin, 9, 9)
    with torch.no_grad():
        ref = bn(conv(x))
        out = fused(x)
        torch_fused = fuse_conv_bn_eval(conv, bn)  # PyTorch's own fuser as an oracle
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.weight, torch_fused.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.bias, torch_fused.bias, rtol=1e-6, atol=1e-6)
    assert (fused.stride, fused.padding, fused.groups) == (conv.stride, conv.padding, conv.groups)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(), before))  # inputs untouched


def test_fuse_conv_bn_uses_running_stats_in_training_mode():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1, bias=False), _random_bn(3, 1)
    fused_eval = fuse_conv_bn(conv, bn)
    bn.train()
    fused_train = fuse_conv_bn(conv, bn)
    assert torch.equal(fused_eval.weight, fused_train.weight) and torch.equal(fused_eval.bias, fused_train.bias)


@pytest.mark.parametrize("builder", [mobilenet_v1, mobilenet_v2])
def test_fuse_model_same_function(builder):
    torch.manual_seed(0)
    model = builder(width=0.25, input_size=16)
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.BatchNorm2d):
            fresh = _random_bn(m.num_features, seed=i)
            m.load_state_dict(fresh.state_dict())
    model.train()
    fused = fuse_model(model)
    assert model.training  # original untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert all(m.conv.bias is not None for m in fused.modules() if isinstance(m, ConvBNReLU))
    x = torch.rand(4, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(eps=0.0), ValueError), (dict(eps=-1e-5), ValueError), (dict(eps="1e-5"), TypeError),
    (dict(eps=True), TypeError), (dict(var=[1.0, -1.0]), ValueError), (dict(gamma=[1.0]), ValueError),
    (dict(mean=[np.nan, 0.0]), ValueError), (dict(beta=["a", "b"]), TypeError),
    (dict(w=np.float64(3.0)), ValueError), (dict(b=[0.0, 0.0, 0.0]), ValueError),
    (dict(w=torch.ones(2, 2)), TypeError),  # a mix of torch and numpy
])
def test_fold_bn_bad_input(kwargs, exc):
    args = dict(w=np.ones((2, 2)), b=None, gamma=[1.0, 1.0], beta=[0.0, 0.0], mean=[0.0, 0.0], var=[1.0, 1.0], eps=1e-5)
    args.update(kwargs)
    with pytest.raises(exc):
        fold_bn(**args)


def test_fold_bn_torch_bad_input():
    t = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    with pytest.raises(ValueError):
        fold_bn(torch.ones(2, 2), None, t(1, 1), t(0, 0), t(0, 0), t(1, -1), 1e-5)
    with pytest.raises(TypeError):
        fold_bn(torch.ones(2, 2, dtype=torch.int64), None, t(1, 1), t(0, 0), t(0, 0), t(1, 1), 1e-5)


def test_fuse_bad_input():
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(TypeError):
        fuse_conv_bn(nn.Linear(2, 3), nn.BatchNorm2d(3))
    with pytest.raises(TypeError):
        fuse_conv_bn(conv, nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="channels"):
        fuse_conv_bn(conv, nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="running statistics"):
        fuse_conv_bn(conv, nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(TypeError):
        fuse_model("model")
    with pytest.raises(ValueError, match="ConvBNReLU"):
        fuse_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
