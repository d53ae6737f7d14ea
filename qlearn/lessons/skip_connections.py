"""What notebook 07 computes: skip connections -- the re-quantized add, and why concatenation shares parameters.

A residual block computes r3 = r1 + r2 from two tensors that were quantized with *different*
parameters (S1, Z1) and (S2, Z2). Their codes cannot simply be added: q1 + q2 means nothing unless
S1 = S2. Substituting r = S (q - Z) (Eq. 1) gives the re-quantized add of the paper's appendix
(Jacob et al., Appendix A.2; Eq. 72):

    q3 = Z3 + (S1 / S3)(q1 - Z1) + (S2 / S3)(q2 - Z2)

Both ratios are real numbers. The paper's Appendix A.2 rescales one input onto the other's scale, adds,
then rescales the sum to the output scale; the integer kernel here (``qlearn.integer.add``) is
TFLite's ADD instead (Eqs. 32-34): it scales both inputs to a common fine grid 2 max(S1, S2) in fixed
point, adds in int32 and scales the sum to the output grid. During training the same add is followed
by a fake-quant node with its own EMA range (paper Sec. 3; ``qlearn.qat_layers.QATAdd``): q3 is what
that node produces, so training sees the
inference-time rounding (Eq. 73). The integer result differs from it by at most one LSB.

Concatenation (Appendix A.3) has no arithmetic at all if every input and the output share one
(S, Z): the output is a copy of the input codes. With separate parameters each input must first be
re-quantized to the output grid (Eq. 74) -- a multiply per value and a second rounding -- and its
extra precision is lost at the output anyway. Hence: concatenated tensors share parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from qlearn._checks import check_bits, check_int, check_number
from qlearn.fake_quant import ActFakeQuant
from qlearn.fixedpoint import quantize_multiplier
from qlearn.integer import add, requantize
from qlearn.layer_integers import AddMultipliers, add_multipliers
from qlearn.qat_layers import QATAdd
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import dequantize, fake_quantize, quantize
from qlearn.ranges import minmax_range

__all__ = [
    "AddExperiment",
    "add_experiment",
    "naive_add",
    "TrainingAddResult",
    "training_add_experiment",
    "RATIO_GRID",
    "ratio_sweep",
    "ConcatExperiment",
    "concat_experiment",
]


# ---------------------------------------------------------------------------------- the add
@dataclass(frozen=True, eq=False)
class AddExperiment:
    """One integer add of two uint8 tensors with different scales, against its references.

    a, b       : (n,) float64 real inputs (b = scale_ratio * a standard normal)
    a_q, b_q   : (n,) uint8 codes on each input's own grid (min/max ranges, Eqs. 4-6, 9)
    q_int      : (n,) uint8, ``qlearn.integer.add`` (the fixed-point kernel, Eqs. 32-34)
    q_ref      : (n,) uint8, the exact re-quantized add (Eq. 72) = what fake-quant after the add
                 gives in training (Eq. 73): quantize(dequantize(a_q) + dequantize(b_q), out_qp)
    q_naive    : (n,) uint8, the codes added as if all scales were equal (wrong)
    """

    scale_ratio: float
    left_shift: int
    a: np.ndarray
    b: np.ndarray
    a_qp: QParams
    b_qp: QParams
    out_qp: QParams
    mult: AddMultipliers
    a_q: np.ndarray
    b_q: np.ndarray
    q_int: np.ndarray
    q_ref: np.ndarray
    q_naive: np.ndarray

    @property
    def lsb_error(self) -> np.ndarray:
        """(n,) int64: integer kernel minus exact re-quantized add, in output LSBs."""
        return self.q_int.astype(np.int64) - self.q_ref.astype(np.int64)

    @property
    def naive_lsb_error(self) -> np.ndarray:
        return self.q_naive.astype(np.int64) - self.q_ref.astype(np.int64)

    @property
    def exact_fraction(self) -> float:
        return float(np.mean(self.lsb_error == 0))

    def error_vs_real_lsb(self, q: np.ndarray) -> np.ndarray:
        """(dequantize(q) - (a + b)) / S_out: the whole error against the float sum, in output LSBs."""
        return (dequantize(q, self.out_qp) - (self.a + self.b)) / self.out_qp.scale


def naive_add(a_q: np.ndarray, a_zp: int, b_q: np.ndarray, b_zp: int, out_zp: int) -> np.ndarray:
    """The mistake: add the centred codes as if S1 = S2 = S3, q3 = clamp(Z3 + (q1 - Z1) + (q2 - Z2)).

    Right only when the three scales are equal; kept to show why the add must re-quantize.
    """
    s = a_q.astype(np.int64) - a_zp + (b_q.astype(np.int64) - b_zp) + out_zp
    return np.clip(s, 0, 255).astype(np.uint8)


def add_experiment(scale_ratio: float, *, n: int = 4096, left_shift: int = 20, seed: int = 0) -> AddExperiment:
    """Quantize a ~ N(0, 1) and b ~ scale_ratio N(0, 1) to uint8, add them three ways (Eqs. 72-73).

    Input grids from each tensor's min/max; the output grid from the min/max of the real sum (what
    the fake-quant node after the add learns in training, up to its EMA smoothing).
    """
    ratio = float(check_number(scale_ratio, "scale_ratio", 1e-3, 1e3))
    n = check_int(n, "n", minimum=2)
    left_shift = check_int(left_shift, "left_shift", minimum=0, maximum=22)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(int(n))
    b = ratio * rng.standard_normal(int(n))
    a_qp = qparams_from_range(*minmax_range(a), 8)
    b_qp = qparams_from_range(*minmax_range(b), 8)
    out_qp = qparams_from_range(*minmax_range(a + b), 8)
    a_q, b_q = quantize(a, a_qp), quantize(b, b_qp)  # (n,) uint8
    m = add_multipliers(a_qp.scale, b_qp.scale, out_qp.scale, left_shift=int(left_shift))
    q_int = add(a_q, a_qp.zero_point, m.a_m0, m.a_shift, b_q, b_qp.zero_point, m.b_m0, m.b_shift,
                out_qp.zero_point, m.out_m0, m.out_shift, left_shift=int(left_shift))
    q_ref = quantize(dequantize(a_q, a_qp) + dequantize(b_q, b_qp), out_qp)
    q_naive = naive_add(a_q, a_qp.zero_point, b_q, b_qp.zero_point, out_qp.zero_point)
    return AddExperiment(ratio, int(left_shift), a, b, a_qp, b_qp, out_qp, m, a_q, b_q, q_int, q_ref, q_naive)


@dataclass(frozen=True, eq=False)
class TrainingAddResult:
    """The add as training sees it (QATAdd: fake-quant after the sum, EMA range) against the integer add.

    ema_range  : the output range the fake-quant node learned over the training batches (Eq. 16)
    batch_range: min/max of the real sum over all training batches, for comparison
    out_qp     : the output grid from ``ema_range`` (scale rounded to float32, as the QAT model uses)
    q_fake     : (n,) codes of the fake-quant node's output on a test batch (Eq. 73)
    q_int      : (n,) ``qlearn.integer.add`` on the same inputs' uint8 codes (Eqs. 32-34)
    """

    steps: int
    ema_range: tuple[float, float]
    batch_range: tuple[float, float]
    out_qp: QParams
    q_fake: np.ndarray
    q_int: np.ndarray

    @property
    def lsb_diff(self) -> np.ndarray:
        return self.q_int.astype(np.int64) - self.q_fake.astype(np.int64)


def training_add_experiment(
    scale_ratio: float = 4.0, *, steps: int = 100, batch: int = 256, decay: float = 0.99, seed: int = 0,
) -> TrainingAddResult:
    """Train the fake-quant node after an add (``qlearn.qat_layers.QATAdd``) on ``steps`` batches, then compare.

    Inputs a ~ N(0, 1) and b ~ scale_ratio N(0, 1) arrive already fake-quantized on fixed uint8 grids
    over [-4, 4] and [-4 r, 4 r] (what the layers before them would have learned). In training mode the
    node tracks the sum's range with an EMA (``decay``); in eval mode its output is the re-quantized
    add of Eq. 72-73, which the integer kernel reproduces from the codes.
    """
    ratio = float(check_number(scale_ratio, "scale_ratio", 1e-3, 1e3))
    steps = check_int(steps, "steps", minimum=1)
    batch = check_int(batch, "batch", minimum=2)
    rng = np.random.default_rng(seed)
    a_qp = qparams_from_range(-4.0, 4.0, 8)
    b_qp = qparams_from_range(-4.0 * ratio, 4.0 * ratio, 8)
    node = QATAdd(ActFakeQuant(bits=8, decay=decay)).train()
    lo_seen, hi_seen = np.inf, -np.inf
    with torch.no_grad():
        for _ in range(int(steps)):
            fa = fake_quantize(rng.standard_normal(int(batch)), a_qp)
            fb = fake_quantize(ratio * rng.standard_normal(int(batch)), b_qp)
            lo_seen, hi_seen = min(lo_seen, float((fa + fb).min())), max(hi_seen, float((fa + fb).max()))
            node(torch.from_numpy(fa).float(), torch.from_numpy(fb).float())
        node.eval()
        a = rng.standard_normal(int(batch))
        b = ratio * rng.standard_normal(int(batch))
        a_q, b_q = quantize(a, a_qp), quantize(b, b_qp)
        y = node(torch.from_numpy(dequantize(a_q, a_qp)).float(), torch.from_numpy(dequantize(b_q, b_qp)).float())
    out_qp = node.act.qparams()
    q_fake = quantize(y.double().numpy(), out_qp)  # y lies on the output grid: this reads its codes
    m = add_multipliers(a_qp.scale, b_qp.scale, out_qp.scale)
    q_int = add(a_q, a_qp.zero_point, m.a_m0, m.a_shift, b_q, b_qp.zero_point, m.b_m0, m.b_shift,
                out_qp.zero_point, m.out_m0, m.out_shift)
    return TrainingAddResult(int(steps), (float(node.act.lo), float(node.act.hi)), (lo_seen, hi_seen),
                             out_qp, q_fake, q_int)


RATIO_GRID = 2.0 ** np.arange(-5.0, 5.01, 0.25)


@lru_cache(maxsize=32)
def ratio_sweep(left_shift: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Exact fraction and max |LSB error| of the integer add over RATIO_GRID (cached per left_shift)."""
    exact, worst = [], []
    for r in RATIO_GRID:
        e = add_experiment(float(r), n=n, left_shift=left_shift, seed=seed)
        exact.append(e.exact_fraction)
        worst.append(int(np.abs(e.lsb_error).max()))
    return {"ratio": RATIO_GRID, "exact": np.asarray(exact), "worst": np.asarray(worst)}


# ---------------------------------------------------------------------------------- concatenation
@dataclass(frozen=True, eq=False)
class ConcatExperiment:
    """Concatenate a ~ U(0, 6) with b ~ U(0, 6 / range_ratio) (ReLU6 outputs), two ways.

    shared   : a and b quantized directly on one shared grid (the output's); concat = copy.
    separate : b quantized on its own fine grid, then re-quantized to the output grid with the
               integer kernel (``qlearn.integer.requantize``, Eq. 74) before the copy.
    """

    range_ratio: float
    bits: int
    b: np.ndarray  # (n,) float64
    b_qp: QParams  # b's own grid
    out_qp: QParams  # the shared / output grid
    b_own: np.ndarray  # (n,) codes on b's own grid
    b_shared: np.ndarray  # (n,) codes on the shared grid, quantized directly
    b_requant: np.ndarray  # (n,) codes on the shared grid, via b's own grid (two roundings)
    m0: int
    shift: int

    @property
    def double_rounding_fraction(self) -> float:
        """Share of values whose code differs between direct quantization and re-quantization."""
        return float(np.mean(self.b_requant != self.b_shared))

    def mse(self, which: str) -> float:
        """MSE against the real b of 'own' (b's own grid), 'shared' or 'requant'."""
        codes, qp = {"own": (self.b_own, self.b_qp), "shared": (self.b_shared, self.out_qp),
                     "requant": (self.b_requant, self.out_qp)}[which]
        return float(np.mean((dequantize(codes, qp) - self.b) ** 2))


def concat_experiment(range_ratio: float, *, bits: int = 8, n: int = 4096, seed: int = 0) -> ConcatExperiment:
    """Quantize the smaller of two concatenated tensors directly on the shared grid, or re-quantize it."""
    ratio = float(check_number(range_ratio, "range_ratio", 1.0, 1e3))
    bits = check_bits(bits)
    if bits > 8:
        raise ValueError(f"bits must be between 2 and 8 (uint8 codes), got {bits}")
    n = check_int(n, "n", minimum=2)
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.0, 6.0 / ratio, int(n))
    out_qp = qparams_from_range(0.0, 6.0, bits)  # the concat's grid: covers a's range [0, 6]
    b_qp = qparams_from_range(0.0, 6.0 / ratio, bits)
    b_own = quantize(b, b_qp)
    b_shared = quantize(b, out_qp)
    m0, shift = quantize_multiplier(b_qp.scale / out_qp.scale)  # S_b / S_out <= 1 (Eq. 23)
    b_requant = requantize(b_own, b_qp.zero_point, m0, shift, out_qp.zero_point, out_dtype=np.uint8,
                           act_min=out_qp.qmin, act_max=out_qp.qmax)
    return ConcatExperiment(ratio, bits, b, b_qp, out_qp, b_own, b_shared, b_requant, int(m0), int(shift))

