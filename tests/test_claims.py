"""Claims: every statement the prose of notebooks 03-06 and 09 makes about a computed result, checked.

The notebooks read the models and results shipped with qlearn (``qlearn.shipped``), so every learner
sees the same numbers and these tests check the statements against exactly those numbers. Where a
notebook computes something live (the float accuracy of a shipped model, a fold on this CPU), the
claim is checked with the tolerance the prose allows ("within a test image or two"), so it holds on
AVX2-only and AVX-512/AMX machines alike. Each test names the notebook cell it guards.
"""
import numpy as np
import pytest
from claims_helpers import images

from qlearn.shipped import manifest, shipped_file

pytestmark = pytest.mark.skipif(not manifest(), reason="qlearn/shipped is missing: run `python -m qlearn ship-models`")




# ---------------------------------------------------------------------------------- shipped models
def test_shipped_files_are_verified_and_loaded_by_default(lesson):
    assert lesson.path == shipped_file(lesson.path.name)
    from qlearn.lessons.mobilenet_pipeline import pipeline_run
    from qlearn.shipped import shipped_dir

    run = pipeline_run(progress=False)
    assert run.directory.resolve().is_relative_to(shipped_dir().resolve())


# ---------------------------------------------------------------------------------- notebook 03
def _spreads(lesson):
    out = {}
    for name, layer in lesson.layers.items():
        absmax = np.abs(layer.weight.reshape(layer.channels, -1)).max(axis=1)
        out[name] = absmax.max() / absmax.min()
    return out


def test_03_folded_spreads_are_a_few_fold_and_the_classifier_is_narrowest(lesson):
    s = _spreads(lesson)
    assert 2 < max(s.values()) < 10  # "a few-fold, not orders of magnitude"
    assert min(s, key=s.get) == "classifier"  # "its spread is the smallest in the table"


def test_03_layer_explorer_claims(lesson):
    from qlearn.lessons.per_channel import quantized_weight_accuracy
    from qlearn.widgets.per_channel import layer_explorer

    ex = layer_explorer(lesson)
    ex.controls["bits"].value = 4
    n = ex.numbers
    assert n["worst channel SQNR per-tensor (dB)"] < n["worst channel SQNR per-channel (dB)"] - 3  # "several dB"
    t, c = ex.curves[False], ex.curves[True]
    bits = list(ex.bits_axis)
    for b in (8, 6):  # "at 8 and 6 bits the two curves sit on top of each other"
        i = bits.index(b)
        assert abs(t[i] - c[i]) <= images(lesson, 3)
    i3 = bits.index(3)
    assert c[i3] - t[i3] > 0.05  # "at 3 bits per-tensor falls far below per-channel"
    # the printed table below the explorer and "at 8 bits both schemes match the float model"
    for pc in (False, True):
        assert abs(quantized_weight_accuracy(lesson, 8, per_channel=pc) - lesson.float_acc) <= images(lesson, 3)
    # "one layer alone always costs less than all twelve together"; features.0 the most sensitive
    ex.controls["bits"].value = 3
    alone = {}
    for name in lesson.layers:
        ex.controls["layer"].value = name
        alone[name] = ex.numbers["accuracy, this layer only per-tensor"]
        assert alone[name] >= ex.numbers["accuracy, all layers per-tensor"]
    assert min(alone, key=alone.get) == "features.0"


def test_03_q_seed_channels_narrowest_gains_most_widest_nothing():
    """03 cell-02 answer: per-channel leaves the widest channel's MSE unchanged (ratio 1.0) and helps
    the narrowest most, about 6.7^2 ~ 45-fold (Eq. 19); cell-04 answer: at 3 bits channel 1 keeps
    one grid point per-tensor, 6 per-channel."""
    from qlearn.lessons.per_channel import compare_schemes, seed_channel_weights
    from qlearn.widgets.per_channel import seed_channels_explorer

    cmp = compare_schemes(seed_channel_weights(2000), bits=8)
    assert cmp.mse_ratio[2] == pytest.approx(1.0) and int(np.argmax(cmp.mse_ratio)) == 1
    assert 40 < cmp.mse_ratio[1] < 50 and round(4.7 / 0.7, 1) == 6.7
    ex = seed_channels_explorer()
    ex.controls["bits"].value = 3
    assert ex.numbers["ch 1: grid points in its range (tensor / channel)"] == "1 / 6"
    assert ex.numbers["per-tensor scale S"] == pytest.approx(4.7 / 3)
    ex.controls["symmetric"].value = False  # cell-06 item 3: asymmetric, still ~7x too coarse
    assert round(ex.numbers["per-tensor scale S"] / ex.numbers["ch 1: per-channel scale S_c"]) == 7 == round(8.5 / 1.2)


# ---------------------------------------------------------------------------------- notebook 04
@pytest.fixture(scope="module")
def range_rules(lesson):
    from qlearn.widgets.outliers import model_ranges_explorer

    ex = model_ranges_explorer(lesson, progress=False)
    bits = list(ex.bits_axis)
    return {f"{v} | {m}": dict(zip(bits, c)) for (v, m), c in ex.curves.items()}


def test_04_outlier_table_numbers():
    from qlearn.lessons.outliers_ranges import compare_ranges, with_outliers

    x, out = with_outliers(20_000, magnitude=20.0, fraction=0.001, seed=0)
    rows = {r.method: r for r in compare_ranges(x, 4, outliers=out, symmetric=True)}
    mm = rows["min/max"]
    assert mm.qp.scale == pytest.approx(3.1, abs=0.1)  # "S is about 3.1"
    bulk = x[~out]
    assert 0.85 < np.mean(np.abs(bulk) < mm.qp.scale / 2) < 0.92  # "almost nine in ten"
    assert mm.bulk_mse == pytest.approx(0.68, abs=0.01)  # "the bulk's MSE is 0.68"
    assert all(r.bulk_mse < mm.bulk_mse for m, r in rows.items() if m != "min/max")  # "give the bulk its grid back"


def test_04_model_range_claims(lesson, range_rules):
    r, f = range_rules, lesson.float_acc
    pt, pc, act = "weights, per-tensor | ", "weights, per-channel | ", "activations | "
    # 1. per-tensor 3 bits: percentile 99 and MSE-optimal beat min/max; percentile 99.9 does not help
    assert r[pt + "percentile 99"][3] > r[pt + "min/max"][3] and r[pt + "MSE-optimal"][3] > r[pt + "min/max"][3]
    assert r[pt + "percentile 99.9"][3] <= r[pt + "min/max"][3]
    # 2. per-channel 3 bits: min/max and percentiles gain and end close together; MSE-optimal does not improve
    for m in ("min/max", "percentile 99.9", "percentile 99"):
        assert r[pc + m][3] - r[pt + m][3] > 0.05
    close = [r[pc + m][3] for m in ("min/max", "percentile 99.9", "percentile 99")]
    assert max(close) - min(close) < 0.03
    assert r[pc + "MSE-optimal"][3] <= r[pt + "MSE-optimal"][3]
    # 3. activations at 2 bits: MSE-optimal keeps the most; at 8 bits every rule within two images of float
    acts = {k: v for k, v in r.items() if k.startswith(act)}
    assert max(acts, key=lambda k: acts[k][2]) == act + "MSE-optimal"
    assert all(abs(v[8] - f) <= images(lesson, 2) for v in acts.values())
    # summary: at 8 bits min/max and MSE-optimal match float; percentile 99 costs about a point per-channel
    for k in (pt + "min/max", pt + "MSE-optimal", pc + "min/max", pc + "MSE-optimal"):
        assert abs(r[k][8] - f) <= images(lesson, 3)
    assert 0.005 <= f - r[pc + "percentile 99"][8] <= 0.02


def test_04_q_outliers_100_sigma():
    """04 cell-04 answer: at 100 sigma the percentile-99.9 range does not move ([-3.27, 3.15]);
    MSE-optimal keeps the outliers and, like min/max, leaves one level in the bulk."""
    from qlearn.widgets.outliers import outlier_explorer

    ex = outlier_explorer()
    before = ex.numbers["percentile 99.9: range"]
    ex.controls["magnitude"].value = 100.0
    n = ex.numbers
    assert n["percentile 99.9: range"] == before == "[-3.272, 3.145]"
    assert n["MSE-optimal: levels in the bulk"] == n["min/max: levels in the bulk"] == 1
    assert float(n["MSE-optimal: range"].strip("[]").split(",")[1]) > 90  # keeps the ~100 sigma outliers


def test_04_outlier_try_this_fraction_and_bits():
    """04 cell-06 items 3-4: at 1 % outliers percentile 99.9 includes them and fails like min/max (one
    level in the bulk); at 8 bits min/max has S ~ 0.17 sigma and dozens of levels in the bulk."""
    from qlearn.widgets.outliers import outlier_explorer

    ex = outlier_explorer()
    ex.controls["fraction"].value = 0.01
    n = ex.numbers
    assert float(n["percentile 99.9: range"].strip("[]").split(",")[1]) > 15
    assert n["percentile 99.9: levels in the bulk"] == n["min/max: levels in the bulk"] == 1
    ex.controls["fraction"].value = 0.001
    ex.controls["bits"].value = 8
    n = ex.numbers
    assert round(n["min/max: scale S"], 2) == 0.17 and 24 <= n["min/max: levels in the bulk"] <= 99


# ---------------------------------------------------------------------------------- notebook 05
def test_05_fold_claims(lesson):
    from qlearn.lessons.bn_folding import bn_layer, bn_layer_names, fold_spread
    from qlearn.lessons.per_channel import widest_spread_layer
    from qlearn.widgets.bn_fold import bn_fold_explorer

    spreads = [fold_spread(bn_layer(lesson, n)) for n in bn_layer_names(lesson)]
    assert max(s.spread_after for s in spreads) < 10  # "a few-fold"
    assert sum(s.spread_after > s.spread_before for s in spreads) > len(spreads) / 2  # "in most layers"
    assert 1.2 < min(s.factor_spread for s in spreads) and max(s.factor_spread for s in spreads) < 10

    ex = bn_fold_explorer(lesson)
    name = widest_spread_layer(lesson)
    c = ex.controls["channel"].value
    key = f"ch {c}: fold factor gamma/sqrt(var+eps)"
    base = ex.numbers[key]
    ex.controls["bits"].value = 4
    ex.controls["log_var"].value = -4
    n = ex.numbers
    assert 1 < n[key] / base < 100  # "would grow 100-fold; it grows less"
    assert n["channel spread after folding (max/min)"] > 10  # "jumps from a few-fold to tens or more"
    assert n["channels rounded to all zeros, per-tensor"] >= 0.9 * (bn_layer(lesson, name).channels - 1)
    ex.controls["log_var"].value = 2
    assert ex.numbers[f"ch {c}: SQNR per-tensor (dB)"] == pytest.approx(0.0, abs=1e-9)  # "reads 0 dB"
    assert ex.numbers[f"ch {c}: SQNR per-channel (dB)"] > 10


def test_05_fold_order_claims(lesson):
    from qlearn.lessons.bn_folding import bn_layer, compare_fold_order
    from qlearn.lessons.per_channel import widest_spread_layer

    layer = bn_layer(lesson, widest_spread_layer(lesson))
    for bits in range(2, 9):  # "mismatch / quantization MSE between about a half and 1; the wrong order
        cmp = compare_fold_order(layer, bits)  # adds a quarter to three quarters to the weight error"
        assert 0.45 < cmp.mismatch / cmp.mse_right < 1.1
        assert 1.2 < cmp.mse_deployed / cmp.mse_right < 1.8
        pc = compare_fold_order(layer, bits, per_channel=True)
        assert pc.mismatch == pytest.approx(0.0, abs=1e-12) and pc.off_grid_fraction == 0  # "agree per-channel"


def test_05_q_fold_is_exact_to_float32_rounding(lesson):
    """05 cell-02 answer: the folds and bn(conv(x)) vs the folded conv agree to float32 rounding —
    differences of about 1e-6 or less on outputs of size about 4."""
    from qlearn.lessons.bn_folding import bn_layer, fold_vs_torch
    from qlearn.lessons.per_channel import widest_spread_layer

    c = fold_vs_torch(bn_layer(lesson, widest_spread_layer(lesson)))
    assert c.weight_diff < 1e-6 and c.bias_diff < 1e-6
    assert c.output_diff < 1e-5  # "about 1e-6 or less": a few float32 ulps at 4, on any CPU's conv kernel
    assert 3.0 < c.output_scale < 5.0  # "outputs of size about 4"


# ---------------------------------------------------------------------------------- notebook 06
def test_06_ema_claims(lesson):
    from qlearn.widgets.qat import ema_explorer

    stream = ema_explorer(lesson).stream
    width = np.asarray(stream["classifier max"]) - np.asarray(stream["classifier min"])
    assert width[20] / width[0] > 10 and width[-1] > width[20]  # "many-fold in 20 steps, then keeps growing"
    mid = [k for k in stream if k not in ("classifier max", "classifier min") and k.endswith("max")][0]
    assert 3.0 < np.asarray(stream[mid])[0] <= 6.0 + 1e-6  # "its range is near [0, 6] from the first step"


def test_06_ptq_vs_qat_claims(lesson):
    from qlearn.lessons.qat import ptq_vs_qat

    r = ptq_vs_qat(lesson, progress=False)
    bits = [int(b) for b in r["bits"]]
    f = float(r["float"][0])
    assert abs(f - lesson.float_acc) <= images(lesson, 1)

    def at(key, b):
        return float(r[key][bits.index(b)])

    # 8 bits: PTQ within an image or two of float
    for s in ("per-tensor", "per-channel"):
        assert abs(at(f"ptq {s}", 8) - f) <= images(lesson, 3)
    # 4 bits: per-tensor PTQ loses a couple of points; QAT recovers nearly all; the control only a little
    loss = f - at("ptq per-tensor", 4)
    assert 0.01 <= loss <= 0.05
    assert f - at("qat per-tensor", 4) < loss / 2
    assert at("finetuned per-tensor", 4) - at("ptq per-tensor", 4) < loss / 2
    # 3 bits per-tensor, 2 bits per-channel: PTQ and control lose many points, QAT keeps most
    for s, b in (("per-tensor", 3), ("per-channel", 2)):
        assert f - at(f"ptq {s}", b) > 0.1 and f - at(f"finetuned {s}", b) > 0.1
        assert at(f"qat {s}", b) > at(f"ptq {s}", b) + 0.09 and at(f"qat {s}", b) > 0.8
    assert f - at("qat per-tensor", 3) < 0.05  # "QAT comes within a few points"
    assert 0 < at("finetuned per-tensor", 3) - at("ptq per-tensor", 3) < 0.05  # "the control gains only a little"
    assert 0.35 < at("ptq per-channel", 2) < 0.6  # "about half the test set"
    # 2 bits per-tensor: every variant at chance
    for k in ("ptq per-tensor", "finetuned per-tensor", "qat per-tensor"):
        assert at(k, 2) <= 0.12


def test_06_q_ste_gradient_share_barely_moves_with_bits():
    """06 cell-02 answer: the share of the N(0, 1) sample with gradient 1: 68.2 % at 3 bits, 67.8 % at 8."""
    from qlearn.widgets.qat import ste_explorer

    ex = ste_explorer()
    share = {}
    for b in (3, 8):
        ex.controls["bits"].value = b
        share[b] = ex.numbers["N(0,1) sample: share with gradient 1"]
    assert (round(100 * share[3], 1), round(100 * share[8], 1)) == (68.2, 67.8)


def test_06_q_ema_decay_0999_does_not_catch_up(lesson):
    """06 cell-08 answer: 1 - 0.999^80 ~ 8 %; at the last step the batch max is more than 10x the EMA's hi
    with decay 0.999, within 10 % with decay 0.9."""
    from qlearn.lessons.qat import ema_trace
    from qlearn.widgets.qat import ema_explorer

    assert round(100 * (1 - 0.999**80)) == 8
    stream = ema_explorer(lesson).stream
    assert len(stream["classifier max"]) == 80
    ratio = {}
    for d in (0.9, 0.999):
        tr = ema_trace(stream["classifier min"], stream["classifier max"], d, 0)
        ratio[d] = tr.batch_hi[-1] / tr.ema_hi[-1]
    assert ratio[0.999] > 10 and abs(ratio[0.9] - 1) < 0.1


# ---------------------------------------------------------------------------------- notebook 09
@pytest.fixture(scope="module")
def run():
    from qlearn.lessons.mobilenet_pipeline import pipeline_run

    return pipeline_run(progress=False)


def test_09_results_claims(run):
    r = run.report
    n, f = r["n_test"], r["float_acc"]
    one = 1 / n
    assert 0.95 <= f <= 0.99  # "at ~97 % accuracy"
    ptq, qat = r["ptq"], r["qat"]
    # 8 bits: PTQ and QAT within a test image or two of float
    assert all(abs(v["8"] - f) <= 2 * one + 1e-9 for v in ptq.values()) and abs(qat["8"] - f) <= 2 * one + 1e-9
    # 4 bits: per-tensor PTQ loses by far the most; per-channel and QAT recover most of it
    worst = min(ptq, key=lambda m: ptq[m]["4"])
    assert worst == "per_tensor_minmax" and f - ptq[worst]["4"] > 0.05
    for acc in (ptq["per_channel_minmax"]["4"], ptq["per_channel_mse"]["4"], qat["4"]):
        assert f - acc < (f - ptq[worst]["4"]) / 2
    ig = r["integer"]
    assert ig["top1_agreement_with_fake_quant"] >= 1 - 2 * one  # "at most a test image or two"
    assert ig["max_lsb_diff"] >= 2  # "compound to several LSB at the logits"


def test_09_layer_agreement_claims(run):
    from qlearn.lessons.mobilenet_pipeline import layer_agreement

    rows = layer_agreement(run)
    assert max(a.max_lsb_alone for a in rows) <= 1  # "each layer alone within one LSB"
    assert all(a.exact_alone >= 0.99 for a in rows if a.kind == "add")  # the add "rounds exactly" (to ties)
    assert rows[-1].exact_end_to_end < rows[0].exact_end_to_end  # "the end-to-end share falls"


# ---------------------------------------------------------------------------------- README
def test_readme_headlines_are_written_from_the_recorded_numbers():
    """README's "What it reproduces" block is exactly what benchmarks/readme.py makes of
    benchmarks/results.json and the shipped quick run (rewrite it: `python -m benchmarks.readme`)."""
    import json

    from benchmarks import readme

    text = readme.README.read_text()
    want = readme.render(json.loads(readme.RESULTS.read_text()), readme.shipped_quick_report())
    assert readme.block(text) == want, "README.md's headline block is stale: run `python -m benchmarks.readme`"
    assert "benchmark machine" in want and json.loads(readme.RESULTS.read_text())["machine"]["cpu_model"] in want
