"""Interactive explorers: each a function returning an ipywidgets widget (see base.Explorer)."""
from qlearn.widgets.base import Explorer
from qlearn.widgets.basics import clipping_explorer, error_vs_bits_explorer, quantize_explorer

__all__ = ["Explorer", "quantize_explorer", "error_vs_bits_explorer", "clipping_explorer"]
