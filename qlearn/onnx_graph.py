"""How each layer of qlearn's integer model becomes ONNX nodes (the graph half of ``qlearn.onnx_export``).

Each initializer below is one of qlearn's arrays -- the int8 weights, int32 biases, per-channel
scales, zero points and clamps that ``qlearn.convert.convert`` wrote down -- in ONNX's quantized
operators ("QOperator" form); nothing is re-quantized by another tool.

    IntegerModel layer   ONNX nodes (uint8 activations, shape NCHW, batch size free)
    QConv2d              QLinearConv (x, S1, Z1, w, S2 (Cout,), Z2, S3, Z3, bias int32)  [+ Clip]
    QLinear              Unsqueeze -> 1x1 QLinearConv -> Flatten  (a linear layer is a 1x1 conv)  [+ Clip]
    QAdd                 com.microsoft QLinearAdd (a, Sa, Za, b, Sb, Zb, S, Z)             [+ Clip]
    QGlobalAvgPool       pool="exact": Cast int32 -> ReduceSum -> Add floor(HW/2) -> Div HW -> Clip -> Cast
                         (Eq. 35 in integer ops; uint8 codes are >= 0, so C division is the floor);
                         pool="qlinear": com.microsoft QLinearGlobalAveragePool (the mean rounded half to even)
    QRequantize          DequantizeLinear -> QuantizeLinear                              [+ Clip]

With ``requant="fixedpoint"`` the conv / linear, add and requantize layers are written by
``qlearn.onnx_fixedpoint`` instead (ConvInteger and qlearn's fixed-point MBQM in int64 operators).

A clamp [act_min, act_max] narrower than [0, 255] (ReLU / ReLU6, Eq. 37) is an exact ``Clip`` on the
uint8 codes. Padding holds the input zero point (QLinearConv pads with x_zero_point, Eq. 38);
qlearn's "same" padding is ONNX's ``auto_pad="SAME_UPPER"`` (the larger half after, as TensorFlow).

The weights, and why they are stored as uint8 by default (``weights="uint8"``). x86 CPUs multiply
uint8 activations by int8 weights with AVX2 ``vpmaddubsw``, which adds *pairs* of products in int16
and saturates (Eq. 75): 2 * 255 * 127 = 64770 > 32767. ONNX Runtime's U8S8 kernels use it on CPUs
without VNNI (this project's AMD EPYC) and ``vpdpbusd`` (exact) on CPUs with AVX-512 VNNI -- the same
graph would then give different codes on different machines. Storing each int8 weight as the uint8
code w + 128 with zero point 128 represents exactly the same numbers (S2 (w + 128 - 128) = S2 w) but
selects ONNX Runtime's U8U8 kernels, which widen both operands to 16 bits before multiplying: no
x86 instruction adds uint8 x uint8 pairs with saturation, so the sums are exact int32 (Eq. 25) on AVX2,
AVX-512, VNNI and AMX alike, with no session option to remember. ``weights="int8"`` keeps the
original int8 weights (U8S8): exact only with ONNX Runtime's ``session.x64quantprecision=1``
(``qlearn.onnx_export.session_options``).
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from qlearn import onnx_fixedpoint as fx
from qlearn.integer_args import _padding
from qlearn.integer_layers import QAdd, QConv2d, QGlobalAvgPool, QLinear, QRequantize

__all__ = ["OPSET", "MS_DOMAIN", "Graph", "emit_layer", "layer_model"]

OPSET = 17  # ONNX default domain; QLinearConv (opset 10), ReduceSum with axes as input (13), Clip on uint8 (12)
MS_DOMAIN = "com.microsoft"  # QLinearAdd, QLinearGlobalAveragePool: ONNX Runtime's contrib operators


class Graph:
    """Collects nodes and initializers; ``const`` names a numpy array, ``node`` adds one operator."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.nodes, self.inits, self._n = onnx, [], [], 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, *, domain: str = "", **attrs: Any) -> str:
        self._n += 1
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=f"{op}_{self._n}", domain=domain,
                                                     **attrs))
        return output


def _scale(v: float) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)  # () float32: ONNX's scales are float32


def _clip(g: Graph, x: str, out: str, act_min: int, act_max: int) -> str:
    """Exact clamp of uint8 codes to [act_min, act_max] (Eq. 37); no node when the range is all of uint8."""
    if act_min <= 0 and act_max >= 255:
        return g.node("Identity", [x], out)
    lo = g.const(f"{out}__min", np.asarray(act_min, dtype=np.uint8))
    hi = g.const(f"{out}__max", np.asarray(act_max, dtype=np.uint8))
    return g.node("Clip", [x, lo, hi], out)


def _conv_weights(g: Graph, name: str, w_q: np.ndarray, weights: str) -> tuple[str, str]:
    """int8 weights (Cout, ...) -> initializers (w, w_zero_point (Cout,)); see the module docstring."""
    w = np.asarray(w_q, dtype=np.int8)
    if weights == "uint8":  # w + 128 in [0, 255], zero point 128: the same reals S2 (q - 128) = S2 w
        wq = (w.astype(np.int16) + 128).astype(np.uint8)
        zp = np.full(w.shape[0], 128, dtype=np.uint8)
    else:
        wq, zp = w, np.zeros(w.shape[0], dtype=np.int8)
    return g.const(f"{name}__w", wq), g.const(f"{name}__w_zp", zp)


def _conv_node(g: Graph, layer: QConv2d | QLinear, x: str, out: str, weights: str, *, conv2d: bool,
               requant: str = "float") -> str:
    w = np.asarray(layer.w_q)
    if not conv2d:  # (Out, In) -> (Out, In, 1, 1): a linear layer is a 1x1 convolution
        w = w[:, :, None, None]
    attrs = _conv_attrs(layer, w, conv2d)
    if requant == "fixedpoint":
        return fx.conv_integer(g, layer, x, w, attrs, out)
    w_name, w_zp = _conv_weights(g, layer.name, w, weights)
    w_scale = np.broadcast_to(np.asarray(layer.w_scale, dtype=np.float32), (w.shape[0],)).copy()  # (Cout,) float32
    inputs = [
        x, g.const(f"{layer.name}__x_scale", _scale(layer.in_scale)),
        g.const(f"{layer.name}__x_zp", np.asarray(layer.in_zp, dtype=np.uint8)),
        w_name, g.const(f"{layer.name}__w_scale", w_scale), w_zp,
        g.const(f"{layer.name}__y_scale", _scale(layer.out_scale)),
        g.const(f"{layer.name}__y_zp", np.asarray(layer.out_zp, dtype=np.uint8)),
        g.const(f"{layer.name}__bias", np.asarray(layer.bias_q, dtype=np.int32)),  # int32 on S1 S2 (Eq. 24)
    ]
    y = g.node("QLinearConv", inputs, f"{layer.name}__conv", **attrs)
    return _clip(g, y, out, int(layer.act_min), int(layer.act_max))


def _conv_attrs(layer: QConv2d | QLinear, w: np.ndarray, conv2d: bool) -> dict[str, Any]:
    """kernel_shape, strides, group and padding of a (QLinear or Integer) conv node."""
    attrs: dict[str, Any] = {"kernel_shape": list(w.shape[2:])}
    if conv2d:
        sh, sw = (layer.stride, layer.stride) if isinstance(layer.stride, numbers.Integral) else layer.stride
        attrs.update(strides=[int(sh), int(sw)], group=int(layer.groups))
        if layer.padding == "same":
            attrs["auto_pad"] = "SAME_UPPER"  # TensorFlow SAME: the larger half after (qlearn.integer_args._padding)
        else:
            top, bottom, left, right = _padding(layer.padding, (10**6, 10**6), tuple(w.shape[2:]), (1, 1))
            attrs["pads"] = [top, left, bottom, right]  # ONNX order: begins (H, W), then ends (H, W)
    return attrs


def _pool(g: Graph, layer: QGlobalAvgPool, x: str, out: str, pool: str, hw: int | None) -> str:
    """Global average pool; ``out`` is (N, C, 1, 1) uint8 (the graph flattens it where a layer output is due)."""
    if pool == "qlinear":
        s, z = g.const(f"{out}__s", _scale(layer.scale)), g.const(f"{out}__z", np.asarray(layer.zero_point, np.uint8))
        y = g.node("QLinearGlobalAveragePool", [x, s, z, s, z], f"{out}__mean", domain=MS_DOMAIN, channels_last=0)
        return _clip(g, y, out, int(layer.act_min), int(layer.act_max))
    if hw is None:
        raise ValueError(f"layer {layer.name!r}: the global average pool needs a 4-D (N, C, H, W) input")
    acc = g.node("Cast", [x], f"{out}__i32", to=g.onnx.TensorProto.INT32)  # (N, C, H, W) int32, 0..255
    acc = g.node("ReduceSum", [acc, g.const(f"{out}__axes", np.asarray([2, 3], np.int64))], f"{out}__sum",
                 keepdims=1)  # A = sum q <= 255 HW (Eq. 35)
    acc = g.node("Add", [acc, g.const(f"{out}__half", np.asarray(hw // 2, np.int32))], f"{out}__plus")
    acc = g.node("Div", [acc, g.const(f"{out}__hw", np.asarray(hw, np.int32))], f"{out}__div")  # A >= 0: floor
    lo, hi = max(int(layer.act_min), 0), min(int(layer.act_max), 255)
    acc = g.node("Clip", [acc, g.const(f"{out}__lo", np.asarray(lo, np.int32)),
                          g.const(f"{out}__hi", np.asarray(hi, np.int32))], f"{out}__clip")
    return g.node("Cast", [acc], out, to=g.onnx.TensorProto.UINT8)


def emit_layer(g: Graph, layer: Any, ins: list[str], four_d: dict[str, str], weights: str, pool: str,
          hw: int | None, requant: str = "float") -> None:
    """Append the nodes of one layer reading tensors ``ins``; its output tensor is named as the layer."""
    name = layer.name
    ins4 = [four_d.get(i, i) for i in ins]
    if isinstance(layer, QConv2d):
        _conv_node(g, layer, ins4[0], name, weights, conv2d=True, requant=requant)
    elif isinstance(layer, QLinear):
        x = ins4[0]
        if x == ins[0]:  # a 2-D (N, In) tensor: make it (N, In, 1, 1)
            x = g.node("Unsqueeze", [x, g.const(f"{name}__axes", np.asarray([2, 3], np.int64))], f"{name}__x4")
        y = _conv_node(g, layer, x, f"{name}__y4", weights, conv2d=False, requant=requant)
        g.node("Flatten", [y], name, axis=1)  # (N, Out, 1, 1) -> (N, Out)
    elif isinstance(layer, QAdd) and requant == "fixedpoint":
        fx.add_fixedpoint(g, layer, ins4[0], ins4[1], name)
    elif isinstance(layer, QAdd):
        def c(v: Any, nm: str, dt: Any) -> str:
            return g.const(f"{name}__{nm}", np.asarray(v, dtype=dt))
        y = g.node("QLinearAdd", [ins4[0], c(layer.a_scale, "sa", np.float32), c(layer.a_zp, "za", np.uint8),
                                  ins4[1], c(layer.b_scale, "sb", np.float32), c(layer.b_zp, "zb", np.uint8),
                                  c(layer.out_scale, "s", np.float32), c(layer.out_zp, "z", np.uint8)],
                   f"{name}__add", domain=MS_DOMAIN)
        _clip(g, y, name, int(layer.act_min), int(layer.act_max))
    elif isinstance(layer, QGlobalAvgPool):
        four_d[name] = _pool(g, layer, ins4[0], f"{name}__4d", pool, hw)
        g.node("Flatten", [four_d[name]], name, axis=1)  # (N, C): IntegerModel's pool output
    elif isinstance(layer, QRequantize):
        if np.dtype(layer.out_dtype) != np.uint8 or not 0 <= int(layer.in_zp) <= 255:
            raise ValueError(f"layer {name!r} requantizes {layer.in_zp}-centred codes to {np.dtype(layer.out_dtype)}; "
                             "the export takes uint8 codes in and out")
        if requant == "fixedpoint":  # qlearn's integer requantization, no float
            fx.requantize_fixedpoint(g, layer, ins4[0], name)
            return
        r = g.node("DequantizeLinear", [ins4[0], g.const(f"{name}__si", _scale(layer.in_scale)),
                                        g.const(f"{name}__zi", np.asarray(layer.in_zp, np.uint8))], f"{name}__r")
        y = g.node("QuantizeLinear", [r, g.const(f"{name}__so", _scale(layer.out_scale)),
                                      g.const(f"{name}__zo", np.asarray(layer.out_zp, np.uint8))], f"{name}__q")
        _clip(g, y, name, int(layer.act_min), int(layer.act_max))
    else:
        raise TypeError(f"layer {name!r} is a {type(layer).__name__}, which the ONNX export does not know")


def layer_model(onnx: Any, layer: Any, arrays: list[np.ndarray], weights: str, pool: str,
                 requant: str = "float") -> Any:
    """A one-layer graph reading the layer's inputs from graph inputs "in0" (and "in1" for an add)."""
    h = onnx.helper
    g = Graph(onnx)
    ins = [f"in{i}" for i in range(len(arrays))]
    hw = int(arrays[0].shape[2] * arrays[0].shape[3]) if arrays[0].ndim == 4 else None
    emit_layer(g, layer, ins, {}, weights, pool, hw, requant)
    rank = 2 if isinstance(layer, (QLinear, QGlobalAvgPool)) else arrays[0].ndim  # of the layer's output
    u8 = onnx.TensorProto.UINT8
    graph = h.make_graph(g.nodes, "qlearn_one_layer",
                         [h.make_tensor_value_info(x, u8, ["N", *a.shape[1:]]) for x, a in zip(ins, arrays)],
                         [h.make_tensor_value_info(layer.name, u8, [None] * rank)], initializer=g.inits)
    proto = h.make_model(graph, producer_name="qlearn",
                         opset_imports=[h.make_opsetid("", OPSET), h.make_opsetid(MS_DOMAIN, 1)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto
