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
the cache is cold; ``load_run`` reads a run's folder back into its models (notebook 09;
``qlearn.lessons.mobilenet_pipeline``).

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

One module per part:

=========  ===================================================================================
config     ``PipelineConfig``, ``PRESETS``, ``check_config``, ``run_settings`` (a run's identity)
stages     float training, PTQ, QAT, conversion to the integer engine
report     the report's summary numbers and ``report.md``
drawing    the three figures (matplotlib; imported only when a run draws them)
folders    a run folder on disk: ``--out`` checks, ``verify_run``, ``resume_dir_for``
run        ``run_pipeline`` (in place) and ``write_run`` (beside, then renamed)
runs       ``cached_quick_run`` and ``load_run`` -> ``PipelineRun``
cli        ``python -m qlearn pipeline`` (``main``)
=========  ===================================================================================

This package re-exports the main public names of every part but ``drawing``, so
``import qlearn.pipeline`` never imports matplotlib.
"""
from __future__ import annotations

from qlearn.pipeline.cli import main, parse_args
from qlearn.pipeline.config import PRESETS, PipelineConfig, check_config
from qlearn.pipeline.folders import check_out_dir, prepare_out_dir, resume_dir_for, verify_run
from qlearn.pipeline.report import throughput
from qlearn.pipeline.run import run_pipeline, write_run
from qlearn.pipeline.runs import PipelineRun, cached_quick_run, load_run, quick_config, quick_run_dir
from qlearn.pipeline.stages import folded_weight_ranges, stage_float

__all__ = ["PipelineConfig", "PRESETS", "run_pipeline", "write_run", "check_config", "check_out_dir", "main",
           "parse_args", "quick_config", "quick_run_dir", "cached_quick_run", "PipelineRun", "load_run", "throughput",
           "resume_dir_for", "prepare_out_dir", "verify_run", "folded_weight_ranges", "stage_float"]
