"""Claims: every statement the prose of notebook 13 (deploy) makes about a computed result, checked.

The notebook renders its numbers from results (display(Markdown(...))); these tests check the
statements its fixed prose makes -- in the section introductions, the "Predict" answers, "Try this"
and the Summary -- against the same computations (``qlearn.deploy``) on the shipped quick run and the
whole digits test split. Every check holds on AVX2-only CPUs and on CPUs with AVX-512 VNNI / AMX: the
ONNX graphs use exact U8U8 kernels, PyTorch runs qlearn's integers on qnnpack (exact sums), and the
one statement that depends on the CPU (the default int8 session saturates without VNNI) is checked
in the form that applies to the CPU the test runs on.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from qlearn import deploy  # noqa: E402
from qlearn.agreement import code_agreement  # noqa: E402
from qlearn.integer_layers import QConv2d, QLinear  # noqa: E402
from qlearn.onnx_export import to_onnx, to_onnx_runtime  # noqa: E402
from qlearn.torch_int8 import cpu_int8_features, to_torch_int8  # noqa: E402


@pytest.fixture(scope="module")
def lesson():
    from qlearn.convert import quantize_input
    from qlearn.data import load_digits_data
    from qlearn.lessons.mobilenet_pipeline import pipeline_run

    run = pipeline_run(progress=False)
    data = load_digits_data(run.report["config"]["input_size"])
    x_q = quantize_input(run.qat8, data.x_test)
    eager = deploy.torch_eager_ptq(run.float_model, run.data.x_train[:256], engine="x86")
    cmp = deploy.three_engines(run, data.x_test, data.y_test, eager)
    return {"run": run, "data": data, "x_q": x_q, "eager": eager, "cmp": cmp}


# ------------------------------------------------------------------------- 1. PyTorch's eager flow
def test_eager_copy_computes_the_float_models_function(lesson):
    """Section 1: the model "is first rewritten" for eager mode -- the same function."""
    run, x = lesson["run"], lesson["data"].x_test[:64]
    with torch.no_grad():
        np.testing.assert_allclose(deploy.eager_copy(run.float_model)(x).numpy(), run.float_model.eval()(x).numpy(),
                                   rtol=0, atol=1e-5)


def test_eager_flow_qconfig_histogram_observer_and_7_bit_activations_on_x86(lesson):
    """Section 1 and "Why 7-bit activations": HistogramObserver with reduce_range (codes <= 127) on
    activations, per-channel symmetric int8 weights; a few hundred calibration images; one fuse per conv."""
    eager, run = lesson["eager"], lesson["run"]
    assert eager.engine == "x86" and eager.act_qmax == 127
    assert eager.qconfig["activation"].startswith("HistogramObserver(reduce_range=True")
    assert "PerChannelMinMaxObserver" in eager.qconfig["weight"] and "per_channel_symmetric" in eager.qconfig["weight"]
    from qlearn.models import ConvBNReLU

    n_convs = sum(isinstance(m, ConvBNReLU) for m in run.float_model.modules())
    assert f"fuse_modules: {n_convs} conv + BN pairs" in eager.steps
    assert "calibrate: 256 images" in eager.steps
    assert 2 * 255 * 127 > 32767 >= 2 * eager.act_qmax * 127  # Eq. 75, as the cell states


def test_try_this_3_qnnpack_qconfig_has_8_bit_activations_and_per_tensor_weights(lesson):
    q = deploy.torch_eager_ptq(lesson["run"].float_model, lesson["run"].data.x_train[:64], engine="qnnpack")
    assert q.act_qmax == 255 and "per_tensor" in q.qconfig["weight"]


# ------------------------------------------------------------------------------- 3. the export
def test_export_operators_and_qlinearconv_inputs(lesson):
    """Section 3: QLinearConv per conv and for the classifier (1x1), QLinearAdd per skip add, the pool
    as integer operations; Try this 2: a QLinearConv has nine inputs, the last the int32 bias."""
    im = lesson["run"].integer_model
    proto = to_onnx(im)
    ops = [n.op_type for n in proto.graph.node]
    kinds = [layer.describe()["kind"] for layer in im.layers]
    assert ops.count("QLinearConv") == sum(k in ("conv", "depthwise conv", "linear") for k in kinds)
    assert ops.count("QLinearAdd") == kinds.count("add")
    assert {"ReduceSum", "Div", "Cast"} <= set(ops) and "QLinearGlobalAveragePool" not in ops
    conv = next(n for n in proto.graph.node if n.op_type == "QLinearConv")
    assert len(conv.input) == 9
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(inits[conv.input[8]], im.layers[0].bias_q)


def test_zero_points_three_ways(lesson):
    """"Zero points, three ways": PyTorch holds the same int8 codes with zero point 0; the file uint8 + 128."""
    im = lesson["run"].integer_model
    first = im.layers[0]
    tm = to_torch_int8(im)
    mod = tm.ops[first.name.replace(".", "_")]
    mod = mod[0] if isinstance(mod, torch.nn.Sequential) else mod
    w = mod.weight()
    np.testing.assert_array_equal(w.int_repr().numpy(), first.w_q)
    assert torch.all(w.q_per_channel_zero_points() == 0)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in to_onnx(im).graph.initializer}
    assert np.all(inits[f"{first.name}__w_zp"] == 128)


def test_session_choice_and_try_this_1(lesson):
    """uint8 weights and int8 + x64quantprecision agree code for code (exact sums on every x86 CPU); the
    default int8 session is tens of LSB off on a CPU without VNNI (and exact with VNNI)."""
    im, x_q = lesson["run"].integer_model, lesson["x_q"]
    a = to_onnx_runtime(im, weights="uint8").run_codes(x_q)
    b = to_onnx_runtime(im, weights="int8", x64_quant_precision=True).run_codes(x_q)
    np.testing.assert_array_equal(a, b)
    c = to_onnx_runtime(im, weights="int8", x64_quant_precision=False).run_codes(x_q)
    cpu = cpu_int8_features()
    if cpu["avx512_vnni"] or cpu["avx_vnni"] or cpu["amx_int8"]:  # ONNX Runtime's U8S8 kernels: vpdpbusd / AMX
        np.testing.assert_array_equal(c, a)
    else:
        assert code_agreement(im.run(x_q), c).max_lsb_diff >= 10


# ------------------------------------------------------------------------- 4. three engines
def test_three_engines_predict_answer_and_summary(lesson):
    """Each runtime within 1 LSB per layer; PyTorch on qnnpack; end to end about half the codes identical,
    several LSB at most, and the class changes only on near-ties (qlearn's top two within the max diff)."""
    cmp, im, x_q = lesson["cmp"], lesson["run"].integer_model, lesson["x_q"]
    assert len(im.layers) == 28 and cmp.n == 540
    assert cmp.torch_engine == "qnnpack"
    for engine, rows in cmp.per_layer.items():
        assert max(r.max_lsb_diff for _, r in rows) <= 1, engine
    ours = im.run(x_q).astype(np.int64)
    theirs = {"ONNX Runtime": to_onnx_runtime(im).run_codes(x_q), "PyTorch int8": to_torch_int8(im).run_codes(x_q)}
    for engine, a in cmp.vs_qlearn.items():
        assert 0.3 <= a.exact_output_fraction <= 0.7 and 3 <= a.max_lsb_diff <= 8, (engine, a)
        assert a.top1_agreement >= 0.98
        t = theirs[engine].astype(np.int64)
        for i in np.nonzero(ours.argmax(1) != t.argmax(1))[0]:
            top2 = np.sort(ours[i])[-2:]
            assert top2[1] - top2[0] <= a.max_lsb_diff, (engine, i)
    assert cmp.accuracy["PyTorch eager flow"] > 0.9  # its own integers, still a working classifier


# ------------------------------------------------------------------------------ 5. rounding
@pytest.mark.parametrize("name", ["features.0", "features.8", "features.3.layers.1"])
def test_fixed_point_and_float_requantization_part_only_near_half_way(lesson, name):
    im = lesson["run"].integer_model
    x = im.layer_outputs(lesson["x_q"][:200])[im[name].inputs[0]]
    rq = deploy.requant_rounding(im[name], x)
    assert rq["max_diff"] <= 1 and rq["differ"] == rq["differ_near_half"]
    assert rq["differ"] < 0.01 * rq["codes"]


def test_bit_exact_fixed_point_export_matches_qlearn_code_for_code(lesson):
    """Section 5, "A bit-exact export": ConvInteger and integer ops only, no float; on all 540 images every
    output code identical (0 LSB, top-1 identical) and every layer alone identical; the QLinear export not."""
    run, data = lesson["run"], lesson["data"]
    exact = deploy.exact_export(run, data.x_test)
    e2e = exact["end_to_end"]
    assert e2e.n == 540 and e2e.exact_output_fraction == 1.0 and e2e.max_lsb_diff == 0 and e2e.top1_agreement == 1.0
    assert len(exact["per_layer"]) == 28 and max(a.max_lsb_diff for _, a in exact["per_layer"]) == 0
    ops = exact["ops"]
    assert ops["ConvInteger"] == sum(isinstance(l, (QConv2d, QLinear)) for l in run.integer_model.layers)
    for op in ("Div", "Where", "Sign", "Abs", "Clip", "Cast"):  # the operators the markdown names
        assert ops.get(op, 0) > 0, op
    assert not set(ops) & {"QLinearConv", "QLinearAdd", "DequantizeLinear", "QuantizeLinear"}
    floats = [t.name for t in exact["runtime"].proto.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)]
    assert floats == []  # "No float anywhere in the graph"
    assert lesson["cmp"].vs_qlearn["ONNX Runtime"].exact_output_fraction < 1.0  # the QLinear export differs
    with pytest.raises(ValueError, match="fixedpoint"):
        deploy.exact_export(run, data.x_test[:4], onnx_model=to_onnx_runtime(run.integer_model))


def test_pool_ties_and_how_each_runtime_rounds_them(lesson):
    """"its mean is often a half"; Eq. 35 rounds away, ONNX Runtime's QLinearGlobalAveragePool and
    PyTorch's pool round half to even (oracle: numpy's rint of the exact mean)."""
    im = lesson["run"].integer_model
    outs = im.layer_outputs(lesson["x_q"])
    pool_in = outs[im["pool"].inputs[0]]
    ties = deploy.pool_ties(pool_in)
    assert ties["hw"] == 4 and ties["ties"] > 0.05 * ties["means"] and ties["differ"] > 0
    even = np.rint(pool_in.astype(np.int64).sum(axis=(2, 3)) / ties["hw"]).astype(np.uint8)  # half to even
    np.testing.assert_array_equal(to_onnx_runtime(im, pool="qlinear").run_layer("pool", pool_in), even)
    np.testing.assert_array_equal(to_torch_int8(im).run_layer("pool", pool_in), even)
    np.testing.assert_array_equal(to_onnx_runtime(im).run_layer("pool", pool_in), outs["pool"])


# ------------------------------------------------------------------------------ 6. artefacts
def test_artefact_sizes_fixed_costs_dominate_a_tiny_model(lesson, tmp_path):
    run = lesson["run"]
    files = deploy.artefacts(run, lesson["eager"], tmp_path)
    n_params = sum(p.numel() for p in run.float_model.parameters())
    for name, f in files.items():
        assert f["bytes"] > 0, name
    onnx_bytes = files["ONNX (qlearn.onnx_export)"]["bytes"]
    assert onnx_bytes > 2 * n_params  # "fixed costs ... a large part of each file"
    assert onnx_bytes < files["float (PyTorch state_dict)"]["bytes"]
    onnx.checker.check_model(files["ONNX (qlearn.onnx_export)"]["path"])
    onnx.checker.check_model(files["ONNX fixed point (bit-exact)"]["path"])


# ------------------------------------------------------------------------- the layer explorer
def test_layer_explorer_try_this(lesson):
    """"Layer by layer" Try this: convs alone within 1 LSB, both runtimes identical to each other there;
    adds alone exact; the pool alone exact on ONNX and 1 LSB off on PyTorch; end to end the identical
    share falls with depth and the two runtimes' curves stay within a few points."""
    from qlearn.widgets.deploy import engines_explorer

    run = lesson["run"]
    rows = deploy.layer_codes(run, lesson["data"].x_test[:200])
    assert len(rows) == 28
    for r in rows:
        onnx_alone, torch_alone = r.alone["ONNX Runtime"], r.alone["PyTorch int8"]
        if r.kind in ("conv", "depthwise conv", "linear"):
            assert np.abs(onnx_alone - r.ours).max() <= 1 and np.array_equal(onnx_alone, torch_alone), r.name
            assert np.mean(onnx_alone == r.ours) >= 0.99, r.name
        if r.kind == "add":
            assert np.array_equal(onnx_alone, r.ours) and np.array_equal(torch_alone, r.ours), r.name
        if r.kind == "global avg pool":
            assert np.array_equal(onnx_alone, r.ours)
            d = np.abs(torch_alone - r.ours)
            assert d.max() == 1 and 0.01 < d.mean() < 0.5
    share = {e: [float(np.mean(r.end_to_end[e] == r.ours)) for r in rows] for e in rows[0].alone}
    for e, s in share.items():
        assert s[0] > 0.99 and s[-1] < 0.7, e
    assert max(abs(a - b) for a, b in zip(share["ONNX Runtime"], share["PyTorch int8"])) < 0.03
    ex = engines_explorer(rows, layer="pool")
    assert ex.numbers["ONNX Runtime: identical codes"] == 1.0
    ex.controls["mode"].value = "end to end"
    assert ex.numbers["ONNX Runtime: identical codes"] < 1.0
    with pytest.raises(TypeError, match="layer_codes"):
        engines_explorer([1, 2])
    with pytest.raises(ValueError, match="mode"):
        engines_explorer(rows, mode="both")
    with pytest.raises(ValueError, match="no layer"):
        engines_explorer(rows, layer="nope")
