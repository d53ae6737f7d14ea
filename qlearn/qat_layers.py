"""The layers of a fake-quant model: what QAT trains and what PTQ calibrates (paper Sec. 3).

Each layer rounds exactly where the integer kernel will, with ``qlearn.fake_quant``'s primitives:

* ``QATConfig``   how a model is quantized: weight bits, per-channel or per-tensor, weight range rule,
                  activation bits, EMA decay, delay, BN freeze step, input range
* ``QATConvBN``   conv + batch norm folded *during training*, weights fake-quantized after the
                  fold, with the batch-statistics correction and a freeze to the moving averages
                  (Krishnamoorthi 2018 Sec. 3.2.2; TensorFlow ``fold_batch_norms``) and ReLU6 as
                  the clamp of the output (Eqs. 58-63, 65)
* ``QATLinear``   the classifier: weight and bias fake-quant, uint8 logits
* ``QATAdd``      the skip connection of MobileNet v2: the *sum* is fake-quantized (Eq. 64)
* ``QATAvgPool``  global average pooling that rounds like the integer kernel (Eq. 68)
* ``set_quantization``  switch weight / activation fake quantization on or off in a whole model

``qlearn.qat.prepare_qat`` assembles them into a fake-quant MobileNet; ``qlearn.convert`` reads the
integers (int8 weights, int32 biases, scales, zero points) straight out of them.

Steps: every module counts its own training-mode forward passes (buffer ``step``); one optimiser step
= one forward, so ``act_quant_delay`` and ``freeze_bn_step`` are measured in training steps. Eval mode
is always the deployable model: activations quantized (once a range exists), BN frozen.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qlearn._checks import check_bits, check_bits8, check_int
from qlearn.bn_fold import fold_bn
from qlearn.fake_quant import (
    ActFakeQuant,
    _broadcast,
    _weight_limits,
    bias_fake_quant,
    fake_quant_ste,
    quantize_int,
    stat_sync,
    weight_range_kind,
    weight_scale,
)

__all__ = ["QATConfig", "QATConvBN", "QATLinear", "QATAdd", "QATAvgPool", "set_quantization"]


def _batch_var_mean(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel (biased variance, mean, count) of z (N, C, H, W) over the batch (Eq. 58).

    With several processes (``qlearn.fake_quant.stat_sync()``) over the global batch: the per-channel
    sums, then the squared deviations from the global mean, are all-reduced (two passes: no
    E[z^2] - mean^2 cancellation).
    """
    n = z.numel() // z.shape[1]
    sync = stat_sync()
    if sync is None:
        var_b, mu_b = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)  # (C,), (C,)
        return var_b, mu_b, n
    total = n * sync.size  # every process holds the same number of images (equal shares)
    mu_b = sync.sums(z.sum(dim=(0, 2, 3))) / total  # (C,)
    var_b = sync.sums(((z - mu_b.reshape(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))) / total  # (C,)
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
                      minimises the weight MSE, Eq. 54); the labels of ``qlearn.ranges.RANGE_METHODS``
                      ('min/max', 'MSE-optimal') are accepted and stored as these short names.
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
            check_bits8(getattr(self, name), name)
        if not isinstance(self.per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {self.per_channel!r}")
        object.__setattr__(self, "weight_range", weight_range_kind(self.weight_range, "weight_range"))
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


# ------------------------------------------------------------------------------------ weights
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
        q = quantize_int(w.detach(), s, torch.zeros_like(s), qmin, qmax)
        return q.to(torch.int8), scale


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
        self.weight_range = weight_range_kind(weight_range, "weight_range")
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
                b_fold = bias_fake_quant(b_fold, bias_scale)
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
        self.weight_range = weight_range_kind(weight_range, "weight_range")
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
            b = bias_fake_quant(b, bias_scale)
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


