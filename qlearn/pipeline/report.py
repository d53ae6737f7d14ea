"""The pipeline's report: the summary numbers it stores and ``report.md``.

``throughput`` is computed from a report, never stored (a report's numbers other than ``seconds``
are the same for the same seed); ``weight_ranges_summary`` is the report's ``weight_ranges`` entry.
"""
from __future__ import annotations

from typing import Any

__all__ = ["throughput", "weight_ranges_summary", "report_markdown"]


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


def weight_ranges_summary(ranges: list[dict[str, Any]]) -> dict[str, Any]:
    """``report['weight_ranges']``: the widest spread of channel ranges, its layer, and every layer's spread."""
    worst = max(ranges, key=lambda r: r["spread"])
    return {
        "max_spread": worst["spread"],
        "max_spread_layer": worst["layer"],
        "spread_per_layer": {r["layer"]: r["spread"] for r in ranges},
    }


def report_markdown(report: dict) -> str:
    """``report.md``: the report's numbers as Markdown tables, stage by stage."""
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
