"""Exercises graded by tests: the checks, the student notebooks and the batch grader.

Each task's oracle is qlearn's own implementation (held to PyTorch, TFLite vectors and big-integer
references by the library's tests). Here we show that

* the checks pass the solutions and correct alternatives, catch each classic bug with the hint for it,
  give partial credit per group of cases, and never claim more than they ran;
* the student notebooks are exactly the stripped solutions, and run top to bottom without raising;
* the grader runs every submission in its own process, survives and reports each crafted bad
  submission (infinite loops, sys.exit, os._exit, a segfault, deleted / reordered cells, a renamed
  function, a wrong signature, exceptions, a memory hog, a file that is not a notebook) with the right
  partial score, writes a CSV row and a feedback file for each, and leaves every file byte for byte
  unchanged.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import re
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from exercise_notebooks import base, cell_defining, insert_after, replace_body
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.grading import checks, events, generated, grader, judge, outcomes, spec, strip, timeouts
from qlearn.grading.checks import PROFILES, run_check
from qlearn.grading.exercises._common import floats_close, ints_equal
from qlearn.grading.notebook import code_cells, exercise_of, load_namespace, read_notebook, tasks_for
from qlearn.grading.tasks import EXERCISES, get_task, tasks
from qlearn.grading.timeouts import time_limit

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"
STUDENTS = ROOT / "notebooks" / "exercises"
FAST = 15  # generated cases per check in these tests (the profiles' numbers are tested separately)
HYP = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def solution_ns():
    """exercise id -> namespace of its solution notebook (run in this process, checks deferred)."""
    return {ex: load_namespace(SOLUTIONS / name) for ex, (name, _) in EXERCISES.items()}


def solution(solution_ns, task_id):
    t = tasks()[task_id]
    return solution_ns[t.exercise][t.function]


# ==================================================================================== the registry
def test_registry_is_complete_and_consistent():
    reg = tasks()
    assert len(reg) >= 16 and set(EXERCISES) == {t.exercise for t in reg.values()}
    names = [t.function for t in reg.values()]
    assert len(names) == len(set(names)), "function names must be unique: the grader matches by name"
    for tid, t in reg.items():
        assert re.fullmatch(r"task_\d+_\d+", tid) and tid.startswith(f"task_{t.exercise[2:]}_")
        assert t.fixed and t.edge, f"{tid} needs fixed and edge cases"
        assert t.max_points == 3
        for case in t.fixed + t.edge:
            assert len(case.args) == len(t.params), f"{tid}: case {case.label!r} has the wrong number of arguments"


def test_get_task_refuses_bad_ids():
    with pytest.raises(TypeError, match="string such as"):
        get_task(12)
    with pytest.raises(ValueError, match="Did you mean task_1_2"):
        get_task("task_1_2x")
    with pytest.raises(ValueError, match="profile must be one of"):
        run_check("task_1_2", lambda *a: None, profile="fast")
    with pytest.raises(ValueError, match="examples must be a positive integer"):
        run_check("task_1_2", lambda *a: None, examples=0)


# ==================================================================================== verdicts
def test_solution_verdict_says_what_ran_and_never_all_tests(solution_ns):
    fn = solution(solution_ns, "task_7_2")
    note = run_check("task_7_2", fn, profile="notebook")
    assert note.passed and note.points == 3
    text = note.report()
    assert "3 fixed cases, 7 edge cases and 25 generated cases (hypothesis, fixed seed)" in text
    assert "grader runs the same cases with 60 generated ones instead of 25" in text
    assert "all tests" not in text.lower()
    graded = run_check("task_7_2", fn, profile="grade")
    assert "60 generated cases" in graded.report() and "grader runs" not in graded.report()
    assert [g.ran for g in graded.groups] == [3, 7, PROFILES["grade"]]


def test_check_prints_the_verdict_once(solution_ns, capsys):
    assert checks.check("task_7_1", solution(solution_ns, "task_7_1")) is None
    out = capsys.readouterr().out
    assert out.startswith("PASSED task_7_1 srdhm: 3/3 points") and out.count("PASSED") == 1


def test_same_submission_same_verdict():
    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        return np.clip(np.floor(x / scale + 0.5) + zero_point, qmin, qmax).astype(np.int64)

    a = run_check("task_1_2", quantize_tensor, examples=FAST).report()
    b = run_check("task_1_2", quantize_tensor, examples=FAST).report()
    assert a == b and "ties: x/S = k + 1/2" in a


def test_failure_shows_input_expected_actual_why_and_hint():
    def dequantize_tensor(q, scale, zero_point):
        return scale * (q - zero_point)  # uint8 arithmetic wraps

    r = run_check("task_1_3", dequantize_tensor, profile="notebook", examples=FAST)
    text = r.report()
    assert r.status == "failed" and r.points == 0
    for part in ("input     q=array([0, 3, 127], dtype=uint8), scale=0.5, zero_point=128",
                 "expected  array([-64.0, -62.5, -0.5])", "got       array([64.0, 65.5, 127.5])",
                 "why       at index 0: expected -64.0, got 64.0", "3 - 128 = 131 in uint8"):
        assert part in text, part
    assert "(The grader runs 60 generated cases instead of 15.)" in text  # the counts that really ran
    assert "generated cases  FAILED at case" in text


# ==================================================================================== what goes wrong in a function
def test_untouched_stub_is_not_implemented():
    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        raise NotImplementedError("Task 1.2: replace this line with your code")

    r = run_check("task_1_2", quantize_tensor)
    assert r.status == "not implemented" and r.points == 0 and not r.groups
    assert "still raises NotImplementedError" in r.report()


def test_wrong_signature_and_non_function_are_errors():
    def quantize_tensor(x, scale):
        return x

    r = run_check("task_1_2", quantize_tensor)
    assert r.status == "error" and "keep the parameters of the stub" in r.message
    r = run_check("task_1_2", 42)
    assert r.status == "error" and "needs your function quantize_tensor itself" in r.message


def test_qlearn_own_function_is_refused():
    from qlearn.fixedpoint import rounding_divide_by_pot

    r = run_check("task_7_2", rounding_divide_by_pot)
    assert r.status == "error" and "qlearn's own qlearn.fixedpoint" in r.message


def _calls_oracle_directly():
    from qlearn.qparams import QParams
    from qlearn.quantize import quantize

    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        return quantize(x, QParams(scale, zero_point, qmin, qmax))

    return quantize_tensor


def _calls_oracle_through_module():
    import qlearn.quantize
    from qlearn.qparams import QParams

    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        return qlearn.quantize.quantize(x, QParams(scale, zero_point, qmin, qmax))

    return quantize_tensor


def _calls_oracle_through_helper():
    namespace: dict = {}
    exec(
        "from qlearn.quantize import fake_quantize\n"
        "def helper(x, qp):\n    return fake_quantize(x, qp)\n"
        "def quantize_tensor(x, scale, zero_point, qmin, qmax):\n    return helper(x, None)\n",
        namespace,
    )
    return namespace["quantize_tensor"]


@pytest.mark.parametrize("make", [_calls_oracle_directly, _calls_oracle_through_module, _calls_oracle_through_helper])
def test_calling_the_reference_is_refused(make):
    r = run_check("task_1_2", make(), examples=FAST)
    assert r.status == "error" and r.points == 0 and "the reference implementation" in r.message


def test_infinite_loop_times_out_and_later_groups_do_not_run():
    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        if np.any(np.abs(x) >= 1000):  # only the clamping edge case loops
            while True:
                pass
        return np.clip(np.rint(x / scale) + zero_point, qmin, qmax).astype(np.int64)

    t0 = time.perf_counter()
    r = run_check("task_1_2", quantize_tensor, examples=FAST, time_limit_s=0.5)
    assert time.perf_counter() - t0 < 5
    assert [g.points for g in r.groups] == [1, 0, 0] and r.status == "partial"
    assert "TIMED OUT" in r.groups[1].note and "not run" in r.groups[2].note


def test_sys_exit_and_exceptions_inside_a_function_are_failed_cases():
    def dequantize_tensor(q, scale, zero_point):
        import sys

        sys.exit(3)

    r = run_check("task_1_3", dequantize_tensor, examples=FAST)
    assert r.points == 0 and "called sys.exit()" in r.report()

    def sqnr_db(x, x_hat):
        if x.shape != x_hat.shape:
            raise ValueError("shapes differ")
        if not np.any(x):
            raise TypeError("nope")  # the contract says ValueError
        noise = np.sum((x_hat - x) ** 2)
        return float("inf") if noise == 0 else float(10 * np.log10(np.sum(x**2) / noise))

    r = run_check("task_2_1", sqnr_db, examples=FAST)
    text = r.report()
    assert "raised TypeError: nope" in text and "the contract asks for ValueError here, not TypeError" in text
    assert [g.points for g in r.groups] == [1, 0, 0]


def test_modifying_the_input_in_place_is_reported():
    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        x /= scale
        return np.clip(np.rint(x) + zero_point, qmin, qmax).astype(np.int64)

    r = run_check("task_1_2", quantize_tensor, examples=FAST)
    assert r.points == 0 and "modified its input 'x' in place" in r.report()


def test_time_limit_nests_and_restores_the_outer_limit():
    with pytest.raises(timeouts.CheckTimeout):
        with time_limit(0.4):
            with time_limit(5.0):
                pass  # the inner limit ends; the outer one must still fire
            while True:
                time.sleep(0.01)
    with time_limit(None):
        pass


# ==================================================================================== each task catches its classic bug
def _bug(task_id: str, src: str):
    ns = {"np": np, "math": math}
    if task_id.startswith(("task_6", "task_9")):
        import torch

        ns["torch"] = torch
    exec(src, ns)
    return ns[tasks()[task_id].function]


BUGS = [
    # (task, buggy implementation, points it still earns, words its report must contain)
    ("task_1_1", "def scale_and_zero_point(lo, hi, bits):\n"
                 "    lo, hi = min(lo, 0.0), max(hi, 0.0); s = (hi - lo) / (2**bits - 1) or 1.0\n"
                 "    return s, int(np.round(-lo / s))", 1, "halves up"),
    ("task_1_2", "def quantize_tensor(x, scale, zero_point, qmin, qmax):\n"
                 "    return np.clip((np.rint(x / scale) + zero_point).astype(np.uint8), qmin, qmax)", None, "astype(np.uint8)"),
    ("task_1_3", "def dequantize_tensor(q, scale, zero_point):\n    return scale * (q - zero_point)", 0, "wraps around"),
    ("task_2_1", "def sqnr_db(x, x_hat):\n    return float(10 * np.log10(np.sum(x**2) / np.sum((x_hat - x)**2)))",
     None, "the contract asks you to raise ValueError"),
    ("task_2_2", "def rounding_and_clipping_mse(x, scale, zero_point, qmin, qmax):\n"
                 "    q = np.clip(np.rint(x / scale) + zero_point, qmin, qmax); e = (scale * (q - zero_point) - x) ** 2\n"
                 "    c = (x < scale * (qmin - zero_point - 0.5)) | (x > scale * (qmax - zero_point + 0.5))\n"
                 "    return float(e[~c].mean()) if (~c).any() else 0.0, float(e[c].mean()) if c.any() else 0.0",
     None, "divided by N"),
    ("task_3_1", "def per_channel_minmax(w, axis):\n    return w.min(axis=axis), w.max(axis=axis)", None, "reduce over every axis"),
    ("task_3_2", "def symmetric_channel_scales(w):\n    f = w.reshape(len(w), -1)\n    return np.maximum(f.max(1), 1e-300) / 127",
     0, "the contract says S = 1"),
    ("task_3_3", "def quantize_per_channel(w, scales, axis):\n    return np.clip(np.rint(w / scales), -127, 127).astype(np.int64)",
     None, "LAST axis"),
    ("task_4_1", "def percentile_range(x, pct):\n    lo, hi = np.percentile(x, [100 - pct, pct]); return float(lo), float(hi)",
     2, "raise ValueError for pct outside"),
    ("task_4_2", "def best_clipping_range(x, bits, alphas):\n"
                 "    return min(float(np.min(x)), 0.0), max(float(np.max(x)), 0.0)", None, "smallest MSE"),
    ("task_5_1", "def batchnorm_inference(z, gamma, beta, mean, var, eps):\n"
                 "    return gamma * (z - mean) / np.sqrt(var + eps) + beta", None, "LAST axis"),
    ("task_5_2", "def fold_bn(w, b, gamma, beta, mean, var, eps):\n    f = gamma / np.sqrt(var + eps)\n"
                 "    return w * f.reshape((-1,) + (1,) * (w.ndim - 1)), beta + (b - mean) * f", None, "b = 0"),
    ("task_6_1", "def round_ste(x):\n    return torch.round(x)", 0, None),
    ("task_6_2", "def fake_quant_ste(x, scale, zero_point, qmin, qmax):\n"
                 "    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)\n"
                 "    qr = x / scale + zero_point; inside = ((qr >= qmin - 0.5) & (qr <= qmax + 0.5)).to(x.dtype)\n"
                 "    return ((q - zero_point) * scale).detach() + (x - x.detach()) * inside", None, "decide 'inside' on x"),
    ("task_7_1", "def srdhm(a, b):\n    if a == b == -2**31: return 2**31 - 1\n"
                 "    ab = a * b\n    return (ab + (2**30 if ab >= 0 else 1 - 2**30)) // 2**31", None, "truncate toward zero"),
    ("task_7_2", "def rounding_divide_by_pot(x, exponent):\n    return (x + (1 << exponent >> 1)) >> exponent", None,
     "away from zero"),
    ("task_7_3", "def quantize_multiplier(m):\n    if m == 0: return 0, 0\n    q, e = math.frexp(m)\n"
                 "    return int(round(q * 2**31)), e", None, "2^31"),
    ("task_7_4", "def multiply_by_quantized_multiplier(x, m0, shift):\n    return round(x * m0 * 2.0 ** (shift - 31))",
     None, "rounds twice"),
    ("task_8_1", "def conv_accumulator(x_q, x_zp, w_q, bias_q, stride, padding):\n"
                 "    x = np.pad(x_q.astype(np.int64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2)) - x_zp\n"
                 "    n, c, h, w = x.shape; o, _, kh, kw = w_q.shape\n"
                 "    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1\n"
                 "    acc = np.zeros((n, o, ho, wo), np.int64)\n"
                 "    for i in range(ho):\n        for j in range(wo):\n"
                 "            p = x[:, :, i*stride:i*stride+kh, j*stride:j*stride+kw]\n"
                 "            acc[:, :, i, j] = np.tensordot(p, w_q.astype(np.int64), axes=([1, 2, 3], [1, 2, 3]))\n"
                 "    return acc + bias_q[None, :, None, None]", None, "pad with the zero point"),
    ("task_8_2", "def quantized_conv2d(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, stride, padding, act_min, act_max):\n"
                 "    import torch, torch.nn.functional as F\n"
                 "    acc = F.conv2d(torch.tensor(x_q.astype(np.float64) - x_zp), torch.tensor(w_q.astype(np.float64)),\n"
                 "                   torch.tensor(bias_q.astype(np.float64)), stride=stride, padding=padding).numpy()\n"
                 "    q = np.round(acc * m0 * 2.0 ** (shift - 31)) + out_zp\n"
                 "    return np.clip(q, act_min, act_max).astype(np.uint8)", None, None),
    ("task_9_1", "def ema_range(batches, decay):\n    lo = hi = 0.0\n"
                 "    for b in batches:\n        lo, hi = decay * lo + (1 - decay) * b.min(), decay * hi + (1 - decay) * b.max()\n"
                 "    return float(lo), float(hi)", None, "the EMA started at (0, 0)"),
    ("task_9_2", "def qat_step(w, x, target, scale, lr):\n    wt = torch.tensor(w, requires_grad=True)\n"
                 "    w_hat = torch.clamp(torch.round(wt / scale), -127, 127) * scale\n"
                 "    loss = torch.mean((torch.from_numpy(x) @ w_hat.T - torch.from_numpy(target)) ** 2)\n"
                 "    loss.backward()\n    return (wt - lr * wt.grad).detach().numpy()", None, "straight-through"),
    ("task_10_1", "def add_multipliers(a_scale, b_scale, out_scale, left_shift):\n"
                  "    from qlearn.fixedpoint import quantize_multiplier as qm\n    t = max(a_scale, b_scale)\n"
                  "    return (*qm(a_scale / t), *qm(b_scale / t), *qm(t / (2**left_shift * out_scale)))", 0, "T = 2 max(Sa, Sb)"),
    ("task_10_2", "def quantized_add(a_q, a_zp, a_m0, a_shift, b_q, b_zp, b_m0, b_shift, out_zp, out_m0, out_shift, left_shift):\n"
                  "    return np.clip(a_q.astype(int) - a_zp + b_q.astype(int) - b_zp + out_zp, 0, 255).astype(np.uint8)",
     0, "codes on different scales cannot be added"),
    ("task_11_1", "def int_weights_and_bias(w, b, in_scale):\n    s = np.abs(w.reshape(len(w), -1)).max(1) / 127\n"
                  "    q = np.clip(np.rint(w / s.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)\n"
                  "    return q, np.rint(b / s).astype(np.int32), s", 0, "S_in S_w"),
    ("task_11_2", "def requant_and_clamp(in_scale, w_scale, out_scale, out_zp, relu6):\n"
                  "    from qlearn.fixedpoint import quantize_multiplier as qm\n"
                  "    m0, sh = qm(in_scale * np.asarray(w_scale) / out_scale)\n"
                  "    return m0, sh, 0, (min(255, round(6 / out_scale)) if relu6 else 255)", None, "the code Z"),
    ("task_12_1", "def pack_int4(codes):\n    c = np.asarray(codes).astype(np.int64)\n"
                  "    c = np.append(c, 0) if c.size % 2 else c\n"
                  "    return (c[0::2] | ((c[1::2] & 15) << 4)).astype(np.uint8)", None, "mask with & 0xF"),
    ("task_12_2", "def unpack_int4(packed, count):\n    b = packed.astype(np.int64)\n"
                  "    return np.stack([b & 15, b >> 4], axis=1).reshape(-1)[:count].astype(np.int8)", None, "v - 16"),
    ("task_13_1", "def per_token_quantize(x, bits):\n    m = np.abs(x).max(axis=0)\n"
                  "    s = np.where(m > 0, m / (2 ** (bits - 1) - 1), 1.0)\n"
                  "    q = np.clip(np.rint(x / s[None, :]), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)\n"
                  "    return q.astype(np.int64), s", None, "ROW"),
    ("task_13_2", "def smoothquant_scales(x_absmax, w_absmax, alpha):\n"
                  "    if len(x_absmax) != len(w_absmax) or not 0 <= alpha <= 1: raise ValueError('bad input')\n"
                  "    with np.errstate(divide='ignore', invalid='ignore'):\n"
                  "        s = x_absmax ** (1 - alpha) / w_absmax ** alpha\n"
                  "    return np.where((x_absmax > 0) & (w_absmax > 0), s, 1.0)", None, "exponent"),
]


@pytest.mark.parametrize("task_id,src,points,words", BUGS, ids=[b[0] for b in BUGS])
def test_each_task_catches_its_classic_bug(task_id, src, points, words):
    with np.errstate(all="ignore"):
        r = run_check(task_id, _bug(task_id, src), examples=FAST)
    assert not r.passed, r.report()
    assert r.points < r.max_points
    if points is not None:
        assert r.points == points, r.report()
    if words:
        assert words in r.report(), r.report()


def test_every_task_has_a_classic_bug_test():
    assert {b[0] for b in BUGS} == set(tasks())


ALTERNATIVES = [
    # correct implementations written differently from the solutions: they must pass
    ("task_1_2", "def quantize_tensor(x, scale, zero_point, qmin, qmax):\n"
                 "    return np.clip(np.round(x * (1.0 / scale)) + zero_point, qmin, qmax).astype(np.int32)"),
    ("task_1_3", "def dequantize_tensor(q, scale, zero_point):\n    return (q.astype(np.int64) - zero_point) * scale"),
    ("task_3_1", "def per_channel_minmax(w, axis):\n    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)\n"
                 "    return w.min(axis=other), w.max(axis=other)"),
    ("task_6_2", "def fake_quant_ste(x, scale, zero_point, qmin, qmax):\n"
                 "    class F(torch.autograd.Function):\n"
                 "        @staticmethod\n        def forward(ctx, x):\n"
                 "            ctx.save_for_backward((x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale))\n"
                 "            return (torch.clamp(torch.round(x * (1 / scale)) + zero_point, qmin, qmax) - zero_point) * scale\n"
                 "        @staticmethod\n        def backward(ctx, g):\n            (m,) = ctx.saved_tensors\n            return g * m\n"
                 "    return F.apply(x)"),
    ("task_7_1", "def srdhm(a, b):\n    if a == b == -2**31: return 2**31 - 1\n    p = a * b\n"
                 "    n = p + (2**30 if p >= 0 else 1 - 2**30)\n    return int(math.copysign(abs(n) // 2**31, n))"),
]


@pytest.mark.parametrize("task_id,src", ALTERNATIVES, ids=[a[0] for a in ALTERNATIVES])
def test_correct_alternatives_pass(task_id, src):
    r = run_check(task_id, _bug(task_id, src), profile="grade")
    assert r.passed, r.report()


def test_solutions_pass_in_the_notebook_profile_too(solution_ns):
    for tid in ("task_1_1", "task_4_2", "task_8_2"):
        assert run_check(tid, solution(solution_ns, tid), profile="notebook").passed


def _via_the_grader(task_id, fn, examples):
    """The grader's split: outcomes collected as in the sandbox, sent as plain data, judged outside."""
    from qlearn.grading import wire

    task = tasks()[task_id]
    cases = generated.cases_for(task, "grade", examples)
    raw = outcomes.collect_outcomes(task, fn, {g: [c.args for c in cs] for g, cs in cases.items()}, 60,
                                    encode=wire.encode_outcome)
    report = events.decode_report(wire.loads(wire.dumps({"r": raw}))["r"])
    return outcomes.grade_report(task, report, cases, examples=examples, time_limit_s=60)


SPLIT = [(b[0], b[1]) for b in BUGS] + ALTERNATIVES


@pytest.mark.parametrize("task_id,src", SPLIT, ids=[f"{s[0]}-{i}" for i, s in enumerate(SPLIT)])
def test_the_grader_scores_exactly_like_run_check(task_id, src):
    fn = _bug(task_id, src)
    with np.errstate(all="ignore"):
        local = run_check(task_id, fn, examples=FAST)
        remote = _via_the_grader(task_id, fn, FAST)
    assert (remote.points, remote.status) == (local.points, local.status), remote.report()
    assert [(g.name, g.points, g.ran, g.total) for g in remote.groups] == [(g.name, g.points, g.ran, g.total) for g in local.groups]
    for a, b in zip(remote.groups[:2], local.groups[:2]):  # fixed and edge: the same first failure, word for word
        assert (a.failure is None) == (b.failure is None) and (a.failure is None or a.failure.why == b.failure.why)


def test_the_grader_scores_the_solutions_like_run_check(solution_ns):
    for tid in tasks():
        fn = solution(solution_ns, tid)
        assert _via_the_grader(tid, fn, FAST).points == run_check(tid, fn, examples=FAST).points == 3, tid


# ==================================================================================== wrong rounding rules
# Every task whose contract names a rounding rule, written once with the rounding left open (RND).
# The four classic wrong rules (half up, half to even or half away -- whichever the task does not
# want --, floor and Python's round) must each lose at least two of the three points; the rules that
# agree with the contract must get all three (so the template itself is a correct solution).
def _np_rules():
    return {
        "half_up": lambda v: np.floor(np.asarray(v, dtype=np.float64) + 0.5),
        "half_even": np.rint,
        "half_away": lambda v: np.sign(v) * np.floor(np.abs(np.asarray(v, dtype=np.float64)) + 0.5),
        "floor": np.floor,
        "python_round": np.vectorize(lambda t: float(round(float(t))), otypes=[np.float64]),
    }


def _exact_rules():  # on Fractions (exact rationals) or floats; Python's round() gets a float, as learners write it
    from fractions import Fraction

    half = Fraction(1, 2)
    return {
        "half_up": lambda v: math.floor(Fraction(v) + half),
        "half_even": lambda v: round(Fraction(v)),
        "half_away": lambda v: (1 if v >= 0 else -1) * math.floor(abs(Fraction(v)) + half),
        "floor": lambda v: math.floor(v),
        "python_round": lambda v: round(float(v)),
    }


def _torch_rules():
    import torch

    return {
        "half_up": lambda t: torch.floor(t + 0.5),
        "half_even": torch.round,
        "half_away": lambda t: torch.sign(t) * torch.floor(torch.abs(t) + 0.5),
        "floor": torch.floor,
        "python_round": lambda t: torch.tensor([float(round(float(v))) for v in t.detach().flatten()],
                                               dtype=t.dtype).reshape(t.shape),
    }


_SRDHM_EXACT = ("def _srdhm(a, b):\n    if a == b == -2**31: return 2**31 - 1\n"
                "    p = a * b + (2**30 if a * b >= 0 else 1 - 2**30)\n    return p // 2**31 if p >= 0 else -((-p) // 2**31)\n")
ROUNDING = {
    # task: (which rules, template with RND, the rules that agree with the contract)
    "task_1_1": ("np", "def scale_and_zero_point(lo, hi, bits):\n    if lo > hi: raise ValueError('lo > hi')\n"
                       "    lo, hi = min(lo, 0.0), max(hi, 0.0); s = (hi - lo) / (2**bits - 1) if hi > lo else 1.0\n"
                       "    return s, int(RND(np.float64(-lo / s)))", {"half_up", "half_away"}),
    "task_1_2": ("np", "def quantize_tensor(x, scale, zero_point, qmin, qmax):\n"
                       "    return np.clip(RND(x / scale) + zero_point, qmin, qmax).astype(np.int64)", {"half_even", "python_round"}),
    "task_3_3": ("np", "def quantize_per_channel(w, scales, axis):\n    shape = [1] * w.ndim; shape[axis] = -1\n"
                       "    return np.clip(RND(w / np.reshape(scales, shape)), -127, 127).astype(np.int64)", {"half_even", "python_round"}),
    "task_6_1": ("torch", "def round_ste(x):\n    return x + (RND(x) - x).detach()", {"half_even", "python_round"}),
    "task_6_2": ("torch", "def fake_quant_ste(x, scale, zero_point, qmin, qmax):\n"
                          "    q = torch.clamp(RND(x / scale) + zero_point, qmin, qmax)\n"
                          "    inside = ((x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale)).to(x.dtype)\n"
                          "    return (scale * (q - zero_point)).detach() + (x - x.detach()) * inside", {"half_even", "python_round"}),
    "task_7_1": ("exact", "def srdhm(a, b):\n    if a == b == -2**31: return 2**31 - 1\n"
                          "    return RND(Fraction(a * b, 2**31))", {"half_up"}),
    "task_7_2": ("exact", "def rounding_divide_by_pot(x, exponent):\n    return RND(Fraction(x, 2**exponent))", {"half_away"}),
    "task_7_3": ("exact", "def quantize_multiplier(m):\n    if m < 0: raise ValueError('m < 0')\n    if m == 0: return 0, 0\n"
                          "    q, e = math.frexp(m); m0 = RND(q * 2**31)\n    if m0 == 2**31: m0, e = 2**30, e + 1\n"
                          "    return (0, 0) if e < -31 else (m0, e)", {"half_up", "half_away"}),
    "task_7_4": ("exact", _SRDHM_EXACT + "def multiply_by_quantized_multiplier(x, m0, shift):\n"
                          "    y = x * 2 ** max(shift, 0)\n    if not -2**31 <= y < 2**31: raise OverflowError('int32')\n"
                          "    return RND(Fraction(_srdhm(y, m0), 2 ** max(-shift, 0)))", {"half_away"}),
    "task_8_2": ("exact", _SRDHM_EXACT + "def quantized_conv2d(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, "
                          "stride, padding, act_min, act_max):\n"
                          "    import torch\n    import torch.nn.functional as F\n"
                          "    acc = F.conv2d(torch.tensor(x_q.astype(np.float64) - x_zp), torch.tensor(w_q.astype(np.float64)),\n"
                          "                   torch.tensor(bias_q.astype(np.float64)), stride=stride, padding=padding)"
                          ".numpy().astype(np.int64)\n"
                          "    q = np.vectorize(lambda a: RND(Fraction(_srdhm(int(a) * 2 ** max(shift, 0), m0), "
                          "2 ** max(-shift, 0))))(acc)\n"
                          "    return np.clip(q + out_zp, act_min, act_max).astype(np.uint8)", {"half_away"}),
    "task_11_1": ("np", "def int_weights_and_bias(w, b, in_scale):\n    a = np.abs(w.reshape(len(w), -1)).max(1)\n"
                        "    s = np.where(a > 0, a / 127, 1.0)\n"
                        "    q = np.clip(RND(w / s.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)\n"
                        "    bq = RND(b / (in_scale * s))\n    if np.abs(bq).max() >= 2**31: raise OverflowError('int32')\n"
                        "    return q, bq.astype(np.int32), s", {"half_even", "python_round"}),
    "task_11_2": ("exact", "def requant_and_clamp(in_scale, w_scale, out_scale, out_zp, relu6):\n    m0s, shifts = [], []\n"
                           "    for m in in_scale * np.asarray(w_scale, dtype=np.float64) / out_scale:\n"
                           "        q, e = math.frexp(float(m)); m0 = RND(q * 2**31)\n"
                           "        if m0 == 2**31: m0, e = 2**30, e + 1\n        if e > 30: raise ValueError('too large')\n"
                           "        m0s.append(0 if e < -31 else m0); shifts.append(0 if e < -31 else e)\n"
                           "    hi = min(255, out_zp + RND(6.0 / out_scale)) if relu6 else 255\n"
                           "    return np.array(m0s), np.array(shifts), max(0, out_zp) if relu6 else 0, hi", {"half_up", "half_away"}),
    "task_13_1": ("np", "def per_token_quantize(x, bits):\n    m = np.abs(x).max(axis=1)\n"
                        "    s = np.where(m > 0, m / (2 ** (bits - 1) - 1), 1.0)\n"
                        "    q = np.clip(RND(x / s[:, None]), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)\n"
                        "    return q.astype(np.int64), s", {"half_even", "python_round"}),
}
RULE_NAMES = ("half_up", "half_even", "half_away", "floor", "python_round")


def _with_rule(task_id, rule):
    from fractions import Fraction

    import torch

    kind, src, _ = ROUNDING[task_id]
    rules = {"np": _np_rules, "exact": _exact_rules, "torch": _torch_rules}[kind]()
    ns = {"np": np, "math": math, "torch": torch, "Fraction": Fraction, "RND": rules[rule]}
    exec(src, ns)
    return ns[tasks()[task_id].function]


def test_every_task_with_a_rounding_rule_has_a_rounding_template():
    named = {tid for tid, t in tasks().items() if re.search(r"round|ties|half", t.title + t.hint, re.I)}
    assert named - {"task_2_2", "task_4_2", "task_10_1", "task_10_2"} <= set(ROUNDING), named - set(ROUNDING)


@pytest.mark.parametrize("task_id,rule", [(t, r) for t in ROUNDING for r in RULE_NAMES], ids=lambda v: str(v))
def test_wrong_rounding_rules_lose_two_of_three_points(task_id, rule):
    fn = _with_rule(task_id, rule)
    right = rule in ROUNDING[task_id][2]
    for profile in ("grade", "notebook"):
        with np.errstate(all="ignore"):
            r = run_check(task_id, fn, profile=profile)
        if right:
            assert r.passed, r.report()
        else:
            assert r.points <= 1, f"{rule} keeps {r.points} of 3 points on {task_id}:\n{r.report()}"
            if rule == "floor" or rule == "half_up" and "half_even" in ROUNDING[task_id][2]:
                continue  # several mistakes give the same answer on a case; no particular one must be named
            assert "classic mistake" in r.report() or r.points == 0, r.report()


@pytest.mark.parametrize("rule", ["half_up", "half_even", "floor", "python_round"])
def test_wrong_rounding_rules_score_the_same_through_the_graders_split(rule):
    fn = _with_rule("task_7_2", rule)
    local = run_check("task_7_2", fn, examples=PROFILES["grade"])
    remote = _via_the_grader("task_7_2", fn, PROFILES["grade"])
    assert remote.points == local.points <= 1, remote.report()


# ==================================================================================== hints that diagnose
def test_a_forgotten_zero_point_gets_a_hint_about_the_zero_point_not_ties():
    def quantize_tensor(x, scale, zero_point, qmin, qmax):
        return np.clip(np.rint(x / scale), qmin, qmax).astype(np.int64)

    for r in (run_check("task_1_2", quantize_tensor, examples=FAST), _via_the_grader("task_1_2", quantize_tensor, FAST)):
        for g in r.groups:
            assert not g.passed and "the zero point left out" in g.failure.hint, r.report()
            assert "add the zero point" in g.failure.hint and "ties" not in g.failure.hint


def test_a_mistake_is_named_only_when_the_answer_matches_it():
    def quantize_tensor(x, scale, zero_point, qmin, qmax):  # wrong, but no registered mistake gives this
        return np.clip(np.rint(x / scale) + zero_point + 1, qmin, qmax).astype(np.int64)

    r = run_check("task_1_2", quantize_tensor, examples=FAST)
    assert r.points == 0 and "classic mistake" not in r.report()
    assert r.groups[0].failure.hint == tasks()["task_1_2"].hint  # the generic hint of the case / task


def test_every_registered_mistake_is_wrong_and_scores_below_full_marks():
    for tid, t in tasks().items():
        for bug in t.bugs:
            fn = (lambda f: lambda *a: f(*a))(bug.fn)  # the registry's functions live in qlearn: wrap them
            with np.errstate(all="ignore"):
                r = run_check(tid, fn, examples=FAST)
            assert r.points < 3, f"{tid}: {bug.name} passes"


def test_diagnosis_skips_broken_mistakes_and_explains_no_right_answer():
    task = tasks()["task_7_2"]
    case = spec.Case("a tie", (5, 1))
    boom = spec.Bug("a broken mistake", lambda x, e: 1 / 0, "never shown")
    t = __import__("dataclasses").replace(task, bugs=(boom,) + task.bugs)
    assert judge.diagnose(t, case, 3, 3) is None  # a right answer: no mistake explains it
    hint = judge.diagnose(t, case, 3, 2)  # 2.5 -> 2: half to even (half up gives 3, the right answer here)
    assert hint is not None and "half to even" in hint and "never shown" not in hint
    assert judge.diagnose(t, case, 3, 17) is None


# ==================================================================================== comparison properties
@HYP
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=20), st.data())
def test_ints_equal_catches_any_single_change(values, data):
    a = np.array(values)
    i = data.draw(st.integers(0, len(values) - 1))
    d = data.draw(st.integers(-5, 5).filter(bool))
    b = a.copy()
    b[i] += d
    assert ints_equal()(a, a.copy(), ()) is None
    why = ints_equal()(a, b, ())
    assert why is not None and f"at index {i}" in why
    assert "dtype float64" in ints_equal()(a, b.astype(np.float64), ())


@HYP
@given(st.floats(1e-3, 1e3), st.floats(1e-6, 1.0))
def test_floats_close_needs_agreement_to_1e_10(x, rel):
    compare = floats_close(1e-10, 0.0)
    assert compare(np.array([x]), np.array([x]), ()) is None
    assert compare(np.array([x]), np.array([x * (1 + rel)]), ()) is not None


def test_exact_ties_must_match_but_float_near_ties_may_round_either_way():
    compare = ints_equal(lambda args: args[0])
    assert compare(np.array([2]), np.array([3]), (np.array([2.5]),)) is not None  # an exact tie
    assert compare(np.array([2]), np.array([3]), (np.array([2.5 + 1e-12]),)) is None  # a float near-tie
    assert compare(np.array([2]), np.array([4]), (np.array([2.5 + 1e-12]),)) is not None


# ==================================================================================== strip: solution -> student
def test_student_notebooks_are_the_stripped_solutions():
    solutions = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))
    students = sorted(p.name for p in STUDENTS.glob("*.ipynb"))
    assert solutions == students == sorted(name for name, _ in EXERCISES.values())
    for name in solutions:
        assert (STUDENTS / name).read_text(encoding="utf-8") == strip.student_text(SOLUTIONS / name), (
            f"{name} is out of date: run python -m qlearn.grading.strip"
        )


def test_strip_cli(tmp_path, capsys):
    assert strip.main([str(SOLUTIONS), "--out", str(tmp_path), "--check"]) == 1
    assert strip.main([str(SOLUTIONS), "--out", str(tmp_path)]) == 0
    assert strip.main([str(SOLUTIONS), "--out", str(tmp_path), "--check"]) == 0
    assert strip.main([str(SOLUTIONS), "--out", str(SOLUTIONS)]) == 2
    assert strip.main([str(tmp_path / "nothing")]) == 2
    for p in tmp_path.glob("*.ipynb"):
        assert p.read_text() == (STUDENTS / p.name).read_text()


def test_strip_rules():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nprint(2)"
    assert strip.strip_source(src, task="1.2") == (
        'def f(x):\n    y = 1\n    raise NotImplementedError("Task 1.2: replace this line with your code")\n\nprint(2)'
    )
    assert strip.strip_source("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\ny = 2") == "# YOUR CODE HERE\ny = 2"
    for bad, msg in [("### BEGIN SOLUTION\nx", "without an"), ("x\n### END SOLUTION", "without a"),
                     ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another")]:
        with pytest.raises(strip.StripError, match=msg):
            strip.strip_source(bad)
    nb = nbformat.v4.new_notebook()
    nb.metadata["qlearn"] = {"exercise": "ex1", "version": "solution"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("secret notes", metadata={"tags": ["instructor"]}),
        nbformat.v4.new_markdown_cell("the answer is 42", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("x = 42", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("print(1)", execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")]),
    ]
    before = copy.deepcopy(nb)
    student = strip.strip_notebook(nb)
    assert nb == before, "strip_notebook must not modify its input"
    assert [c.source for c in student.cells] == ["YOUR ANSWER HERE", "# YOUR CODE HERE", "print(1)"]
    assert student.cells[2].outputs == [] and student.cells[2].execution_count is None
    assert student.metadata["qlearn"] == {"exercise": "ex1", "version": "student"}
    nb.cells.append(nbformat.v4.new_markdown_cell("### BEGIN SOLUTION"))
    with pytest.raises(strip.StripError, match="belong in code cells"):
        strip.strip_notebook(nb)


@HYP
@given(st.lists(st.from_regex(r"[a-z]{1,8}( = [0-9]{1,3})?", fullmatch=True), min_size=0, max_size=6),
       st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=0, max_size=4),
       st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=0, max_size=6))
def test_strip_keeps_everything_outside_the_block_and_nothing_inside(before, inside, after):
    lines = [f"    {s}" for s in before] + ["    ### BEGIN SOLUTION"] + [f"    secret_{s}" for s in inside] + \
        ["    ### END SOLUTION"] + [f"    {s}" for s in after]
    out = strip.strip_source("\n".join(lines)).split("\n")
    assert not any("secret_" in line or "SOLUTION" in line for line in out)
    assert out == [f"    {s}" for s in before] + ['    raise NotImplementedError("Replace this line with your code")'] + \
        [f"    {s}" for s in after]


# ==================================================================================== the notebooks themselves
@pytest.mark.parametrize("folder", [SOLUTIONS, STUDENTS], ids=["solutions", "students"])
def test_check_cells_name_each_task_and_its_function(folder):
    for name, _ in EXERCISES.values():
        nb = read_notebook(folder / name)
        ex = exercise_of(nb)
        assert nb["metadata"]["qlearn"]["exercise"] == ex
        calls = re.findall(r"""check\("(task_\d+_\d+)", (\w+)\)""", "\n".join(src for _, src in code_cells(nb)))
        assert [c[0] for c in calls] == tasks_for(ex), name
        for tid, fn in calls:
            assert tasks()[tid].function == fn, f"{name}: check({tid!r}, {fn}) names the wrong function"
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        assert "What this notebook teaches" in text and "When you are done" in text


def _run_all_in_process(path: Path) -> str:
    """Execute every code cell of a notebook with live checks; any exception fails the test."""
    nb = read_notebook(path)
    namespace: dict = {"__name__": "__main__"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for index, src in code_cells(nb):
            exec(compile(src, f"{path.name} cell {index}", "exec"), namespace)
    return buf.getvalue()


@pytest.mark.parametrize("name", [n for n, _ in EXERCISES.values()])
def test_student_notebook_runs_all_and_every_check_says_not_passed(name):
    out = _run_all_in_process(STUDENTS / name)
    n = len(tasks_for(exercise_of(read_notebook(STUDENTS / name))))
    assert out.count("NOT PASSED") == n and out.count("still raises NotImplementedError") == n


@pytest.mark.parametrize("name", ["ex1_quantize_dequantize.ipynb", "ex7_fixed_point.ipynb"])
def test_solution_notebook_check_cells_print_passed(name):
    out = _run_all_in_process(SOLUTIONS / name)
    n = len(tasks_for(exercise_of(read_notebook(SOLUTIONS / name))))
    assert out.count("PASSED task_") == n and "NOT PASSED" not in out


def test_student_notebook_runs_in_a_jupyter_kernel():
    from nbclient import NotebookClient

    nb = nbformat.read(str(STUDENTS / "ex7_fixed_point.ipynb"), as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("NOT PASSED task_7_" in o.get("text", "") for o in outputs) == 4


# ==================================================================================== the batch grader




def _crafted() -> dict[str, tuple[object, tuple[int, int, int], list[str]]]:
    """name -> (notebook, expected points of tasks 1.1-1.3, words its feedback must contain)."""
    out = {}
    out["loop_in_function"] = (replace_body(base(), "quantize_tensor", "while True:\n    pass"), (3, 0, 3), ["TIMED OUT"])
    out["loop_top_level"] = (insert_after(base(), "scale_and_zero_point", "while True:\n    pass"), (3, 3, 3),
                             ["(`while True:`) timed out"])
    out["stubborn_loop"] = (insert_after(base(), "scale_and_zero_point",
                                          "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
                                          "    except BaseException:\n        pass"), (3, 3, 3),
                            ["kept running after its time limit", "skipped and the notebook run again"])
    nb = insert_after(base(), "scale_and_zero_point", "import sys\nsys.exit(1)")
    out["sys_exit"] = (replace_body(nb, "dequantize_tensor", "import sys\nsys.exit(0)"), (3, 3, 0),
                       ["called sys.exit(1); the rest of the notebook still ran", "called sys.exit() / exit()"])
    out["kernel_crash"] = (insert_after(base(), "scale_and_zero_point", "import os\nos._exit(1)"), (3, 3, 3),
                           ["exited with code 1"])
    out["segfault_in_function"] = (replace_body(base(), "quantize_tensor", "import ctypes\nreturn ctypes.string_at(0)"),
                                   (3, 0, 3), ["while quantize_tensor was being checked, the process crashed (SIGSEGV"])
    nb = base()
    del nb.cells[cell_defining(nb, "dequantize_tensor")]
    out["deleted_cell"] = (nb, (3, 3, 0), ["no function named dequantize_tensor"])
    nb = base()
    nb.cells = nb.cells[:2] + nb.cells[2:][::-1]
    out["reordered"] = (nb, (3, 3, 3), ["NameError"])
    nb = base()
    i = cell_defining(nb, "quantize_tensor")
    nb.cells[i].source = nb.cells[i].source.replace("def quantize_tensor(", "def quantise_tensor(")
    out["renamed"] = (nb, (3, 0, 3), ["Did you rename it to quantise_tensor?"])
    nb = base()
    i = cell_defining(nb, "quantize_tensor")
    nb.cells[i].source = nb.cells[i].source.replace("(x, scale, zero_point, qmin, qmax):", "(x, scale):")
    out["wrong_signature"] = (nb, (3, 0, 3), ["keep the parameters of the stub"])
    out["partial"] = (replace_body(base(), "quantize_tensor",
                                    "q = np.floor(x / scale + 0.5) + zero_point\nreturn np.clip(q, qmin, qmax).astype(np.int64)"),
                      (3, 1, 3), ["round half to even", "FAILED at case 1 of 5: ties", "what a classic mistake gives (round half up"])
    nb = insert_after(base(), "scale_and_zero_point", "1 / 0")
    out["raises"] = (replace_body(nb, "scale_and_zero_point", "raise ValueError('oops')"), (0, 3, 3),
                     ["ZeroDivisionError", "raised ValueError: oops"])
    out["memory_hog"] = (insert_after(base(), "scale_and_zero_point", "big = np.ones(3 * 2**30 // 8)"), (3, 3, 3),
                         ["MemoryError"])
    out["vandal"] = (insert_after(base(), "scale_and_zero_point",
                                   "open('submission.ipynb', 'w').write('gone')\n"
                                   "import qlearn.grading.checks as c\nc.PROFILES['grade'] = 1"), (3, 3, 3), [])
    nb = base()
    del nb.metadata["qlearn"]
    out["no_metadata"] = (nb, (3, 3, 3), [])
    return out


def _sandboxed() -> bool:
    """Grade in bubblewrap where it is installed (always in CI); elsewhere these honest and crafted
    batches run without it (tests/test_grading_hostile.py covers the sandbox itself)."""
    import os

    from qlearn.grading import sandbox

    if sandbox.bwrap() is not None:
        return True
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true and bubblewrap (bwrap) is missing: bash .ci/install_bubblewrap.sh", pytrace=False)
    return False


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _csv(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return {row["submission"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def crafted_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    subs = root / "submissions"
    subs.mkdir()
    expected = _crafted()
    for name, (nb, _, _) in expected.items():
        nbformat.write(nb, str(subs / f"{name}.ipynb"))
    (subs / "not_a_notebook.ipynb").write_text("{ this is not json", encoding="utf-8")
    before = _digest(subs)
    limits = grader.Limits(time_limit=90, cell_timeout=5, task_timeout=5, memory_mb=2048, max_restarts=3,
                           grace=2, examples=10)
    t0 = time.perf_counter()
    grades = grader.grade_folder(subs, root / "grades.csv", limits=limits, jobs=2, progress=False,
                                 sandboxed=_sandboxed())
    return {"root": root, "subs": subs, "before": before, "grades": grades, "expected": expected,
            "seconds": time.perf_counter() - t0}


def test_crafted_submissions_get_the_right_partial_scores(crafted_batch):
    rows = _csv(crafted_batch["root"] / "grades.csv")
    expected = crafted_batch["expected"]
    assert set(rows) == set(expected) | {"not_a_notebook"}, "one CSV row per submission"
    for name, (_, points, _) in expected.items():
        row = rows[name]
        got = tuple(int(row[t]) for t in ("task_1_1", "task_1_2", "task_1_3"))
        assert got == points, f"{name}: {got} != {points}; notes: {row['notes']}"
        assert int(row["total"]) == sum(points) and int(row["possible"]) == 9
    assert rows["not_a_notebook"]["total"] == "0" and "not a Jupyter notebook" in rows["not_a_notebook"]["notes"]


def test_timeouts_and_crashes_appear_in_the_csv_notes(crafted_batch):
    rows = _csv(crafted_batch["root"] / "grades.csv")
    assert "task_1_2 quantize_tensor: the fixed cases timed out" in rows["loop_in_function"]["notes"]
    assert "SIGSEGV" in rows["segfault_in_function"]["notes"]
    assert "timed out" in rows["loop_top_level"]["notes"] and "exited with code 1" in rows["kernel_crash"]["notes"]


def test_crafted_submissions_get_useful_feedback(crafted_batch):
    fdir = crafted_batch["root"] / "grades_feedback"
    for name, (_, points, words) in crafted_batch["expected"].items():
        text = (fdir / f"{name}.txt").read_text(encoding="utf-8")
        assert f"Total: {sum(points)}/9 points" in text
        for w in words:
            assert w in text, f"{name}: {w!r} missing from\n{text}"
    assert "not a Jupyter notebook" in (fdir / "not_a_notebook.txt").read_text()


def test_grader_never_modifies_submissions_nor_runs_them_in_its_process(crafted_batch):
    assert _digest(crafted_batch["subs"]) == crafted_batch["before"], "a submission file changed"
    assert PROFILES["grade"] == 60, "submission code ran in the grader's process"
    assert not list(crafted_batch["subs"].glob("junk*"))


WRONG_RDBPOT = {  # task 7.2 wants ties away from zero; four classic wrong rules, as a learner writes them
    "half_up": "return (x + ((1 << exponent) >> 1)) >> exponent",
    "half_even": "from fractions import Fraction\nreturn round(Fraction(x, 2**exponent))",
    "floor": "return x >> exponent",
    "python_round": "return round(x / 2**exponent)",
}


def test_wrong_rounding_rules_lose_two_points_in_the_sandboxed_grader(tmp_path):
    subs = tmp_path / "submissions"
    subs.mkdir()
    for rule, body in WRONG_RDBPOT.items():
        nb = nbformat.read(str(SOLUTIONS / "ex7_fixed_point.ipynb"), as_version=4)
        nbformat.write(replace_body(nb, "rounding_divide_by_pot", body), str(subs / f"{rule}.ipynb"))
    grader.grade_folder(subs, tmp_path / "grades.csv", limits=grader.Limits(time_limit=300, task_timeout=60),
                        jobs=2, progress=False, sandboxed=_sandboxed())
    rows = _csv(tmp_path / "grades.csv")
    assert set(rows) == set(WRONG_RDBPOT)
    for rule, row in rows.items():
        assert int(row["task_7_2"]) <= 1, f"{rule}: {row}"
        feedback = (tmp_path / "grades_feedback" / f"{rule}.txt").read_text(encoding="utf-8")
        assert "classic mistake" in feedback and "away from zero" in feedback, feedback


@pytest.fixture(scope="module")
def reference_batch(tmp_path_factory):
    """The solution notebooks and the untouched student notebooks, graded by the command line."""
    root = tmp_path_factory.mktemp("reference")
    subs = root / "submissions"
    (subs / "solutions").mkdir(parents=True)
    (subs / "students").mkdir()
    for name, _ in EXERCISES.values():
        (subs / "solutions" / name).write_bytes((SOLUTIONS / name).read_bytes())
        (subs / "students" / name).write_bytes((STUDENTS / name).read_bytes())
    before = _digest(subs)
    from qlearn.__main__ import main as qlearn_main

    rc = qlearn_main(["grade", str(subs), "--out", str(root / "grades.csv"), "--examples", "10", "--jobs", "2", "--quiet"]
                     + ([] if _sandboxed() else ["--unsafe-no-sandbox"]))
    return {"root": root, "subs": subs, "before": before, "rc": rc}


def test_solutions_get_full_marks_and_students_zero(reference_batch):
    assert reference_batch["rc"] == 0
    rows = _csv(reference_batch["root"] / "grades.csv")
    total = sum(t.max_points for t in tasks().values())
    assert rows["solutions"]["total"] == rows["solutions"]["possible"] == str(total)
    assert all(rows["solutions"][tid] == "3" for tid in tasks())
    assert rows["students"]["total"] == "0" and rows["students"]["possible"] == str(total)
    assert all(rows["students"][tid] == "0" for tid in tasks())
    feedback = (reference_batch["root"] / "grades_feedback" / "students.txt").read_text()
    assert feedback.count("still raises NotImplementedError") == len(tasks())
    assert _digest(reference_batch["subs"]) == reference_batch["before"]


def test_load_namespace_runs_py_files_with_checks_deferred(tmp_path, capsys):
    src = tmp_path / "work.py"
    src.write_text("from qlearn.grading import check\n"
                   "def srdhm(a, b):\n    return 0\n"
                   "check('task_7_1', srdhm)\n")
    ns = load_namespace(src)
    assert "checked by the grader" in capsys.readouterr().out
    assert run_check("task_7_1", ns["srdhm"], examples=FAST).points == 0


def test_runner_usage_and_unreadable_notebooks(tmp_path, capsys):
    from qlearn.grading import runner
    from qlearn.grading.notebook import NotebookError

    assert runner.main([]) == 2 and "usage" in capsys.readouterr().err
    assert runner.main(["job.json"]) == 2  # the job comes on stdin, never from a file the child could swap
    (tmp_path / "cells.ipynb").write_text('{"cells": 3}')
    for name in ("cells.ipynb", "missing.ipynb"):
        with pytest.raises(NotebookError):
            read_notebook(tmp_path / name)


def test_grade_command_refuses_bad_arguments(tmp_path, capsys):
    from qlearn.grading import main

    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(tmp_path)]) == 2  # no submissions
    (tmp_path / "a.ipynb").write_text("{}")
    assert main([str(tmp_path), "--tasks", "task_9_9"]) == 2
    assert main([str(tmp_path), "--memory-mb", "10"]) == 2
    assert "unknown task" in capsys.readouterr().err
