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
projections and its rows of the output projection.

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

import keras
import numpy as np

from prunemix import _keras_compat
from prunemix.prunable import builtin_variable

__all__ = ["ChannelGraph", "channel_groups", "weight_value"]

L = keras.layers
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_MERGE = {L.Add: "add", L.Subtract: "subtract", L.Multiply: "multiply",
          L.Average: "average", L.Maximum: "maximum", L.Minimum: "minimum"}
# Layers that keep each channel's values (a constant stays that constant).
_PASS = tuple(getattr(L, n) for n in (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "RepeatVector",
) if hasattr(L, n))
_PAD = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
_ACT = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)
# The one table of activations that act on each channel alone (a removed
# channel's constant stays a constant of that channel). Any other activation
# (softmax, log_softmax, sparsemax, glu, a function of your own) mixes
# channels: the layer's outputs are kept whole.
_ELEMENTWISE = frozenset(
    keras.activations.get(name) for name in (
        "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
        "swish", "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "hard_tanh",
        "softplus", "softsign", "exponential", "mish", "log_sigmoid", "sparse_plus",
        "squareplus", "tanh_shrink", "hard_shrink", "soft_shrink", "sparse_sigmoid",
        "threshold",
    ) if hasattr(keras.activations, name)
)
# Every class `_classify` knows; a subclass is analysed as the nearest one.
_KNOWN = frozenset({
    L.Dense, L.EinsumDense, L.Embedding, L.BatchNormalization, L.Concatenate, L.Rescaling,
    L.Flatten, L.Reshape, L.LayerNormalization, L.GroupNormalization, L.UnitNormalization,
    L.MultiHeadAttention,
    *_CONV, *_TRANSPOSED, *_DEPTHWISE, *_SEPARABLE, *_MERGE, *_PASS, *_PAD, *_ACT,
})
# Methods that define what a layer computes: a subclass of a known layer
# that overrides one of them computes something prunemix does not know.
_BEHAVIOUR = ("call", "__call__", "convolution_op", "quantized_call")


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _act_name(layer) -> str:
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", str(fn))


def _mixes(layer) -> bool:
    """Whether the layer's `activation` (if it has one) mixes channels."""
    fn = getattr(layer, "activation", None)
    return fn is not None and fn not in _ELEMENTWISE


def _own_behaviour(layer) -> str | None:
    """Why `layer` is not analysed as the known class it derives from (a
    class between them overrides a method of `_BEHAVIOUR`), or None."""
    mro = type(layer).__mro__
    known = next((i for i, cls in enumerate(mro) if cls in _KNOWN), 0)
    for cls in mro[:known]:
        overridden = [m for m in _BEHAVIOUR if m in vars(cls)]
        if overridden:
            return f"{cls.__name__} overrides `{overridden[0]}`"
    return None


def _apply(fn, values: np.ndarray) -> np.ndarray:
    """An element-wise function of constants; NaN (not constant) stays NaN."""
    nan = np.isnan(values)
    out = keras.ops.convert_to_numpy(fn(np.where(nan, 0.0, values)[None].astype("float32")))
    return np.where(nan, np.nan, np.asarray(out, "float64").reshape(-1))


def weight_value(variable) -> np.ndarray:
    """A weight's value as a float64 numpy array (what the analysis reads)."""
    return np.asarray(keras.ops.convert_to_numpy(variable), "float64")


def _einsum_axes(layer):
    """`(in_axis, out_axis, bias_axis)` of an EinsumDense kernel, or None when
    its equation does not map the input's last axis to one kernel axis and the
    kernel's to the output's last axis."""
    inputs, rest = layer.equation.split(",")
    kernel, output = rest.split("->")
    i, o = inputs[-1], output[-1]
    if i not in kernel or i in output or o not in kernel or o in inputs or "." in inputs:
        return None
    bias = getattr(layer, "bias_axes", None) or ""
    return kernel.index(i), kernel.index(o), (bias.index(o) if o in bias else None)


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


class ChannelGraph:
    """The channel dependency groups of a functional or Sequential model.

    Build it with `prunemix.channel_groups(model)`.

    Attributes:
        model: the model analysed.
        groups: list of groups; each a list of class ids (see `classes`).
        blocked: `{class_id: reason}` for classes that must be kept.
        ended_by: `{layer name: reason}`: layers that ended groups (their
            channels are kept).
    """

    def __init__(self, model):
        graph = _keras_compat.graph_of(model)
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
        self.nodes: list = []  # (kind, layer, input tensors, output tensors, info)
        inputs, outputs, nodes = graph
        for tensor in inputs:
            self._block(self.tensor(tensor), "a model input")
        for kind_layer in nodes:
            self._connect(*kind_layer)
        for tensor in outputs:
            self._block(self.tensor(tensor), "a model output")
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

    def _tie(self, a, b) -> None:
        a = a.elements if isinstance(a, _Space) else np.asarray(a)
        b = b.elements if isinstance(b, _Space) else np.asarray(b)
        if a.shape != b.shape:
            raise AssertionError(f"prunemix.graph: tying {a.shape} to {b.shape}")
        self._edges.append((a, b))

    def _block(self, space, reason: str) -> None:
        if space.size:
            self._blocked.append((space.elements, reason))

    def _end(self, layer, ins, outs, reason: str) -> None:
        self.ended_by.setdefault(layer.name, f"{type(layer).__name__}: {reason}")
        for space in [*ins, *outs]:
            self._block(space, f"next to layer '{layer.name}' ({reason})")

    def _connect(self, layer, in_tensors, out_tensors) -> None:
        ins = [self.tensor(t) for t in in_tensors]
        outs = [self.tensor(t) for t in out_tensors]
        kind, info = self._classify(layer, ins, outs)
        if kind == "end":
            self._end(layer, ins, outs, info)
            return
        self.nodes.append((kind, layer, in_tensors, out_tensors, info))
        if kind == "kernel":
            kernel, in_axis, out_axis, bias, bias_axis = info["weights"]
            if in_axis is not None:
                self._tie(ins[0], self.weight(layer, kernel, in_axis))
            self._tie(outs[0], self.weight(layer, kernel, out_axis))
            if bias is not None:
                self._tie(outs[0], self.weight(layer, bias, bias_axis))
        elif kind == "depthwise":
            m = info["multiplier"]
            kernel_space = self.weight(layer, info["kernel"], -2)
            self._tie(ins[0], kernel_space)
            self._tie(np.repeat(ins[0].elements, m), outs[0])
            if info["bias"] is not None:
                self._tie(outs[0], self.weight(layer, info["bias"], 0))
        elif kind == "separable":
            m = info["multiplier"]
            self._tie(ins[0], self.weight(layer, info["depthwise"], -2))
            self._tie(np.repeat(ins[0].elements, m), self.weight(layer, info["pointwise"], -2))
            self._tie(outs[0], self.weight(layer, info["pointwise"], -1))
            if info["bias"] is not None:
                self._tie(outs[0], self.weight(layer, info["bias"], 0))
        elif kind == "bn":
            self._tie(ins[0], outs[0])
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                variable = getattr(layer, name, None)
                if variable is not None:
                    role = "mask" if name in ("gamma", "beta") else "slice"
                    self._tie(outs[0], self.weight(layer, variable, 0, role))
        elif kind == "heads":
            self._connect_heads(layer, ins, outs, info)
        elif kind == "concat":
            self._tie(np.concatenate([s.elements for s in ins]), outs[0])
        elif kind == "reshape":
            c = ins[0].size
            self._tie(ins[0].elements[np.arange(outs[0].size) % c], outs[0])
        else:  # merge, pass, pad, act, rescale: channel c in, channel c out
            for space in ins:
                self._tie(space, outs[0])
        if kind != "act" and _mixes(layer):
            self._block(outs[0], f"activation {_act_name(layer)} of layer '{layer.name}' "
                                 "mixes channels")

    def _connect_heads(self, layer, ins, outs, info) -> None:
        """MultiHeadAttention: its inputs and output keep their width (the
        residual stream); its heads are one group. A head is the head's
        slices of the query, key and value kernels and biases and its rows
        of the output projection."""
        for space in [*ins, *outs]:
            self._block(space, f"next to layer '{layer.name}' (attention keeps its input "
                               "and output width; its heads are a group of their own)")
        query, key, value, output = _keras_compat.attention_projections(layer)
        head = self.weight(output, builtin_variable(output, "kernel"), 0)
        for proj in (query, key, value):
            self._tie(head, self.weight(proj, builtin_variable(proj, "kernel"), 1))
            if proj.bias is not None:
                self._tie(head, self.weight(proj, proj.bias, 0))
        info.update(heads=head, value=value, output=output)

    def _classify(self, layer, ins, outs):
        """`(kind, info)` for one layer call; kind "end" blocks its channels."""
        if len(outs) != 1 or any(not s.size for s in [*ins, *outs]):
            return "end", "not a single channels-last output"
        if not _channels_last(layer):
            return "end", "channels_first"
        own = _own_behaviour(layer)
        if own is not None:
            return "end", f"{own}: prunemix does not know what it computes"
        if getattr(layer, "lora_enabled", False):
            return "end", "LoRA adapters (lora_kernel_a/b) are not analysed; merge them first"
        if getattr(layer, "quantization_mode", None) is not None:
            return "end", f"quantized ({layer.quantization_mode}) weights are not analysed"
        one = len(ins) == 1
        same = all(s.size == outs[0].size for s in ins)
        bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", True) else None
        if isinstance(layer, L.Dense) and one:
            return "kernel", {"weights": (builtin_variable(layer, "kernel"), 0, 1, bias, 0),
                              "fold": "dense"}
        if isinstance(layer, L.EinsumDense) and one:
            axes = _einsum_axes(layer)
            if axes is None or (bias is not None and len(bias.shape) > 1):
                return "end", f"equation {layer.equation!r} mixes the channel axis"
            return "kernel", {"weights": (builtin_variable(layer, "kernel"), axes[0], axes[1],
                                          bias if axes[2] is not None else None, axes[2] or 0),
                              "fold": None}
        if isinstance(layer, _CONV) and not isinstance(layer, _TRANSPOSED + _DEPTHWISE
                                                       + _SEPARABLE) and one:
            if layer.groups != 1:
                return "end", f"grouped convolution (groups={layer.groups})"
            fold = "conv" if layer.padding == "valid" else None
            return "kernel", {"weights": (builtin_variable(layer, "kernel"), -2, -1, bias, 0),
                              "fold": fold}
        if isinstance(layer, _TRANSPOSED) and one:
            return "kernel", {"weights": (builtin_variable(layer, "kernel"), -1, -2, bias, 0),
                              "fold": None}
        if isinstance(layer, L.Embedding) and one:
            return "kernel", {"weights": (layer.embeddings, None, 1, None, 0), "fold": None}
        if isinstance(layer, _DEPTHWISE) and one:
            return "depthwise", {"kernel": builtin_variable(layer, "kernel"), "bias": bias,
                                 "multiplier": layer.depth_multiplier}
        if isinstance(layer, _SEPARABLE) and one:
            return "separable", {"depthwise": layer.depthwise_kernel, "bias": bias,
                                 "pointwise": layer.pointwise_kernel,
                                 "multiplier": layer.depth_multiplier}
        if isinstance(layer, L.BatchNormalization) and one:
            axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
            rank = len(outs[0].ref.shape)
            if axis not in (-1, rank - 1) or getattr(layer, "renorm", False):
                return "end", f"normalizes axis {axis}, not the channels"
            return "bn", None
        if isinstance(layer, tuple(_MERGE)) and same:
            return "merge", next(op for cls, op in _MERGE.items() if isinstance(layer, cls))
        if isinstance(layer, L.Concatenate):
            rank = len(outs[0].ref.shape)
            if layer.axis in (-1, rank - 1):
                return "concat", None
            return ("merge", "concat") if same else ("end", "concatenates other axes")
        if isinstance(layer, _PASS) and one and same:
            return "pass", None
        if isinstance(layer, _PAD) and one and same:
            return "pad", None
        if isinstance(layer, _ACT) and one and same:
            if _mixes(layer):
                return "end", f"activation {_act_name(layer)} mixes channels"
            return "act", None
        if isinstance(layer, L.Rescaling) and one and same:
            if np.ndim(layer.scale) or np.ndim(layer.offset):
                return "end", "per-channel scale"
            return "rescale", (float(layer.scale), float(layer.offset))
        if isinstance(layer, L.Flatten | L.Reshape) and one:
            if outs[0].size % ins[0].size == 0:  # row-major: channel = index % C
                return "reshape", None
            return "end", "reshapes the channel axis"
        if isinstance(layer, L.MultiHeadAttention):
            return "heads", {}
        if isinstance(layer, L.LayerNormalization | L.GroupNormalization | L.UnitNormalization):
            return "end", "normalizes over the channels"
        return "end", "layer type not understood"

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
        for kind, layer, ins, _, info in self.nodes:
            if kind == "heads":
                keep = ~self._silent_heads(info, value_of)
                bad.update(int(c) for c in self.element_class[info["heads"].elements[keep]])
                continue
            if kind not in ("kernel", "separable") or (kind == "kernel" and
                                                       info["weights"][1] is None):
                continue
            v = values[id(ins[0])]
            if kind == "separable":
                dw = value_of(info["depthwise"])
                dead = ~dw.reshape(-1, *dw.shape[-2:]).any(axis=(0, 2))
                ok = (v == 0) | dead
            else:
                ok = (v == 0) | (np.isfinite(v) & self.folds(layer, info))
            bad.update(int(c) for c in self.element_class[self.tensor(ins[0]).elements[~ok]])
        return {int(c) for c in np.unique(self.element_class)} - bad

    @staticmethod
    def _silent_heads(info, value_of) -> np.ndarray:
        """Heads that add nothing to the attention's output: their value
        projection (kernel and bias) or their output rows are all zero."""
        n = info["heads"].size
        value, output = info["value"], info["output"]
        silent_value = ~np.moveaxis(value_of(builtin_variable(value, "kernel")), 1, 0) \
            .reshape(n, -1).any(axis=1)
        if value.bias is not None:
            silent_value &= ~value_of(value.bias).reshape(n, -1).any(axis=1)
        silent_output = ~value_of(builtin_variable(output, "kernel")).reshape(n, -1).any(axis=1)
        return silent_value | silent_output

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
        for kind, layer, ins, outs, info in self.nodes:
            vin = [values[id(t)] for t in ins]
            if kind == "reshape":
                out = vin[0][np.arange(self.tensor(outs[0]).size) % len(vin[0])]
            elif kind == "heads":
                out = np.full(self.tensor(outs[0]).size, np.nan)
            else:
                out = self._value(kind, layer, vin, info, value_of)
            values[id(outs[0])] = out
        return values

    def _value(self, kind, layer, vin, info, value_of) -> np.ndarray:
        if kind == "kernel":
            kernel, _, out_axis, bias, bias_axis = info["weights"]
            k = np.moveaxis(value_of(kernel), out_axis % len(kernel.shape), -1)
            dead = ~k.reshape(-1, k.shape[-1]).any(axis=0)
            b = np.zeros(k.shape[-1]) if bias is None else np.moveaxis(
                value_of(bias), bias_axis, -1).reshape(-1, k.shape[-1])[0]
            act = getattr(layer, "activation", None) or (lambda x: x)
            return np.where(dead, _apply(act, b), np.nan)
        if kind == "depthwise":
            k = value_of(info["kernel"])
            m = info["multiplier"]
            taps = k.reshape(-1, k.shape[-2] * m)
            b = np.zeros(taps.shape[1]) if info["bias"] is None else value_of(info["bias"])
            v = np.repeat(vin[0], m)
            dead = ~taps.any(axis=0) | (v == 0)
            valid = layer.padding == "valid"
            pre = np.where(dead, b, v * taps.sum(axis=0) + b if valid else np.nan)
            return _apply(layer.activation, pre)
        if kind == "separable":
            pw = value_of(info["pointwise"])
            dead = ~pw.reshape(-1, pw.shape[-1]).any(axis=0)
            b = np.zeros(pw.shape[-1]) if info["bias"] is None else value_of(info["bias"])
            return np.where(dead, _apply(layer.activation, b), np.nan)
        if kind == "bn":
            c = len(vin[0])
            gamma = value_of(layer.gamma) if layer.scale else np.ones(c)
            beta = value_of(layer.beta) if layer.center else np.zeros(c)
            mean, var = value_of(layer.moving_mean), value_of(layer.moving_variance)
            out = gamma * (vin[0] - mean) / np.sqrt(var + layer.epsilon) + beta
            return np.where(gamma == 0, beta, out)
        if kind == "merge":
            stack = np.stack(vin)
            if info == "multiply":
                zero = (stack == 0).any(axis=0)
                return np.where(zero, 0.0, np.prod(stack, axis=0))
            ops = {"add": np.sum, "average": np.mean, "maximum": np.max, "minimum": np.min}
            if info == "subtract":
                return stack[0] - stack[1]
            if info == "concat":
                return np.where((stack == stack[0]).all(axis=0), stack[0], np.nan)
            return ops[info](stack, axis=0)
        if kind == "concat":
            return np.concatenate(vin)
        if kind == "pad":
            return np.where(vin[0] == 0, 0.0, np.nan)
        if kind == "act":
            return _apply(layer, vin[0])
        if kind == "rescale":
            scale, offset = info
            return vin[0] * scale + offset
        return vin[0]  # pass


def channel_groups(model: keras.Model) -> ChannelGraph:
    """The channel dependency groups of a functional or Sequential model.

    Args:
        model: a built functional or Sequential model (a `PrunedModel` built
            functionally, a `prune_model` copy, `keras.applications`).

    Returns:
        A `ChannelGraph`: `groups` (lists of class ids, one class per
        removable channel), `blocked` (`{class: reason}`), `ended_by`
        (`{layer name: reason}` for layers whose channels are kept), and
        `summary()`.

    Raises:
        ValueError: if `model` is subclassed (it has no graph).

    Example:

    ```python
    graph = prunemix.channel_groups(keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), weights=None))
    print(graph.summary())
    ```
    """
    return ChannelGraph(model)
