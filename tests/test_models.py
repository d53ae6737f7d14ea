"""qlearn.models: the three blocks, the two MobileNets, configs and bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlearn.models import (
    MODELS,
    ConvBNReLU,
    DepthwiseSeparable,
    InvertedResidual,
    MobileNet,
    build_model,
    count_parameters,
    make_divisible,
    mobilenet_v1,
    mobilenet_v2,
)

BLOCKS = (ConvBNReLU, DepthwiseSeparable, InvertedResidual)


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.5)


def test_conv_bn_relu_contract_and_forward():
    torch.manual_seed(0)
    block = ConvBNReLU(4, 6, 3, stride=2)
    assert isinstance(block.conv, nn.Conv2d) and block.conv.bias is None
    assert block.conv.padding == (1, 1) and block.conv.stride == (2, 2)
    assert isinstance(block.bn, nn.BatchNorm2d) and block.relu6 is True
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, 4, 9, 9) * 10
    y = block(x)
    assert y.shape == (2, 6, 5, 5)
    # oracle: BN written out from its definition, then the ReLU6 clamp
    z = nn.functional.conv2d(x, block.conv.weight, None, 2, 1)
    bn = block.bn
    shape = (1, -1, 1, 1)
    ref = (z - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    ref = ref * bn.weight.view(shape) + bn.bias.view(shape)
    torch.testing.assert_close(y, ref.clamp(0, 6))
    assert y.min() >= 0 and y.max() <= 6 and (y == 6).any() and (y == 0).any()
    linear = ConvBNReLU(4, 6, 1, relu6=False)
    _randomize_bn(linear)
    linear.eval()
    torch.testing.assert_close(linear(x), linear.bn(linear.conv(x)))
    assert (linear(x) < 0).any()


def test_depthwise_separable_structure():
    block = DepthwiseSeparable(8, 16, 2)
    assert block.dw.conv.groups == 8 and block.dw.conv.kernel_size == (3, 3) and block.dw.conv.stride == (2, 2)
    assert block.pw.conv.kernel_size == (1, 1) and block.pw.conv.out_channels == 16
    assert block.dw.relu6 and block.pw.relu6
    block.eval()
    x = torch.rand(1, 8, 8, 8)
    torch.testing.assert_close(block(x), block.pw(block.dw(x)))


@pytest.mark.parametrize("cin,cout,stride,expand,use_res,n_layers", [
    (8, 8, 1, 4, True, 3), (8, 16, 1, 4, False, 3), (8, 8, 2, 4, False, 3), (8, 8, 1, 1, True, 2),
])
def test_inverted_residual_structure(cin, cout, stride, expand, use_res, n_layers):
    torch.manual_seed(1)
    block = InvertedResidual(cin, cout, stride, expand)
    assert block.use_res is use_res and len(block.layers) == n_layers
    assert all(isinstance(m, ConvBNReLU) for m in block.layers)
    relus = [m.relu6 for m in block.layers]
    assert relus == [True] * (n_layers - 1) + [False]
    dw = block.layers[-2].conv
    assert dw.groups == dw.in_channels == cin * expand and dw.stride == (stride, stride)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, cin, 6, 6)
    expected = block.layers(x) + x if use_res else block.layers(x)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("builder", [mobilenet_v1, mobilenet_v2])
def test_mobilenet_contract(builder):
    torch.manual_seed(0)
    model = builder()
    assert isinstance(model, MobileNet)
    assert model.config == dict(arch=builder.__name__, width=0.5, input_size=32, in_channels=1, num_classes=10)
    assert isinstance(model.features[0], ConvBNReLU) and model.features[0].conv.stride == (2, 2)
    assert all(isinstance(b, BLOCKS) for b in model.features)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and isinstance(model.classifier, nn.Linear)
    leaves = {type(m) for m in model.modules() if not list(m.children())}
    assert leaves <= {nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.Linear}
    model.eval()
    x = torch.rand(3, 1, 32, 32)
    out = model(x)
    assert out.shape == (3, 10)
    ref = model.classifier(model.features(x).mean(dim=(2, 3)))  # oracle: pooling is a spatial mean
    torch.testing.assert_close(out, ref)
    assert 5_000 < count_parameters(model) < 100_000  # small enough for a 2-core CPU


def test_mobilenet_v2_has_skip_connections():
    blocks = [b for b in mobilenet_v2().features if isinstance(b, InvertedResidual)]
    assert any(b.use_res for b in blocks) and any(not b.use_res for b in blocks)
    assert any(len(b.layers) == 2 for b in blocks)  # an expand == 1 block


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    arch=st.sampled_from(sorted(MODELS)),
    width=st.sampled_from([0.25, 0.5, 1.0]),
    size=st.integers(8, 40),
    cin=st.integers(1, 3),
    classes=st.integers(2, 12),
)
def test_shapes_and_rebuild_from_config(arch, width, size, cin, classes):
    torch.manual_seed(0)
    model = MODELS[arch](classes, width=width, input_size=size, in_channels=cin).eval()
    assert model(torch.rand(2, cin, size, size)).shape == (2, classes)
    torch.manual_seed(0)
    again = build_model(model.config)
    assert again.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)  # same seed, same weights


@settings(max_examples=60, deadline=None, derandomize=True)
@given(value=st.floats(0.5, 4096), divisor=st.sampled_from([1, 4, 8, 16]))
def test_make_divisible(value, divisor):
    c = make_divisible(value, divisor)
    assert c % divisor == 0 and c >= divisor and c >= 0.9 * value and c <= value + divisor


def test_width_scales_channels():
    small, big = mobilenet_v1(width=0.25), mobilenet_v1(width=1.0)
    assert count_parameters(big) > 4 * count_parameters(small)
    assert small.features[0].conv.out_channels == 8 and big.features[0].conv.out_channels == 32


@pytest.mark.parametrize("kwargs,exc", [
    (dict(width=0), ValueError), (dict(width=-1.0), ValueError), (dict(width=5.0), ValueError),
    (dict(width="half"), TypeError), (dict(width=True), TypeError),
    (dict(input_size=4), ValueError), (dict(input_size=32.0), TypeError),
    (dict(in_channels=0), ValueError), (dict(num_classes=1), ValueError), (dict(num_classes="10"), TypeError),
])
@pytest.mark.parametrize("builder", [mobilenet_v1, mobilenet_v2])
def test_bad_model_arguments(builder, kwargs, exc):
    kwargs = dict(kwargs)  # the parametrized dict is shared between builders
    num_classes = kwargs.pop("num_classes", 10)
    with pytest.raises(exc):
        builder(num_classes, **kwargs)


@pytest.mark.parametrize("args,kwargs,exc", [
    ((4, 6, 2), {}, ValueError),  # even kernel
    ((4, 6, 3), dict(groups=4), ValueError),  # groups does not divide cout
    ((4, 6, 3), dict(relu6=1), TypeError),
    ((0, 6, 3), {}, ValueError),
    ((4, 6, 3), dict(stride=0), ValueError),
    ((4.0, 6, 3), {}, TypeError),
])
def test_bad_block_arguments(args, kwargs, exc):
    with pytest.raises(exc):
        ConvBNReLU(*args, **kwargs)


def test_bad_inverted_residual_and_forward():
    with pytest.raises(ValueError):
        InvertedResidual(8, 8, 1, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        mobilenet_v1()(torch.rand(1, 32, 32))


@pytest.mark.parametrize("config,exc", [
    ("mobilenet_v1", TypeError),
    (dict(arch="resnet", width=0.5, input_size=32, in_channels=1, num_classes=10), ValueError),
    (dict(arch="mobilenet_v1", width=0.5, input_size=32, in_channels=1), ValueError),
    (dict(arch="mobilenet_v1", width=0.5, input_size=32, in_channels=1, num_classes=10, depth=3), ValueError),
])
def test_bad_config(config, exc):
    with pytest.raises(exc):
        build_model(config)
