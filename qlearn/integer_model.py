"""IntegerModel: a list of integer layers run in order on an integer input (paper Sec. 2, Eqs. 20-39).

The layers (``qlearn.integer_layers``) name their inputs, so a model is a small graph: residual adds
read two earlier outputs. ``run`` keeps every tensor an integer array from input codes to output
codes; ``__call__`` adds the two float steps at the edges (quantize the input, dequantize the
output, Eqs. 1, 9). ``describe`` prints the integers of every layer for a learner to read.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qlearn._checks import check_integer_array
from qlearn.qparams import QParams
from qlearn.quantize import dequantize, quantize

__all__ = ["IntegerModel"]


class IntegerModel:
    """A list of integer layers run in order on an integer input (the paper's integer-only inference).

    layers         : list of QConv2d / QLinear / QAdd / QGlobalAvgPool / QRequantize (any object with
                     ``name``, ``inputs``, ``__call__`` and ``describe``); names unique and not "input";
                     each ``inputs`` entry names an earlier layer or "input" (the model input).
    input_qparams  : per-tensor QParams; ``__call__`` quantizes float inputs with it.
    output_qparams : per-tensor QParams of the last layer's output; ``__call__`` dequantizes with it.
    input_shape    : optional example input shape, used by ``describe()`` to print output shapes.

    ``run(x_q)`` -> last layer's integer output; ``layer_outputs(x_q)`` -> {name: integer output};
    ``__call__(x_float)`` -> float64 output; ``describe()`` -> a printable layer-by-layer table.
    """

    def __init__(
        self,
        layers: Sequence[Any],
        input_qparams: QParams,
        output_qparams: QParams,
        *,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("an IntegerModel needs at least one layer")
        for qp, nm in ((input_qparams, "input_qparams"), (output_qparams, "output_qparams")):
            if not isinstance(qp, QParams):
                raise TypeError(f"{nm} must be a QParams (qlearn.qparams), got {type(qp).__name__}")
            if qp.per_channel:
                raise ValueError(f"{nm} must be per-tensor (axis=None): activations have one scale")
        seen = {"input"}
        for layer in layers:
            for attr in ("name", "inputs", "describe"):
                if not hasattr(layer, attr) or not callable(layer):
                    raise TypeError(
                        f"{layer!r} is not an integer layer (needs name, inputs, describe and __call__)"
                    )
            if layer.name in seen:
                raise ValueError(f"layer name {layer.name!r} is used twice (or is the reserved 'input')")
            missing = [i for i in layer.inputs if i not in seen]
            if missing:
                raise ValueError(
                    f"layer {layer.name!r} reads {missing}, which no earlier layer produces; inputs must name "
                    "earlier layers or 'input'"
                )
            seen.add(layer.name)
        self.layers = layers
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Any:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def layer_outputs(self, x_q: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer's integer output by name (plus "input"), to hunt down LSB differences."""
        x = check_integer_array(x_q, "x_q")
        qp = self.input_qparams
        if x.dtype != qp.dtype:
            raise TypeError(
                f"x_q must have dtype {qp.dtype} (from input_qparams), got {x.dtype}; "
                "quantize float inputs with qlearn.quantize.quantize or call the model on floats"
            )
        if x.size and (x.min() < qp.qmin or x.max() > qp.qmax):
            raise ValueError(f"x_q holds values outside [{qp.qmin}, {qp.qmax}] of input_qparams")
        outs: dict[str, np.ndarray] = {"input": x}
        for layer in self.layers:
            outs[layer.name] = layer(*(outs[i] for i in layer.inputs))
        return outs

    def run(self, x_q: np.ndarray) -> np.ndarray:
        """Integer input -> the last layer's integer output."""
        return self.layer_outputs(x_q)[self.layers[-1].name]

    def __call__(self, x: Any) -> np.ndarray:
        """Float input -> quantize (input_qparams) -> run -> dequantize (output_qparams) -> float64."""
        x_q = np.asarray(quantize(x, self.input_qparams))
        return np.asarray(dequantize(self.run(x_q), self.output_qparams))

    def describe(self, x_shape: tuple[int, ...] | None = None) -> str:
        """A table, one row per layer: name, kind, output shape, dtype, scales, zero points, M0, shift, clamp.

        Output shapes come from running an input of ``x_shape`` (or ``input_shape``) filled with the
        input zero point; without a shape the column shows "?".
        """
        shape = x_shape if x_shape is not None else self.input_shape
        outs: dict[str, np.ndarray] = {}
        if shape is not None:
            x0 = np.full(tuple(shape), self.input_qparams.zero_point, dtype=self.input_qparams.dtype)
            outs = self.layer_outputs(x0)
        header = ("name", "kind", "out shape", "dtype", "in scale", "out scale", "in zp", "out zp",
                  "M", "M0", "shift", "clamp")
        rows = [header]
        for layer in self.layers:
            d = layer.describe()
            out = outs.get(layer.name)
            scale_in = d.get("in_scale", d.get("a_scale", ""))
            if d["kind"] == "add":
                scale_in = f"{d['a_scale']:.4g}, {d['b_scale']:.4g}"
                zp_in = f"{d['a_zp']}, {d['b_zp']}"
            else:
                zp_in = d.get("in_zp", "")
            rows.append((
                d["name"], d["kind"],
                "?" if out is None else str(tuple(out.shape)),
                "?" if out is None else str(out.dtype),
                f"{scale_in:.4g}" if isinstance(scale_in, float) else str(scale_in),
                f"{d.get('out_scale', ''):.4g}" if isinstance(d.get("out_scale"), float) else str(d.get("out_scale", "")),
                str(zp_in), str(d.get("out_zp", "")),
                _fmt_cell(d.get("M", "")), _fmt_cell(d.get("m0", "")), _fmt_cell(d.get("shift", "")),
                str(d.get("clamp", "")),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        qi, qo = self.input_qparams, self.output_qparams
        lines.append(
            f"input: scale {qi.scale:.4g}, zero point {qi.zero_point}, {qi.dtype}   "
            f"output: scale {qo.scale:.4g}, zero point {qo.zero_point}, {qo.dtype}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"IntegerModel({len(self.layers)} layers: {', '.join(l.name for l in self.layers)})"


def _fmt_cell(v: Any) -> str:
    if isinstance(v, tuple):
        return ", ".join(_fmt_cell(i) for i in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
