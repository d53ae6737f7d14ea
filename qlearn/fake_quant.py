"""Fake quantization with the straight-through estimator: the primitive QAT is built from (paper Sec. 3).

Wherever the integer model will round, training inserts *fake quantization*: the forward pass rounds
to the grid and back, the backward pass treats the rounding as the identity inside the range and as
a constant outside -- the *straight-through estimator* (STE):

    x_hat = S (clamp(round(x / S) + Z, qmin, qmax) - Z)                       (Eq. 50)
    d x_hat / d x = 1 if S (qmin - Z) <= x <= S (qmax - Z) else 0              (Eq. 52)

* ``fake_quant_ste``  the autograd function above, per-tensor or per-channel (Eqs. 50-52)
* ``weight_scale``    the symmetric weight scale of a (folded) weight tensor, min/max or MSE-optimal
                      (Eqs. 53-54): the torch face of ``qlearn.ranges.weight_qparams``
* ``ActFakeQuant``    asymmetric uint8 activations; the range is an EMA of batch min/max (decay
                      0.999, TensorFlow's default; the paper says "close to 1") and quantization
                      starts after ``delay`` steps (Eqs. 55-57); ``start_calibration`` /
                      ``stop_calibration`` switch it to the running min/max of post-training calibration

The layers that use them (``QATConvBN``, ``QATLinear``, ...) are in ``qlearn.qat_layers``; the fake-quant
MobileNet that ``prepare_qat`` builds is in ``qlearn.qat``.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from qlearn._checks import check_bits, check_bits8, check_bool, check_finite_tensor, check_int
from qlearn.qparams import QParams, integer_limits, qparams_from_range
from qlearn.ranges import GRID_MAX, parse_range_method, weight_qparams

__all__ = [
    "fake_quant_ste",
    "weight_scale",
    "weight_range_kind",
    "WEIGHT_RANGES",
    "ActFakeQuant",
    "set_stat_sync",
    "stat_sync",
]

#: The range rules a weight scale can use (short names of ``qlearn.ranges.RANGE_METHODS``; the
#: labels "min/max" and "MSE-optimal" are accepted too and mean the same).
WEIGHT_RANGES = ("minmax", "mse")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_TINY32 = torch.finfo(torch.float32).tiny  # a scale below this would make 1/S overflow to inf

#: Set by qlearn.distributed while several processes train one model (None: one process). Its
#: ``minmax(lo, hi)`` returns the global batch's (min, max), ``sums(t)`` all-reduces per-channel sums
#: with gradients and ``size`` is the number of processes (equal shares), so every process sees the
#: statistics of the whole global batch.
_STAT_SYNC: Any = None


def set_stat_sync(sync: Any) -> Any:
    """Install ``sync`` (``qlearn.distributed.StatSync`` or None); returns the previous one."""
    global _STAT_SYNC
    previous, _STAT_SYNC = _STAT_SYNC, sync
    return previous


def stat_sync() -> Any:
    """The installed ``StatSync`` (several processes train one model), or None."""
    return _STAT_SYNC


def weight_range_kind(method: Any, name: str = "method") -> str:
    """'minmax' or 'mse' for a weight range rule's name (``qlearn.ranges.parse_range_method``)."""
    try:
        kind = parse_range_method(method)[0]
    except (TypeError, ValueError):
        kind = None
    if kind not in WEIGHT_RANGES:
        raise ValueError(f"{name} must be one of {WEIGHT_RANGES} (or the labels 'min/max', 'MSE-optimal'), "
                         f"got {method!r}")
    return kind


# ------------------------------------------------------------------------------------ fake quant
def _broadcast(v: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """(C,) -> (1, .., C, .., 1) with C at ``axis``; scalars unchanged."""
    if axis is None:
        return v
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize_int(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """q = clamp(round(x * (1/S)) + Z, qmin, qmax), as floats holding integers (Eq. 50, first half).

    x times the float32 reciprocal of S, rounded half to even -- the arithmetic of
    ``torch.fake_quantize_per_tensor_affine``, so the two agree bit for bit. ``scale``/``zp`` are
    already broadcast against x.
    """
    inv = 1.0 / scale
    return torch.clamp(torch.round(x * inv) + zp, qmin, qmax)


class _FakeQuantSTE(torch.autograd.Function):
    """x -> S (clamp(round(x/S) + Z, qmin, qmax) - Z) forward; STE backward (Eqs. 50-52)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:  # type: ignore[override]
        q = quantize_int(x, scale, zp, qmin, qmax)
        lo = (qmin - zp) * scale  # the real ends of the grid (Eq. 7)
        hi = (qmax - zp) * scale
        ctx.save_for_backward((x >= lo) & (x <= hi))  # inside, boundaries included
        return (q - zp) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def fake_quant_ste(
    x: torch.Tensor, scale: Any, zero_point: Any, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Fake-quantize ``x`` with a straight-through gradient (Eqs. 50-52; paper Sec. 3).

        forward : x_hat = S (clamp(round(x / S) + Z, qmin, qmax) - Z)       (Eq. 50; Eq. 51 per channel)
        backward: d x_hat / d x = 1 for S (qmin - Z) <= x <= S (qmax - Z), else 0   (Eq. 52)

    The gradient is 1 on the whole representable interval including both ends, and 0 where the
    clamp is active (TensorFlow's FakeQuantWithMinMaxVarsGradient; PyTorch's own fake-quant decides
    "inside" after rounding, so the two differ only within half a step outside the ends).
    No gradient flows to ``scale`` or ``zero_point``: ranges come from min/max or an EMA, not SGD.

    x          : float tensor, any shape, finite (NaN or inf raise ValueError).
    scale      : a positive number (per-tensor) or a (C,) tensor/sequence (per-channel, with ``axis``)
    zero_point : an integer in [qmin, qmax], or (C,) integers
    qmin, qmax : integer limits, e.g. 0, 255 (uint8) or -127, 127 (narrow int8)
    axis       : None (per-tensor) or the channel axis of x for per-channel parameters
    Rounding is half to even on x * (1/S) in x's dtype, as torch.fake_quantize_per_*_affine.
    """
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point torch tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    with torch.no_grad():
        check_finite_tensor(x, "x")  # NaN would pass through round and clamp silently
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    qmin, qmax = int(qmin), int(qmax)
    if not qmin < qmax:
        raise ValueError(f"qmin must be below qmax, got qmin={qmin}, qmax={qmax}")
    scale_t = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    zp_raw = torch.as_tensor(zero_point, device=x.device)
    if zp_raw.is_floating_point() and not torch.equal(zp_raw, torch.round(zp_raw)):
        raise TypeError(f"zero_point must be an integer (a value of q), got {zero_point!r}")
    if zp_raw.dtype == torch.bool:
        raise TypeError("zero_point must be an integer, got a bool")
    zp_t = zp_raw.to(x.dtype)
    if not torch.all(torch.isfinite(scale_t)) or torch.any(scale_t <= 0):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    if torch.any(zp_t < qmin) or torch.any(zp_t > qmax):
        raise ValueError(f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}], got {zero_point!r}")
    if axis is None:
        if scale_t.ndim != 0 or zp_t.ndim != 0:
            raise ValueError("per-tensor fake quant (axis=None) needs a scalar scale and zero_point; "
                             "pass axis=<channel axis> for per-channel parameters")
    else:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be None or an integer, got {axis!r}")
        if not -x.ndim <= int(axis) < x.ndim:
            raise ValueError(f"axis={axis} does not exist for a tensor with {x.ndim} dimension(s)")
        axis = int(axis) % x.ndim
        channels = x.shape[axis]
        if scale_t.ndim != 1 or scale_t.shape[0] != channels:
            raise ValueError(f"per-channel scale must have shape ({channels},) for axis {axis} of x "
                             f"with shape {tuple(x.shape)}, got {tuple(scale_t.shape)}")
        zp_t = torch.broadcast_to(zp_t, (channels,)) if zp_t.ndim == 0 else zp_t
        if zp_t.shape != (channels,):
            raise ValueError(f"per-channel zero_point must have shape ({channels},), got {tuple(zp_t.shape)}")
    s, z = _broadcast(scale_t, x.ndim, axis), _broadcast(zp_t, x.ndim, axis)
    return _FakeQuantSTE.apply(x, s, z, qmin, qmax)


# ------------------------------------------------------------------------------------ weights
def _weight_limits(bits: int) -> tuple[int, int]:
    """Narrow symmetric limits [-(2^(b-1) - 1), 2^(b-1) - 1]: [-127, 127] for 8 bits (Eq. 53)."""
    return integer_limits(bits, signed=True, narrow_range=True)


def weight_scale(w: torch.Tensor, bits: int = 8, *, per_channel: bool = True, method: str = "minmax", grid: int = 64) -> torch.Tensor:
    """The symmetric weight scale S_w (zero point 0), per output channel or per tensor (Eqs. 53-54).

    minmax: S_w = max|w| / qmax,  qmax = 2^(bits-1) - 1                         (Eq. 53)
    mse   : S_w = alpha* max|w| / qmax, alpha* = argmin_alpha mean (fq_alpha(w) - w)^2   (Eq. 54)
            the search of ``qlearn.ranges.mse_range``: ``grid`` values of alpha in (0, 1], then
            ``grid`` values around the best one, for every channel at once; grid in [2, 1024].
    Both are ``qlearn.ranges.weight_qparams`` -- the one weight-qparams function -- computed in float64
    on a CPU copy of w; the scale is then rounded to w's dtype (float32), the dtype the forward pass
    multiplies in.
    ``method`` is 'minmax' or 'mse' (or the labels 'min/max', 'MSE-optimal').
    w: (Cout, ...) float tensor (folded weights); returns (Cout,) tensor on w's device when
    per_channel, a 0-d tensor otherwise (w's dtype); detached (no gradient flows into the scale). An all-zero
    channel, or one whose scale would fall below the smallest normal float32, gets S_w = 1 (0 is still
    exact).
    """
    if not isinstance(w, torch.Tensor) or not torch.is_floating_point(w):
        raise TypeError(f"w must be a floating-point torch tensor, got {type(w).__name__}")
    if w.ndim < 1 or w.numel() == 0:
        raise ValueError(f"w must be a non-empty tensor with the output channel first, got shape {tuple(w.shape)}")
    bits = check_bits(bits)
    per_channel = check_bool(per_channel, "per_channel")
    kind = weight_range_kind(method)
    grid = check_int(grid, "grid", minimum=2, maximum=GRID_MAX)
    flat = w.detach().reshape(w.shape[0], -1)  # (C, M): per-tensor ranges reduce over all of it
    arr = flat.cpu().double().numpy()  # float64: exact copies of float32 weights
    qp = weight_qparams(arr, bits, per_channel=per_channel, method=kind, grid=grid)
    scale = torch.as_tensor(np.asarray(qp.scale), dtype=w.dtype).to(w.device)  # (C,) or 0-d
    return torch.where(scale >= _TINY32, scale, torch.ones_like(scale))


def bias_fake_quant(b: torch.Tensor, bias_scale: torch.Tensor) -> torch.Tensor:
    """b_hat = S1 S2 clamp(round(b / (S1 S2)), int32) with a straight-through gradient (Eq. 65).

    The integer kernel adds round(b / (S1 S2)) to its int32 accumulator (paper Sec. 2.4, Eq. 24);
    rounding b here too makes the fake-quant model compute what the integer model computes.
    b, bias_scale: (C,) float tensors.
    """
    q = torch.clamp(torch.round(b.detach() / bias_scale), INT32_MIN, INT32_MAX)
    return b + (q * bias_scale - b).detach()


# ------------------------------------------------------------------------------------ activations
class ActFakeQuant(nn.Module):
    """Asymmetric unsigned activation fake-quant with an EMA range and a start delay (Eqs. 55-57).

    Training mode, each forward:  (lo, hi) <- EMA of (min x, max x), decay ``decay`` (the first batch
    initialises them; Eq. 55), then x is fake-quantized with the parameters of [lo, hi] (nudged zero
    point, Eqs. 4-6 via ``qparams_from_range``) -- but only once ``step > delay`` (Eq. 56).
    Eval mode: fake-quantize with the stored range (no update); before any range exists, identity.
    ``fixed_range=(lo, hi)``: a known range, never updated (the model input: (0, 1)).
    Calibration (``start_calibration`` ... ``stop_calibration``, what ``qlearn.ptq.calibrate`` does):
    observe the running min/max of x and pass x through unquantized; the attribute ``calibrating``
    says whether that is happening.
    ``enabled=False`` switches quantization off (observation continues).

    Buffers lo, hi (float32), count (batches seen), step (training forwards): saved in state_dict.
    """

    def __init__(self, bits: int = 8, decay: float = 0.999, delay: int = 0, fixed_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        bits = check_bits8(bits)  # stored as uint8
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), e.g. 0.999, got {decay!r}")
        self.bits = bits
        self.qmin, self.qmax = integer_limits(bits)  # (0, 2^bits - 1)
        self.decay = float(decay)
        self.delay = check_int(delay, "delay", minimum=0)
        self.fixed = fixed_range is not None
        self.enabled = True
        self.calibrating = False
        lo, hi = (float(fixed_range[0]), float(fixed_range[1])) if fixed_range is not None else (0.0, 0.0)
        if fixed_range is not None and not lo < hi:
            raise ValueError(f"fixed_range needs lo < hi, got {fixed_range!r}")
        self.register_buffer("lo", torch.tensor(lo))
        self.register_buffer("hi", torch.tensor(hi))
        self.register_buffer("count", torch.tensor(1 if self.fixed else 0, dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))

    # -- range and parameters
    @property
    def has_range(self) -> bool:
        return bool(self.count > 0)

    def qparams(self) -> QParams:
        """The current (S, Z) from [lo, hi] (nudged zero point, Eqs. 4-6), scale rounded to float32.

        The float32 rounding makes ``scale`` exactly the number the fake-quant forward multiplies by,
        so the integer model built from it (``qlearn.convert``) uses the same grid.
        """
        if not self.has_range:
            raise ValueError("this activation quantizer has seen no data yet: run a few batches through the "
                             "model in training mode or calibrate it (qlearn.ptq.calibrate)")
        qp = qparams_from_range(float(self.lo), float(self.hi), self.bits)
        scale32 = float(torch.tensor(qp.scale, dtype=torch.float32))
        return QParams(scale32, qp.zero_point, qp.qmin, qp.qmax)

    @torch.no_grad()
    def observe(self, x: torch.Tensor, *, ema: bool = True) -> None:
        """Update (lo, hi) with this batch: EMA (Eq. 55) or running min/max (calibration)."""
        if self.fixed:
            return
        lo_b, hi_b = x.detach().min().to(self.lo.dtype), x.detach().max().to(self.hi.dtype)
        sync = stat_sync()
        if ema and sync is not None:  # several processes: the global batch's range
            lo_b, hi_b = sync.minmax(lo_b, hi_b)
        if not (torch.isfinite(lo_b) and torch.isfinite(hi_b)):
            raise ValueError("an activation contains NaN or inf; quantization ranges need finite values "
                             "(lower the learning rate or check the input)")
        if self.count == 0:
            self.lo.copy_(lo_b)
            self.hi.copy_(hi_b)
        elif ema:
            d = self.decay
            self.lo.mul_(d).add_((1.0 - d) * lo_b)
            self.hi.mul_(d).add_((1.0 - d) * hi_b)
        else:
            self.lo.copy_(torch.minimum(self.lo, lo_b))
            self.hi.copy_(torch.maximum(self.hi, hi_b))
        self.count += 1

    def start_calibration(self) -> None:
        """Forget the range and observe the running min/max of what follows, unquantized (PTQ).

        A fixed range (the model input's) is kept and stays quantized: there is nothing to calibrate.
        """
        if self.fixed:
            return
        self.count.zero_()
        self.calibrating = True

    def stop_calibration(self) -> None:
        """Quantize again, with the range observed since ``start_calibration``."""
        self.calibrating = False

    @property
    def active(self) -> bool:
        """Is x fake-quantized now? (enabled, a range exists, past the delay when training; Eq. 56)"""
        if not self.enabled or self.calibrating or not self.has_range:
            return False
        return self.fixed or not self.training or int(self.step) > self.delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x, ema=False)
            return x
        if self.training:
            self.observe(x, ema=True)
            self.step += 1
        if not self.active:
            return x
        qp = self.qparams()
        return fake_quant_ste(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)

    def extra_repr(self) -> str:
        rng = f"[{float(self.lo):.4g}, {float(self.hi):.4g}]" if self.has_range else "unset"
        kind = "fixed" if self.fixed else f"ema decay={self.decay}, delay={self.delay}"
        return f"bits={self.bits}, range={rng}, {kind}"


