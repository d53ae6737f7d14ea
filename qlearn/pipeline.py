"""``python -m qlearn pipeline``: float -> post-training quantization -> QAT -> integer engine.

The whole paper on one small MobileNet, in one command:

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
0.99 (the paper says only "close to 1"; TensorFlow's default 0.999 would barely move in 120 steps),
activations are quantized from the first step (the float model already has sensible ranges), and BN is frozen half-way
(``qat_freeze_bn``; Eq. 62): the second half trains the exact function the integer model runs.

``cached_quick_run`` keeps one ``--quick`` run per (model, seed, settings) under
``<cache_dir>/pipeline/`` and returns its report, running it once (~10 s, with a progress bar) when
the cache is cold; ``load_run`` reads a run's folder back into its models (notebook 09).

Every argument (seed, device, paths) is checked before any work starts; a bad one is a one-line error
and exit status 2. A run is written into a temporary folder beside ``--out`` (``.<name>.*.tmp``) and
renamed into place only when it is complete, so an interrupted or failed run leaves no partial folder.
``--out`` must be new or empty unless ``--overwrite`` is given, which replaces a previous run (a folder
holding only files a run writes) as a whole -- and only once the new run is complete. ``report.json``
records the seed, the settings and the sha256 of every checkpoint, and ``load_run`` refuses a folder
whose checkpoints are not the ones its report was written with. Everything is seeded: the same seed gives the
same report numbers, timings aside. Torch uses one CPU thread unless ``--threads`` says otherwise:
on a small shared CPU that is the fastest setting, and the summation order -- hence the last bits of
every float, and sometimes an accuracy -- depends on the thread count.

Bigger runs: ``--dataset folder --data-dir DIR`` streams an ImageNet-layout folder
(``qlearn.folder_data``; ``--limit-per-class K`` for quick runs, ``--workers N`` decoding processes);
``torchrun --nproc_per_node N -m qlearn pipeline ... --distributed`` trains the float and QAT stages
with DistributedDataParallel on N processes (``qlearn.distributed``: gloo on CPU, NCCL and bfloat16
autocast for float training with ``--device cuda``; ``--batch-size`` is the global batch), only rank 0
writes ``--out``, and the report records the world size and that the integer model is identical on
every rank. A run is deterministic given its seed and world size. ``--resume`` saves the training
state after every epoch in ``.<out>.resume`` beside ``--out``; the same command run again after an
interruption continues from it, and the report says from which epoch. The GPU path (NCCL, SyncBatchNorm,
mixed precision) is written but has not yet been run on a GPU.
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
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import nn

from qlearn._checks import SEED_MAX, check_bool, check_int, check_seed
from qlearn.bn_fold import fuse_model
from qlearn.data import DATASETS, ImageData, load_dataset
from qlearn.models import MODELS, ConvBNReLU
from qlearn.quantize import dequantize
from qlearn.distributed import SINGLE, World
from qlearn.train import (TrainConfig, evaluate, file_sha256, load_checkpoint, predict, save_checkpoint,
                          seed_everything, train, train_stream)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from qlearn.integer import IntegerModel
    from qlearn.qat import QATMobileNet

__all__ = ["PipelineConfig", "PRESETS", "run_pipeline", "write_run", "check_config", "check_out_dir", "main",
           "parse_args", "quick_config", "quick_run_dir", "cached_quick_run", "PipelineRun", "load_run", "throughput",
           "resume_dir_for"]

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
    # bigger runs (qlearn.folder_data, qlearn.distributed); at their defaults they are left out of the
    # settings a report stores and the cache key hashes, so earlier runs are still found
    limit_per_class: int | None = None  # --dataset folder: only the first k images of each class
    distributed: bool = False  # started by torchrun: one process of a DistributedDataParallel run
    workers: int = 0  # DataLoader worker processes decoding images (changes no result, never stored)


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


#: The files a run writes; ``--overwrite`` replaces a folder only if it holds nothing else.
RUN_FILES = ("report.json", "report.md", "float.pt", "accuracy_vs_bits.png", "weight_ranges.png", "logits.png")


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith("qat") and name.endswith(".pt") and name[3:-3].isdigit())


def check_out_dir(out: Any, overwrite: bool, *, flag: str = "--out") -> Path:
    """Check that a run can be written to ``out``, without creating or changing anything.

    Refused (with the path and the reason): ``out`` is a file; a folder above it is a file; the nearest
    existing folder above it cannot be written (read-only file system or no permission); ``out``
    already holds files and ``overwrite`` is False; with ``overwrite``, ``out`` holds files a run
    does not write (it would delete them).
    """
    if not isinstance(out, (str, Path)) or not str(out):
        raise TypeError(f"{flag} must be a folder path, got {out!r}")
    overwrite = check_bool(overwrite, "overwrite")
    path = Path(out)
    if path.is_symlink() and path.is_dir():
        path = Path(os.path.realpath(path))  # replace the folder it points to, not the link
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(f"{flag} {path} exists and is a file, not a folder; choose another directory")
        entries = sorted(p.name for p in path.iterdir())
        if entries and not overwrite:
            raise FileExistsError(
                f"{flag} {path} already holds a previous run; choose another directory or pass --overwrite "
                "(which replaces that run once the new one is complete)"
            )
        foreign = [name for name in entries if not _is_run_file(name)]
        if foreign:
            raise FileExistsError(
                f"{flag} {path} holds files a pipeline run does not write ({', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}); --overwrite replaces only a previous run: choose another directory"
            )
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent  # the nearest existing folder above ``out``
    if not parent.is_dir():
        raise NotADirectoryError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot write in {parent} (read-only file system or no permission)")
    return path


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Check ``out`` (``check_out_dir``) and create it, for ``run_pipeline`` to write into in place.

    Nothing is deleted; the command line (``write_run``) writes beside ``out`` and renames instead.
    """
    path = check_out_dir(out, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- write, then rename
T = TypeVar("T")


def _staging_dir(final: Path) -> Path:
    """A new empty folder beside ``final`` (same file system, so renaming it into place is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a run folder is an ordinary one
    return tmp


def _publish(tmp: Path, final: Path, keep_existing: Callable[[Path], bool] | None = None) -> Path:
    """Rename the finished folder ``tmp`` to ``final``, replacing whatever ``final`` holds.

    Readers see the old folder or the new one, never a mixture. ``keep_existing(final)`` True means
    another process has published an equivalent folder first: keep theirs, drop ``tmp``.
    """
    if final.exists():
        if keep_existing is not None and keep_existing(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)  # put the old folder back rather than leave none
            raise
        shutil.rmtree(old, ignore_errors=True)
        return final
    try:
        os.rename(tmp, final)
    except OSError:
        if keep_existing is not None and final.exists() and keep_existing(final):  # published in between
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    return final


def _write_then_rename(final: Path, write: Callable[[Path], T], *, tmp: Path | None = None,
                       keep_existing: Callable[[Path], bool] | None = None) -> T:
    """``write(tmp)`` into a new folder beside ``final``, then rename it to ``final`` (``_publish``).

    If ``write`` fails or is interrupted (any exception, KeyboardInterrupt included) the temporary
    folder is deleted and ``final`` is left exactly as it was.
    """
    tmp = _staging_dir(final) if tmp is None else tmp
    try:
        result = write(tmp)
        _publish(tmp, final, keep_existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _run_checkpoints(report: dict) -> list[str]:
    """The checkpoint files a run with this report wrote: float.pt and qat<bits>.pt."""
    return ["float.pt", *(f"qat{int(b)}.pt" for b in report.get("qat", {}))]


def _mismatch(file: Path, report_path: Path, detail: str) -> ValueError:
    return ValueError(
        f"{file} does not belong to {report_path}: {detail} (a mixed or partly replaced run folder); "
        "run the pipeline again with --overwrite"
    )


def verify_run(path: Path, report: dict) -> None:
    """Raise unless every checkpoint the report names is in ``path`` and is the one it recorded (sha256).

    Reports written before the hashes were recorded have no ``checkpoints`` entry; for them only the
    presence of the files is checked here (``load_run`` also compares what each checkpoint stores).
    """
    recorded = report.get("checkpoints")
    if recorded is not None and not isinstance(recorded, dict):
        raise ValueError(f"{path / 'report.json'} is corrupt: its 'checkpoints' entry is not a dict of sha256 hashes")
    for name in _run_checkpoints(report):
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the run in {path} is incomplete")
        if recorded is not None and recorded.get(name) != file_sha256(file):
            raise _mismatch(file, path / "report.json", "its sha256 differs from the one the report recorded")


# ----------------------------------------------------------------------------- stages
def _n_train(data: ImageData) -> int:
    """Training images: all of a streamed folder's ``train_set``, else the in-memory tensor's length."""
    return int(getattr(data, "n_train", data.x_train.shape[0]))


def _train_set(data: ImageData) -> torch.utils.data.Dataset:
    """The training split as a Dataset: a folder's streaming ``train_set`` or the in-memory tensors."""
    return getattr(data, "train_set", None) or torch.utils.data.TensorDataset(data.x_train, data.y_train)


def _streamed(data: ImageData, world: World, resume_dir: Path | None) -> bool:
    """Train through a DataLoader (``train_stream``): folder data, several processes, or resumable runs.

    Otherwise ``train`` on the in-memory tensors, exactly as before (the shipped runs were made so).
    """
    return hasattr(data, "train_set") or world.distributed or resume_dir is not None


def _state_key(cfg: PipelineConfig, world: World, stage: str) -> str:
    """What a saved training state must have been saved with to be resumed: settings, world size, stage."""
    blob = json.dumps({"settings": _settings(cfg), "world_size": world.size, "stage": stage}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stage_float(cfg: PipelineConfig, data: ImageData, out: Path, device: torch.device, *, world: World = SINGLE,
                resume_dir: Path | None = None) -> tuple[nn.Module, dict]:
    """Train the float model from seed ``cfg.seed``; save ``out/float.pt``.

    With several processes (``world``) it is DistributedDataParallel training (``train_stream``); on
    CUDA its batch norms are SyncBatchNorm while training and bfloat16 autocast is on (mixed precision).
    With ``resume_dir`` the training state is saved there after every epoch and resumed from it.
    """
    seed_everything(cfg.seed)

    def build() -> nn.Module:
        return MODELS[cfg.model](data.num_classes, width=cfg.width, input_size=cfg.input_size, in_channels=data.in_channels)

    model = build().to(device)
    tc = TrainConfig(epochs=cfg.float_epochs, batch_size=cfg.batch_size, lr=cfg.float_lr, schedule="onecycle", seed=cfg.seed)
    if _streamed(data, world, resume_dir):
        sync_bn = world.distributed and device.type == "cuda"
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn else model
        result = train_stream(
            net, _train_set(data), tc, world=world, workers=cfg.workers, progress=cfg.progress,
            desc=f"float {cfg.model}", amp=device.type == "cuda",
            state_path=None if resume_dir is None else resume_dir / "float.state.pt",
            state_key=_state_key(cfg, world, "float"), resume=True,
        )
        if sync_bn:  # back to plain BatchNorm2d modules (what BN folding and the checkpoint expect)
            model = build()
            model.load_state_dict({k: v.cpu() for k, v in net.state_dict().items()})
    else:
        result = train(
            model, data.x_train.to(device), data.y_train.to(device), tc, progress=cfg.progress, desc=f"float {cfg.model}"
        )
    model = model.cpu().eval()
    acc = evaluate(model, data.x_test, data.y_test)
    save_checkpoint(out / "float.pt", model, extra={"float_acc": acc, "seed": cfg.seed, "dataset": data.name})
    info = {"float_acc": acc, "history": result.history, "train_seconds": round(result.seconds, 3),
            "resumed_from": result.resumed_from}
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


def throughput(report: dict) -> dict[str, float | None]:
    """Training images per second of the float and QAT stages, all processes together, from a report.

    Images = epochs trained in this session (resumed epochs excluded) x training images (x bit widths
    for QAT), over the stage's wall time (``report['seconds']``, which includes its evaluation and
    checkpoint); None for a stage that trained nothing. Computed, not stored: a report's numbers
    other than ``seconds`` are the same for the same seed.
    """
    settings, resumed, seconds = report["settings"], report.get("resumed", {}), report.get("seconds", {})
    n = int(report["n_train"])
    images = {"float": (settings["float_epochs"] - resumed.get("float", 0)) * n,
              "qat": sum((settings["qat_epochs"] - resumed.get(f"qat{int(b)}", 0)) * n for b in report.get("qat", {}))}
    return {k: round(v / seconds[k], 1) if v > 0 and seconds.get(k, 0) > 0 else None for k, v in images.items()}


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
    world_size = int(report.get("world_size", 1))
    rates = throughput(report)
    lines += ["## Wall time per stage (s)", ""]
    if world_size > 1:
        lines += [f"World size {world_size}: {world_size} processes (torchrun + DistributedDataParallel, "
                  f"{report['distributed']['backend']}); images/s counts the training images of all processes.", ""]
    else:
        lines += ["World size 1: one process.", ""]
    resumed = {k: v for k, v in report.get("resumed", {}).items() if v}
    if resumed:
        lines += ["Resumed after an interruption: " + ", ".join(f"{k} from epoch {v}" for k, v in resumed.items())
                  + " (the earlier epochs' time is not counted).", ""]
    lines += ["| stage | seconds | training images/s |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {rates[k] if rates.get(k) is not None else '-'} |" for k, v in report["seconds"].items()]
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in report["figures"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def check_config(cfg: Any, *, cli: bool = False) -> PipelineConfig:
    """Check every setting of ``cfg`` before any work; errors name the setting (``--seed`` when ``cli``)."""
    if not isinstance(cfg, PipelineConfig):
        raise TypeError(f"config must be a PipelineConfig (e.g. PRESETS['quick']), got {type(cfg).__name__}")

    def name(field_: str, flag: str | None = None) -> str:
        return (flag or "--" + field_.replace("_", "-")) if cli else field_

    if cfg.model not in MODELS:
        raise ValueError(f"{name('model')} must be one of {sorted(MODELS)}, got {cfg.model!r}")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"{name('dataset')} must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    check_seed(cfg.seed, name("seed"))
    if not isinstance(cfg.device, str):
        raise TypeError(f"{name('device')} must be a string such as 'cpu', got {cfg.device!r}")
    _device(cfg.device)
    check_int(cfg.threads, name("threads"), minimum=1, maximum=1024)
    check_int(cfg.float_epochs, name("float_epochs", "--epochs"), minimum=1)
    check_int(cfg.qat_epochs, name("qat_epochs"), minimum=1)
    check_bool(cfg.quick, name("quick"))
    check_bool(cfg.progress, name("progress", "--no-progress"))
    check_bool(cfg.distributed, name("distributed"))
    check_int(cfg.workers, name("workers"), minimum=0, maximum=256)
    check_int(cfg.limit_per_class, name("limit_per_class"), minimum=1, allow_none=True)
    if cfg.limit_per_class is not None and cfg.dataset != "folder":
        raise ValueError(f"{name('limit_per_class')} applies to the folder dataset ({name('dataset')} folder), not {cfg.dataset!r}")
    check_int(cfg.batch_size, name("batch_size"), minimum=1)
    if cfg.data_dir is not None or cfg.dataset != "digits":
        flag = name("data_dir")
        if cfg.data_dir is None:
            raise ValueError(f"{cfg.dataset} needs a folder: pass {flag} <folder holding the files> (nothing is downloaded)")
        if not isinstance(cfg.data_dir, (str, Path)):
            raise TypeError(f"{flag} must be a folder path, got {cfg.data_dir!r}")
        folder = Path(cfg.data_dir)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{flag} {folder} is a file, not a folder: pass the folder that holds the files")
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder} does not exist")
    if 8 not in cfg.qat_bits:
        raise ValueError("the integer stage converts the 8-bit QAT model: qat_bits must include 8")
    return cfg


def resume_dir_for(out: str | Path) -> Path:
    """Where ``--resume`` keeps the per-epoch training states of a run into ``out``: ``.<name>.resume`` beside it."""
    final = Path(out)
    return final.absolute().parent / f".{final.name}.resume"


def write_run(cfg: PipelineConfig, out: str | Path, *, overwrite: bool = False,
              on_stage: Callable[[str], None] | None = None, cli: bool = False, resume: bool = False) -> dict:
    """Check everything, run the pipeline into a folder beside ``out``, and rename it to ``out``.

    ``out`` must be new or empty, or (``overwrite``) hold a previous run, which is replaced as a whole
    only once the new run is complete. A failed or interrupted run leaves ``out`` as it was and no
    temporary folder (nor any parent folder created for it) behind -- except, with ``resume``, the
    training states saved after every epoch in ``resume_dir_for(out)``: the same command run again
    continues from them (the report says from which epoch), and they are deleted once the run is complete.

    ``cfg.distributed``: this process is one of several started by torchrun (``qlearn.distributed``);
    all of them train, only rank 0 writes ``out`` (the others run into a private temporary folder that
    is deleted), and every process returns its own report (the same numbers; rank 0's is the one written).
    """
    check_config(cfg, cli=cli)
    world = SINGLE
    started = os.environ.get("WORLD_SIZE", "1")
    if not cfg.distributed and started.isdigit() and int(started) > 1:  # N copies would race for one --out
        raise ValueError(f"this process is one of {started} started by torchrun: add "
                         f"{'--distributed' if cli else 'distributed=True'} (or start one process without torchrun)")
    if cfg.distributed:
        from qlearn import distributed

        world = distributed.init(cfg.device)
        try:
            return _write_run_distributed(cfg, out, overwrite=overwrite, on_stage=on_stage, cli=cli, resume=resume,
                                          world=world)
        finally:
            distributed.shutdown(world)
    return _write_run(cfg, out, overwrite=overwrite, on_stage=on_stage, cli=cli, resume=resume, world=world)


def _write_run_distributed(cfg: PipelineConfig, out: str | Path, *, overwrite: bool, on_stage: Callable[[str], None] | None,
                           cli: bool, resume: bool, world: World) -> dict:
    import torch.distributed as dist

    from qlearn.distributed import broadcast_error

    error = None
    if world.main:
        try:
            check_out_dir(out, overwrite, flag="--out" if cli else "out")
            if cfg.batch_size % world.size:
                raise ValueError(f"the batch size {cfg.batch_size} (the global batch) must be a multiple of the "
                                 f"number of processes {world.size}")
        except (OSError, ValueError, TypeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    error = broadcast_error(error, world)  # a bad --out stops every process, not only rank 0
    if error is not None:
        raise ValueError(error.split(": ", 1)[1])
    cfg = replace(cfg, progress=cfg.progress and world.main)  # progress bars and messages on rank 0 only
    if world.main:
        report = _write_run(cfg, out, overwrite=overwrite, on_stage=on_stage, cli=cli, resume=resume, world=world)
    else:  # the same run into a private folder that nobody reads
        with tempfile.TemporaryDirectory(prefix=f"qlearn-rank{world.rank}-") as private:
            report = run_pipeline(cfg, private, world=world,
                                  resume_dir=resume_dir_for(out) if resume else None)
    dist.barrier()  # rank 0 has published the run
    return report


def _write_run(cfg: PipelineConfig, out: str | Path, *, overwrite: bool, on_stage: Callable[[str], None] | None,
               cli: bool, resume: bool, world: World) -> dict:
    final = check_out_dir(out, overwrite, flag="--out" if cli else "out")
    resume_dir = resume_dir_for(final) if resume else None
    created = []  # parent folders made for the run, removed again if it fails
    for parent in reversed(final.absolute().parents):
        if not parent.exists():
            created.append(parent)
    try:
        try:
            tmp = _staging_dir(final)
        except OSError as exc:  # e.g. a read-only file system that os.access did not report
            reason = exc.strerror or type(exc).__name__
            raise OSError(f"{'--out' if cli else 'out'} {final}: cannot create a folder in "
                          f"{final.absolute().parent} ({reason})") from None
        report = _write_then_rename(
            final, lambda folder: run_pipeline(cfg, folder, on_stage=on_stage, world=world, resume_dir=resume_dir), tmp=tmp)
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)  # the run is complete: nothing left to resume
        return report
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()  # only if still empty
            except OSError:
                break
        raise


def run_pipeline(cfg: PipelineConfig, out: str | Path, *, on_stage: Callable[[str], None] | None = None,
                 world: World = SINGLE, resume_dir: Path | None = None) -> dict:
    """Run every stage with ``cfg`` and write the report and figures into ``out`` (which must exist).

    This writes in place; ``write_run`` (the command line) writes beside ``out`` and renames.
    ``world``: this process's place in a torchrun run (``write_run`` joins it); ``resume_dir``: save the
    training state there after every epoch and continue from the states found there.

    ``on_stage(name)``, if given, is called as each stage starts ("float", "ptq", "qat", "integer",
    "figures") and once more with "done" (``cached_quick_run`` drives a progress bar with it).
    """
    if on_stage is not None and not callable(on_stage):
        raise TypeError(f"on_stage must be a function of the stage name or None, got {type(on_stage).__name__}")
    check_config(cfg)
    # One thread by default: on a small shared CPU, torch's OpenMP threads spin while they wait for
    # each other, and with more threads than free cores a run gets 10x slower, not faster.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, Path(out), on_stage or (lambda name: None), world, resume_dir)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: PipelineConfig, out: Path, on_stage: Callable[[str], None], world: World = SINGLE,
         resume_dir: Path | None = None) -> dict:
    from qlearn.convert import compare, convert, quantize_input
    from qlearn.ptq import ptq_sweep
    from qlearn.qat import QATConfig, prepare_qat

    device = _device(cfg.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one GPU per process (qlearn.distributed.init)
    clock = Stopwatch()
    t0 = time.perf_counter()
    report: dict[str, Any] = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "quick": cfg.quick, "device": cfg.device}
    report["settings"] = dict(_settings(cfg), progress=cfg.progress)

    with clock.stage("data"):
        data = load_dataset(cfg.dataset, root=cfg.data_dir, input_size=cfg.input_size, seed=cfg.seed,
                            limit_per_class=cfg.limit_per_class, workers=cfg.workers)
        data = data.subset(cfg.n_train, cfg.n_test)
    report.update(n_train=_n_train(data), n_test=int(data.x_test.shape[0]), world_size=world.size)
    if resume_dir is not None:
        resume_dir.mkdir(parents=True, exist_ok=True)
    report["resumed"] = {}  # stage -> epochs restored from resume_dir

    on_stage("float")
    _log(cfg, f"[1/4] float training: {cfg.model}, {cfg.float_epochs} epochs on {data}")
    with clock.stage("float"):
        model, float_info = stage_float(cfg, data, out, device, world=world, resume_dir=resume_dir)
    report["resumed"]["float"] = float_info["resumed_from"]
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
    # optimiser steps: ceil(n / B) on one process; with N processes ceil(ceil(n / N) / (B / N))
    per_process = -(-_n_train(data) // world.size)
    steps = cfg.qat_epochs * -(-per_process // (cfg.batch_size // world.size))
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
            if _streamed(data, world, resume_dir):
                from qlearn import qat as qat_module
                from qlearn.distributed import StatSync

                # several processes: EMA ranges and folded-BN batch statistics of the global batch
                previous = qat_module.set_stat_sync(StatSync(world) if world.distributed else None)
                try:
                    result = train_stream(
                        qmodel, _train_set(data), tc, world=world, workers=cfg.workers, progress=cfg.progress,
                        desc=f"QAT {bits}-bit", resume=True, state_key=_state_key(cfg, world, f"qat{int(bits)}"),
                        state_path=None if resume_dir is None else resume_dir / f"qat{int(bits)}.state.pt",
                    )
                finally:
                    qat_module.set_stat_sync(previous)
            else:
                result = train(qmodel, data.x_train.to(device), data.y_train.to(device), tc, progress=cfg.progress,
                               desc=f"QAT {bits}-bit")
            report["resumed"][f"qat{int(bits)}"] = result.resumed_from
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
        if world.distributed:  # the converted integer model must be the same on every process
            from qlearn.distributed import gather_strings, integer_model_sha256

            hashes = gather_strings(integer_model_sha256(integer_model), world)
            report["distributed"] = {"world_size": world.size, "backend": world.backend,
                                     "integer_model_sha256": hashes, "identical_on_all_ranks": len(set(hashes)) == 1}
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
    # what load_run checks: these checkpoints, and no others, belong to this report
    report["checkpoints"] = {name: file_sha256(out / name) for name in _run_checkpoints(report)}
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out / "report.md").write_text(_markdown(report))
    on_stage("done")
    return report



# ----------------------------------------------------------------------------- a cached quick run (notebook 09)
#: Part of the cache folder's name: bump it when a change to the pipeline changes what a run writes.
QUICK_CACHE_VERSION = 2  # 2: report.json records the sha256 of every checkpoint


def quick_config(model: str = "mobilenet_v2", seed: int = 0, *, config: PipelineConfig | None = None,
                 progress: bool = True) -> PipelineConfig:
    """``PRESETS['quick']`` (or ``config``) with ``model``, ``seed`` and ``progress`` set, checked."""
    if config is None:
        config = PRESETS["quick"]
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"config must be a PipelineConfig (e.g. PRESETS['quick']) or None, got {type(config).__name__}")
    if not isinstance(model, str) or model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be a non-negative integer (at most 2^32 - 1 = {SEED_MAX}), got {seed!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if 8 not in config.qat_bits:
        raise ValueError("the integer stage converts the 8-bit QAT model: config.qat_bits must include 8")
    return replace(config, model=model, seed=seed, progress=progress)


def _settings(cfg: PipelineConfig) -> dict:
    """The settings a report stores (``report['settings']``), without the progress flag."""
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    d.pop("progress")
    d.pop("workers")  # changes how images are decoded, not what: never part of a run's identity
    for name, default in (("limit_per_class", None), ("distributed", False)):
        if d[name] == default:  # absent at the default: runs made before these settings existed match
            d.pop(name)
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
    if stored != _settings(cfg) or sorted(report.get("qat", {})) != sorted(str(int(b)) for b in cfg.qat_bits):
        return None
    try:
        verify_run(path, report)  # every checkpoint present and the one this report was written with
    except (OSError, ValueError):
        return None
    return dict(report, directory=str(path))


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
        tmp = _staging_dir(final)
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

    def write(folder: Path) -> dict:
        return run_pipeline(cfg, folder, on_stage=on_stage)

    # another process that filled the same cache first wins (same seed, same numbers), unless rerun
    def keep_theirs(folder: Path) -> bool:
        return not rerun and _read_run(folder, cfg) is not None

    try:
        if tmp == final:
            try:
                report = write(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        else:
            report = _write_then_rename(final, write, tmp=tmp, keep_existing=keep_theirs)
    finally:
        bar.close()
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
    Every checkpoint must be the one the report recorded (sha256, ``verify_run``) and store the seed,
    weight bits and accuracy the report gives: a folder mixing two runs is refused with a ValueError.
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
    if not isinstance(report, dict) or not all(k in report for k in ("qat", "qat_settings", "settings", "seed")):
        raise ValueError(f"{path / 'report.json'} is not a pipeline report (it lacks qat, qat_settings, settings or seed)")
    verify_run(path, report)  # the checkpoints are the ones this report was written with
    float_model, float_extra = load_checkpoint(path / "float.pt")
    # what each checkpoint stores must be what the report says (also for reports without hashes)
    saved = (float_extra.get("seed"), float_extra.get("float_acc"))
    if saved != (report["seed"], report.get("float_acc")):
        raise _mismatch(path / "float.pt", path / "report.json",
                        f"it holds (seed, accuracy) {saved}, the report {(report['seed'], report.get('float_acc'))}")
    qs = report["qat_settings"]
    qat_models = {}
    for bits in sorted((int(b) for b in report["qat"]), reverse=True):
        qcfg = QATConfig(weight_bits=bits, per_channel=bool(qs["per_channel"]), ema_decay=qs["ema_decay"],
                         act_quant_delay=qs["act_quant_delay"], freeze_bn_step=qs["freeze_bn_step"])
        qmodel, qat_extra = load_checkpoint(path / f"qat{bits}.pt", prepare_qat(float_model, qcfg))
        saved = (qat_extra.get("weight_bits"), qat_extra.get("qat_acc"))
        if saved != (bits, report["qat"][str(bits)]):
            raise _mismatch(path / f"qat{bits}.pt", path / "report.json",
                            f"it holds (weight bits, accuracy) {saved}, the report {(bits, report['qat'][str(bits)])}")
        qat_models[bits] = qmodel.eval()
    if 8 not in qat_models:
        raise ValueError(f"the run in {path} has no 8-bit QAT model, so no integer model")
    settings = report["settings"]
    data = load_dataset(report["dataset"], root=settings.get("data_dir"), input_size=report["config"]["input_size"],
                        seed=report["seed"], limit_per_class=settings.get("limit_per_class")
                        ).subset(report["n_train"], report["n_test"])
    return PipelineRun(path, dict(report, directory=str(path)), data, float_model.eval(), qat_models,
                       convert(qat_models[8]))


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str]) -> tuple[PipelineConfig, Path, bool]:
    """(config, --out, --overwrite) from the command line (``_parse`` also returns --resume)."""
    return _parse(argv)[:3]


def _parse(argv: list[str]) -> tuple[PipelineConfig, Path, bool, bool]:
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
    p.add_argument("--data-dir", default=None, help="folder with MNIST IDX files, CIFAR-10 python batches, or "
                   "(--dataset folder) train/<class>/*.jpg and val/<class>/*.jpg")
    p.add_argument("--limit-per-class", type=int, default=None, metavar="K",
                   help="--dataset folder: use only the first K images of each class (quick runs)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default 0)")
    p.add_argument("--distributed", action="store_true",
                   help="one process of `torchrun --nproc_per_node N -m qlearn pipeline ...` (DDP; gloo on CPU, NCCL on CUDA)")
    p.add_argument("--resume", action="store_true", help="save the training state after every epoch beside DIR "
                   "(.DIR.resume) and, run again after an interruption, continue from it")
    p.add_argument("--epochs", type=int, default=None, help="float training epochs (default: preset)")
    p.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs per bit width (default: preset)")
    p.add_argument("--input-size", type=int, default=None, help="image side in pixels (default: preset, 32; quick 16)")
    p.add_argument("--width", type=float, default=None, help="MobileNet width multiplier (default: preset, 0.5; quick 0.25)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per optimiser step, over all processes (default: preset, 64)")
    p.add_argument("--overwrite", action="store_true", help="replace the previous run in DIR (only once the new run is complete)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a busy small CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages")
    a = p.parse_args(argv)
    cfg = PRESETS["quick" if a.quick else "full"]
    changes: dict[str, Any] = dict(model=a.model, seed=a.seed, device=a.device, dataset=a.dataset,
                                   data_dir=a.data_dir, progress=not a.no_progress, threads=a.threads,
                                   limit_per_class=a.limit_per_class, workers=a.workers, distributed=a.distributed)
    if a.epochs is not None:
        changes["float_epochs"] = a.epochs
    if a.qat_epochs is not None:
        changes["qat_epochs"] = a.qat_epochs
    if a.input_size is not None:
        if not 4 <= a.input_size <= 512:
            p.error("--input-size must be between 4 and 512")
        changes["input_size"] = a.input_size
    if a.width is not None:
        if not 0 < a.width <= 4:
            p.error("--width must be in (0, 4]")
        changes["width"] = a.width
    if a.batch_size is not None:
        if a.batch_size < 1:
            p.error("--batch-size must be >= 1")
        changes["batch_size"] = a.batch_size
    for name in ("float_epochs", "qat_epochs"):
        if name in changes and changes[name] < 1:
            p.error(f"--{name.replace('_', '-').replace('float-', '')} must be >= 1")
    if a.threads < 1:
        p.error("--threads must be >= 1")
    if a.workers < 0:
        p.error("--workers must be >= 0")
    return replace(cfg, **changes), Path(a.out), a.overwrite, a.resume


def main(argv: list[str]) -> int:
    """Entry point of ``python -m qlearn pipeline``; returns the exit status.

    Bad arguments (checked before any work) and failures print one line, ``pipeline: error: ...``,
    and return 2; Ctrl-C returns 130. Either way ``--out`` is left as it was.
    """
    cfg, out, overwrite, resume = _parse(list(argv))
    try:
        report = write_run(cfg, out, overwrite=overwrite, cli=True, resume=resume)
    except (OSError, ValueError, TypeError) as exc:
        print(f"pipeline: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = f"; the training states in {resume_dir_for(out)} remain: run the same command again to resume" if resume else ""
        print(f"pipeline: interrupted; {out} was left as it was{kept}", file=sys.stderr)
        return 130
    if cfg.distributed and os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 prints the summary
    ig = report["integer"]
    print(
        f"{cfg.model}: float {100 * report['float_acc']:.2f} %, "
        f"QAT {', '.join(f'{b}-bit {100 * a:.2f} %' for b, a in report['qat'].items())}, "
        f"integer {100 * ig['acc']:.2f} % (top-1 agreement {100 * ig['top1_agreement_with_fake_quant']:.2f} %, "
        f"max {ig['max_lsb_diff']} LSB); {report['seconds']['total']:.1f} s -> {out / 'report.md'}"
    )
    return 0
