"""``python -m benchmarks [--quick] [--out DIR | --record] [--only SECTION ...] [--threads N]`` (see benchmarks/run.py)."""
import os
import sys

# Pin BLAS / OpenMP threads before numpy or torch is imported: they cannot be changed afterwards.
_threads = "1"
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _threads = sys.argv[_i + 1]
    elif _a.startswith("--threads="):
        _threads = _a.split("=", 1)[1]
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _threads

from benchmarks.run import main  # noqa: E402

sys.exit(main())
