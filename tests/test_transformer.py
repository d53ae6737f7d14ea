"""qlearn.transformer and qlearn.lessons.transformer: the model against torch's own layers, the
quantization schemes against float64 references, and one linear layer on the integer kernel, bit for bit."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlearn.lessons import transformer as T
from qlearn.quantize import fake_quantize
from qlearn.ranges import weight_qparams
from qlearn.transformer import TinyViT, TransformerConfig, patches, transformer_model


@pytest.fixture(scope="module")
def tm():
    return transformer_model(progress=False)


# ---------------------------------------------------------------------------------- the model
def test_patches_are_the_row_major_2x2_blocks():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    p = patches(x, 2)
    assert p.shape == (1, 16, 4)
    assert p[0, 0].tolist() == [0, 1, 8, 9] and p[0, 1].tolist() == [2, 3, 10, 11] and p[0, 4].tolist() == [16, 17, 24, 25]
    assert torch.equal(F.unfold(x, 2, stride=2).transpose(1, 2), p)  # torch's im2col agrees


def test_block_matches_torch_multihead_attention_and_mlp():
    torch.manual_seed(0)
    model = TinyViT(TransformerConfig(), 10).double().eval()
    b = model.blocks[0]
    h = torch.randn(3, 17, 32, dtype=torch.float64)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(b.qkv.weight)
        mha.in_proj_bias.copy_(b.qkv.bias)
        mha.out_proj.weight.copy_(b.proj.weight)
        mha.out_proj.bias.copy_(b.proj.bias)
        x = b.ln1(h)
        h1 = h + mha(x, x, x, need_weights=False)[0]
        ref = h1 + b.fc2(F.gelu(b.fc1(b.ln2(h1))))
        got = b(h, lambda name, m, inp: m(inp))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_shipped_model_is_loaded_and_accurate(tm):
    assert tm.shipped and tm.path.name == f"{tm.config.key}.pt"
    assert tm.float_acc > 0.95
    assert tm.config.tokens == 16 and len(tm.linears) == 8


def test_hook_sees_every_block_linear_and_identity_hook_changes_nothing(tm):
    seen = []
    x = tm.data.x_test[:5]
    with torch.no_grad():
        ref = tm.model(x)
        out = tm.model(x, hook=lambda n, m, inp: (seen.append(n), m(inp))[1])
    assert seen == list(tm.linears) and torch.equal(out, ref)


@pytest.mark.parametrize("bad", [dict(dim=30, heads=4), dict(patch=3), dict(depth=0), dict(lr=2.0), dict(seed=-1)])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        TransformerConfig(**bad)


def test_transformer_model_refuses_bad_arguments():
    with pytest.raises(TypeError, match="config"):
        transformer_model("small")
    with pytest.raises(TypeError, match="retrain"):
        transformer_model(retrain=1)


def test_retrain_is_deterministic_and_cached(tmp_path):
    cfg = TransformerConfig(epochs=1)
    a = transformer_model(cfg, directory=tmp_path, progress=False, retrain=True)
    first = {k: v.clone() for k, v in a.model.state_dict().items()}
    b = transformer_model(cfg, directory=tmp_path / "again", progress=False, retrain=True)
    assert all(torch.equal(first[k], v) for k, v in b.model.state_dict().items())  # same seed, one thread
    assert (tmp_path / f"{cfg.key}.pt").is_file()


# ---------------------------------------------------------------------------------- the formulas
def test_smooth_scales_formula_and_exact_migration():
    rng = np.random.default_rng(0)
    xa, wa = rng.uniform(0.1, 50, 16), rng.uniform(0.01, 1, 16)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        s = T.smooth_scales(xa, wa, alpha)
        np.testing.assert_allclose(s, xa**alpha / wa ** (1 - alpha), rtol=1e-15)
    s = T.smooth_scales(xa, wa, 0.5)
    np.testing.assert_allclose(xa / s, wa * s)  # alpha 0.5: both sides end with the same max
    x, w = rng.normal(size=(7, 16)), rng.normal(size=(5, 16))
    np.testing.assert_allclose((x / s) @ (w * s).T, x @ w.T, rtol=1e-12)  # X W^T unchanged (Eq. 83)
    assert T.smooth_scales(np.array([0.0, 2.0]), np.array([1.0, 0.0]), 0.5).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("args", [([1.0], [1.0, 2.0], 0.5), ([-1.0], [1.0], 0.5), ([1.0], [1.0], 1.5), ([1.0], [1.0], True)])
def test_smooth_scales_refuses_bad_input(args):
    with pytest.raises(ValueError):
        T.smooth_scales(*args)


def test_group_fake_quant_matches_a_loop_over_groups():
    w = np.random.default_rng(1).normal(size=(6, 32))
    got = T.group_fake_quant(w, 4, 8)
    for o in range(6):
        for g in range(4):
            chunk = w[o, 8 * g: 8 * g + 8]
            s = np.abs(chunk).max() / 7  # symmetric narrow range at 4 bits: [-7, 7]
            np.testing.assert_allclose(got[o, 8 * g: 8 * g + 8], s * np.clip(np.rint(chunk / s), -7, 7), rtol=1e-12)
    np.testing.assert_array_equal(T.group_fake_quant(w, 4, 32), fake_quantize(w, weight_qparams(w, 4, per_channel=True)))
    with pytest.raises(ValueError):
        T.group_fake_quant(w, 4, 5)


def test_bits_per_weight():
    assert T.bits_per_weight(4, "group 8", (64, 32)) == 6.0
    assert T.bits_per_weight(4, "per-channel", (64, 32)) == 4.5
    assert T.bits_per_weight(8, "per-tensor", (2, 8)) == 9.0


def test_scheme_refuses_bad_values():
    for bad in (dict(w_gran="group"), dict(a_mode="per-token"), dict(alpha=2.0), dict(keep=-1), dict(w_bits=1)):
        with pytest.raises(ValueError):
            T.Scheme(**bad)


# ---------------------------------------------------------------------------------- the hook vs float64 references
def _reference_linear(x, w, b, scheme_bits, per_token):
    """Per-tensor symmetric weights, dynamic asymmetric activations, written out in torch float64."""
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    sw = wt.abs().max() / (2 ** (scheme_bits - 1) - 1)
    wq = torch.clamp(torch.round(wt / sw), -(2 ** (scheme_bits - 1) - 1), 2 ** (scheme_bits - 1) - 1) * sw
    dims = 1 if per_token else (0, 1)
    lo = torch.clamp(xt.amin(dim=dims, keepdim=True), max=0.0)
    hi = torch.clamp(xt.amax(dim=dims, keepdim=True), min=0.0)
    qmax = 2**scheme_bits - 1
    s = (hi - lo) / qmax
    z = torch.clamp(torch.round(-lo / s), 0, qmax)  # the nudged zero point (Eq. 6)
    xq = (torch.clamp(torch.round(xt / s) + z, 0, qmax) - z) * s
    return (xq @ wq.T + torch.from_numpy(b)).numpy()


@pytest.mark.parametrize("per_token", [False, True])
def test_quant_hook_matches_a_torch_reference(tm, per_token):
    name = "blocks.1.fc2"
    module = tm.linears[name]
    w, b = module.weight.detach().double().numpy(), module.bias.detach().double().numpy()
    x = T.layer_inputs(tm, "test")[name][:17]  # one image's 17 tokens: dynamic per-tensor = this image
    scheme = T.Scheme(6, "per-tensor", 6, "dynamic per-token" if per_token else "dynamic per-tensor")
    got = T.quant_hook(tm, scheme)(name, module, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _reference_linear(x, w, b, 6, per_token), rtol=1e-9, atol=1e-9)


def test_smoothing_and_decomposition_leave_a_float_model_unchanged(tm):
    name = "blocks.0.fc1"
    x = torch.from_numpy(T.layer_inputs(tm, "test")[name][:100])
    module = tm.linears[name]
    ref = torch.nn.functional.linear(x, module.weight.detach().double(), module.bias.detach().double())
    smooth = T.quant_hook(tm, T.Scheme(None, a_bits=None, alpha=0.5))(name, module, x)
    torch.testing.assert_close(smooth, ref, rtol=2e-3, atol=2e-3)  # only the fp16 activations round
    keep = T.quant_hook(tm, T.Scheme(None, a_bits=None, keep=3))(name, module, x)
    torch.testing.assert_close(keep, ref, rtol=2e-3, atol=2e-3)
    # with 8-bit everything, keeping the 3 widest channels in fp16 is no worse than quantizing them
    q0 = T.quant_hook(tm, T.Scheme(8, "per-tensor", 8))(name, module, x)
    q3 = T.quant_hook(tm, T.Scheme(8, "per-tensor", 8, keep=3))(name, module, x)
    assert float(((q3 - ref) ** 2).mean()) <= float(((q0 - ref) ** 2).mean())


def test_with_outlier_keeps_the_function_and_makes_an_outlier(tm):
    out = T.with_outlier(tm)
    with torch.no_grad():
        torch.testing.assert_close(out.model(tm.data.x_test[:50]), tm.model(tm.data.x_test[:50]), rtol=1e-4, atol=1e-4)
    a = T.channel_absmax(out)["blocks.0.fc1"]
    assert int(np.argmax(a)) == T.OUTLIER_CHANNEL and T.outlier_ratio(a) > 20
    with pytest.raises(ValueError, match="layer"):
        T.with_outlier(tm, layer="blocks.0.proj")


# ---------------------------------------------------------------------------------- the integer layer
def test_integer_layer_is_bit_exact_against_the_fake_quant_accumulator(tm):
    L = T.integer_layer(tm)
    assert L.codes.dtype == np.uint8 and L.w_q.dtype == np.int8 and L.bias_q.dtype == np.int32
    np.testing.assert_array_equal(L.codes, L.reference_codes)
    # an independent int64 oracle of the accumulator: torch integer matmul of the centred codes
    acc = (torch.from_numpy(L.x_q.astype(np.int64)) - L.x_qp.zero_point) @ torch.from_numpy(L.w_q.astype(np.int64)).T
    acc = acc + torch.from_numpy(L.bias_q.astype(np.int64))
    real = acc.double().numpy() * (L.x_qp.scale * L.w_qp.scale)
    m = L.m0 * 2.0 ** (L.shift.astype(np.float64) - 31)
    near = np.clip(np.rint(acc.double().numpy() * m) + L.out_qp.zero_point, 0, 255)
    assert np.abs(near - L.codes.astype(np.int64)).max() <= 1
    assert np.all(np.isfinite(real))
    ag = L.agreement
    assert ag.max_lsb_diff <= 1 and ag.exact_output_fraction > 0.99


def test_integer_layer_refuses_an_unknown_layer(tm):
    with pytest.raises(ValueError, match="name"):
        T.integer_layer(tm, "head")


def test_sweeps_have_their_shapes(tm):
    g, wo, sq = T.granularity_results(tm), T.weight_only_results(tm), T.smoothquant_results(tm)
    assert all(len(v) == len(T.GRAN_BITS) for k, v in g.items())
    assert all(len(v) == len(T.WEIGHT_ONLY_BITS) for k, v in wo.items())
    assert len(sq["acc | outlier | 4"]) == len(T.ALPHAS) and len(sq["keep acc | outlier | 4"]) == len(T.KEEPS)
    assert math.isclose(wo["bpw | group 8"][0], 10.0)


# ---------------------------------------------------------------------------------- shipping only the transformer
def test_build_transformer_keeps_every_other_shipped_file(tmp_path, monkeypatch):
    import json

    from qlearn import ship, shipped
    from qlearn.checkpoints import file_sha256

    out = tmp_path / "shipped"
    out.mkdir()
    (out / "lesson.pt").write_bytes(b"lesson weights")
    (out / "transformer-old.json").write_text("{}")
    entry = {"sha256": file_sha256(out / "lesson.pt"), "bytes": 14}
    old = {"format": shipped.FORMAT, "made_by": "python -m qlearn ship-models", "machine": {"cpu": "old"},
           "files": {"lesson.pt": entry, "transformer-old.json": {"sha256": file_sha256(out / "transformer-old.json"), "bytes": 2}}}
    (out / "MANIFEST.json").write_text(json.dumps(old))

    def fake(directory, progress):  # stands in for the half-minute training run
        (directory / "transformer-new.pt").write_bytes(b"new weights")
        return [directory / "transformer-new.pt"]

    monkeypatch.setattr(ship, "_transformer_results", fake)
    ship.build_transformer(out, progress=False)
    m = shipped.manifest(out)
    assert m["files"]["lesson.pt"] == entry and (out / "lesson.pt").read_bytes() == b"lesson weights"
    assert m["machine"] == {"cpu": "old"} and "transformer" in m["parts"]
    assert m["files"]["transformer-new.pt"] == {"sha256": file_sha256(out / "transformer-new.pt"), "bytes": 11}
    assert "transformer-old.json" not in m["files"] and not (out / "transformer-old.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "lesson.pt", "transformer-new.pt"]


# ---------------------------------------------------------------------------------- the explorers
def test_explorers_move_the_numbers_the_text_talks_about(tm):
    from qlearn.widgets.transformer import granularity_explorer, outlier_explorer, smoothquant_explorer

    g = granularity_explorer(tm)
    g.controls["bits"].value = 8
    key = "W8A8 accuracy (per-channel weights, dynamic per-token)"
    assert g.numbers[key] == T.granularity_results(tm)["acc | per-channel | dynamic per-token"][0]
    o = outlier_explorer(tm)
    assert o.numbers["largest / median"] < 2.5
    o.controls["injected"].value = True
    assert o.numbers["largest / median"] > 20 and o.numbers["widest channel"] == T.OUTLIER_CHANNEL
    s = smoothquant_explorer(tm)
    s.controls["alpha"].value = 0.4
    mid = s.numbers["SQNR (dB)"]
    s.controls["alpha"].value = 1.0
    assert s.numbers["SQNR (dB)"] < mid and s.numbers["SQNR (dB)"] == T.smoothquant_results(tm)["sqnr | outlier | 4"][-1]
    with pytest.raises(ValueError, match="bits"):
        smoothquant_explorer(tm, bits=5)
