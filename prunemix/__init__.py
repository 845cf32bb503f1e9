"""prunemix: gradual magnitude pruning as a first-class part of Keras 3.

Declare prunable weights on your own layers (`PrunableMixin`, `@prunable`),
pick a schedule (`ConstantSparsity`, `PolynomialDecay`), train a
`PrunedModel` with `fit()` or your own `train_step`, then `strip_pruning`
and ship.
"""

from prunemix._version import __version__
from prunemix.callbacks import PruningSummaries
from prunemix.export import (
    SparsityReport,
    WeightSparsity,
    compressed_size,
    load_model,
    sparsity_report,
    strip_pruning,
    to_tflite,
)
from prunemix.masks import lowest_k_mask, magnitude_mask, pruned_count
from prunemix.model import PrunedModel
from prunemix.patterns import (
    BlockSparsity,
    GlobalMagnitude,
    Magnitude,
    NMSparsity,
    PruningPattern,
    StructuredSparsity,
)
from prunemix.policy import Rule
from prunemix.prunable import PrunableMixin, prunable, prunable_weights_of
from prunemix.prune import prune_model
from prunemix.pruner import PrunedWeight, Pruner, find_prunable_weights
from prunemix.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from prunemix.shrink import shrink_dense

__all__ = [
    "BlockSparsity",
    "ConstantSparsity",
    "GlobalMagnitude",
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
    "WeightSparsity",
    "__version__",
    "compressed_size",
    "find_prunable_weights",
    "load_model",
    "lowest_k_mask",
    "magnitude_mask",
    "prunable",
    "prunable_weights_of",
    "prune_model",
    "pruned_count",
    "shrink_dense",
    "sparsity_report",
    "strip_pruning",
    "to_tflite",
]
