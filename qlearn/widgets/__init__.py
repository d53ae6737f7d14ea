"""Interactive explorers: each a function returning an ipywidgets widget (see base.Explorer).

In lesson order: basics (01, 02), per_channel (03), outliers (04), bn_fold (05), qat (06),
skip (07), integer_explorers (08), pipeline (09), formats_granularity (10), transformer (11),
imagenet (12), deploy (13). What the explorers show is computed in ``qlearn.lessons`` (one module per
notebook, see its docstring); these widget modules hold only the sliders and the figures.
"""
from qlearn.widgets.base import Explorer
from qlearn.widgets.basics import (
    clipping_explorer,
    error_vs_bits_explorer,
    quantize_explorer,
)
from qlearn.widgets.bn_fold import bn_fold_explorer, fold_order_explorer
from qlearn.widgets.deploy import engines_explorer
from qlearn.widgets.formats_granularity import group_size_explorer, mixed_precision_explorer
from qlearn.widgets.imagenet import variants_explorer
from qlearn.widgets.integer_explorers import (
    conv_explorer,
    multiplier_explorer,
    rounding_explorer,
)
from qlearn.widgets.outliers import model_ranges_explorer, outlier_explorer
from qlearn.widgets.per_channel import layer_explorer, seed_channels_explorer
from qlearn.widgets.pipeline import (
    integer_layer_explorer,
    pipeline_explorer,
    pipeline_runner,
)
from qlearn.widgets.qat import ema_explorer, ptq_vs_qat_explorer, ste_explorer
from qlearn.widgets.skip import concat_explorer, integer_add_explorer
from qlearn.widgets.transformer import granularity_explorer, smoothquant_explorer
from qlearn.widgets.transformer import outlier_explorer as transformer_outlier_explorer

__all__ = [
    "Explorer",
    "quantize_explorer", "error_vs_bits_explorer", "clipping_explorer",   # 01, 02
    "seed_channels_explorer", "layer_explorer",                          # 03
    "outlier_explorer", "model_ranges_explorer",                         # 04
    "bn_fold_explorer", "fold_order_explorer",                           # 05
    "ste_explorer", "ema_explorer", "ptq_vs_qat_explorer",               # 06
    "integer_add_explorer", "concat_explorer",                           # 07
    "multiplier_explorer", "conv_explorer", "rounding_explorer",         # 08
    "pipeline_explorer", "integer_layer_explorer", "pipeline_runner",    # 09
    "group_size_explorer", "mixed_precision_explorer",                   # 10
    "granularity_explorer", "transformer_outlier_explorer", "smoothquant_explorer",  # 11
    "variants_explorer",                                                 # 12
    "engines_explorer",                                                  # 13
]
