"""qlearn's benchmarks: how fast the suite feels, and the paper's latency-vs-accuracy result on this CPU.

    python -m benchmarks            # the full run (~8 minutes on the benchmark machine) into runs/benchmarks/
    python -m benchmarks --quick    # every section small: a smoke run, into runs/benchmarks/
    python -m benchmarks --record   # the full run, replacing the committed RESULTS.md, results.json and figure
    python -m benchmarks.bench_engines   # float vs qnnpack vs x86 int8 on one MobileNet, batch 1 and 256

See benchmarks/run.py for the sections and the files they write.
"""
