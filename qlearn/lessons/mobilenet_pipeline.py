"""Notebook 09: what the lesson computes from one pipeline run -- results, logits, layer-by-layer agreement.

The paper's recipe (Sec. 3 and 2.4, Fig. 1.1) in one run of ``qlearn.pipeline``: train a float
model, fold BN (Eq. 41), quantize it after training (PTQ, Eq. 53), fine-tune it with simulated
quantization (QAT, Eqs. 55-63), convert it to integers (Eqs. 65-67) and run it with integer
arithmetic only. The notebook reads a shipped ``--quick`` run (``pipeline_run``) and looks at it as

* ``results`` / ``results_markdown``: float, PTQ, QAT and integer accuracy, integer vs fake-quant
  agreement in output LSBs (Eq. 69), logit SQNRs (Eq. 18) -- from ``logit_comparison``;
* ``layer_agreement``: every integer layer's output codes against the fake-quant model's, end to
  end and for the layer alone (Eq. 31), with the layer's multipliers (``multipliers``).

Results are cached on the ``PipelineRun`` (``run.cache``). No ipywidgets, no matplotlib: the
explorers that show these results live in ``qlearn.widgets.pipeline``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qlearn.agreement import Agreement, code_agreement
from qlearn.convert import quantize_input
from qlearn.error import sqnr_db
from qlearn.fixedpoint import multiplier_value
from qlearn.pipeline.config import PipelineConfig
from qlearn.pipeline.runs import PipelineRun, cached_quick_run, load_run, quick_run_dir
from qlearn.pipeline.stages import folded_weight_ranges, three_logits
from qlearn.shipped import shipped_dir, shipped_folder
from qlearn.threads import one_thread

__all__ = [
    "MAX_IMAGES",
    "check_run",
    "pipeline_run",
    "LogitComparison",
    "logit_comparison",
    "results",
    "results_markdown",
    "LayerAgreement",
    "layer_agreement",
    "multipliers",
    "folded_ranges",
]

MAX_IMAGES = 200  # test images the layer and logit comparisons run on


def check_run(run: Any) -> PipelineRun:
    """``run`` itself if it is a ``PipelineRun``, else a TypeError naming the argument."""
    if not isinstance(run, PipelineRun):
        raise TypeError(f"run must be a PipelineRun (from pipeline_run() or qlearn.pipeline.load_run), "
                        f"got {type(run).__name__}")
    return run


def _check_images(images: Any) -> int:
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")
    return images


# ---------------------------------------------------------------------------------- the cached run
_RUNS: dict[tuple[str, int], PipelineRun] = {}  # (folder, report.json mtime) -> loaded run, per process


def _shipped_run_dir(model: str, seed: int, config: PipelineConfig | None) -> Path | None:
    """The quick run shipped with qlearn for these settings (every file sha256-checked), or None."""
    name = quick_run_dir(model, seed, directory="pipeline", config=config).as_posix()
    return shipped_folder(name)


def pipeline_run(model: str = "mobilenet_v2", seed: int = 0, *, directory: str | Path | None = None,
                 progress: bool = True, rerun: bool = False, config: PipelineConfig | None = None) -> PipelineRun:
    """The quick pipeline run of ``model`` and ``seed``, read back into models (``load_run``).

    By default (no ``directory``, no ``rerun``) the run shipped with qlearn (``qlearn.shipped``):
    every learner reads the same models and numbers. Seeded training is deterministic on one machine
    but gives slightly different models on another CPU, so ``rerun=True`` runs the quick pipeline on
    this CPU (a progress bar; ``qlearn.pipeline.cached_quick_run``) into the cache folder, and its
    numbers differ a little from the shipped ones. With ``directory`` the run is read from (or made
    in) that cache folder. A cached run whose checkpoints cannot be read is run again, with a
    one-line message. Within one process the same run is returned until it is re-run.
    """
    folder = None
    if directory is None and not rerun:
        folder = _shipped_run_dir(model, seed, config)
    if folder is None:
        report = cached_quick_run(model, seed, directory=directory, progress=progress, rerun=rerun, config=config)
        folder = Path(report["directory"])
    key = (str(folder.resolve()), (folder / "report.json").stat().st_mtime_ns)
    if key not in _RUNS:
        try:
            _RUNS[key] = load_run(folder)
        except (ValueError, OSError, RuntimeError, EOFError, KeyError) as e:
            if rerun or folder.resolve().is_relative_to(shipped_dir().resolve()):
                raise
            print(f"qlearn: the cached run {folder} cannot be read back ({e}); running it again", file=sys.stderr)
            return pipeline_run(model, seed, directory=directory, progress=progress, rerun=True, config=config)
    return _RUNS[key]


def folded_ranges(run: PipelineRun) -> list[dict]:
    """Per-channel ranges of the run's folded float weights (Eq. 41; ``folded_weight_ranges``), cached per run."""
    run = check_run(run)
    if "ranges" not in run.cache:
        run.cache["ranges"] = folded_weight_ranges(run.float_model)
    return run.cache["ranges"]


# ---------------------------------------------------------------------------------- results table
@dataclass(frozen=True, eq=False)
class LogitComparison:
    """The three models' logits on the same test images, (N, classes) float64 each, and their SQNRs (Eq. 18).

    fake_quant : the 8-bit QAT model in eval mode (float arithmetic on the integer grids)
    integer    : the integer engine's uint8 logits, dequantized with the output (S, Z)
    sqnr_*     : 10 log10(sum ref^2 / sum (x - ref)^2) in dB, the first-named model as x
    """

    float_logits: np.ndarray
    fake_quant_logits: np.ndarray
    integer_logits: np.ndarray
    labels: np.ndarray

    @property
    def sqnr_integer_vs_fake_quant(self) -> float:
        return sqnr_db(self.fake_quant_logits, self.integer_logits)

    @property
    def sqnr_integer_vs_float(self) -> float:
        return sqnr_db(self.float_logits, self.integer_logits)

    @property
    def sqnr_fake_quant_vs_float(self) -> float:
        return sqnr_db(self.float_logits, self.fake_quant_logits)


def logit_comparison(run: PipelineRun, images: int = MAX_IMAGES) -> LogitComparison:
    """Float, fake-quant and integer-engine logits on the first ``images`` test images (cached per run)."""
    run = check_run(run)
    images = _check_images(images)
    key = ("logits", images)
    if key not in run.cache:
        x = run.data.x_test[:images]  # (N, C, H, W) float32 in [0, 1]
        with one_thread():
            f, fq, ints = three_logits(run.float_model, run.qat8, run.integer_model, x)
        run.cache[key] = LogitComparison(f, fq, ints, run.data.y_test[:images].numpy())
    return run.cache[key]


def results(run: PipelineRun) -> dict[str, float]:
    """The notebook's results table as numbers: accuracies (fractions), agreement, LSBs, SQNRs (dB).

    Accuracies and the integer-vs-fake-quant agreement come from the run's report (the whole test
    split); the logit SQNRs are computed here from ``logit_comparison``.
    """
    run = check_run(run)
    r = run.report
    ig = r["integer"]
    lc = logit_comparison(run)
    out = {"float": r["float_acc"]}
    for bits in sorted((int(b) for b in r["ptq"]["per_tensor_minmax"]), reverse=True):
        out[f"PTQ {bits}-bit per-tensor"] = r["ptq"]["per_tensor_minmax"][str(bits)]
        out[f"PTQ {bits}-bit per-channel"] = r["ptq"]["per_channel_minmax"][str(bits)]
    for bits, acc in sorted(r["qat"].items(), key=lambda kv: -int(kv[0])):
        out[f"QAT {bits}-bit"] = acc
    out.update({
        "integer engine": ig["acc"],
        "top-1 agreement integer vs fake-quant": ig["top1_agreement_with_fake_quant"],
        "identical output codes": ig["exact_output_fraction"],
        "max LSB difference": float(ig["max_lsb_diff"]),
        "logit SQNR integer vs fake-quant (dB)": lc.sqnr_integer_vs_fake_quant,
        "logit SQNR integer vs float (dB)": lc.sqnr_integer_vs_float,
        "logit SQNR fake-quant vs float (dB)": lc.sqnr_fake_quant_vs_float,
    })
    return out


def results_markdown(run: PipelineRun) -> str:
    """``results(run)`` as two Markdown tables: accuracies by stage, then how close the integer engine is."""
    run = check_run(run)
    res = results(run)
    r = run.report
    n = r["n_test"]
    flt = res["float"]

    def acc_row(label: str, what: str, acc: float) -> str:
        wrong = round((1 - acc) * n)
        return f"| {label} | {what} | {100 * acc:.2f} % | {100 * (acc - flt):+.2f} | {wrong} |"

    lines = [
        f"**{r['model']} on {r['dataset']}**, {r['n_test']} test images, seed {r['seed']}"
        + (" (quick run)" if r.get("quick") else ""),
        "",
        "| stage | model | test accuracy | vs float (points) | misclassified |",
        "|---|---|---|---|---|",
        acc_row("1 float", "trained float model", flt),
    ]
    for key, acc in res.items():
        if key.startswith("PTQ "):
            bits, scheme = key.split()[1], key.split()[2]
            lines.append(acc_row("2 PTQ", f"{bits} weights {scheme} (min/max), 8-bit activations", acc))
    for key, acc in res.items():
        if key.startswith("QAT "):
            lines.append(acc_row("3 QAT", f"{key.split()[1]} weights per-channel, fine-tuned", acc))
    lines.append(acc_row("4 integer", "8-bit QAT model on the integer engine (integers only)", res["integer engine"]))
    lines += [
        "",
        "| integer engine vs the 8-bit fake-quant model | value |",
        "|---|---|",
        f"| same predicted class (top-1 agreement) | {100 * res['top-1 agreement integer vs fake-quant']:.2f} % |",
        f"| logits with identical uint8 codes | {100 * res['identical output codes']:.2f} % |",
        f"| largest logit difference | {int(res['max LSB difference'])} LSB |",
        f"| logit SQNR, integer vs fake-quant | {res['logit SQNR integer vs fake-quant (dB)']:.1f} dB |",
        f"| logit SQNR, integer vs float model | {res['logit SQNR integer vs float (dB)']:.1f} dB |",
        f"| logit SQNR, fake-quant vs float model | {res['logit SQNR fake-quant vs float (dB)']:.1f} dB |",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- layer by layer
@dataclass(frozen=True, eq=False)
class LayerAgreement:
    """One integer layer's output against the fake-quant model's, as codes on the layer's output grid.

    q_int   : the integer engine's output when the whole engine runs from the uint8 input (end to end)
    q_fake  : the fake-quant model's output at this layer, y / S_out + Z_out (exact: y is on the grid)
    q_alone : this integer layer run on the fake-quant model's codes of its inputs -- the difference
              q_alone - q_fake is what this layer's own integer arithmetic changes (Eq. 31), while
              q_int - q_fake also carries every earlier layer's differences (Eq. 69)
    All (N, ...) int64. ``end_to_end`` and ``alone`` are the same comparisons as ``qlearn.agreement``
    makes for a model's logits, one row per image (a hidden layer's top-1 agreement means nothing).
    """

    index: int
    name: str
    kind: str
    layer: Any
    q_int: np.ndarray
    q_fake: np.ndarray
    q_alone: np.ndarray

    @property
    def diff_end_to_end(self) -> np.ndarray:
        return self.q_int - self.q_fake

    @property
    def diff_alone(self) -> np.ndarray:
        return self.q_alone - self.q_fake

    @cached_property
    def end_to_end(self) -> Agreement:
        """q_int against q_fake, code by code (Eq. 69)."""
        return _rows_agreement(self.q_int, self.q_fake)

    @cached_property
    def alone(self) -> Agreement:
        """q_alone against q_fake, code by code: this layer's own arithmetic only (Eq. 31)."""
        return _rows_agreement(self.q_alone, self.q_fake)

    @property
    def exact_end_to_end(self) -> float:
        return self.end_to_end.exact_output_fraction

    @property
    def exact_alone(self) -> float:
        return self.alone.exact_output_fraction

    @property
    def max_lsb_end_to_end(self) -> int:
        return self.end_to_end.max_lsb_diff

    @property
    def max_lsb_alone(self) -> int:
        return self.alone.max_lsb_diff


def _rows_agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    """``code_agreement`` of two (N, ...) code arrays, one row per image."""
    return code_agreement(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))


def multipliers(layer: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, M0, shift) of an integer layer: M = M0 2^(shift-31) (Eqs. 22-23), float64 / int64 / int64.

    One entry per output channel (conv, linear), three for an add (input a, input b, output; Eq. 33),
    one for a requantize, none for a pool (it keeps its input's (S, Z)).
    """
    m0, shift = layer.multipliers  # (k,) int64 each
    if m0.size == 0:
        return np.zeros(0), m0, shift
    return np.asarray(multiplier_value(m0, shift), dtype=np.float64).reshape(-1), m0, shift


def layer_agreement(run: PipelineRun, images: int = MAX_IMAGES) -> list[LayerAgreement]:
    """Every integer layer against the fake-quant model on the first ``images`` test images (cached per run).

    The fake-quant model's per-layer outputs come from forward hooks on its modules, which carry the
    integer layers' names (``qlearn.convert``); each lies on its layer's output grid, so dividing by
    S_out and adding Z_out recovers integer codes exactly (checked).
    """
    run = check_run(run)
    images = _check_images(images)
    key = ("layers", images)
    if key in run.cache:
        return run.cache[key]
    qat, engine = run.qat8, run.integer_model
    x = run.data.x_test[:images]
    x_q = quantize_input(qat, x)  # (N, C, H, W) uint8
    modules = dict(qat.named_modules())
    missing = [layer.name for layer in engine.layers if layer.name not in modules]
    if missing:
        raise ValueError(f"the QAT model has no modules named {missing}: the integer model was not converted from it")
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[layer.name].register_forward_hook(
            lambda module, inputs, output, name=layer.name: captured.__setitem__(name, output.detach())
        )
        for layer in engine.layers
    ]
    try:
        with one_thread(), torch.no_grad():
            qat.eval()(x)
            int_outs = engine.layer_outputs(x_q)  # name -> uint8 codes, integer arithmetic only
    finally:
        for h in hooks:
            h.remove()
    codes: dict[str, np.ndarray] = {"input": x_q.astype(np.int64)}
    rows = []
    for i, layer in enumerate(engine.layers):
        scale, zp = float(layer.out_scale), int(layer.out_zp)  # the layer's output grid (S_out, Z_out)
        y = captured[layer.name].double().numpy() / scale  # (N, ...) float64, integers up to float32 error
        q = np.rint(y)
        off = float(np.abs(y - q).max()) if y.size else 0.0
        if off > 0.05:
            raise ValueError(f"the fake-quant output of {layer.name!r} is not on its grid (off by {off:.3f} steps)")
        codes[layer.name] = q.astype(np.int64) + zp
        alone = layer(*(codes[src].astype(np.uint8) for src in layer.inputs))  # fed the fake-quant codes
        rows.append(LayerAgreement(i, layer.name, layer.describe()["kind"], layer,
                                   int_outs[layer.name].astype(np.int64), codes[layer.name],
                                   np.asarray(alone).astype(np.int64)))
    run.cache[key] = rows
    return rows
