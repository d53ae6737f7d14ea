"""The pipeline's settings: ``PipelineConfig``, its two presets, and the checks run before any work.

``run_settings(cfg)`` is what a run's identity is made of: ``report['settings']`` stores it and the
quick-run cache key hashes it (``qlearn.pipeline.runs``), so its keys must not change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from qlearn._checks import check_bool, check_int, check_seed
from qlearn.data import DATASETS
from qlearn.models import MODELS

__all__ = ["PipelineConfig", "PRESETS", "PTQ_BITS", "QAT_BITS", "PTQ_METHODS_ORDER", "check_config", "run_settings",
           "torch_device"]

PTQ_BITS = (8, 6, 5, 4)
QAT_BITS = (8, 4)
PTQ_METHODS_ORDER = ("per_tensor_minmax", "per_tensor_mse", "per_channel_minmax", "per_channel_mse")


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



def torch_device(name: str) -> torch.device:
    """The torch device of ``--device``: "cpu" or "cuda[:N]" (refused where no GPU is available)."""
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        return torch.device(name)
    raise ValueError(f"--device must be 'cpu' or 'cuda[:N]', got {name!r}")



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
    torch_device(cfg.device)
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


def run_settings(cfg: PipelineConfig) -> dict:
    """The settings a report stores (``report['settings']``), without the progress flag."""
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    d.pop("progress")
    d.pop("workers")  # changes how images are decoded, not what: never part of a run's identity
    for name, default in (("limit_per_class", None), ("distributed", False)):
        if d[name] == default:  # absent at the default: runs made before these settings existed match
            d.pop(name)
    return d
