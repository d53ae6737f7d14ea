"""Exercise 8: integer conv -- its tasks (``TASKS``) and their classic mistakes (``BUGS``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qlearn.fixedpoint import (
    multiply_by_quantized_multiplier as _mbqm,
)
from qlearn.fixedpoint import (
    quantize_multiplier as _quantize_multiplier,
)
from qlearn.grading.exercises._common import _RULE_NAMES, _half_away, _half_up, _st, ints_equal
from qlearn.grading.spec import Bug, Case, Exercise, Task
from qlearn.integer import conv2d as _conv2d
from qlearn.integer import conv2d_accumulator as _conv2d_accumulator

EXERCISE = Exercise("ex8", "ex8_integer_conv.ipynb", "An integer-only convolution layer",
                    "notebooks/08_integer_inference.ipynb")


def _acc_oracle(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray, stride: int, padding: int) -> np.ndarray:
    return _conv2d_accumulator(x_q, x_zp, w_q, bias_q, stride=stride, padding=padding)


def _qconv_oracle(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray, m0: int, shift: int,
                  out_zp: int, stride: int, padding: int, act_min: int, act_max: int) -> np.ndarray:
    return _conv2d(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, stride=stride, padding=padding,
                   act_min=act_min, act_max=act_max)


def _conv_inputs(seed: int, n: int, cin: int, hw: tuple[int, int], cout: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, cin, *hw), dtype=np.uint8)
    w = rng.integers(-127, 128, size=(cout, cin, k, k), dtype=np.int8)
    b = rng.integers(-5000, 5000, size=cout, dtype=np.int32)
    return x, w, b


def _strategy_conv(full: bool) -> Callable[[], Any]:
    def strategy() -> Any:
        st = _st()

        @st.composite
        def draw(d: Any) -> tuple:
            if full and d(st.integers(0, 2)):
                return d(_small_requant_conv())
            k = d(st.integers(1, 3))
            padding = d(st.integers(0, 1))
            hw = (d(st.integers(max(1, k - 2 * padding), 6)), d(st.integers(max(1, k - 2 * padding), 6)))
            x, w, b = _conv_inputs(d(st.integers(0, 2**32 - 1)), d(st.integers(1, 2)), d(st.integers(1, 3)), hw,
                                   d(st.integers(1, 3)), k)
            x_zp, stride = d(st.integers(0, 255)), d(st.integers(1, 2))
            if not full:
                return (x, x_zp, w, b, stride, padding)
            m0, shift = _quantize_multiplier(d(st.floats(1e-5, 1e-2)))
            out_zp = d(st.integers(0, 255))
            act_min = d(st.integers(0, 255))
            act_max = d(st.integers(act_min, 255))
            return (x, x_zp, w, b, m0, shift, out_zp, stride, padding, act_min, act_max)

        return draw()

    return strategy


def _small_requant_conv() -> Any:
    """Small accumulators of both signs and M = 1/4 or 1/8: many requantization ties and
    double-rounding cases (acc = 1 mod 4 with M = 1/4) that float rounding gets wrong."""
    st = _st()

    @st.composite
    def draw(d: Any) -> tuple:
        rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
        k, cin, cout = d(st.integers(1, 2)), d(st.integers(1, 2)), d(st.integers(1, 3))
        x_zp = d(st.integers(8, 247))
        x = (x_zp + rng.integers(-4, 5, size=(1, cin, 4, 4))).astype(np.uint8)
        w = rng.integers(-4, 5, size=(cout, cin, k, k), dtype=np.int8)
        b = rng.integers(-20, 21, size=cout, dtype=np.int32)
        shift = d(st.sampled_from([-1, -2]))
        out_zp = d(st.integers(100, 155))
        return (x, x_zp, w, b, 2**30, shift, out_zp, 1, d(st.integers(0, 1)), 0, 255)

    return draw()


_X1, _W1, _B1 = _conv_inputs(0, 1, 1, (4, 4), 1, 2)


_X2, _W2, _B2 = _conv_inputs(1, 2, 3, (5, 5), 2, 3)


_M0, _SHIFT = _quantize_multiplier(0.002)


EX8 = [
    Task(
        "task_8_1", "conv_accumulator", ("x_q", "x_zp", "w_q", "bias_q", "stride", "padding"),
        "the int32 accumulator of a quantized convolution", "ex8", EXERCISE.lesson,
        oracle=_acc_oracle, compare=ints_equal(),
        fixed=(
            Case("a 4x4 image, one 2x2 kernel", (_X1, 128, _W1, _B1, 1, 0)),
            Case("a batch of 2, 3 -> 2 channels, 3x3 kernels, padding 1", (_X2, 100, _W2, _B2, 1, 1)),
        ),
        edge=(
            Case("padding 1 with x_zp = 200: pad with the zero point", (_X2, 200, _W2, _B2, 1, 1),
                 "padded pixels must be the real value 0, i.e. the code x_zp: pad x_q - x_zp with 0 "
                 "(np.pad pads with 0 by default), not x_q"),
            Case("uint8 codes below the zero point",
                 (np.zeros((1, 1, 2, 2), np.uint8), 200, np.ones((1, 1, 2, 2), np.int8), np.zeros(1, np.int32), 1, 0),
                 "x_q - x_zp on uint8 wraps around (0 - 200 = 56): convert to int32 first"),
            Case("large sums overflow int16",
                 (np.full((1, 3, 3, 3), 255, np.uint8), 0, np.full((1, 3, 3, 3), 127, np.int8), np.zeros(1, np.int32), 1, 0),
                 "27 products of 255 * 127 sum to 874395: accumulate in int32 (or int64)"),
            Case("stride 2", (_X2, 0, _W2, _B2, 2, 0), "output size (H + 2 pad - k) // stride + 1"),
        ),
        strategy=_strategy_conv(False),
        hint="acc[n, o, i, j] = bias_q[o] + sum_{c,u,v} (x_pad[n, c, i s + u, j s + v] - x_zp) w_q[o, c, u, v] "
        "in int32 (Eq. 25)",
        forbidden=("qlearn.integer.conv2d_accumulator", "qlearn.integer.conv2d"),
    ),
    Task(
        "task_8_2", "quantized_conv2d",
        ("x_q", "x_zp", "w_q", "bias_q", "m0", "shift", "out_zp", "stride", "padding", "act_min", "act_max"),
        "a whole quantized convolution: accumulate, requantize, clamp", "ex8", EXERCISE.lesson,
        oracle=_qconv_oracle, compare=ints_equal(),
        fixed=(
            Case("a 4x4 image, one 2x2 kernel", (_X1, 128, _W1, _B1, _M0, _SHIFT, 10, 1, 0, 0, 255)),
            Case("a batch of 2, 3 -> 2 channels", (_X2, 100, _W2, _B2, _M0, _SHIFT, 128, 1, 1, 0, 255)),
        ),
        edge=(
            Case("a ReLU6-style clamp", (_X2, 100, _W2, _B2, _M0, _SHIFT, 20, 1, 0, 20, 80),
                 "clamp q3 to [act_min, act_max] after adding out_zp"),
            Case("outputs that saturate at 0 and 255", (_X2, 100, _W2, _B2, *_quantize_multiplier(0.05), 128, 1, 0, 0, 255),
                 "clip to [act_min, act_max] before converting to uint8, or 256 wraps to 0"),
            Case("negative accumulators",
                 (np.zeros((1, 1, 3, 3), np.uint8), 255, np.ones((1, 1, 3, 3), np.int8), np.zeros(1, np.int32),
                  _M0, _SHIFT, 200, 1, 0, 0, 255)),
            Case("a tie in the requantization: acc * M = -10 * 0.25 = -2.5",
                 (np.zeros((1, 1, 1, 1), np.uint8), 10, np.ones((1, 1, 1, 1), np.int8), np.zeros(1, np.int32),
                  2**30, -1, 100, 1, 0, 0, 255),
                 "rescale with multiply_by_quantized_multiplier, which rounds -2.5 away from zero to -3; "
                 "np.round gives -2 (half to even) and float arithmetic is not what the device does"),
            Case("double rounding: acc * M = 5 * 0.25 = 1.25",
                 (np.zeros((1, 1, 1, 1), np.uint8), 5, np.full((1, 1, 1, 1), -1, np.int8), np.zeros(1, np.int32),
                  2**30, -1, 100, 1, 0, 0, 255),
                 "the device rounds twice (2.5 -> 3, then 3/2 = 1.5 -> 2), so 1.25 becomes 2, not 1: use "
                 "multiply_by_quantized_multiplier, not floats"),
        ),
        strategy=_strategy_conv(True),
        hint="q3 = clamp(out_zp + multiply_by_quantized_multiplier(acc, m0, shift), act_min, act_max) as "
        "uint8 (Eqs. 21, 30)",
        forbidden=("qlearn.integer.conv2d", "qlearn.integer.conv2d_accumulator", "qlearn.integer.requantize"),
    ),
]


def _acc_np(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, bias_q: np.ndarray, stride: int, padding: int,
            pad_code: bool = True, wrap: bool = False) -> np.ndarray:
    """The int64 accumulator by loops (pad_code=False pads the centred input with the code 0, i.e.
    pads x_q with 0; wrap=True subtracts the zero point in uint8, as a learner who forgets to widen)."""
    centred = (x_q - np.uint8(x_zp)).astype(np.int64) if wrap else x_q.astype(np.int64) - x_zp
    pw = ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2)
    x = np.pad(centred, pw) if pad_code else np.pad(x_q.astype(np.int64), pw) - x_zp
    n, c, h, w = x.shape
    o, _, kh, kw = w_q.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    acc = np.zeros((n, o, ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            acc[:, :, i, j] = np.tensordot(patch, w_q.astype(np.int64), axes=([1, 2, 3], [1, 2, 3]))
    return acc + np.asarray(bias_q, dtype=np.int64)[None, :, None, None]


def _qconv_float(rnd: Callable[[Any], np.ndarray]) -> Callable[..., np.ndarray]:
    def quantized_conv2d(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, stride, padding, act_min, act_max):
        acc = _acc_np(x_q, x_zp, w_q, bias_q, stride, padding)
        return np.clip(rnd(acc * (m0 * 2.0 ** (shift - 31))) + out_zp, act_min, act_max).astype(np.uint8)

    return quantized_conv2d


def _qconv_no_clamp(x_q, x_zp, w_q, bias_q, m0, shift, out_zp, stride, padding, act_min, act_max):
    acc = _acc_np(x_q, x_zp, w_q, bias_q, stride, padding)
    return (_mbqm(acc, m0, shift) + out_zp).astype(np.int64).astype(np.uint8)


# The classic mistakes: known-wrong versions of the tasks' functions. When an answer is wrong on a case,
# the check runs them on that case, in this order, and a match names the mistake in the hint
# (``judge.diagnose``): put the more specific mistakes first.
BUGS: dict[str, tuple[Bug, ...]] = {
    "task_8_1": (
        Bug("padded with 0 instead of the zero point", lambda x, z, w, b, s, p: _acc_np(x, z, w, b, s, p, pad_code=False),
            "padded pixels are the real value 0, i.e. the code x_zp: pad x_q - x_zp with 0 (or x_q with x_zp)"),
        Bug("x_q - x_zp computed in uint8", lambda x, z, w, b, s, p: _acc_np(x, z, w, b, s, p, wrap=True),
            "convert x_q to int32 before subtracting the zero point: 0 - 200 wraps around to 56 in uint8"),
    ),
    "task_8_2": (
        Bug("no clamp before converting to uint8", _qconv_no_clamp,
            "clamp to [act_min, act_max] before astype(np.uint8), or 256 wraps to 0"),
    ) + tuple(Bug(f"the rescale in floating point with {_RULE_NAMES[r]}", _qconv_float(f),
                  "rescale the accumulator with multiply_by_quantized_multiplier(acc, m0, shift): two integer roundings, as the device")
              for r, f in (("half_even", np.rint), ("half_away", _half_away), ("half_up", _half_up), ("floor", np.floor))),
}


TASKS = EX8
