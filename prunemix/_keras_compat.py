"""The one place prunemix touches private Keras API (checked on Keras 3.15).

Keep this module small: each helper names the private attribute it relies on.
"""

from __future__ import annotations

import contextlib


def nested_layers(model) -> list:
    """All layers below `model`, depth first, each once.

    Uses `Layer._flatten_layers` (Keras 3), which follows every tracked
    attribute: sublayers, nested models, and lists/dicts of layers.
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


def attach_after_build(layer, name: str, value) -> None:
    """`setattr(layer, name, value)` even after `layer` is built.

    Keras 3 locks a layer's tracker (`Layer._tracker`) once built; a pruner
    attached later must still be tracked so its variables are saved.
    """
    tracker = getattr(layer, "_tracker", None)
    locked = bool(tracker is not None and tracker.locked)
    if locked:
        tracker.unlock()
    try:
        setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()


@contextlib.contextmanager
def hidden_layer(model, layer, attribute: str):
    """Within the block, `layer` is neither in `model.layers` (`Layer._layers`)
    nor at `model.<attribute>` (set to None, bypassing the tracker).

    Used to load a dense model's weights file into a `PrunedModel`: Keras's
    saving walks `model.layers` and every attribute, and the file has no
    pruner.
    """
    index = next(i for i, other in enumerate(model._layers) if other is layer)
    del model._layers[index]
    object.__setattr__(model, attribute, None)
    try:
        yield
    finally:
        object.__setattr__(model, attribute, layer)
        model._layers.insert(index, layer)


def inbound_count(layer) -> int:
    """How many times `layer` is called in functional graphs (`_inbound_nodes`)."""
    return len(layer._inbound_nodes)


def functional_class():
    """`keras.src.models.functional.Functional` (not exported by Keras 3)."""
    from keras.src.models.functional import Functional

    return Functional


def is_functional_call(args, kwargs) -> bool:
    """Whether constructor arguments are functional-API `(inputs, outputs)`."""
    from keras.src.models.model import functional_init_arguments

    return bool(functional_init_arguments(args, kwargs))


__all__ = [
    "attach_after_build",
    "hidden_layer",
    "inbound_count", "functional_class", "is_functional_call", "nested_layers"]
