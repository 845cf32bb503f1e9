"""`shrink`: physically remove the channels pruning zeroed, graph-wide."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from prunemix import _keras_compat, _validate
from prunemix.export import strip_pruning
from prunemix.model import own_config
from prunemix.structured.graph import ChannelGraph, weight_value

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
    (`prunemix.channel_graph`: residual adds, concatenations, BatchNorm,
    depthwise and separable convolutions, flatten, pooling, ...) and removes
    it everywhere at once: the producing layers' output slices and biases,
    the normalization statistics, and the reading layers' input slices. A
    removed channel that still carried a constant (`activation(bias)`) has
    it folded into the next `Dense` (or `"valid"` convolution)'s bias;
    where it cannot be folded, the channel is kept. Channels next to model
    inputs, outputs and layers the graph does not understand are kept.

    A model of its own class whose config can express the cut (a keras_hub
    backbone with a smaller `intermediate_dim`, or Gemma's with fewer
    heads; a keras_hub task, shrunk through its backbone's config) comes
    back as that class. A layer whose own config cannot express its cut
    (keras_hub's GPT-2 and BERT layers derive the head width from
    `hidden_dim // num_heads`) is rebuilt from its parts, with a warning;
    inside a task (which stays its class), or where no parts can rebuild it
    (Llama's rotary attention), its zeroed heads are kept as zeros, with a
    warning.

    Args:
        model: a built functional or Sequential model, a `PrunedModel` built
            functionally or by `prune_model` (stripped first), or a keras_hub
            task or backbone. Subclassed models have no graph: rebuild them
            functionally first.

    Returns:
        A new model with fewer channels, the same inputs and outputs, and
        the same predictions (up to float rounding): an instance of
        `model`'s own class when its config expresses the cut, else a plain
        functional `keras.Model` (with a warning saying why, for a model of
        its own class). It saves as `.keras` and loads without prunemix.
        `model` is left untouched.

    Raises:
        TypeError: if `model` is not a `keras.Model` (a path, a layer, None).
        ValueError: if `model` is subclassed or not built, a task's cut
            cannot be expressed by its backbone's config, or a layer whose
            config cannot express its cut cannot be rebuilt from its parts.

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
    task = graph.source is not stripped
    values = graph.constants(weight_value)  # once: both checks and folds read them
    removed = _removed_classes(graph, values)
    cls = graph.element_class

    def cut() -> dict:  # {id(space): indices removed along it}
        return {id(s): np.nonzero(removed[cls[s.elements]])[0] for s in graph.spaces}

    def removed_along(variable, axis: int) -> int:
        space = graph._weights.get((id(variable), axis % len(variable.shape)))
        return 0 if space is None else len(gone[id(space)])

    gone = cut()
    keeping: dict = {}  # why -> names of the layers that keep zeros for it
    for handler, layer, _, _, info in graph.nodes:
        keep = handler.keeps(layer, info, removed_along, rebuild=not task)
        if keep is not None:
            for space in keep[0]:
                removed[cls[space.elements]] = False
            keeping.setdefault(keep[1], {})[layer.name] = None  # a shared layer once
    for why, names in keeping.items():
        warnings.warn(f"shrink: layers {list(names)} {why}.", stacklevel=3)
    gone = cut()
    deltas = _folds(graph, removed, values)

    def trimmed(variable) -> np.ndarray:
        value = keras.ops.convert_to_numpy(variable)
        if id(variable) in deltas:
            value = (value + deltas[id(variable)]).astype(value.dtype)
        for axis in range(value.ndim):
            space = graph._weights.get((id(variable), axis))
            if space is not None and len(gone[id(space)]):
                value = np.delete(value, gone[id(space)], axis=axis)
        return value

    configs, unrolled = {}, {}
    for handler, layer, _, outs, _ in graph.nodes:
        if id(layer) not in configs:
            space = graph.tensor(outs[0])
            old = _config_of(layer)
            configs[id(layer)] = (layer, old, handler.resized(
                layer, old, space.size - len(gone[id(space)]), space.size, removed_along))
            reason = handler.unexpressed(layer, removed_along)
            if reason:
                unrolled[id(layer)] = (handler, reason)
    if unrolled:
        names = [configs[key][0].name for key in unrolled]  # graph order, once each
        rebuilt = f"layers {names} are rebuilt from their parts: " \
                  f"{next(iter(unrolled.values()))[1]}"
        same, why = None, (None if _plain(stripped) else rebuilt)
        if why is None:
            warnings.warn(f"shrink: {rebuilt}.", stacklevel=3)
    else:
        same, why = _same_class(
            stripped, [(o, n) for _, o, n in configs.values() if o != n], task)
    if same is not None:
        values = [trimmed(variable) for variable in stripped.weights]
        if [v.shape for v in values] == [tuple(w.shape) for w in same.weights]:
            for value, target in zip(values, same.weights, strict=True):
                target.assign(value)
            return same
        why = f"{type(stripped).__name__}.from_config re-creates other weight shapes"
    if task:
        raise ValueError(f"shrink: task '{stripped.name}' ({type(stripped).__name__}) is shrunk "
                         f"through its backbone's config, and {why}.")
    if why:
        warnings.warn(f"shrink: model '{stripped.name}' becomes a functional model of the "
                      f"same layers, not a {type(stripped).__name__}: {why}.", stacklevel=3)
    sources = {}  # id(new layer) -> the layer whose weights it takes

    def part(layer, config=None, cls=None):
        new = (cls or type(layer)).from_config(config or layer.get_config())
        sources[id(new)] = layer
        return new

    def clone(layer):
        if id(layer) in unrolled:
            return layer  # `call` computes it from new parts
        return part(layer, configs[id(layer)][2] if id(layer) in configs else None)

    def call(layer, *args, **kwargs):
        if id(layer) not in unrolled:
            return layer(*args, **kwargs)

        def named_part(sub, config=None, cls=None):  # unique in the new graph
            return part(sub, {**(config or sub.get_config()), "name": f"{layer.name}_{sub.name}"},
                        cls)

        try:
            return unrolled[id(layer)][0].unrolled(layer, named_part, removed_along, args,
                                                   kwargs)
        except ValueError as error:
            raise _Refused(f"shrink: {error}") from error

    functional = _keras_compat.functional_of(stripped)
    try:
        small = keras.models.clone_model(functional, clone_function=clone, call_function=call)
    except _Refused as error:
        raise ValueError(str(error)) from error.__cause__
    except Exception as error:
        raise ValueError(f"shrink: a layer of model '{stripped.name}' cannot be re-created "
                         f"from its config ({type(error).__name__}: {error}).") from error
    small = keras.Model(*_keras_compat.graph_structs(small), name=f"{stripped.name}_shrunk")
    for new in small.layers:
        old = sources.get(id(new))
        if old is None and new.weights:
            raise AssertionError(f"prunemix.shrink: no source for layer '{new.name}'")
        for variable, target in zip(old.weights if old else [], new.weights, strict=True):
            target.assign(trimmed(variable))
    return small


def _plain(model) -> bool:
    """Whether `model` is a plain graph, with no class of its own."""
    return type(model) in (keras.Model, _keras_compat.functional_class(), keras.Sequential)


class _Refused(Exception):
    """A layer that cannot be rebuilt from its parts (its message says why)."""


def _config_of(layer) -> dict:
    """`layer.get_config()`; for a layer whose `get_config` fails (keras_hub
    0.32's `LlamaTransformerDecoder`), its plain public attributes, which
    name its config: enough to say what a resize changes, for a model that
    is re-created through its own config."""
    try:
        return layer.get_config()
    except Exception:  # noqa: BLE001 - a third-party get_config that does not run
        return {k: v for k, v in vars(layer).items() if not k.startswith("_")
                and isinstance(v, int | float | str | bool | type(None))}


def _same_class(model, changes: list, task: bool) -> tuple:
    """`(copy, None)`: a new instance of `model`'s own class whose config
    expresses every change (a keras_hub backbone with a smaller
    `intermediate_dim`; a task through its backbone's config), built, not
    yet holding weights; else `(None, why not)` (`why` None for a plain
    graph, which has no class of its own)."""
    if _plain(model):
        return None, None
    diffs = [{k: v for k, v in new.items() if old.get(k) != v} for old, new in changes]
    olds = [{k: old.get(k) for k in diff} for (old, _), diff in zip(changes, diffs, strict=True)]
    diffs, olds = diffs or [{}], olds or [{}]  # nothing to remove: a copy of the same class
    if any(d != diffs[0] for d in diffs) or any(o != olds[0] for o in olds):
        return None, f"its layers would differ ({diffs[0]} vs others), which its config " \
                     "cannot express"
    config = own_config(model)
    holder = config
    if task and isinstance(config.get("backbone"), dict):
        holder = config["backbone"].get("config", {})
    if any(holder.get(k) != v for k, v in olds[0].items()):
        return None, f"its config has no {sorted(diffs[0])} equal to the layers' {olds[0]}"
    holder.update(diffs[0])
    try:
        copy = type(model).from_config(config)
        _keras_compat.build_like(copy, model)
    except Exception as error:  # noqa: BLE001 - the class rejects the smaller config
        return None, f"{type(model).__name__}.from_config fails with {diffs[0]} ({error})"
    return copy, None


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
