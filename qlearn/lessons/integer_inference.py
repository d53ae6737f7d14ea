"""What notebook 08 computes: integer-only inference, from float scales to M0 and shift to a bit-exact conv.

A quantized layer computes q3 = Z3 + M (q_bias + sum (q1 - Z1) q2) (Eq. 21) with one real number
left, M = S1 S2 / S3 (Eq. 22), which the device carries as an int32 M0 and a shift (Eq. 23). Each
piece of the lesson is a plain function returning a small dataclass (so the notebook prints
numbers and the tests check them); ``qlearn.widgets.integer_explorers`` draws them:

* ``split_multiplier`` / ``multiplier_error_curve``: M -> (M0, shift), and the relative error of
  M0 2^(shift - 31) against M over a range of M (at most 2^-32 / q <= 2^-31, Eq. 31);
* ``zero_point_terms``: the four sums of paper Eq. 7 (our Eq. 39) for one dot product;
* ``conv_three_ways``: one quantized conv layer run as a float reference, with fake quantization
  (paper Sec. 3) and with the integer kernel ``qlearn.integer.conv2d``, and the differences in LSBs;
* ``rounding_comparison``: the last rounding of the fixed-point multiply done three ways
  (``multiply_by_quantized_multiplier``'s ``rounding=`` option) on signed int32 accumulators, and
  the bias of round-half-up (Eq. 28-29);
* ``tiny_integer_model``: a 2-layer float conv net, calibrated and converted to an ``IntegerModel``.

The notebook's last section, int16 pair saturation on the learner's CPU, is
``qlearn.lessons.pair_saturation``.

Everything is deterministic (one seed in, the same numbers out) and cached, so sliders respond fast.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qlearn._checks import as_float_array, check_bits, check_bool, check_int, check_integer_array, check_open_interval, check_seed
from qlearn.fixedpoint import (
    multiplier_value,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    saturating_rounding_doubling_high_mul,
)
from qlearn.integer import conv2d, conv2d_accumulator
from qlearn.integer_layers import conv_layer
from qlearn.integer_model import IntegerModel
from qlearn.layer_integers import quantize_bias, requant_multiplier
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import fake_quantize, quantize
from qlearn.ranges import weight_qparams

__all__ = [
    "MultiplierSplit", "split_multiplier", "multiplier_error_curve", "ZeroPointTerms", "zero_point_terms",
    "ConvThreeWays", "conv_three_ways", "ROUNDING_LABELS", "RoundingComparison", "rounding_comparison",
    "TinyModel", "tiny_integer_model",
]

#: rounding= option of multiply_by_quantized_multiplier -> the name used in the notebook
ROUNDING_LABELS = {
    "double": "half-away (gemmlowp RDBPOT)",
    "double_half_up": "half-up (plain rounding shift)",
    "single": "single rounding",
}


# ---------------------------------------------------------------------------------------- M -> M0, shift
@dataclass(frozen=True)
class MultiplierSplit:
    """A real multiplier M and its fixed-point form M ~= m0 2^(shift - 31) (Eq. 23).

    q, e      : frexp(M): M = q 2^e with q in [0.5, 1)
    m0, shift : ``quantize_multiplier(M)``; the paper's M0 in [0.5, 1) is m0 / 2^31 and its n is -shift
    approx    : m0 2^(shift - 31), the multiplier the integer code really applies
    rel_error : (approx - M) / M
    bound     : 2^-32 / q, the largest |rel_error| rounding q 2^31 to an integer can cause (<= 2^-31)
    """

    real: float
    q: float
    e: int
    m0: int
    shift: int
    approx: float
    rel_error: float
    bound: float

    @property
    def n(self) -> int:
        """The paper's right shift n in M = 2^-n M0 (paper Eq. 6): n = -shift."""
        return -self.shift

    @property
    def m0_fraction(self) -> float:
        """The paper's M0 in [0.5, 1): m0 / 2^31."""
        return self.m0 / 2.0**31


def split_multiplier(real_multiplier: Any) -> MultiplierSplit:
    """M -> frexp, (m0, shift) and the relative error of the fixed-point multiplier (Eq. 23, 31).

        M = q 2^e, q in [0.5, 1);  m0 = round(q 2^31);  approx = m0 2^(shift - 31)
        |approx - M| / M = |m0 - q 2^31| / (q 2^31) <= (1/2) / (q 2^31) = 2^-32 / q <= 2^-31

    ``real_multiplier``: a positive finite float, at least 2^-31 (smaller ones flush to (0, 0)) and
    below 2^30 (the largest shift an int32 can take). paper Sec. 2.2, Eq. 6 there.
    """
    m = check_open_interval(real_multiplier, "real_multiplier", 2.0**-31, 2.0**30)
    q, e = np.frexp(m)
    m0, shift = quantize_multiplier(m)
    approx = float(multiplier_value(m0, shift))
    return MultiplierSplit(
        real=m, q=float(q), e=int(e), m0=int(m0), shift=int(shift), approx=approx,
        rel_error=(approx - m) / m, bound=2.0**-32 / float(q),
    )


@lru_cache(maxsize=8)
def multiplier_error_curve(lo: float = 1e-5, hi: float = 2.0, n: int = 3000) -> dict[str, np.ndarray]:
    """(M, m0, shift, rel_error, bound) for n log-spaced multipliers in [lo, hi] (cached, read-only).

    Uses the vectorised ``quantize_multiplier``; rel_error = (m0 2^(shift-31) - M) / M (Eq. 31).
    """
    lo = check_open_interval(lo, "lo", 2.0**-31, 2.0**30)
    hi = check_open_interval(hi, "hi", lo, 2.0**30)
    n = check_int(n, "n", minimum=2)
    m = np.geomspace(lo, hi, n)
    m0, shift = quantize_multiplier(m)
    approx = np.ldexp(m0.astype(np.float64), shift.astype(np.int64) - 31)
    q, _ = np.frexp(m)
    out = {"M": m, "m0": m0, "shift": shift, "rel_error": (approx - m) / m, "bound": 2.0**-32 / q}
    for v in out.values():
        v.flags.writeable = False
    return out


# ---------------------------------------------------------------------------------------- Eq. 39
@dataclass(frozen=True)
class ZeroPointTerms:
    """sum_k (q1_k - Z1)(q2_k - Z2) split as in paper Eq. 7 (our Eq. 39); Python ints, exact.

    total = k_z1_z2 - z1_sum_q2 - z2_sum_q1 + sum_q1_q2, and ``direct`` is the same sum computed
    directly: they are equal by algebra, and the notebook prints both.
    """

    k: int
    k_z1_z2: int  # K Z1 Z2                  a constant
    z1_sum_q2: int  # Z1 sum q2             per output channel, precomputed once
    z2_sum_q1: int  # Z2 sum q1             once per input row (patch)
    sum_q1_q2: int  # sum q1 q2             the only O(N^3) part: the integer GEMM
    total: int
    direct: int


def zero_point_terms(q1: Any, z1: int, q2: Any, z2: int) -> ZeroPointTerms:
    """The four terms of sum (q1 - Z1)(q2 - Z2) = K Z1 Z2 - Z1 sum q2 - Z2 sum q1 + sum q1 q2 (Eq. 39).

    q1, q2: 1-D integer arrays of the same length K (an input patch and one weight row);
    z1, z2: their integer zero points. paper Sec. 2.3, Eq. 7-8 there.
    """
    a = check_integer_array(q1, "q1")
    b = check_integer_array(q2, "q2")
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"q1 and q2 must be 1-D arrays of the same non-zero length, got {a.shape} and {b.shape}")
    for z, name in ((z1, "z1"), (z2, "z2")):
        if isinstance(z, (bool, np.bool_)) or not isinstance(z, numbers.Integral):
            raise TypeError(f"{name} must be an integer zero point, got {z!r}")
    ai = [int(v) for v in a]  # Python ints: no overflow, whatever the dtype
    bi = [int(v) for v in b]
    z1, z2, k = int(z1), int(z2), len(ai)
    terms = (k * z1 * z2, z1 * sum(bi), z2 * sum(ai), sum(x * y for x, y in zip(ai, bi)))
    return ZeroPointTerms(
        k, *terms, total=terms[0] - terms[1] - terms[2] + terms[3],
        direct=sum((x - z1) * (y - z2) for x, y in zip(ai, bi)),
    )


# ---------------------------------------------------------------------------------------- conv 3 ways
def _float_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, stride: int = 1,
                  padding: int = 0) -> np.ndarray:
    """Plain float64 NCHW convolution (groups = 1), zero padding: the float reference of the lesson.

    x (N, Cin, H, W), w (Cout, Cin, kh, kw), b (Cout,) or None -> (N, Cout, Ho, Wo) float64.
    """
    xp = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[2:]
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]  # (N, Cin, Ho, Wo, kh, kw)
    y = np.einsum("nchwuv,ocuv->nohw", win, np.asarray(w, dtype=np.float64), optimize=True)
    return y if b is None else y + np.asarray(b, dtype=np.float64)[None, :, None, None]


@dataclass(frozen=True, eq=False)
class ConvThreeWays:
    """One quantized 3x3 conv layer (padding 1) run three ways; see ``conv_three_ways``.

    Arrays: x (N, Cin, H, W) and w (Cout, Cin, 3, 3) and b (Cout,) float64; x_q uint8, w_q int8,
    bias_q (Cout,) int32 of scale S1 S2; acc (N, Cout, H, W) int64 holding the int32 accumulators;
    y_float, y_fake (N, Cout, H, W) float64 reals; q_fake, q_int (N, Cout, H, W) uint8 codes.
    """

    bits: int
    seed: int
    per_channel: bool
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray
    x_qp: QParams
    w_qp: QParams
    out_qp: QParams
    x_q: np.ndarray
    w_q: np.ndarray
    bias_q: np.ndarray
    m0: Any
    shift: Any
    acc: np.ndarray
    y_float: np.ndarray
    y_fake: np.ndarray
    q_fake: np.ndarray
    q_int: np.ndarray

    @property
    def multiplier(self) -> Any:
        """M = S1 S2 / S3 (Eq. 22): a float, or a (Cout,) array for per-channel weights."""
        return self.x_qp.scale * self.w_qp.scale / self.out_qp.scale

    @property
    def ref_lsb(self) -> np.ndarray:
        """The float reference on the output grid, in LSBs: y_float / S3 + Z3 (not rounded)."""
        return self.y_float / self.out_qp.scale + self.out_qp.zero_point

    @property
    def int_minus_fake(self) -> np.ndarray:
        """q_int - q_fake as int64: the integer kernel against fake quantization, in LSBs."""
        return self.q_int.astype(np.int64) - self.q_fake.astype(np.int64)

    @property
    def err_int(self) -> np.ndarray:
        """(q_int - ref_lsb): the integer output's error against the float reference, in LSBs."""
        return self.q_int - self.ref_lsb

    @property
    def err_fake(self) -> np.ndarray:
        """(q_fake - ref_lsb): the fake-quant output's error against the float reference, in LSBs."""
        return self.q_fake - self.ref_lsb

    def summary(self) -> dict[str, Any]:
        """The numbers the notebook and the explorer print (floats and ints, plus two strings)."""
        d = self.int_minus_fake
        m = np.asarray(self.multiplier)
        # worst case of Eq. 25 for these grids: |acc| <= max|q_bias| + K max|q1 - Z1| max|q2|
        k = self.w.shape[1] * self.w.shape[2] * self.w.shape[3]
        z1 = int(self.x_qp.zero_point)
        x_span = max(z1 - self.x_qp.qmin, self.x_qp.qmax - z1)
        bound = int(np.abs(self.bias_q.astype(np.int64)).max()) + k * x_span * self.w_qp.qmax
        return {
            "M = S1 S2 / S3": float(m) if m.ndim == 0 else f"{m.min():.4g} .. {m.max():.4g}",
            "M0": int(self.m0) if np.ndim(self.m0) == 0 else f"{np.min(self.m0)} .. {np.max(self.m0)}",
            "shift": int(self.shift) if np.ndim(self.shift) == 0 else f"{np.min(self.shift)} .. {np.max(self.shift)}",
            "Z1 (input zero point)": int(self.x_qp.zero_point),
            "Z3 (output zero point)": int(self.out_qp.zero_point),
            "outputs": int(d.size),
            "integer == fake-quant": float(np.mean(d == 0)),
            "max |integer - fake-quant| (LSB)": int(np.abs(d).max()),
            "mean |error| vs float, integer (LSB)": float(np.mean(np.abs(self.err_int))),
            "mean |error| vs float, fake-quant (LSB)": float(np.mean(np.abs(self.err_fake))),
            "max |error| vs float, integer (LSB)": float(np.abs(self.err_int).max()),
            "accumulators (int32)": f"[{int(self.acc.min())}, {int(self.acc.max())}]",
            "int32 headroom, worst case (bits)": float(np.log2(2.0**31 / bound)),
        }


@lru_cache(maxsize=64)
def conv_three_ways(bits: int = 8, seed: int = 0, per_channel: bool = False, *, batch: int = 2,
                    cin: int = 8, cout: int = 16, size: int = 16) -> ConvThreeWays:
    """One conv layer (3x3, padding 1, bias) three ways, on random data of ``seed`` (cached).

    float reference : y = conv(x, w) + b in float64
    fake-quant      : y' = conv(fq(x), fq(w)) + b, then q_fake = quantize(y', S3, Z3)   (paper Sec. 3)
    integer kernel  : q_int = conv2d(x_q, Z1, w_q, bias_q, M0, shift, Z3)              (Eq. 21-25)

    Activations are asymmetric unsigned ``bits``-bit (min/max of x and of y: the output grid is
    calibrated on the float reference), weights symmetric signed narrow-range ``bits``-bit, per
    tensor or per output channel; bias_q = round(b / (S1 S2)) (Eq. 24). The output channels get
    gains spread over 20x, so per-tensor weights waste levels on the small channels.
    bits: 2..8 (the integer kernel takes uint8 activations and int8 weights).
    """
    bits = check_bits(bits)
    if bits > 8:
        raise ValueError(f"bits must be at most 8 here (uint8 activations, int8 weights), got {bits}")
    seed = check_seed(seed)
    per_channel = check_bool(per_channel, "per_channel")
    batch, cin, cout = (check_int(v, nm, minimum=1) for v, nm in ((batch, "batch"), (cin, "cin"), (cout, "cout")))
    size = check_int(size, "size", minimum=3)

    rng = np.random.default_rng(seed)
    x = rng.normal(0.25, 0.5, (batch, cin, size, size))  # (N, Cin, H, W) float64, mostly positive
    gains = np.exp(rng.uniform(np.log(0.05), 0.0, cout))  # per-channel spread of weight ranges (20x)
    w = rng.normal(0.0, 1.0, (cout, cin, 3, 3)) * (gains / np.sqrt(cin * 9))[:, None, None, None]
    b = rng.normal(0.0, 0.1, cout)

    x_qp = qparams_from_range(x.min(), x.max(), bits)
    w_qp = weight_qparams(w, bits, per_channel=per_channel)
    y_float = _float_conv2d(x, w, b, padding=1)
    out_qp = qparams_from_range(y_float.min(), y_float.max(), bits)

    # fake quantization: float arithmetic on values snapped to the grids (what QAT trains with)
    y_fake = _float_conv2d(fake_quantize(x, x_qp), fake_quantize(w, w_qp), b, padding=1)
    q_fake = np.asarray(quantize(y_fake, out_qp))

    # the integer kernel: integers and (m0, shift) only
    x_q = np.asarray(quantize(x, x_qp))  # (N, Cin, H, W) uint8
    w_q = np.asarray(quantize(w, w_qp)).astype(np.int8)  # (Cout, Cin, 3, 3) int8 in [-(2^(b-1)-1), 2^(b-1)-1]
    bias_q = quantize_bias(b, x_qp.scale, w_qp.scale)  # (Cout,) int32, scale S1 S2, zero point 0
    m0, shift = requant_multiplier(x_qp.scale, w_qp.scale, out_qp.scale)
    acc = conv2d_accumulator(x_q, x_qp.zero_point, w_q, bias_q, padding=1)
    q_int = conv2d(x_q, x_qp.zero_point, w_q, bias_q, m0, shift, out_qp.zero_point, padding=1,
                   act_min=out_qp.qmin, act_max=out_qp.qmax)
    for arr in (x, w, b, y_float, y_fake, q_fake, x_q, w_q, bias_q, acc, q_int, m0, shift):
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False  # cached: shared between callers
    return ConvThreeWays(bits, seed, per_channel, x, w, b, x_qp, w_qp, out_qp, x_q, w_q, bias_q,
                         m0, shift, acc, y_float, y_fake, q_fake, q_int)


# ---------------------------------------------------------------------------------------- rounding
@dataclass(frozen=True, eq=False)
class RoundingComparison:
    """x * M done three ways on the same int32 accumulators x; see ``rounding_comparison``.

    x         : (n,) int32 accumulators
    exact     : (n,) float64, x m0 2^(shift - 31), the exact product with the fixed-point multiplier
                (accurate to float64; the rounding errors below are computed exactly in integers)
    results   : mode -> (n,) int32 from multiply_by_quantized_multiplier(x, m0, shift, rounding=mode)
    errors    : mode -> (n,) float64, results[mode] - exact, in output LSBs
    tie       : (n,) bool, the second rounding (by 2^n) met an exact half: SRDHM(x, m0) mod 2^n = 2^(n-1)
    """

    multiplier: float
    m0: int
    shift: int
    spread: float
    positive: bool
    seed: int
    x: np.ndarray
    exact: np.ndarray
    results: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    tie: np.ndarray

    @property
    def n(self) -> int:
        """The paper's right shift n = -shift (the second rounding divides by 2^n)."""
        return -self.shift

    def mean_error(self, mode: str) -> float:
        """The bias of a rounding mode: mean(result - exact) in LSBs."""
        return float(np.mean(self.errors[mode]))

    def standard_error(self, mode: str) -> float:
        """The standard error of ``mean_error`` (std / sqrt(n)): a bias many times this is real."""
        e = self.errors[mode]
        return float(np.std(e) / np.sqrt(e.size))

    def differs(self, mode: str, other: str = "double") -> np.ndarray:
        """results[mode] - results[other] as int64 (-1, 0 or +1 here)."""
        return self.results[mode].astype(np.int64) - self.results[other].astype(np.int64)


@lru_cache(maxsize=32)
def _accumulators(spread: float, positive: bool, seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.rint(rng.normal(0.0, spread, n))
    if positive:
        x = np.abs(x)
    x = np.clip(x, -(2**24), 2**24).astype(np.int32)  # (n,) int32; |x| <= 2^24 keeps x m0 < 2^55
    x.flags.writeable = False
    return x


@lru_cache(maxsize=64)
def rounding_comparison(multiplier: float = 0.1234, spread: float = 1000.0, *, positive: bool = False,
                        seed: int = 0, n: int = 200_000) -> RoundingComparison:
    """Multiply n int32 accumulators by M with each rounding mode and measure the errors (cached).

        (m0, shift) = quantize_multiplier(M)                      M in (2^-20, 1): shift in [-20, 0]
        exact       = x m0 / 2^k,  k = 31 - shift
        error       = result - exact = (result 2^k - x m0) / 2^k    (int64 numerator: exact)

    The three modes (``multiply_by_quantized_multiplier(..., rounding=mode)``, Eq. 27-30):
    "double" = SRDHM then RoundingDivideByPOT (ties away from zero: TFLite/gemmlowp),
    "double_half_up" = SRDHM then the plain rounding shift (ties toward +inf),
    "single" = one rounding of the 64-bit product (TFLITE_SINGLE_ROUNDING).
    Half-up and half-away differ exactly at the negative ties of the second step, by +1, so
    mean_error("double_half_up") - mean_error("double") = (number of negative ties) / n.

    x ~ round(Normal(0, spread)) (|.| of it if ``positive``), clipped to |x| <= 2^24. paper Appendix B.
    """
    m = check_open_interval(multiplier, "multiplier", 2.0**-20, 1.0)
    spread = check_open_interval(spread, "spread", 0.0, 2.0**22)
    positive = check_bool(positive, "positive")
    seed = check_seed(seed)
    n = check_int(n, "n", minimum=2)
    m0, shift = quantize_multiplier(m)
    x = _accumulators(spread, positive, seed, n)
    k = 31 - shift  # in [31, 51]
    prod = x.astype(np.int64) * m0  # |x m0| < 2^24 2^31 = 2^55: exact in int64
    results, errors = {}, {}
    for mode in ROUNDING_LABELS:
        r = np.asarray(multiply_by_quantized_multiplier(x, m0, shift, rounding=mode))  # (n,) int32
        r.flags.writeable = False
        num = (r.astype(np.int64) << k) - prod  # |num| <= 2^k (|error| <= 1 LSB), exact
        results[mode] = r
        errors[mode] = np.ldexp(num.astype(np.float64), -k)  # |num| < 2^53: exact conversion
    high = np.asarray(saturating_rounding_doubling_high_mul(x, m0)).astype(np.int64)  # first rounding
    nn = -shift
    tie = (high & ((1 << nn) - 1)) == (1 << (nn - 1)) if nn > 0 else np.zeros(n, dtype=bool)
    exact = np.ldexp(prod.astype(np.float64), -k)
    for arr in (exact, tie, *errors.values()):
        arr.flags.writeable = False
    return RoundingComparison(m, int(m0), int(shift), spread, positive, seed, x, exact, results, errors, tie)


# ---------------------------------------------------------------------------------------- tiny model
@dataclass(frozen=True, eq=False)
class TinyModel:
    """A 2-layer float conv net and its integer-only conversion (``tiny_integer_model``).

    conv1: 3 -> 8 channels, 3x3, padding 1, ReLU6;  conv2: 8 -> 4 channels, 3x3, stride 2, padding 1.
    weights/biases: float64; qparams: the calibrated grids of the input and of each layer's output.
    """

    w1: np.ndarray  # (8, 3, 3, 3)
    b1: np.ndarray  # (8,)
    w2: np.ndarray  # (4, 8, 3, 3)
    b2: np.ndarray  # (4,)
    in_qp: QParams
    w1_qp: QParams
    w2_qp: QParams
    h_qp: QParams
    out_qp: QParams
    model: IntegerModel

    def float_forward(self, x: Any) -> np.ndarray:
        """The float network: conv2(relu6(conv1(x))). x (N, 3, H, W) reals -> (N, 4, H/2, W/2) float64."""
        x = _check_images(x)
        h = np.clip(_float_conv2d(x, self.w1, self.b1, padding=1), 0.0, 6.0)
        return _float_conv2d(h, self.w2, self.b2, stride=2, padding=1)

    def fake_quant_forward(self, x: Any) -> np.ndarray:
        """The same net with every input, weight and output fake-quantized (paper Sec. 3)."""
        x = fake_quantize(_check_images(x), self.in_qp)
        h = np.clip(_float_conv2d(x, fake_quantize(self.w1, self.w1_qp), self.b1, padding=1), 0.0, 6.0)
        h = fake_quantize(h, self.h_qp)
        y = _float_conv2d(h, fake_quantize(self.w2, self.w2_qp), self.b2, stride=2, padding=1)
        return np.asarray(fake_quantize(y, self.out_qp))


def _check_images(x: Any) -> np.ndarray:
    arr = as_float_array(x, "x")
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"x must be a batch of 3-channel images (N, 3, H, W), got shape {arr.shape}")
    return arr


def _tiny_conv(name: str, inputs: str, w: np.ndarray, b: np.ndarray, in_qp: QParams, w_qp: QParams,
               out_qp: QParams, act: str | None, stride: int) -> Any:
    """Float conv parameters + grids -> a QConv2d (``qlearn.integer_layers.conv_layer``): w_q int8,
    bias_q int32 (Eq. 24), M0/shift (Eq. 23), the activation's clamp (Eq. 37); padding 1."""
    w_q = np.asarray(quantize(w, w_qp)).astype(np.int8)
    return conv_layer(name, inputs, w_q, in_qp, w_qp.scale, out_qp, bias=b, activation=act, stride=stride, padding=1)


@lru_cache(maxsize=8)
def tiny_integer_model(seed: int = 0, *, calibration: int = 16) -> TinyModel:
    """A random 2-layer conv net, calibrated on ``calibration`` random 8x8 images, as an IntegerModel.

    Input grid: [0, 1] in uint8 (S = 1/255, Z = 0). Weights: symmetric int8 per tensor (Z = 0; docs/conventions.md).
    Output grids: min/max of each layer's float output on the calibration images (the ReLU6 layer's
    range starts at 0, so its zero point is 0 and its clamp is [0, round(6/S)] at most; Eq. 37).
    """
    seed = check_seed(seed)
    calibration = check_int(calibration, "calibration", minimum=1)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.4, (8, 3, 3, 3))
    b1 = rng.normal(0.2, 0.1, 8)
    w2 = rng.normal(0.0, 0.15, (4, 8, 3, 3))
    b2 = rng.normal(0.0, 0.1, 4)
    in_qp = qparams_from_range(0.0, 1.0, 8)
    w1_qp, w2_qp = weight_qparams(w1, 8, per_channel=False), weight_qparams(w2, 8, per_channel=False)
    x_cal = rng.uniform(0.0, 1.0, (calibration, 3, 8, 8))
    h = np.clip(_float_conv2d(x_cal, w1, b1, padding=1), 0.0, 6.0)
    h_qp = qparams_from_range(h.min(), h.max(), 8)
    y = _float_conv2d(h, w2, b2, stride=2, padding=1)
    out_qp = qparams_from_range(y.min(), y.max(), 8)
    layers = [
        _tiny_conv("conv1", "input", w1, b1, in_qp, w1_qp, h_qp, "relu6", 1),
        _tiny_conv("conv2", "conv1", w2, b2, h_qp, w2_qp, out_qp, None, 2),
    ]
    model = IntegerModel(layers, in_qp, out_qp, input_shape=(1, 3, 8, 8))
    return TinyModel(w1, b1, w2, b2, in_qp, w1_qp, w2_qp, h_qp, out_qp, model)
