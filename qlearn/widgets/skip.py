"""Notebook 07: skip connections -- the re-quantized add, and why concatenation shares parameters.

A residual block computes r3 = r1 + r2 from two tensors that were quantized with *different*
parameters (S1, Z1) and (S2, Z2). Their codes cannot simply be added: q1 + q2 means nothing unless
S1 = S2. Substituting r = S (q - Z) (Eq. 1) gives the re-quantized add of the paper's appendix
(Jacob et al., Appendix A.2; Eq. 72):

    q3 = Z3 + (S1 / S3)(q1 - Z1) + (S2 / S3)(q2 - Z2)

Both ratios are real numbers. The paper's Appendix A.2 rescales one input onto the other's scale, adds,
then rescales the sum to the output scale; the integer kernel here (``qlearn.integer.add``) is
TFLite's ADD instead (Eqs. 32-34): it scales both inputs to a common fine grid 2 max(S1, S2) in fixed
point, adds in int32 and scales the sum to the output grid. During training the same add is followed by a fake-quant node with its own EMA range
(paper Sec. 3; ``qlearn.qat.QATAdd``): q3 is what that node produces, so training sees the
inference-time rounding (Eq. 73). The integer result differs from it by at most one LSB.

Concatenation (Appendix A.3) has no arithmetic at all if every input and the output share one
(S, Z): the output is a copy of the input codes. With separate parameters each input must first be
re-quantized to the output grid (Eq. 74) -- a multiply per value and a second rounding -- and its
extra precision is lost at the output anyway. Hence: concatenated tensors share parameters.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from qlearn._checks import check_bits
from qlearn.fixedpoint import quantize_multiplier
from qlearn.integer import AddMultipliers, add, add_multipliers, requantize
from qlearn.qparams import QParams, qparams_from_range
from qlearn.quantize import dequantize, quantize
from qlearn.ranges import minmax_range
from qlearn.widgets.base import Explorer

__all__ = [
    "AddExperiment",
    "add_experiment",
    "naive_add",
    "TrainingAddResult",
    "training_add_experiment",
    "ConcatExperiment",
    "concat_experiment",
    "IntegerAddExplorer",
    "integer_add_explorer",
    "ConcatExplorer",
    "concat_explorer",
]

INT_COLOR = "#2ca02c"
NAIVE_COLOR = "#d62728"
SHARED_COLOR = "#1f77b4"


def _positive_real(v: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
        raise TypeError(f"{name} must be a finite number, got {v!r}")
    if not lo <= float(v) <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {v}")
    return float(v)


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
    ratio = _positive_real(scale_ratio, "scale_ratio", 1e-3, 1e3)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if isinstance(left_shift, bool) or not isinstance(left_shift, numbers.Integral) or not 0 <= left_shift <= 22:
        raise ValueError(f"left_shift must be an integer in [0, 22], got {left_shift!r}")
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
    """Train the fake-quant node after an add (``qlearn.qat.QATAdd``) on ``steps`` batches, then compare.

    Inputs a ~ N(0, 1) and b ~ scale_ratio N(0, 1) arrive already fake-quantized on fixed uint8 grids
    over [-4, 4] and [-4 r, 4 r] (what the layers before them would have learned). In training mode the
    node tracks the sum's range with an EMA (``decay``); in eval mode its output is the re-quantized
    add of Eq. 72-73, which the integer kernel reproduces from the codes.
    """
    import torch

    from qlearn.qat import ActFakeQuant, QATAdd
    from qlearn.quantize import fake_quantize

    ratio = _positive_real(scale_ratio, "scale_ratio", 1e-3, 1e3)
    for name, v, lo in (("steps", steps, 1), ("batch", batch, 2)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
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
def _ratio_sweep(left_shift: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Exact fraction and max |LSB error| of the integer add over RATIO_GRID (cached per left_shift)."""
    exact, worst = [], []
    for r in RATIO_GRID:
        e = add_experiment(float(r), n=n, left_shift=left_shift, seed=seed)
        exact.append(e.exact_fraction)
        worst.append(int(np.abs(e.lsb_error).max()))
    return {"ratio": RATIO_GRID, "exact": np.asarray(exact), "worst": np.asarray(worst)}


@lru_cache(maxsize=64)
def _cached_add(ratio: float, left_shift: int, n: int, seed: int) -> AddExperiment:
    return add_experiment(ratio, n=n, left_shift=left_shift, seed=seed)


class IntegerAddExplorer(Explorer):
    """Notebook 07: the integer add with two input scales, its error in output LSBs."""

    title_text = "The re-quantized add: two input scales, one output grid"
    figsize = (12.0, 3.6)

    def __init__(self, scale_ratio: float = 4.0, left_shift: int = 20, n: int = 4096, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "ratio": widgets.FloatLogSlider(
                value=scale_ratio, base=2, min=-5, max=5, step=0.25, description="scale ratio S2/S1",
                style={"description_width": "initial"}),
            "left_shift": widgets.IntSlider(
                value=left_shift, min=2, max=22, description="left shift (headroom bits)",
                style={"description_width": "initial"}),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_sc, self.ax_h, self.ax_r = fig.subplots(1, 3)
        (self.pts_naive,) = self.ax_sc.plot([], [], ".", ms=2, color=NAIVE_COLOR, alpha=0.5, label="codes added naively")
        (self.pts_int,) = self.ax_sc.plot([], [], ".", ms=2, color=INT_COLOR, label="integer add (Eqs. 32-34)")
        (self.diag,) = self.ax_sc.plot([], [], ":", color="gray", lw=1)
        self.ax_sc.set(xlabel="real sum a + b", ylabel="dequantized output", title="output against the real sum")
        self.ax_sc.legend(loc="upper left", markerscale=4)
        self.lsb_values = np.arange(-3, 4)
        self.bars = self.ax_h.bar(self.lsb_values, np.ones(7), 0.7, color=INT_COLOR)
        self.bar_text = [self.ax_h.text(v, 0, "", ha="center", va="bottom", fontsize="small") for v in self.lsb_values]
        self.ax_h.set(xticks=self.lsb_values, xlabel="q_int - q_exact (output LSBs)", ylabel="% of values",
                      ylim=(0, 115), title="integer add vs exact re-quantized add")
        (self.l_exact,) = self.ax_r.semilogx([], [], "-", color=INT_COLOR, base=2, label="% exact")
        self.m_exact = self.ax_r.plot([], [], "o", ms=9, mfc="none", color="black")[0]
        self.ax_r.set(xlabel="scale ratio S2/S1", ylabel="% bit-exact", ylim=(0, 105),
                      title="exactness across scale ratios")
        self.ax_r2 = self.ax_r.twinx()
        (self.l_worst,) = self.ax_r2.semilogx([], [], "--", color="gray", base=2, label="max |error| (LSB)")
        self.ax_r2.set_ylabel("max |error| (LSB)")
        self.ax_r.legend(handles=[self.l_exact, self.l_worst], loc="lower left")

    def render(self, ratio: float, left_shift: int) -> dict:
        e = _cached_add(float(ratio), int(left_shift), self.n, self.seed)
        real = e.a + e.b
        k = slice(0, min(1500, e.a.size))
        self.pts_int.set_data(real[k], dequantize(e.q_int, e.out_qp)[k])
        self.pts_naive.set_data(real[k], dequantize(e.q_naive, e.out_qp)[k])
        lim = (float(real.min()) * 1.1, float(real.max()) * 1.1)
        self.diag.set_data(lim, lim)
        self.ax_sc.set_xlim(*lim)
        self.ax_sc.set_ylim(*lim)
        err = e.lsb_error
        for bar, txt, v in zip(self.bars, self.bar_text, self.lsb_values):
            pct = 100.0 * float(np.mean(np.clip(err, -3, 3) == v))
            bar.set_height(pct)
            txt.set_position((v, pct))
            txt.set_text(f"{pct:.1f}" if pct > 0 else "")
        sweep = _ratio_sweep(int(left_shift), self.n, self.seed)
        self.l_exact.set_data(sweep["ratio"], 100 * sweep["exact"])
        self.l_worst.set_data(sweep["ratio"], sweep["worst"])
        self.ax_r.set_xlim(RATIO_GRID[0], RATIO_GRID[-1])
        self.ax_r2.set_ylim(0, max(2, int(sweep["worst"].max()) + 1))
        self.m_exact.set_data([ratio], [100 * e.exact_fraction])
        m = e.mult
        real_err = e.error_vs_real_lsb(e.q_int)
        return {
            "S1 (a), Z1": f"{e.a_qp.scale:.5g}, {e.a_qp.zero_point}",
            "S2 (b), Z2": f"{e.b_qp.scale:.5g}, {e.b_qp.zero_point}",
            "S3 (sum), Z3": f"{e.out_qp.scale:.5g}, {e.out_qp.zero_point}",
            "S1/S3, S2/S3 (Eq. 72)": f"{e.a_qp.scale / e.out_qp.scale:.5f}, {e.b_qp.scale / e.out_qp.scale:.5f}",
            "a: (m0, shift)": f"({m.a_m0}, {m.a_shift})",
            "b: (m0, shift)": f"({m.b_m0}, {m.b_shift})",
            "out: (m0, shift)": f"({m.out_m0}, {m.out_shift})",
            "bit-exact with the re-quantized add": f"{100 * e.exact_fraction:.2f} %",
            "max |q_int - q_exact| (LSB)": int(np.abs(err).max()),
            "mean q_int - q_exact (LSB)": float(err.mean()),
            "max |naive - exact| (LSB)": int(np.abs(e.naive_lsb_error).max()),
            "RMS error vs real a + b (LSB)": float(np.sqrt(np.mean(real_err**2))),
        }


def integer_add_explorer(**kwargs: Any) -> IntegerAddExplorer:
    """Notebook 07: slide the ratio of the two input scales and the fixed-point headroom."""
    return IntegerAddExplorer(**kwargs)


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
    ratio = _positive_real(range_ratio, "range_ratio", 1.0, 1e3)
    bits = check_bits(bits)
    if bits > 8:
        raise ValueError(f"bits must be between 2 and 8 (uint8 codes), got {bits}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
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


class ConcatExplorer(Explorer):
    """Notebook 07: concatenating a small-range tensor onto a large-range one."""

    title_text = "Concatenation: one shared grid, or re-quantize?"
    figsize = (11.0, 3.4)

    def __init__(self, range_ratio: float = 8.0, bits: int = 8, n: int = 4096, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        controls = {
            "ratio": widgets.FloatLogSlider(
                value=range_ratio, base=2, min=0, max=6, step=0.25, description="range ratio a/b",
                style={"description_width": "initial"}),
            "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits",
                                      style={"description_width": "initial"}),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        from matplotlib.collections import LineCollection

        self.ax_g, self.ax_m, self.ax_d = fig.subplots(1, 3, width_ratios=[1.4, 1.0, 1.0])
        self.own_ticks = LineCollection([], colors=INT_COLOR, linewidths=0.8, label="b's own grid")
        self.shared_ticks = LineCollection([], colors=SHARED_COLOR, linewidths=0.8, label="shared (output) grid")
        self.ax_g.add_collection(self.own_ticks)
        self.ax_g.add_collection(self.shared_ticks)
        self.ax_g.set(ylim=(0, 1), yticks=[], xlabel="value of b", title="the grids b can live on")
        self.ax_g.legend(loc="center right")
        labels = ["own grid\n(before concat)", "shared grid\n(direct)", "own, then\nre-quantized"]
        self.mse_bars = self.ax_m.bar(np.arange(3), np.ones(3), 0.6, color=[INT_COLOR, SHARED_COLOR, NAIVE_COLOR])
        self.ax_m.set(yscale="log", xticks=np.arange(3), ylabel="MSE of b", title="error of the small tensor")
        self.ax_m.set_xticklabels(labels, fontsize="small")
        self.d_bars = self.ax_d.bar([-1, 0, 1], np.ones(3), 0.6, color=NAIVE_COLOR)
        self.d_text = [self.ax_d.text(v, 0, "", ha="center", va="bottom", fontsize="small") for v in (-1, 0, 1)]
        self.ax_d.set(xticks=[-1, 0, 1], ylim=(0, 115), xlabel="re-quantized - direct (LSB)", ylabel="% of values",
                      title="double rounding")

    def render(self, ratio: float, bits: int) -> dict:
        e = concat_experiment(float(ratio), bits=int(bits), n=self.n, seed=self.seed)
        bmax = 6.0 / e.range_ratio
        own = e.b_qp.scale * (np.arange(e.b_qp.qmin, e.b_qp.qmax + 1) - e.b_qp.zero_point)
        shared = e.out_qp.scale * (np.arange(e.out_qp.qmin, e.out_qp.qmax + 1) - e.out_qp.zero_point)
        shared = shared[shared <= bmax * 1.05]
        self.own_ticks.set_segments([[(g, 0.05), (g, 0.45)] for g in own])
        self.shared_ticks.set_segments([[(g, 0.55), (g, 0.95)] for g in shared])
        self.ax_g.set_xlim(-0.02 * bmax, bmax * 1.05)
        mses = [e.mse("own"), e.mse("shared"), e.mse("requant")]
        for bar, v in zip(self.mse_bars, mses):
            bar.set_height(v)
        self.ax_m.set_ylim(min(mses) / 3, max(mses) * 3)
        diff = e.b_requant.astype(np.int64) - e.b_shared.astype(np.int64)
        for bar, txt, v in zip(self.d_bars, self.d_text, (-1, 0, 1)):
            pct = 100.0 * float(np.mean(diff == v))
            bar.set_height(pct)
            txt.set_position((v, pct))
            txt.set_text(f"{pct:.1f}")
        return {
            "b's own scale S_b": e.b_qp.scale,
            "shared scale S_out": e.out_qp.scale,
            "grid points for b: own / shared": f"{len(own)} / {int(np.count_nonzero(shared <= bmax + 1e-12))}",
            "MSE of b, own grid": mses[0],
            "MSE of b, shared grid (concat = copy)": mses[1],
            "MSE of b, re-quantized": mses[2],
            "re-quantize multiplier S_b/S_out: (m0, shift)": f"({e.m0}, {e.shift})",
            "codes changed by double rounding": f"{100 * e.double_rounding_fraction:.2f} %",
            "max |re-quantized - direct| (LSB)": int(np.abs(diff).max()),
            "multiplies for the concat: shared / separate": f"0 / {e.b.size}",
        }


def concat_explorer(**kwargs: Any) -> ConcatExplorer:
    """Notebook 07: slide how much smaller b's range is than a's."""
    return ConcatExplorer(**kwargs)
