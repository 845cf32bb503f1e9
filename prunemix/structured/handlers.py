"""Per-layer channel handlers: one object per kind of layer.

A handler says how a layer call ties channels (`connect`), what a removed
channel's constant becomes through it (`value`), which removed input
channels it cannot absorb (`unremovable`), what it folds into its bias
(`fold`), and how to re-create the layer smaller (`resized`).
`prunemix.structured.graph` builds the groups with them and `shrink`
re-creates layers with them. `handler_for(layer)` finds a layer's handler
by the nearest class of the table in its MRO; a class in between that
overrides what the layer computes (`call`, `convolution_op`, ...) is not
analysed as its base.
"""

from __future__ import annotations

import keras
import numpy as np

from prunemix import _keras_compat
from prunemix.axes import TRANSPOSED_CONVS, einsum_specs
from prunemix.prunable import builtin_variable

L = keras.layers

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
# Methods that define what a layer computes: a subclass of a known layer
# that overrides one of them computes something prunemix does not know.
_BEHAVIOUR = ("call", "__call__", "convolution_op", "quantized_call")


def act_name(layer) -> str:
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", str(fn))


def mixes(layer) -> bool:
    """Whether the layer's `activation` (if it has one) mixes channels."""
    fn = getattr(layer, "activation", None)
    return fn is not None and fn not in _ELEMENTWISE


def apply(fn, values: np.ndarray) -> np.ndarray:
    """An element-wise function of constants; NaN (not constant) stays NaN."""
    nan = np.isnan(values)
    out = keras.ops.convert_to_numpy(fn(np.where(nan, 0.0, values)[None].astype("float32")))
    return np.where(nan, np.nan, np.asarray(out, "float64").reshape(-1))


def einsum_axes(layer):
    """`(in_axis, out_axis, bias_axis)` of an EinsumDense kernel, or None when
    its equation does not map the input's last axis to one kernel axis and the
    kernel's to the output's last axis."""
    inputs, kernel, output = einsum_specs(layer)
    i, o = inputs[-1], output[-1]
    if i not in kernel or i in output or o not in kernel or o in inputs or "." in inputs:
        return None
    bias = getattr(layer, "bias_axes", None) or ""
    return kernel.index(i), kernel.index(o), (bias.index(o) if o in bias else None)


def _bias(layer):
    return getattr(layer, "bias", None) if getattr(layer, "use_bias", True) else None


def _one(ins) -> bool:
    return len(ins) == 1


def _same(ins, outs) -> bool:
    return all(s.size == outs[0].size for s in ins)


class ChannelHandler:
    """How one kind of layer takes part in channel groups.

    The default is a layer that passes channel `c` in to channel `c` out
    and keeps each channel's value (dropout, pooling, cropping, ...).
    Subclass it for a layer of your own and register it with
    `prunemix.register_channel_handler`. A call's channels are *spaces*
    (`space.elements`: one id per channel): `graph.tensor(t)` for a tensor,
    `graph.weight(layer, variable, axis)` for a weight axis (masked with
    the channel; `role="slice"` for a statistic that is only cut). The
    methods get the call's input and output spaces (`connect`) or tensors.

    Example:

    ```python
    class ChannelScale(keras.layers.Layer):  # y = x * scale, per channel
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    class ChannelScaleHandler(prunemix.structured.ChannelHandler):
        def connect(self, graph, layer, ins, outs, info):
            graph.tie(ins[0], outs[0])
            graph.tie(outs[0], graph.weight(layer, layer.scale, 0))

        def value(self, graph, layer, vin, size, info, value_of):
            return vin[0] * value_of(layer.scale)

    prunemix.register_channel_handler(ChannelScale, ChannelScaleHandler())
    ```
    """

    #: Whether `connect` ties the call's inputs (each must then have a known
    #: channel width); False for a layer that keeps its inputs whole.
    ties_inputs = True

    def match(self, layer, ins, outs):
        """Info for the other methods (any object), or a string: why this
        call ends its groups (its channels are kept)."""
        return None if _one(ins) and _same(ins, outs) else "layer type not understood"

    def connect(self, graph, layer, ins, outs, info) -> None:
        """Ties the call's channels and weight axes (`graph.tie`,
        `graph.weight`, `graph.block`)."""
        for space in ins:
            graph.tie(space, outs[0])

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        """Each of the `size` output channels' value when its class is
        removed, from the inputs' (`vin`); NaN where it is not a constant."""
        return vin[0]

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        """Element ids whose class cannot be removed because of this call
        (a constant it cannot fold, a head that still speaks)."""
        return np.zeros(0, int)

    def fold(self, graph, layer, ins, info, carried, value_of) -> dict:
        """`{id(bias): delta}` for the constants `carried` (per input
        channel, 0 where none or kept) that removed input channels bring."""
        return {}

    def resized(self, layer, config: dict, kept, old, removed) -> dict:
        """`config` with `kept` of `old` output channels (None: unchanged);
        `removed(variable, axis)` counts the indices removed along a weight
        axis."""
        return config

    def unexpressed(self, layer, removed) -> str | None:
        """Why the layer's config cannot express the cut (`shrink` then
        rebuilds the call with `unrolled`), or None."""
        return None

    def keeps(self, layer, info, removed, rebuild: bool = True) -> tuple | None:
        """`(spaces, why)`: spaces whose removable channels the shrunk layer
        keeps (as the zeros they are), because its config cannot express
        their removal and it cannot be rebuilt from its parts (or may not
        be: `rebuild` is False inside a model that keeps its class, a
        keras_hub task); None to remove them."""
        return None

    def unrolled(self, layer, part, removed, args, kwargs):
        """The layer's outputs for one call (`args`, `kwargs`, symbolic),
        computed in the new functional graph by smaller copies of its
        sublayers: `part(sublayer, config=None, cls=None)` re-creates one
        (from `config`, as `cls`) and fills it with the sublayer's kept
        weights. Raises `ValueError` where the layer cannot be rebuilt."""
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}): "
                         f"{self.unexpressed(layer, removed)}, and prunemix cannot rebuild "
                         "it from its parts. Keep its heads (exclude its attention from "
                         "ChannelGroups with a Rule) to shrink the rest.")


class Kernel(ChannelHandler):
    """Dense, EinsumDense, Conv, Conv*Transpose, Embedding: a kernel whose
    output axis is the output channel and whose input axis (if any) reads
    the input channel, and an optional bias."""

    def __init__(self, weights, fold=None, needs=None):
        self._weights, self._fold, self._needs = weights, fold, needs

    def match(self, layer, ins, outs):
        if not _one(ins):
            return "layer type not understood"
        problem = self._needs(layer) if self._needs else None
        if problem:
            return problem
        weights = self._weights(layer, _bias(layer))
        if isinstance(weights, str):
            return weights
        fold = self._fold(layer) if callable(self._fold) else self._fold
        return {"weights": weights, "fold": fold}

    def connect(self, graph, layer, ins, outs, info) -> None:
        kernel, in_axis, out_axis, bias, bias_axis = info["weights"]
        if in_axis is not None:
            graph.tie(ins[0], graph.weight(layer, kernel, in_axis))
        graph.tie(outs[0], graph.weight(layer, kernel, out_axis))
        if bias is not None:
            graph.tie(outs[0], graph.weight(layer, bias, bias_axis))

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        kernel, _, out_axis, bias, bias_axis = info["weights"]
        k = np.moveaxis(value_of(kernel), out_axis % len(kernel.shape), -1)
        dead = ~k.reshape(-1, k.shape[-1]).any(axis=0)
        b = np.zeros(k.shape[-1]) if bias is None else np.moveaxis(
            value_of(bias), bias_axis, -1).reshape(-1, k.shape[-1])[0]
        act = getattr(layer, "activation", None) or (lambda x: x)
        return np.where(dead, apply(act, b), np.nan)

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        if info["weights"][1] is None:
            return np.zeros(0, int)
        v = values[id(ins[0])]
        ok = (v == 0) | (np.isfinite(v) & graph.folds(layer, info))
        return graph.tensor(ins[0]).elements[~ok]

    def fold(self, graph, layer, ins, info, carried, value_of) -> dict:
        if not graph.folds(layer, info) or not np.any(carried):
            return {}
        kernel, bias = info["weights"][0], info["weights"][3]
        k = value_of(kernel)
        taps = k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)
        return {id(bias): carried @ taps}

    def resized(self, layer, config, kept, old, removed) -> dict:
        if kept is None or kept == old:
            return config
        for name in ("units", "filters", "output_dim"):
            if name in config:
                return {**config, name: kept}
        if isinstance(layer, L.EinsumDense):
            shape = config["output_shape"]
            shape = [kept] if isinstance(shape, int) else [*list(shape)[:-1], kept]
            return {**config, "output_shape": shape}
        return config


def _dense_weights(layer, bias):
    return builtin_variable(layer, "kernel"), 0, 1, bias, 0


def _einsum_weights(layer, bias):
    axes = einsum_axes(layer)
    if axes is None or (bias is not None and len(bias.shape) > 1):
        return f"equation {layer.equation!r} mixes the channel axis"
    return (builtin_variable(layer, "kernel"), axes[0], axes[1],
            bias if axes[2] is not None else None, axes[2] or 0)


def _grouped(layer):
    return f"grouped convolution (groups={layer.groups})" if layer.groups != 1 else None


class Depthwise(ChannelHandler):
    """DepthwiseConv: each input channel feeds `depth_multiplier` outputs."""

    def match(self, layer, ins, outs):
        if not _one(ins):
            return "layer type not understood"
        return {"kernel": builtin_variable(layer, "kernel"), "bias": _bias(layer),
                "multiplier": layer.depth_multiplier}

    def connect(self, graph, layer, ins, outs, info) -> None:
        m = info["multiplier"]
        graph.tie(ins[0], graph.weight(layer, info["kernel"], -2))
        graph.tie(np.repeat(ins[0].elements, m), outs[0])
        if info["bias"] is not None:
            graph.tie(outs[0], graph.weight(layer, info["bias"], 0))

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        k = value_of(info["kernel"])
        m = info["multiplier"]
        taps = k.reshape(-1, k.shape[-2] * m)
        b = np.zeros(taps.shape[1]) if info["bias"] is None else value_of(info["bias"])
        v = np.repeat(vin[0], m)
        dead = ~taps.any(axis=0) | (v == 0)
        valid = layer.padding == "valid"
        pre = np.where(dead, b, v * taps.sum(axis=0) + b if valid else np.nan)
        return apply(layer.activation, pre)


class Separable(ChannelHandler):
    """SeparableConv: a depthwise kernel per input channel, then a pointwise
    kernel from `channels * depth_multiplier` to the outputs."""

    def match(self, layer, ins, outs):
        if not _one(ins):
            return "layer type not understood"
        return {"depthwise": layer.depthwise_kernel, "bias": _bias(layer),
                "pointwise": layer.pointwise_kernel, "multiplier": layer.depth_multiplier}

    def connect(self, graph, layer, ins, outs, info) -> None:
        m = info["multiplier"]
        graph.tie(ins[0], graph.weight(layer, info["depthwise"], -2))
        graph.tie(np.repeat(ins[0].elements, m), graph.weight(layer, info["pointwise"], -2))
        graph.tie(outs[0], graph.weight(layer, info["pointwise"], -1))
        if info["bias"] is not None:
            graph.tie(outs[0], graph.weight(layer, info["bias"], 0))

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        pw = value_of(info["pointwise"])
        dead = ~pw.reshape(-1, pw.shape[-1]).any(axis=0)
        b = np.zeros(pw.shape[-1]) if info["bias"] is None else value_of(info["bias"])
        return np.where(dead, apply(layer.activation, b), np.nan)

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        dw = value_of(info["depthwise"])
        dead = ~dw.reshape(-1, *dw.shape[-2:]).any(axis=(0, 2))
        ok = (values[id(ins[0])] == 0) | dead
        return graph.tensor(ins[0]).elements[~ok]

    def resized(self, layer, config, kept, old, removed) -> dict:
        return config if kept is None or kept == old else {**config, "filters": kept}


class BatchNorm(ChannelHandler):
    """BatchNormalization over the channel axis: scale and offset (masked
    with the channel) and moving statistics (cut with it)."""

    def match(self, layer, ins, outs):
        if not _one(ins):
            return "layer type not understood"
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        rank = len(outs[0].ref.shape)
        if axis not in (-1, rank - 1) or getattr(layer, "renorm", False):
            return f"normalizes axis {axis}, not the channels"
        return None

    def connect(self, graph, layer, ins, outs, info) -> None:
        graph.tie(ins[0], outs[0])
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            variable = getattr(layer, name, None)
            if variable is not None:
                role = "mask" if name in ("gamma", "beta") else "slice"
                graph.tie(outs[0], graph.weight(layer, variable, 0, role))

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        c = len(vin[0])
        gamma = value_of(layer.gamma) if layer.scale else np.ones(c)
        beta = value_of(layer.beta) if layer.center else np.zeros(c)
        mean, var = value_of(layer.moving_mean), value_of(layer.moving_variance)
        out = gamma * (vin[0] - mean) / np.sqrt(var + layer.epsilon) + beta
        return np.where(gamma == 0, beta, out)


class Merge(ChannelHandler):
    """Add, Subtract, Multiply, Average, Maximum, Minimum: channel `c` of
    every input meets channel `c` of the output."""

    _OPS = {"add": np.sum, "average": np.mean, "maximum": np.max, "minimum": np.min}

    def __init__(self, op: str):
        self.op = op

    def match(self, layer, ins, outs):
        return None if _same(ins, outs) else "layer type not understood"

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        stack = np.stack(vin)
        if self.op == "multiply":
            zero = (stack == 0).any(axis=0)
            return np.where(zero, 0.0, np.prod(stack, axis=0))
        if self.op == "subtract":
            return stack[0] - stack[1]
        if self.op == "concat":  # concatenation along another axis
            return np.where((stack == stack[0]).all(axis=0), stack[0], np.nan)
        return self._OPS[self.op](stack, axis=0)


class Concat(ChannelHandler):
    """Concatenate: along the channels, the inputs' channels at offsets;
    along another axis, a merge of equal widths."""

    def match(self, layer, ins, outs):
        rank = len(outs[0].ref.shape)
        if layer.axis in (-1, rank - 1):
            return {"channels": True}
        return {"channels": False} if _same(ins, outs) else "concatenates other axes"

    def connect(self, graph, layer, ins, outs, info) -> None:
        if info["channels"]:
            graph.tie(np.concatenate([s.elements for s in ins]), outs[0])
        else:
            super().connect(graph, layer, ins, outs, info)

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        if info["channels"]:
            return np.concatenate(vin)
        return Merge("concat").value(graph, layer, vin, size, info, value_of)


class Reshape(ChannelHandler):
    """Flatten and Reshape whose output width is a multiple of the input's:
    row-major, output channel `j` is input channel `j % C`."""

    def match(self, layer, ins, outs):
        if not _one(ins):
            return "layer type not understood"
        return None if outs[0].size % ins[0].size == 0 else "reshapes the channel axis"

    def connect(self, graph, layer, ins, outs, info) -> None:
        c = ins[0].size
        graph.tie(ins[0].elements[np.arange(outs[0].size) % c], outs[0])

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return vin[0][np.arange(size) % len(vin[0])]

    def resized(self, layer, config, kept, old, removed) -> dict:
        if kept is None or kept == old or not isinstance(layer, L.Reshape):
            return config
        return {**config, "target_shape": [*list(config["target_shape"])[:-1], kept]}


class Pad(ChannelHandler):
    """Zero padding: a zero channel stays zero; any other constant does not."""

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return np.where(vin[0] == 0, 0.0, np.nan)


class Activation(ChannelHandler):
    """Activation, ReLU, LeakyReLU, ELU: element-wise, or they end groups."""

    def match(self, layer, ins, outs):
        if mixes(layer):
            return f"activation {act_name(layer)} mixes channels"
        return super().match(layer, ins, outs)

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return apply(layer, vin[0])


class Rescale(ChannelHandler):
    """Rescaling by scalars."""

    def match(self, layer, ins, outs):
        problem = super().match(layer, ins, outs)
        if problem is None and (np.ndim(layer.scale) or np.ndim(layer.offset)):
            problem = "per-channel scale"
        return problem

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return vin[0] * float(layer.scale) + float(layer.offset)


class Ends(ChannelHandler):
    """A known layer whose channels are always kept, and why."""

    def __init__(self, reason: str):
        self.reason = reason

    def match(self, layer, ins, outs):
        return self.reason


def _kernel(dense):
    return builtin_variable(dense, "kernel")


class AttentionHeads:
    """Where the heads of one attention layer are: its query, key, value
    and output projections (EinsumDense), the head axis of the first three
    kernels (the output kernel's is 0), and its numbers of query and
    key/value heads.

    Heads go in units that keep grouped-query attention consistent: with as
    many key/value heads as query heads, a unit is one head (its query, key
    and value slices and biases, and its rows of the output projection);
    with fewer, a unit is the query head at one position of every key/value
    group (its query slices and output rows), and the key/value heads stay.
    """

    def __init__(self, query, key, value, output, axis: int, num_query: int, num_kv: int):
        self.query, self.key, self.value, self.output = query, key, value, output
        self.axis, self.num_query, self.num_kv = axis, num_query, num_kv

    @classmethod
    def of_keras(cls, layer) -> AttentionHeads:
        """The heads of a built Keras `MultiHeadAttention` (or a subclass)."""
        q, k, v, o = _keras_compat.attention_projections(layer)
        return cls(q, k, v, o, 1, layer.num_heads, layer.num_heads)

    def connect(self, graph):
        """Ties the heads' weight slices; returns the space of query heads."""
        heads = graph.weight(self.query, _kernel(self.query), self.axis)
        graph.tie(heads, graph.weight(self.output, _kernel(self.output), 0))
        shared = self.num_kv == self.num_query
        for proj in (self.query, self.key, self.value) if shared else (self.query,):
            if proj is not self.query:
                graph.tie(heads, graph.weight(proj, _kernel(proj), self.axis))
            if getattr(proj, "bias", None) is not None:
                graph.tie(heads, graph.weight(proj, proj.bias, 0))
        if not shared:  # query head k * groups + g is unit g
            groups = self.num_query // self.num_kv
            graph.tie(heads.elements[np.arange(self.num_query) % groups], heads)
        return heads

    def silent(self, value_of) -> np.ndarray:
        """Per query head: whether it adds nothing (its output rows are
        zero, or, one head per unit, its value slice and bias are)."""
        n = self.num_query
        quiet = ~value_of(_kernel(self.output)).reshape(n, -1).any(axis=1)
        if self.num_kv == n:
            value = np.moveaxis(value_of(_kernel(self.value)), self.axis, 0).reshape(n, -1)
            dead = ~value.any(axis=1)
            if getattr(self.value, "bias", None) is not None:
                dead &= ~value_of(self.value.bias).reshape(n, -1).any(axis=1)
            quiet |= dead
        return quiet

    def kept(self, removed) -> tuple:
        """`(query heads, key/value heads)` left after the cut."""
        gone = removed(_kernel(self.output), 0)
        return self.num_query - gone, self.num_kv - (gone if self.num_kv == self.num_query else 0)


class Transformer(ChannelHandler):
    """A Transformer layer (keras_hub's `TransformerEncoder`,
    `TransformerDecoder`, and the Llama, Mistral, Qwen and Gemma decoder
    layers): its inputs and output keep their width (the residual stream);
    its feed-forward units are a group, and so are the heads of each of its
    attention layers (`AttentionHeads`).

    A unit is its column of the up (and gate) projection and bias and its
    row of the down projection; it adds nothing when its down row is zero,
    or its up (or gate) column and bias are zero where the activation maps
    0 to 0. `shrink` re-creates the layer with a smaller `intermediate_dim`,
    and fewer heads through `heads_keys` (Gemma's config names its head
    width), or else from its parts (`unroll`), or refuses (`why`).
    """

    ties_inputs = False

    def __init__(self, up: str, down: str, gate: str | None = None,
                 key: str = "intermediate_dim", activation=None, per_unit: int = 1,
                 attention=None, heads_keys: tuple = (), why: str = "", unroll=None):
        self.up, self.down, self.gate, self.key = up, down, gate, key
        # The gate's activation (None: the layer's `activation`), and how
        # much of `key` one unit is (Gemma's is twice its units).
        self.activation, self.per_unit = activation, per_unit
        # attention(layer) -> [AttentionHeads]; the config keys of query and
        # key/value heads, when the config expresses fewer heads; else why
        # not, and unroll(layer, part, removed, args, kwargs) -> outputs.
        self.attention, self.heads_keys, self.why, self.unroll = \
            attention, heads_keys, why, unroll

    def heads(self, layer) -> list:
        return self.attention(layer) if self.attention else []

    def match(self, layer, ins, outs):
        names = [self.up, self.down] + ([self.gate] if self.gate else [])
        if any(getattr(getattr(layer, n, None), "built", False) is False for n in names):
            return "layer type not understood"
        return {}

    def connect(self, graph, layer, ins, outs, info) -> None:
        for space in [*ins, *outs]:
            graph.block(space, f"next to layer '{layer.name}' (a Transformer layer keeps its "
                               "input and output width; its heads and feed-forward units "
                               "are groups)")
        up, down = getattr(layer, self.up), getattr(layer, self.down)
        gate = getattr(layer, self.gate) if self.gate else None
        units = graph.weight(up, _kernel(up), -1)
        for dense in (up, gate):
            if dense is None:
                continue
            if dense is not up:
                graph.tie(units, graph.weight(dense, _kernel(dense), -1))
            if dense.bias is not None:
                graph.tie(units, graph.weight(dense, dense.bias, 0))
        graph.tie(units, graph.weight(down, _kernel(down), 0))
        attention = self.heads(layer)
        info.update(units=units, up=up, down=down, gate=gate, attention=attention,
                    heads=[a.connect(graph) for a in attention])

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return np.full(size, np.nan)

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        def silent(dense, activation):
            kernel = value_of(_kernel(dense))
            quiet = ~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)
            bias = np.zeros(kernel.shape[-1]) if dense.bias is None else value_of(dense.bias)
            return quiet & (apply(activation, bias) == 0)

        up, gate = info["up"], info["gate"]
        if gate is None:
            quiet = silent(up, up.activation)
        else:  # down(activation(gate(x)) * up(x))
            activation = self.activation or layer.activation
            quiet = silent(gate, activation) | silent(up, keras.activations.linear)
        down = value_of(_kernel(info["down"]))
        quiet |= ~down.reshape(down.shape[0], -1).any(axis=1)
        speaking = [info["units"].elements[~quiet]]
        for attention, heads in zip(info["attention"], info["heads"], strict=True):
            speaking.append(heads.elements[~attention.silent(value_of)])
        return np.concatenate(speaking)

    def unexpressed(self, layer, removed) -> str | None:
        cut = [a for a in self.heads(layer) if a.kept(removed)[0] != a.num_query]
        if not cut or self.heads_keys:
            return None
        return f"{self.why} ({cut[0].num_query} -> {cut[0].kept(removed)[0]} heads)"

    def unrolled(self, layer, part, removed, args, kwargs):
        if self.unroll is None:
            return super().unrolled(layer, part, removed, args, kwargs)
        return self.unroll(self, layer, part, removed, args, kwargs)

    def keeps(self, layer, info, removed, rebuild: bool = True) -> tuple | None:
        if (self.unroll is not None and rebuild) or not self.unexpressed(layer, removed):
            return None
        if self.unroll is not None:
            return info["heads"], (f"keep their zeroed heads (as zeros): {self.why}, and a "
                                   "task keeps its class (shrink its backbone to rebuild the "
                                   "layers without them)")
        return info["heads"], (f"keep their zeroed heads (as zeros): {self.why}, and prunemix "
                               "cannot rebuild them from their parts")

    def resized(self, layer, config, kept, old, removed) -> dict:
        up = getattr(layer, self.up)
        gone = removed(_kernel(up), len(up.kernel.shape) - 1)
        if gone:
            config = {**config, self.key: config[self.key] - self.per_unit * gone}
        for attention in self.heads(layer)[:1] if self.heads_keys else []:
            heads = attention.kept(removed)
            if heads[0] != attention.num_query:
                config = {**config, **dict(zip(self.heads_keys, heads, strict=True))}
        return config


class Heads(ChannelHandler):
    """Keras MultiHeadAttention: its inputs and output keep their width (the
    residual stream); its heads are one group (`AttentionHeads`)."""

    def match(self, layer, ins, outs):
        return {}

    def connect(self, graph, layer, ins, outs, info) -> None:
        for space in [*ins, *outs]:
            graph.block(space, f"next to layer '{layer.name}' (attention keeps its input "
                               "and output width; its heads are a group of their own)")
        attention = AttentionHeads.of_keras(layer)
        info.update(attention=attention, heads=attention.connect(graph))

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return np.full(size, np.nan)

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        return info["heads"].elements[~info["attention"].silent(value_of)]

    def resized(self, layer, config, kept, old, removed) -> dict:
        heads = AttentionHeads.of_keras(layer).kept(removed)[0]
        return {**config, "num_heads": heads} if heads != layer.num_heads else config


def _conv_fold(layer):
    return "conv" if layer.padding == "valid" else None


_PASS_NAMES = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "RepeatVector",
)


def _builtin_table() -> dict:
    table = {}

    def add(classes, handler):
        for cls in classes:
            table[cls] = handler

    add([L.Dense], Kernel(_dense_weights, fold="dense"))
    add([L.EinsumDense], Kernel(_einsum_weights))
    add([L.Conv1D, L.Conv2D, L.Conv3D],
        Kernel(lambda layer, bias: (builtin_variable(layer, "kernel"), -2, -1, bias, 0),
               fold=_conv_fold, needs=_grouped))
    add(TRANSPOSED_CONVS,
        Kernel(lambda layer, bias: (builtin_variable(layer, "kernel"), -1, -2, bias, 0)))
    add([L.Embedding], Kernel(lambda layer, bias: (layer.embeddings, None, 1, None, 0)))
    add([L.DepthwiseConv1D, L.DepthwiseConv2D], Depthwise())
    add([L.SeparableConv1D, L.SeparableConv2D], Separable())
    add([L.BatchNormalization], BatchNorm())
    for cls, op in ((L.Add, "add"), (L.Subtract, "subtract"), (L.Multiply, "multiply"),
                    (L.Average, "average"), (L.Maximum, "maximum"), (L.Minimum, "minimum")):
        add([cls], Merge(op))
    add([L.Concatenate], Concat())
    add([L.Flatten, L.Reshape], Reshape())
    add([getattr(L, name) for name in _PASS_NAMES if hasattr(L, name)], ChannelHandler())
    add([L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D], Pad())
    add([L.Activation, L.ReLU, L.LeakyReLU, L.ELU], Activation())
    add([L.Rescaling], Rescale())
    add([L.LayerNormalization, L.GroupNormalization, L.UnitNormalization],
        Ends("normalizes over the channels"))
    add([L.MultiHeadAttention], Heads())
    return table


def _unroll_keras_hub(handler, layer, part, removed, args, kwargs):
    """keras_hub's `TransformerEncoder`/`TransformerDecoder` as their parts:
    the same layer norms, dropouts and dense layers, and a Keras
    `MultiHeadAttention` with fewer heads of the same width per attention
    (padding masks as its `value_mask`, causal masking as
    `use_causal_mask`), added to the residual as the layer does."""
    import inspect

    bound = inspect.signature(layer.call).bind(*args, **kwargs).arguments
    decoder = "decoder_sequence" in bound
    x = bound["decoder_sequence" if decoder else "inputs"]
    unsupported = [k for k in ("self_attention_cache", "cross_attention_cache",
                               "return_attention_scores") if bound.get(k)]
    if unsupported or getattr(x, "_keras_mask", None) is not None:
        reason = f"it is called with {unsupported[0]}" if unsupported else \
            "its input carries a Keras mask"
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) loses heads, and "
                         f"{reason}: prunemix rebuilds it from its parts only for plain "
                         "calls (sequence, padding and attention masks).")
    attention = {id(a.query): a for a in handler.heads(layer)}
    first = layer.normalize_first

    def block(x, prefix, value, value_mask, attention_mask, causal):
        mha = getattr(layer, f"_{prefix}_layer")
        heads = attention[id(mha._query_dense)].kept(removed)[0]
        norm = part(getattr(layer, f"_{prefix}_layer_norm"))
        residual = x
        x = norm(x) if first else x
        y = part(mha, {**mha.get_config(), "num_heads": heads},
                 keras.layers.MultiHeadAttention)(
            x, x if value is None else value, value_mask=value_mask,
            attention_mask=attention_mask, use_causal_mask=causal)
        y = part(getattr(layer, f"_{prefix}_dropout"))(y)
        x = keras.layers.Add()([y, residual])
        return x if first else norm(x)

    if decoder:
        x = block(x, "self_attention", None, bound.get("decoder_padding_mask"),
                  bound.get("decoder_attention_mask"), bound.get("use_causal_mask", True))
        if bound.get("encoder_sequence") is not None:
            x = block(x, "cross_attention", bound["encoder_sequence"],
                      bound.get("encoder_padding_mask"), bound.get("encoder_attention_mask"),
                      False)
    else:
        x = block(x, "self_attention", None, bound.get("padding_mask"),
                  bound.get("attention_mask"), False)
    up, down = getattr(layer, handler.up), getattr(layer, handler.down)
    norm = part(layer._feedforward_layer_norm)
    residual = x
    x = norm(x) if first else x
    units = up.units - removed(_kernel(up), 1)
    y = part(down)(part(up, {**up.get_config(), "units": units})(x))
    x = keras.layers.Add()([part(layer._feedforward_dropout)(y), residual])
    return x if first else norm(x)


def _rotary_heads(layer) -> list:
    """The grouped-query heads of Llama's, Mistral's and Qwen's attention."""
    attention = layer._self_attention_layer
    return [AttentionHeads(attention._query_dense, attention._key_dense,
                           attention._value_dense, attention._output_dense, 1,
                           layer.num_query_heads, layer.num_key_value_heads)]


def _keras_hub_heads(layer) -> list:
    return [AttentionHeads.of_keras(a) for a in (
        layer._self_attention_layer, getattr(layer, "_cross_attention_layer", None))
        if a is not None]


_FFN = {"up": "_feedforward_intermediate_dense", "down": "_feedforward_output_dense"}
_KERAS_HUB = {**_FFN, "attention": _keras_hub_heads, "unroll": _unroll_keras_hub,
              "why": "keras_hub derives its head width as hidden_dim // num_heads"}
# Classes of other libraries, by qualified name: prunemix never imports them;
# a class counts once its module is loaded.
# Llama, Mistral and Qwen: their heads are groups too, but `shrink` keeps
# them (zeros): the configs derive the head width, and their rotary attention
# has no Keras layer to rebuild it from.
_ROTARY = {**_FFN, "gate": "_feedforward_gate_dense", "attention": _rotary_heads,
           "why": "keras_hub derives its head width as hidden_dim // num_query_heads and "
                  "applies rotary embeddings inside its attention"}
_BY_NAME = {
    "keras_hub.src.layers.modeling.transformer_encoder.TransformerEncoder":
        Transformer(**_KERAS_HUB),
    "keras_hub.src.layers.modeling.transformer_decoder.TransformerDecoder":
        Transformer(**_KERAS_HUB),
    "keras_hub.src.models.llama.llama_decoder.LlamaTransformerDecoder": Transformer(**_ROTARY),
    "keras_hub.src.models.mistral.mistral_transformer_decoder.MistralTransformerDecoder":
        Transformer(**_ROTARY),
    "keras_hub.src.models.qwen.qwen_decoder.QwenTransformerDecoder": Transformer(**_ROTARY),
    # gelu(gating_ffw(x)) * gating_ffw_2(x); `intermediate_dim` is twice the
    # units. Its config names the head width: fewer heads keep the class.
    "keras_hub.src.models.gemma.gemma_decoder_block.GemmaDecoderBlock": Transformer(
        up="gating_ffw_2", down="ffw_linear", gate="gating_ffw",
        activation=keras.activations.gelu, per_unit=2,
        attention=lambda layer: [AttentionHeads(
            layer.attention.query_dense, layer.attention.key_dense,
            layer.attention.value_dense, layer.attention.output_dense, 0,
            layer.num_query_heads, layer.num_key_value_heads)],
        heads_keys=("num_query_heads", "num_key_value_heads")),
}


def _known(cls):
    """The handler a class itself is registered with or known by, or None."""
    return _REGISTERED.get(cls) or _TABLE.get(cls) or \
        _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")


_TABLE = _builtin_table()
# Classes registered with `register_channel_handler`: checked with the table,
# the nearest class in a layer's MRO wins.
_REGISTERED: dict = {}


def register_channel_handler(cls: type, handler) -> type:
    """Declares how a layer class takes part in channel groups.

    The channel-graph twin of `register_prunable`: without it, a layer
    class prunemix does not know (a custom layer, a keras_hub layer, a
    subclass of a built-in layer that overrides `call`) ends its groups, and
    its neighbours' channels are kept. Register the class and `channel_graph`,
    `ChannelGroups` and `shrink` analyse it with `handler`. Subclasses of
    `cls` use it too, unless they override `call` themselves. Registering a
    class again replaces its handler.

    Args:
        cls: a `keras.layers.Layer` subclass.
        handler: a `prunemix.structured.ChannelHandler` instance, or a Keras
            layer class prunemix knows (e.g. `keras.layers.Dense`): `cls`
            then computes as that class does, whatever its own `call` says.

    Returns:
        `cls`, unchanged.

    Raises:
        TypeError: if `cls` is not a layer class, or `handler` is neither a
            `ChannelHandler` nor a layer class prunemix knows.

    Example:

    ```python
    class LoggedDense(keras.layers.Dense):  # a call of its own, Dense's math
        def call(self, x):
            return super().call(x)

    prunemix.register_channel_handler(LoggedDense, keras.layers.Dense)
    ```
    """
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise TypeError(
            f"register_channel_handler takes a `keras.layers.Layer` subclass. Received: {cls!r}"
        )
    if isinstance(handler, type) and handler in _TABLE:
        handler = _TABLE[handler]
    if not isinstance(handler, ChannelHandler):
        raise TypeError(
            f"register_channel_handler({cls.__name__}, handler): `handler` must be a "
            "prunemix.structured.ChannelHandler or a Keras layer class prunemix knows "
            f"(e.g. keras.layers.Dense). Received: {handler!r}"
        )
    _REGISTERED[cls] = handler
    return cls


def handler_for(layer):
    """`(handler, None)` for a layer the table knows, else `(None, reason)`."""
    mro = type(layer).__mro__
    known = next((i for i, cls in enumerate(mro) if _known(cls) is not None), None)
    if known is None:
        return None, "layer type not understood"
    for cls in mro[:known]:
        overridden = [m for m in _BEHAVIOUR if m in vars(cls)]
        if overridden:
            return None, (f"{cls.__name__} overrides `{overridden[0]}`: prunemix does not "
                          "know what it computes")
    if getattr(layer, "lora_enabled", False):
        return None, "LoRA adapters (lora_kernel_a/b) are not analysed; merge them first"
    if getattr(layer, "quantization_mode", None) is not None:
        return None, f"quantized ({layer.quantization_mode}) weights are not analysed"
    return _known(mro[known]), None
