"""prunemix: gradual magnitude pruning as a first-class part of Keras 3.

Declare prunable weights on your own layers (`PrunableMixin`, `@prunable`),
pick a schedule (`ConstantSparsity`, `PolynomialDecay`), train a
`PrunedModel` with `fit()` or your own `train_step`, then `strip_pruning`
and ship.
"""

from prunemix import _quiet
from prunemix._version import __version__

with _quiet.native_stderr_silenced(_quiet.running_cli()):
    import tensorflow  # noqa: F401  (first import: quiet under `python -m prunemix`)
from prunemix.callbacks import PruningSummaries
from prunemix.channels import ChannelGroups
from prunemix.export import copy_weights, strip_pruning, to_tflite
from prunemix.graph import ChannelGraph, channel_groups
from prunemix.handlers import register_channel_handler
from prunemix.litert import (
    TfliteOp,
    TfliteReport,
    XnnpackLayer,
    XnnpackReport,
    latency_policy,
    make_interpreter,
    tflite_report,
    xnnpack_sparse_report,
)
from prunemix.masks import lowest_k_mask, magnitude_mask, pruned_count
from prunemix.model import PrunedModel, pruned_class
from prunemix.oneshot import prune_oneshot
from prunemix.patterns import (
    BlockSparsity,
    GlobalMagnitude,
    InputBlockSparsity,
    Magnitude,
    NMSparsity,
    PruningPattern,
    StructuredSparsity,
)
from prunemix.policy import Rule
from prunemix.prunable import (
    PrunableMixin,
    find_prunable_weights,
    prunable,
    prunable_weights_of,
    register_prunable,
)
from prunemix.prune import prune_model
from prunemix.pruner import PrunedWeight, Pruner
from prunemix.report import SparsityReport, WeightSparsity, compressed_size, sparsity_report
from prunemix.saving import load_model
from prunemix.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from prunemix.shrink import shrink, shrink_dense

__all__ = [
    "BlockSparsity",
    "ChannelGraph",
    "ChannelGroups",
    "ConstantSparsity",
    "GlobalMagnitude",
    "InputBlockSparsity",
    "Magnitude",
    "NMSparsity",
    "PolynomialDecay",
    "PrunableMixin",
    "PrunedModel",
    "PrunedWeight",
    "Pruner",
    "PruningPattern",
    "PruningSchedule",
    "PruningSummaries",
    "Rule",
    "SparsityReport",
    "StructuredSparsity",
    "TfliteOp",
    "TfliteReport",
    "WeightSparsity",
    "XnnpackLayer",
    "XnnpackReport",
    "__version__",
    "channel_groups",
    "compressed_size",
    "copy_weights",
    "find_prunable_weights",
    "latency_policy",
    "load_model",
    "lowest_k_mask",
    "magnitude_mask",
    "make_interpreter",
    "prunable",
    "prunable_weights_of",
    "prune_model",
    "prune_oneshot",
    "pruned_class",
    "pruned_count",
    "register_channel_handler",
    "register_prunable",
    "shrink",
    "shrink_dense",
    "sparsity_report",
    "strip_pruning",
    "tflite_report",
    "to_tflite",
    "xnnpack_sparse_report",
]
