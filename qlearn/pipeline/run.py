"""One pipeline run: the stages in order, the report, the figures -- in place or written beside and renamed.

``run_pipeline(cfg, out)`` runs every stage (``qlearn.pipeline.stages``) into the existing folder
``out`` and writes ``report.json``, ``report.md`` (``qlearn.pipeline.report``) and three figures
(``qlearn.pipeline.drawing``). ``write_run(cfg, out)`` -- the command line's path -- checks
everything first, runs into a new folder beside ``out`` and renames it into place only when the run
is complete (``qlearn.files.write_then_rename``), with torchrun (``cfg.distributed``) and ``--resume``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from qlearn import distributed
from qlearn.checkpoints import file_sha256
from qlearn.data import load_dataset
from qlearn.distributed import SINGLE, World, broadcast_error
from qlearn.files import staging_dir, write_then_rename
from qlearn.pipeline.config import PTQ_METHODS_ORDER, PipelineConfig, check_config, run_settings, torch_device
from qlearn.pipeline.folders import check_out_dir, resume_dir_for, run_checkpoints
from qlearn.pipeline.report import report_markdown, weight_ranges_summary
from qlearn.pipeline.stages import (
    folded_weight_ranges,
    log,
    n_train,
    qat_schedule,
    stage_float,
    stage_integer,
    stage_ptq,
    stage_qat,
    three_logits,
)
from qlearn.threads import one_thread
from qlearn.timing import Stopwatch

__all__ = ["run_pipeline", "write_run", "FIGURE_IMAGES"]

FIGURE_IMAGES = 200  # test images in the logits scatter plot


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
        world = distributed.init(cfg.device)
        try:
            return _write_run_distributed(cfg, out, overwrite=overwrite, on_stage=on_stage, cli=cli, resume=resume,
                                          world=world)
        finally:
            distributed.shutdown(world)
    return _write_run(cfg, out, overwrite=overwrite, on_stage=on_stage, cli=cli, resume=resume, world=world)


def _write_run_distributed(cfg: PipelineConfig, out: str | Path, *, overwrite: bool, on_stage: Callable[[str], None] | None,
                           cli: bool, resume: bool, world: World) -> dict:
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
            tmp = staging_dir(final)
        except OSError as exc:  # e.g. a read-only file system that os.access did not report
            reason = exc.strerror or type(exc).__name__
            raise OSError(f"{'--out' if cli else 'out'} {final}: cannot create a folder in "
                          f"{final.absolute().parent} ({reason})") from None
        report = write_then_rename(
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




@contextmanager
def _threads(n: int) -> Iterator[None]:
    """``n`` torch CPU threads for the body: ``one_thread()`` (torch and BLAS) at 1, else torch's pool only."""
    if n == 1:
        with one_thread():
            yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    with _threads(cfg.threads):
        return _run(cfg, Path(out), on_stage or (lambda name: None), world, resume_dir)


def _run(cfg: PipelineConfig, out: Path, on_stage: Callable[[str], None], world: World = SINGLE,
         resume_dir: Path | None = None) -> dict:
    device = torch_device(cfg.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one GPU per process (qlearn.distributed.init)
    clock = Stopwatch()
    t0 = time.perf_counter()
    report: dict[str, Any] = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "quick": cfg.quick, "device": cfg.device}
    report["settings"] = dict(run_settings(cfg), progress=cfg.progress)

    with clock.stage("data"):
        data = load_dataset(cfg.dataset, root=cfg.data_dir, input_size=cfg.input_size, seed=cfg.seed,
                            limit_per_class=cfg.limit_per_class, workers=cfg.workers)
        data = data.subset(cfg.n_train, cfg.n_test)
    report.update(n_train=n_train(data), n_test=int(data.x_test.shape[0]), world_size=world.size)
    if resume_dir is not None:
        resume_dir.mkdir(parents=True, exist_ok=True)
    report["resumed"] = {}  # stage -> epochs restored from resume_dir

    on_stage("float")
    log(cfg, f"[1/4] float training: {cfg.model}, {cfg.float_epochs} epochs on {data}")
    with clock.stage("float"):
        model, float_info = stage_float(cfg, data, out, device, world=world, resume_dir=resume_dir)
    report["resumed"]["float"] = float_info["resumed_from"]
    report.update(config=dict(model.config), parameters=sum(p.numel() for p in model.parameters()))
    report["float_acc"] = float_info["float_acc"]
    report["float_history"] = float_info["history"]
    log(cfg, f"      float accuracy {100 * report['float_acc']:.2f} %")

    on_stage("ptq")
    log(cfg, f"[2/4] post-training quantization: {len(PTQ_METHODS_ORDER)} methods x bits {list(cfg.ptq_bits)}")
    with clock.stage("ptq"):
        report["ptq"] = stage_ptq(cfg, model, data)

    on_stage("qat")
    log(cfg, f"[3/4] quantization-aware training from float.pt at weight bits {list(cfg.qat_bits)}")
    report["qat"] = {}
    report["qat_settings"] = qat_schedule(cfg, data, world)
    with clock.stage("qat"):
        qat_models, qat_accs, qat_resumed = stage_qat(cfg, data, out, device, report["qat_settings"], world=world,
                                                      resume_dir=resume_dir)
    report["qat"].update(qat_accs)
    report["resumed"].update(qat_resumed)

    on_stage("integer")
    log(cfg, "[4/4] integer engine: converting the 8-bit QAT model and running it on the test split")
    q8 = qat_models.get(8)
    with clock.stage("integer"):
        integer_model, integer_summary, distributed_summary = stage_integer(cfg, q8, data, world)
    if distributed_summary is not None:
        report["distributed"] = distributed_summary
    report["integer"] = integer_summary
    log(cfg, f"      integer accuracy {100 * report['integer']['acc']:.2f} %, top-1 agreement "
             f"{100 * report['integer']['top1_agreement_with_fake_quant']:.2f} %")

    on_stage("figures")
    with clock.stage("figures"):
        from qlearn.pipeline import drawing  # matplotlib: only a run that draws its figures imports it

        ranges = folded_weight_ranges(model)
        report["weight_ranges"] = weight_ranges_summary(ranges)
        report["figures"] = list(drawing.FIGURES)
        drawing.figure_accuracy_vs_bits(report, out / "accuracy_vs_bits.png")
        drawing.figure_weight_ranges(ranges, out / "weight_ranges.png")
        drawing.figure_logits(*three_logits(model, q8, integer_model, data.x_test[:FIGURE_IMAGES]), out / "logits.png")

    clock.seconds["total"] = round(time.perf_counter() - t0, 3)
    report["seconds"] = dict(clock.seconds)
    report["environment"] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                             "threads": torch.get_num_threads()}
    # what load_run checks: these checkpoints, and no others, belong to this report
    report["checkpoints"] = {name: file_sha256(out / name) for name in run_checkpoints(report)}
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    on_stage("done")
    return report
