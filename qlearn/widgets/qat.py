"""Notebook 06: quantization-aware training (QAT) -- train with the rounding inference will do.

The paper (Sec. 3, Alg. 1) inserts fake-quantization nodes where the integer model rounds: on the
(folded) weights before each convolution and on each layer's output activations. The forward pass is
the staircase x_hat = S (clamp(round(x/S) + Z, qmin, qmax) - Z) (Eq. 50); its true derivative is zero
almost everywhere, so the backward pass uses the *straight-through estimator* (STE): gradient 1 inside
the representable range, 0 where the clamp is active (Eq. 52). Activation ranges come from an
exponential moving average of batch min/max (Eq. 55), and quantizing activations may be delayed until
the ranges have settled (Eq. 56).

The payoff is at low bit widths: post-training quantization (PTQ) of a trained model loses accuracy
at 4 bits and below. On this small model a plain float fine-tune before PTQ (the control) recovers the
4-bit loss as well as QAT does; at 3 bits per-tensor and 2 bits per-channel only QAT keeps most of the
accuracy. At 8 bits PTQ loses nothing and QAT has nothing to recover.

Everything here drives the library's own modules (``qlearn.qat.fake_quant_ste``, ``ActFakeQuant``,
``prepare_qat``; ``qlearn.ptq.post_training_quantize``) on the cached lesson model of notebook 03.
Training results are cached beside it (``cached_results``), so the notebook opens in seconds.
"""
from __future__ import annotations

import copy
import numbers
import time
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from qlearn._checks import as_float_array, check_bits
from qlearn.lessons.lesson_model import LessonModel, cached_results, lesson_model
from qlearn.qparams import QParams, qparams_from_range
from qlearn.threads import one_thread
from qlearn.widgets.base import Explorer, int_slider, slider

__all__ = [
    "STECurve",
    "ste_curve",
    "STEExplorer",
    "ste_explorer",
    "SIGNALS",
    "activation_ranges_during_training",
    "EMATrace",
    "ema_trace",
    "EMAExplorer",
    "ema_explorer",
    "QAT_BITS",
    "QATRecipe",
    "ptq_vs_qat",
    "PTQvsQATExplorer",
    "ptq_vs_qat_explorer",
]

STE_COLOR = "#1f77b4"
PTQ_COLOR = "#d62728"
QAT_COLOR = "#2ca02c"
FINETUNE_COLOR = "#9467bd"


def _check_act_bits(bits: Any) -> int:
    bits = check_bits(bits)
    if bits > 8:
        raise ValueError(f"bits must be between 2 and 8 (activations are stored as uint8), got {bits}")
    return bits


# ---------------------------------------------------------------------------------- STE
@dataclass(frozen=True, eq=False)
class STECurve:
    """Fake quantization of x and its straight-through gradient, from ``qlearn.qat.fake_quant_ste``.

    x, x_hat, grad are (n,) float64; qp the asymmetric parameters of [lo, hi] (Eqs. 4-6);
    [lo_real, hi_real] = [S (qmin - Z), S (qmax - Z)] is the representable interval (Eq. 7).
    """

    x: np.ndarray
    x_hat: np.ndarray
    grad: np.ndarray
    qp: QParams

    @property
    def lo_real(self) -> float:
        return float(self.qp.scale * (self.qp.qmin - self.qp.zero_point))

    @property
    def hi_real(self) -> float:
        return float(self.qp.scale * (self.qp.qmax - self.qp.zero_point))


def ste_curve(x: Any, bits: int, lo: float, hi: float) -> STECurve:
    """x_hat(x) (Eq. 50) and d x_hat / d x by autograd through the STE (Eq. 52).

    The parameters are the paper's activation format: unsigned ``bits``-bit codes, range [lo, hi]
    widened to contain 0, nudged zero point (``qparams_from_range``). The gradient is obtained by
    back-propagating ones through ``fake_quant_ste`` -- the same autograd function QAT trains with.
    x is evaluated in float64 (so the comparison against float64 oracles is exact).
    """
    from qlearn.qat import fake_quant_ste

    arr = as_float_array(x, "x")
    bits = _check_act_bits(bits)
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
            raise TypeError(f"{name} must be a finite number, got {v!r}")
    if not float(lo) < float(hi):
        raise ValueError(f"the range needs lo < hi, got lo={lo}, hi={hi}")
    qp = qparams_from_range(float(lo), float(hi), bits)
    t = torch.from_numpy(arr.copy()).requires_grad_(True)  # float64
    y = fake_quant_ste(t, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    y.backward(torch.ones_like(y))
    return STECurve(arr, y.detach().numpy().copy(), t.grad.numpy().copy(), qp)


class STEExplorer(Explorer):
    """Notebook 06, part 1: the fake-quant staircase and the gradient the STE uses instead of its own."""

    title_text = "Fake quantization forward, straight-through gradient backward"
    figsize = (11.0, 3.5)
    X_SPAN = 2.5

    def __init__(self, bits: int = 3, lo: float = -1.0, hi: float = 1.0, n: int = 2001, seed: int = 0) -> None:
        bits = _check_act_bits(bits)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 11:
            raise ValueError(f"n must be an integer >= 11 (points on the x axis), got {n!r}")
        self.x = np.linspace(-self.X_SPAN, self.X_SPAN, int(n))  # (n,) float64
        self.sample = np.random.default_rng(seed).standard_normal(4096)  # activations ~ N(0, 1)
        controls = {
            "bits": int_slider("bits", bits, 2, 8),
            "lo": slider("range lo", lo, -2.0, 0.0, 0.05),
            "hi": slider("range hi", hi, 0.05, 2.0, 0.05),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_f, self.ax_g = fig.subplots(1, 2)
        for ax in (self.ax_f, self.ax_g):
            ax.axvspan(0, 0, color="#cfe2f3", label="representable range")
        self.span_f = self.ax_f.patches[-1]
        self.span_g = self.ax_g.patches[-1]
        self.ax_f.plot(self.x, self.x, ":", color="gray", lw=1, label="identity x")
        (self.stairs,) = self.ax_f.plot([], [], color=STE_COLOR, lw=1.4, label="x_hat = fake_quant(x) (Eq. 50)")
        self.ax_f.set(xlim=(-self.X_SPAN, self.X_SPAN), ylim=(-self.X_SPAN, self.X_SPAN), xlabel="x", ylabel="x_hat",
                      title="forward: a staircase")
        self.ax_f.legend(loc="upper left")
        self.ax_g.axhline(0, color="gray", lw=3, alpha=0.35, label="true derivative (0 almost everywhere)")
        (self.grad_line,) = self.ax_g.plot([], [], color=STE_COLOR, lw=1.6, label="STE gradient (Eq. 52)")
        self.ax_g.set(xlim=(-self.X_SPAN, self.X_SPAN), ylim=(-0.15, 1.35), xlabel="x", ylabel="d x_hat / d x",
                      title="backward: 1 inside the range, 0 outside")
        self.ax_g.legend(loc="upper left")

    def render(self, bits: int, lo: float, hi: float) -> dict:
        if not lo < hi:  # both sliders at 0 cannot happen (hi >= 0.05), kept for safety
            hi = lo + 0.05
        curve = ste_curve(self.x, bits, lo, hi)
        self.stairs.set_data(curve.x, curve.x_hat)
        self.grad_line.set_data(curve.x, curve.grad)
        for span in (self.span_f, self.span_g):
            span.set_x(curve.lo_real)
            span.set_width(curve.hi_real - curve.lo_real)
        s = ste_curve(self.sample, bits, lo, hi)
        inside = s.grad > 0
        err = s.x_hat - s.x
        qp = curve.qp
        return {
            "scale S": float(qp.scale),
            "zero point Z": int(qp.zero_point),
            "codes qmin..qmax": f"{qp.qmin}..{qp.qmax}",
            "grid levels": int(qp.qmax - qp.qmin + 1),
            "representable lo = S(qmin-Z)": curve.lo_real,
            "representable hi = S(qmax-Z)": curve.hi_real,
            "N(0,1) sample: share with gradient 1": float(np.mean(inside)),
            "N(0,1) sample: share clipped (gradient 0)": float(np.mean(~inside)),
            "N(0,1) sample: MSE": float(np.mean(err**2)),
            "N(0,1) sample: max |error| inside (<= S/2)": float(np.abs(err[inside]).max()) if inside.any() else 0.0,
        }


def ste_explorer(**kwargs: Any) -> STEExplorer:
    """Notebook 06: slide the bits and the range; see the staircase and its straight-through gradient."""
    return STEExplorer(**kwargs)


# ---------------------------------------------------------------------------------- EMA ranges
#: Activations recorded while the lesson architecture trains from scratch: label -> module name.
SIGNALS: dict[str, str] = {
    "logits (classifier output)": "classifier",
    "ReLU6 output of features.3.pw": "features.3.pw",
}
STREAM_EPOCHS = 4


def activation_ranges_during_training(lesson: LessonModel, *, epochs: int = STREAM_EPOCHS,
                                      progress: bool = True) -> dict[str, np.ndarray]:
    """Batch min and max of each ``SIGNALS`` activation at every training step of a fresh model.

    The lesson architecture is trained from its seeded initial weights for ``epochs`` epochs (the
    lesson's own recipe, shorter), and a forward hook records min(x) and max(x) of every training
    batch -- exactly the two numbers an activation quantizer's EMA sees (Eq. 55). Cached beside the
    lesson model. Returns {"<module> min": (steps,), "<module> max": (steps,)} as float64 arrays.
    """
    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or not 1 <= epochs <= 50:
        raise ValueError(f"epochs must be an integer in 1..50, got {epochs!r}")

    def compute() -> dict[str, list[float]]:
        from qlearn.models import MODELS
        from qlearn.train import TrainConfig, seed_everything, train

        cfg, data = lesson.config, lesson.data
        seen: dict[str, list[float]] = {f"{m} {k}": [] for m in SIGNALS.values() for k in ("min", "max")}
        with one_thread():
            seed_everything(cfg.seed)
            model = MODELS[cfg.arch](data.num_classes, width=cfg.width, input_size=cfg.input_size,
                                     in_channels=data.in_channels)
            handles = []
            for module_name in SIGNALS.values():
                def hook(m, inputs, out, module_name=module_name):  # type: ignore[no-untyped-def]
                    if m.training:
                        seen[f"{module_name} min"].append(float(out.detach().min()))
                        seen[f"{module_name} max"].append(float(out.detach().max()))
                handles.append(model.get_submodule(module_name).register_forward_hook(hook))
            try:
                tc = TrainConfig(epochs=int(epochs), batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
                train(model, data.x_train, data.y_train, tc, progress=progress,
                      desc="recording activation ranges during training")
            finally:
                for h in handles:
                    h.remove()
        return seen

    stored = cached_results(lesson, f"act-ranges-e{int(epochs)}-v1", compute)
    return {k: np.asarray(v, dtype=np.float64) for k, v in stored.items()}


@dataclass(frozen=True, eq=False)
class EMATrace:
    """An activation quantizer (``qlearn.qat.ActFakeQuant``) fed one batch per step. Arrays are (steps,).

    ema_lo/ema_hi: the range after the step's update (Eq. 55); quantized: whether that step's output was
    fake-quantized (step > delay, Eq. 56); scale: S of the range (Eq. 57); clipped: quantized and the
    batch reached outside the range (its extremes are clamped).
    """

    decay: float
    delay: int
    bits: int
    batch_lo: np.ndarray
    batch_hi: np.ndarray
    ema_lo: np.ndarray
    ema_hi: np.ndarray
    quantized: np.ndarray
    scale: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.batch_lo.shape[0])

    @property
    def clipped(self) -> np.ndarray:
        tol = 1e-6 * np.maximum(np.abs(self.ema_hi), 1.0)
        return self.quantized & ((self.batch_hi > self.ema_hi + tol) | (self.batch_lo < self.ema_lo - tol))

    @property
    def first_quantized_step(self) -> int | None:
        idx = np.flatnonzero(self.quantized)
        return int(idx[0]) + 1 if idx.size else None


def ema_trace(batch_lo: Any, batch_hi: Any, decay: float, delay: int, bits: int = 8) -> EMATrace:
    """Replay a stream of batch extremes through ``ActFakeQuant(bits, decay, delay)`` in training mode.

    The quantizer's EMA sees only min(x) and max(x) of each batch, so feeding it the 2-element tensor
    [min, max] of each recorded batch reproduces exactly what it would have done on the batch itself.
    """
    from qlearn.qat import ActFakeQuant

    lo = as_float_array(batch_lo, "batch_lo")
    hi = as_float_array(batch_hi, "batch_hi")
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise ValueError(f"batch_lo and batch_hi must be 1-D of the same length, got {lo.shape} and {hi.shape}")
    if np.any(lo > hi):
        raise ValueError("every batch needs batch_lo <= batch_hi")
    q = ActFakeQuant(_check_act_bits(bits), decay, delay).train()  # validates decay and delay
    ema_lo, ema_hi, quant, scale = [], [], [], []
    with torch.no_grad():
        for a, b in zip(lo, hi):
            q(torch.tensor([a, b], dtype=torch.float32))
            ema_lo.append(float(q.lo))
            ema_hi.append(float(q.hi))
            quant.append(q.active)
            scale.append(q.qparams().scale)
    return EMATrace(float(decay), int(delay), q.bits, lo, hi, np.array(ema_lo), np.array(ema_hi),
                    np.array(quant, dtype=bool), np.array(scale))


DECAYS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


class EMAExplorer(Explorer):
    """Notebook 06, part 2: an EMA range tracking the batch min/max of a network that is learning."""

    title_text = "Activation ranges during training: EMA of batch min/max, and the quantization delay"
    figsize = (12.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, decay: float = 0.9, delay: int = 20,
                 signal: str = "logits (classifier output)") -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        self.stream = activation_ranges_during_training(self.lesson)
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {list(SIGNALS)}, got {signal!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        steps = len(next(iter(self.stream.values())))
        controls = {
            "decay": widgets.SelectionSlider(options=list(DECAYS), value=decay, description="EMA decay",
                                             style={"description_width": "initial"}),
            "delay": int_slider("quant delay (steps)", delay, 0, steps - 1),
            "signal": widgets.Dropdown(options=list(SIGNALS), value=signal, description="activation",
                                       layout=widgets.Layout(width="330px")),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_r, self.ax_s = fig.subplots(1, 2, width_ratios=[1.6, 1.0])
        self.delay_span = self.ax_r.axvspan(0, 1, color="#eeeeee", label="observing only (delay)")
        (self.b_hi,) = self.ax_r.plot([], [], ".", color="gray", ms=3, label="batch min / max")
        (self.b_lo,) = self.ax_r.plot([], [], ".", color="gray", ms=3)
        (self.e_hi,) = self.ax_r.plot([], [], color=STE_COLOR, lw=1.5, label="EMA range (Eq. 55)")
        (self.e_lo,) = self.ax_r.plot([], [], color=STE_COLOR, lw=1.5)
        (self.clip,) = self.ax_r.plot([], [], "x", color=PTQ_COLOR, ms=5, label="batch extreme clipped (quantized step)")
        self.ax_r.set(xlabel="training step", ylabel="activation value", title="range seen by the quantizer")
        self.ax_r.legend(loc="upper left")
        self.s_delay = self.ax_s.axvspan(0, 1, color="#eeeeee")
        (self.s_ema,) = self.ax_s.plot([], [], color=STE_COLOR, lw=1.5, label="S of the EMA range")
        (self.s_batch,) = self.ax_s.plot([], [], ".", color="gray", ms=3, label="S of the batch's own min/max")
        self.ax_s.set(xlabel="training step", ylabel="scale S (8 bits)", yscale="log", title="the quantization step")
        self.ax_s.legend(loc="upper right")

    def render(self, decay: float, delay: int, signal: str) -> dict:
        module = SIGNALS[signal]
        tr = ema_trace(self.stream[f"{module} min"], self.stream[f"{module} max"], decay, delay)
        t = np.arange(1, tr.steps + 1)
        self.delay_span.set_x(0.5)
        self.delay_span.set_width(max(delay, 0))
        self.s_delay.set_x(0.5)
        self.s_delay.set_width(max(delay, 0))
        self.b_hi.set_data(t, tr.batch_hi)
        self.b_lo.set_data(t, tr.batch_lo)
        self.e_hi.set_data(t, tr.ema_hi)
        self.e_lo.set_data(t, tr.ema_lo)
        clip = tr.clipped
        tol = 1e-6 * np.maximum(np.abs(tr.ema_hi), 1.0)
        hi_out = clip & (tr.batch_hi > tr.ema_hi + tol)  # mark the extreme that left the range
        lo_out = clip & (tr.batch_lo < tr.ema_lo - tol)
        self.clip.set_data(np.concatenate([t[hi_out], t[lo_out]]),
                           np.concatenate([tr.batch_hi[hi_out], tr.batch_lo[lo_out]]))
        vals = np.concatenate([tr.batch_lo, tr.batch_hi, tr.ema_lo, tr.ema_hi])
        pad = 0.05 * float(vals.max() - vals.min())
        self.ax_r.set_xlim(0, tr.steps + 1)
        self.ax_r.set_ylim(float(vals.min()) - pad, float(vals.max()) + pad)
        batch_s = np.array([qparams_from_range(a, b, 8).scale for a, b in zip(tr.batch_lo, tr.batch_hi)])
        self.s_ema.set_data(t, tr.scale)
        self.s_batch.set_data(t, batch_s)
        both = np.concatenate([tr.scale, batch_s])
        self.ax_s.set_xlim(0, tr.steps + 1)
        self.ax_s.set_ylim(both.min() / 1.5, both.max() * 1.5)
        first = tr.first_quantized_step
        after = tr.quantized
        worst = float(np.max(tr.batch_hi[after] / np.maximum(tr.ema_hi[after], 1e-12))) if after.any() else float("nan")
        i = (first or 1) - 1
        return {
            "EMA decay d": float(decay),
            "time constant 1/(1-d) (steps)": 1.0 / (1.0 - float(decay)),
            "quantization delay (steps)": int(delay),
            "first quantized step": first if first is not None else "none",
            "EMA range at that step": f"[{tr.ema_lo[i]:.3g}, {tr.ema_hi[i]:.3g}]",
            "batch range at that step": f"[{tr.batch_lo[i]:.3g}, {tr.batch_hi[i]:.3g}]",
            "quantized steps that clip the batch (min or max)": int(clip.sum()),
            "quantized steps": int(after.sum()),
            "worst batch max / EMA hi (quantized steps)": worst,
            "final EMA range": f"[{tr.ema_lo[-1]:.3g}, {tr.ema_hi[-1]:.3g}]",
            "final batch range": f"[{tr.batch_lo[-1]:.3g}, {tr.batch_hi[-1]:.3g}]",
        }


def ema_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> EMAExplorer:
    """Notebook 06: the EMA range of a real activation over the first training steps; slide decay and delay.

    The recorded stream (a few epochs of training from scratch, ~3 s) is cached beside the lesson model.
    """
    return EMAExplorer(lesson, **kwargs)


# ---------------------------------------------------------------------------------- PTQ vs QAT
QAT_BITS = (8, 4, 3, 2)


@dataclass(frozen=True)
class QATRecipe:
    """The short QAT fine-tune of notebook 06 (the pipeline's recipe, fewer epochs).

    epochs of AdamW at lr with a cosine schedule and no weight decay; BN frozen after half of the
    steps (Eq. 62); activation EMA decay 0.99 and no delay (the float model's ranges are already
    settled); 8-bit activations; min/max weight ranges. The same recipe fine-tunes the *float* model
    as a control: PTQ after that float fine-tune shows how much of the gain is only extra training.
    """

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    ema_decay: float = 0.99
    calib_images: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "calib_images", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not 0 < self.lr < 1:
            raise ValueError(f"lr must be a number in (0, 1), got {self.lr!r}")

    @property
    def key(self) -> str:
        return f"e{self.epochs}-lr{self.lr:g}-b{self.batch_size}-d{self.ema_decay:g}-c{self.calib_images}-s{self.seed}"


def ptq_vs_qat(lesson: LessonModel, *, bits: tuple[int, ...] = QAT_BITS, recipe: QATRecipe | None = None,
               progress: bool = True) -> dict[str, np.ndarray]:
    """Test accuracy of PTQ, of PTQ after a float fine-tune, and of QAT, per weight bit width and scheme.

    For each b in ``bits`` and each scheme (per-tensor, per-channel weights; 8-bit activations):
      ptq        ``post_training_quantize`` of the lesson model (BN folded, calibrated min/max ranges)
      finetuned  the float model fine-tuned with ``recipe`` (no quantization), then PTQ -- the control
      qat        ``prepare_qat`` + ``recipe.epochs`` epochs of training with fake quantization, BN frozen
                 halfway (Alg. 1 of the paper, Sec. 3; Eqs. 50-62)
    All on one thread, deterministic; about 1 s per QAT run on one core. Cached beside the lesson model.
    Returns arrays over ``bits``: "bits", "ptq per-tensor", ..., "qat per-channel", and the scalars
    "float" (the lesson model's accuracy), "qat steps", "qat seconds" (the training time, when computed).
    """
    from qlearn.ptq import post_training_quantize
    from qlearn.qat import QATConfig, prepare_qat
    from qlearn.train import TrainConfig, evaluate, seed_everything, train

    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    recipe = QATRecipe() if recipe is None else recipe
    if not isinstance(recipe, QATRecipe):
        raise TypeError(f"recipe must be a QATRecipe, got {type(recipe).__name__}")
    if isinstance(bits, (int, str)) or len(bits) == 0:
        raise TypeError(f"bits must be a non-empty tuple of integers, e.g. (8, 4, 3, 2), got {bits!r}")
    bits = tuple(int(_check_weight_bits(b)) for b in bits)

    def compute() -> dict[str, list[float]]:
        data = lesson.data
        calib = data.x_train[: recipe.calib_images]
        steps = recipe.epochs * -(-int(data.x_train.shape[0]) // recipe.batch_size)
        tc = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, schedule="cosine",
                         weight_decay=0.0, seed=recipe.seed)
        out: dict[str, list[float]] = {"bits": [float(b) for b in bits], "float": [lesson.float_acc],
                                       "qat steps": [float(steps)]}
        schemes = (("per-tensor", False), ("per-channel", True))
        jobs = [(kind, b, label, pc) for kind in ("ptq", "finetuned", "qat") for label, pc in schemes for b in bits]
        qat_seconds = 0.0
        with one_thread():
            seed_everything(recipe.seed)
            tuned = copy.deepcopy(lesson.model)
            train(tuned, data.x_train, data.y_train, tc, progress=False)
            for kind, b, label, pc in tqdm(jobs, desc="PTQ and QAT runs", disable=not progress, leave=False):
                if kind in ("ptq", "finetuned"):
                    src = lesson.model if kind == "ptq" else tuned
                    m = post_training_quantize(src, calib, QATConfig(weight_bits=b, per_channel=pc))
                else:
                    t0 = time.perf_counter()
                    seed_everything(recipe.seed)
                    cfg = QATConfig(weight_bits=b, per_channel=pc, ema_decay=recipe.ema_decay, act_quant_delay=0,
                                    freeze_bn_step=max(1, steps // 2))
                    m = prepare_qat(lesson.model, cfg)
                    train(m, data.x_train, data.y_train, tc, progress=False)
                    qat_seconds += time.perf_counter() - t0
                out.setdefault(f"{kind} {label}", []).append(evaluate(m, data.x_test, data.y_test))
        out["qat seconds"] = [qat_seconds]
        return out

    name = ("ptq-vs-qat-" + "-".join(str(b) for b in bits) + f"-{recipe.key}-v1").replace(".", "p")
    stored = cached_results(lesson, name, compute)
    return {k: np.asarray(v, dtype=np.float64) for k, v in stored.items()}


def _check_weight_bits(b: Any) -> int:
    b = check_bits(b, "weight bits")
    if b > 8:
        raise ValueError(f"weight bits must be between 2 and 8 (stored in int8), got {b}")
    return b


class PTQvsQATExplorer(Explorer):
    """Notebook 06, part 3: accuracy of PTQ and QAT at each weight bit width (cached runs)."""

    title_text = "Post-training quantization vs quantization-aware training (lesson model, digits)"
    figsize = (11.0, 3.6)

    def __init__(self, lesson: LessonModel | None = None, bits: int = 3, per_channel: bool = False) -> None:
        self.lesson = lesson_model() if lesson is None else lesson
        self.results = ptq_vs_qat(self.lesson)
        options = sorted(int(b) for b in self.results["bits"])
        if bits not in options:
            raise ValueError(f"bits must be one of the computed bit widths {options}, got {bits!r}")
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
        controls = {
            "bits": widgets.SelectionSlider(options=options, value=bits, description="weight bits",
                                            style={"description_width": "initial"}),
            "per_channel": widgets.Checkbox(per_channel, description="per-channel weights", indent=False),
        }
        super().__init__(controls)

    def build(self, fig: Figure) -> None:
        self.ax_c, self.ax_b = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
        b = self.results["bits"]
        fl = 100 * float(self.results["float"][0])
        self.ax_c.axhline(fl, color="gray", ls=":", label="float")
        (self.l_ptq,) = self.ax_c.plot(b, b * 0, "o--", color=PTQ_COLOR, label="PTQ")
        (self.l_ft,) = self.ax_c.plot(b, b * 0, "s:", color=FINETUNE_COLOR, ms=4, label="float fine-tune, then PTQ")
        (self.l_qat,) = self.ax_c.plot(b, b * 0, "o-", color=QAT_COLOR, label="QAT fine-tune")
        self.v_bits = self.ax_c.axvline(4, color="gray", lw=0.8)
        self.ax_c.set(xlabel="weight bits (activations 8 bits)", ylabel="test accuracy (%)", ylim=(0, 102),
                      xticks=b, title="accuracy against weight bit width")
        self.ax_c.legend(loc="lower right")
        labels = ["float", "PTQ", "fine-tune\n+ PTQ", "QAT"]
        self.bars = self.ax_b.bar(range(4), np.ones(4), color=["gray", PTQ_COLOR, FINETUNE_COLOR, QAT_COLOR])
        self.bar_text = [self.ax_b.text(i, 0, "", ha="center", va="bottom", fontsize="medium") for i in range(4)]
        self.ax_b.set(xticks=range(4), xticklabels=labels, ylabel="test accuracy (%)", ylim=(0, 110))

    def render(self, bits: int, per_channel: bool) -> dict:
        r = self.results
        scheme = "per-channel" if per_channel else "per-tensor"
        ptq, ft, qat = (100 * r[f"{k} {scheme}"] for k in ("ptq", "finetuned", "qat"))
        self.l_ptq.set_ydata(ptq)
        self.l_ft.set_ydata(ft)
        self.l_qat.set_ydata(qat)
        self.v_bits.set_xdata([bits, bits])
        i = int(np.flatnonzero(r["bits"] == bits)[0])
        fl = 100 * float(r["float"][0])
        vals = [fl, float(ptq[i]), float(ft[i]), float(qat[i])]
        for bar, text, v in zip(self.bars, self.bar_text, vals):
            bar.set_height(v)
            text.set_y(v + 1)
            text.set_text(f"{v:.1f}")
        self.ax_b.set_title(f"{bits}-bit weights, {scheme}")
        lost = fl - vals[1]
        recovered = (vals[3] - vals[1]) / lost if lost > 0.5 else float("nan")
        return {
            "weight bits": int(bits),
            "weight scales": scheme,
            "float accuracy": fl / 100,
            "PTQ accuracy": vals[1] / 100,
            "float fine-tune + PTQ accuracy": vals[2] / 100,
            "QAT accuracy": vals[3] / 100,
            "PTQ loss (points)": lost,
            "share of the PTQ loss QAT recovers": recovered,
            "QAT minus (fine-tune + PTQ) (points)": vals[3] - vals[2],
            "QAT steps per run": int(r["qat steps"][0]),
        }


def ptq_vs_qat_explorer(lesson: LessonModel | None = None, **kwargs: Any) -> PTQvsQATExplorer:
    """Notebook 06: PTQ vs QAT accuracy at 8, 4, 3, 2 weight bits (computed once, ~20 s, then cached)."""
    return PTQvsQATExplorer(lesson, **kwargs)
