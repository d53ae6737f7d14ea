"""Plain data between the grader and a sandboxed submission: JSON lines, never pickle.

The grader sends a submission's process the cases to run (``encode`` of argument tuples) and gets
back, for every case, what the learner's function returned or raised (``encode_outcome``). Nothing
that crosses this wire is code: decoding builds numbers, strings, tuples, lists, numpy arrays (from
raw bytes of a fixed list of dtypes), torch tensors (from such arrays), exceptions (new classes that
derive from a *built-in* exception and carry only a message), and ``Opaque`` stand-ins that only
repr. The decoder never trusts the sender: every message is size-, depth- and element-limited and a
message that breaks a rule raises ``WireError``.

Encoding (each value is one JSON object or a JSON scalar):

    None, bool, str                 null / true / false / {"s": text}
    int                             {"i": decimal text}          (any size Python int, up to 4000 digits)
    float                           {"f": float.hex(x)}          (exact, NaN and inf included)
    complex                         {"c": [hex real, hex imag]}
    tuple / list                    {"t": [...]} / {"l": [...]}
    numpy array                     {"nd": dtype.str, "shape": [...], "b64": raw bytes}
    numpy scalar                    the same with "scalar": true (a 0-d array, read back as a scalar)
    torch tensor                    {"torch": <numpy array>}
    anything else                   {"obj": type name, "repr": repr text (400 chars at most)}
"""
from __future__ import annotations

import base64
import builtins
import json
import math
import re
from typing import Any

import numpy as np

from qlearn.grading.judge import Outcome
from qlearn.grading.spec import ContractError

__all__ = ["WireError", "Opaque", "encode", "decode", "dumps", "loads", "encode_outcome", "decode_outcome",
           "MAX_MESSAGE_BYTES"]

MAX_MESSAGE_BYTES = 64 * 2**20  # one JSON line; a longer one is refused (a learner's runaway output)
MAX_DEPTH = 24  # nesting of tuples/lists
MAX_ARRAY_BYTES = 16 * 2**20  # one array
MAX_ITEMS = 200_000  # elements of all lists/tuples in one value
MAX_TEXT = 20_000  # characters of a string, repr or message
_DTYPES = {np.dtype(t).str for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                    "uint64", "float16", "float32", "float64", "complex64", "complex128")}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")


class WireError(ValueError):
    """A message that is not valid plain data (the text says which rule it broke)."""


class Opaque:
    """A value the wire does not carry (a dict, a learner's own class, ...): only its type name and repr.

    ``Opaque.of("dict", "{1: 2}")`` returns an instance of a class *named* ``dict`` so that messages such
    as "returned dict {1: 2}, expected an int" read as they would in the learner's own process."""

    _classes: dict[str, type] = {}

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text

    @classmethod
    def of(cls, name: str, text: str) -> Opaque:
        name = name if _NAME_RE.match(name or "") else "object"
        sub = cls._classes.get(name)
        if sub is None:
            sub = cls._classes[name] = type(name.rsplit(".", 1)[-1], (cls,), {})
        return sub(text[:MAX_TEXT])


def _cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def _safe_repr(value: Any) -> str:
    try:
        return _cut(repr(value))
    except BaseException as exc:  # a learner's __repr__ that raises (or loops into the time limit)
        if not isinstance(exc, Exception):
            raise
        return f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"


def _array(arr: np.ndarray, scalar: bool = False) -> dict:
    if arr.dtype.str not in _DTYPES or arr.nbytes > MAX_ARRAY_BYTES:
        why = "too large" if arr.dtype.str in _DTYPES else f"of dtype {arr.dtype}"
        return {"obj": "ndarray", "repr": f"<an array {why}, shape {arr.shape}>"}
    data = np.ascontiguousarray(arr).tobytes()
    out = {"nd": arr.dtype.str, "shape": list(arr.shape), "b64": base64.b64encode(data).decode("ascii")}
    if scalar:
        out["scalar"] = True
    return out


def encode(value: Any, _depth: int = 0, _budget: list | None = None) -> Any:
    """``value`` as JSON-ready plain data (see the module docstring). Never raises for odd values:
    what it cannot carry becomes an ``obj`` entry with the value's repr."""
    budget = _budget if _budget is not None else [MAX_ITEMS]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        return _array(np.asarray(value), scalar=True)
    if isinstance(value, int):
        text = str(int(value)) if value.bit_length() < 13000 else None
        return {"i": text} if text is not None and len(text) <= 4000 else {"obj": "int", "repr": "<a huge int>"}
    if isinstance(value, float):
        return {"f": float(value).hex()}
    if isinstance(value, complex):
        return {"c": [value.real.hex(), value.imag.hex()]}
    if isinstance(value, str):
        return {"s": value[:MAX_TEXT]}
    if isinstance(value, (tuple, list)):  # a namedtuple travels as a tuple
        budget[0] -= len(value)
        if _depth >= MAX_DEPTH or budget[0] < 0:
            return {"obj": type(value).__name__, "repr": "<a too deeply nested or too long " + type(value).__name__ + ">"}
        items = [encode(v, _depth + 1, budget) for v in value]
        return {"t": items} if isinstance(value, tuple) else {"l": items}
    if type(value) is np.ndarray:
        return _array(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        try:
            arr = value.detach().cpu().numpy()
        except Exception:
            return {"obj": type(value).__name__, "repr": _safe_repr(value)}
        return {"torch": _array(np.array(arr))}
    return {"obj": type(value).__name__, "repr": _safe_repr(value)}


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT * 4:
        raise WireError(f"{what} must be a string")
    return v


def _decode_array(d: dict) -> np.ndarray:
    dtype = _text(d.get("nd"), "nd")
    if dtype not in _DTYPES:
        raise WireError(f"dtype {dtype!r} is not carried")
    shape = d.get("shape")
    if not isinstance(shape, list) or len(shape) > 32 or not all(type(s) is int and 0 <= s for s in shape):
        raise WireError("shape must be a list of non-negative ints")
    data = base64.b64decode(_text(d.get("b64"), "b64"), validate=True)
    dt = np.dtype(dtype)
    n = math.prod(shape)
    if len(data) > MAX_ARRAY_BYTES or len(data) != n * dt.itemsize:
        raise WireError("array bytes do not match dtype and shape")
    arr = np.frombuffer(data, dtype=dt).reshape(shape).copy()  # writable, owned
    return arr[()] if d.get("scalar") is True and arr.ndim == 0 else arr


def decode(data: Any, _depth: int = 0) -> Any:
    """The value ``encode`` made (raises ``WireError`` for anything else)."""
    if _depth > MAX_DEPTH + 2:
        raise WireError("too deeply nested")
    if data is None or isinstance(data, bool):
        return data
    if not isinstance(data, dict) or len(data) > 4:
        raise WireError(f"unexpected {type(data).__name__} in a message")
    if "i" in data:
        text = _text(data["i"], "i")
        if len(text) > 4000 or not re.fullmatch(r"-?[0-9]+", text):
            raise WireError("bad int")
        return int(text)
    if "f" in data:
        try:
            return float.fromhex(_text(data["f"], "f"))
        except ValueError:
            raise WireError("bad float") from None
    if "c" in data:
        parts = data["c"]
        if not isinstance(parts, list) or len(parts) != 2:
            raise WireError("bad complex")
        try:
            return complex(float.fromhex(_text(parts[0], "c")), float.fromhex(_text(parts[1], "c")))
        except ValueError:
            raise WireError("bad complex") from None
    if "s" in data:
        return _text(data["s"], "s")
    if "t" in data or "l" in data:
        items = data.get("t", data.get("l"))
        if not isinstance(items, list) or len(items) > MAX_ITEMS:
            raise WireError("bad sequence")
        out = [decode(v, _depth + 1) for v in items]
        return tuple(out) if "t" in data else out
    if "nd" in data:
        return _decode_array(data)
    if "torch" in data:
        arr = decode(data["torch"], _depth + 1)
        if not isinstance(arr, np.ndarray):
            raise WireError("bad tensor")
        import torch  # only here, for a tensor: the grader's process stays free of torch otherwise

        return torch.from_numpy(arr)
    if "obj" in data:
        return Opaque.of(_text(data["obj"], "obj"), _text(data.get("repr", ""), "repr"))
    raise WireError(f"unknown entry {sorted(data)[:3]}")


# ------------------------------------------------------------------------------------ exceptions
_EXC_CLASSES: dict[tuple[str, str], type] = {}


def _builtin_base(exc: BaseException) -> type:
    return next(c for c in type(exc).__mro__ if c.__module__ == "builtins")


def encode_exception(exc: BaseException) -> dict:
    try:
        text = str(exc)
    except Exception:
        text = "<str() of the exception raised>"
    out = {"type": type(exc).__name__[:100], "base": _builtin_base(exc).__name__, "text": text[:2000]}
    if isinstance(exc, ContractError):
        out["contract"] = True
    if isinstance(exc, SystemExit):
        out["code"] = _safe_repr(exc.code)
    return out


class _Code:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def decode_exception(d: Any) -> BaseException:
    """An exception the parent can ``isinstance``-test: a new class named as the learner's, deriving
    from the built-in exception it derived from (ValueError, OverflowError, ...); only its message."""
    if not isinstance(d, dict):
        raise WireError("bad exception")
    name, base_name, text = _text(d.get("type"), "type"), _text(d.get("base"), "base"), _text(d.get("text"), "text")
    if d.get("contract") is True:
        return ContractError(text)
    if base_name == "SystemExit":
        return SystemExit(_Code(_text(d.get("code", "None"), "code")))
    base = getattr(builtins, base_name, None)
    if not (isinstance(base, type) and issubclass(base, Exception)):
        base = Exception
    if not _NAME_RE.match(name) or "." in name:
        name = base.__name__
    key = (name, base.__name__)
    cls = _EXC_CLASSES.get(key)
    if cls is None:
        def __init__(self: BaseException, message: str) -> None:
            BaseException.__init__(self, message)

        def __str__(self: BaseException) -> str:
            return str(self.args[0]) if self.args else ""

        try:
            cls = type(name, (base,), {"__init__": __init__, "__str__": __str__})
        except TypeError:  # a built-in that cannot be subclassed
            cls = type(name, (Exception,), {"__init__": __init__, "__str__": __str__})
        _EXC_CLASSES[key] = cls
    return cls(text)


# ------------------------------------------------------------------------------------ outcomes
def encode_outcome(outcome: Any) -> dict:
    """A ``checks.Outcome`` (what one call did) as plain data."""
    if outcome.error is not None:
        return {"raised": encode_exception(outcome.error)}
    return {"value": encode(outcome.value), "changed": outcome.changed}


def decode_outcome(d: Any) -> Any:
    if not isinstance(d, dict):
        raise WireError("an outcome must be an object")
    if "raised" in d:
        return Outcome(error=decode_exception(d["raised"]))
    if "value" not in d:
        raise WireError("an outcome needs a value or raised")
    changed = d.get("changed")
    if changed is not None:
        changed = _text(changed, "changed")[:100]
    return Outcome(value=decode(d["value"]), changed=changed)


# ------------------------------------------------------------------------------------ lines
def dumps(obj: Any) -> bytes:
    """One JSON line (the objects given are already plain data)."""
    return (json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def _no_constants(name: str) -> Any:
    raise WireError(f"{name} is not plain JSON")


def loads(line: bytes, limit: int = MAX_MESSAGE_BYTES) -> Any:
    """Parse one line strictly: size-limited, no NaN/Infinity literals, no deep nesting."""
    if len(line) > limit:
        raise WireError(f"a message of {len(line)} bytes (the limit is {limit})")
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"not a JSON line ({type(exc).__name__})") from None
