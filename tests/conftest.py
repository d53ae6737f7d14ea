"""Suite-wide settings: one torch thread (deterministic, and robust on a busy 2-core machine)."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency; keep collection readable
    torch = None

if torch is not None:
    torch.set_num_threads(1)



@pytest.fixture(scope="session")
def lesson():
    """The shipped lesson model: what every learner's notebooks 03-06 and 10 read (claims tests check it)."""
    from qlearn.lessons.lesson_model import lesson_model

    L = lesson_model(progress=False)
    assert L.shipped, "the lessons must read the shipped model by default"
    return L
