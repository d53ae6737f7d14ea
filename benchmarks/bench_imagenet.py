"""EfficientNet-Lite0 at 224 x 224: qlearn's integer engine, and int8 vs float deployed on PyTorch.

``python -m benchmarks.bench_imagenet [--crops 4] [--repeats 20] [--out DIR]``

The W8A8 per-channel PTQ model of ``qlearn.imagenet_ptq`` (dead channels zeroed, min/max ranges from 4
calibration crops) converted by ``qlearn.convert``, measured on one thread:

* qlearn's numpy integer engine: images per second at batch 1 (written to be read, not to be fast);
* the same integers on PyTorch's int8 kernels (``qlearn.torch_int8.to_torch_int8``, engine "auto") against
  the BN-fused float model, batch 1, median of interleaved rounds (``qlearn.timing.interleaved``).

``to_torch_int8`` deploys the five TF-"SAME" stride-2 layers as a quantized ``F.pad`` (which fills with the
zero point, Eq. 38) in front of an unpadded int8 conv, so the deployed codes can be compared with qlearn's
engine on the same input codes. Results go to DIR (default
runs/benchmarks/) as imagenet.json and imagenet.md; nothing committed is touched.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*, crops: int = 4, repeats: int = 20, engine_images: int = 2) -> dict:
    from benchmarks.common import machine
    from qlearn.agreement import code_agreement
    from qlearn.convert import convert, quantize_input
    from qlearn.efficientnet import efficientnet_lite0, fuse_efficientnet, preprocess
    from qlearn.equalization import folded_form, zero_dead_channels
    from qlearn.imagenet_ptq import ptq_variant
    from qlearn.photos import sample_crops
    from qlearn.threads import one_thread
    from qlearn.timing import Stopwatch, interleaved
    from qlearn.torch_int8 import to_torch_int8

    with one_thread():  # torch and BLAS: the engine, the int8 and the float model on one core each
        model = efficientnet_lite0()
        folded = folded_form(model)
        zero_dead_channels(folded)
        x = preprocess(sample_crops(crops, 224, seed=0)[0])
        calib = preprocess(sample_crops(4, 224, seed=1)[0])
        q = ptq_variant(folded, calib, 8, True, "minmax")
        imodel = convert(q)
        x_q = quantize_input(q, x)
        clock = Stopwatch()
        with clock.stage("engine"):
            ours = np.concatenate([imodel.run(x_q[i : i + 1]) for i in range(engine_images)])
        engine_s = clock.seconds["engine"] / engine_images
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            deployed = to_torch_int8(imodel, "auto")  # "same" padding: a zero-point pad first
            theirs = deployed.run_codes(x_q[:engine_images])
            fused = fuse_efficientnet(model).eval()
            x1 = x[:1].contiguous()
            with torch.no_grad():
                times = interleaved({"float": lambda: fused(x1), "int8": lambda: deployed(x1)}, repeats=repeats)
        lat = {name: t.to_dict() for name, t in times.items()}
        return dict(
            machine=machine(), crops=crops, engine_images=engine_images,
            engine_images_per_s=1.0 / engine_s, engine_s_per_image=engine_s,
            deployed_engine=deployed.engine, deployed_reason=deployed.engine_reason,
            deployed_vs_qlearn=code_agreement(ours, theirs).to_dict(),
            latency=lat, int8_speedup=lat["float"]["median_ms"] / lat["int8"]["median_ms"],
        )


def markdown(res: dict) -> str:
    lat, a = res["latency"], res["deployed_vs_qlearn"]
    return "\n".join([
        "| EfficientNet-Lite0, 224x224, batch 1, 1 thread | value |", "|---|---|",
        f"| qlearn integer engine (numpy) | {res['engine_images_per_s']:.2f} images/s ({1000 * res['engine_s_per_image']:.0f} ms/image) |",
        f"| torch float (BN fused), median | {lat['float']['median_ms']:.1f} ms |",
        f"| torch int8 ({res['deployed_engine']}, auto), median | {lat['int8']['median_ms']:.1f} ms |",
        f"| int8 vs float | {res['int8_speedup']:.2f}x |",
        f"| deployed vs qlearn codes ({a['n']} crops) | {100 * a['exact_output_fraction']:.1f} % identical, "
        f"max {a['max_lsb_diff']} LSB, top-1 {100 * a['top1_agreement']:.0f} % |",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--engine-images", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks"))
    args = p.parse_args(argv)
    res = run(crops=args.crops, repeats=args.repeats, engine_images=min(args.engine_images, args.crops))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "imagenet.json").write_text(json.dumps(res, indent=1))
    (out / "imagenet.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
