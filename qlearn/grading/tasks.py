"""The exercise tasks: for each, the function a learner writes, qlearn's oracle and the cases.

Exercise notebooks (notebooks/exercises/) and the tasks they hold:

    ex1  quantize / dequantize, the nudged zero point     task_1_1 .. task_1_3   (Eqs. 1-9)
    ex2  error analysis: SQNR, rounding vs clipping       task_2_1 .. task_2_2   (Eqs. 14, 18)
    ex3  per-channel parameters                           task_3_1 .. task_3_3   (Eqs. 8, 13)
    ex4  range estimators: percentile and MSE search      task_4_1 .. task_4_2   (Eq. 15)
    ex5  batch-norm folding                               task_5_1 .. task_5_2   (Eqs. 40-42)
    ex6  the straight-through estimator (STE)             task_6_1 .. task_6_2   (Eqs. 50-52)
    ex7  quantize_multiplier and the fixed-point multiply task_7_1 .. task_7_4   (Eqs. 23-30)
    ex8  an integer convolution layer                     task_8_1 .. task_8_2   (Eqs. 20-25)
    ex9  EMA activation ranges and one QAT step           task_9_1 .. task_9_2   (Eqs. 16, 50-52)
    ex10 the re-quantized add of a skip connection        task_10_1 .. task_10_2 (Eqs. 32-34)
    ex11 one folded layer converted to integers           task_11_1 .. task_11_2 (Eqs. 8-9, 22-24, 37)

The tasks live in ``qlearn/grading/exercises/``, one module per exercise (``ex1.py`` .. ``ex11.py``,
shared helpers in ``_common.py``); this module is the registry's public name.

Every oracle is an adapter from the task's signature to qlearn's own implementation (or, where qlearn
has no such function, to PyTorch's op). Each ``compare`` returns None when the learner's answer agrees
with the oracle, else one sentence saying how it differs. Edge cases carry the hint for the bug they
catch; ``BUGS`` registers each task's classic mistakes as known-wrong functions, which let a failing
check name the mistake behind a wrong answer (``checks.diagnose``). Generated inputs come from hypothesis
strategies that lean toward each task's traps (exact ties k + 1/2 of both signs in every task that names
a rounding rule, ends of the grid, negative values); arrays are drawn from a seeded numpy
generator (``_rng_array``) so that hypothesis shrinks shapes and seeds, which keeps failing examples
small and readable.
"""
from __future__ import annotations

from qlearn.grading.exercises import BUGS, EXERCISES, LESSONS, TASKS
from qlearn.grading.exercises._common import floats_close, int_scalar, ints_equal, tuple_of

__all__ = ["TASKS", "BUGS", "EXERCISES", "LESSONS", "floats_close", "int_scalar", "ints_equal", "tuple_of"]
