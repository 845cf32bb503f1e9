"""`prune_model`: turn a trained Sequential or functional model into a `PrunedModel`."""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from typing import Any

import keras

from prunemix import _keras_compat, policy
from prunemix.model import PrunedModel
from prunemix.prunable import locate_prunable_weights

__all__ = ["prune_model"]

_VALID_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def _functional_copy(model: keras.Model):
    """`(inputs, outputs)` of a copy of `model` with new layers and its weights.

    A layer shared between a nested model and the outer graph (keras_hub's
    tied LM head) would be copied twice by `clone_model`: such a graph is
    flattened first (`inline_nested`), so the copy holds it once.
    """
    if _keras_compat.shared_across_nesting(model):
        flat = keras.Model(*_keras_compat.inline_nested(model), name=model.name)
        clone = keras.models.clone_model(flat)
        clone.set_weights(flat.get_weights())
        return _keras_compat.graph_structs(clone)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if isinstance(clone, keras.Sequential):
        # A Sequential built by calling it on data has a fixed batch size in
        # its inputs; give the copy a free one.
        spec = model.inputs[0]
        inputs = keras.Input(batch_shape=(None, *spec.shape[1:]), dtype=spec.dtype)
        outputs = inputs
        for layer in clone.layers:
            outputs = layer(outputs)
        return inputs, outputs
    return clone.inputs, clone.outputs


def prune_model(
    model: keras.Model,
    pruning_schedule: Any,
    pruning_policy: Any = None,
    layers: Sequence | None = None,
    name: str | None = None,
) -> PrunedModel:
    """Returns a `PrunedModel` copy of a built Sequential or functional model.

    The fine-tune-from-pretrained workflow (tfmot's `prune_low_magnitude`):
    the copy has new layers holding the same weights, so training it leaves
    `model` untouched; compile it and `fit` as usual.

    Subclassed models have no graph to copy: inherit from `PrunedModel`
    instead of `keras.Model`, build it, `load_weights` the dense weights
    (they load into a `PrunedModel` of the same class layout) and `fit`.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model`.
        pruning_schedule: the schedule (see `PrunedModel`).
        pruning_policy: optional list of `prunemix.Rule`s.
        layers: optional shortcut: prune only these layers (names, glob
            patterns, classes or callables, as in `Rule`); every other
            weight stays dense. Applied before `pruning_policy`'s rules.
        name: name of the new model; default: `model.name`.

    Returns:
        A functional `PrunedModel` with the weights of `model`.

    Raises:
        ValueError: if `model` is subclassed, not built, already a
            `PrunedModel`, or if `layers` selects nothing.

    Example:

    ```python
    pruned = prunemix.prune_model(
        pretrained, prunemix.PolynomialDecay(0.0, 0.8, 0, 2000),
        layers=[keras.layers.Dense],
    )
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=2)
    ```
    """
    if isinstance(model, PrunedModel):
        raise ValueError(f"Model '{model.name}' is already a PrunedModel.")
    functional = isinstance(model, _keras_compat.functional_class())
    sequential = isinstance(model, keras.Sequential)
    if not isinstance(model, keras.Model) or not (functional or sequential):
        raise ValueError(
            "prune_model takes a Sequential or functional keras.Model; "
            f"'{getattr(model, 'name', model)}' is a {type(model).__name__}. "
            "For a subclassed model, inherit from "
            "`prunemix.PrunedModel` instead of `keras.Model`, load the dense weights and fit."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"Model '{model.name}' is not built; give it an `Input` or call it on data first."
        )
    if name is not None and not _VALID_NAME.match(name):
        # TensorFlow would only reject it inside the first train step.
        raise ValueError(
            f"prune_model: name={name!r} is not a valid model name (letters, digits "
            "and `_.-/>`, not starting with `_`, `-`, `/` or `>`)."
        )
    rules = policy.get_policy(pruning_policy)
    inputs, outputs = _functional_copy(model)
    if layers is not None:
        keep = policy.Rule(list(layers) if isinstance(layers, list | tuple) else layers)
        located = locate_prunable_weights(keras.Model(inputs, outputs))
        if not any(keep.matches(layer, weight, path) for layer, weight, path, _ in located):
            raise ValueError(
                f"`layers={layers!r}` selects no prunable weight of model '{model.name}'; "
                "prunable weights: " + ", ".join(path for _, _, path, _ in located) + "."
            )
        left_out = [
            glob.escape(path) for layer, weight, path, _ in located
            if not keep.matches(layer, weight, path)
        ]
        if left_out:
            # Paths relative to the model (unique, unlike layer names in nested
            # models), not the selection itself, so the policy saves.
            rules = [policy.Rule(left_out, exclude=True), *rules]
    return PrunedModel(
        inputs, outputs, pruning_schedule=pruning_schedule, pruning_policy=rules,
        name=name or model.name,
    )
