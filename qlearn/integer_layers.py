"""Integer layers: one kernel's parameters, frozen, checked once, callable, self-describing.

Each layer holds the integers of one kernel of ``qlearn.integer`` (paper Sec. 2.2-2.4): ``QConv2d``
and ``QLinear`` (int8 weights, int32 bias, per-channel M0/shift, clamp; Eqs. 20-25, 37), ``QAdd``
(Eqs. 32-34), ``QGlobalAvgPool`` (Eq. 35) and ``QRequantize`` (Eq. 36). Parameters are checked once,
when the layer is built; a call checks only its input (dtype, shape, zero points against that dtype)
and runs the kernel's arithmetic. ``IntegerModel`` (``qlearn.integer_model``) chains layers by name.

Every layer carries the real grid of its output as attributes ``out_scale`` and ``out_zp`` (and
conv / linear / requantize layers ``in_scale`` / ``in_zp``), and its fixed-point multipliers as
``multipliers`` ((m0, shift) int64 arrays), so other code never has to parse ``describe()``, which
is for display. ``conv_layer`` / ``linear_layer`` build a layer from integer weights and the grids
(``qlearn.layer_integers``), the one path from scales to an integer layer.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn.fixedpoint import multiplier_value
from qlearn.integer import _conv_out, _linear_out, add, avg_pool, requantize
from qlearn.integer_args import (
    _activation,
    _bias,
    _groups,
    _multipliers,
    _output_grid,
    _padding,
    _pair,
    _weights,
    _zero_point,
)
from qlearn.layer_integers import add_multipliers, layer_integers
from qlearn.qparams import QParams

__all__ = ["QConv2d", "QLinear", "QAdd", "QGlobalAvgPool", "QRequantize", "conv_layer", "linear_layer"]


def _check_layer_name(layer: Any, n_inputs: int | None) -> None:
    if not isinstance(layer.name, str) or not layer.name or layer.name == "input":
        raise ValueError(f"a layer name must be a non-empty string other than 'input', got {layer.name!r}")
    inputs = layer.inputs
    if isinstance(inputs, str):
        inputs = (inputs,)
    inputs = tuple(inputs)
    if not all(isinstance(i, str) for i in inputs):
        raise TypeError(f"layer {layer.name!r}: inputs must be names (strings), got {layer.inputs!r}")
    if n_inputs is not None and len(inputs) != n_inputs:
        raise ValueError(f"layer {layer.name!r} takes {n_inputs} input(s), got inputs={inputs!r}")
    object.__setattr__(layer, "inputs", inputs)


def _summary(v: Any) -> Any:
    """A scalar stays a number; a per-channel array becomes 'min..max (C)' for a table."""
    arr = np.asarray(v)
    if arr.ndim == 0:
        return arr.item()
    if np.issubdtype(arr.dtype, np.integer):
        return f"{arr.min()}..{arr.max()} ({arr.size})"
    return f"{arr.min():.4g}..{arr.max():.4g} ({arr.size})"


def _one_input(layer: Any, xs: tuple) -> tuple:
    if len(xs) != 1:
        raise TypeError(f"layer {layer.name!r} takes one input, got {len(xs)}")
    return xs


def _pair_multipliers(pairs: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(m0, shift) scalars -> two int64 arrays, one entry per pair."""
    return (np.array([int(m) for m, _ in pairs], dtype=np.int64),
            np.array([int(s) for _, s in pairs], dtype=np.int64))


class _WeightLayer:
    """What ``QConv2d`` and ``QLinear`` share: int8 weights w_q (zero point 0), an int32 bias_q of scale
    S1 S2, (m0, shift) per output channel or per tensor, zero points and a clamp.

    ``__post_init__`` checks the parameters once and keeps the checked arrays (``_w`` int8, ``_bias``
    (Cout,) int64, ``_m0`` / ``_shift`` (Cout,) int64); ``_input`` checks what a call brings.
    """

    _w_ndim = 4
    name: str
    inputs: tuple[str, ...]
    w_q: np.ndarray
    bias_q: np.ndarray
    in_zp: int
    out_zp: int
    m0: Any
    shift: Any
    act_min: int
    act_max: int
    in_scale: float
    w_scale: Any
    out_scale: float

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)
        w = _weights(self.w_q, "w_q", self._w_ndim)
        m0, shift = _multipliers(self.m0, self.shift, w.shape[0])
        for attr, value in (("_w", w), ("_bias", _bias(self.bias_q, w.shape[0])), ("_m0", m0), ("_shift", shift)):
            object.__setattr__(self, attr, value)

    def _input(self, xs: tuple) -> tuple[np.ndarray, int, int, int, int]:
        """The one input, checked: (x, x_zp, out_zp, act_min, act_max) for its dtype."""
        (x,) = _one_input(self, xs)
        x = _activation(x, "x_q", self._w_ndim)
        x_zp = _zero_point(self.in_zp, "x_zp", x.dtype)
        return (x, x_zp, *_output_grid(x, self.out_zp, self.act_min, self.act_max))

    @property
    def multipliers(self) -> tuple[np.ndarray, np.ndarray]:
        """(m0, shift), (Cout,) int64 each: M = m0 2^(shift - 31) per output channel (Eq. 23)."""
        return self._m0.copy(), self._shift.copy()

    def _describe(self, kind: str) -> dict:
        w = np.asarray(self.w_q)
        return {
            "name": self.name, "kind": kind, "inputs": self.inputs,
            "w_shape": tuple(w.shape), "w_dtype": str(w.dtype), "bias_dtype": str(np.asarray(self.bias_q).dtype),
            "in_scale": self.in_scale, "w_scale": _summary(self.w_scale), "out_scale": self.out_scale,
            "in_zp": self.in_zp, "out_zp": self.out_zp,
            "M": _summary(multiplier_value(np.asarray(self.m0, dtype=np.int64), np.asarray(self.shift, dtype=np.int64))),
            "m0": _summary(self.m0), "shift": _summary(self.shift),
            "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QConv2d(_WeightLayer):
    """A quantized conv layer: ``qlearn.integer.conv2d`` with its parameters (see there for shapes and dtypes).

    in_scale, w_scale (float or (Cout,) array), out_scale are the real scales, kept for other code
    and for ``describe()``; the data path uses m0 / shift, which must have been derived from them
    (``requant_multiplier(in_scale, w_scale, out_scale)``; ``conv_layer`` does so).
    """

    name: str
    inputs: tuple[str, ...]
    w_q: np.ndarray  # (Cout, Cin/groups, kh, kw) int8
    bias_q: np.ndarray  # (Cout,) int32
    in_zp: int
    out_zp: int
    m0: Any  # int scalar or (Cout,) int32
    shift: Any  # int scalar or (Cout,) int
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, ...] | str = 0  # int, (ph, pw), (top, bottom, left, right) or "same"
    groups: int = 1
    act_min: int = 0
    act_max: int = 255
    in_scale: float = 1.0
    w_scale: Any = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_stride", _pair(self.stride, "stride", 1))
        _padding(self.padding)
        _groups(self.groups, self._w.shape[0])

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        x, x_zp, out_zp, lo, hi = self._input(xs)
        return _conv_out(x, x_zp, self._w, self._bias, self._m0, self._shift, out_zp, lo, hi,
                         self._stride, self.padding, int(self.groups))

    def describe(self) -> dict:
        kind = "depthwise conv" if self.groups > 1 and self._w.shape[1] == 1 else "conv"
        d = self._describe(kind)
        extra = {"stride": self.stride, "padding": self.padding, "groups": self.groups}
        keys = list(d)
        at = keys.index("in_scale")  # the order of the table: shapes, then stride/padding/groups, then grids
        return {**{k: d[k] for k in keys[:at]}, **extra, **{k: d[k] for k in keys[at:]}}


@dataclass(frozen=True, eq=False)
class QLinear(_WeightLayer):
    """A quantized fully connected layer: ``qlearn.integer.linear`` with its parameters. w_q (Out, In) int8."""

    _w_ndim = 2
    name: str
    inputs: tuple[str, ...]
    w_q: np.ndarray  # (Out, In) int8
    bias_q: np.ndarray  # (Out,) int32
    in_zp: int
    out_zp: int
    m0: Any
    shift: Any
    act_min: int = 0
    act_max: int = 255
    in_scale: float = 1.0
    w_scale: Any = 1.0
    out_scale: float = 1.0

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        x, x_zp, out_zp, lo, hi = self._input(xs)
        return _linear_out(x, x_zp, self._w, self._bias, self._m0, self._shift, out_zp, lo, hi)

    def describe(self) -> dict:
        return self._describe("linear")


def conv_layer(
    name: str, inputs: str | Sequence[str], w_q: np.ndarray, in_qp: QParams, w_scale: Any, out_qp: QParams, *,
    bias: Any = None, bias_q: Any = None, activation: str | None = None, per_channel_multipliers: bool = False,
    stride: int | tuple[int, int] = 1, padding: int | tuple[int, ...] | str = 0, groups: int = 1,
) -> QConv2d:
    """Integer weights and the grids -> a ``QConv2d``: M0/shift (Eq. 23), int32 bias (Eq. 24), clamp (Eq. 37).

    w_q: (Cout, Cin/groups, kh, kw) int8 codes of scale w_scale (float or (Cout,)); in_qp / out_qp:
    the per-tensor input and output grids; bias (floats) or bias_q (codes) as in ``layer_integers``;
    activation None, "relu" or "relu6"; per_channel_multipliers: one (M0, shift) per output channel
    even for a per-tensor w_scale.
    """
    w = _weights(w_q, "w_q", 4)
    ints = layer_integers(in_qp, w_scale, out_qp, bias=bias, bias_q=bias_q, activation=activation,
                          channels=w.shape[0] if per_channel_multipliers else None)
    return QConv2d(
        name, (inputs,) if isinstance(inputs, str) else tuple(inputs), w, ints.bias_q,
        int(in_qp.zero_point), int(out_qp.zero_point), ints.m0, ints.shift,
        stride, padding, groups, ints.act_min, ints.act_max, in_qp.scale, w_scale, out_qp.scale,
    )


def linear_layer(
    name: str, inputs: str | Sequence[str], w_q: np.ndarray, in_qp: QParams, w_scale: Any, out_qp: QParams, *,
    bias: Any = None, bias_q: Any = None, activation: str | None = None, per_channel_multipliers: bool = False,
) -> QLinear:
    """Like ``conv_layer``, for a fully connected layer: w_q (Out, In) int8 -> a ``QLinear``."""
    w = _weights(w_q, "w_q", 2)
    ints = layer_integers(in_qp, w_scale, out_qp, bias=bias, bias_q=bias_q, activation=activation,
                          channels=w.shape[0] if per_channel_multipliers else None)
    return QLinear(
        name, (inputs,) if isinstance(inputs, str) else tuple(inputs), w, ints.bias_q,
        int(in_qp.zero_point), int(out_qp.zero_point), ints.m0, ints.shift,
        ints.act_min, ints.act_max, in_qp.scale, w_scale, out_qp.scale,
    )


@dataclass(frozen=True, eq=False)
class QAdd:
    """A quantized elementwise add of two earlier outputs (``add``; TFLite style, left_shift=20).

    Build it with ``QAdd.from_scales``, which derives the multipliers (``add_multipliers``).
    """

    name: str
    inputs: tuple[str, ...]  # exactly two names
    a_zp: int
    a_m0: int
    a_shift: int
    b_zp: int
    b_m0: int
    b_shift: int
    out_zp: int
    out_m0: int
    out_shift: int
    left_shift: int = 20
    act_min: int = 0
    act_max: int = 255
    a_scale: float = 1.0
    b_scale: float = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_layer_name(self, 2)
        for m0, sh in ((self.a_m0, self.a_shift), (self.b_m0, self.b_shift), (self.out_m0, self.out_shift)):
            _multipliers(m0, sh, 1)

    @classmethod
    def from_scales(
        cls,
        name: str,
        inputs: Sequence[str],
        a_scale: float,
        a_zp: int,
        b_scale: float,
        b_zp: int,
        out_scale: float,
        out_zp: int,
        *,
        act_min: int = 0,
        act_max: int = 255,
        left_shift: int = 20,
    ) -> QAdd:
        """Derive every multiplier from the three real scales (``add_multipliers``, Eq. 33)."""
        m = add_multipliers(a_scale, b_scale, out_scale, left_shift=left_shift)
        return cls(
            name, tuple(inputs), a_zp, m.a_m0, m.a_shift, b_zp, m.b_m0, m.b_shift,
            out_zp, m.out_m0, m.out_shift, left_shift, act_min, act_max,
            float(a_scale), float(b_scale), float(out_scale),
        )

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        if len(xs) != 2:
            raise TypeError(f"layer {self.name!r} adds two inputs, got {len(xs)}")
        return add(
            xs[0], self.a_zp, self.a_m0, self.a_shift, xs[1], self.b_zp, self.b_m0, self.b_shift,
            self.out_zp, self.out_m0, self.out_shift,
            left_shift=self.left_shift, act_min=self.act_min, act_max=self.act_max,
        )

    @property
    def multipliers(self) -> tuple[np.ndarray, np.ndarray]:
        """(m0, shift), (3,) int64 each: the a, b and output multipliers (Eq. 33-34)."""
        return _pair_multipliers(((self.a_m0, self.a_shift), (self.b_m0, self.b_shift), (self.out_m0, self.out_shift)))

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "add", "inputs": self.inputs,
            "a_scale": self.a_scale, "b_scale": self.b_scale, "out_scale": self.out_scale,
            "a_zp": self.a_zp, "b_zp": self.b_zp, "out_zp": self.out_zp,
            "M": tuple(multiplier_value(int(m), int(sh)) for m, sh in
                       ((self.a_m0, self.a_shift), (self.b_m0, self.b_shift), (self.out_m0, self.out_shift))),
            "m0": (self.a_m0, self.b_m0, self.out_m0), "shift": (self.a_shift, self.b_shift, self.out_shift),
            "left_shift": self.left_shift, "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QGlobalAvgPool:
    """Global average pool (N, C, H, W) -> (N, C); scale and zero point pass through unchanged."""

    name: str
    inputs: tuple[str, ...]
    act_min: int = 0
    act_max: int = 255
    scale: float = 1.0
    zero_point: int = 0

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)

    @property
    def in_scale(self) -> float:
        return self.scale

    @property
    def out_scale(self) -> float:
        return self.scale

    @property
    def in_zp(self) -> int:
        return self.zero_point

    @property
    def out_zp(self) -> int:
        return self.zero_point

    @property
    def multipliers(self) -> tuple[np.ndarray, np.ndarray]:
        """No multiplier: the mean keeps the input's grid (two empty int64 arrays)."""
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        (x,) = _one_input(self, xs)
        return avg_pool(x, act_min=self.act_min, act_max=self.act_max)

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "global avg pool", "inputs": self.inputs,
            "in_scale": self.scale, "out_scale": self.scale, "in_zp": self.zero_point,
            "out_zp": self.zero_point, "clamp": (self.act_min, self.act_max),
        }


@dataclass(frozen=True, eq=False)
class QRequantize:
    """Change the grid of a tensor from (in_scale, in_zp) to (out_scale, out_zp) (``requantize``)."""

    name: str
    inputs: tuple[str, ...]
    in_zp: int
    m0: int
    shift: int
    out_zp: int
    act_min: int = 0
    act_max: int = 255
    out_dtype: Any = np.uint8
    in_scale: float = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_layer_name(self, 1)
        _multipliers(self.m0, self.shift, 1)

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        (x,) = _one_input(self, xs)
        return requantize(
            x, self.in_zp, self.m0, self.shift, self.out_zp,
            out_dtype=self.out_dtype, act_min=self.act_min, act_max=self.act_max,
        )

    @property
    def multipliers(self) -> tuple[np.ndarray, np.ndarray]:
        """(m0, shift), (1,) int64 each: M = S_in / S_out (Eq. 36)."""
        return _pair_multipliers(((self.m0, self.shift),))

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "requantize", "inputs": self.inputs,
            "in_scale": self.in_scale, "out_scale": self.out_scale,
            "in_zp": self.in_zp, "out_zp": self.out_zp,
            "M": multiplier_value(int(self.m0), int(self.shift)), "m0": int(self.m0), "shift": int(self.shift),
            "clamp": (self.act_min, self.act_max),
        }
