"""The pipeline's stages: float training, post-training quantization, QAT, and conversion to integers.

Each stage is one function of the config and what the earlier stages made; ``qlearn.pipeline.run``
calls them in order and writes what they return into the report. No figures here (those need
matplotlib: ``qlearn.pipeline.drawing``).

1. ``stage_float``   train the float model from the seed; ``float.pt``;
2. ``stage_ptq``     PTQ of the float model: per-tensor / per-channel weights, min/max and MSE ranges,
                     at each weight bit width (paper Sec. 3 shows why this is not enough at low bits);
3. ``stage_qat``     QAT from ``float.pt`` at each weight bit width, BN folded with the batch-statistics
                     correction and frozen late (Eq. 62); ``qat<bits>.pt``;
4. ``stage_integer`` convert the 8-bit QAT model (qlearn.convert) and compare the integer engine with
                     the fake-quant model code by code, in output LSBs (Eq. 69).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from qlearn import (
    fake_quant,
    ptq,  # ptq.ptq_sweep is looked up at call time (a test interrupts the run there)
)
from qlearn.bn_fold import fuse_model
from qlearn.checkpoints import load_checkpoint, save_checkpoint
from qlearn.convert import compare, convert, quantize_input
from qlearn.data import ImageData
from qlearn.distributed import SINGLE, StatSync, World, gather_strings, integer_model_sha256
from qlearn.models import MODELS, ConvBNReLU
from qlearn.pipeline.config import PTQ_METHODS_ORDER, PipelineConfig, run_settings
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig
from qlearn.quantize import dequantize
from qlearn.train import TrainConfig, evaluate, predict, seed_everything, train, train_stream

if TYPE_CHECKING:
    from qlearn.integer_model import IntegerModel

__all__ = ["log", "n_train", "stage_float", "stage_ptq", "qat_schedule", "stage_qat", "stage_integer",
           "folded_weight_ranges", "three_logits"]


def log(cfg: PipelineConfig, message: str) -> None:
    """A stage message on stderr, unless ``cfg.progress`` is off."""
    if cfg.progress:
        print(message, file=sys.stderr, flush=True)


def n_train(data: ImageData) -> int:
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
    blob = json.dumps({"settings": run_settings(cfg), "world_size": world.size, "stage": stage}, sort_keys=True)
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


def stage_ptq(cfg: PipelineConfig, model: nn.Module, data: ImageData) -> dict[str, dict[str, float]]:
    """Post-training quantization of the float model: {method: {weight bits (str): test accuracy}}.

    Calibrated on the first ``cfg.calib_batches`` training batches; activations are uint8 throughout,
    only the weight bit width and the weight range rule change (qlearn.ptq).
    """
    calib = data.x_train[: cfg.calib_batches * cfg.batch_size]
    sweep = ptq.ptq_sweep(
        model, calib, data.x_test, data.y_test, bits=tuple(cfg.ptq_bits), methods=PTQ_METHODS_ORDER,
        batch_size=cfg.batch_size, num_batches=cfg.calib_batches, progress=cfg.progress,
    )
    return {m: {str(int(b)): float(a) for b, a in accs.items()} for m, accs in sweep.items()}


def qat_schedule(cfg: PipelineConfig, data: ImageData, world: World = SINGLE) -> dict[str, Any]:
    """The QAT settings of a run (``report['qat_settings']``): optimiser steps, BN-freeze step, EMA decay.

    BN is frozen after ``cfg.qat_freeze_bn`` of the steps (Eq. 62), so the rest of the fine-tune
    trains the exact function the integer model runs.
    """
    # optimiser steps: ceil(n / B) on one process; with N processes ceil(ceil(n / N) / (B / N))
    per_process = -(-n_train(data) // world.size)
    steps = cfg.qat_epochs * -(-per_process // (cfg.batch_size // world.size))
    freeze_bn_step = max(1, round(cfg.qat_freeze_bn * steps))
    return {"epochs": cfg.qat_epochs, "steps": steps, "lr": cfg.qat_lr, "per_channel": True,
            "freeze_bn_step": freeze_bn_step, "act_quant_delay": cfg.qat_act_delay, "ema_decay": cfg.qat_ema_decay}


def stage_qat(cfg: PipelineConfig, data: ImageData, out: Path, device: torch.device, schedule: dict[str, Any], *,
              world: World = SINGLE, resume_dir: Path | None = None
              ) -> tuple[dict[int, nn.Module], dict[str, float], dict[str, int]]:
    """QAT from ``out/float.pt`` at each of ``cfg.qat_bits``; saves ``out/qat<bits>.pt``.

    Returns ({bits: QAT model (eval, CPU)}, {bits (str): test accuracy}, {"qat<bits>": epochs resumed}).
    With several processes the EMA ranges and the folded-BN batch statistics are those of the global batch.
    """
    models: dict[int, nn.Module] = {}
    accs: dict[str, float] = {}
    resumed: dict[str, int] = {}
    for bits in cfg.qat_bits:
        float_model, _ = load_checkpoint(out / "float.pt")  # torch.load(weights_only=True)
        qcfg = QATConfig(weight_bits=int(bits), per_channel=True, ema_decay=cfg.qat_ema_decay,
                         act_quant_delay=cfg.qat_act_delay, freeze_bn_step=schedule["freeze_bn_step"])
        qmodel = prepare_qat(float_model, qcfg).to(device)
        tc = TrainConfig(epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, schedule="cosine",
                         weight_decay=0.0, seed=cfg.seed + int(bits))
        if _streamed(data, world, resume_dir):
            # several processes: EMA ranges and folded-BN batch statistics of the global batch
            previous = fake_quant.set_stat_sync(StatSync(world) if world.distributed else None)
            try:
                result = train_stream(
                    qmodel, _train_set(data), tc, world=world, workers=cfg.workers, progress=cfg.progress,
                    desc=f"QAT {bits}-bit", resume=True, state_key=_state_key(cfg, world, f"qat{int(bits)}"),
                    state_path=None if resume_dir is None else resume_dir / f"qat{int(bits)}.state.pt",
                )
            finally:
                fake_quant.set_stat_sync(previous)
        else:
            result = train(qmodel, data.x_train.to(device), data.y_train.to(device), tc, progress=cfg.progress,
                           desc=f"QAT {bits}-bit")
        resumed[f"qat{int(bits)}"] = result.resumed_from
        qmodel = qmodel.cpu().eval()
        acc = evaluate(qmodel, data.x_test, data.y_test)
        accs[str(int(bits))] = acc
        models[int(bits)] = qmodel
        save_checkpoint(out / f"qat{int(bits)}.pt", qmodel, extra={"kind": "qat", "weight_bits": int(bits), "qat_acc": acc,
                                                                      "qat_config": qcfg.to_dict()})
        log(cfg, f"      QAT {bits}-bit accuracy {100 * acc:.2f} %")
    return models, accs, resumed


def stage_integer(cfg: PipelineConfig, q8: nn.Module | None, data: ImageData, world: World = SINGLE
                  ) -> tuple[IntegerModel, dict[str, Any], dict[str, Any] | None]:
    """Convert the 8-bit QAT model and run the integer engine on the test split.

    Returns (integer model, ``report['integer']``, ``report['distributed']`` or None on one process).
    The integer engine's accuracy comes from its own uint8 output (``compare`` runs it on uint8 input);
    the agreement with the fake-quant model is counted in output LSBs (Eq. 69).
    """
    if q8 is None:
        raise ValueError("the integer stage converts the 8-bit QAT model: include 8 in qat_bits")
    integer_model = convert(q8)
    distributed = None
    if world.distributed:  # the converted integer model must be the same on every process
        hashes = gather_strings(integer_model_sha256(integer_model), world)
        distributed = {"world_size": world.size, "backend": world.backend,
                       "integer_model_sha256": hashes, "identical_on_all_ranks": len(set(hashes)) == 1}
    agreement = compare(q8, integer_model, data.x_test, data.y_test, progress=cfg.progress)
    summary = {
        "acc": float(agreement.integer_acc),
        "top1_agreement_with_fake_quant": float(agreement.top1_agreement),
        "exact_output_fraction": float(agreement.exact_output_fraction),
        "max_lsb_diff": int(agreement.max_lsb_diff),
        "mean_abs_lsb_diff": float(agreement.mean_abs_lsb_diff),
        "fake_quant_acc": float(agreement.fake_quant_acc),
        "n": int(agreement.n),
        "layers": len(integer_model.layers),
    }
    return integer_model, summary, distributed


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


def three_logits(float_model: nn.Module, fake_quant_model: nn.Module, integer_model: IntegerModel,
                 x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float, fake-quant and integer-engine logits of images ``x``, each (N, classes) float64.

    The integer engine runs on the fake-quant model's uint8 input codes with integer arithmetic only;
    its uint8 logits are dequantized with the output (S, Z) (Eq. 1).
    """
    f = predict(float_model, x).double().numpy()
    fq = predict(fake_quant_model, x).double().numpy()
    q = integer_model.run(quantize_input(fake_quant_model, x))  # (N, classes) uint8: integers only
    return f, fq, np.asarray(dequantize(q, integer_model.output_qparams), dtype=np.float64)
