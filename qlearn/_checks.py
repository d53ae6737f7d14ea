"""Input checks shared by every module.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, bad
value) with a sentence a learner can act on: what was wrong, and what is allowed.
Nothing here is an ``assert``: asserts vanish under ``python -O``.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

BITS_MIN, BITS_MAX = 2, 16


def as_float_array(x: Any, name: str = "x", *, allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a float64 array, refusing non-numeric data, NaN/inf and (by default) emptiness."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be numbers (a number, list or numpy array), got a string {x!r}")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(
            f"{name} must hold real numbers (int or float dtype), got dtype {arr.dtype}"
        )
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got complex dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: a range needs at least one value")
    if not np.all(np.isfinite(arr)):
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise ValueError(
            f"{name} contains {bad}; quantization needs finite values "
            "(look for a division by zero or an exploding activation upstream)"
        )
    return arr


def check_bits(bits: Any, name: str = "bits") -> int:
    """Bit widths are Python/numpy integers in [2, 16]."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name} must be an integer between {BITS_MIN} and {BITS_MAX}, got {bits!r}")
    bits = int(bits)
    if not BITS_MIN <= bits <= BITS_MAX:
        raise ValueError(f"{name} must be between {BITS_MIN} and {BITS_MAX}, got {bits}")
    return bits


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int | None:
    """``None`` (per-tensor) or an existing axis of an ``ndim``-dimensional array (negative allowed)."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be None (per-tensor) or an integer axis, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} does not exist for an array with {ndim} dimension(s); "
            f"allowed: {-ndim}..{ndim - 1} or None"
        )
    return axis % ndim


def check_integer_array(x: Any, name: str = "x") -> np.ndarray:
    """Integer kernels take integer arrays only (int8/uint8/int32/int64 ...); floats are a ``TypeError``."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return np.asarray(x, dtype=np.int64)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy integer array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer array (e.g. int8, uint8, int32), got dtype {x.dtype}; "
            "quantize real values first with qlearn.quantize"
        )
    return x


#: Seeds are integers in [0, 2^32 - 1]: the range numpy's legacy seeding and scikit-learn's
#: ``random_state`` accept (torch accepts more; the narrowest of the three is the one that works).
SEED_MAX = 2**32 - 1


def check_bool(value: Any, name: str) -> bool:
    """Flags are booleans: ``'False'``, ``'no'``, 0 or 1 are refused (a non-empty string is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """An integer (not a bool, not a float) in [minimum, maximum]; ``None`` too when ``allow_none``."""
    if value is None and allow_none:
        return None
    if minimum is not None and maximum is not None:
        allowed = f"an integer between {minimum} and {maximum}"
    elif minimum is not None:
        allowed = f"an integer >= {minimum}"
    elif maximum is not None:
        allowed = f"an integer <= {maximum}"
    else:
        allowed = "an integer"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}{' or None' if allow_none else ''}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_seed(seed: Any, name: str = "seed", *, maximum: int = SEED_MAX) -> int:
    """A random seed: an integer in [0, ``maximum``] (default [0, 2^32 - 1], see ``SEED_MAX``)."""
    return check_int(seed, name, minimum=0, maximum=maximum)  # type: ignore[return-value]


def check_finite_tensor(t: Any, name: str) -> None:
    """Refuse a torch tensor holding NaN or inf (the numpy path's ``as_float_array`` does the same).

    One ``aminmax`` pass: NaN propagates into both results and inf shows in one of them, so the
    check costs one reduction (~2% of a fake-quant pass), not a boolean mask of the whole tensor.
    """
    if t.numel() == 0 or not t.is_floating_point():
        return
    lo, hi = (float(v) for v in t.detach().aminmax())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = "NaN" if np.isnan(lo) or np.isnan(hi) else "inf"
        raise ValueError(
            f"{name} contains {bad}; it must hold finite values "
            "(look for a division by zero or a diverged training run upstream)"
        )


def check_broadcast(**arrays: Any) -> tuple[int, ...]:
    """The common broadcast shape of the named arrays, or a ValueError naming them and their shapes."""
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    try:
        return tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        names = list(shapes)
        joined = ", ".join(names[:-1]) + " and " + names[-1]
        raise ValueError(
            f"{joined} have shapes that do not broadcast together: {listed} "
            "(per-channel values need one entry per channel along the last axes)"
        ) from None


def check_channel(channel: Any, channels: int, name: str = "channel") -> int:
    """An output-channel index: an integer in [0, channels - 1]."""
    if isinstance(channel, (bool, np.bool_)) or not isinstance(channel, numbers.Integral):
        raise TypeError(f"{name} must be an integer output-channel index, got {channel!r}")
    if not 0 <= int(channel) < channels:
        raise ValueError(f"{name} must be in 0..{channels - 1} (this layer has {channels} output channels), "
                         f"got {channel}")
    return int(channel)


def check_number(value: Any, name: str, low: float, high: float, integer: bool = False) -> Any:
    """``value`` if it is a finite number in [low, high] (an int where ``integer``), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if isinstance(value, float) and not np.isfinite(value):  # NaN compares False with every bound
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def check_open_interval(value: Any, name: str, low: float = 0.0, high: float = float("inf")) -> float:
    """One finite real number strictly inside (low, high) (a scale, a multiplier): returned as a float.

    Numpy scalars and 0-d arrays count; a bool or a string is a ``TypeError``, a list a ``ValueError``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got a bool")
    arr = as_float_array(value, name)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a single number, got shape {arr.shape}")
    v = float(arr)
    if not low < v < high:
        raise ValueError(f"{name} must lie in ({low:g}, {high:g}), got {v!r}")
    return v


def check_bits8(bits: Any, name: str = "bits") -> int:
    """Bits of codes stored in 8-bit integers (int8 weights, uint8 activations): an integer in [2, 8]."""
    bits = check_bits(bits, name)
    if bits > 8:
        raise ValueError(f"{name} must be between 2 and 8 (stored in 8-bit integers), got {bits}")
    return bits
