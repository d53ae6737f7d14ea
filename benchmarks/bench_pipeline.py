"""Pipeline: qlearn's whole pipeline per stage, and its 8-bit QAT flow beside PyTorch's eager-mode flow.

For each model (MobileNet v1 and v2):

1. ``qlearn.pipeline.run_pipeline`` end to end (float -> PTQ -> QAT 8 and 4 bits -> integer engine ->
   report), wall time per stage and the accuracies of its report;
2. the same task two ways, both from the pipeline's float checkpoint, with the same data, epochs,
   learning rate, schedule, seed and BN-freeze step:

   qlearn   prepare_qat -> train -> convert (integer engine) -> evaluate on the integer engine
   PyTorch  eager copy + fuse_modules_qat -> prepare_qat -> train -> convert -> evaluate on x86 int8

   wall time per step and accuracies side by side (PyTorch's fake-quant model evaluated with its
   observers switched off, so the test set never moves its ranges).

``run`` also returns the trained models, which the integer-engine benchmark times.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.ao.quantization as tq

from benchmarks import torch_flow
from qlearn.checkpoints import load_checkpoint
from qlearn.convert import convert, quantize_input
from qlearn.data import load_dataset
from qlearn.pipeline import PRESETS, PipelineConfig, run_pipeline
from qlearn.qat import prepare_qat
from qlearn.qat_layers import QATConfig
from qlearn.timing import Stopwatch
from qlearn.train import TrainConfig, evaluate, train

MODELS = ("mobilenet_v1", "mobilenet_v2")


def settings(quick: bool) -> PipelineConfig:
    """The pipeline preset; in quick mode cut further (a smoke run of every stage in seconds)."""
    if quick:
        return replace(PRESETS["quick"], float_epochs=2, n_train=320, n_test=200, ptq_bits=(8, 4), progress=False)
    return replace(PRESETS["full"], progress=False)


def _integer_accuracy(integer_model: Any, qat_model: Any, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    codes = quantize_input(qat_model, x)  # (N, C, H, W) uint8, the fake-quant model's own input codes
    out = np.concatenate([integer_model.run(codes[i : i + batch]) for i in range(0, len(codes), batch)])
    return float((out.argmax(1) == y.numpy()).mean())


def compare_flows(cfg: PipelineConfig, report: dict, run_dir: Path) -> tuple[dict, dict]:
    """qlearn's 8-bit QAT flow and PyTorch's eager flow from ``run_dir/float.pt`` (see module docstring)."""
    data = load_dataset(cfg.dataset, root=cfg.data_dir, input_size=cfg.input_size, seed=cfg.seed)
    data = data.subset(cfg.n_train, cfg.n_test)
    freeze = int(report["qat_settings"]["freeze_bn_step"])
    tc = TrainConfig(epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, schedule="cosine",
                     weight_decay=0.0, seed=cfg.seed + 8)

    ours = Stopwatch()
    float_model, _ = load_checkpoint(run_dir / "float.pt")
    float_model.eval()
    qcfg = QATConfig(weight_bits=8, per_channel=True, ema_decay=cfg.qat_ema_decay,
                     act_quant_delay=cfg.qat_act_delay, freeze_bn_step=freeze)
    q8 = ours.time("prepare", prepare_qat, float_model, qcfg)
    ours.time("train", train, q8, data.x_train, data.y_train, tc, progress=False)
    q8.eval()
    integer_model = ours.time("convert", convert, q8)
    int_acc = ours.time("evaluate", _integer_accuracy, integer_model, q8, data.x_test, data.y_test)
    ours.seconds["total"] = round(sum(ours.seconds.values()), 3)

    theirs = Stopwatch()

    def torch_prepare() -> torch.nn.Module:
        return torch_flow.prepare(torch_flow.fuse_conv_bn(torch_flow.eager_copy(float_model)), "x86")

    tmodel = theirs.time("prepare", torch_prepare)
    theirs.time("train", train, tmodel, data.x_train, data.y_train, tc, progress=False,
                on_step=torch_flow.freeze_bn_callback(tmodel, freeze))
    tmodel.apply(tq.disable_observer)  # evaluate without moving ranges
    torch_fq_acc = evaluate(tmodel, data.x_test, data.y_test)
    tint8 = theirs.time("convert", torch_flow.convert, tmodel)
    torch_int8_acc = theirs.time("evaluate", evaluate, tint8, data.x_test, data.y_test)
    theirs.seconds["total"] = round(sum(theirs.seconds.values()), 3)

    result = {
        "qat_epochs": cfg.qat_epochs, "train_images": int(data.x_train.shape[0]), "test_images": int(data.x_test.shape[0]),
        "freeze_bn_step": freeze,
        "seconds": {"qlearn": ours.seconds, "pytorch": theirs.seconds},
        "accuracy": {
            "float": float(report["float_acc"]),
            "qlearn_qat_fake_quant": evaluate(q8, data.x_test, data.y_test),
            "qlearn_integer_engine": int_acc,
            "pytorch_qat_fake_quant": torch_fq_acc,
            "pytorch_int8_x86": torch_int8_acc,
        },
        "time_ratio_qlearn_vs_pytorch": ours.seconds["total"] / theirs.seconds["total"],
        "pytorch_qconfig": torch_flow.describe_qconfig("x86"),
    }
    artifacts = {"float": float_model, "qat8": q8, "integer": integer_model, "torch_int8": tint8, "data": data}
    return result, artifacts


def run(work: Path, *, quick: bool, seed: int = 0, models: tuple[str, ...] = MODELS) -> tuple[dict, dict]:
    """Run both parts for every model; returns (results, artifacts per model)."""
    base = replace(settings(quick), seed=seed)
    results: dict[str, Any] = {"preset": "quick (cut)" if quick else "full", "models": {}}
    artifacts: dict[str, dict] = {}
    for name in models:
        cfg = replace(base, model=name)
        run_dir = Path(work) / f"pipeline-{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        report = run_pipeline(cfg, run_dir)
        wall = time.perf_counter() - t0
        flows, arts = compare_flows(cfg, report, run_dir)
        ptq8 = {m: accs.get("8") for m, accs in report["ptq"].items()}
        results["models"][name] = {
            "settings": {k: report["settings"][k] for k in ("width", "input_size", "float_epochs", "qat_epochs",
                                                            "batch_size", "n_train", "n_test", "ptq_bits", "qat_bits")},
            "parameters": report["parameters"],
            "pipeline_seconds": report["seconds"],
            "pipeline_wall_seconds": round(wall, 3),
            "accuracy": {
                "float": report["float_acc"],
                "ptq_8bit": ptq8,
                "qat": report["qat"],
                "integer_engine": report["integer"]["acc"],
                "integer_top1_agreement_with_fake_quant": report["integer"]["top1_agreement_with_fake_quant"],
                "integer_exact_output_fraction": report["integer"]["exact_output_fraction"],
            },
            "qat8_flow_vs_pytorch": flows,
        }
        artifacts[name] = arts
    return results, artifacts
