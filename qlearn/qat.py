"""Quantization-aware training (QAT): train with the rounding that inference will do.

The paper (Sec. 3) trains in floating point but inserts *fake quantization* wherever the integer
model will round: weights are quantized before the convolution uses them, activations where the
integer kernel writes its uint8 output. The forward pass therefore computes exactly what the integer
model will compute (up to float rounding), while the backward pass treats the rounding as the
identity inside the range and as a constant outside -- the *straight-through estimator* (STE):

    x_hat = S (clamp(round(x / S) + Z, qmin, qmax) - Z)                       (Eq. 50)
    d x_hat / d x = 1 if S (qmin - Z) <= x <= S (qmax - Z) else 0              (Eq. 52)

The pieces, each a small ``nn.Module`` (and the only things ``prepare_qat`` builds):

* ``fake_quant_ste``   the autograd function above, per-tensor or per-channel (Eqs. 50-52)
* ``ActFakeQuant``     asymmetric uint8 activations; the range is an EMA of batch min/max (decay
                       0.999, TensorFlow's default; the paper says "close to 1") and quantization
                       starts after ``delay`` steps (Eqs. 55-57)
* ``QATConvBN``        conv + batch norm folded *during training*, weights fake-quantized after the
                       fold, with the batch-statistics correction and a freeze to the moving averages
                       (Krishnamoorthi 2018 Sec. 3.2.2; TensorFlow ``fold_batch_norms``) and ReLU6 as
                       the clamp of the output (Eqs. 58-63, 65)
* ``QATLinear``        the classifier: weight and bias fake-quant, uint8 logits
* ``QATAdd``           the skip connection of MobileNet v2: the *sum* is fake-quantized (Eq. 64)
* ``QATAvgPool``       global average pooling that rounds like the integer kernel (Eq. 68)
* ``QATMobileNet``     the whole network: input fake-quant -> features -> pool -> classifier

``prepare_qat(model, QATConfig(...))`` deep-copies a float ``qlearn.models.MobileNet`` into this form;
``qlearn.ptq`` uses the same modules with training off, and ``qlearn.convert`` reads the integers
(int8 weights, int32 biases, scales, zero points) straight out of them.

Steps: every module counts its own training-mode forward passes (buffer ``step``); one optimiser step
= one forward, so ``act_quant_delay`` and ``freeze_bn_step`` are measured in training steps. Eval mode
is always the deployable model: activations quantized (once a range exists), BN frozen.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qlearn._checks import check_bits, check_bool, check_finite_tensor, check_int
from qlearn.bn_fold import fold_bn
from qlearn.qparams import QParams, integer_limits, qparams_from_range
from qlearn.ranges import GRID_MAX

__all__ = [
    "QATConfig",
    "fake_quant_ste",
    "weight_scale",
    "ActFakeQuant",
    "QATConvBN",
    "QATLinear",
    "QATAdd",
    "QATAvgPool",
    "QATDepthwiseSeparable",
    "QATInvertedResidual",
    "QATMobileNet",
    "prepare_qat",
    "load_qat_state",
    "set_quantization",
    "WEIGHT_RANGES",
]

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


def _batch_var_mean(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel (biased variance, mean, count) of z (N, C, H, W) over the batch (Eq. 58).

    With several processes (``_STAT_SYNC``) over the global batch: the per-channel sums, then the
    squared deviations from the global mean, are all-reduced (two passes: no E[z^2] - mean^2 cancellation).
    """
    n = z.numel() // z.shape[1]
    if _STAT_SYNC is None:
        var_b, mu_b = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)  # (C,), (C,)
        return var_b, mu_b, n
    total = n * _STAT_SYNC.size  # every process holds the same number of images (equal shares)
    mu_b = _STAT_SYNC.sums(z.sum(dim=(0, 2, 3))) / total  # (C,)
    var_b = _STAT_SYNC.sums(((z - mu_b.reshape(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))) / total  # (C,)
    return var_b, mu_b, total


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class QATConfig:
    """How ``prepare_qat`` (and ``qlearn.ptq``) quantize a model.

    weight_bits     : 2..8. Weights are symmetric, narrow range: [-(2^(b-1) - 1), 2^(b-1) - 1],
                      zero point 0 (symmetric: Krishnamoorthi 2018, TFLite's int8 spec; the narrow
                      range [-127, 127] for 8 bits is the paper's, Sec. 3.1). Stored as int8.
    per_channel     : one weight scale per output channel (True) or one per tensor (False). Folding
                      BN makes channel ranges differ a lot, which is why this switch matters.
    weight_range    : 'minmax' (S = max|w_fold| / qmax, Eq. 53) or 'mse' (the clipping that
                      minimises the weight MSE, Eq. 54).
    act_bits        : 2..8 bits of the asymmetric unsigned activations (8 = uint8, the paper's).
    ema_decay       : decay of the activation-range EMA, in [0, 1) (Eq. 55); the paper asks for
                      "close to 1", 0.999 is TensorFlow's default.
    act_quant_delay : training steps during which activation ranges are observed but activations
                      are not quantized yet (Eq. 56). 0 = quantize from the first step.
    freeze_bn_step  : after this many training steps batch norm stops using batch statistics and
                      stops updating its moving averages (Eq. 62); None = never during training.
    input_range     : the real range of the model input, fixed: (0, 1) gives scale 1/255, zero
                      point 0 for images in [0, 1]. None = learn it with an EMA like any activation.
    """

    weight_bits: int = 8
    per_channel: bool = True
    weight_range: str = "minmax"
    act_bits: int = 8
    ema_decay: float = 0.999
    act_quant_delay: int = 0
    freeze_bn_step: int | None = None
    input_range: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            bits = check_bits(getattr(self, name), name)
            if bits > 8:
                raise ValueError(f"{name} must be between 2 and 8 (stored in 8-bit integers), got {bits}")
        if not isinstance(self.per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {self.per_channel!r}")
        if self.weight_range not in WEIGHT_RANGES:
            raise ValueError(f"weight_range must be one of {WEIGHT_RANGES}, got {self.weight_range!r}")
        d = self.ema_decay
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= float(d) < 1.0:
            raise ValueError(f"ema_decay must be a number in [0, 1), e.g. 0.999, got {d!r}")
        check_int(self.act_quant_delay, "act_quant_delay", minimum=0)
        check_int(self.freeze_bn_step, "freeze_bn_step", minimum=0, allow_none=True)
        if self.input_range is not None:
            r = self.input_range
            if not isinstance(r, (tuple, list)) or len(r) != 2:
                raise TypeError(f"input_range must be a pair (lo, hi) or None, got {r!r}")
            if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in r):
                raise TypeError(f"input_range must hold two numbers, got {r!r}")
            if not float(r[0]) < float(r[1]):
                raise ValueError(f"input_range needs lo < hi, got {r!r}")
            object.__setattr__(self, "input_range", (float(r[0]), float(r[1])))

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ fake quant
def _broadcast(v: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """(C,) -> (1, .., C, .., 1) with C at ``axis``; scalars unchanged."""
    if axis is None:
        return v
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _quantize_int(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
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
        q = _quantize_int(x, scale, zp, qmin, qmax)
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
            searched like ``qlearn.ranges.mse_range``: ``grid`` values of alpha in (0, 1], then
            ``grid`` values around the best one, for every channel at once; grid in [2, 1024].
    w: (Cout, ...) float tensor (folded weights); returns (Cout,) float tensor when per_channel,
    a 0-d tensor otherwise; detached (no gradient flows into the scale). An all-zero channel gets
    S_w = 1 (0 is still exact).
    """
    if not isinstance(w, torch.Tensor) or not torch.is_floating_point(w):
        raise TypeError(f"w must be a floating-point torch tensor, got {type(w).__name__}")
    if w.ndim < 1 or w.numel() == 0:
        raise ValueError(f"w must be a non-empty tensor with the output channel first, got shape {tuple(w.shape)}")
    bits = check_bits(bits)
    per_channel = check_bool(per_channel, "per_channel")
    if method not in WEIGHT_RANGES:
        raise ValueError(f"method must be one of {WEIGHT_RANGES}, got {method!r}")
    grid = check_int(grid, "grid", minimum=2, maximum=GRID_MAX)
    _, qmax = _weight_limits(bits)
    w = w.detach()
    flat = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)  # (C, M)
    amax = flat.abs().amax(dim=1)  # (C,)
    if method == "mse":
        def errors(alpha: torch.Tensor) -> torch.Tensor:  # alpha (K, C) -> mse (K, C)
            s = (alpha * amax) / qmax
            s = torch.where(s >= _TINY32, s, torch.ones_like(s))[..., None]  # (K, C, 1)
            q = _quantize_int(flat, s, torch.zeros_like(s), -qmax, qmax)
            return ((q * s - flat) ** 2).mean(dim=-1)

        def search(alphas: torch.Tensor) -> torch.Tensor:  # (K, C) -> best (C,)
            best = torch.argmin(errors(alphas), dim=0)
            return alphas[best, torch.arange(alphas.shape[1], device=alphas.device)]

        C = flat.shape[0]
        coarse = torch.linspace(1.0 / grid, 1.0, grid, dtype=w.dtype, device=w.device)[:, None].expand(grid, C)
        best = search(coarse)
        step = 1.0 / grid
        offsets = torch.linspace(-step, step, grid, dtype=w.dtype, device=w.device)[:, None]
        fine = torch.clamp(best[None, :] + offsets, step / grid, 1.0)
        amax = search(torch.cat([fine, best[None, :]])) * amax
    scale = amax / qmax  # (C,)
    scale = torch.where(scale >= _TINY32, scale, torch.ones_like(scale))
    return scale if per_channel else scale[0]


class _WeightQuant:
    """Mixin: fake-quantize a weight tensor per the config; expose the integers for conversion."""

    weight_bits: int
    per_channel: bool
    weight_range: str
    weight_quant: bool

    def _weight_qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        qmin, qmax = _weight_limits(self.weight_bits)
        return weight_scale(w, self.weight_bits, per_channel=self.per_channel, method=self.weight_range), qmin, qmax

    def _fake_quant_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fq(w), S_w), or (w, None) when weight quantization is switched off."""
        if not self.weight_quant:
            return w, None
        scale, qmin, qmax = self._weight_qparams(w)
        return fake_quant_ste(w, scale, 0, qmin, qmax, axis=0 if self.per_channel else None), scale

    def _bias_scale(self, s_w: torch.Tensor | None, channels: int) -> torch.Tensor | None:
        """S1 S2 (C,) float32 of the int32 bias, or None when input or weights are not quantized."""
        s_in = self._input_scale()  # type: ignore[attr-defined]
        if s_in is None or s_w is None:
            return None
        return (s_in * s_w).expand(channels) if s_w.ndim == 0 else s_in * s_w

    def _int_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_q as an int8 tensor, scale) exactly as the forward pass rounds them (Eq. 66)."""
        scale, qmin, qmax = self._weight_qparams(w)
        s = _broadcast(scale, w.ndim, 0 if self.per_channel else None)
        q = _quantize_int(w.detach(), s, torch.zeros_like(s), qmin, qmax)
        return q.to(torch.int8), scale


def _bias_fake_quant(b: torch.Tensor, bias_scale: torch.Tensor) -> torch.Tensor:
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
    ``calibrating=True`` (set by ``qlearn.ptq.calibrate``): observe running min/max, pass x through.
    ``enabled=False`` switches quantization off (observation continues).

    Buffers lo, hi (float32), count (batches seen), step (training forwards): saved in state_dict.
    """

    def __init__(self, bits: int = 8, decay: float = 0.999, delay: int = 0, fixed_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        bits = check_bits(bits)
        if bits > 8:
            raise ValueError(f"activation bits must be between 2 and 8 (stored as uint8), got {bits}")
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
        if ema and _STAT_SYNC is not None:  # several processes: the global batch's range
            lo_b, hi_b = _STAT_SYNC.minmax(lo_b, hi_b)
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


class _Linked:
    """Mixin for layers that need the quantizer of their input (bias scale S1 S2, pooling grid).

    The link is kept in a tuple so that torch does not register the quantizer twice as a child;
    ``copy.deepcopy`` of the whole model keeps it pointing at the copied quantizer.
    """

    _input_quant: tuple

    def link_input(self, quant: ActFakeQuant | None) -> None:
        if quant is not None and not isinstance(quant, ActFakeQuant):
            raise TypeError(f"the input quantizer must be an ActFakeQuant, got {type(quant).__name__}")
        object.__setattr__(self, "_input_quant", (quant,) if quant is not None else ())

    @property
    def input_quant(self) -> ActFakeQuant | None:
        return self._input_quant[0] if self._input_quant else None

    def _input_scale(self) -> float | None:
        """S1 when the input is currently on a quantization grid, else None."""
        q = self.input_quant
        return q.qparams().scale if q is not None and q.active else None


# ------------------------------------------------------------------------------------ layers
class QATConvBN(_WeightQuant, _Linked, nn.Module):
    """Conv + BatchNorm (+ ReLU6) folded during training, weights fake-quantized after folding.

    With sigma = sqrt(running_var + eps) (the moving average) and w_fold = gamma w / sigma (Eq. 60):

    training, before the freeze (Krishnamoorthi 2018 Sec. 3.2.2, Eq. 61):
        mu_B, sigma_B^2 = batch mean and (biased) variance of conv(x, w), the *float* conv (Eq. 58)
        running stats  <- momentum update with mu_B and the unbiased variance        (Eq. 59)
        y = (sigma / sigma_B) conv(x, fq(w_fold)) + beta - gamma mu_B / sigma_B
      which equals batch norm with batch statistics when fq is the identity, while the weights are
      quantized at the slowly moving scale gamma / sigma instead of a scale that jumps every batch.
    training after ``freeze_step`` steps, and eval (Eq. 62):
        y = conv(x, fq(w_fold)) + fq_bias(beta - gamma mu / sigma)     (mu, sigma: moving averages)
      -- exactly the integer model's layer; the bias is rounded on the int32 grid of scale S1 S2
      when the input is quantized (Eq. 65).
    then  y = clamp(y, 0, 6) when ``relu6`` (Eq. 63) and  out = act(y)  (uint8 fake quant, Eq. 57).

    Parameters are the float model's: ``conv.weight`` (Cout, Cin/groups, k, k), ``bn.weight``
    (gamma), ``bn.bias`` (beta); buffers ``bn.running_mean``, ``bn.running_var``.
    (N, Cin, H, W) float -> (N, Cout, H/stride, W/stride) float on the output grid.
    """

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: bool, act: ActFakeQuant, *,
        weight_bits: int = 8, per_channel: bool = True, weight_range: str = "minmax",
        freeze_step: int | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError("QATConvBN needs an nn.Conv2d and an nn.BatchNorm2d")
        if conv.bias is not None:
            raise ValueError("QATConvBN expects a conv without bias (BN's beta is the bias), as in qlearn.models")
        if bn.num_features != conv.out_channels or not bn.affine or bn.running_mean is None:
            raise ValueError("bn must be an affine BatchNorm2d with running statistics over the conv's output channels")
        self.conv = conv
        self.bn = bn
        self.relu6 = bool(relu6)
        self.act = act
        self.weight_bits = check_bits(weight_bits)
        self.per_channel = bool(per_channel)
        self.weight_range = weight_range
        self.weight_quant = True
        self.freeze_step = check_int(freeze_step, "freeze_step", minimum=0, allow_none=True)
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        self.link_input(None)

    @property
    def frozen(self) -> bool:
        """Batch norm uses (and no longer updates) its moving averages."""
        return not self.training or (self.freeze_step is not None and int(self.step) >= self.freeze_step)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_fold, b_fold) from the moving averages (Eqs. 41-42 of bn_fold; Eq. 60): differentiable."""
        bn = self.bn
        return fold_bn(self.conv.weight, None, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)

    @torch.no_grad()
    def _update_running_stats(self, mu_b: torch.Tensor, var_b: torch.Tensor, n: int) -> None:
        bn = self.bn
        bn.num_batches_tracked += 1
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - m).add_(m * mu_b)
        bn.running_var.mul_(1 - m).add_(m * var_b * n / max(n - 1, 1))  # unbiased, as nn.BatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if self.training:
            self.step += 1
        if self.training and not (self.freeze_step is not None and int(self.step) > self.freeze_step):
            z = self._conv(x, self.conv.weight)  # float conv: batch statistics (Eq. 58)
            var_b, mu_b, n_b = _batch_var_mean(z)  # (C,), (C,): over the global batch when distributed
            self._update_running_stats(mu_b.detach(), var_b.detach(), n_b)
            w_fold, _ = self.folded()  # uses the just-updated moving averages
            sigma = torch.sqrt(bn.running_var + bn.eps)  # (C,) no grad
            sigma_b = torch.sqrt(var_b + bn.eps)  # (C,)
            w_hat, _ = self._fake_quant_weight(w_fold)
            y = self._conv(x, w_hat)
            c = (sigma / sigma_b).reshape(1, -1, 1, 1)  # the correction (Eq. 61)
            y = y * c + (bn.bias - bn.weight * mu_b / sigma_b).reshape(1, -1, 1, 1)
        else:
            w_fold, b_fold = self.folded()
            w_hat, s_w = self._fake_quant_weight(w_fold)
            bias_scale = self._bias_scale(s_w, self.conv.out_channels)
            if bias_scale is not None:
                b_fold = _bias_fake_quant(b_fold, bias_scale)
            y = self._conv(x, w_hat) + b_fold.reshape(1, -1, 1, 1)  # (Eq. 62)
        if self.relu6:
            y = torch.clamp(y, 0.0, 6.0)  # ReLU6 = the clamp of the uint8 output (Eq. 63)
        return self.act(y)

    def int_params(self) -> dict:
        """The integers and scales of this layer as the eval-mode forward uses them (for ``convert``).

        w_q (Cout, Cin/g, kh, kw) int8, w_scale (Cout,) or scalar float32, bias_q (Cout,) int64
        (range-checked by convert), and the input / output QParams.
        """
        if self.input_quant is None:
            raise ValueError("this QATConvBN is not linked to its input quantizer; build the model with prepare_qat")
        w_fold, b_fold = self.folded()
        w_q, s_w = self._int_weight(w_fold)
        s_in = self.input_quant.qparams().scale
        bias_scale = (s_in * s_w).expand(self.conv.out_channels) if s_w.ndim == 0 else s_in * s_w
        bias_q = torch.round(b_fold.detach() / bias_scale)
        return dict(w_q=w_q, w_scale=s_w.detach(), bias_q=bias_q.to(torch.float64), in_qp=self.input_quant.qparams(),
                    out_qp=self.act.qparams(), relu6=self.relu6)

    def extra_repr(self) -> str:
        return (f"relu6={self.relu6}, weight_bits={self.weight_bits}, per_channel={self.per_channel}, "
                f"weight_range={self.weight_range!r}, freeze_step={self.freeze_step}")


class QATLinear(_WeightQuant, _Linked, nn.Module):
    """The classifier: y = act(x fq(W)^T + fq_bias(b)) with uint8 output (the logits' grid).

    W (Out, In) is fake-quantized like the conv weights (per output row when per_channel); the bias
    is rounded to the int32 grid of scale S1 S2 (Eq. 65). (N, In) -> (N, Out).
    """

    def __init__(self, linear: nn.Linear, act: ActFakeQuant, *, weight_bits: int = 8, per_channel: bool = True,
                 weight_range: str = "minmax") -> None:
        nn.Module.__init__(self)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QATLinear needs an nn.Linear, got {type(linear).__name__}")
        self.linear = linear
        self.act = act
        self.weight_bits = check_bits(weight_bits)
        self.per_channel = bool(per_channel)
        self.weight_range = weight_range
        self.weight_quant = True
        self.link_input(None)

    def _bias(self) -> torch.Tensor:
        b = self.linear.bias
        return b if b is not None else torch.zeros(self.linear.out_features, device=self.linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_hat, s_w = self._fake_quant_weight(self.linear.weight)
        b = self._bias()
        bias_scale = self._bias_scale(s_w, self.linear.out_features)
        if bias_scale is not None:
            b = _bias_fake_quant(b, bias_scale)
        return self.act(F.linear(x, w_hat, b))

    def int_params(self) -> dict:
        if self.input_quant is None:
            raise ValueError("this QATLinear is not linked to its input quantizer; build the model with prepare_qat")
        w_q, s_w = self._int_weight(self.linear.weight)
        s_in = self.input_quant.qparams().scale
        bias_scale = (s_in * s_w).expand(self.linear.out_features) if s_w.ndim == 0 else s_in * s_w
        bias_q = torch.round(self._bias().detach() / bias_scale)
        return dict(w_q=w_q, w_scale=s_w.detach(), bias_q=bias_q.to(torch.float64), in_qp=self.input_quant.qparams(),
                    out_qp=self.act.qparams(), relu6=False)

    def extra_repr(self) -> str:
        return f"weight_bits={self.weight_bits}, per_channel={self.per_channel}, weight_range={self.weight_range!r}"


class QATAdd(nn.Module):
    """Skip connection: out = act(a + b), the sum fake-quantized after the add (Eq. 64; TFLite ADD)."""

    def __init__(self, act: ActFakeQuant) -> None:
        super().__init__()
        self.act = act

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.act(a + b)


class QATAvgPool(_Linked, nn.Module):
    """Global average pool (N, C, H, W) -> (N, C) on the input's grid, rounded like the integer kernel.

    The integer kernel keeps the input's (S, Z) and rounds the mean of the codes half away from zero
    (Eq. 68): q_out = floor((sum q + HW/2) / HW) for uint8 codes. When the input is quantized the
    forward returns S (q_out - Z) computed exactly that way (integers held in floats, exact below
    2^24); the gradient is the plain average's (straight-through).
    """

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.link_input(None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3))  # (N, C)
        q = self.input_quant
        if q is None or not q.active:
            return mean
        qp = q.qparams()
        s = torch.tensor(qp.scale, dtype=x.dtype, device=x.device)
        z = float(qp.zero_point)
        codes = torch.round(x.detach() * (1.0 / s)) + z  # exact codes: x is on the grid
        hw = x.shape[2] * x.shape[3]
        q_out = torch.div(2 * codes.sum(dim=(2, 3)) + hw, 2 * hw, rounding_mode="floor")  # (Eq. 68)
        return mean + ((q_out - z) * s - mean).detach()


class QATDepthwiseSeparable(nn.Module):
    """MobileNet v1 block in QAT form: dw (QATConvBN) then pw (QATConvBN)."""

    def __init__(self, dw: QATConvBN, pw: QATConvBN) -> None:
        super().__init__()
        self.dw, self.pw = dw, pw

    @property
    def output_quant(self) -> ActFakeQuant:
        return self.pw.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class QATInvertedResidual(nn.Module):
    """MobileNet v2 block in QAT form: ``layers`` (QATConvBN ...), and ``add`` (QATAdd) when use_res."""

    def __init__(self, layers: nn.Sequential, add: QATAdd | None) -> None:
        super().__init__()
        self.layers = layers
        self.add = add

    @property
    def use_res(self) -> bool:
        return self.add is not None

    @property
    def output_quant(self) -> ActFakeQuant:
        return self.add.act if self.add is not None else self.layers[-1].act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return self.add(x, y) if self.add is not None else y


class QATMobileNet(nn.Module):
    """input_quant -> features -> pool -> classifier: a MobileNet with fake quantization everywhere
    the integer model rounds. ``config`` is the float model's config (for checkpoints), ``qat_config``
    the QATConfig it was prepared with. (N, C, H, W) in [0, 1] -> (N, num_classes) float logits on
    the uint8 output grid.
    """

    def __init__(self, input_quant: ActFakeQuant, features: nn.Sequential, pool: QATAvgPool,
                 classifier: QATLinear, config: dict, qat_config: QATConfig) -> None:
        super().__init__()
        self.input_quant = input_quant
        self.features = features
        self.pool = pool
        self.classifier = classifier
        self.config = dict(config)
        self.qat_config = qat_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"QATMobileNet expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(self.input_quant(x))))

    def quantizers(self) -> Iterator[tuple[str, ActFakeQuant]]:
        """Every activation quantizer with its module name, in forward order."""
        for name, m in self.named_modules():
            if isinstance(m, ActFakeQuant):
                yield name, m


def _output_quant(block: nn.Module) -> ActFakeQuant:
    return block.act if isinstance(block, QATConvBN) else block.output_quant


def set_quantization(model: nn.Module, *, weights: bool | None = None, activations: bool | None = None) -> nn.Module:
    """Switch weight and/or activation fake quantization on or off in every layer (None = leave).

    ``activations`` covers every ``ActFakeQuant``, the input's included. Ranges keep being observed
    while activations are off. Returns ``model`` (modified in place).
    """
    for name, v in (("weights", weights), ("activations", activations)):
        if v is not None and not isinstance(v, bool):
            raise TypeError(f"{name} must be True, False or None, got {v!r}")
    for m in model.modules():
        if weights is not None and isinstance(m, _WeightQuant):
            m.weight_quant = weights
        if activations is not None and isinstance(m, ActFakeQuant):
            m.enabled = activations
    return model


# ------------------------------------------------------------------------------------ prepare
def prepare_qat(model: nn.Module, config: QATConfig | None = None) -> QATMobileNet:
    """A deep copy of a float ``qlearn.models.MobileNet`` in QAT form (``model`` is untouched).

    Every ``ConvBNReLU`` becomes a ``QATConvBN`` (fold + weight fake-quant + ReLU6 clamp + uint8
    output), every ``InvertedResidual`` with a skip connection gets a ``QATAdd`` that quantizes the
    sum, the input gets a fixed-range quantizer (config.input_range), the pool rounds on its input's
    grid and the classifier becomes a ``QATLinear``. The copy keeps the float weights and BN
    statistics and is returned in training mode, ready to fine-tune (``qlearn.train.train``).
    """
    from qlearn.models import ConvBNReLU, DepthwiseSeparable, InvertedResidual, MobileNet

    if config is None:
        config = QATConfig()
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    if not isinstance(model, MobileNet):
        raise TypeError(f"prepare_qat needs a qlearn.models.MobileNet (mobilenet_v1 / mobilenet_v2), got {type(model).__name__}")
    src = copy.deepcopy(model)
    cfg = config

    def act() -> ActFakeQuant:
        return ActFakeQuant(cfg.act_bits, cfg.ema_decay, cfg.act_quant_delay)

    def conv_bn(block: nn.Module, prev: ActFakeQuant) -> QATConvBN:
        if not isinstance(block, ConvBNReLU):
            raise TypeError(f"expected a ConvBNReLU, found {type(block).__name__}")
        if not isinstance(block.bn, nn.BatchNorm2d) or block.conv.bias is not None:
            raise ValueError("ConvBNReLU blocks must still have their BatchNorm (pass the float model, not a fused one)")
        layer = QATConvBN(block.conv, block.bn, block.relu6, act(), weight_bits=cfg.weight_bits,
                          per_channel=cfg.per_channel, weight_range=cfg.weight_range, freeze_step=cfg.freeze_bn_step)
        layer.link_input(prev)
        return layer

    input_quant = ActFakeQuant(cfg.act_bits, cfg.ema_decay, cfg.act_quant_delay, fixed_range=cfg.input_range)
    prev = input_quant
    blocks: list[nn.Module] = []
    for i, block in enumerate(src.features):
        if isinstance(block, ConvBNReLU):
            new: nn.Module = conv_bn(block, prev)
        elif isinstance(block, DepthwiseSeparable):
            dw = conv_bn(block.dw, prev)
            new = QATDepthwiseSeparable(dw, conv_bn(block.pw, dw.act))
        elif isinstance(block, InvertedResidual):
            layers, p = [], prev
            for sub in block.layers:
                layers.append(conv_bn(sub, p))
                p = layers[-1].act
            new = QATInvertedResidual(nn.Sequential(*layers), QATAdd(act()) if block.use_res else None)
        else:
            raise TypeError(f"features[{i}] is a {type(block).__name__}; prepare_qat handles ConvBNReLU, "
                            "DepthwiseSeparable and InvertedResidual blocks only")
        blocks.append(new)
        prev = _output_quant(new)
    pool = QATAvgPool()
    pool.link_input(prev)
    classifier = QATLinear(src.classifier, act(), weight_bits=cfg.weight_bits, per_channel=cfg.per_channel,
                           weight_range=cfg.weight_range)
    classifier.link_input(prev)  # the pool keeps its input's grid
    qat = QATMobileNet(input_quant, nn.Sequential(*blocks), pool, classifier, getattr(src, "config", {}), cfg)
    return qat.train()


def load_qat_state(model_config: dict, qat_config: QATConfig | dict, state_dict: dict) -> QATMobileNet:
    """Rebuild a saved QAT/PTQ model: ``prepare_qat(build_model(model_config), qat_config)`` then load
    ``state_dict`` (weights, BN statistics, activation ranges and step counters). Returns it in eval mode.

    Use it with a checkpoint written by ``qlearn.train.save_checkpoint(path, qat_model, extra=...)``:
    the checkpoint's ``config`` is the float model's, and ``qat_config`` (a QATConfig or its
    ``to_dict()``) must be the one the model was prepared with. Missing or unexpected tensors raise.
    """
    from qlearn.models import build_model

    if isinstance(qat_config, dict):
        cfg = dict(qat_config)
        if isinstance(cfg.get("input_range"), list):
            cfg["input_range"] = tuple(cfg["input_range"])
        try:
            qat_config = QATConfig(**cfg)
        except TypeError as exc:
            raise ValueError(f"qat_config has unknown or missing fields: {exc}") from None
    if not isinstance(qat_config, QATConfig):
        raise TypeError(f"qat_config must be a QATConfig or a dict of its fields, got {type(qat_config).__name__}")
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    model = prepare_qat(build_model(model_config), qat_config)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"state_dict does not fit a QAT model of this config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(state_dict)
    return model.eval()
