"""Finished runs: the cached ``--quick`` run notebook 09 reads, and reading a run's folder back into models.

``cached_quick_run`` keeps one ``--quick`` run per (model, seed, settings) under
``<cache_dir>/pipeline/`` and returns its report, running it once (~10 s, with a progress bar) when
the cache is cold; ``load_run`` reads a run's folder back into its models (``PipelineRun``).
The cache folder's name hashes ``QUICK_CACHE_VERSION`` and every setting (``run_settings``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn
from tqdm.auto import tqdm

from qlearn._checks import SEED_MAX, check_bool
from qlearn.checkpoints import cache_dir, load_checkpoint
from qlearn.convert import convert
from qlearn.data import ImageData, load_dataset
from qlearn.files import staging_dir, write_then_rename
from qlearn.models import MODELS
from qlearn.pipeline.config import PRESETS, PipelineConfig, run_settings
from qlearn.pipeline.folders import checkpoint_mismatch, verify_run
from qlearn.pipeline.run import run_pipeline
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig

if TYPE_CHECKING:
    from qlearn.integer_model import IntegerModel
    from qlearn.qat import FakeQuantMobileNet

__all__ = ["QUICK_CACHE_VERSION", "quick_config", "quick_run_dir", "cached_quick_run", "PipelineRun", "load_run"]

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
    progress = check_bool(progress, "progress")
    if 8 not in config.qat_bits:
        raise ValueError("the integer stage converts the 8-bit QAT model: config.qat_bits must include 8")
    return replace(config, model=model, seed=seed, progress=progress)


def quick_run_dir(model: str = "mobilenet_v2", seed: int = 0, *, directory: str | Path | None = None,
                  config: PipelineConfig | None = None) -> Path:
    """The folder ``cached_quick_run`` keeps a run in: ``<directory>/quick-<model>-seed<seed>-<key>``.

    ``directory`` defaults to ``<cache_dir()>/pipeline`` (``$QLEARN_CACHE_DIR``, else ~/.cache/qlearn);
    ``key`` is a hash of every setting, so changed settings never read a stale run.
    """
    cfg = quick_config(model, seed, config=config)
    if directory is None:
        directory = cache_dir() / "pipeline"
    elif not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a folder path or None, got {type(directory).__name__}")
    blob = json.dumps({"version": QUICK_CACHE_VERSION, **run_settings(cfg)}, sort_keys=True)
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
    if stored != run_settings(cfg) or sorted(report.get("qat", {})) != sorted(str(int(b)) for b in cfg.qat_bits):
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
    rerun = check_bool(rerun, "rerun")
    cfg = quick_config(model, seed, config=config, progress=progress)
    final = quick_run_dir(model, seed, directory=directory, config=config)
    if not rerun:
        report = _read_run(final, cfg)
        if report is not None:
            return report
    try:
        tmp = staging_dir(final)
    except OSError:  # a read-only cache: run into a temporary folder, run again next session
        final = tmp = Path(tempfile.mkdtemp(prefix="qlearn-pipeline-"))
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
            report = write_then_rename(final, write, tmp=tmp, keep_existing=keep_theirs)
    finally:
        bar.close()
    return _read_run(final, cfg) or dict(report, directory=str(final))


@dataclass(eq=False)
class PipelineRun:
    """A finished run read back from its folder: the report, the models of every stage, the data.

    float_model   : the trained float model (eval)              -- stage 1, ``float.pt``
    qat_models    : {weight bits: FakeQuantMobileNet (eval)}          -- stage 3, ``qat<bits>.pt``
    integer_model : ``convert(qat_models[8])``                   -- stage 4, rebuilt (conversion is exact)
    data          : the run's images, the same subset the run used
    """

    directory: Path
    report: dict
    data: ImageData
    float_model: nn.Module
    qat_models: dict[int, FakeQuantMobileNet]
    integer_model: IntegerModel
    cache: dict = field(default_factory=dict, repr=False)  # results computed from the run (notebook 09)

    @property
    def qat8(self) -> FakeQuantMobileNet:
        return self.qat_models[8]


def load_run(directory: str | Path) -> PipelineRun:
    """Read a run written by ``run_pipeline`` (or ``cached_quick_run``) back into models.

    QAT checkpoints are loaded into ``prepare_qat(float_model, QATConfig(...))`` built from the
    report's ``qat_settings`` (weights-only loading), and the 8-bit one is converted again.
    Every checkpoint must be the one the report recorded (sha256, ``verify_run``) and store the seed,
    weight bits and accuracy the report gives: a folder mixing two runs is refused with a ValueError.
    """
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
        raise checkpoint_mismatch(path / "float.pt", path / "report.json",
                        f"it holds (seed, accuracy) {saved}, the report {(report['seed'], report.get('float_acc'))}")
    qs = report["qat_settings"]
    qat_models = {}
    for bits in sorted((int(b) for b in report["qat"]), reverse=True):
        qcfg = QATConfig(weight_bits=bits, per_channel=bool(qs["per_channel"]), ema_decay=qs["ema_decay"],
                         act_quant_delay=qs["act_quant_delay"], freeze_bn_step=qs["freeze_bn_step"])
        qmodel, qat_extra = load_checkpoint(path / f"qat{bits}.pt", prepare_qat(float_model, qcfg))
        saved = (qat_extra.get("weight_bits"), qat_extra.get("qat_acc"))
        if saved != (bits, report["qat"][str(bits)]):
            raise checkpoint_mismatch(path / f"qat{bits}.pt", path / "report.json",
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
