"""Per-layer channel handlers: one object per kind of layer.

A handler says how a layer call ties channels (`connect`), what a removed
channel's constant becomes through it (`value`), which removed input
channels it cannot absorb (`unremovable`), what it folds into its bias
(`fold`), and how to re-create the layer smaller (`resized`).
`prunemix.structured.graph` builds the groups with them and `shrink`
re-creates layers with them. `handler_for(layer)` finds a layer's handler
by the nearest class of the table in its MRO; a class in between that
overrides what the layer computes (`call`, `convolution_op`, ...) is not
analysed as its base. Attention heads and Transformer layers have their
handlers in `prunemix.structured.attention`.
"""

from __future__ import annotations

import keras
import numpy as np

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
    return table


# Classes of other libraries, by qualified name: prunemix never imports them;
# a class counts once its module is loaded (`prunemix.structured.attention`
# adds keras_hub's Transformer layers).
_BY_NAME: dict = {}


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
