"""`prune_model`: a pruning copy of a trained model, of the model's own class."""

from __future__ import annotations

import glob
import re
import warnings
from collections.abc import Sequence
from typing import Any

import keras

from prunemix import _keras_compat, policy
from prunemix.model import PrunedModel, deferred_pruning, own_config, pruned_class
from prunemix.prunable import locate_prunable_weights
from prunemix.pruner import Pruner
from prunemix.report import model_weights

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
    return _keras_compat.graph_structs(clone)


def _plain_graph(model) -> bool:
    """Whether `model` is a plain functional or Sequential model (no class of its own)."""
    return type(model) in (keras.Model, _keras_compat.functional_class(), keras.Sequential)


def _class_copy(model: keras.Model, name: str | None) -> PrunedModel:
    """A `pruned_class(type(model))` made from `model`'s own config, holding
    its weights, with no pruner yet."""
    cls = pruned_class(type(model))
    config = own_config(model)
    if name is not None:
        config["name"] = name
    try:
        with deferred_pruning():
            copy = cls.from_config(config)
        _keras_compat.build_like(copy, model)
    except Exception as error:
        raise ValueError(
            f"prune_model cannot copy model '{model.name}': "
            f"{type(model).__name__}.from_config(model.get_config()) fails "
            f"({type(error).__name__}: {error}). prune_model copies a model through its "
            "class's own config. Make `get_config`/`from_config` round-trip, or define "
            f"`class Pruned{type(model).__name__}(prunemix.PrunedModel, "
            f"{type(model).__name__})`, build it and load the dense weights."
        ) from error
    ours, theirs = model_weights(copy), list(model.weights)
    shapes = [tuple(v.shape) for v in ours], [tuple(v.shape) for v in theirs]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"prune_model cannot copy model '{model.name}': {type(model).__name__}."
            f"from_config(get_config()) re-creates {len(ours)} weights, the model has "
            f"{len(theirs)} (or their shapes differ), so its config does not describe it."
        )
    for mine, value in zip(ours, theirs, strict=True):
        mine.assign(value)
    return copy


@_keras_compat.copies_live_layers
def prune_model(
    model: keras.Model,
    pruning_schedule: Any,
    pruning_policy: Any = None,
    layers: Sequence | None = None,
    name: str | None = None,
) -> PrunedModel:
    """Returns a pruning copy of a built model, of the model's own class.

    The fine-tune-from-pretrained workflow (tfmot's `prune_low_magnitude`):
    the copy has new layers holding the same weights, so training it leaves
    `model` untouched; compile it and `fit` as usual.

    A model of its own class (a keras_hub task or backbone, or any
    `keras.Model` subclass whose `get_config`/`from_config` round-trip) is
    copied through that class's config, never layer by layer: the copy is
    an instance of `pruned_class(type(model))`, so `isinstance(copy,
    type(model))` holds and the class's methods stay (`generate`, `score`,
    the preprocessor, `compile` defaults, `save_to_preset` once stripped).
    Tied weights stay one variable with one mask. A plain functional or
    Sequential model (`keras.applications` too) becomes a functional
    `PrunedModel`.

    Args:
        model: a built `keras.Model`.
        pruning_schedule: the schedule (see `PrunedModel`).
        pruning_policy: optional list of `prunemix.Rule`s.
        layers: optional shortcut: prune only these layers (names, glob
            patterns, classes or callables, as in `Rule`); every other
            weight stays dense. Applied before `pruning_policy`'s rules.
        name: name of the new model; default: `model.name`.

    Returns:
        A `PrunedModel` (an instance of `type(model)` too, for a model of its
        own class) with the weights of `model`.

    Raises:
        ValueError: if `model` is not built, already a `PrunedModel`, of a
            class that cannot be re-created from its config (the message
            names the class and the path that works), or if `layers`
            selects nothing.

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
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"prune_model takes a built keras.Model. Received: {type(model).__name__} "
            f"{getattr(model, 'name', model)!r}."
        )
    plain = _plain_graph(model)
    if not model.built or (plain and not model.inputs):
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
    if not plain:
        try:
            copy = _class_copy(model, name)
        except ValueError as error:
            if not isinstance(model, _keras_compat.functional_class()) or not model.inputs:
                raise
            # A graph whose class cannot be re-created: a functional copy
            # still prunes exactly, without the class's own methods.
            warnings.warn(f"{error} Copying its graph instead: the copy is a functional "
                          "PrunedModel, not an instance of its class.", stacklevel=2)
            plain = True
    if plain:
        inputs, outputs = _functional_copy(model)
        copy = keras.Model(inputs, outputs)
    if layers is not None:
        rules = [*_only(copy, layers, model.name), *rules]
    if plain:
        return PrunedModel(
            inputs, outputs, pruning_schedule=pruning_schedule, pruning_policy=rules,
            name=name or model.name,
        )
    copy.start_pruning(Pruner(pruning_schedule, rules, name="pruner"))
    return copy


def _only(copy: keras.Model, layers, model_name: str) -> list:
    """The rules that leave every weight `layers` does not select dense."""
    keep = policy.Rule(list(layers) if isinstance(layers, list | tuple) else layers)
    located = locate_prunable_weights(copy)
    if not any(keep.matches(layer, weight, path) for layer, weight, path, _ in located):
        raise ValueError(
            f"`layers={layers!r}` selects no prunable weight of model '{model_name}'; "
            "prunable weights: " + ", ".join(path for _, _, path, _ in located) + "."
        )
    # Paths relative to the model (unique, unlike layer names in nested
    # models), not the selection itself, so the policy saves.
    left_out = [glob.escape(path) for layer, weight, path, _ in located
                if not keep.matches(layer, weight, path)]
    return [policy.Rule(left_out, exclude=True)] if left_out else []
