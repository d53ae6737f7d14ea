"""How fast is qlearn's readable integer conv, next to PyTorch's float conv and int8 quantized conv?

    python benchmarks/bench_integer.py            # full shapes
    python benchmarks/bench_integer.py --quick    # small batch, few repeats (CI smoke run)
    python benchmarks/bench_integer.py --out my.json

For each MobileNet-like layer shape (regular, pointwise, depthwise, strided) it times, in the same
run and on the same integer data:

* ``qlearn``        qlearn.integer.conv2d (numpy: im2col + BLAS, or a tap loop for depthwise),
                    split into the int32 accumulation and the fixed-point requantization;
* ``torch float``   torch.nn.functional.conv2d on float32 (the baseline the speed-up story is about);
* ``torch int8``    torch.ops.quantized.conv2d, x86 engine (fbgemm/oneDNN int8 kernels).

It prints median milliseconds per call and the ratios qlearn / baseline (> 1 means qlearn is slower),
plus the agreement of the integer outputs (max |diff| in LSB, fraction exactly equal), on full-range
uint8 input and on 7-bit input (PyTorch's x86 default, reduce_range=True). The numbers go
to a JSON file (default benchmarks/results_integer.json). Thread counts are pinned (default 1) so
the three contenders get the same CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

# Pin BLAS threads before numpy is imported (they cannot be changed afterwards).
_threads = "1"
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _threads = sys.argv[_i + 1]
    elif _a.startswith("--threads="):
        _threads = _a.split("=", 1)[1]
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qlearn.integer import conv2d, conv2d_accumulator  # noqa: E402
from qlearn.layer_integers import activation_range, quantize_bias, requant_multiplier  # noqa: E402
from qlearn.timing import measure  # noqa: E402

# (name, N, Cin, Cout, H, k, stride, groups) — MobileNet v1/v2 layers at CIFAR-like resolutions.
SHAPES = [
    ("stem 3x3 3->32 @32", 8, 3, 32, 32, 3, 1, 1),
    ("conv 3x3 64->64 @16", 8, 64, 64, 16, 3, 1, 1),
    ("pointwise 1x1 64->128 @16", 8, 64, 128, 16, 1, 1, 1),
    ("depthwise 3x3 128 @16", 8, 128, 128, 16, 3, 1, 128),
    ("depthwise 3x3 s2 128 @16", 8, 128, 128, 16, 3, 2, 128),
    ("pointwise 1x1 256->256 @8", 8, 256, 256, 8, 1, 1, 1),
]


def bench_shape(name, n, cin, cout, h, k, stride, groups, repeats, rng):
    pad = k // 2
    s1, zx, s3, zo = 0.02, 3, 6 / 255, 0
    s2 = rng.uniform(0.002, 0.01, cout)
    x = rng.integers(0, 256, (n, cin, h, h)).astype(np.uint8)
    w = rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8)
    bias_q = quantize_bias(rng.normal(0, 0.5, cout), s1, s2)
    m0, shift = requant_multiplier(s1, s2, s3)
    lo, hi = activation_range("relu6", s3, zo)

    def ours():
        return conv2d(x, zx, w, bias_q, m0, shift, zo, stride=stride, padding=pad, groups=groups,
                      act_min=lo, act_max=hi)

    def ours_acc():
        return conv2d_accumulator(x, zx, w, bias_q, stride=stride, padding=pad, groups=groups)

    xf = torch.from_numpy(s1 * (x.astype(np.float32) - zx))
    wf = torch.from_numpy((w.astype(np.float64) * s2[:, None, None, None]).astype(np.float32))
    bf = torch.from_numpy((bias_q * s1 * s2).astype(np.float32))

    def torch_float():
        with torch.no_grad():
            return torch.clamp(torch.nn.functional.conv2d(xf, wf, bf, stride, pad, 1, groups), 0.0, 6.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensor constructors are deprecated
        qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), s1, zx)
        qw = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(w), torch.tensor(s2), torch.zeros(cout, dtype=torch.long), 0)
        packed = torch.ops.quantized.conv2d_prepack(qw, bf, [stride] * 2, [pad] * 2, [1, 1], groups)

    def torch_int8():
        # conv2d_relu clamps at Z; ReLU6's upper clamp 6/S3 = 255 is the uint8 top here.
        return torch.ops.quantized.conv2d_relu(qx, packed, s3, zo)

    got = ours()
    want = torch_int8().int_repr().numpy()
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    # The same layer on 7-bit activations (x in [0, 127]), which is what PyTorch's x86 observers
    # produce by default (reduce_range=True): its int8 kernels multiply raw uint8 x int8 pairs and
    # add them in int16 with saturation (AVX2 vpmaddubsw), and 2 * 255 * 127 > 32767. On full-range
    # data its depthwise kernel then differs by up to ~140 LSB for 128 channels (qlearn stays within
    # 1 LSB of the float computation; tests/test_integer.py checks that).
    x7 = (x >> 1).astype(np.uint8)
    got7 = conv2d(x7, zx, w, bias_q, m0, shift, zo, stride=stride, padding=pad, groups=groups,
                  act_min=lo, act_max=hi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qx7 = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x7), s1, zx)
    want7 = torch.ops.quantized.conv2d_relu(qx7, packed, s3, zo).int_repr().numpy()
    diff7 = np.abs(got7.astype(np.int64) - want7.astype(np.int64))
    # one warm-up call each (allocations, packing caches), then the median of ``repeats`` timed calls
    t_ours, t_acc, t_float, t_int8 = (measure(fn, repeats=repeats, warmup=1).median_ms
                                      for fn in (ours, ours_acc, torch_float, torch_int8))
    macs = n * cout * got.shape[2] * got.shape[3] * (cin // groups) * k * k
    return {
        "name": name,
        "shape": {"N": n, "Cin": cin, "Cout": cout, "H": h, "W": h, "k": k, "stride": stride,
                  "padding": pad, "groups": groups},
        "macs": int(macs),
        "ms_qlearn": t_ours,
        "ms_qlearn_accumulate": t_acc,
        "ms_qlearn_requantize": max(t_ours - t_acc, 0.0),
        "ms_torch_float": t_float,
        "ms_torch_int8": t_int8,
        "ratio_vs_torch_float": t_ours / t_float,
        "ratio_vs_torch_int8": t_ours / t_int8,
        "max_lsb_diff_vs_torch_int8": int(diff.max()),
        "exact_fraction_vs_torch_int8": float((diff == 0).mean()),
        "max_lsb_diff_vs_torch_int8_7bit_input": int(diff7.max()),
        "exact_fraction_vs_torch_int8_7bit_input": float((diff7 == 0).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 3 repeats: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender (median)")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and BLAS (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_integer.json")),
                        help="JSON output path (default benchmarks/results_integer.json)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if "x86" not in torch.backends.quantized.supported_engines:
        print("this PyTorch build has no x86 quantized engine", file=sys.stderr)
        return 1
    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 20)
    rng = np.random.default_rng(args.seed)

    results = []
    for name, n, cin, cout, h, k, stride, groups in tqdm(SHAPES, desc="shapes"):
        results.append(bench_shape(name, 1 if args.quick else n, cin, cout, h, k, stride, groups, repeats, rng))

    header = f"{'layer':<28}{'qlearn ms':>10}{'(acc+rq)':>16}{'float ms':>10}{'int8 ms':>9}" \
             f"{'/float':>8}{'/int8':>8}{'LSB':>5}{'exact':>8}{'LSB7':>6}{'exact7':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        split = f"{r['ms_qlearn_accumulate']:.2f}+{r['ms_qlearn_requantize']:.2f}"
        print(f"{r['name']:<28}{r['ms_qlearn']:>10.2f}{split:>16}{r['ms_torch_float']:>10.3f}"
              f"{r['ms_torch_int8']:>9.3f}{r['ratio_vs_torch_float']:>8.1f}{r['ratio_vs_torch_int8']:>8.1f}"
              f"{r['max_lsb_diff_vs_torch_int8']:>5}{100 * r['exact_fraction_vs_torch_int8']:>7.2f}%"
              f"{r['max_lsb_diff_vs_torch_int8_7bit_input']:>6}"
              f"{100 * r['exact_fraction_vs_torch_int8_7bit_input']:>8.2f}%")
    print("LSB/exact: agreement with torch int8 on full-range uint8 input; LSB7/exact7: on 7-bit input\n"
          "(PyTorch's x86 default, reduce_range=True; its kernels saturate int16 pair sums otherwise).")
    geo = lambda key: float(np.exp(np.mean([np.log(r[key]) for r in results])))  # noqa: E731
    print(f"geometric mean ratio: {geo('ratio_vs_torch_float'):.1f}x torch float, "
          f"{geo('ratio_vs_torch_int8'):.1f}x torch int8 (qlearn / baseline; > 1 = qlearn slower)")

    payload = {
        "benchmark": "qlearn.integer.conv2d vs torch float conv2d vs torch int8 quantized conv2d (x86)",
        "quick": bool(args.quick),
        "repeats": repeats,
        "threads": args.threads,
        "seed": args.seed,
        "environment": {
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "quantized_engine": torch.backends.quantized.engine,
        },
        "geomean_ratio_vs_torch_float": geo("ratio_vs_torch_float"),
        "geomean_ratio_vs_torch_int8": geo("ratio_vs_torch_int8"),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
