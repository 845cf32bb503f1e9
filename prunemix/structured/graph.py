"""Dependency groups: which channels of a functional graph must go together.

Removing output channel `c` of a layer forces input channel `c` of every
layer that reads it; BatchNormalization, depthwise convolutions and
element-wise ops (`Add`, `Multiply`, ...) tie their input channels to their
output channels; `Concatenate` shifts indices; `Flatten` spreads a channel
over its spatial positions. Torch-Pruning's DepGraph does this for PyTorch;
this module does it for Keras 3 functional and Sequential models, from the
graph's nodes (never layer names).

The unit is an *element*: one channel of one tensor, or one index along a
channel axis of a weight. Each layer call ties elements together; a *class*
(a connected set of elements) is one removable channel: every weight slice
in it goes at once. A *group* is the set of classes that share a tensor or a
weight axis (a layer's output channels; all channels that meet in a residual
`Add`; a `Concatenate`'s inputs): one importance ranking, one exact count.

A Keras `MultiHeadAttention` keeps its input and output width, and its heads
are a group of their own: a head is its slices of the query, key and value
projections and its rows of the output projection. keras_hub's Transformer
layers do the same for their heads and feed-forward units
(`prunemix.structured.attention`).

Safety: model inputs and outputs, and every tensor touching a layer this
module does not understand (other attention layers, RNNs, nested models,
custom layers, `LayerNormalization`, which normalizes over the channels) are
*blocked*:
their classes are kept. A class is also kept when removing it would change a
prediction: a removed channel must carry zero into the layers that read it,
or a constant a `Dense` (or `"valid"` convolution) can fold into its bias.
"""

from __future__ import annotations

import collections
import warnings

import keras
import numpy as np

from prunemix import _keras_compat
from prunemix.structured import handlers

__all__ = ["ChannelGraph", "channel_graph", "channel_groups", "weight_value"]


def weight_value(variable) -> np.ndarray:
    """A weight's value as a float64 numpy array (what the analysis reads)."""
    return np.asarray(keras.ops.convert_to_numpy(variable), "float64")


class _Space:
    """One channel axis: of a tensor, or of a weight (`role` "mask": pruned
    with the channel; "slice": only cut when it is removed)."""

    __slots__ = ("kind", "ref", "layer", "axis", "base", "size", "role")

    def __init__(self, kind, ref, layer, axis, base, size, role=None):
        self.kind, self.ref, self.layer, self.axis = kind, ref, layer, axis
        self.base, self.size, self.role = base, size, role

    @property
    def elements(self) -> np.ndarray:
        return np.arange(self.base, self.base + self.size)


def backbone_of(model):
    """The backbone a task model is built around (a keras_hub task: a
    `backbone` attribute that its config names), or None. A task's channels
    are its backbone's: the graph and `shrink` work there."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, keras.Model) and backbone is not model:
        try:
            return backbone if "backbone" in model.get_config() else None
        except Exception:  # noqa: BLE001 - a model without a usable config
            return None
    return None


class ChannelGraph:
    """The channel dependency groups of a functional or Sequential model.

    Build it with `prunemix.channel_graph(model)`.

    Attributes:
        model: the model analysed.
        source: the model whose graph is analysed: `model`, or for a task
            built around a backbone (keras_hub), the backbone.
        groups: list of groups; each a list of class ids (see `classes`).
        blocked: `{class_id: reason}` for classes that must be kept.
        ended_by: `{layer name: reason}`: layers that ended groups (their
            channels are kept).
    """

    def __init__(self, model):
        self.source = backbone_of(model) or model
        graph = _keras_compat.graph_of(self.source)
        if graph is None:
            raise ValueError(
                f"Channel groups need a graph, and model '{model.name}' "
                f"({type(model).__name__}) is subclassed: it has none. Build the same "
                "layers functionally (`keras.Model(inputs, outputs)`; a subclassed "
                "`PrunedModel` can be rebuilt as `PrunedModel(inputs, outputs)`), or "
                "prune its layers one by one with `StructuredSparsity`."
            )
        self.model = model
        self._size = 0
        self.spaces: list[_Space] = []
        self._tensors: dict = {}
        self._weights: dict = {}
        self._edges: list = []
        self._blocked: list = []
        self.ended_by: dict = {}
        self.nodes: list = []  # (handler, layer, input tensors, output tensors, info)
        inputs, outputs, nodes = graph
        for tensor in inputs:
            self.block(self.tensor(tensor), "a model input")
        for kind_layer in nodes:
            self._connect(*kind_layer)
        for tensor in outputs:
            self.block(self.tensor(tensor), "a model output")
        self._calls = collections.Counter(id(node[1]) for node in self.nodes)
        self._solve()

    # -- building -----------------------------------------------------------

    def _new(self, kind, ref, layer, axis, size, role=None) -> _Space:
        space = _Space(kind, ref, layer, axis, self._size, int(size), role)
        self._size += space.size
        self.spaces.append(space)
        return space

    def tensor(self, tensor) -> _Space:
        """The channel space of a graph tensor (its last axis)."""
        if id(tensor) not in self._tensors:
            shape = tuple(tensor.shape)
            size = shape[-1] if len(shape) >= 2 and shape[-1] is not None else 0
            self._tensors[id(tensor)] = self._new("tensor", tensor, None, -1, size)
        return self._tensors[id(tensor)]

    def weight(self, layer, variable, axis: int, role="mask") -> _Space:
        axis = axis % len(variable.shape)
        key = (id(variable), axis)
        if key not in self._weights:
            self._weights[key] = self._new("weight", variable, layer, axis,
                                           variable.shape[axis], role)
        return self._weights[key]

    def tie(self, a, b) -> None:
        """Ties two spaces (or element arrays) element by element: each pair
        is one channel."""
        a = a.elements if isinstance(a, _Space) else np.asarray(a)
        b = b.elements if isinstance(b, _Space) else np.asarray(b)
        if a.shape != b.shape:
            raise AssertionError(f"prunemix.graph: tying {a.shape} to {b.shape}")
        self._edges.append((a, b))

    def block(self, space, reason: str) -> None:
        """Keeps every class of `space` whole, for `reason`."""
        if space.size:
            self._blocked.append((space.elements, reason))

    def _end(self, layer, ins, outs, reason: str) -> None:
        self.ended_by.setdefault(layer.name, f"{type(layer).__name__}: {reason}")
        for space in [*ins, *outs]:
            self.block(space, f"next to layer '{layer.name}' ({reason})")

    def _connect(self, layer, in_tensors, out_tensors) -> None:
        ins = [self.tensor(t) for t in in_tensors]
        outs = [self.tensor(t) for t in out_tensors]
        handler, info = self._classify(layer, ins, outs)
        if handler is None:
            self._end(layer, ins, outs, info)
            return
        self.nodes.append((handler, layer, in_tensors, out_tensors, info))
        handler.connect(self, layer, ins, outs, info)
        if not isinstance(handler, handlers.Activation) and handlers.mixes(layer):
            self.block(outs[0], f"activation {handlers.act_name(layer)} of layer "
                                f"'{layer.name}' mixes channels")

    def _classify(self, layer, ins, outs):
        """`(handler, info)` for one layer call, or `(None, why it ends its groups)`."""
        handler, reason = handlers.handler_for(layer)
        if handler is None:
            return None, reason
        tied = [*ins, *outs] if handler.ties_inputs else outs
        if len(outs) != 1 or any(not s.size for s in tied):
            return None, "not a single channels-last output"
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None, "channels_first"
        info = handler.match(layer, ins, outs)
        return (None, info) if isinstance(info, str) else (handler, info)

    # -- solving ------------------------------------------------------------

    @staticmethod
    def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Connected components of `n` nodes and edges `a[i] - b[i]`: each
        node's label is the smallest node in its component."""
        label = np.arange(n)
        while True:
            low = np.minimum(label[a], label[b])
            new = label.copy()
            np.minimum.at(new, a, low)
            np.minimum.at(new, b, low)
            new = new[new]
            if np.array_equal(new, label):
                return label
            label = new

    def _solve(self) -> None:
        n = self._size
        a = np.concatenate([e[0] for e in self._edges] or [np.zeros(0, int)])
        b = np.concatenate([e[1] for e in self._edges] or [np.zeros(0, int)])
        self.element_class = self._components(n, a, b)
        self.blocked = {}
        for elements, reason in self._blocked:
            for cls in np.unique(self.element_class[elements]):
                self.blocked.setdefault(int(cls), reason)
        # Groups: classes that share a space (a tensor's or a weight's axis).
        sa = [s.elements[:-1] for s in self.spaces if s.size > 1]
        sb = [s.elements[1:] for s in self.spaces if s.size > 1]
        cls = self.element_class
        ga = np.concatenate([cls[a], *[cls[x] for x in sa]]) if n else a
        gb = np.concatenate([cls[b], *[cls[x] for x in sb]]) if n else b
        self.class_group = self._components(n, ga, gb)
        classes = np.unique(cls)
        groups: dict = {}
        for c in classes:
            groups.setdefault(int(self.class_group[c]), []).append(int(c))
        self.groups = [v for _, v in sorted(groups.items())]

    def summary(self) -> str:
        """A text report: each group, its size, how many channels are kept
        whole and why, the layers in it, and the layers that end groups."""
        layers: dict = {}
        for space in self.spaces:
            if space.kind == "weight" and space.size:
                group = int(self.class_group[self.element_class[space.base]])
                layers.setdefault(group, []).append(space.layer.name)
        total = sum(len(g) for g in self.groups)
        free = total - len(self.blocked)
        lines = [f"Model '{self.model.name}': {len(self.groups)} groups, {total} channels "
                 f"({free} prunable, {len(self.blocked)} kept whole)."]
        for i, classes in enumerate(self.groups):
            kept = [c for c in classes if c in self.blocked]
            why = f", {len(kept)} kept: {self.blocked[kept[0]]}" if kept else ""
            names = list(dict.fromkeys(layers.get(int(self.class_group[classes[0]]), [])))
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6
                                             else "")
            lines.append(f"  group {i}: {len(classes)} channels{why}; layers: {shown or '-'}")
        if self.ended_by:
            lines.append("Layers that end groups (their channels are kept):")
            lines += [f"  {name}: {reason}" for name, reason in self.ended_by.items()]
        return "\n".join(lines)

    # -- values: what a removed channel carries ------------------------------

    def removable(self, value_of, values: dict | None = None) -> set:
        """Class ids that can be removed without changing any prediction,
        given weight values (`value_of(variable) -> np.ndarray`): not blocked,
        and every layer reading them gets zero or a constant it can fold.
        `values`: `constants(value_of)`, if the caller has it already."""
        values = self.constants(value_of) if values is None else values
        bad = set(self.blocked)
        for handler, layer, ins, _, info in self.nodes:
            elements = handler.unremovable(self, layer, ins, info, values, value_of)
            bad.update(int(c) for c in self.element_class[elements])
        return {int(c) for c in np.unique(self.element_class)} - bad

    def folds(self, layer, info) -> bool:
        """Whether a layer reading a removed channel's constant can fold it
        into its bias: a Dense or "valid" convolution with a bias, called once."""
        return (info["fold"] is not None and info["weights"][3] is not None
                and self._calls[id(layer)] == 1)

    def constants(self, value_of) -> dict:
        """`{id(tensor): values}`: each channel's value if its class is removed
        (its producing slices as `value_of` gives them), NaN where it is not a
        constant."""
        values = {}
        for space in self.spaces:
            if space.kind == "tensor":
                values[id(space.ref)] = np.full(space.size, np.nan)
        for handler, layer, ins, outs, info in self.nodes:
            vin = [values[id(t)] for t in ins]
            size = self.tensor(outs[0]).size
            values[id(outs[0])] = handler.value(self, layer, vin, size, info, value_of)
        return values


def channel_graph(model: keras.Model) -> ChannelGraph:
    """The channel dependency groups of a functional or Sequential model.

    Args:
        model: a built functional or Sequential model (a `PrunedModel` built
            functionally, a `prune_model` copy, `keras.applications`), or a
            keras_hub task or backbone (its backbone's graph).

    Returns:
        A `ChannelGraph`: `groups` (lists of class ids, one class per
        removable channel), `blocked` (`{class: reason}`), `ended_by`
        (`{layer name: reason}` for layers whose channels are kept), and
        `summary()`.

    Raises:
        ValueError: if `model` is subclassed (it has no graph).

    Example:

    ```python
    graph = prunemix.channel_graph(keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), weights=None))
    print(graph.summary())
    ```
    """
    return ChannelGraph(model)


def channel_groups(model: keras.Model) -> ChannelGraph:
    """Deprecated: use `prunemix.channel_graph` (the same function; this
    name read like the `ChannelGroups` pattern)."""
    warnings.warn("prunemix.channel_groups is deprecated; use prunemix.channel_graph.",
                  DeprecationWarning, stacklevel=2)
    return ChannelGraph(model)
