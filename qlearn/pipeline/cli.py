"""``python -m qlearn pipeline``: the command line of the pipeline (``qlearn.pipeline.run.write_run``).

Every argument (seed, device, paths) is checked before any work starts; a bad one is a one-line error
and exit status 2; Ctrl-C is exit status 130, and ``--out`` is left as it was either way.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from qlearn.data import DATASETS
from qlearn.models import MODELS
from qlearn.pipeline.config import PRESETS, PipelineConfig
from qlearn.pipeline.folders import resume_dir_for
from qlearn.pipeline.run import write_run

__all__ = ["parse_args", "main"]


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
