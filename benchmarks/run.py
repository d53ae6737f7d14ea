"""The benchmark suite's entry point: ``python -m benchmarks [--quick] [--out DIR | --record]``.

Runs every section, each a median over repeats after warm-up with its baseline measured in the
same run, and writes

    DIR/results.json   every number, plus the machine (CPU model, cores, RAM from /proc), versions, date
    DIR/RESULTS.md     the same as tables, headline ratios first
    figure             latency vs accuracy (the paper's Figure 4.1 on this CPU)

Where: ``--out DIR`` writes everything to DIR. Without it a run writes to runs/benchmarks/ (git-ignored;
the path is printed), so a quick or local run never touches the committed record. Only ``--record`` (a
full run: not with ``--quick`` or ``--only``) replaces the committed benchmarks/RESULTS.md,
benchmarks/results.json and figures/latency_vs_accuracy.png. Sections (``--only`` picks some):

    sliders     slider response of every explorer in qlearn.widgets        (bench_sliders)
    notebooks   execution time of every lesson notebook                    (bench_notebooks)
    pipeline    qlearn's pipeline per stage; its QAT flow vs PyTorch's      (bench_pipeline)
    engine      qlearn integer vs torch float vs torch int8, batch 1 / 256  (bench_engine; needs pipeline)
    latency     latency vs accuracy, float vs 8-bit on PyTorch int8 and     (bench_latency_accuracy)
                ONNX Runtime
    onnx        ONNX Runtime vs torch int8 vs float, batch 1 / 256          (bench_onnx)
    imagenet    EfficientNet-Lite0 at 224x224: qlearn engine images/s, int8   (bench_imagenet)
                vs float latency
    grading     a class batch with attacks, sandboxed vs not                (bench_grading)
    distributed the folder pipeline on 1 and 2 processes (torchrun, gloo)   (bench_distributed)

The int8 deployments use ``qlearn.torch_int8.to_torch_int8(engine="auto")``; each records the engine it
ran on and why, and the machine record lists the CPU's int8 features (avx2 / avx512_vnni / avx_vnni /
amx_int8), which decide whether PyTorch's x86 kernels add products in saturating int16 pairs.

``--quick`` runs every section small (a smoke run of a minute or two, used by the test suite).
Torch and BLAS run on ``--threads`` threads (default 1: steady numbers on a shared machine, and the
paper's single-core setting).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("sliders", "notebooks", "pipeline", "engine", "latency", "onnx", "imagenet", "grading", "distributed")
RESULTS_FORMAT = "qlearn-benchmarks-v1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every section small: a smoke run (tests use it)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write results.json, RESULTS.md and the figure here (default: runs/benchmarks/)")
    p.add_argument("--record", action="store_true",
                   help="a full run that replaces the committed benchmarks/RESULTS.md, results.json and "
                        "figures/latency_vs_accuracy.png")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="run only these sections")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, metavar="DIR",
                   help="keep trained models and pipeline runs here (default: a temporary folder, deleted)")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be >= 1")
    if a.record and (a.quick or a.only or a.out):
        p.error("--record replaces the committed results with a full run: it cannot be combined with --quick, "
                "--only or --out")
    return a


def destinations(args: argparse.Namespace) -> tuple[Path, Path]:
    """(folder for results.json and RESULTS.md, path of the figure) for these arguments."""
    if args.record:
        return ROOT / "benchmarks", ROOT / "figures" / "latency_vs_accuracy.png"
    out = Path(args.out) if args.out else ROOT / "runs" / "benchmarks"
    return out, out / "latency_vs_accuracy.png"


# ----------------------------------------------------------------------------------- headlines
def _geomean(values: list[float]) -> float:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def headlines(results: dict) -> dict[str, Any]:
    """The four numbers the README quotes, computed from the sections that ran."""
    s = results["sections"]
    h: dict[str, Any] = {}
    lat = s.get("latency", {}).get("result")
    if lat:
        pts = lat["points"]
        h["int8_vs_float_latency_speedup_geomean"] = _geomean([p["speedup"] for p in pts])
        h["int8_vs_float_latency_speedup_range"] = [min(p["speedup"] for p in pts), max(p["speedup"] for p in pts)]
        h["int8_engine"] = lat.get("engine", "x86")
        if all("onnx_ms" in p for p in pts):
            h["onnx_vs_float_latency_speedup_geomean"] = _geomean([p["float_ms"] / p["onnx_ms"] for p in pts])
        h["int8_minus_float_accuracy_points_mean"] = float(np.mean([100 * (p["int8_acc"] - p["float_acc"]) for p in pts]))
        h["int8_top1_agreement_with_qlearn_min"] = min(p["agreement_vs_qlearn"]["top1_agreement"] for p in pts)
        h["int8_exact_codes_with_qlearn_mean"] = float(np.mean([p["agreement_vs_qlearn"]["exact_output_fraction"] for p in pts]))
    pipe = s.get("pipeline", {}).get("result")
    if pipe:
        h["integer_minus_float_accuracy_points"] = {
            m: 100 * (r["accuracy"]["integer_engine"] - r["accuracy"]["float"]) for m, r in pipe["models"].items()}
        h["qlearn_qat8_flow_vs_pytorch_time_ratio"] = {
            m: r["qat8_flow_vs_pytorch"]["time_ratio_qlearn_vs_pytorch"] for m, r in pipe["models"].items()}
    eng = s.get("engine", {}).get("result")
    if eng:
        h["engine_speedup_vs_torch_float"] = {
            m: {b: {k: rows[b][k]["speedup_vs_torch_float"] for k in ("qlearn integer", "torch int8")} for b in rows}
            for m, rows in eng["models"].items()}
    sl = s.get("sliders", {}).get("result")
    if sl:
        h["slider_p95_ms_worst"] = sl["worst_p95_ms"]
        h["slider_p95_ms_worst_explorer"] = sl["worst_explorer"]
        h["slider_median_ms_typical"] = sl["median_of_medians_ms"]
    nb = s.get("notebooks", {}).get("result")
    if nb:
        h["notebooks_total_seconds"] = nb["total_seconds"]
        if "total_warm_seconds" in nb:
            h["notebooks_total_warm_seconds"] = nb["total_warm_seconds"]
    return h


# ----------------------------------------------------------------------------------- markdown

def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.{nd}f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _features(m: dict) -> str:
    f = m.get("int8_features")
    if not f:
        return "not recorded"
    have = [k for k, v in f.items() if v]
    note = ("PyTorch's x86 int8 kernels use exact VNNI dot products (depthwise convs with > 100 channels excepted)"
            if f.get("avx512_vnni") else "no avx512_vnni: PyTorch's x86 int8 kernels add uint8 x int8 products in "
            "saturating int16 pairs (qlearn.saturation)")
    return f"{', '.join(have) or 'none of avx2 / avx512_vnni / avx_vnni / amx_int8'} ({note})"


def _deployment(reasons: dict[str, str]) -> list[str]:
    """One line per distinct (engine, reason) of the int8 deployments in a section."""
    return [f"- {who}: {reason}" for who, reason in reasons.items()]


def markdown(results: dict) -> str:
    m, h, s = results["machine"], results["headlines"], results["sections"]
    v = m["versions"]
    lines = [
        "# qlearn benchmarks" + (" (quick mode: smoke-run numbers, not results)" if results["quick"] else ""),
        "",
        f"Generated by `python -m benchmarks{' --quick' if results['quick'] else ''}"
        f"{' --record' if results.get('recorded') else ''}` on {m['date']} "
        f"in {results['total_seconds']:.0f} s.",
        "",
        f"**Machine**: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m['ram_gib']} GiB RAM, SIMD {', '.join(m['simd']) or 'none'}; {m['os']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. Torch and BLAS threads: {results['threads']}.",
        f"**int8 features**: {_features(m)}.",
        f"**Versions**: Python {v['python']}, numpy {v['numpy']}, torch {v['torch']}, "
        f"matplotlib {v['matplotlib']}, ipywidgets {v['ipywidgets']}, nbclient {v['nbclient']}, "
        f"scikit-learn {v['sklearn']}.",
        "",
        "## Headline ratios",
        "",
    ]
    if "int8_vs_float_latency_speedup_geomean" in h:
        lo, hi = h["int8_vs_float_latency_speedup_range"]
        lines.append(f"- **int8 vs float latency** (MobileNet v1, batch 1, PyTorch {h.get('int8_engine', 'x86')} int8 fed "
                     f"qlearn's QAT integers): "
                     f"{h['int8_vs_float_latency_speedup_geomean']:.2f}x faster (geometric mean; {lo:.2f}x to {hi:.2f}x "
                     f"over widths and input sizes).")
        lines.append(f"- **8-bit accuracy vs float** (same models): {h['int8_minus_float_accuracy_points_mean']:+.2f} "
                     f"points on average; the int8 deployment agrees with qlearn's integer engine on the top-1 class "
                     f"for >= {_pct(h['int8_top1_agreement_with_qlearn_min'])} % of images "
                     f"({_pct(h['int8_exact_codes_with_qlearn_mean'])} % identical output codes on average).")
    if "integer_minus_float_accuracy_points" in h:
        parts = ", ".join(f"{k} {d:+.2f}" for k, d in h["integer_minus_float_accuracy_points"].items())
        lines.append(f"- **Integer-engine accuracy vs float** (the pipeline's 8-bit QAT models, points): {parts}.")
        parts = ", ".join(f"{k} {r:.2f}x" for k, r in h["qlearn_qat8_flow_vs_pytorch_time_ratio"].items())
        lines.append(f"- **Pipeline time vs PyTorch's eager flow** (8-bit QAT prepare + train + convert + evaluate, "
                     f"qlearn / PyTorch; > 1 = qlearn slower): {parts}.")
    if "engine_speedup_vs_torch_float" in h:
        for model, rows in h["engine_speedup_vs_torch_float"].items():
            parts = "; ".join(f"{b.replace('_', ' ')}: torch int8 {r['torch int8']:.2f}x, qlearn integer "
                              f"{r['qlearn integer']:.3f}x" for b, r in rows.items())
            lines.append(f"- **Speed vs torch float** ({model}): {parts}.")
    if "slider_p95_ms_worst" in h:
        lines.append(f"- **Slider response**: p95 {h['slider_p95_ms_worst']:.0f} ms in the slowest explorer "
                     f"(`{h['slider_p95_ms_worst_explorer']}`); median change {h['slider_median_ms_typical']:.0f} ms "
                     "(median over explorers).")
    if "notebooks_total_seconds" in h:
        warm = h.get("notebooks_total_warm_seconds")
        lines.append(f"- **Notebook suite**: {h['notebooks_total_seconds']:.0f} s for the executed lesson notebooks "
                     "with an empty cache" + (f", {warm:.0f} s run again with the cache warm." if warm is not None else "."))
    errors = {k: r["error"] for k, r in s.items() if r.get("error")}
    if errors:
        lines += ["", "**Sections that failed**: " + "; ".join(f"{k}: {e.splitlines()[-1]}" for k, e in errors.items())]

    sl = s.get("sliders", {}).get("result")
    if sl:
        lines += ["", "## Slider response", "",
                  f"Time from `control.value = v` to a redrawn figure (the explorer redraws synchronously), "
                  f"{sl['values_per_control']} values per control plus the way back; explorers that take data get "
                  f"{sl['data_size']:,} values. Lesson model ({sl['lesson_model']}) trained in "
                  f"{_f(sl['lesson_model_seconds'])} s.", "",
                  "| explorer | changes | median ms | p95 ms | max ms | build s | slowest control | "
                  "median / p95 ms, one draw per change |",
                  "|---|---|---|---|---|---|---|---|"]
        ab = [r for r in sl["explorers"] if "median_ms_one_draw" in r]
        if not ab:  # the explorers already draw once per change: drop the diagnosis column
            lines[-2:] = ["| explorer | changes | median ms | p95 ms | max ms | build s | slowest control |",
                          "|---|---|---|---|---|---|---|"]
        for r in sl["explorers"]:
            if "error" in r:
                lines.append(f"| {r['explorer']} | error: {r['error']} | | | | | | |")
            else:
                one = (f"{r['median_ms_one_draw']:.0f} / {r['p95_ms_one_draw']:.0f}" if "median_ms_one_draw" in r else "-")
                lines.append(f"| {r['explorer']} | {r['changes']} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | "
                             f"{r['max_ms']:.0f} | {r['build_s']:.1f} | {r['slowest_control']} |" + (f" {one} |" if ab else ""))
        if not ab:
            lines += ["", "Nearly all of a change is the Agg draw of the figure, not the numbers. `Explorer.update` lays "
                      "the axes out once and then removes the layout engine (`fig.set_layout_engine(None)`), so each "
                      "change draws the figure once; with `set_layout_engine(\"none\")`, as before, matplotlib >= 3.6 "
                      "kept a placeholder engine and `savefig` drew every figure twice (median change 133 ms -> 100 ms "
                      "when this was found, 2026-11-25)."]
        else:
            before = float(np.median([r["median_ms"] for r in ab]))
            after = float(np.median([r["median_ms_one_draw"] for r in ab]))
            lines += ["", f"**Why sliders lag**: nearly all of a change is the Agg draw of the figure, not the numbers "
                      f"(`last_render_seconds` = the whole change). `qlearn/widgets/base.py` `Explorer.update` freezes the "
                      f"layout with `fig.set_layout_engine(\"none\")`, which in matplotlib >= 3.6 leaves a "
                      f"`PlaceHolderLayoutEngine` on the figure, and `savefig` draws any figure that has a layout "
                      f"engine twice (once to lay out, once to print). The last column repeats each sweep after "
                      f"`fig.set_layout_engine(None)`: median change {before:.0f} ms -> {after:.0f} ms."]
    nb = s.get("notebooks", {}).get("result")
    if nb:
        lines += ["", "## Notebook suite", "",
                  "Each lesson notebook in a fresh kernel (nbclient), kernel start included: cold (empty qlearn cache, "
                  "a first visit) and warm (run again with that cache).", "",
                  "| notebook | cold s | warm s | kernel start s | code cells | slowest cell (cold) |", "|---|---|---|---|---|---|"]
        for r in nb["notebooks"]:
            slow = r["slowest_cells"][0] if r["slowest_cells"] else None
            cell = f"{slow['seconds']:.1f} s: `{slow['starts']}`" if slow else "-"
            err = f" (error: {r['error']})" if r["error"] else ""
            lines.append(f"| {r['notebook']}{err} | {r['seconds']:.1f} | {_f(r.get('warm_seconds'))} | "
                         f"{_f(r['kernel_start_s'])} | {r['code_cells']} | {cell} |")
        lines.append(f"| **total** | **{nb['total_seconds']:.1f}** | **{_f(nb.get('total_warm_seconds'))}** | | | |")
        if nb["skipped"]:
            lines.append(f"\nNot executed in this mode: {', '.join(nb['skipped'])}.")
    pipe = s.get("pipeline", {}).get("result")
    if pipe:
        lines += ["", "## Pipeline", "", f"`qlearn.pipeline.run_pipeline` ({pipe['preset']} preset), wall seconds per stage:", ""]
        models = list(pipe["models"])
        stages = list(next(iter(pipe["models"].values()))["pipeline_seconds"])
        lines += ["| stage | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for st in stages:
            lines.append(f"| {st} | " + " | ".join(_f(pipe["models"][mm]["pipeline_seconds"].get(st)) for mm in models) + " |")
        lines += ["", "Accuracy (%): float, best 8-bit PTQ, QAT, integer engine:", "",
                  "| model | float | PTQ 8-bit (best) | QAT 8-bit | QAT 4-bit | integer engine | integer = fake-quant top-1 |",
                  "|---|---|---|---|---|---|---|"]
        for mm, r in pipe["models"].items():
            a = r["accuracy"]
            best = max(x for x in a["ptq_8bit"].values() if x is not None)
            lines.append(f"| {mm} | {_pct(a['float'])} | {_pct(best)} | {_pct(a['qat'].get('8'))} | {_pct(a['qat'].get('4'))} "
                         f"| {_pct(a['integer_engine'])} | {_pct(a['integer_top1_agreement_with_fake_quant'])} |")
        lines += ["", "8-bit QAT from the same float checkpoint, same data, epochs, lr, schedule, seed and BN-freeze "
                  "step: qlearn vs PyTorch's eager flow (fuse_modules_qat, prepare_qat with the x86 qconfig, train, "
                  "convert, x86 int8). Seconds per step and accuracy (%):", "",
                  "| model | flow | prepare | train | convert | evaluate | total | fake-quant acc | integer acc |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for mm, r in pipe["models"].items():
            fl = r["qat8_flow_vs_pytorch"]
            acc = fl["accuracy"]
            for who, fq, ia in (("qlearn", acc["qlearn_qat_fake_quant"], acc["qlearn_integer_engine"]),
                                ("pytorch", acc["pytorch_qat_fake_quant"], acc["pytorch_int8_x86"])):
                sec = fl["seconds"][who]
                lines.append(f"| {mm} | {who} | {sec['prepare']:.2f} | {sec['train']:.2f} | {sec['convert']:.2f} | "
                             f"{sec['evaluate']:.2f} | {sec['total']:.2f} | {_pct(fq)} | {_pct(ia)} |")
        lines += ["", "qlearn evaluates on its numpy integer engine; PyTorch on its x86 int8 kernels. PyTorch's x86 "
                  "qconfig uses 7-bit activations (reduce_range) and [-128, 127] weights; qlearn the paper's uint8 "
                  "activations and [-127, 127] weights."]
    eng = s.get("engine", {}).get("result")
    if eng:
        lines += ["", "## Integer engine", "",
                  "The pipeline's 8-bit QAT network, float images in, logits out; median ms per call, images/s, and "
                  "speed relative to torch float (eval, BN folded) in the same run. torch int8 ran on:", ""]
        lines += _deployment({m: f"**{d['engine']}** ({d['reason']})" for m, d in eng.get("deployment", {}).items()})
        lines += ["",
                  "| model | batch | contender | median ms | p95 ms | images/s | vs torch float |", "|---|---|---|---|---|---|---|"]
        for mm, rows in eng["models"].items():
            for b, row in rows.items():
                for who, r in row.items():
                    lines.append(f"| {mm} | {b.split('_')[1]} | {who} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | "
                                 f"{r['images_per_s']:.0f} | {r['speedup_vs_torch_float']:.3f}x |")
        if eng.get("layers"):
            lines += ["", "Single layers (benchmarks/bench_integer.py shapes): ms per call.", "",
                      "| layer | qlearn | torch float | torch int8 | qlearn / float | exact codes vs torch int8 (7-bit input) |",
                      "|---|---|---|---|---|---|"]
            for r in eng["layers"]:
                lines.append(f"| {r['name']} | {r['ms_qlearn']:.2f} | {r['ms_torch_float']:.3f} | {r['ms_torch_int8']:.3f} | "
                             f"{r['ratio_vs_torch_float']:.0f}x | {_pct(r['exact_fraction_vs_torch_int8_7bit_input'])} % |")
    lat = s.get("latency", {}).get("result")
    if lat:
        st = lat["settings"]
        lines += ["", "## Latency vs accuracy (the paper's Figure 4.1 on this CPU)", "",
                  f"{st['arch']} on digits, float {st['float_epochs']} epochs then qlearn 8-bit QAT {st['qat_epochs']} "
                  f"epochs; the QAT integers deployed on PyTorch's {lat.get('engine', 'x86')} int8 engine "
                  f"(qlearn.torch_int8.to_torch_int8, engine 'auto': "
                  f"{'; '.join(sorted({p.get('engine_reason', 'x86: recorded before the engine was chosen') for p in lat['points']}))}). "
                  f"Batch 1, {lat['threads']} thread(s), float and int8 timed in alternating rounds. Figure: "
                  f"`{results['figure']}`.", "",
                  "| width | input | float acc | int8 acc | float ms | int8 ms | speed-up | top-1 = qlearn engine | "
                  "identical codes | per-layer identical (min) | ONNX Runtime ms | ONNX acc |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in lat["points"]:
            ag = p["agreement_vs_qlearn"]
            onnx = (f"{p['onnx_ms']:.3f} | {_pct(p['onnx_acc'])}" if "onnx_ms" in p else "- | -")
            lines.append(f"| {p['width']:g} | {p['input_size']} | {_pct(p['float_acc'])} | {_pct(p['int8_acc'])} | "
                         f"{p['float_ms']:.3f} | {p['int8_ms']:.3f} | {p['speedup']:.2f}x | {_pct(ag['top1_agreement'])} % | "
                         f"{_pct(ag['exact_output_fraction'])} % | {_pct(p['per_layer_exact_min'])} % | {onnx} |")
        lines += ["", "Identical codes: the deployed model's uint8 logits vs qlearn's integer engine on the same uint8 "
                  "input. Per layer, each PyTorch layer is fed qlearn's codes of its input: differences there are single "
                  "1-LSB roundings (PyTorch requantizes with a float multiplier, qlearn with the fixed-point M0, shift; "
                  "PyTorch's average pool rounds ties differently), which then compound through the network."]
    ox = s.get("onnx", {}).get("result")
    if ox:
        lines += ["", "## ONNX Runtime vs PyTorch int8 vs float (benchmarks/bench_onnx.py)", "",
                  f"ONNX Runtime {ox['onnxruntime']}, one thread for every runtime. The same integers on three engines: "
                  "qlearn's converted 8-bit QAT model exported with `qlearn.onnx_export` (uint8 weights: exact U8U8 "
                  "kernels on every x86 CPU; integer pool, Eq. 35) and run by ONNX Runtime on uint8 codes; handed to "
                  "PyTorch's int8 kernels by `qlearn.torch_int8.to_torch_int8` (engine \"auto\"); and the BN-fused float "
                  "model. Median ms of interleaved rounds.", "",
                  "| model | batch | ONNX Runtime int8 ms | ONNX fixed-point (bit-exact) ms | torch int8 ms (engine) | "
                  "torch float ms | ONNX vs float | ONNX vs torch int8 |", "|---|---|---|---|---|---|---|---|"]
        for p in ox["points"]:
            for b, v in p["latency"].items():
                o, x, t, f = (v[k]["median_ms"] for k in ("onnxruntime_int8", "onnxruntime_int8_fixedpoint",
                                                           "torch_int8", "torch_float"))
                lines.append(f"| {p['model']} | {b} | {o:.3f} | {x:.3f} | {t:.3f} ({v['engine_torch']}) | {f:.3f} | "
                             f"{f / o:.1f}x | {t / o:.1f}x |")
        lines += ["", "Agreement with qlearn's integer engine on the same uint8 input codes (Eq. 69):", "",
                  "| model | engine | identical output codes | max LSB | top-1 = qlearn |", "|---|---|---|---|---|"]
        for p in ox["points"]:
            for label, key in (("ONNX Runtime (QLinear ops)", "agreement_onnx_vs_qlearn"),
                               ("ONNX Runtime (fixed-point graph)", "agreement_onnx_fixedpoint_vs_qlearn"),
                               ("torch int8", "agreement_torch_vs_qlearn")):
                a = p[key]
                lines.append(f"| {p['model']} | {label} | {_pct(a['exact_output_fraction'])} % | {a['max_lsb_diff']} | "
                             f"{_pct(a['top1_agreement'])} % |")
    im = s.get("imagenet", {}).get("result")
    if im:
        from benchmarks.bench_imagenet import markdown as imagenet_markdown

        lines += ["", "## A real ImageNet network: EfficientNet-Lite0 at 224x224 (benchmarks/bench_imagenet.py)", "",
                  imagenet_markdown(im).rstrip()]
    dd = s.get("distributed", {}).get("result")
    if dd:
        lines += ["", "## Many processes: torchrun + DDP (benchmarks/bench_distributed.py)", "",
                  "The quick pipeline on a generated image folder (`--dataset folder`), the same global batch on 1 and "
                  "2 processes (gloo). Images per second of each training stage, and the ratio 2 / 1:", "",
                  "| stage | 1 process | 2 processes | ratio |", "|---|---|---|---|"]
        one, two = (dd["processes"][k] for k in sorted(dd["processes"], key=int))
        for stage, ratio in dd["ratio_2_over_1"].items():
            a, b = one["images_per_s"].get(stage), two["images_per_s"].get(stage)
            lines.append(f"| {stage} | {_f(a, 0)} | {_f(b, 0)} | {_f(ratio, 2)} |")
        lines += ["", f"Integer model identical on every rank: {two['identical_integer_model_on_all_ranks']}. On a "
                  "2-core CPU two processes share the cores that one already uses; the ratio shows the cost of the "
                  "synchronisation, not a speed-up."]
    gr = s.get("grading", {}).get("result")
    if gr:
        lines += ["", "## Grading a class (python -m qlearn grade)", "",
                  f"Generated exercise submissions graded with {gr['jobs']} parallel jobs, {gr['examples']} generated "
                  "cases per task; sandboxed = each notebook in a bubblewrap sandbox (qlearn.grading.sandbox).", "",
                  "| batch | submissions | seconds | per submission | honest scores wrong | forged scores above 0 |",
                  "|---|---|---|---|---|---|"]
        for label in ("hostile_sandboxed", "honest_sandboxed", "honest_unsandboxed"):
            r = gr[label]
            lines.append(f"| {label.replace('_', ', ')} | {r['submissions']} | {r['seconds']:.1f} | "
                         f"{r['seconds_per_submission']:.2f} | {len(r['honest_scores_wrong'])} | "
                         f"{len(r['forged_scores_nonzero'])} |")
        lines += ["", f"Connections from inside accepted by the test listener: {gr['connections_accepted']}; "
                  f"processes left after the batches: {len(gr['processes_left'])}."]
    lines += ["", "## Section wall times", "", "| section | seconds |", "|---|---|"]
    lines += [f"| {k} | {r['seconds']:.1f} |" for k, r in s.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"  # PyTorch's own QAT flow (7-bit activations); qlearn's integers choose
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import (
        bench_distributed,
        bench_engine,
        bench_grading,
        bench_imagenet,
        bench_latency_accuracy,
        bench_notebooks,
        bench_onnx,
        bench_pipeline,
        bench_sliders,
    )
    from benchmarks.common import machine

    out, figure = destinations(args)
    out.mkdir(parents=True, exist_ok=True)
    print(f"benchmark results go to {out}" + ("" if args.record else " (not the committed record; --record replaces it)"))
    wanted = [s for s in SECTIONS if args.only is None or s in args.only]
    if "engine" in wanted and "pipeline" not in wanted:
        wanted.insert(wanted.index("engine"), "pipeline")  # the engine times the pipeline's models
    results: dict[str, Any] = {"format": RESULTS_FORMAT, "quick": bool(args.quick), "recorded": bool(args.record),
                               "seed": args.seed,
                               "threads": args.threads, "machine": machine(), "sections": {},
                               "figure": None}
    start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="qlearn-bench-") if args.work is None else None
    work = Path(args.work) if args.work else Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    artifacts: dict = {}
    try:
        for name in tqdm(wanted, desc="benchmarks"):
            t0 = time.perf_counter()
            entry: dict[str, Any] = {"result": None, "error": None}
            try:
                if name == "sliders":
                    entry["result"] = bench_sliders.run(work, quick=args.quick, seed=args.seed)
                elif name == "notebooks":
                    entry["result"] = bench_notebooks.run(quick=args.quick)
                elif name == "pipeline":
                    entry["result"], artifacts = bench_pipeline.run(work, quick=args.quick, seed=args.seed)
                elif name == "engine":
                    if not artifacts:
                        raise RuntimeError("the pipeline section failed, so there are no models to time")
                    entry["result"] = bench_engine.run(artifacts, quick=args.quick, seed=args.seed)
                elif name == "onnx":
                    entry["result"] = bench_onnx.run(quick=args.quick, seed=args.seed)
                elif name == "imagenet":
                    entry["result"] = (bench_imagenet.run(crops=2, repeats=3, engine_images=1) if args.quick
                                       else bench_imagenet.run())
                elif name == "distributed":
                    entry["result"] = bench_distributed.run(quick=args.quick)
                elif name == "grading":
                    entry["result"] = bench_grading.run(quick=args.quick)
                elif name == "latency":
                    entry["result"] = bench_latency_accuracy.run(quick=args.quick, seed=args.seed)
                    results["figure"] = str(bench_latency_accuracy.plot(entry["result"], figure))
            except Exception:  # keep going: one broken section must not hide the others' numbers
                entry["error"] = traceback.format_exc()
                print(f"benchmark section {name!r} failed:\n{entry['error']}", file=sys.stderr)
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            results["sections"][name] = entry
    finally:
        if tmp is not None:
            tmp.cleanup()
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    results["headlines"] = headlines(results)
    if results["figure"]:
        try:
            results["figure"] = str(Path(results["figure"]).resolve().relative_to(ROOT))
        except ValueError:
            pass
    (out / "results.json").write_text(json.dumps(_finite(results), indent=2, default=_json_default, allow_nan=False) + "\n")
    (out / "RESULTS.md").write_text(markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'}" + (f"; figure {results['figure']}" if results["figure"] else ""))
    if args.record:  # README's headline block quotes the record: rewrite it from the new numbers
        from benchmarks import readme

        print("README.md headline block " + ("rewritten" if readme.update() else "already up to date"))
    failed = [k for k, r in results["sections"].items() if r["error"]]
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _finite(o: Any) -> Any:
    """NaN and inf become null (JSON has no such numbers)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    return str(o)
