"""Deployment to ONNX Runtime: write qlearn's integers into a standard ONNX graph, run it, compare.

``qlearn.integer`` says *what* an integer-only model computes (Eqs. 20-38); ``qlearn.torch_int8`` hands
those integers to PyTorch's int8 engines. This module hands the very same integers -- the int8
weights, int32 biases, per-channel scales, zero points and clamps that ``qlearn.convert.convert`` wrote
down -- to ONNX, the exchange format most runtimes read, as a graph of ONNX's quantized operators
("QOperator" form). Nothing is re-quantized by another tool: each initializer is one of qlearn's arrays.

``qlearn.onnx_graph`` says how each layer becomes ONNX nodes (and why the weights are stored as uint8
by default); this module builds and checks the whole graph (``to_onnx``, ``save_onnx``), opens it in
an ONNX Runtime session (``to_onnx_runtime``) and compares the runtime's codes with qlearn's (``compare``).

What a runtime does differently from qlearn's kernels (each at most 1 LSB, measured by ``compare``):

* requantization: ONNX Runtime multiplies the int32 accumulator by the float M = S1 S2 / S3 and rounds
  to nearest even; qlearn uses the fixed-point M0 2^(shift-31) and rounds ties away (Eqs. 22-31);
* the add rescales its inputs with float multipliers (QLinearAdd), qlearn in fixed point with 20 bits of
  headroom (Eq. 34);
* "qlinear" pooling rounds a tie mean (e.g. 2.5) to even, Eq. 35 rounds it away from zero.

Weights: ``weights="uint8"`` (default) selects ONNX Runtime's U8U8 kernels, exact on every x86 CPU;
``weights="int8"`` (U8S8) is exact only with ``session_options(x64_quant_precision=True)``, which sets
``session.x64quantprecision=1``; without it the U8S8 graph saturates int16 pair sums on AVX2 (Eq. 75;
``compare`` shows tens of LSB).

Bit-exact export (``requant="fixedpoint"``). The QLinear operators (``qlearn.onnx_graph``) are what a
deployment tool writes, and their float32 requantization drifts by a few LSB over a deep model.
``requant="fixedpoint"`` instead writes each conv / linear as ConvInteger (U8U8, exact int32 sums) + int32 bias, and every
requantization (conv, linear, add, requantize) as qlearn's fixed-point MBQM in ONNX int64 operators
(Mul, Div, Where, Sign, Abs, Clip, Cast; ``qlearn.onnx_fixedpoint``): the same integers as qlearn's engine,
bit for bit, on every x86 CPU. It takes ``weights="uint8"`` only (ONNX Runtime's ConvInteger accepts a
scalar weight zero point, and U8U8 is the exact kernel family).
"""
from __future__ import annotations

import importlib.metadata
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qlearn._checks import check_bool, check_int
from qlearn.agreement import Agreement, code_agreement
from qlearn.integer_model import IntegerModel
from qlearn.onnx_graph import MS_DOMAIN, OPSET, Graph, emit_layer, layer_model

__all__ = [
    "require_onnx", "to_onnx", "save_onnx", "session_options", "OnnxInt8Model", "to_onnx_runtime",
    "LayerComparison", "compare", "WEIGHT_FORMATS", "POOL_FORMATS", "REQUANT_MODES",
]

WEIGHT_FORMATS = ("uint8", "int8")
POOL_FORMATS = ("exact", "qlinear")
REQUANT_MODES = ("float", "fixedpoint")  # QLinear ops (float32 M) or qlearn's fixed point (bit-exact)


def require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or an ImportError saying how to install them (the ``onnx`` extra)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"exporting to ONNX needs the packages onnx and onnxruntime ({exc.name} is missing): "
            'pip install -e ".[onnx]"  (or the pinned versions in requirements.txt)'
        ) from None
    return onnx, onnxruntime


def _qlearn_version() -> str:
    try:
        return importlib.metadata.version("qlearn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_model(integer_model: Any) -> IntegerModel:
    if not isinstance(integer_model, IntegerModel):
        raise TypeError(f"integer_model must be a qlearn IntegerModel (from qlearn.convert.convert), "
                        f"got {type(integer_model).__name__}")
    for qp, what in ((integer_model.input_qparams, "input"), (integer_model.output_qparams, "output")):
        if qp.dtype != np.uint8:
            raise ValueError(f"the ONNX export takes uint8 activations (QLinearConv U8S8/U8U8); the model's {what} "
                             f"is {qp.dtype}")
    return integer_model


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _requant(requant: Any, weights: str) -> str:
    requant = _choice(requant, "requant", REQUANT_MODES)
    if requant == "fixedpoint" and weights != "uint8":
        raise ValueError('requant="fixedpoint" takes weights="uint8" (ConvInteger U8U8: a scalar weight zero point, '
                         f"exact sums on every x86 CPU), got weights={weights!r}")
    return requant


def _spatial_sizes(model: IntegerModel, input_shape: tuple[int, ...] | None) -> dict[str, tuple[int, ...]]:
    shape = input_shape if input_shape is not None else model.input_shape
    if shape is None:
        raise ValueError("the export needs the input's shape (ONNX records every tensor's rank and the pool its "
                         "H x W): build the IntegerModel with input_shape=(1, C, H, W) or pass input_shape=")
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, numbers.Integral) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be a tuple of positive integers such as (1, 1, 16, 16), got {shape!r}")
    x0 = np.full(tuple(shape), model.input_qparams.zero_point, dtype=np.uint8)
    return {name: v.shape for name, v in model.layer_outputs(x0).items()}


def to_onnx(integer_model: IntegerModel, *, weights: str = "uint8", pool: str = "exact",
            all_outputs: bool = False, input_shape: tuple[int, ...] | None = None,
            requant: str = "float") -> Any:
    """An ``onnx.ModelProto`` computing ``integer_model`` on uint8 codes (module docstring; Eqs. 20-38).

    Input "input": (N, C, H, W) uint8 codes on the input grid (``qlearn.convert.quantize_input``);
    output: the last layer's uint8 codes, named as the layer. ``all_outputs=True`` also makes every
    layer's output a graph output (named as the layer, shaped as ``IntegerModel.layer_outputs``), to
    compare layer by layer. ``weights``: "uint8" (exact on every x86 CPU) or "int8" (see the module
    docstring); ``pool``: "exact" (Eq. 35 in integer ops) or "qlinear" (ONNX Runtime's float pool);
    ``requant``: "float" (QLinear operators, float32 multipliers) or "fixedpoint" (ConvInteger and
    qlearn's fixed-point MBQM in int64 ops, Eqs. 22-31: bit-exact with qlearn's engine).
    The model passes ``onnx.checker.check_model``; its metadata records qlearn's version and these settings.
    """
    onnx, _ = require_onnx()
    model = _check_model(integer_model)
    weights = _choice(weights, "weights", WEIGHT_FORMATS)
    pool = _choice(pool, "pool", POOL_FORMATS)
    requant = _requant(requant, weights)
    all_outputs = check_bool(all_outputs, "all_outputs")
    sizes = _spatial_sizes(model, input_shape)
    h = onnx.helper
    g = Graph(onnx)
    four_d: dict[str, str] = {}  # pooled layer name -> its (N, C, 1, 1) tensor
    outputs: list[str] = []
    for layer in model.layers:
        in_shape = sizes.get(layer.inputs[0])
        hw = int(in_shape[2] * in_shape[3]) if in_shape is not None and len(in_shape) == 4 else None
        emit_layer(g, layer, list(layer.inputs), four_d, weights, pool, hw, requant)
        if all_outputs or layer is model.layers[-1]:
            outputs.append(layer.name)
    u8 = onnx.TensorProto.UINT8
    shape = model.input_shape if input_shape is None else tuple(input_shape)
    in_dims = ["N", *shape[1:]]  # the batch size is free
    graph = h.make_graph(
        g.nodes, "qlearn_integer_model",
        [h.make_tensor_value_info("input", u8, in_dims)],
        [h.make_tensor_value_info(o, u8, ["N", *sizes[o][1:]]) for o in outputs],
        initializer=g.inits,
    )
    proto = h.make_model(graph, producer_name="qlearn", producer_version=_qlearn_version(),
                         opset_imports=[h.make_opsetid("", OPSET), h.make_opsetid(MS_DOMAIN, 1)])
    proto.ir_version = 8  # readable by onnxruntime >= 1.10 and every current viewer
    qi, qo = model.input_qparams, model.output_qparams
    meta = {
        "qlearn_version": _qlearn_version(), "weights": weights, "pool": pool, "requant": requant,
        "input_scale": repr(float(qi.scale)), "input_zero_point": str(int(qi.zero_point)),
        "output_scale": repr(float(qo.scale)), "output_zero_point": str(int(qo.zero_point)),
        "layers": str(len(model.layers)),
        "session_options": ("none needed: uint8 weights select exact U8U8 kernels" if weights == "uint8" else
                            "session.x64quantprecision=1 (exact sums on AVX2 / AVX-512 without VNNI)"),
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"qlearn.{k}" if k != "qlearn_version" else k, v
    onnx.checker.check_model(proto, full_check=True)  # with shape inference
    return proto


def save_onnx(proto: Any, path: str | Path) -> Path:
    """Write an exported model to ``path`` (a .onnx file any ONNX viewer opens); returns the path."""
    onnx, _ = require_onnx()
    if not isinstance(proto, onnx.ModelProto):
        raise TypeError(f"proto must be an onnx.ModelProto (from to_onnx), got {type(proto).__name__}")
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def session_options(*, threads: int = 1, x64_quant_precision: bool = True) -> Any:
    """ONNX Runtime session options for repeatable integer results and timings.

    threads: intra-op threads (1 = what the deployment lesson and benchmarks time); no inter-op parallelism.
    x64_quant_precision: ``session.x64quantprecision=1`` -- U8S8 kernels on AVX2 / AVX-512 without
    VNNI use exact 16-bit products instead of the saturating int16 pair sums (Eq. 75). Irrelevant for
    ``weights="uint8"`` graphs (already exact), needed for ``weights="int8"`` to be exact everywhere.
    Graph optimizations stay on: they fuse and reorder nodes, not the integer arithmetic.
    """
    _, ort = require_onnx()
    threads = check_int(threads, "threads", minimum=1)
    x64_quant_precision = check_bool(x64_quant_precision, "x64_quant_precision")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only
    if x64_quant_precision:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return so


class OnnxInt8Model:
    """An exported ``IntegerModel`` in an ONNX Runtime CPU session.

    ``run_codes(x_q)``      uint8 input codes (N, C, H, W) -> the last layer's uint8 codes
    ``layer_outputs(x_q)``  {layer name: uint8 codes} (the graph exports every layer's output)
    ``run_layer(name, *codes)`` one layer alone on given input codes (exported as a one-layer graph)
    ``proto``, ``weights``, ``pool``, ``requant``, ``x64_quant_precision``, ``threads``: how it was built
    """

    def __init__(self, integer_model: IntegerModel, *, weights: str = "uint8", pool: str = "exact",
                 threads: int = 1, x64_quant_precision: bool = True, requant: str = "float") -> None:
        _, ort = require_onnx()
        self.integer_model = _check_model(integer_model)
        self.weights, self.pool, self.threads, self.requant = weights, pool, threads, requant
        self.x64_quant_precision = x64_quant_precision
        self.options = session_options(threads=threads, x64_quant_precision=x64_quant_precision)
        self.proto = to_onnx(integer_model, weights=weights, pool=pool, requant=requant)
        self.session = ort.InferenceSession(self.proto.SerializeToString(), self.options,
                                            providers=["CPUExecutionProvider"])
        self._all: Any = None
        self._layers: dict[tuple, Any] = {}  # (layer name, input shapes without the batch) -> session

    def _codes(self, x_q: Any) -> np.ndarray:
        x = np.asarray(x_q)
        if x.dtype != np.uint8 or x.ndim != 4:
            raise TypeError(f"x_q must be uint8 codes (N, C, H, W) (qlearn.convert.quantize_input), "
                            f"got {x.dtype} with shape {x.shape}")
        return np.ascontiguousarray(x)

    def run_codes(self, x_q: np.ndarray) -> np.ndarray:
        """uint8 input codes (N, C, H, W) -> the last layer's uint8 codes, through ONNX Runtime."""
        return self.session.run(None, {"input": self._codes(x_q)})[0]

    def layer_outputs(self, x_q: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer's uint8 output by name, end to end (differences of earlier layers carried along)."""
        if self._all is None:
            _, ort = require_onnx()
            proto = to_onnx(self.integer_model, weights=self.weights, pool=self.pool, all_outputs=True,
                            requant=self.requant)
            self._all = ort.InferenceSession(proto.SerializeToString(), self.options, providers=["CPUExecutionProvider"])
        names = [o.name for o in self._all.get_outputs()]
        return dict(zip(names, self._all.run(None, {"input": self._codes(x_q)})))

    def run_layer(self, name: str, *codes: np.ndarray) -> np.ndarray:
        """One layer alone on the given uint8 codes of its inputs: its own rounding, nothing inherited."""
        layer = self.integer_model[name] if isinstance(name, str) else None
        if layer is None:
            raise TypeError(f"name must be a layer name (a string), got {type(name).__name__}")
        if len(codes) != len(layer.inputs):
            raise ValueError(f"layer {name!r} takes {len(layer.inputs)} input(s) {layer.inputs}, got {len(codes)}")
        arrays = [np.ascontiguousarray(np.asarray(c)) for c in codes]
        if any(a.dtype != np.uint8 for a in arrays):
            raise TypeError(f"the codes for layer {name!r} must be uint8")
        key = (name, tuple(a.shape[1:] for a in arrays))  # the batch size is free; the pool needs H x W
        if key not in self._layers:
            self._layers[key] = self._one_layer(layer, arrays)
        sess, feeds = self._layers[key]
        return sess.run(None, dict(zip(feeds, arrays)))[0]

    def _one_layer(self, layer: Any, arrays: list[np.ndarray]) -> tuple[Any, list[str]]:
        onnx, ort = require_onnx()
        proto = layer_model(onnx, layer, arrays, self.weights, self.pool, self.requant)
        sess = ort.InferenceSession(proto.SerializeToString(), self.options, providers=["CPUExecutionProvider"])
        return sess, [i.name for i in sess.get_inputs()]


def to_onnx_runtime(integer_model: IntegerModel, **kwargs: Any) -> OnnxInt8Model:
    """Export ``integer_model`` and open it in ONNX Runtime (``OnnxInt8Model``; keyword arguments go there)."""
    return OnnxInt8Model(integer_model, **kwargs)


@dataclass(frozen=True)
class LayerComparison:
    """One layer of ONNX Runtime against qlearn's integer engine (``code_agreement`` on (N, -1) codes).

    alone      : the layer fed qlearn's own codes of its inputs -- this runtime's rounding alone
    end_to_end : both engines run from the same input codes -- earlier layers' differences included
    """

    name: str
    kind: str
    alone: Agreement
    end_to_end: Agreement

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "alone": self.alone.to_dict(),
                "end_to_end": self.end_to_end.to_dict()}


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(a.shape[0], -1)


def compare(integer_model: IntegerModel, runtime: OnnxInt8Model, x_q: np.ndarray) -> tuple[Agreement, list[LayerComparison]]:
    """ONNX Runtime vs qlearn's engine on the same uint8 codes: (end-to-end output, per-layer rows).

    Each row compares (N, -1)-flattened codes with ``qlearn.agreement.code_agreement`` (Eq. 69; for a conv
    layer its "top-1" is the arg-max over all positions, a curiosity; for the classifier the class).
    """
    model = _check_model(integer_model)
    if not isinstance(runtime, OnnxInt8Model):
        raise TypeError(f"runtime must be an OnnxInt8Model (to_onnx_runtime), got {type(runtime).__name__}")
    ours = model.layer_outputs(x_q)  # checks x_q
    theirs = runtime.layer_outputs(x_q)
    rows = []
    for layer in model.layers:
        alone = runtime.run_layer(layer.name, *(ours[i] for i in layer.inputs))
        rows.append(LayerComparison(
            layer.name, layer.describe()["kind"],
            code_agreement(_flat(ours[layer.name]), _flat(alone)),
            code_agreement(_flat(ours[layer.name]), _flat(theirs[layer.name])),
        ))
    last = model.layers[-1].name
    return code_agreement(ours[last], theirs[last]), rows
