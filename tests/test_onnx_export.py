"""qlearn.onnx_export: qlearn's integers in an ONNX graph, run by ONNX Runtime, against qlearn's engine.

Oracles: qlearn's integer engine (qlearn.integer, bit-exact with TFLite), exact int32 accumulators
(``conv2d_accumulator``) followed by ONNX Runtime's documented float32 requantization, and the
shipped MobileNet on the digits test split. Every assertion holds on AVX2-only CPUs and on CPUs
with AVX-512 VNNI / AMX: the exported graphs store uint8 weights (U8U8 kernels, exact sums on every
x86 CPU), and the int8-weight variant is only run with ``session.x64quantprecision=1``, which
makes ONNX Runtime's non-VNNI U8S8 kernels exact too (VNNI's are exact anyway).
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qlearn import onnx_export as oe  # noqa: E402
from qlearn import onnx_fixedpoint as fx  # noqa: E402
from qlearn import onnx_graph as og  # noqa: E402
from qlearn.agreement import code_agreement  # noqa: E402
from qlearn.fixedpoint import multiply_by_quantized_multiplier  # noqa: E402
from qlearn.integer import avg_pool, conv2d_accumulator  # noqa: E402
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear, QRequantize  # noqa: E402
from qlearn.integer_model import IntegerModel  # noqa: E402
from qlearn.layer_integers import activation_range, quantize_bias, requant_multiplier  # noqa: E402
from qlearn.qparams import QParams  # noqa: E402


def _conv(rng, name, src, cin, cout, in_s, in_zp, out_s, out_zp, *, k=3, stride=1, padding=1, groups=1, act=None):
    w = rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8)  # full-range weights
    ws = rng.uniform(0.004, 0.02, cout)  # (Cout,) per-channel scales
    m0, sh = requant_multiplier(in_s, ws, out_s)
    lo, hi = activation_range(act, out_s, out_zp)
    bias = quantize_bias(rng.normal(0, 0.5, cout), in_s, ws)
    return QConv2d(name, (src,), w, bias, in_zp, out_zp, m0, sh, stride=stride, padding=padding, groups=groups,
                   act_min=lo, act_max=hi, in_scale=in_s, w_scale=ws, out_scale=out_s)


def _small_model(seed: int = 0) -> IntegerModel:
    """conv (asymmetric pads, stride 2, ReLU6) -> depthwise ("same") -> 1x1 conv -> add -> pool -> linear."""
    rng = np.random.default_rng(seed)
    s_in = 1 / 255
    layers = [
        _conv(rng, "c1", "input", 3, 8, s_in, 0, 0.05, 0, stride=2, padding=(1, 0, 2, 1), act="relu6"),
        _conv(rng, "dw", "c1", 8, 8, 0.05, 0, 0.04, 3, padding="same", groups=8, act="relu"),
        _conv(rng, "pw", "dw", 8, 8, 0.04, 3, 0.06, 120),
    ]
    layers.append(QAdd.from_scales("add", ("c1", "pw"), 0.05, 0, 0.06, 120, 0.1, 60))
    layers.append(QGlobalAvgPool("pool", ("add",), scale=0.1, zero_point=60))
    wl = rng.integers(-127, 128, (5, 8)).astype(np.int8)
    swl = rng.uniform(0.005, 0.02, 5)
    m0, sh = requant_multiplier(0.1, swl, 0.2)
    layers.append(QLinear("fc", ("pool",), wl, rng.integers(-200, 200, 5).astype(np.int32), 60, 128, m0, sh,
                          in_scale=0.1, w_scale=swl, out_scale=0.2))
    return IntegerModel(layers, QParams(s_in, 0, 0, 255), QParams(0.2, 128, 0, 255), input_shape=(1, 3, 9, 10))


def _codes(seed: int, n: int = 6, shape=(3, 9, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)  # full-range uint8


def _ort_conv_oracle(layer: QConv2d, x: np.ndarray) -> np.ndarray:
    """Exact int32 accumulator (qlearn, Eq. 25), then ONNX Runtime's requantization: float32(acc) times the
    float32 scale S1 S2 / S3, rounded half to even, plus Z3, clamped (the ONNX QLinearConv definition)."""
    acc = conv2d_accumulator(x, layer.in_zp, layer.w_q, layer.bias_q, stride=layer.stride, padding=layer.padding,
                             groups=layer.groups)  # (N, Cout, Ho, Wo) int64 holding int32
    ws = np.broadcast_to(np.asarray(layer.w_scale, np.float32), (acc.shape[1],))
    scale = (np.float32(layer.in_scale) * ws / np.float32(layer.out_scale)).astype(np.float32)  # (Cout,) float32
    y = np.rint(acc.astype(np.float32) * scale[None, :, None, None]).astype(np.int64) + layer.out_zp
    return np.clip(np.clip(y, 0, 255), layer.act_min, layer.act_max).astype(np.uint8)


# ------------------------------------------------------------------------------------- the graph
def test_export_passes_the_checker_and_records_qlearn_and_its_settings():
    im = _small_model()
    proto = oe.to_onnx(im)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["qlearn_version"] and meta["qlearn.weights"] == "uint8" and meta["qlearn.pool"] == "exact"
    assert float(meta["qlearn.input_scale"]) == im.input_qparams.scale
    assert int(meta["qlearn.output_zero_point"]) == 128 and meta["qlearn.layers"] == "6"
    assert proto.producer_name == "qlearn"
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QLinearConv") == 4 and "QLinearAdd" in ops  # three convs and the classifier as a 1x1 conv
    assert [o.name for o in proto.graph.output] == ["fc"]
    assert [o.name for o in oe.to_onnx(im, all_outputs=True).graph.output] == [l.name for l in im.layers]


@pytest.mark.parametrize("weights", oe.WEIGHT_FORMATS)
def test_initializers_are_qlearns_integers_not_requantized(weights):
    im = _small_model(1)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in oe.to_onnx(im, weights=weights).graph.initializer}
    for layer in im.layers:
        if isinstance(layer, (QConv2d, QLinear)):
            w, zp = inits[f"{layer.name}__w"], inits[f"{layer.name}__w_zp"]
            w_q = np.asarray(layer.w_q).reshape(w.shape)
            if weights == "uint8":  # the same reals: S2 (w + 128 - 128) = S2 w
                assert w.dtype == np.uint8 and np.all(zp == 128)
            else:
                assert w.dtype == np.int8 and np.all(zp == 0)
            np.testing.assert_array_equal(w.astype(np.int64) - zp.astype(np.int64).reshape(-1, 1, 1, 1), w_q)
            np.testing.assert_array_equal(inits[f"{layer.name}__bias"], layer.bias_q)
            assert inits[f"{layer.name}__bias"].dtype == np.int32
            np.testing.assert_array_equal(inits[f"{layer.name}__w_scale"], np.float32(layer.w_scale))
            assert int(inits[f"{layer.name}__x_zp"]) == layer.in_zp and int(inits[f"{layer.name}__y_zp"]) == layer.out_zp


def test_save_onnx_round_trip(tmp_path):
    im = _small_model(2)
    path = oe.save_onnx(oe.to_onnx(im), tmp_path / "sub" / "model.onnx")
    back = onnx.load(str(path))
    onnx.checker.check_model(back)
    sess = ort.InferenceSession(str(path), oe.session_options(), providers=["CPUExecutionProvider"])
    x = _codes(3)
    np.testing.assert_array_equal(sess.run(None, {"input": x})[0], oe.to_onnx_runtime(im).run_codes(x))


# ------------------------------------------------------------------------------- against oracles
@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_each_conv_is_exact_sums_then_float32_requantization(seed):
    """Full-range codes and weights, where int16 pair sums would saturate (Eq. 75): ONNX Runtime's conv
    output is exactly the exact accumulator requantized in float32 -- no saturation on any x86 CPU."""
    im = _small_model(seed)
    rt = oe.to_onnx_runtime(im)
    ours = im.layer_outputs(_codes(seed))
    for layer in im.layers:
        if isinstance(layer, QConv2d):
            x = ours[layer.inputs[0]]
            np.testing.assert_array_equal(rt.run_layer(layer.name, x), _ort_conv_oracle(layer, x), err_msg=layer.name)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_every_layer_within_one_lsb_of_qlearn(seed):
    """Oracle: qlearn's engine. Fed qlearn's own input codes, each layer differs by at most 1 LSB
    (float vs fixed-point requantization, Eq. 31) and the exact pool not at all."""
    im = _small_model(seed)
    rt = oe.to_onnx_runtime(im)
    _, rows = oe.compare(im, rt, _codes(seed + 1, n=8))
    for row in rows:
        assert row.alone.max_lsb_diff <= 1, row
        if row.kind == "global avg pool":
            assert row.alone.max_lsb_diff == 0, row


def test_run_layer_takes_any_batch_size():
    im = _small_model(4)
    rt = oe.to_onnx_runtime(im)
    for n in (5, 2, 7):
        x = _codes(n, n=n)
        ours = im.layer_outputs(x)
        for layer in im.layers:
            got = rt.run_layer(layer.name, *(ours[i] for i in layer.inputs))
            assert got.shape == ours[layer.name].shape, (n, layer.name)


def test_int8_weights_with_x64_precision_equal_the_uint8_graph():
    """Both are exact int32 sums, on AVX2 (the session option) and on VNNI / AMX (exact anyway)."""
    im = _small_model(5)
    x = _codes(6, n=16)
    a = oe.to_onnx_runtime(im, weights="uint8").layer_outputs(x)
    b = oe.to_onnx_runtime(im, weights="int8", x64_quant_precision=True).layer_outputs(x)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(hw=st.sampled_from([(1, 1), (2, 2), (2, 3), (4, 4), (7, 7)]), seed=st.integers(0, 10_000),
       clamp=st.sampled_from([(0, 255), (10, 200)]))
def test_pool_exact_equals_eq35_and_qlinear_differs_only_at_ties(hw, seed, clamp):
    x = np.random.default_rng(seed).integers(0, 256, (3, 5, *hw)).astype(np.uint8)
    layer = QGlobalAvgPool("pool", ("input",), act_min=clamp[0], act_max=clamp[1], scale=0.1, zero_point=7)
    want = avg_pool(x, act_min=clamp[0], act_max=clamp[1])  # Eq. 35: ties away from zero
    im = IntegerModel([layer], QParams(0.1, 7, 0, 255), QParams(0.1, 7, 0, 255), input_shape=x.shape)
    exact = oe.to_onnx_runtime(im, pool="exact").run_codes(x)
    np.testing.assert_array_equal(exact, want)
    q = oe.to_onnx_runtime(im, pool="qlinear").run_codes(x)
    diff = np.abs(q.astype(np.int64) - want)
    assert diff.max() <= 1
    tie = (x.astype(np.int64).sum(axis=(2, 3)) * 2) % (hw[0] * hw[1]) == 0  # 2A / HW an integer: mean k or k + 1/2
    assert np.all(diff[~tie] == 0)


def test_requantize_and_linear_on_a_2d_input():
    rng = np.random.default_rng(0)
    m0, sh = requant_multiplier(0.1, 1.0, 0.07)
    w = rng.integers(-127, 128, (4, 6)).astype(np.int8)
    lm0, lsh = requant_multiplier(0.07, 0.01, 0.3)
    layers = [QRequantize("rq", ("input",), 30, int(m0), int(sh), 100, act_min=20, in_scale=0.1, out_scale=0.07),
              QLinear("fc", ("rq",), w, np.zeros(4, np.int32), 100, 128, lm0, lsh, in_scale=0.07, w_scale=0.01,
                      out_scale=0.3)]
    im = IntegerModel(layers, QParams(0.1, 30, 0, 255), QParams(0.3, 128, 0, 255), input_shape=(1, 6))
    x = rng.integers(0, 256, (32, 6)).astype(np.uint8)
    rt = oe.to_onnx_runtime(im)
    ours = im.layer_outputs(x)
    theirs = rt.session.run(None, {"input": x})[0]
    assert theirs.shape == (32, 4)
    assert code_agreement(ours["fc"], theirs).max_lsb_diff <= 2
    rq = rt.run_layer("rq", x)
    assert np.abs(rq.astype(int) - ours["rq"]).max() <= 1 and rq.min() >= 20


# ----------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def shipped():
    from qlearn.convert import quantize_input
    from qlearn.data import load_digits_data
    from qlearn.lessons.mobilenet_pipeline import pipeline_run

    run = pipeline_run(progress=False)
    size = run.report["config"]["input_size"]
    data = load_digits_data(size)  # the whole digits test split (540 images)
    return run.integer_model, quantize_input(run.qat8, data.x_test), data.y_test.numpy()


def test_shipped_mobilenet_per_layer_and_end_to_end(shipped):
    im, x_q, y = shipped
    rt = oe.to_onnx_runtime(im)
    out, rows = oe.compare(im, rt, x_q)
    assert len(rows) == len(im.layers)
    for row in rows:  # each layer alone: its own rounding only
        assert row.alone.max_lsb_diff <= 1, row
        assert row.alone.exact_output_fraction >= 0.99, row
    # End to end the 1-LSB roundings compound through 28 layers; the class is the same except on
    # near-ties, where qlearn's two largest logits lie within the largest code difference.
    assert out.n == 540 and out.top1_agreement >= 0.99 and out.max_lsb_diff <= 8
    ours, theirs = im.run(x_q).astype(np.int64), rt.run_codes(x_q).astype(np.int64)
    for i in np.nonzero(ours.argmax(1) != theirs.argmax(1))[0]:
        top2 = np.sort(ours[i])[-2:]
        assert top2[1] - top2[0] <= out.max_lsb_diff, (i, ours[i], theirs[i])
    acc_ours, acc_theirs = (ours.argmax(1) == y).mean(), (theirs.argmax(1) == y).mean()
    assert abs(acc_ours - acc_theirs) <= 0.01


# ------------------------------------------------------------------- requant="fixedpoint": bit-exact
def _mbqm_session(m0: np.ndarray, shift: np.ndarray):
    """A graph computing only qlearn.onnx_fixedpoint.mbqm on an (N, C) int64 input, per-channel (C,) constants."""
    from onnx import helper as h

    g = og.Graph(onnx)
    fx.mbqm(g, "x", m0, shift, "y", shape=(-1,))
    i64 = onnx.TensorProto.INT64
    graph = h.make_graph(g.nodes, "mbqm", [h.make_tensor_value_info("x", i64, ["N", len(m0)])],
                         [h.make_tensor_value_info("y", i64, ["N", len(m0)])], initializer=g.inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", oe.OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


_I32 = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(m0=st.lists(st.integers(2**30, 2**31 - 1), min_size=1, max_size=4),
       shifts=st.lists(st.integers(-31, 8), min_size=4, max_size=4),
       xs=st.lists(st.one_of(_I32, st.sampled_from([-(2**31), 2**31 - 1, 0, -1, 1, -(2**30), 2**30])),
                   min_size=1, max_size=24))
def test_fixedpoint_subgraph_equals_multiply_by_quantized_multiplier(m0, shifts, xs):
    """Oracle: qlearn.fixedpoint.multiply_by_quantized_multiplier (gemmlowp/TFLite, int64 numpy). Random int32
    accumulators incl. the extremes and negatives, M0 in [2^30, 2^31), shift in [-31, 8] (quantize_multiplier's
    range for conv / add multipliers; x 2^shift kept inside int32 as qlearn requires)."""
    c = len(m0)
    m = np.asarray(m0, np.int64)
    sh = np.asarray(shifts[:c], np.int64)
    x = np.tile(np.asarray(xs, np.int64)[:, None], (1, c))  # (N, C): every value through every channel
    x >>= np.maximum(sh, 0)  # x 2^left must fit int32 (qlearn raises otherwise): the extremes that do
    want = multiply_by_quantized_multiplier(x, m, sh)
    got = _mbqm_session(m, sh).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want.astype(np.int64))


def test_onnxruntime_integer_div_truncates_toward_zero():
    """The integer semantics SRDHM's Div by 2^31 relies on (module docstring of onnx_fixedpoint): C's truncation."""
    from onnx import helper as h

    i64 = onnx.TensorProto.INT64
    graph = h.make_graph([h.make_node("Div", ["x", "p"], ["d"])], "g", [h.make_tensor_value_info("x", i64, [6])],
                         [h.make_tensor_value_info("d", i64, [6])],
                         initializer=[onnx.numpy_helper.from_array(np.asarray(4, np.int64), "p")])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", oe.OPSET)])
    proto.ir_version = 8
    x = np.asarray([-7, 7, -8, -1, -(2**62), 2**62 - 1], np.int64)
    (d,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(d, [-1, 1, -2, 0, -(2**60), 2**60 - 1])  # toward zero, as C (numpy floors)


def test_fixedpoint_export_is_integer_only_and_recorded():
    im = _small_model(3)
    proto = oe.to_onnx(im, requant="fixedpoint")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["qlearn.requant"] == "fixedpoint" and {p.key: p.value for p in oe.to_onnx(im).metadata_props}[
        "qlearn.requant"] == "float"
    ops = {n.op_type for n in proto.graph.node}
    assert "ConvInteger" in ops and not ops & {"QLinearConv", "QLinearAdd", "DequantizeLinear", "QuantizeLinear"}
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    floats = [t.name for t in proto.graph.initializer if t.data_type in float_types]
    assert floats == []  # no float anywhere: qlearn's integers only
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for layer in im.layers:
        if isinstance(layer, (QConv2d, QLinear)):  # qlearn's integers, not re-quantized
            w = inits[f"{layer.name}__w"]
            assert w.dtype == np.uint8 and int(inits[f"{layer.name}__w_zp"]) == 128
            np.testing.assert_array_equal(w.astype(np.int64) - 128, np.asarray(layer.w_q).reshape(w.shape))
            np.testing.assert_array_equal(inits[f"{layer.name}__bias"].ravel(), layer.bias_q)
            np.testing.assert_array_equal(inits[f"{layer.name}__mbqm__m0"].ravel(), layer.m0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_fixedpoint_every_layer_and_end_to_end_identical(seed):
    """Oracle: qlearn's engine. Full-range codes and weights; every layer alone and end to end: 0 LSB."""
    im = _small_model(seed)
    out, rows = oe.compare(im, oe.to_onnx_runtime(im, requant="fixedpoint"), _codes(seed + 1, n=8))
    assert out.max_lsb_diff == 0 and out.exact_output_fraction == 1.0
    for row in rows:
        assert row.alone.max_lsb_diff == 0 and row.end_to_end.max_lsb_diff == 0, row


def test_fixedpoint_requantize_and_linear_on_a_2d_input():
    rng = np.random.default_rng(1)
    m0, sh = requant_multiplier(0.1, 1.0, 0.07)
    w = rng.integers(-127, 128, (4, 6)).astype(np.int8)
    lm0, lsh = requant_multiplier(0.07, rng.uniform(0.005, 0.02, 4), 0.3)
    layers = [QRequantize("rq", ("input",), 30, int(m0), int(sh), 100, act_min=20, in_scale=0.1, out_scale=0.07),
              QLinear("fc", ("rq",), w, rng.integers(-500, 500, 4).astype(np.int32), 100, 128, lm0, lsh,
                      in_scale=0.07, w_scale=0.01, out_scale=0.3)]
    im = IntegerModel(layers, QParams(0.1, 30, 0, 255), QParams(0.3, 128, 0, 255), input_shape=(1, 6))
    x = rng.integers(0, 256, (64, 6)).astype(np.uint8)
    rt = oe.to_onnx_runtime(im, requant="fixedpoint")
    ours = im.layer_outputs(x)
    np.testing.assert_array_equal(rt.session.run(None, {"input": x})[0], ours["fc"])
    np.testing.assert_array_equal(rt.run_layer("rq", x), ours["rq"])


def test_shipped_mobilenet_fixedpoint_is_bit_exact(shipped):
    """Issue 18: the fixed-point export gives qlearn's codes on all 540 test images, every layer alone too."""
    im, x_q, y = shipped
    out, rows = oe.compare(im, oe.to_onnx_runtime(im, requant="fixedpoint"), x_q)
    assert out.n == 540 and out.exact_output_fraction == 1.0 and out.max_lsb_diff == 0
    assert out.top1_agreement == 1.0
    assert len(rows) == len(im.layers)
    for row in rows:
        assert row.alone.max_lsb_diff == 0 and row.alone.exact_output_fraction == 1.0, row
        assert row.end_to_end.max_lsb_diff == 0, row


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_clear_errors(tmp_path):
    im = _small_model()
    with pytest.raises(TypeError, match="integer_model"):
        oe.to_onnx("model")
    with pytest.raises(ValueError, match="weights"):
        oe.to_onnx(im, weights="fp16")
    with pytest.raises(TypeError, match="weights"):
        oe.to_onnx(im, weights=8)
    with pytest.raises(ValueError, match="pool"):
        oe.to_onnx(im, pool="mean")
    with pytest.raises(ValueError, match="requant"):
        oe.to_onnx(im, requant="double")
    with pytest.raises(TypeError, match="requant"):
        oe.to_onnx(im, requant=1)
    with pytest.raises(ValueError, match="weights"):
        oe.to_onnx(im, requant="fixedpoint", weights="int8")
    with pytest.raises(TypeError, match="all_outputs"):
        oe.to_onnx(im, all_outputs="yes")
    signed = IntegerModel(im.layers, QParams(1 / 255, 0, -128, 127), im.output_qparams)
    with pytest.raises(ValueError, match="uint8"):
        oe.to_onnx(signed)
    no_shape = IntegerModel(im.layers, im.input_qparams, im.output_qparams)
    with pytest.raises(ValueError, match="input_shape"):
        oe.to_onnx(no_shape)  # ONNX records ranks; the exact pool needs H x W
    with pytest.raises(ValueError, match="input_shape"):
        oe.to_onnx(no_shape, input_shape=(1, 3, 0, 10))
    assert oe.to_onnx(no_shape, input_shape=(1, 3, 9, 10), pool="qlinear") is not None
    with pytest.raises(ValueError, match=r"\.onnx"):
        oe.save_onnx(oe.to_onnx(im), tmp_path / "model.txt")
    with pytest.raises(TypeError, match="proto"):
        oe.save_onnx(b"bytes", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="threads"):
        oe.session_options(threads=0)
    with pytest.raises(TypeError, match="x64_quant_precision"):
        oe.session_options(x64_quant_precision=1)
    rt = oe.to_onnx_runtime(im)
    with pytest.raises(TypeError, match="uint8"):
        rt.run_codes(np.zeros((1, 3, 9, 10), np.float32))
    with pytest.raises(KeyError, match="nope"):
        rt.run_layer("nope", _codes(0))
    with pytest.raises(ValueError, match="input"):
        rt.run_layer("add", _codes(0))
    rq = QRequantize("rq", ("input",), 0, 1 << 30, 0, 0, out_dtype=np.int8, act_min=-128, act_max=127)
    with pytest.raises(ValueError, match="uint8"):
        oe.to_onnx(IntegerModel([rq], im.input_qparams, QParams(1.0, 0, -128, 127), input_shape=(1, 4)))
    with pytest.raises(TypeError, match="runtime"):
        oe.compare(im, "ort", _codes(0))


# ------------------------------------------------------------------------------------ benchmark
def test_bench_onnx_quick_run_structure(monkeypatch):
    """benchmarks/bench_onnx.py runs and reports what RESULTS.md tabulates (no timing is asserted)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/
    from benchmarks import bench_onnx

    monkeypatch.setattr(bench_onnx, "QUICK", {"batches": (1, 8), "repeats": 3, "extra": ()})
    r = bench_onnx.run(quick=True)
    assert r["threads"] == 1 and r["onnxruntime"] == ort.__version__
    (p,) = r["points"]
    assert set(p["latency"]) == {"1", "8"}
    for v in p["latency"].values():
        for k in ("onnxruntime_int8", "onnxruntime_int8_fixedpoint", "torch_int8", "torch_float"):
            assert v[k]["median_ms"] > 0
    assert p["agreement_onnx_vs_qlearn"]["n"] == 540 and p["agreement_onnx_vs_qlearn"]["top1_agreement"] >= 0.98
    assert set(p["accuracy"]) == {"float", "qlearn_integer", "onnxruntime_int8", "onnxruntime_int8_fixedpoint",
                                  "torch_int8"}
    fx = p["agreement_onnx_fixedpoint_vs_qlearn"]
    assert fx["n"] == 540 and fx["exact_output_fraction"] == 1.0 and fx["max_lsb_diff"] == 0
    assert p["accuracy"]["onnxruntime_int8_fixedpoint"] == p["accuracy"]["qlearn_integer"]
    assert set(p["cost_fixedpoint_vs_qlinear"]) == {"1", "8"}
