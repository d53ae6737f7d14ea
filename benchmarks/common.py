"""The machine description every benchmark records (timing itself is ``qlearn.timing``)."""
from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM (from /proc), load, OS, and the versions that matter."""
    import matplotlib
    import torch

    from qlearn.torch_int8 import cpu_int8_features

    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0)
    load = _read("/proc/loadavg").split()[:3]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    versions: dict[str, str] = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                                "matplotlib": matplotlib.__version__}
    for mod in ("ipywidgets", "nbclient", "sklearn"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "simd": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags],
        "ram_gib": round(mem_kb / 2**20, 1),
        "load_average_at_start": [float(v) for v in load],
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        # PyTorch's x86 int8 kernels add uint8 x int8 products in int16 pairs without VNNI (qlearn.saturation);
        # each deployment records the engine qlearn.torch_int8 chose for its integers, and why
        "int8_features": {k: v for k, v in cpu_int8_features().items() if k != "source"},
        "quantized_engine": "per deployment: qlearn.torch_int8.to_torch_int8(engine='auto')",
    }
