"""Suite-wide settings: one torch thread (deterministic, and robust on a busy 2-core machine)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency; keep collection readable
    torch = None

if torch is not None:
    torch.set_num_threads(1)
