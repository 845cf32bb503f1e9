"""prunemix: gradual magnitude pruning as a first-class part of Keras 3.

Declare prunable weights on your own layers (`PrunableMixin`, `@prunable`),
pick a schedule (`ConstantSparsity`, `PolynomialDecay`), train a
`PrunedModel` with `fit()` or your own `train_step`, then `strip_pruning`
and ship.
"""

import sys
import warnings

from prunemix import _quiet
from prunemix._version import __version__

with _quiet.native_stderr_silenced(_quiet.running_cli()):
    import tensorflow  # noqa: F401  (first import: quiet under `python -m prunemix`)
from prunemix import litert, masks, report, structured  # noqa: F401  (row types, kernels)
from prunemix.callbacks import PruningSummaries
from prunemix.export import copy_weights, strip_pruning, to_tflite
from prunemix.litert import (
    TfliteReport,
    XnnpackReport,
    latency_policy,
    make_interpreter,
    tflite_report,
    xnnpack_sparse_report,
)
from prunemix.model import PrunedModel, pruned_class
from prunemix.model_copy import prune_model
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
from prunemix.pruner import PrunedWeight, Pruner
from prunemix.report import SparsityReport, compressed_size, sparsity_report
from prunemix.saving import load_model
from prunemix.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from prunemix.structured import (  # noqa: F401  (0.x paths)
    ChannelGraph,
    ChannelGroups,
    channel_graph,
    channels,
    graph,
    handlers,
    register_channel_handler,
    shrink,
)

# The 0.x paths of moved modules (`prunemix.graph`, `prunemix.prune`, ...)
# name the same module objects.
for _name in ("channels", "graph", "handlers", "shrink"):
    sys.modules[f"{__name__}.{_name}"] = sys.modules[f"{__name__}.structured.{_name}"]
sys.modules[f"{__name__}.prune"] = sys.modules[f"{__name__}.model_copy"]  # read like `pruner`

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
    "TfliteReport",
    "XnnpackReport",
    "__version__",
    "channel_graph",
    "compressed_size",
    "copy_weights",
    "find_prunable_weights",
    "latency_policy",
    "load_model",
    "make_interpreter",
    "prunable",
    "prunable_weights_of",
    "prune_model",
    "prune_oneshot",
    "pruned_class",
    "register_channel_handler",
    "register_prunable",
    "shrink",
    "sparsity_report",
    "strip_pruning",
    "tflite_report",
    "to_tflite",
    "xnnpack_sparse_report",
]

# Names that left the top level: they still work, with a DeprecationWarning
# that says where they live now.
_MOVED = {
    "TfliteOp": "prunemix.litert",
    "XnnpackLayer": "prunemix.litert",
    "WeightSparsity": "prunemix.report",
    "lowest_k_mask": "prunemix.masks",
    "magnitude_mask": "prunemix.masks",
    "pruned_count": "prunemix.masks",
    "channel_groups": "prunemix.structured.graph",
    "shrink_dense": "prunemix.structured.shrink",
}


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"prunemix.{name} moved to {_MOVED[name]}.{name}; the top-level name "
                      "will be removed in 1.0.", DeprecationWarning, stacklevel=2)
        return getattr(sys.modules[_MOVED[name]], name)
    raise AttributeError(f"module 'prunemix' has no attribute {name!r}")
