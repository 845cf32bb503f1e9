"""`xnnpack_sparse_report`: which layers XNNPack's sparse CNN path would run."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from prunemix.report import table

__all__ = ["XnnpackLayer", "XnnpackReport", "xnnpack_sparse_report"]


@dataclasses.dataclass(frozen=True)
class XnnpackLayer:
    """One layer of an `XnnpackReport`: whether XNNPack's sparse path runs it."""

    layer: str
    kind: str
    sparse: bool
    reason: str


class XnnpackReport(list):
    """`XnnpackLayer` rows; `str()` is a table with a verdict and the caveats."""

    def __str__(self) -> str:
        header = ("layer", "class", "sparse path", "why")
        rows = [(r.layer, r.kind, "yes" if r.sparse else "no", r.reason) for r in self]
        sparse = sum(r.sparse for r in self)
        return table(header, rows, (
            f"{sparse} of {sum(r.kind == 'Conv2D' for r in self)} Conv2D layers would run "
            "XNNPack's sparse kernels. XNNPack takes this path on ARM only: x86 CPUs with AVX "
            "never do, whatever the model."))


_PASS_THROUGH = (
    keras.layers.Add, keras.layers.Multiply, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.ELU, keras.layers.Dropout, keras.layers.ZeroPadding2D,
)


def _one_by_one(layer) -> bool:
    return (tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and getattr(layer, "groups", 1) == 1)


def _symmetric_zero_padding(layer, pad: int) -> bool:
    from prunemix import _keras_compat

    producers = _keras_compat.inbound_layers(layer)
    return (len(producers) == 1 and isinstance(producers[0], keras.layers.ZeroPadding2D)
            and tuple(map(tuple, producers[0].padding)) == ((pad, pad), (pad, pad)))


def _support(layer) -> str | None:
    """None if XNNPack's sparse subgraph can contain `layer`, else why not."""
    if isinstance(layer, _PASS_THROUGH):
        return None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        size, stride = tuple(layer.kernel_size), tuple(layer.strides)
        pad = {(3, 3): 1, (5, 5): 2}.get(size)
        if pad is None or layer.depth_multiplier != 1 or tuple(layer.dilation_rate) != (1, 1):
            return "depthwise conv other than 3x3/5x5, multiplier 1, no dilation"
        if layer.padding == "same" and stride == (1, 1):
            return None
        if layer.padding == "valid" and stride in ((1, 1), (2, 2)) and \
                _symmetric_zero_padding(layer, pad):
            return None
        return "depthwise conv without symmetric padding (Keras 'same' with stride 2 pads " \
               "asymmetrically)"
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(
            layer, keras.layers.Conv2DTranspose | keras.layers.DepthwiseConv2D):
        return None if _one_by_one(layer) else "convolution other than 1x1, stride 1"
    if isinstance(layer, keras.layers.BatchNormalization):
        return None if list(np.atleast_1d(layer.axis)) in ([3], [-1]) else "not channels-last"
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", "")
        ok = name in ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
        return None if ok else f"activation {name!r} not supported"
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return None if layer.keepdims else "GlobalAveragePooling2D without keepdims=True"
    return f"{type(layer).__name__} is not supported by XNNPack's sparse subgraph"


def xnnpack_sparse_report(model: keras.Model, min_sparsity: float = 2 / 3) -> XnnpackReport:
    """Which convolutions XNNPack's sparse CNN path would run, and why not the rest.

    XNNPack (the CPU delegate of LiteRT) runs 1x1 convolutions with sparse
    kernels inside a channel-first subgraph that starts at a 3x3, stride-2
    Conv2D on 3 input channels with symmetric zero padding and ends at a
    `GlobalAveragePooling2D(keepdims=True)`; every layer in between must be
    supported, and a 1x1 conv's kernel must be at least 2/3 zeros. This is
    `tfmot`'s `PruneForLatencyOnXNNPack` check as a report: it never rejects
    the model, it says for each layer what holds it back. XNNPack takes this
    path on ARM only; x86 CPUs with AVX never do.

    Args:
        model: a built functional or Sequential Keras model (a stripped or
            `PrunedModel` copy works alike).
        min_sparsity: the zero fraction XNNPack needs in a 1x1 kernel.

    Returns:
        An `XnnpackReport`: one `XnnpackLayer` per layer (name, class, whether
        it would run sparse, why).

    Raises:
        ValueError: for a subclassed model (it has no graph to walk).
    """
    from prunemix import _keras_compat

    if not isinstance(model, _keras_compat.functional_class() | keras.Sequential):
        raise ValueError(
            f"xnnpack_sparse_report needs a functional or Sequential model; '{model.name}' is "
            f"a {type(model).__name__}."
        )
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    start = None
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
            start = layer
            break
    report = XnnpackReport()
    start_ok = (
        start is not None and tuple(start.kernel.shape[:3]) == (3, 3, 3)
        and tuple(start.strides) == (2, 2) and start.padding == "valid"
        and _symmetric_zero_padding(start, 1)
    )
    inside = False
    for layer in layers:
        kind = type(layer).__name__
        if layer is start:
            inside = start_ok
            reason = "starts the sparse subgraph" if start_ok else (
                "first conv must be 3x3, stride 2, 3 input channels, 'valid' after "
                "ZeroPadding2D(1): no sparse subgraph")
            report.append(XnnpackLayer(layer.name, kind, False, reason))
            continue
        if not inside:
            report.append(XnnpackLayer(layer.name, kind, False, "outside the sparse subgraph"))
            continue
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            problem = _support(layer)
            report.append(XnnpackLayer(layer.name, kind, False, problem or "ends the subgraph"))
            inside = False
            continue
        problem = _support(layer)
        if problem:
            report.append(XnnpackLayer(layer.name, kind, False, problem + "; ends the subgraph"))
            inside = False
            continue
        if kind == "Conv2D":
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            sparsity = 1.0 - np.count_nonzero(kernel) / kernel.size
            sparse = sparsity >= min_sparsity
            reason = f"1x1 conv, {sparsity:.0%} zeros" + (
                "" if sparse else f" (under {min_sparsity:.0%}: runs dense)")
            report.append(XnnpackLayer(layer.name, kind, sparse, reason))
        else:
            report.append(XnnpackLayer(layer.name, kind, False, "supported, no weights to skip"))
    return report
