"""README's "What it reproduces" block, written from recorded numbers only.

Two sources, both committed: ``benchmarks/results.json`` (a ``python -m benchmarks --record`` run; its
machine is named in the text) and the quick pipeline run shipped with qlearn (``qlearn/shipped``; the
same on every machine, so the notebook a learner opens prints these very numbers). The block sits
between two HTML comments in README.md; ``--record`` rewrites it, ``python -m benchmarks.readme``
rewrites it from the files as they are, and tests/test_claims.py checks that README.md holds exactly
what ``render`` makes of the committed files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["render", "block", "update", "shipped_quick_report", "START", "END"]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results.json"
START = "<!-- headlines:start (written by python -m benchmarks.readme from benchmarks/results.json and qlearn/shipped) -->"
END = "<!-- headlines:end -->"


def shipped_quick_report() -> dict:
    """report.json of the shipped quick pipeline run (mobilenet_v2, seed 0)."""
    from qlearn.shipped import manifest, shipped_file

    names = [f for f in manifest()["files"] if f.startswith("pipeline/") and f.endswith("/report.json")]
    if len(names) != 1:
        raise ValueError(f"expected one shipped quick run, found {names}")
    return json.loads(shipped_file(names[0]).read_text())


def _machine(m: dict) -> str:
    simd = set(m.get("simd") or [])
    kind = ("AVX-512 VNNI" + (", AMX" if "amx_int8" in simd else "")) if "avx512_vnni" in simd else "AVX2 only, no VNNI"
    return (f"{m['cpu_model']} ({kind}), {m.get('logical_cpus', '?')} cores, "
            f"PyTorch {m['versions']['torch'].split('+')[0]}, {m['date'][:10]}")


def render(results: dict, report: dict) -> str:
    """The Markdown bullet list (no markers) for these benchmark results and this shipped quick run."""
    h, m = results["headlines"], results["machine"]
    threads = results.get("threads", 1)
    f, ptq, qat, ig = report["float_acc"], report["ptq"], report["qat"], report["integer"]
    n = report["n_test"]
    lines: list[str] = [
        f"Timings and the full pipeline runs are from [`benchmarks/RESULTS.md`](benchmarks/RESULTS.md), measured on the "
        f"benchmark machine: {_machine(m)}, {threads} thread{'s' if threads != 1 else ''}. Your machine's times will "
        "differ; the ratios are measured within one run. The quick-run numbers come from the run shipped with qlearn, "
        "which notebook 09 prints on every machine.",
        "",
    ]
    ig_pts = h.get("integer_minus_float_accuracy_points", {})
    if ig_pts:
        parts = ", ".join(f"{k.replace('mobilenet_', 'MobileNet ')} {v:+.2f}" for k, v in sorted(ig_pts.items()))
        lines.append(f"- **int8 is as accurate as float.** The 8-bit QAT models of the full pipeline runs (digits, 32×32, "
                     f"seed 0) score, on qlearn's integer-only engine, within a fraction of a point of float ({parts} "
                     f"points). In the shipped quick run (MobileNet v2, {n} test images) the integer engine scores "
                     f"{100 * ig['acc']:.1f} % against {100 * f:.1f} % float and agrees with the fake-quant model on the "
                     f"top-1 class of {100 * ig['top1_agreement_with_fake_quant']:.1f} % of the images.")
    if "int8_vs_float_latency_speedup_geomean" in h:
        lo, hi = h["int8_vs_float_latency_speedup_range"]
        b256 = [e["batch_256"]["torch int8"] for e in h.get("engine_speedup_vs_torch_float", {}).values()]
        engine = h.get("int8_engine")
        how = ("chosen by `qlearn.torch_int8` so that it computes what qlearn's engine computes" if engine else
               "recorded before `qlearn.torch_int8` chose the engine from the integers; see benchmarks/RESULTS.md")
        extra = f" and **{min(b256):.1f}–{max(b256):.1f}×** at batch 256" if b256 else ""
        lines.append(f"- **int8 is faster on a real int8 runtime**: the QAT integers deployed on PyTorch's `{engine or 'x86'}` "
                     f"int8 engine ({how}) run "
                     f"**{h['int8_vs_float_latency_speedup_geomean']:.2f}×** as fast as fused float at batch 1 (geometric "
                     f"mean over widths and input sizes, {lo:.2f}–{hi:.2f}×){extra}"
                     + (f"; exported to ONNX Runtime (`qlearn.onnx_export`), the same integers run "
                        f"**{h['onnx_vs_float_latency_speedup_geomean']:.2f}×** as fast as float at batch 1"
                        if "onnx_vs_float_latency_speedup_geomean" in h else "")
                     + ". qlearn's own numpy engine is written to be read, not to be fast.")
    pt4, pc4 = ptq["per_tensor_minmax"]["4"], ptq["per_channel_minmax"]["4"]
    wr = report["weight_ranges"]
    lines.append(f"- **Per-channel matters where ranges differ.** After BN folding the channel ranges of the quick run's "
                 f"`{wr['max_spread_layer']}` differ {wr['max_spread']:.1f}×; at 4 weight bits per-tensor PTQ falls to "
                 f"{100 * pt4:.1f} % (float {100 * f:.1f} %) while per-channel keeps {100 * pc4:.1f} % and 4-bit QAT "
                 f"{100 * qat['4']:.1f} %. At 8 bits nothing is lost either way (notebooks 03, 06 and 09).")
    ratio = h.get("qlearn_qat8_flow_vs_pytorch_time_ratio")
    if ratio:
        lines.append(f"- **The flow costs about what PyTorch's costs**: qlearn's 8-bit QAT (prepare, train, convert, "
                     f"evaluate) takes **{min(ratio.values()):.2f}–{max(ratio.values()):.2f}×** the time of PyTorch's eager "
                     "`torch.ao.quantization` flow on the same model and data.")
    if "slider_median_ms_typical" in h:
        nb = ""
        if "notebooks_total_seconds" in h:
            nb = (f" The ten lesson notebooks ran in {h['notebooks_total_seconds']:.0f} s together on a first visit"
                  + (f" and {h['notebooks_total_warm_seconds']:.0f} s on a second" if "notebooks_total_warm_seconds" in h
                     else "") + ".")
        lines.append(f"- **Sliders answer quickly**: median {h['slider_median_ms_typical']:.0f} ms from a slider change to a "
                     f"redrawn figure (kernel side); p95 {h['slider_p95_ms_worst']:.0f} ms in the slowest explorer.{nb}")
    return "\n".join(lines)


def block(readme_text: str) -> str:
    """The text between the markers in README.md."""
    try:
        start = readme_text.index(START) + len(START)
        end = readme_text.index(END, start)
    except ValueError:
        raise ValueError(f"README.md has no headline block ({START!r} ... {END!r})") from None
    return readme_text[start:end].strip("\n")


def update(readme: Path = README, results_path: Path = RESULTS) -> bool:
    """Rewrite the block from the committed files; True if README.md changed."""
    text = readme.read_text()
    new = render(json.loads(results_path.read_text()), shipped_quick_report())
    old = block(text)
    if old == new:
        return False
    start = text.index(START) + len(START)
    end = text.index(END, start)
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(text[:start] + "\n" + new + "\n" + text[end:])
    tmp.replace(readme)
    return True


def main(argv: list[str] | None = None) -> int:
    changed = update()
    print(f"README.md headline block {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

