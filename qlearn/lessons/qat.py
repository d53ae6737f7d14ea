"""Notebook 06: quantization-aware training (QAT) -- what the lesson computes.

The paper (Sec. 3, Alg. 1) inserts fake-quantization nodes where the integer model rounds: on the
(folded) weights before each convolution and on each layer's output activations. The forward pass is
the staircase x_hat = S (clamp(round(x/S) + Z, qmin, qmax) - Z) (Eq. 50); its true derivative is zero
almost everywhere, so the backward pass uses the *straight-through estimator* (STE): gradient 1 inside
the representable range, 0 where the clamp is active (Eq. 52). Activation ranges come from an
exponential moving average of batch min/max (Eq. 55), and quantizing activations may be delayed until
the ranges have settled (Eq. 56).

* ``ste_curve``                          the staircase and its STE gradient (``STECurve``)
* ``activation_ranges_during_training``  batch min/max of two activations while a model learns
* ``ema_trace``                          those extremes replayed through an activation quantizer (``EMATrace``)
* ``ptq_vs_qat``                         PTQ, float fine-tune + PTQ, and QAT accuracy per weight bit width

The payoff is at low bit widths: post-training quantization (PTQ) of a trained model loses accuracy
at 4 bits and below. On this small model a plain float fine-tune before PTQ (the control) recovers the
4-bit loss as well as QAT does; at 3 bits per-tensor and 2 bits per-channel only QAT keeps most of the
accuracy. At 8 bits PTQ loses nothing and QAT has nothing to recover.

Everything here drives the library's own modules (``qlearn.fake_quant.fake_quant_ste``,
``ActFakeQuant``, ``qlearn.qat.prepare_qat``; ``qlearn.ptq.post_training_quantize``) on the cached lesson
model of notebook 03. Training results are cached beside it (``cached_results``), so the notebook opens
in seconds. The sliders and figures are in ``qlearn.widgets.qat``.
"""
from __future__ import annotations

import copy
import numbers
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qlearn._checks import as_float_array, check_bits8
from qlearn.fake_quant import ActFakeQuant, fake_quant_ste
from qlearn.lessons.lesson_model import LessonModel, cached_results
from qlearn.models import MODELS
from qlearn.ptq import post_training_quantize
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig
from qlearn.qparams import QParams, qparams_from_range
from qlearn.threads import one_thread
from qlearn.train import TrainConfig, evaluate, seed_everything, train

__all__ = [
    "STECurve",
    "ste_curve",
    "SIGNALS",
    "STREAM_EPOCHS",
    "activation_ranges_during_training",
    "EMATrace",
    "ema_trace",
    "QAT_BITS",
    "QATRecipe",
    "ptq_vs_qat",
]


# ---------------------------------------------------------------------------------- STE
@dataclass(frozen=True, eq=False)
class STECurve:
    """Fake quantization of x and its straight-through gradient, from ``qlearn.fake_quant.fake_quant_ste``.

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
    arr = as_float_array(x, "x")
    bits = check_bits8(bits)  # activations: uint8 codes
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
    """An activation quantizer (``qlearn.fake_quant.ActFakeQuant``) fed one batch per step. Arrays are (steps,).

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
    lo = as_float_array(batch_lo, "batch_lo")
    hi = as_float_array(batch_hi, "batch_hi")
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise ValueError(f"batch_lo and batch_hi must be 1-D of the same length, got {lo.shape} and {hi.shape}")
    if np.any(lo > hi):
        raise ValueError("every batch needs batch_lo <= batch_hi")
    q = ActFakeQuant(check_bits8(bits), decay, delay).train()  # validates decay and delay
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
    if not isinstance(lesson, LessonModel):
        raise TypeError(f"lesson must be a LessonModel (from lesson_model()), got {type(lesson).__name__}")
    recipe = QATRecipe() if recipe is None else recipe
    if not isinstance(recipe, QATRecipe):
        raise TypeError(f"recipe must be a QATRecipe, got {type(recipe).__name__}")
    if isinstance(bits, (int, str)) or len(bits) == 0:
        raise TypeError(f"bits must be a non-empty tuple of integers, e.g. (8, 4, 3, 2), got {bits!r}")
    bits = tuple(check_bits8(b, "weight bits") for b in bits)

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
