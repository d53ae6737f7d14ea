"""int16 pair arithmetic: why int8 weights stay in [-127, 127], and where x86 int8 kernels saturate.

The paper keeps int8 weight codes in [-127, 127], never -128 (Sec. 3.1); the reason is in its
Appendix B: the kernel adds *pairs* of int8 x int8 products in int16 before widening to int32. A product
of two int8 values lies in [-16256, 16384]; two of them fit int16 ([-32768, 32767]) unless both are
(-128)(-128) = 16384:

    |q1| <= 128, |q2| <= 127   ->   |q1 q2 + q1' q2'| <= 2 * 128 * 127 = 32512 <= 32767     (fits)
    q1 = q2 = q1' = q2' = -128  ->   q1 q2 + q1' q2' = 32768                                 (overflows)

x86 CPUs without VNNI do the same with uint8 activations: AVX2's ``vpmaddubsw`` multiplies uint8 x
int8 and adds adjacent pairs *with int16 saturation*, then ``vpmaddwd`` (times 1) widens the pair sums
to int32. With full-range uint8 codes a pair reaches 2 * 255 * 127 = 64770, far beyond 32767, and the
accumulator of Eq. 25 silently loses the excess. PyTorch's x86 engine (FBGEMM) works this way on CPUs
without VNNI, and so does FBGEMM's depthwise kernel (AVX2 code), which PyTorch uses for depthwise
convolutions with more than 100 channels on every CPU.

The bound for each case is Eq. 75 of docs/equations.md. This module emulates that arithmetic in numpy,
step by step, so that it can be compared with the exact
int64 sum and with PyTorch:

    pair_dot(a, w)        sum over pairs of clamp_int16(a_2j w_2j + a_2j+1 w_2j+1), in int64
    linear / conv2d       qlearn.integer's kernels with that sum in place of the exact one
    saturation(...)       how many outputs saturate, and by how much (accumulator units, output LSBs)
    max_pair_sum(...)     the largest pair sum a layer can reach, whatever pairs the kernel forms

As in FBGEMM, the products use the *raw* codes (a, not a - Z1): the zero point is taken off afterwards
with the weights' row sums, acc = sum a w - Z1 sum w + q_bias, which equals Eq. 25 when nothing saturates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qlearn._checks import check_integer_array
from qlearn.integer import _requantize_acc
from qlearn.integer_args import (
    _activation,
    _bias,
    _clamp,
    _int,
    _linear_args,
    _multipliers,
    _padding,
    _pair,
    _weights,
    _zero_point,
)

__all__ = ["INT16_MIN", "INT16_MAX", "pair_dot", "exact_dot", "im2col", "linear", "conv2d", "Saturation",
           "saturation", "max_pair_sum"]

INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1


def _codes(a: Any, name: str) -> np.ndarray:
    a = check_integer_array(a, name)
    if a.dtype not in (np.uint8, np.int8):
        raise TypeError(f"{name} must be uint8 or int8 codes, got dtype {a.dtype}")
    return a


def _operands(a: Any, w: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _codes(a, "a")
    w = _codes(w, "w")
    if w.dtype != np.int8:
        raise TypeError(f"w must be int8 weights, got dtype {w.dtype}")
    if a.ndim < 1 or w.ndim != 2 or a.shape[-1] != w.shape[1]:
        raise ValueError(f"a must be (..., K) and w (Out, K) with the same K, got {a.shape} and {w.shape}")
    return a, w


def _pair_sums(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(..., K) codes and (Out, K) weights -> (..., Out, ceil(K/2)) int32 pair sums, not yet clamped.

    Pairs are (0, 1), (2, 3), ...; an odd K is padded with a zero product. |a w| <= 255 * 128, so a pair
    sum fits int32 easily.
    """
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), a.dtype)], axis=-1)
        w = np.concatenate([w, np.zeros((w.shape[0], 1), w.dtype)], axis=-1)
    p = a.astype(np.int32)[..., None, :] * w.astype(np.int32)  # (..., Out, K) products in [-32640, 32640]
    return p[..., 0::2] + p[..., 1::2]                          # (..., Out, K/2) in [-65280, 65280]


def pair_dot(a: Any, w: Any) -> np.ndarray:
    """The int16 pair arithmetic of ``vpmaddubsw`` + ``vpmaddwd``: (..., K) codes, (Out, K) int8 -> (..., Out).

    acc[..., o] = sum_j clamp(a[2j] w[o, 2j] + a[2j+1] w[o, 2j+1], -32768, 32767)   summed in int64

    ``a`` is uint8 (x86: unsigned activations) or int8 (the paper's signed int8 x int8 case). Equals
    ``exact_dot`` whenever no pair sum leaves int16.
    """
    a, w = _operands(a, w)
    return np.clip(_pair_sums(a, w), INT16_MIN, INT16_MAX).sum(axis=-1, dtype=np.int64)


def exact_dot(a: Any, w: Any) -> np.ndarray:
    """The exact sum of products a . w in int64, (..., K) x (Out, K) -> (..., Out): the oracle (Eq. 25)."""
    a, w = _operands(a, w)
    return np.einsum("...k,ok->...o", a.astype(np.int64), w.astype(np.int64))


def im2col(x_q: np.ndarray, x_zp: int, kernel: tuple[int, int], *, stride: Any = 1, padding: Any = 0,
           groups: int = 1) -> np.ndarray:
    """(N, C, H, W) codes -> patches (N, groups, Ho, Wo, kh * kw * C/groups), padded with the code x_zp.

    The last axis runs over (u, v, c) with the channel fastest, the order of a channels-last (NHWC)
    kernel; that order decides which products share a pair.
    """
    x = _activation(x_q, "x_q", 4)
    x_zp = _zero_point(x_zp, "x_zp", x.dtype)
    sh, sw = _pair(stride, "stride", 1)
    kh, kw = kernel
    n, c, h, wd = x.shape
    pt, pb, pl, pr = _padding(padding, (h, wd), (kh, kw), (sh, sw))  # int, pair, 4-tuple or "same"
    if c % groups:
        raise ValueError(f"groups={groups} does not divide the {c} input channels")
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=x_zp)  # padded reals are exactly 0
    ho, wo = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"the {kh}x{kw} kernel does not fit the padded {h}x{wd} input")
    taps = [xp[:, :, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw] for u in range(kh) for v in range(kw)]
    t = np.stack(taps, axis=-1)                                  # (N, C, Ho, Wo, kh*kw)
    t = t.reshape(n, groups, c // groups, ho, wo, kh * kw)       # (N, G, C/G, Ho, Wo, taps)
    return t.transpose(0, 1, 3, 4, 5, 2).reshape(n, groups, ho, wo, kh * kw * (c // groups))


def _conv_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """(Cout, C/G, kh, kw) -> (G, Cout/G, kh * kw * C/G), the same (u, v, c) order as ``im2col``."""
    cout, cg, kh, kw = w.shape
    if cout % groups:
        raise ValueError(f"groups={groups} does not divide the {cout} output channels")
    return w.transpose(0, 2, 3, 1).reshape(groups, cout // groups, kh * kw * cg)


def _conv_dots(x: np.ndarray, w: np.ndarray, x_zp: int, stride: Any, padding: Any, groups: int,
               dot: Any) -> np.ndarray:
    """sum over (u, v, c) of raw codes x weights, per output: (N, Cout, Ho, Wo) int64, with ``dot``."""
    if groups < 1 or w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"w_q {w.shape} with groups={groups} needs {w.shape[1] * groups} input channels, "
                         f"x_q has {x.shape[1]}")
    cols = im2col(x, x_zp, w.shape[2:], stride=stride, padding=padding, groups=groups)  # (N, G, Ho, Wo, K)
    wg = _conv_weights(w, groups)                                                          # (G, Cout/G, K)
    out = np.stack([dot(cols[:, g], wg[g]) for g in range(groups)], axis=1)               # (N, G, Ho, Wo, Cout/G)
    n, _, ho, wo, per = out.shape
    return out.transpose(0, 1, 4, 2, 3).reshape(n, groups * per, ho, wo)


def linear(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray | None, m0: Any, shift: Any,
           out_zp: int, *, act_min: int | None = None, act_max: int | None = None) -> np.ndarray:
    """``qlearn.integer.linear`` computed with int16 pair sums (what a non-VNNI x86 int8 kernel does).

    x_q (N, In) uint8, w_q (Out, In) int8 -> (N, Out) uint8:
    acc = pair_dot(x_q, w_q) - x_zp sum_i w_q[o, i] + bias_q[o]   (= Eq. 25 when no pair saturates),
    then the same requantization (Eq. 21) as ``qlearn.integer.linear``.
    """
    x, x_zp, w, bias, m0_a, shift_a, out_zp, lo, hi = _linear_args(x_q, x_zp, w_q, bias_q, m0, shift, out_zp,
                                                                    act_min, act_max)
    acc = pair_dot(x, w) - x_zp * w.astype(np.int64).sum(axis=1) + bias  # (N, Out) int64
    return _requantize_acc(acc, m0_a, shift_a, out_zp, lo, hi, x.dtype, channel_axis=1)


def conv2d(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray | None, m0: Any, shift: Any,
           out_zp: int, *, stride: Any = 1, padding: Any = 0, groups: int = 1, act_min: int | None = None,
           act_max: int | None = None) -> np.ndarray:
    """``qlearn.integer.conv2d`` computed with int16 pair sums over the (u, v, c) order of ``im2col``.

    Same arguments and shapes as ``qlearn.integer.conv2d``: (N, Cin, H, W) uint8 in, (N, Cout, Ho, Wo) out.
    """
    x = _activation(x_q, "x_q", 4)
    x_zp = _zero_point(x_zp, "x_zp", x.dtype)
    w = _weights(w_q, "w_q", 4)
    groups = _int(groups, "groups")
    out_zp = _zero_point(out_zp, "out_zp", x.dtype)
    lo, hi = _clamp(act_min, act_max, x.dtype)
    bias = _bias(bias_q, w.shape[0])
    m0_a, shift_a = _multipliers(m0, shift, w.shape[0])
    acc = _conv_dots(x, w, x_zp, stride, padding, groups, pair_dot)                  # (N, Cout, Ho, Wo)
    acc = acc - (x_zp * w.astype(np.int64).sum(axis=(1, 2, 3)) - bias)[None, :, None, None]
    return _requantize_acc(acc, m0_a, shift_a, out_zp, lo, hi, x.dtype, channel_axis=1)


@dataclass(frozen=True)
class Saturation:
    """How int16 pair arithmetic changes a layer's accumulators (compared with the exact int64 sum).

    n_outputs       : accumulators computed
    n_saturated     : accumulators that differ from the exact sum (at least one pair left int16)
    max_acc_error   : largest |exact - int16 pairs|, in accumulator units (S1 S2)
    max_lsb_error   : the same in output LSBs, max over channels of error * M (M = S1 S2 / S3, Eq. 22);
                      None when no multiplier was given
    max_pair_sum    : largest |pair sum| that occurred (> 32767 means saturation)
    """

    n_outputs: int
    n_saturated: int
    max_acc_error: int
    max_lsb_error: float | None
    max_pair_sum: int

    @property
    def fraction(self) -> float:
        return self.n_saturated / self.n_outputs if self.n_outputs else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"fraction": self.fraction}


def saturation(x_q: Any, w_q: Any, *, x_zp: int = 0, stride: Any = 1, padding: Any = 0, groups: int = 1,
               multiplier: Any = None) -> Saturation:
    """Count the outputs that int16 pair arithmetic gets wrong, for given codes and weights.

    x_q (N, K) with w_q (Out, K) is a linear layer; x_q (N, C, H, W) with w_q (Cout, C/groups, kh, kw)
    a convolution (padding uses the code x_zp). ``multiplier``: M per output channel (or one scalar) to
    express the error in output LSBs.
    """
    x = _codes(x_q, "x_q")
    w = _codes(w_q, "w_q")
    if x.ndim == 2:
        a, wk = _operands(x, w)
        exact, paired = exact_dot(a, wk), pair_dot(a, wk)     # (N, Out)
        sums = _pair_sums(a, wk)
        chan_axis = 1
    elif x.ndim == 4:
        w = _weights(w, "w_q", 4)
        groups = _int(groups, "groups")
        exact = _conv_dots(x, w, x_zp, stride, padding, groups, exact_dot)  # (N, Cout, Ho, Wo)
        paired = _conv_dots(x, w, x_zp, stride, padding, groups, pair_dot)
        cols = im2col(x, x_zp, w.shape[2:], stride=stride, padding=padding, groups=groups)
        wg = _conv_weights(w, groups)
        sums = np.concatenate([_pair_sums(cols[:, g], wg[g]).ravel() for g in range(groups)])
        chan_axis = 1
    else:
        raise ValueError(f"x_q must be (N, K) for a linear layer or (N, C, H, W) for a convolution, got {x.shape}")
    err = np.abs(exact - paired)  # int64, 0 where nothing saturated
    lsb = None
    if multiplier is not None:
        m = np.asarray(multiplier, dtype=np.float64)
        if m.ndim > 1 or (m.ndim == 1 and m.shape[0] != err.shape[chan_axis]) or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ValueError(f"multiplier must be a real M >= 0 or one per output channel ({err.shape[chan_axis]}), "
                             f"got shape {m.shape}")
        shape = [1] * err.ndim
        shape[chan_axis] = -1
        lsb = float((err * m.reshape(shape) if m.ndim else err * m).max()) if err.size else 0.0
    return Saturation(n_outputs=int(err.size), n_saturated=int(np.count_nonzero(err)),
                      max_acc_error=int(err.max()) if err.size else 0, max_lsb_error=lsb,
                      max_pair_sum=int(np.abs(sums).max()) if sums.size else 0)


def max_pair_sum(w_q: Any, act_max: int, act_min: int = 0) -> int:
    """A bound on |a w + a' w'| for any pair of one output channel's weights, codes a in [act_min, act_max].

    Whatever pairs a kernel forms, a pair holds two weights of one output channel, so the bound is
    act_absmax * (the two largest |w| of that channel), maximised over channels (reached when those two
    weights share a sign and both codes are act_absmax). At most 32767 means
    int16 pair arithmetic is exact for every input (e.g. codes <= 127 with |w| <= 127: 32258; codes
    <= 255 with |w| <= 64: 32640); above it some input can saturate.
    """
    w = check_integer_array(w_q, "w_q")
    if w.ndim < 2:
        raise ValueError(f"w_q must be (Out, ...) weights, got shape {w.shape}")
    lo, hi = _int(act_min, "act_min"), _int(act_max, "act_max")
    if lo > hi:
        raise ValueError(f"act_min={lo} is above act_max={hi}")
    a = max(abs(lo), abs(hi))
    mags = np.sort(np.abs(w.reshape(w.shape[0], -1).astype(np.int64)), axis=1)  # (Out, K) ascending
    top2 = mags[:, -1] + (mags[:, -2] if mags.shape[1] > 1 else 0)
    return int(a * top2.max()) if top2.size else 0
