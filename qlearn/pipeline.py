"""``python -m qlearn pipeline``: float -> post-training quantization -> QAT -> integer engine.

The whole paper on one small MobileNet, in one command (issue 4):

1. **float**   train the float model (qlearn.train) and save ``DIR/float.pt``;
2. **ptq**     post-training quantization of that model: per-tensor and per-channel weights, min/max
               and MSE weight ranges, at 8, 6, 5 and 4 weight bits (qlearn.ptq; paper Sec. 3 shows
               why this is not enough at low bit widths);
3. **qat**     quantization-aware training from the float checkpoint at 8 and 4 weight bits, BN folded
               with the batch-statistics correction and frozen late (qlearn.qat; paper Sec. 3);
4. **integer** convert the 8-bit QAT model to the integer engine (qlearn.convert, qlearn.integer) and
               evaluate it there -- uint8 in, integer arithmetic only, uint8 out -- and compare its
               outputs with the fake-quant model's in output LSBs;
5. **report**  ``DIR/report.json``, ``DIR/report.md`` and three figures.

Usage::

    python -m qlearn pipeline --model mobilenet_v2 --out runs/v2 [--quick] [--seed 0] [--device cpu]

``report.json`` holds ``float_acc``; ``ptq[method][bits]``; ``qat[bits]``; ``integer`` (``acc`` -- the
integer engine's own top-1 accuracy --, ``top1_agreement_with_fake_quant``, ``exact_output_fraction``,
``max_lsb_diff``); ``seconds`` per stage; and the settings. Figures: ``accuracy_vs_bits.png`` (PTQ
methods and QAT vs weight bits), ``weight_ranges.png`` (per-channel ranges of the folded weights,
Eq. 41) and ``logits.png`` (float vs fake-quant vs integer logits). Checkpoints ``float.pt`` and
``qat<bits>.pt`` are read back with ``torch.load(weights_only=True)``.

QAT here is a short fine-tune (6 epochs, 120 steps on digits), so the activation EMA decays with
0.99 instead of the paper's 0.999 (which would barely move in 120 steps), activations are quantized
from the first step (the float model already has sensible ranges), and BN is frozen half-way
(``qat_freeze_bn``; Eq. 62): the second half trains the exact function the integer model runs.

``cached_quick_run`` keeps one ``--quick`` run per (model, seed, settings) under
``<cache_dir>/pipeline/`` and returns its report, running it once (~10 s, with a progress bar) when
the cache is cold; ``load_run`` reads a run's folder back into its models (notebook 09).

A run never writes into a directory that already holds files unless ``--overwrite`` is given (which
replaces the files a run writes and deletes nothing). Everything is seeded: the same seed gives the
same report numbers, timings aside. Torch uses one CPU thread unless ``--threads`` says otherwise:
on a small shared CPU that is the fastest setting, and the summation order -- hence the last bits of
every float, and sometimes an accuracy -- depends on the thread count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from qlearn.bn_fold import fuse_model
from qlearn.data import DATASETS, ImageData, load_dataset
from qlearn.models import MODELS, ConvBNReLU
from qlearn.quantize import dequantize
from qlearn.train import TrainConfig, evaluate, load_checkpoint, predict, save_checkpoint, seed_everything, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from qlearn.integer import IntegerModel
    from qlearn.qat import QATMobileNet

__all__ = ["PipelineConfig", "PRESETS", "run_pipeline", "main", "parse_args", "quick_config", "quick_run_dir",
           "cached_quick_run", "PipelineRun", "load_run"]

PTQ_BITS = (8, 6, 5, 4)
QAT_BITS = (8, 4)
PTQ_METHODS_ORDER = ("per_tensor_minmax", "per_tensor_mse", "per_channel_minmax", "per_channel_mse")
FIGURE_IMAGES = 200  # test images in the logits scatter plot


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run depends on. ``PRESETS['full']`` and ``PRESETS['quick']`` are the two defaults."""

    model: str = "mobilenet_v2"
    dataset: str = "digits"
    data_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    # model and data
    width: float = 0.5
    input_size: int = 32
    n_train: int | None = None  # None: the whole training split
    n_test: int | None = None
    # float training
    float_epochs: int = 30
    float_lr: float = 1e-2
    batch_size: int = 64
    # post-training quantization
    ptq_bits: tuple[int, ...] = PTQ_BITS
    calib_batches: int = 8
    # quantization-aware training
    qat_bits: tuple[int, ...] = QAT_BITS
    qat_epochs: int = 6
    qat_lr: float = 1e-3
    qat_freeze_bn: float = 0.5  # freeze BN after this fraction of the QAT steps
    qat_act_delay: int = 0  # start from a trained model: quantize activations from the first step
    qat_ema_decay: float = 0.99
    progress: bool = True
    threads: int = 1  # torch CPU threads; see run_pipeline


PRESETS: dict[str, PipelineConfig] = {
    "full": PipelineConfig(),
    "quick": PipelineConfig(
        quick=True, width=0.25, input_size=16, n_test=200, float_epochs=6, calib_batches=2, qat_epochs=1
    ),
}


# ----------------------------------------------------------------------------- small helpers
class Stopwatch:
    """Wall time per named stage, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def _log(cfg: PipelineConfig, message: str) -> None:
    if cfg.progress:
        print(message, file=sys.stderr, flush=True)


def _device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        return torch.device(name)
    raise ValueError(f"--device must be 'cpu' or 'cuda[:N]', got {name!r}")


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Create ``out``; refuse one that already holds files unless ``overwrite`` (nothing is deleted)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {path} already holds a previous run; choose another directory or pass --overwrite "
            "(which replaces the report, figures and checkpoints in it)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- stages
def stage_float(cfg: PipelineConfig, data: ImageData, out: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Train the float model from seed ``cfg.seed``; save ``out/float.pt``."""
    seed_everything(cfg.seed)
    model = MODELS[cfg.model](
        data.num_classes, width=cfg.width, input_size=cfg.input_size, in_channels=data.in_channels
    ).to(device)
    tc = TrainConfig(epochs=cfg.float_epochs, batch_size=cfg.batch_size, lr=cfg.float_lr, schedule="onecycle", seed=cfg.seed)
    result = train(
        model, data.x_train.to(device), data.y_train.to(device), tc, progress=cfg.progress, desc=f"float {cfg.model}"
    )
    model = model.cpu().eval()
    acc = evaluate(model, data.x_test, data.y_test)
    save_checkpoint(out / "float.pt", model, extra={"float_acc": acc, "seed": cfg.seed, "dataset": data.name})
    info = {"float_acc": acc, "history": result.history, "train_seconds": round(result.seconds, 3)}
    return model, info


def folded_weight_ranges(model: nn.Module) -> list[dict[str, Any]]:
    """Per-channel [min, max] of every conv's folded weights (Eq. 41), layer by layer.

    ``spread`` = widest channel range / narrowest channel range (max |w| per channel): large spreads
    are where one per-tensor scale wastes levels, and per-channel quantization helps.
    """
    fused = fuse_model(model)
    rows = []
    for name, module in fused.named_modules():
        if isinstance(module, ConvBNReLU):
            w = module.conv.weight.detach().double().flatten(1).numpy()  # (Cout, Cin/g * kh * kw)
            lo, hi = w.min(axis=1), w.max(axis=1)
            absmax = np.maximum(np.abs(lo), np.abs(hi))
            rows.append({
                "layer": name,
                "depthwise": module.conv.groups > 1,
                "min": lo.tolist(),
                "max": hi.tolist(),
                "spread": float(absmax.max() / max(absmax.min(), 1e-12)),
            })
    return rows


# ----------------------------------------------------------------------------- figures
def _figure(width: float = 6.4, height: float = 4.2):  # type: ignore[no-untyped-def]
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: Path | None) -> "Figure":
    if path is not None:
        fig.savefig(path)
    return fig


def figure_accuracy_vs_bits(report: dict, path: Path | None = None) -> "Figure":
    """PTQ methods, QAT and the integer engine against weight bits; saved to ``path`` if given."""
    fig = _figure()
    ax = fig.add_subplot()
    styles = {"per_tensor_minmax": "o--", "per_tensor_mse": "s--", "per_channel_minmax": "o-", "per_channel_mse": "s-"}
    for method, accs in report["ptq"].items():
        bits = sorted(int(b) for b in accs)
        ax.plot(bits, [100 * accs[str(b)] for b in bits], styles.get(method, ".-"), label=f"PTQ {method.replace('_', ' ')}")
    if report.get("qat"):
        bits = sorted(int(b) for b in report["qat"])
        ax.plot(bits, [100 * report["qat"][str(b)] for b in bits], "D-", color="black", lw=2, ms=8, label="QAT (per-channel)")
    if report.get("integer"):
        ax.plot([8], [100 * report["integer"]["acc"]], "*", color="crimson", ms=16, label="integer engine (8-bit QAT)")
    ax.axhline(100 * report["float_acc"], color="gray", ls=":", label="float")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted({int(b) for accs in report["ptq"].values() for b in accs}))
    ax.invert_xaxis()
    ax.set_title(f"{report['model']} on {report['dataset']}: accuracy vs weight bits")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def figure_weight_ranges(ranges: list[dict], path: Path | None = None) -> "Figure":
    """Folded weight range per channel of the widest-spread layer, and the spread of every layer."""
    fig = _figure(9.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    worst = max(ranges, key=lambda r: r["spread"])
    lo, hi = np.array(worst["min"]), np.array(worst["max"])
    ch = np.arange(len(lo))
    ax1.vlines(ch, lo, hi, lw=3, color="tab:blue", label="per-channel range")
    bound = max(abs(lo.min()), abs(hi.max()))
    ax1.axhline(bound, color="tab:red", ls="--", lw=1, label="per-tensor range (symmetric)")
    ax1.axhline(-bound, color="tab:red", ls="--", lw=1)
    ax1.set_xlabel("output channel")
    ax1.set_ylabel("folded weight value")
    ax1.set_title(f"{worst['layer']}: folded weights per channel (spread x{worst['spread']:.0f})", fontsize=9)
    ax1.legend(fontsize=8, loc="upper left")
    names = [r["layer"].replace("features.", "f.").replace(".layers", "") for r in ranges]
    colors = ["tab:orange" if r["depthwise"] else "tab:blue" for r in ranges]
    ax2.barh(np.arange(len(ranges)), [r["spread"] for r in ranges], color=colors)
    ax2.set_yticks(np.arange(len(ranges)), names, fontsize=6)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("max/min channel |w| (orange: depthwise)")
    ax2.set_title("spread of channel ranges per layer", fontsize=9)
    return _save(fig, path)


def figure_logits(
    float_logits: np.ndarray, fq_logits: np.ndarray, int_logits: np.ndarray, path: Path | None = None
) -> "Figure":
    """Scatter of float vs fake-quant logits, and fake-quant vs integer-engine logits."""
    fig = _figure(9.0, 4.0)
    axes = fig.subplots(1, 2)
    pairs = [(float_logits, fq_logits, "float logit", "fake-quant logit (8-bit QAT)"),
             (fq_logits, int_logits, "fake-quant logit (8-bit QAT)", "integer-engine logit")]
    for ax, (a, b, xl, yl) in zip(axes, pairs):
        ax.scatter(a.ravel(), b.ravel(), s=3, alpha=0.4)
        lim = [min(a.min(), b.min()), max(a.max(), b.max())]
        ax.plot(lim, lim, color="gray", lw=1, ls=":")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    axes[0].set_title("QAT moves the logits: it is a fine-tuned model", fontsize=9)
    axes[1].set_title("integer engine vs fake-quant: on the diagonal", fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- report
def _markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"# qlearn pipeline: {report['model']} on {report['dataset']}" + (" (quick)" if report["quick"] else ""),
        "",
        f"Seed {report['seed']}, {report['n_train']} training / {report['n_test']} test images of "
        f"{report['config']['input_size']}x{report['config']['input_size']}, width {report['config']['width']}, "
        f"{report['parameters']:,} parameters, device {report['device']}.",
        "",
        f"**Float accuracy: {pct(report['float_acc'])} %**",
        "",
        "## Post-training quantization (test accuracy, %)",
        "",
    ]
    bits = sorted({int(b) for accs in report["ptq"].values() for b in accs}, reverse=True)
    lines.append("| method | " + " | ".join(f"{b}-bit weights" for b in bits) + " |")
    lines.append("|---|" + "---|" * len(bits))
    for method, accs in report["ptq"].items():
        lines.append(f"| {method} | " + " | ".join(pct(accs[str(b)]) if str(b) in accs else "-" for b in bits) + " |")
    lines += ["", "Activations are uint8 throughout; only the weight bit width changes.", ""]
    if report.get("qat"):
        lines += ["## Quantization-aware training (test accuracy, %)", "", "| weight bits | QAT | best PTQ |", "|---|---|---|"]
        for b, acc in sorted(report["qat"].items(), key=lambda kv: -int(kv[0])):
            best = max((accs.get(b, 0.0) for accs in report["ptq"].values()), default=0.0)
            lines.append(f"| {b} | {pct(acc)} | {pct(best)} |")
        lines.append("")
    if report.get("integer"):
        ig = report["integer"]
        lines += [
            "## Integer engine (8-bit QAT model, integer arithmetic only)",
            "",
            f"- accuracy computed by the integer engine: **{pct(ig['acc'])} %** "
            f"(float {pct(report['float_acc'])} %, difference {100 * (ig['acc'] - report['float_acc']):+.2f} points)",
            f"- top-1 agreement with the fake-quant model: {pct(ig['top1_agreement_with_fake_quant'])} %",
            f"- logits with identical uint8 codes: {pct(ig['exact_output_fraction'])} %; "
            f"largest difference: {ig['max_lsb_diff']} LSB",
            "",
        ]
    wr = report.get("weight_ranges", {})
    if wr:
        lines += [
            "## Folded weights",
            "",
            f"After BN folding (Eq. 41) the largest |w| of the channels of layer `{wr['max_spread_layer']}` "
            f"differ by a factor of {wr['max_spread']:.0f}. One per-tensor scale must cover the widest "
            f"channel, so the narrowest one uses about 1/{wr['max_spread']:.0f} of the grid: "
            f"{127 / wr['max_spread']:.1f} of the 127 positive levels at 8 bits, {7 / wr['max_spread']:.2f} "
            "of 7 at 4 bits. Per-channel scales give every channel the whole grid. See `weight_ranges.png`.",
            "",
        ]
    lines += ["## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["seconds"].items()]
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in report["figures"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def run_pipeline(cfg: PipelineConfig, out: str | Path, *, on_stage: Callable[[str], None] | None = None) -> dict:
    """Run every stage with ``cfg`` and write the report and figures into ``out`` (which must exist).

    ``on_stage(name)``, if given, is called as each stage starts ("float", "ptq", "qat", "integer",
    "figures") and once more with "done" (``cached_quick_run`` drives a progress bar with it).
    """
    if on_stage is not None and not callable(on_stage):
        raise TypeError(f"on_stage must be a function of the stage name or None, got {type(on_stage).__name__}")
    if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1:
        raise ValueError(f"threads must be a positive integer, got {cfg.threads!r}")
    # One thread by default: on a small shared CPU, torch's OpenMP threads spin while they wait for
    # each other, and with more threads than free cores a run gets 10x slower, not faster.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, Path(out), on_stage or (lambda name: None))
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: PipelineConfig, out: Path, on_stage: Callable[[str], None]) -> dict:
    from qlearn.convert import compare, convert, quantize_input
    from qlearn.ptq import ptq_sweep
    from qlearn.qat import QATConfig, prepare_qat

    device = _device(cfg.device)
    clock = Stopwatch()
    t0 = time.perf_counter()
    report: dict[str, Any] = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "quick": cfg.quick, "device": cfg.device}
    report["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}

    with clock.stage("data"):
        data = load_dataset(cfg.dataset, root=cfg.data_dir, input_size=cfg.input_size, seed=cfg.seed)
        data = data.subset(cfg.n_train, cfg.n_test)
    report.update(n_train=int(data.x_train.shape[0]), n_test=int(data.x_test.shape[0]))

    on_stage("float")
    _log(cfg, f"[1/4] float training: {cfg.model}, {cfg.float_epochs} epochs on {data}")
    with clock.stage("float"):
        model, float_info = stage_float(cfg, data, out, device)
    report.update(config=dict(model.config), parameters=sum(p.numel() for p in model.parameters()))
    report["float_acc"] = float_info["float_acc"]
    report["float_history"] = float_info["history"]
    _log(cfg, f"      float accuracy {100 * report['float_acc']:.2f} %")

    calib = data.x_train[: cfg.calib_batches * cfg.batch_size]
    on_stage("ptq")
    _log(cfg, f"[2/4] post-training quantization: {len(PTQ_METHODS_ORDER)} methods x bits {list(cfg.ptq_bits)}")
    with clock.stage("ptq"):
        sweep = ptq_sweep(
            model, calib, data.x_test, data.y_test, bits=tuple(cfg.ptq_bits), methods=PTQ_METHODS_ORDER,
            batch_size=cfg.batch_size, num_batches=cfg.calib_batches, progress=cfg.progress,
        )
    report["ptq"] = {m: {str(int(b)): float(a) for b, a in accs.items()} for m, accs in sweep.items()}

    on_stage("qat")
    _log(cfg, f"[3/4] quantization-aware training from float.pt at weight bits {list(cfg.qat_bits)}")
    report["qat"] = {}
    qat_models: dict[int, nn.Module] = {}
    steps = cfg.qat_epochs * -(-int(data.x_train.shape[0]) // cfg.batch_size)  # ceil: optimiser steps
    freeze_bn_step = max(1, round(cfg.qat_freeze_bn * steps))
    report["qat_settings"] = {"epochs": cfg.qat_epochs, "steps": steps, "lr": cfg.qat_lr, "per_channel": True,
                              "freeze_bn_step": freeze_bn_step, "act_quant_delay": cfg.qat_act_delay,
                              "ema_decay": cfg.qat_ema_decay}
    with clock.stage("qat"):
        for bits in cfg.qat_bits:
            float_model, _ = load_checkpoint(out / "float.pt")  # torch.load(weights_only=True)
            qcfg = QATConfig(weight_bits=int(bits), per_channel=True, ema_decay=cfg.qat_ema_decay,
                             act_quant_delay=cfg.qat_act_delay, freeze_bn_step=freeze_bn_step)
            qmodel = prepare_qat(float_model, qcfg).to(device)
            tc = TrainConfig(epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, schedule="cosine",
                             weight_decay=0.0, seed=cfg.seed + int(bits))
            train(qmodel, data.x_train.to(device), data.y_train.to(device), tc, progress=cfg.progress, desc=f"QAT {bits}-bit")
            qmodel = qmodel.cpu().eval()
            acc = evaluate(qmodel, data.x_test, data.y_test)
            report["qat"][str(int(bits))] = acc
            qat_models[int(bits)] = qmodel
            save_checkpoint(out / f"qat{int(bits)}.pt", qmodel, extra={"kind": "qat", "weight_bits": int(bits), "qat_acc": acc,
                                                                          "qat_config": qcfg.to_dict()})
            _log(cfg, f"      QAT {bits}-bit accuracy {100 * acc:.2f} %")

    on_stage("integer")
    _log(cfg, "[4/4] integer engine: converting the 8-bit QAT model and running it on the test split")
    with clock.stage("integer"):
        q8 = qat_models.get(8)
        if q8 is None:
            raise ValueError("the integer stage converts the 8-bit QAT model: include 8 in qat_bits")
        integer_model = convert(q8)
        # The integer engine's accuracy comes from its own uint8 output (compare runs it on uint8 input).
        agreement = compare(q8, integer_model, data.x_test, data.y_test, progress=cfg.progress)
    report["integer"] = {
        "acc": float(agreement.integer_acc),
        "top1_agreement_with_fake_quant": float(agreement.top1_agreement),
        "exact_output_fraction": float(agreement.exact_output_fraction),
        "max_lsb_diff": int(agreement.max_lsb_diff),
        "mean_abs_lsb_diff": float(agreement.mean_abs_lsb_diff),
        "fake_quant_acc": float(agreement.fake_quant_acc),
        "n": int(agreement.n),
        "layers": len(integer_model.layers),
    }
    _log(cfg, f"      integer accuracy {100 * report['integer']['acc']:.2f} %, top-1 agreement "
              f"{100 * report['integer']['top1_agreement_with_fake_quant']:.2f} %")

    on_stage("figures")
    with clock.stage("figures"):
        ranges = folded_weight_ranges(model)
        worst = max(ranges, key=lambda r: r["spread"])
        report["weight_ranges"] = {
            "max_spread": worst["spread"],
            "max_spread_layer": worst["layer"],
            "spread_per_layer": {r["layer"]: r["spread"] for r in ranges},
        }
        report["figures"] = ["accuracy_vs_bits.png", "weight_ranges.png", "logits.png"]
        figure_accuracy_vs_bits(report, out / "accuracy_vs_bits.png")
        figure_weight_ranges(ranges, out / "weight_ranges.png")
        x_fig = data.x_test[:FIGURE_IMAGES]
        float_logits = predict(model, x_fig).double().numpy()
        fq_logits = predict(q8, x_fig).double().numpy()
        int_logits = np.asarray(dequantize(integer_model.run(quantize_input(q8, x_fig)), integer_model.output_qparams))
        figure_logits(float_logits, fq_logits, int_logits, out / "logits.png")

    clock.seconds["total"] = round(time.perf_counter() - t0, 3)
    report["seconds"] = dict(clock.seconds)
    report["environment"] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                             "threads": torch.get_num_threads()}
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out / "report.md").write_text(_markdown(report))
    on_stage("done")
    return report



# ----------------------------------------------------------------------------- a cached quick run (notebook 09)
#: Part of the cache folder's name: bump it when a change to the pipeline changes what a run writes.
QUICK_CACHE_VERSION = 1


def quick_config(model: str = "mobilenet_v2", seed: int = 0, *, config: PipelineConfig | None = None,
                 progress: bool = True) -> PipelineConfig:
    """``PRESETS['quick']`` (or ``config``) with ``model``, ``seed`` and ``progress`` set, checked."""
    if config is None:
        config = PRESETS["quick"]
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"config must be a PipelineConfig (e.g. PRESETS['quick']) or None, got {type(config).__name__}")
    if not isinstance(model, str) or model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if 8 not in config.qat_bits:
        raise ValueError("the integer stage converts the 8-bit QAT model: config.qat_bits must include 8")
    return replace(config, model=model, seed=seed, progress=progress)


def _settings(cfg: PipelineConfig) -> dict:
    """The settings a report stores (``report['settings']``), without the progress flag."""
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    d.pop("progress")
    return d


def quick_run_dir(model: str = "mobilenet_v2", seed: int = 0, *, directory: str | Path | None = None,
                  config: PipelineConfig | None = None) -> Path:
    """The folder ``cached_quick_run`` keeps a run in: ``<directory>/quick-<model>-seed<seed>-<key>``.

    ``directory`` defaults to ``<cache_dir()>/pipeline`` (``$QLEARN_CACHE_DIR``, else ~/.cache/qlearn);
    ``key`` is a hash of every setting, so changed settings never read a stale run.
    """
    cfg = quick_config(model, seed, config=config)
    if directory is None:
        from qlearn.train import cache_dir  # the suite's one cache folder

        directory = cache_dir() / "pipeline"
    elif not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a folder path or None, got {type(directory).__name__}")
    blob = json.dumps({"version": QUICK_CACHE_VERSION, **_settings(cfg)}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return Path(directory) / f"quick-{cfg.model}-seed{cfg.seed}-{key}"


def _read_run(path: Path, cfg: PipelineConfig) -> dict | None:
    """The report of a complete run of ``cfg`` in ``path``, or None (missing, partial, corrupt, other settings)."""
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("settings"), dict):
        return None
    stored = dict(report["settings"])
    stored.pop("progress", None)
    files = ["float.pt", *(f"qat{int(b)}.pt" for b in cfg.qat_bits)]
    if stored != _settings(cfg) or not all((path / f).is_file() for f in files):
        return None
    return dict(report, directory=str(path))


def _publish(tmp: Path, final: Path, cfg: PipelineConfig, replace_old: bool) -> Path:
    """Move the finished run ``tmp`` to ``final`` (a rename: readers never see half a run)."""
    if final.exists():
        if not replace_old and _read_run(final, cfg) is not None:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another process published in between: keep theirs (same seed, same numbers)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_quick_run(model: str = "mobilenet_v2", seed: int = 0, *, directory: str | Path | None = None,
                     progress: bool = True, rerun: bool = False, config: PipelineConfig | None = None) -> dict:
    """The report of a ``--quick`` pipeline run, read from the cache, or run once (~10 s) to fill it.

    The run lives in ``quick_run_dir(model, seed, directory=directory, config=config)``; the returned
    dict is its ``report.json`` plus ``directory`` (where the checkpoints and figures are; see
    ``load_run``). ``rerun=True`` runs it again and replaces the cached run (same seed, same
    numbers: only the timings change). A run is written beside the cache and renamed into place,
    so two processes filling the same cache never read half a run. Where the cache folder cannot
    be written, the run goes to a fresh temporary folder. ``progress`` shows a tqdm bar over the
    five stages (and the stages' own bars).
    """
    if not isinstance(rerun, bool):
        raise TypeError(f"rerun must be True or False, got {rerun!r}")
    cfg = quick_config(model, seed, config=config, progress=progress)
    final = quick_run_dir(model, seed, directory=directory, config=config)
    if not rerun:
        report = _read_run(final, cfg)
        if report is not None:
            return report
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache's other folders are not
    except OSError:  # a read-only cache: run into a temporary folder, run again next session
        final = tmp = Path(tempfile.mkdtemp(prefix="qlearn-pipeline-"))
    from tqdm.auto import tqdm

    stages = ("float", "ptq", "qat", "integer", "figures")
    bar = tqdm(total=len(stages), desc=f"quick pipeline ({cfg.model}, seed {cfg.seed})", disable=not progress)

    def on_stage(name: str) -> None:
        if name != stages[0]:
            bar.update(1)
        if name in stages:
            bar.set_postfix_str(name)

    try:
        report = run_pipeline(cfg, tmp, on_stage=on_stage)
    except BaseException:
        if tmp != final:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if tmp != final:
        final = _publish(tmp, final, cfg, replace_old=rerun)
    return _read_run(final, cfg) or dict(report, directory=str(final))


@dataclass(eq=False)
class PipelineRun:
    """A finished run read back from its folder: the report, the models of every stage, the data.

    float_model   : the trained float model (eval)              -- stage 1, ``float.pt``
    qat_models    : {weight bits: QATMobileNet (eval)}          -- stage 3, ``qat<bits>.pt``
    integer_model : ``convert(qat_models[8])``                   -- stage 4, rebuilt (conversion is exact)
    data          : the run's images, the same subset the run used
    """

    directory: Path
    report: dict
    data: ImageData
    float_model: nn.Module
    qat_models: dict[int, "QATMobileNet"]
    integer_model: "IntegerModel"
    cache: dict = field(default_factory=dict, repr=False)  # results computed from the run (notebook 09)

    @property
    def qat8(self) -> "QATMobileNet":
        return self.qat_models[8]


def load_run(directory: str | Path) -> PipelineRun:
    """Read a run written by ``run_pipeline`` (or ``cached_quick_run``) back into models.

    QAT checkpoints are loaded into ``prepare_qat(float_model, QATConfig(...))`` built from the
    report's ``qat_settings`` (weights-only loading), and the 8-bit one is converted again.
    """
    from qlearn.convert import convert
    from qlearn.qat import QATConfig, prepare_qat

    if not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be the folder of a pipeline run, got {type(directory).__name__}")
    path = Path(directory)
    try:
        report = json.loads((path / "report.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} holds no report.json: run `python -m qlearn pipeline --out {path}` first") from None
    except ValueError as exc:
        raise ValueError(f"{path / 'report.json'} is not valid JSON ({exc})") from None
    float_model, _ = load_checkpoint(path / "float.pt")
    qs = report["qat_settings"]
    qat_models = {}
    for bits in sorted((int(b) for b in report["qat"]), reverse=True):
        qcfg = QATConfig(weight_bits=bits, per_channel=bool(qs["per_channel"]), ema_decay=qs["ema_decay"],
                         act_quant_delay=qs["act_quant_delay"], freeze_bn_step=qs["freeze_bn_step"])
        qmodel, _ = load_checkpoint(path / f"qat{bits}.pt", prepare_qat(float_model, qcfg))
        qat_models[bits] = qmodel.eval()
    if 8 not in qat_models:
        raise ValueError(f"the run in {path} has no 8-bit QAT model, so no integer model")
    settings = report["settings"]
    data = load_dataset(report["dataset"], root=settings.get("data_dir"), input_size=report["config"]["input_size"],
                        seed=report["seed"]).subset(report["n_train"], report["n_test"])
    return PipelineRun(path, dict(report, directory=str(path)), data, float_model.eval(), qat_models,
                       convert(qat_models[8]))


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str]) -> tuple[PipelineConfig, Path, bool]:
    p = argparse.ArgumentParser(
        prog="python -m qlearn pipeline",
        description="Train a small MobileNet, quantize it after training and with QAT, run it on the "
        "integer engine, and write DIR/report.json, DIR/report.md and figures.",
    )
    p.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v2")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must be new or empty)")
    p.add_argument("--quick", action="store_true", help="a small run in seconds (for tests and a first look)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda; the integer engine always runs on CPU")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None, help="folder with MNIST IDX files or CIFAR-10 python batches")
    p.add_argument("--epochs", type=int, default=None, help="float training epochs (default: preset)")
    p.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs per bit width (default: preset)")
    p.add_argument("--overwrite", action="store_true", help="write into a directory that holds a previous run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a busy small CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages")
    a = p.parse_args(argv)
    cfg = PRESETS["quick" if a.quick else "full"]
    changes: dict[str, Any] = dict(model=a.model, seed=a.seed, device=a.device, dataset=a.dataset,
                                   data_dir=a.data_dir, progress=not a.no_progress, threads=a.threads)
    if a.epochs is not None:
        changes["float_epochs"] = a.epochs
    if a.qat_epochs is not None:
        changes["qat_epochs"] = a.qat_epochs
    for name in ("float_epochs", "qat_epochs"):
        if name in changes and changes[name] < 1:
            p.error(f"--{name.replace('_', '-').replace('float-', '')} must be >= 1")
    if a.threads < 1:
        p.error("--threads must be >= 1")
    return replace(cfg, **changes), Path(a.out), a.overwrite


def main(argv: list[str]) -> int:
    """Entry point of ``python -m qlearn pipeline``; returns the exit status."""
    cfg, out, overwrite = parse_args(list(argv))
    try:
        _device(cfg.device)  # before anything is written
        out = prepare_out_dir(out, overwrite)
        report = run_pipeline(cfg, out)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"pipeline: error: {exc}", file=sys.stderr)
        return 2
    ig = report["integer"]
    print(
        f"{cfg.model}: float {100 * report['float_acc']:.2f} %, "
        f"QAT {', '.join(f'{b}-bit {100 * a:.2f} %' for b, a in report['qat'].items())}, "
        f"integer {100 * ig['acc']:.2f} % (top-1 agreement {100 * ig['top1_agreement_with_fake_quant']:.2f} %, "
        f"max {ig['max_lsb_diff']} LSB); {report['seconds']['total']:.1f} s -> {out / 'report.md'}"
    )
    return 0
