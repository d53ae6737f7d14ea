"""qlearn's benchmarks: how fast the suite feels, and the paper's latency-vs-accuracy result on this CPU.

    python -m benchmarks            # the full run (about 8 minutes on 2 cores), writes RESULTS.md
    python -m benchmarks --quick    # every section small: a smoke run (under a minute when the machine is idle)

See benchmarks/run.py for the sections and the files they write.
"""
