"""Interactive explorers: each a function returning an ipywidgets widget (see base.Explorer)."""
from qlearn.widgets.base import Explorer
from qlearn.widgets.basics import clipping_explorer, error_vs_bits_explorer, quantize_explorer
from qlearn.widgets.integer_explorers import conv_explorer, multiplier_explorer, rounding_explorer

__all__ = ["Explorer", "quantize_explorer", "error_vs_bits_explorer", "clipping_explorer",
           "multiplier_explorer", "conv_explorer", "rounding_explorer"]
