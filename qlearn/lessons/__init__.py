"""What each lesson computes: plain functions that return small typed results, one module per notebook.

No module here imports ipywidgets or matplotlib: grading, benchmarks and tests use them without a
UI. The sliders and figures that show these results live in ``qlearn.widgets``.
"""
