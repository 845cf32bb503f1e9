"""Structured pruning: whole channels, heads and units, found and removed.

- `graph`: `ChannelGraph`, the channel dependency groups of a model (which
  channels must go together), built from one handler per layer kind.
- `handlers`: `ChannelHandler` and the table of layer kinds
  (`register_channel_handler` adds yours); `attention`: the handlers of
  attention heads and Transformer layers (Keras, keras_hub).
- `channels`: `ChannelGroups`, the pattern that prunes whole groups in
  training, planned over the graph.
- `shrink`: `shrink`, which removes the zeroed channels from the model.

The rest of prunemix (schedules, patterns, masks, the pruner, saving) is
unstructured-or-not alike and stays flat in `prunemix`.
"""

from prunemix.structured import attention  # noqa: F401  (adds the attention handlers)
from prunemix.structured.channels import ChannelGroups
from prunemix.structured.graph import ChannelGraph, channel_graph
from prunemix.structured.handlers import ChannelHandler, register_channel_handler
from prunemix.structured.shrink import shrink

__all__ = [
    "ChannelGraph",
    "ChannelGroups",
    "ChannelHandler",
    "channel_graph",
    "register_channel_handler",
    "shrink",
]
