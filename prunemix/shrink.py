"""`shrink_dense`: physically remove fully pruned units from a chain of Dense layers."""

from __future__ import annotations

import keras
import numpy as np

from prunemix import _keras_compat
from prunemix.export import strip_pruning

__all__ = ["shrink_dense"]


def _chain(model) -> list:
    """The layers of `model` (Sequential or functional), if they form a chain."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    if not isinstance(model, _keras_compat.functional_class()):
        raise ValueError(
            f"shrink_dense takes a Sequential or functional model; '{model.name}' is a "
            f"{type(model).__name__}."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"shrink_dense: model '{model.name}' must have one input and one output.")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    previous = model.inputs[0]
    for layer in layers:
        if _keras_compat.inbound_count(layer) != 1 or layer.input is not previous:
            raise ValueError(
                f"shrink_dense: model '{model.name}' is not a chain of layers (layer "
                f"'{layer.name}' does not take the previous layer's output alone)."
            )
        previous = layer.output
    return layers


def shrink_dense(model: keras.Model) -> keras.Model:
    """Returns a smaller dense model without the units pruning removed.

    For every `Dense` layer directly followed by another `Dense`, the units
    whose kernel column is entirely zero (whole units pruned, e.g. with
    `StructuredSparsity("output")`) are removed from both: the column of
    the first layer and the matching row of the second. A removed unit
    still output the constant `activation(bias)`; that constant times the
    row is folded into the next layer's bias, so predictions are unchanged
    (up to float rounding).

    Args:
        model: a built Sequential or functional model whose layers form a
            chain (a `PrunedModel` is stripped first).

    Returns:
        A new `keras.Sequential` with fewer units, the same input shape and
        the same predictions. The original is left untouched.

    Raises:
        ValueError: if the model is not a single-input chain.

    Example:

    ```python
    small = prunemix.shrink_dense(pruned)   # after StructuredSparsity("output")
    small.count_params() < pruned.count_params()
    ```
    """
    stripped = strip_pruning(model)
    layers = _chain(stripped)
    spec = stripped.inputs[0]
    weights = [[np.array(w) for w in layer.get_weights()] for layer in layers]
    configs = [layer.get_config() for layer in layers]
    for i in range(len(layers) - 1):
        first, second = layers[i], layers[i + 1]
        if not (isinstance(first, keras.layers.Dense) and isinstance(second, keras.layers.Dense)):
            continue
        kernel = weights[i][0]
        dead = ~kernel.any(axis=tuple(range(kernel.ndim - 1)))
        if not dead.any() or dead.all():
            continue
        bias = weights[i][1] if first.use_bias else np.zeros(kernel.shape[-1], kernel.dtype)
        constant = keras.ops.convert_to_numpy(
            keras.activations.get(configs[i]["activation"])(bias[dead])
        )
        next_kernel = weights[i + 1][0]
        folded = constant @ next_kernel[dead]
        if second.use_bias:
            weights[i + 1][1] = weights[i + 1][1] + folded.astype(next_kernel.dtype)
        elif np.any(folded):
            continue  # nowhere to fold the removed units' constant output
        weights[i][0] = kernel[..., ~dead]
        if first.use_bias:
            weights[i][1] = bias[~dead]
        weights[i + 1][0] = next_kernel[~dead]
        configs[i] = {**configs[i], "units": int((~dead).sum())}
    new_layers = [
        type(layer).from_config(config) for layer, config in zip(layers, configs, strict=True)
    ]
    small = keras.Sequential(
        [keras.Input(batch_shape=(None, *spec.shape[1:]), dtype=spec.dtype), *new_layers],
        name=f"{stripped.name}_shrunk",
    )
    for layer, values in zip(new_layers, weights, strict=True):
        layer.set_weights(values)
    return small
