"""Deployment paths side by side: float vs qnnpack int8 vs x86 int8, one MobileNet, batch 1 and 256.

``python -m benchmarks.bench_engines [--arch mobilenet_v1] [--width 0.5] [--size 32] [--out DIR]``

A small, targeted measurement (a minute or two on one thread), not part of the full suite. The model is
a seeded, *untrained* MobileNet calibrated by post-training quantization on digits: latency does not
depend on what the weights learned, and the integers have the shapes and ranges a deployed model has.
Three deployments of qlearn's integers are timed against the fused float model:

* ``qnnpack (8/8, auto)``   8-bit activations and weights: ``to_torch_int8(engine="auto")`` picks qnnpack,
                            whose sums are exact on every CPU;
* ``x86 (8/8, forced)``     the same integers on x86 (``Int16SaturationWarning``: on CPUs without VNNI,
                            and in depthwise layers with > 100 channels on all, pair sums saturate);
* ``x86 (7-bit act, auto)`` calibrated with 7-bit activations (``QATConfig(act_bits=7)``): no pair can
                            leave int16, so "auto" picks x86.

Each row records the engine, the reason and how closely the deployment follows qlearn's integer engine
(max |diff| and identical output codes) on the same input codes. Results go to DIR (default
runs/benchmarks/) as engines.json and engines.md; nothing committed is touched.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(arch: str = "mobilenet_v1", width: float = 0.5, size: int = 32, *, batches: tuple[int, ...] = (1, 256),
        repeats: tuple[int, int] = (60, 6), seed: int = 0) -> dict:
    from benchmarks.common import machine
    from qlearn.agreement import code_agreement
    from qlearn.bn_fold import fuse_model
    from qlearn.convert import convert, quantize_input
    from qlearn.data import load_digits_data
    from qlearn.models import MODELS
    from qlearn.ptq import post_training_quantize
    from qlearn.qat_layers import QATConfig
    from qlearn.timing import interleaved
    from qlearn.torch_int8 import Int16SaturationWarning, to_torch_int8
    from qlearn.train import seed_everything

    data = load_digits_data(size, seed=seed)
    seed_everything(seed)
    model = MODELS[arch](data.num_classes, width=width, input_size=size, in_channels=data.in_channels).eval()
    fused = fuse_model(model).eval()
    integers = {}
    for bits in (8, 7):
        ptq = post_training_quantize(model, data.x_train, QATConfig(act_bits=bits), num_batches=4)
        integers[bits] = (ptq, convert(ptq))
    rows = []
    for n in batches:
        x = data.x_test.repeat(-(-n // data.x_test.shape[0]), 1, 1, 1)[:n].contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Int16SaturationWarning)  # the forced x86 row is the point
            deployed = {
                "qnnpack (8/8, auto)": to_torch_int8(integers[8][1], "auto"),
                "x86 (8/8, forced)": to_torch_int8(integers[8][1], "x86"),
                "x86 (7-bit act, auto)": to_torch_int8(integers[7][1], "auto"),
            }
        fns = {"float (fused)": lambda x=x: fused(x)}
        fns.update({name: (lambda m=m, x=x: m(x)) for name, m in deployed.items()})
        with torch.no_grad():
            for fn in fns.values():  # first call with this shape (oneDNN keeps its first primitive)
                fn()
            times = interleaved(fns, repeats=repeats[0] if n == 1 else repeats[1], rounds=3, warmup=1)
            lat = {name: t.to_dict() for name, t in times.items()}
        base = lat["float (fused)"]["median_ms"]
        for name, r in lat.items():
            row = {"batch": n, "path": name, **r, "speedup_vs_float": base / r["median_ms"]}
            if name in deployed:
                m = deployed[name]
                bits = 7 if "7-bit" in name else 8
                ptq, im = integers[bits]
                x_q = quantize_input(ptq, data.x_test[:128])
                ag = code_agreement(im.run(x_q), m.run_codes(x_q))
                row.update(engine=m.engine, engine_reason=m.engine_reason, max_lsb_vs_qlearn=ag.max_lsb_diff,
                           identical_codes_vs_qlearn=ag.exact_output_fraction)
            rows.append(row)
    return {"arch": arch, "width": width, "input_size": size, "threads": torch.get_num_threads(),
            "machine": machine(), "rows": rows}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"{res['arch']} width {res['width']:g}, input {res['input_size']}, {res['threads']} thread(s); "
             f"{m['cpu_model']} ({', '.join(k for k, v in m['int8_features'].items() if v) or 'no int8 features'}), "
             f"load average at start {', '.join(f'{v:.2f}' for v in m['load_average_at_start'])}, {m['date']}.", "",
             "| batch | path | engine | median ms | p95 ms | vs float | max LSB vs qlearn | identical codes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lsb = r.get("max_lsb_vs_qlearn")
        same = r.get("identical_codes_vs_qlearn")
        lines.append(f"| {r['batch']} | {r['path']} | {r.get('engine', 'float')} | {r['median_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {r['speedup_vs_float']:.2f}x | {'-' if lsb is None else lsb} | "
                     f"{'-' if same is None else f'{100 * same:.1f} %'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_engines", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mobilenet_v1", choices=("mobilenet_v1", "mobilenet_v2"))
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks"), metavar="DIR")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.backends.quantized.engine = "x86"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    res = run(a.arch, a.width, a.size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(res)
    (out / "engines.md").write_text(md)
    print(md)
    print(f"wrote {out / 'engines.json'} and {out / 'engines.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
