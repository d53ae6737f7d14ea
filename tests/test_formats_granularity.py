"""Notebook 10's computations (qlearn.lessons.formats_granularity) against independent oracles."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.lessons import formats_granularity as fg
from qlearn.quantize import fake_quantize
from qlearn.ranges import weight_qparams

HYP = settings(max_examples=60, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def lesson():
    from qlearn.lessons.lesson_model import lesson_model

    return lesson_model(progress=False)


def test_the_lesson_module_imports_no_ui():
    code = ("import sys, qlearn.lessons.formats_granularity; "
            "assert 'ipywidgets' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- number formats
def test_number_formats_against_torch_rounding():
    rows = {f.name: f for f in fg.number_formats()}
    assert [*rows] == ["fp32", "fp16", "bf16", "int8", "int4"]
    assert [rows[n].bytes_per_value for n in rows] == [4, 2, 2, 1, 0.5]
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        f = rows[name]
        for x, step in ((1.0, f.step_at_1), (100.0, f.step_at_100)):
            assert torch.tensor(x + step, dtype=dtype).item() == x + step  # the next value is representable
            assert torch.tensor(x + 0.49 * step, dtype=dtype).item() == x  # nothing in between
        assert torch.tensor(f.max_value, dtype=dtype).item() == f.max_value
        assert math.isinf(torch.tensor(f.max_value * 1.01, dtype=dtype).item())
    assert rows["fp16"].max_value == 65504 and rows["fp16"].step_at_1 == 2.0**-10
    assert rows["bf16"].step_at_1 == 2.0**-7 and rows["bf16"].step_at_100 == 0.5
    assert (rows["int8"].min_value, rows["int8"].max_value) == (-128, 127)
    assert (rows["int4"].min_value, rows["int4"].max_value) == (-8, 7)


# ---------------------------------------------------------------------------------- granularity
def _oracle_groups(w, bits, g, symmetric):
    """Element by element, one group at a time (Eqs. 4-8 written out)."""
    rows = w.reshape(w.shape[0], -1)
    out = np.empty_like(rows)
    for c in range(rows.shape[0]):
        for start in range(0, rows.shape[1], g):
            v = rows[c, start:start + g]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = max(abs(v.min()), abs(v.max())) / qmax or 1.0
                out[c, start:start + g] = s * np.clip(np.rint(v / s), -qmax, qmax)
            else:
                lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
                s = (hi - lo) / (2**bits - 1) or 1.0
                z = min(max(math.floor(-lo / s + 0.5), 0), 2**bits - 1)
                out[c, start:start + g] = s * (np.clip(np.rint(v / s) + z, 0, 2**bits - 1) - z)
    return out.reshape(w.shape)


@HYP
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 12), st.integers(2, 8), st.integers(1, 13),
       st.booleans())
def test_quantize_groups_matches_the_oracle(seed, c, k, bits, g, symmetric):
    w = np.random.default_rng(seed).normal(size=(c, k))
    w[0, 0] = 0.0 if k > 1 else w[0, 0]
    gq = fg.quantize_groups(w, bits, g, symmetric=symmetric)
    np.testing.assert_allclose(gq.w_hat, _oracle_groups(w, bits, min(g, k), symmetric), rtol=1e-12, atol=1e-15)
    assert gq.codes.shape == (c, k) and gq.groups_per_row == -(-k // min(g, k))
    assert gq.qparams.scale.shape == (c * gq.groups_per_row,)


def test_group_of_k_is_per_channel_and_granularities_agree(lesson):
    w = lesson.layer("features.2.pw").weight  # (64, 32, 1, 1)
    per_channel = fake_quantize(w, weight_qparams(w, 4, per_channel=True))
    np.testing.assert_array_equal(fg.quantize_groups(w, 4, 32).w_hat, per_channel)
    np.testing.assert_array_equal(fg.fake_quant_granular(w, 4, "per-channel"), per_channel)
    np.testing.assert_array_equal(fg.fake_quant_granular(w, 4, 1000), per_channel)  # a group wider than K
    np.testing.assert_array_equal(fg.fake_quant_granular(w, 4, "per-tensor"),
                                  fake_quantize(w, weight_qparams(w, 4, per_channel=False)))
    np.testing.assert_allclose(fg.quantize_groups(w, 4, 1).w_hat, w, rtol=1e-12)  # one weight per scale: exact


@pytest.mark.parametrize("shape,bits,gran,scales", [
    ((128, 128, 1, 1), 4, 32, 128 * 4), ((16, 1, 3, 3), 4, 8, 16 * 2), ((10, 128), 8, "per-channel", 10),
    ((10, 128), 2, "per-tensor", 1), ((7, 5), 3, 64, 7),
])
def test_bits_per_weight_counts_every_scale(shape, bits, gran, scales):
    n = int(np.prod(shape))
    assert fg.bits_per_weight(shape, bits, gran) == (n * bits + 16 * scales) / n
    assert fg.bits_per_weight(shape, bits, gran, scale_bits=32, zero_point_bits=8) == (n * bits + 40 * scales) / n
    assert fg.bits_per_weight((128, 128), 4, 32) == 4.5  # Eq. 77's example


def test_granular_accuracy_is_the_swapped_model(lesson):
    from qlearn.train import evaluate

    before = {n: l.module.weight.detach().clone() for n, l in lesson.layers.items()}
    acc = fg.granular_accuracy(lesson, 8, "per-channel")
    for n, l in lesson.layers.items():  # restored afterwards
        assert torch.equal(l.module.weight, before[n])
    saved = {n: l.module.weight.detach().clone() for n, l in lesson.layers.items()}
    with torch.no_grad():
        for l in lesson.layers.values():
            l.module.weight.copy_(torch.from_numpy(fake_quantize(l.weight, weight_qparams(l.weight, 8))).float())
        expected = evaluate(lesson.folded, lesson.data.x_test, lesson.data.y_test)
        for n, l in lesson.layers.items():
            l.module.weight.copy_(saved[n])
    assert acc == expected


# ---------------------------------------------------------------------------------- size on disk
def test_model_sizes_are_measured_files(lesson, tmp_path):
    rows = fg.model_size_on_disk(lesson, tmp_path)
    assert list(tmp_path.iterdir()) == []  # written to a temporary folder, removed afterwards
    n = sum(l.weight.size for l in lesson.layers.values())
    c = sum(l.channels for l in lesson.layers.values())
    for r in rows.values():
        assert r.file_bytes > r.payload_bytes  # headers are real bytes too
    biases_and_shapes = 4 * c + 8 * 4 * len(lesson.layers)
    assert rows["float32 (npz)"].payload_bytes == 4 * n + biases_and_shapes
    assert rows["int8 per-channel, fp32 scales"].payload_bytes == n + 4 * c + biases_and_shapes
    assert rows["int4 per-channel, packed, fp32 scales"].payload_bytes == -(-n // 2) + 4 * c + biases_and_shapes
    assert rows["int4 per-channel as int8 bytes (unpacked)"].file_bytes == rows["int8 per-channel, fp32 scales"].file_bytes


# ---------------------------------------------------------------------------------- symmetric vs asymmetric
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_relu_grid_use(bits):
    x = np.linspace(0.0, 6.0, 1001)
    use = fg.relu_grid_use(x, bits)
    sym, asym = use["symmetric int"], use["asymmetric uint"]
    assert (sym.codes_in_range, sym.levels) == (2 ** (bits - 1), 2**bits - 1)
    assert (asym.codes_in_range, asym.levels) == (2**bits, 2**bits)
    assert sym.scale == pytest.approx(6.0 / (2 ** (bits - 1) - 1)) and asym.scale == pytest.approx(6.0 / (2**bits - 1))
    assert asym.sqnr_db > sym.sqnr_db
    with pytest.raises(ValueError, match="non-negative"):
        fg.relu_grid_use(x - 1.0, bits)


@HYP
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 9), st.integers(1, 6), st.integers(0, 255),
       st.integers(0, 255))
def test_the_four_terms_of_eq39_sum_to_the_product(seed, m, k, n, z1, z2):
    rng = np.random.default_rng(seed)
    q1, q2 = rng.integers(0, 256, (m, k)), rng.integers(0, 256, (k, n))
    terms = fg.zero_point_terms(q1, z1, q2, z2)
    direct = np.array([[sum((int(q1[i, j]) - z1) * (int(q2[j, o]) - z2) for j in range(k)) for o in range(n)] for i in range(m)])
    np.testing.assert_array_equal(sum(terms.values()), direct)


def test_zero_point_costs():
    sym = fg.zero_point_costs(4, 128, 128, weight_zero_point=False)
    asym = fg.zero_point_costs(4, 128, 128, weight_zero_point=True)
    assert sym.core_macs == asym.core_macs == 4 * 128 * 128 and sym.runtime_extra == 0
    assert asym.runtime_extra == 4 * 128 + 4 * 128 and asym.runtime_overhead == pytest.approx(2 / 128)
    assert fg.zero_point_costs(2, 3, 4, weight_zero_point=True, input_zero_point=False).offline == 0
    with pytest.raises(ValueError, match="k"):
        fg.zero_point_costs(4, 0, 4, weight_zero_point=True)


# ---------------------------------------------------------------------------------- mixed precision
def test_weight_bytes_is_eq79(lesson):
    bits = {n: b for n, b in zip(lesson.layers, [8, 6, 4, 3, 2, 8, 6, 4, 3, 2, 8, 6])}
    expected = sum(l.weight.size * bits[n] / 8 + 4 * l.weight.shape[0] for n, l in lesson.layers.items())
    assert fg.weight_bytes(lesson, bits) == expected


def test_greedy_bits_respects_the_budget_and_nests(lesson):
    previous = None
    for kb in (40, 36, 30, 24, 18, 15, 13, 12, 5):
        alloc = fg.greedy_bits(lesson, 1000 * kb)
        assert set(alloc.values()) <= set(fg.MIXED_BITS)
        size = fg.weight_bytes(lesson, alloc)
        floor = fg.weight_bytes(lesson, {n: 2 for n in lesson.layers})
        assert size <= 1000 * kb or size == floor
        if previous is not None:  # the same sequence of steps, stopped earlier: a larger budget never has fewer bits
            assert all(previous[n] >= alloc[n] for n in alloc)
        previous = alloc
    assert fg.greedy_bits(lesson, 1e9) == {n: 8 for n in lesson.layers}


def test_bad_input_names_itself(lesson):
    with pytest.raises(ValueError, match="granularity"):
        fg.fake_quant_granular(np.ones((2, 2)), 4, "per-group")
    with pytest.raises(ValueError, match="group_size"):
        fg.quantize_groups(np.ones((2, 2)), 4, 0)
    with pytest.raises(ValueError, match="w must be"):
        fg.quantize_groups(np.ones(4), 4, 2)
    with pytest.raises(TypeError, match="lesson"):
        fg.granular_accuracy("model", 4, 32)
    with pytest.raises(ValueError, match="layer"):
        fg.relu_activations(lesson, "classifier")
    with pytest.raises(ValueError, match="shape"):
        fg.bits_per_weight((4,), 4, 32)
    with pytest.raises(ValueError, match="q1"):
        fg.zero_point_terms(np.ones((2, 3), int), 0, np.ones((2, 3), int), 0)


# ---------------------------------------------------------------------------------- explorers (headless)
def test_group_size_explorer_moves_its_numbers(lesson):
    from qlearn.widgets.formats_granularity import group_size_explorer

    ex = group_size_explorer(lesson)
    seen = []
    for g in fg.GRANULARITIES:
        ex.controls["granularity"].value = g
        seen.append((ex.numbers["SQNR of this layer (dB)"], ex.numbers["bits per weight, fp16 scales"]))
    assert [b for _, b in seen] == sorted(b for _, b in seen)
    ex.controls["bits"].value = 8
    assert ex.numbers["bits per weight, fp16 scales"] == 8 + 16 / 8
    assert ex.numbers["accuracy, all layers at this granularity"] == fg.granular_accuracy(lesson, 8, 8)


def test_mixed_precision_explorer_moves_its_numbers(lesson):
    from qlearn.widgets.formats_granularity import mixed_precision_explorer

    ex = mixed_precision_explorer(lesson, budget_kb=30.0)
    big = ex.numbers["greedy size (KB)"]
    ex.controls["budget_kb"].value = 14.0
    assert ex.numbers["greedy size (KB)"] <= 14.0 < big <= 30.0
    alloc = fg.greedy_bits(lesson, 14000)
    assert ex.numbers["bits per layer"] == " ".join(str(b) for b in alloc.values())
    assert ex.numbers["greedy accuracy"] == fg.allocation_accuracy(lesson, alloc)
