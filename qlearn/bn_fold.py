"""Batch-norm folding: merge a BatchNorm into the convolution before it.

At inference time batch normalization is a fixed per-channel affine map,

    y = gamma (z - mean) / sqrt(var + eps) + beta,        z = w * x + b      (Eq. 40)

so it can be multiplied into the convolution's weights and added into its bias (Eqs. 41-42):

    w_fold = gamma w / sqrt(var + eps)          (one factor per output channel)
    b_fold = beta + (b - mean) gamma / sqrt(var + eps)

and the pair "conv then BN" becomes a single convolution y = w_fold * x + b_fold (Eq. 43). The
integer model (paper Sec. 3.2) only ever sees w_fold and b_fold: these are the weights that get
quantized to int8 and the bias that becomes int32. Folding multiplies each output channel of w by a
different factor, so the folded weights' per-channel ranges can differ by orders of magnitude -- the
reason per-channel weight quantization helps MobileNets so much.

During quantization-aware training the fold is done on every step, with a correction for batch
statistics until BN is frozen (Eqs. 58-62); that lives in ``qlearn.qat``.
"""
from __future__ import annotations

import copy
import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from qlearn._checks import as_float_array, check_finite_tensor
from qlearn.models import ConvBNReLU

__all__ = ["fold_bn", "fuse_conv_bn", "fuse_model"]


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a small positive number (BatchNorm's eps, e.g. 1e-5), got {eps!r}")
    eps = float(eps)
    if not (eps > 0 and np.isfinite(eps)):
        raise ValueError(f"eps must be a small positive number (BatchNorm's eps, e.g. 1e-5), got {eps}")
    return eps


def _fold_torch(w, b, gamma, beta, mean, var, eps):  # type: ignore[no-untyped-def]
    if torch.any(var < 0):
        raise ValueError("var must be non-negative (it is a variance)")
    inv_std = torch.rsqrt(var + eps)  # (C,)
    factor = gamma * inv_std  # (C,)
    w_fold = w * factor.reshape((-1,) + (1,) * (w.ndim - 1))
    b0 = torch.zeros_like(mean) if b is None else b
    b_fold = beta + (b0 - mean) * factor
    return w_fold, b_fold


def fold_bn(w: Any, b: Any, gamma: Any, beta: Any, mean: Any, var: Any, eps: float = 1e-5) -> tuple[Any, Any]:
    """Fold inference-mode batch norm into the preceding layer's weights and bias (Eqs. 41-42).

        w_fold[c] = gamma[c] w[c] / sqrt(var[c] + eps)
        b_fold[c] = beta[c] + (b[c] - mean[c]) gamma[c] / sqrt(var[c] + eps)

    w: (C, ...) weights with the output channel first (conv (C, Cin/groups, kh, kw), linear (C, In)).
    b: (C,) bias, or None for a conv without bias (treated as zeros).
    gamma, beta, mean, var: (C,) BN weight, bias, running mean and running variance.

    Every input must be finite (NaN or inf raise ValueError naming it) and var >= 0.
    With numpy (or list) inputs the arithmetic is float64 and numpy arrays come back; when every
    given input is a torch tensor the result is a torch tensor (same dtype; differentiable, which
    is what folding during training needs, paper Sec. 3.2).
    """
    eps = _check_eps(eps)
    given = {"w": w, "gamma": gamma, "beta": beta, "mean": mean, "var": var}
    if b is not None:
        given["b"] = b
    tensors = [isinstance(v, torch.Tensor) for v in given.values()]
    if all(tensors):
        for name, v in given.items():
            if not torch.is_floating_point(v):
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
            with torch.no_grad():
                check_finite_tensor(v, name)  # as as_float_array does for numpy input
        arrays = given
    elif any(tensors):
        raise TypeError("pass either all torch tensors or all numpy arrays/lists to fold_bn, not a mix")
    else:
        arrays = {name: as_float_array(v, name) for name, v in given.items()}
    w_ = arrays["w"]
    if w_.ndim < 1:
        raise ValueError("w must have the output channel as its first axis, got a scalar")
    channels = w_.shape[0]
    for name in ("b", "gamma", "beta", "mean", "var"):
        if name in arrays and tuple(arrays[name].shape) != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) -- one value per output channel of w "
                f"(w has shape {tuple(w_.shape)}) -- got {tuple(arrays[name].shape)}"
            )
    if all(tensors):
        return _fold_torch(w_, arrays.get("b"), arrays["gamma"], arrays["beta"], arrays["mean"], arrays["var"], eps)
    var_ = arrays["var"]
    if np.any(var_ < 0):
        raise ValueError("var must be non-negative (it is a variance)")
    factor = arrays["gamma"] / np.sqrt(var_ + eps)  # (C,) float64
    w_fold = w_ * factor.reshape((-1,) + (1,) * (w_.ndim - 1))
    b0 = arrays["b"] if "b" in arrays else np.zeros(channels)
    b_fold = arrays["beta"] + (b0 - arrays["mean"]) * factor
    return w_fold, b_fold


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` with BN in eval mode (Eq. 43).

    Uses BN's running statistics whatever mode the modules are in; the inputs are not modified.
    The fold is computed in float64 and cast back to the conv's dtype.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"bn has {bn.num_features} channels but conv has {conv.out_channels} output channels; "
            "fold the BatchNorm that directly follows this conv"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "bn has no running statistics (track_running_stats=False); folding needs fixed mean and var"
        )
    c = conv.out_channels
    with torch.no_grad():
        named = {"conv.weight": conv.weight, "conv.bias": conv.bias, "bn.weight": bn.weight, "bn.bias": bn.bias,
                 "bn.running_mean": bn.running_mean, "bn.running_var": bn.running_var}
        for name, t in named.items():
            if t is not None:
                check_finite_tensor(t, name)
        if torch.any(bn.running_var < 0):
            raise ValueError("bn.running_var must be non-negative (it is a variance)")
        f64 = dict(dtype=torch.float64)
        gamma = bn.weight.to(**f64) if bn.affine else torch.ones(c, **f64)
        beta = bn.bias.to(**f64) if bn.affine else torch.zeros(c, **f64)
        bias = conv.bias.to(**f64) if conv.bias is not None else None
        w_fold, b_fold = fold_bn(
            conv.weight.to(**f64), bias, gamma, beta, bn.running_mean.to(**f64), bn.running_var.to(**f64), bn.eps
        )
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused.weight.copy_(w_fold.to(conv.weight.dtype))
        fused.bias.copy_(b_fold.to(conv.weight.dtype))
    return fused


def fuse_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every qlearn ``ConvBNReLU`` has its BN folded into its conv.

    Each block's ``conv`` becomes the fused conv (with bias) and its ``bn`` an ``nn.Identity``, so the
    copy computes the same function as ``model.eval()`` with one conv per block -- the graph the
    integer model runs. The copy is returned in eval mode; ``model`` is untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    names = {m: n for n, m in fused.named_modules()}
    found = 0
    for module in fused.modules():
        if isinstance(module, ConvBNReLU) and isinstance(module.bn, nn.BatchNorm2d):
            try:
                module.conv = fuse_conv_bn(module.conv, module.bn)
            except ValueError as exc:  # say which block: a model has dozens of them
                raise ValueError(f"block {names[module]!r}: {exc}") from None
            module.bn = nn.Identity()
            found += 1
    if found == 0 and not any(isinstance(m, ConvBNReLU) for m in fused.modules()):
        raise ValueError("model has no qlearn ConvBNReLU blocks to fold (build it with qlearn.models)")
    return fused
