"""Notebook 10: number formats, per-group (block) quantization, packing, size on disk, mixed precision.

Everything here is computed from the core (``qparams_from_range``, ``quantize``, ``dequantize``,
``fake_quantize``, ``sqnr_db``, ``weight_qparams``, ``qlearn.packing``) on the lesson MobileNet's
BN-folded weights (``lesson_model``). Weights are quantized symmetric, signed, narrow range (Eq. 8)
unless ``symmetric=False`` (asymmetric uint, Eqs. 4-6). Only the weights are quantized; activations and
biases stay float, so accuracies isolate what the weight grid costs.

* ``number_formats``: fp32, fp16, bf16, int8, int4 side by side (range, step near 1.0, bytes per value).
* per tensor, per output channel, or per group of inputs (Eqs. 76-77): ``qlearn.groups``
  (``quantize_groups``, ``fake_quant_granular``, ``bits_per_weight``), re-exported for the notebook.
* ``model_size_on_disk``: real files in a temporary folder, measured with ``os.path.getsize``.
* ``relu_grid_use`` and ``zero_point_costs``: the symmetric/asymmetric trade-off (Eq. 39, the paper's Eq. 7).
* ``layer_sensitivity`` and ``greedy_bits``: mixed precision under a size budget (Eq. 79).
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qlearn._checks import as_float_array, check_bits, check_bool, check_int
from qlearn.error import sqnr_db
from qlearn.groups import GroupQuant, bits_per_weight, check_granularity, fake_quant_granular, quantize_groups, weight_format
from qlearn.lessons.lesson_model import LessonModel, cached_results, check_lesson, swapped_weights
from qlearn.packing import pack, unpack
from qlearn.qparams import qparams_from_range
from qlearn.quantize import fake_quantize
from qlearn.ranges import weight_qparams
from qlearn.threads import one_thread
from qlearn.train import evaluate, predict

__all__ = [
    "NumberFormat", "number_formats", "GRANULARITIES", "GroupQuant", "quantize_groups", "fake_quant_granular",
    "bits_per_weight", "granular_accuracy", "granularity_sweep", "SizeRow", "model_size_on_disk",
    "GridUse", "relu_activations", "relu_grid_use", "ZeroPointCosts", "zero_point_costs", "zero_point_terms",
    "MIXED_BITS", "weight_bytes", "layer_sensitivity", "greedy_bits", "allocation_accuracy", "mixed_precision_curves",
]


# ---------------------------------------------------------------------------------- number formats
@dataclass(frozen=True)
class NumberFormat:
    """One storage format. Floats: relative step (the step grows with |x|); integers: codes, step 1."""

    name: str
    bytes_per_value: float
    max_value: float  # largest finite value (floats) or largest code (integers)
    min_value: float  # most negative value / code
    smallest_normal: float | None  # floats only: below it precision is lost (subnormals), then 0
    step_at_1: float  # distance from 1.0 to the next representable value (codes: 1, the scale S after scaling)
    step_at_100: float  # ... and from 100.0: floats' steps grow with the value, integers' do not


def _float_format(name: str, dtype: Any) -> NumberFormat:
    if dtype is torch.bfloat16:  # numpy has no bfloat16: torch.finfo, and 1 + eps is the next value after 1
        fi = torch.finfo(dtype)
        eps, big, tiny = float(fi.eps), float(fi.max), float(fi.smallest_normal)
        step_100 = eps * 2.0 ** math.floor(math.log2(100.0))  # same significand bits at every exponent
        return NumberFormat(name, 2.0, big, -big, tiny, eps, step_100)
    fi = np.finfo(dtype)
    return NumberFormat(name, float(fi.bits // 8), float(fi.max), float(fi.min), float(fi.smallest_normal),
                        float(np.spacing(dtype(1.0))), float(np.spacing(dtype(100.0))))


def number_formats() -> list[NumberFormat]:
    """fp32, fp16, bf16, int8 and int4: range, step near 1.0 (and 100.0), bytes per value."""
    rows = [_float_format("fp32", np.float32), _float_format("fp16", np.float16), _float_format("bf16", torch.bfloat16)]
    for bits in (8, 4):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        rows.append(NumberFormat(f"int{bits}", bits / 8, float(hi), float(lo), None, 1.0, 1.0))
    return rows


# ---------------------------------------------------------------------------------- granularity
#: Granularities the lesson compares: one scale per tensor, per output channel, or per group of inputs.
GRANULARITIES: tuple[Any, ...] = ("per-tensor", "per-channel", 64, 32, 16, 8)


def _accuracy_with(lesson: LessonModel, new: dict[str, np.ndarray]) -> float:
    chosen = [lesson.layer(n) for n in new]
    with swapped_weights(chosen, list(new.values())), one_thread():
        return evaluate(lesson.folded, lesson.data.x_test, lesson.data.y_test)


def granular_accuracy(lesson: LessonModel, bits: int, granularity: Any, *, symmetric: bool = True) -> float:
    """Test accuracy with every layer's weights fake-quantized at ``bits`` and ``granularity`` (cached)."""
    lesson = check_lesson(lesson)
    key = ("granular", check_bits(bits), check_granularity(granularity), check_bool(symmetric, "symmetric"))
    if key not in lesson.cache:
        new = {n: fake_quant_granular(l.weight, bits, granularity, symmetric=symmetric) for n, l in lesson.layers.items()}
        lesson.cache[key] = _accuracy_with(lesson, new)
    return lesson.cache[key]


def granularity_sweep(lesson: LessonModel, bits: tuple[int, ...] = (2, 3, 4, 8)) -> dict[str, list[float]]:
    """Accuracy per bit width (keys "<bits>") over ``GRANULARITIES``; stored with ``cached_results``."""
    lesson = check_lesson(lesson)
    bits = tuple(check_bits(b) for b in bits)

    def compute() -> dict[str, list[float]]:
        return {str(b): [granular_accuracy(lesson, b, g) for g in GRANULARITIES] for b in bits}

    tag = "-".join(map(str, bits)) + "-g" + "-".join(str(g) for g in GRANULARITIES if isinstance(g, int))
    return cached_results(lesson, f"granularity-{tag}-v1", compute)


# ---------------------------------------------------------------------------------- size on disk
@dataclass(frozen=True)
class SizeRow:
    """One file written and measured: its bytes on disk, the bytes of the arrays in it, and their weight bits."""

    name: str
    file_bytes: int  # os.path.getsize of the real file
    payload_bytes: int  # codes + scales (+ zero points) + biases, as arrays
    weight_bits: float  # bits per weight of the codes alone


def _layer_arrays(lesson: LessonModel, bits: int, group: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All layers' symmetric codes concatenated (int64) and their scales, per channel or per group."""
    codes, scales = [], []
    for layer in lesson.layers.values():
        k = layer.weight[0].size
        gq = quantize_groups(layer.weight, bits, k if group is None else group)
        codes.append(gq.codes.reshape(-1).astype(np.int64))
        scales.append(np.asarray(gq.qparams.scale))
    return np.concatenate(codes), np.concatenate(scales)


def model_size_on_disk(lesson: LessonModel, directory: str | Path | None = None) -> dict[str, SizeRow]:
    """Write the lesson model as real files and measure them (bytes from the file system, not from counts).

    Each file holds all layers' weights in one flat array (codes packed with ``qlearn.packing``), their
    scales, the float32 biases and the layer shapes, in one ``np.savez`` (uncompressed); the float
    checkpoint is ``torch.save`` of the folded model's state dict. The int4 files are read back, unpacked
    and dequantized, and must give exactly the fake-quantized weights (a ValueError otherwise).
    """
    lesson = check_lesson(lesson)
    layers = list(lesson.layers.values())
    biases = np.concatenate([l.module.bias.detach().numpy().astype(np.float32) for l in layers])
    shapes = np.array([s for l in layers for s in (*l.weight.shape, 1, 1)[:4]], dtype=np.int64)
    floats = np.concatenate([l.weight.reshape(-1) for l in layers]).astype(np.float32)
    variants: dict[str, tuple[dict[str, np.ndarray], float]] = {"float32 (npz)": ({"weights": floats}, 32.0)}
    written: dict[str, np.ndarray] = {}  # the codes of the packed files, to compare with what is read back
    for name, bits, group, stored, scale_dtype in (
        ("int8 per-channel, fp32 scales", 8, None, 8, np.float32),
        ("int4 per-channel as int8 bytes (unpacked)", 4, None, 8, np.float32),
        ("int4 per-channel, packed, fp32 scales", 4, None, 4, np.float32),
        ("int4 group 32, packed, fp16 scales", 4, 32, 4, np.float16),
    ):
        codes, scales = _layer_arrays(lesson, bits, group)
        written[name] = codes
        variants[name] = ({"codes": pack(codes, stored, signed=True), "scales": scales.astype(scale_dtype)}, float(stored))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        rows = {}
        ckpt = Path(tmp) / "float32.pt"
        state = lesson.folded.state_dict()
        torch.save(state, ckpt)
        payload = sum(v.numel() * v.element_size() for v in state.values())
        rows["float32 checkpoint (torch.save)"] = SizeRow("float32 checkpoint (torch.save)", os.path.getsize(ckpt), payload, 32.0)
        for i, (name, (arrays, bits)) in enumerate(variants.items()):
            path = Path(tmp) / f"model{i}.npz"
            arrays = {**arrays, "biases": biases, "shapes": shapes}
            np.savez(path, **arrays)
            rows[name] = SizeRow(name, os.path.getsize(path), sum(a.nbytes for a in arrays.values()), bits)
            if name in written:  # read it back: the file holds exactly the codes and scales written
                with np.load(path) as f:
                    codes = unpack(f["codes"], int(bits), written[name].size, signed=True)
                    same = np.array_equal(codes, written[name]) and np.array_equal(f["scales"], arrays["scales"])
                if not same:
                    raise ValueError(f"{name}: the codes or scales read back from {path.name} differ from those written")
    return rows


# ---------------------------------------------------------------------------------- symmetric vs asymmetric
@dataclass(frozen=True)
class GridUse:
    """How a grid covers non-negative (ReLU) values: codes inside [0, max x], step S and SQNR (Eq. 18)."""

    scheme: str
    codes_in_range: int  # grid points in [0, max x]
    levels: int  # grid points of the format
    scale: float
    sqnr_db: float


def relu_activations(lesson: LessonModel, layer: str = "features.0", n: int = 256) -> np.ndarray:
    """The ReLU6 outputs of ``layer`` (a ConvBNReLU) on the first ``n`` test images, flattened float64."""
    lesson = check_lesson(lesson)
    n = check_int(n, "n", minimum=1, maximum=len(lesson.data.y_test))
    module = dict(lesson.folded.named_modules()).get(layer)
    if module is None or layer not in lesson.layers or lesson.layers[layer].kind == "linear":
        raise ValueError(f"layer must name a conv layer of the lesson model ({', '.join(lesson.layers)}), got {layer!r}")
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    try:
        with torch.no_grad(), one_thread():
            lesson.folded.eval()(lesson.data.x_test[:n])
    finally:
        handle.remove()
    return seen[0].double().numpy().reshape(-1)


def relu_grid_use(x: Any, bits: int = 8) -> dict[str, GridUse]:
    """Non-negative ``x`` on a symmetric signed grid (Eq. 8, Z = 0) and on an asymmetric uint grid (Eqs. 4-6).

    The symmetric grid spends its negative half on values that never occur: about half the codes, one bit.
    """
    arr = as_float_array(x, "x")
    if arr.min() < 0:
        raise ValueError(f"x must be non-negative (a ReLU output), found a minimum of {arr.min():g}")
    bits = check_bits(bits)
    out = {}
    for scheme, fmt in (("symmetric int", weight_format(True)), ("asymmetric uint", weight_format(False))):
        qp = qparams_from_range(0.0, float(arr.max()), bits, **fmt)
        inside = int(np.sum((np.arange(qp.qmin, qp.qmax + 1) - qp.zero_point) * qp.scale >= 0))
        out[scheme] = GridUse(scheme, inside, qp.num_levels, qp.scale, sqnr_db(arr, fake_quantize(arr, qp)))
    return out


@dataclass(frozen=True)
class ZeroPointCosts:
    """Operations of one integer matmul (M x K) @ (K x N) by the four sums of Eq. 39 (paper Eq. 7)."""

    core_macs: int  # sum_j q1 q2: M N K multiply-adds, always
    runtime_extra: int  # Z2 sum_j q1: the input's row sums (M K adds) and M N multiply-adds; 0 when Z2 = 0
    offline: int  # Z1 sum_j q2 and K Z1 Z2: the weights' column sums, computed once and folded into the bias

    @property
    def runtime_overhead(self) -> float:
        return self.runtime_extra / self.core_macs


def zero_point_costs(m: int, k: int, n: int, *, weight_zero_point: bool, input_zero_point: bool = True) -> ZeroPointCosts:
    """What the zero points cost (Eq. 39): asymmetric weights (Z2 != 0) add work at run time, an
    asymmetric input (Z1 != 0) only work done once, offline, because the weights are known in advance."""
    m, k, n = (check_int(v, name, minimum=1) for v, name in ((m, "m"), (k, "k"), (n, "n")))
    weight_zero_point = check_bool(weight_zero_point, "weight_zero_point")
    input_zero_point = check_bool(input_zero_point, "input_zero_point")
    runtime = m * k + m * n if weight_zero_point else 0
    offline = k * n + n if input_zero_point else 0
    return ZeroPointCosts(m * n * k, runtime, offline)


def zero_point_terms(q1: np.ndarray, z1: int, q2: np.ndarray, z2: int) -> dict[str, np.ndarray]:
    """The four terms of Eq. 39 for q1 (M, K) and q2 (K, N), int64: their sum is (q1 - Z1) @ (q2 - Z2)."""
    a, b = np.asarray(q1, dtype=np.int64), np.asarray(q2, dtype=np.int64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"q1 must be (M, K) and q2 (K, N), got shapes {a.shape} and {b.shape}")
    k = a.shape[1]
    return {
        "K Z1 Z2": np.full((a.shape[0], b.shape[1]), k * int(z1) * int(z2), dtype=np.int64),
        "-Z1 sum q2": -int(z1) * b.sum(axis=0)[None, :].repeat(a.shape[0], axis=0),
        "-Z2 sum q1": -int(z2) * a.sum(axis=1)[:, None].repeat(b.shape[1], axis=1),
        "sum q1 q2": a @ b,
    }


# ---------------------------------------------------------------------------------- mixed precision
#: The bit widths a layer may get in the mixed-precision search.
MIXED_BITS = (8, 6, 4, 3, 2)


def weight_bytes(lesson: LessonModel, bits: dict[str, int]) -> float:
    """Bytes of packed weight codes plus one fp32 scale per output channel, for per-layer ``bits`` (Eq. 79)."""
    lesson = check_lesson(lesson)
    return sum(l.weight.size * bits[n] / 8 + 4 * l.channels for n, l in lesson.layers.items())


def _calibration_loss(lesson: LessonModel, new: dict[str, np.ndarray], n: int = 512) -> float:
    """Cross-entropy on the first ``n`` training images with ``new`` weights swapped in (a calibration set:
    the allocation never looks at the test images its accuracy is reported on)."""
    chosen = [lesson.layer(name) for name in new]
    with swapped_weights(chosen, list(new.values())), one_thread(), torch.no_grad():
        logits = predict(lesson.folded, lesson.data.x_train[:n])
        return float(torch.nn.functional.cross_entropy(logits, lesson.data.y_train[:n]))


def layer_sensitivity(lesson: LessonModel) -> dict[str, list[float]]:
    """One layer at a time at each of ``MIXED_BITS`` (per-channel weights), the others float (cached).

    Keys "<layer>|loss" (calibration loss increase over the float model) and "<layer>|acc" (test accuracy),
    each a list over MIXED_BITS, and "float|loss", "float|acc".
    """
    lesson = check_lesson(lesson)

    def compute() -> dict[str, list[float]]:
        base = _calibration_loss(lesson, {})
        out = {"float|loss": [base], "float|acc": [lesson.float_acc]}
        for name, layer in lesson.layers.items():
            fq = [fake_quantize(layer.weight, weight_qparams(layer.weight, b)) for b in MIXED_BITS]
            out[f"{name}|loss"] = [_calibration_loss(lesson, {name: w}) - base for w in fq]
            out[f"{name}|acc"] = [_accuracy_with(lesson, {name: w}) for w in fq]
        return out

    return cached_results(lesson, "layer-sensitivity-" + "-".join(map(str, MIXED_BITS)) + "-v1", compute)


def greedy_bits(lesson: LessonModel, budget_bytes: float) -> dict[str, int]:
    """Bits per layer under a size budget: start at 8 everywhere; while over budget, lower by one step of
    MIXED_BITS the layer whose step costs the least calibration loss per byte saved (``layer_sensitivity``,
    single-layer losses taken as additive). Returns the allocation; all at 2 bits if the budget is below that."""
    lesson = check_lesson(lesson)
    budget = float(as_float_array(budget_bytes, "budget_bytes"))
    sens = layer_sensitivity(lesson)
    level = {n: 0 for n in lesson.layers}  # index into MIXED_BITS
    while weight_bytes(lesson, {n: MIXED_BITS[i] for n, i in level.items()}) > budget:
        best, best_cost = None, (math.inf, 0.0)
        for n, i in level.items():
            if i + 1 < len(MIXED_BITS):
                loss = sens[f"{n}|loss"]
                saved = lesson.layers[n].weight.size * (MIXED_BITS[i] - MIXED_BITS[i + 1]) / 8
                cost = (max(loss[i + 1] - loss[i], 0.0) / saved, -saved)  # ties: the larger saving first
                if cost < best_cost:
                    best, best_cost = n, cost
        if best is None:
            break
        level[best] += 1
    return {n: MIXED_BITS[i] for n, i in level.items()}


def allocation_accuracy(lesson: LessonModel, bits: dict[str, int]) -> float:
    """Test accuracy with each layer's weights per-channel fake-quantized at ``bits[layer]`` (cached)."""
    lesson = check_lesson(lesson)
    key = ("allocation", tuple(sorted((n, int(b)) for n, b in bits.items())))
    if key not in lesson.cache:
        new = {n: fake_quantize(lesson.layer(n).weight, weight_qparams(lesson.layer(n).weight, check_bits(b)))
               for n, b in bits.items()}
        lesson.cache[key] = _accuracy_with(lesson, new)
    return lesson.cache[key]


def mixed_precision_curves(lesson: LessonModel, budgets_kb: tuple[float, ...] | None = None) -> dict[str, list[float]]:
    """Accuracy against weight size (KB) for uniform bits (each of MIXED_BITS) and for the greedy
    allocation at each budget (default: 12 to 39 KB by 1 KB); cached with ``cached_results``."""
    lesson = check_lesson(lesson)
    budgets = tuple(float(b) for b in (budgets_kb or range(12, 40)))

    def compute() -> dict[str, list[float]]:
        uniform = [{n: b for n in lesson.layers} for b in MIXED_BITS]
        greedy = [greedy_bits(lesson, 1000 * b) for b in budgets]
        return {
            "uniform bits": [float(b) for b in MIXED_BITS],
            "uniform kb": [weight_bytes(lesson, a) / 1000 for a in uniform],
            "uniform acc": [allocation_accuracy(lesson, a) for a in uniform],
            "budget kb": list(budgets),
            "greedy kb": [weight_bytes(lesson, a) / 1000 for a in greedy],
            "greedy acc": [allocation_accuracy(lesson, a) for a in greedy],
        }

    tag = f"{budgets[0]:g}-{budgets[-1]:g}-n{len(budgets)}"
    return cached_results(lesson, f"mixed-precision-{tag}-v2", compute)
