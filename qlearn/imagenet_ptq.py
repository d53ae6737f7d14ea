"""Post-training quantization of a real ImageNet network (EfficientNet-Lite0), measured offline.

The computations behind notebook 12 and ``python -m qlearn imagenet-ptq``: no ipywidgets, no
matplotlib. Everything reuses qlearn's core -- ``qlearn.efficientnet`` (the network, SAME padding),
``qlearn.ptq.calibrate`` / ``qlearn.qat`` (fake quantization, Eqs. 50-65), ``qlearn.ranges``
(percentile / MSE activation ranges, Eqs. 13-15), ``qlearn.equalization`` (CLE, bias correction,
dead channels) and ``qlearn.convert`` / ``qlearn.integer`` (the integer engine, Eqs. 20-39).

Without ImageNet labels the crops of scikit-learn's two photos (``qlearn.photos``) measure what can be
measured honestly: how often a quantized model's top-1 class is the float model's (top-1 agreement),
how often the float top-1 is among its top 5 (top-5 agreement), and the logit SQNR (Eq. 18) against
the float logits. Calibration crops (seed 1) are not evaluation crops (seed 0), though both come from
the same two photos. With ``--data-dir`` (ImageNet validation images in DIR/<wnid>/) the same code also
reports top-1 accuracy.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qlearn._checks import check_int
from qlearn.checkpoints import cache_dir
from qlearn.convert import compare, convert, quantize_input
from qlearn.efficientnet import (
    INPUT_RANGE,
    efficientnet_lite0,
    imagenet_classes,
    imagenet_wnids,
    prepare_efficientnet,
    preprocess,
)
from qlearn.equalization import (
    ConvBNPlainReLU,
    bias_correct,
    channel_ranges,
    conv_blocks,
    cross_layer_equalize,
    dead_channels,
    equalize_pairs,
    folded_form,
    range_spread,
    zero_dead_channels,
)
from qlearn.error import sqnr_db
from qlearn.fake_quant import quantize_int, weight_scale
from qlearn.files import atomic_write_text, write_then_rename
from qlearn.photos import image_folder, sample_crops
from qlearn.ptq import calibrate
from qlearn.qat_layers import QATConfig, QATConvBN, set_quantization
from qlearn.ranges import mse_range, percentile_range
from qlearn.timing import Stopwatch

__all__ = ["VARIANTS", "StudyConfig", "QUICK", "agreement", "layer_ranges", "ptq_variant", "calibrate_activations",
           "cle_study", "integer_check", "run_study", "cached_study", "report_markdown", "main"]

STUDY_VERSION = 1
PERCENTILE = 99.99  # the percentile activation range (Eq. 14)
SAMPLES_PER_BATCH = 20_000  # activation values kept per quantizer and batch for percentile / MSE ranges

#: name -> (weight_bits, per_channel, activation ranges (None = weights only), bias correction)
VARIANTS: dict[str, tuple[int, bool, str | None, bool]] = {
    "W8 per-tensor": (8, False, None, False),
    "W8 per-channel": (8, True, None, False),
    "W8 per-tensor + bias correction": (8, False, None, True),
    "W8A8 per-tensor, min/max": (8, False, "minmax", False),
    "W8A8 per-channel, min/max": (8, True, "minmax", False),
    "W8A8 per-channel, percentile": (8, True, "percentile", False),
    "W8A8 per-channel, MSE": (8, True, "mse", False),
    "W6 per-tensor": (6, False, None, False),
    "W6 per-channel": (6, True, None, False),
    "W6 per-channel + bias correction": (6, True, None, True),
    "W4 per-channel": (4, True, None, False),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """crops: evaluation crops (seed 0); calib: calibration crops (seed 1); integer_crops: crops run
    through the integer engine; size: input side (224 = the weights' resolution)."""

    crops: int = 50
    calib: int = 16
    integer_crops: int = 8
    size: int = 224
    variants: tuple[str, ...] = tuple(VARIANTS)
    cle: bool = True  # run the cross-layer equalization study (four more models)

    def __post_init__(self) -> None:
        check_int(self.crops, "crops", minimum=2, maximum=10_000)
        check_int(self.calib, "calib", minimum=1, maximum=10_000)
        check_int(self.integer_crops, "integer_crops", minimum=1, maximum=self.crops)
        check_int(self.size, "size", minimum=32, maximum=1024)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    def key(self) -> str:
        return (f"v{STUDY_VERSION}-c{self.crops}-k{self.calib}-i{self.integer_crops}-s{self.size}"
                f"-n{len(self.variants)}{'-cle' if self.cle else ''}")


QUICK = StudyConfig(crops=8, calib=4, integer_crops=1,
                    variants=("W8 per-tensor", "W8 per-channel", "W8 per-tensor + bias correction",
                              "W8A8 per-channel, min/max", "W8A8 per-channel, percentile", "W8A8 per-channel, MSE",
                              "W6 per-tensor", "W6 per-channel", "W4 per-channel"))


def agreement(ref: torch.Tensor, y: torch.Tensor, labels: np.ndarray | None = None) -> dict:
    """Top-1 / top-5 agreement with the reference logits ``ref`` (N, 1000) and logit SQNR in dB (Eq. 18);
    with labels also the top-1 accuracy of ``y``."""
    top_ref = ref.argmax(1)
    out = dict(top1=float((y.argmax(1) == top_ref).double().mean()),
               top5=float((y.topk(5, dim=1).indices == top_ref[:, None]).any(1).double().mean()),
               sqnr_db=float(sqnr_db(ref.double().numpy(), y.double().numpy())))
    if labels is not None:
        out["accuracy"] = float((y.argmax(1).numpy() == labels).mean())
    return out


def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def layer_ranges(folded: torch.nn.Module, bits: int = 8) -> list[dict]:
    """Per conv layer of a folded-form model: output-channel ranges max |w_fold[c]| (Eq. 41), the number
    of dead channels (below 1e-3 of the layer's largest, ``zero_dead_channels``), the spread of the
    nonzero ranges, and the weight SQNR at ``bits`` bits per tensor and per channel (Eqs. 18, 53)."""
    rows = []
    for name, b in conv_blocks(folded):
        w = b.conv.weight.detach().double()
        r = channel_ranges(w)
        row = dict(name=name, shape=list(w.shape), ranges=r.tolist(), dead=int(dead_channels(r).sum()),
                   spread=range_spread(w))
        qmax = 2 ** (bits - 1) - 1
        for per_channel in (False, True):
            s = weight_scale(w, bits, per_channel=per_channel)
            s_b = s.reshape(-1, 1, 1, 1) if per_channel else s
            w_hat = quantize_int(w, s_b, torch.zeros_like(s_b), -qmax, qmax) * s_b
            row["sqnr_per_channel" if per_channel else "sqnr_per_tensor"] = float(sqnr_db(w.numpy(), w_hat.numpy()))
        rows.append(row)
    return rows


@torch.no_grad()
def calibrate_activations(qmodel: Any, images: torch.Tensor, method: str = "minmax", *, pct: float = PERCENTILE,
                          batch_size: int = 8, seed: int = 0) -> Any:
    """Set every activation range of a fake-quant model from calibration images (in place, eval mode).

    'minmax': ``qlearn.ptq.calibrate`` (running min/max, Eq. 13). 'percentile' / 'mse': every quantizer
    also keeps a seeded random sample of ``SAMPLES_PER_BATCH`` of its float inputs per batch, and its
    range becomes ``percentile_range(sample, pct)`` (Eq. 14) or ``mse_range(sample, bits)`` (Eq. 15).
    """
    if method not in ("minmax", "percentile", "mse"):
        raise ValueError(f"method must be 'minmax', 'percentile' or 'mse', got {method!r}")
    if method == "minmax":
        return calibrate(qmodel, images, batch_size=batch_size, num_batches=None)
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[torch.Tensor]] = {}
    quants = {n: q for n, q in qmodel.quantizers() if not q.fixed}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def f(mod: torch.nn.Module, inp: tuple) -> None:
            flat = inp[0].detach().reshape(-1)
            idx = torch.randint(0, flat.numel(), (min(SAMPLES_PER_BATCH, flat.numel()),), generator=gen)
            samples.setdefault(name, []).append(flat[idx].double())
        return f

    handles = [q.register_forward_pre_hook(hook(n)) for n, q in quants.items()]
    try:
        calibrate(qmodel, images, batch_size=batch_size, num_batches=None)
    finally:
        for h in handles:
            h.remove()
    for name, q in quants.items():
        s = torch.cat(samples[name]).numpy()  # (K,) float64
        lo, hi = percentile_range(s, pct) if method == "percentile" else mse_range(s, q.bits)
        q.lo.fill_(min(float(lo), 0.0))
        q.hi.fill_(max(float(hi), float(lo) + 1e-8))
    return qmodel.eval()


def ptq_variant(folded: torch.nn.Module, calib: torch.Tensor, weight_bits: int, per_channel: bool,
                act: str | None, bias_correction: bool = False) -> Any:
    """The fake-quant model of one variant: (bias-corrected) folded-form model -> ``prepare_efficientnet``
    (BN frozen, weights ``weight_bits`` symmetric min/max per tensor or channel) -> activation ranges by
    ``act`` (min/max, percentile, MSE); act None = weights only (activations left in float)."""
    if bias_correction:
        folded = bias_correct(folded, calib, weight_bits=weight_bits, per_channel=per_channel)
    cfg = QATConfig(weight_bits=weight_bits, per_channel=per_channel, input_range=INPUT_RANGE, freeze_bn_step=0)
    q = prepare_efficientnet(folded, cfg)
    if act is None:
        return set_quantization(q, activations=False).eval()
    return calibrate_activations(q, calib, act)


def _relu_form(folded: torch.nn.Module) -> torch.nn.Module:
    """The folded model with ReLU instead of ReLU6 wherever CLE would put it (layer 1 of each pair)."""
    out = copy.deepcopy(folded)
    mods = dict(out.named_modules())
    for a, _ in equalize_pairs(out):
        mods[a].__class__, mods[a].relu6 = ConvBNPlainReLU, False
    return out


def cle_study(folded: torch.nn.Module, x: torch.Tensor, calib: torch.Tensor, ref: torch.Tensor) -> dict:
    """Cross-layer equalization on EfficientNet-Lite0, measured honestly (W8 per-tensor, weights only).

    CLE is exact only for ReLU; the study reports (a) what replacing ReLU6 by ReLU does to the float
    model (agreement with the real float model ``ref``), (b) per-tensor W8 of the ReLU model and of its
    equalized copy against the ReLU model's own float logits, with and without bias correction, and
    (c) the per-tensor range spread of every layer before and after CLE.
    """
    relu = _relu_form(folded)
    cle = cross_layer_equalize(folded)
    ref_relu = _predict(relu, x)
    out = dict(relu_vs_relu6=agreement(ref, ref_relu), cle_vs_relu=agreement(ref_relu, _predict(cle, x)))
    for name, model, bc in (("relu_per_tensor", relu, False), ("cle_per_tensor", cle, False),
                            ("cle_bc_per_tensor", cle, True)):
        out[name] = agreement(ref_relu, _predict(ptq_variant(model, calib, 8, False, None, bc), x))
    mods = dict(cle.named_modules())
    out["spread"] = [dict(name=n, before=range_spread(b.conv.weight), after=range_spread(mods[n].conv.weight))
                     for n, b in conv_blocks(folded)]
    return out


def integer_check(qmodel: Any, x: torch.Tensor) -> dict:
    """Convert a W8A8 fake-quant model to the integer engine and compare on ``x`` (Eq. 69): the end-to-end
    ``qlearn.convert.compare`` numbers, the worst per-layer difference when each integer layer is fed the
    fake-quant model's own input codes (``layer_lsb``), and the engine's images per second."""
    clock = Stopwatch()
    imodel = clock.time("convert", convert, qmodel)
    agree = compare(qmodel, imodel, x, batch_size=2)
    x_q = quantize_input(qmodel, x[:1])
    clock.time("engine", imodel.run, x_q)  # one image
    return dict(agreement=agree.to_dict(), layer_lsb=layer_lsb(qmodel, imodel, x[:1]),
                convert_s=clock.seconds["convert"], images_per_s=1.0 / clock.seconds["engine"], layers=len(imodel))


@torch.no_grad()
def layer_lsb(qmodel: Any, imodel: Any, x: torch.Tensor) -> dict:
    """Feed every integer conv layer the fake-quant model's codes of its input; the max |difference| of
    its output codes from the fake-quant ones, per layer ({name: LSBs}). Isolates each layer's rounding."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mods = {n: m for n, m in qmodel.named_modules() if isinstance(m, QATConvBN)}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], out)))
             for n, m in mods.items()]
    try:
        qmodel.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    worst = {}
    for name, (inp, out) in seen.items():
        m, layer = mods[name], imodel[name]
        iq, oq = m.input_quant.qparams(), m.act.qparams()
        codes = lambda t, qp: torch.clamp(torch.round(t.double() / qp.scale) + qp.zero_point, qp.qmin, qp.qmax)  # noqa: E731
        got = layer(codes(inp, iq).numpy().astype(np.uint8)).astype(np.int64)
        worst[name] = int(np.abs(got - codes(out, oq).numpy().astype(np.int64)).max())
    return worst


def run_study(config: StudyConfig = StudyConfig(), *, data_dir: Any = None, progress: bool = True) -> dict:
    """The whole measurement: float model, folded ranges, every PTQ variant, CLE, the integer engine.

    Returns a JSON-able dict (see ``report_markdown``). ``data_dir``: evaluate on labelled images from
    DIR/<wnid>/ instead of photo crops (top-1 accuracy reported too).
    """
    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    clock = Stopwatch()
    with clock.stage("total"):
        res = _study(config, data_dir, say, clock)
    res["seconds"] = clock.seconds["total"]
    return res


def _study(config: StudyConfig, data_dir: str | Path | None, say: Any, clock: Stopwatch) -> dict:
    """The body of ``run_study``; ``clock`` times the float model and each variant (seconds)."""
    names = imagenet_classes()
    model = efficientnet_lite0()
    labels = None
    if data_dir is not None:
        pixels, labels, _ = image_folder(data_dir, imagenet_wnids(), names, size=config.size, limit=config.crops)
    else:
        pixels, _ = sample_crops(config.crops, config.size, seed=0)
    x = preprocess(pixels)
    calib = preprocess(sample_crops(config.calib, config.size, seed=1)[0])
    ref = clock.time("float", _predict, model, x)
    float_s = clock.seconds["float"]
    res: dict[str, Any] = dict(config=dataclasses.asdict(config), data_dir=str(data_dir) if data_dir else None,
                               torch=torch.__version__, n=int(x.shape[0]))
    res["float"] = dict(top1=[names[i] for i in ref.argmax(1).tolist()], seconds=float_s,
                        images_per_s=x.shape[0] / float_s,
                        top5_centre=[[names[i] for i in ref[j].topk(5).indices.tolist()] for j in range(min(2, len(ref)))])
    if labels is not None:
        res["float"]["accuracy"] = float((ref.argmax(1).numpy() == labels).mean())
    folded = folded_form(model)
    res["ranges"] = layer_ranges(folded)
    res["dead"] = zero_dead_channels(folded)
    res["dead_zeroed_vs_float"] = agreement(ref, _predict(folded, x))
    res["variants"] = {}
    for name in config.variants:
        say(f"imagenet-ptq: {name}")
        bits, pc, act, bc = VARIANTS[name]
        with clock.stage(name):
            y = _predict(ptq_variant(folded, calib, bits, pc, act, bc), x)
        res["variants"][name] = dict(agreement(ref, y, labels), seconds=clock.seconds[name])
    if config.cle:
        say("imagenet-ptq: cross-layer equalization")
        res["cle"] = cle_study(folded, x, calib, ref)
    say("imagenet-ptq: integer engine")
    q = ptq_variant(folded, calib, 8, True, "minmax")
    res["integer"] = integer_check(q, x[: config.integer_crops])
    return res


def cached_study(config: StudyConfig = QUICK, *, rerun: bool = False, progress: bool = True) -> dict:
    """``run_study(config)``, cached as JSON under ``qlearn.checkpoints.cache_dir()/imagenet`` (rerun=True: recompute)."""
    path = cache_dir() / "imagenet" / f"study-{config.key()}.json"
    if path.exists() and not rerun:
        return json.loads(path.read_text())
    res = run_study(config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(res))
    return res


def report_markdown(res: dict) -> str:
    """The study as a Markdown report: float top-1, variants table, CLE, integer engine."""
    n, acc = res["n"], "accuracy" in res["variants"].get(next(iter(res["variants"]), ""), {})
    lines = ["# EfficientNet-Lite0: post-training quantization", "",
             f"{n} evaluation images ({'labelled, ' + res['data_dir'] if res['data_dir'] else 'crops of the scikit-learn photos'}), "
             f"{res['config']['calib']} calibration crops, {res['config']['size']}x{res['config']['size']}, torch {res['torch']}.", "",
             f"Float top-1 of the two centre views: {', '.join(res['float']['top1'][:2])}; float model "
             f"{res['float']['images_per_s']:.1f} images/s.", "",
             "| variant | top-1 agreement | top-5 agreement | logit SQNR (dB) |" + (" top-1 accuracy |" if acc else ""),
             "| --- | ---: | ---: | ---: |" + (" ---: |" if acc else "")]
    for name, v in res["variants"].items():
        lines.append(f"| {name} | {100 * v['top1']:.0f} % | {100 * v['top5']:.0f} % | {v['sqnr_db']:.1f} |"
                     + (f" {100 * v['accuracy']:.1f} % |" if acc else ""))
    c = res.get("cle")
    lines += [] if c is None else ["", "## Cross-layer equalization (W8 per-tensor, weights only)", "",
              f"- ReLU instead of ReLU6 (what CLE needs) vs the real float model: top-1 agreement "
              f"{100 * c['relu_vs_relu6']['top1']:.0f} %, logit SQNR {c['relu_vs_relu6']['sqnr_db']:.1f} dB.",
              f"- CLE leaves the ReLU model's function unchanged: {c['cle_vs_relu']['sqnr_db']:.0f} dB.",
              f"- Against the ReLU model: per-tensor {c['relu_per_tensor']['sqnr_db']:.1f} dB "
              f"({100 * c['relu_per_tensor']['top1']:.0f} %), after CLE {c['cle_per_tensor']['sqnr_db']:.1f} dB "
              f"({100 * c['cle_per_tensor']['top1']:.0f} %), CLE + bias correction {c['cle_bc_per_tensor']['sqnr_db']:.1f} dB "
              f"({100 * c['cle_bc_per_tensor']['top1']:.0f} %)."]
    i = res["integer"]
    a = i["agreement"]
    lines += ["", "## Integer engine (W8A8 per-channel, min/max)", "",
              f"- {a['n']} crops: top-1 agreement with fake quant {100 * a['top1_agreement']:.0f} %, "
              f"logit codes identical {100 * a['exact_output_fraction']:.1f} %, max difference {a['max_lsb_diff']} LSB.",
              f"- Each layer fed the fake-quant input codes: max difference {max(i['layer_lsb'].values())} LSB "
              f"over {len(i['layer_lsb'])} conv layers.",
              f"- Engine: {i['images_per_s']:.2f} images/s; the study took {res['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m qlearn imagenet-ptq --out DIR [--data-dir DIR] [--crops N] [--quick]``."""
    p = argparse.ArgumentParser(prog="python -m qlearn imagenet-ptq", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for report.json and report.md (written atomically)")
    p.add_argument("--data-dir", default=None, help="ImageNet validation images in DIR/<wnid or class>/*.JPEG")
    p.add_argument("--crops", type=int, default=50, help="evaluation images (default 50)")
    p.add_argument("--calib", type=int, default=16, help="calibration crops (default 16)")
    p.add_argument("--integer-crops", type=int, default=8, help="images run through the integer engine (default 8)")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--no-cle", action="store_true", help="skip the cross-layer equalization study")
    p.add_argument("--quick", action="store_true", help="12 crops, fewer variants: a few minutes")
    args = p.parse_args(argv)
    try:
        variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else tuple(VARIANTS)
        cfg = QUICK if args.quick else StudyConfig(args.crops, args.calib, min(args.integer_crops, args.crops),
                                                   variants=variants, cle=not args.no_cle)
        res = run_study(cfg, data_dir=args.data_dir)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"imagenet-ptq: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)

    def write(tmp: Path) -> None:  # a folder beside --out, renamed onto it when both files are written
        (tmp / "report.json").write_text(json.dumps(res, indent=1))
        (tmp / "report.md").write_text(report_markdown(res))

    write_then_rename(out, write)
    print(f"imagenet-ptq: wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
