"""`shrink`: physically remove the channels pruning zeroed, graph-wide."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from prunemix import _keras_compat, _validate
from prunemix.export import strip_pruning
from prunemix.graph import ChannelGraph, weight_value

__all__ = ["shrink", "shrink_dense"]


def _removed_classes(graph: ChannelGraph, values: dict) -> np.ndarray:
    """Removable classes (a bool per element id; classes are element ids),
    less those whose removal would empty a tensor."""
    removed = np.zeros(len(graph.element_class), bool)
    removed[list(graph.removable(weight_value, values))] = True
    cls = graph.element_class
    for space in graph.spaces:
        if space.size and removed[cls[space.elements]].all():
            removed[cls[space.base]] = False  # keep one (zero) channel
    return removed


def _folds(graph: ChannelGraph, removed: np.ndarray, values: dict) -> dict:
    """`{id(bias): delta}`: the constant a removed input channel carried into a
    Dense or "valid" convolution, folded into the reading layer's bias."""
    deltas = {}
    for handler, layer, ins, _, info in graph.nodes:
        if not ins:
            continue
        gone = removed[graph.element_class[graph.tensor(ins[0]).elements]]
        carried = np.where(gone, values[id(ins[0])], 0.0)
        for key, delta in handler.fold(graph, layer, ins, info, carried, weight_value).items():
            deltas[key] = deltas.get(key, 0.0) + delta
    return deltas


@_keras_compat.copies_live_layers
def shrink(model: keras.Model) -> keras.Model:
    """Returns a smaller plain model without the channels pruning removed.

    Finds every channel whose weights are all zero, from any pruning method
    or set by hand (e.g. after `ChannelGroups`, or `StructuredSparsity` on
    a layer's outputs), follows its dependency group through the graph
    (`prunemix.channel_groups`: residual adds, concatenations, BatchNorm,
    depthwise and separable convolutions, flatten, pooling, ...) and removes
    it everywhere at once: the producing layers' output slices and biases,
    the normalization statistics, and the reading layers' input slices. A
    removed channel that still carried a constant (`activation(bias)`) has
    it folded into the next `Dense` (or `"valid"` convolution)'s bias;
    where it cannot be folded, the channel is kept. Channels next to model
    inputs, outputs and layers the graph does not understand are kept.

    Args:
        model: a built functional or Sequential model, or a `PrunedModel`
            built functionally (stripped first). Subclassed models have no
            graph: rebuild them functionally first.

    Returns:
        A new plain functional `keras.Model` with fewer channels, the same
        inputs and outputs, and the same predictions (up to float rounding).
        It saves as `.keras` and loads without prunemix. `model` is left
        untouched.

    Raises:
        TypeError: if `model` is not a `keras.Model` (a path, a layer, None).
        ValueError: if `model` is subclassed or not built.

    Example:

    ```python
    pruned = prunemix.prune_model(
        cnn, prunemix.ConstantSparsity(0.5, 0, frequency=50),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruned.fit(x, y, epochs=2)
    small = prunemix.shrink(pruned)      # half the channels, same predictions
    ```
    """
    _validate.keras_model(model, "shrink")
    if not model.built:
        raise ValueError(f"shrink: model '{model.name}' is not built.")
    stripped = strip_pruning(model) if getattr(model, "pruner", None) is not None else model
    graph = ChannelGraph(stripped)
    functional = _keras_compat.functional_of(stripped)
    values = graph.constants(weight_value)  # once: both checks and folds read them
    removed = _removed_classes(graph, values)
    cls = graph.element_class
    gone = {id(s): np.nonzero(removed[cls[s.elements]])[0] for s in graph.spaces}
    resize = {}
    for handler, layer, _, outs, _ in graph.nodes:
        space = graph.tensor(outs[0])
        resize.setdefault(id(layer), (handler, space.size - len(gone[id(space)]), space.size))

    def removed_along(variable, axis: int) -> int:
        space = graph._weights.get((id(variable), axis % len(variable.shape)))
        return 0 if space is None else len(gone[id(space)])

    def clone(layer):
        config = layer.get_config()
        if id(layer) in resize:
            handler, kept, old = resize[id(layer)]
            config = handler.resized(layer, config, kept, old, removed_along)
        return type(layer).from_config(config)

    small = keras.models.clone_model(functional, clone_function=clone)
    small = keras.Model(*_keras_compat.graph_structs(small), name=f"{stripped.name}_shrunk")
    deltas = _folds(graph, removed, values)
    for old, new in zip(functional.layers, small.layers, strict=True):
        for variable, target in zip(old.weights, new.weights, strict=True):
            value = keras.ops.convert_to_numpy(variable)
            if id(variable) in deltas:
                value = (value + deltas[id(variable)]).astype(value.dtype)
            for axis in range(value.ndim):
                space = graph._weights.get((id(variable), axis))
                if space is not None and len(gone[id(space)]):
                    value = np.delete(value, gone[id(space)], axis=axis)
            target.assign(value)
    return small


def shrink_dense(model: keras.Model) -> keras.Model:
    """Deprecated: use `prunemix.shrink`, which handles any graph.

    Kept for 0.x code: returns `shrink(model)`, as a `keras.Sequential` when
    `model` is one.
    """
    warnings.warn("prunemix.shrink_dense is deprecated; use prunemix.shrink.",
                  DeprecationWarning, stacklevel=2)
    small = shrink(model)
    if isinstance(model, keras.Sequential):
        spec = small.inputs[0]
        return keras.Sequential(
            [keras.Input(batch_shape=spec.shape, dtype=spec.dtype), *small.layers[1:]],
            name=small.name,
        )
    return small
